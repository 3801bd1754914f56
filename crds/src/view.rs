//! What the web UI shows, and the per-component figures that
//! `.status.components` and the UI share.
//!
//! The operator and local mode gather the inputs (workers' stats, pods,
//! events); the pure functions here turn them into figures, so both sides show
//! the same numbers computed the same way. The page itself, and the server
//! that answers `api/topologies` with a [`UiSnapshot`], are in
//! `squall_coord::ui`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::records::{ComponentStats, LatencySummary, ReportedError, WorkerStats};
use crate::topology::{
    ComponentErrorStatus, ComponentKind, GroupingType, TopologySpec, TopologyStats,
};

/// Most entries `.status.components` holds: status stays small (about 300
/// bytes an entry) however large the topology; the UI shows every component.
pub const MAX_STATUS_COMPONENTS: usize = 64;

/// One spout or bolt, as `.status.components[]` and the UI show it. Rates and
/// latencies cover the workers' last 5–10 s; the totals, the topology's life.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub id: String,
    pub kind: Option<ComponentKind>,
    pub tasks: u32,
    pub executors: u32,
    pub emitted_per_second: f64,
    pub acked_per_second: f64,
    pub failed_per_second: f64,
    /// Tuples executed per second (bolts).
    pub executed_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute_latency_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_latency_p99_ms: Option<f64>,
    /// Spouts: tuple-tree complete latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_latency_p99_ms: Option<f64>,
    /// Fraction of time the busiest worker's executors spent executing (1 = saturated).
    pub capacity: f64,
    pub emitted: u64,
    pub acked: u64,
    pub failed: u64,
    /// The latest error the component reported, with how many it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ComponentErrorStatus>,
}

/// The component with the highest capacity (the one to scale first).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Busiest {
    pub component: String,
    pub capacity: f64,
    /// `component capacity`, for `kubectl get -o wide`.
    pub summary: String,
}

/// One stream subscription in the graph, with its traffic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EdgeView {
    pub from: String,
    pub to: String,
    pub stream: String,
    pub grouping: String,
    pub fields: Vec<String>,
    /// Tuples per second that `to` executed from `from` (all its streams).
    pub tuples_per_second: f64,
}

/// One worker row.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerView {
    pub slot: u32,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub state: String,
    pub uptime_seconds: Option<u64>,
    pub restarts: Option<u32>,
    pub plan_version: Option<u64>,
    pub last_heartbeat_seconds_ago: Option<f64>,
}

/// An Event (or a local run's notice).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// RFC 3339.
    pub time: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// What the Storm UI would do with a button, as the command that does it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub action: String,
    pub command: String,
}

/// One topology's page.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopologyView {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub plan_version: Option<u64>,
    pub workers_desired: u32,
    pub workers_ready: u32,
    pub acked_per_second: Option<f64>,
    pub failed_per_second: Option<f64>,
    pub complete_latency_p99_ms: Option<f64>,
    pub busiest: Option<Busiest>,
    pub components: Vec<ComponentStatus>,
    pub edges: Vec<EdgeView>,
    pub workers: Vec<WorkerView>,
    pub events: Vec<EventView>,
    pub commands: Vec<CommandView>,
}

/// The answer of `api/topologies`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UiSnapshot {
    /// `kubernetes` or `local`.
    pub mode: String,
    /// RFC 3339.
    pub generated_at: String,
    pub topologies: Vec<TopologyView>,
}

impl UiSnapshot {
    /// A snapshot taken now.
    pub fn now(mode: &str, topologies: Vec<TopologyView>) -> UiSnapshot {
        UiSnapshot {
            mode: mode.to_string(),
            generated_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            topologies,
        }
    }
}

/// One worker's recent figures: per component over a window of `window_ms`.
pub struct Recent<'a> {
    pub components: &'a BTreeMap<String, ComponentStats>,
    pub window_ms: u64,
}

impl Recent<'_> {
    /// Each worker's recent window, from its stats record.
    pub fn of_workers(stats: &BTreeMap<u32, WorkerStats>) -> Vec<Recent<'_>> {
        stats
            .values()
            .map(|w| Recent {
                components: &w.recent,
                window_ms: w.recent_window_ms,
            })
            .collect()
    }
}

/// Per-component figures: rates summed over the workers' recent windows,
/// latencies and capacity from the worst worker, totals from `totals` (the
/// ledger's life-long counts), in the spec's order.
pub fn component_statuses(
    spec: &TopologySpec,
    totals: &BTreeMap<String, ComponentStats>,
    recent: &[Recent<'_>],
) -> Vec<ComponentStatus> {
    spec.components()
        .map(|(kind, c)| {
            let tasks = c.task_count().max(1);
            let mut st = ComponentStatus {
                id: c.id.clone(),
                kind: Some(kind),
                tasks,
                executors: c.parallelism.clamp(1, tasks),
                ..Default::default()
            };
            let (mut exec, mut process, mut complete) = (None, None, None);
            for r in recent {
                let Some(s) = r.components.get(&c.id) else {
                    continue;
                };
                let per_s = |n: u64| per_second(n, r.window_ms);
                st.emitted_per_second += per_s(s.emitted);
                st.acked_per_second += per_s(s.acked);
                st.failed_per_second += per_s(s.failed);
                st.executed_per_second += per_s(s.executed);
                st.capacity = st.capacity.max(s.capacity);
                exec = LatencySummary::merge(exec, s.execute_latency_ms);
                process = LatencySummary::merge(process, s.process_latency_ms);
                complete = LatencySummary::merge(complete, s.complete_latency_ms);
            }
            st.emitted_per_second = round(st.emitted_per_second, 1);
            st.acked_per_second = round(st.acked_per_second, 1);
            st.failed_per_second = round(st.failed_per_second, 1);
            st.executed_per_second = round(st.executed_per_second, 1);
            st.capacity = round(st.capacity, 3);
            let p99 = |l: Option<LatencySummary>| l.map(|l| round(l.p99, 3));
            st.execute_latency_p99_ms = p99(exec);
            st.process_latency_p99_ms = p99(process);
            st.complete_latency_p99_ms = p99(complete);
            if let Some(t) = totals.get(&c.id) {
                st.emitted = t.emitted;
                st.acked = t.acked;
                st.failed = t.failed;
                st.last_error = t
                    .last_error
                    .as_ref()
                    .map(|e| error_status(&c.id, t.errors, e));
            }
            st
        })
        .collect()
}

/// A reported error as status shows it.
pub fn error_status(component: &str, count: u64, e: &ReportedError) -> ComponentErrorStatus {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    ComponentErrorStatus {
        component: component.to_string(),
        task: e.task,
        message: e.message.clone(),
        time: i64::try_from(e.time_ms)
            .ok()
            .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
            .map(Time),
        count,
    }
}

/// The component with the highest capacity, if any worked at all.
pub fn busiest(components: &[ComponentStatus]) -> Option<Busiest> {
    components
        .iter()
        .filter(|c| c.capacity > 0.0)
        .max_by(|a, b| a.capacity.total_cmp(&b.capacity))
        .map(|c| Busiest {
            component: c.id.clone(),
            capacity: c.capacity,
            summary: format!("{} {:.2}", c.id, c.capacity),
        })
}

/// The graph's edges with their recent traffic.
pub fn edges(spec: &TopologySpec, recent: &[Recent<'_>]) -> Vec<EdgeView> {
    spec.streams
        .iter()
        .map(|s| {
            let rate: f64 = recent
                .iter()
                .filter_map(|r| {
                    let n = r.components.get(&s.to)?.inputs.get(&s.from)?;
                    Some(per_second(*n, r.window_ms))
                })
                .sum();
            EdgeView {
                from: s.from.clone(),
                to: s.to.clone(),
                stream: s.stream.clone(),
                grouping: grouping_name(s.grouping.kind).to_string(),
                fields: s.grouping.fields.clone(),
                tuples_per_second: round(rate, 1),
            }
        })
        .collect()
}

/// The topology-level figures of a view from its status's stats.
pub fn topology_figures(view: &mut TopologyView, stats: Option<&TopologyStats>) {
    if let Some(s) = stats {
        view.acked_per_second = Some(s.acked_per_second);
        view.failed_per_second = Some(s.failed_per_second);
        view.complete_latency_p99_ms =
            (s.complete_latency_p99_ms > 0.0).then_some(s.complete_latency_p99_ms);
    }
}

/// The `kubectl` commands for what Storm UI's buttons do.
pub fn kubectl_commands(namespace: &str, name: &str, workers: u32) -> Vec<CommandView> {
    let target = format!("topology {name} -n {namespace}");
    let patch =
        |spec: &str| format!("kubectl patch {target} --type merge -p '{{\"spec\":{spec}}}'");
    vec![
        CommandView {
            action: "Activate".into(),
            command: patch("{\"active\":true}"),
        },
        CommandView {
            action: "Deactivate".into(),
            command: patch("{\"active\":false}"),
        },
        CommandView {
            action: "Rebalance".into(),
            command: format!("kubectl scale {target} --replicas={}", workers + 1),
        },
        CommandView {
            action: "Kill".into(),
            command: format!("kubectl delete {target}"),
        },
    ]
}

fn grouping_name(kind: GroupingType) -> &'static str {
    match kind {
        GroupingType::Shuffle => "shuffle",
        GroupingType::Fields => "fields",
        GroupingType::All => "all",
        GroupingType::Global => "global",
        GroupingType::None => "none",
        GroupingType::Direct => "direct",
        GroupingType::LocalOrShuffle => "localOrShuffle",
        GroupingType::PartialKey => "partialKey",
    }
}

fn per_second(n: u64, window_ms: u64) -> f64 {
    if window_ms == 0 {
        0.0
    } else {
        n as f64 * 1000.0 / window_ms as f64
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec() -> TopologySpec {
        TopologySpec::from_manifest(
            "spouts: [{id: s, component: S, parallelism: 2}]\n\
             bolts: [{id: b, component: B, parallelism: 3, tasks: 6}]\n\
             streams: [{from: s, to: b, grouping: {type: FIELDS, fields: [w]}}]\n",
        )
        .unwrap()
        .1
    }

    #[test]
    fn rates_add_over_workers_and_latency_and_capacity_take_the_worst() {
        let w = |acked: u64, cap: f64, p99: f64, from_s: u64| {
            let mut m = BTreeMap::new();
            m.insert(
                "s".to_string(),
                ComponentStats {
                    acked,
                    complete_latency_ms: Some(LatencySummary {
                        count: 1,
                        p99,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            m.insert(
                "b".to_string(),
                ComponentStats {
                    executed: from_s,
                    capacity: cap,
                    inputs: [("s".to_string(), from_s)].into(),
                    ..Default::default()
                },
            );
            m
        };
        let (a, b) = (w(100, 0.25, 3.0, 500), w(300, 0.5, 2.0, 700));
        let recent = [
            Recent {
                components: &a,
                window_ms: 5000,
            },
            Recent {
                components: &b,
                window_ms: 10_000,
            },
        ];
        let totals: BTreeMap<String, ComponentStats> = [(
            "b".to_string(),
            ComponentStats {
                failed: 7,
                errors: 2,
                last_error: Some(ReportedError::new("boom", 4, 1_000)),
                ..Default::default()
            },
        )]
        .into();
        let c = component_statuses(&spec(), &totals, &recent);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].id.as_str(), c[0].kind),
            ("s", Some(ComponentKind::Spout))
        );
        assert_eq!(c[0].acked_per_second, 20.0 + 30.0);
        assert_eq!(c[0].complete_latency_p99_ms, Some(3.0));
        assert_eq!((c[1].tasks, c[1].executors), (6, 3));
        assert_eq!(c[1].executed_per_second, 100.0 + 70.0);
        assert_eq!(c[1].capacity, 0.5);
        assert_eq!(c[1].failed, 7);
        let e = c[1].last_error.as_ref().unwrap();
        assert_eq!((e.message.as_str(), e.task, e.count), ("boom", 4, 2));
        assert!(e.time.is_some());
        assert_eq!(busiest(&c).unwrap().summary, "b 0.50");
        let edges = edges(&spec(), &recent);
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0].grouping, "fields");
        assert_eq!(edges[0].fields, ["w"]);
        assert_eq!(edges[0].tuples_per_second, 170.0);
    }

    #[test]
    fn no_recent_window_gives_zero_rates_not_a_division_by_zero() {
        let m: BTreeMap<String, ComponentStats> = [(
            "s".to_string(),
            ComponentStats {
                acked: 10,
                ..Default::default()
            },
        )]
        .into();
        let c = component_statuses(
            &spec(),
            &BTreeMap::new(),
            &[Recent {
                components: &m,
                window_ms: 0,
            }],
        );
        assert_eq!(c[0].acked_per_second, 0.0);
        assert!(busiest(&c).is_none());
    }
}
