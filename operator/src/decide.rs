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
use squall_api::records::{Assignment, Control, WorkerRecord, WorkerState, WorkerStats};
use squall_api::view::{self, TopologyView};
use squall_api::{Phase, Topology, TopologyStatus, validate};

use crate::pods::{self, PodSettings};

mod rebalance;
use crate::status::{Rates, compute_status, crash_note, has_condition_message, set_conditions};
use rebalance::assign;
pub use rebalance::{
    PodCensus, ROLL_POD_WAIT_MS, RebalanceStep, Transition, placement, rebalance_step, wanted_pod,
};

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
