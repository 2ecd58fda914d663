//! `.consolidate_by_ad()`: a count's updates summed per time on the worker that owns each ad.

use differential_dataflow::{AsCollection, VecCollection};
use rustc_hash::FxHashMap;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::stash::Stash;
use super::{GroupKey, exchange_hash};

/// Extension trait for the `consolidate_by_ad` method on a count's collection.
pub trait ConsolidateByAd<'s> {
    /// Consolidates a count's updates on the worker that owns each ad: all updates of a time
    /// are summed in a hash map and leave, one per changed group, once the frontier has passed
    /// that time. This is what differential's `consolidate` does, without sorting: nothing
    /// downstream needs the updates in order (the ranking and the sinks keep their own state),
    /// and hashing the few million groups of a tick costs a fraction of merge-sorting them.
    fn consolidate_by_ad(self) -> VecCollection<'s, u64, GroupKey, isize>;
}

impl<'s> ConsolidateByAd<'s> for VecCollection<'s, u64, GroupKey, isize> {
    fn consolidate_by_ad(self) -> VecCollection<'s, u64, GroupKey, isize> {
        let route = Exchange::new(|((_, ad_id, _), _, _): &(GroupKey, u64, isize)| exchange_hash(*ad_id));
        self.inner
            .unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(route, "ConsolidateByAd", |_, _| {
                let mut pending: Stash<u64, FxHashMap<GroupKey, isize>> = Stash::default();
                move |(input, frontier), output| {
                    input.for_each(|capability, data| {
                        for (key, time, diff) in data.drain(..) {
                            let sums = pending.entry(time, || capability.delayed(&time, 0));
                            *sums.entry(key).or_insert(0) += diff;
                        }
                    });
                    for (time, capability, sums) in pending.release(|time| !frontier.less_equal(time)) {
                        let mut session = output.session(&capability);
                        for (key, diff) in sums.into_iter().filter(|(_, diff)| *diff != 0) {
                            session.give((key, time, diff));
                        }
                    }
                }
            })
            .as_collection()
    }
}
