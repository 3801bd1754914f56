//! The reconciler's decisions: from what one pass observed (the Topology, its
//! etcd records, its pods, the time) to the actions that bring the world
//! closer to the spec. No I/O and no clock: `controller` reads, calls
//! [`decide`], and performs the [`Action`]s in order, stopping at the first
//! that fails.
//!
//! A rebalance's progress lives in the control record
//! ([`RebalanceProgress`]), not in this process, so that a restarted operator
//! resumes it at the same step and with the same drain deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use squall_api::ledger::StatsLedger;
use squall_api::records::{
    Assignment, Control, RebalanceProgress, TopologyRef, WorkerRecord, WorkerState, WorkerStats,
};
use squall_api::view::{self, TopologyView};
use squall_api::{Phase, Topology, TopologySpec, TopologyStatus, validate};

use crate::pods::{self, PodSettings};
use crate::status::{
    Rates, assigned_note, compute_status, crash_note, has_condition_message, set_conditions,
};

/// The drain of a rebalance lasts at least this long, even with no open tree,
/// so that every worker has seen the deactivation.
const MIN_DRAIN_MS: u64 = 1000;

/// What one pass read.
pub struct Observed<'a> {
    /// The Topology as the API server has it (spec, status, generation).
    pub topo: &'a Topology,
    /// How worker pods are built.
    pub settings: &'a PodSettings,
    /// The etcd records. They are left empty for a spec that does not
    /// validate, whose pass reads nothing else.
    pub assignment: Option<Assignment>,
    pub control: Option<Control>,
    pub workers: BTreeMap<u32, WorkerRecord>,
    pub stats: BTreeMap<u32, WorkerStats>,
    /// The topology's worker pods, terminating ones included.
    pub pods: Vec<Pod>,
    /// Wall-clock time of the pass, unix ms.
    pub now_ms: u64,
    /// A ready pod without a heartbeat for this long is replaced.
    pub heartbeat_grace: Duration,
}

/// What the operator remembers of one topology between passes. Nothing here
/// is needed for correctness after a restart: it is rebuilt (heartbeat
/// timers start again, the ledger from the workers' current counts).
#[derive(Default, Debug)]
pub struct TopologyMemory {
    /// When a ready pod's heartbeat was first seen missing, by slot (unix ms).
    pub missing: BTreeMap<u32, u64>,
    /// The last rate sample.
    pub rates: Option<Rates>,
    /// Counters carried across worker restarts.
    pub ledger: StatsLedger,
    /// Whether the transport TLS Secret is known to exist.
    pub transport_tls: bool,
    /// When a deletion started.
    pub killing_since: Option<std::time::Instant>,
}

/// One thing to do, in the order given.
#[derive(Debug, Clone)]
pub enum Action {
    PutAssignment(Box<Assignment>),
    /// Remove a slot's stats record (a slot the new plan no longer has).
    DeleteStats(u32),
    PutControl(Control),
    /// Create the transport TLS Secret unless it exists.
    EnsureTransportTls,
    CreatePod(Box<Pod>),
    /// Delete a pod by name.
    DeletePod(String),
    Event {
        warning: bool,
        reason: String,
        note: String,
    },
    /// Show this in the web UI.
    View(Box<TopologyView>),
    PatchStatus(Box<TopologyStatus>),
}

/// The actions of one pass, and whether to look again soon (a running
/// topology) or only on a change (a spec that cannot run).
#[derive(Debug)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub resync: bool,
}

/// Where a rebalance is, from the control record and the assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceStep {
    /// The placement changed and nothing is under way: deactivate.
    Deactivate,
    /// Spouts are off; open trees drain until the deadline.
    Drain,
    /// Drained: write the next plan, then reactivate.
    Reassign,
    /// The plan is written (or the placement went back): reactivate and clear.
    Reactivate,
    /// No rebalance.
    None,
}

/// The spec as the assignment compares it: `active` is control,
/// `killWaitSeconds` only matters to the operator, and `image` and `worker`
/// to the pods, so none of them needs a new plan.
pub fn placement(spec: &TopologySpec) -> TopologySpec {
    let mut s = spec.clone();
    s.active = true;
    s.kill_wait_seconds = 0;
    // The image and the worker settings only decide what pods run; changing
    // them rolls the pods, not the plan.
    s.image.clear();
    s.worker = None;
    s
}

/// The step of a rebalance now.
pub fn rebalance_step(
    spec: &TopologySpec,
    assignment: &Assignment,
    control: &Control,
    pending: u64,
    now_ms: u64,
) -> RebalanceStep {
    let moving = placement(&assignment.spec) != placement(spec);
    match &control.rebalance {
        Some(r) if r.from_version == assignment.version && moving => {
            let drained = now_ms >= r.deactivated_ms + MIN_DRAIN_MS
                && (pending == 0 || now_ms >= r.drain_deadline_ms);
            if control.active {
                // Someone switched the spouts back on mid-drain: off again.
                RebalanceStep::Deactivate
            } else if drained {
                RebalanceStep::Reassign
            } else {
                RebalanceStep::Drain
            }
        }
        _ if moving => RebalanceStep::Deactivate,
        Some(_) => RebalanceStep::Reactivate,
        None => RebalanceStep::None,
    }
}

/// Decide one pass. `memory` is this topology's memory, updated in place.
pub fn decide(obs: &Observed<'_>, memory: &mut TopologyMemory) -> Plan {
    let topo = obs.topo;
    let spec = &topo.spec;
    let old_status = topo.status.clone().unwrap_or_default();
    let mut actions = Vec::new();
    let event = |warning: bool, reason: &str, note: String| Action::Event {
        warning,
        reason: reason.into(),
        note,
    };

    // A spec that cannot run gets a condition and an event, and nothing else changes.
    if let Err(errs) = validate(spec, None) {
        let msg = errs.to_string();
        let mut st = old_status.clone();
        st.phase = Some(Phase::Failed);
        set_conditions(
            &mut st,
            topo,
            obs.now_ms,
            ("False", "InvalidTopology", &msg),
            ("False", "InvalidTopology", &msg),
            ("True", "InvalidTopology", &msg),
        );
        if old_status.phase != Some(Phase::Failed) || !has_condition_message(&old_status, &msg) {
            actions.push(event(true, "InvalidTopology", msg));
        }
        // The UI lists it too, Failed, with the event that says why.
        let (ns, name) = (topo.namespace().unwrap_or_default(), topo.name_any());
        actions.push(Action::View(Box::new(TopologyView {
            phase: format!("{:?}", Phase::Failed),
            workers_desired: spec.workers,
            commands: view::kubectl_commands(&ns, &name, spec.workers),
            namespace: ns,
            name,
            ..Default::default()
        })));
        if topo.status.as_ref() != Some(&st) {
            actions.push(Action::PatchStatus(Box::new(st)));
        }
        return Plan {
            actions,
            resync: false,
        };
    }

    let (version, rebalancing) = assign(obs, &mut actions);

    // The workers' mutual-TLS certificates, before any pod that mounts them.
    if !memory.transport_tls {
        actions.push(Action::EnsureTransportTls);
    }
    let live = pod_actions(obs, memory, rebalancing, &mut actions);

    let (status, ui) = compute_status(obs, memory, version, &live, rebalancing);
    actions.push(Action::View(Box::new(ui)));
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
        actions.push(event(
            true,
            "ComponentError",
            format!("{} (task {}): {}", e.component, e.task, e.message),
        ));
    }
    if let Some(w) = obs.workers.values().find(|w| w.error.is_some()) {
        // The same text as the Degraded condition's, so that it is said once.
        let (reason, shown) = if w.state == WorkerState::Crashed {
            ("WorkerCrashed", crash_note(w))
        } else {
            ("WorkerError", w.error.clone().unwrap_or_default())
        };
        if !has_condition_message(&old_status, &shown) {
            actions.push(event(true, reason, shown));
        }
    }
    if status.phase != old_status.phase
        && let Some(p) = status.phase
    {
        actions.push(event(
            matches!(p, Phase::Degraded | Phase::Failed),
            &format!("{p:?}"),
            match old_status.phase {
                Some(old) => format!("phase {old:?} → {p:?}"),
                None => format!("phase → {p:?}"),
            },
        ));
    }
    if topo.status.as_ref() != Some(&status) {
        actions.push(Action::PatchStatus(Box::new(status)));
    }
    Plan {
        actions,
        resync: true,
    }
}

/// The assignment and the control record: the first plan, a rebalance's
/// steps, and activation. Returns the plan version the pods should run and
/// whether a rebalance is draining.
fn assign(obs: &Observed<'_>, actions: &mut Vec<Action>) -> (u64, bool) {
    let topo = obs.topo;
    let spec = &topo.spec;
    let topology_ref = TopologyRef {
        namespace: topo.namespace().unwrap_or_default(),
        name: topo.name_any(),
    };
    let mut control = obs.control.clone().unwrap_or_else(|| Control {
        active: spec.active,
        ..Control::default()
    });
    let mut control_changed = false;
    let mut events = Vec::new();
    let event = |warning: bool, reason: &str, note: String| Action::Event {
        warning,
        reason: reason.into(),
        note,
    };
    let mut rebalancing = false;

    let version = match &obs.assignment {
        None => {
            let a = Assignment::following(None, topology_ref, spec.clone());
            actions.push(Action::PutAssignment(Box::new(a.clone())));
            control.active = spec.active;
            control.rebalance = None;
            control_changed = true;
            events.push(event(false, "Assigned", assigned_note(&a)));
            a.version
        }
        Some(a) => {
            let pending = obs.stats.values().map(|s| s.pending).sum();
            match rebalance_step(spec, a, &control, pending, obs.now_ms) {
                RebalanceStep::Deactivate => {
                    // Storm's rebalance: deactivate, let open trees drain, reassign, reactivate.
                    let now = obs.now_ms;
                    let progress = match &control.rebalance {
                        Some(r) if r.from_version == a.version => r.clone(),
                        _ => RebalanceProgress {
                            from_version: a.version,
                            deactivated_ms: now,
                            drain_deadline_ms: now + 1000 * u64::from(spec.message_timeout_seconds),
                        },
                    };
                    if control.active {
                        control.active = false;
                        control.rebalance_epoch += 1;
                        events.push(event(
                            false,
                            "Rebalancing",
                            format!(
                                "deactivated to move from version {} ({} workers) to {} workers",
                                a.version, a.plan.workers, spec.workers
                            ),
                        ));
                    }
                    control.rebalance = Some(progress);
                    control_changed = true;
                    rebalancing = true;
                    a.version
                }
                RebalanceStep::Drain => {
                    rebalancing = true;
                    a.version
                }
                RebalanceStep::Reassign => {
                    let next = Assignment::following(Some(a), topology_ref, spec.clone());
                    actions.push(Action::PutAssignment(Box::new(next.clone())));
                    for slot in next.plan.workers..a.plan.workers {
                        actions.push(Action::DeleteStats(slot));
                    }
                    control.active = spec.active;
                    control.rebalance = None;
                    control_changed = true;
                    events.push(event(false, "Assigned", assigned_note(&next)));
                    next.version
                }
                RebalanceStep::Reactivate => {
                    // Reassigned by an operator that stopped before reactivating,
                    // or the placement went back to what runs: the spouts come
                    // back with the activation below.
                    control.rebalance = None;
                    control_changed = true;
                    a.version
                }
                RebalanceStep::None => a.version,
            }
        }
    };

    if !rebalancing && control.active != spec.active {
        control.active = spec.active;
        control_changed = true;
        let (reason, what) = if spec.active {
            ("Activated", "spouts activated")
        } else {
            ("Deactivated", "spouts deactivated")
        };
        events.push(event(false, reason, what.to_string()));
    }
    if control_changed {
        actions.push(Action::PutControl(control));
    }
    actions.extend(events);
    (version, rebalancing)
}

/// One pod per slot, deterministic names, replaced when ended, hung or on an
/// old template. Returns the live pods by slot (terminating ones included).
fn pod_actions(
    obs: &Observed<'_>,
    memory: &mut TopologyMemory,
    rebalancing: bool,
    actions: &mut Vec<Action>,
) -> BTreeMap<u32, Pod> {
    let topo = obs.topo;
    let spec = &topo.spec;
    let mut by_slot: BTreeMap<u32, Pod> = BTreeMap::new();
    for pod in &obs.pods {
        let Some(slot) = pods::slot_of(pod) else {
            continue;
        };
        let pod_name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            by_slot.insert(slot, pod.clone());
            continue;
        }
        if slot >= spec.workers && !rebalancing {
            actions.push(Action::DeletePod(pod_name));
            continue;
        }
        // A pod that was ready but whose heartbeat lease expired is hung.
        let hung = if pods::is_ready(pod) && !obs.workers.contains_key(&slot) {
            let since = *memory.missing.entry(slot).or_insert(obs.now_ms);
            u128::from(obs.now_ms.saturating_sub(since)) > obs.heartbeat_grace.as_millis()
        } else {
            memory.missing.remove(&slot);
            false
        };
        // Pods that must be replaced: ended, on an old template (image, worker
        // settings, supervisor image), or hung.
        let replace = if pods::is_finished(pod) {
            Some((
                true,
                "WorkerLost",
                format!("pod {pod_name} (slot {slot}) ended; replacing it"),
            ))
        } else if !rebalancing
            && pods::template_changed(pod, &pods::worker_pod(topo, slot, obs.settings))
        {
            Some((
                false,
                "Upgrading",
                format!(
                    "pod {pod_name} (slot {slot}) runs an old template (image, worker settings or supervisor); replacing it"
                ),
            ))
        } else if hung {
            let grace = obs.heartbeat_grace;
            Some((
                true,
                "WorkerLost",
                format!("slot {slot} stopped heartbeating for {grace:?}; replacing pod {pod_name}"),
            ))
        } else {
            None
        };
        if let Some((warning, reason, note)) = replace {
            memory.missing.remove(&slot);
            actions.push(Action::Event {
                warning,
                reason: reason.into(),
                note,
            });
            actions.push(Action::DeletePod(pod_name));
            continue;
        }
        by_slot.insert(slot, pod.clone());
    }
    for slot in 0..spec.workers {
        if !by_slot.contains_key(&slot) {
            actions.push(Action::CreatePod(Box::new(pods::worker_pod(
                topo,
                slot,
                obs.settings,
            ))));
        }
    }
    by_slot
}

#[cfg(test)]
mod tests;
