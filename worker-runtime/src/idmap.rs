//! Maps and sets keyed by 64-bit ids (tuple-tree roots, message ids), with a
//! hash that costs one multiply instead of SipHash's rounds
//! ([`KeyHasher`]).
//!
//! Roots are random, so they need no DoS-resistant hash; message ids come
//! from the spout and may be sequential, which the multiply spreads over
//! the high bits that hashbrown uses for its control bytes and the low bits
//! it uses for the bucket. The acker and the spout side of acking look up
//! every root once or more per tuple, so this is on the hot path (the
//! profile in `docs/benchmarks.md`).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use crate::tuple::KeyHasher;

/// A map keyed by a 64-bit id.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;
/// A set of 64-bit ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<KeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_buckets_and_control_bytes() {
        let b = BuildHasherDefault::<KeyHasher>::default();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for id in 0..1024u64 {
            let h = b.hash_one(id);
            low.insert(h & 1023);
            high.insert(h >> 57);
        }
        // A good spread fills most of 1,024 buckets, and all 128 top-7-bit tags.
        assert!(low.len() > 600, "low bits: {} distinct", low.len());
        assert_eq!(high.len(), 128);
    }

    #[test]
    fn maps_behave_as_maps() {
        let mut m: IdMap<u32> = IdMap::default();
        for i in 0..10_000u64 {
            m.insert(i.wrapping_mul(0xDEAD_BEEF), i as u32);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&(7u64.wrapping_mul(0xDEAD_BEEF))), Some(&7));
        let s: IdSet = (0..100).collect();
        assert!(s.contains(&42) && !s.contains(&100));
    }
}
