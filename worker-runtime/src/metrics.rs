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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use squall_api::records::{ComponentStats, LatencySummary};
use squall_api::{PlannedKind, TaskId};
use squall_coord::prom::{self, Kind, LATENCY_BUCKETS_SECONDS};

/// Nanoseconds on the process-wide monotonic clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies are recorded in nanoseconds, up to one hour, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// One executor's metrics.
#[derive(Clone)]
pub struct ExecMetrics {
    pub emitted: u64,
    pub transferred: u64,
    pub acked: u64,
    pub failed: u64,
    pub executed: u64,
    pub replayed: u64,
    /// Spout tuples emitted with a message id (tuple trees started).
    pub roots: u64,
    /// Nanoseconds spent inside `execute` (for capacity).
    pub busy_ns: u64,
    pub execute_ns: Histogram<u64>,
    pub process_ns: Histogram<u64>,
    pub complete_ns: Histogram<u64>,
    /// When this copy was published.
    pub at_ns: u64,
    /// Errors reported, and the latest (see [`ExecMetrics::note_error`]).
    pub errors: u64,
    pub last_error: Option<squall_api::records::ReportedError>,
    /// Tuples executed, by the index of the component that emitted them
    /// (Storm UI's input stats; the UI's edge rates).
    pub inputs: Vec<u64>,
    /// Component ids by index, naming `inputs`.
    pub input_names: Option<Arc<[String]>>,
}

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
            execute_ns: histogram(),
            process_ns: histogram(),
            complete_ns: histogram(),
            at_ns: now_ns(),
            errors: 0,
            last_error: None,
            inputs: Vec::new(),
            input_names: None,
        }
    }
}

fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

impl ExecMetrics {
    #[inline]
    pub fn record_execute(&mut self, ns: u64) {
        self.executed += 1;
        self.busy_ns += ns;
        record(&mut self.execute_ns, ns);
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

    #[inline]
    pub fn record_process(&mut self, ns: u64) {
        record(&mut self.process_ns, ns);
    }
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
        self.merge_inputs(other);
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
        }
    }
}

/// Where an executor publishes its metrics.
pub type MetricsSlot = Arc<Mutex<ExecMetrics>>;

/// Metrics of one component, merged over its executors.
#[derive(Clone)]
pub struct ComponentMetrics {
    pub kind: PlannedKind,
    pub executors: usize,
    pub metrics: ExecMetrics,
}

/// One executor's slot, with what `/metrics` labels it by.
struct Registered {
    component: String,
    kind: PlannedKind,
    tasks: Range<TaskId>,
    slot: MetricsSlot,
}

/// All executors' published metrics in one process.
#[derive(Clone, Default)]
pub struct MetricsHub {
    slots: Arc<Mutex<Vec<Registered>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MetricsHub {
    pub fn new() -> Self {
        MetricsHub::default()
    }

    /// A slot for a new executor of `component` that runs `tasks`.
    pub fn register(
        &self,
        component: &str,
        kind: PlannedKind,
        tasks: Range<TaskId>,
    ) -> MetricsSlot {
        let slot: MetricsSlot = Arc::default();
        lock(&self.slots).push(Registered {
            component: component.to_string(),
            kind,
            tasks,
            slot: slot.clone(),
        });
        slot
    }

    /// The latest published metrics, merged by component.
    pub fn collect(&self) -> BTreeMap<String, ComponentMetrics> {
        let slots = lock(&self.slots);
        let mut out: BTreeMap<String, ComponentMetrics> = BTreeMap::new();
        for r in slots.iter() {
            let m = lock(&r.slot);
            match out.get_mut(&r.component) {
                Some(c) => {
                    c.metrics.merge(&m);
                    c.executors += 1;
                }
                None => {
                    out.insert(
                        r.component.clone(),
                        ComponentMetrics {
                            kind: r.kind,
                            executors: 1,
                            metrics: m.clone(),
                        },
                    );
                }
            }
        }
        out
    }

    /// Every executor's metrics in the Prometheus text format, each series
    /// labelled `labels` (e.g. `topology`, `slot`), then `component` and `task`
    /// ([`task_label`]). Latencies are histograms over
    /// [`LATENCY_BUCKETS_SECONDS`]; an executor that recorded none of a latency
    /// has no series for it (a bolt has no complete latency).
    ///
    /// Executors of an earlier plan version that ran the same tasks (a
    /// rebalance keeps task ids) share the series with their successor, so its
    /// counters never go back; an earlier executor whose task range no longer
    /// exists keeps its last values.
    pub fn render_prometheus(&self, labels: &[(&str, &str)]) -> String {
        let registered = lock(&self.slots);
        let mut by_labels: BTreeMap<(&str, TaskId, TaskId), Vec<&Registered>> = BTreeMap::new();
        for r in registered.iter() {
            by_labels
                .entry((r.component.as_str(), r.tasks.start, r.tasks.end))
                .or_default()
                .push(r);
        }
        let series: Vec<(String, Vec<&Registered>)> = by_labels
            .into_values()
            .map(|rs| {
                let task = task_label(&rs[0].tasks);
                let mut pairs = labels.to_vec();
                pairs.push(("component", &rs[0].component));
                pairs.push(("task", &task));
                (prom::labels(&pairs), rs)
            })
            .collect();
        let mut out = String::new();
        type Counter = (&'static str, &'static str, fn(&ExecMetrics) -> u64);
        let counters: [Counter; 7] = [
            ("squall_emitted_total", "Tuples emitted.", |m| m.emitted),
            (
                "squall_transferred_total",
                "Tuples sent to target tasks.",
                |m| m.transferred,
            ),
            (
                "squall_acked_total",
                "Tuples acked (bolts) or trees completed (spouts).",
                |m| m.acked,
            ),
            (
                "squall_failed_total",
                "Tuples failed (bolts) or trees failed or timed out (spouts).",
                |m| m.failed,
            ),
            ("squall_executed_total", "Tuples executed by bolts.", |m| {
                m.executed
            }),
            (
                "squall_replayed_total",
                "Spout messages emitted again after a failure.",
                |m| m.replayed,
            ),
            (
                "squall_roots_total",
                "Tuple trees started by spouts.",
                |m| m.roots,
            ),
        ];
        for (name, help, get) in counters {
            prom::header(&mut out, name, help, Kind::Counter);
            for (l, rs) in &series {
                let v: u64 = rs.iter().map(|r| get(&lock(&r.slot))).sum();
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
        let name = "squall_capacity";
        prom::header(
            &mut out,
            name,
            "Fraction of the time since the worker started that the executor spent executing.",
            Kind::Gauge,
        );
        for (l, rs) in &series {
            let (mut busy, mut at) = (0, 0);
            for r in rs {
                let m = lock(&r.slot);
                busy += m.busy_ns;
                at = at.max(m.at_ns);
            }
            let capacity = if at == 0 {
                0.0
            } else {
                busy as f64 / (at as f64 * rs.len() as f64)
            };
            let _ = writeln!(out, "{name}{{{l}}} {capacity}");
        }
        type Latency = (
            &'static str,
            &'static str,
            fn(&ExecMetrics) -> &Histogram<u64>,
        );
        let latencies: [Latency; 3] = [
            (
                "squall_execute_latency_seconds",
                "Time a bolt spent in execute for one tuple.",
                |m| &m.execute_ns,
            ),
            (
                "squall_process_latency_seconds",
                "Time from a tuple's arrival at a bolt until the bolt acked it.",
                |m| &m.process_ns,
            ),
            (
                "squall_complete_latency_seconds",
                "Time from a spout's emit until its tuple tree completed.",
                |m| &m.complete_ns,
            ),
        ];
        for (name, help, get) in latencies {
            prom::header(&mut out, name, help, Kind::Histogram);
            for (l, rs) in &series {
                let mut b = Buckets::default();
                for r in rs {
                    b.add(&Buckets::of(get(&lock(&r.slot)), &LATENCY_BUCKETS_SECONDS));
                }
                if b.count > 0 {
                    prom::histogram_series(
                        &mut out,
                        name,
                        l,
                        &LATENCY_BUCKETS_SECONDS,
                        &b.cumulative,
                        b.count,
                        b.sum_seconds,
                    );
                }
            }
        }
        out
    }
}

/// The `task` label of an executor, as Storm names executors: its task id when
/// it runs one task, else `first-last` (`3-5`).
pub fn task_label(tasks: &Range<TaskId>) -> String {
    if tasks.end > tasks.start + 1 {
        format!("{}-{}", tasks.start, tasks.end - 1)
    } else {
        tasks.start.to_string()
    }
}

/// An HDR histogram (nanoseconds) as Prometheus histogram buckets (seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// Cumulative count for each bound: values `<=` it.
    pub cumulative: Vec<u64>,
    /// Every value recorded (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl Buckets {
    /// Each recorded value counts in the buckets whose bound is at least the
    /// lowest value of its HDR range (HDR keeps 3 significant digits, so a
    /// value within 0.1% above a bound may count under it). The sum is
    /// mean × count, exact to the same precision.
    pub fn of(h: &Histogram<u64>, bounds_seconds: &[f64]) -> Buckets {
        let bounds_ns: Vec<u64> = bounds_seconds
            .iter()
            .map(|b| (b * 1e9).round() as u64)
            .collect();
        let mut cumulative = vec![0u64; bounds_ns.len()];
        for v in h.iter_recorded() {
            let value = h.lowest_equivalent(v.value_iterated_to());
            let i = bounds_ns.partition_point(|&b| b < value);
            if let Some(n) = cumulative.get_mut(i) {
                *n += v.count_at_value();
            }
        }
        let mut running = 0;
        for n in &mut cumulative {
            running += *n;
            *n = running;
        }
        let count = h.len();
        Buckets {
            cumulative,
            count,
            sum_seconds: if count == 0 {
                0.0
            } else {
                h.mean() * count as f64 / 1e9
            },
        }
    }

    fn add(&mut self, other: &Buckets) {
        if self.cumulative.is_empty() {
            self.cumulative = vec![0; other.cumulative.len()];
        }
        for (a, b) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *a += b;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The samples of one family in `text`: (labels, value).
    fn samples<'a>(text: &'a str, series: &str) -> Vec<(&'a str, f64)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(series)?.strip_prefix('{')?;
                let (labels, value) = rest.rsplit_once("} ")?;
                Some((labels, value.parse().unwrap()))
            })
            .collect()
    }

    fn publish(slot: &MetricsSlot, f: impl FnOnce(&mut ExecMetrics)) {
        f(&mut slot.lock().unwrap());
    }

    #[test]
    fn task_label_is_storms_executor_id() {
        assert_eq!(task_label(&(7..8)), "7");
        assert_eq!(task_label(&(3..6)), "3-5");
    }

    #[test]
    fn buckets_are_cumulative_and_inf_is_the_count() {
        let mut h = histogram();
        // 50 µs, 1 ms exactly (on a bound: `le` is inclusive), 3 ms, 2 s, 2 h (past every bound).
        for ns in [
            50_000,
            1_000_000,
            1_000_000,
            3_000_000,
            2_000_000_000,
            7_200_000_000_000,
        ] {
            record(&mut h, ns);
        }
        let b = Buckets::of(&h, &LATENCY_BUCKETS_SECONDS);
        assert_eq!(b.cumulative.len(), LATENCY_BUCKETS_SECONDS.len());
        assert!(b.cumulative.windows(2).all(|w| w[0] <= w[1]), "{b:?}");
        let at = |le: f64| {
            b.cumulative[LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&x| x == le)
                .unwrap()]
        };
        assert_eq!(at(0.0001), 1);
        assert_eq!(at(0.0005), 1);
        assert_eq!(at(0.001), 3);
        assert_eq!(at(0.0025), 3);
        assert_eq!(at(0.005), 4);
        assert_eq!(at(1.0), 4);
        assert_eq!(at(2.5), 5);
        assert_eq!(at(30.0), 5);
        assert_eq!(b.count, 6);
        // Recorded up to an hour: 2 h saturates at 1 h.
        let exact =
            (50_000 + 2_000_000 + 3_000_000 + 2_000_000_000 + 3_600_000_000_000u64) as f64 / 1e9;
        assert!(
            (b.sum_seconds - exact).abs() / exact < 0.001,
            "{} vs {exact}",
            b.sum_seconds
        );
        assert_eq!(Buckets::of(&histogram(), &LATENCY_BUCKETS_SECONDS).count, 0);
    }

    #[test]
    fn render_is_per_executor_with_histograms() {
        let hub = MetricsHub::new();
        let spout = hub.register("sentences", PlannedKind::Spout, 1..2);
        let bolt_a = hub.register("split", PlannedKind::Bolt, 2..4);
        let bolt_b = hub.register("split", PlannedKind::Bolt, 4..5);
        publish(&spout, |m| {
            m.acked = 5;
            m.roots = 6;
            for ms in [1, 2, 40] {
                m.record_complete(ms * 1_000_000);
            }
        });
        publish(&bolt_a, |m| {
            m.acked = 2;
            m.record_execute(200_000);
            m.record_execute(300_000);
            m.record_process(400_000);
        });
        publish(&bolt_b, |m| m.record_execute(20_000_000));
        let text = hub.render_prometheus(&[("topology", "ns/wc"), ("slot", "1")]);

        let acked = samples(&text, "squall_acked_total");
        assert_eq!(
            acked,
            [
                (
                    "topology=\"ns/wc\",slot=\"1\",component=\"sentences\",task=\"1\"",
                    5.0
                ),
                (
                    "topology=\"ns/wc\",slot=\"1\",component=\"split\",task=\"2-3\"",
                    2.0
                ),
                (
                    "topology=\"ns/wc\",slot=\"1\",component=\"split\",task=\"4\"",
                    0.0
                ),
            ]
        );
        // Every family says what it is.
        for family in [
            "squall_acked_total",
            "squall_capacity",
            "squall_execute_latency_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
        assert!(text.contains("# TYPE squall_complete_latency_seconds histogram\n"));
        assert!(
            !text.contains("summary") && !text.contains("quantile="),
            "{text}"
        );

        // One histogram per executor that recorded the latency, cumulative, +Inf = _count.
        let buckets = samples(&text, "squall_execute_latency_seconds_bucket");
        for task in ["2-3", "4"] {
            let mine: Vec<f64> = buckets
                .iter()
                .filter(|(l, _)| l.contains(&format!("task=\"{task}\"")))
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(mine.len(), LATENCY_BUCKETS_SECONDS.len() + 1, "{text}");
            assert!(mine.windows(2).all(|w| w[0] <= w[1]), "{mine:?}");
            let count = samples(&text, "squall_execute_latency_seconds_count")
                .into_iter()
                .find(|(l, _)| l.contains(&format!("task=\"{task}\"")))
                .unwrap()
                .1;
            assert_eq!(mine.last().copied(), Some(count));
        }
        assert!(text.contains(
            "squall_execute_latency_seconds_bucket{topology=\"ns/wc\",slot=\"1\",component=\"split\",task=\"2-3\",le=\"0.00025\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "squall_execute_latency_seconds_bucket{topology=\"ns/wc\",slot=\"1\",component=\"split\",task=\"4\",le=\"0.025\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "squall_complete_latency_seconds_count{topology=\"ns/wc\",slot=\"1\",component=\"sentences\",task=\"1\"} 3\n"
        ), "{text}");
        // A bolt completes no trees, a spout executes nothing.
        assert!(!text.contains("squall_complete_latency_seconds_count{topology=\"ns/wc\",slot=\"1\",component=\"split\""));
        assert!(!text.contains("squall_execute_latency_seconds_count{topology=\"ns/wc\",slot=\"1\",component=\"sentences\""));
    }

    #[test]
    fn a_rebalanced_executor_with_the_same_tasks_continues_its_series() {
        let hub = MetricsHub::new();
        let old = hub.register("count", PlannedKind::Bolt, 3..5);
        publish(&old, |m| {
            m.record_execute(1_000);
            m.executed = 10;
        });
        // The next plan version runs the same tasks in a new executor.
        let new = hub.register("count", PlannedKind::Bolt, 3..5);
        publish(&new, |m| {
            m.record_execute(1_000);
            m.executed = 4;
        });
        let text = hub.render_prometheus(&[]);
        assert_eq!(
            samples(&text, "squall_executed_total"),
            [("component=\"count\",task=\"3-4\"", 14.0)]
        );
        assert_eq!(
            samples(&text, "squall_execute_latency_seconds_count"),
            [("component=\"count\",task=\"3-4\"", 2.0)]
        );
    }
}

/// Published figures cover the whole life *and* a recent window of at least
/// this long (and under twice it), so rates and p99 show how a topology does
/// now: a rebalance's slow trees fade out instead of ruling p99 for good.
pub const RECENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Samples a [`MetricsHub`] for its whole-life stats and a recent window's.
#[derive(Default)]
pub struct RecentWindow {
    baseline: Mutex<Option<(Instant, BTreeMap<String, ComponentMetrics>)>>,
}

impl RecentWindow {
    /// Whole-life stats per component, the recent window's, and that
    /// window's length in milliseconds (0, with no figures, on the first call).
    pub fn sample(
        &self,
        hub: &MetricsHub,
    ) -> (
        BTreeMap<String, ComponentStats>,
        BTreeMap<String, ComponentStats>,
        u64,
    ) {
        let now = hub.collect();
        let mut baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        let (recent, window_ns) = match baseline.as_ref() {
            Some((at, base)) => {
                let window = at.elapsed().as_nanos() as u64;
                (crate::local::stats_of(&now, Some((base, window))), window)
            }
            None => (BTreeMap::new(), 0),
        };
        let total = crate::local::stats_of(&now, None);
        if baseline
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= RECENT_WINDOW)
        {
            *baseline = Some((Instant::now(), now));
        }
        (total, recent, window_ns / 1_000_000)
    }
}
