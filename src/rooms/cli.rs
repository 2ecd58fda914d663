//! `clickstay rooms ...` subcommands: argument parsing and dispatch only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};

use super::shards::{DEFAULT_POOL_SIZE, ShardLimits, Shards};
use super::view::RoomsView;
use super::{audit, migrate, seed, server};
use crate::rooms::spec::RoomsSpec;

/// Hotel reservation commands. Each reads the hotel shards from `[postgres] shards` in the
/// config file (the environment variable CLICKSTAY_HOTEL_SHARDS, comma-separated URLs,
/// overrides it).
#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// Apply the database migrations to every shard (idempotent, versioned).
    Migrate(ConfigArg),
    /// Load a realistic inventory (hotels, room types, one row per night) with COPY.
    Seed(SeedArgs),
    /// Serve the reservation HTTP API.
    Serve(ServeArgs),
    /// Check the invariants on every shard: no night oversold, and every night's
    /// total_reserved equal to the confirmed reservations covering it.
    Check(ConfigArg),
}

/// `--config`: where the shards are listed.
#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// The workers.toml to read `[postgres] shards` from (default: ./workers.toml if present,
    /// else the environment alone).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SeedArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Number of hotels (ids 1..=N).
    #[arg(long, default_value_t = 5000)]
    pub hotels: u32,
    /// Rooms in all, spread over the hotels (sizes vary) and their 2 to 5 room types.
    #[arg(long, default_value_t = 1_000_000)]
    pub rooms: u64,
    /// Nights of inventory, one row per room type and night.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// First night of inventory, YYYY-MM-DD (default: today, UTC).
    #[arg(long)]
    pub start: Option<NaiveDate>,
    /// Share of sellable room-nights already booked, simulated with real reservation rows.
    #[arg(long, default_value_t = 0.02)]
    pub occupancy: f64,
    /// Random seed; the same seed loads the same data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Empty shards that already hold hotels instead of refusing.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = server::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database connections per shard.
    #[arg(long, default_value_t = DEFAULT_POOL_SIZE)]
    pub pool_size: usize,
    /// Serve availability and refuse sold-out bookings from the availability view declared in
    /// this spec (e.g. dataflows/rooms.toml), kept current by change data capture. Without it,
    /// every request goes to the database.
    #[arg(long, value_name = "FILE")]
    pub dataflow: Option<PathBuf>,
    /// Worker threads of the view's dataflow (with --dataflow).
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub limits: ShardLimits,
}

/// Runs one `rooms` subcommand to completion.
pub fn run(command: RoomsCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        match command {
            RoomsCommand::Migrate(config) => {
                let shards = Shards::from_config(config.config.as_deref(), 1)?;
                migrate::migrate_all(&shards).await
            }
            RoomsCommand::Seed(args) => run_seed(args).await,
            RoomsCommand::Serve(args) => {
                let shards = Shards::from_config_with(args.config.config.as_deref(), args.pool_size, args.limits)?;
                let view = match &args.dataflow {
                    Some(path) => Some(RoomsView::start(RoomsSpec::load(path)?, shards.urls(), args.workers)?),
                    None => None,
                };
                server::serve(args.listen, shards, view).await
            }
            RoomsCommand::Check(config) => run_check(config).await,
        }
    })
}

async fn run_seed(args: SeedArgs) -> Result<()> {
    let shards = Shards::from_config(args.config.config.as_deref(), 1)?;
    let spec = seed::SeedSpec {
        hotels: args.hotels,
        rooms: args.rooms,
        days: args.days,
        start: args.start.unwrap_or_else(|| Utc::now().date_naive()),
        occupancy: args.occupancy,
        seed: args.seed,
    };
    let started = Instant::now();
    let report = seed::seed(&shards, &spec, args.replace).await?;
    println!(
        "seeded {} hotels, {} room types, {} inventory rows, {} reservations from {} over {} shard(s) in {:.1}s",
        report.hotels,
        report.room_types,
        report.inventory_rows,
        report.reservations,
        spec.start,
        shards.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run_check(config: ConfigArg) -> Result<()> {
    let shards = Shards::from_config(config.config.as_deref(), 1)?;
    let mut broken = 0;
    for index in 0..shards.len() {
        let client = shards.connect(index).await?;
        let violations = audit::audit(&client).await.with_context(|| format!("shard {index}"))?;
        for violation in &violations {
            println!("shard {index}: {}", serde_json::to_string(violation)?);
        }
        broken += violations.len();
    }
    if broken > 0 {
        bail!("{broken} night(s) break the invariants");
    }
    println!("ok: no night oversold, every total_reserved matches its confirmed reservations");
    Ok(())
}
