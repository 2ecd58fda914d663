//! PostgreSQL tables, written exactly once: every table's rows are buffered and committed in
//! one transaction together with the job's checkpoint (the next offset of every partition,
//! where a restart re-reads from, the raw archive's files). Nothing else commits offsets.
//!
//! Rows carry absolute values keyed by the table's key columns (`INSERT ... ON CONFLICT DO
//! UPDATE`), and late and rejected records are keyed by topic, partition and offset (`ON
//! CONFLICT DO NOTHING`), so writing a row twice, as a restart may, changes nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use postgres::{Client, NoTls};
use rustc_hash::FxHashMap;

use super::{ColumnKind, Rows, Sink, TableSchema, Value};
use crate::clicks::driver::{Checkpoint, Restore, RestoredPartition};

/// How long a commit keeps retrying an unreachable database before the job gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// Values buffered at most before a checkpoint is taken even while the previous one is still
/// committing (which then holds up the job): bounds the memory a slow database costs, at about
/// 32 bytes a value (some 450,000 rows of four or five columns, two 1-minute panes here).
const MAX_BUFFERED_VALUES: usize = 1 << 21;

/// Buffered rows of one table, back to back, in the order written (a later row replaces an
/// earlier one with the same key; see [`latest_rows`]).
struct PendingTable {
    schema: TableSchema,
    table: String,
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
    rows: Vec<Value>,
}

impl TableRows {
    /// The last row written for each key, in no particular order: one upsert statement may
    /// not touch a row twice. Worked out on the commit thread, off the dataflow's worker.
    fn latest_rows(&self) -> impl Iterator<Item = &[Value]> {
        let (width, keys) = (self.schema.columns.len(), self.schema.key_columns);
        let mut latest: FxHashMap<&[Value], &[Value]> = FxHashMap::default();
        for row in self.rows.chunks_exact(width) {
            latest.insert(&row[..keys], row);
        }
        latest.into_values()
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
                        let result = commit_transaction(connection, &job, &topic, &transaction);
                        if result.is_err() {
                            client = None; // start over on a fresh connection
                        }
                        result
                    });
                    let rows: usize = transaction.tables.iter().map(|t| t.rows.len() / t.schema.columns.len()).sum();
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

fn sql_type(kind: ColumnKind) -> &'static str {
    match kind {
        // Event ids are unsigned 64-bit: bigint would refuse the upper half.
        ColumnKind::Integer => "numeric(20,0)",
        ColumnKind::Timestamp => "timestamptz",
        ColumnKind::Text => "text",
    }
}

/// `CREATE TABLE IF NOT EXISTS` for a sink's schema, its key columns as the primary key.
pub fn create_table_sql(table: &str, schema: &TableSchema) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (", ident(table));
    for column in &schema.columns {
        let _ = write!(sql, "{} {} NOT NULL, ", ident(&column.name), sql_type(column.kind));
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
            client.batch_execute(&create_table_sql(table, schema)).with_context(|| format!("cannot create table {table}"))?;
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
        let rows =
            client.query("SELECT unnest(files) FROM raw_archive WHERE job = $1 AND topic = $2", &[&self.job, &self.topic])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A sink for one table, buffering into this writer.
    pub fn table(writer: &Rc<RefCell<PgWriter>>, table: &str, schema: &TableSchema) -> PgTable {
        let mut this = writer.borrow_mut();
        this.tables.push(PendingTable { schema: schema.clone(), table: table.to_string(), rows: Vec::new() });
        PgTable { writer: Rc::clone(writer), index: this.tables.len() - 1 }
    }

    fn buffer(&mut self, index: usize, rows: Rows) {
        self.tables[index].rows.extend(rows.values);
    }

    /// Hands every buffered row and the checkpoint to the commit thread, to be committed in one
    /// transaction (retried, on a new connection, until it succeeds), once the previous
    /// checkpoint's transaction has committed. An error is that of the previous transaction.
    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let number = self.checkpoints + 1;
        let tables = self
            .tables
            .iter_mut()
            .filter(|t| !t.rows.is_empty())
            .map(|t| TableRows { schema: t.schema.clone(), table: t.table.clone(), rows: std::mem::take(&mut t.rows) })
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
        let buffered: usize = self.tables.iter().map(|t| t.rows.len()).sum();
        buffered < MAX_BUFFERED_VALUES && self.committer.as_mut().is_some_and(Committer::busy)
    }

    /// Waits until every checkpoint handed to [`PgWriter::commit`] has committed.
    pub fn wait_committed(&mut self) -> Result<()> {
        self.committer.as_mut().map_or(Ok(()), Committer::wait)
    }
}

/// Writes a checkpoint's rows (COPY into a temporary table, then one upsert per table) and the
/// checkpoint itself in one transaction.
fn commit_transaction(client: &mut Client, job: &str, topic: &str, transaction: &Transaction) -> Result<()> {
    let (checkpoint, number) = (&transaction.checkpoint, transaction.number);
    let mut tx = client.transaction()?;
    for table in &transaction.tables {
        let name = ident(&table.table);
        let temp = ident(&format!("incoming_{}", table.table));
        tx.batch_execute(&format!("CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {name}) ON COMMIT DELETE ROWS"))?;
        let mut copy = tx.copy_in(&format!("COPY {temp} FROM STDIN"))?;
        let mut text = String::new();
        let mut times = TimestampText::default();
        for row in table.latest_rows() {
            copy_line(row, &table.schema, &mut times, &mut text);
            if text.len() >= 1 << 16 {
                copy.write_all(text.as_bytes())?;
                text.clear();
            }
        }
        copy.write_all(text.as_bytes())?;
        copy.finish()?;
        let columns = &table.schema.columns;
        let keys: Vec<String> = columns[..table.schema.key_columns].iter().map(|c| ident(&c.name)).collect();
        let updates: Vec<String> =
            columns[table.schema.key_columns..].iter().map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.name))).collect();
        let on_conflict = if table.schema.key_columns == columns.len() || is_append_only(&table.schema) {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        tx.batch_execute(&format!("INSERT INTO {name} SELECT * FROM {temp} ON CONFLICT ({}) {on_conflict}", keys.join(", ")))?;
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
                &[&job, &topic, &(partition.partition as i32), &(range.first as i64), &(range.next as i64), &range.files],
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

/// The COPY text of the last timestamp formatted: the rows of a pane or window share theirs,
/// and formatting a date is the dearest part of a row.
#[derive(Default)]
struct TimestampText {
    ms: Option<u64>,
    text: String,
}

impl TimestampText {
    fn format(&mut self, ms: u64) -> &str {
        if self.ms != Some(ms) {
            let time = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
            self.text.clear();
            let _ = write!(self.text, "{}", time.format("%Y-%m-%d %H:%M:%S%.3f+00"));
            self.ms = Some(ms);
        }
        &self.text
    }
}

/// One row in COPY's text format.
fn copy_line(row: &[Value], schema: &TableSchema, times: &mut TimestampText, out: &mut String) {
    for (index, value) in row.iter().enumerate() {
        if index > 0 {
            out.push('\t');
        }
        match value {
            Value::Integer(n) => out.push_str(itoa::Buffer::new().format(*n)),
            Value::Timestamp(ms) => out.push_str(times.format(*ms)),
            Value::Text(text) => escape_copy(text, out),
            Value::StaticText(text) => escape_copy(text, out),
        }
    }
    debug_assert_eq!(row.len(), schema.columns.len());
    out.push('\n');
}

fn escape_copy(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push('\u{FFFD}'), // text cannot hold NUL
            c => out.push(c),
        }
    }
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
        if writer.tables[self.index].rows.is_empty() {
            Ok(())
        } else {
            bail!("table {} has rows that no checkpoint committed", writer.tables[self.index].table)
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
            &[("topic", ColumnKind::Text), ("offset", ColumnKind::Integer), ("click_ts", ColumnKind::Integer)],
            2,
        );
        assert_eq!(
            create_table_sql("late_clicks", &schema),
            "CREATE TABLE IF NOT EXISTS \"late_clicks\" (\"topic\" text NOT NULL, \"offset\" numeric(20,0) NOT NULL, \
             \"click_ts\" numeric(20,0) NOT NULL, PRIMARY KEY (\"topic\", \"offset\"))"
        );
    }

    #[test]
    fn copy_text_escapes_and_formats_times() {
        let schema = TableSchema::new("t", &[("a", ColumnKind::Timestamp), ("b", ColumnKind::Text)], 1);
        let mut line = String::new();
        copy_line(
            &[Value::Timestamp(1_767_225_600_123), Value::Text("x\ty\\z\n\0".into())],
            &schema,
            &mut Default::default(),
            &mut line,
        );
        assert_eq!(line, "2026-01-01 00:00:00.123+00\tx\\ty\\\\z\\n\u{FFFD}\n");
    }
}
