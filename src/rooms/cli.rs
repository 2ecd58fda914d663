//! `clickstay rooms ...` subcommands: argument parsing and dispatch only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use tracing::info;

use crate::duration::parse_timeout;

use super::shards::{DEFAULT_POOL_SIZE, ShardLimits, Shards};
use super::trips::coordinator::{TripSettings, Trips};
use super::trips::recovery;
use super::view::RoomsView;
use super::{audit, claims, guard, migrate, seed, server};
use crate::rooms::spec::RoomsSpec;

/// The view's spec `rooms serve` uses when it is present in the working directory and neither
/// `--dataflow` nor `--sql-only` is given (as `run` is given its spec).
pub const DEFAULT_VIEW_SPEC: &str = "dataflows/rooms.toml";

/// Hotel reservation commands. Each reads the hotel shards from `[postgres] shards` in the
/// config file (the environment variable CLICKSTAY_HOTEL_SHARDS, comma-separated URLs,
/// overrides it).
#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// Apply the database migrations to every shard (idempotent, versioned).
    Migrate(ConfigArg),
    /// Load a realistic inventory (hotels, room types, one row per night) with COPY.
    Seed(SeedArgs),
    /// Serve the reservation HTTP API, with the availability view of ./dataflows/rooms.toml
    /// when that file is present (see --dataflow, --sql-only).
    Serve(Box<ServeArgs>),
    /// Check the invariants on every shard: no night oversold, and every night's
    /// total_reserved equal to the confirmed reservations covering it.
    Check(ConfigArg),
    /// List what trips left unresolved: prepared transactions, unfinished trips and saga
    /// steps, with their ages (one JSON object per line).
    InDoubt(ConfigArg),
    /// Resolve what trips left: commit or roll back prepared transactions as the coordinator
    /// log says (roll back undecided ones older than --prepare-timeout), finish or compensate
    /// unfinished trips older than it. `rooms serve` does this by itself, periodically.
    Recover(RecoverArgs),
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Leave alone what is younger than this (its coordinator may be alive); 0s resolves
    /// everything now. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub prepare_timeout: Duration,
}

/// `rooms serve`'s trip flags.
#[derive(Args, Debug, Clone)]
pub struct TripArgs {
    /// A trip's prepared transaction (or unfinished saga) this old without a decision is
    /// taken to have lost its coordinator and is rolled back (compensated). Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub prepare_timeout: Duration,
    /// How often the server looks for what a dead coordinator left (also once at start-up).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub recovery_interval: Duration,
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
    /// this spec, kept current by change data capture (default: ./dataflows/rooms.toml when
    /// that file is present; without a spec every request goes to the database).
    #[arg(long, value_name = "FILE", conflicts_with = "sql_only")]
    pub dataflow: Option<PathBuf>,
    /// Serve every request from the database, with no availability view, even where
    /// ./dataflows/rooms.toml is present. A `min_lsn` parameter is then met at once (the
    /// database is always current).
    #[arg(long)]
    pub sql_only: bool,
    /// Worker threads of the view's dataflow.
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub limits: ShardLimits,
    #[command(flatten)]
    pub trips: TripArgs,
    /// Close a connection whose request headers are not complete this long after the server
    /// began reading them (also closes a kept-alive connection idle that long). Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub header_timeout: Duration,
    /// Answer 503 {"error":"timeout"} to a request not answered within this. Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub request_timeout: Duration,
    /// Requests served at once; one more is answered 503 {"error":"busy"} at once.
    #[arg(long, value_name = "N", default_value_t = guard::DEFAULT_MAX_CONCURRENT, value_parser = at_least_one)]
    pub max_concurrent: usize,
    /// On SIGINT or SIGTERM: stop accepting, then give requests in flight this long to finish
    /// before exiting (0 when they all did, 1 when some were cut off). Units: ms, s, m.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_timeout)]
    pub shutdown_grace: Duration,
    /// An origin (scheme://host[:port]) whose browser requests are served; repeat or separate
    /// with commas. A request with any other Origin header is refused 403 (default: none allowed).
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,
    /// Require `Authorization: Bearer TOKEN` on every /v1 request, TOKEN one of this file's lines
    /// (blank lines and #-comments skipped); the env CLICKSTAY_API_TOKENS (comma-separated) adds
    /// tokens too. Without any token, serve listens on loopback addresses only.
    #[arg(long, value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,
}

impl ServeArgs {
    /// The view's spec to serve from: `--dataflow`, else [`DEFAULT_VIEW_SPEC`] where it is
    /// present; none with `--sql-only`.
    fn view_spec(&self) -> Option<PathBuf> {
        if self.sql_only {
            return None;
        }
        let default = Path::new(DEFAULT_VIEW_SPEC);
        self.dataflow.clone().or_else(|| default.is_file().then(|| default.to_path_buf()))
    }

    /// The server's options from the flags and the environment (reads the tokens file).
    fn options(&self) -> Result<server::Options> {
        Ok(server::Options {
            transport: server::Transport { header_timeout: self.header_timeout, shutdown_grace: self.shutdown_grace },
            limits: guard::Limits { request_timeout: self.request_timeout, max_concurrent: self.max_concurrent },
            access: guard::Access {
                allow_origins: self.allow_origin.iter().map(|origin| origin.trim().to_string()).collect(),
                tokens: guard::tokens_from(self.auth_tokens.as_ref())?,
            },
            trips: TripSettings {
                prepare_timeout: self.trips.prepare_timeout,
                recovery_interval: self.trips.recovery_interval,
            },
        })
    }
}

/// A count of 1 or more.
fn at_least_one(text: &str) -> Result<usize, String> {
    text.parse().ok().filter(|n| *n >= 1).ok_or_else(|| format!("`{text}` is not a whole number of 1 or more"))
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
                let options = args.options()?;
                // Before any database work: a refused address should fail fast.
                options.access.check_listen(args.listen)?;
                let view_spec = args.view_spec();
                let shards = Shards::from_config_with(args.config.config.as_deref(), args.pool_size, args.limits)?;
                let view = match view_spec {
                    Some(path) => {
                        info!(spec = %path.display(), "availability and sold-out checks served by the view");
                        Some(RoomsView::start(RoomsSpec::load(&path)?, shards.urls(), args.workers)?)
                    }
                    None => {
                        let why = if args.sql_only { "--sql-only" } else { "no ./dataflows/rooms.toml here" };
                        info!(reason = why, "every request served from the database (SQL only, no view)");
                        None
                    }
                };
                server::serve(args.listen, shards, view, options).await
            }
            RoomsCommand::Check(config) => run_check(config).await,
            RoomsCommand::InDoubt(config) => run_in_doubt(config).await,
            RoomsCommand::Recover(args) => run_recover(args).await,
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

/// The shards with the API's bounds (the trip tools ask every shard within a timeout).
fn trip_tools(config: &ConfigArg, prepare_timeout: Duration) -> Result<Trips> {
    let shards = Shards::from_config_with(config.config.as_deref(), 2, ShardLimits::default())?;
    let settings = TripSettings { prepare_timeout, ..TripSettings::default() };
    Ok(Trips::new(shards.clone(), claims::spawn_all(&shards), settings))
}

async fn run_in_doubt(config: ConfigArg) -> Result<()> {
    let trips = trip_tools(&config, TripSettings::default().prepare_timeout)?;
    let lines = recovery::in_doubt(&trips).await?;
    for line in &lines {
        println!("{line}");
    }
    if lines.is_empty() {
        eprintln!("nothing in doubt: no prepared transaction, no unfinished trip");
    }
    Ok(())
}

async fn run_recover(args: RecoverArgs) -> Result<()> {
    let trips = trip_tools(&args.config, args.prepare_timeout)?;
    let report = recovery::recover(&trips, args.prepare_timeout, Duration::ZERO).await;
    println!("{}", serde_json::to_string(&report)?);
    let left = recovery::in_doubt(&trips).await?;
    for line in &left {
        println!("{line}");
    }
    if report.shards_unanswered > 0 {
        bail!("{} shard(s) did not answer; run recover again once they are back", report.shards_unanswered);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flag_defaults_are_the_library_defaults() {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let args = <Wrap as clap::Parser>::try_parse_from(["serve"]).unwrap().serve;
        let defaults = server::Options::default();
        assert_eq!(args.header_timeout, defaults.transport.header_timeout);
        assert_eq!(args.shutdown_grace, defaults.transport.shutdown_grace);
        assert_eq!(args.request_timeout, defaults.limits.request_timeout);
        assert_eq!(args.max_concurrent, defaults.limits.max_concurrent);
        assert!(args.allow_origin.is_empty() && args.auth_tokens.is_none());
        assert!(defaults.transport.shutdown_grace > defaults.limits.request_timeout);
        assert_eq!(args.trips.prepare_timeout, defaults.trips.prepare_timeout);
        assert_eq!(args.trips.recovery_interval, defaults.trips.recovery_interval);
    }
}
