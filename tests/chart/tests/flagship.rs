//! The flagship test: a user's first hour, end to end, on a real control plane.
//!
//! 1. `helm install` the chart; the operator runs as a pod with the chart's RBAC;
//! 2. `kubectl apply` word count (with a spout `limit`, so loss is countable);
//! 3. `kubectl get topology` reaches Running 3/3 with acked rising;
//! 4. `kubectl scale --replicas=4` rebalances to 4/4;
//! 5. a killed worker recovers and every root is acked exactly once;
//! 6. `kubectl delete` leaves no pods and no etcd keys;
//! 7. `helm uninstall` leaves nothing of ours but the CRD.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::{Duration, Instant};

use etcd_client::{Client as Etcd, GetOptions};
use serde_json::Value;
use squall_chart_tests::{self as chart, RELEASE, test_cluster_values};
use squall_testenv::{ImageMap, TestCluster, wait_until};

const NS: &str = "squall-system";
const PREFIX: &str = "/squall-flagship";
/// 2 spout tasks × this many sentences.
const LIMIT: u64 = 8000;

fn kubectl(cluster: &TestCluster, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = cluster.control_plane().kubectl();
    cmd.current_dir(chart::workspace_root()).args(args);
    chart::run(cmd, stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

fn topology(cluster: &TestCluster) -> Value {
    serde_json::from_str(&kubectl(
        cluster,
        &["get", "topology", "word-count", "-o", "json"],
        None,
    ))
    .unwrap()
}

fn phase_workers_acked(t: &Value) -> (String, String, u64) {
    let s = &t["status"];
    (
        s["phase"].as_str().unwrap_or("").to_string(),
        s["workers"]["summary"].as_str().unwrap_or("").to_string(),
        s["stats"]["ackedTotal"].as_u64().unwrap_or(0),
    )
}

async fn wait_topology(
    cluster: &TestCluster,
    what: &str,
    secs: u64,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(what, Duration::from_secs(secs), || {
        let t = topology(cluster);
        let hit = ok(&t);
        async move { hit.then_some(t) }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nlast status: {:#}\n{}",
            topology(cluster)["status"],
            cluster.agent().dump_logs()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_apply_scale_kill_delete_uninstall() {
    let images = ImageMap::workspace_defaults();
    for image in ["squall-operator", "squall-supervisor", "squall-examples"] {
        let bin = images.resolve(image).map(|p| p.to_path_buf()).unwrap();
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace` (make test does)",
            bin.display()
        );
    }
    let cluster = TestCluster::start().await.unwrap();
    let cp = cluster.control_plane();
    let etcd_url = cp.etcd().client_url().to_string();

    // 1. helm install; --wait returns once the operator pod is Ready.
    let values = test_cluster_values(&[&etcd_url]);
    let more = format!("etcd:\n  prefix: {PREFIX}\n");
    let notes = chart::install(
        cp,
        RELEASE,
        NS,
        &[&values, &more],
        &["--wait", "--timeout=120s"],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent().dump_logs()));
    assert!(
        notes.contains("kubectl get topology"),
        "NOTES.txt tells what to run next:\n{notes}"
    );
    let op: Value = serde_json::from_str(&kubectl(
        &cluster,
        &[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    assert_eq!(
        op["items"][0]["spec"]["serviceAccountName"],
        "squall-operator"
    );

    // 2. kubectl apply the example, with a finite spout so that loss is countable.
    let manifest =
        std::fs::read_to_string(chart::workspace_root().join("examples/word-count/topology.yaml"))
            .unwrap()
            .replace(
                "config: {rate: 2000}",
                &format!("config: {{rate: 400, limit: {LIMIT}}}"),
            )
            .replace("messageTimeoutSeconds: 30", "messageTimeoutSeconds: 5");
    assert!(
        manifest.contains("limit"),
        "the example manifest changed shape"
    );
    let applied = Instant::now();
    kubectl(&cluster, &["apply", "-f", "-"], Some(&manifest));

    // 3. Running 3/3 with acked rising.
    let t = wait_topology(&cluster, "Running 3/3 with trees acked", 120, |t| {
        let (phase, workers, acked) = phase_workers_acked(t);
        phase == "Running" && workers == "3/3" && acked > 0
    })
    .await;
    eprintln!(
        "kubectl apply → Running 3/3 with trees acked: {:?}",
        applied.elapsed()
    );
    let first = phase_workers_acked(&t).2;
    wait_topology(&cluster, "acked rising", 30, |t| {
        phase_workers_acked(t).2 > first
    })
    .await;
    let table = kubectl(&cluster, &["get", "topology", "word-count"], None);
    assert!(
        table.contains("Running") && table.contains("3/3"),
        "{table}"
    );

    // 4. kubectl scale: a rebalance to 4 workers.
    kubectl(
        &cluster,
        &["scale", "topology", "word-count", "--replicas=4"],
        None,
    );
    wait_topology(&cluster, "Running 4/4 on plan version 2", 120, |t| {
        let (phase, workers, _) = phase_workers_acked(t);
        phase == "Running" && workers == "4/4" && t["status"]["planVersion"] == 2
    })
    .await;

    // 5. Kill a worker that holds no spout task (spouts sit in slots 0 and 1).
    let pid = cluster
        .agent()
        .kill_container("default", "word-count-worker-2", "worker")
        .unwrap();
    let killed = Instant::now();
    eprintln!("killed worker pid {pid}");
    wait_until(
        "the killed worker restarted",
        Duration::from_secs(60),
        || {
            let pod: Value = serde_json::from_str(&kubectl(
                &cluster,
                &["get", "pod", "word-count-worker-2", "-o", "json"],
                None,
            ))
            .unwrap();
            let restarts = pod["status"]["containerStatuses"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == "worker"))
                .and_then(|c| c["restartCount"].as_u64())
                .unwrap_or(0);
            async move { (restarts >= 1).then_some(()) }
        },
    )
    .await
    .unwrap();
    wait_topology(&cluster, "Running 4/4 after the kill", 60, |t| {
        let (phase, workers, _) = phase_workers_acked(t);
        phase == "Running" && workers == "4/4"
    })
    .await;
    eprintln!("killed worker → Running 4/4 again: {:?}", killed.elapsed());

    // Nothing lost: every root of both spout tasks acked, none twice.
    let t = wait_topology(&cluster, "every root acked", 180, |t| {
        phase_workers_acked(t).2 >= 2 * LIMIT
    })
    .await;
    assert_eq!(
        phase_workers_acked(&t).2,
        2 * LIMIT,
        "no root acked twice: {:#}",
        t["status"]
    );
    assert!(t["status"]["stats"]["emittedTotal"].as_u64().unwrap() >= 2 * LIMIT);

    // 6. kubectl delete: pods and etcd keys go.
    kubectl(
        &cluster,
        &["delete", "topology", "word-count", "--timeout=120s"],
        None,
    );
    let pods = kubectl(
        &cluster,
        &[
            "get",
            "pods",
            "-l",
            "squall.dev/topology=word-count",
            "-o",
            "name",
        ],
        None,
    );
    assert!(pods.trim().is_empty(), "pods left: {pods}");
    let mut etcd = Etcd::connect([etcd_url.as_str()], None).await.unwrap();
    let keys = etcd
        .get(
            format!("{PREFIX}/topologies/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(
        keys.count(),
        0,
        "etcd keys left: {:?}",
        keys.kvs()
            .iter()
            .map(|k| k.key_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
    );

    // 7. helm uninstall: only the CRD stays, as Helm does.
    chart::uninstall(cp, RELEASE, NS).unwrap();
    // Pods of the operator's ReplicaSet are garbage-collected after helm returns.
    wait_until(
        "nothing of ours left after uninstall",
        Duration::from_secs(60),
        || {
            let left = kubectl(
                &cluster,
                &[
                    "get",
                    "all,serviceaccounts,roles,rolebindings,configmaps,secrets",
                    "-n",
                    NS,
                    "-l",
                    "app.kubernetes.io/instance=squall",
                    "-o",
                    "name",
                ],
                None,
            );
            async move { left.trim().is_empty().then_some(()) }
        },
    )
    .await
    .unwrap();
    let cluster_left = kubectl(
        &cluster,
        &[
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            "app.kubernetes.io/instance=squall",
            "-o",
            "name",
        ],
        None,
    );
    assert!(
        cluster_left.trim().is_empty(),
        "cluster objects left: {cluster_left}"
    );
    let crd = kubectl(
        &cluster,
        &["get", "crd", "topologies.squall.dev", "-o", "name"],
        None,
    );
    assert!(crd.contains("topologies.squall.dev"), "the CRD stays");
}
