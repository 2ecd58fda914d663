//! The raw-event archive of the streaming job: the valid events of each committed offset range,
//! as Parquet files (written by [`ParquetSink`]) that DuckDB, pandas (pyarrow) or Spark read
//! directly.
//!
//! Layout: `ARCHIVE/job=J/topic=T/hour=YYYY-MM-DDTHH/partition=P/<first>-<next>.parquet`, one
//! file per event-time hour (UTC) of the range `[first, next)` of Kafka partition `P`, under the
//! job's own directory ([`job_dir`], the `root` of the functions below), so that jobs may share
//! `--archive`. A partition read anew after it lost records (its incarnation `I` > 0, see
//! `RestoredPartition::incarnation`) repeats offsets: its files are `<first>-<next>-<I>.parquet`
//! and their `incarnation` column says `I`. The `key=value` directory
//! names are Hive partitioning, so `read_parquet('root/**/*.parquet', hive_partitioning=true)`
//! prunes by hour; offsets are zero-padded to 20 digits so that names sort by offset.
//!
//! Each file is atomic, and its contents a function of the input alone, so a range redone after
//! a crash rewrites the same bytes under the same name. Files of ranges that were never
//! committed are found with [`list_archive`] and removed by the job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use parquet::data_type::ByteArray;

use super::event::{ClickEvent, Country, parse_ipv4, write_ipv4};
use crate::sinks::Sink;
use crate::sinks::parquet::{
    ColumnEncoding, ColumnLayout, ColumnValues, Compression, ParquetFile, ParquetSink, ZstdLevel,
};

/// The columns of an archive file. `ad_id` and `user_id` are unsigned 64-bit integers (stored
/// as INT64 bits, read back as uint64); `click_ts` is a UTC timestamp in milliseconds.
const SCHEMA: &str = "
message click {
    REQUIRED BYTE_ARRAY topic (STRING);
    REQUIRED INT32 partition;
    REQUIRED INT64 offset;
    REQUIRED INT64 ad_id (INTEGER(64, false));
    REQUIRED INT64 click_ts (TIMESTAMP(MILLIS, true));
    REQUIRED INT64 user_id (INTEGER(64, false));
    REQUIRED BYTE_ARRAY ip (STRING);
    REQUIRED BYTE_ARRAY country (STRING);
    REQUIRED INT32 incarnation;
}";

/// How each column is stored, chosen with `cargo bench --bench archive` (README "The raw-event
/// archive"). Offsets grow by one and times nearly so: their differences take a few bits each.
/// Users and addresses are (nearly) all distinct: a dictionary of them would only cost time.
/// Topic, partition, ad, country and incarnation repeat, and their dictionaries pay (the
/// defaults). Statistics only where readers filter: offsets, times, ads, partitions.
const LAYOUTS: [ColumnLayout; 6] = [
    ColumnLayout { name: "offset", encoding: ColumnEncoding::Delta, statistics: true },
    ColumnLayout { name: "click_ts", encoding: ColumnEncoding::Delta, statistics: true },
    ColumnLayout { name: "user_id", encoding: ColumnEncoding::Plain, statistics: false },
    ColumnLayout { name: "ip", encoding: ColumnEncoding::Plain, statistics: false },
    ColumnLayout { name: "topic", encoding: ColumnEncoding::Dictionary, statistics: false },
    ColumnLayout { name: "country", encoding: ColumnEncoding::Dictionary, statistics: false },
];

const MS_PER_HOUR: u64 = 3_600_000;

/// The archive's pages are compressed with zstd at level 1 (parquet's default level): about
/// 153 MB per 10M events against 253 MB with snappy and 442 MB uncompressed, and the streaming
/// job no slower for it (measured with `cargo bench --bench stream`, README "The raw-event
/// archive"). Only the `parquet` crate's `zstd` feature is built.
fn compression() -> Compression {
    Compression::ZSTD(ZstdLevel::default())
}

/// The length of the runs a column that is the same in every row is written from.
const REPEATED_RUN: usize = 4096;

/// Rows per row group: bounds the memory of one column chunk for very large ranges.
const ROW_GROUP_ROWS: usize = 1 << 20;

/// A partition's offset range `[first, next)` in one of its incarnations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArchiveRange {
    pub partition: u32,
    pub incarnation: u32,
    pub first: u64,
    pub next: u64,
}

impl ArchiveRange {
    /// The name of the range's files.
    fn file_name(&self) -> String {
        let (first, next) = (self.first, self.next);
        match self.incarnation {
            0 => format!("{first:020}-{next:020}.parquet"),
            incarnation => format!("{first:020}-{next:020}-{incarnation}.parquet"),
        }
    }
}

/// The directory of everything `job` archived under the archive root `archive`.
pub fn job_root(archive: &Path, job: &str) -> PathBuf {
    archive.join(format!("job={job}"))
}

/// The directory of `job`'s archive of `topic` under the archive root `archive`.
pub fn job_dir(archive: &Path, job: &str, topic: &str) -> PathBuf {
    job_root(archive, job).join(format!("topic={topic}"))
}

/// The `hour=…` directory of the hour starting at `hour * MS_PER_HOUR`.
fn hour_dir(hour: u64) -> String {
    let start = chrono::DateTime::from_timestamp_millis((hour * MS_PER_HOUR) as i64)
        .expect("click_ts is at most year 9999, which chrono represents");
    format!("hour={}", start.format("%Y-%m-%dT%H"))
}

/// Writes the valid events of one partition's offset `range` into `root`, one file per
/// event-time hour: `root/hour=YYYY-MM-DDTHH/partition=P/<first>-<next>.parquet`, each
/// written to a temporary name, fsynced and renamed (atomic). Returns the paths written, in
/// hour order. Deterministic: the same input gives the same files. An empty range writes none.
pub fn write_archive(
    root: &Path,
    topic: &str,
    range: ArchiveRange,
    events: &[(u64, ClickEvent)],
) -> Result<Vec<PathBuf>> {
    let mut hours: BTreeMap<u64, Vec<&(u64, ClickEvent)>> = BTreeMap::new();
    for event in events {
        hours.entry(event.1.click_ts / MS_PER_HOUR).or_default().push(event);
    }
    let mut sink = ParquetSink::new(root, SCHEMA, &LAYOUTS, compression())?;
    for (hour, events) in &hours {
        let path = Path::new(&hour_dir(*hour)).join(format!("partition={}", range.partition)).join(range.file_name());
        let row_groups = events.chunks(ROW_GROUP_ROWS).map(|chunk| columns(topic, range, chunk));
        sink.write(ParquetFile { path, row_groups: Box::new(row_groups) })?;
    }
    sink.finish()?;
    Ok(sink.take_written())
}

/// The columns of one row group, in [`SCHEMA`] order.
fn columns(topic: &str, range: ArchiveRange, chunk: &[&(u64, ClickEvent)]) -> Vec<ColumnValues> {
    let long = |f: &dyn Fn(&(u64, ClickEvent)) -> i64| ColumnValues::Int64(chunk.iter().map(|e| f(e)).collect());
    // The same in every row: a short run written over and over.
    let repeated = |run: ColumnValues| ColumnValues::Repeated { run: Box::new(run), count: chunk.len() };
    let run = chunk.len().min(REPEATED_RUN);
    // Every address is a slice of one buffer, and every country a static string: no
    // allocation per event.
    let mut ip_text = Vec::with_capacity(chunk.len() * 15);
    let mut ip_ends = Vec::with_capacity(chunk.len());
    for (_, event) in chunk {
        write_ipv4(event.ip, &mut ip_text);
        ip_ends.push(ip_text.len());
    }
    let ip_text = Bytes::from(ip_text);
    let mut start = 0;
    let ips: Vec<ByteArray> =
        ip_ends.iter().map(|&end| ByteArray::from(ip_text.slice(std::mem::replace(&mut start, end)..end))).collect();
    let countries: Vec<ByteArray> =
        chunk.iter().map(|(_, e)| ByteArray::from(Bytes::from_static(e.country.as_str().as_bytes()))).collect();
    vec![
        repeated(ColumnValues::ByteArray(vec![ByteArray::from(topic); run])),
        repeated(ColumnValues::Int32(vec![range.partition as i32; run])),
        long(&|(offset, _)| *offset as i64),
        // Unsigned values keep their bits; the logical type tells readers they are unsigned.
        long(&|(_, e)| e.ad_id as i64),
        long(&|(_, e)| e.click_ts as i64),
        long(&|(_, e)| e.user_id as i64),
        ColumnValues::ByteArray(ips),
        ColumnValues::ByteArray(countries),
        repeated(ColumnValues::Int32(vec![range.incarnation as i32; run])),
    ]
}

/// The events of an archive file, `(offset, event)` in offset order (as written). Only the
/// columns an event needs are decoded (not `topic` and `partition`, which the path names).
pub fn read_archive_file(path: &Path) -> Result<Vec<(u64, ClickEvent)>> {
    use parquet::column::reader::ColumnReader;
    use parquet::data_type::{ByteArrayType, DataType, Int64Type};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    fn column<T: DataType>(reader: ColumnReader, rows: usize, path: &Path) -> Result<Vec<T::T>> {
        let mut typed = parquet::column::reader::get_typed_column_reader::<T>(reader);
        let mut values = Vec::with_capacity(rows);
        while values.len() < rows {
            let (records, ..) = typed
                .read_records(rows - values.len(), None, None, &mut values)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if records == 0 {
                anyhow::bail!("{}: a column ends before its row group's {rows} rows", path.display());
            }
        }
        Ok(values)
    }
    let context = || format!("cannot read archive file {}", path.display());
    let file = std::fs::File::open(path).with_context(context)?;
    let reader = SerializedFileReader::new(file).with_context(context)?;
    let mut events = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
    for index in 0..reader.num_row_groups() {
        let group = reader.get_row_group(index).with_context(context)?;
        let rows = group.metadata().num_rows().max(0) as usize;
        let long = |i: usize| column::<Int64Type>(group.get_column_reader(i).with_context(context)?, rows, path);
        let text = |i: usize| column::<ByteArrayType>(group.get_column_reader(i).with_context(context)?, rows, path);
        // Columns in SCHEMA order: topic, partition, offset, ad_id, click_ts, user_id, ip, country.
        let (offsets, ads, times, users) = (long(2)?, long(3)?, long(4)?, long(5)?);
        let (ips, countries) = (text(6)?, text(7)?);
        for row in 0..rows {
            let bad = |what: &str| anyhow::anyhow!("{}: row {row} has an invalid {what}", path.display());
            events.push((
                offsets[row] as u64,
                ClickEvent {
                    ad_id: ads[row] as u64,
                    click_ts: times[row] as u64,
                    user_id: users[row] as u64,
                    ip: parse_ipv4(ips[row].data()).ok_or_else(|| bad("ip"))?,
                    country: Country::parse(countries[row].data()).ok_or_else(|| bad("country"))?,
                },
            ));
        }
    }
    Ok(events)
}

/// The range an archive path names, if it is a finished archive file.
fn parse_path(path: &Path) -> Option<ArchiveRange> {
    let name = path.file_name()?.to_str()?.strip_suffix(".parquet")?;
    let mut parts = name.split('-');
    let (first, next, incarnation) = (parts.next()?, parts.next()?, parts.next());
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(next) || parts.next().is_some() {
        return None;
    }
    let incarnation = match incarnation {
        None => 0,
        Some(text) => text.parse::<u32>().ok().filter(|i| *i > 0 && text == i.to_string())?,
    };
    let partition = path.parent()?.file_name()?.to_str()?.strip_prefix("partition=")?.parse().ok()?;
    Some(ArchiveRange { partition, incarnation, first: first.parse().ok()?, next: next.parse().ok()? })
}

/// Every finished archive file under `root` with its range, sorted by path; for
/// garbage-collecting the files of ranges that were never committed. Temporary files and
/// anything else that does not follow the layout are left out. A missing `root` is empty.
pub fn list_archive(root: &Path) -> Result<Vec<(PathBuf, ArchiveRange)>> {
    let mut found = Vec::new();
    for hour in sub_directories(root, "hour=")? {
        for partition in sub_directories(&hour, "partition=")? {
            for entry in
                std::fs::read_dir(&partition).with_context(|| format!("cannot list {}", partition.display()))?
            {
                let path = entry.with_context(|| format!("cannot list {}", partition.display()))?.path();
                if let Some(range) = parse_path(&path) {
                    found.push((path, range));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The directories in `dir` whose names start with `prefix`; none when `dir` does not exist.
fn sub_directories(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let is_match = entry.file_name().to_str().is_some_and(|name| name.starts_with(prefix));
        if is_match && entry.file_type()?.is_dir() {
            found.push(entry.path());
        }
    }
    Ok(found)
}
#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;

    fn event(ad_id: u64, click_ts: u64) -> ClickEvent {
        ClickEvent {
            ad_id,
            click_ts,
            user_id: u64::MAX - ad_id,
            ip: u32::from(std::net::Ipv4Addr::new(203, 0, 113, (ad_id % 250) as u8 + 1)),
            country: Country::parse(if ad_id.is_multiple_of(2) { b"US" } else { b"DE" }).unwrap(),
        }
    }

    /// 2026-01-01T00:00:00Z.
    const MIDNIGHT: u64 = 1_767_225_600_000;

    /// Every row of a file as `(topic, partition, offset, event)`, through the crate's reader.
    fn read_back(path: &Path) -> Vec<(String, i32, i64, ClickEvent)> {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let columns: Vec<String> =
            reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
        let expected = ["topic", "partition", "offset", "ad_id", "click_ts", "user_id", "ip", "country", "incarnation"];
        assert_eq!(columns, expected);
        reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                let ip: std::net::Ipv4Addr = row.get_string(6).unwrap().parse().unwrap();
                let event = ClickEvent {
                    ad_id: row.get_ulong(3).unwrap(),
                    click_ts: row.get_timestamp_millis(4).unwrap() as u64,
                    user_id: row.get_ulong(5).unwrap(),
                    ip: ip.into(),
                    country: Country::parse(row.get_string(7).unwrap().as_bytes()).unwrap(),
                };
                (row.get_string(0).unwrap().clone(), row.get_int(1).unwrap(), row.get_long(2).unwrap(), event)
            })
            .collect()
    }

    #[test]
    fn writes_one_file_per_hour_that_reads_back_column_for_column() {
        let root = tempfile::tempdir().unwrap();
        let events = vec![
            (100, event(1, MIDNIGHT + 5)),
            (101, event(2, MIDNIGHT + MS_PER_HOUR + 1)),
            (103, event(u64::MAX, MIDNIGHT + MS_PER_HOUR - 1)),
        ];
        let range = ArchiveRange { partition: 3, incarnation: 0, first: 100, next: 104 };
        let written = write_archive(root.path(), "clicks", range, &events).unwrap();
        let relative: Vec<_> = written.iter().map(|p| p.strip_prefix(root.path()).unwrap().to_str().unwrap()).collect();
        assert_eq!(
            relative,
            [
                "hour=2026-01-01T00/partition=3/00000000000000000100-00000000000000000104.parquet",
                "hour=2026-01-01T01/partition=3/00000000000000000100-00000000000000000104.parquet",
            ]
        );
        let first_hour: Vec<_> =
            [&events[0], &events[2]].iter().map(|(o, e)| ("clicks".to_string(), 3, *o as i64, *e)).collect();
        assert_eq!(read_back(&written[0]), first_hour);
        assert_eq!(read_back(&written[1]), [("clicks".to_string(), 3, 101, events[1].1)]);
        // The reader reconcile uses gives the same events with their offsets.
        assert_eq!(read_archive_file(&written[0]).unwrap(), [events[0], events[2]]);
        // No temporary file is left behind.
        let names: Vec<_> =
            std::fs::read_dir(written[0].parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_later_incarnation_names_its_files_and_rows_apart() {
        let root = tempfile::tempdir().unwrap();
        let events = vec![(100, event(1, MIDNIGHT + 5))];
        let first = ArchiveRange { partition: 3, incarnation: 0, first: 100, next: 101 };
        let again = ArchiveRange { incarnation: 2, ..first };
        let written = [first, again].map(|range| write_archive(root.path(), "clicks", range, &events).unwrap());
        let name = |files: &[PathBuf]| files[0].file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name(&written[0]), "00000000000000000100-00000000000000000101.parquet");
        assert_eq!(name(&written[1]), "00000000000000000100-00000000000000000101-2.parquet");
        let incarnation = |path: &Path| {
            let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
            reader.get_row_iter(None).unwrap().map(|row| row.unwrap().get_int(8).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!((incarnation(&written[0][0]), incarnation(&written[1][0])), (vec![0], vec![2]));
        let mut found: Vec<_> = list_archive(root.path()).unwrap().into_iter().map(|(_, range)| range).collect();
        found.sort();
        assert_eq!(found, [first, again]);
        for bad in ["-0", "-02", "-x", "-1-1"] {
            let path = format!("partition=3/00000000000000000100-00000000000000000101{bad}.parquet");
            assert_eq!(parse_path(Path::new(&path)), None, "{path}");
        }
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_an_empty_range_no_file() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let events: Vec<_> = (0..1000u64).map(|i| (i, event(i % 17, MIDNIGHT + i * 7919))).collect();
        let range = ArchiveRange { partition: 0, incarnation: 0, first: 0, next: 1000 };
        let written_a = write_archive(a.path(), "t", range, &events).unwrap();
        let written_b = write_archive(b.path(), "t", range, &events).unwrap();
        assert_eq!(written_a.len(), written_b.len());
        for (x, y) in written_a.iter().zip(&written_b) {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        }
        // Rewriting a range (a redo after a crash) replaces the file with the same bytes.
        let before = std::fs::read(&written_a[0]).unwrap();
        write_archive(a.path(), "t", range, &events).unwrap();
        assert_eq!(std::fs::read(&written_a[0]).unwrap(), before);
        let empty = ArchiveRange { first: 1000, ..range };
        assert!(write_archive(a.path(), "t", empty, &[]).unwrap().is_empty());
    }

    #[test]
    fn list_archive_finds_finished_files_with_their_ranges() {
        let root = tempfile::tempdir().unwrap();
        assert!(list_archive(&root.path().join("missing")).unwrap().is_empty());
        let seven = ArchiveRange { partition: 7, incarnation: 0, first: 0, next: 2 };
        write_archive(root.path(), "t", seven, &[(0, event(1, MIDNIGHT)), (1, event(1, MIDNIGHT + MS_PER_HOUR))])
            .unwrap();
        let twelve = ArchiveRange { partition: 12, incarnation: 0, first: 5, next: 9_000_000_000_000 };
        write_archive(root.path(), "t", twelve, &[(6, event(1, MIDNIGHT))]).unwrap();
        // Leftovers of a crash and foreign files are not archive files.
        let dir = root.path().join("hour=2026-01-01T00/partition=7");
        std::fs::write(dir.join("00000000000000000002-00000000000000000004.parquet.tmp"), b"x").unwrap();
        std::fs::write(dir.join("notes.parquet"), b"x").unwrap();
        let found: Vec<_> = list_archive(root.path()).unwrap().into_iter().map(|(_, range)| range).collect();
        assert_eq!(found, [twelve, seven, seven]);
        assert_eq!(
            parse_path(Path::new("hour=x/partition=1/00000000000000000001-00000000000000000002.parquet")),
            Some(ArchiveRange { partition: 1, incarnation: 0, first: 1, next: 2 })
        );
        assert_eq!(parse_path(Path::new("partition=-1/00000000000000000001-00000000000000000002.parquet")), None);
        assert_eq!(parse_path(Path::new("partition=1/1-2.parquet")), None);
    }

    #[test]
    fn hour_directories_are_utc() {
        assert_eq!(hour_dir(MIDNIGHT / MS_PER_HOUR), "hour=2026-01-01T00");
        assert_eq!(hour_dir(crate::clicks::event::MAX_CLICK_TS / MS_PER_HOUR), "hour=9999-12-31T23");
        assert_eq!(hour_dir(0), "hour=1970-01-01T00");
    }
}
