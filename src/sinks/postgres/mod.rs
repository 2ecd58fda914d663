//! PostgreSQL tables, written exactly once: every table's rows are buffered and committed in
//! one transaction together with the job's checkpoint (the next offset of every partition,
//! where a restart re-reads from, the raw archive's files). Nothing else commits offsets.
//!
//! Rows carry absolute values keyed by the table's key columns (`INSERT ... ON CONFLICT DO
//! UPDATE`), and late and rejected records are keyed by topic, partition, incarnation and offset (`ON
//! CONFLICT DO NOTHING`), so writing a row twice, as a restart may, changes nothing.
//!
//! Most rows are a pane's first ones ([`Rows::fresh`]): those are copied straight into their
//! table, which costs PostgreSQL about a third of an upsert. Should one collide all the same
//! (tables written by another run), the transaction is redone with upserts only.
//!
//! A job's result tables live in the schema named after the job; its own tables (offsets,
//! checkpoints, archive listings, instances) in `public`, keyed by job and topic.
//!
//! This file starts a job ([`JobStart`]: tables, lock, restore) and buffers rows per table
//! ([`PgWriter`], [`PgTable`]); `commit.rs` commits them on a thread of its own, `tables.rs`
//! writes one table's rows, `checkpoint.rs` the checkpoint, `fence.rs` keeps one instance per
//! job, and `copy.rs` encodes rows for a binary COPY.

mod checkpoint;
mod commit;
mod copy;
mod fence;
pub mod reconcile;
mod tables;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postgres::Client;
use serde::{Deserialize, Serialize};

pub use self::commit::describe as describe_metrics;
use self::commit::{CommitThread, Transaction};
pub use self::fence::{Fenced, JobLock};
use self::tables::TableRows;
pub use self::tables::{TEMP_TABLE_PREFIX, create_table_sql};
use super::{Rows, Sink, TableSchema};
use crate::checkpoint::{Checkpoint, OffsetGap, Restore};

/// The memory a buffered value costs, about (the row's values and their share of its vector).
const BYTES_PER_VALUE: u64 = 32;

/// Whose results a writer keeps: a job (its result tables live in the schema of its name) on
/// one topic (its checkpoint is kept per job and topic), and the spec they are made with.
#[derive(Debug, Clone)]
pub struct JobIdentity {
    pub job: String,
    pub topic: String,
    pub spec: SpecStamp,
}

/// What a job's results depend on: a fingerprint and the readable summary it is taken of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecStamp {
    pub fingerprint: String,
    pub summary: BTreeMap<String, String>,
}

/// What process 0 establishes before any worker starts ([`JobStart::restore`]); every worker of
/// every process starts from this same value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Started {
    pub restore: Restore,
    /// This instance's fencing generation, checked by each of its checkpoints.
    pub generation: i64,
    /// Checkpoints committed so far (this run numbers its own after them).
    pub checkpoints: u64,
}

/// The start of a job, on process 0: the job's tables created, its lock taken. Holds the lock
/// until [`JobStart::restore`] hands it on.
pub struct JobStart {
    client: Client,
    lock: JobLock,
    id: JobIdentity,
}

impl JobStart {
    /// Connects, creates the job's own tables (under a lock, so that any number of processes
    /// and jobs may start at once) and takes the job's lock, or says who holds it.
    pub fn connect(url: &str, id: &JobIdentity) -> Result<Self> {
        let mut client = commit::connect(url, &id.job)?;
        let lock = fence::lock_job(url, &id.job)?;
        ddl(&mut client, |tx| {
            tx.batch_execute(checkpoint::JOB_TABLES)?;
            tx.batch_execute(checkpoint::SOURCE_GAPS)?;
            tx.batch_execute(fence::INSTANCE_TABLE)?;
            Ok(())
        })
        .context("cannot create the job tables")?;
        Ok(JobStart { client, lock, id: id.clone() })
    }

    /// Committed checkpoints of this job made with another spec than this run's, by topic.
    pub fn other_specs(&mut self) -> Result<Vec<(String, SpecStamp)>> {
        checkpoint::other_specs(&mut self.client, &self.id.job, &self.id.spec)
    }

    /// `--reset-results`: drops the job's result tables (its schema) and forgets its offsets,
    /// checkpoints and archive listings on every topic, in one transaction.
    pub fn reset_results(&mut self) -> Result<()> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", tables::ident(&self.id.job)))?;
        checkpoint::forget(&mut tx, &self.id.job)?;
        tx.commit().context("cannot reset the job's results")?;
        tracing::warn!(job = %self.id.job, "--reset-results: dropped the job's result tables and checkpoints");
        Ok(())
    }

    /// Creates the job's schema and result tables (one per `(name, schema)`), makes this the
    /// job's newest instance and reads its last checkpoint on the topic. Also returns every
    /// archive file a committed checkpoint lists (relative to the archive root).
    pub fn restore(&mut self, tables: &[(String, TableSchema)]) -> Result<(Started, Vec<String>)> {
        let job = self.id.job.clone();
        ddl(&mut self.client, |tx| {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", tables::ident(&job)))?;
            for (table, schema) in tables {
                tables::create_table(tx, table, schema)?;
            }
            Ok(())
        })?;
        let generation = fence::next_generation(&mut self.client, &job)?;
        let (restore, checkpoints) = checkpoint::restore(&mut self.client, &job, &self.id.topic)?.unwrap_or_default();
        let files = checkpoint::archived_files(&mut self.client, &job, &self.id.topic)?;
        Ok((Started { restore, generation, checkpoints }, files))
    }

    /// Records offset gaps the job reads on past (`source_gaps`), each once however often it is
    /// found (a crash before the next checkpoint finds it again), with the incarnation each
    /// partition reads on in (`restore`, after the gaps).
    pub fn record_gaps(&mut self, gaps: &[OffsetGap], restore: &Restore) -> Result<()> {
        let mut tx = self.client.transaction()?;
        for gap in gaps {
            tx.execute(
                "INSERT INTO public.source_gaps
                   (job, topic, partition, from_offset, to_offset, kind, incarnation, detected_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT DO NOTHING",
                &[
                    &self.id.job,
                    &gap.topic,
                    &(gap.partition as i32),
                    &(gap.from_offset as i64),
                    &(gap.to_offset as i64),
                    &gap.kind.as_str(),
                    &(restore.incarnation(gap.partition) as i32),
                ],
            )?;
        }
        tx.commit().context("cannot record the offset gaps in source_gaps")
    }

    /// The job's lock, held for as long as the job runs.
    pub fn into_lock(self) -> JobLock {
        self.lock
    }
}

/// Runs `statements` in a transaction holding one advisory lock that every clickstay DDL takes:
/// `CREATE ... IF NOT EXISTS` run at once by two sessions can fail on a duplicate catalog row.
fn ddl(client: &mut Client, statements: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<()>) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtextextended('clickstay ddl', 0))")?;
    statements(&mut tx)?;
    tx.commit()?;
    Ok(())
}

/// Worker 0's writer: the rows waiting for the next checkpoint, and the commit thread.
pub struct PgWriter {
    url: String,
    id: JobIdentity,
    generation: i64,
    /// The connection until the first commit, which hands it to the commit thread.
    client: Option<Client>,
    tables: Vec<TableRows>,
    checkpoints: u64,
    commit_thread: Option<CommitThread>,
    opened: std::time::Instant,
}

impl PgWriter {
    /// Connects for the instance `started` (no DDL: process 0 did it before the workers).
    pub fn open(url: &str, id: &JobIdentity, started: &Started) -> Result<Self> {
        let client = commit::connect(url, &id.job)?;
        Ok(PgWriter {
            url: url.to_string(),
            id: id.clone(),
            generation: started.generation,
            client: Some(client),
            tables: Vec::new(),
            checkpoints: started.checkpoints,
            commit_thread: None,
            opened: std::time::Instant::now(),
        })
    }

    /// A sink for one table, buffering into this writer.
    pub fn table(writer: &Rc<RefCell<PgWriter>>, table: &str, schema: &TableSchema) -> PgTable {
        let mut this = writer.borrow_mut();
        this.tables.push(TableRows::new(table, schema));
        PgTable { writer: Rc::clone(writer), index: this.tables.len() - 1 }
    }

    /// Hands every buffered row and the checkpoint to the commit thread, to be committed in one
    /// transaction (retried, on a new connection, until it succeeds), once the previous
    /// checkpoint's transaction has committed. An error is that of the previous transaction.
    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let number = self.checkpoints + 1;
        let tables = self.tables.iter_mut().filter(|t| !t.is_empty()).map(TableRows::take).collect();
        let commit_thread = match &mut self.commit_thread {
            Some(commit_thread) => commit_thread,
            None => {
                let (url, id) = (self.url.clone(), self.id.clone());
                self.commit_thread.insert(CommitThread::start(url, id, self.generation, self.client.take())?)
            }
        };
        commit_thread.send(Transaction { number, tables, checkpoint: checkpoint.clone() })?;
        self.checkpoints = number;
        Ok(())
    }

    /// Whether a checkpoint now would wait for the previous one to commit.
    pub fn committing(&mut self) -> bool {
        self.commit_thread.as_mut().is_some_and(CommitThread::busy)
    }

    /// The memory the rows buffered for the next checkpoint take, about.
    pub fn buffered_bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.value_count() as u64 * BYTES_PER_VALUE).sum()
    }

    /// Time since the last checkpoint committed (none yet: since the writer opened).
    pub fn checkpoint_age(&self) -> Duration {
        let last = self.commit_thread.as_ref().and_then(|thread| *thread.last_commit.lock().expect("not poisoned"));
        last.unwrap_or(self.opened).elapsed()
    }

    /// Waits until every checkpoint handed to [`PgWriter::commit`] has committed.
    pub fn wait_committed(&mut self) -> Result<()> {
        self.commit_thread.as_mut().map_or(Ok(()), CommitThread::wait)
    }
}

/// One table of a [`PgWriter`], as a [`Sink`].
pub struct PgTable {
    writer: Rc<RefCell<PgWriter>>,
    index: usize,
}

impl Sink for PgTable {
    fn write(&mut self, rows: Rows) -> Result<()> {
        self.writer.borrow_mut().tables[self.index].push(rows);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let writer = self.writer.borrow();
        let table = &writer.tables[self.index];
        if table.is_empty() { Ok(()) } else { bail!("table {} has rows that no checkpoint committed", table.table) }
    }
}
