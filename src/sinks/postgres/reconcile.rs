//! Reconciliation's side of the tables: a job's committed archive ranges and topic, a table's
//! rows of a time range read back as [`Value`]s of its schema, and the repair of rows (upserts
//! of the right values, deletes of extra keys) together with the record of the run, in one
//! transaction (`reconciliations`). Knows no job: the caller says which tables, columns and
//! rows.

use anyhow::{Context, Result, bail};
use postgres::Client;

use super::tables::ident;
use crate::checkpoint::ArchivedRange;
use crate::sinks::{ColumnKind, TableSchema, Value};

/// Rows per chunk of [`PgReconciler::read_rows`].
const ROWS_PER_CHUNK: usize = 1 << 16;

/// One row per reconciliation run.
const RECONCILIATIONS: &str = "
CREATE TABLE IF NOT EXISTS public.reconciliations (
    job text NOT NULL, \"from\" timestamptz NOT NULL, \"to\" timestamptz NOT NULL,
    checked bigint NOT NULL, differing bigint NOT NULL, repaired bigint NOT NULL,
    at timestamptz NOT NULL);
";

/// What a run found and did, as `reconciliations` records it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub job: String,
    /// Epoch milliseconds, `[from, to)`.
    pub from: u64,
    pub to: u64,
    /// Rows compared; rows that differed (differing, missing or extra); rows written.
    pub checked: u64,
    pub differing: u64,
    pub repaired: u64,
}

/// The rows of one table to put right: `upserts` are whole rows with the right values,
/// `deletes` the keys (the schema's key columns) of rows that should not be there.
pub struct TableRepair<'a> {
    pub table: &'a str,
    pub schema: &'a TableSchema,
    pub upserts: Vec<&'a [Value]>,
    pub deletes: Vec<&'a [Value]>,
}

/// A connection for reconciling a job's tables.
pub struct PgReconciler {
    client: Client,
}

impl PgReconciler {
    /// Connects to read and repair `job`'s result tables (the schema named after it).
    pub fn connect(url: &str, job: &str) -> Result<Self> {
        let client = super::commit::connect(url, job)?;
        Ok(PgReconciler { client })
    }

    /// The jobs with a committed checkpoint, by name, each with its topic.
    pub fn jobs(&mut self) -> Result<Vec<(String, String)>> {
        let exists: Option<String> =
            self.client.query_one("SELECT to_regclass('public.job_checkpoints')::text", &[])?.get(0);
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let rows = self.client.query("SELECT job, topic FROM public.job_checkpoints ORDER BY job, topic", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every committed archive range of `job` on `topic` with its partition and incarnation, by
    /// partition, incarnation and first offset.
    pub fn archived_ranges(&mut self, job: &str, topic: &str) -> Result<Vec<(u32, u32, ArchivedRange)>> {
        let rows = self
            .client
            .query(
                "SELECT partition, first_offset, next_offset, files, incarnation FROM public.raw_archive
                 WHERE job = $1 AND topic = $2 ORDER BY partition, incarnation, first_offset",
                &[&job, &topic],
            )
            .context("cannot read raw_archive")?;
        Ok(rows
            .iter()
            .map(|r| {
                let range = ArchivedRange {
                    first: r.get::<_, i64>(1) as u64,
                    next: r.get::<_, i64>(2) as u64,
                    files: r.get(3),
                };
                (r.get::<_, i32>(0) as u32, r.get::<_, i32>(4) as u32, range)
            })
            .collect())
    }

    /// Reads until [`PgReconciler::end_snapshot`] see one snapshot of the database (tables a
    /// running job commits to stay consistent with each other).
    pub fn begin_snapshot(&mut self) -> Result<()> {
        self.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        Ok(())
    }

    pub fn end_snapshot(&mut self) -> Result<()> {
        self.client.batch_execute("COMMIT")?;
        Ok(())
    }

    /// The rows of `table` whose column `time_column` lies in `[from, to)` (epoch ms), as values
    /// of `schema`'s kinds: chunks of rows back to back (as in [`crate::sinks::Rows`]), so that
    /// no huge vector is grown. Read with `COPY ... TO STDOUT`, the server's cheapest way out.
    pub fn read_rows(
        &mut self,
        table: &str,
        schema: &TableSchema,
        time_column: usize,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<Value>>> {
        let select: Vec<String> = schema
            .columns
            .iter()
            .map(|c| match c.kind {
                ColumnKind::Timestamp => format!("(extract(epoch from {}) * 1000)::bigint", ident(&c.name)),
                _ => ident(&c.name),
            })
            .collect();
        let time = &schema.columns[time_column];
        let bound = |ms: u64| match time.kind {
            ColumnKind::Timestamp => format!("timestamptz 'epoch' + {ms} * interval '1 millisecond'"),
            _ => ms.to_string(),
        };
        let column = ident(&time.name);
        let sql = format!(
            "COPY (SELECT {} FROM {} WHERE {column} >= {} AND {column} < {}) TO STDOUT",
            select.join(", "),
            ident(table),
            bound(from),
            bound(to)
        );
        let context = || format!("cannot read table {table}");
        let mut reader = std::io::BufReader::with_capacity(1 << 20, self.client.copy_out(&sql).with_context(context)?);
        let width = schema.columns.len();
        let chunk_values = ROWS_PER_CHUNK * width;
        let mut chunks: Vec<Vec<Value>> = Vec::new();
        let mut values = Vec::with_capacity(chunk_values);
        let mut line = Vec::new();
        loop {
            line.clear();
            if std::io::BufRead::read_until(&mut reader, b'\n', &mut line).with_context(context)? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if values.len() >= chunk_values {
                chunks.push(std::mem::replace(&mut values, Vec::with_capacity(chunk_values)));
            }
            let mut fields = line.split(|b| *b == b'\t');
            for c in &schema.columns {
                let field = fields.next().with_context(|| format!("{table}: a row has too few columns"))?;
                let number = || {
                    std::str::from_utf8(field)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .with_context(|| format!("{table}.{}: `{}`", c.name, String::from_utf8_lossy(field)))
                };
                values.push(match c.kind {
                    ColumnKind::Integer | ColumnKind::Count => Value::Integer(number()?),
                    ColumnKind::Timestamp => Value::Timestamp(number()?),
                    ColumnKind::Text => Value::Text(copy_text(field)),
                });
            }
        }
        chunks.push(values);
        Ok(chunks)
    }

    /// In one transaction: the repairs (rows upserted, keys deleted) and the record of the run.
    pub fn commit(&mut self, run: &RunRecord, repairs: &[TableRepair]) -> Result<()> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute(RECONCILIATIONS).context("cannot create table reconciliations")?;
        for repair in repairs {
            repair_table(&mut tx, repair).with_context(|| format!("cannot repair table {}", repair.table))?;
        }
        tx.execute(
            "INSERT INTO public.reconciliations (job, \"from\", \"to\", checked, differing, repaired, at)
             VALUES ($1, timestamptz 'epoch' + $2::bigint * interval '1 millisecond',
                     timestamptz 'epoch' + $3::bigint * interval '1 millisecond', $4, $5, $6, now())",
            &[
                &run.job,
                &(run.from as i64),
                &(run.to as i64),
                &(run.checked as i64),
                &(run.differing as i64),
                &(run.repaired as i64),
            ],
        )
        .context("cannot record the run in reconciliations")?;
        tx.commit().context("cannot commit the reconciliation")?;
        Ok(())
    }
}

/// A text field of `COPY`'s text format, its backslash escapes undone.
fn copy_text(field: &[u8]) -> String {
    if !field.contains(&b'\\') {
        return String::from_utf8_lossy(field).into_owned();
    }
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b't') => b'\t',
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b'b') => 8,
            Some(b'f') => 12,
            Some(b'v') => 11,
            Some(&other) => other,
            None => break,
        });
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A value of `kind` as a bind parameter `$n` (sent as text, cast in SQL).
fn parameter(kind: ColumnKind, n: usize) -> String {
    match kind {
        ColumnKind::Integer => format!("${n}::text::numeric"),
        ColumnKind::Count => format!("${n}::text::bigint"),
        ColumnKind::Timestamp => format!("(timestamptz 'epoch' + ${n}::text::bigint * interval '1 millisecond')"),
        ColumnKind::Text => format!("${n}::text"),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Integer(n) | Value::Timestamp(n) => n.to_string(),
        Value::Text(s) => s.clone(),
        Value::StaticText(s) => s.to_string(),
    }
}

fn repair_table(tx: &mut postgres::Transaction<'_>, repair: &TableRepair) -> Result<()> {
    let schema = repair.schema;
    let (columns, keys) = (&schema.columns, schema.key_columns);
    if keys == 0 {
        bail!("table {} has no key: its rows cannot be repaired one by one", repair.table);
    }
    let table = ident(repair.table);
    let names: Vec<String> = columns.iter().map(|c| ident(&c.name)).collect();
    let values: Vec<String> = columns.iter().enumerate().map(|(i, c)| parameter(c.kind, i + 1)).collect();
    let on_conflict = if keys == columns.len() {
        "DO NOTHING".to_string()
    } else {
        let updates: Vec<String> = names[keys..].iter().map(|n| format!("{n} = EXCLUDED.{n}")).collect();
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let upsert = tx.prepare(&format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}",
        names.join(", "),
        values.join(", "),
        names[..keys].join(", ")
    ))?;
    let matches: Vec<String> =
        (0..keys).map(|i| format!("{} = {}", names[i], parameter(columns[i].kind, i + 1))).collect();
    let delete = tx.prepare(&format!("DELETE FROM {table} WHERE {}", matches.join(" AND ")))?;
    let run = |tx: &mut postgres::Transaction<'_>, statement: &postgres::Statement, row: &[Value]| -> Result<u64> {
        let texts: Vec<String> = row.iter().map(text).collect();
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            texts.iter().map(|t| t as &(dyn postgres::types::ToSql + Sync)).collect();
        Ok(tx.execute(statement, &params)?)
    };
    for row in &repair.upserts {
        run(tx, &upsert, row)?;
    }
    for key in &repair.deletes {
        run(tx, &delete, &key[..keys])?;
    }
    Ok(())
}
