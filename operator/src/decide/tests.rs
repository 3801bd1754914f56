//! The reconciler's decisions, pass by pass, against a world kept in memory:
//! no API server, no etcd, no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use squall_api::records::{ComponentStats, Control, WorkerRecord, WorkerState, WorkerStats};
use squall_api::{Phase, Topology, TopologySpec};

use super::*;

const T0: u64 = 1_800_000_000_000;

fn settings() -> PodSettings {
    PodSettings {
        supervisor_image: "sup:1".into(),
        etcd_endpoints: vec!["http://etcd:2379".into()],
        etcd_prefix: "/squall".into(),
        image_pull_policy: None,
        etcd_tls_secret: None,
        transport_tls_rotation: None,
    }
}

fn spec(workers: u32) -> TopologySpec {
    let manifest = format!(
        "image: img:1\nworkers: {workers}\nmessageTimeoutSeconds: 30\n\
         spouts: [{{id: s, component: RandomSentenceSpout}}]\n\
         bolts: [{{id: b, component: SplitSentence, parallelism: 2}}]\n\
         streams: [{{from: s, to: b, grouping: {{type: SHUFFLE}}}}]\n"
    );
    TopologySpec::from_manifest(&manifest).unwrap().1
}

/// The cluster and etcd as one pass sees them, and what the executor did.
struct World {
    topo: Topology,
    settings: PodSettings,
    assignment: Option<Assignment>,
    control: Option<Control>,
    workers: BTreeMap<u32, WorkerRecord>,
    stats: BTreeMap<u32, WorkerStats>,
    pods: Vec<Pod>,
    now_ms: u64,
    memory: TopologyMemory,
    /// Every action of the last pass.
    last: Vec<Action>,
}

impl World {
    fn new(workers: u32) -> World {
        let mut topo = Topology::new("wc", spec(workers));
        topo.metadata.namespace = Some("ns".into());
        topo.metadata.uid = Some("uid-1".into());
        topo.metadata.generation = Some(1);
        World {
            topo,
            settings: settings(),
            assignment: None,
            control: None,
            workers: BTreeMap::new(),
            stats: BTreeMap::new(),
            pods: Vec::new(),
            now_ms: T0,
            memory: TopologyMemory::default(),
            last: Vec::new(),
        }
    }

    /// A world where the first plan runs: every pod ready, every worker
    /// running it, the status Running.
    fn running(workers: u32) -> World {
        let mut w = World::new(workers);
        w.pass();
        w.pods_ready();
        w.workers_run();
        w.pass();
        assert_eq!(w.phase(), Some(Phase::Running), "{:?}", w.last);
        w
    }

    /// One pass: decide, then do what the executor would.
    fn pass(&mut self) -> &[Action] {
        let observed = Observed {
            topo: &self.topo,
            settings: &self.settings,
            assignment: self.assignment.clone(),
            control: self.control.clone(),
            workers: self.workers.clone(),
            stats: self.stats.clone(),
            pods: self.pods.clone(),
            now_ms: self.now_ms,
            heartbeat_grace: Duration::from_secs(5),
        };
        let plan = decide(&observed, &mut self.memory);
        assert!(plan.resync || self.topo.status.is_some());
        for action in &plan.actions {
            match action {
                Action::PutAssignment(a) => self.assignment = Some((**a).clone()),
                Action::DeleteStats(slot) => {
                    self.stats.remove(slot);
                }
                Action::PutControl(c) => self.control = Some(c.clone()),
                Action::EnsureTransportTls { epoch, .. } => {
                    self.memory.transport_tls = Some(*epoch)
                }
                Action::CreatePod(p) => {
                    assert!(
                        !self.pods.iter().any(|q| q.metadata.name == p.metadata.name),
                        "a second pod for a slot: {:?}",
                        p.metadata.name
                    );
                    self.pods.push((**p).clone());
                }
                Action::DeletePod(name) => {
                    self.pods
                        .retain(|p| p.metadata.name.as_deref() != Some(name));
                }
                Action::PatchStatus(st) => self.topo.status = Some((**st).clone()),
                Action::Event { .. } | Action::View(_) => {}
            }
        }
        self.last = plan.actions;
        &self.last
    }

    fn phase(&self) -> Option<Phase> {
        self.topo.status.as_ref().and_then(|s| s.phase)
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let st = self.topo.status.as_ref().unwrap();
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn version(&self) -> u64 {
        self.assignment.as_ref().unwrap().version
    }

    fn control(&self) -> Control {
        self.control.clone().unwrap()
    }

    fn pods_ready(&mut self) {
        for p in &mut self.pods {
            p.status = Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
        }
    }

    /// Every pod's worker runs the current plan.
    fn workers_run(&mut self) {
        let version = self.version();
        self.workers = self
            .pods
            .iter()
            .map(|p| {
                let slot = pods::slot_of(p).unwrap();
                let record = WorkerRecord {
                    slot,
                    pod: p.metadata.name.clone().unwrap(),
                    endpoint: format!("10.0.0.{slot}:6700"),
                    applied_version: version,
                    state: WorkerState::Running,
                    error: None,
                };
                (slot, record)
            })
            .collect();
    }

    /// Each worker's stats: spout `s` acked `acked`, with `pending` open trees.
    fn publish(&mut self, incarnation: u64, acked: u64, pending: u64) {
        let version = self.version();
        for &slot in self.workers.keys() {
            let spout = ComponentStats {
                acked,
                roots: acked,
                ..Default::default()
            };
            let stats = WorkerStats {
                slot,
                incarnation,
                applied_version: version,
                timestamp_ms: self.now_ms,
                components: BTreeMap::from([("s".to_string(), spout)]),
                pending,
                ..Default::default()
            };
            self.stats.insert(slot, stats);
        }
    }

    fn events(&self) -> Vec<(&str, &str)> {
        self.last
            .iter()
            .filter_map(|a| match a {
                Action::Event { reason, note, .. } => Some((reason.as_str(), note.as_str())),
                _ => None,
            })
            .collect()
    }

    fn has_event(&self, reason: &str) -> bool {
        self.events().iter().any(|(r, _)| *r == reason)
    }

    /// What the last pass wrote to etcd (assignments by version, controls, stats removed).
    fn etcd_writes(&self) -> Vec<String> {
        self.last
            .iter()
            .filter_map(|a| match a {
                Action::PutAssignment(a) => Some(format!("assignment v{}", a.version)),
                Action::PutControl(c) => Some(format!(
                    "control active={} epoch={} rebalance={:?}",
                    c.active,
                    c.rebalance_epoch,
                    c.rebalance.as_ref().map(|r| r.from_version)
                )),
                Action::DeleteStats(slot) => Some(format!("delete stats {slot}")),
                _ => None,
            })
            .collect()
    }

    fn created(&self) -> Vec<u32> {
        self.last
            .iter()
            .filter_map(|a| match a {
                Action::CreatePod(p) => pods::slot_of(p),
                _ => None,
            })
            .collect()
    }

    fn deleted(&self) -> Vec<String> {
        self.last
            .iter()
            .filter_map(|a| match a {
                Action::DeletePod(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn acked_total(&self) -> u64 {
        let st = self.topo.status.as_ref().unwrap();
        st.stats.as_ref().unwrap().acked_total
    }
}

#[test]
fn the_first_pass_assigns_in_etcd_before_any_pod_and_creates_one_pod_per_slot() {
    let mut w = World::new(3);
    w.pass();
    let order: Vec<&str> = w
        .last
        .iter()
        .map(|a| match a {
            Action::PutAssignment(_) => "assignment",
            Action::PutControl(_) => "control",
            Action::EnsureTransportTls { .. } => "tls",
            Action::CreatePod(_) => "pod",
            Action::PatchStatus(_) => "status",
            _ => "",
        })
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        order,
        [
            "assignment",
            "control",
            "tls",
            "pod",
            "pod",
            "pod",
            "status"
        ]
    );
    assert_eq!(w.created(), [0, 1, 2]);
    assert_eq!(w.version(), 1);
    assert!(w.control().active && w.control().rebalance.is_none());
    assert!(w.has_event("Assigned"));
    // The pods it creates are seen from the next pass on.
    assert_eq!(w.phase(), Some(Phase::Pending));
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "Starting".into())
    );

    // The next pass changes nothing that exists: no second pod, plan or Secret.
    w.pass();
    assert!(w.etcd_writes().is_empty(), "{:?}", w.etcd_writes());
    assert!(w.created().is_empty());
    assert_eq!(w.phase(), Some(Phase::Starting));
    assert!(
        !w.last
            .iter()
            .any(|a| matches!(a, Action::EnsureTransportTls { .. }))
    );
}

#[test]
fn phase_and_conditions_follow_the_workers() {
    let mut w = World::running(2);
    assert_eq!(
        w.condition("Ready"),
        ("True".into(), "AllWorkersReady".into())
    );
    assert_eq!(w.condition("Degraded").0, "False");
    let st = w.topo.status.clone().unwrap();
    assert_eq!((st.workers.ready, st.workers.desired), (2, 2));
    assert_eq!(st.observed_generation, Some(1));
    assert!(w.has_event("Running"));

    // A steady pass patches nothing.
    w.now_ms += 2000;
    w.pass();
    assert!(!w.last.iter().any(|a| matches!(a, Action::PatchStatus(_))));

    // A worker crashes: Degraded, with the crash in the condition and one event.
    w.workers.get_mut(&1).unwrap().state = WorkerState::Crashed;
    w.workers.get_mut(&1).unwrap().error = Some("component b panicked".into());
    w.pass();
    assert_eq!(w.phase(), Some(Phase::Degraded));
    assert_eq!(
        w.condition("Degraded"),
        ("True".into(), "WorkerCrashed".into())
    );
    assert!(w.has_event("WorkerCrashed"));
    w.pass();
    assert!(!w.has_event("WorkerCrashed"), "said once: {:?}", w.events());

    // It recovers; then the spec deactivates: the spouts go off and the phase is Inactive.
    w.workers_run();
    w.pass();
    assert_eq!(w.phase(), Some(Phase::Running));
    w.topo.spec.active = false;
    w.pass();
    assert!(!w.control().active);
    assert!(w.has_event("Deactivated"));
    assert_eq!(w.phase(), Some(Phase::Inactive));
    assert_eq!(w.condition("Ready"), ("True".into(), "Deactivated".into()));

    // A worker that cannot run its plan fails the topology.
    w.workers.get_mut(&0).unwrap().state = WorkerState::Error;
    w.workers.get_mut(&0).unwrap().error = Some("unknown component Nope".into());
    w.pass();
    assert_eq!(w.phase(), Some(Phase::Failed));
    assert_eq!(
        w.condition("Degraded"),
        ("True".into(), "WorkerError".into())
    );
}

#[test]
fn an_invalid_spec_fails_with_a_condition_and_touches_nothing_else() {
    let mut w = World::new(2);
    w.topo.spec.streams[0].to = "nowhere".into();
    let observed = Observed {
        topo: &w.topo,
        settings: &w.settings,
        assignment: None,
        control: None,
        workers: BTreeMap::new(),
        stats: BTreeMap::new(),
        pods: Vec::new(),
        now_ms: T0,
        heartbeat_grace: Duration::from_secs(5),
    };
    let plan = decide(&observed, &mut w.memory);
    assert!(!plan.resync, "waits for the spec to change");
    let kinds: Vec<&str> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Event { reason, .. } => reason.as_str(),
            Action::View(_) => "view",
            Action::PatchStatus(_) => "status",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["InvalidTopology", "view", "status"]);
    let Some(Action::PatchStatus(st)) = plan.actions.last() else {
        unreachable!()
    };
    assert_eq!(st.phase, Some(Phase::Failed));
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "InvalidTopology");
    assert!(degraded.message.contains("nowhere"), "{}", degraded.message);
}

#[test]
fn a_rebalance_deactivates_drains_reassigns_and_reactivates() {
    let mut w = World::running(2);
    w.publish(1, 100, 40);
    w.pass();

    // Scale to 3. However late the first pass after the change comes, it
    // deactivates first and reassigns nothing.
    w.topo.spec.workers = 3;
    w.now_ms += 60_000;
    let deactivated = w.now_ms;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        ["control active=false epoch=1 rebalance=Some(1)"]
    );
    let progress = w.control().rebalance.unwrap();
    assert_eq!(progress.deactivated_ms, deactivated);
    assert_eq!(progress.drain_deadline_ms, deactivated + 30_000);
    assert!(w.has_event("Rebalancing"));
    assert_eq!(w.phase(), Some(Phase::Rebalancing));
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "Rebalancing".into())
    );

    // Draining: open trees keep it waiting, with nothing written.
    for after in [500, 1500, 20_000] {
        w.now_ms = deactivated + after;
        w.pass();
        assert!(
            w.etcd_writes().is_empty(),
            "{after} ms: {:?}",
            w.etcd_writes()
        );
        assert_eq!(w.phase(), Some(Phase::Rebalancing));
    }

    // Drained: the next plan, then the spouts back on, in that order.
    w.publish(1, 140, 0);
    w.now_ms = deactivated + 21_000;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        [
            "assignment v2",
            "control active=true epoch=1 rebalance=None"
        ]
    );
    assert_eq!(w.assignment.as_ref().unwrap().plan.workers, 3);
    assert!(w.has_event("Assigned"));
    // The rebalance lasts until every worker runs the new plan.
    assert_eq!(w.phase(), Some(Phase::Rebalancing));
    w.pods_ready();
    w.workers_run();
    w.pass();
    assert_eq!(w.phase(), Some(Phase::Running));
    assert!(w.etcd_writes().is_empty());
}

#[test]
fn a_drain_ends_at_its_deadline_and_a_shrink_removes_the_slots_it_drops() {
    let mut w = World::running(3);
    w.publish(1, 10, 7);
    w.topo.spec.workers = 2;
    w.pass();
    let deadline = w.control().rebalance.unwrap().drain_deadline_ms;
    // The slot that goes keeps its pod while the trees drain.
    w.now_ms = deadline - 1;
    w.pass();
    assert!(w.deleted().is_empty() && w.etcd_writes().is_empty());
    // Trees still open at the deadline: reassign anyway.
    w.now_ms = deadline;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        [
            "assignment v2",
            "delete stats 2",
            "control active=true epoch=1 rebalance=None"
        ]
    );
    assert_eq!(w.deleted(), ["wc-worker-2"]);
}

#[test]
fn a_restarted_operator_resumes_a_rebalance_at_its_step_and_deadline() {
    // The previous operator deactivated and persisted the drain deadline.
    let mut before = World::running(2);
    before.publish(1, 50, 3);
    before.topo.spec.workers = 3;
    before.pass();
    let persisted = before.control();
    let progress = persisted.rebalance.clone().unwrap();

    // A new operator: no memory, the same records, 10 s later.
    let mut w = World::running(2);
    w.topo = before.topo.clone();
    w.assignment = before.assignment.clone();
    w.control = Some(persisted.clone());
    w.stats = before.stats.clone();
    w.pods = before.pods.clone();
    w.memory = TopologyMemory::default();
    w.now_ms = progress.deactivated_ms + 10_000;
    w.pass();
    // It drains on: no second deactivation, no new epoch, no event, no plan.
    assert!(w.etcd_writes().is_empty(), "{:?}", w.etcd_writes());
    assert!(!w.has_event("Rebalancing"));
    assert_eq!(w.phase(), Some(Phase::Rebalancing));
    // And it reassigns at the old deadline, not a whole drain after its start.
    w.now_ms = progress.drain_deadline_ms;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        [
            "assignment v2",
            "control active=true epoch=1 rebalance=None"
        ]
    );

    // Stopped between the plan and the reactivation: the next operator
    // reactivates and clears the record, without a third plan.
    let mut w2 = World::running(2);
    w2.topo = w.topo.clone();
    w2.assignment = w.assignment.clone();
    w2.control = Some(persisted);
    w2.pods = w.pods.clone();
    w2.now_ms = w.now_ms + 1000;
    w2.pass();
    assert_eq!(
        w2.etcd_writes(),
        ["control active=true epoch=1 rebalance=None"]
    );
    assert!(w2.has_event("Activated"));
    assert_eq!(w2.version(), 2);
}

#[tokio::test]
async fn rebalance_progress_survives_in_the_control_record() {
    // Through the typed store, as the executor writes and reads it.
    let coord = std::sync::Arc::new(squall_coord::MemoryCoordinator::new());
    let store = squall_coord::TopologyStore::new(coord, "/squall", "ns", "wc");
    let mut w = World::running(2);
    w.topo.spec.workers = 4;
    w.pass();
    let Some(Action::PutControl(written)) =
        w.last.iter().find(|a| matches!(a, Action::PutControl(_)))
    else {
        panic!("no control written: {:?}", w.last)
    };
    store.put_control(written).await.unwrap();
    let read = store.control().await.unwrap().unwrap();
    assert_eq!(&read, written);
    assert_eq!(read.rebalance.unwrap().from_version, 1);
}

#[test]
fn a_spec_changed_back_mid_drain_reactivates_without_a_new_plan() {
    let mut w = World::running(2);
    w.topo.spec.workers = 3;
    w.pass();
    assert!(!w.control().active);
    w.topo.spec.workers = 2;
    w.now_ms += 500;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        ["control active=true epoch=1 rebalance=None"]
    );
    assert_eq!(w.version(), 1);
    // The pod made for slot 2 meanwhile goes.
    assert_eq!(w.deleted(), ["wc-worker-2"]);
}

#[test]
fn spouts_switched_on_mid_drain_are_switched_off_again() {
    let mut w = World::running(2);
    w.publish(1, 5, 9);
    w.topo.spec.workers = 3;
    w.pass();
    let deadline = w.control().rebalance.unwrap().drain_deadline_ms;
    let mut c = w.control();
    c.active = true;
    w.control = Some(c);
    w.now_ms += 2000;
    w.pass();
    let c = w.control();
    assert!(!c.active);
    assert_eq!(c.rebalance_epoch, 2);
    assert_eq!(c.rebalance.unwrap().drain_deadline_ms, deadline);
}

#[test]
fn stats_are_banked_across_worker_restarts_and_rates_take_5_s_windows() {
    let mut w = World::running(2);
    w.publish(1, 100, 0);
    w.pass();
    assert_eq!(w.acked_total(), 200);
    // A second later: no new rate sample yet.
    w.now_ms += 1000;
    w.publish(1, 150, 0);
    w.pass();
    assert_eq!(w.acked_total(), 300);
    let st = w.topo.status.clone().unwrap();
    assert_eq!(st.stats.as_ref().unwrap().acked_per_second, 0.0);
    // Five seconds after the first sample: a rate.
    w.now_ms += 4000;
    w.publish(1, 200, 0);
    w.pass();
    let figures = w.topo.status.clone().unwrap().stats.unwrap();
    assert_eq!(figures.acked_total, 400);
    assert_eq!(figures.acked_per_second, 40.0);
    // Both workers restart and count from zero: the total does not go back.
    w.now_ms += 1000;
    w.publish(2, 10, 0);
    w.pass();
    assert_eq!(w.acked_total(), 420);
}

#[test]
fn a_roll_deactivates_drains_replaces_every_pod_and_reactivates_once_all_are_ready() {
    let mut w = World::running(2);
    w.publish(1, 100, 40);
    w.pass();

    // A new image: the spouts go off first, and no pod is touched yet.
    w.topo.spec.image = "img:2".into();
    w.now_ms += 60_000;
    let deactivated = w.now_ms;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        ["control active=false epoch=1 rebalance=Some(1)"]
    );
    assert!(w.has_event("Rolling"));
    assert!(w.deleted().is_empty() && w.created().is_empty());
    assert_eq!(w.phase(), Some(Phase::Rolling));
    assert_eq!(
        w.condition("Progressing"),
        ("True".into(), "Rolling".into())
    );

    // Open trees hold the old pods, past the one-second minimum too.
    for after in [500, 1500, 20_000] {
        w.now_ms = deactivated + after;
        w.pass();
        assert!(w.deleted().is_empty(), "{after} ms: {:?}", w.deleted());
        assert!(w.etcd_writes().is_empty(), "{after} ms");
    }

    // Drained: every old pod goes in one pass, and the new ones come from
    // the new template; the spouts stay off.
    w.publish(1, 140, 0);
    w.now_ms = deactivated + 21_000;
    w.pass();
    assert_eq!(w.deleted(), ["wc-worker-0", "wc-worker-1"]);
    assert!(w.has_event("Upgrading"));
    assert_eq!(w.created(), [0, 1]);
    let image = |p: &Pod| p.spec.as_ref().unwrap().containers[0].image.clone();
    assert!(w.pods.iter().all(|p| image(p).as_deref() == Some("img:2")));
    assert_eq!(w.control().rebalance.unwrap().replaced_ms, Some(w.now_ms));
    assert!(!w.control().active);
    assert_eq!(w.phase(), Some(Phase::Rolling));

    // New pods starting: nothing to do, spouts still off.
    w.now_ms += 3_000;
    w.pass();
    assert!(w.deleted().is_empty() && w.created().is_empty());
    assert!(w.etcd_writes().is_empty(), "{:?}", w.etcd_writes());
    w.workers.clear();

    // All ready on the plan: the spouts come back, in the pass that sees it.
    w.pods_ready();
    w.workers_run();
    w.now_ms += 1_000;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        ["control active=true epoch=1 rebalance=None"]
    );
    let rolled = w.events();
    let (_, note) = rolled.iter().find(|(r, _)| *r == "Rolled").unwrap();
    assert!(
        note.contains("spouts were off for 25.0 s (21.0 s draining, 4.0 s for the new pods)"),
        "{note}"
    );
    assert_eq!(w.phase(), Some(Phase::Running));
    assert_eq!(w.version(), 1, "an image is not a new plan");
}

#[test]
fn a_roll_drains_until_the_deadline_and_waits_for_new_pods_for_a_bounded_time() {
    let mut w = World::running(2);
    w.publish(1, 10, 7);
    w.topo.spec.worker = Some(Default::default());
    w.topo.spec.image = "img:2".into();
    w.pass();
    let progress = w.control().rebalance.unwrap();
    // Trees never drain: the pods go at the message timeout.
    w.now_ms = progress.drain_deadline_ms - 1;
    w.pass();
    assert!(w.deleted().is_empty());
    w.now_ms = progress.drain_deadline_ms;
    w.pass();
    assert_eq!(w.deleted().len(), 2);
    let replaced = w.now_ms;

    // New pods that never get ready (a wrong image) keep the spouts off only
    // for a while.
    w.now_ms = replaced + ROLL_POD_WAIT_MS - 1;
    w.pass();
    assert!(w.etcd_writes().is_empty());
    w.now_ms = replaced + ROLL_POD_WAIT_MS;
    w.pass();
    assert_eq!(
        w.etcd_writes(),
        ["control active=true epoch=1 rebalance=None"]
    );
    let events = w.events();
    let (_, note) = events.iter().find(|(r, _)| *r == "Rolled").unwrap();
    assert!(note.contains("not all ready"), "{note}");
    assert_ne!(w.phase(), Some(Phase::Rolling));
}

#[test]
fn a_restarted_operator_resumes_a_roll_without_replacing_twice() {
    let mut w = World::running(2);
    w.topo.spec.image = "img:2".into();
    w.pass();
    w.now_ms += 1_000;
    w.pass();
    assert_eq!(w.deleted().len(), 2);
    // A new operator: nothing in memory, the control record in etcd.
    w.memory = TopologyMemory::default();
    w.now_ms += 1_000;
    w.pass();
    assert!(w.deleted().is_empty() && w.created().is_empty());
    assert!(!w.control().active);
    w.pods_ready();
    w.workers_run();
    w.pass();
    assert!(w.control().active && w.control().rebalance.is_none());
}

#[test]
fn a_rebalance_and_a_new_image_together_drain_once_then_roll() {
    let mut w = World::running(2);
    w.publish(1, 1, 4);
    w.topo.spec.workers = 3;
    w.topo.spec.image = "img:3".into();
    w.pass();
    // While the rebalance drains, a changed template waits.
    assert!(w.deleted().is_empty(), "{:?}", w.deleted());
    assert_eq!(w.phase(), Some(Phase::Rebalancing));
    w.publish(1, 5, 0);
    w.now_ms += 1_000;
    w.pass();
    // The next plan, with the spouts still off: the pods roll next.
    assert_eq!(
        w.etcd_writes(),
        [
            "assignment v2",
            "control active=false epoch=1 rebalance=Some(2)"
        ]
    );
    assert_eq!(w.phase(), Some(Phase::Rolling));
    w.pass();
    assert_eq!(w.deleted(), ["wc-worker-0", "wc-worker-1"]);
    assert!(!w.control().active);
    w.pods_ready();
    w.workers_run();
    w.pass();
    assert!(w.control().active && w.control().rebalance.is_none());
    assert_eq!(w.pods.len(), 3);
    assert_eq!(w.phase(), Some(Phase::Running));
}

#[test]
fn a_missing_pod_is_recreated_and_an_ended_one_replaced() {
    let mut w = World::running(3);
    w.pods.retain(|p| pods::slot_of(p) != Some(1));
    w.pass();
    assert_eq!(w.created(), [1]);
    assert_eq!(w.pods.len(), 3);

    w.pods_ready();
    let ended = w
        .pods
        .iter_mut()
        .find(|p| pods::slot_of(p) == Some(2))
        .unwrap();
    ended.status.as_mut().unwrap().phase = Some("Failed".into());
    w.pass();
    assert_eq!(w.deleted(), ["wc-worker-2"]);
    assert!(w.has_event("WorkerLost"));
    assert_eq!(w.created(), [2], "replaced in the same pass");

    // A terminating pod holds its slot: no second pod beside it.
    let gone = w
        .pods
        .iter_mut()
        .find(|p| pods::slot_of(p) == Some(0))
        .unwrap();
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    w.pass();
    assert!(w.created().is_empty() && w.deleted().is_empty());
}

#[test]
fn a_ready_pod_without_a_heartbeat_is_replaced_after_the_grace() {
    let mut w = World::running(2);
    w.workers.remove(&1);
    w.pass();
    assert!(w.deleted().is_empty());
    assert_eq!(w.phase(), Some(Phase::Degraded));
    w.now_ms += 5000;
    w.pass();
    assert!(w.deleted().is_empty(), "not before the grace has passed");
    w.now_ms += 1;
    w.pass();
    assert_eq!(w.deleted(), ["wc-worker-1"]);
    assert!(w.has_event("WorkerLost"));
    assert!(w.memory.missing.is_empty());
}

#[test]
fn transport_certificates_are_renewed_each_period_by_a_roll() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let secret = |p: &Pod| {
        let volumes = p.spec.as_ref().unwrap().volumes.clone().unwrap_or_default();
        let v = volumes.iter().find(|v| v.name == "transport-tls").unwrap();
        v.secret.as_ref().unwrap().secret_name.clone().unwrap()
    };
    let ensured = |w: &World| {
        w.last
            .iter()
            .filter_map(|a| match a {
                Action::EnsureTransportTls { epoch, validity } => Some((*epoch, *validity)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    const HOUR: u64 = 3_600_000;
    let mut w = World::new(2);
    w.settings.transport_tls_rotation = Some(Duration::from_secs(100));
    w.topo.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(T0 as i64).unwrap(),
    ));
    // Period 0: valid from an hour before the creation to an hour after the
    // next period ends.
    w.pass();
    assert_eq!(ensured(&w), [(0, Some((T0 - HOUR, T0 + 200_000 + HOUR)))]);
    assert!(w.pods.iter().all(|p| secret(p) == "wc-transport-tls"));
    w.pods_ready();
    w.workers_run();
    w.pass();
    assert_eq!(w.phase(), Some(Phase::Running));
    assert!(ensured(&w).is_empty(), "once per period");
    w.now_ms = T0 + 99_999;
    w.pass();
    assert!(ensured(&w).is_empty() && w.etcd_writes().is_empty());

    // Period 1: its Secret, then a roll onto it.
    w.now_ms = T0 + 100_000;
    w.pass();
    assert_eq!(
        ensured(&w),
        [(1, Some((T0 + 100_000 - HOUR, T0 + 300_000 + HOUR)))]
    );
    assert!(w.has_event("Rolling"));
    assert!(w.deleted().is_empty(), "the spouts go off first");
    w.now_ms += 1_000;
    w.pass();
    assert_eq!(w.deleted().len(), 2);
    assert!(w.pods.iter().all(|p| secret(p) == "wc-transport-tls-1"));
    w.pods_ready();
    w.workers_run();
    w.pass();
    assert!(w.control().active && w.control().rebalance.is_none());
    assert_eq!(w.phase(), Some(Phase::Running));
}
