//! Outputs: the one interface every sink connector implements (see `CONTEXT.md`). Knows no job:
//! nothing here imports `clicks` or `rooms`.
//!
//! The dataflow turns each spec sink into rows of a [`TableSchema`] and hands them to a
//! [`Sink`]; which connector (CSV file, Postgres table) is the command's choice. A sink of
//! other records names them: the Parquet sink is a `Sink<ParquetFile>`.

pub mod csv;
pub mod memory;
pub mod parquet;
pub mod postgres;

use anyhow::Result;

/// The type of a column, which tells a connector how to store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// An unsigned 64-bit integer, such as an id: Postgres stores it as `numeric(20,0)`, since
    /// `bigint` would refuse the upper half.
    Integer,
    /// A count, rank, partition or offset: never near 2^63, so Postgres stores it as `bigint`,
    /// which it compares and writes faster than `numeric`.
    Count,
    /// A point in time, epoch milliseconds (CSV writes the number, Postgres a timestamptz).
    Timestamp,
    Text,
}

/// A column of an output table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// The shape of an output table. The first `key_columns` columns identify a row, so that a
/// connector that upserts (Postgres) knows what a correction replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// The spec sink's name.
    pub name: String,
    pub columns: Vec<Column>,
    pub key_columns: usize,
}

impl TableSchema {
    /// A schema from `(name, kind)` pairs.
    pub fn new(name: &str, columns: &[(&str, ColumnKind)], key_columns: usize) -> Self {
        let columns = columns.iter().map(|(n, k)| Column { name: n.to_string(), kind: *k }).collect();
        TableSchema { name: name.to_string(), columns, key_columns }
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Integer(u64),
    Timestamp(u64),
    Text(String),
    StaticText(&'static str),
}

/// Rows stored back to back: `columns` values per row, so that a batch of rows is one vector.
#[derive(Debug, Default)]
pub struct Rows {
    pub values: Vec<Value>,
    /// No row with any of these keys was written to this table before (the first rows of a
    /// pane or window since the job's restored checkpoint), so a connector that upserts may
    /// simply append them. `false` (the default) promises nothing.
    pub fresh: bool,
}

impl Rows {
    pub fn push_row(&mut self, row: impl IntoIterator<Item = Value>) {
        self.values.extend(row);
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A destination for records of type `R`: by default the rows of one table.
pub trait Sink<R = Rows> {
    /// Writes records; rows are final or replace earlier rows with the same key.
    fn write(&mut self, records: R) -> Result<()>;
    /// Makes everything written durable and visible (e.g. renames a finished file into place).
    fn finish(&mut self) -> Result<()>;
}
