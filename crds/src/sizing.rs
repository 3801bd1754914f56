//! How big a worker's queues are, and so how much memory a plan needs per
//! worker: one home for the numbers that the engine sizes its queues with and
//! that validation checks against the worker container's memory limit.
//!
//! The estimate is of what the queues hold when they are full (a slow bolt
//! backs its input up), plus a fixed base. It is deliberately simple: the point
//! is to refuse, before any pod starts, a plan that cannot fit (1,000
//! executors in a 256 MiB container), not to predict a worker's RSS to the byte.

/// Tuples per batch between executors and on the wire (the worker's
/// `--batch-size` default).
pub const BATCH_SIZE: usize = 256;

/// Batches an executor's input queue holds.
pub const QUEUE_BATCHES: usize = 32;

/// What one queued tuple costs: its envelope (about 80 bytes) and the heap of
/// a small tuple (a few short values). Larger tuples cost more; the base leaves
/// room for that.
pub const BYTES_PER_QUEUED_TUPLE: u64 = 192;

/// A worker's runtime: its gRPC server and clients, the metrics and the
/// allocator's slack. A local run with one spout, one acker and one full bolt
/// queue peaked at 22 MiB (see "Memory per worker" in `docs/benchmarks.md`).
pub const WORKER_BASE_BYTES: u64 = 32 << 20;

/// One executor: its thread's stack as touched (64 KiB) and a full input queue
/// (1.6 MiB). With the open trees its queue holds (8,192 × [`OPEN_TREE_BYTES`]),
/// that is 2.4 MiB; measured, 100 bolt executors with full queues cost
/// 2.0 MiB each.
pub const EXECUTOR_BYTES: u64 =
    (64 << 10) + (QUEUE_BATCHES as u64) * (BATCH_SIZE as u64) * BYTES_PER_QUEUED_TUPLE;

/// One open tuple tree: the spout's pending entry and the acker's entry, 20
/// bytes each. Measured (`cargo bench -p squall-examples --bench
/// open_trees`, heap bytes): 59–96 bytes for trees opened at once, depending
/// on where each hash map is in its growth cycle (96 just past a doubling).
/// Under load the trees are spread over several tables (the spout's timeout
/// buckets, the acker's two), each with its own slack, and a table that
/// grows holds its old and new arrays for a moment, so the estimate keeps a
/// margin above the snapshot.
pub const OPEN_TREE_BYTES: u64 = 176;

/// Memory a worker needs with `executors` executors and `open_trees` open
/// tuple trees, when every queue is full.
pub fn worker_memory(executors: u64, open_trees: u64) -> u64 {
    WORKER_BASE_BYTES
        .saturating_add(executors.saturating_mul(EXECUTOR_BYTES))
        .saturating_add(open_trees.saturating_mul(OPEN_TREE_BYTES))
}

/// Bytes in a Kubernetes quantity (`512Mi`, `1G`, `1.5Gi`, `1e9`, `2048`),
/// rounded up; `None` when it is not one, or is negative.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s => {
            let exp = s.strip_prefix(['e', 'E'])?;
            10f64.powi(exp.parse().ok()?)
        }
    };
    let bytes = (number * scale).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// `n` bytes in MiB, rounded up, for messages.
pub fn mib(n: u64) -> u64 {
    n.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        for (q, bytes) in [
            ("2048", 2048),
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("500M", 500_000_000),
            ("128k", 128_000),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("1500m", 2),
            (" 64Ki ", 65536),
        ] {
            assert_eq!(quantity_bytes(q), Some(bytes), "{q}");
        }
        for bad in ["", "Mi", "-1Gi", "1Xi", "1.2.3", "1e", "abc", "1e999"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_estimate_grows_with_executors_and_open_trees() {
        assert_eq!(worker_memory(0, 0), WORKER_BASE_BYTES);
        assert!(worker_memory(10, 0) > worker_memory(9, 0));
        assert_eq!(
            worker_memory(1, 1000) - worker_memory(1, 0),
            1000 * OPEN_TREE_BYTES
        );
        // A full queue is 8,192 tuples.
        assert_eq!(QUEUE_BATCHES * BATCH_SIZE, 8192);
        assert_eq!(EXECUTOR_BYTES, (64 << 10) + 8192 * BYTES_PER_QUEUED_TUPLE);
        assert_eq!(worker_memory(u64::MAX, u64::MAX), u64::MAX);
    }
}
