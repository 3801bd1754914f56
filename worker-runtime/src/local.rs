//! Local mode: a whole topology in one process, like Storm's LocalCluster.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use squall_api::{PhysicalPlan, PlannedKind, TopologySpec};

use crate::component::Registry;
use crate::layout::{Layout, LayoutError};
use crate::metrics::{ComponentMetrics, ExecMetrics, MetricsHub};
use crate::transfer::TransferConfig;
use crate::worker::{StartError, Worker};

use crate::report::print_table;
pub use crate::report::{Percentiles, Summary, format_ms, format_table, render_table, stats_of};

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
    let catalog = registry.catalog();
    squall_api::validate(&spec, Some(&catalog)).map_err(LayoutError::from)?;
    let plan = PhysicalPlan::compute(&spec);
    let layout = Arc::new(Layout::new(name, spec, plan, &catalog)?);
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
    let drain_deadline = Instant::now()
        + Duration::from_nanos(crate::spout_trees::longest_open_ns(layout.timeout_ns))
        + Duration::from_secs(1);
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
