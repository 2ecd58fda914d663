//! `.retract_at_close(..)`: every update passed through, and retracted again at its close time
//! (the "temporal filter" idiom that frees a ranking's state when its window is final).

use differential_dataflow::consolidation::consolidate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use super::stash::Stash;

/// Extension trait for the `retract_at_close` method on a stream of updates.
pub trait RetractAtClose<D> {
    /// Passes every update through, and retracts it again at its close time (`close_of`). The
    /// retractions wait here, consolidated, and leave only when the frontier reaches their
    /// time: sent at once, they would sit in the next operator's batcher and be re-sorted at
    /// every tick until then.
    fn retract_at_close(self, close_of: impl Fn(&D) -> u64 + 'static) -> Self;
}

impl<'s, D> RetractAtClose<D> for StreamVec<'s, u64, (D, u64, isize)>
where
    D: differential_dataflow::Data,
{
    fn retract_at_close(self, close_of: impl Fn(&D) -> u64 + 'static) -> Self {
        self.unary_frontier::<CapacityContainerBuilder<Vec<_>>, _, _, _>(Pipeline, "RetractAtClose", |_, _| {
            let mut pending: Stash<u64, Vec<(D, isize)>> = Stash::default();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    let Some(now) = capability.retain_least(0) else {
                        return;
                    };
                    let mut session = output.session(&now);
                    for (record, time, diff) in data.drain(..) {
                        let close = close_of(&record);
                        pending.entry(close, || now.delayed(&close)).push((record.clone(), -diff));
                        session.give((record, time, diff));
                    }
                });
                for (close, capability, mut retractions) in pending.release(|close| !frontier.less_than(close)) {
                    consolidate(&mut retractions);
                    let mut session = output.session(&capability);
                    for (record, diff) in retractions {
                        session.give((record, close, diff));
                    }
                }
            }
        })
    }
}
