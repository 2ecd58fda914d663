//! The `clickstay` binary: one subcommand per job or tool.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: the jobs allocate and free many small buffers on several
/// threads (Kafka batches, rows, archive columns), where glibc spent about a tenth of the
/// streaming job's time and kept freed memory in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ad-click aggregation and hotel reservations on timely/differential dataflow.
#[derive(Parser)]
#[command(name = "clickstay", version, about, long_about = None)]
struct Cli {
    /// How log lines on stderr look: `text` for people (coloured only when stderr is a
    /// terminal), `json` for log shippers (one JSON object a line: timestamp, level, message,
    /// fields, target). `RUST_LOG` picks the levels (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`. Colour codes only reach a terminal: in a file or a pipe they are
/// noise.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write realistic raw click events (CSV or JSON Lines) for tests and benchmarks.
    Gen(clickstay::clicks::generate::GenArgs),
    /// Replay a file of raw click events through the ad-click dataflow and write the results.
    Replay(clickstay::clicks::replay::ReplayArgs),
    /// Write click events to the Kafka topic of `workers.toml`, keyed by ad_id.
    Produce(clickstay::clicks::produce::ProduceArgs),
    /// The streaming job: click events from Kafka through the dataflow into PostgreSQL, exactly once.
    Run(clickstay::clicks::stream::RunArgs),
    /// Check the streaming job's tables against the batch path over its raw archive (and repair them).
    Reconcile(clickstay::clicks::reconcile::ReconcileArgs),
    /// Start the local processes of the cluster in `workers.toml` and wait for them.
    Launch(clickstay::cluster::LaunchArgs),
    /// Hotel reservations: database migration, seeding and the HTTP API.
    #[command(subcommand)]
    Rooms(clickstay::rooms::cli::RoomsCommand),
}

/// Runs the command; a failure is logged (in the chosen log format, PostgreSQL's SQLSTATE and
/// message spelled out) and exits with status 1.
fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(error) = run(cli.command, cli.log_format) {
        tracing::error!("{}", clickstay::pg_error::report(&error));
        std::process::exit(1);
    }
}

fn run(command: Command, log_format: LogFormat) -> Result<()> {
    match command {
        Command::Gen(args) => clickstay::clicks::generate::run(&args),
        Command::Replay(args) => clickstay::clicks::replay::run(args),
        Command::Produce(args) => clickstay::clicks::produce::run(&args),
        Command::Run(args) => clickstay::clicks::stream::run(args),
        Command::Reconcile(args) => {
            // Exit status 2: the check ran and found differences (1 is an error).
            if !clickstay::clicks::reconcile::run(args)? {
                std::process::exit(2);
            }
            Ok(())
        }
        // The processes log as the launcher does.
        Command::Launch(args) => {
            let format = log_format.to_possible_value().expect("every format has a name");
            clickstay::cluster::launch(&args, format.get_name())
        }
        Command::Rooms(command) => clickstay::rooms::cli::run(command),
    }
}
