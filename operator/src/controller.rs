//! The reconciler's executor: Nimbus's job, driven by the API server and etcd.
//!
//! Each pass reads what there is (the Topology, its etcd records, its pods),
//! asks `decide` (or, for a Topology being deleted, `kill`) what to do, and
//! does it in order: the assignment is in etcd before any pod exists, one pod
//! per slot, lost workers replaced, Storm-style rebalances (deactivate, drain,
//! reassign, reactivate), status and Events. On deletion a finalizer holds the
//! Topology until pods and etcd keys are gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use squall_api::records::unix_ms;
use squall_api::{Topology, TopologyStatus, validate};
use squall_coord::{CoordError, Store};

use crate::decide::{self, Observed, TopologyMemory, decide};
use crate::kill::{KillAction, KillObserved, KillRecords, decide_kill, deletion_elapsed};
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
    /// What the reconciler remembers, per topology ("namespace/name").
    memory: Mutex<HashMap<String, TopologyMemory>>,
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

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopologyMemory>> {
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

/// Create the topology's transport TLS Secret of rotation period `epoch` (a
/// CA of its own and the workers' identity, see `squall_coord::tls`) unless
/// it exists, once per period and operator process. It is owned by the
/// Topology, so it goes with it.
async fn ensure_transport_tls(
    ctx: &Context,
    topo: &Topology,
    (ns, name): (&str, &str),
    epoch: u64,
    validity: Option<(u64, u64)>,
) -> Result<(), Error> {
    // Create only (a conflict means it exists): the operator needs no right to
    // read Secrets.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = pods::transport_tls_secret(name, epoch);
    let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let pki = squall_coord::tls::TopologyPki::generate_valid(
        &format!("{ns}/{name}"),
        validity.map(|(from, to)| (at(from), at(to))),
    )
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

/// One pass over a topology that is not being deleted: read, decide, act.
async fn apply(topo: &Topology, ctx: &Context) -> Result<Action, Error> {
    let name = topo.name_any();
    let ns = topo.namespace().ok_or(Error::NoNamespace)?;
    let key = key_of(topo);
    let store = ctx.store.topology(&ns, &name);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut observed = Observed {
        topo,
        settings: &ctx.settings,
        assignment: None,
        control: None,
        workers: BTreeMap::new(),
        stats: BTreeMap::new(),
        pods: Vec::new(),
        now_ms: unix_ms(),
        heartbeat_grace: ctx.heartbeat_grace,
    };
    // A spec that cannot run needs nothing from etcd or the pods (and gets
    // its Failed status even while etcd is down).
    if validate(&topo.spec, None).is_ok() {
        observed.assignment = store.assignment().await?;
        observed.control = store.control().await?;
        observed.stats = store.stats().await?;
        observed.workers = store.workers().await?;
        observed.pods = pod_api
            .list(&ListParams::default().labels(&pods::selector(&name)))
            .await?
            .items;
    }
    let plan = {
        let mut memory = ctx.memory();
        decide(&observed, memory.entry(key.clone()).or_default())
    };
    for action in plan.actions {
        match action {
            decide::Action::PutAssignment(a) => store.put_assignment(&a).await?,
            decide::Action::DeleteStats(slot) => store.delete_stats(slot).await?,
            decide::Action::PutControl(c) => store.put_control(&c).await?,
            decide::Action::EnsureTransportTls { epoch, validity } => {
                ensure_transport_tls(ctx, topo, (&ns, &name), epoch, validity).await?;
                ctx.memory().entry(key.clone()).or_default().transport_tls = Some(epoch);
            }
            decide::Action::CreatePod(pod) => {
                let slot = pods::slot_of(&pod);
                match pod_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => tracing::info!(topology = %key, ?slot, "created worker pod"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            decide::Action::DeletePod(pod) => delete_pod(&pod_api, &pod).await?,
            decide::Action::Event {
                warning,
                reason,
                note,
            } => {
                let type_ = if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                ctx.event(topo, type_, &reason, note).await;
            }
            decide::Action::View(view) => ctx.views.update(&key, *view),
            decide::Action::PatchStatus(status) => patch_status(ctx, topo, *status).await?,
        }
    }
    Ok(if plan.resync {
        Action::requeue(RESYNC)
    } else {
        Action::await_change()
    })
}

async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
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

/// Deletion, one pass: read, `kill::decide_kill`, act (see `kill`).
/// Returns how long to wait before the next pass, or `None` when done.
async fn cleanup(topo: &Topology, ctx: &Context) -> Result<Option<Duration>, Error> {
    let name = topo.name_any();
    let ns = topo.namespace().ok_or(Error::NoNamespace)?;
    let key = key_of(topo);
    let store = ctx.store.topology(&ns, &name);
    // This operator's first sight of the deletion, for a topology without a
    // deletion stamp (cannot happen here: cleanup runs on stamped objects).
    let since = *ctx
        .memory()
        .entry(key.clone())
        .or_default()
        .killing_since
        .get_or_insert_with(Instant::now);
    let elapsed = deletion_elapsed(topo, k8s_openapi::jiff::Timestamp::now())
        .unwrap_or_else(|| since.elapsed());
    let records = async {
        Ok::<_, CoordError>(KillRecords {
            control: store.control().await?,
            assigned: store.assignment().await?.is_some(),
            pending: store.stats().await?.values().map(|s| s.pending).sum(),
        })
    };
    let etcd = records.await.map_err(|e| e.to_string());
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pod_api
        .list(&ListParams::default().labels(&pods::selector(&name)))
        .await?
        .items;
    let plan = decide_kill(&KillObserved {
        topo,
        etcd,
        pods,
        elapsed,
    });
    // An etcd write that fails is retried later, or, once etcd has been
    // given up on, left to the orphan sweep.
    let etcd_failed = |e: CoordError, retrying: &str, giving_up: &str| {
        let what = if plan.etcd_retry.is_some() {
            retrying
        } else {
            giving_up
        };
        tracing::warn!(topology = %key, error = %e, "{what}");
        plan.etcd_retry
    };
    for action in plan.actions.iter().cloned() {
        match action {
            KillAction::PutControl(c) => {
                if let Err(e) = store.put_control(&c).await
                    && let Some(retry) = etcd_failed(
                        e,
                        "cleanup waits for etcd",
                        "etcd unreachable; the workers are not told, their pods go anyway",
                    )
                {
                    return Ok(Some(retry));
                }
            }
            KillAction::Event { reason, note } => {
                ctx.event(topo, EventType::Normal, &reason, note).await;
            }
            // The object may already be gone from under us; that is fine.
            KillAction::PatchStatus(st) => {
                let _ = patch_status(ctx, topo, *st).await;
            }
            KillAction::DeletePod(pod) => delete_pod(&pod_api, &pod).await?,
            KillAction::DeleteKeys => {
                if let Err(e) = store.delete_all().await
                    && let Some(retry) = etcd_failed(
                        e,
                        "cannot delete etcd keys yet",
                        "giving up on etcd keys; the orphan sweep removes them later",
                    )
                {
                    return Ok(Some(retry));
                }
            }
            KillAction::Warn(msg) => tracing::warn!(topology = %key, "{msg}"),
            KillAction::Requeue(wait) => return Ok(Some(wait)),
            KillAction::Release => {
                ctx.memory().remove(&key);
                ctx.views.forget(&key);
                tracing::info!(topology = %key, "deleted");
                return Ok(None);
            }
        }
    }
    Ok(Some(Duration::from_millis(500)))
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
