//! The HTTP driver: `clients` kept-alive connections, each sending random requests (bookings,
//! or availability questions) back to back for a fixed time. It speaks just enough HTTP/1.1 by
//! hand to stay cheap, so that on a small machine the load generator takes as little CPU as
//! possible from the server and PostgreSQL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats::RunStats;
use super::workload::Workload;

/// One kept-alive HTTP/1.1 connection.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(address: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(address).await.with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buffer: Vec::with_capacity(4096) })
    }

    /// Sends a request (a JSON POST when it has a body, else a GET) and returns the status
    /// code (the answer's body is read and dropped).
    async fn send(&mut self, request: &Request) -> Result<u16> {
        let path = &request.path;
        let head = match &request.body {
            Some(body) => format!(
                "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
            None => format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n"),
        };
        self.stream.write_all(head.as_bytes()).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<u16> {
        self.buffer.clear();
        let header_end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..header_end]).context("response head is not UTF-8")?;
        let status: u16 = head.get(9..12).and_then(|code| code.parse().ok()).context("malformed status line")?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .context("response without content-length")?;
        while self.buffer.len() < header_end + length {
            self.fill().await?;
        }
        Ok(status)
    }

    async fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("server closed the connection");
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

/// One request of a load run.
pub struct Request {
    pub path: String,
    /// A JSON body: the request is a POST; none: a GET.
    pub body: Option<String>,
}

/// Books random stays from `workload` over HTTP with `clients` connections for `duration`.
/// `reservations` in the result counts the 201 answers, `attempts` the 201 and 409 ones.
pub async fn run(address: SocketAddr, workload: &Workload, clients: usize, duration: Duration) -> Result<RunStats> {
    let workload = workload.clone();
    let book = move |rng: &mut ChaCha8Rng, client: usize| {
        let stay = workload.pick(rng);
        let body = format!(r#"{{{},"guest_id":{}}}"#, stay_fields(&workload, &stay), client + 1);
        Request { path: "/v1/reservations".into(), body: Some(body) }
    };
    run_requests(address, clients, duration, book, booking_answer).await
}

/// A stay's JSON fields with a fresh reservation id (no braces, no guest).
fn stay_fields(workload: &Workload, stay: &super::workload::Stay) -> String {
    format!(
        r#""reservation_id":"{}","hotel_id":{},"room_type_id":{},"start_date":"{}","end_date":"{}""#,
        workload.reservation_id(stay.hotel_id),
        stay.hotel_id,
        stay.room_type_id,
        stay.start,
        stay.end
    )
}

/// Books random two-leg trips (one stay on shard 0's hotels, then one on shard 1's) in `mode`
/// (`2pc` or `saga`) with `clients` connections for `duration`; `reservations` counts the 201
/// answers (whole trips), `attempts` the 201 and 409 ones.
pub async fn run_trips(
    address: SocketAddr,
    workload: &Workload,
    mode: &'static str,
    clients: usize,
    duration: Duration,
) -> Result<RunStats> {
    let workload = workload.clone();
    let book = move |rng: &mut ChaCha8Rng, client: usize| {
        let leg = |shard: usize, rng: &mut ChaCha8Rng| loop {
            let stay = workload.pick(rng);
            if stay.hotel_id.rem_euclid(workload.shards as i64) as usize == shard {
                return format!("{{{}}}", stay_fields(&workload, &stay));
            }
        };
        let (first, second) = (leg(0, rng), leg(1 % workload.shards, rng));
        let body = format!(
            r#"{{"trip_id":"{}","guest_id":{},"mode":"{mode}","legs":[{first},{second}]}}"#,
            uuid::Uuid::now_v7(),
            client + 1
        );
        Request { path: "/v1/trips".into(), body: Some(body) }
    };
    run_requests(address, clients, duration, book, booking_answer).await
}

/// Asks the availability of random stays' hotels from `workload` with `clients` connections
/// for `duration`; `attempts` counts the 200 answers.
pub async fn run_availability(
    address: SocketAddr,
    workload: &Workload,
    clients: usize,
    duration: Duration,
) -> Result<RunStats> {
    let workload = workload.clone();
    let ask = move |rng: &mut ChaCha8Rng, _client: usize| {
        let stay = workload.pick(rng);
        let path = format!("/v1/hotels/{}/availability?start={}&end={}", stay.hotel_id, stay.start, stay.end);
        Request { path, body: None }
    };
    run_requests(
        address,
        clients,
        duration,
        ask,
        |status| if status == 200 { Counted::Attempt } else { Counted::Error },
    )
    .await
}

/// How an answer to a booking or a trip counts: 201 booked, 409 refused, anything else an error.
fn booking_answer(status: u16) -> Counted {
    match status {
        201 => Counted::Reserved,
        409 => Counted::Attempt,
        _ => Counted::Error,
    }
}

/// How an answer counts.
#[derive(Clone, Copy)]
enum Counted {
    Attempt,
    Reserved,
    Error,
}

async fn run_requests(
    address: SocketAddr,
    clients: usize,
    duration: Duration,
    make: impl Fn(&mut ChaCha8Rng, usize) -> Request + Clone + Send + 'static,
    classify: fn(u16) -> Counted,
) -> Result<RunStats> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let make = make.clone();
        tasks.spawn(async move {
            let mut connection = Connection::open(address).await?;
            let mut rng = ChaCha8Rng::seed_from_u64(client as u64 + 1);
            let mut stats = RunStats::default();
            while Instant::now() < deadline {
                let request = make(&mut rng, client);
                let sent = Instant::now();
                let status = connection.send(&request).await?;
                stats.latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match classify(status) {
                    Counted::Reserved => {
                        stats.attempts += 1;
                        stats.reservations += 1;
                    }
                    Counted::Attempt => stats.attempts += 1,
                    Counted::Error => stats.errors += 1,
                }
            }
            anyhow::Ok(stats)
        });
    }
    let mut total = RunStats::default();
    while let Some(result) = tasks.join_next().await {
        total.add(result.context("HTTP client task panicked")??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
