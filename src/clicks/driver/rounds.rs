//! The round barrier: every worker's report of a round, exchanged through the round dataflow,
//! and worker 0's decisions (checkpoint, idle partitions, drain) that every worker follows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::{Driver, StreamPolicy};
use crate::checkpoint::PartitionCheckpoint;
use crate::clicks::dataflow::ClickDataflow;

/// What a worker tells every other worker about one of its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReport {
    pub partition: u32,
    pub sequence: u64,
    /// Largest event time of a valid event in the batch.
    pub max_ts: Option<u64>,
    /// Source lines the batch covers (records and skipped lines).
    pub lines: u64,
    /// Records (lines that are events or rejected).
    pub records: u64,
}

/// Worker 0's decisions for a round, which every worker follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decisions {
    /// Cut a checkpoint after this round.
    pub checkpoint: bool,
    /// Treat the input as ended after this round: flush every pane, checkpoint, stop.
    pub drain: bool,
    /// Partitions left out of the job watermark because they have been quiet too long.
    pub idle: Vec<u32>,
    /// Worker 0 enters questions in this round: every worker moves the input on by a
    /// sub-tick afterwards, so that the frontier passes their time.
    pub questions: bool,
    /// Partitions the source has grown (worker 0's source saw them): every worker adds them to
    /// the job's partitions in this round, and their readers start reading them.
    pub added: Vec<u32>,
}

/// A worker's report for a round. The counts are this worker's totals through the previous
/// round, so the last round's reports carry the final totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u64,
    pub worker: usize,
    pub batches: Vec<BatchReport>,
    /// This worker's source has ended (a file read to its end).
    pub ended: bool,
    pub late: u64,
    pub rejected: u64,
    /// Worker 0 only.
    pub decisions: Option<Decisions>,
    /// This worker's parts of the checkpoint cut after the previous round.
    pub checkpoint: Vec<PartitionCheckpoint>,
    /// The memory of the raw events this worker holds for the archive until the next
    /// checkpoint (worker 0 weighs it against `--max-buffered-bytes`).
    pub raw_bytes: u64,
    /// For the metrics, every [`crate::clicks::metrics::GAUGES_EVERY`] (else empty): how far
    /// this worker's reader is behind each of its partitions' ends.
    pub lag: Vec<(u32, u64)>,
    /// Panes this worker holds open (not final yet), for the metrics.
    pub open_panes: u32,
}

/// Worker 0's clock-based view, from which it takes the decisions.
pub(super) struct Leader {
    pub(super) policy: StreamPolicy,
    pub(super) last_checkpoint: Instant,
    /// The input time when the last checkpoint was decided.
    pub(super) checkpointed_time: u64,
    pub(super) last_record: BTreeMap<u32, Instant>,
    pub(super) last_any_record: Instant,
    /// The raw events all workers held for the archive at the last round, in bytes.
    pub(super) held_bytes: u64,
}

impl Driver {
    /// Worker 0's decisions for this round, from what it has seen so far.
    pub(super) fn decide(&mut self, checkpointer_ready: bool, questions: bool) -> Option<Decisions> {
        let leader = self.leader.as_mut()?;
        let now = Instant::now();
        let policy = leader.policy;
        // Also as soon as the watermark has moved: a pane it completes reaches the tables
        // without waiting for the interval.
        let due = now - leader.last_checkpoint >= policy.checkpoint_every || self.input_time > leader.checkpointed_time;
        let checkpoint = self.commit_pending.is_none() && checkpointer_ready && due;
        if checkpoint {
            leader.last_checkpoint = now;
            leader.checkpointed_time = self.input_time;
        }
        let idle = leader
            .last_record
            .iter()
            .filter(|(_, seen)| now - **seen >= policy.idle_partition)
            .map(|(p, _)| *p)
            .collect();
        let drain = policy.drain_when_idle.is_some_and(|quiet| now - leader.last_any_record >= quiet);
        Some(Decisions { checkpoint, drain, idle, questions, added: Vec::new() })
    }

    /// Worker 0: notes the raw events all workers hold, from a round's reports.
    pub(super) fn note_held(&mut self, reports: &[RoundReport]) {
        if let Some(leader) = self.leader.as_mut() {
            leader.held_bytes = reports.iter().map(|r| r.raw_bytes).sum();
        }
    }

    /// The raw events all workers held at the last round, in bytes (0 except on worker 0).
    pub(super) fn held_bytes(&self) -> u64 {
        self.leader.as_ref().map_or(0, |leader| leader.held_bytes)
    }

    /// The memory of the raw events this worker holds for the archive.
    pub(super) fn raw_bytes(&self) -> u64 {
        let entry = std::mem::size_of::<(u64, crate::clicks::event::ClickEvent)>() as u64;
        self.own.values().map(|own| own.raw.capacity() as u64 * entry).sum()
    }

    /// The job read nothing for `pause` (it was committing): partitions were not quiet then,
    /// so that time does not count towards making them idle or draining the job.
    pub(super) fn paused(&mut self, pause: Duration) {
        if let Some(leader) = self.leader.as_mut() {
            for seen in leader.last_record.values_mut() {
                *seen += pause;
            }
            leader.last_any_record += pause;
        }
    }

    /// Sends this worker's report for the round and steps all dataflows until every worker's
    /// report and records of the round have arrived; returns the reports.
    pub(super) fn exchange(
        &mut self,
        worker: &mut Worker,
        report: RoundReport,
        dataflow: &mut ClickDataflow<RoundReport>,
    ) -> Result<Vec<RoundReport>> {
        let round = self.round;
        let rounds = &mut dataflow.rounds;
        rounds.reports.send(report);
        self.round += 1;
        rounds.reports.advance_to(self.round);
        rounds.late.advance_to(self.round);
        rounds.rejected.advance_to(self.round);
        // Also let the results dataflow catch up to its input time, so that input never piles
        // up and every result of the previous round has reached the sinks.
        let time = self.input_time + self.sub_tick;
        while rounds.probe.less_than(&self.round) || dataflow.probe.less_than(&time) {
            // Park rather than spin while other workers finish their round.
            worker.step_or_park(Some(Duration::from_millis(1)));
            dataflow.sinks.borrow_mut().take_error()?;
        }
        let mut received = rounds.received.borrow_mut();
        let (mut reports, later): (Vec<RoundReport>, Vec<RoundReport>) =
            received.drain(..).partition(|r| r.round == round);
        *received = later;
        reports.sort_by_key(|r| r.worker);
        Ok(reports)
    }
}
