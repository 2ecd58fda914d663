//! Rows copied into a table in PostgreSQL's binary COPY format (`COPY … FROM STDIN (FORMAT
//! binary)`).
//!
//! The server takes binary values as they are, instead of parsing a date or a decimal per
//! value, which is a good part of a row's cost in the text format. The encoding is written by
//! hand into one buffer: postgres' `BinaryCopyInWriter` goes through a `dyn ToSql` and a runtime
//! hand-off per row, and has no `numeric` type; the format itself is small and fixed
//! (<https://www.postgresql.org/docs/15/sql-copy.html#id-1.9.3.55.9.4>).

use std::io::Write as _;

use anyhow::{Context, Result};

use crate::sinks::{ColumnKind, TableSchema, Value};

/// Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_MS: i64 = 946_684_800_000;

/// A binary COPY stream being built: the header, then rows, then [`CopyBuffer::finish`].
struct CopyBuffer {
    bytes: Vec<u8>,
}

impl CopyBuffer {
    fn new() -> Self {
        let mut bytes = Vec::with_capacity(1 << 16);
        bytes.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        bytes.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        bytes.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        CopyBuffer { bytes }
    }

    /// Appends one row whose values are of `kinds`, column by column.
    fn push_row(&mut self, row: &[Value], kinds: &[ColumnKind]) {
        debug_assert_eq!(row.len(), kinds.len());
        self.bytes.extend_from_slice(&(row.len() as i16).to_be_bytes());
        for (value, kind) in row.iter().zip(kinds) {
            self.push_value(value, *kind);
        }
    }

    fn push_value(&mut self, value: &Value, kind: ColumnKind) {
        match (value, kind) {
            (Value::Integer(n), ColumnKind::Integer) => self.push_numeric(*n),
            (Value::Integer(n), ColumnKind::Count) => self.push_field(&(*n as i64).to_be_bytes()),
            (Value::Timestamp(ms), _) => {
                let micros = (*ms as i64 - POSTGRES_EPOCH_MS) * 1000;
                self.push_field(&micros.to_be_bytes());
            }
            (Value::Text(text), _) => self.push_text(text),
            (Value::StaticText(text), _) => self.push_text(text),
            (Value::Integer(n), ColumnKind::Timestamp | ColumnKind::Text) => {
                unreachable!("the dataflow writes {n} into an integer column only")
            }
        }
    }

    fn push_field(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(&(data.len() as i32).to_be_bytes());
        self.bytes.extend_from_slice(data);
    }

    /// Text may not hold NUL, so it becomes U+FFFD (as in the text format path).
    fn push_text(&mut self, text: &str) {
        if text.contains('\0') {
            self.push_field(text.replace('\0', "\u{FFFD}").as_bytes());
        } else {
            self.push_field(text.as_bytes());
        }
    }

    /// `numeric`: digit count, weight, sign, display scale, then base-10000 digits, most
    /// significant first, without trailing zero digits.
    fn push_numeric(&mut self, n: u64) {
        let mut digits = [0u16; 5];
        let mut count = 0;
        let mut rest = n;
        while rest > 0 {
            digits[count] = (rest % 10_000) as u16;
            rest /= 10_000;
            count += 1;
        }
        let weight = count.saturating_sub(1) as i16;
        let trailing_zeros = digits[..count].iter().take_while(|d| **d == 0).count();
        let significant = &digits[trailing_zeros..count];
        self.bytes.extend_from_slice(&((8 + 2 * significant.len()) as i32).to_be_bytes());
        for word in [significant.len() as i16, weight, 0, 0] {
            self.bytes.extend_from_slice(&word.to_be_bytes());
        }
        for digit in significant.iter().rev() {
            self.bytes.extend_from_slice(&digit.to_be_bytes());
        }
    }

    /// Bytes written so far, to send once enough have gathered.
    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes so far, emptied for the next ones (the header is sent with the first).
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    /// The trailer that ends the stream.
    fn finish(&mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&(-1i16).to_be_bytes());
        self.take()
    }
}

/// Copies `rows` into `table` (quoted) in the binary COPY format, 64 KiB at a time.
pub(super) fn copy_rows<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_digits_are_base_10000_without_trailing_zeros() {
        let encode = |n| {
            let mut copy = CopyBuffer { bytes: Vec::new() };
            copy.push_numeric(n);
            copy.bytes[4..].chunks(2).map(|w| i16::from_be_bytes([w[0], w[1]])).collect::<Vec<_>>()
        };
        assert_eq!(encode(0), [0, 0, 0, 0]);
        assert_eq!(encode(7), [1, 0, 0, 0, 7]);
        assert_eq!(encode(10_000), [1, 1, 0, 0, 1]);
        assert_eq!(encode(123_456_789), [3, 2, 0, 0, 1, 2345, 6789]);
        // u64::MAX = 1844 6744 0737 0955 1615
        let max: Vec<u16> = encode(u64::MAX).iter().map(|w| *w as u16).collect();
        assert_eq!(max, [5, 4, 0, 0, 1844, 6744, 737, 955, 1615]);
    }

    #[test]
    fn timestamps_count_from_2000() {
        let mut copy = CopyBuffer { bytes: Vec::new() };
        copy.push_value(&Value::Timestamp(946_684_800_001), ColumnKind::Timestamp);
        assert_eq!(copy.bytes, [&8i32.to_be_bytes()[..], &1000i64.to_be_bytes()].concat());
    }
}
