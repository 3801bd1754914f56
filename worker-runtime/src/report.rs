//! Run reporting, shared by local mode, `--processes` and the cluster
//! launcher: the end-of-run [`Summary`] (what `--json` prints), the live
//! table, and per-component stats over a window.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use squall_api::PlannedKind;
use squall_api::records::ComponentStats;

use crate::metrics::ComponentMetrics;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Default)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The longest seen.
    pub max: f64,
}

/// The end-of-run summary; `--json` prints it as the last line.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The topology's name.
    pub topology: String,
    /// Tuple trees completed (spout `ack` calls).
    pub acked: u64,
    /// Tuple trees failed or timed out (spout `fail` calls).
    pub failed: u64,
    /// Spout tuples emitted with a message id, replays included.
    pub emitted: u64,
    /// Of `emitted`, those that replayed a failed message id.
    pub replayed: u64,
    /// How long the run lasted, in seconds (the drain at the end included).
    pub duration_s: f64,
    /// `acked` over `duration_s`.
    pub acked_per_s: f64,
    /// From a root's emit (or its scheduled emit) to its tree's completion.
    pub complete_latency_ms: Percentiles,
    /// Why the run ended: `limit` (spouts done), `duration`, or `interrupt`.
    pub stopped_by: String,
    /// Trees still open when the run was torn down (0 after a clean drain).
    pub open_at_end: usize,
    /// Each component's totals, by component id (acker included).
    pub components: BTreeMap<String, ComponentStats>,
}

impl Summary {
    /// The run's totals account for every root: each emit (replays included)
    /// ended acked, failed, or still open. A run of one process must always
    /// pass this; an error names the gap.
    ///
    /// # Errors
    ///
    /// When `emitted` is not `acked + failed + open_at_end`.
    pub fn check_totals(&self) -> Result<(), String> {
        let settled = self.acked + self.failed + self.open_at_end as u64;
        if settled == self.emitted {
            Ok(())
        } else {
            Err(format!(
                "the totals of {} do not add up: emitted={} but acked={} + failed={} + open={} = {settled}",
                self.topology, self.emitted, self.acked, self.failed, self.open_at_end
            ))
        }
    }
}

impl Summary {
    /// A run's summary from its spouts' totals (acked, failed, roots, replayed,
    /// complete latency) and the per-component stats.
    pub fn new(
        name: &str,
        spouts: &ComponentStats,
        elapsed: Duration,
        stopped_by: &str,
        open_at_end: usize,
        components: BTreeMap<String, ComponentStats>,
    ) -> Summary {
        let secs = elapsed.as_secs_f64();
        Summary {
            topology: name.to_string(),
            acked: spouts.acked,
            failed: spouts.failed,
            emitted: spouts.roots,
            replayed: spouts.replayed,
            duration_s: secs,
            acked_per_s: if secs > 0.0 {
                spouts.acked as f64 / secs
            } else {
                0.0
            },
            complete_latency_ms: spouts.complete_latency_ms.map_or_else(
                Percentiles::default,
                |l| Percentiles {
                    p50: l.p50,
                    p99: l.p99,
                    max: l.max,
                },
            ),
            stopped_by: stopped_by.to_string(),
            open_at_end,
            components,
        }
    }
}

/// Per-component stats over a window (`since = None`: since the start).
pub fn stats_of(
    now: &BTreeMap<String, ComponentMetrics>,
    since: Option<(&BTreeMap<String, ComponentMetrics>, u64)>,
) -> BTreeMap<String, ComponentStats> {
    now.iter()
        .map(|(id, c)| {
            let (m, window) = match since.and_then(|(prev, w)| prev.get(id).map(|p| (p, w))) {
                Some((p, w)) => (c.metrics.since(&p.metrics), w),
                None => (c.metrics.clone(), c.metrics.at_ns),
            };
            (id.clone(), m.to_stats(window, c.executors))
        })
        .collect()
}

/// The live table: one row per component, rates over the last window.
pub fn render_table(
    now: &BTreeMap<String, ComponentMetrics>,
    prev: &BTreeMap<String, ComponentMetrics>,
    window: Duration,
    uptime: Duration,
) -> String {
    let stats = stats_of(now, Some((prev, window.as_nanos() as u64)));
    let rows = stats
        .into_iter()
        .filter_map(|(id, s)| now.get(&id).map(|c| (id, (c.kind, s))))
        .collect();
    format_table(&rows, window, uptime, "")
}

/// The live table, one row per component. The counters in `rows` are the
/// activity within `window`; `note` ends the header line.
pub fn format_table(
    rows: &BTreeMap<String, (PlannedKind, ComponentStats)>,
    window: Duration,
    uptime: Duration,
    note: &str,
) -> String {
    let w = window.as_secs_f64().max(1e-9);
    let mut out = format!(
        "--- {:>6.1}s {:<16} {:>6} {:>11} {:>11} {:>10} {:>9} {:>11} {:>10} {:>10} {:>8}{note}\n",
        uptime.as_secs_f64(),
        "component",
        "kind",
        "emitted/s",
        "transfer/s",
        "acked/s",
        "failed/s",
        "executed/s",
        "exec p99",
        "compl p99",
        "capacity"
    );
    for (id, (kind, s)) in rows {
        let kind = match kind {
            PlannedKind::Spout => "spout",
            PlannedKind::Bolt => "bolt",
            PlannedKind::Acker => "acker",
        };
        let ms = |l: Option<squall_api::records::LatencySummary>| {
            l.map_or("-".to_string(), |l| format_ms(l.p99))
        };
        out.push_str(&format!(
            "          {:<16} {:>6} {:>11.0} {:>11.0} {:>10.0} {:>9.0} {:>11.0} {:>10} {:>10} {:>8.2}\n",
            id,
            kind,
            s.emitted as f64 / w,
            s.transferred as f64 / w,
            s.acked as f64 / w,
            s.failed as f64 / w,
            s.executed as f64 / w,
            ms(s.execute_latency_ms),
            ms(s.complete_latency_ms),
            s.capacity
        ));
    }
    out
}

pub(crate) fn print_table(table: &str, to_stderr: bool) {
    if to_stderr {
        let _ = std::io::stderr().write_all(table.as_bytes());
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(table.as_bytes());
        let _ = out.flush();
    }
}

/// A latency in milliseconds, in the unit that reads best.
pub fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.2}ms")
    } else if ms >= 0.001 {
        format!("{:.1}µs", ms * 1000.0)
    } else {
        format!("{:.0}ns", ms * 1e6)
    }
}
