//! The etcd key layout (DESIGN §5) and the records stored under it.
//!
//! Records are JSON so that `etcdctl get` stays readable when debugging.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::PhysicalPlan;
use crate::topology::TopologySpec;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/squall";

/// Keys of one topology under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyKeys {
    root: String,
}

impl TopologyKeys {
    pub fn new(prefix: &str, namespace: &str, name: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        TopologyKeys {
            root: format!("{prefix}/topologies/{namespace}/{name}/"),
        }
    }

    /// Everything of this topology: delete this prefix to remove it.
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn assignment(&self) -> String {
        format!("{}assignment", self.root)
    }
    pub fn control(&self) -> String {
        format!("{}control", self.root)
    }
    pub fn workers_prefix(&self) -> String {
        format!("{}workers/", self.root)
    }
    pub fn worker(&self, slot: u32) -> String {
        format!("{}workers/{slot}", self.root)
    }
    pub fn stats_prefix(&self) -> String {
        format!("{}stats/", self.root)
    }
    pub fn stats(&self, slot: u32) -> String {
        format!("{}stats/{slot}", self.root)
    }

    /// The slot number at the end of a `workers/<slot>` or `stats/<slot>` key.
    pub fn slot_of_key(key: &str) -> Option<u32> {
        key.rsplit('/').next()?.parse().ok()
    }
}

/// All topologies under a prefix.
pub fn topologies_prefix(prefix: &str) -> String {
    format!("{}/topologies/", prefix.trim_end_matches('/'))
}

/// The operator's leader-election key.
pub fn leader_key(prefix: &str) -> String {
    format!("{}/operator/leader", prefix.trim_end_matches('/'))
}

/// Which topology a record belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopologyRef {
    pub namespace: String,
    pub name: String,
}

/// The versioned plan, written by the operator (or the local launcher).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Strictly increasing; a worker applies a version at most once.
    pub version: u64,
    pub topology: TopologyRef,
    /// The spec the plan was computed from, so a worker needs nothing but etcd.
    pub spec: TopologySpec,
    pub plan: PhysicalPlan,
}

/// Life-cycle commands, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub active: bool,
    /// Set when the topology is being killed: deactivate, drain, tear down.
    #[serde(default)]
    pub killed: bool,
    /// Bumped for each rebalance.
    #[serde(default)]
    pub rebalance_epoch: u64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            active: true,
            killed: false,
            rebalance_epoch: 0,
        }
    }
}

/// What a worker's state is, as its supervisor sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Starting,
    Running,
    Draining,
    Error,
}

/// A worker's registration, kept under its supervisor's lease (its heartbeat).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerRecord {
    pub slot: u32,
    pub pod: String,
    /// `host:port` of the worker's tuple transport.
    pub endpoint: String,
    /// The assignment version the worker runs.
    pub applied_version: u64,
    pub state: WorkerState,
    /// Why the worker cannot run (for example an unknown component), for the operator's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A latency summary in milliseconds, from an HDR histogram.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Counters and latencies of one component (summed over its tasks), as in Storm's UI.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ComponentStats {
    pub emitted: u64,
    pub transferred: u64,
    pub acked: u64,
    pub failed: u64,
    pub executed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute_latency_ms: Option<LatencySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_latency_ms: Option<LatencySummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_latency_ms: Option<LatencySummary>,
    /// Fraction of the window spent executing (1.0 = saturated).
    #[serde(default)]
    pub capacity: f64,
    /// Spout messages replayed after a fail or timeout.
    #[serde(default)]
    pub replayed: u64,
    /// Spout tuples emitted with a message id: the tuple trees started.
    #[serde(default)]
    pub roots: u64,
}

/// A worker's stats, published by its supervisor. Counters are totals since start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WorkerStats {
    pub slot: u32,
    pub applied_version: u64,
    /// Unix time in milliseconds when the snapshot was taken.
    pub timestamp_ms: u64,
    pub components: BTreeMap<String, ComponentStats>,
    /// Complete latency of each spout component over the last 5–10 s (the
    /// latencies in `components` cover the worker's whole life).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recent_complete_latency_ms: BTreeMap<String, LatencySummary>,
    /// Tuple trees open at this worker's spout tasks.
    #[serde(default)]
    pub pending: u64,
    /// Every spout task of this worker is finished (a finite spout reached its
    /// limit) and has no open tree; true for a worker without spouts.
    #[serde(default)]
    pub spouts_done: bool,
}
