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

/// A roll's spouts come back at the latest this long after the old pods were
/// deleted, ready or not: new pods that cannot start (a wrong image) must not
/// keep the rest of the topology off for good.
pub const ROLL_POD_WAIT_MS: u64 = 120_000;

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
    /// The rotation period whose transport TLS Secret is known to exist.
    pub transport_tls: Option<u64>,
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
    /// Create the transport TLS Secret of rotation period `epoch` unless it
    /// exists, its certificates valid for `validity` (unix ms; `None`: no
    /// practical expiry).
    EnsureTransportTls {
        epoch: u64,
        validity: Option<(u64, u64)>,
    },
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

/// Where a rebalance or a roll is, from the control record, the assignment
/// and the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceStep {
    /// The placement or the pod template changed and nothing is under way:
    /// deactivate.
    Deactivate,
    /// Spouts are off; open trees drain until the deadline.
    Drain,
    /// Drained: write the next plan, then reactivate.
    Reassign,
    /// A roll, drained: delete the pods on an old template (new ones follow).
    Replace,
    /// A roll, replaced: the spouts stay off until every new pod is ready.
    AwaitPods,
    /// The plan is written, the pods replaced, or the change went back:
    /// reactivate and clear.
    Reactivate,
    /// No rebalance.
    None,
}

/// What is under way, as the pods and the status see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Steady,
    /// A rebalance's drain.
    Rebalance,
    /// A roll: draining (`replacing` false), or replacing the pods and
    /// waiting for the new ones.
    Roll {
        replacing: bool,
    },
}

/// The pods as a roll sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCensus {
    /// Some live pod of a planned slot runs an old template (image, worker
    /// settings or supervisor image).
    pub stale: bool,
    /// Every planned slot has one ready pod of the current template whose
    /// worker runs the plan, and no pod is terminating.
    pub settled: bool,
}

/// The pod this pass wants in `slot`: the spec's, with the transport
/// certificates of the rotation period current at the pass's time.
pub fn wanted_pod(obs: &Observed<'_>, slot: u32) -> Pod {
    let epoch =
        pods::transport_tls_epoch(obs.topo, obs.settings.transport_tls_rotation, obs.now_ms);
    pods::worker_pod(obs.topo, slot, obs.settings, epoch)
}

impl PodCensus {
    pub fn of(obs: &Observed<'_>) -> PodCensus {
        let topo = obs.topo;
        let workers = topo.spec.workers;
        let version = obs.assignment.as_ref().map(|a| a.version);
        let mut stale = false;
        let mut current_ready = std::collections::BTreeSet::new();
        let mut terminating = false;
        for pod in &obs.pods {
            let Some(slot) = pods::slot_of(pod) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                terminating = true;
                continue;
            }
            if slot >= workers || pods::is_finished(pod) {
                continue;
            }
            if pods::template_changed(pod, &wanted_pod(obs, slot)) {
                stale = true;
            } else if pods::is_ready(pod)
                && obs.workers.get(&slot).is_some_and(|w| {
                    Some(w.applied_version) == version && w.state == WorkerState::Running
                })
            {
                current_ready.insert(slot);
            }
        }
        PodCensus {
            stale,
            settled: !terminating && current_ready.len() as u32 == workers,
        }
    }
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

/// The step of a rebalance or a roll now.
///
/// A roll is a rebalance that replaces pods instead of the plan: the spouts
/// go off, open trees drain (bounded by the message timeout), every pod on
/// an old template is replaced at once, and the spouts come back when all
/// the new pods are ready (or after [`ROLL_POD_WAIT_MS`]). So a roll fails no
/// tree, at the cost of one pause in emits.
pub fn rebalance_step(
    spec: &TopologySpec,
    assignment: &Assignment,
    control: &Control,
    census: PodCensus,
    pending: u64,
    now_ms: u64,
) -> RebalanceStep {
    let moving = placement(&assignment.spec) != placement(spec);
    let changing = moving || census.stale;
    match &control.rebalance {
        Some(r) if r.from_version == assignment.version && changing => {
            // Once a roll has replaced pods, the spouts have stayed off: a
            // further change needs no second drain.
            let drained = r.replaced_ms.is_some()
                || (now_ms >= r.deactivated_ms + MIN_DRAIN_MS
                    && (pending == 0 || now_ms >= r.drain_deadline_ms));
            if control.active {
                // Someone switched the spouts back on mid-drain: off again.
                RebalanceStep::Deactivate
            } else if !drained {
                RebalanceStep::Drain
            } else if moving {
                RebalanceStep::Reassign
            } else {
                RebalanceStep::Replace
            }
        }
        Some(r)
            if r.from_version == assignment.version
                && r.replaced_ms
                    .is_some_and(|t| !census.settled && now_ms < t + ROLL_POD_WAIT_MS) =>
        {
            RebalanceStep::AwaitPods
        }
        _ if changing => RebalanceStep::Deactivate,
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

    let census = PodCensus::of(obs);
    let (version, transition) = assign(obs, census, &mut actions);

    // The workers' mutual-TLS certificates, before any pod that mounts them.
    // A new rotation period changes the pods' Secret, so they roll to it.
    let rotation = obs.settings.transport_tls_rotation;
    let epoch = pods::transport_tls_epoch(topo, rotation, obs.now_ms);
    if memory.transport_tls != Some(epoch) {
        actions.push(Action::EnsureTransportTls {
            epoch,
            validity: pods::transport_tls_validity(topo, rotation, epoch),
        });
    }
    let live = pod_actions(obs, memory, transition, &mut actions);

    let (status, ui) = compute_status(obs, memory, version, &live, transition);
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

/// The assignment and the control record: the first plan, a rebalance's or
/// a roll's steps, and activation. Returns the plan version the pods should
/// run and what is under way.
fn assign(obs: &Observed<'_>, census: PodCensus, actions: &mut Vec<Action>) -> (u64, Transition) {
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
    let mut transition = Transition::Steady;
    let now = obs.now_ms;

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
            let moving = placement(&a.spec) != placement(spec);
            // A rebalance drains for a new plan; a roll for new pods.
            let draining = if moving {
                Transition::Rebalance
            } else {
                Transition::Roll { replacing: false }
            };
            match rebalance_step(spec, a, &control, census, pending, now) {
                RebalanceStep::Deactivate => {
                    // Storm's rebalance: deactivate, let open trees drain, reassign, reactivate.
                    let progress = match &control.rebalance {
                        Some(r) if r.from_version == a.version => r.clone(),
                        _ => RebalanceProgress {
                            from_version: a.version,
                            deactivated_ms: now,
                            drain_deadline_ms: now + 1000 * u64::from(spec.message_timeout_seconds),
                            replaced_ms: None,
                        },
                    };
                    if control.active {
                        control.active = false;
                        control.rebalance_epoch += 1;
                        let note = if moving {
                            format!(
                                "deactivated to move from version {} ({} workers) to {} workers",
                                a.version, a.plan.workers, spec.workers
                            )
                        } else {
                            "deactivated to roll the worker pods to a new template (image, worker settings or supervisor)".to_string()
                        };
                        events.push(event(
                            false,
                            if moving { "Rebalancing" } else { "Rolling" },
                            note,
                        ));
                    }
                    control.rebalance = Some(progress);
                    control_changed = true;
                    transition = draining;
                    a.version
                }
                RebalanceStep::Drain => {
                    transition = draining;
                    a.version
                }
                RebalanceStep::Reassign => {
                    let next = Assignment::following(Some(a), topology_ref, spec.clone());
                    actions.push(Action::PutAssignment(Box::new(next.clone())));
                    for slot in next.plan.workers..a.plan.workers {
                        actions.push(Action::DeleteStats(slot));
                    }
                    match control.rebalance.as_mut() {
                        // The pods must roll too: the spouts stay off, and
                        // the next pass replaces them (already drained).
                        Some(r) if census.stale => {
                            r.from_version = next.version;
                            transition = Transition::Roll { replacing: false };
                        }
                        _ => {
                            control.active = spec.active;
                            control.rebalance = None;
                        }
                    }
                    control_changed = true;
                    events.push(event(false, "Assigned", assigned_note(&next)));
                    next.version
                }
                RebalanceStep::Replace => {
                    if let Some(r) = control.rebalance.as_mut()
                        && r.replaced_ms.is_none()
                    {
                        r.replaced_ms = Some(now);
                        control_changed = true;
                    }
                    transition = Transition::Roll { replacing: true };
                    a.version
                }
                RebalanceStep::AwaitPods => {
                    transition = Transition::Roll { replacing: true };
                    a.version
                }
                RebalanceStep::Reactivate => {
                    // Reassigned or rolled by an operator that stopped before
                    // reactivating, or the change went back to what runs: the
                    // spouts come back with the activation below.
                    if let Some(r) = &control.rebalance
                        && let Some(replaced) = r.replaced_ms
                    {
                        let off = now.saturating_sub(r.deactivated_ms);
                        let secs = |ms: u64| ms as f64 / 1000.0;
                        let note = if census.settled {
                            format!(
                                "every worker pod runs the new template; spouts were off for {:.1} s ({:.1} s draining, {:.1} s for the new pods)",
                                secs(off),
                                secs(replaced.saturating_sub(r.deactivated_ms)),
                                secs(now.saturating_sub(replaced))
                            )
                        } else {
                            format!(
                                "the new worker pods are not all ready {} s after the old ones were deleted; spouts back on anyway (off for {:.1} s)",
                                now.saturating_sub(replaced) / 1000,
                                secs(off)
                            )
                        };
                        events.push(event(!census.settled, "Rolled", note));
                    }
                    control.rebalance = None;
                    control_changed = true;
                    a.version
                }
                RebalanceStep::None => a.version,
            }
        }
    };

    if transition == Transition::Steady && control.active != spec.active {
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
    (version, transition)
}

/// One pod per slot, deterministic names, replaced when ended or hung, or
/// on an old template when a roll says so. Returns the live pods by slot
/// (terminating ones included).
fn pod_actions(
    obs: &Observed<'_>,
    memory: &mut TopologyMemory,
    transition: Transition,
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
        if slot >= spec.workers && transition != Transition::Rebalance {
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
        // settings, supervisor image) once a roll has drained, or hung.
        let replace = if pods::is_finished(pod) {
            Some((
                true,
                "WorkerLost",
                format!("pod {pod_name} (slot {slot}) ended; replacing it"),
            ))
        } else if transition == (Transition::Roll { replacing: true })
            && pods::template_changed(pod, &wanted_pod(obs, slot))
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
            actions.push(Action::CreatePod(Box::new(wanted_pod(obs, slot))));
        }
    }
    by_slot
}

#[cfg(test)]
mod tests;
