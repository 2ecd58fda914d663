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

/// One row per reconciliation run.
const RECONCILIATIONS: &str = "
CREATE TABLE IF NOT EXISTS reconciliations (
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
    pub fn connect(url: &str) -> Result<Self> {
        let client = super::commit::connect(url)?;
        Ok(PgReconciler { client })
    }

    /// The jobs with a committed checkpoint, by name, each with its topic.
    pub fn jobs(&mut self) -> Result<Vec<(String, String)>> {
        let exists: Option<String> = self.client.query_one("SELECT to_regclass('job_checkpoints')::text", &[])?.get(0);
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let rows = self.client.query("SELECT job, topic FROM job_checkpoints ORDER BY job", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every committed archive range of `job` on `topic`, by partition and first offset.
    pub fn archived_ranges(&mut self, job: &str, topic: &str) -> Result<Vec<(u32, ArchivedRange)>> {
        let rows = self
            .client
            .query(
                "SELECT partition, first_offset, next_offset, files FROM raw_archive
                 WHERE job = $1 AND topic = $2 ORDER BY partition, first_offset",
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
                (r.get::<_, i32>(0) as u32, range)
            })
            .collect())
    }

    /// The rows of `table` whose column `time_column` lies in `[from, to)` (epoch ms), as values
    /// of `schema`'s kinds.
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
                ColumnKind::Integer | ColumnKind::Count => format!("{}::text", ident(&c.name)),
                ColumnKind::Timestamp => format!("((extract(epoch from {}) * 1000)::bigint)::text", ident(&c.name)),
                ColumnKind::Text => ident(&c.name),
            })
            .collect();
        let time = &schema.columns[time_column];
        let bound = |n: usize| match time.kind {
            ColumnKind::Timestamp => format!("timestamptz 'epoch' + ${n}::bigint * interval '1 millisecond'"),
            _ => format!("${n}::bigint"),
        };
        let column = ident(&time.name);
        let sql = format!(
            "SELECT {} FROM {} WHERE {column} >= {} AND {column} < {}",
            select.join(", "),
            ident(table),
            bound(1),
            bound(2)
        );
        let rows = self
            .client
            .query(&sql, &[&(from as i64), &(to as i64)])
            .with_context(|| format!("cannot read table {table}"))?;
        let mut values = Vec::with_capacity(rows.len());
        for row in rows {
            let mut out = Vec::with_capacity(schema.columns.len());
            for (i, c) in schema.columns.iter().enumerate() {
                let text: String = row.get(i);
                let number = || text.parse::<u64>().with_context(|| format!("{table}.{}: `{text}`", c.name));
                out.push(match c.kind {
                    ColumnKind::Integer | ColumnKind::Count => Value::Integer(number()?),
                    ColumnKind::Timestamp => Value::Timestamp(number()?),
                    ColumnKind::Text => Value::Text(text),
                });
            }
            values.push(out);
        }
        Ok(values)
    }

    /// In one transaction: the repairs (rows upserted, keys deleted) and the record of the run.
    pub fn commit(&mut self, run: &RunRecord, repairs: &[TableRepair]) -> Result<()> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute(RECONCILIATIONS).context("cannot create table reconciliations")?;
        for repair in repairs {
            repair_table(&mut tx, repair).with_context(|| format!("cannot repair table {}", repair.table))?;
        }
        tx.execute(
            "INSERT INTO reconciliations (job, \"from\", \"to\", checked, differing, repaired, at)
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
