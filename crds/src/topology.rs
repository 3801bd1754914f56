//! The `Topology` custom resource: what a user writes and what the operator reports.
//!
//! The shape follows Storm's Flux YAML (spouts, bolts, streams with a grouping
//! type), so a manifest reads the same to a Storm user. Everything the API server
//! can check on its own (ranges, required fields, references between ids, grouping
//! arguments) is encoded in the schema and in CEL rules, so `kubectl apply` rejects
//! it up front; what needs the topology binary's component catalog is checked by
//! [`crate::validate`].

// Every `printcolumn(...)` repeats `type_ = ...`, which this lint mistakes for a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Free-form component configuration, handed to every component as JSON.
pub type Config = BTreeMap<String, serde_json::Value>;

/// The name of the stream a component emits to when it names none (Storm's `default`).
pub const DEFAULT_STREAM: &str = "default";

/// The declarative description of a running topology.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "squall.dev",
    version = "v1alpha1",
    kind = "Topology",
    plural = "topologies",
    shortname = "topo",
    namespaced,
    status = "TopologyStatus",
    derive = "PartialEq",
    doc = "A Storm-style stream topology: spouts, bolts and the streams between them, run as worker pods.",
    scale(
        spec_replicas_path = ".spec.workers",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workers.summary",
        description = "ready/desired worker pods"
    ),
    printcolumn(
        name = "Acked/s",
        type_ = "number",
        json_path = ".status.stats.ackedPerSecond"
    ),
    printcolumn(
        name = "Failed/s",
        type_ = "number",
        json_path = ".status.stats.failedPerSecond"
    ),
    printcolumn(
        name = "Latency",
        type_ = "string",
        json_path = ".status.stats.latency",
        description = "complete latency p99"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Busiest",
        type_ = "string",
        json_path = ".status.busiest.summary",
        description = "the component with the highest capacity, and its capacity",
        priority = 1
    ),
    printcolumn(
        name = "Errors",
        type_ = "integer",
        json_path = ".status.lastError.count",
        description = "errors the last failing component reported",
        priority = 1
    ),
    printcolumn(
        name = "Plan",
        type_ = "integer",
        json_path = ".status.planVersion",
        description = "assignment version",
        priority = 1
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.bolts) || self.spouts.all(s, !self.bolts.exists(b, b.id == s.id))").message("spout and bolt ids must be distinct"),
    validation = Rule::new("!has(self.streams) || self.streams.all(s, self.spouts.exists(c, c.id == s.from) || (has(self.bolts) && self.bolts.exists(c, c.id == s.from)))").message("every stream's 'from' must name a spout or a bolt"),
    validation = Rule::new("!has(self.streams) || self.streams.all(s, has(self.bolts) && self.bolts.exists(c, c.id == s.to))").message("every stream's 'to' must name a bolt"),
)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpec {
    /// The container image that holds the topology's components (ignored in local mode).
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub image: String,
    /// Number of worker pods (Storm's `topology.workers`). The scale subresource drives it.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = crate::validate::limits::MAX_WORKERS))]
    pub workers: u32,
    /// `false` deactivates the topology: spouts are not polled.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Acker tasks. 0 turns acking off (at-most-once). Default: one per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = crate::validate::limits::MAX_ACKERS))]
    pub ackers: Option<u32>,
    /// How long a tuple tree may take before its spout is told it failed.
    #[serde(default = "default_message_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub message_timeout_seconds: u32,
    /// Bound on open tuple trees per spout task.
    #[serde(default = "default_max_spout_pending")]
    #[schemars(range(min = 1))]
    pub max_spout_pending: u32,
    /// How long a kill waits with spouts deactivated before tearing down.
    #[serde(default = "default_kill_wait")]
    #[schemars(range(max = 3600))]
    pub kill_wait_seconds: u32,
    /// Free-form configuration handed to every component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form")]
    pub config: Config,
    /// The spouts: components that produce tuples.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.id == s.id))").message("spout ids must be unique"))]
    pub spouts: Vec<ComponentSpec>,
    /// The bolts: components that consume tuples and may emit more.
    #[serde(default)]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.id == s.id))").message("bolt ids must be unique"))]
    pub bolts: Vec<ComponentSpec>,
    /// Subscriptions: which bolt consumes which component's stream, and how tuples are grouped.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub streams: Vec<StreamSpec>,
    /// Settings for the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerTemplate>,
}

fn default_workers() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_message_timeout() -> u32 {
    30
}
fn default_max_spout_pending() -> u32 {
    1000
}
fn default_kill_wait() -> u32 {
    30
}
fn default_parallelism() -> u32 {
    1
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// One spout or bolt: an id in this topology, and what implements it: a component
/// registered in the topology binary, or a subprocess that speaks Storm's multilang
/// protocol (`shell`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.tasks) || self.parallelism <= self.tasks").message("parallelism must not exceed tasks"),
    validation = Rule::new("has(self.component) != has(self.shell)").message("set exactly one of 'component' and 'shell'"),
    validation = Rule::new("!has(self.outputs) || has(self.shell)").message("'outputs' is for shell components; a registered component declares its own"),
)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// The id that streams refer to. Ids starting with `__` are reserved for system components.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    )]
    pub id: String,
    /// The component's registered name in the topology binary (for example `SplitSentence`).
    /// Exactly one of `component` and `shell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub component: Option<String>,
    /// A subprocess that speaks Storm's multilang protocol (Storm's `ShellSpout` /
    /// `ShellBolt`), for components written with `storm.py`, `storm.js`, `storm.rb`,
    /// pystorm or streamparse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<ShellSpec>,
    /// A shell component's output streams: stream → declared fields (Storm's
    /// `declareOutputFields`). Registered components declare theirs in code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Vec<String>>,
    /// Executors (threads) that run this component's tasks.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = crate::validate::limits::MAX_PARALLELISM))]
    pub parallelism: u32,
    /// Task instances; fixed for the topology's life so that fields groupings stay stable
    /// across rebalances. Default: the parallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::validate::limits::MAX_TASKS))]
    pub tasks: Option<u32>,
    /// Send this component a tick tuple every so many seconds (Storm's `topology.tick.tuple.freq.secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub tick_frequency_seconds: Option<u32>,
    /// Component configuration, laid over the topology's `config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form")]
    pub config: Config,
}

/// How to start a multilang subprocess.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShellSpec {
    /// The program and its arguments (argv, no shell). A relative program path that
    /// contains a `/` resolves against `dir`; a bare name is looked up on `PATH`.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    /// The subprocess's working directory. In local mode a relative `dir` resolves
    /// against the manifest's folder; in a worker pod, against the worker
    /// container's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub dir: Option<String>,
    /// A subprocess that sends nothing (not even a heartbeat reply) for this long is
    /// killed and restarted (Storm's `topology.subprocess.timeout.secs`).
    #[serde(default = "default_subprocess_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

/// The default of [`ShellSpec::timeout_seconds`], as Storm's supervisor worker timeout.
pub const DEFAULT_SUBPROCESS_TIMEOUT_SECONDS: u32 = 30;

fn default_subprocess_timeout() -> u32 {
    DEFAULT_SUBPROCESS_TIMEOUT_SECONDS
}

impl ComponentSpec {
    /// What implements this component, for messages: the registered name, or the shell command.
    pub fn implementation(&self) -> String {
        match (&self.component, &self.shell) {
            (Some(name), _) => name.clone(),
            (None, Some(sh)) => format!("shell {}", sh.command.join(" ")),
            (None, None) => String::new(),
        }
    }

    /// The number of tasks this component runs.
    pub fn task_count(&self) -> u32 {
        self.tasks.unwrap_or(self.parallelism)
    }
}

/// A subscription: `to` consumes `from`'s `stream`, grouped by `grouping`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// The id of the spout or bolt that emits.
    #[schemars(length(min = 1, max = 63))]
    pub from: String,
    /// The id of the bolt that consumes.
    #[schemars(length(min = 1, max = 63))]
    pub to: String,
    /// The named output stream of `from` (Storm's stream id). Default: `default`.
    #[serde(default = "default_stream")]
    #[schemars(length(min = 1, max = 63))]
    pub stream: String,
    /// How tuples are spread over the consuming bolt's tasks.
    pub grouping: Grouping,
}

fn default_stream() -> String {
    DEFAULT_STREAM.to_string()
}

/// A stream grouping, named as in Storm's Flux.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!(self.type == 'FIELDS' || self.type == 'PARTIAL_KEY') || (has(self.fields) && size(self.fields) > 0)").message("FIELDS and PARTIAL_KEY groupings need at least one field"),
    validation = Rule::new("(self.type == 'FIELDS' || self.type == 'PARTIAL_KEY') || !has(self.fields) || size(self.fields) == 0").message("only FIELDS and PARTIAL_KEY groupings take fields"),
)]
pub struct Grouping {
    #[serde(rename = "type")]
    pub kind: GroupingType,
    /// The fields to group on (FIELDS and PARTIAL_KEY only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub fields: Vec<String>,
}

/// Storm's groupings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GroupingType {
    /// Random, evenly spread.
    Shuffle,
    /// Hash of the selected fields, modulo the sorted target tasks.
    Fields,
    /// Every target task gets a copy.
    All,
    /// The target task with the lowest id.
    Global,
    /// No preference; behaves as shuffle.
    None,
    /// The emitter picks the task with `emit_direct`.
    Direct,
    /// Prefer target tasks in the same worker, else shuffle.
    LocalOrShuffle,
    /// Power of two choices over the hash of the selected fields.
    PartialKey,
}

/// Settings for the worker pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Volumes added to every worker pod (for example a ConfigMap of multilang scripts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,
    /// Mounts of `volumes` into the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Vec<VolumeMount>,
}

/// What the operator reports.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopologyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The assignment version in etcd that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_version: Option<u64>,
    #[serde(default)]
    pub workers: WorkerCounts,
    /// Worker pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the worker pods (the scale subresource's selector).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<TopologyStats>,
    /// The latest error a component reported (a multilang `error`, a multilang
    /// subprocess restarted, a bolt's `report_error`), over all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ComponentErrorStatus>,
    /// Per spout and bolt: recent rates, latencies, capacity, totals and the
    /// last error (the first [`crate::view::MAX_STATUS_COMPONENTS`], in the
    /// spec's order; the web UI shows them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub components: Vec<crate::view::ComponentStatus>,
    /// The component with the highest capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busiest: Option<crate::view::Busiest>,
}

/// An error a component reported.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentErrorStatus {
    /// The spout or bolt id.
    pub component: String,
    pub task: u32,
    pub message: String,
    /// When it was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Errors this component reported so far.
    pub count: u64,
}

/// Worker pod counts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    pub desired: u32,
    pub ready: u32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
}

/// Live figures aggregated over all workers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopologyStats {
    pub acked_per_second: f64,
    pub failed_per_second: f64,
    pub complete_latency_p99_ms: f64,
    /// `complete_latency_p99_ms` formatted for `kubectl get`.
    #[serde(default)]
    pub latency: String,
    pub acked_total: u64,
    pub failed_total: u64,
    pub emitted_total: u64,
    /// Spout tuples emitted again after a fail or a timeout.
    #[serde(default)]
    pub replayed_total: u64,
}

/// The life-cycle phase shown in `kubectl get topology`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Starting,
    Running,
    Inactive,
    Rebalancing,
    // The worker pods move to a new template (image, worker settings,
    // supervisor): spouts off, open trees drained, pods replaced, spouts on.
    // (A plain comment: a doc comment would turn the schema's enum into oneOf.)
    Rolling,
    Degraded,
    Failed,
    Killing,
}

impl TopologySpec {
    /// Parse a manifest: either a whole `Topology` object (as for `kubectl apply`) or a bare spec.
    ///
    /// Errors name the path of the offending field (`spec.bolts[1].parallelism`).
    pub fn from_manifest(text: &str) -> Result<(Option<String>, TopologySpec), ManifestError> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ManifestError {
            field: String::new(),
            message: e.to_string(),
        })?;
        let whole = value.get("kind").is_some();
        let located = |e: serde_path_to_error::Error<serde_yaml::Error>| {
            let path = e.path().to_string();
            ManifestError {
                field: if whole || path == "." {
                    path
                } else {
                    format!("spec.{path}")
                },
                message: e.into_inner().to_string(),
            }
        };
        if whole {
            let topo: Topology = serde_path_to_error::deserialize(value).map_err(located)?;
            Ok((topo.metadata.name.clone(), topo.spec))
        } else {
            Ok((
                None,
                serde_path_to_error::deserialize(value).map_err(located)?,
            ))
        }
    }

    /// Number of acker tasks: the explicit setting, else one per worker.
    pub fn acker_count(&self) -> u32 {
        self.ackers.unwrap_or(self.workers)
    }

    /// All spouts and bolts, spouts first.
    pub fn components(&self) -> impl Iterator<Item = (ComponentKind, &ComponentSpec)> {
        self.spouts
            .iter()
            .map(|c| (ComponentKind::Spout, c))
            .chain(self.bolts.iter().map(|c| (ComponentKind::Bolt, c)))
    }

    /// The spout or bolt with this id.
    pub fn component(&self, id: &str) -> Option<(ComponentKind, &ComponentSpec)> {
        self.components().find(|(_, c)| c.id == id)
    }
}

/// A manifest that cannot be read at all (bad YAML, wrong types).
#[derive(Debug, thiserror::Error)]
#[error("manifest is not a valid Topology: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ManifestError {
    /// Where the problem is, e.g. `spec.bolts[1].parallelism`; empty when the YAML itself is broken.
    pub field: String,
    pub message: String,
}

/// Whether a component produces tuples (spout) or consumes them (bolt).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    Spout,
    Bolt,
}
