//! Runs a source through the click dataflow on one worker, in rounds.
//!
//! In each round every worker reads a batch per partition it owns and parses it; then all
//! workers exchange a report (per batch: partition, sequence, largest event time, line count)
//! through the round dataflow and wait for every report of the round (a barrier carried by
//! timely's frontier). With the reports in hand, each worker knows for its own batches the
//! largest event time seen earlier in the partition and the lines before them, so it judges
//! lateness and numbers lines exactly as a sequential reader would; and all workers agree on
//! the job watermark, to which they advance the results dataflow together.
//!
//! Worker 0 also takes decisions that everybody follows from its report: when to checkpoint,
//! which partitions are idle, when to drain. A checkpoint decided in round `r` is cut after
//! round `r`: each worker archives its partitions' raw events and reports where each
//! partition would have to be re-read from; at the barrier of round `r + 1`, when every result
//! of round `r` has reached the sinks, worker 0 commits it all in one transaction.
//!
//! Recovery is a bounded re-read: a partition restarts at the first offset of its oldest pane
//! that was not final at the checkpoint (with the watermark it had there). Re-read records
//! below the committed offset are not output again (their late and rejected rows, their final
//! panes are committed); the open panes they rebuild are upserted with the same absolute values.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use rustc_hash::FxHashMap;
use timely::worker::Worker;

use super::dataflow::{ClickDataflow, QuestionInput};
use super::event::{self, ClickEvent};
use super::metrics::RoundMetrics;
use super::time::Clock;
use crate::checkpoint::{Checkpoint, Checkpointer, PartitionCheckpoint, Restore};
use crate::clicks::spec::{DataflowSpec, Field, Op, SlidingWindow};
use crate::sources::{LineBatch, LineSource};

mod cut;
mod feed;
mod rounds;

use feed::{ParsedBatch, parse_batch};
use rounds::Leader;
pub use rounds::{BatchReport, Decisions, RoundReport};

/// Pre-aggregated clicks held back at most, before they go to the dataflow anyway: few enough
/// that the map stays in the CPU's cache (a map of a whole pane's ~150,000 groups misses it on
/// nearly every click and costs more than the extra updates a smaller one lets through).
const MAX_PENDING_CLICKS: usize = 1 << 15;

/// Questions to the running job, on worker 0 (see `clicks::query`): taken at the start of a
/// round (so that the round's report can ask every worker for a sub-tick) and again after the
/// round's clicks, when all taken are entered into the dataflow at the time they will reflect.
pub trait Asker {
    /// Takes the questions asked so far; whether any are taken and not yet entered.
    fn take(&mut self) -> bool;
    /// Enters the taken questions at dataflow time `at`.
    fn enter(&mut self, at: u64, input: &mut QuestionInput);
}

/// When a streaming job checkpoints and how it treats quiet partitions.
#[derive(Debug, Clone, Copy)]
pub struct StreamPolicy {
    pub checkpoint_every: Duration,
    /// A partition without records this long stops holding back the job watermark.
    pub idle_partition: Duration,
    /// With no record anywhere this long, drain and stop (tests, batch back-fills).
    pub drain_when_idle: Option<Duration>,
}

/// Totals of a run, the same on every worker at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub read: u64,
    pub late: u64,
    pub rejected: u64,
}

impl RunTotals {
    pub fn accepted(&self) -> u64 {
        self.read - self.late - self.rejected
    }
}

/// What the job knows about every partition after each round.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionState {
    max_ts: Option<u64>,
    lines: u64,
}

/// What a worker keeps about a partition it reads by offset (a Kafka partition).
#[derive(Debug, Default)]
struct OwnPartition {
    /// The offset after the last record read.
    next: u64,
    /// Valid events read since the last checkpoint, for the archive.
    archive_from: u64,
    raw: Vec<(u64, ClickEvent)>,
    /// For each pane not yet final: its first record's offset and the partition's largest event
    /// time before it (where a restart must re-read from to rebuild the pane).
    open_panes: BTreeMap<u64, (u64, Option<u64>)>,
}

/// Drives one worker's source into the dataflow.
pub struct Driver {
    clock: Clock,
    /// The sliding windows of the spec's rankings: a pane is needed until the last window
    /// containing it is final.
    windows: Vec<SlidingWindow>,
    /// Fields the spec uses; the others are zeroed so that clicks differing only there merge.
    keep: [bool; 4],
    partitions: BTreeMap<u32, PartitionState>,
    own: BTreeMap<u32, OwnPartition>,
    restore: Restore,
    leader: Option<Leader>,
    round: u64,
    /// The job time (a pane-aligned watermark) of the results dataflow's input.
    input_time: u64,
    /// The input's time is `input_time + sub_tick`: after a round with questions the input
    /// moves on by one, below the next pane boundary, so the frontier passes the questions'
    /// time without the watermark moving (every close time is on a pane boundary).
    sub_tick: u64,
    /// Worker 0 of a job that answers questions.
    asker: Option<Box<dyn Asker>>,
    /// Worker 0 entered questions in a round without a sub-tick: the next report asks for one.
    unticked: bool,
    /// Accepted clicks not yet given to the dataflow. Clicks that agree on pane and on the
    /// used fields are one record with a multiplicity, summed over rounds until the input time
    /// moves (nothing downstream can see them earlier anyway), which cuts the updates the
    /// dataflow sorts and exchanges by an order of magnitude.
    accepted: FxHashMap<ClickEvent, isize>,
    /// This worker's parts of a checkpoint, sent with the next report.
    checkpoint_parts: Vec<PartitionCheckpoint>,
    /// Worker 0: the job time of the checkpoint whose parts arrive with the next reports.
    commit_pending: Option<u64>,
    finishing: bool,
    /// Worker 0 of a streaming job: the metrics it records from each round's reports.
    metrics: Option<RoundMetrics>,
    /// A streaming job (with a policy): it reports its source's lag every so often, when it
    /// last did in `lag_sent` (see [`RoundReport::lag`]).
    streaming: bool,
    lag_sent: Instant,
    records_read: u64,
    late: u64,
    rejected: u64,
}

impl Driver {
    /// A driver for the partitions of a source; `policy` for streaming jobs, `restore` after a
    /// restart.
    /// `owns` tells the partitions this worker reads.
    pub fn new(
        worker: &Worker,
        spec: &DataflowSpec,
        partitions: &[u32],
        policy: Option<StreamPolicy>,
        restore: Restore,
        owns: &dyn Fn(u32) -> bool,
    ) -> Self {
        let used = spec.fields_used();
        let keep = [Field::AdId, Field::Country, Field::UserId, Field::Ip].map(|f| used.contains(&f));
        let now = Instant::now();
        let leader = policy.filter(|_| worker.index() == 0).map(|policy| Leader {
            policy,
            last_checkpoint: now,
            checkpointed_time: restore.job_time,
            last_record: partitions.iter().map(|p| (*p, now)).collect(),
            last_any_record: now,
            held_bytes: 0,
        });
        let mut state: BTreeMap<u32, PartitionState> =
            partitions.iter().map(|p| (*p, PartitionState::default())).collect();
        let mut own = BTreeMap::new();
        for (partition, restored) in &restore.partitions {
            // Every worker starts from the same watermarks; each tracks only its partitions.
            state.entry(*partition).or_default().max_ts = restored.restart_max_ts;
            if !owns(*partition) {
                continue;
            }
            own.insert(
                *partition,
                OwnPartition {
                    next: restored.restart_offset,
                    archive_from: restored.committed_next,
                    ..Default::default()
                },
            );
        }
        let windows = spec
            .nodes
            .iter()
            .filter_map(|n| if let Op::TopN { window, .. } = n.op { Some(window) } else { None })
            .collect();
        Driver {
            clock: Clock::new(spec.time),
            windows,
            keep,
            partitions: state,
            own,
            input_time: restore.job_time,
            sub_tick: 0,
            asker: None,
            unticked: false,
            restore,
            leader,
            round: 0,
            accepted: FxHashMap::default(),
            checkpoint_parts: Vec::new(),
            commit_pending: None,
            finishing: false,
            metrics: policy.filter(|_| worker.index() == 0).map(|_| RoundMetrics::default()),
            streaming: policy.is_some(),
            lag_sent: now - crate::clicks::metrics::GAUGES_EVERY,
            records_read: 0,
            late: 0,
            rejected: 0,
        }
    }

    /// Worker 0 of a job that answers questions: takes them from `asker` every round.
    pub fn ask_with(&mut self, asker: Box<dyn Asker>) {
        self.asker = Some(asker);
    }

    /// Runs the source, whose lines are in `format`, to its end (or until worker 0 decides to
    /// drain); `on_round` sees the source after each round (progress).
    pub fn run<S: LineSource>(
        &mut self,
        worker: &mut Worker,
        source: &mut S,
        format: event::Format,
        dataflow: &mut ClickDataflow<RoundReport>,
        mut checkpointer: Option<&mut dyn Checkpointer<ClickEvent>>,
        mut on_round: impl FnMut(&S),
    ) -> Result<RunTotals> {
        // A restarted job resumes at its checkpoint's time (the session only moves on flush).
        dataflow.accepted.advance_to(self.input_time);
        dataflow.accepted.flush();
        loop {
            let batches = if self.finishing { Some(Vec::new()) } else { source.read_round()? };
            let ended = batches.is_none();
            let batches = batches.unwrap_or_default();
            let parsed: Vec<ParsedBatch> = batches.iter().map(|b| parse_batch(format, b)).collect();
            let ready = checkpointer.as_deref_mut().is_none_or(|c| c.ready(self.held_bytes()));
            let asked = self.asker.as_mut().is_some_and(|asker| asker.take()) || self.unticked;
            let mut report = self.report(worker.index(), &batches, &parsed, ended, ready, asked);
            if self.streaming && self.lag_sent.elapsed() >= crate::clicks::metrics::GAUGES_EVERY {
                self.lag_sent = Instant::now();
                report.lag = source.lag();
            }
            if let Some(decisions) = report.decisions.as_mut() {
                decisions.added = self.unknown_partitions(&source.found_partitions());
            }
            let reports = self.exchange(worker, report, dataflow)?;
            if let Some(metrics) = self.metrics.as_mut() {
                metrics.round(&reports);
            }
            self.note_held(&reports);
            if let Some(checkpointer) = checkpointer.as_deref_mut() {
                self.commit_pending_checkpoint(checkpointer, &reports)?;
            }
            if self.finishing {
                return Ok(RunTotals {
                    read: self.records_read,
                    late: reports.iter().map(|r| r.late).sum(),
                    rejected: reports.iter().map(|r| r.rejected).sum(),
                });
            }
            let decisions = reports.iter().find_map(|r| r.decisions.clone()).unwrap_or_default();
            if !decisions.added.is_empty() {
                self.add_partitions(&decisions.added, source)?;
            }
            for (batch, parsed) in batches.iter().zip(parsed) {
                let (max_before, lines_before) = self.before(batch, &reports);
                self.feed(batch, parsed, max_before, lines_before, dataflow);
            }
            source.recycle(batches);
            self.absorb(&reports);
            // Questions that came during the round go in too: they ride on the round's sub-tick
            // when it has one, else the next round's report asks for one.
            if let (Some(asker), Some(input)) = (self.asker.as_mut(), dataflow.questions.as_mut()) {
                if asker.take() {
                    asker.enter(self.input_time + self.sub_tick, input);
                    self.unticked = !decisions.questions;
                } else if decisions.questions {
                    self.unticked = false;
                }
            }
            let job_time = self.advance(&decisions, &reports, dataflow);
            if let Some(metrics) = self.metrics.as_mut() {
                metrics.watermark(job_time);
            }
            if let Some(checkpointer) = checkpointer.as_deref_mut()
                && (decisions.checkpoint || self.finishing)
            {
                self.checkpoint_parts = self.cut(checkpointer, job_time)?;
                if worker.index() == 0 {
                    self.commit_pending = Some(job_time);
                }
            }
            on_round(source);
        }
    }

    /// This worker's report for the round: its batches (parsed already), and what it carries
    /// from the previous round (counts, worker 0's decisions, checkpoint parts).
    fn report(
        &mut self,
        worker: usize,
        batches: &[LineBatch],
        parsed: &[ParsedBatch],
        ended: bool,
        checkpointer_ready: bool,
        asked: bool,
    ) -> RoundReport {
        RoundReport {
            round: self.round,
            worker,
            batches: batches
                .iter()
                .zip(parsed)
                .map(|(b, p)| BatchReport {
                    partition: b.partition,
                    sequence: b.sequence,
                    max_ts: p.max_ts,
                    lines: b.line_count(),
                    records: b.records.lines.len() as u64,
                })
                .collect(),
            ended: ended || self.finishing,
            late: self.late,
            rejected: self.rejected,
            decisions: self.decide(checkpointer_ready, asked),
            checkpoint: std::mem::take(&mut self.checkpoint_parts),
            raw_bytes: self.raw_bytes(),
            lag: Vec::new(),
            open_panes: self.own.values().map(|own| own.open_panes.len()).max().unwrap_or(0) as u32,
        }
    }

    /// Worker 0: the partitions the source found that the job does not read yet.
    fn unknown_partitions(&self, partitions: &[u32]) -> Vec<u32> {
        partitions.iter().copied().filter(|p| !self.partitions.contains_key(p)).collect()
    }

    /// Every worker, in the round worker 0 found them: new partitions join the job's watermark
    /// (holding it back, like any partition, until their first record or the idle timeout) and
    /// their readers start reading them from their beginning.
    fn add_partitions<S: LineSource>(&mut self, added: &[u32], source: &mut S) -> Result<()> {
        let now = Instant::now();
        for partition in added {
            self.partitions.entry(*partition).or_default();
            if let Some(leader) = self.leader.as_mut() {
                leader.last_record.entry(*partition).or_insert(now);
            }
        }
        if self.leader.is_some() {
            tracing::info!(partitions = ?added, "the source has new partitions");
        }
        source.add_partitions(added)
    }

    /// Worker 0, at the barrier after a cut: commits the checkpoint whose parts came with the
    /// reports, together with the sinks' rows.
    fn commit_pending_checkpoint(
        &mut self,
        checkpointer: &mut dyn Checkpointer<ClickEvent>,
        reports: &[RoundReport],
    ) -> Result<()> {
        let Some(job_time) = self.commit_pending.take() else { return Ok(()) };
        let mut partitions: Vec<PartitionCheckpoint> = reports.iter().flat_map(|r| r.checkpoint.clone()).collect();
        partitions.sort_by_key(|p| p.partition);
        let started = Instant::now();
        checkpointer.commit(&Checkpoint { job_time, partitions })?;
        self.paused(started.elapsed());
        Ok(())
    }

    /// After a round is fed: moves the results dataflow's input to the new job time (to the end
    /// when finishing) and returns the job time.
    fn advance(
        &mut self,
        decisions: &Decisions,
        reports: &[RoundReport],
        dataflow: &mut ClickDataflow<RoundReport>,
    ) -> u64 {
        let job_time = self.job_time(&decisions.idle).max(self.input_time);
        let all_ended = reports.iter().all(|r| r.ended && r.batches.is_empty());
        self.finishing = all_ended || decisions.drain;
        // At the end every pane is flushed: the input moves past every close time.
        let time = if self.finishing { u64::MAX } else { job_time };
        let pane_ms = self.clock.spec.pane_ms;
        if time > self.input_time {
            self.sub_tick = 0;
            self.input_time = time;
        } else if decisions.questions && self.sub_tick + 1 < pane_ms {
            self.sub_tick += 1;
        }
        let input_time = self.input_time + self.sub_tick;
        if input_time > *dataflow.accepted.time() || self.accepted.len() > MAX_PENDING_CLICKS {
            self.flush_accepted(dataflow);
            dataflow.accepted.advance_to(input_time);
        }
        dataflow.accepted.flush();
        if let Some(questions) = dataflow.questions.as_mut() {
            questions.input.advance_to(input_time);
        }
        job_time
    }
}
