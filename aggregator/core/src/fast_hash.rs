//! Hash maps for the engine's own state. Every analysis probes them once
//! per pod or variant, so their cost shows: with the standard SipHash,
//! hashing was about a sixth of an analysis of 10,000 pods. foldhash is
//! several times faster on short string keys; seeded from the operating
//! system's randomness (as the standard maps are), names an agent chooses
//! cannot be aimed at one bucket without knowing the seed. hashbrown's
//! `entry_ref` copies a key only when it is new. The pod store, which
//! agents fill directly, keeps the standard map.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;

pub type Map<K, V> = hashbrown::HashMap<K, V, Seeded>;
pub type Set<K> = hashbrown::HashSet<K, Seeded>;

/// foldhash with secret seeds: one per process and one per map.
#[derive(Clone, Debug)]
pub struct Seeded(SeedableRandomState);

impl Default for Seeded {
    fn default() -> Self {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(random()));
        Seeded(SeedableRandomState::with_seed(random(), shared))
    }
}

impl BuildHasher for Seeded {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// 64 bits from the standard library's randomly keyed SipHash: each
/// `RandomState` has keys of its own.
fn random() -> u64 {
    RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_a_seed_of_its_own() {
        let (a, b) = (Seeded::default(), Seeded::default());
        assert_eq!(a.hash_one("pod-0"), a.hash_one("pod-0"));
        assert_ne!(a.hash_one("pod-0"), b.hash_one("pod-0"));
    }
}
