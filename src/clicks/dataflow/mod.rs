//! The ad-click dataflow, built from a spec: counts per pane, top-N over sliding windows, and
//! the late and rejected side outputs, each ending in a sink on worker 0.
//!
//! The results dataflow runs in watermark time; a second, small dataflow runs in rounds (see
//! `driver/`) and carries the round reports and the late and rejected records, so that these
//! reach worker 0 by the next round whatever the watermark does.
//!
//! The logical time of the results is watermark time (see [`crate::clicks::time`]). Accepted clicks enter as
//! records projected to the fields the spec uses, with the event time replaced by the pane
//! start, and with a multiplicity: the number of such clicks. So a `count` is the collection
//! itself, consolidated (by hashing, on the worker that owns the ad); a ranking keeps every
//! window's best ads per worker incrementally, and differential's `reduce` merges the workers'
//! candidates.
//!
//! The work is in parsing and pre-aggregating the clicks (the driver), then in the (pane, ad[,
//! country]) groups, which every stage after the driver handles with hash maps or sorted vectors
//! rather than differential's arrangements; sorting and merging a final pane's rows is spread
//! over the workers, worker 0 only merges.
//!
//! State is bounded by the open panes: a ranking drops a window's state when it is final and
//! its candidates are retracted then (the "temporal filter" idiom: an update is inserted at `t`
//! and removed at its close time), and the sinks hold each pane or window only until it is
//! final.
//!
//! This module wires the spec's nodes and sinks; each operator has its own file (see
//! `CONTEXT.md`).

mod consolidate_by_ad;
pub mod questions;
mod retract_at_close;
mod schemas;
mod sink;
mod sink_changes;
mod sink_final;
mod stash;
mod top_n;

pub use schemas::{count_schema, late_schema, rejected_schema, sink_schema, top_schema};
pub use sink::{Emit, SinkFactory, SinkSet};

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::Inspect;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Input as TimelyInput, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Scope, StreamVec};
use timely::worker::Worker;

use super::event::ClickEvent;
use super::time::Clock;
use crate::clicks::spec::{DataflowSpec, Field, Op, SinkInput, SlidingWindow};
use crate::sinks::Rows;
use consolidate_by_ad::ConsolidateByAd;
use questions::{AnswerQuestions, Catalog, Pending, Question};
use retract_at_close::RetractAtClose;
use schemas::{count_row, late_row, ranked_row, rejected_row};
use sink::{Group, SinkTarget, append_sink};
use sink_changes::sink_changes;
use sink_final::{final_parts, sink_final};
use top_n::TopN;

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

/// How the records of a source are located: a file's line numbers, or a topic's partitions,
/// their incarnations (see `RestoredPartition::incarnation`) and offsets. It shapes the late
/// and rejected tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    Lines,
    Offsets {
        topic: String,
        /// Each partition's incarnation other than 0.
        incarnations: std::collections::BTreeMap<u32, u32>,
    },
}

impl Positions {
    /// The positions of `topic`, every partition in its first incarnation.
    pub fn offsets(topic: &str) -> Self {
        Positions::Offsets { topic: topic.to_string(), incarnations: Default::default() }
    }
}

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
    /// Questions to the counts (when built with them, see [`questions`]).
    pub questions: Option<QuestionInput>,
}

/// The question input of a results dataflow, and the questions worker 0 waits to answer.
pub struct QuestionInput {
    pub input: InputHandle<u64, CapacityContainerBuilder<Vec<Question>>>,
    pub pending: Pending,
}

/// What a node of the spec produces.
enum NodeOutput<'s> {
    Clicks(VecCollection<'s, u64, ClickEvent, isize>),
    Counts { second: Option<Field>, keys: VecCollection<'s, u64, GroupKey, isize> },
    Ranked { window: SlidingWindow, ranked: VecCollection<'s, u64, RankedAd, isize> },
}

/// What wiring the spec's nodes and sinks needs, shared by both dataflows.
struct Wiring<'a> {
    spec: &'a DataflowSpec,
    positions: &'a Positions,
    clock: Clock,
    emit: Emit,
    /// Probes every results sink.
    probe: ProbeHandle<u64>,
    sink_set: Rc<RefCell<SinkSet>>,
    make_sink: Option<SinkFactory<'a>>,
    /// Wire the question input and the arrangements that answer it.
    questions: bool,
}

/// Builds the dataflows of `spec` on this worker; `R` is the driver's round report.
pub fn build<R: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    spec: &DataflowSpec,
    positions: &Positions,
    emit: Emit,
    make_sink: Option<SinkFactory>,
) -> anyhow::Result<ClickDataflow<R>> {
    build_with_questions(worker, spec, positions, emit, make_sink, false)
}

/// [`build`], and with `questions` the counts can also be asked (see [`questions`]).
pub fn build_with_questions<R: timely::ExchangeData + Clone>(
    worker: &mut Worker,
    spec: &DataflowSpec,
    positions: &Positions,
    emit: Emit,
    make_sink: Option<SinkFactory>,
    questions: bool,
) -> anyhow::Result<ClickDataflow<R>> {
    let wiring = Wiring {
        spec,
        positions,
        clock: Clock::new(spec.time),
        emit,
        probe: ProbeHandle::new(),
        sink_set: Rc::new(RefCell::new(SinkSet::default())),
        make_sink,
        questions,
    };
    let rounds = worker.dataflow::<u64, _, _>(|scope| wiring.rounds(scope))?;
    let (accepted, questions) = worker.dataflow::<u64, _, _>(|scope| wiring.results(scope))?;
    let Wiring { probe, sink_set, .. } = wiring;
    Ok(ClickDataflow { accepted, probe, rounds, sinks: sink_set, questions })
}

impl<'a> Wiring<'a> {
    /// The round-timed dataflow: the reports to every worker, and the late and rejected records
    /// to their sinks.
    fn rounds<R: timely::ExchangeData + Clone>(&self, scope: Scope<'_, u64>) -> anyhow::Result<RoundInputs<R>> {
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
        for sink_spec in &self.spec.sinks {
            let name = sink_spec.name.as_str();
            match &sink_spec.input {
                SinkInput::Late => {
                    let slot = self.attach(sink_spec)?;
                    let positions = self.positions.clone();
                    let to_row = move |late: &LateClick, rows: &mut _| late_row(&positions, late, rows);
                    append_sink(late_stream.clone(), name, &round_probe, &self.sink_set, slot, to_row);
                }
                SinkInput::Rejected => {
                    let slot = self.attach(sink_spec)?;
                    let positions = self.positions.clone();
                    let to_row = move |line: &RejectedLine, rows: &mut _| rejected_row(&positions, line, rows);
                    append_sink(rejected_stream.clone(), name, &round_probe, &self.sink_set, slot, to_row);
                }
                SinkInput::Node(_) => {}
            }
        }
        Ok(RoundInputs { reports, late, rejected, probe: round_probe, received })
    }

    /// The results dataflow: the spec's nodes on the accepted clicks, a sink on each node a
    /// spec sink reads, and the questions when asked for.
    fn results(
        &self,
        scope: Scope<'_, u64>,
    ) -> anyhow::Result<(InputSession<u64, ClickEvent, isize>, Option<QuestionInput>)> {
        let (accepted_input, accepted) = scope.new_collection::<ClickEvent, isize>();
        let outputs = self.nodes(accepted);
        let questions = self.questions.then(|| self.questions(scope, &outputs));
        for sink_spec in &self.spec.sinks {
            let SinkInput::Node(node) = &sink_spec.input else {
                continue;
            };
            match &outputs[node.as_str()] {
                NodeOutput::Counts { second, keys } => self.sink_counts(sink_spec, *second, keys.clone())?,
                NodeOutput::Ranked { window, ranked } => self.sink_ranked(sink_spec, *window, ranked.clone())?,
                NodeOutput::Clicks(_) => unreachable!("validated: sinks read counts or top_n"),
            }
        }
        Ok((accepted_input, questions))
    }

    /// The question input, joined against an arrangement of each askable count's panes (kept
    /// for the spec's retention after their end), the answers gathered on worker 0.
    fn questions(&self, scope: Scope<'_, u64>, outputs: &BTreeMap<&str, NodeOutput<'_>>) -> QuestionInput {
        let (input, asked) = scope.new_input::<Vec<Question>>();
        let routed = questions::route(asked, scope.peers());
        let (pane_ms, retention_ms) = (self.spec.time.pane_ms, self.spec.queries.retention_ms);
        let mut partials = Vec::new();
        for (index, (name, _)) in Catalog::of(self.spec).counts.iter().enumerate() {
            let Some(NodeOutput::Counts { keys, .. }) = outputs.get(name.as_str()) else {
                unreachable!("the catalog lists counts")
            };
            let panes = keys
                .inner
                .clone()
                .retract_at_close(move |key: &GroupKey| key.0 + pane_ms + retention_ms)
                .as_collection()
                .map(|(pane, ad_id, second)| ((second, ad_id), pane))
                .arrange_by_key_named("PanesForQuestions");
            partials.push(routed.clone().answer_questions(index as u32, &panes));
        }
        let pending = Pending::default();
        let all = partials.into_iter().reduce(|all, more| all.concat(more));
        if let Some(all) = all {
            questions::gather_answers(all, pending.clone());
        }
        QuestionInput { input, pending }
    }

    /// The spec's nodes, in order, each reading the output of one before it (or the source).
    fn nodes<'s>(&self, accepted: VecCollection<'s, u64, ClickEvent, isize>) -> BTreeMap<&'a str, NodeOutput<'s>> {
        let spec = self.spec;
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
                    NodeOutput::Counts { second, keys: keys.consolidate_by_ad() }
                }
                Op::TopN { input, window, n } => {
                    let Some(NodeOutput::Counts { keys, .. }) = outputs.get(input.as_str()) else {
                        unreachable!("validated: top_n reads a count")
                    };
                    NodeOutput::Ranked { window: *window, ranked: keys.clone().top_n(self.clock, *window, *n) }
                }
            };
            outputs.insert(node.name.as_str(), output);
        }
        outputs
    }

    /// A count's sink: its rows by pane, its updates held on the ad's worker.
    fn sink_counts(
        &self,
        sink_spec: &crate::clicks::spec::SinkSpec,
        second: Option<Field>,
        keys: VecCollection<'_, u64, GroupKey, isize>,
    ) -> anyhow::Result<()> {
        let target = self.target(sink_spec)?;
        let (clock, pane_ms) = (self.clock, self.spec.time.pane_ms);
        let group =
            move |key: &GroupKey| Group { id: key.0, complete: key.0 + pane_ms, close: clock.pane_close(key.0) };
        let route = |key: &GroupKey| exchange_hash(key.1);
        sink_by_group(keys.inner, &target, group, route, move |key, clicks, rows| count_row(second, key, clicks, rows));
        Ok(())
    }

    /// A ranking's sink: its rows by window, its updates held on the window's worker.
    fn sink_ranked(
        &self,
        sink_spec: &crate::clicks::spec::SinkSpec,
        window: SlidingWindow,
        ranked: VecCollection<'_, u64, RankedAd, isize>,
    ) -> anyhow::Result<()> {
        let target = self.target(sink_spec)?;
        let clock = self.clock;
        let group = move |ranked: &RankedAd| Group {
            id: ranked.0,
            complete: ranked.0 + window.size_ms,
            close: clock.window_close(window, ranked.0),
        };
        let route = |ranked: &RankedAd| exchange_hash(ranked.0);
        sink_by_group(ranked.inner, &target, group, route, move |ranked, _, rows| ranked_row(window, ranked, rows));
        Ok(())
    }

    /// Where the rows of a node's spec sink go: its slot among the sinks, and this dataflow's
    /// probe and emit mode.
    fn target<'t>(&'t self, sink_spec: &'t crate::clicks::spec::SinkSpec) -> anyhow::Result<SinkTarget<'t>> {
        let slot = self.attach(sink_spec)?;
        Ok(SinkTarget {
            name: sink_spec.name.as_str(),
            probe: &self.probe,
            sinks: &self.sink_set,
            slot,
            emit: self.emit,
        })
    }

    /// Makes the sink of `sink_spec` on worker 0 and returns its slot; `None` on other workers.
    fn attach(&self, sink_spec: &crate::clicks::spec::SinkSpec) -> anyhow::Result<Option<usize>> {
        let schema = sink_schema(self.spec, sink_spec, self.positions);
        let Some(make) = self.make_sink else {
            return Ok(None);
        };
        let mut sinks = self.sink_set.borrow_mut();
        sinks.sinks.push(make(sink_spec, &schema)?);
        Ok(Some(sinks.sinks.len() - 1))
    }
}

/// The value timely routes a record by, from the number that decides its worker (an ad_id, a
/// window start): a multiplicative hash, because timely routes by the low bits, and ids that
/// share a residue (window starts are multiples of the slide) would all land on one worker.
fn exchange_hash(value: u64) -> u64 {
    value.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
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
