//! One executor's counters and HDR latency histograms, and how copies of
//! them merge (by component) and subtract (a window).

use std::collections::BTreeMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use squall_api::records::{ComponentStats, LatencySummary};

use super::now_ns;

/// Latencies are recorded in nanoseconds, up to one hour, to 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// One executor's metrics.
#[derive(Clone)]
pub struct ExecMetrics {
    /// Tuples emitted (one per emit, however many tasks it went to).
    pub emitted: u64,
    /// Tuples sent to target tasks (an emit to three tasks counts three).
    pub transferred: u64,
    /// Tuples acked (bolts) or trees completed (spouts).
    pub acked: u64,
    /// Tuples failed (bolts) or trees failed or timed out (spouts).
    pub failed: u64,
    /// Tuples executed (bolts).
    pub executed: u64,
    /// Spout messages emitted again after they failed.
    pub replayed: u64,
    /// Spout tuples emitted with a message id (tuple trees started).
    pub roots: u64,
    /// Nanoseconds spent inside `execute` (for capacity).
    pub busy_ns: u64,
    /// Messages that reached this executor but are not for it (of another
    /// kind of recipient, or for a task it does not run); dropped.
    pub misrouted: u64,
    /// Time in `execute` per tuple (bolts).
    pub execute_ns: Histogram<u64>,
    /// Time from a tuple's arrival at a bolt until the bolt acked it.
    pub process_ns: Histogram<u64>,
    /// Time from a spout's emit until its tuple tree completed.
    pub complete_ns: Histogram<u64>,
    /// When this copy was published.
    pub at_ns: u64,
    /// Errors reported, and the latest (see [`ExecMetrics::note_error`]).
    pub errors: u64,
    /// The latest error reported, with its task and time.
    pub last_error: Option<squall_api::records::ReportedError>,
    /// Tuples executed, by the index of the component that emitted them
    /// (Storm UI's input stats; the UI's edge rates).
    pub inputs: Vec<u64>,
    /// Component ids by index, naming `inputs`.
    pub input_names: Option<Arc<[String]>>,
    /// The component's own counters by name (Storm's multilang `metrics`
    /// command), at most [`MAX_COMPONENT_METRICS`] names.
    pub metrics: BTreeMap<String, u64>,
}

/// Names of component counters an executor keeps; more are refused, so that a
/// component cannot grow the metrics (and the `/metrics` page) without bound.
pub const MAX_COMPONENT_METRICS: usize = 64;

impl Default for ExecMetrics {
    fn default() -> Self {
        ExecMetrics {
            emitted: 0,
            transferred: 0,
            acked: 0,
            failed: 0,
            executed: 0,
            replayed: 0,
            roots: 0,
            busy_ns: 0,
            misrouted: 0,
            execute_ns: histogram(),
            process_ns: histogram(),
            complete_ns: histogram(),
            at_ns: now_ns(),
            errors: 0,
            last_error: None,
            inputs: Vec::new(),
            input_names: None,
            metrics: BTreeMap::new(),
        }
    }
}
pub(super) fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

fn record_n(h: &mut Histogram<u64>, ns: u64, weight: u64) {
    // Out of range only for values beyond the histogram's hour: clamp them.
    let v = ns.max(1).min(h.high());
    let _ = h.record_n(v, weight);
}

impl ExecMetrics {
    /// A bolt executed a tuple in `ns`.
    #[inline]
    pub fn record_execute(&mut self, ns: u64) {
        self.executed += 1;
        self.busy_ns += ns;
        record(&mut self.execute_ns, ns);
    }
    /// A bolt executed a tuple whose time it did not measure (latencies are
    /// sampled: see [`ExecMetrics::record_execute_sampled`]).
    #[inline]
    pub fn count_execute(&mut self) {
        self.executed += 1;
    }
    /// A bolt executed a tuple in `ns`, measured for `weight` tuples: one in
    /// `weight` is timed, as Storm samples its executor statistics, and it
    /// counts `weight` times in the busy time and the histogram.
    #[inline]
    pub fn record_execute_sampled(&mut self, ns: u64, weight: u64) {
        self.executed += 1;
        self.busy_ns += ns.saturating_mul(weight);
        record_n(&mut self.execute_ns, ns, weight);
    }
    /// A sampled tuple (see [`ExecMetrics::record_execute_sampled`]) was
    /// acked `ns` after it arrived.
    #[inline]
    pub fn record_process_sampled(&mut self, ns: u64, weight: u64) {
        record_n(&mut self.process_ns, ns, weight);
    }
    /// A tuple from component `source` (an index into `names`) is executed.
    #[inline]
    pub fn record_input(&mut self, source: u32, names: &Arc<[String]>) {
        let i = source as usize;
        if i >= names.len() {
            return;
        }
        if self.inputs.len() != names.len() {
            self.inputs.resize(names.len(), 0);
            self.input_names = Some(names.clone());
        }
        self.inputs[i] += 1;
    }

    /// Add `n` to the component's counter `name`; `false` (and nothing counted)
    /// for a new name beyond [`MAX_COMPONENT_METRICS`].
    pub fn add_component_metric(&mut self, name: &str, n: u64) -> bool {
        if let Some(v) = self.metrics.get_mut(name) {
            *v = v.saturating_add(n);
            return true;
        }
        if self.metrics.len() >= MAX_COMPONENT_METRICS {
            return false;
        }
        self.metrics.insert(name.to_string(), n);
        true
    }

    /// Executed tuples by source component id.
    pub fn inputs_by_name(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        if let Some(names) = &self.input_names {
            for (name, n) in names.iter().zip(&self.inputs) {
                if *n > 0 {
                    *out.entry(name.clone()).or_default() += n;
                }
            }
        }
        out
    }

    /// A bolt acked a tuple `ns` after it arrived.
    #[inline]
    pub fn record_process(&mut self, ns: u64) {
        record(&mut self.process_ns, ns);
    }
    /// A spout's tuple tree completed `ns` after its emit.
    #[inline]
    pub fn record_complete(&mut self, ns: u64) {
        record(&mut self.complete_ns, ns);
    }

    /// A component reported an error: counted, and kept as the latest for status.
    pub fn note_error(&mut self, task: squall_api::TaskId, message: &str) {
        let now_ms = squall_api::records::unix_ms();
        self.errors += 1;
        self.last_error = Some(squall_api::records::ReportedError::new(
            message, task, now_ms,
        ));
    }

    /// Add `other` (another executor of the same component, or the same
    /// tasks in an earlier plan): counters and histograms add up.
    pub fn merge(&mut self, other: &ExecMetrics) {
        self.errors += other.errors;
        self.last_error = squall_api::records::ReportedError::later(
            self.last_error.as_ref(),
            other.last_error.as_ref(),
        );
        self.emitted += other.emitted;
        self.transferred += other.transferred;
        self.acked += other.acked;
        self.failed += other.failed;
        self.executed += other.executed;
        self.replayed += other.replayed;
        self.roots += other.roots;
        self.busy_ns += other.busy_ns;
        self.misrouted += other.misrouted;
        self.merge_inputs(other);
        squall_api::records::add_counts(&mut self.metrics, &other.metrics);
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.execute_ns.add(&other.execute_ns);
        let _ = self.process_ns.add(&other.process_ns);
        let _ = self.complete_ns.add(&other.complete_ns);
        self.at_ns = self.at_ns.max(other.at_ns);
    }

    /// Add `other`'s input counts: by index under the same names (one plan),
    /// else by name.
    fn merge_inputs(&mut self, other: &ExecMetrics) {
        match (&self.input_names, &other.input_names) {
            (_, None) => {}
            (None, Some(_)) => {
                self.inputs = other.inputs.clone();
                self.input_names = other.input_names.clone();
            }
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a == b => {
                for (x, y) in self.inputs.iter_mut().zip(&other.inputs) {
                    *x += y;
                }
            }
            (Some(a), Some(_)) => {
                let mut by_name = self.inputs_by_name();
                for (name, n) in other.inputs_by_name() {
                    *by_name.entry(name).or_default() += n;
                }
                let names: Arc<[String]> = a
                    .iter()
                    .chain(by_name.keys())
                    .fold(Vec::<String>::new(), |mut v, n| {
                        if !v.contains(n) {
                            v.push(n.clone());
                        }
                        v
                    })
                    .into();
                self.inputs = names
                    .iter()
                    .map(|n| by_name.get(n).copied().unwrap_or(0))
                    .collect();
                self.input_names = Some(names);
            }
        }
    }

    /// `self - earlier`: the activity in between.
    pub fn since(&self, earlier: &ExecMetrics) -> ExecMetrics {
        let mut d = self.clone();
        d.emitted -= earlier.emitted.min(d.emitted);
        d.transferred -= earlier.transferred.min(d.transferred);
        d.acked -= earlier.acked.min(d.acked);
        d.failed -= earlier.failed.min(d.failed);
        d.executed -= earlier.executed.min(d.executed);
        d.replayed -= earlier.replayed.min(d.replayed);
        d.roots -= earlier.roots.min(d.roots);
        d.errors -= earlier.errors.min(d.errors);
        d.busy_ns -= earlier.busy_ns.min(d.busy_ns);
        d.misrouted -= earlier.misrouted.min(d.misrouted);
        for (name, n) in d.metrics.iter_mut() {
            *n -= earlier.metrics.get(name).copied().unwrap_or(0).min(*n);
        }
        let earlier_inputs = earlier.inputs_by_name();
        if let Some(names) = &d.input_names {
            for (name, n) in names.iter().zip(d.inputs.iter_mut()) {
                *n -= earlier_inputs.get(name).copied().unwrap_or(0).min(*n);
            }
        }
        // Counts only grow, so subtracting an earlier copy of the same histogram succeeds.
        let _ = d.execute_ns.subtract(&earlier.execute_ns);
        let _ = d.process_ns.subtract(&earlier.process_ns);
        let _ = d.complete_ns.subtract(&earlier.complete_ns);
        d
    }

    /// As the stats record, with capacity computed over `window_ns`.
    pub fn to_stats(&self, window_ns: u64, executors: usize) -> ComponentStats {
        let summary = |h: &Histogram<u64>| {
            (!h.is_empty()).then(|| LatencySummary {
                count: h.len(),
                mean: h.mean() / 1e6,
                p50: h.value_at_quantile(0.5) as f64 / 1e6,
                p99: h.value_at_quantile(0.99) as f64 / 1e6,
                max: h.max() as f64 / 1e6,
            })
        };
        let capacity = if window_ns == 0 || executors == 0 {
            0.0
        } else {
            self.busy_ns as f64 / (window_ns as f64 * executors as f64)
        };
        ComponentStats {
            emitted: self.emitted,
            transferred: self.transferred,
            acked: self.acked,
            failed: self.failed,
            executed: self.executed,
            execute_latency_ms: summary(&self.execute_ns),
            process_latency_ms: summary(&self.process_ns),
            complete_latency_ms: summary(&self.complete_ns),
            capacity,
            replayed: self.replayed,
            roots: self.roots,
            errors: self.errors,
            last_error: self.last_error.clone(),
            inputs: self.inputs_by_name(),
            metrics: self.metrics.clone(),
        }
    }
}
