//! Sources: the one interface every connector implements (see `CONTEXT.md`).
//!
//! A source is a set of *partitions* (a file is one, a Kafka topic has many, a database's change
//! stream is one), each an ordered sequence of records with a *position* (a line number, a Kafka
//! offset, a WAL position). A job's worker opens its [`Share`] of a source with the positions to
//! resume from, and reads it in *rounds*: each round hands over at most one [`Batch`] of
//! consecutive records per partition it reads, in partition order. What a record means (a click
//! line, a changed row) is the job's business, never the source's.

pub mod file;
pub mod kafka;
pub mod postgres_cdc;

use std::collections::BTreeMap;
use std::fmt::Debug;

use anyhow::Result;

/// Which part of a source one reader takes: reader `index` of `count` (a job's timely worker).
/// Partition `p` belongs to reader `p % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub count: usize,
}

impl Share {
    pub fn new(index: usize, count: usize) -> Self {
        Share { index, count: count.max(1) }
    }

    /// Whether this reader reads `partition`.
    pub fn owns(&self, partition: u32) -> bool {
        partition as usize % self.count == self.index
    }
}

/// Consecutive records of one partition.
#[derive(Debug, Default)]
pub struct Batch<R> {
    /// The source partition (a file is partition 0; a Kafka topic has many).
    pub partition: u32,
    /// Orders this partition's batches: a batch follows every batch of the same partition with a
    /// smaller sequence number (file chunk index, Kafka offset of the first message, LSN).
    pub sequence: u64,
    pub records: R,
}

/// A connector. Each reader (worker) owns one instance, which reads its share of the partitions.
pub trait Source: Sized {
    /// What the connector needs to open: a path, a topic, a database.
    type Options;
    /// The records of one batch.
    type Records;
    /// Where a record lies in its partition. Positions only grow along a partition, so resuming
    /// after one reads exactly what follows it.
    type Position: Ord + Copy + Debug;

    /// Opens `share` of the source; each partition in `resume` starts at that position (the
    /// first record to read again), the others at their beginning.
    fn open(options: &Self::Options, share: Share, resume: &BTreeMap<u32, Self::Position>) -> Result<Self>;
    /// Every partition of the source, over all readers (a job's watermark is their minimum).
    fn partitions(&self) -> Vec<u32>;
    /// Partitions the source has gained beyond [`Source::partitions`], as far as this reader has
    /// seen (reader 0 of a Kafka topic watches for them); none for sources that never grow. The
    /// job decides when every reader takes them up ([`Source::add_partitions`]).
    fn found_partitions(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Starts reading `partitions` (new partitions of the source, from their beginning), those
    /// of this reader's share; all readers are told in the same round.
    fn add_partitions(&mut self, _partitions: &[u32]) -> Result<()> {
        Ok(())
    }
    /// This reader's batches for one round, at most one per partition; `None` once the source
    /// has ended for good (a file; a stream never ends).
    fn read_round(&mut self) -> Result<Option<Vec<Batch<Self::Records>>>>;
    /// Takes back a round's batches once the job is done with them, so that later rounds reuse
    /// their buffers instead of allocating (and faulting in) new ones; by default dropped.
    fn recycle(&mut self, _batches: Vec<Batch<Self::Records>>) {}
    /// (work done, work in all) for a progress bar, in the source's own unit.
    fn progress(&self) -> (u64, u64);
    /// How far this reader is behind each of its partitions' ends, in records (a Kafka
    /// partition's end offset minus the offset read next), as far as the source knows without
    /// asking anyone; none for sources that do not know.
    fn lag(&self) -> Vec<(u32, u64)> {
        Vec::new()
    }
}

/// The records of a text source (a file's lines, a topic's message values): raw lines back to
/// back in one buffer.
#[derive(Debug, Default)]
pub struct Lines {
    /// Lines consumed before `lines` that are not records (a CSV header), for line numbering.
    pub skipped_lines: u64,
    /// The text of the lines, back to back.
    pub text: Vec<u8>,
    pub lines: Vec<Line>,
    /// Each line's position (Kafka offset); empty where lines are numbered by counting (files).
    pub positions: Vec<u64>,
}

/// One line of [`Lines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Where the line's text lies in [`Lines::text`] (without newline; an over-long line is cut).
    pub start: usize,
    pub end: usize,
    /// The line's full length in the source, before any cut.
    pub full_len: usize,
}

impl Lines {
    /// Empties the lines, keeping the buffers' memory.
    pub fn clear(&mut self) {
        self.skipped_lines = 0;
        self.text.clear();
        self.lines.clear();
        self.positions.clear();
    }
}

/// A batch of lines.
pub type LineBatch = Batch<Lines>;

impl Batch<Lines> {
    /// The (possibly cut) text of `line`.
    pub fn text_of(&self, line: &Line) -> &[u8] {
        &self.records.text[line.start..line.end]
    }

    /// The position of line `index`: its offset, or its line number given the lines before.
    pub fn position(&self, index: usize, lines_before: u64) -> u64 {
        match self.records.positions.get(index) {
            Some(offset) => *offset,
            None => lines_before + self.records.skipped_lines + index as u64 + 1,
        }
    }

    /// The position after the batch's last line, where positions are offsets.
    pub fn next_position(&self) -> Option<u64> {
        self.records.positions.last().map(|last| last + 1)
    }

    /// How many source lines this batch covers, records or not.
    pub fn line_count(&self) -> u64 {
        self.records.skipped_lines + self.records.lines.len() as u64
    }
}

/// A source of text lines positioned by a number (line number or offset): what the click job reads.
pub trait LineSource: Source<Records = Lines, Position = u64> {}

impl<S: Source<Records = Lines, Position = u64>> LineSource for S {}
