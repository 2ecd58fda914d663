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
use serde::{Deserialize, Serialize};
use timely::worker::Worker;

use super::dataflow::{ClickDataflow, LateClick, RejectedLine};
use super::event::{self, ClickEvent, Country};
use super::time::Clock;
use crate::checkpoint::{ArchivedRange, Checkpoint, Checkpointer, PartitionCheckpoint, Restore};
use crate::clicks::spec::{DataflowSpec, Field, Op, SlidingWindow};
use crate::sources::{LineBatch, LineSource};

/// Pre-aggregated clicks held back at most, before they go to the dataflow anyway: few enough
/// that the map stays in the CPU's cache (a map of a whole pane's ~150,000 groups misses it on
/// nearly every click and costs more than the extra updates a smaller one lets through).
const MAX_PENDING_CLICKS: usize = 1 << 15;

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

/// Worker 0's clock-based view, from which it takes the decisions.
struct Leader {
    policy: StreamPolicy,
    last_checkpoint: Instant,
    /// The input time when the last checkpoint was decided.
    checkpointed_time: u64,
    last_record: BTreeMap<u32, Instant>,
    last_any_record: Instant,
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
    /// The results dataflow's input time.
    input_time: u64,
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
            restore,
            leader,
            round: 0,
            accepted: FxHashMap::default(),
            checkpoint_parts: Vec::new(),
            commit_pending: None,
            finishing: false,
            records_read: 0,
            late: 0,
            rejected: 0,
        }
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
            let report = RoundReport {
                round: self.round,
                worker: worker.index(),
                batches: batches
                    .iter()
                    .zip(&parsed)
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
                decisions: self.decide(checkpointer.as_deref_mut().is_none_or(|c| c.ready())),
                checkpoint: std::mem::take(&mut self.checkpoint_parts),
            };
            let reports = self.exchange(worker, report, dataflow)?;
            if let Some(job_time) = self.commit_pending.take() {
                let mut partitions: Vec<PartitionCheckpoint> =
                    reports.iter().flat_map(|r| r.checkpoint.clone()).collect();
                partitions.sort_by_key(|p| p.partition);
                if let Some(checkpointer) = checkpointer.as_deref_mut() {
                    let started = Instant::now();
                    checkpointer.commit(&Checkpoint { job_time, partitions })?;
                    self.paused(started.elapsed());
                }
            }
            if self.finishing {
                return Ok(RunTotals {
                    read: self.records_read,
                    late: reports.iter().map(|r| r.late).sum(),
                    rejected: reports.iter().map(|r| r.rejected).sum(),
                });
            }
            let decisions = reports.iter().find_map(|r| r.decisions.clone()).unwrap_or_default();
            for (batch, parsed) in batches.iter().zip(parsed) {
                let (max_before, lines_before) = self.before(batch, &reports);
                self.feed(batch, parsed, max_before, lines_before, dataflow);
            }
            self.absorb(&reports);
            let job_time = self.job_time(&decisions.idle).max(self.input_time);
            let all_ended = reports.iter().all(|r| r.ended && r.batches.is_empty());
            self.finishing = all_ended || decisions.drain;
            // At the end every pane is flushed: the input moves past every close time.
            let time = if self.finishing { u64::MAX } else { job_time };
            if time > self.input_time || self.accepted.len() > MAX_PENDING_CLICKS {
                self.flush_accepted(dataflow);
                dataflow.accepted.advance_to(time);
                self.input_time = time;
            }
            dataflow.accepted.flush();
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

    /// Worker 0's decisions for this round, from what it has seen so far.
    fn decide(&mut self, checkpointer_ready: bool) -> Option<Decisions> {
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
        Some(Decisions { checkpoint, drain, idle })
    }

    /// The job read nothing for `pause` (it was committing): partitions were not quiet then,
    /// so that time does not count towards making them idle or draining the job.
    fn paused(&mut self, pause: Duration) {
        if let Some(leader) = self.leader.as_mut() {
            for seen in leader.last_record.values_mut() {
                *seen += pause;
            }
            leader.last_any_record += pause;
        }
    }

    /// Sends this worker's report for the round and steps all dataflows until every worker's
    /// report and records of the round have arrived; returns the reports.
    fn exchange(
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
        while rounds.probe.less_than(&self.round) || dataflow.probe.less_than(&self.input_time) {
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

    /// For `batch`: the largest event time in its partition before it, and the lines before it.
    fn before(&self, batch: &LineBatch, reports: &[RoundReport]) -> (Option<u64>, u64) {
        let state = self.partitions.get(&batch.partition).copied().unwrap_or_default();
        let earlier = reports
            .iter()
            .flat_map(|r| &r.batches)
            .filter(|b| b.partition == batch.partition && b.sequence < batch.sequence);
        earlier.fold((state.max_ts, state.lines), |(max, lines), b| (max.max(b.max_ts), lines + b.lines))
    }

    /// Folds a round's reports into the partitions' state.
    fn absorb(&mut self, reports: &[RoundReport]) {
        let now = Instant::now();
        for batch in reports.iter().flat_map(|r| &r.batches) {
            let state = self.partitions.entry(batch.partition).or_default();
            state.max_ts = state.max_ts.max(batch.max_ts);
            state.lines += batch.lines;
            self.records_read += batch.records;
            if let Some(leader) = self.leader.as_mut().filter(|_| batch.records > 0) {
                leader.last_record.insert(batch.partition, now);
                leader.last_any_record = now;
            }
        }
    }

    /// The job's watermark as a dataflow time: the least over the partitions that are not idle.
    fn job_time(&self, idle: &[u32]) -> u64 {
        let tick = |p: &PartitionState| self.clock.tick(p.max_ts);
        let active = self.partitions.iter().filter(|(p, _)| !idle.contains(p)).map(|(_, s)| tick(s)).min();
        active.or_else(|| self.partitions.values().map(tick).min()).unwrap_or(0)
    }

    /// Judges each parsed line of `batch` and feeds the dataflow at the current input time.
    fn feed(
        &mut self,
        batch: &LineBatch,
        parsed: ParsedBatch,
        mut max_seen: Option<u64>,
        lines_before: u64,
        dataflow: &mut ClickDataflow<RoundReport>,
    ) {
        let rounds = &mut dataflow.rounds;
        let (clock, keep, input_time) = (self.clock, self.keep, self.input_time);
        let windows = self.windows.clone();
        let retire_time = |pane: u64| retire_time(clock, &windows, pane);
        let partition = batch.partition;
        // Records below the committed offset were output before a restart: rebuild state only.
        let committed = self.restore.partitions.get(&partition).map_or(0, |r| r.committed_next);
        let position = |index: u32| batch.position(index as usize, lines_before);
        let mut own = batch.next_position().map(|next| {
            let own = self.own.entry(partition).or_default();
            own.next = next;
            own
        });
        for (index, reason) in parsed.rejected {
            if position(index) >= committed {
                self.rejected += 1;
                let raw = String::from_utf8_lossy(batch.text_of(&batch.records.lines[index as usize])).into_owned();
                rounds.rejected.send(RejectedLine {
                    partition,
                    position: position(index),
                    reason: reason.to_string(),
                    raw,
                });
            }
        }
        // Rejected lines do not move the watermark, so valid events alone, in order, decide.
        for (index, event) in parsed.events {
            let position = position(index);
            let replayed = position < committed;
            let pane = clock.pane_start(event.click_ts);
            let late_in_partition = clock.is_late(event.click_ts, max_seen);
            let max_before = max_seen;
            if !late_in_partition {
                max_seen = max_seen.max(Some(event.click_ts));
            }
            if let Some(own) = own.as_mut().filter(|_| !replayed) {
                own.raw.push((position, event));
            }
            if replayed {
                // Already output before the restart, except as state: rebuild the panes that
                // some result still needs (a re-derived final count is upserted unchanged).
                if late_in_partition || retire_time(pane) <= input_time {
                    continue;
                }
            } else if late_in_partition || clock.pane_close(pane) <= input_time {
                // A pane can also be final for the job while open in its partition, when the
                // partition was idle and the others moved the job watermark past its close.
                self.late += 1;
                rounds.late.send(LateClick { partition, position, event });
                continue;
            }
            if let Some(own) = own.as_mut() {
                own.open_panes.entry(pane).or_insert((position, max_before));
            }
            *self.accepted.entry(project(keep, clock, &event)).or_insert(0) += 1;
        }
    }

    /// Hands the pre-aggregated clicks to the dataflow.
    fn flush_accepted(&mut self, dataflow: &mut ClickDataflow<RoundReport>) {
        for (click, count) in self.accepted.drain() {
            dataflow.accepted.update(click, count);
        }
    }

    /// This worker's parts of a checkpoint at `job_time`: archives what its partitions read
    /// since the last one and works out where each would restart.
    fn cut(
        &mut self,
        checkpointer: &mut dyn Checkpointer<ClickEvent>,
        job_time: u64,
    ) -> Result<Vec<PartitionCheckpoint>> {
        let mut parts = Vec::new();
        let (clock, windows) = (self.clock, &self.windows);
        for (partition, own) in self.own.iter_mut() {
            let archived = if own.next > own.archive_from {
                let files = checkpointer.archive(*partition, own.archive_from, own.next, &own.raw)?;
                let range = ArchivedRange { first: own.archive_from, next: own.next, files };
                own.raw.clear();
                // A backlog between two checkpoints can be millions of events: not kept.
                own.raw.shrink_to(1 << 16);
                own.archive_from = own.next;
                Some(range)
            } else {
                None
            };
            own.open_panes.retain(|pane, _| retire_time(clock, windows, *pane) > job_time);
            let part = match self.restore.partitions.get(partition) {
                // Still re-reading what the last checkpoint committed: nothing moves yet.
                Some(restored) if own.next < restored.committed_next => PartitionCheckpoint {
                    partition: *partition,
                    next_offset: restored.committed_next,
                    restart_offset: restored.restart_offset,
                    restart_max_ts: restored.restart_max_ts,
                    archived,
                },
                _ => {
                    let max_ts = self.partitions.get(partition).and_then(|p| p.max_ts);
                    let (restart_offset, restart_max_ts) = own
                        .open_panes
                        .values()
                        .min_by_key(|(offset, _)| *offset)
                        .copied()
                        .unwrap_or((own.next, max_ts));
                    PartitionCheckpoint {
                        partition: *partition,
                        next_offset: own.next,
                        restart_offset,
                        restart_max_ts,
                        archived,
                    }
                }
            };
            parts.push(part);
        }
        Ok(parts)
    }
}

/// The watermark time from which a pane is needed by no result any more: its count is final and
/// so is every sliding window containing it.
fn retire_time(clock: Clock, windows: &[SlidingWindow], pane: u64) -> u64 {
    let window_closes = windows.iter().map(|w| clock.window_close(*w, pane - pane % w.slide_ms));
    window_closes.fold(clock.pane_close(pane), u64::max)
}

/// The record an accepted click enters the dataflow as: its pane instead of its time, and only
/// the fields the spec uses (`keep`: ad_id, country, user_id, ip).
fn project(keep: [bool; 4], clock: Clock, event: &ClickEvent) -> ClickEvent {
    let [_, country, user_id, ip] = keep;
    ClickEvent {
        ad_id: event.ad_id,
        click_ts: clock.pane_start(event.click_ts),
        user_id: if user_id { event.user_id } else { 0 },
        ip: if ip { event.ip } else { 0 },
        country: if country { event.country } else { Country(0) },
    }
}

/// A parsed batch: valid events and rejected lines apart, each with its index in the batch.
struct ParsedBatch {
    events: Vec<(u32, ClickEvent)>,
    rejected: Vec<(u32, event::Reject)>,
    max_ts: Option<u64>,
}

/// Parses every line of a batch, noting the largest event time on the way.
fn parse_batch(format: event::Format, batch: &LineBatch) -> ParsedBatch {
    let lines = &batch.records.lines;
    let mut parsed = ParsedBatch { events: Vec::with_capacity(lines.len()), rejected: Vec::new(), max_ts: None };
    for (index, line) in lines.iter().enumerate() {
        match event::parse(format, batch.text_of(line), line.full_len) {
            Ok(event) => {
                parsed.max_ts = parsed.max_ts.max(Some(event.click_ts));
                parsed.events.push((index as u32, event));
            }
            Err(reason) => parsed.rejected.push((index as u32, reason)),
        }
    }
    parsed
}
