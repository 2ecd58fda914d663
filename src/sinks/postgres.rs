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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postgres::{Client, NoTls};
use rustc_hash::FxHashMap;

use super::pg_copy::CopyBuffer;
use super::{ColumnKind, Rows, Sink, TableSchema, Value};
use crate::checkpoint::{Checkpoint, Restore, RestoredPartition};

/// How long a commit keeps retrying an unreachable database before the job gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// Values buffered at most before a checkpoint is taken even while the previous one is still
/// committing (which then holds up the job): bounds the memory a slow database costs, at about
/// 32 bytes a value (some 450,000 rows of four or five columns, two 1-minute panes here).
const MAX_BUFFERED_VALUES: usize = 1 << 21;

/// Buffered rows of one table, back to back, in the order written (a later row replaces an
/// earlier one with the same key; see [`TableRows::latest_rows`]).
struct PendingTable {
    schema: TableSchema,
    table: String,
    /// Rows no earlier checkpoint wrote ([`Rows::fresh`]); older than every row of `rows`.
    fresh: Vec<Value>,
    rows: Vec<Value>,
}

/// The job's connection and the rows waiting for the next checkpoint.
pub struct PgWriter {
    url: String,
    job: String,
    topic: String,
    /// The connection until the first commit, which hands it to the committer.
    client: Option<Client>,
    tables: Vec<PendingTable>,
    checkpoints: u64,
    committer: Option<Committer>,
}

/// One checkpoint's transaction: the rows of every table that has some, and the checkpoint.
struct Transaction {
    number: u64,
    tables: Vec<TableRows>,
    checkpoint: Checkpoint,
}

/// The rows of one table in a [`Transaction`], as buffered.
struct TableRows {
    schema: TableSchema,
    table: String,
    fresh: Vec<Value>,
    rows: Vec<Value>,
}

impl TableRows {
    /// The last row written for each key among the fresh rows (unless they are appended) and
    /// the others, in no particular order: one upsert statement may not touch a row twice.
    /// Worked out on the commit thread, off the dataflow's worker.
    fn latest_rows(&self, append_fresh: bool) -> impl Iterator<Item = &[Value]> {
        let (width, keys) = (self.schema.columns.len(), self.schema.key_columns);
        let fresh: &[Value] = if append_fresh { &[] } else { &self.fresh };
        let mut latest: FxHashMap<&[Value], &[Value]> = FxHashMap::default();
        for row in fresh.chunks_exact(width).chain(self.rows.chunks_exact(width)) {
            latest.insert(&row[..keys], row);
        }
        latest.into_values()
    }

    fn row_count(&self) -> usize {
        (self.fresh.len() + self.rows.len()) / self.schema.columns.len()
    }
}

/// A thread that commits the checkpoints' transactions one after the other, so that the job
/// goes on reading and computing while PostgreSQL writes (a checkpoint of a pane's few hundred
/// thousand rows takes seconds). At most one transaction is in flight: the next waits for it,
/// so checkpoints commit in order and a failure stops the job at its next checkpoint.
struct Committer {
    transactions: std::sync::mpsc::SyncSender<Transaction>,
    results: std::sync::mpsc::Receiver<Result<()>>,
    in_flight: bool,
    /// How the transaction in flight ended, once known and not yet waited for.
    finished: Option<Result<()>>,
}

impl Committer {
    fn start(url: String, job: String, topic: String, client: Option<Client>) -> Result<Self> {
        let (transactions, incoming) = std::sync::mpsc::sync_channel::<Transaction>(0);
        let (report, results) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pg-commit".into())
            .spawn(move || {
                let mut client = client;
                for transaction in incoming {
                    let result = retry("commit a checkpoint", || {
                        if client.as_ref().is_none_or(|c| c.is_closed()) {
                            client = Some(connect_once(&url)?);
                        }
                        let connection = client.as_mut().context("not connected")?;
                        let mut result = commit_transaction(connection, &job, &topic, &transaction, true);
                        if result.as_ref().is_err_and(is_unique_violation) {
                            tracing::warn!(
                                checkpoint = transaction.number,
                                "a pane's first rows are in the table already: redoing the checkpoint with upserts"
                            );
                            result = commit_transaction(connection, &job, &topic, &transaction, false);
                        }
                        if result.is_err() {
                            client = None; // start over on a fresh connection
                        }
                        result
                    });
                    let rows: usize = transaction.tables.iter().map(TableRows::row_count).sum();
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
        Ok(Committer { transactions, results, in_flight: false, finished: None })
    }

    /// Whether a transaction is still being committed.
    fn busy(&mut self) -> bool {
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
    fn wait(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(());
        }
        match self.finished.take() {
            Some(result) => result,
            None => self.results.recv().context("the commit thread stopped")?,
        }
    }

    fn send(&mut self, transaction: Transaction) -> Result<()> {
        self.wait()?;
        self.transactions.send(transaction).map_err(|_| anyhow::anyhow!("the commit thread stopped"))?;
        self.in_flight = true;
        Ok(())
    }
}

/// Quotes an identifier (names come from the spec; `offset` is a keyword).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column's SQL type: as declared, and as `information_schema.columns.data_type` reports it.
struct SqlType {
    declared: &'static str,
    reported: &'static str,
}

fn sql_type(kind: ColumnKind) -> SqlType {
    let (declared, reported) = match kind {
        // Event ids are unsigned 64-bit: bigint would refuse the upper half.
        ColumnKind::Integer => ("numeric(20,0)", "numeric"),
        ColumnKind::Count => ("bigint", "bigint"),
        ColumnKind::Timestamp => ("timestamptz", "timestamp with time zone"),
        ColumnKind::Text => ("text", "text"),
    };
    SqlType { declared, reported }
}

/// Checks that an existing `table` has the schema's columns and types: the binary COPY sends
/// values in exactly those types, and a table left by an older version may differ.
fn check_table(client: &mut Client, table: &str, schema: &TableSchema) -> Result<()> {
    let found: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(String, String)> =
        schema.columns.iter().map(|c| (c.name.clone(), sql_type(c.kind).reported.to_string())).collect();
    if found != expected {
        let show = |columns: &[(String, String)]| {
            columns.iter().map(|(name, kind)| format!("{name} {kind}")).collect::<Vec<_>>().join(", ")
        };
        bail!(
            "table {table} has the columns ({}) but this job writes ({}): drop the table, or alter it to match",
            show(&found),
            show(&expected)
        );
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` for a sink's schema, its key columns as the primary key.
pub fn create_table_sql(table: &str, schema: &TableSchema) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (", ident(table));
    for column in &schema.columns {
        let _ = write!(sql, "{} {} NOT NULL, ", ident(&column.name), sql_type(column.kind).declared);
    }
    let keys: Vec<String> = schema.columns[..schema.key_columns].iter().map(|c| ident(&c.name)).collect();
    let _ = write!(sql, "PRIMARY KEY ({}))", keys.join(", "));
    sql
}

/// The job's own tables: where each partition stands, the checkpoint, the raw archive.
const JOB_TABLES: &str = "
CREATE TABLE IF NOT EXISTS source_offsets (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    next_offset bigint NOT NULL, restart_offset bigint NOT NULL, restart_max_ts bigint,
    PRIMARY KEY (job, topic, partition));
CREATE TABLE IF NOT EXISTS job_checkpoints (
    job text PRIMARY KEY, topic text NOT NULL, job_time bigint NOT NULL,
    checkpoints bigint NOT NULL, committed_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS raw_archive (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    first_offset bigint NOT NULL, next_offset bigint NOT NULL, files text[] NOT NULL,
    committed_at timestamptz NOT NULL,
    PRIMARY KEY (job, topic, partition, first_offset));
";

/// Connects, retrying with backoff while the server is not reachable.
fn connect(url: &str) -> Result<Client> {
    retry("connect to the clicks database", || connect_once(url))
}

/// One connection attempt; the job's idempotent DDL would otherwise log a NOTICE per table.
fn connect_once(url: &str) -> Result<Client> {
    let mut client = Client::connect(url, NoTls)?;
    client.batch_execute("SET client_min_messages TO warning")?;
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
            Err(error) if started.elapsed() < GIVE_UP_AFTER => {
                tracing::warn!(attempt = number, retry_in_ms = pause.as_millis() as u64, "cannot {what}: {error:#}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.context(format!("gave up trying to {what}"))),
        }
    }
    unreachable!()
}

impl PgWriter {
    /// Connects and creates the job's tables and one table per `(table name, schema)`.
    pub fn open(url: &str, job: &str, topic: &str, tables: &[(String, TableSchema)]) -> Result<Self> {
        let mut client = connect(url)?;
        client.batch_execute(JOB_TABLES).context("cannot create the job tables")?;
        for (table, schema) in tables {
            client
                .batch_execute(&create_table_sql(table, schema))
                .with_context(|| format!("cannot create table {table}"))?;
            check_table(&mut client, table, schema)?;
        }
        Ok(PgWriter {
            url: url.to_string(),
            job: job.to_string(),
            topic: topic.to_string(),
            client: Some(client),
            tables: Vec::new(),
            checkpoints: 0,
            committer: None,
        })
    }

    /// The last committed checkpoint of this job on this topic, if any.
    pub fn restore(&mut self) -> Result<Restore> {
        let client = self.client.as_mut().context("not connected")?;
        let Some(row) = client.query_opt(
            "SELECT job_time, checkpoints FROM job_checkpoints WHERE job = $1 AND topic = $2",
            &[&self.job, &self.topic],
        )?
        else {
            return Ok(Restore::default());
        };
        let job_time: i64 = row.get(0);
        self.checkpoints = row.get::<_, i64>(1) as u64;
        let mut partitions = BTreeMap::new();
        for row in client.query(
            "SELECT partition, next_offset, restart_offset, restart_max_ts FROM source_offsets WHERE job = $1 AND topic = $2",
            &[&self.job, &self.topic],
        )? {
            let partition: i32 = row.get(0);
            partitions.insert(
                partition as u32,
                RestoredPartition {
                    committed_next: row.get::<_, i64>(1) as u64,
                    restart_offset: row.get::<_, i64>(2) as u64,
                    restart_max_ts: row.get::<_, Option<i64>>(3).map(|t| t as u64),
                },
            );
        }
        Ok(Restore { job_time: job_time as u64, partitions })
    }

    /// Every archive file a committed checkpoint lists (relative to the archive root).
    pub fn archived_files(&mut self) -> Result<Vec<String>> {
        let client = self.client.as_mut().context("not connected")?;
        let rows = client
            .query("SELECT unnest(files) FROM raw_archive WHERE job = $1 AND topic = $2", &[&self.job, &self.topic])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A sink for one table, buffering into this writer.
    pub fn table(writer: &Rc<RefCell<PgWriter>>, table: &str, schema: &TableSchema) -> PgTable {
        let mut this = writer.borrow_mut();
        this.tables.push(PendingTable {
            schema: schema.clone(),
            table: table.to_string(),
            fresh: Vec::new(),
            rows: Vec::new(),
        });
        PgTable { writer: Rc::clone(writer), index: this.tables.len() - 1 }
    }

    fn buffer(&mut self, index: usize, rows: Rows) {
        let table = &mut self.tables[index];
        if rows.fresh { table.fresh.extend(rows.values) } else { table.rows.extend(rows.values) }
    }

    /// Hands every buffered row and the checkpoint to the commit thread, to be committed in one
    /// transaction (retried, on a new connection, until it succeeds), once the previous
    /// checkpoint's transaction has committed. An error is that of the previous transaction.
    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let number = self.checkpoints + 1;
        let tables = self
            .tables
            .iter_mut()
            .filter(|t| !t.fresh.is_empty() || !t.rows.is_empty())
            .map(|t| TableRows {
                schema: t.schema.clone(),
                table: t.table.clone(),
                fresh: std::mem::take(&mut t.fresh),
                rows: std::mem::take(&mut t.rows),
            })
            .collect();
        let committer = match &mut self.committer {
            Some(committer) => committer,
            None => {
                let (url, job, topic) = (self.url.clone(), self.job.clone(), self.topic.clone());
                self.committer.insert(Committer::start(url, job, topic, self.client.take())?)
            }
        };
        committer.send(Transaction { number, tables, checkpoint: checkpoint.clone() })?;
        self.checkpoints = number;
        Ok(())
    }

    /// Whether a checkpoint now would wait for the previous one to commit, with few enough rows
    /// buffered that waiting for it to finish first is better (see [`MAX_BUFFERED_VALUES`]).
    pub fn committing(&mut self) -> bool {
        let buffered: usize = self.tables.iter().map(|t| t.fresh.len() + t.rows.len()).sum();
        buffered < MAX_BUFFERED_VALUES && self.committer.as_mut().is_some_and(Committer::busy)
    }

    /// Waits until every checkpoint handed to [`PgWriter::commit`] has committed.
    pub fn wait_committed(&mut self) -> Result<()> {
        self.committer.as_mut().map_or(Ok(()), Committer::wait)
    }
}

/// Writes a checkpoint's rows and the checkpoint itself in one transaction: fresh rows copied
/// straight into their table when `append_fresh`, the others copied into a temporary table and
/// upserted from there.
fn commit_transaction(
    client: &mut Client,
    job: &str,
    topic: &str,
    transaction: &Transaction,
    append_fresh: bool,
) -> Result<()> {
    let (checkpoint, number) = (&transaction.checkpoint, transaction.number);
    let mut tx = client.transaction()?;
    for table in &transaction.tables {
        let name = ident(&table.table);
        let width = table.schema.columns.len();
        if append_fresh && !table.fresh.is_empty() {
            copy_rows(&mut tx, &name, &table.schema, table.fresh.chunks_exact(width))?;
        }
        if table.rows.is_empty() && (append_fresh || table.fresh.is_empty()) {
            continue;
        }
        let temp = ident(&format!("incoming_{}", table.table));
        tx.batch_execute(&format!("CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {name}) ON COMMIT DELETE ROWS"))?;
        copy_rows(&mut tx, &temp, &table.schema, table.latest_rows(append_fresh))?;
        let columns = &table.schema.columns;
        let keys: Vec<String> = columns[..table.schema.key_columns].iter().map(|c| ident(&c.name)).collect();
        let updates: Vec<String> =
            columns[table.schema.key_columns..].iter().map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.name))).collect();
        let on_conflict = if table.schema.key_columns == columns.len() || is_append_only(&table.schema) {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        tx.batch_execute(&format!(
            "INSERT INTO {name} SELECT * FROM {temp} ON CONFLICT ({}) {on_conflict}",
            keys.join(", ")
        ))?;
    }
    for partition in &checkpoint.partitions {
        tx.execute(
            "INSERT INTO source_offsets (job, topic, partition, next_offset, restart_offset, restart_max_ts)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (job, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
               restart_offset = EXCLUDED.restart_offset, restart_max_ts = EXCLUDED.restart_max_ts",
            &[
                &job,
                &topic,
                &(partition.partition as i32),
                &(partition.next_offset as i64),
                &(partition.restart_offset as i64),
                &partition.restart_max_ts.map(|t| t as i64),
            ],
        )?;
        if let Some(range) = &partition.archived {
            tx.execute(
                "INSERT INTO raw_archive (job, topic, partition, first_offset, next_offset, files, committed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING",
                &[
                    &job,
                    &topic,
                    &(partition.partition as i32),
                    &(range.first as i64),
                    &(range.next as i64),
                    &range.files,
                ],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO job_checkpoints (job, topic, job_time, checkpoints, committed_at) VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (job) DO UPDATE SET topic = EXCLUDED.topic, job_time = EXCLUDED.job_time,
           checkpoints = EXCLUDED.checkpoints, committed_at = EXCLUDED.committed_at",
        &[&job, &topic, &(checkpoint.job_time.min(i64::MAX as u64) as i64), &(number as i64)],
    )?;
    crash_here_if_asked(number);
    tx.commit()?;
    Ok(())
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

/// Late and rejected records are keyed by where they came from; a second copy adds nothing.
fn is_append_only(schema: &TableSchema) -> bool {
    schema.columns.first().is_some_and(|c| c.name == "topic")
}

/// Copies `rows` into `table` in the binary COPY format, 64 KiB at a time.
fn copy_rows<'a>(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    schema: &TableSchema,
    rows: impl Iterator<Item = &'a [Value]>,
) -> Result<()> {
    let kinds: Vec<ColumnKind> = schema.columns.iter().map(|c| c.kind).collect();
    let mut copy = tx.copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))?;
    let mut buffer = CopyBuffer::new();
    for row in rows {
        buffer.push_row(row, &kinds);
        if buffer.len() >= 1 << 16 {
            copy.write_all(&buffer.take())?;
        }
    }
    copy.write_all(&buffer.finish())?;
    copy.finish().with_context(|| format!("cannot copy rows into {table}"))?;
    Ok(())
}

/// Whether a commit failed on a duplicate key (a fresh row that was not).
fn is_unique_violation(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<postgres::Error>().and_then(postgres::Error::code)
            == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
    })
}

/// One table of a [`PgWriter`], as a [`Sink`].
pub struct PgTable {
    writer: Rc<RefCell<PgWriter>>,
    index: usize,
}

impl Sink for PgTable {
    fn write(&mut self, rows: Rows) -> Result<()> {
        self.writer.borrow_mut().buffer(self.index, rows);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let writer = self.writer.borrow();
        let table = &writer.tables[self.index];
        if table.fresh.is_empty() && table.rows.is_empty() {
            Ok(())
        } else {
            bail!("table {} has rows that no checkpoint committed", table.table)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sql_quotes_names_and_keys() {
        let schema = TableSchema::new(
            "late_clicks",
            &[("topic", ColumnKind::Text), ("offset", ColumnKind::Count), ("click_ts", ColumnKind::Integer)],
            2,
        );
        assert_eq!(
            create_table_sql("late_clicks", &schema),
            "CREATE TABLE IF NOT EXISTS \"late_clicks\" (\"topic\" text NOT NULL, \"offset\" bigint NOT NULL, \
             \"click_ts\" numeric(20,0) NOT NULL, PRIMARY KEY (\"topic\", \"offset\"))"
        );
    }
}
