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
use crate::clicks::event::{ClickEvent, PACKED_LEN, write_packed};
use crate::sources::{Batch, Line, LineBatch, Lines, Share, Source};

/// Events per round over a worker's partitions: about as many as replay's 1 MiB chunk of CSV,
/// so that a round's buffers stay small and are reused rather than mapped afresh.
const ROUND_EVENTS: usize = 1 << 15;

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
    /// Each partition's events read from its archive and not yet handed over, in offset order.
    pending: BTreeMap<u32, VecDeque<(u64, ClickEvent)>>,
    /// Events per batch of a partition.
    batch_events: usize,
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
        let batch_events = (ROUND_EVENTS / own.len().max(1)).max(1024);
        Ok(ArchiveSource {
            root: options.root.clone(),
            partitions: options.ranges.keys().copied().collect(),
            pending: own.keys().map(|p| (*p, VecDeque::new())).collect(),
            own,
            batch_events,
            done: 0,
            total,
        })
    }

    fn partitions(&self) -> Vec<u32> {
        self.partitions.clone()
    }

    fn read_round(&mut self) -> Result<Option<Vec<LineBatch>>> {
        if self.own.values().all(VecDeque::is_empty) && self.pending.values().all(VecDeque::is_empty) {
            return Ok(None);
        }
        let mut batches = Vec::new();
        for (partition, ranges) in &mut self.own {
            let pending = self.pending.get_mut(partition).expect("a queue per partition");
            // Whole ranges are read (a range's files are one per event-time hour, each in offset
            // order), then handed over a batch at a time.
            while pending.len() < self.batch_events
                && let Some(range) = ranges.pop_front()
            {
                let mut events = Vec::new();
                for file in &range.files {
                    events.extend(read_archive_file(&self.root.join(file))?);
                }
                if range.files.len() > 1 {
                    events.sort_unstable_by_key(|(offset, _)| *offset);
                }
                pending.extend(events);
                self.done += range.next - range.first;
            }
            let Some(&(first, _)) = pending.front() else { continue };
            let take = pending.len().min(self.batch_events);
            let mut records = Lines {
                text: Vec::with_capacity(take * PACKED_LEN),
                lines: Vec::with_capacity(take),
                positions: Vec::with_capacity(take),
                skipped_lines: 0,
            };
            for (offset, event) in pending.drain(..take) {
                let start = records.text.len();
                write_packed(&event, &mut records.text);
                records.lines.push(Line { start, end: start + PACKED_LEN, full_len: PACKED_LEN });
                records.positions.push(offset);
            }
            batches.push(Batch { partition: *partition, sequence: first, records });
        }
        Ok(Some(batches))
    }

    fn progress(&self) -> (u64, u64) {
        (self.done, self.total)
    }
}
