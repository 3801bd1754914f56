//! What `.status` and the web UI say about a topology: phase, conditions and
//! figures, computed from what the reconciler observed. Pure, like `decide`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use squall_api::ledger::StatsLedger;
use squall_api::records::{Assignment, WorkerRecord, WorkerState, WorkerStats};
use squall_api::topology::{ComponentErrorStatus, TopologyStats, WorkerCounts};
use squall_api::view::{self, TopologyView};
use squall_api::{Phase, Topology, TopologyStatus};

use crate::decide::{Observed, TopologyMemory, Transition};
use crate::pods;

/// Acked and failed totals at a worker timestamp, and the rates they gave.
#[derive(Clone, Debug)]
pub struct Rates {
    at_ms: u64,
    acked: u64,
    failed: u64,
    acked_per_s: f64,
    failed_per_s: f64,
}

/// The status and the UI's view of a valid topology on plan `version`, with
/// `pods` the live pods by slot.
pub(crate) fn compute_status(
    obs: &Observed<'_>,
    mem: &mut TopologyMemory,
    version: u64,
    pods: &BTreeMap<u32, Pod>,
    transition: Transition,
) -> (TopologyStatus, TopologyView) {
    let topo = obs.topo;
    let (workers, stats) = (&obs.workers, &obs.stats);
    let old = topo.status.clone().unwrap_or_default();
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
        Some(
            Phase::Running
                | Phase::Degraded
                | Phase::Inactive
                | Phase::Rebalancing
                | Phase::Rolling
        )
    );

    // Failed means the spec cannot run; a crashed worker is restarted (Degraded).
    let phase = if error.is_some() {
        Phase::Failed
    } else if let Transition::Roll { .. } = transition {
        Phase::Rolling
    } else if transition == Transition::Rebalance
        || (old.phase == Some(Phase::Rebalancing) && ready < desired)
    {
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
    let now = obs.now_ms;
    match phase {
        Phase::Failed => {
            let msg = error.unwrap_or_default();
            set_conditions(
                &mut st,
                topo,
                now,
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
                now,
                ("True", reason, &progress_msg),
                ("False", "Stable", &progress_msg),
                ("False", "AllWorkersReady", &progress_msg),
            );
        }
        Phase::Rebalancing => {
            set_conditions(
                &mut st,
                topo,
                now,
                ("False", "Rebalancing", &progress_msg),
                (
                    "True",
                    "Rebalancing",
                    if transition == Transition::Rebalance {
                        "spouts deactivated while open trees drain"
                    } else {
                        "new plan assigned; workers are moving to it"
                    },
                ),
                ("False", "Rebalancing", &progress_msg),
            );
        }
        Phase::Rolling => {
            set_conditions(
                &mut st,
                topo,
                now,
                ("False", "Rolling", &progress_msg),
                (
                    "True",
                    "Rolling",
                    if transition == (Transition::Roll { replacing: false }) {
                        "new pod template: spouts deactivated while open trees drain"
                    } else {
                        "new pod template: pods replaced; spouts come back when all are ready"
                    },
                ),
                ("False", "Rolling", &progress_msg),
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
                now,
                ("False", "WorkersNotReady", &progress_msg),
                ("True", "Recovering", &progress_msg),
                ("True", reason, msg),
            );
        }
        _ => {
            set_conditions(
                &mut st,
                topo,
                now,
                ("False", "Starting", &progress_msg),
                ("True", "Starting", &progress_msg),
                ("False", "Starting", &progress_msg),
            );
        }
    }
    let (topology_stats, fresh) = aggregate_stats(topo, stats, mem);
    st.stats = Some(topology_stats);
    st.last_error = latest_error(&mem.ledger).or_else(|| old.last_error.clone());
    let recent = view::Recent::of_workers(stats);
    let components = view::component_statuses(spec, &mem.ledger.components(), &recent);
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
        workers: crate::views::worker_rows(desired, pods, workers, stats, now),
        commands: view::kubectl_commands(&namespace, &topo.name_any(), desired),
        namespace,
        components,
        ..Default::default()
    };
    view::topology_figures(&mut ui, st.stats.as_ref());
    (st, ui)
}

/// What a crashed worker's condition and event say.
pub(crate) fn crash_note(w: &WorkerRecord) -> String {
    format!(
        "slot {}: {}",
        w.slot,
        w.error.as_deref().unwrap_or("the worker crashed")
    )
}

/// The latest error any component reported, from the ledger's totals (so that a
/// restarted worker's errors are not forgotten).
fn latest_error(ledger: &StatsLedger) -> Option<ComponentErrorStatus> {
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
    mem: &mut TopologyMemory,
) -> (TopologyStats, bool) {
    let spouts: Vec<&str> = topo.spec.spouts.iter().map(|s| s.id.as_str()).collect();
    // Percentiles do not add up; the worst worker's recent p99 bounds the whole.
    let p99 = stats
        .values()
        .flat_map(|w| &w.recent)
        .filter(|(id, _)| spouts.contains(&id.as_str()))
        .filter_map(|(_, c)| c.complete_latency_ms)
        .fold(0f64, |m, l| m.max(l.p99));
    // A restarted worker counts from zero again: the ledger banks what its
    // previous process had counted, so totals never go backwards.
    mem.ledger.observe_all(stats);
    let (mut acked, mut failed, mut emitted, mut replayed) = (0u64, 0u64, 0u64, 0u64);
    for (id, c) in mem.ledger.components() {
        if spouts.contains(&id.as_str()) {
            acked += c.acked;
            failed += c.failed;
            emitted += c.roots;
            replayed += c.replayed;
        }
    }
    // Rates come from the workers' own timestamps over windows of at least 5 s,
    // so that passes triggered in quick succession (our own status patches are
    // watch events too) neither report 0 nor keep patching a jittering number.
    let at_ms = stats.values().map(|w| w.timestamp_ms).max().unwrap_or(0);
    let mut fresh = true;
    let sample = match &mem.rates {
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
    mem.rates = Some(sample);
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
        replayed_total: replayed,
    };
    (figures, fresh)
}

/// The note of an `Assigned` event.
pub(crate) fn assigned_note(a: &Assignment) -> String {
    format!(
        "plan version {}: {} tasks in {} executors on {} workers",
        a.version,
        a.plan.task_count(),
        a.plan.executors.len(),
        a.plan.workers
    )
}

pub(crate) fn has_condition_message(st: &TopologyStatus, msg: &str) -> bool {
    st.conditions.iter().any(|c| c.message == msg)
}

/// Set Ready, Progressing and Degraded, keeping transition times of unchanged
/// ones; a changed one takes `now_ms` (unix ms).
pub(crate) fn set_conditions(
    st: &mut TopologyStatus,
    topo: &Topology,
    now_ms: u64,
    ready: (&str, &str, &str),
    progressing: (&str, &str, &str),
    degraded: (&str, &str, &str),
) {
    let now = Time(
        Timestamp::from_millisecond(i64::try_from(now_ms).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::UNIX_EPOCH),
    );
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
