//! `.top_n(..)`: the `n` most clicked ads of every sliding window, in two stages; owns the
//! per-worker rankings (`Rankings`, one `WindowBest` per open window) of stage one.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Filter;

use super::retract_at_close::RetractAtClose;
use super::stash::Stash;
use super::{GroupKey, RankedAd, exchange_hash};
use crate::clicks::spec::SlidingWindow;
use crate::clicks::time::Clock;

/// A worker's candidate for a window's ranking: (window start, (clicks, ad_id)).
type Candidate = (u64, (u64, u64));

/// Extension trait for the `top_n` method on a count's collection.
pub trait TopN<'s> {
    /// The `n` most clicked ads of every sliding window, by clicks descending then ad_id
    /// ascending.
    ///
    /// Stage one, on the worker that owns each ad ([`local_top_n`]): every window's clicks per
    /// ad, kept up to date as pane counts change, and the window's `n` best of this worker's
    /// ads. Stage two, per window: the workers' candidates ranked again (the overall best `n`
    /// are among them, since an ad beaten by fewer than `n` ads overall is beaten by fewer on
    /// its worker). A candidate leaves stage two when its window is final, so stage two's state
    /// is freed.
    fn top_n(self, clock: Clock, window: SlidingWindow, n: usize) -> VecCollection<'s, u64, RankedAd, isize>;
}

impl<'s> TopN<'s> for VecCollection<'s, u64, GroupKey, isize> {
    fn top_n(self, clock: Clock, window: SlidingWindow, n: usize) -> VecCollection<'s, u64, RankedAd, isize> {
        let candidates = local_top_n(self.inner, clock, window, n);
        let candidates = candidates.retract_at_close(move |(start, _)| clock.window_close(window, *start));
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

/// Stage one of [`TopN::top_n`]: for every open window, the `n` best ads of this worker, sent
/// as changes (`((window start, (clicks, ad_id)), time, ±1)`) whenever they change.
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
        let mut pending: Stash<u64, Vec<(u64, u64, isize)>> = Stash::default();
        let mut rankings = Rankings { clock, window, n, panes: FxHashMap::default(), windows: BTreeMap::new() };
        move |(input, frontier), output| {
            input.for_each(|capability, data| {
                for ((pane, ad_id, _), time, diff) in data.drain(..) {
                    pending.entry(time, || capability.delayed(&time, 0)).push((pane, ad_id, diff));
                }
            });
            for (time, capability, updates) in pending.release(|time| !frontier.less_equal(time)) {
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
