//! `--ui ADDR` in local mode: the operator's web UI (`squall_coord::ui`) for
//! a run on this machine, in one process or with `--processes`. The run's
//! loop refreshes the view about once a second; the page polls it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use squall_api::TopologySpec;
use squall_api::records::ComponentStats;
use squall_api::view::{self, Recent, TopologyView, UiSnapshot, WorkerView};

/// The one topology a local run shows, shared with the UI server.
#[derive(Clone)]
pub struct LocalUi {
    view: Arc<Mutex<TopologyView>>,
}

impl LocalUi {
    /// Serve the page on `addr`. Returns it and the bound address.
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound.
    pub fn serve(addr: SocketAddr) -> std::io::Result<(LocalUi, SocketAddr)> {
        let ui = LocalUi {
            view: Arc::default(),
        };
        let shared = ui.view.clone();
        let bound = squall_coord::ui::serve(addr, move || {
            let view = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
            UiSnapshot::now("local", vec![view])
        })?;
        tracing::info!(%bound, "serving the web UI");
        eprintln!("web UI: http://{bound}/");
        Ok((ui, bound))
    }

    /// Show the run as it is now: `totals` over its life, each process's
    /// recent window, and one row per worker process.
    pub fn update(
        &self,
        name: &str,
        spec: &TopologySpec,
        phase: &str,
        totals: &BTreeMap<String, ComponentStats>,
        recent: &[Recent<'_>],
        workers: Vec<WorkerView>,
    ) {
        let components = view::component_statuses(spec, totals, recent);
        let spouts = components
            .iter()
            .filter(|c| c.kind == Some(squall_api::ComponentKind::Spout));
        let (acked, failed) = spouts.fold((0.0, 0.0), |(a, f), c| {
            (a + c.acked_per_second, f + c.failed_per_second)
        });
        let p99 = components
            .iter()
            .filter_map(|c| c.complete_latency_p99_ms)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let ready = workers.iter().filter(|w| w.state == "running").count() as u32;
        let v = TopologyView {
            namespace: "local".into(),
            name: name.to_string(),
            phase: phase.to_string(),
            plan_version: workers.iter().filter_map(|w| w.plan_version).max(),
            workers_desired: workers.len() as u32,
            workers_ready: ready,
            acked_per_second: Some((acked * 10.0_f64).round() / 10.0),
            failed_per_second: Some((failed * 10.0_f64).round() / 10.0),
            complete_latency_p99_ms: p99,
            busiest: view::busiest(&components),
            edges: view::edges(spec, recent),
            components,
            workers,
            events: Vec::new(),
            commands: Vec::new(),
        };
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}
