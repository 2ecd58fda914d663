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
use super::metrics::CheckpointGauges;
use crate::checkpoint::{Checkpoint, Checkpointer};
use crate::clicks::query::{HubAsker, QueryHub};
use crate::clicks::spec::DataflowSpec;
use crate::cluster::{WorkerArgs, Workers};
use crate::config::{KafkaConfig, WorkersConfig};
use crate::sinks::Sink;
use crate::sinks::postgres::{JobIdentity, JobLock, JobStart, PgWriter, SpecStamp, Started};
use crate::sources::kafka::{KafkaOptions, KafkaSource};
use crate::sources::{Share, Source};

/// The click job's dashboard, served at `/` wherever `/metrics` is (`--listen`, `--metrics-listen`).
const DASHBOARD: crate::dashboard::Page =
    crate::dashboard::Page { html: include_str!("dashboard.html"), script: include_str!("dashboard.js") };

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
    /// Serve questions to the live counts as JSON over HTTP on this address, with `/metrics`
    /// and the dashboard at `/` (process 0 only; see the README's "Asking the running job").
    /// Default: no listener.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics on `/metrics` (and the dashboard on `/`) on this address,
    /// for a job without --listen (with it, they are served there too). Process 0 only: it
    /// shows every worker and partition of the cluster.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Start the job over: drop its result tables (the schema named after the job) and forget
    /// its offsets, checkpoints and archive listings on every topic, delete its archive files
    /// (`ARCHIVE/job=J/`), then read the topic from its beginning. Needed to restart a job with
    /// a spec that changes its results (or give it a new --job).
    #[arg(long)]
    pub reset_results: bool,
    /// The memory bound of the back-pressure, in bytes: the result rows waiting for the next
    /// checkpoint plus the raw events all workers hold for the archive until then. Over it, a
    /// checkpoint is taken even while the previous one is still committing, and the job stops
    /// reading until that commit is done (a slow database slows the job instead of growing
    /// it). Not counted: librdkafka's prefetch queue (at most 8 MiB of messages per worker,
    /// plus one fetch of up to 1 MiB per partition), the dataflow's open panes and the
    /// transaction being committed.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub max_buffered_bytes: u64,
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
    id: JobIdentity,
    archive: PathBuf,
    policy: StreamPolicy,
    /// On process 0: the start every worker of the cluster begins from.
    started: Option<Started>,
    max_buffered_bytes: u64,
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
    crate::clicks::spec::job_name(&job)
        .map_err(|e| anyhow::anyhow!("--job (default: the spec's name): {e}; it names the job's schema and archive"))?;
    let seconds = |what: &str, s: f64| -> Result<Duration> {
        Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--{what}: `{s}` is not a number of seconds"))
    };
    let policy = StreamPolicy {
        checkpoint_every: seconds("checkpoint-interval", args.checkpoint_interval)?,
        idle_partition: seconds("idle-timeout", args.idle_timeout)?,
        drain_when_idle: args.exit_when_idle.map(|s| seconds("exit-when-idle", s)).transpose()?,
    };
    crate::sources::kafka::ensure_topic(&kafka)?;
    let id = JobIdentity {
        job,
        topic: kafka.topic.clone(),
        spec: SpecStamp { fingerprint: spec.fingerprint(), summary: spec.result_summary() },
    };
    // Process 0 alone touches the database before the workers start; they all begin from its
    // `Started`, and it holds the job's lock (`_lock`) until the job ends.
    let (started, _lock) = if workers.is_first_process() {
        let (started, lock) = start_job(&clicks_db, &kafka, &id, &table_schemas(&spec, &id.topic), &args)?;
        (Some(started), Some(lock))
    } else {
        (None, None)
    };
    let mut asker = None;
    let mut routes = None;
    if let Some(listen) = args.listen {
        check_askable(&spec)?;
        let (hub, hub_asker) = QueryHub::new(&spec);
        if workers.is_first_process() {
            routes = Some((listen, "--listen", crate::clicks::query::api::router(hub)));
            asker = Some(hub_asker);
        }
    }
    if let (Some(listen), None) = (args.metrics_listen, &routes) {
        routes = Some((listen, "--metrics-listen", axum::Router::new()));
    }
    if let Some((listen, flag, routes)) = routes.filter(|_| workers.is_first_process()) {
        let handle = crate::telemetry::install();
        crate::clicks::metrics::describe();
        crate::sinks::postgres::describe_metrics();
        let routes = routes.merge(crate::telemetry::routes(handle)).merge(crate::dashboard::routes(DASHBOARD));
        crate::http::spawn(listen, routes.layer(axum::middleware::from_fn(crate::telemetry::time_requests)), flag)?;
    }
    let shared = Arc::new(Job {
        spec,
        kafka,
        clicks_db,
        id,
        archive: args.archive.clone(),
        policy,
        started,
        max_buffered_bytes: args.max_buffered_bytes,
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

/// Process 0's start of the job: its tables, its lock (or the message naming the holder), the
/// check that the spec is the one its results were made with (or `--reset-results`), this
/// instance's generation, its checkpoint, and the archive cleaned of files no checkpoint lists.
fn start_job(
    url: &str,
    kafka: &KafkaConfig,
    id: &JobIdentity,
    tables: &[(String, crate::sinks::TableSchema)],
    args: &RunArgs,
) -> Result<(Started, JobLock)> {
    let mut start = JobStart::connect(url, id)?;
    let job_archive = super::archive::job_root(&args.archive, &id.job);
    if args.reset_results {
        start.reset_results()?;
        if job_archive.exists() {
            std::fs::remove_dir_all(&job_archive)
                .with_context(|| format!("--reset-results: cannot remove {}", job_archive.display()))?;
        }
    } else {
        refuse_changed_spec(id, &start.other_specs()?)?;
    }
    let (mut started, committed_files) = start.restore(tables)?;
    let (restore, gaps) = crate::sources::kafka::check_offsets(kafka, &started.restore, args.allow_offset_gap)?;
    start.record_gaps(&gaps, &restore)?;
    started.restore = restore;
    let own_archive = super::archive::job_dir(&args.archive, &id.job, &id.topic);
    remove_uncommitted_archive_files(&args.archive, &own_archive, &committed_files)?;
    let restore = &started.restore;
    tracing::info!(job = %id.job, topic = %id.topic, generation = started.generation,
        restored_partitions = restore.partitions.len(), job_time = restore.job_time, "starting");
    Ok((started, start.into_lock()))
}

/// Stops a restart whose spec differs from the one the job's committed results were made with.
fn refuse_changed_spec(id: &JobIdentity, others: &[(String, SpecStamp)]) -> Result<()> {
    let Some((topic, before)) = others.first() else { return Ok(()) };
    let changes = crate::clicks::spec::spec_changes(&before.summary, &id.spec.summary);
    anyhow::bail!(
        "job `{}` committed results on topic `{topic}` with another spec; what changed:\n  {}\n\
         restart with --reset-results to drop the job's results and start over, or give it a new --job",
        id.job,
        changes.join("\n  ")
    )
}

/// The output tables of a spec, as the streaming job writes them.
fn table_schemas(spec: &DataflowSpec, topic: &str) -> Vec<(String, crate::sinks::TableSchema)> {
    let positions = Positions::offsets(topic);
    spec.sinks.iter().map(|sink| (sink.table.clone(), dataflow::sink_schema(spec, sink, &positions))).collect()
}

/// Files a crash left behind in the job's own archive directory `own` before their checkpoint
/// committed: the ranges will be written again, so the archive holds every event exactly once.
/// `committed` lists files relative to the archive `root`; other jobs' files are never touched.
fn remove_uncommitted_archive_files(root: &Path, own: &Path, committed: &[String]) -> Result<()> {
    if !own.exists() {
        return Ok(());
    }
    remove_temporary_files(own)?;
    let committed: std::collections::HashSet<&str> = committed.iter().map(String::as_str).collect();
    for (path, ..) in super::archive::list_archive(own)? {
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
    let started = crate::cluster::from_worker_0(worker, job.started.clone());
    let restore = started.restore.clone();
    let share = Share::new(index, worker.peers());
    let resume =
        restore.partitions.iter().filter(|(p, _)| share.owns(**p)).map(|(p, r)| (*p, r.restart_offset)).collect();
    let options = KafkaOptions { kafka: job.kafka.clone(), max_record_bytes: MAX_LINE_BYTES };
    let mut source = KafkaSource::open(&options, share, &resume)?;
    let writer =
        if index == 0 { Some(Rc::new(RefCell::new(PgWriter::open(&job.clicks_db, &job.id, &started)?))) } else { None };
    let make_sink =
        |sink: &crate::clicks::spec::SinkSpec, schema: &crate::sinks::TableSchema| -> Result<Box<dyn Sink>> {
            let writer = writer.as_ref().context("sinks live on worker 0")?;
            Ok(Box::new(PgWriter::table(writer, &sink.table, schema)))
        };
    let positions = Positions::Offsets { topic: job.kafka.topic.clone(), incarnations: restore.incarnations() };
    let make_sink = writer.is_some().then_some(&make_sink as dataflow::SinkFactory);
    let mut dataflow = dataflow::build_with_questions(
        worker,
        &job.spec,
        &positions,
        Emit::Changes { restored: restore.job_time },
        make_sink,
        job.askable,
    )?;
    let owned = |partition: u32| share.owns(partition);
    let mut driver = Driver::new(worker, &job.spec, &source.partitions(), Some(job.policy), restore, &owned);
    if index == 0
        && let Some(asker) = job.asker.lock().expect("not poisoned").take()
    {
        driver.ask_with(Box::new(asker));
    }
    let mut checkpointer = StreamCheckpointer {
        root: job.archive.clone(),
        own: super::archive::job_dir(&job.archive, &job.id.job, &job.id.topic),
        topic: job.kafka.topic.clone(),
        writer,
        max_buffered_bytes: job.max_buffered_bytes,
        metrics: CheckpointGauges::default(),
    };
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
    /// The archive root (`--archive`), which committed file names are relative to.
    root: PathBuf,
    /// The job's own directory in it, where its files go.
    own: PathBuf,
    topic: String,
    writer: Option<Rc<RefCell<PgWriter>>>,
    /// `--max-buffered-bytes`.
    max_buffered_bytes: u64,
    metrics: CheckpointGauges,
}

impl Checkpointer<ClickEvent> for StreamCheckpointer {
    fn archive(
        &mut self,
        partition: u32,
        incarnation: u32,
        first: u64,
        next: u64,
        events: &[(u64, ClickEvent)],
    ) -> Result<Vec<String>> {
        let range = super::archive::ArchiveRange { partition, incarnation, first, next };
        let files = super::archive::write_archive(&self.own, &self.topic, range, events)?;
        Ok(files.iter().map(|f| f.strip_prefix(&self.root).unwrap_or(f).to_string_lossy().into_owned()).collect())
    }

    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.writer.as_ref().context("commits happen on worker 0")?.borrow_mut().commit(checkpoint)
    }

    fn ready(&mut self, held_bytes: u64) -> bool {
        self.writer.as_ref().is_none_or(|writer| {
            let mut writer = writer.borrow_mut();
            self.metrics.buffered_bytes.set((writer.buffered_bytes() + held_bytes) as f64);
            self.metrics.checkpoint_age.set(writer.checkpoint_age().as_secs_f64());
            !writer.committing() || writer.buffered_bytes() + held_bytes >= self.max_buffered_bytes
        })
    }
}
