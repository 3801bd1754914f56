//! The worker's side of the localhost channel to its supervisor.

use std::sync::{Arc, Mutex};

use squall_api::records::{Assignment, Control, WorkerState, WorkerStats};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::metrics::{MetricsHub, RecentWindow};
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
    /// The recent window of the stats it publishes.
    pub recent: RecentWindow,
}

impl AgentService {}

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
        let (components, recent, recent_window_ms) = self.recent.sample(&self.hub);
        let stats = WorkerStats {
            slot: self.slot,
            incarnation: super::incarnation(),
            applied_version: applied,
            timestamp_ms: super::unix_ms(),
            components,
            recent,
            recent_window_ms,
            pending,
            spouts_done: done,
        };
        let stats_json =
            serde_json::to_string(&stats).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(HealthReply {
            state: state.as_str().to_string(),
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
