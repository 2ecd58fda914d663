//! `clickstay reconcile`: the streaming job's results checked against the batch path.
//!
//! The committed raw archive (`raw_archive`) of a job is read back, each partition in offset
//! order (`source.rs`), and run through the same dataflow as `replay` runs a file (the same
//! driver, lateness per partition in partition order, `Emit::Final`), into rows kept in memory
//! (`sinks::memory`). For every pane and window in `[from, to)` of every result table, and for
//! the late clicks of that time, the batch rows are compared by key with the job's rows in
//! PostgreSQL (`compare.rs`); `--repair` writes the batch values of every row that differs, is
//! missing or is extra, in one transaction with the record of the run (`reconciliations`).
//!
//! How far back it reads: lateness in a partition depends on the largest event time before
//! each event, from the partition's first offset, so the job's bounded re-read at restart (the
//! first offset of the oldest pane not final, with the watermark there) is what reproduces it
//! from the middle. This first version reads every partition's archive from its start, which is
//! that rule's trivially safe case: every decision is remade from the beginning. Rejected lines
//! are not archived, so `rejected_events` is not reconciled.

mod compare;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use self::compare::{Report, TableComparison, TableReport, compare};
use self::source::{ArchiveOptions, ArchiveSource};
use super::dataflow::Positions;
use super::event::Format;
use crate::checkpoint::ArchivedRange;
use crate::clicks::spec::DataflowSpec;
use crate::cluster::{WorkerArgs, Workers};
use crate::config::WorkersConfig;
use crate::progress;
use crate::sinks::memory::{MemoryRows, MemorySink};
use crate::sinks::postgres::reconcile::{PgReconciler, RunRecord, TableRepair};
use crate::sinks::{Sink, TableSchema, Value};
use crate::sources::{Share, Source};

/// Options of `clickstay reconcile`.
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// The dataflow spec the streaming job runs (e.g. dataflows/ad_clicks.toml).
    #[arg(long)]
    pub dataflow: PathBuf,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Start of the range to check, epoch milliseconds, on a pane boundary (inclusive).
    #[arg(long, value_name = "MS")]
    pub from: u64,
    /// End of the range to check, epoch milliseconds, on a pane boundary (exclusive).
    #[arg(long, value_name = "MS")]
    pub to: u64,
    /// The streaming job's name (default: the spec's name), as given to `clickstay run --job`.
    #[arg(long)]
    pub job: Option<String>,
    /// The job's raw-event archive (its `clickstay run --archive`).
    #[arg(long, default_value = "archive")]
    pub archive: PathBuf,
    /// Write the batch values of every differing, missing or extra row, in one transaction.
    #[arg(long)]
    pub repair: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

/// What every worker needs.
struct Shared {
    spec: DataflowSpec,
    topic: String,
    archive: ArchiveOptions,
    from: u64,
    to: u64,
}

/// A result table worker 0 collected: its name, schema and the rows of the range.
type Collected = Vec<(String, TableSchema, Vec<Vec<Value>>)>;

/// Runs a reconciliation; true when nothing differs. Only process 0 compares and reports.
pub fn run(args: ReconcileArgs) -> Result<bool> {
    let spec = DataflowSpec::load(&args.dataflow)?;
    check_range(&spec, &args.dataflow, args.from, args.to)?;
    let config = match crate::cluster::config_path(&args.workers) {
        Some(path) => WorkersConfig::load(&path)?,
        None => WorkersConfig::from_env_only(),
    };
    let clicks_db = config.clicks_db()?.to_string();
    let job = args.job.clone().unwrap_or_else(|| spec.name.clone());
    let mut pg = PgReconciler::connect(&clicks_db, &job)?;
    let jobs = pg.jobs()?;
    let topics: Vec<&str> = jobs.iter().filter(|(name, _)| *name == job).map(|(_, topic)| topic.as_str()).collect();
    let configured = config.kafka().ok().map(|kafka| kafka.topic.as_str());
    let topic = match topics[..] {
        [] => {
            let mut known: Vec<&str> = jobs.iter().map(|(name, _)| name.as_str()).collect();
            known.dedup();
            bail!(
                "unknown job `{job}`: the clicks database has no checkpoint of it (known jobs: {}); pass --job as given to `clickstay run`",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            );
        }
        [only] => only.to_string(),
        _ => match configured.filter(|t| topics.contains(t)) {
            Some(topic) => topic.to_string(),
            None => bail!(
                "job `{job}` has checkpoints on the topics {}: say which in [kafka] topic of --config",
                topics.join(", ")
            ),
        },
    };
    let ranges = committed_ranges(&mut pg, &job, &topic, &args.archive)?;
    let workers = Workers::from_args(&args.workers)?;
    let positions = Positions::offsets(&topic);
    let tables: Vec<(String, TableSchema, usize)> = spec
        .sinks
        .iter()
        .filter_map(|sink| {
            let schema = super::dataflow::sink_schema(&spec, sink, &positions);
            time_column(&schema).map(|column| (sink.table.clone(), schema, column))
        })
        .collect();
    // Process 0 reads the job's rows while the workers compute the batch's.
    let (from, to) = (args.from, args.to);
    let tables_read = Arc::new(AtomicUsize::new(0));
    let streamed = workers.is_first_process().then(|| {
        let (tables, job, tables_read) = (tables.clone(), job.clone(), Arc::clone(&tables_read));
        std::thread::spawn(move || -> Result<Vec<Vec<Vec<Value>>>> {
            let started = Instant::now();
            let mut pg = PgReconciler::connect(&clicks_db, &job)?;
            pg.begin_snapshot()?;
            let rows = tables
                .iter()
                .map(|(table, schema, c)| {
                    let rows = pg.read_rows(table, schema, *c, from, to);
                    tables_read.fetch_add(1, Ordering::Relaxed);
                    rows
                })
                .collect();
            pg.end_snapshot()?;
            tracing::debug!(seconds = started.elapsed().as_secs_f64(), "read the job's rows");
            rows
        })
    });
    let shared = Arc::new(Shared {
        spec,
        topic: topic.clone(),
        archive: ArchiveOptions { root: args.archive.clone(), ranges },
        from: args.from,
        to: args.to,
    });
    let started = Instant::now();
    let worker_shared = Arc::clone(&shared);
    let results = crate::cluster::run_workers(&workers, move |worker| batch_worker(worker, &worker_shared))?;
    let batch_seconds = started.elapsed().as_secs_f64();
    let Some(streamed) = streamed else { return Ok(true) };
    tracing::debug!(seconds = batch_seconds, "batch done");
    // After the batch's bar, the rest of the run (the job's rows, the comparison, the record).
    let rest = progress::counter("{spinner} {msg} {elapsed}");
    while !streamed.is_finished() {
        let read = tables_read.load(Ordering::Relaxed);
        rest.set_message(format!("reading the job's rows from PostgreSQL: {read} of {} tables", tables.len()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let streamed = streamed.join().map_err(|_| anyhow::anyhow!("the thread reading PostgreSQL panicked"))??;
    let compared = Instant::now();
    let (read, collected) = results.into_iter().next().context("no worker ran")?;
    let mut collected = collected.context("worker 0 collected no rows")?;
    let pane_ms = shared.spec.time.pane_ms;
    let mut comparisons = Vec::new();
    for ((table, schema, time_column), streamed) in tables.iter().zip(&streamed) {
        let index = collected.iter().position(|(t, ..)| t == table).context("a table the batch did not write")?;
        let (_, _, batch) = collected.swap_remove(index);
        rest.set_message(format!("comparing {table}"));
        let windows = schema.columns.iter().any(|c| c.name == "window_end");
        let unit = if windows { "windows" } else { "panes" };
        comparisons.push(compare(table, schema, *time_column, unit, |t| t - t % pane_ms, &batch, streamed));
    }
    tracing::debug!(seconds = compared.elapsed().as_secs_f64(), "compared");
    let repaired = if args.repair { comparisons.iter().map(TableComparison::mismatches).sum() } else { 0 };
    let report = Report {
        job: job.clone(),
        from: args.from,
        to: args.to,
        archived_events: read,
        batch_seconds,
        checked: comparisons.iter().map(|c| c.checked).sum(),
        equal: comparisons.iter().map(|c| c.equal).sum(),
        differing: comparisons.iter().map(|c| c.differing.len() as u64).sum(),
        missing: comparisons.iter().map(|c| c.missing.len() as u64).sum(),
        extra: comparisons.iter().map(|c| c.extra.len() as u64).sum(),
        repaired,
        tables: comparisons.iter().map(TableReport::of).collect(),
    };
    let mismatches = report.differing + report.missing + report.extra;
    let repairs: Vec<TableRepair> = if args.repair {
        comparisons
            .iter()
            .filter(|c| c.mismatches() > 0)
            .map(|c| TableRepair {
                table: &c.table,
                schema: &c.schema,
                upserts: c
                    .differing
                    .iter()
                    .map(|(_, batch)| batch.as_slice())
                    .chain(c.missing.iter().map(Vec::as_slice))
                    .collect(),
                deletes: c.extra.iter().map(Vec::as_slice).collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let record =
        RunRecord { job, from: args.from, to: args.to, checked: report.checked, differing: mismatches, repaired };
    rest.set_message(if args.repair { "repairing and recording the run" } else { "recording the run" });
    pg.commit(&record, &repairs)?;
    rest.finish_and_clear();
    print!("{}", report.text());
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json).with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    tracing::info!(checked = report.checked, mismatches, repaired, "reconciled");
    Ok(mismatches == 0)
}

/// `[from, to)` must be a non-empty range of whole panes.
fn check_range(spec: &DataflowSpec, path: &Path, from: u64, to: u64) -> Result<()> {
    if to <= from {
        bail!("--to {to} is not after --from {from}: the range [from, to) is empty");
    }
    let pane = spec.time.pane_ms;
    for (flag, value) in [("--from", from), ("--to", to)] {
        if !value.is_multiple_of(pane) {
            let below = value - value % pane;
            bail!(
                "{flag} {value} is not on a pane boundary: the panes of {} are {pane} ms (nearest boundaries {below} and {})",
                path.display(),
                below + pane
            );
        }
    }
    Ok(())
}

/// The job's committed archive ranges by partition, checked: the archive directory exists,
/// each partition's ranges follow each other, and every file listed is there.
fn committed_ranges(
    pg: &mut PgReconciler,
    job: &str,
    topic: &str,
    root: &Path,
) -> Result<BTreeMap<u32, Vec<ArchivedRange>>> {
    if !root.is_dir() {
        bail!(
            "the archive {} does not exist: pass --archive as given to `clickstay run` for job `{job}`",
            root.display()
        );
    }
    let mut ranges: BTreeMap<u32, Vec<ArchivedRange>> = BTreeMap::new();
    for (partition, incarnation, range) in pg.archived_ranges(job, topic)? {
        if incarnation > 0 {
            bail!(
                "partition {partition} of job `{job}` lost records and was read anew from its start \
                 (incarnation {incarnation}, see source_gaps): its offsets repeat, and reconcile replays \
                 each offset of a partition once, so it cannot check this job"
            );
        }
        if let Some(last) = ranges.get(&partition).and_then(|r| r.last())
            && last.next != range.first
        {
            bail!(
                "raw_archive of job `{job}`, partition {partition}: offsets {} to {} are missing between two ranges",
                last.next,
                range.first
            );
        }
        for file in &range.files {
            if !root.join(file).is_file() {
                bail!(
                    "the archive {} is missing {file}, which raw_archive lists for job `{job}` (partition {partition}, offsets {} to {})",
                    root.display(),
                    range.first,
                    range.next
                );
            }
        }
        ranges.entry(partition).or_default().push(range);
    }
    if ranges.is_empty() {
        bail!("job `{job}` has no committed archive ranges in raw_archive: nothing to reconcile");
    }
    Ok(ranges)
}

/// The column a table's rows are selected by for `[from, to)`: a pane's or window's start, or
/// a late click's time. None for tables that are not reconciled (rejected lines).
fn time_column(schema: &TableSchema) -> Option<usize> {
    let position = |name: &str| schema.columns.iter().position(|c| c.name == name);
    position("window_start").or_else(|| position("click_ts"))
}

/// One worker: its share of the archive through the dataflow; worker 0 returns the rows of the
/// range, by table.
fn batch_worker(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<(u64, Option<Collected>)> {
    let share = Share::new(worker.index(), worker.peers());
    let mut source = ArchiveSource::open(&shared.archive, share, &BTreeMap::new())?;
    let kept: std::cell::RefCell<Vec<(String, TableSchema, MemoryRows)>> = Default::default();
    let (from, to) = (shared.from, shared.to);
    let make_sink = |sink: &crate::clicks::spec::SinkSpec, schema: &TableSchema| -> Result<Box<dyn Sink>> {
        let column = time_column(schema);
        let keep = move |row: &[Value]| match column.map(|c| &row[c]) {
            Some(Value::Integer(t) | Value::Timestamp(t)) => (from..to).contains(t),
            _ => false,
        };
        let (sink_box, rows) = MemorySink::new(schema, Box::new(keep));
        kept.borrow_mut().push((sink.table.clone(), schema.clone(), rows));
        Ok(Box::new(sink_box))
    };
    let positions = Positions::offsets(&shared.topic);
    let template = "{bar:40} {pos}/{len} offsets, {rate}, eta {eta}";
    let totals =
        super::replay::run_batch(worker, &shared.spec, &mut source, Format::Packed, &positions, &make_sink, template)?;
    let collected = (worker.index() == 0)
        .then(|| kept.take().into_iter().map(|(table, schema, rows)| (table, schema, rows.take())).collect());
    Ok((totals.read, collected))
}
