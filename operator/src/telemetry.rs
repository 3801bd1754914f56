//! Operator metrics and readiness, for the shared admin server
//! (`squall_coord::admin`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use squall_coord::admin::Endpoints;
use squall_coord::prom::{self, DurationHistogram, Kind};

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub errors: AtomicU64,
    /// Sum of reconcile durations in microseconds.
    reconcile_us: AtomicU64,
    /// Reconcile durations, for `histogram_quantile` across replicas.
    reconcile_duration: DurationHistogram,
    /// Whether this replica leads (and so reconciles).
    pub leader: AtomicBool,
    /// Whether the controller is up and watching.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.reconcile_duration.observe(took);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let families: [(&str, &str, Kind, String); 4] = [
            (
                "squall_operator_reconciles_total",
                "Reconcile passes.",
                Kind::Counter,
                self.reconciles.load(Ordering::Relaxed).to_string(),
            ),
            (
                "squall_operator_reconcile_errors_total",
                "Failed reconcile passes.",
                Kind::Counter,
                self.errors.load(Ordering::Relaxed).to_string(),
            ),
            (
                "squall_operator_reconcile_seconds_total",
                "Time spent reconciling.",
                Kind::Counter,
                (self.reconcile_us.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
            ),
            (
                "squall_operator_leader",
                "Whether this replica is the leader.",
                Kind::Gauge,
                u8::from(self.leader.load(Ordering::Relaxed)).to_string(),
            ),
        ];
        for (name, help, kind, value) in families {
            prom::header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }
        self.reconcile_duration.render(
            &mut out,
            "squall_operator_reconcile_duration_seconds",
            "How long one reconcile pass took.",
            "",
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn metrics_pass_promcheck_with_a_reconcile_histogram() {
        let m = Metrics::default();
        m.reconciles.store(3, Ordering::Relaxed);
        for ms in [2, 30, 700] {
            m.observe_reconcile(Duration::from_millis(ms));
        }
        let text = m.render();
        squall_testenv::promcheck(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let h = "squall_operator_reconcile_duration_seconds";
        assert!(text.contains(&format!("# TYPE {h} histogram\n")), "{text}");
        assert!(
            text.contains(&format!("{h}_bucket{{le=\"0.0025\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_bucket{{le=\"0.05\"}} 2\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{h}_bucket{{le=\"+Inf\"}} 3\n")),
            "{text}"
        );
        assert!(text.contains(&format!("{h}_count 3\n")), "{text}");
        assert!(text.contains(&format!("{h}_sum 0.732\n")), "{text}");
        // The counters stay.
        assert!(
            text.contains("squall_operator_reconciles_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("squall_operator_reconcile_seconds_total 0.732\n"),
            "{text}"
        );
    }
}
