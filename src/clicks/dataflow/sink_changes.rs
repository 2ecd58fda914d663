//! `Emit::Changes`: worker 0 writes the rows of a pane or window whose value changed, from
//! when it is complete until it is final (for tables that take upserts).

use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::StreamVec;

use super::sink::{Group, GroupOrder, SinkTarget, sum_updates, write_rows, written_below_frontier};
use crate::sinks::Rows;

/// `Emit::Changes`, on worker 0: gathers the updates by group and writes the rows whose value
/// changed, whenever the frontier has passed the group's completion time. A group's first rows
/// are fresh when it completes after `restored`: no committed checkpoint can hold rows of it.
pub(super) fn sink_changes<'s, D>(
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
