//! The worker's side of the localhost channel to its supervisor.

use std::sync::{Arc, Mutex};

use squall_api::records::{Assignment, Control, WorkerState, WorkerStats};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use squall_api::records::{ComponentStats, LatencySummary};

use crate::local::stats_of;
use crate::metrics::{ComponentMetrics, MetricsHub};
use crate::net::proto::worker_agent_server::WorkerAgent;
use crate::net::proto::{HealthReply, HealthRequest, Notice, NoticeReply};

/// What the worker tells its supervisor.
#[derive(Default)]
pub struct WorkerStatus {
    pub state: Option<WorkerState>,
    pub applied_version: u64,
    pub endpoint: String,
    pub error: Option<String>,
    pub pending: u64,
    pub spouts_done: bool,
}

/// A change the supervisor saw in etcd.
pub enum Notified {
    Assignment(Box<Assignment>),
    Control(Control),
}

pub struct AgentService {
    pub slot: u32,
    pub status: Arc<Mutex<WorkerStatus>>,
    pub hub: MetricsHub,
    pub notices: mpsc::Sender<Notified>,
    /// The metrics at the start of the current latency window.
    pub baseline: Mutex<Option<(Instant, BTreeMap<String, ComponentMetrics>)>>,
}

/// Latencies in published stats cover at least this much recent time.
const LATENCY_WINDOW: Duration = Duration::from_secs(5);

impl AgentService {
    /// Whole-life stats per component, and each spout's complete latency over
    /// the last 5–10 s, so a status shows how the topology does now (a
    /// rebalance's slow trees fade out instead of ruling p99 for good).
    fn stats(
        &self,
    ) -> (
        BTreeMap<String, ComponentStats>,
        BTreeMap<String, LatencySummary>,
    ) {
        let now = self.hub.collect();
        let mut baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        let recent = match baseline.as_ref() {
            Some((at, base)) => stats_of(&now, Some((base, at.elapsed().as_nanos() as u64)))
                .into_iter()
                .filter_map(|(id, s)| s.complete_latency_ms.map(|l| (id, l)))
                .collect(),
            None => BTreeMap::new(),
        };
        let total = stats_of(&now, None);
        if baseline
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= LATENCY_WINDOW)
        {
            *baseline = Some((Instant::now(), now));
        }
        (total, recent)
    }
}

pub fn state_name(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Starting => "starting",
        WorkerState::Running => "running",
        WorkerState::Draining => "draining",
        WorkerState::Error => "error",
        WorkerState::Crashed => "crashed",
    }
}
pub fn parse_state(s: &str) -> WorkerState {
    match s {
        "running" => WorkerState::Running,
        "draining" => WorkerState::Draining,
        "error" => WorkerState::Error,
        "crashed" => WorkerState::Crashed,
        _ => WorkerState::Starting,
    }
}

#[tonic::async_trait]
impl WorkerAgent for AgentService {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        let (state, applied, endpoint, error, pending, done) = {
            let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            (
                s.state.unwrap_or(WorkerState::Starting),
                s.applied_version,
                s.endpoint.clone(),
                s.error.clone(),
                s.pending,
                s.spouts_done,
            )
        };
        let (components, recent_complete_latency_ms) = self.stats();
        let stats = WorkerStats {
            slot: self.slot,
            incarnation: super::incarnation(),
            applied_version: applied,
            timestamp_ms: super::unix_ms(),
            components,
            recent_complete_latency_ms,
            pending,
            spouts_done: done,
        };
        let stats_json =
            serde_json::to_string(&stats).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(HealthReply {
            state: state_name(state).to_string(),
            applied_version: applied,
            endpoint,
            stats_json,
            error: error.unwrap_or_default(),
        }))
    }

    async fn notify(&self, req: Request<Notice>) -> Result<Response<NoticeReply>, Status> {
        let n = req.into_inner();
        if !n.assignment_json.is_empty() {
            let a: Assignment = serde_json::from_str(&n.assignment_json)
                .map_err(|e| Status::invalid_argument(format!("assignment: {e}")))?;
            let _ = self.notices.send(Notified::Assignment(Box::new(a))).await;
        }
        if !n.control_json.is_empty() {
            let c: Control = serde_json::from_str(&n.control_json)
                .map_err(|e| Status::invalid_argument(format!("control: {e}")))?;
            let _ = self.notices.send(Notified::Control(c)).await;
        }
        Ok(Response::new(NoticeReply {}))
    }
}
