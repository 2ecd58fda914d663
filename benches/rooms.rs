//! The reservation benchmark: `cargo bench --bench rooms -- [FLAGS]` (`-- --help` lists them;
//! `scripts/bench-rooms.sh` sets up a durable throwaway server, seeds it and runs this).
//!
//! Drives the booking path over HTTP with many concurrent clients on a seeded inventory, beside
//! the same SQL transaction run by pgbench straight against PostgreSQL (the ceiling), for a
//! uniform and a hot-hotel workload; prints reservations/s and p50/p99 latency of each and the
//! cost of the reservation-id claim, then audits the invariants (zero overbooking).

#[path = "rooms/claim_cost.rs"]
mod claim_cost;
#[path = "common/rooms/mod.rs"]
mod common;
#[path = "rooms/pgbench.rs"]
mod pgbench;
#[path = "rooms/strategies.rs"]
mod strategies;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use clickstay::rooms::audit;
use clickstay::rooms::cli::ConfigArg;
use clickstay::rooms::shards::{DEFAULT_POOL_SIZE, ShardLimits, Shards};

use common::stats::{self, RunStats};
use common::workload::Workload;
use common::{discover, http_load};

/// How the clients get their reservation ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ids {
    /// From `POST /v1/reservation-ids?hotel_id=`: homed on the hotel's shard.
    Homed,
    /// Any UUIDv7: the claim is a round trip to another shard for all but 1 in N bookings.
    Random,
}

/// Request mixes the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Skew {
    /// Every hotel equally likely.
    Uniform,
    /// Half of each shard's requests go to one hotel of that shard.
    Hot,
}

/// Benchmark the booking path over HTTP against pgbench running the same SQL transaction.
///
/// Reads the hotel shards like `clickstay rooms` does (`--config`, or CLICKSTAY_HOTEL_SHARDS,
/// comma-separated URLs); they must be migrated and seeded (`clickstay rooms migrate`, `clickstay
/// rooms seed`). scripts/bench-rooms.sh does all of it on a throwaway server.
#[derive(Parser, Debug)]
#[command(bin_name = "cargo bench --bench rooms --")]
pub struct BenchArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// A running `clickstay rooms serve` to drive (host:port); default: serve in this process.
    #[arg(long)]
    pub url: Option<String>,
    /// Concurrent clients (HTTP connections; pgbench connections, split over the shards).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Seconds of HTTP load before the first measurement (fills caches and pools).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Workloads to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "uniform,hot")]
    pub skew: Vec<Skew>,
    /// Reservation ids of the bookings (random: as the benchmark did before claims existed).
    #[arg(long, value_enum, default_value = "random")]
    pub ids: Ids,
    /// Longest stay booked (stays are 1 to this many nights).
    #[arg(long, default_value_t = 3)]
    pub max_nights: u32,
    /// Database connections per shard of the in-process server.
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE)]
    pub pool_size: usize,
    /// Skip the pgbench ceiling.
    #[arg(long)]
    pub no_pgbench: bool,
    /// Also compare the concurrency-control strategies (conditional UPDATE, SELECT ... FOR
    /// UPDATE, optimistic versions) with pgbench on each workload.
    #[arg(long)]
    pub strategies: bool,
    /// Skip the final audit of every night against the reservations (slow on a full inventory).
    #[arg(long)]
    pub no_audit: bool,
    #[command(flatten)]
    _cargo: common::CargoBenchFlag,
}

fn main() -> Result<()> {
    common::block_on(run(BenchArgs::parse()))
}

/// Runs the benchmark and prints its figures on stdout.
async fn run(args: BenchArgs) -> Result<()> {
    let (shards, hotels, first_night, days) = discover(&args.config, args.pool_size).await?;
    if days <= args.max_nights {
        bail!("the seeded inventory has {days} nights; --max-nights must be smaller");
    }
    let address = match &args.url {
        Some(url) => resolve(url)?,
        // The server as `rooms serve` runs it: every default timeout of the API in force.
        None => {
            let limits = ShardLimits::default();
            common::serve(&Shards::from_config_with(args.config.config.as_deref(), args.pool_size, limits)?, None)
                .await?
        }
    };
    let pgbench = if args.no_pgbench { None } else { Some(pgbench::find_pgbench()?) };
    let work_dir = std::env::temp_dir().join(format!("clickstay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    println!(
        "inventory: {hotels} hotels on {} shard(s), {days} nights from {first_night}; stays of 1-{} nights; {} clients",
        shards.len(),
        args.max_nights,
        args.clients
    );

    let make_workload = |skew: Skew| Workload {
        name: match skew {
            Skew::Uniform => "uniform",
            Skew::Hot => "hot",
        },
        hotels,
        shards: shards.len(),
        first_night,
        days,
        max_nights: args.max_nights,
        hot_percent: if skew == Skew::Hot { 50 } else { 0 },
        homed_ids: args.ids == Ids::Homed,
    };
    if args.warmup > 0 {
        http_load::run(address, &make_workload(Skew::Uniform), args.clients, Duration::from_secs(args.warmup)).await?;
    }
    let workloads: Vec<Workload> = args.skew.iter().map(|&skew| make_workload(skew)).collect();
    let runner =
        pgbench.as_deref().map(|program| pgbench::Pgbench { program, urls: shards.urls(), work_dir: &work_dir });
    let summary = http_against_pgbench(&args, &shards, address, runner.as_ref(), &workloads).await?;
    if args.strategies {
        let runner = runner.as_ref().context("--strategies needs pgbench")?;
        compare_strategies(&args, &shards, runner, &workloads).await?;
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    println!("{}", claim_cost::measure(&shards, first_night).await?);
    for line in summary {
        println!("{line}");
    }
    if !args.no_audit {
        audit_all(&shards).await?;
    }
    Ok(())
}

/// One row per workload for the HTTP API and, with `pgbench`, one for the ceiling; returns the
/// lines comparing the two.
async fn http_against_pgbench(
    args: &BenchArgs,
    shards: &Shards,
    address: SocketAddr,
    pgbench: Option<&pgbench::Pgbench<'_>>,
    workloads: &[Workload],
) -> Result<Vec<String>> {
    let duration = Duration::from_secs(args.seconds);
    let mut summary = Vec::new();
    println!("{}", stats::header());
    for workload in workloads {
        let before = reservation_count(shards).await?;
        let mut http = http_load::run(address, workload, args.clients, duration).await?;
        let created = reservation_count(shards).await? - before;
        if created != http.reservations {
            bail!("HTTP answered 201 {} times but {created} reservations were created", http.reservations);
        }
        println!("{}", stats::row(workload.name, "http", args.clients, &mut http));
        if let Some(runner) = pgbench {
            let before = reservation_count(shards).await?;
            let mut ceiling = pgbench::run(runner, &pgbench::script(), workload, args.clients, duration).await?;
            ceiling.reservations = reservation_count(shards).await? - before;
            println!("{}", stats::row(workload.name, "pgbench", args.clients, &mut ceiling));
            summary.push(ratio_line(workload.name, &http, &ceiling));
        }
    }
    Ok(summary)
}

/// One row per workload and concurrency-control strategy, each run by pgbench.
async fn compare_strategies(
    args: &BenchArgs,
    shards: &Shards,
    runner: &pgbench::Pgbench<'_>,
    workloads: &[Workload],
) -> Result<()> {
    let duration = Duration::from_secs(args.seconds);
    println!("concurrency control, pgbench straight against PostgreSQL:");
    for workload in workloads {
        for (name, script) in strategies::all() {
            let before = reservation_count(shards).await?;
            let mut run = pgbench::run(runner, &script, workload, args.clients, duration).await?;
            run.reservations = reservation_count(shards).await? - before;
            println!("{}", stats::row(workload.name, name, args.clients, &mut run));
        }
    }
    Ok(())
}

/// Audits every night of every shard against the reservations; fails if any is broken.
async fn audit_all(shards: &Shards) -> Result<()> {
    let mut broken = 0;
    for index in 0..shards.len() {
        broken += audit::audit(&*shards.connect(index).await?).await?.len();
    }
    println!(
        "audit: {broken} night(s) oversold or out of step with their confirmed reservations{}",
        if broken == 0 { " (zero overbooking)" } else { "" }
    );
    if broken > 0 {
        bail!("the audit found broken invariants; run `clickstay rooms check`");
    }
    Ok(())
}

fn ratio_line(workload: &str, http: &RunStats, ceiling: &RunStats) -> String {
    format!(
        "{workload}: HTTP reaches {:.0}% of the pgbench ceiling in reservations/s ({:.0}% in attempts/s)",
        100.0 * http.reservations_per_second() / ceiling.reservations_per_second(),
        100.0 * http.attempts_per_second() / ceiling.attempts_per_second()
    )
}

async fn reservation_count(shards: &Shards) -> Result<u64> {
    let mut total = 0;
    for index in 0..shards.len() {
        let count: i64 = shards.connect(index).await?.query_one("SELECT count(*) FROM reservation", &[]).await?.get(0);
        total += count as u64;
    }
    Ok(total)
}

fn resolve(url: &str) -> Result<SocketAddr> {
    let host_port = url.trim_start_matches("http://").trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .with_context(|| format!("--url: `{url}` is not host:port"))?
        .next()
        .with_context(|| format!("--url: `{url}` resolves to no address"))
}
