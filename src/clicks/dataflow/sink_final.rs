//! `Emit::Final`: each worker sums and sorts its part of a pane or window once it is final
//! (`final_parts`); worker 0 merges one sorted run per worker and writes the rows (`sink_final`).

use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::consolidation::consolidate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::sink::{Group, GroupOrder, SinkTarget, sum_updates, write_rows, written_below_frontier};
use super::stash::Stash;
use crate::sinks::Rows;

/// `Emit::Final`, on every worker: its part of each group, summed and sorted once the group is
/// final, sent on (at the close time) as one run. Sorting where the updates are spreads that
/// work over the workers; worker 0 only merges one run per worker.
///
/// No update comes for a group at or after its close time in this mode: the driver accepts no
/// click for a final pane, and a ranking drops what changes at close.
pub(super) fn final_parts<'s, D>(
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
        let mut groups: Stash<GroupOrder, Vec<(D, isize)>> = Stash::default();
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                for (record, time, diff) in data.drain(..) {
                    let group = group_of(&record);
                    let at = group.close.max(time);
                    groups.entry((group.close, group.id), || capability.delayed(&at, 0)).push((record, diff));
                }
            });
            for (key, capability, mut updates) in groups.release(|(close, _)| !frontier.less_than(close)) {
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
pub(super) fn sink_final<'s, D>(
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
