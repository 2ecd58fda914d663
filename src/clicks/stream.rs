//! `clickstay run`: the streaming job. Click events from a Kafka topic, the dataflow of a spec,
//! results and consumed offsets committed to PostgreSQL in one transaction per checkpoint, raw
//! events archived as Parquet files; a crash at any moment costs neither a lost nor a doubled
//! click (see `driver/` for the checkpoint and recovery protocol).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::dataflow::{self, Emit, Positions};
use super::driver::{Driver, StreamPolicy};
use super::event::ClickEvent;
use super::event::{Format, MAX_LINE_BYTES};
use crate::checkpoint::{Checkpoint, Checkpointer, Restore};
use crate::clicks::query::{HubAsker, QueryHub};
use crate::clicks::spec::DataflowSpec;
use crate::cluster::{WorkerArgs, Workers};
use crate::config::{KafkaConfig, WorkersConfig};
use crate::sinks::Sink;
use crate::sinks::postgres::PgWriter;
use crate::sources::kafka::{KafkaOptions, KafkaSource};
use crate::sources::{Share, Source};

/// Options of `clickstay run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The dataflow spec (e.g. dataflows/ad_clicks.toml).
    #[arg(long)]
    pub dataflow: PathBuf,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// The job's name: its checkpoint in Postgres is kept under it (default: the spec's name).
    #[arg(long)]
    pub job: Option<String>,
    /// Where the raw events are archived as Parquet files.
    #[arg(long, default_value = "archive")]
    pub archive: PathBuf,
    /// Seconds between checkpoints (a Postgres transaction each).
    #[arg(long, default_value_t = 1.0)]
    pub checkpoint_interval: f64,
    /// Seconds without a record after which a partition stops holding back the watermark.
    #[arg(long, default_value_t = 10.0)]
    pub idle_timeout: f64,
    /// Seconds without any record after which the job treats the input as ended: it flushes
    /// every pane, commits and exits (for tests and back-fills; by default it runs forever).
    #[arg(long)]
    pub exit_when_idle: Option<f64>,
    /// Serve questions to the live counts as JSON over HTTP on this address (process 0 only;
    /// see the README's "Asking the running job"). Default: no listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// When records the job expects are gone from a partition (retention, a recreated topic, a
    /// broker that lost data), record the gap in the `source_gaps` table, log it and read on
    /// from the partition's earliest offset, counting the records there as new. Without it,
    /// the job stops with an error naming the topic, partition and offsets.
    #[arg(long)]
    pub allow_offset_gap: bool,
}

/// Everything a worker needs, shared by the threads of a process.
struct Job {
    spec: DataflowSpec,
    kafka: KafkaConfig,
    clicks_db: String,
    job: String,
    archive: PathBuf,
    policy: StreamPolicy,
    restore: Restore,
    /// With `--listen`: every worker builds the question side of the dataflow.
    askable: bool,
    /// Worker 0 of process 0 takes the questions from here.
    asker: std::sync::Mutex<Option<HubAsker>>,
}

pub fn run(args: RunArgs) -> Result<()> {
    let spec = DataflowSpec::load(&args.dataflow)?;
    let config = match crate::cluster::config_path(&args.workers) {
        Some(path) => WorkersConfig::load(&path)?,
        None => WorkersConfig::from_env_only(),
    };
    let kafka = config.kafka()?.clone();
    let clicks_db = config.clicks_db()?.to_string();
    let workers = Workers::from_args(&args.workers)?;
    let job = args.job.clone().unwrap_or_else(|| spec.name.clone());
    let seconds = |what: &str, s: f64| -> Result<Duration> {
        Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{what}: `{s}` is not a number of seconds"))
    };
    let policy = StreamPolicy {
        checkpoint_every: seconds("checkpoint-interval", args.checkpoint_interval)?,
        idle_partition: seconds("idle-timeout", args.idle_timeout)?,
        drain_when_idle: args.exit_when_idle.map(|s| seconds("exit-when-idle", s)).transpose()?,
    };
    crate::sources::kafka::ensure_topic(&kafka)?;
    let tables: Vec<_> = table_schemas(&spec, &kafka.topic);
    let mut writer = PgWriter::open(&clicks_db, &job, &kafka.topic, &tables)?;
    let restore = writer.restore()?;
    let (restore, gaps) = crate::sources::kafka::check_offsets(&kafka, &restore, args.allow_offset_gap)?;
    writer.record_gaps(&gaps)?;
    if workers.is_first_process() {
        remove_uncommitted_archive_files(&args.archive, &writer.archived_files()?)?;
    }
    drop(writer);
    tracing::info!(%job, topic = %kafka.topic, restored_partitions = restore.partitions.len(), job_time = restore.job_time, "starting");
    let mut asker = None;
    if let Some(listen) = args.listen {
        check_askable(&spec)?;
        let (hub, hub_asker) = QueryHub::new(&spec);
        if workers.is_first_process() {
            crate::clicks::query::api::spawn(listen, hub)?;
            asker = Some(hub_asker);
        }
    }
    let shared = Arc::new(Job {
        spec,
        kafka,
        clicks_db,
        job,
        archive: args.archive.clone(),
        policy,
        restore,
        askable: args.listen.is_some(),
        asker: std::sync::Mutex::new(asker),
    });
    crate::cluster::run_workers(&workers, move |worker| stream_worker(worker, &shared))?;
    Ok(())
}

/// A job that answers questions moves its input on by sub-ticks below the next pane boundary
/// (see `driver/`), which is right only when every close time is on a pane boundary.
fn check_askable(spec: &DataflowSpec) -> Result<()> {
    let time = spec.time;
    if !time.allowed_lateness_ms.is_multiple_of(time.pane_ms) {
        anyhow::bail!(
            "{}: time.allowed_lateness must be a whole number of panes for --listen (questions to the running job)",
            spec.path.display()
        );
    }
    if crate::clicks::dataflow::questions::Catalog::of(spec).counts.is_empty() {
        anyhow::bail!("{}: --listen needs a count node that reads the source", spec.path.display());
    }
    Ok(())
}

/// The output tables of a spec, as the streaming job writes them.
fn table_schemas(spec: &DataflowSpec, topic: &str) -> Vec<(String, crate::sinks::TableSchema)> {
    let positions = Positions::Offsets { topic: topic.to_string() };
    spec.sinks.iter().map(|sink| (sink.table.clone(), dataflow::sink_schema(spec, sink, &positions))).collect()
}

/// Files a crash left behind before their checkpoint committed: the ranges will be written
/// again, so the archive holds every event exactly once.
fn remove_uncommitted_archive_files(root: &Path, committed: &[String]) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    remove_temporary_files(root)?;
    let committed: std::collections::HashSet<&str> = committed.iter().map(String::as_str).collect();
    for (path, ..) in super::archive::list_archive(root)? {
        let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
        if !committed.contains(relative.as_str()) {
            tracing::info!(file = %path.display(), "removing an archive file no checkpoint committed");
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Half-written `*.tmp` files of a crashed run (complete files are renamed into place).
fn remove_temporary_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            remove_temporary_files(&path)?;
        } else if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// One worker of the streaming job.
fn stream_worker(worker: &mut timely::worker::Worker, job: &Job) -> Result<()> {
    let index = worker.index();
    let share = Share::new(index, worker.peers());
    let resume =
        job.restore.partitions.iter().filter(|(p, _)| share.owns(**p)).map(|(p, r)| (*p, r.restart_offset)).collect();
    let options = KafkaOptions { kafka: job.kafka.clone(), max_record_bytes: MAX_LINE_BYTES };
    let mut source = KafkaSource::open(&options, share, &resume)?;
    let writer = if index == 0 {
        let tables = table_schemas(&job.spec, &job.kafka.topic);
        let mut writer = PgWriter::open(&job.clicks_db, &job.job, &job.kafka.topic, &tables)?;
        writer.restore()?; // numbers this run's checkpoints after the committed ones
        Some(Rc::new(RefCell::new(writer)))
    } else {
        None
    };
    let make_sink =
        |sink: &crate::clicks::spec::SinkSpec, schema: &crate::sinks::TableSchema| -> Result<Box<dyn Sink>> {
            let writer = writer.as_ref().context("sinks live on worker 0")?;
            Ok(Box::new(PgWriter::table(writer, &sink.table, schema)))
        };
    let positions = Positions::Offsets { topic: job.kafka.topic.clone() };
    let make_sink = writer.is_some().then_some(&make_sink as dataflow::SinkFactory);
    let mut dataflow = dataflow::build_with_questions(
        worker,
        &job.spec,
        &positions,
        Emit::Changes { restored: job.restore.job_time },
        make_sink,
        job.askable,
    )?;
    let owned = |partition: u32| share.owns(partition);
    let mut driver =
        Driver::new(worker, &job.spec, &source.partitions(), Some(job.policy), job.restore.clone(), &owned);
    if index == 0
        && let Some(asker) = job.asker.lock().expect("not poisoned").take()
    {
        driver.ask_with(Box::new(asker));
    }
    let mut checkpointer = StreamCheckpointer { archive: job.archive.clone(), topic: job.kafka.topic.clone(), writer };
    let totals = driver.run(worker, &mut source, Format::Jsonl, &mut dataflow, Some(&mut checkpointer), |_| {})?;
    if let Some(writer) = &checkpointer.writer {
        writer.borrow_mut().wait_committed()?; // the last checkpoint commits in the background
    }
    if index == 0 {
        tracing::info!(read = totals.read, late = totals.late, rejected = totals.rejected, "drained and committed");
    }
    Ok(())
}

/// The streaming job's checkpoints: Parquet files for the archive, one Postgres transaction for
/// the rest (committed in the background, see [`PgWriter::commit`]).
struct StreamCheckpointer {
    archive: PathBuf,
    topic: String,
    writer: Option<Rc<RefCell<PgWriter>>>,
}

impl Checkpointer<ClickEvent> for StreamCheckpointer {
    fn archive(&mut self, partition: u32, first: u64, next: u64, events: &[(u64, ClickEvent)]) -> Result<Vec<String>> {
        let files = super::archive::write_archive(
            &self.archive,
            &self.topic,
            partition as i32,
            first as i64,
            next as i64,
            events,
        )?;
        Ok(files.iter().map(|f| f.strip_prefix(&self.archive).unwrap_or(f).to_string_lossy().into_owned()).collect())
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.writer.as_ref().context("commits happen on worker 0")?.borrow_mut().commit(checkpoint)
    }

    fn ready(&mut self) -> bool {
        self.writer.as_ref().is_none_or(|writer| !writer.borrow_mut().committing())
    }
}
