//! Rows kept in memory: a table's rows gathered for a comparison (`clickstay reconcile` holds the
//! batch results beside the rows in PostgreSQL), or a test's.
//!
//! A [`MemorySink`] keeps the rows its `keep` predicate accepts (e.g. those of a time range) in a
//! [`MemoryRows`] its maker holds on to, and takes back when the run is over.

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::Result;

use super::{Rows, Sink, TableSchema, Value};

/// The rows a [`MemorySink`] kept, shared with whoever made the sink: chunks of rows back to
/// back (as written, so that nothing is copied when every row of a write is kept).
pub type MemoryRows = Rc<RefCell<Vec<Vec<Value>>>>;

/// Which rows a [`MemorySink`] keeps.
pub type Keep = Box<dyn Fn(&[Value]) -> bool>;

/// Keeps the rows `keep` accepts, in the order written.
pub struct MemorySink {
    columns: usize,
    rows: MemoryRows,
    keep: Keep,
}

impl MemorySink {
    /// A sink of `schema`'s rows; returns it and the handle that sees what it kept.
    pub fn new(schema: &TableSchema, keep: Keep) -> (Self, MemoryRows) {
        let rows = MemoryRows::default();
        (MemorySink { columns: schema.columns.len(), rows: Rc::clone(&rows), keep }, rows)
    }
}

impl Sink for MemorySink {
    fn write(&mut self, rows: Rows) -> Result<()> {
        let mut kept = self.rows.borrow_mut();
        let mut rows = rows.values;
        if !rows.chunks_exact(self.columns).all(|row| (self.keep)(row)) {
            rows = rows.chunks_exact(self.columns).filter(|row| (self.keep)(row)).flatten().cloned().collect();
        }
        if !rows.is_empty() {
            kept.push(rows);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::ColumnKind;

    #[test]
    fn keeps_the_rows_the_predicate_accepts() {
        let schema = TableSchema::new("t", &[("k", ColumnKind::Integer), ("v", ColumnKind::Count)], 1);
        let (mut sink, kept) = MemorySink::new(&schema, Box::new(|row| row[0] != Value::Integer(2)));
        let mut rows = Rows::default();
        for k in 1..=3 {
            rows.push_row([Value::Integer(k), Value::Integer(10 * k)]);
        }
        sink.write(rows).unwrap();
        sink.finish().unwrap();
        let expected = [1, 10, 3, 30].map(Value::Integer);
        assert_eq!(*kept.borrow(), [expected]);
    }
}
