//! The etcd key layout (DESIGN §5) and the records stored under it.
//!
//! Records are JSON so that `etcdctl get` stays readable when debugging.

use std::collections::BTreeMap;

use schemars::JsonSchema;
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

impl Assignment {
    /// The assignment of `spec` that follows `current`: version 1 when there is
    /// none, one more than it otherwise.
    ///
    /// Workers apply a version at most once and ignore anything not newer than
    /// what they run, so every writer (the operator, the local launcher, the
    /// `rebalance` command) must take the next version from this one rule.
    ///
    /// # Examples
    ///
    /// ```
    /// # use squall_api::records::{Assignment, TopologyRef};
    /// # let (_, spec) = squall_api::TopologySpec::from_manifest(
    /// #     "image: i\nspouts: [{id: s, component: S}]\n").unwrap();
    /// let at = TopologyRef { namespace: "ns".into(), name: "wc".into() };
    /// let first = Assignment::following(None, at.clone(), spec.clone());
    /// assert_eq!(first.version, 1);
    /// assert_eq!(Assignment::following(Some(&first), at, spec).version, 2);
    /// ```
    pub fn following(
        current: Option<&Assignment>,
        topology: TopologyRef,
        spec: TopologySpec,
    ) -> Self {
        let plan = PhysicalPlan::compute(&spec);
        Assignment {
            version: current.map_or(1, |a| a.version + 1),
            topology,
            spec,
            plan,
        }
    }
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
    /// A rebalance the operator is in the middle of, so that a restarted
    /// operator resumes it at its step and with its deadline. Workers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceProgress>,
}

/// A rebalance in progress (Storm's: deactivate, drain, reassign, reactivate).
/// Its step follows from the record and the assignment: while the assignment
/// is still `from_version` the spouts are deactivated and open trees drain;
/// once the assignment has moved on, what is left is to reactivate and clear it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RebalanceProgress {
    /// The plan version being moved away from.
    pub from_version: u64,
    /// When the spouts were deactivated (unix ms): the drain lasts at least a second.
    pub deactivated_ms: u64,
    /// When the drain ends even if trees are still open (unix ms): the
    /// deactivation plus the message timeout.
    pub drain_deadline_ms: u64,
    /// A roll (pods on an old template, the plan unchanged): when the old
    /// pods were deleted (unix ms). The spouts stay off until every slot runs
    /// a ready pod of the new template, or for a bounded wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_ms: Option<u64>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            active: true,
            killed: false,
            rebalance_epoch: 0,
            rebalance: None,
        }
    }
}

/// Unix time in milliseconds, as records carry it.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a worker's state is, as its supervisor sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Starting,
    Running,
    Draining,
    /// The worker cannot run this spec (a start error): the topology is `Failed`.
    Error,
    /// The worker stopped (a component panicked, or it stopped answering its
    /// supervisor) and is restarted: the topology is `Degraded` until it is back.
    Crashed,
}

impl WorkerState {
    /// The state's name, as records and the supervisor's channel spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Draining => "draining",
            WorkerState::Error => "error",
            WorkerState::Crashed => "crashed",
        }
    }
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

impl LatencySummary {
    /// Combine two summaries of separate histograms: counts add, the mean and
    /// p50 are weighted by count, p99 and max take the larger. Percentiles of
    /// separate histograms do not merge exactly, so p99 is an upper bound.
    pub fn merge(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) => {
                let n = (a.count + b.count).max(1) as f64;
                let w = |x: f64, y: f64| (x * a.count as f64 + y * b.count as f64) / n;
                Some(LatencySummary {
                    count: a.count + b.count,
                    mean: w(a.mean, b.mean),
                    p50: w(a.p50, b.p50),
                    p99: a.p99.max(b.p99),
                    max: a.max.max(b.max),
                })
            }
        }
    }
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
    /// Errors the component reported (`report_error`, a multilang `error`, a
    /// multilang subprocess restarted).
    #[serde(default)]
    pub errors: u64,
    /// The latest of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ReportedError>,
    /// Tuples executed (bolts), by the component that emitted them: the
    /// traffic on each edge of the graph.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, u64>,
    /// Counters the component keeps itself, by name: what multilang components
    /// send with Storm's `metrics` command (`storm.rpcMetrics(name, n)` adds n).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, u64>,
}

/// An error a component reported, as status and Events show it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReportedError {
    /// What went wrong (cut to [`ReportedError::MAX_MESSAGE`] bytes).
    pub message: String,
    /// The task that reported it.
    pub task: u32,
    /// Unix time in milliseconds.
    pub time_ms: u64,
}

impl ReportedError {
    /// Longest message kept: status stays small however long a traceback is.
    pub const MAX_MESSAGE: usize = 1024;

    pub fn new(message: &str, task: u32, time_ms: u64) -> ReportedError {
        let mut end = message.len().min(Self::MAX_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        ReportedError {
            message: message[..end].to_string(),
            task,
            time_ms,
        }
    }

    /// The later of two (the first on a tie).
    pub fn later(a: Option<&ReportedError>, b: Option<&ReportedError>) -> Option<ReportedError> {
        match (a, b) {
            (Some(a), Some(b)) if b.time_ms > a.time_ms => Some(b.clone()),
            (Some(a), _) => Some(a.clone()),
            (None, b) => b.cloned(),
        }
    }
}

/// Add counts by name: `into[name] += more[name]` for every name of `more`.
pub fn add_counts(into: &mut BTreeMap<String, u64>, more: &BTreeMap<String, u64>) {
    for (name, n) in more {
        *into.entry(name.clone()).or_default() += n;
    }
}

impl ComponentStats {
    /// Add `other` (another worker's or another process's figures) into this:
    /// counters add, capacity takes the busier, latencies merge.
    pub fn add(&mut self, other: &ComponentStats) {
        self.emitted += other.emitted;
        self.transferred += other.transferred;
        self.acked += other.acked;
        self.failed += other.failed;
        self.executed += other.executed;
        self.replayed += other.replayed;
        self.roots += other.roots;
        self.errors += other.errors;
        self.last_error = ReportedError::later(self.last_error.as_ref(), other.last_error.as_ref());
        self.capacity = self.capacity.max(other.capacity);
        add_counts(&mut self.inputs, &other.inputs);
        add_counts(&mut self.metrics, &other.metrics);
        self.execute_latency_ms =
            LatencySummary::merge(self.execute_latency_ms, other.execute_latency_ms);
        self.process_latency_ms =
            LatencySummary::merge(self.process_latency_ms, other.process_latency_ms);
        self.complete_latency_ms =
            LatencySummary::merge(self.complete_latency_ms, other.complete_latency_ms);
    }

    /// Sum per component: `into[id] += more[id]` for every component of `more`.
    pub fn add_all(
        into: &mut BTreeMap<String, ComponentStats>,
        more: &BTreeMap<String, ComponentStats>,
    ) {
        for (id, c) in more {
            into.entry(id.clone()).or_default().add(c);
        }
    }
}

/// A worker's stats, published by its supervisor. Counters are totals since
/// the worker process started (its `incarnation`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WorkerStats {
    pub slot: u32,
    /// Which start of the worker process these figures belong to: an id the
    /// process picks once when it starts. Counters restart from zero with a new
    /// process, and a new incarnation is what tells a reader so (see
    /// [`crate::ledger::StatsLedger`]). 0 means unknown (a worker from before
    /// the field existed).
    #[serde(default)]
    pub incarnation: u64,
    pub applied_version: u64,
    /// Unix time in milliseconds when the snapshot was taken.
    pub timestamp_ms: u64,
    pub components: BTreeMap<String, ComponentStats>,
    /// Each component's figures over the last `recent_window_ms` (5–10 s):
    /// counts in that window (rates), its latencies and capacity. The
    /// figures in `components` cover the worker's whole life.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recent: BTreeMap<String, ComponentStats>,
    /// The length of the window `recent` covers.
    #[serde(default)]
    pub recent_window_ms: u64,
    /// Tuple trees open at this worker's spout tasks.
    #[serde(default)]
    pub pending: u64,
    /// Every spout task of this worker is finished (a finite spout reached its
    /// limit) and has no open tree; true for a worker without spouts.
    #[serde(default)]
    pub spouts_done: bool,
}

#[cfg(test)]
mod reported_error_tests {
    use super::*;

    #[test]
    fn messages_are_cut_on_a_char_boundary_and_the_later_error_wins() {
        let long = "é".repeat(ReportedError::MAX_MESSAGE);
        let e = ReportedError::new(&long, 3, 10);
        assert!(
            e.message.len() <= ReportedError::MAX_MESSAGE
                && e.message.len() >= ReportedError::MAX_MESSAGE - 1
        );
        let older = ReportedError::new("old", 1, 5);
        assert_eq!(
            ReportedError::later(Some(&older), Some(&e)),
            Some(e.clone())
        );
        assert_eq!(
            ReportedError::later(Some(&e), Some(&older)),
            Some(e.clone())
        );
        assert_eq!(
            ReportedError::later(None, Some(&older)),
            Some(older.clone())
        );
        let mut a = ComponentStats {
            errors: 1,
            last_error: Some(older),
            ..Default::default()
        };
        a.add(&ComponentStats {
            errors: 2,
            last_error: Some(e.clone()),
            ..Default::default()
        });
        assert_eq!((a.errors, a.last_error), (3, Some(e)));
    }
}

#[cfg(test)]
mod control_tests {
    use super::*;

    #[test]
    fn a_control_record_without_rebalance_progress_reads_and_writes_as_before() {
        let old: Control =
            serde_json::from_str(r#"{"active":false,"killed":false,"rebalance_epoch":3}"#).unwrap();
        assert_eq!(old.rebalance, None);
        assert_eq!(old.rebalance_epoch, 3);
        assert!(!serde_json::to_string(&old).unwrap().contains("rebalance\""));
        let mid = Control {
            active: false,
            rebalance: Some(RebalanceProgress {
                from_version: 2,
                deactivated_ms: 1_000,
                drain_deadline_ms: 31_000,
                replaced_ms: None,
            }),
            ..Control::default()
        };
        let json = serde_json::to_string(&mid).unwrap();
        assert_eq!(serde_json::from_str::<Control>(&json).unwrap(), mid);
    }
}
