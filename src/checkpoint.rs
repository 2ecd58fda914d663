//! Checkpoints of a streaming job: the consistent cut worker 0 commits with the sinks' rows,
//! what a restarted job reads back, and the [`Checkpointer`] a job implements to archive its
//! input and commit a cut. Shared by the driver (which cuts checkpoints) and the sinks (which
//! store them), so it knows neither a job's events nor a database.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Files of the raw archive written for a partition's offsets `[first, next)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedRange {
    pub first: u64,
    pub next: u64,
    pub files: Vec<String>,
}

/// One partition's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    pub partition: u32,
    /// The partition's incarnation (see [`RestoredPartition::incarnation`]).
    pub incarnation: u32,
    /// Everything before this offset is in the committed tables.
    pub next_offset: u64,
    /// Where a restart re-reads from: the first record of the oldest pane not yet final.
    pub restart_offset: u64,
    /// The partition's largest event time before `restart_offset`.
    pub restart_max_ts: Option<u64>,
    pub archived: Option<ArchivedRange>,
}

/// A consistent cut of the job, committed by worker 0 together with the sinks' rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The job's watermark time at the cut: panes that close by then are final and committed.
    pub job_time: u64,
    pub partitions: Vec<PartitionCheckpoint>,
}

/// Where a restarted job picks up, from its last committed checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Restore {
    pub job_time: u64,
    pub partitions: BTreeMap<u32, RestoredPartition>,
}

/// A partition's state in the last committed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredPartition {
    pub committed_next: u64,
    pub restart_offset: u64,
    pub restart_max_ts: Option<u64>,
    /// How often the partition lost records the job had consumed and was read anew from its
    /// earliest offset (a recreated topic, with `--allow-offset-gap`): its offsets repeat, so
    /// the rows and archive files of its records are keyed by partition, incarnation and offset.
    #[serde(default)]
    pub incarnation: u32,
}

impl Restore {
    /// The incarnation `partition` is read in: 0 unless it lost records (and for new ones).
    pub fn incarnation(&self, partition: u32) -> u32 {
        self.partitions.get(&partition).map_or(0, |p| p.incarnation)
    }

    /// Every partition's incarnation other than 0.
    pub fn incarnations(&self) -> BTreeMap<u32, u32> {
        self.partitions.iter().filter(|(_, p)| p.incarnation > 0).map(|(k, p)| (*k, p.incarnation)).collect()
    }
}

/// What a streaming job does at checkpoints (replay has none).
pub trait Checkpointer<Event> {
    /// On every worker, per partition it reads: keeps the valid events of offsets
    /// `[first, next)` of the partition's `incarnation` durably (the raw archive) and returns
    /// the files written.
    fn archive(
        &mut self,
        partition: u32,
        incarnation: u32,
        first: u64,
        next: u64,
        events: &[(u64, Event)],
    ) -> Result<Vec<String>>;
    /// On worker 0: commits the sinks' buffered rows and the checkpoint in one transaction.
    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<()>;
    /// On worker 0: whether a checkpoint now would not wait for the previous one to commit.
    /// While it would, the job goes on reading and no checkpoint is taken: the next one then
    /// carries more rows (corrections of a row in between count once) instead of stalling.
    /// `held_bytes`: the raw events all workers hold for the archive until the next checkpoint;
    /// with the buffered rows over the memory bound, a checkpoint is taken all the same, and
    /// waiting for the commit in flight is the back-pressure.
    fn ready(&mut self, _held_bytes: u64) -> bool {
        true
    }
}

/// How a source partition's offsets failed what the job expected (see
/// `sources::kafka::judge_offsets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// The earliest offset is above the one the job must read next: records it never read are
    /// gone (retention, a broker that lost data).
    Gap,
    /// The latest offset is below what the job has already consumed: the partition lost records
    /// it had (a recreated topic, a broker that lost data); its offsets will be reused.
    Shrunk,
}

impl GapKind {
    /// The name stored in `source_gaps.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::Gap => "gap",
            GapKind::Shrunk => "shrunk",
        }
    }
}

/// Offsets `[from_offset, to_offset)` of a partition that the job will never read as it
/// expected: recorded in `source_gaps` when the operator lets the job carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetGap {
    pub topic: String,
    pub partition: u32,
    pub kind: GapKind,
    pub from_offset: u64,
    pub to_offset: u64,
}
