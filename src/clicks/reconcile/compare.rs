//! Comparing a table's batch rows with its rows in PostgreSQL by key, and the report: what was
//! checked, what is equal, what differs (streamed and batch values), what is missing or extra;
//! as text for the terminal and as JSON (`--report`).

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::sinks::{TableSchema, Value};

/// One table's comparison: the rows behind the report, kept for a repair.
pub struct TableComparison {
    pub table: String,
    pub schema: TableSchema,
    /// What a group is (`panes`, `windows`) and how many were checked.
    pub unit: &'static str,
    pub groups: u64,
    /// Keys seen on either side, and of those the rows equal on both.
    pub checked: u64,
    pub equal: u64,
    /// (streamed row, batch row), same key.
    pub differing: Vec<(Vec<Value>, Vec<Value>)>,
    /// Batch rows with no streamed row of their key.
    pub missing: Vec<Vec<Value>>,
    /// Streamed rows with no batch row of their key.
    pub extra: Vec<Vec<Value>>,
}

impl TableComparison {
    pub fn mismatches(&self) -> u64 {
        (self.differing.len() + self.missing.len() + self.extra.len()) as u64
    }
}

/// Values as compared: a `StaticText` equals the `Text` of the same string (the batch writes
/// static country codes, PostgreSQL gives back strings).
#[derive(Clone, Copy)]
struct Compared<'a>(&'a [Value]);

/// A value's comparable form: its number and kind, or its text.
fn comparable(value: &Value) -> (u8, u64, &str) {
    match value {
        Value::Integer(n) => (0, *n, ""),
        Value::Timestamp(n) => (1, *n, ""),
        Value::Text(s) => (2, 0, s),
        Value::StaticText(s) => (2, 0, s),
    }
}

/// Whether two values are equal as compared (the hot path of a comparison: no string is
/// looked at unless both values are text).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) | (Value::Timestamp(x), Value::Timestamp(y)) => x == y,
        (Value::Text(_) | Value::StaticText(_), Value::Text(_) | Value::StaticText(_)) => {
            comparable(a).2 == comparable(b).2
        }
        _ => false,
    }
}

impl PartialEq for Compared<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(other.0).all(|(a, b)| same(a, b))
    }
}

impl Eq for Compared<'_> {}

impl std::hash::Hash for Compared<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for value in self.0 {
            match comparable(value) {
                (kind @ (0 | 1), n, _) => state.write_u64(n ^ (kind as u64) << 63),
                (_, _, text) => state.write(text.as_bytes()),
            }
        }
    }
}

/// An order of rows for the report (values have no `Ord`).
fn sort_key(row: &[Value]) -> Vec<(u8, u64, String)> {
    row.iter().map(comparable).map(|(kind, n, s)| (kind, n, s.to_string())).collect()
}

/// Compares `batch` with `streamed` (each chunks of back to back values of `schema`) by the schema's
/// key. `group_of` maps a row's time (`time_column`) to its pane or window.
pub fn compare(
    table: &str,
    schema: &TableSchema,
    time_column: usize,
    unit: &'static str,
    group_of: impl Fn(u64) -> u64,
    batch: &[Vec<Value>],
    streamed: &[Vec<Value>],
) -> TableComparison {
    let (width, keys) = (schema.columns.len(), schema.key_columns);
    let mut groups = BTreeSet::new();
    let mut time = |row: &[Value]| {
        if let Value::Integer(t) | Value::Timestamp(t) = row[time_column] {
            groups.insert(group_of(t));
        }
    };
    let mut batch_rows: FxHashMap<Compared, &[Value]> = FxHashMap::default();
    batch_rows.reserve(batch.iter().map(Vec::len).sum::<usize>() / width.max(1));
    for row in batch.iter().flat_map(|chunk| chunk.chunks_exact(width)) {
        time(row);
        batch_rows.insert(Compared(&row[..keys]), row);
    }
    let mut comparison = TableComparison {
        table: table.to_string(),
        schema: schema.clone(),
        unit,
        groups: 0,
        checked: 0,
        equal: 0,
        differing: Vec::new(),
        missing: Vec::new(),
        extra: Vec::new(),
    };
    for row in streamed.iter().flat_map(|chunk| chunk.chunks_exact(width)) {
        time(row);
        comparison.checked += 1;
        match batch_rows.remove(&Compared(&row[..keys])) {
            Some(batch) if Compared(batch) == Compared(row) => comparison.equal += 1,
            Some(batch) => comparison.differing.push((row.to_vec(), batch.to_vec())),
            None => comparison.extra.push(row.to_vec()),
        }
    }
    comparison.checked += batch_rows.len() as u64;
    comparison.missing = batch_rows.into_values().map(<[Value]>::to_vec).collect();
    comparison.groups = groups.len() as u64;
    comparison.differing.sort_by_cached_key(|(row, _)| sort_key(row));
    comparison.missing.sort_by_cached_key(|row| sort_key(row));
    comparison.extra.sort_by_cached_key(|row| sort_key(row));
    comparison
}

/// The whole run, as `--report` writes it.
#[derive(Serialize)]
pub struct Report {
    pub job: String,
    pub from: u64,
    pub to: u64,
    pub archived_events: u64,
    pub batch_seconds: f64,
    pub checked: u64,
    pub equal: u64,
    pub differing: u64,
    pub missing: u64,
    pub extra: u64,
    pub repaired: u64,
    pub tables: Vec<TableReport>,
}

/// One table of the report.
#[derive(Serialize)]
pub struct TableReport {
    pub table: String,
    pub unit: &'static str,
    pub groups: u64,
    pub checked: u64,
    pub equal: u64,
    /// Each with its `key`, and the `streamed` and `batch` values of the other columns (`null`
    /// on the side that has no row).
    pub differing: Vec<Json>,
    pub missing: Vec<Json>,
    pub extra: Vec<Json>,
}

fn json_value(value: &Value) -> Json {
    match value {
        Value::Integer(n) | Value::Timestamp(n) => Json::from(*n),
        Value::Text(s) => Json::from(s.as_str()),
        Value::StaticText(s) => Json::from(*s),
    }
}

fn columns(schema: &TableSchema, row: &[Value], range: std::ops::Range<usize>) -> Map<String, Json> {
    range.map(|i| (schema.columns[i].name.clone(), json_value(&row[i]))).collect()
}

fn entry(schema: &TableSchema, streamed: Option<&[Value]>, batch: Option<&[Value]>) -> Json {
    let (keys, width) = (schema.key_columns, schema.columns.len());
    let key_row = streamed.or(batch).expect("a row on one side");
    let mut entry = Map::new();
    entry.insert("key".into(), Json::Object(columns(schema, key_row, 0..keys)));
    for (side, row) in [("streamed", streamed), ("batch", batch)] {
        let value = row.map_or(Json::Null, |row| Json::Object(columns(schema, row, keys..width)));
        entry.insert(side.into(), value);
    }
    Json::Object(entry)
}

impl TableReport {
    pub fn of(c: &TableComparison) -> Self {
        let s = &c.schema;
        TableReport {
            table: c.table.clone(),
            unit: c.unit,
            groups: c.groups,
            checked: c.checked,
            equal: c.equal,
            differing: c.differing.iter().map(|(st, b)| entry(s, Some(st), Some(b))).collect(),
            missing: c.missing.iter().map(|b| entry(s, None, Some(b))).collect(),
            extra: c.extra.iter().map(|st| entry(s, Some(st), None)).collect(),
        }
    }
}

/// Rows of each kind printed per table at most (the JSON report has them all).
const PRINTED_ROWS: usize = 20;

impl Report {
    /// The report as text: a summary line, a table of counts, then the rows that differ.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reconcile job `{}`, [{}, {}): {} archived events through the dataflow in {:.2} s ({:.0} events/s)",
            self.job,
            self.from,
            self.to,
            self.archived_events,
            self.batch_seconds,
            self.archived_events as f64 / self.batch_seconds.max(1e-9)
        );
        let _ = writeln!(
            out,
            "{:<28} {:>14} {:>10} {:>10} {:>9} {:>8} {:>6}",
            "table", "checked", "rows", "equal", "differing", "missing", "extra"
        );
        for t in &self.tables {
            let _ = writeln!(
                out,
                "{:<28} {:>14} {:>10} {:>10} {:>9} {:>8} {:>6}",
                t.table,
                format!("{} {}", t.groups, t.unit),
                t.checked,
                t.equal,
                t.differing.len(),
                t.missing.len(),
                t.extra.len()
            );
        }
        let show = |v: &Json| match v {
            Json::Object(map) => map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            _ => "-".to_string(),
        };
        for t in &self.tables {
            for (kind, rows) in [("differing", &t.differing), ("missing", &t.missing), ("extra", &t.extra)] {
                for row in rows.iter().take(PRINTED_ROWS) {
                    let _ = writeln!(
                        out,
                        "{} {kind}: {}: streamed {}, batch {}",
                        t.table,
                        show(&row["key"]),
                        show(&row["streamed"]),
                        show(&row["batch"])
                    );
                }
                if rows.len() > PRINTED_ROWS {
                    let _ = writeln!(out, "{} {kind}: {} more (see --report)", t.table, rows.len() - PRINTED_ROWS);
                }
            }
        }
        let mismatches = self.differing + self.missing + self.extra;
        if mismatches == 0 {
            let _ = writeln!(out, "no difference in {} rows", self.checked);
        } else {
            let _ = writeln!(
                out,
                "{mismatches} of {} rows differ ({} differing, {} missing, {} extra); {}",
                self.checked,
                self.differing,
                self.missing,
                self.extra,
                if self.repaired > 0 {
                    format!("repaired {} rows", self.repaired)
                } else {
                    "not repaired (--repair writes the batch values)".to_string()
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::ColumnKind;

    #[test]
    fn finds_differing_missing_and_extra_rows_by_key() {
        let schema = TableSchema::new(
            "c",
            &[("window_start", ColumnKind::Timestamp), ("country", ColumnKind::Text), ("clicks", ColumnKind::Count)],
            2,
        );
        let row = |t, c: &str, n| vec![Value::Timestamp(t), Value::Text(c.into()), Value::Integer(n)];
        let batch: Vec<Value> =
            [vec![Value::Timestamp(0), Value::StaticText("US"), Value::Integer(1)], row(0, "DE", 2), row(60, "DE", 3)]
                .concat();
        let streamed = [row(0, "US", 1), row(0, "DE", 5), row(120, "FR", 1)].concat();
        let c = compare("c", &schema, 0, "panes", |t| t / 60, &[batch], &[streamed]);
        assert_eq!((c.checked, c.equal, c.groups), (4, 1, 3));
        assert_eq!(c.differing, [(row(0, "DE", 5), row(0, "DE", 2))]);
        assert_eq!(c.missing, [[Value::Timestamp(60), Value::Text("DE".into()), Value::Integer(3)]]);
        assert_eq!(c.extra, [row(120, "FR", 1)]);
        let report = TableReport::of(&c);
        let differing = &report.differing[0];
        assert_eq!(differing["key"], serde_json::json!({"window_start": 0, "country": "DE"}));
        assert_eq!((&differing["streamed"]["clicks"], &differing["batch"]["clicks"]), (&Json::from(5), &Json::from(2)));
        assert_eq!(report.extra[0]["batch"], Json::Null);
    }
}
