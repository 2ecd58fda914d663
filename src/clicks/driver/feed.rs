//! Feeding a round's batches into the results dataflow: lateness judged per partition in
//! partition order, line numbers, rejected and late lines, accepted clicks pre-aggregated.

use std::time::Instant;

use super::{Driver, PartitionState, RoundReport};
use crate::clicks::dataflow::{ClickDataflow, LateClick, RejectedLine};
use crate::clicks::event::{self, ClickEvent, Country};
use crate::clicks::spec::SlidingWindow;
use crate::clicks::time::Clock;
use crate::sources::LineBatch;

impl Driver {
    /// For `batch`: the largest event time in its partition before it, and the lines before it.
    pub(super) fn before(&self, batch: &LineBatch, reports: &[RoundReport]) -> (Option<u64>, u64) {
        let state = self.partitions.get(&batch.partition).copied().unwrap_or_default();
        let earlier = reports
            .iter()
            .flat_map(|r| &r.batches)
            .filter(|b| b.partition == batch.partition && b.sequence < batch.sequence);
        earlier.fold((state.max_ts, state.lines), |(max, lines), b| (max.max(b.max_ts), lines + b.lines))
    }

    /// Folds a round's reports into the partitions' state.
    pub(super) fn absorb(&mut self, reports: &[RoundReport]) {
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
    pub(super) fn job_time(&self, idle: &[u32]) -> u64 {
        let tick = |p: &PartitionState| self.clock.tick(p.max_ts);
        let active = self.partitions.iter().filter(|(p, _)| !idle.contains(p)).map(|(_, s)| tick(s)).min();
        active.or_else(|| self.partitions.values().map(tick).min()).unwrap_or(0)
    }

    /// Judges each parsed line of `batch` and feeds the dataflow at the current input time.
    pub(super) fn feed(
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
    pub(super) fn flush_accepted(&mut self, dataflow: &mut ClickDataflow<RoundReport>) {
        for (click, count) in self.accepted.drain() {
            dataflow.accepted.update(click, count);
        }
    }
}

/// The watermark time from which a pane is needed by no result any more: its count is final and
/// so is every sliding window containing it.
pub(super) fn retire_time(clock: Clock, windows: &[SlidingWindow], pane: u64) -> u64 {
    let window_closes = windows.iter().map(|w| clock.window_close(*w, pane - pane % w.slide_ms));
    window_closes.fold(clock.pane_close(pane), u64::max)
}

/// The record an accepted click enters the dataflow as: its pane instead of its time, and only
/// the fields the spec uses (`keep`: ad_id, country, user_id, ip).
pub(super) fn project(keep: [bool; 4], clock: Clock, event: &ClickEvent) -> ClickEvent {
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
pub(super) struct ParsedBatch {
    pub(super) events: Vec<(u32, ClickEvent)>,
    pub(super) rejected: Vec<(u32, event::Reject)>,
    pub(super) max_ts: Option<u64>,
}

/// Parses every line of a batch, noting the largest event time on the way.
pub(super) fn parse_batch(format: event::Format, batch: &LineBatch) -> ParsedBatch {
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
