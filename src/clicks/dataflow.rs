//! The ad-click dataflow, built from a spec: counts per pane, top-N over sliding windows, and
//! the late and rejected side outputs, each ending in a sink on worker 0.
//!
//! The logical time is watermark time (see [`crate::clicks::time`]). Accepted clicks enter as
//! records projected to the fields the spec uses, with the event time replaced by the pane
//! start, and with a multiplicity: the number of such clicks. So a `count` is the collection
//! itself, consolidated; differential's `reduce` does the ranking.
//!
//! State is bounded by the open panes: the ranking's input is retracted at the time each
//! window becomes final (the "temporal filter" idiom: an update is inserted at `t` and removed
//! at its close time), and the sinks hold each pane or window only until it is final.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Filter, Map};
use timely::dataflow::{ProbeHandle, StreamVec};
use timely::worker::Worker;

use super::event::ClickEvent;
use super::time::Clock;
use crate::sinks::{ColumnKind, Rows, Sink, TableSchema, Value};
use crate::spec::{DataflowSpec, Field, Op, SinkInput, SlidingWindow};

/// A count's group: (pane start, ad_id, the value of the second `group_by` field or 0).
pub type GroupKey = (u64, u64, u64);

/// A ranked ad of a sliding window: (window start, (rank, ad_id, clicks)).
pub type RankedAd = (u64, (u32, u64, u64));

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

/// Where the driver feeds the dataflow.
pub struct ClickInputs {
    /// Accepted clicks, projected (see the module docs), with their multiplicity.
    pub accepted: InputSession<u64, ClickEvent, isize>,
    pub late: InputSession<u64, LateClick, isize>,
    pub rejected: InputSession<u64, RejectedLine, isize>,
}

impl ClickInputs {
    pub fn advance_to(&mut self, time: u64) {
        self.accepted.advance_to(time);
        self.late.advance_to(time);
        self.rejected.advance_to(time);
    }

    pub fn flush(&mut self) {
        self.accepted.flush();
        self.late.flush();
        self.rejected.flush();
    }
}

/// Makes the sink of a spec sink; called on worker 0 only.
pub type SinkFactory<'a> = &'a dyn Fn(&crate::spec::SinkSpec, &TableSchema) -> anyhow::Result<Box<dyn Sink>>;

/// What the driver needs to run the dataflow: its inputs, a probe on every sink, and the
/// first error a sink met (sinks run inside operators, which cannot return errors).
pub struct ClickDataflow {
    pub inputs: ClickInputs,
    pub probe: ProbeHandle<u64>,
    pub sinks: Rc<RefCell<SinkSet>>,
}

/// The sinks of worker 0, and the first error any of them met.
#[derive(Default)]
pub struct SinkSet {
    pub sinks: Vec<Box<dyn Sink>>,
    pub error: Option<anyhow::Error>,
}

impl SinkSet {
    /// Finishes every sink, returning the first error met at any point.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
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

/// Builds the dataflow of `spec` on this worker.
pub fn build(worker: &mut Worker, spec: &DataflowSpec, make_sink: Option<SinkFactory>) -> anyhow::Result<ClickDataflow> {
    let clock = Clock::new(spec.time);
    let probe = ProbeHandle::new();
    let sink_set = Rc::new(RefCell::new(SinkSet::default()));
    let inputs = worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<ClickInputs> {
        let (accepted_input, accepted) = scope.new_collection::<ClickEvent, isize>();
        let (late_input, late) = scope.new_collection::<LateClick, isize>();
        let (rejected_input, rejected) = scope.new_collection::<RejectedLine, isize>();

        let mut outputs: BTreeMap<&str, NodeOutput> = BTreeMap::new();
        outputs.insert(spec.source.name.as_str(), NodeOutput::Clicks(accepted));
        for node in &spec.nodes {
            let output = match &node.op {
                Op::Filter { input, predicates } => {
                    let Some(NodeOutput::Clicks(clicks)) = outputs.get(input.as_str()) else {
                        unreachable!("validated: a filter reads clicks")
                    };
                    let predicates = predicates.clone();
                    NodeOutput::Clicks(clicks.clone().filter(move |click| {
                        predicates.iter().all(|p| p.values.contains(&click.field(p.field)))
                    }))
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
                        .map(move |click| (click.click_ts, click.ad_id, second.map_or(0, |f| click.field(f))))
                        .consolidate();
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
            let mut sinks = sink_set.borrow_mut();
            let mut attach = |schema: TableSchema| -> anyhow::Result<Option<usize>> {
                match make_sink {
                    Some(make) => {
                        sinks.sinks.push(make(sink_spec, &schema)?);
                        Ok(Some(sinks.sinks.len() - 1))
                    }
                    None => Ok(None),
                }
            };
            match &sink_spec.input {
                SinkInput::Late => {
                    let slot = attach(late_schema(name))?;
                    let stream = late.clone().inner;
                    sink_when_final(stream, name, &probe, &sink_set, slot, |_| (0, 0), |_, updates, rows| {
                        for (late, diff) in updates {
                            for _ in 0..diff {
                                rows.push_row(event_values(&late.event));
                            }
                        }
                    });
                }
                SinkInput::Rejected => {
                    let slot = attach(rejected_schema(name))?;
                    let stream = rejected.clone().inner;
                    sink_when_final(stream, name, &probe, &sink_set, slot, |_| (0, 0), |_, updates, rows| {
                        for (line, diff) in updates {
                            for _ in 0..diff {
                                rows.push_row([
                                    Value::Integer(line.position),
                                    Value::Text(line.reason.clone()),
                                    Value::Text(line.raw.clone()),
                                ]);
                            }
                        }
                    });
                }
                SinkInput::Node(node) => match &outputs[node.as_str()] {
                    NodeOutput::Counts { second, keys } => {
                        let slot = attach(count_schema(name, *second))?;
                        let second = *second;
                        let stream = keys.clone().inner;
                        let group = move |key: &GroupKey| (key.0, clock.pane_close(key.0));
                        sink_when_final(stream, name, &probe, &sink_set, slot, group, move |pane, updates, rows| {
                            for ((_, ad_id, value), clicks) in updates {
                                let mut row = vec![Value::Timestamp(pane), Value::Integer(ad_id)];
                                if let Some(field) = second {
                                    row.push(field_value(field, value));
                                }
                                row.push(Value::Integer(clicks as u64));
                                rows.push_row(row);
                            }
                        });
                    }
                    NodeOutput::Ranked { window, ranked } => {
                        let slot = attach(top_schema(name))?;
                        let window = *window;
                        let group = move |ranked: &RankedAd| (ranked.0, clock.window_close(window, ranked.0));
                        sink_when_final(ranked.clone().inner, name, &probe, &sink_set, slot, group, move |start, updates, rows| {
                            for ((_, (rank, ad_id, clicks)), _) in updates {
                                rows.push_row([
                                    Value::Timestamp(start),
                                    Value::Timestamp(start + window.size_ms),
                                    Value::Integer(rank as u64),
                                    Value::Integer(ad_id),
                                    Value::Integer(clicks),
                                ]);
                            }
                        });
                    }
                    NodeOutput::Clicks(_) => unreachable!("validated: sinks read counts or top_n"),
                },
            }
        }
        Ok(ClickInputs { accepted: accepted_input, late: late_input, rejected: rejected_input })
    })?;
    Ok(ClickDataflow { inputs, probe, sinks: sink_set })
}

/// How many groups of ads the first ranking stage works on, so that a change re-ranks one
/// group rather than every ad.
const RANK_BUCKETS: u64 = 64;

/// The `n` most clicked ads of every sliding window, by clicks descending then ad_id ascending.
///
/// Stage one, per group of ads: the pane counts of the group, for every live pane, summed into
/// each window and ranked; stage two, per window: the groups' winners ranked again. A pane
/// count stays in the first stage until the last window containing it is final.
fn top_n<'s>(
    keys: VecCollection<'s, u64, GroupKey, isize>,
    clock: Clock,
    window: SlidingWindow,
    n: usize,
) -> VecCollection<'s, u64, RankedAd, isize> {
    let panes = keys.inner.map(|((pane, ad_id, _), time, clicks)| ((ad_id % RANK_BUCKETS, (pane, ad_id)), time, clicks));
    // The last window containing a pane starts at the pane's window-aligned start.
    let panes = retract_at_close(panes, move |(_, (pane, _))| clock.window_close(window, pane - pane % window.slide_ms));

    fn best(ads: impl Iterator<Item = (u64, u64)>, n: usize) -> Vec<(u64, u64)> {
        // (clicks, ad_id) ordered by clicks descending, then ad_id ascending.
        let mut ads: Vec<(u64, u64)> = ads.collect();
        let order = |a: &(u64, u64), b: &(u64, u64)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if ads.len() > n {
            ads.select_nth_unstable_by(n - 1, order);
            ads.truncate(n);
        }
        ads.sort_unstable_by(order);
        ads
    }

    panes
        .as_collection()
        .reduce(move |_bucket, pane_counts: &[(&(u64, u64), isize)], output: &mut Vec<((u64, u64, u64), isize)>| {
            let windows = WindowSums::new(pane_counts, clock, window);
            for (start, ads) in windows.each_window() {
                let ranked = best(ads, n);
                output.extend(ranked.into_iter().map(|(clicks, ad_id)| ((start, clicks, ad_id), 1)));
            }
        })
        .map(|(_bucket, (start, clicks, ad_id))| (start, (clicks, ad_id)))
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

/// Clicks per ad summed over any run of consecutive live panes, from per-ad prefix sums: a
/// window's clicks for an ad are two lookups, however many panes it spans.
struct WindowSums {
    clock: Clock,
    window: SlidingWindow,
    /// The live panes, ascending.
    panes: Vec<u64>,
    /// Every ad with clicks in a live pane, ascending.
    ads: Vec<u64>,
    /// `prefix[a * (panes + 1) + i]`: clicks of ad `a` in panes `0..i`.
    prefix: Vec<u64>,
}

impl WindowSums {
    /// From `((pane, ad_id), clicks)` values as a reduce sees them (sorted, consolidated).
    fn new(pane_counts: &[(&(u64, u64), isize)], clock: Clock, window: SlidingWindow) -> Self {
        let mut panes: Vec<u64> = pane_counts.iter().map(|(v, _)| v.0).collect();
        panes.dedup();
        let mut ads: Vec<u64> = pane_counts.iter().map(|(v, _)| v.1).collect();
        ads.sort_unstable();
        ads.dedup();
        let width = panes.len() + 1;
        let mut prefix = vec![0u64; ads.len() * width];
        let mut pane_index = 0;
        for ((pane, ad_id), clicks) in pane_counts.iter().map(|(v, c)| (**v, *c)) {
            while panes[pane_index] != pane {
                pane_index += 1;
            }
            let ad_index = ads.binary_search(&ad_id).expect("every ad was collected");
            prefix[ad_index * width + pane_index + 1] += clicks.max(0) as u64;
        }
        for row in prefix.chunks_mut(width) {
            for i in 1..width {
                row[i] += row[i - 1];
            }
        }
        WindowSums { clock, window, panes, ads, prefix }
    }

    /// Every window containing a live pane, with its `(clicks, ad_id)` for ads with clicks.
    fn each_window(&self) -> impl Iterator<Item = (u64, impl Iterator<Item = (u64, u64)> + '_)> + '_ {
        let mut starts: Vec<u64> = self.panes.iter().flat_map(|&p| self.clock.windows_of(self.window, p)).collect();
        starts.sort_unstable();
        starts.dedup();
        let width = self.panes.len() + 1;
        starts.into_iter().map(move |start| {
            let first = self.panes.partition_point(|&p| p < start);
            let end = self.panes.partition_point(|&p| p < start + self.window.size_ms);
            let sums = self.ads.iter().enumerate().filter_map(move |(a, &ad_id)| {
                let clicks = self.prefix[a * width + end] - self.prefix[a * width + first];
                (clicks > 0).then_some((clicks, ad_id))
            });
            (start, sums)
        })
    }
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
        let mut pending: BTreeMap<u64, (Capability<u64>, Vec<(D, isize)>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                let Some(now) = capability.retain_least(0) else { return };
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
                differential_dataflow::consolidation::consolidate(&mut retractions);
                let mut session = output.session(&capability);
                for (record, diff) in retractions {
                    session.give((record, close, diff));
                }
            }
        }
    })
}

/// Gathers a stream's updates on worker 0, groups them (by pane or window), and writes each
/// group's consolidated rows to the sink once the frontier passes the group's close time, when
/// no update for it can come any more. Groups are written in (close time, group) order.
#[allow(clippy::too_many_arguments)]
fn sink_when_final<'s, D>(
    stream: StreamVec<'s, u64, (D, u64, isize)>,
    name: &str,
    probe: &ProbeHandle<u64>,
    sinks: &Rc<RefCell<SinkSet>>,
    slot: Option<usize>,
    group_of: impl Fn(&D) -> (u64, u64) + 'static,
    mut to_rows: impl FnMut(u64, Vec<(D, isize)>, &mut Rows) + 'static,
) where
    D: differential_dataflow::ExchangeData,
{
    let sinks = Rc::clone(sinks);
    let mut pending: BTreeMap<(u64, u64), Vec<(D, isize)>> = BTreeMap::new();
    let stream = timely::dataflow::operators::Probe::probe_with(stream, probe);
    stream.sink(Exchange::new(|_| 0u64), &format!("Sink: {name}"), move |(input, frontier)| {
        input.for_each(|_capability, data| {
            for (record, _time, diff) in data.drain(..) {
                let (group, close) = group_of(&record);
                pending.entry((close, group)).or_default().push((record, diff));
            }
        });
        while let Some(entry) = pending.first_entry() {
            let (close, group) = *entry.key();
            if frontier.less_than(&close) {
                break;
            }
            let mut updates = entry.remove();
            differential_dataflow::consolidation::consolidate(&mut updates);
            let Some(slot) = slot else { continue };
            let mut rows = Rows::default();
            to_rows(group, updates, &mut rows);
            let mut sinks = sinks.borrow_mut();
            if sinks.error.is_none() {
                if let Err(error) = sinks.sinks[slot].write(rows) {
                    sinks.error = Some(error);
                }
            }
        }
    });
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
    columns.push(("clicks", ColumnKind::Integer));
    TableSchema::new(name, &columns, key_columns)
}

/// `window_start, window_end, rank, ad_id, clicks`.
pub fn top_schema(name: &str) -> TableSchema {
    use ColumnKind::*;
    TableSchema::new(
        name,
        &[("window_start", Timestamp), ("window_end", Timestamp), ("rank", Integer), ("ad_id", Integer), ("clicks", Integer)],
        3,
    )
}

/// The raw event's fields.
pub fn late_schema(name: &str) -> TableSchema {
    use ColumnKind::*;
    TableSchema::new(
        name,
        &[("ad_id", Integer), ("click_ts", Integer), ("user_id", Integer), ("ip", Text), ("country", Text)],
        0,
    )
}

/// `line, reason, raw`.
pub fn rejected_schema(name: &str) -> TableSchema {
    use ColumnKind::*;
    TableSchema::new(name, &[("line", Integer), ("reason", Text), ("raw", Text)], 0)
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
        assert_eq!(names(late_schema("l")), "ad_id,click_ts,user_id,ip,country");
        assert_eq!(names(rejected_schema("r")), "line,reason,raw");
    }
}
