//! The committed raw archive as a source: each partition's archived ranges (`raw_archive`),
//! read file by file and handed over in offset order as [`Format::Packed`] records, the Kafka
//! offsets as positions. The driver judges lateness on them as it did on the topic.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::checkpoint::ArchivedRange;
use crate::clicks::archive::read_archive_file;
#[cfg(doc)]
use crate::clicks::event::Format;
use crate::clicks::event::{PACKED_LEN, write_packed};
use crate::sources::{Batch, Line, LineBatch, Lines, Share, Source};

/// Events per batch, at least (whole ranges are read): about as many as a 1 MiB chunk of CSV.
const BATCH_EVENTS: usize = 1 << 15;

/// What [`ArchiveSource::open`] needs.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// The archive's root directory (file names in `raw_archive` are relative to it).
    pub root: PathBuf,
    /// Every partition's committed ranges, contiguous and in offset order.
    pub ranges: BTreeMap<u32, Vec<ArchivedRange>>,
}

/// One worker's share of the archive's partitions.
pub struct ArchiveSource {
    root: PathBuf,
    partitions: Vec<u32>,
    own: BTreeMap<u32, VecDeque<ArchivedRange>>,
    /// Offsets read and in all, over this worker's partitions (the progress bar's unit).
    done: u64,
    total: u64,
}

impl Source for ArchiveSource {
    type Options = ArchiveOptions;
    type Records = Lines;
    /// A Kafka offset.
    type Position = u64;

    /// Opens `share` of the archive; it is read from its start, so `resume` must be empty.
    fn open(options: &ArchiveOptions, share: Share, resume: &BTreeMap<u32, u64>) -> Result<Self> {
        if let Some((partition, offset)) = resume.first_key_value() {
            bail!("the archive is read from its start; it cannot resume partition {partition} at {offset}");
        }
        let own: BTreeMap<u32, VecDeque<ArchivedRange>> = options
            .ranges
            .iter()
            .filter(|(p, _)| share.owns(**p))
            .map(|(p, ranges)| (*p, ranges.iter().cloned().collect()))
            .collect();
        let total = own.values().flatten().map(|r| r.next - r.first).sum();
        Ok(ArchiveSource {
            root: options.root.clone(),
            partitions: options.ranges.keys().copied().collect(),
            own,
            done: 0,
            total,
        })
    }

    fn partitions(&self) -> Vec<u32> {
        self.partitions.clone()
    }

    fn read_round(&mut self) -> Result<Option<Vec<LineBatch>>> {
        if self.own.values().all(VecDeque::is_empty) {
            return Ok(None);
        }
        let mut batches = Vec::new();
        for (partition, ranges) in &mut self.own {
            let Some(first) = ranges.front().map(|r| r.first) else { continue };
            let mut events = Vec::new();
            while events.len() < BATCH_EVENTS
                && let Some(range) = ranges.pop_front()
            {
                let start = events.len();
                for file in &range.files {
                    events.extend(read_archive_file(&self.root.join(file))?);
                }
                // A range's files are one per event-time hour, each in offset order.
                if range.files.len() > 1 {
                    events[start..].sort_unstable_by_key(|(offset, _)| *offset);
                }
                self.done += range.next - range.first;
            }
            let mut records = Lines {
                text: Vec::with_capacity(events.len() * PACKED_LEN),
                lines: Vec::with_capacity(events.len()),
                positions: Vec::with_capacity(events.len()),
                skipped_lines: 0,
            };
            for (offset, event) in &events {
                let start = records.text.len();
                write_packed(event, &mut records.text);
                records.lines.push(Line { start, end: start + PACKED_LEN, full_len: PACKED_LEN });
                records.positions.push(*offset);
            }
            batches.push(Batch { partition: *partition, sequence: first, records });
        }
        Ok(Some(batches))
    }

    fn progress(&self) -> (u64, u64) {
        (self.done, self.total)
    }
}
