//! PostgreSQL tables, written exactly once: every table's rows are buffered and committed in
//! one transaction together with the job's checkpoint (the next offset of every partition,
//! where a restart re-reads from, the raw archive's files). Nothing else commits offsets.
//!
//! Rows carry absolute values keyed by the table's key columns (`INSERT ... ON CONFLICT DO
//! UPDATE`), and late and rejected records are keyed by topic, partition and offset (`ON
//! CONFLICT DO NOTHING`), so writing a row twice, as a restart may, changes nothing.
//!
//! Most rows are a pane's first ones ([`Rows::fresh`]): those are copied straight into their
//! table, which costs PostgreSQL about a third of an upsert. Should one collide all the same
//! (tables written by another run), the transaction is redone with upserts only.
//!
//! This file buffers rows per table ([`PgWriter`], [`PgTable`]); `commit.rs` commits them on a
//! thread of its own, `tables.rs` writes one table's rows, `checkpoint.rs` the checkpoint, and
//! `copy.rs` encodes rows for a binary COPY.

mod checkpoint;
mod commit;
mod copy;
pub mod reconcile;
mod tables;

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use postgres::Client;

use self::commit::{CommitThread, Transaction};
use self::tables::TableRows;
pub use self::tables::create_table_sql;
use super::{Rows, Sink, TableSchema};
use crate::checkpoint::{Checkpoint, Restore};

/// The memory a buffered value costs, about (the row's values and their share of its vector).
const BYTES_PER_VALUE: u64 = 32;

/// The job's connection and the rows waiting for the next checkpoint.
pub struct PgWriter {
    url: String,
    job: String,
    topic: String,
    /// The connection until the first commit, which hands it to the commit thread.
    client: Option<Client>,
    tables: Vec<TableRows>,
    checkpoints: u64,
    commit_thread: Option<CommitThread>,
}

impl PgWriter {
    /// Connects and creates the job's tables and one table per `(table name, schema)`.
    pub fn open(url: &str, job: &str, topic: &str, tables: &[(String, TableSchema)]) -> Result<Self> {
        let mut client = commit::connect(url)?;
        client.batch_execute(checkpoint::JOB_TABLES).context("cannot create the job tables")?;
        for (table, schema) in tables {
            tables::create_table(&mut client, table, schema)?;
        }
        Ok(PgWriter {
            url: url.to_string(),
            job: job.to_string(),
            topic: topic.to_string(),
            client: Some(client),
            tables: Vec::new(),
            checkpoints: 0,
            commit_thread: None,
        })
    }

    /// The last committed checkpoint of this job on this topic, if any.
    pub fn restore(&mut self) -> Result<Restore> {
        let client = self.client.as_mut().context("not connected")?;
        match checkpoint::restore(client, &self.job, &self.topic)? {
            Some((restore, checkpoints)) => {
                self.checkpoints = checkpoints;
                Ok(restore)
            }
            None => Ok(Restore::default()),
        }
    }

    /// Every archive file a committed checkpoint lists (relative to the archive root).
    pub fn archived_files(&mut self) -> Result<Vec<String>> {
        let client = self.client.as_mut().context("not connected")?;
        checkpoint::archived_files(client, &self.job, &self.topic)
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
                let (url, job, topic) = (self.url.clone(), self.job.clone(), self.topic.clone());
                self.commit_thread.insert(CommitThread::start(url, job, topic, self.client.take())?)
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
