//! The reconciler: Nimbus's job, driven by the API server and etcd.
//!
//! For each Topology it validates the spec, writes the assignment to etcd before
//! any pod exists, keeps one pod per slot, replaces lost workers, runs Storm-style
//! rebalances (deactivate, wait, reassign, reactivate), and reports status. On
//! deletion a finalizer deactivates, waits, and removes pods and etcd keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use squall_api::ledger::StatsLedger;
use squall_api::records::{
    Assignment, Control, TopologyRef, WorkerRecord, WorkerState, WorkerStats,
};
use squall_api::topology::{ComponentErrorStatus, TopologyStats, WorkerCounts};
use squall_api::view::{self, TopologyView};
use squall_api::{Phase, Topology, TopologySpec, TopologyStatus, validate};
use squall_coord::{CoordError, Store};

use crate::pods::{self, PodSettings};
use crate::telemetry::Metrics;

/// The finalizer that guarantees cleanup of pods and etcd keys.
pub const FINALIZER: &str = "squall.dev/cleanup";
/// The field manager for server-side apply.
const MANAGER: &str = "squall-operator";
/// How often a healthy topology is looked at again (heartbeats, stats).
const RESYNC: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] CoordError),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("topology has no namespace")]
    NoNamespace,
    #[error("{0}")]
    Tls(String),
}

/// What the reconciler remembers between passes (rebuilt from scratch after a restart).
#[derive(Default)]
struct Memory {
    /// When a rebalance deactivated the spouts.
    rebalancing: HashMap<String, Instant>,
    /// When a deletion started.
    killing: HashMap<String, Instant>,
    /// When a ready pod's heartbeat was first seen missing, by (topology, slot).
    missing: HashMap<(String, u32), Instant>,
    /// The last rate sample per topology.
    rates: HashMap<String, Rates>,
    /// Counters per topology, carried across worker restarts.
    ledgers: HashMap<String, StatsLedger>,
    /// Topologies whose transport TLS Secret is known to exist.
    transport_tls: std::collections::HashSet<String>,
}

/// Acked and failed totals at a worker timestamp, and the rates they gave.
#[derive(Clone)]
struct Rates {
    at_ms: u64,
    acked: u64,
    failed: u64,
    acked_per_s: f64,
    failed_per_s: f64,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub store: Store,
    pub settings: PodSettings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// A ready pod without a heartbeat for this long is replaced.
    pub heartbeat_grace: Duration,
    /// What the web UI shows.
    pub views: Arc<crate::views::Views>,
    memory: Mutex<Memory>,
}

impl Context {
    pub fn new(
        client: Client,
        store: Store,
        settings: PodSettings,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        heartbeat_grace: Duration,
        views: Arc<crate::views::Views>,
    ) -> Arc<Self> {
        Arc::new(Context {
            client,
            store,
            settings,
            recorder,
            metrics,
            heartbeat_grace,
            views,
            memory: Mutex::default(),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn event(&self, topo: &Topology, type_: EventType, reason: &str, note: String) {
        // The recorder folds events with the same reason and action into one
        // series that keeps the first note; keying the action on the note keeps
        // "plan version 2" from being shown as a repeat of "plan version 1".
        let action: String = note.chars().take(128).collect();
        self.views
            .record_event(&key_of(topo), type_ == EventType::Warning, reason, &note);
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action,
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &topo.object_ref(&())).await {
            tracing::warn!(topology = %topo.name_any(), error = %e, "cannot publish event");
        }
    }
}

/// Run the controller until the stream ends.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (topologies, pods): (Api<Topology>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let pod_cfg = watcher::Config::default().labels(pods::TOPOLOGY_LABEL);
    Controller::new(topologies, watcher::Config::default())
        .owns(pods, pod_cfg)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            let ctx = ctx.clone();
            async move {
                match res {
                    Ok((obj, _)) => tracing::debug!(topology = %obj.name, "reconciled"),
                    // An owned pod outlived its topology: nothing to do.
                    Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                        tracing::debug!(object = %obj.name, "event for a topology that is gone");
                    }
                    Err(e) => {
                        ctx.metrics
                            .errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(error = %e, "reconcile failed");
                    }
                }
            }
        })
        .await;
}

fn error_policy(_topo: Arc<Topology>, err: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::Store(CoordError::Fenced { .. }) = err {
        // Another replica leads now; acting on would fight it.
        tracing::error!(error = %err, "deposed: exiting so this replica restarts as a standby");
        std::process::exit(2);
    }
    tracing::warn!(error = %err, "will retry");
    Action::requeue(Duration::from_secs(3))
}

async fn reconcile(topo: Arc<Topology>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = reconcile_inner(&topo, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// The finalizer is handled here rather than by `kube::runtime::finalizer`,
/// because a kill takes several passes (deactivate, wait, tear down) and the
/// finalizer may only go once the last of them is done.
async fn reconcile_inner(topo: &Topology, ctx: &Context) -> Result<Action, Error> {
    let ns = topo.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Topology> = Api::namespaced(ctx.client.clone(), &ns);
    let finalizers = topo.finalizers();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    if topo.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        return match cleanup(topo, ctx).await? {
            Some(wait) => Ok(Action::requeue(wait)),
            None => {
                // Cleanup patched the status, so re-read for a current resource version.
                let Some(fresh) = api.get_opt(&topo.name_any()).await? else {
                    return Ok(Action::await_change());
                };
                let rest: Vec<&String> = fresh
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .collect();
                set_finalizers(&api, &fresh, serde_json::json!(rest)).await?;
                Ok(Action::await_change())
            }
        };
    }
    if !has_finalizer {
        let mut all: Vec<&str> = finalizers.iter().map(String::as_str).collect();
        all.push(FINALIZER);
        set_finalizers(&api, topo, serde_json::json!(all)).await?;
    }
    apply(topo, ctx).await
}

/// Replace the finalizer list, guarded by the resource version (a merge patch
/// that names `resourceVersion` fails on a concurrent change).
async fn set_finalizers(
    api: &Api<Topology>,
    topo: &Topology,
    list: serde_json::Value,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": list, "resourceVersion": topo.resource_version()}
    });
    match api
        .patch(
            &topo.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to guard.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn key_of(topo: &Topology) -> String {
    format!(
        "{}/{}",
        topo.namespace().unwrap_or_default(),
        topo.name_any()
    )
}

/// Create the topology's transport TLS Secret (a CA of its own and the
/// workers' identity, see `squall_coord::tls`) unless it exists, once per
/// topology and operator process. It is owned
/// by the Topology, so it goes with it.
async fn ensure_transport_tls(
    ctx: &Context,
    topo: &Topology,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    // Create only (a conflict means it exists): the operator needs no right to
    // read Secrets.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = pods::transport_tls_secret(name);
    let pki = squall_coord::tls::TopologyPki::generate(&format!("{ns}/{name}"))
        .map_err(|e| Error::Tls(e.to_string()))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                pods::TOPOLOGY_LABEL.to_string(),
                name.to_string(),
            )])),
            owner_references: topo.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(
            pki.files()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(topology = %format!("{ns}/{name}"), secret = %secret_name, "created the transport TLS secret");
            Ok(())
        }
        // Another pass (or a previous leader) made it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The spec as the assignment compares it: `active` is control,
/// `killWaitSeconds` only matters to the operator, and `image` and `worker`
/// to the pods, so none of them needs a new plan.
fn placement(spec: &TopologySpec) -> TopologySpec {
    let mut s = spec.clone();
    s.active = true;
    s.kill_wait_seconds = 0;
    // The image and the worker settings only decide what pods run; changing
    // them rolls the pods, not the plan.
    s.image.clear();
    s.worker = None;
    s
}

async fn apply(topo: &Topology, ctx: &Context) -> Result<Action, Error> {
    let name = topo.name_any();
    let ns = topo.namespace().ok_or(Error::NoNamespace)?;
    let key = key_of(topo);
    let store = ctx.store.topology(&ns, &name);
    let spec = &topo.spec;
    let old_status = topo.status.clone().unwrap_or_default();

    // A spec that cannot run gets a condition and an event, and nothing else changes.
    if let Err(errs) = validate(spec, None) {
        let msg = errs.to_string();
        let mut st = old_status.clone();
        st.phase = Some(Phase::Failed);
        set_conditions(
            &mut st,
            topo,
            ("False", "InvalidTopology", &msg),
            ("False", "InvalidTopology", &msg),
            ("True", "InvalidTopology", &msg),
        );
        if old_status.phase != Some(Phase::Failed) || !has_condition_message(&old_status, &msg) {
            ctx.event(topo, EventType::Warning, "InvalidTopology", msg)
                .await;
        }
        // The UI lists it too, Failed, with the event that says why.
        ctx.views.update(
            &key,
            TopologyView {
                namespace: ns.clone(),
                name: name.clone(),
                phase: format!("{:?}", Phase::Failed),
                workers_desired: spec.workers,
                commands: view::kubectl_commands(&ns, &name, spec.workers),
                ..Default::default()
            },
        );
        patch_status(ctx, topo, st).await?;
        return Ok(Action::await_change());
    }

    let topology_ref = TopologyRef {
        namespace: ns.clone(),
        name: name.clone(),
    };
    let current = store.assignment().await?;
    let mut control = store.control().await?.unwrap_or_else(|| Control {
        active: spec.active,
        ..Control::default()
    });
    let stats = store.stats().await?;
    let wanted = placement(spec);
    let mut rebalancing = false;

    let version = match &current {
        None => {
            let a = Assignment::following(None, topology_ref, spec.clone());
            store.put_assignment(&a).await?;
            control.active = spec.active;
            store.put_control(&control).await?;
            ctx.event(topo, EventType::Normal, "Assigned", assigned_note(&a))
                .await;
            a.version
        }
        Some(a) if placement(&a.spec) != wanted => {
            // Storm's rebalance: deactivate, let open trees drain, reassign, reactivate.
            let since = *ctx
                .memory()
                .rebalancing
                .entry(key.clone())
                .or_insert_with(Instant::now);
            let pending: u64 = stats.values().map(|s| s.pending).sum();
            let waited = since.elapsed();
            let max_wait = Duration::from_secs(u64::from(spec.message_timeout_seconds));
            if control.active && waited < Duration::from_millis(100) {
                control.active = false;
                control.rebalance_epoch += 1;
                store.put_control(&control).await?;
                ctx.event(
                    topo,
                    EventType::Normal,
                    "Rebalancing",
                    format!(
                        "deactivated to move from version {} ({} workers) to {} workers",
                        a.version, a.plan.workers, spec.workers
                    ),
                )
                .await;
            }
            if (pending > 0 && waited < max_wait) || waited < Duration::from_secs(1) {
                rebalancing = true;
                a.version
            } else {
                let next = Assignment::following(Some(a), topology_ref, spec.clone());
                store.put_assignment(&next).await?;
                for slot in next.plan.workers..a.plan.workers {
                    store.delete_stats(slot).await?;
                }
                ctx.memory().rebalancing.remove(&key);
                control.active = spec.active;
                store.put_control(&control).await?;
                ctx.event(topo, EventType::Normal, "Assigned", assigned_note(&next))
                    .await;
                next.version
            }
        }
        Some(a) => a.version,
    };

    if !rebalancing && control.active != spec.active {
        control.active = spec.active;
        store.put_control(&control).await?;
        let (reason, what) = if spec.active {
            ("Activated", "spouts activated")
        } else {
            ("Deactivated", "spouts deactivated")
        };
        ctx.event(topo, EventType::Normal, reason, what.to_string())
            .await;
    }

    // The workers' mutual-TLS certificates, before any pod that mounts them.
    if !ctx.memory().transport_tls.contains(&key) {
        ensure_transport_tls(ctx, topo, &ns, &name).await?;
        ctx.memory().transport_tls.insert(key.clone());
    }

    // Pods: one per slot, deterministic names, replaced when lost.
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = pod_api
        .list(&ListParams::default().labels(&pods::selector(&name)))
        .await?;
    let workers = store.workers().await?;
    let mut by_slot: BTreeMap<u32, Pod> = BTreeMap::new();
    for pod in existing.items {
        let Some(slot) = pods::slot_of(&pod) else {
            continue;
        };
        let pod_name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            by_slot.insert(slot, pod);
            continue;
        }
        if slot >= spec.workers && !rebalancing {
            delete_pod(&pod_api, &pod_name).await?;
            continue;
        }
        // A pod that was ready but whose heartbeat lease expired is hung.
        let hb_key = (key.clone(), slot);
        let hung = if pods::is_ready(&pod) && !workers.contains_key(&slot) {
            let since = *ctx
                .memory()
                .missing
                .entry(hb_key.clone())
                .or_insert_with(Instant::now);
            since.elapsed() > ctx.heartbeat_grace
        } else {
            ctx.memory().missing.remove(&hb_key);
            false
        };
        // Pods that must be replaced: ended, on an old template (image, worker
        // settings, supervisor image), or hung.
        let replace = if pods::is_finished(&pod) {
            Some((
                EventType::Warning,
                "WorkerLost",
                format!("pod {pod_name} (slot {slot}) ended; replacing it"),
            ))
        } else if !rebalancing
            && pods::template_changed(&pod, &pods::worker_pod(topo, slot, &ctx.settings))
        {
            Some((
                EventType::Normal,
                "Upgrading",
                format!(
                    "pod {pod_name} (slot {slot}) runs an old template (image, worker settings or supervisor); replacing it"
                ),
            ))
        } else if hung {
            let grace = ctx.heartbeat_grace;
            Some((
                EventType::Warning,
                "WorkerLost",
                format!("slot {slot} stopped heartbeating for {grace:?}; replacing pod {pod_name}"),
            ))
        } else {
            None
        };
        if let Some((kind, reason, note)) = replace {
            ctx.memory().missing.remove(&hb_key);
            ctx.event(topo, kind, reason, note).await;
            delete_pod(&pod_api, &pod_name).await?;
            continue;
        }
        by_slot.insert(slot, pod);
    }
    for slot in 0..spec.workers {
        if by_slot.contains_key(&slot) {
            continue;
        }
        let pod = pods::worker_pod(topo, slot, &ctx.settings);
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(_) => tracing::info!(topology = %key, slot, "created worker pod"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let status = compute_status(
        topo,
        &old_status,
        version,
        &by_slot,
        &workers,
        &stats,
        rebalancing,
        ctx,
    );
    // A component error is an Event once, and at most one every 10 s.
    if let Some(e) = &status.last_error
        && old_status.last_error.as_ref().is_none_or(|old| {
            old.message != e.message
                && e.time
                    .as_ref()
                    .zip(old.time.as_ref())
                    .is_none_or(|(new, old)| {
                        new.0.as_millisecond() - old.0.as_millisecond() >= 10_000
                    })
        })
    {
        ctx.event(
            topo,
            EventType::Warning,
            "ComponentError",
            format!("{} (task {}): {}", e.component, e.task, e.message),
        )
        .await;
    }
    if let Some(w) = workers.values().find(|w| w.error.is_some()) {
        // The same text as the Degraded condition's, so that it is said once.
        let (reason, shown) = if w.state == WorkerState::Crashed {
            ("WorkerCrashed", crash_note(w))
        } else {
            ("WorkerError", w.error.clone().unwrap_or_default())
        };
        if !has_condition_message(&old_status, &shown) {
            ctx.event(topo, EventType::Warning, reason, shown).await;
        }
    }
    if status.phase != old_status.phase
        && let Some(p) = status.phase
    {
        let kind = if matches!(p, Phase::Degraded | Phase::Failed) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(
            topo,
            kind,
            &format!("{p:?}"),
            match old_status.phase {
                Some(old) => format!("phase {old:?} → {p:?}"),
                None => format!("phase → {p:?}"),
            },
        )
        .await;
    }
    patch_status(ctx, topo, status).await?;
    Ok(Action::requeue(RESYNC))
}

async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn compute_status(
    topo: &Topology,
    old: &TopologyStatus,
    version: u64,
    pods: &BTreeMap<u32, Pod>,
    workers: &BTreeMap<u32, WorkerRecord>,
    stats: &BTreeMap<u32, WorkerStats>,
    rebalancing: bool,
    ctx: &Context,
) -> TopologyStatus {
    let spec = &topo.spec;
    let desired = spec.workers;
    let ready = (0..desired)
        .filter(|s| {
            pods.get(s).is_some_and(pods::is_ready)
                && workers.get(s).is_some_and(|w| {
                    w.applied_version == version && w.state == WorkerState::Running
                })
        })
        .count() as u32;
    let error = workers
        .values()
        .find_map(|w| (w.state == WorkerState::Error).then(|| w.error.clone().unwrap_or_default()));
    let crashed = workers
        .values()
        .find(|w| w.state == WorkerState::Crashed)
        .map(crash_note);
    let was_running = matches!(
        old.phase,
        Some(Phase::Running | Phase::Degraded | Phase::Inactive)
    );

    // Failed means the spec cannot run; a crashed worker is restarted (Degraded).
    let phase = if error.is_some() {
        Phase::Failed
    } else if rebalancing || (old.phase == Some(Phase::Rebalancing) && ready < desired) {
        // A rebalance lasts until every worker runs the new plan.
        Phase::Rebalancing
    } else if ready == desired {
        if spec.active {
            Phase::Running
        } else {
            Phase::Inactive
        }
    } else if was_running || crashed.is_some() {
        Phase::Degraded
    } else if pods.is_empty() {
        Phase::Pending
    } else {
        Phase::Starting
    };

    let mut st = old.clone();
    st.phase = Some(phase);
    st.plan_version = Some(version);
    st.workers = WorkerCounts {
        desired,
        ready,
        summary: format!("{ready}/{desired}"),
    };
    st.replicas = pods.len() as i32;
    st.selector = pods::selector(&topo.name_any());
    let progress_msg = format!("{ready} of {desired} workers ready on plan version {version}");
    match phase {
        Phase::Failed => {
            let msg = error.unwrap_or_default();
            set_conditions(
                &mut st,
                topo,
                ("False", "WorkerError", &msg),
                ("False", "WorkerError", &msg),
                ("True", "WorkerError", &msg),
            );
        }
        Phase::Running | Phase::Inactive => {
            let reason = if phase == Phase::Running {
                "AllWorkersReady"
            } else {
                "Deactivated"
            };
            set_conditions(
                &mut st,
                topo,
                ("True", reason, &progress_msg),
                ("False", "Stable", &progress_msg),
                ("False", "AllWorkersReady", &progress_msg),
            );
        }
        Phase::Rebalancing => {
            set_conditions(
                &mut st,
                topo,
                ("False", "Rebalancing", &progress_msg),
                (
                    "True",
                    "Rebalancing",
                    if rebalancing {
                        "spouts deactivated while open trees drain"
                    } else {
                        "new plan assigned; workers are moving to it"
                    },
                ),
                ("False", "Rebalancing", &progress_msg),
            );
        }
        Phase::Degraded => {
            let (reason, msg) = match &crashed {
                Some(m) => ("WorkerCrashed", m.as_str()),
                None => ("WorkersLost", progress_msg.as_str()),
            };
            set_conditions(
                &mut st,
                topo,
                ("False", "WorkersNotReady", &progress_msg),
                ("True", "Recovering", &progress_msg),
                ("True", reason, msg),
            );
        }
        _ => {
            set_conditions(
                &mut st,
                topo,
                ("False", "Starting", &progress_msg),
                ("True", "Starting", &progress_msg),
                ("False", "Starting", &progress_msg),
            );
        }
    }
    let (topology_stats, fresh) = aggregate_stats(topo, stats, ctx);
    st.stats = Some(topology_stats);
    st.last_error = latest_error(topo, ctx).or_else(|| old.last_error.clone());
    let recent = view::Recent::of_workers(stats);
    let components = component_figures(topo, &recent, ctx);
    // Status takes new figures only with a new rate sample (every 5 s or so),
    // so that its own patches do not churn; the UI takes them every pass.
    if fresh {
        st.busiest = view::busiest(&components);
        st.components = components
            .iter()
            .take(view::MAX_STATUS_COMPONENTS)
            .cloned()
            .collect();
    }
    let namespace = topo.namespace().unwrap_or_default();
    let mut ui = TopologyView {
        name: topo.name_any(),
        phase: format!("{phase:?}"),
        plan_version: Some(version),
        workers_desired: desired,
        workers_ready: ready,
        busiest: view::busiest(&components),
        edges: view::edges(spec, &recent),
        workers: crate::views::worker_rows(
            desired,
            pods,
            workers,
            stats,
            squall_api::records::unix_ms(),
        ),
        commands: view::kubectl_commands(&namespace, &topo.name_any(), desired),
        namespace,
        components,
        ..Default::default()
    };
    view::topology_figures(&mut ui, st.stats.as_ref());
    ctx.views.update(&key_of(topo), ui);
    st
}

/// Per-component figures now: recent rates from the workers, totals from the
/// ledger (which `aggregate_stats` has just brought up to date).
fn component_figures(
    topo: &Topology,
    recent: &[view::Recent<'_>],
    ctx: &Context,
) -> Vec<view::ComponentStatus> {
    let totals = ctx
        .memory()
        .ledgers
        .get(&key_of(topo))
        .map(StatsLedger::components)
        .unwrap_or_default();
    view::component_statuses(&topo.spec, &totals, recent)
}

/// What a crashed worker's condition and event say.
fn crash_note(w: &WorkerRecord) -> String {
    format!(
        "slot {}: {}",
        w.slot,
        w.error.as_deref().unwrap_or("the worker crashed")
    )
}

/// The latest error any component reported, from the ledger's totals (so that a
/// restarted worker's errors are not forgotten).
fn latest_error(topo: &Topology, ctx: &Context) -> Option<ComponentErrorStatus> {
    let mem = ctx.memory();
    let ledger = mem.ledgers.get(&key_of(topo))?;
    ledger
        .components()
        .into_iter()
        .filter_map(|(id, c)| c.last_error.map(|e| (id, c.errors, e)))
        .max_by_key(|(_, _, e)| e.time_ms)
        .map(|(component, count, e)| view::error_status(&component, count, &e))
}

/// Sum the spouts' figures over workers; rates from the previous pass. Also
/// says whether this pass took a new rate sample.
fn aggregate_stats(
    topo: &Topology,
    stats: &BTreeMap<u32, WorkerStats>,
    ctx: &Context,
) -> (TopologyStats, bool) {
    let spouts: Vec<&str> = topo.spec.spouts.iter().map(|s| s.id.as_str()).collect();
    let key = key_of(topo);
    let mut mem = ctx.memory();
    // Percentiles do not add up; the worst worker's recent p99 bounds the whole.
    let p99 = stats
        .values()
        .flat_map(|w| &w.recent)
        .filter(|(id, _)| spouts.contains(&id.as_str()))
        .filter_map(|(_, c)| c.complete_latency_ms)
        .fold(0f64, |m, l| m.max(l.p99));
    // A restarted worker counts from zero again: the ledger banks what its
    // previous process had counted, so totals never go backwards.
    let ledger = mem.ledgers.entry(key.clone()).or_default();
    ledger.observe_all(stats);
    let (mut acked, mut failed, mut emitted) = (0u64, 0u64, 0u64);
    for (id, c) in ledger.components() {
        if spouts.contains(&id.as_str()) {
            acked += c.acked;
            failed += c.failed;
            emitted += c.roots;
        }
    }
    // Rates come from the workers' own timestamps over windows of at least 5 s,
    // so that passes triggered in quick succession (our own status patches are
    // watch events too) neither report 0 nor keep patching a jittering number.
    let at_ms = stats.values().map(|w| w.timestamp_ms).max().unwrap_or(0);
    let mut fresh = true;
    let sample = match mem.rates.get(&key) {
        Some(r) if acked < r.acked || failed < r.failed => Rates {
            at_ms,
            acked,
            failed,
            acked_per_s: 0.0,
            failed_per_s: 0.0,
        },
        Some(r) if at_ms >= r.at_ms + 5000 => {
            let secs = (at_ms - r.at_ms) as f64 / 1000.0;
            Rates {
                at_ms,
                acked,
                failed,
                acked_per_s: (acked - r.acked) as f64 / secs,
                failed_per_s: (failed - r.failed) as f64 / secs,
            }
        }
        Some(r) => {
            fresh = false;
            r.clone()
        }
        None => Rates {
            at_ms,
            acked,
            failed,
            acked_per_s: 0.0,
            failed_per_s: 0.0,
        },
    };
    let (acked_per_second, failed_per_second) = (sample.acked_per_s, sample.failed_per_s);
    mem.rates.insert(key, sample);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let figures = TopologyStats {
        acked_per_second: round(acked_per_second),
        failed_per_second: round(failed_per_second),
        complete_latency_p99_ms: round(p99 * 10.0) / 10.0,
        latency: if p99 > 0.0 {
            format!("{p99:.1}ms")
        } else {
            String::new()
        },
        acked_total: acked,
        failed_total: failed,
        emitted_total: emitted,
    };
    (figures, fresh)
}

/// The note of an `Assigned` event.
fn assigned_note(a: &Assignment) -> String {
    format!(
        "plan version {}: {} tasks in {} executors on {} workers",
        a.version,
        a.plan.task_count(),
        a.plan.executors.len(),
        a.plan.workers
    )
}

fn has_condition_message(st: &TopologyStatus, msg: &str) -> bool {
    st.conditions.iter().any(|c| c.message == msg)
}

/// Set Ready, Progressing and Degraded, keeping transition times of unchanged ones.
fn set_conditions(
    st: &mut TopologyStatus,
    topo: &Topology,
    ready: (&str, &str, &str),
    progressing: (&str, &str, &str),
    degraded: (&str, &str, &str),
) {
    let now = Time(Timestamp::now());
    let generation = topo.metadata.generation;
    let mut out = Vec::with_capacity(3);
    for (type_, (status, reason, message)) in [
        ("Ready", ready),
        ("Progressing", progressing),
        ("Degraded", degraded),
    ] {
        let prev = st.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time,
            observed_generation: generation,
        });
    }
    st.conditions = out;
    st.observed_generation = generation;
}

async fn patch_status(ctx: &Context, topo: &Topology, status: TopologyStatus) -> Result<(), Error> {
    if topo.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let ns = topo.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Topology> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": Topology::api_version(&()),
        "kind": Topology::kind(&()),
        "status": status,
    });
    api.patch_status(
        &topo.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Deletion: deactivate, wait `killWaitSeconds` (or until open trees drain),
/// delete pods and etcd keys, then let the finalizer go. Never stuck: if etcd
/// stays down past the wait plus a grace period, the keys are left to the
/// orphan sweep and the finalizer is released anyway.
/// Returns how long to wait before the next pass, or `None` when done.
async fn cleanup(topo: &Topology, ctx: &Context) -> Result<Option<Duration>, Error> {
    let name = topo.name_any();
    let ns = topo.namespace().ok_or(Error::NoNamespace)?;
    let key = key_of(topo);
    let store = ctx.store.topology(&ns, &name);
    let since = *ctx
        .memory()
        .killing
        .entry(key.clone())
        .or_insert_with(Instant::now);
    let kill_wait = Duration::from_secs(u64::from(topo.spec.kill_wait_seconds));
    let give_up = kill_wait + Duration::from_secs(30);

    let etcd_step = async {
        let control = store.control().await?;
        // No assignment means nothing runs (or an earlier pass already removed the keys).
        let assigned = store.assignment().await?.is_some();
        if assigned && control.as_ref().is_none_or(|c| !c.killed) {
            let c = Control {
                active: false,
                killed: true,
                rebalance_epoch: control.map_or(0, |c| c.rebalance_epoch),
            };
            store.put_control(&c).await?;
        }
        let stats = store.stats().await?;
        Ok::<u64, CoordError>(stats.values().map(|s| s.pending).sum())
    };
    let pending = match etcd_step.await {
        Ok(p) => p,
        Err(e) if since.elapsed() < give_up => {
            tracing::warn!(topology = %key, error = %e, "cleanup waits for etcd");
            return Ok(Some(Duration::from_secs(2)));
        }
        Err(e) => {
            tracing::warn!(topology = %key, error = %e, "etcd unreachable; releasing the finalizer, keys are left to the orphan sweep");
            0
        }
    };
    if topo.status.as_ref().and_then(|s| s.phase) != Some(Phase::Killing) {
        let mut st = topo.status.clone().unwrap_or_default();
        st.phase = Some(Phase::Killing);
        ctx.event(
            topo,
            EventType::Normal,
            "Killing",
            format!(
                "spouts deactivated; tearing down after up to {}s",
                kill_wait.as_secs()
            ),
        )
        .await;
        // The object may already be gone from under us; that is fine.
        let _ = patch_status(ctx, topo, st).await;
    }
    // Storm waits the whole kill wait; we also stop early once every open tree has drained.
    let drained = pending == 0 && since.elapsed() >= Duration::from_secs(1);
    if since.elapsed() < kill_wait && !drained {
        return Ok(Some(Duration::from_millis(500)));
    }

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = pod_api
        .list(&ListParams::default().labels(&pods::selector(&name)))
        .await?;
    // `kubectl delete` returns once the finalizer goes: let that mean the
    // worker processes are gone too, not merely asked to stop.
    if !existing.items.is_empty() {
        for pod in &existing.items {
            if pod.metadata.deletion_timestamp.is_none() {
                delete_pod(&pod_api, &pod.name_any()).await?;
            }
        }
        if since.elapsed() < give_up + Duration::from_secs(60) {
            return Ok(Some(Duration::from_millis(500)));
        }
        tracing::warn!(topology = %key, "worker pods are slow to terminate; releasing the finalizer anyway");
    }
    if let Err(e) = store.delete_all().await {
        if since.elapsed() < give_up {
            tracing::warn!(topology = %key, error = %e, "cannot delete etcd keys yet");
            return Ok(Some(Duration::from_secs(2)));
        }
        tracing::warn!(topology = %key, error = %e, "giving up on etcd keys; the orphan sweep removes them later");
    }
    let mut mem = ctx.memory();
    mem.killing.remove(&key);
    mem.rebalancing.remove(&key);
    mem.rates.remove(&key);
    mem.ledgers.remove(&key);
    mem.transport_tls.remove(&key);
    mem.missing.retain(|(k, _), _| k != &key);
    drop(mem);
    ctx.views.forget(&key);
    tracing::info!(topology = %key, "deleted");
    Ok(None)
}

/// Remove etcd keys of topologies that no longer exist (left over from a crash).
pub async fn sweep_orphans(ctx: &Context) -> Result<usize, Error> {
    let mut removed = 0;
    for (ns, name) in ctx.store.topologies().await? {
        let api: Api<Topology> = Api::namespaced(ctx.client.clone(), &ns);
        if api.get_opt(&name).await?.is_none() {
            ctx.store.topology(&ns, &name).delete_all().await?;
            tracing::info!(namespace = %ns, topology = %name, "removed orphaned etcd keys");
            removed += 1;
        }
    }
    Ok(removed)
}
