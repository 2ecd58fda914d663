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
use crate::checkpoint::{Checkpoint, OffsetGap, Restore};

/// Values buffered at most before a checkpoint is taken even while the previous one is still
/// committing (which then holds up the job): bounds the memory a slow database costs, at about
/// 32 bytes a value (some 450,000 rows of four or five columns, two 1-minute panes here).
const MAX_BUFFERED_VALUES: usize = 1 << 21;

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

    /// Records offset gaps the job reads on past (`source_gaps`), each once however often it is
    /// found (a crash before the next checkpoint finds it again).
    pub fn record_gaps(&mut self, gaps: &[OffsetGap]) -> Result<()> {
        if gaps.is_empty() {
            return Ok(());
        }
        let client = self.client.as_mut().context("not connected")?;
        client.batch_execute(checkpoint::SOURCE_GAPS).context("cannot create the table source_gaps")?;
        let mut tx = client.transaction()?;
        for gap in gaps {
            tx.execute(
                "INSERT INTO source_gaps (job, topic, partition, from_offset, to_offset, kind, detected_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING",
                &[
                    &self.job,
                    &gap.topic,
                    &(gap.partition as i32),
                    &(gap.from_offset as i64),
                    &(gap.to_offset as i64),
                    &gap.kind.as_str(),
                ],
            )?;
        }
        tx.commit().context("cannot record the offset gaps in source_gaps")
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

    /// Whether a checkpoint now would wait for the previous one to commit, with few enough rows
    /// buffered that waiting for it to finish first is better (see [`MAX_BUFFERED_VALUES`]).
    pub fn committing(&mut self) -> bool {
        let buffered: usize = self.tables.iter().map(TableRows::value_count).sum();
        buffered < MAX_BUFFERED_VALUES && self.commit_thread.as_mut().is_some_and(CommitThread::busy)
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
