//! Maps and sets keyed by 64-bit ids (tuple-tree roots, message ids), with a
//! hash that costs one multiply instead of SipHash's rounds.
//!
//! Roots are random, so they need no DoS-resistant hash; message ids come
//! from the spout and may be sequential, which the multiply spreads over
//! the high bits that hashbrown uses for its control bytes and the low bits
//! it uses for the bucket. The acker and the spout side of acking look up
//! every root once or more per tuple, so this is on the hot path (the
//! profile in `docs/benchmarks.md`).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for one `u64` key.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 32)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u64; fold them in, FNV-style.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by a 64-bit id.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
/// A set of 64-bit ids.
pub(crate) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_buckets_and_control_bytes() {
        let b = BuildHasherDefault::<IdHasher>::default();
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
