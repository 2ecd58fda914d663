//! The ad-click dataflow, built from a spec: counts per pane, top-N over sliding windows, and
//! the late and rejected side outputs, each ending in a sink on worker 0.
//!
//! The results dataflow runs in watermark time; a second, small dataflow runs in rounds (see
//! `driver.rs`) and carries the round reports and the late and rejected records, so that these
//! reach worker 0 by the next round whatever the watermark does.
//!
//! The logical time of the results is watermark time (see [`crate::clicks::time`]). Accepted clicks enter as
//! records projected to the fields the spec uses, with the event time replaced by the pane
//! start, and with a multiplicity: the number of such clicks. So a `count` is the collection
//! itself, consolidated (by hashing, on the worker that owns the ad); a ranking keeps every
//! window's best ads per worker incrementally, and differential's `reduce` merges the workers'
//! candidates.
//!
//! Where the time goes (10M clicks, 100,000 ads, 2 workers): parsing and pre-aggregating the
//! clicks, then the few million (pane, ad[, country]) groups, which every stage after the driver
//! handles with hash maps or sorted vectors rather than differential's arrangements; sorting
//! and merging a final pane's rows is spread over the workers, worker 0 only merges.
//!
//! State is bounded by the open panes: a ranking drops a window's state when it is final and
//! its candidates are retracted then (the "temporal filter" idiom: an update is inserted at `t`
//! and removed at its close time), and the sinks hold each pane or window only until it is
//! final.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::Inspect;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Capability, Input as TimelyInput, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, StreamVec};
use timely::worker::Worker;

use super::event::ClickEvent;
use super::time::Clock;
use crate::sinks::{ColumnKind, Rows, Sink, TableSchema, Value};
use crate::spec::{DataflowSpec, Field, Op, SinkInput, SlidingWindow};

/// A count's group: (pane start, ad_id, the value of the second `group_by` field or 0).
pub type GroupKey = (u64, u64, u64);

/// A ranked ad of a sliding window: (window start, (rank, ad_id, clicks)).
pub type RankedAd = (u64, (u32, u64, u64));

/// A worker's candidate for a window's ranking: (window start, (clicks, ad_id)).
type Candidate = (u64, (u64, u64));

/// What an operator holds back, by time (or group), with the capability to send it then.
type Held<K, V> = BTreeMap<K, (Capability<u64>, V)>;

/// A line that is not a click event, with where it came from and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RejectedLine {
    pub partition: u32,
    /// File line number, or Kafka offset.
    pub position: u64,
    pub reason: String,
    pub raw: String,
}

/// A click whose pane had closed, with where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LateClick {
    pub partition: u32,
    pub position: u64,
    pub event: ClickEvent,
}

/// How the records of a source are located: a file's line numbers, or a topic's partitions and
/// offsets. It shapes the late and rejected tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    Lines,
    Offsets { topic: String },
}

/// When a sink receives the rows of a pane or window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Once, when final (`end + allowed_lateness`): for files written in order.
    Final,
    /// When complete (the watermark passes its end), then every correction until final: for
    /// tables that take upserts. A group that completes after `restored` (the job time of the
    /// checkpoint the job started from) cannot have rows in the table yet, so its first rows
    /// are written as [`Rows::fresh`](crate::sinks::Rows::fresh).
    Changes { restored: u64 },
}

/// Makes the sink of a spec sink; called on worker 0 only.
pub type SinkFactory<'a> = &'a dyn Fn(&crate::spec::SinkSpec, &TableSchema) -> anyhow::Result<Box<dyn Sink>>;

/// The round-timed inputs: reports to every worker, late and rejected records to the sinks.
pub struct RoundInputs<R: timely::ExchangeData + Clone> {
    pub reports: InputHandle<u64, CapacityContainerBuilder<Vec<R>>>,
    pub late: InputHandle<u64, CapacityContainerBuilder<Vec<LateClick>>>,
    pub rejected: InputHandle<u64, CapacityContainerBuilder<Vec<RejectedLine>>>,
    /// Passed for a round once every worker's report and records of that round have arrived.
    pub probe: ProbeHandle<u64>,
    /// Reports received and not yet taken by the driver.
    pub received: Rc<RefCell<Vec<R>>>,
}

/// What the driver needs to run the dataflows: their inputs, a probe on every results sink,
/// and the sinks of worker 0 (sinks run inside operators, which cannot return errors).
pub struct ClickDataflow<R: timely::ExchangeData + Clone> {
    /// Accepted clicks, projected (see the module docs), with their multiplicity.
    pub accepted: InputSession<u64, ClickEvent, isize>,
    pub probe: ProbeHandle<u64>,
    pub rounds: RoundInputs<R>,
    pub sinks: Rc<RefCell<SinkSet>>,
}

/// The sinks of worker 0, and the first error any of them met.
#[derive(Default)]
pub struct SinkSet {
    pub sinks: Vec<Box<dyn Sink>>,
    pub error: Option<anyhow::Error>,
}

impl SinkSet {
    /// The first error a sink met, if any, taken out.
    pub fn take_error(&mut self) -> anyhow::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }

    /// Finishes every sink, returning the first error met at any point.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.take_error()?;
        for sink in &mut self.sinks {
            sink.finish()?;
        }
        Ok(())
    }
}

/// What a node of the spec produces.
enum NodeOutput<'s> {
    Clicks(VecCollection<'s, u64, ClickEvent, isize>),
    Counts { second: Option<Field>, keys: VecCollection<'s, u64, GroupKey, isize> },
    Ranked { window: SlidingWindow, ranked: VecCollection<'s, u64, RankedAd, isize> },
}

/// Builds the dataflows of `spec` on this worker; `R` is the driver's round report.
pub fn build<R: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    spec: &DataflowSpec,
    positions: &Positions,
    emit: Emit,
    make_sink: Option<SinkFactory>,
) -> anyhow::Result<ClickDataflow<R>> {
    let clock = Clock::new(spec.time);
    let probe = ProbeHandle::new();
    let sink_set = Rc::new(RefCell::new(SinkSet::default()));
    let attach = |sink_spec: &crate::spec::SinkSpec, schema: TableSchema| -> anyhow::Result<Option<usize>> {
        let Some(make) = make_sink else {
            return Ok(None);
        };
        let mut sinks = sink_set.borrow_mut();
        sinks.sinks.push(make(sink_spec, &schema)?);
        Ok(Some(sinks.sinks.len() - 1))
    };

    let rounds = worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<RoundInputs<R>> {
        let round_probe = ProbeHandle::new();
        let received: Rc<RefCell<Vec<R>>> = Default::default();
        let (reports, report_stream) = scope.new_input::<Vec<R>>();
        let store = Rc::clone(&received);
        report_stream
            .broadcast()
            .inspect(move |report: &R| store.borrow_mut().push(report.clone()))
            .probe_with(&round_probe);
        let (late, late_stream) = scope.new_input::<Vec<LateClick>>();
        let (rejected, rejected_stream) = scope.new_input::<Vec<RejectedLine>>();
        for sink_spec in &spec.sinks {
            let name = sink_spec.name.as_str();
            match &sink_spec.input {
                SinkInput::Late => {
                    let slot = attach(sink_spec, sink_schema(spec, sink_spec, positions))?;
                    let positions = positions.clone();
                    append_sink(late_stream.clone(), name, &round_probe, &sink_set, slot, move |late, rows| {
                        // A file's late clicks are just the events; Kafka's are keyed by offset.
                        let mut row = match positions {
                            Positions::Lines => Vec::new(),
                            Positions::Offsets { .. } => position_values(&positions, late.partition, late.position),
                        };
                        row.extend(event_values(&late.event));
                        rows.push_row(row);
                    });
                }
                SinkInput::Rejected => {
                    let slot = attach(sink_spec, sink_schema(spec, sink_spec, positions))?;
                    let positions = positions.clone();
                    append_sink(rejected_stream.clone(), name, &round_probe, &sink_set, slot, move |line, rows| {
                        let mut row = position_values(&positions, line.partition, line.position);
                        row.extend([Value::Text(line.reason.clone()), Value::Text(line.raw.clone())]);
                        rows.push_row(row);
                    });
                }
                SinkInput::Node(_) => {}
            }
        }
        Ok(RoundInputs { reports, late, rejected, probe: round_probe, received })
    })?;

    let accepted = worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<InputSession<u64, ClickEvent, isize>> {
        let (accepted_input, accepted) = scope.new_collection::<ClickEvent, isize>();
        let mut outputs: BTreeMap<&str, NodeOutput> = BTreeMap::new();
        outputs.insert(spec.source.name.as_str(), NodeOutput::Clicks(accepted));
        for node in &spec.nodes {
            let output = match &node.op {
                Op::Filter { input, predicates } => {
                    let Some(NodeOutput::Clicks(clicks)) = outputs.get(input.as_str()) else {
                        unreachable!("validated: a filter reads clicks")
                    };
                    let predicates = predicates.clone();
                    NodeOutput::Clicks(
                        clicks
                            .clone()
                            .filter(move |click| predicates.iter().all(|p| p.values.contains(&click.field(p.field)))),
                    )
                }
                Op::Count { input, group_by } => {
                    let Some(NodeOutput::Clicks(clicks)) = outputs.get(input.as_str()) else {
                        unreachable!("validated: a count reads clicks")
                    };
                    let second = group_by.get(1).copied();
                    // Consolidated where the key lives: one update per changed group and tick
                    // for everything downstream (the sink on worker 0, the ranking). Nothing
                    // keeps the consolidation's arrangement, so it holds no state across ticks.
                    let keys = clicks
                        .clone()
                        .map(move |click| (click.click_ts, click.ad_id, second.map_or(0, |f| click.field(f))));
                    let keys = consolidate_by_ad(keys);
                    NodeOutput::Counts { second, keys }
                }
                Op::TopN { input, window, n } => {
                    let Some(NodeOutput::Counts { keys, .. }) = outputs.get(input.as_str()) else {
                        unreachable!("validated: top_n reads a count")
                    };
                    NodeOutput::Ranked { window: *window, ranked: top_n(keys.clone(), clock, *window, *n) }
                }
            };
            outputs.insert(node.name.as_str(), output);
        }

        for sink_spec in &spec.sinks {
            let name = sink_spec.name.as_str();
            let SinkInput::Node(node) = &sink_spec.input else {
                continue;
            };
            match &outputs[node.as_str()] {
                NodeOutput::Counts { second, keys } => {
                    let slot = attach(sink_spec, sink_schema(spec, sink_spec, positions))?;
                    let second = *second;
                    let pane_ms = spec.time.pane_ms;
                    let group = move |key: &GroupKey| Group {
                        id: key.0,
                        complete: key.0 + pane_ms,
                        close: clock.pane_close(key.0),
                    };
                    let route = |key: &GroupKey| exchange_hash(key.1);
                    let target = SinkTarget { name, probe: &probe, sinks: &sink_set, slot, emit };
                    sink_by_group(
                        keys.clone().inner,
                        &target,
                        group,
                        route,
                        move |&(pane, ad_id, value), clicks, rows| {
                            rows.values.extend([Value::Timestamp(pane), Value::Integer(ad_id)]);
                            rows.values.extend(second.map(|field| field_value(field, value)));
                            rows.values.push(Value::Integer(clicks as u64));
                        },
                    );
                }
                NodeOutput::Ranked { window, ranked } => {
                    let slot = attach(sink_spec, sink_schema(spec, sink_spec, positions))?;
                    let window = *window;
                    let group = move |ranked: &RankedAd| Group {
                        id: ranked.0,
                        complete: ranked.0 + window.size_ms,
                        close: clock.window_close(window, ranked.0),
                    };
                    let route = |ranked: &RankedAd| exchange_hash(ranked.0);
                    let target = SinkTarget { name, probe: &probe, sinks: &sink_set, slot, emit };
                    sink_by_group(
                        ranked.clone().inner,
                        &target,
                        group,
                        route,
                        move |&(start, (rank, ad_id, clicks)), _, rows| {
                            rows.push_row([
                                Value::Timestamp(start),
                                Value::Timestamp(start + window.size_ms),
                                Value::Integer(rank as u64),
                                Value::Integer(ad_id),
                                Value::Integer(clicks),
                            ]);
                        },
                    );
                }
                NodeOutput::Clicks(_) => unreachable!("validated: sinks read counts or top_n"),
            }
        }
        Ok(accepted_input)
    })?;
    Ok(ClickDataflow { accepted, probe, rounds, sinks: sink_set })
}

/// The `n` most clicked ads of every sliding window, by clicks descending then ad_id ascending.
///
/// Stage one, on the worker that owns each ad ([`local_top_n`]): every window's clicks per ad,
/// kept up to date as pane counts change, and the window's `n` best of this worker's ads.
/// Stage two, per window: the workers' candidates ranked again (the overall best `n` are among
/// them, since an ad beaten by fewer than `n` ads overall is beaten by fewer on its worker).
/// A candidate leaves stage two when its window is final, so stage two's state is freed.
fn top_n<'s>(
    keys: VecCollection<'s, u64, GroupKey, isize>,
    clock: Clock,
    window: SlidingWindow,
    n: usize,
) -> VecCollection<'s, u64, RankedAd, isize> {
    let candidates = local_top_n(keys.inner, clock, window, n);
    let candidates = retract_at_close(candidates, move |(start, _)| clock.window_close(window, *start));
    candidates
        .as_collection()
        .reduce(move |_start, candidates: &[(&(u64, u64), isize)], output: &mut Vec<((u32, u64, u64), isize)>| {
            let candidates = candidates.iter().filter(|(_, c)| *c > 0).map(|(ad, _)| **ad);
            for (rank, (clicks, ad_id)) in best(candidates, n).into_iter().enumerate() {
                output.push(((rank as u32 + 1, ad_id, clicks), 1));
            }
        })
        .inner
        // What changes at or after a window's close time is the freeing of state, not news.
        .filter(move |((start, _), time, _)| *time < clock.window_close(window, *start))
        .as_collection()
}

/// Orders `(clicks, ad_id)` as a ranking does: clicks descending, then ad_id ascending.
fn rank_order(a: &(u64, u64), b: &(u64, u64)) -> Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The first `n` of `ads` (`(clicks, ad_id)`) in ranking order.
fn best(ads: impl Iterator<Item = (u64, u64)>, n: usize) -> Vec<(u64, u64)> {
    let mut ads: Vec<(u64, u64)> = ads.collect();
    if ads.len() > n {
        ads.select_nth_unstable_by(n - 1, rank_order);
        ads.truncate(n);
    }
    ads.sort_unstable_by(rank_order);
    ads
}

/// Stage one of [`top_n`]: for every open window, the `n` best ads of this worker, sent as
/// changes (`((window start, (clicks, ad_id)), time, ±1)`) whenever they change.
///
/// The pane counts of a time are applied once the frontier has passed it (see [`Rankings`]);
/// a tick costs the changed counts, not the open windows' contents.
fn local_top_n<'s>(
    counts: StreamVec<'s, u64, (GroupKey, u64, isize)>,
    clock: Clock,
    window: SlidingWindow,
    n: usize,
) -> StreamVec<'s, u64, (Candidate, u64, isize)> {
    let route = Exchange::new(|((_, ad_id, _), _, _): &(GroupKey, u64, isize)| exchange_hash(*ad_id));
    counts.unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(route, "LocalTopN", |_, _| {
        let mut pending: Held<u64, Vec<(u64, u64, isize)>> = BTreeMap::new();
        let mut rankings = Rankings { clock, window, n, panes: FxHashMap::default(), windows: BTreeMap::new() };
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                for ((pane, ad_id, _), time, diff) in data.drain(..) {
                    let (_, updates) =
                        pending.entry(time).or_insert_with(|| (capability.delayed(&time, 0), Vec::new()));
                    updates.push((pane, ad_id, diff));
                }
            });
            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontier.less_equal(&time) {
                    break;
                }
                let (capability, updates) = entry.remove();
                for (pane, ad_id, diff) in updates {
                    rankings.add(time, pane, ad_id, diff as i64);
                }
                let mut session = output.session(&capability);
                for (start, best) in rankings.windows.iter_mut() {
                    for (candidate, diff) in best.changes(&rankings.panes, window, *start, n) {
                        session.give(((*start, candidate), time, diff));
                    }
                }
            }
            rankings.retire(|close| !frontier.less_than(&close));
        }
    })
}

/// This worker's clicks per ad and live pane, and every open window's best ads.
///
/// An ad's counts for the few live panes sit together, so a changed pane count costs one hash
/// look-up, and the ad's clicks in each window containing the pane are sums over a short list.
struct Rankings {
    clock: Clock,
    window: SlidingWindow,
    n: usize,
    /// For each ad with clicks in a live pane: `(pane, clicks)` of those panes.
    panes: FxHashMap<u64, Vec<(u64, i64)>>,
    /// The open windows by start.
    windows: BTreeMap<u64, WindowBest>,
}

impl Rankings {
    /// Applies a change of `diff` clicks to an ad's count in a pane, at `time`.
    fn add(&mut self, time: u64, pane: u64, ad_id: u64, diff: i64) {
        let (clock, window) = (self.clock, self.window);
        let counts = self.panes.entry(ad_id).or_default();
        match counts.iter_mut().find(|(p, _)| *p == pane) {
            Some((_, clicks)) => *clicks += diff,
            None => counts.push((pane, diff)),
        }
        // A window already final takes no more changes (a restart re-reads panes that are
        // final for some of their windows only).
        for start in clock.windows_of(window, pane).filter(|start| clock.window_close(window, *start) > time) {
            let after = window_clicks(counts, start, window);
            let best = self.windows.entry(start).or_default();
            best.update(ad_id, after - diff, after, self.n);
        }
        counts.retain(|(_, clicks)| *clicks != 0);
        if counts.is_empty() {
            self.panes.remove(&ad_id);
        }
    }

    /// Drops the windows that are final (`is_final(close time)`), and the panes no open window
    /// contains any more.
    fn retire(&mut self, is_final: impl Fn(u64) -> bool) {
        let (clock, window) = (self.clock, self.window);
        let before = self.windows.len();
        self.windows.retain(|start, _| !is_final(clock.window_close(window, *start)));
        if self.windows.len() == before {
            return;
        }
        // The last window containing a pane starts at the pane's window-aligned start.
        let retired = |pane: u64| is_final(clock.window_close(window, pane - pane % window.slide_ms));
        self.panes.retain(|_, counts| {
            counts.retain(|(pane, _)| !retired(*pane));
            !counts.is_empty()
        });
    }
}

/// An ad's clicks in the window starting at `start`, from its pane counts.
fn window_clicks(counts: &[(u64, i64)], start: u64, window: SlidingWindow) -> i64 {
    counts.iter().filter(|(pane, _)| (start..start + window.size_ms).contains(pane)).map(|(_, clicks)| clicks).sum()
}

/// One window's `n` best ads on a worker, kept as counts change.
///
/// Clicks only ever arrive, so nearly every change raises an ad's total: the ad moves up in
/// `best` or enters it, pushing the last one out, and nothing else can move. A total that falls
/// (not produced by today's inputs, but allowed) for an ad in `best` marks it stale, and it is
/// recomputed from all counts.
#[derive(Default)]
struct WindowBest {
    /// The best ads as `(clicks, ad_id)` in ranking order, at most `n`; every ad with clicks
    /// when there are fewer.
    best: Vec<(u64, u64)>,
    /// An ad in `best` lost clicks: another may now rank above it.
    stale: bool,
    /// `best` as last sent downstream.
    sent: Vec<(u64, u64)>,
}

impl WindowBest {
    /// An ad's clicks in the window went from `before` to `after`.
    fn update(&mut self, ad_id: u64, before: i64, after: i64, n: usize) {
        let (before, after) = (before.max(0) as u64, after.max(0) as u64);
        // An ad in a full `best` has at least the clicks of its last.
        let may_be_in_best = self.best.len() < n || self.best.last().is_some_and(|last| before >= last.0);
        let held = if may_be_in_best { self.best.iter().position(|(_, ad)| *ad == ad_id) } else { None };
        match held {
            Some(_) if after < before => self.stale = true,
            Some(at) => {
                self.best.remove(at);
                self.offer((after, ad_id), n);
            }
            None if after > before => self.offer((after, ad_id), n),
            None => {}
        }
    }

    /// Puts `candidate` in `best` if it ranks among the first `n`.
    fn offer(&mut self, candidate: (u64, u64), n: usize) {
        let at = self.best.partition_point(|held| rank_order(held, &candidate) == Ordering::Less);
        if at < n {
            self.best.insert(at, candidate);
            self.best.truncate(n);
        }
    }

    /// The changes to send since the last call: the old best retracted, the new one inserted.
    /// `panes` (every ad's pane counts) serves to recompute a stale ranking.
    fn changes(
        &mut self,
        panes: &FxHashMap<u64, Vec<(u64, i64)>>,
        window: SlidingWindow,
        start: u64,
        n: usize,
    ) -> Vec<((u64, u64), isize)> {
        if self.stale {
            let clicks = panes.iter().map(|(ad_id, counts)| (window_clicks(counts, start, window), *ad_id));
            self.best = best(clicks.filter(|(c, _)| *c > 0).map(|(c, ad_id)| (c as u64, ad_id)), n);
            self.stale = false;
        }
        if self.best == self.sent {
            return Vec::new();
        }
        let retracted = self.sent.iter().map(|c| (*c, -1));
        let changes = retracted.chain(self.best.iter().map(|c| (*c, 1))).collect();
        self.sent.clone_from(&self.best);
        changes
    }
}

/// The value timely routes a record by, from the number that decides its worker (an ad_id, a
/// window start): a multiplicative hash, because timely routes by the low bits, and ids that
/// share a residue (window starts are multiples of the slide) would all land on one worker.
fn exchange_hash(value: u64) -> u64 {
    value.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

/// Consolidates a count's updates on the worker that owns each ad: all updates of a time are
/// summed in a hash map and leave, one per changed group, once the frontier has passed that
/// time. This is what differential's `consolidate` does, without sorting: nothing downstream
/// needs the updates in order (the ranking and the sinks keep their own state), and hashing the
/// few million groups of a tick costs a fraction of merge-sorting them.
fn consolidate_by_ad<'s>(keys: VecCollection<'s, u64, GroupKey, isize>) -> VecCollection<'s, u64, GroupKey, isize> {
    let route = Exchange::new(|((_, ad_id, _), _, _): &(GroupKey, u64, isize)| exchange_hash(*ad_id));
    keys.inner
        .unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(route, "ConsolidateByAd", |_, _| {
            let mut pending: Held<u64, FxHashMap<GroupKey, isize>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    for (key, time, diff) in data.drain(..) {
                        let (_, sums) =
                            pending.entry(time).or_insert_with(|| (capability.delayed(&time, 0), FxHashMap::default()));
                        *sums.entry(key).or_insert(0) += diff;
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (capability, sums) = entry.remove();
                    let mut session = output.session(&capability);
                    for (key, diff) in sums.into_iter().filter(|(_, diff)| *diff != 0) {
                        session.give((key, time, diff));
                    }
                }
            }
        })
        .as_collection()
}

/// Passes every update through, and retracts it again at its close time. The retractions wait
/// here, consolidated, and leave only when the frontier reaches their time: sent at once, they
/// would sit in the next operator's batcher and be re-sorted at every tick until then.
fn retract_at_close<'s, D>(
    stream: StreamVec<'s, u64, (D, u64, isize)>,
    close_of: impl Fn(&D) -> u64 + 'static,
) -> StreamVec<'s, u64, (D, u64, isize)>
where
    D: differential_dataflow::Data,
{
    stream.unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(Pipeline, "RetractAtClose", |_, _| {
        let mut pending: Held<u64, Vec<(D, isize)>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                let Some(now) = capability.retain_least(0) else {
                    return;
                };
                let mut session = output.session(&now);
                for (record, time, diff) in data.drain(..) {
                    let close = close_of(&record);
                    let (_, retractions) = pending.entry(close).or_insert_with(|| (now.delayed(&close), Vec::new()));
                    retractions.push((record.clone(), -diff));
                    session.give((record, time, diff));
                }
            });
            while let Some(entry) = pending.first_entry() {
                let close = *entry.key();
                if frontier.less_than(&close) {
                    break;
                }
                let (capability, mut retractions) = entry.remove();
                consolidate(&mut retractions);
                let mut session = output.session(&capability);
                for (record, diff) in retractions {
                    session.give((record, close, diff));
                }
            }
        }
    })
}

/// The pane or window a result row belongs to, and the watermark times that matter for it.
#[derive(Debug, Clone, Copy)]
struct Group {
    id: u64,
    /// When the watermark reaches this, the group's first result is out (`Emit::Changes`).
    complete: u64,
    /// When the watermark reaches this, the group is final and its state dropped.
    close: u64,
}

/// Writes a stream's records as rows, by group (pane or window): with `Emit::Final`, each
/// group's rows once, in (close, group, record) order, when no update for it can come any more;
/// with `Emit::Changes`, the rows whose value changed, whenever the frontier has passed the
/// group's completion time. `route` says which worker holds a record's updates.
fn sink_by_group<'s, D>(
    stream: StreamVec<'s, u64, (D, u64, isize)>,
    target: &SinkTarget,
    group_of: impl Fn(&D) -> Group + 'static,
    route: impl Fn(&D) -> u64 + 'static,
    to_row: impl FnMut(&D, isize, &mut Rows) + 'static,
) where
    D: differential_dataflow::ExchangeData,
{
    match target.emit {
        Emit::Final => sink_final(final_parts(stream, target.name, group_of, route), target, to_row),
        Emit::Changes { restored } => sink_changes(stream, target, restored, group_of, to_row),
    }
}

/// Where the rows of a spec sink go, and when.
#[derive(Clone, Copy)]
struct SinkTarget<'a> {
    /// The spec sink's name, for the operators' names.
    name: &'a str,
    /// Passes a time once every row for earlier times has been written.
    probe: &'a ProbeHandle<u64>,
    /// Worker 0's sinks, and this sink's slot among them (`None` on other workers).
    sinks: &'a Rc<RefCell<SinkSet>>,
    slot: Option<usize>,
    emit: Emit,
}

/// A group's key in close-time order: (close, group id).
type GroupOrder = (u64, u64);

/// `Emit::Final`, on every worker: its part of each group, summed and sorted once the group is
/// final, sent on (at the close time) as one run. Sorting where the updates are spreads that
/// work over the workers; worker 0 only merges one run per worker.
///
/// No update comes for a group at or after its close time in this mode: the driver accepts no
/// click for a final pane, and a ranking drops what changes at close.
fn final_parts<'s, D>(
    stream: StreamVec<'s, u64, (D, u64, isize)>,
    name: &str,
    group_of: impl Fn(&D) -> Group + 'static,
    route: impl Fn(&D) -> u64 + 'static,
) -> StreamVec<'s, u64, (GroupOrder, Vec<(D, isize)>)>
where
    D: differential_dataflow::ExchangeData,
{
    let exchange = Exchange::new(move |(record, _, _): &(D, u64, isize)| route(record));
    stream.unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(exchange, &format!("Parts: {name}"), |_, _| {
        let mut groups: Held<GroupOrder, Vec<(D, isize)>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                for (record, time, diff) in data.drain(..) {
                    let group = group_of(&record);
                    let at = group.close.max(time);
                    let (_, updates) = groups
                        .entry((group.close, group.id))
                        .or_insert_with(|| (capability.delayed(&at, 0), Vec::new()));
                    updates.push((record, diff));
                }
            });
            while let Some(entry) = groups.first_entry() {
                if frontier.less_than(&entry.key().0) {
                    break;
                }
                let (key, (capability, mut updates)) = entry.remove_entry();
                sum_updates(&mut updates);
                updates.retain(|(_, total)| *total > 0);
                output.session(&capability).give((key, updates));
            }
        }
    })
}

/// Values handed to a sink at a time, at most (a little more): the sink (a CSV writer thread)
/// starts on them while the next are made, and no huge vector is grown.
const VALUES_PER_WRITE: usize = 1 << 16;

/// `Emit::Final`, on worker 0: merges the workers' runs of a group once every run has arrived
/// (the frontier is past its close time) and writes the rows.
fn sink_final<'s, D>(
    parts: StreamVec<'s, u64, (GroupOrder, Vec<(D, isize)>)>,
    target: &SinkTarget,
    mut to_row: impl FnMut(&D, isize, &mut Rows) + 'static,
) where
    D: differential_dataflow::ExchangeData,
{
    let SinkTarget { name, probe, sinks, slot, .. } = *target;
    let sinks = Rc::clone(sinks);
    let mut runs: BTreeMap<GroupOrder, Vec<(D, isize)>> = BTreeMap::new();
    written_below_frontier(parts, name, probe, move |arrived, frontier| {
        for (key, run) in arrived.drain(..) {
            runs.entry(key).or_default().extend(run);
        }
        let mut rows = Rows::default();
        while let Some(entry) = runs.first_entry() {
            if frontier.less_equal(&entry.key().0) {
                break; // a worker's run for this close time may still be on its way
            }
            let mut group = entry.remove();
            // The runs are sorted: the stable sort of `consolidate` merges them.
            consolidate(&mut group);
            for (record, total) in &group {
                to_row(record, *total, &mut rows);
                if rows.values.len() >= VALUES_PER_WRITE {
                    write_rows(&sinks, slot, std::mem::take(&mut rows));
                }
            }
        }
        write_rows(&sinks, slot, rows);
    });
}

/// `Emit::Changes`, on worker 0: gathers the updates by group and writes the rows whose value
/// changed, whenever the frontier has passed the group's completion time. A group's first rows
/// are fresh when it completes after `restored`: no committed checkpoint can hold rows of it.
fn sink_changes<'s, D>(
    stream: StreamVec<'s, u64, (D, u64, isize)>,
    target: &SinkTarget,
    restored: u64,
    group_of: impl Fn(&D) -> Group + 'static,
    mut to_row: impl FnMut(&D, isize, &mut Rows) + 'static,
) where
    D: differential_dataflow::ExchangeData,
{
    /// A group's updates, and the records changed since its rows were last written. The updates
    /// are summed by sorting when rows are due, or when they have doubled since last summed, so
    /// that an open pane holds about two updates per key (a sorted vector costs far less than a
    /// map updated per record, and gives the rows in key order).
    struct State<D> {
        group: Group,
        updates: Vec<(D, isize)>,
        changed: Vec<D>,
        /// `updates.len()` when last summed.
        summed: usize,
        /// Whether its rows have been written since the job started.
        written: bool,
    }
    let SinkTarget { name, probe, sinks, slot, .. } = *target;
    let sinks = Rc::clone(sinks);
    let mut groups: BTreeMap<GroupOrder, State<D>> = BTreeMap::new();
    written_below_frontier(stream, name, probe, move |arrived, frontier| {
        for (record, _time, diff) in arrived.drain(..) {
            let group = group_of(&record);
            let state = groups.entry((group.close, group.id)).or_insert_with(|| State {
                group,
                updates: Vec::new(),
                changed: Vec::new(),
                summed: 0,
                written: false,
            });
            state.changed.push(record.clone());
            state.updates.push((record, diff));
        }
        let mut rows = Rows::default();
        let mut fresh = Rows { fresh: true, ..Rows::default() };
        let mut done = Vec::new();
        for (key, state) in groups.iter_mut() {
            let due = !state.changed.is_empty() && !frontier.less_than(&state.group.complete);
            if due || state.updates.len() > 2 * state.summed + 4096 {
                sum_updates(&mut state.updates);
                state.summed = state.updates.len();
                state.changed.sort_unstable();
                state.changed.dedup();
            }
            if due {
                let out = if !state.written && state.group.complete > restored { &mut fresh } else { &mut rows };
                state.written = true;
                for record in state.changed.drain(..) {
                    let found = state.updates.binary_search_by(|(r, _)| r.cmp(&record));
                    if let Some((_, total)) = found.ok().map(|i| &state.updates[i]).filter(|(_, t)| *t > 0) {
                        to_row(&record, *total, out);
                    }
                }
            }
            if !frontier.less_than(&state.group.close) {
                done.push(*key);
            }
        }
        for key in done {
            groups.remove(&key);
        }
        // Fresh rows first: a correction in the same batch is to a later value.
        write_rows(&sinks, slot, fresh);
        write_rows(&sinks, slot, rows);
    });
}

/// Sorts `updates` by record and sums each record's updates into one, dropping zeros.
fn sum_updates<D: Ord>(updates: &mut Vec<(D, isize)>) {
    // Unstable sorting is the faster; the stable sort in `consolidate` then meets one run.
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    consolidate(updates);
}

/// Runs `logic` (on what arrived, and the input frontier) as a sink on worker 0 whose (empty) output, probed by `probe`, advances only
/// once `logic` has run with the input frontier there: a probe that has passed a time means
/// that everything the sink writes for earlier times has been written, not merely sent.
fn written_below_frontier<'s, D>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    probe: &ProbeHandle<u64>,
    mut logic: impl FnMut(&mut Vec<D>, &timely::progress::frontier::MutableAntichain<u64>) + 'static,
) where
    D: timely::ExchangeData,
{
    let output = stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_| 0u64),
        &format!("Sink: {name}"),
        |capability, _| {
            let mut held = Some(capability);
            let mut arrived = Vec::new();
            move |(input, frontier), _output| {
                input.for_each(|_capability, data| arrived.append(data));
                logic(&mut arrived, frontier);
                arrived.clear();
                // A pane's worth of updates can arrive at once: not kept for the next time.
                arrived.shrink_to(1 << 16);
                match frontier.frontier().iter().min() {
                    Some(time) => {
                        if let Some(held) = held.as_mut().filter(|h| h.time() < time) {
                            held.downgrade(time);
                        }
                    }
                    None => held = None,
                }
            }
        },
    );
    output.probe_with(probe);
}

/// Writes rows to the sink in `slot` (worker 0), keeping the first error for the driver.
fn write_rows(sinks: &Rc<RefCell<SinkSet>>, slot: Option<usize>, rows: Rows) {
    let Some(slot) = slot else { return };
    if rows.is_empty() {
        return;
    }
    let mut sinks = sinks.borrow_mut();
    if sinks.error.is_none()
        && let Err(error) = sinks.sinks[slot].write(rows)
    {
        sinks.error = Some(error);
    }
}

/// Gathers records on worker 0 and appends a row for each to the sink as they come.
fn append_sink<'s, D>(
    stream: StreamVec<'s, u64, D>,
    name: &str,
    probe: &ProbeHandle<u64>,
    sinks: &Rc<RefCell<SinkSet>>,
    slot: Option<usize>,
    mut to_row: impl FnMut(&D, &mut Rows) + 'static,
) where
    D: differential_dataflow::ExchangeData,
{
    let sinks = Rc::clone(sinks);
    written_below_frontier(stream, name, probe, move |arrived, _frontier| {
        let mut rows = Rows::default();
        for record in arrived.iter() {
            to_row(record, &mut rows);
        }
        write_rows(&sinks, slot, rows);
    });
}

fn position_values(positions: &Positions, partition: u32, position: u64) -> Vec<Value> {
    match positions {
        Positions::Lines => vec![Value::Integer(position)],
        Positions::Offsets { topic } => {
            vec![Value::Text(topic.clone()), Value::Integer(partition as u64), Value::Integer(position)]
        }
    }
}

fn field_value(field: Field, value: u64) -> Value {
    match field {
        Field::AdId | Field::UserId => Value::Integer(value),
        Field::Country => Value::StaticText(super::event::Country(value as u16).as_str()),
        Field::Ip => Value::Text(std::net::Ipv4Addr::from(value as u32).to_string()),
    }
}

fn event_values(event: &ClickEvent) -> [Value; 5] {
    [
        Value::Integer(event.ad_id),
        Value::Integer(event.click_ts),
        Value::Integer(event.user_id),
        field_value(Field::Ip, event.ip as u64),
        field_value(Field::Country, event.country.0 as u64),
    ]
}

fn field_kind(field: Field) -> ColumnKind {
    match field {
        Field::AdId | Field::UserId => ColumnKind::Integer,
        Field::Country | Field::Ip => ColumnKind::Text,
    }
}

/// `window_start, ad_id, [field], clicks`.
pub fn count_schema(name: &str, second: Option<Field>) -> TableSchema {
    let mut columns = vec![("window_start", ColumnKind::Timestamp), ("ad_id", ColumnKind::Integer)];
    if let Some(field) = second {
        columns.push((field.name(), field_kind(field)));
    }
    let key_columns = columns.len();
    columns.push(("clicks", ColumnKind::Count));
    TableSchema::new(name, &columns, key_columns)
}

/// `window_start, window_end, rank, ad_id, clicks`.
pub fn top_schema(name: &str) -> TableSchema {
    use ColumnKind::*;
    TableSchema::new(
        name,
        &[
            ("window_start", Timestamp),
            ("window_end", Timestamp),
            ("rank", Count),
            ("ad_id", Integer),
            ("clicks", Count),
        ],
        3,
    )
}

/// The table a spec sink writes.
pub fn sink_schema(spec: &DataflowSpec, sink: &crate::spec::SinkSpec, positions: &Positions) -> TableSchema {
    let name = sink.name.as_str();
    match &sink.input {
        SinkInput::Late => late_schema(name, positions),
        SinkInput::Rejected => rejected_schema(name, positions),
        SinkInput::Node(node) => match spec.node(node).map(|n| &n.op) {
            Some(Op::Count { group_by, .. }) => count_schema(name, group_by.get(1).copied()),
            Some(Op::TopN { .. }) => top_schema(name),
            _ => unreachable!("validated: sinks read counts or top_n"),
        },
    }
}

/// Where a record came from: `line` in a file; `topic, partition, offset` in Kafka.
fn position_columns(positions: &Positions) -> Vec<(&'static str, ColumnKind)> {
    use ColumnKind::*;
    match positions {
        Positions::Lines => vec![("line", Count)],
        Positions::Offsets { .. } => {
            vec![("topic", Text), ("partition", Count), ("offset", Count)]
        }
    }
}

/// The raw event's fields; from Kafka, keyed by where the event came from. A file's late clicks
/// carry only the event's fields (`late_clicks.csv`).
pub fn late_schema(name: &str, positions: &Positions) -> TableSchema {
    use ColumnKind::*;
    let event = [("ad_id", Integer), ("click_ts", Integer), ("user_id", Integer), ("ip", Text), ("country", Text)];
    match positions {
        Positions::Lines => TableSchema::new(name, &event, 0),
        Positions::Offsets { .. } => {
            let mut columns = position_columns(positions);
            let keys = columns.len();
            columns.extend(event);
            TableSchema::new(name, &columns, keys)
        }
    }
}

/// Where the line came from, `reason, raw`.
pub fn rejected_schema(name: &str, positions: &Positions) -> TableSchema {
    use ColumnKind::*;
    let mut columns = position_columns(positions);
    let keys = columns.len();
    columns.extend([("reason", Text), ("raw", Text)]);
    TableSchema::new(name, &columns, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_match_the_replay_files() {
        let names = |s: TableSchema| s.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(",");
        assert_eq!(names(count_schema("c", None)), "window_start,ad_id,clicks");
        assert_eq!(names(count_schema("c", Some(Field::Country))), "window_start,ad_id,country,clicks");
        assert_eq!(names(top_schema("t")), "window_start,window_end,rank,ad_id,clicks");
        assert_eq!(names(late_schema("l", &Positions::Lines)), "ad_id,click_ts,user_id,ip,country");
        assert_eq!(names(rejected_schema("r", &Positions::Lines)), "line,reason,raw");
        let kafka = Positions::Offsets { topic: "clicks".into() };
        assert_eq!(names(late_schema("l", &kafka)), "topic,partition,offset,ad_id,click_ts,user_id,ip,country");
        assert_eq!(names(rejected_schema("r", &kafka)), "topic,partition,offset,reason,raw");
    }
}
