//! CSV files: one file per table, with a header line, written to a temporary name and renamed
//! into place when complete, so a reader never sees half a file.
//!
//! Formatting and writing happen on a thread of their own, so that the dataflow worker that
//! hosts the sinks does not hold up the others while it writes millions of rows.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use super::{Rows, Sink, TableSchema, Value};

/// Batches of rows waiting for the writer thread, at most; a full queue makes the sink wait.
const QUEUED_BATCHES: usize = 64;

/// A CSV file being written.
pub struct CsvSink {
    path: PathBuf,
    rows: Option<SyncSender<Rows>>,
    writer: Option<JoinHandle<Result<()>>>,
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
        let columns = schema.columns.len();
        let (sender, receiver) = sync_channel::<Rows>(QUEUED_BATCHES);
        let final_path = path.clone();
        let thread = std::thread::Builder::new()
            .name(format!("csv:{file}"))
            .spawn(move || -> Result<()> {
                let context = || format!("cannot write {}", temp_path.display());
                for rows in receiver {
                    write_rows(&mut writer, &rows, columns).with_context(context)?;
                }
                let file = writer.into_inner().map_err(|e| e.into_error()).with_context(context)?;
                file.into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(context)?
                    .sync_all()
                    .with_context(context)?;
                std::fs::rename(&temp_path, &final_path)
                    .with_context(|| format!("cannot rename {} into place", temp_path.display()))
            })
            .context("cannot start a CSV writer thread")?;
        Ok(CsvSink { path, rows: Some(sender), writer: Some(thread) })
    }

    /// Waits for the writer thread and returns what it met.
    fn join(&mut self) -> Result<()> {
        self.rows = None; // closes the queue: the thread finishes the file
        match self.writer.take() {
            Some(thread) => {
                thread.join().map_err(|_| anyhow::anyhow!("the writer of {} panicked", self.path.display()))?
            }
            None => Ok(()),
        }
    }
}

fn write_rows(writer: &mut csv::Writer<BufWriter<File>>, rows: &Rows, columns: usize) -> csv::Result<()> {
    let mut number = itoa::Buffer::new();
    for row in rows.values.chunks(columns) {
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

impl Sink for CsvSink {
    fn write(&mut self, rows: Rows) -> Result<()> {
        let sent = self.rows.as_ref().context("CSV sink already finished")?.send(rows);
        if sent.is_err() {
            // The writer stopped: its error says why.
            self.join()?;
            anyhow::bail!("the writer of {} stopped", self.path.display());
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.join()
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
        sink.write(rows).unwrap();
        assert!(!dir.path().join("rejected.csv").exists());
        sink.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join("rejected.csv")).unwrap();
        assert_eq!(text, "line,raw\n7,\"a,\"\"b\"\"\"\n");
    }
}
