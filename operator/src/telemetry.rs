//! Operator metrics and readiness, for the shared admin server
//! (`squall_coord::admin`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use squall_coord::admin::Endpoints;

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub errors: AtomicU64,
    /// Sum of reconcile durations in microseconds.
    reconcile_us: AtomicU64,
    /// Whether this replica leads (and so reconciles).
    pub leader: AtomicBool,
    /// Whether the controller is up and watching.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let n = self.reconciles.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP squall_operator_reconciles_total Reconcile passes.\n# TYPE squall_operator_reconciles_total counter\nsquall_operator_reconciles_total {n}"
        );
        let _ = writeln!(
            out,
            "# HELP squall_operator_reconcile_errors_total Failed reconcile passes.\n# TYPE squall_operator_reconcile_errors_total counter\nsquall_operator_reconcile_errors_total {}",
            self.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP squall_operator_reconcile_seconds_total Time spent reconciling.\n# TYPE squall_operator_reconcile_seconds_total counter\nsquall_operator_reconcile_seconds_total {}",
            self.reconcile_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP squall_operator_leader Whether this replica is the leader.\n# TYPE squall_operator_leader gauge\nsquall_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

/// `/metrics` renders these counters; `/readyz` is 200 once connected to the
/// API server and etcd (a standby replica is ready too: it is up, and takes
/// over as soon as it leads).
pub fn endpoints(metrics: Arc<Metrics>) -> Endpoints {
    let ready = metrics.clone();
    Endpoints {
        metrics: Arc::new(move || metrics.render()),
        ready: Arc::new(move || {
            if ready.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("starting".to_string())
            }
        }),
    }
}
