//! Memory per open tuple tree, measured: the heap bytes that `n` open trees
//! hold in a spout task's `SpoutTrees` and, separately, in an acker's
//! `AckerState`, for several `n` (hash maps double, so the cost per tree
//! swings with where `n` falls in a growth cycle). A counting allocator
//! gives the bytes allocated and not freed, capacity included: an upper
//! bound on what the trees keep resident. (Reading `VmRSS` instead, as this
//! bench first did, undercounts a structure built where an earlier one's
//! freed memory was still mapped.)
//!
//! `cargo bench -p squall-examples --bench open_trees`
//!
//! Prints a table, then one JSON line per figure (see `make bench`).

// A global allocator is unsafe to write; this one only forwards to the
// system allocator and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use squall_examples::bench::figure;
use squall_runtime::acker::AckerState;
use squall_runtime::spout_trees::SpoutTrees;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter only
// observes the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Roots as the engine draws them: random 64-bit ids.
fn roots(n: usize) -> impl Iterator<Item = u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    })
}

/// Heap bytes per tree that `build(n)` holds.
fn per_tree<T>(n: usize, build: impl FnOnce(usize) -> T, len: impl Fn(&T) -> usize) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let held = build(n);
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(len(&held), n, "every tree is open");
    drop(held);
    after.saturating_sub(before) as f64 / n as f64
}

fn main() {
    // 1,835,009 is one tree past a table's doubling (7/8 of 2^21 slots
    // full), where a tree costs the most: the worst case.
    let sizes = [
        300_000usize,
        600_000,
        1_000_000,
        1_500_000,
        1_835_009,
        2_000_000,
    ];
    println!("| open trees | spout side (B/tree) | acker side (B/tree) | total |");
    println!("|---|---|---|---|");
    let mut totals = Vec::new();
    for n in sizes {
        let spout = per_tree(
            n,
            |n| {
                let mut t = SpoutTrees::new(30_000_000_000);
                for (i, root) in roots(n).enumerate() {
                    let ns = i as u64;
                    t.track(root, ns, ns, ns);
                }
                t
            },
            SpoutTrees::len,
        );
        let acker = per_tree(
            n,
            |n| {
                let mut a = AckerState::new();
                for root in roots(n) {
                    let _ = a.init(root, root.rotate_left(17) | 1, 1);
                }
                a
            },
            AckerState::len,
        );
        println!("| {n} | {spout:.0} | {acker:.0} | {:.0} |", spout + acker);
        totals.push((spout, acker));
    }
    let (spout, acker) = totals[2]; // 1,000,000 trees
    figure("open_tree_bytes_spout_1m", spout, "bytes");
    figure("open_tree_bytes_acker_1m", acker, "bytes");
    figure("open_tree_bytes_1m", spout + acker, "bytes");
    let all: Vec<f64> = totals.iter().map(|(s, a)| s + a).collect();
    figure(
        "open_tree_bytes_min",
        all.iter().copied().fold(f64::INFINITY, f64::min),
        "bytes",
    );
    figure(
        "open_tree_bytes_max",
        all.iter().copied().fold(0.0, f64::max),
        "bytes",
    );
}
