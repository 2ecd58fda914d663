//! The job's output tables: their DDL and the check of a table an older version left, the rows
//! buffered for one, and how a checkpoint's rows go into it (copied, or upserted through a
//! temporary table).

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use postgres::GenericClient;
use rustc_hash::FxHashMap;

use super::copy::copy_rows;
use crate::sinks::{ColumnKind, Rows, TableSchema, Value};

/// The rows of one table, in the order written (a later row replaces an earlier one with the
/// same key; see [`TableRows::latest_rows`]): buffered by the writer until a checkpoint, then
/// taken, as they are, into that checkpoint's transaction. Each write's rows stay the vector
/// they came in (rows back to back), so that buffering a pane's rows copies nothing.
pub(super) struct TableRows {
    pub(super) schema: TableSchema,
    pub(super) table: String,
    /// Rows no earlier checkpoint wrote ([`Rows::fresh`]); older than every row of `rows`.
    fresh: Vec<Vec<Value>>,
    rows: Vec<Vec<Value>>,
}

impl TableRows {
    pub(super) fn new(table: &str, schema: &TableSchema) -> Self {
        TableRows { schema: schema.clone(), table: table.to_string(), fresh: Vec::new(), rows: Vec::new() }
    }

    /// Keeps `rows` as they are; an empty write keeps nothing, so an empty table has no vectors.
    pub(super) fn push(&mut self, rows: Rows) {
        if rows.values.is_empty() {
            return;
        }
        if rows.fresh { self.fresh.push(rows.values) } else { self.rows.push(rows.values) }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.rows.is_empty()
    }

    pub(super) fn value_count(&self) -> usize {
        self.fresh.iter().chain(&self.rows).map(Vec::len).sum()
    }

    pub(super) fn row_count(&self) -> usize {
        self.value_count() / self.schema.columns.len()
    }

    /// The rows buffered so far, leaving this table empty.
    pub(super) fn take(&mut self) -> TableRows {
        TableRows {
            schema: self.schema.clone(),
            table: self.table.clone(),
            fresh: std::mem::take(&mut self.fresh),
            rows: std::mem::take(&mut self.rows),
        }
    }

    /// The fresh rows, in the order written.
    fn fresh_rows(&self) -> impl Iterator<Item = &[Value]> {
        let width = self.schema.columns.len();
        self.fresh.iter().flat_map(move |values| values.chunks_exact(width))
    }

    /// The last row written for each key among the fresh rows (unless they are appended) and
    /// the others, in no particular order: one upsert statement may not touch a row twice.
    /// Worked out on the commit thread, off the dataflow's worker.
    fn latest_rows(&self, append_fresh: bool) -> impl Iterator<Item = &[Value]> {
        let (width, keys) = (self.schema.columns.len(), self.schema.key_columns);
        let fresh: &[Vec<Value>] = if append_fresh { &[] } else { &self.fresh };
        let mut latest: FxHashMap<&[Value], &[Value]> = FxHashMap::default();
        for row in fresh.iter().chain(&self.rows).flat_map(|values| values.chunks_exact(width)) {
            latest.insert(&row[..keys], row);
        }
        latest.into_values()
    }
}

/// Quotes an identifier (names come from the spec; `offset` is a keyword).
pub(super) fn ident(name: &str) -> String {
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

/// Creates `table` for `schema` unless it exists, and checks that it has the schema's columns.
pub(super) fn create_table(client: &mut impl GenericClient, table: &str, schema: &TableSchema) -> Result<()> {
    client.batch_execute(&create_table_sql(table, schema)).with_context(|| format!("cannot create table {table}"))?;
    check_table(client, table, schema)
}

/// Checks that an existing `table` has the schema's columns and types: the binary COPY sends
/// values in exactly those types, and a table left by an older version may differ.
fn check_table(client: &mut impl GenericClient, table: &str, schema: &TableSchema) -> Result<()> {
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

/// The name of a table's temporary table, for upserts, is this prefix and the table's name.
pub const TEMP_TABLE_PREFIX: &str = "incoming_";

/// Writes one table's rows of a checkpoint: fresh rows copied straight into the table when
/// `append_fresh`, the others copied into a temporary table and upserted from there.
pub(super) fn write_rows(tx: &mut postgres::Transaction<'_>, table: &TableRows, append_fresh: bool) -> Result<()> {
    let name = ident(&table.table);
    if append_fresh && !table.fresh.is_empty() {
        copy_rows(tx, &name, &table.schema, table.fresh_rows())?;
    }
    if table.rows.is_empty() && (append_fresh || table.fresh.is_empty()) {
        return Ok(());
    }
    let temp = ident(&format!("{TEMP_TABLE_PREFIX}{}", table.table));
    tx.batch_execute(&format!("CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {name}) ON COMMIT DELETE ROWS"))?;
    copy_rows(tx, &temp, &table.schema, table.latest_rows(append_fresh))?;
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
    Ok(())
}

/// Late and rejected records are keyed by where they came from; a second copy adds nothing.
fn is_append_only(schema: &TableSchema) -> bool {
    schema.columns.first().is_some_and(|c| c.name == "topic")
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
