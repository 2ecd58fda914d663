//! The availability-view benchmark: `cargo bench --bench rooms_view -- [FLAGS]` (`-- --help`
//! lists them). Availability questions answered from the view against the same question asked
//! in SQL (in-process, and over HTTP through two servers), then the lag from a booking's commit
//! to the view answering with it, at a fixed booking rate.

#[path = "common/rooms/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use clickstay::rooms::booking::{self, Outcome};
use clickstay::rooms::cli::ConfigArg;
use clickstay::rooms::model::ReservationRequest;
use clickstay::rooms::shards::{DEFAULT_POOL_SIZE, Shards};
use clickstay::rooms::spec::RoomsSpec;
use clickstay::rooms::view::RoomsView;
use clickstay::rooms::view::answers::Ask;
use clickstay::rooms::view::committer::Committer;
use clickstay::rooms::view::rows::day_of;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use common::stats::RunStats;
use common::workload::{Stay, Workload};
use common::{discover, http_load, serve};

/// Benchmark the availability view: questions answered from the view against the same
/// question in SQL, and the lag from a booking's commit to the view reflecting it.
///
/// Reads the hotel shards like `clickstay rooms` does (`--config`, or CLICKSTAY_HOTEL_SHARDS,
/// comma-separated URLs); they must be migrated and seeded (`clickstay rooms migrate`, `clickstay
/// rooms seed`) on a server ready for logical decoding (`scripts/postgres.sh` sets it up).
#[derive(Parser, Debug)]
#[command(bin_name = "cargo bench --bench rooms_view --")]
pub struct ViewBenchArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The view's spec.
    #[arg(long, default_value = "dataflows/rooms.toml")]
    pub dataflow: PathBuf,
    /// Worker threads of the view.
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    /// Concurrent clients for the query runs.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Longest stay asked about (1 to this many nights).
    #[arg(long, default_value_t = 3)]
    pub max_nights: u32,
    /// Bookings per second during a lag run; repeat for several runs (`--rate 1000 --rate 2000`).
    #[arg(long = "rate", default_values_t = [1000])]
    pub rates: Vec<u64>,
    /// Seconds of the idle run (no questions, no bookings) whose CPU time is measured, after as
    /// many seconds for the loaded arrangements to settle.
    #[arg(long, default_value_t = 10)]
    pub idle_seconds: u64,
    /// Database connections per shard.
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE)]
    pub pool_size: usize,
    #[command(flatten)]
    _cargo: common::CargoBenchFlag,
}

fn main() -> Result<()> {
    common::block_on(run(ViewBenchArgs::parse()))
}

/// Runs the benchmark and prints its figures on stdout.
async fn run(args: ViewBenchArgs) -> Result<()> {
    let (shards, hotels, first_night, days) = discover(&args.config, args.pool_size).await?;
    let workload = Workload::uniform(hotels, shards.len(), first_night, days, args.max_nights);
    let started = Instant::now();
    let view = RoomsView::start(RoomsSpec::load(&args.dataflow)?, shards.urls(), args.workers)?;
    for shard in 0..shards.len() as u32 {
        view.wait_for(shard, 0, Instant::now() + Duration::from_secs(1800)).await?;
    }
    // One answered question shows the snapshot has gone through the dataflow too.
    view.ask(ask_of(&workload.pick(&mut ChaCha8Rng::seed_from_u64(0)), &shards), &BTreeMap::new()).await?;
    println!(
        "view: {hotels} hotels on {} shard(s), {days} nights from {first_night}, loaded in {:.1}s with {} worker(s)",
        shards.len(),
        started.elapsed().as_secs_f64(),
        args.workers
    );
    let idle = Duration::from_secs(args.idle_seconds);
    // First the merges of the freshly loaded arrangements run out (as long again).
    tokio::time::sleep(idle).await;
    let cpu_before = cpu_seconds();
    tokio::time::sleep(idle).await;
    let idle_cpu = (cpu_seconds() - cpu_before) / idle.as_secs_f64();
    println!("idle: the view used {:.2}% of one core over {}s", idle_cpu * 100.0, args.idle_seconds);
    let duration = Duration::from_secs(args.seconds);
    query_runs(&args, &view, &shards, &workload, duration).await?;

    for &rate in &args.rates {
        let (mut lags, confirmed, elapsed) = lag_run(&view, &shards, &workload, rate, duration).await?;
        let mut lag = RunStats { latencies_us: std::mem::take(&mut lags), ..RunStats::default() };
        println!(
            "commit to view at {rate}/s: {confirmed} bookings confirmed at {:.0}/s, lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            confirmed as f64 / elapsed.as_secs_f64(),
            lag.latency_ms(0.5),
            lag.latency_ms(0.99),
            lag.latency_ms(1.0)
        );
    }
    view.stop();
    Ok(())
}

/// CPU seconds (user and system) this process has used so far.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for the call to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The availability questions, from the view and in SQL, in process and over HTTP: one row
/// each, then the throughput ratios.
async fn query_runs(
    args: &ViewBenchArgs,
    view: &RoomsView,
    shards: &Shards,
    workload: &Workload,
    duration: Duration,
) -> Result<()> {
    println!(
        "{:<24} {:>7} {:>10} {:>8} {:>8} {:>6}",
        "availability questions", "clients", "queries/s", "p50 ms", "p99 ms", "errors"
    );
    let row = |name: &str, stats: &mut RunStats| {
        println!(
            "{:<24} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>6}",
            name,
            args.clients,
            stats.attempts_per_second(),
            stats.latency_ms(0.5),
            stats.latency_ms(0.99),
            stats.errors
        );
        stats.attempts_per_second()
    };
    let view_in_process = row(
        "view, in process",
        &mut in_process(workload, args.clients, duration, {
            let (view, shards) = (view.clone(), shards.clone());
            move |stay| {
                let (view, ask) = (view.clone(), ask_of(&stay, &shards));
                async move { view.ask(ask, &BTreeMap::new()).await.map(|_| ()).map_err(anyhow::Error::from) }
            }
        })
        .await?,
    );
    let sql_in_process = row(
        "SQL, in process",
        &mut in_process(workload, args.clients, duration, {
            let shards = shards.clone();
            move |stay| {
                let shards = shards.clone();
                async move {
                    let client = shards.connect(shards.index_of(stay.hotel_id)).await?;
                    booking::availability(&client, stay.hotel_id, stay.start, stay.end).await.map(|_| ())
                }
            }
        })
        .await?,
    );
    let view_http = row(
        "view, HTTP",
        &mut http_load::run_availability(serve(shards, Some(view.clone())).await?, workload, args.clients, duration)
            .await?,
    );
    let sql_http = row(
        "SQL, HTTP",
        &mut http_load::run_availability(serve(shards, None).await?, workload, args.clients, duration).await?,
    );
    println!(
        "view / SQL throughput: {:.1}x in process, {:.1}x over HTTP",
        view_in_process / sql_in_process,
        view_http / sql_http
    );
    Ok(())
}

/// The question a stay's availability asks.
fn ask_of(stay: &Stay, shards: &Shards) -> Ask {
    Ask {
        hotels: vec![stay.hotel_id],
        city: None,
        start: day_of(stay.start),
        end: day_of(stay.end),
        reservation: None,
        shards: vec![shards.index_of(stay.hotel_id) as u32],
    }
}

/// `clients` tasks asking `question` of random stays back to back for `duration`.
async fn in_process<F, Fut>(workload: &Workload, clients: usize, duration: Duration, question: F) -> Result<RunStats>
where
    F: Fn(Stay) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (workload, question) = (workload.clone(), question.clone());
        tasks.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(client as u64 + 1);
            let mut stats = RunStats::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                match question(workload.pick(&mut rng)).await {
                    Ok(()) => stats.attempts += 1,
                    Err(_) => stats.errors += 1,
                }
                stats.latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            stats
        });
    }
    let mut total = RunStats::default();
    while let Some(stats) = tasks.join_next().await {
        total.add(stats.context("query task panicked")?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Books random stays at `rate` per second through the committers for `duration`; for each
/// confirmed one, the time from its commit returning to the view answering a question that
/// reflects it (`min_lsn` = the position after the commit). Returns the lags (µs), the
/// bookings confirmed, and the time taken.
async fn lag_run(
    view: &RoomsView,
    shards: &Shards,
    workload: &Workload,
    rate: u64,
    duration: Duration,
) -> Result<(Vec<u32>, u64, Duration)> {
    let committer = Arc::new(Committer::new(shards.clone()));
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        ticks.tick().await;
        let stay = workload.pick(&mut rng);
        let (view, shards, committer) = (view.clone(), shards.clone(), committer.clone());
        tasks.spawn(async move {
            let request = ReservationRequest {
                reservation_id: Uuid::now_v7(),
                hotel_id: stay.hotel_id,
                room_type_id: stay.room_type_id,
                start_date: stay.start,
                end_date: stay.end,
                guest_id: 1,
            };
            // Fresh ids, never reused: the benchmark of the view takes no claims.
            let (outcome, lsn) = committer.commit(&request, false).await?;
            if !matches!(outcome, Outcome::Confirmed(_)) {
                return anyhow::Ok(None);
            }
            let committed = Instant::now();
            let shard = shards.index_of(stay.hotel_id) as u32;
            view.ask(ask_of(&stay, &shards), &BTreeMap::from([(shard, lsn)])).await?;
            Ok(Some(committed.elapsed().as_micros().min(u32::MAX as u128) as u32))
        });
    }
    let mut lags = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Some(lag) = result.context("booking task panicked")?? {
            lags.push(lag);
        }
    }
    let confirmed = lags.len() as u64;
    Ok((lags, confirmed, started.elapsed()))
}
