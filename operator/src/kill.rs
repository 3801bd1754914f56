//! The decisions of a deletion, pure like `decide`: deactivate, wait
//! `killWaitSeconds` (or until open trees drain), delete the pods and the etcd
//! keys, then let the finalizer go. Never stuck: if etcd stays down past the
//! wait plus a grace period, the keys are left to the orphan sweep and the
//! finalizer is released anyway. `controller::cleanup` reads, calls
//! [`decide_kill`] and performs the actions in order.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use squall_api::records::Control;
use squall_api::{Phase, Topology, TopologyStatus};

/// How long past the kill wait etcd may stay unreachable before the keys are
/// left to the orphan sweep.
const ETCD_GRACE: Duration = Duration::from_secs(30);
/// How long past that pods may take to terminate before the finalizer goes anyway.
const POD_GRACE: Duration = Duration::from_secs(60);

/// What a deletion pass read.
pub struct KillObserved<'a> {
    pub topo: &'a Topology,
    /// The etcd records, or why they could not be read.
    pub etcd: Result<KillRecords, String>,
    /// The topology's worker pods, terminating ones included.
    pub pods: Vec<Pod>,
    /// How long the deletion has been going on ([`deletion_elapsed`]).
    pub elapsed: Duration,
}

/// The etcd records a deletion looks at.
#[derive(Debug, Clone, Default)]
pub struct KillRecords {
    pub control: Option<Control>,
    /// Whether an assignment exists (none: nothing runs, or the keys are gone).
    pub assigned: bool,
    /// Tuple trees open at the spouts, over all workers.
    pub pending: u64,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum KillAction {
    /// Tell the workers: spouts off, the topology is killed.
    PutControl(Control),
    Event {
        reason: String,
        note: String,
    },
    /// Patch the status (the object may be gone already: a failure is ignored).
    PatchStatus(Box<TopologyStatus>),
    DeletePod(String),
    /// Remove every etcd key of the topology.
    DeleteKeys,
    Warn(String),
    /// End the pass; look again after this long.
    Requeue(Duration),
    /// Done: forget the topology and remove the finalizer.
    Release,
}

/// The actions of one deletion pass, and what to do when one of its etcd
/// writes fails: retry after this long, or (`None`, etcd has been given up
/// on) log and go on.
#[derive(Debug)]
pub struct KillPlan {
    pub actions: Vec<KillAction>,
    pub etcd_retry: Option<Duration>,
}

/// Decide one deletion pass.
pub fn decide_kill(obs: &KillObserved<'_>) -> KillPlan {
    let topo = obs.topo;
    let kill_wait = Duration::from_secs(u64::from(topo.spec.kill_wait_seconds));
    let give_up = kill_wait + ETCD_GRACE;
    let etcd_retry = (obs.elapsed < give_up).then_some(Duration::from_secs(2));
    let mut actions = Vec::new();
    let plan = |actions| KillPlan {
        actions,
        etcd_retry,
    };

    let pending = match &obs.etcd {
        Ok(records) => {
            if records.assigned && records.control.as_ref().is_none_or(|c| !c.killed) {
                actions.push(KillAction::PutControl(Control {
                    active: false,
                    killed: true,
                    rebalance_epoch: records.control.as_ref().map_or(0, |c| c.rebalance_epoch),
                    // A rebalance in progress ends here.
                    rebalance: None,
                }));
            }
            records.pending
        }
        Err(e) if etcd_retry.is_some() => {
            actions.push(KillAction::Warn(format!("cleanup waits for etcd: {e}")));
            actions.push(KillAction::Requeue(Duration::from_secs(2)));
            return plan(actions);
        }
        Err(e) => {
            actions.push(KillAction::Warn(format!(
                "etcd unreachable ({e}); releasing the finalizer, keys are left to the orphan sweep"
            )));
            0
        }
    };
    if topo.status.as_ref().and_then(|s| s.phase) != Some(Phase::Killing) {
        let mut st = topo.status.clone().unwrap_or_default();
        st.phase = Some(Phase::Killing);
        actions.push(KillAction::Event {
            reason: "Killing".into(),
            note: format!(
                "spouts deactivated; tearing down after up to {}s",
                kill_wait.as_secs()
            ),
        });
        actions.push(KillAction::PatchStatus(Box::new(st)));
    }
    // Storm waits the whole kill wait; we also stop early once every open tree has drained.
    let drained = pending == 0 && obs.elapsed >= Duration::from_secs(1);
    if obs.elapsed < kill_wait && !drained {
        actions.push(KillAction::Requeue(Duration::from_millis(500)));
        return plan(actions);
    }

    // `kubectl delete` returns once the finalizer goes: let that mean the
    // worker processes are gone too, not merely asked to stop.
    if !obs.pods.is_empty() {
        for pod in &obs.pods {
            if pod.metadata.deletion_timestamp.is_none() {
                actions.push(KillAction::DeletePod(pod.name_any()));
            }
        }
        if obs.elapsed < give_up + POD_GRACE {
            actions.push(KillAction::Requeue(Duration::from_millis(500)));
            return plan(actions);
        }
        actions.push(KillAction::Warn(
            "worker pods are slow to terminate; releasing the finalizer anyway".into(),
        ));
    }
    actions.push(KillAction::DeleteKeys);
    actions.push(KillAction::Release);
    plan(actions)
}

/// How long ago the API server stamped the deletion, at `now`: the kill wait
/// counts from there, so an operator that restarts mid-kill resumes the wait
/// instead of starting it again. `None` without a stamp; never negative (a
/// clock behind the API server's reads 0).
pub fn deletion_elapsed(topo: &Topology, now: k8s_openapi::jiff::Timestamp) -> Option<Duration> {
    let stamp = topo.metadata.deletion_timestamp.as_ref()?.0;
    Some(Duration::try_from(now.duration_since(stamp)).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(kill_wait: u32) -> Topology {
        let (_, mut spec) = squall_api::TopologySpec::from_manifest(
            "image: img:1\nworkers: 2\nspouts: [{id: s, component: X}]\n",
        )
        .unwrap();
        spec.kill_wait_seconds = kill_wait;
        let mut t = Topology::new("wc", spec);
        t.metadata.namespace = Some("ns".into());
        t
    }

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p
    }

    fn pass(
        topo: &Topology,
        etcd: Result<KillRecords, String>,
        pods: &[&str],
        secs: f64,
    ) -> KillPlan {
        decide_kill(&KillObserved {
            topo,
            etcd,
            pods: pods.iter().map(|n| pod(n)).collect(),
            elapsed: Duration::from_secs_f64(secs),
        })
    }

    fn running(pending: u64) -> Result<KillRecords, String> {
        Ok(KillRecords {
            control: Some(Control {
                rebalance_epoch: 3,
                ..Control::default()
            }),
            assigned: true,
            pending,
        })
    }

    #[test]
    fn the_kill_wait_counts_from_the_api_servers_deletion_stamp() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let mut t = topo(30);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(deletion_elapsed(&t, now), None, "not being deleted");
        t.metadata.deletion_timestamp = Some(Time(now - SignedDuration::from_secs(12)));
        assert_eq!(deletion_elapsed(&t, now), Some(Duration::from_secs(12)));
        t.metadata.deletion_timestamp = Some(Time(now + SignedDuration::from_secs(3)));
        assert_eq!(
            deletion_elapsed(&t, now),
            Some(Duration::ZERO),
            "a clock behind the API server's"
        );
    }

    #[test]
    fn a_kill_deactivates_then_waits_for_open_trees_then_tears_down() {
        let mut t = topo(30);
        let first = pass(&t, running(12), &["wc-worker-0", "wc-worker-1"], 0.0);
        assert_eq!(
            first.actions[0],
            KillAction::PutControl(Control {
                active: false,
                killed: true,
                rebalance_epoch: 3,
                rebalance: None,
            })
        );
        assert!(
            matches!(&first.actions[1], KillAction::Event { reason, .. } if reason == "Killing")
        );
        let Some(KillAction::PatchStatus(st)) = first.actions.get(2) else {
            panic!("{:?}", first.actions)
        };
        assert_eq!(st.phase, Some(Phase::Killing));
        assert_eq!(
            first.actions[3],
            KillAction::Requeue(Duration::from_millis(500))
        );
        t.status = Some((**st).clone());

        // Trees still open: it waits, with nothing deleted.
        let open = pass(&t, running(12), &["wc-worker-0"], 5.0);
        assert!(
            !open
                .actions
                .iter()
                .any(|a| matches!(a, KillAction::DeletePod(_)))
        );
        // Drained after a second: the pods go, and it waits for them to end.
        let drained = pass(&t, running(0), &["wc-worker-0", "wc-worker-1"], 1.0);
        assert_eq!(
            drained.actions[1..],
            [
                KillAction::DeletePod("wc-worker-0".into()),
                KillAction::DeletePod("wc-worker-1".into()),
                KillAction::Requeue(Duration::from_millis(500)),
            ]
        );
        // Pods gone: the keys, then the finalizer.
        let done = pass(&t, running(0), &[], 2.0);
        assert_eq!(
            done.actions[1..],
            [KillAction::DeleteKeys, KillAction::Release]
        );
        // Trees that never drain: the kill wait is the limit.
        let late = pass(&t, running(5), &[], 30.0);
        assert!(
            late.actions
                .ends_with(&[KillAction::DeleteKeys, KillAction::Release])
        );
    }

    #[test]
    fn etcd_down_holds_the_finalizer_until_the_grace_is_spent() {
        let t = topo(5);
        let down = || Err("connection refused".to_string());
        let held = pass(&t, down(), &["wc-worker-0"], 3.0);
        assert_eq!(held.actions[1], KillAction::Requeue(Duration::from_secs(2)));
        assert_eq!(held.etcd_retry, Some(Duration::from_secs(2)));
        // Past the kill wait plus 30 s: pods and finalizer go, keys are left.
        let spent = pass(&t, down(), &[], 35.0);
        assert_eq!(spent.etcd_retry, None);
        assert!(
            spent
                .actions
                .ends_with(&[KillAction::DeleteKeys, KillAction::Release])
        );
        // Pods that never end do not hold it forever either.
        let stuck = pass(&t, running(0), &["wc-worker-0"], 95.0);
        assert!(
            stuck
                .actions
                .ends_with(&[KillAction::DeleteKeys, KillAction::Release])
        );
        let waiting = pass(&t, running(0), &["wc-worker-0"], 94.0);
        assert!(!waiting.actions.contains(&KillAction::Release));
    }

    #[test]
    fn a_killed_topology_is_not_told_twice() {
        let t = topo(5);
        let killed = Ok(KillRecords {
            control: Some(Control {
                active: false,
                killed: true,
                ..Control::default()
            }),
            assigned: true,
            pending: 0,
        });
        let plan = pass(&t, killed, &[], 0.5);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, KillAction::PutControl(_)))
        );
        // Nothing assigned: nothing to tell.
        let none = pass(&t, Ok(KillRecords::default()), &[], 0.5);
        assert!(
            !none
                .actions
                .iter()
                .any(|a| matches!(a, KillAction::PutControl(_)))
        );
    }
}
