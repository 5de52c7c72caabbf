//! Keyed accumulators that keep their memory from one scrape to the next.

use crate::parse::{unescape_into, unescaped_eq};

/// `v` with exactly `n` elements, keeping the existing ones (and their
/// allocations) for the caller to overwrite.
pub(super) fn resized<T: Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    v.truncate(n);
    v.resize_with(n, T::default);
    v
}

/// Puts an accumulator back to its empty state, keeping its allocations.
pub(super) trait Reset {
    fn reset(&mut self);
}

/// Distinct keys one scrape may hold in one set (models, engines of a model,
/// pools, queues): the aggregator takes 64 models a sample, and the bound
/// keeps a hostile body's lookups linear in its length.
pub const MAX_KEYS: usize = 64;
/// Longest key (a model, engine, pool or queue name) read from a label: the
/// aggregator takes names of at most 253 bytes, and a longer label must not
/// be copied into the slots and the sample.
pub const MAX_KEY_BYTES: usize = 253;

/// Why a key was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// A key beyond [`MAX_KEYS`].
    TooMany,
    /// A key of this many bytes, over [`MAX_KEY_BYTES`].
    TooLong(usize),
}

/// Accumulators keyed by a label value, in order of first appearance.
/// `clear` keeps the entries and their key strings, so a key already seen in
/// an earlier scrape costs no allocation; lookups compare the borrowed,
/// still-escaped label value against the stored keys. Lookup is linear: a pod
/// serves a handful of models, engines or pools, and at most [`MAX_KEYS`].
#[derive(Debug)]
pub(super) struct Slots<T> {
    entries: Vec<(String, T)>,
    len: usize,
    /// The first key dropped this scrape, and why.
    overflow: Option<Overflow>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            len: 0,
            overflow: None,
        }
    }
}

impl<T: Default + Reset> Slots<T> {
    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.overflow = None;
    }

    /// Why a key was dropped since `clear`, if one was.
    pub(super) fn overflow(&self) -> Option<Overflow> {
        self.overflow
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The accumulator for the escaped label value `raw`, reset when new;
    /// `None` for a key over [`MAX_KEY_BYTES`] or a new one beyond
    /// [`MAX_KEYS`].
    pub(super) fn entry(&mut self, raw: &str) -> Option<&mut T> {
        if raw.len() > MAX_KEY_BYTES {
            self.overflow.get_or_insert(Overflow::TooLong(raw.len()));
            return None;
        }
        let live = &self.entries[..self.len];
        let index = match live.iter().position(|(key, _)| unescaped_eq(raw, key)) {
            Some(i) => i,
            None if self.len == MAX_KEYS => {
                self.overflow.get_or_insert(Overflow::TooMany);
                return None;
            }
            None => {
                if self.len == self.entries.len() {
                    self.entries.push(Default::default());
                }
                let (key, value) = &mut self.entries[self.len];
                key.clear();
                unescape_into(raw, key);
                value.reset();
                self.len += 1;
                self.len - 1
            }
        };
        Some(&mut self.entries[index].1)
    }

    /// The accumulator for the (unescaped) `key`, if seen in this scrape.
    pub(super) fn get(&self, key: &str) -> Option<&T> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries[..self.len]
            .iter()
            .map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Sum(f64);

    impl Reset for Sum {
        fn reset(&mut self) {
            self.0 = 0.0;
        }
    }

    #[test]
    fn keys_are_unescaped_and_kept_in_first_seen_order() {
        let mut slots = Slots::<Sum>::default();
        slots.entry("b").unwrap().0 += 1.0;
        slots.entry(r#"a\"q"#).unwrap().0 += 2.0;
        slots.entry("b").unwrap().0 += 3.0;
        let got: Vec<_> = slots.iter().map(|(k, v)| (k.to_owned(), v.0)).collect();
        assert_eq!(got, [("b".to_owned(), 4.0), ("a\"q".to_owned(), 2.0)]);
        assert_eq!(slots.get("a\"q"), Some(&Sum(2.0)));
        assert_eq!(slots.get(r#"a\"q"#), None);
    }

    #[test]
    fn clear_forgets_values_but_reuses_memory() {
        let mut slots = Slots::<Sum>::default();
        slots.entry("model-a").unwrap().0 = 5.0;
        let key_ptr = slots.entries[0].0.as_ptr();
        slots.clear();
        assert_eq!(slots.len(), 0);
        assert_eq!(slots.get("model-a"), None);
        // A different key of the same length reuses the stored string.
        assert_eq!(slots.entry("model-b"), Some(&mut Sum(0.0)));
        assert_eq!(slots.entries[0].0.as_ptr(), key_ptr);
        assert_eq!(
            slots.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["model-b"]
        );
    }

    #[test]
    fn keys_beyond_the_cap_are_dropped_and_flagged() {
        let mut slots = Slots::<Sum>::default();
        for i in 0..MAX_KEYS {
            slots.entry(&format!("m{i}")).unwrap().0 += 1.0;
        }
        assert_eq!(slots.overflow(), None);
        assert!(slots.entry("one-too-many").is_none());
        assert_eq!(slots.overflow(), Some(Overflow::TooMany));
        // Known keys still accumulate.
        slots.entry("m0").unwrap().0 += 1.0;
        assert_eq!(slots.get("m0"), Some(&Sum(2.0)));
        slots.clear();
        assert_eq!(slots.overflow(), None);
        assert!(slots.entry(&"x".repeat(MAX_KEY_BYTES + 1)).is_none());
        assert_eq!(slots.overflow(), Some(Overflow::TooLong(MAX_KEY_BYTES + 1)));
        assert_eq!(slots.len(), 0, "an over-long key is not stored");
    }
}
