//! Sources of raw click lines: the one interface every connector implements (see `CONTEXT.md`).
//!
//! A source hands each worker *batches*: consecutive lines of one partition, in partition
//! order. The dataflow driver does the rest the same way for every connector: parsing, the
//! per-partition watermark, lateness, and feeding the dataflow.

pub mod file;
pub mod kafka;
pub mod postgres_cdc;

use anyhow::Result;

use crate::clicks::event::Format;

/// Consecutive raw lines of one partition.
#[derive(Debug, Default)]
pub struct Batch {
    /// The source partition (a file is partition 0; a Kafka topic has many).
    pub partition: u32,
    /// Orders this partition's batches: a batch follows every batch of the same partition with a
    /// smaller sequence number (file chunk index, Kafka offset of the first message).
    pub sequence: u64,
    /// Lines consumed before `lines` that are not records (a CSV header), for line numbering.
    pub skipped_lines: u64,
    /// The text of the lines, back to back.
    pub text: Vec<u8>,
    pub lines: Vec<Line>,
    /// Each line's position (Kafka offset); empty where lines are numbered by counting (files).
    pub positions: Vec<u64>,
}

/// One line of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Where the line's text lies in [`Batch::text`] (without newline; an over-long line is cut).
    pub start: usize,
    pub end: usize,
    /// The line's full length in the source, before any cut.
    pub full_len: usize,
}

impl Batch {
    /// The (possibly cut) text of `line`.
    pub fn text_of(&self, line: &Line) -> &[u8] {
        &self.text[line.start..line.end]
    }

    /// The position of line `index`: its offset, or its line number given the lines before.
    pub fn position(&self, index: usize, lines_before: u64) -> u64 {
        match self.positions.get(index) {
            Some(offset) => *offset,
            None => lines_before + self.skipped_lines + index as u64 + 1,
        }
    }

    /// The position after the batch's last line, where positions are offsets.
    pub fn next_position(&self) -> Option<u64> {
        self.positions.last().map(|last| last + 1)
    }

    /// How many source lines this batch covers, records or not.
    pub fn line_count(&self) -> u64 {
        self.skipped_lines + self.lines.len() as u64
    }
}

/// A connector that reads click lines. Each worker owns one instance, which reads that worker's
/// share of the partitions.
pub trait Source {
    /// Every partition of the source, over all workers: the job's watermark is their minimum.
    fn partitions(&self) -> Vec<u32>;
    /// The text format of the lines.
    fn format(&self) -> Format;
    /// This worker's batches for one round, at most one per partition; `None` once the source
    /// has ended for good (a file; a stream never ends).
    fn read_round(&mut self) -> Result<Option<Vec<Batch>>>;
    /// (work done, work in all) for a progress bar, in the source's own unit.
    fn progress(&self) -> (u64, u64);
}
