//! `clickstay replay`: a file of raw events through the ad-click dataflow, results to CSV files.
//!
//! This is the batch path of the design (reconciliation, back-fills, and the reference the
//! streaming job is checked against): the same dataflow, the same event-time rules, a file as
//! the source and CSV files as the sinks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::dataflow::{self, Emit, Positions};
use super::driver::{Driver, RunTotals};
use super::event::Format;
use super::event::{self, MAX_LINE_BYTES};
use crate::checkpoint::Restore;
use crate::clicks::spec::DataflowSpec;
use crate::cluster::{WorkerArgs, Workers};
use crate::progress;
use crate::sinks::Sink;
use crate::sinks::csv::CsvSink;
use crate::sources::file::{DEFAULT_CHUNK_BYTES, FileOptions, FileSource};
use crate::sources::{LineSource, Share, Source};

/// Options of `clickstay replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The dataflow spec (e.g. dataflows/ad_clicks.toml).
    #[arg(long)]
    pub dataflow: PathBuf,
    /// The file of raw click events.
    #[arg(long)]
    pub input: PathBuf,
    /// The input format (default: from the file extension, .csv or .jsonl).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// The folder for the result files (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Bytes per chunk of input that a worker reads in one round.
    #[arg(long, default_value_t = DEFAULT_CHUNK_BYTES, hide_short_help = true)]
    pub chunk_bytes: u64,
}

pub fn run(args: ReplayArgs) -> Result<()> {
    let spec = Arc::new(DataflowSpec::load(&args.dataflow)?);
    let format = match args.format.or_else(|| Format::from_path(&args.input)) {
        Some(format) => format,
        None => bail!(
            "cannot tell the format of {} from its name; pass --format csv or --format jsonl",
            args.input.display()
        ),
    };
    event::check_header(&args.input, format)?;
    let workers = Workers::from_args(&args.workers)?;
    if workers.is_first_process() {
        std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    }
    let started = Instant::now();
    let input = args.input.clone();
    let out = args.out.clone();
    let chunk_bytes = args.chunk_bytes;
    let results = crate::cluster::run_workers(&workers, move |worker| {
        replay_worker(worker, &spec, &input, format, chunk_bytes, &out)
    })?;
    let totals = results.into_iter().next().context("no worker ran")?;
    if workers.is_first_process() {
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "replayed {}: read {} events, accepted {}, late {}, rejected {} in {:.2} s ({:.0} events/s)",
            args.input.display(),
            totals.read,
            totals.accepted(),
            totals.late,
            totals.rejected,
            seconds,
            totals.read as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}

/// One worker's part of a replay.
fn replay_worker(
    worker: &mut timely::worker::Worker,
    spec: &DataflowSpec,
    input: &Path,
    format: Format,
    chunk_bytes: u64,
    out: &Path,
) -> Result<RunTotals> {
    let options = FileOptions {
        path: input.to_path_buf(),
        chunk_bytes,
        header: format == Format::Csv,
        max_line_bytes: MAX_LINE_BYTES,
    };
    let share = Share::new(worker.index(), worker.peers());
    let mut source = FileSource::open(&options, share, &Default::default())?;
    let make_sink = |sink: &crate::clicks::spec::SinkSpec,
                     schema: &crate::sinks::TableSchema|
     -> Result<Box<dyn Sink>> { Ok(Box::new(CsvSink::create(out, &sink.file, schema)?)) };
    let progress = "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    run_batch(worker, spec, &mut source, format, &Positions::Lines, &make_sink, progress)
}

/// The batch path on one worker, for any source: the dataflow with `Emit::Final` sinks (made by
/// `make_sink` on worker 0), the driver without checkpoints, run to the end of the source, then
/// wound down and the sinks finished. Worker 0 shows a progress bar on a terminal, of the
/// source's own unit (`template` is an `indicatif` template). Replay and reconcile use it.
pub(super) fn run_batch<S: LineSource>(
    worker: &mut timely::worker::Worker,
    spec: &DataflowSpec,
    source: &mut S,
    format: Format,
    positions: &Positions,
    make_sink: dataflow::SinkFactory,
    template: &str,
) -> Result<RunTotals> {
    let first_worker = worker.index() == 0;
    let make_sink = first_worker.then_some(make_sink);
    let mut dataflow = dataflow::build(worker, spec, positions, Emit::Final, make_sink)?;
    let mut driver = Driver::new(worker, spec, &source.partitions(), None, Restore::default(), &|_| true);
    let bar = if first_worker { progress::bar(source.progress().1, template) } else { progress::hidden() };
    let totals = driver.run(worker, source, format, &mut dataflow, None, |source| {
        bar.set_position(source.progress().0);
    })?;
    bar.finish_and_clear();
    // Every pane was flushed by the driver; close the inputs and let the dataflows wind down.
    let probe = dataflow.probe.clone();
    let sinks = std::rc::Rc::clone(&dataflow.sinks);
    drop(dataflow);
    while !probe.done() {
        worker.step_or_park(Some(std::time::Duration::from_millis(1)));
    }
    sinks.borrow_mut().finish()?;
    Ok(totals)
}
