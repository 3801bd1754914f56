//! Memory per open tuple tree, measured: the resident memory (`VmRSS`) that
//! `n` open trees add to a spout task's `SpoutTrees` and to an acker's
//! `AckerState`, for several `n` (hash maps double, so the cost per tree
//! swings with where `n` falls in a growth cycle). Each structure is built,
//! measured and dropped on its own; glibc returns tables this large to the
//! system when they are freed, so one measurement does not hide the next.
//!
//! `cargo bench -p squall-examples --bench open_trees`
//!
//! Prints a table, then one JSON line per figure (see `make bench`).

use squall_examples::bench::figure;
use squall_runtime::acker::AckerState;
use squall_runtime::spout_trees::SpoutTrees;

/// Resident bytes of this process.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

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

/// Bytes per tree that `build(n)` keeps resident.
fn per_tree<T>(n: usize, build: impl FnOnce(usize) -> T, len: impl Fn(&T) -> usize) -> f64 {
    let before = rss();
    let held = build(n);
    let after = rss();
    assert_eq!(len(&held), n, "every tree is open");
    drop(held);
    after.saturating_sub(before) as f64 / n as f64
}

fn main() {
    let sizes = [300_000usize, 600_000, 1_000_000, 1_500_000, 2_000_000];
    println!("| open trees | spout side (B/tree) | acker side (B/tree) | total |");
    println!("|---|---|---|---|");
    let mut totals = Vec::new();
    for n in sizes {
        let spout = per_tree(
            n,
            |n| {
                let mut t = SpoutTrees::default();
                for (i, root) in roots(n).enumerate() {
                    let ns = i as u64;
                    t.track(root, ns, ns, ns + 30_000_000_000);
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
