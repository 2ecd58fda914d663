//! The one hold-by-time helper of the dataflow's operators (after timely's `delay`): data held
//! back under a key that orders by time, each key with the capability to send its data then,
//! and released in key order once the input frontier says the key is due.

use std::collections::BTreeMap;

use timely::dataflow::operators::Capability;

/// What an operator holds back, by key (a time, or a key whose first part is a time), with the
/// capability to send it then.
///
/// An operator adds to a key's data as updates arrive ([`Stash::entry`]) and, once per
/// activation, takes out what its frontier has made due ([`Stash::release`]): ascending keys,
/// stopping at the first key that is not due, so data leaves in time order.
pub struct Stash<K, V> {
    held: BTreeMap<K, (Capability<u64>, V)>,
}

impl<K, V> Default for Stash<K, V> {
    fn default() -> Self {
        Stash { held: BTreeMap::new() }
    }
}

impl<K: Ord, V: Default> Stash<K, V> {
    /// The data held under `key`; when there is none yet, an empty one held with the
    /// capability `capability` makes (called only then).
    pub fn entry(&mut self, key: K, capability: impl FnOnce() -> Capability<u64>) -> &mut V {
        &mut self.held.entry(key).or_insert_with(|| (capability(), V::default())).1
    }

    /// The least key held, if any.
    pub fn first_key(&self) -> Option<&K> {
        self.held.keys().next()
    }

    /// Takes out, in ascending key order, each key's capability and data while `due(key)`
    /// holds; the first key that is not due and every later one stay held.
    pub fn release(&mut self, due: impl Fn(&K) -> bool) -> impl Iterator<Item = (K, Capability<u64>, V)> {
        std::iter::from_fn(move || {
            let entry = self.held.first_entry()?;
            if !due(entry.key()) {
                return None;
            }
            let (key, (capability, data)) = entry.remove_entry();
            Some((key, capability, data))
        })
    }
}
