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

/// A 64-bit id as a map key, aligned to 4 bytes instead of 8, so that a
/// slot of it and a 12-byte value is 20 bytes rather than 24: memory per
/// open tuple tree is two such slots (the spout's and the acker's), and
/// issue 15 bounds it (`cargo bench -p squall-examples --bench open_trees`).
/// x86-64 and aarch64 load a 4-aligned `u64` at full speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, packed(4))]
pub(crate) struct Id(pub(crate) u64);

/// A map keyed by a 64-bit id.
pub(crate) type IdMap<V> = HashMap<Id, V, BuildHasherDefault<KeyHasher>>;
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
    fn an_id_and_a_12_byte_value_make_a_20_byte_slot() {
        #[repr(C, packed(4))]
        struct Twelve(u64, u32);
        assert_eq!(std::mem::size_of::<Id>(), 8);
        assert_eq!(std::mem::size_of::<(Id, Twelve)>(), 20);
        // An id hashes as its u64 does.
        let b = BuildHasherDefault::<KeyHasher>::default();
        assert_eq!(b.hash_one(Id(12345)), b.hash_one(12345u64));
    }

    #[test]
    fn maps_behave_as_maps() {
        let mut m: IdMap<u32> = IdMap::default();
        for i in 0..10_000u64 {
            m.insert(Id(i.wrapping_mul(0xDEAD_BEEF)), i as u32);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&Id(7u64.wrapping_mul(0xDEAD_BEEF))), Some(&7));
        let s: IdSet = (0..100).collect();
        assert!(s.contains(&42) && !s.contains(&100));
    }
}
