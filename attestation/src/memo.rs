//! A bounded per-process memo for answers that depend only on their inputs' bytes (a decoded
//! certificate, a signature check, parsed collateral), keyed by digests of those bytes: a
//! verifier that sees the same chain or collateral with every request does the work once.
//! Bounded: when full it starts over, so a caller fed endless distinct inputs holds at most
//! `max` entries. A poisoned lock only means no memo, never a wrong answer.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, OnceLock};

pub(crate) struct Memo<K, V> {
    map: OnceLock<Mutex<HashMap<K, V>>>,
    max: usize,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    pub(crate) const fn new(max: usize) -> Self {
        Self {
            map: OnceLock::new(),
            max,
        }
    }

    fn map(&self) -> &Mutex<HashMap<K, V>> {
        self.map.get_or_init(Default::default)
    }

    fn get(&self, key: &K) -> Option<V> {
        self.map().lock().ok().and_then(|map| map.get(key).cloned())
    }

    fn insert(&self, key: K, value: V) {
        if let Ok(mut map) = self.map().lock() {
            if map.len() >= self.max {
                map.clear();
            }
            map.insert(key, value);
        }
    }

    /// The remembered answer for `key`, or `compute`'s, then remembered.
    pub(crate) fn get_or(&self, key: K, compute: impl FnOnce() -> V) -> V {
        if let Some(known) = self.get(&key) {
            return known;
        }
        let value = compute();
        self.insert(key, value.clone());
        value
    }

    /// As [`Memo::get_or`] for a fallible `compute`: errors are returned, never remembered.
    pub(crate) fn get_or_try<E>(
        &self,
        key: K,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if let Some(known) = self.get(&key) {
            return Ok(known);
        }
        let value = compute()?;
        self.insert(key, value.clone());
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Memo;
    use std::cell::Cell;

    #[test]
    fn remembers_answers_not_errors_and_stays_bounded() {
        static MEMO: Memo<u32, u32> = Memo::new(2);
        let calls = Cell::new(0);
        let square = |n: u32| {
            calls.set(calls.get() + 1);
            n * n
        };
        assert_eq!(MEMO.get_or(3, || square(3)), 9);
        assert_eq!(MEMO.get_or(3, || square(3)), 9);
        assert_eq!(calls.get(), 1, "the second answer came from the memo");
        assert_eq!(MEMO.get_or_try(4, || Err::<u32, &str>("no")), Err("no"));
        assert_eq!(
            MEMO.get_or_try(4, || Ok::<u32, &str>(16)),
            Ok(16),
            "errors are not kept"
        );
        // Full (3 and 4): the next entry starts over, so 3 is computed again.
        MEMO.get_or(5, || square(5));
        MEMO.get_or(3, || square(3));
        assert_eq!(calls.get(), 3);
    }
}
