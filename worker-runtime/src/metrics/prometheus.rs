//! The Prometheus rendering of a [`MetricsHub`]: a series per executor, and
//! HDR histograms as Prometheus buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use hdrhistogram::Histogram;
use squall_api::TaskId;
use squall_coord::prom::{self, Kind, LATENCY_BUCKETS_SECONDS};

use super::hub::Registered;
use super::{ExecMetrics, MetricsHub, lock};

impl MetricsHub {
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
        let counters: [Counter; 8] = [
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
            (
                "squall_misrouted_total",
                "Messages dropped because they reached an executor that does not take them.",
                |m| m.misrouted,
            ),
        ];
        for (name, help, get) in counters {
            prom::header(&mut out, name, help, Kind::Counter);
            for (l, rs) in &series {
                let v: u64 = rs.iter().map(|r| get(&lock(&r.slot))).sum();
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
        // The components' own counters (multilang `metrics`), labelled `name`.
        let name = "squall_component_metric_total";
        prom::header(
            &mut out,
            name,
            "Counters a component keeps itself (Storm's multilang metrics command), by name.",
            Kind::Counter,
        );
        for (l, rs) in &series {
            let mut sums: BTreeMap<String, u64> = BTreeMap::new();
            for r in rs {
                squall_api::records::add_counts(&mut sums, &lock(&r.slot).metrics);
            }
            for (metric, v) in sums {
                let label = prom::labels(&[("name", &metric)]);
                let _ = writeln!(out, "{name}{{{l},{label}}} {v}");
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
    /// The sum of the values, in seconds (the `_sum` series).
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
    use squall_api::PlannedKind;

    use crate::metrics::MetricsSlot;
    use crate::metrics::exec::{histogram, record};

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
    fn component_metrics_are_labelled_by_name_and_bounded() {
        let hub = MetricsHub::new();
        let split = hub.register("split", PlannedKind::Bolt, 2..3);
        publish(&split, |m| {
            assert!(m.add_component_metric("words", 3));
            assert!(m.add_component_metric("words", 4));
            assert!(m.add_component_metric("odd \"name\"", 1));
            for i in 2..crate::metrics::MAX_COMPONENT_METRICS {
                assert!(m.add_component_metric(&format!("m{i}"), 1));
            }
            assert!(!m.add_component_metric("one too many", 1));
            assert!(
                m.add_component_metric("words", 1),
                "known names still count"
            );
        });
        let text = hub.render_prometheus(&[]);
        let s = samples(&text, "squall_component_metric_total");
        assert_eq!(s.len(), crate::metrics::MAX_COMPONENT_METRICS);
        assert!(
            s.contains(&(r#"component="split",task="2",name="words""#, 8.0)),
            "{s:?}"
        );
        assert!(
            s.contains(&(r#"component="split",task="2",name="odd \"name\"""#, 1.0)),
            "{s:?}"
        );
        assert!(!text.contains("one too many"));
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
