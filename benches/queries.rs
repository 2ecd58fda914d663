//! Questions to the running click job while it ingests: `cargo bench --bench queries`.
//!
//! Prints figures only: speed is not asserted.
//!
//! 1. Broker and Postgres as in `benches/stream.rs` (the environment's, or started here).
//! 2. `clickstay run -w 2 --listen` on a fresh 4-partition topic; `clickstay produce --rate R`
//!    sends events in real time (event times from now) at `CLICKSTAY_BENCH_QUERIES_RATE`
//!    (default 100,000) events/s for the whole run.
//! 3. After 5 s of warm-up, for each kind of question in turn, `CLICKSTAY_BENCH_QUERIES_CLIENTS`
//!    (default 64) clients ask as fast as they are answered for `CLICKSTAY_BENCH_QUERIES_SECONDS`
//!    (default 10) seconds: an ad's count over the last 15 minutes (a random ad of 1,000), and
//!    the 100 most clicked ads of the last 30 minutes. Printed: queries/s, p50 and p99 latency,
//!    and the events/s the job committed meanwhile.

#[path = "../tests/common/broker.rs"]
mod broker;
#[path = "common/rusage.rs"]
mod rusage;
#[path = "../tests/common/scripts.rs"]
mod scripts;
#[path = "common/services.rs"]
mod services;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clickstay::config::KafkaConfig;
use services::{Services, committed_offsets, connect, env_u64, fresh_name, kill, now_ms, percentile, write_config};

const PANE_MS: u64 = 60_000;
const ADS: u64 = 1_000;

fn main() -> Result<()> {
    let rate = env_u64("CLICKSTAY_BENCH_QUERIES_RATE", 100_000)?;
    let clients = env_u64("CLICKSTAY_BENCH_QUERIES_CLIENTS", 64)? as usize;
    let seconds = env_u64("CLICKSTAY_BENCH_QUERIES_SECONDS", 10)?;
    ensure!(rate > 0 && clients > 0 && seconds > 0, "rate, clients and seconds must be positive");
    let services = Services::start()?;
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;

    let name = fresh_name("bench_queries");
    let kafka = KafkaConfig { brokers: services.brokers.clone(), topic: name.clone(), partitions: 4 };
    let db = services.create_database(&name)?;
    let config = write_config(work.path(), &name, &kafka, &db)?;
    clickstay::sources::kafka::ensure_topic(&kafka)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/ad_clicks.toml");
    let (archive, log) = (work.path().join("archive"), work.path().join("job.log"));
    let listen = format!("127.0.0.1:{port}");
    let job = services.spawn_job(&spec, &config, &archive, &log, &["--listen", &listen])?;
    let total_seconds = 5 + 2 * seconds + 5;
    let producer = services
        .command()
        .arg("produce")
        .arg("--config")
        .arg(&config)
        .args(["--rate", &rate.to_string(), "--events", &(rate * total_seconds).to_string()])
        .args(["--ads", &ADS.to_string(), "--start-ms", &(now_ms() as u64).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start clickstay produce")?;
    let url = format!("http://{listen}");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut pg = connect(&db)?;
    std::thread::sleep(Duration::from_secs(5));

    let mut rows = Vec::new();
    for kind in [Kind::Count, Kind::Popular] {
        let committed_before = committed_offsets(&mut pg);
        let started = Instant::now();
        let mut latencies = runtime.block_on(ask_for(&url, kind, clients, Duration::from_secs(seconds)))?;
        let elapsed = started.elapsed().as_secs_f64();
        let ingested = (committed_offsets(&mut pg) - committed_before) as f64 / elapsed;
        latencies.sort_by(f64::total_cmp);
        rows.push((
            kind,
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            ingested,
        ));
    }
    kill(producer)?;
    kill(job)?;

    println!();
    println!(
        "questions to the running job ({clients} clients, {seconds} s per kind, ingest offered {rate} events/s, -w 2)"
    );
    println!("{:<40} {:>10} {:>9} {:>9} {:>16}", "question", "queries/s", "p50 ms", "p99 ms", "ingested ev/s");
    for (kind, qps, p50, p99, ingested) in rows {
        println!("{:<40} {qps:>10.0} {p50:>9.1} {p99:>9.1} {ingested:>16.0}", kind.describe());
    }
    drop(services);
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Count,
    Popular,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Count => "aggregated_count, last 15 min, random ad",
            Kind::Popular => "popular_ads count=100 window=30",
        }
    }

    fn path(self, n: u64) -> String {
        match self {
            Kind::Count => {
                let now = now_ms() as u64;
                let to = now - now % PANE_MS + PANE_MS;
                format!("/v1/ads/{}/aggregated_count?from={}&to={to}", n % ADS, to - 16 * PANE_MS)
            }
            Kind::Popular => "/v1/ads/popular_ads?count=100&window=30".to_string(),
        }
    }
}

/// `clients` clients asking `kind` questions back to back for `run`; every latency in ms.
async fn ask_for(url: &str, kind: Kind, clients: usize, run: Duration) -> Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + run;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (http, url) = (http.clone(), url.to_string());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = client as u64 * 7919;
            while Instant::now() < deadline {
                n += 1;
                let started = Instant::now();
                let response = http.get(format!("{url}{}", kind.path(n))).send().await?;
                ensure!(response.status().is_success(), "{}: {}", response.status(), response.text().await?);
                response.bytes().await?;
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        all.extend(result??);
    }
    Ok(all)
}
