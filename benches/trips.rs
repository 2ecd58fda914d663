//! The trips benchmark: `cargo bench --bench trips -- [FLAGS]` (`-- --help` for them).
//!
//! Over HTTP, on seeded shards: two-shard trips of two legs by two-phase commit and as a saga,
//! beside single-shard bookings, at each `--clients` count (trips/s, p50/p99 latency); then
//! how long a crashed coordinator's locks stay held: `clickstay rooms serve` killed (SIGKILL)
//! with a trip prepared on both shards, before and after its decision, restarted at once, and
//! timed until no prepared transaction of the trip is left.

#[path = "common/rooms/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clickstay::rooms::cli::ConfigArg;
use clickstay::rooms::shards::{DEFAULT_POOL_SIZE, Shards};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use common::stats;
use common::workload::Workload;
use common::{discover, http_load, serve};

/// Reads the hotel shards like `clickstay rooms` does (`--config`, or CLICKSTAY_HOTEL_SHARDS);
/// they must be migrated and seeded, two shards at least, on servers with
/// `max_prepared_transactions` above the client count (`scripts/postgres.sh` sets 256).
#[derive(Parser, Debug)]
#[command(bin_name = "cargo bench --bench trips --")]
struct TripBenchArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Concurrent clients; repeat for several runs.
    #[arg(long = "clients", default_values_t = [16, 64])]
    clients: Vec<usize>,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Longest stay of a leg.
    #[arg(long, default_value_t = 3)]
    max_nights: u32,
    /// The prepare timeout of the crash runs (`rooms serve --prepare-timeout`): how long an
    /// undecided prepared transaction waits for its coordinator.
    #[arg(long, default_value = "5s")]
    prepare_timeout: String,
    /// Database connections per shard.
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE)]
    pool_size: usize,
    #[command(flatten)]
    _cargo: common::CargoBenchFlag,
}

fn main() -> Result<()> {
    common::block_on(run(TripBenchArgs::parse()))
}

async fn run(args: TripBenchArgs) -> Result<()> {
    let (shards, hotels, first_night, days) = discover(&args.config, args.pool_size).await?;
    if shards.len() < 2 {
        bail!("trips across shards need two shards at least; {} given", shards.len());
    }
    let workload = Workload::uniform(hotels, shards.len(), first_night, days, args.max_nights);
    let address = serve(&shards, None).await?;
    let duration = Duration::from_secs(args.seconds);
    println!("{hotels} hotels on {} shards, {days} nights from {first_night}", shards.len());
    println!("{}", stats::header().replace("reservations/s", "  completed/s"));
    for &clients in &args.clients {
        let mut single = http_load::run(address, &workload, clients, duration).await?;
        println!("{}", stats::row("booking", "one shard", clients, &mut single));
        let mut rates = vec![single.attempts_per_second()];
        for mode in ["2pc", "saga"] {
            let mut trips = http_load::run_trips(address, &workload, mode, clients, duration).await?;
            println!("{}", stats::row("trip", mode, clients, &mut trips));
            rates.push(trips.attempts_per_second());
        }
        println!(
            "  {clients} clients: a 2-shard trip by 2pc runs at {:.2}x the bookings/s of one shard, as a saga at {:.2}x",
            rates[1] / rates[0],
            rates[2] / rates[0]
        );
    }
    for (step, what) in [("decided", "decided commit"), ("prepared_all", "prepared, undecided")] {
        let held = crashed_coordinator(&args, &shards, &workload, step).await?;
        println!(
            "coordinator killed ({what}): the trip's rows stayed locked {:.2}s after the kill (restart and recovery{})",
            held.as_secs_f64(),
            if step == "prepared_all" { format!(", prepare timeout {}", args.prepare_timeout) } else { String::new() }
        );
    }
    Ok(())
}

/// Kills `rooms serve` paused at `step` of a trip, restarts it, and times from the kill until
/// none of the trip's prepared transactions is left.
async fn crashed_coordinator(
    args: &TripBenchArgs,
    shards: &Shards,
    workload: &Workload,
    step: &str,
) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let pause_file = dir.path().join("paused");
    let mut paused = start_serve(args, shards, Some((step, &pause_file)))?;
    let trip = {
        let mut rng = ChaCha8Rng::seed_from_u64(step.len() as u64);
        let leg = |shard: usize, rng: &mut ChaCha8Rng| loop {
            let stay = workload.pick(rng);
            if shards.index_of(stay.hotel_id) == shard {
                return serde_json::json!({
                    "reservation_id": uuid::Uuid::now_v7(), "hotel_id": stay.hotel_id,
                    "room_type_id": stay.room_type_id, "start_date": stay.start, "end_date": stay.end,
                });
            }
        };
        serde_json::json!({ "trip_id": uuid::Uuid::now_v7(), "guest_id": 1, "legs": [leg(0, &mut rng), leg(1, &mut rng)] })
    };
    let url = paused.1.clone();
    let sent =
        tokio::spawn(async move { reqwest::Client::new().post(format!("{url}/v1/trips")).json(&trip).send().await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pause_file.exists() {
        if Instant::now() > deadline {
            bail!("the coordinator never reached {step}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    paused.0.kill()?;
    let killed = Instant::now();
    paused.0.wait()?;
    let _ = sent.await;
    let mut restarted = start_serve(args, shards, None)?;
    let admin = shards.connect(0).await?;
    loop {
        let left: i64 = admin
            .query_one("SELECT count(*) FROM pg_prepared_xacts WHERE starts_with(gid, 'clickstay-trip:')", &[])
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if killed.elapsed() > Duration::from_secs(300) {
            bail!("prepared transactions still held after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held = killed.elapsed();
    restarted.0.kill()?;
    restarted.0.wait()?;
    Ok(held)
}

/// `clickstay rooms serve` on the bench's shards, paused at `pause` when given; the process and
/// its URL once it answers.
fn start_serve(
    args: &TripBenchArgs,
    shards: &Shards,
    pause: Option<(&str, &std::path::Path)>,
) -> Result<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_clickstay"));
    command
        .args(["rooms", "serve", "--sql-only", "--listen", &listen, "--prepare-timeout", &args.prepare_timeout])
        .args(["--recovery-interval", "100ms"])
        .env("CLICKSTAY_HOTEL_SHARDS", shards.urls().join(","))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((step, file)) = pause {
        command.env("CLICKSTAY_TRIP_PAUSE", step).env("CLICKSTAY_TRIP_PAUSE_FILE", file);
    }
    let child = command.spawn().context("cannot start clickstay rooms serve")?;
    let url = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        if Instant::now() > deadline {
            bail!("rooms serve did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((child, url))
}
