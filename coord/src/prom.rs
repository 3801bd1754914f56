//! Prometheus text exposition, written once for every binary: family headers,
//! label escaping, histogram series, the one latency bucket list, and a
//! lock-free histogram for durations observed from many threads.
//!
//! Latencies are exported as histograms (`_bucket{le=...}`, `_sum`, `_count`),
//! never summaries, so that `histogram_quantile` aggregates across pods.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds (seconds) of every latency histogram Squall exports, the
/// worker's and the operator's alike; `+Inf` follows implicitly. 100 µs to
/// 30 s, about 2.5× apart: tuple latencies sit at the low end, reconciles and
/// complete latencies under load at the high end.
pub const LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A metric family's kind, as `# TYPE` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// `# HELP` and `# TYPE` of a family (promlint wants both).
pub fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value, escaped as the text format wants (`\\`, `\"`, `\n`).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `k1="v1",k2="v2"` (escaped), to put between the braces of a series.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The series of one histogram: a bucket for each bound of `bounds` with its
/// cumulative count in `cumulative` (the same length), `+Inf` (= `count`),
/// `_sum` and `_count`. `labels` is what [`labels`] renders (may be empty).
pub fn histogram_series(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    cumulative: &[u64],
    count: u64,
    sum: f64,
) {
    debug_assert_eq!(bounds.len(), cumulative.len());
    let sep = if labels.is_empty() { "" } else { "," };
    for (le, n) in bounds.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

/// A histogram of durations over [`LATENCY_BUCKETS_SECONDS`], in atomics:
/// observed from any thread without a lock, rendered at scrape time.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations in each bucket alone (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts for the finite bounds, and the total count. The total
    /// is taken as the sum of the buckets, so `+Inf` equals `_count` even while
    /// other threads observe.
    pub fn cumulative(&self) -> (Vec<u64>, u64) {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len());
        for b in &self.buckets[..LATENCY_BUCKETS_SECONDS.len()] {
            running += b.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let inf = self.buckets[LATENCY_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
        (cumulative, running + inf)
    }

    /// Sum of the observed durations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The family (header included) with one series, labelled `labels`.
    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        header(out, name, help, Kind::Histogram);
        let (cumulative, count) = self.cumulative();
        histogram_series(
            out,
            name,
            labels,
            &LATENCY_BUCKETS_SECONDS,
            &cumulative,
            count,
            self.sum_seconds(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn buckets_are_sorted_and_positive() {
        assert!(LATENCY_BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1]));
        assert!(LATENCY_BUCKETS_SECONDS.iter().all(|&b| b > 0.0));
    }

    #[test]
    fn duration_histogram_is_cumulative_and_inf_is_the_count() {
        let h = DurationHistogram::default();
        for ms in [0, 1, 1, 3, 40, 2_000, 60_000] {
            h.observe(Duration::from_millis(ms));
        }
        let (cum, count) = h.cumulative();
        assert_eq!(count, 7);
        assert!(cum.windows(2).all(|w| w[0] <= w[1]), "{cum:?}");
        let at = |le: f64| {
            cum[LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&b| b == le)
                .unwrap()]
        };
        // 0 ms and the two 1 ms (exactly on the bound: `le` is inclusive).
        assert_eq!(at(0.001), 3);
        assert_eq!(at(0.005), 4);
        assert_eq!(at(0.05), 5);
        assert_eq!(at(2.5), 6);
        // 60 s is past the last bound: only in +Inf.
        assert_eq!(at(30.0), 6);
        assert!((h.sum_seconds() - 62.045).abs() < 1e-9);

        let mut out = String::new();
        h.render(&mut out, "x_seconds", "X.", "a=\"b\"");
        assert!(out.contains("# HELP x_seconds X.\n# TYPE x_seconds histogram\n"));
        assert!(
            out.contains("x_seconds_bucket{a=\"b\",le=\"0.001\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 7\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{a=\"b\"} 7\n"), "{out}");
    }

    #[test]
    fn unlabelled_series_have_no_braces() {
        let mut out = String::new();
        histogram_series(&mut out, "y", "", &[1.0], &[2], 3, 4.5);
        assert_eq!(
            out,
            "y_bucket{le=\"1\"} 2\ny_bucket{le=\"+Inf\"} 3\ny_sum 4.5\ny_count 3\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("a", "x\"y\\z\nw"), ("b", "c")]),
            "a=\"x\\\"y\\\\z\\nw\",b=\"c\""
        );
    }
}
