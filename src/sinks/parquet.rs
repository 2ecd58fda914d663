//! Parquet files, each written atomically: under a temporary name (`<name>.tmp`), fsynced,
//! renamed into place, and the directories on the way fsynced, so a reader or a restarted job
//! sees either the whole file or none, and the new name survives a crash.
//!
//! The sink knows no job: it is given a message schema, how each column is stored (layouts),
//! and files as a path under its root and row groups of typed columns. The contents are a
//! function of those alone (no clock, no random ids), so writing the same file again gives the
//! same bytes.
//!
//! The writer is parquet-rs's low-level column API: it needs none of arrow, which would add
//! minutes of compile time for a few flat columns.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use parquet::basic::Encoding;
pub use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, Type};

use super::Sink;

/// The values of one column of a row group, of the column's physical type.
pub enum ColumnValues {
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    /// Strings and other bytes; a `ByteArray` may be a slice of a shared buffer.
    ByteArray(Vec<ByteArray>),
    /// One value `count` times (a column that is the same in every row of a file): `run`
    /// holds it a few times over and is written again and again, so that no vector of
    /// `count` copies is built and dropped.
    Repeated {
        run: Box<ColumnValues>,
        count: usize,
    },
}

impl ColumnValues {
    fn len(&self) -> usize {
        match self {
            ColumnValues::Int32(values) => values.len(),
            ColumnValues::Int64(values) => values.len(),
            ColumnValues::ByteArray(values) => values.len(),
            ColumnValues::Repeated { count, .. } => *count,
        }
    }
}

/// How a column's values are encoded in its pages (before compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnEncoding {
    /// A dictionary of the distinct values and their indices (parquet's default): for values
    /// that repeat.
    Dictionary,
    /// The values as they are: for (nearly) distinct values, whose dictionary would only cost.
    Plain,
    /// Differences between neighbours, bit-packed (`DELTA_BINARY_PACKED`): for integers that
    /// grow or stay close (offsets, times), which it stores in a few bits each.
    Delta,
}

/// How a [`ParquetSink`] stores a column.
#[derive(Debug, Clone, Copy)]
pub struct ColumnLayout {
    pub name: &'static str,
    pub encoding: ColumnEncoding,
    /// Min/max statistics per page and column chunk, which let readers skip pages and row
    /// groups by value: worth their cost only on the columns readers filter by.
    pub statistics: bool,
}

/// One file for a [`ParquetSink`]: where under its root, and the row groups, each the columns
/// in schema order. Row groups are made one at a time, as the file is written, so that only
/// one row group's columns are in memory at once.
pub struct ParquetFile<'a> {
    /// Relative to the sink's root; directories are created as needed.
    pub path: PathBuf,
    pub row_groups: Box<dyn Iterator<Item = Vec<ColumnValues>> + 'a>,
}

/// Parquet files of one schema under one root directory.
pub struct ParquetSink {
    root: PathBuf,
    schema: Arc<Type>,
    properties: Arc<WriterProperties>,
    written: Vec<PathBuf>,
}

impl ParquetSink {
    /// Files of `message_type` (Parquet's schema syntax) under `root`, each column stored as
    /// its entry in `layouts` says (a column without one: dictionary and statistics, parquet's
    /// defaults), every page compressed with `compression` (a codec needs its feature of the
    /// `parquet` crate: see Cargo.toml).
    pub fn new(root: &Path, message_type: &str, layouts: &[ColumnLayout], compression: Compression) -> Result<Self> {
        let schema = Arc::new(parse_message_type(message_type).context("the Parquet schema does not parse")?);
        let mut properties = WriterProperties::builder().set_compression(compression);
        for layout in layouts {
            let column = ColumnPath::from(layout.name);
            properties = match layout.encoding {
                ColumnEncoding::Dictionary => properties,
                ColumnEncoding::Plain => properties.set_column_dictionary_enabled(column.clone(), false),
                ColumnEncoding::Delta => properties
                    .set_column_dictionary_enabled(column.clone(), false)
                    .set_column_encoding(column.clone(), Encoding::DELTA_BINARY_PACKED),
            };
            if !layout.statistics {
                properties = properties.set_column_statistics_enabled(column, EnabledStatistics::None);
            }
        }
        let properties = Arc::new(properties.build());
        Ok(ParquetSink { root: root.to_path_buf(), schema, properties, written: Vec::new() })
    }

    /// The files written since the last call (root joined to their paths), in write order.
    pub fn take_written(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.written)
    }

    /// Writes one file under `path` + `.tmp`, fsyncs it and renames it to `path`.
    fn write_file(&self, path: &Path, row_groups: impl Iterator<Item = Vec<ColumnValues>>) -> Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let file = File::create(&temporary).with_context(|| format!("cannot create {}", temporary.display()))?;
        let mut writer = SerializedFileWriter::new(file, self.schema.clone(), self.properties.clone())?;
        for columns in row_groups {
            let mut row_group = writer.next_row_group()?;
            for values in &columns {
                write_column(&mut row_group, values)?;
            }
            row_group.close()?;
        }
        let file = writer.into_inner()?;
        file.sync_all().with_context(|| format!("cannot fsync {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot rename {} into place", temporary.display()))?;
        Ok(())
    }
}

impl<'a> Sink<ParquetFile<'a>> for ParquetSink {
    /// Writes the file atomically; it is durable when this returns.
    fn write(&mut self, file: ParquetFile<'a>) -> Result<()> {
        let path = self.root.join(&file.path);
        let dir = path.parent().context("a Parquet file's path names a file")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.write_file(&path, file.row_groups)
            .with_context(|| format!("cannot write Parquet file {}", path.display()))?;
        // The new name, and any directory created on the way, must survive a crash too.
        for dir in path.ancestors().skip(1).take(file.path.components().count()) {
            sync_dir(dir)?;
        }
        self.written.push(path);
        Ok(())
    }

    /// Nothing to do: every file is in place once written.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Writes the next column of `row_group`, which must be of the values' type.
fn write_column(row_group: &mut SerializedRowGroupWriter<'_, File>, values: &ColumnValues) -> Result<()> {
    let mut column = row_group.next_column()?.context("the schema has fewer columns than the row group")?;
    write_values(&mut column, values, values.len())?;
    column.close()?;
    Ok(())
}

/// Writes the first `count` values of `values`; a repeated run's values are its run's, over
/// and over.
fn write_values(column: &mut SerializedColumnWriter<'_>, values: &ColumnValues, count: usize) -> Result<()> {
    match values {
        ColumnValues::Int32(values) => {
            column.typed::<Int32Type>().write_batch(&values[..count], None, None)?;
        }
        ColumnValues::Int64(values) => {
            column.typed::<Int64Type>().write_batch(&values[..count], None, None)?;
        }
        ColumnValues::ByteArray(values) => {
            column.typed::<ByteArrayType>().write_batch(&values[..count], None, None)?;
        }
        ColumnValues::Repeated { run, .. } => {
            let step = run.len().max(1);
            let mut left = count;
            while left > 0 {
                write_values(column, run, left.min(step))?;
                left -= left.min(step);
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot fsync directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    #[test]
    fn writes_row_groups_atomically_and_hands_back_the_files() {
        let root = tempfile::tempdir().unwrap();
        let schema = "message m { REQUIRED INT32 a; REQUIRED INT64 b; REQUIRED BYTE_ARRAY c (STRING); }";
        let layouts = [
            ColumnLayout { name: "a", encoding: ColumnEncoding::Delta, statistics: true },
            ColumnLayout { name: "b", encoding: ColumnEncoding::Plain, statistics: false },
        ];
        let mut sink = ParquetSink::new(root.path(), schema, &layouts, Compression::UNCOMPRESSED).unwrap();
        let row_group = |n: i32| {
            vec![
                ColumnValues::Int32(vec![n, n + 1]),
                ColumnValues::Int64(vec![10 * n as i64, 10 * n as i64 + 10]),
                // "c" twice, from a run of one.
                ColumnValues::Repeated { run: Box::new(ColumnValues::ByteArray(vec![ByteArray::from("c")])), count: 2 },
            ]
        };
        let path = PathBuf::from("d=1/e/f.parquet");
        sink.write(ParquetFile { path: path.clone(), row_groups: Box::new([0, 2].into_iter().map(row_group)) })
            .unwrap();
        sink.finish().unwrap();
        let written = sink.take_written();
        assert_eq!(written, [root.path().join(&path)]);
        assert!(sink.take_written().is_empty());
        let reader = SerializedFileReader::new(File::open(&written[0]).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let rows: Vec<(i32, i64, String)> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                (row.get_int(0).unwrap(), row.get_long(1).unwrap(), row.get_string(2).unwrap().clone())
            })
            .collect();
        let expected = [(0, 0, "c"), (1, 10, "c"), (2, 20, "c"), (3, 30, "c")].map(|(a, b, c)| (a, b, c.to_string()));
        assert_eq!(rows, expected);
        // No temporary file is left behind.
        let names: Vec<_> =
            std::fs::read_dir(written[0].parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f.parquet"]);
    }
}
