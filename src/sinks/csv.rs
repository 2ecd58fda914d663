//! CSV files: one file per table, with a header line, written to a temporary name and renamed
//! into place when complete, so a reader never sees half a file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Rows, Sink, TableSchema, Value};

/// A CSV file being written.
pub struct CsvSink {
    path: PathBuf,
    temp_path: PathBuf,
    columns: usize,
    writer: Option<csv::Writer<BufWriter<File>>>,
}

impl CsvSink {
    /// Creates `dir/file` (as `dir/file.tmp` until [`Sink::finish`]) and writes the header.
    pub fn create(dir: &Path, file: &str, schema: &TableSchema) -> Result<Self> {
        let path = dir.join(file);
        let temp_path = dir.join(format!("{file}.tmp"));
        let handle = File::create(&temp_path).with_context(|| format!("cannot create {}", temp_path.display()))?;
        let mut writer = csv::WriterBuilder::new().from_writer(BufWriter::with_capacity(1 << 20, handle));
        writer
            .write_record(schema.columns.iter().map(|c| c.name.as_str()))
            .with_context(|| format!("cannot write {}", temp_path.display()))?;
        Ok(CsvSink { path, temp_path, columns: schema.columns.len(), writer: Some(writer) })
    }
}

impl Sink for CsvSink {
    fn write(&mut self, rows: &Rows) -> Result<()> {
        let writer = self.writer.as_mut().context("CSV sink already finished")?;
        let mut number = itoa::Buffer::new();
        for row in rows.values.chunks(self.columns) {
            for value in row {
                let field: &[u8] = match value {
                    Value::Integer(n) | Value::Timestamp(n) => number.format(*n).as_bytes(),
                    Value::Text(s) => s.as_bytes(),
                    Value::StaticText(s) => s.as_bytes(),
                };
                writer.write_field(field)?;
            }
            writer.write_record(None::<&[u8]>)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(writer) = self.writer.take() {
            let buffered = writer.into_inner().map_err(|e| anyhow::anyhow!("{}: {}", self.temp_path.display(), e.error()))?;
            buffered
                .into_inner()
                .map_err(|e| anyhow::anyhow!("{}: {}", self.temp_path.display(), e.error()))?
                .sync_all()
                .with_context(|| format!("cannot sync {}", self.temp_path.display()))?;
            std::fs::rename(&self.temp_path, &self.path)
                .with_context(|| format!("cannot rename {} into place", self.temp_path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::ColumnKind;

    #[test]
    fn writes_quoted_fields_and_appears_only_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let schema = TableSchema::new("rejected", &[("line", ColumnKind::Integer), ("raw", ColumnKind::Text)], 1);
        let mut sink = CsvSink::create(dir.path(), "rejected.csv", &schema).unwrap();
        let mut rows = Rows::default();
        rows.push_row([Value::Integer(7), Value::Text("a,\"b\"".into())]);
        sink.write(&rows).unwrap();
        assert!(!dir.path().join("rejected.csv").exists());
        sink.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join("rejected.csv")).unwrap();
        assert_eq!(text, "line,raw\n7,\"a,\"\"b\"\"\"\n");
    }
}
