//! A rebalance's and a roll's steps, and the assignment and control record
//! that carry them out: Storm's deactivate, drain, reassign, reactivate, and
//! for a new pod template, deactivate, drain, replace the pods, wait for
//! them, reactivate.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use squall_api::TopologySpec;
use squall_api::records::{Assignment, Control, RebalanceProgress, TopologyRef, WorkerState};

use super::{Action, Observed};
use crate::pods;
use crate::status::assigned_note;

/// The drain of a rebalance lasts at least this long, even with no open tree,
/// so that every worker has seen the deactivation.
const MIN_DRAIN_MS: u64 = 1000;

/// A roll's spouts come back at the latest this long after the old pods were
/// deleted, ready or not: new pods that cannot start (a wrong image) must not
/// keep the rest of the topology off for good.
pub const ROLL_POD_WAIT_MS: u64 = 120_000;

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

/// The assignment and the control record: the first plan, a rebalance's or
/// a roll's steps, and activation. Returns the plan version the pods should
/// run and what is under way.
pub(super) fn assign(
    obs: &Observed<'_>,
    census: PodCensus,
    actions: &mut Vec<Action>,
) -> (u64, Transition) {
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
