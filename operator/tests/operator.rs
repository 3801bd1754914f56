//! The operator against a real kube-apiserver, kube-controller-manager and etcd,
//! with worker pods on the shared real node.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use squall_api::Topology;
use squall_api::records::{Assignment, Control};

use common::*;

const WORD_COUNT: &str = "examples/word-count/topology.yaml";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_assign_pods_scale_deactivate_restart_delete() {
    let cluster = env("op-lifecycle").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let client = cluster.client();
    let prefix = "/squall-lifecycle";
    let mut op = Operator::start(&cluster, prefix);
    let etcd = etcd_connect(cluster.etcd_url()).await;
    let topos: Api<Topology> = Api::namespaced(client.clone(), ns);

    let out = kubectl(&cluster, &["apply", "-f", WORD_COUNT]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The assignment is in etcd, and one pod per slot with the expected shape.
    let keys = squall_api::records::TopologyKeys::new(prefix, ns, "word-count");
    let a: Assignment = wait_for("assignment v1", Duration::from_secs(30), || {
        let (e, k) = (etcd.clone(), keys.assignment());
        async move { etcd_get(&e, &k).await }
    })
    .await
    .unwrap();
    assert_eq!(a.version, 1);
    assert_eq!(a.plan.workers, 3);
    let ps = wait_for("3 worker pods", Duration::from_secs(30), || {
        let c = client.clone();
        async move { Some(pods(&c, ns, "word-count").await).filter(|p| p.len() == 3) }
    })
    .await
    .unwrap();
    let mut names: Vec<String> = ps.iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "word-count-worker-0",
            "word-count-worker-1",
            "word-count-worker-2"
        ]
    );
    let pod = &ps[0];
    let spec = pod.spec.as_ref().unwrap();
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["worker", "supervisor"]);
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("squall-examples:0.1.0")
    );
    assert!(
        spec.containers[0].readiness_probe.is_some() && spec.containers[0].liveness_probe.is_some()
    );
    let env: Vec<&str> = spec.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(env.contains(&"POD_IP"), "{env:?}");
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Topology", "word-count", Some(true))
    );
    let labels = pod.labels();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("squall-operator")
    );
    assert!(labels.contains_key("squall.dev/slot"));

    // Status: observed generation, worker counts, conditions.
    let st = wait_for("status with conditions", Duration::from_secs(30), || {
        let t = topos.clone();
        async move {
            t.get("word-count")
                .await
                .ok()?
                .status
                .filter(|s| s.conditions.len() == 3 && s.observed_generation.is_some())
        }
    })
    .await
    .unwrap();
    assert_eq!(st.workers.desired, 3);
    assert_eq!(st.selector, "squall.dev/topology=word-count");
    for c in ["Ready", "Progressing", "Degraded"] {
        assert!(
            st.conditions
                .iter()
                .any(|x| x.type_ == c && !x.reason.is_empty()),
            "{c} missing: {:?}",
            st.conditions
        );
    }

    // kubectl scale goes through the scale subresource and rebalances to 4 workers.
    let out = kubectl(&cluster, &["scale", "topology/word-count", "--replicas=4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a2: Assignment = wait_for(
        "assignment v2 with 4 workers",
        Duration::from_secs(60),
        || {
            let (e, k) = (etcd.clone(), keys.assignment());
            async move {
                etcd_get::<Assignment>(&e, &k)
                    .await
                    .filter(|a| a.version == 2)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(a2.plan.workers, 4);
    // User components keep their task ids; the default acker count follows the workers.
    let user = |a: &Assignment| {
        let mut c = a.plan.components.clone();
        c.retain(|c| c.id != squall_api::ACKER_ID);
        c
    };
    assert_eq!(user(&a2), user(&a), "a rebalance keeps every task id");
    wait_for("4 pods", Duration::from_secs(30), || {
        let c = client.clone();
        async move { (pods(&c, ns, "word-count").await.len() == 4).then_some(()) }
    })
    .await
    .unwrap();
    let c: Control = etcd_get(&etcd, &keys.control()).await.unwrap();
    assert!(c.active, "reactivated after the rebalance");
    assert_eq!(c.rebalance_epoch, 1);

    // Deactivate through the spec.
    let patch = serde_json::json!({"spec": {"active": false}});
    topos
        .patch("word-count", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("control.active = false", Duration::from_secs(30), || {
        let (e, k) = (etcd.clone(), keys.control());
        async move { etcd_get::<Control>(&e, &k).await.filter(|c| !c.active) }
    })
    .await
    .unwrap();

    // A new image rolls the pods (the node agent maps images by repository, so a new tag runs the same binary).
    let before: Vec<String> = pods(&client, ns, "word-count")
        .await
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let patch = serde_json::json!({"spec": {"image": "squall-examples:0.1.1"}});
    topos
        .patch("word-count", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("pods on the new image", Duration::from_secs(90), || {
        let (c, before) = (client.clone(), before.clone());
        async move {
            let ps = pods(&c, ns, "word-count").await;
            let fresh = ps.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !before.contains(p.metadata.uid.as_ref().unwrap())
                    && p.spec.as_ref().unwrap().containers[0].image.as_deref()
                        == Some("squall-examples:0.1.1")
            });
            (ps.len() == 4 && fresh).then_some(())
        }
    })
    .await
    .unwrap();

    // A worker setting rolls the pods too, and is no reason for a new plan.
    let before: Vec<String> = pods(&client, ns, "word-count")
        .await
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let patch = serde_json::json!({"spec": {"worker": {"env": [{"name": "SQUALL_TEST_SETTING", "value": "1"}]}}});
    topos
        .patch("word-count", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("pods with the new setting", Duration::from_secs(90), || {
        let (c, before) = (client.clone(), before.clone());
        async move {
            let ps = pods(&c, ns, "word-count").await;
            let fresh = ps.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !before.contains(p.metadata.uid.as_ref().unwrap())
                    && p.spec.as_ref().unwrap().containers[0]
                        .env
                        .iter()
                        .flatten()
                        .any(|e| e.name == "SQUALL_TEST_SETTING")
            });
            (ps.len() == 4 && fresh).then_some(())
        }
    })
    .await
    .unwrap();
    let a_set: Assignment = etcd_get(&etcd, &keys.assignment()).await.unwrap();
    assert_eq!(a_set.version, 2, "a worker setting is not a rebalance");

    // A restarted operator adopts what exists: no duplicate pods, same plan version.
    drop(op);
    op = Operator::start(&cluster, prefix);
    // Evidence first that the new operator has looked: a whole pass of its own
    // over word-count (one that would have created any pod it found missing).
    a_fresh_pass(&op, "word-count", 60).await;
    assert_eq!(
        pods(&client, ns, "word-count").await.len(),
        4,
        "no duplicates after a restart"
    );
    let a3: Assignment = etcd_get(&etcd, &keys.assignment()).await.unwrap();
    assert_eq!(a3.version, 2, "a restart does not bump the plan");

    // The printer columns are there.
    let out = kubectl(&cluster, &["get", "topology", "word-count"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for col in ["PHASE", "WORKERS", "ACKED/S", "FAILED/S", "LATENCY", "AGE"] {
        assert!(table.contains(col), "{col} missing in:\n{table}");
    }
    let out = kubectl(&cluster, &["get", "topo"]);
    assert!(out.status.success(), "short name topo works");

    // Delete: finalizer runs, pods and etcd keys go, the object goes.
    let patch = serde_json::json!({"spec": {"killWaitSeconds": 1}});
    topos
        .patch("word-count", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let out = kubectl(
        &cluster,
        &["delete", "topology", "word-count", "--wait=false"],
    );
    assert!(out.status.success());
    wait_for("topology gone", Duration::from_secs(60), || {
        let t = topos.clone();
        async move {
            t.get_opt("word-count")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await
    .unwrap();
    wait_for("pods gone", Duration::from_secs(60), || {
        let c = client.clone();
        async move { pods(&c, ns, "word-count").await.is_empty().then_some(()) }
    })
    .await
    .unwrap();
    let left = etcd_keys(&etcd, keys.root()).await;
    assert!(left.is_empty(), "etcd keys left: {left:?}\n{}", op.log());
}

/// The status of topology `name` once it is Failed (within 30 s).
async fn failed(topos: &Api<Topology>, name: &str) -> squall_api::TopologyStatus {
    wait_for(
        &format!("{name} is Failed"),
        Duration::from_secs(30),
        || {
            let t = topos.clone();
            async move {
                t.get(name)
                    .await
                    .ok()?
                    .status
                    .filter(|s| s.phase == Some(squall_api::Phase::Failed))
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_rejected_or_reported() {
    let cluster = env("op-bad").await;
    let ns: &'static str = Box::leak(cluster.ns.clone().into_boxed_str());
    install_crd(&cluster);
    let client = cluster.client();
    let op = Operator::start(&cluster, "/squall-bad");

    let head = "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {name: bad}\nspec:\n  image: squall-examples:0.1.0\n";
    let cases = [
        (
            "parallelism must not exceed tasks",
            "  spouts: [{id: s, component: Alpha, parallelism: 4, tasks: 2}]\n",
        ),
        (
            "spout ids must be unique",
            "  spouts: [{id: s, component: Alpha}, {id: s, component: Beta}]\n",
        ),
        (
            "FIELDS and PARTIAL_KEY groupings need at least one field",
            "  spouts: [{id: s, component: Alpha}]\n  bolts: [{id: b, component: Beta}]\n  streams: [{from: s, to: b, grouping: {type: FIELDS}}]\n",
        ),
        (
            "must name a spout or a bolt",
            "  spouts: [{id: s, component: Alpha}]\n  bolts: [{id: b, component: Beta}]\n  streams: [{from: ghost, to: b, grouping: {type: SHUFFLE}}]\n",
        ),
        (
            "must name a bolt",
            "  spouts: [{id: s, component: Alpha}]\n  streams: [{from: s, to: s, grouping: {type: SHUFFLE}}]\n",
        ),
        (
            "Unsupported value",
            "  spouts: [{id: s, component: Alpha}]\n  bolts: [{id: b, component: Beta}]\n  streams: [{from: s, to: b, grouping: {type: ROUND_ROBIN}}]\n",
        ),
        ("spec.spouts", "  spouts: []\n"),
        // Plans over the limits: the schema's maxima, before any memory is committed.
        (
            "spec.workers: Invalid value: 100000",
            "  workers: 100000\n  spouts: [{id: s, component: Alpha}]\n",
        ),
        (
            "spec.spouts[0].tasks: Invalid value: 1000000",
            "  spouts: [{id: s, component: Alpha, tasks: 1000000}]\n",
        ),
        (
            "spec.workers",
            "  workers: 0\n  spouts: [{id: s, component: Alpha}]\n",
        ),
    ];
    for (expect, body) in cases {
        let out = kubectl_stdin(&cluster, &["apply", "-f", "-"], &format!("{head}{body}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the API server must reject:\n{body}");
        assert!(err.contains(expect), "expected '{expect}' in: {err}");
    }
    // Server-side dry run of a valid manifest is accepted.
    let out = kubectl(&cluster, &["apply", "--dry-run=server", "-f", WORD_COUNT]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What only the operator can see: a subscription declared twice.
    let dup = format!(
        "{head}  spouts: [{{id: s, component: RandomSentenceSpout}}]\n  bolts: [{{id: b, component: SplitSentence}}]\n  streams:\n    - {{from: s, to: b, grouping: {{type: SHUFFLE}}}}\n    - {{from: s, to: b, grouping: {{type: SHUFFLE}}}}\n"
    );
    apply_ok(&cluster, &dup);
    let topos: Api<Topology> = Api::namespaced(client.clone(), ns);
    let st = failed(&topos, "bad").await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidTopology")
    );
    assert!(
        ready.message.contains("spec.streams[1]"),
        "{}",
        ready.message
    );
    wait_event(&client, ns, "InvalidTopology", 30, |_| true)
        .await
        .unwrap();
    assert!(
        pods(&client, ns, "bad").await.is_empty(),
        "an invalid topology gets no pods"
    );
    // Plans over what only the whole spec shows: tasks in all, and memory
    // that one worker's queues need against its container's limit.
    let big = "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {name: too-big}\nspec:\n  image: squall-examples:0.1.0\n  workers: 1\n  worker: {resources: {limits: {memory: 256Mi}}}\n  spouts: [{id: s, component: RandomSentenceSpout}]\n  bolts:\n    - {id: a, component: SplitSentence, parallelism: 400, tasks: 40000}\n    - {id: b, component: SplitSentence, tasks: 40000}\n  streams:\n    - {from: s, to: a, grouping: {type: SHUFFLE}}\n    - {from: s, to: b, grouping: {type: SHUFFLE}}\n";
    apply_ok(&cluster, big);
    let st = failed(&topos, "too-big").await;
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    for says in [
        "InvalidTopology",
        "tasks in all",
        "spec.worker.resources.limits.memory: 256Mi is less than the",
    ] {
        assert!(
            ready.reason == says || ready.message.contains(says),
            "{says}: {ready:?}"
        );
    }
    assert!(
        pods(&client, ns, "too-big").await.is_empty(),
        "no pods for a plan that cannot fit"
    );

    // The web UI lists it, Failed, with the event that says why.
    let (code, body) = squall_testenv::http_get(op.ui_addr(), "/api/topologies").unwrap();
    let snap: squall_api::view::UiSnapshot = serde_json::from_str(&body).unwrap();
    let bad = snap.topologies.iter().find(|t| t.name == "bad");
    assert!(
        code == 200
            && bad.is_some_and(|t| t.phase == "Failed"
                && t.events.iter().any(|e| e.reason == "InvalidTopology"
                    && e.type_ == "Warning"
                    && e.message.contains("spec.streams[1]"))),
        "{body}"
    );
}
