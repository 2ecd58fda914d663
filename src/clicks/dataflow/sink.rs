//! The sinks' shared parts: worker 0's sinks (`SinkSet`), where and when a spec sink's rows
//! go (`SinkTarget`, `Emit`), the sink operator every sink runs in (`written_below_frontier`),
//! and the round-timed append sink of the late and rejected records. `sink_final.rs` and
//! `sink_changes.rs` build on these; `mod.rs` picks one of them per sink (`sink_by_group`).

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::consolidation::consolidate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{ProbeHandle, StreamVec};

use crate::sinks::{Rows, Sink, TableSchema};

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
pub type SinkFactory<'a> = &'a dyn Fn(&crate::clicks::spec::SinkSpec, &TableSchema) -> anyhow::Result<Box<dyn Sink>>;

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

/// The pane or window a result row belongs to, and the watermark times that matter for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub(super) id: u64,
    /// When the watermark reaches this, the group's first result is out (`Emit::Changes`).
    pub(super) complete: u64,
    /// When the watermark reaches this, the group is final and its state dropped.
    pub(super) close: u64,
}

/// Where the rows of a spec sink go, and when.
#[derive(Clone, Copy)]
pub(super) struct SinkTarget<'a> {
    /// The spec sink's name, for the operators' names.
    pub(super) name: &'a str,
    /// Passes a time once every row for earlier times has been written.
    pub(super) probe: &'a ProbeHandle<u64>,
    /// Worker 0's sinks, and this sink's slot among them (`None` on other workers).
    pub(super) sinks: &'a Rc<RefCell<SinkSet>>,
    pub(super) slot: Option<usize>,
    pub(super) emit: Emit,
}

/// A group's key in close-time order: (close, group id).
pub(super) type GroupOrder = (u64, u64);

/// Sorts `updates` by record and sums each record's updates into one, dropping zeros.
pub(super) fn sum_updates<D: Ord>(updates: &mut Vec<(D, isize)>) {
    // Unstable sorting is the faster; the stable sort in `consolidate` then meets one run.
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    consolidate(updates);
}

/// Runs `logic` (on what arrived, and the input frontier) as a sink on worker 0 whose (empty)
/// output, probed by `probe`, advances only once `logic` has run with the input frontier there:
/// a probe that has passed a time means that everything the sink writes for earlier times has
/// been written, not merely sent.
pub(super) fn written_below_frontier<'s, D>(
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
pub(super) fn write_rows(sinks: &Rc<RefCell<SinkSet>>, slot: Option<usize>, rows: Rows) {
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
pub(super) fn append_sink<'s, D>(
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
