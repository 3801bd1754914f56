//! What the web UI shows: one view per topology, rebuilt on every reconcile
//! pass (every 2 s at most), and the Events this operator recorded for it.
//! The UI server (`squall_coord::ui`) reads [`Views::snapshot`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use squall_api::records::{WorkerRecord, WorkerStats};
use squall_api::view::{EventView, TopologyView, UiSnapshot, WorkerView};

use crate::pods;

/// Events kept per topology for the UI.
const EVENTS_KEPT: usize = 20;

#[derive(Default)]
pub struct Views {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    views: BTreeMap<String, TopologyView>,
    events: HashMap<String, VecDeque<EventView>>,
}

impl Views {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every topology's latest view.
    pub fn snapshot(&self) -> UiSnapshot {
        UiSnapshot::now("kubernetes", self.inner().views.values().cloned().collect())
    }

    /// Keep `view` as the topology's latest, with its recent events.
    pub fn update(&self, key: &str, mut view: TopologyView) {
        let mut inner = self.inner();
        view.events = inner
            .events
            .get(key)
            .map(|e| e.iter().rev().cloned().collect())
            .unwrap_or_default();
        inner.views.insert(key.to_string(), view);
    }

    /// An Event was recorded for the topology.
    pub fn record_event(&self, key: &str, warning: bool, reason: &str, message: &str) {
        let mut inner = self.inner();
        let ring = inner.events.entry(key.to_string()).or_default();
        if ring.len() == EVENTS_KEPT {
            ring.pop_front();
        }
        ring.push_back(EventView {
            time: Timestamp::now().to_string(),
            type_: if warning { "Warning" } else { "Normal" }.into(),
            reason: reason.into(),
            message: message.into(),
        });
    }

    /// The topology is gone.
    pub fn forget(&self, key: &str) {
        let mut inner = self.inner();
        inner.views.remove(key);
        inner.events.remove(key);
    }
}

/// One row per slot: its pod, node, uptime and restarts from Kubernetes, its
/// state and plan version from its etcd record, its last heartbeat from its stats.
pub fn worker_rows(
    desired: u32,
    pods: &BTreeMap<u32, Pod>,
    workers: &BTreeMap<u32, WorkerRecord>,
    stats: &BTreeMap<u32, WorkerStats>,
    now_ms: u64,
) -> Vec<WorkerView> {
    let slots: std::collections::BTreeSet<u32> = (0..desired)
        .chain(pods.keys().copied())
        .chain(workers.keys().copied())
        .collect();
    slots
        .into_iter()
        .map(|slot| {
            let pod = pods.get(&slot);
            let record = workers.get(&slot);
            let status = pod.and_then(|p| p.status.as_ref());
            WorkerView {
                slot,
                pod: pod.and_then(|p| p.metadata.name.clone()),
                node: pod.and_then(|p| p.spec.as_ref()?.node_name.clone()),
                state: match record {
                    Some(r) => r.state.as_str().to_string(),
                    None if pod.is_some_and(pods::is_ready) => "ready".into(),
                    None if pod.is_some() => "pending".into(),
                    None => "missing".into(),
                },
                uptime_seconds: status
                    .and_then(|s| s.start_time.as_ref())
                    .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
                    .map(|start| now_ms.saturating_sub(start) / 1000),
                restarts: status.map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .map(|c| c.restart_count.max(0) as u32)
                        .sum()
                }),
                plan_version: record.map(|r| r.applied_version),
                last_heartbeat_seconds_ago: stats
                    .get(&slot)
                    .map(|s| (now_ms.saturating_sub(s.timestamp_ms) as f64 / 100.0).round() / 10.0),
            }
        })
        .collect()
}
