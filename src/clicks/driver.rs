//! Runs a source through the click dataflow on one worker, in rounds.
//!
//! In each round every worker reads one batch from its source and parses it, then all workers
//! exchange a one-line report per batch (partition, sequence, largest event time, line count)
//! through a small timely dataflow, and wait for the round's reports (a barrier, carried by
//! timely's frontier). With every report in hand, each worker knows for its own batch the
//! largest event time seen earlier in the partition and the number of lines before it, so it
//! judges lateness and numbers lines exactly as a sequential reader would; and all workers
//! agree on the job watermark, to which they advance the dataflow's inputs together.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::rc::Rc;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::core::Inspect;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Probe};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use super::dataflow::{ClickDataflow, LateClick, RejectedLine};
use super::event::{self, ClickEvent, Country};
use super::time::Clock;
use crate::sources::{Batch, Source};
use crate::spec::{DataflowSpec, Field};

/// Pre-aggregated clicks held back at most, before they go to the dataflow anyway.
const MAX_PENDING_CLICKS: usize = 1 << 20;

/// What a worker tells every other worker about its batch of a round.
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

/// A worker's report for a round; the counts are this worker's totals through the previous
/// round, so the last round's reports carry the final totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u64,
    pub worker: usize,
    pub batch: Option<BatchReport>,
    pub late: u64,
    pub rejected: u64,
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

/// What the job knows about a partition after each round.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionState {
    max_ts: Option<u64>,
    lines: u64,
}

/// Drives one worker's source into the dataflow.
pub struct Driver {
    clock: Clock,
    /// Fields the spec uses; the others are zeroed so that clicks differing only there merge.
    keep: [bool; 4],
    reports_in: InputHandle<u64, CapacityContainerBuilder<Vec<RoundReport>>>,
    reports_probe: ProbeHandle<u64>,
    reports: Rc<RefCell<BTreeMap<u64, Vec<RoundReport>>>>,
    partitions: BTreeMap<u32, PartitionState>,
    round: u64,
    /// Accepted clicks not yet given to the dataflow. Clicks that agree on pane and on the
    /// used fields are one record with a multiplicity, summed over rounds until the input time
    /// moves (nothing downstream can see them earlier anyway), which cuts the updates the
    /// dataflow sorts and exchanges by an order of magnitude.
    accepted: FxHashMap<ClickEvent, isize>,
    records_read: u64,
    late: u64,
    rejected: u64,
}

impl Driver {
    /// Builds the report exchange on `worker` for the partitions of `source`.
    pub fn new(worker: &mut Worker, spec: &DataflowSpec, partitions: &[u32]) -> Self {
        let reports: Rc<RefCell<BTreeMap<u64, Vec<RoundReport>>>> = Default::default();
        let reports_probe = ProbeHandle::new();
        let reports_in = worker.dataflow::<u64, _, _>(|scope| {
            let (handle, stream) = scope.new_input::<Vec<RoundReport>>();
            let sink = Rc::clone(&reports);
            stream
                .broadcast()
                .inspect(move |report: &RoundReport| sink.borrow_mut().entry(report.round).or_default().push(*report))
                .probe_with(&reports_probe);
            handle
        });
        let used = spec.fields_used();
        let keep = [Field::AdId, Field::Country, Field::UserId, Field::Ip].map(|f| used.contains(&f));
        Driver {
            clock: Clock::new(spec.time),
            keep,
            reports_in,
            reports_probe,
            reports,
            partitions: partitions.iter().map(|p| (*p, PartitionState::default())).collect(),
            round: 0,
            accepted: FxHashMap::default(),
            records_read: 0,
            late: 0,
            rejected: 0,
        }
    }

    /// Runs the source to its end; `on_round` sees the source after each round (progress).
    pub fn run(
        &mut self,
        worker: &mut Worker,
        source: &mut dyn Source,
        dataflow: &mut ClickDataflow,
        mut on_round: impl FnMut(&dyn Source),
    ) -> Result<RunTotals> {
        let format = source.format();
        loop {
            let batch = source.next_batch()?;
            let parsed = batch.as_ref().map(|b| parse_batch(format, b));
            let report = RoundReport {
                round: self.round,
                worker: worker.index(),
                batch: batch.as_ref().zip(parsed.as_ref()).map(|(b, p)| BatchReport {
                    partition: b.partition,
                    sequence: b.sequence,
                    max_ts: p.max_ts,
                    lines: b.line_count(),
                    records: b.lines.len() as u64,
                }),
                late: self.late,
                rejected: self.rejected,
            };
            let reports = self.exchange(worker, report, dataflow)?;
            if reports.iter().all(|r| r.batch.is_none()) {
                self.flush_accepted(dataflow);
                return Ok(RunTotals {
                    read: self.records_read,
                    late: reports.iter().map(|r| r.late).sum(),
                    rejected: reports.iter().map(|r| r.rejected).sum(),
                });
            }
            if let (Some(batch), Some(parsed)) = (batch, parsed) {
                let (max_before, lines_before) = self.before(&batch, &reports);
                self.feed(&batch, parsed, max_before, lines_before, dataflow);
            }
            self.absorb(&reports);
            let time = self.job_time();
            if time > *dataflow.inputs.accepted.time() || self.accepted.len() > MAX_PENDING_CLICKS {
                self.flush_accepted(dataflow);
                dataflow.inputs.advance_to(time);
            }
            dataflow.inputs.flush();
            on_round(source);
        }
    }

    /// Sends this worker's report for the round and steps all dataflows until every worker's
    /// report has arrived; returns them.
    fn exchange(&mut self, worker: &mut Worker, report: RoundReport, dataflow: &mut ClickDataflow) -> Result<Vec<RoundReport>> {
        let round = self.round;
        self.reports_in.send(report);
        self.round += 1;
        self.reports_in.advance_to(self.round);
        // Also let the click dataflow catch up to the previous tick, so input never piles up.
        let caught_up_to = *dataflow.inputs.accepted.time();
        while self.reports_probe.less_than(&self.round) || dataflow.probe.less_than(&caught_up_to) {
            // Park rather than spin while other workers finish their round.
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
            if let Some(error) = dataflow.sinks.borrow_mut().error.take() {
                return Err(error);
            }
        }
        let mut reports = self.reports.borrow_mut().remove(&round).unwrap_or_default();
        reports.sort_by_key(|r| r.worker);
        Ok(reports)
    }

    /// For `batch`: the largest event time in its partition before it, and the lines before it.
    fn before(&self, batch: &Batch, reports: &[RoundReport]) -> (Option<u64>, u64) {
        let state = self.partitions.get(&batch.partition).copied().unwrap_or_default();
        let earlier = reports
            .iter()
            .filter_map(|r| r.batch)
            .filter(|b| b.partition == batch.partition && b.sequence < batch.sequence);
        earlier.fold((state.max_ts, state.lines), |(max, lines), b| (max.max(b.max_ts), lines + b.lines))
    }

    /// Folds a round's reports into the partitions' state.
    fn absorb(&mut self, reports: &[RoundReport]) {
        for batch in reports.iter().filter_map(|r| r.batch) {
            let state = self.partitions.entry(batch.partition).or_default();
            state.max_ts = state.max_ts.max(batch.max_ts);
            state.lines += batch.lines;
            self.records_read += batch.records;
        }
    }

    /// The job's watermark as a dataflow time: the least over partitions.
    fn job_time(&self) -> u64 {
        self.partitions.values().map(|p| self.clock.tick(p.max_ts)).min().unwrap_or(0)
    }

    /// Judges each parsed line of `batch` and feeds the dataflow at the current input time.
    fn feed(
        &mut self,
        batch: &Batch,
        parsed: ParsedBatch,
        mut max_seen: Option<u64>,
        lines_before: u64,
        dataflow: &mut ClickDataflow,
    ) {
        let inputs = &mut dataflow.inputs;
        let first_line = lines_before + batch.skipped_lines + 1;
        for (index, reason) in parsed.rejected {
            self.rejected += 1;
            inputs.rejected.insert(RejectedLine {
                partition: batch.partition,
                position: first_line + index as u64,
                reason: reason.to_string(),
                raw: String::from_utf8_lossy(batch.text_of(&batch.lines[index as usize])).into_owned(),
            });
        }
        // Rejected lines do not move the watermark, so valid events alone, in order, decide.
        for (index, event) in parsed.events {
            if self.clock.is_late(event.click_ts, max_seen) {
                self.late += 1;
                let position = first_line + index as u64;
                inputs.late.insert(LateClick { partition: batch.partition, position, event });
            } else {
                max_seen = max_seen.max(Some(event.click_ts));
                let click = self.project(&event);
                *self.accepted.entry(click).or_insert(0) += 1;
            }
        }
    }

    /// Hands the pre-aggregated clicks to the dataflow.
    fn flush_accepted(&mut self, dataflow: &mut ClickDataflow) {
        for (click, count) in self.accepted.drain() {
            dataflow.inputs.accepted.update(click, count);
        }
    }

    /// The record an accepted click enters the dataflow as: its pane instead of its time, and
    /// only the fields the spec uses.
    fn project(&self, event: &ClickEvent) -> ClickEvent {
        let [_, country, user_id, ip] = self.keep;
        ClickEvent {
            ad_id: event.ad_id,
            click_ts: self.clock.pane_start(event.click_ts),
            user_id: if user_id { event.user_id } else { 0 },
            ip: if ip { event.ip } else { 0 },
            country: if country { event.country } else { Country(0) },
        }
    }
}

/// A parsed batch: valid events and rejected lines apart, each with its index in the batch.
struct ParsedBatch {
    events: Vec<(u32, ClickEvent)>,
    rejected: Vec<(u32, event::Reject)>,
    max_ts: Option<u64>,
}

/// Parses every line of a batch, noting the largest event time on the way.
fn parse_batch(format: event::Format, batch: &Batch) -> ParsedBatch {
    let mut parsed = ParsedBatch { events: Vec::with_capacity(batch.lines.len()), rejected: Vec::new(), max_ts: None };
    for (index, line) in batch.lines.iter().enumerate() {
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
