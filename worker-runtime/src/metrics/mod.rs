//! Storm-UI metrics: counters and HDR latency histograms per executor.
//!
//! An executor owns its metrics outright (no atomics or locks on the hot path) and
//! publishes a copy to a shared slot about once a second. Readers (the live table,
//! the final summary, the supervisor) merge the published copies by component.
//! Histograms are cumulative; a window is the difference of two copies.
//!
//! `/metrics` ([`MetricsHub::render_prometheus`]) is per executor instead,
//! labelled `component` and `task` (Storm's executor id), and the latencies are
//! Prometheus histograms over `squall_coord::prom::LATENCY_BUCKETS_SECONDS`, so
//! that sums and `histogram_quantile` aggregate across executors and pods.
//! docs/metrics.md lists the families and their cardinality.

#![warn(missing_docs)]

mod exec;
mod hub;
mod prometheus;
mod window;

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

pub use exec::{ExecMetrics, MAX_COMPONENT_METRICS};
pub use hub::{ComponentMetrics, MetricsHub, MetricsSlot};
pub use prometheus::{Buckets, task_label};
pub use window::{RECENT_WINDOW, RecentWindow};

/// Nanoseconds on the process-wide monotonic clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A lock that survives a panicked holder: metrics are plain counters, never
/// left half-updated in a way that matters.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
