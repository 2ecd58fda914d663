//! The commit thread: checkpoints' transactions committed one after the other, in order, each
//! retried on a new connection until it succeeds (or [`GIVE_UP_AFTER`]); the crash tests' fault
//! injection inside a transaction.

use std::time::Duration;

use anyhow::{Context, Result};
use postgres::{Client, NoTls};

use super::tables::{self, TableRows};
use super::{JobIdentity, checkpoint, fence};
use crate::checkpoint::Checkpoint;

/// How long a commit keeps retrying an unreachable database before the job gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// One checkpoint's transaction: the rows of every table that has some, and the checkpoint.
pub(super) struct Transaction {
    pub(super) number: u64,
    pub(super) tables: Vec<TableRows>,
    pub(super) checkpoint: Checkpoint,
}

/// A thread that commits the checkpoints' transactions one after the other, so that the job
/// goes on reading and computing while PostgreSQL writes (a checkpoint of a pane's few hundred
/// thousand rows takes seconds). At most one transaction is in flight: the next waits for it,
/// so checkpoints commit in order and a failure stops the job at its next checkpoint.
pub(super) struct CommitThread {
    /// When the last transaction committed (set by the thread).
    pub(super) last_commit: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    transactions: std::sync::mpsc::SyncSender<Transaction>,
    results: std::sync::mpsc::Receiver<Result<()>>,
    in_flight: bool,
    /// How the transaction in flight ended, once known and not yet waited for.
    finished: Option<Result<()>>,
}

impl CommitThread {
    /// Starts the thread, which commits through `client` while it stays connected.
    pub(super) fn start(url: String, id: JobIdentity, generation: i64, client: Option<Client>) -> Result<Self> {
        let (transactions, incoming) = std::sync::mpsc::sync_channel::<Transaction>(0);
        let (report, results) = std::sync::mpsc::channel();
        let last_commit = std::sync::Arc::new(std::sync::Mutex::new(None));
        let committed_at = std::sync::Arc::clone(&last_commit);
        std::thread::Builder::new()
            .name("pg-commit".into())
            .spawn(move || {
                let mut client = client;
                for transaction in incoming {
                    let started = std::time::Instant::now();
                    let result =
                        retry("commit a checkpoint", || commit_on(&mut client, &url, &id, generation, &transaction));
                    let rows: usize = transaction.tables.iter().map(TableRows::row_count).sum();
                    if result.is_ok() {
                        record_checkpoint(started.elapsed(), rows, &transaction.tables);
                        *committed_at.lock().expect("not poisoned") = Some(std::time::Instant::now());
                    }
                    tracing::debug!(
                        checkpoint = transaction.number,
                        rows,
                        job_time = transaction.checkpoint.job_time,
                        "committed"
                    );
                    if report.send(result).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the commit thread")?;
        Ok(CommitThread { last_commit, transactions, results, in_flight: false, finished: None })
    }

    /// Whether a transaction is still being committed.
    pub(super) fn busy(&mut self) -> bool {
        if self.in_flight && self.finished.is_none() {
            match self.results.try_recv() {
                Ok(result) => self.finished = Some(result),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.finished = Some(Err(anyhow::anyhow!("the commit thread stopped")))
                }
            }
        }
        self.in_flight && self.finished.is_none()
    }

    /// Waits for the transaction in flight, if any, and returns how it ended.
    pub(super) fn wait(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(());
        }
        match self.finished.take() {
            Some(result) => result,
            None => self.results.recv().context("the commit thread stopped")?,
        }
    }

    /// Hands `transaction` over once the one in flight, if any, has committed.
    pub(super) fn send(&mut self, transaction: Transaction) -> Result<()> {
        self.wait()?;
        self.transactions.send(transaction).map_err(|_| anyhow::anyhow!("the commit thread stopped"))?;
        self.in_flight = true;
        Ok(())
    }
}

/// One attempt at committing `transaction` through `client` (connecting first if it is not
/// connected): with fresh rows appended, and redone with upserts only should one collide.
/// After a failure `client` is dropped, so that the next attempt starts on a new connection.
fn commit_on(
    client: &mut Option<Client>,
    url: &str,
    id: &JobIdentity,
    generation: i64,
    transaction: &Transaction,
) -> Result<()> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect_once(url, &id.job)?);
    }
    let connection = client.as_mut().context("not connected")?;
    let mut result = commit_transaction(connection, id, generation, transaction, true);
    if result.as_ref().is_err_and(is_unique_violation) {
        tracing::warn!(
            checkpoint = transaction.number,
            "a pane's first rows are in the table already: redoing the checkpoint with upserts"
        );
        result = commit_transaction(connection, id, generation, transaction, false);
    }
    if result.is_err() {
        *client = None; // start over on a fresh connection
    }
    result
}

/// Writes a checkpoint's rows and the checkpoint itself in one transaction, if this instance is
/// still the job's newest (`generation`): fresh rows copied straight into their table when
/// `append_fresh`, the others upserted.
fn commit_transaction(
    client: &mut Client,
    id: &JobIdentity,
    generation: i64,
    transaction: &Transaction,
    append_fresh: bool,
) -> Result<()> {
    let mut tx = client.transaction()?;
    fence::check_generation(&mut tx, &id.job, generation)?;
    for table in &transaction.tables {
        tables::write_rows(&mut tx, table, append_fresh)?;
    }
    checkpoint::write(&mut tx, id, &transaction.checkpoint, transaction.number)?;
    crash_here_if_asked(transaction.number);
    let committing = std::time::Instant::now();
    tx.commit()?;
    metrics::histogram!("clickstay_postgres_commit_seconds").record(committing.elapsed().as_secs_f64());
    Ok(())
}

/// A committed checkpoint's metrics: how long it took (retries included), its rows and size.
fn record_checkpoint(took: Duration, rows: usize, tables: &[TableRows]) {
    metrics::counter!("clickstay_checkpoints_total").increment(1);
    metrics::histogram!("clickstay_checkpoint_duration_seconds").record(took.as_secs_f64());
    metrics::gauge!("clickstay_checkpoint_rows").set(rows as f64);
    let values: usize = tables.iter().map(TableRows::value_count).sum();
    metrics::gauge!("clickstay_checkpoint_bytes").set((values as u64 * super::BYTES_PER_VALUE) as f64);
}

/// Describes the metrics of checkpoint commits (their `# HELP` lines).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("clickstay_checkpoints_total", "Checkpoints committed");
    describe_histogram!(
        "clickstay_checkpoint_duration_seconds",
        Unit::Seconds,
        "A checkpoint's transaction from hand-off to commit, retries included"
    );
    describe_histogram!("clickstay_postgres_commit_seconds", Unit::Seconds, "PostgreSQL COMMIT of a checkpoint");
    describe_gauge!("clickstay_checkpoint_rows", "Result rows of the last checkpoint");
    describe_gauge!("clickstay_checkpoint_bytes", Unit::Bytes, "Size of the last checkpoint's rows, about");
}

/// Fault injection for the crash tests: `CLICKSTAY_CRASH_IN_COMMIT=N` kills the process in the
/// middle of its N-th checkpoint transaction (everything written, nothing committed), as a
/// power cut would.
fn crash_here_if_asked(number: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("CLICKSTAY_CRASH_IN_COMMIT").ok().and_then(|v| v.parse().ok()));
    if *at == Some(number) {
        eprintln!("CLICKSTAY_CRASH_IN_COMMIT: aborting inside checkpoint transaction {number}");
        std::process::abort();
    }
}

/// Whether a commit failed on a duplicate key (a fresh row that was not).
fn is_unique_violation(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<postgres::Error>().and_then(postgres::Error::code)
            == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
    })
}

/// Connects to work on `job`'s result tables, retrying with backoff while the server is not
/// reachable.
pub(super) fn connect(url: &str, job: &str) -> Result<Client> {
    retry("connect to the clicks database", || connect_once(url, job))
}

/// One connection attempt, with `job`'s schema as the only one searched (the job's own tables
/// are named `public.…`); the job's idempotent DDL would otherwise log a NOTICE per table.
fn connect_once(url: &str, job: &str) -> Result<Client> {
    let mut client = Client::connect(url, NoTls)?;
    client.batch_execute(&format!("SET client_min_messages TO warning; SET search_path TO {}", tables::ident(job)))?;
    Ok(client)
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 5 s, for at most
/// [`GIVE_UP_AFTER`]; each failure is logged.
fn retry<T>(what: &str, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    for number in 1.. {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() < GIVE_UP_AFTER && !fence::is_fenced(&error) => {
                tracing::warn!(
                    attempt = number,
                    retry_in_ms = pause.as_millis() as u64,
                    "cannot {what}: {}",
                    crate::pg_error::report(&error)
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.context(format!("gave up trying to {what}"))),
        }
    }
    unreachable!()
}
