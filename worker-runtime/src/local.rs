//! Local mode: a whole topology in one process, like Storm's LocalCluster.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use squall_api::records::ComponentStats;
use squall_api::{PhysicalPlan, PlannedKind, TopologySpec};

use crate::component::Registry;
use crate::layout::{Layout, LayoutError};
use crate::metrics::{ComponentMetrics, ExecMetrics, MetricsHub};
use crate::transfer::TransferConfig;
use crate::worker::{StartError, Worker};

/// How a local run behaves.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Stop after this long (`None`: run until the spouts are done or interrupted).
    pub duration: Option<Duration>,
    /// How often to print the live table (`None`: never).
    pub report_every: Option<Duration>,
    /// Print the live table to stderr instead of stdout (stdout then holds only the summary).
    pub table_to_stderr: bool,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the web UI here.
    pub ui_addr: Option<SocketAddr>,
    /// Batch size, queue depth and linger between executors.
    pub transfer: TransferConfig,
    /// Set from outside (Ctrl-C) to stop the run early.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            duration: None,
            report_every: Some(Duration::from_secs(5)),
            table_to_stderr: false,
            metrics_addr: None,
            ui_addr: None,
            transfer: TransferConfig::default(),
            interrupt: None,
        }
    }
}

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

/// Why a local run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The spec cannot be laid out (an unknown component, a bad grouping).
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A component could not start (its factory, `open` or `prepare` failed or panicked).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The metrics address could not be served.
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    /// The web UI's address could not be served.
    #[error("cannot serve the web UI: {0}")]
    Ui(std::io::Error),
    /// A component panicked while the topology ran.
    #[error("{0}; the topology stopped")]
    Crashed(crate::executor::Crash),
}

/// Run `spec` in this process until its spouts are done, the duration passes, or it is interrupted.
pub fn run(
    registry: &Registry,
    name: &str,
    spec: TopologySpec,
    opts: &LocalOptions,
) -> Result<Summary, LocalError> {
    // Validate before computing the plan: a manifest over the limits must not
    // get to allocate one.
    squall_api::validate(&spec, Some(&registry.catalog())).map_err(LayoutError::from)?;
    let plan = PhysicalPlan::compute(&spec);
    let layout = Arc::new(Layout::new(name, spec, plan, registry)?);
    let hub = MetricsHub::new();
    let slots: Vec<u32> = (0..layout.plan.workers).collect();
    let worker = Worker::start(
        layout.clone(),
        registry,
        &slots,
        None,
        opts.transfer,
        hub.clone(),
    )?;

    if let Some(addr) = opts.metrics_addr {
        let hub = hub.clone();
        let topology = name.to_string();
        // One process runs every slot: series carry the topology, not a slot.
        let endpoints = squall_coord::admin::Endpoints::always_ready(move || {
            hub.render_prometheus(&[("topology", &topology)])
        });
        let bound = squall_coord::admin::serve(addr, endpoints).map_err(LocalError::Metrics)?;
        tracing::info!(%bound, "serving Prometheus metrics on /metrics");
    }

    let ui = match opts.ui_addr {
        Some(addr) => Some(crate::ui::LocalUi::serve(addr).map_err(LocalError::Ui)?.0),
        None => None,
    };
    let window = crate::metrics::RecentWindow::default();
    let mut last_ui = Instant::now() - Duration::from_secs(1);
    let started = Instant::now();
    let show = |phase: &str| {
        if let Some(ui) = &ui {
            let (total, recent, window_ms) = window.sample(&hub);
            let rows = slots
                .iter()
                .map(|&slot| squall_api::view::WorkerView {
                    slot,
                    node: Some("this process".into()),
                    state: "running".into(),
                    uptime_seconds: Some(started.elapsed().as_secs()),
                    restarts: Some(0),
                    ..Default::default()
                })
                .collect();
            let recent = [squall_api::view::Recent {
                components: &recent,
                window_ms,
            }];
            ui.update(name, &layout.spec, phase, &total, &recent, rows);
        }
    };
    let mut last_report = Instant::now();
    let mut last = hub.collect();
    let stopped_by = loop {
        std::thread::sleep(Duration::from_millis(50));
        if last_ui.elapsed() >= Duration::from_secs(1) {
            last_ui = Instant::now();
            show("Running");
        }
        if opts
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            break "interrupt";
        }
        if let Some(crash) = worker.crashed() {
            worker.shutdown();
            return Err(LocalError::Crashed(crash));
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break "duration";
        }
        if worker.spouts_done() && worker.pending() == 0 {
            break "limit";
        }
        if let Some(every) = opts.report_every
            && last_report.elapsed() >= every
        {
            let now = hub.collect();
            let table = render_table(&now, &last, last_report.elapsed(), started.elapsed());
            print_table(&table, opts.table_to_stderr);
            last = now;
            last_report = Instant::now();
        }
    };

    // Deactivate, then let open trees complete or time out.
    worker.set_active(false);
    show("Draining");
    let drain_deadline =
        Instant::now() + Duration::from_nanos(layout.timeout_ns) + Duration::from_secs(1);
    while !worker.drained() && Instant::now() < drain_deadline {
        if stopped_by != "interrupt"
            && opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    // Counted once every executor has stopped, so that an ack racing the
    // shutdown cannot be counted both as acked and as open.
    let open_at_end = worker.shutdown();

    let fin = hub.collect();
    let summary = summarize(name, &fin, elapsed, stopped_by, open_at_end);
    // Checked at the end of every run; in a debug build (every test in the
    // suite) a gap is a panic, so that no test can pass over it.
    if let Err(e) = summary.check_totals() {
        tracing::error!("{e}");
        debug_assert!(false, "{e}");
    }
    Ok(summary)
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

fn summarize(
    name: &str,
    fin: &BTreeMap<String, ComponentMetrics>,
    elapsed: Duration,
    stopped_by: &str,
    open_at_end: usize,
) -> Summary {
    let mut spouts = ExecMetrics::default();
    for c in fin.values().filter(|c| c.kind == PlannedKind::Spout) {
        spouts.merge(&c.metrics);
    }
    Summary::new(
        name,
        &spouts.to_stats(0, 0),
        elapsed,
        stopped_by,
        open_at_end,
        stats_of(fin, None),
    )
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

fn print_table(table: &str, to_stderr: bool) {
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
