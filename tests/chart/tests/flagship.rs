//! The flagship test: a user's first hour, end to end, on the real node.
//!
//! 1. `helm install` the chart: the operator runs as a pod from its image, and
//!    the bundled etcd as a StatefulSet with a PVC, reached by Service DNS;
//! 2. `kubectl apply` word count (with a spout `limit`, so loss is countable)
//!    into a namespace that enforces Pod Security's `restricted` profile;
//! 3. `kubectl get topology` reaches Running 3/3 with acked rising; `kubectl
//!    describe` and `-o wide` show per-component figures, and headless
//!    Chromium renders the operator's web UI through `kubectl port-forward`;
//! 4. `kubectl scale --replicas=4` rebalances to 4/4;
//! 5. a killed worker container recovers and every root is acked exactly once;
//! 6. `kubectl delete` leaves no pods and no etcd keys;
//! 7. `helm uninstall` leaves nothing of ours but the CRD.
//!
//! It runs alone in its test binary: its operator watches every namespace.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;
use squall_chart_tests::{self as chart, RELEASE, test_cluster_values};
use squall_testenv::{Rewrite, TestCluster, browser, wait_until};

const NS: &str = "squall-system";
const PREFIX: &str = "/squall-flagship";
/// 2 spout tasks × this many sentences.
const LIMIT: u64 = 8000;

/// A line in `make test`'s output even when the test passes (libtest
/// captures only the print macros, not direct writes to stderr).
fn show(line: &str) {
    let _ = writeln!(std::io::stderr(), "flagship: {line}");
}

fn kubectl(cluster: &TestCluster, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = cluster.kubectl();
    cmd.current_dir(chart::workspace_root()).args(args);
    chart::run(cmd, stdin).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

fn topology(cluster: &TestCluster, ns: &str) -> Value {
    serde_json::from_str(&kubectl(
        cluster,
        &["get", "topology", "word-count", "-n", ns, "-o", "json"],
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
    ns: &str,
    what: &str,
    secs: u64,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(what, Duration::from_secs(secs), || {
        let t = topology(cluster, ns);
        let hit = ok(&t);
        async move { hit.then_some(t) }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nlast status: {:#}\n{}\n{}",
            topology(cluster, ns)["status"],
            cluster.dump(ns),
            cluster.dump(NS)
        )
    })
}

/// Step 3's views: `.status.components` in `kubectl describe` and `get -o
/// wide`, and the web UI's topology page rendered by Chromium through
/// `kubectl port-forward` to the operator (a screenshot lands in
/// `target/test-artifacts/`).
async fn what_on_call_sees(cluster: &TestCluster, ns: &str) {
    let t = wait_topology(cluster, ns, "per-component figures in status", 60, |t| {
        let c = &t["status"]["components"];
        c.as_array().is_some_and(|c| c.len() == 3)
            && c[0]["ackedPerSecond"].as_f64().unwrap_or(0.0) > 0.0
            && c[2]["executedPerSecond"].as_f64().unwrap_or(0.0) > 0.0
    })
    .await;
    let ids: Vec<&str> = t["status"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sentences", "split", "count"]);
    let described = kubectl(
        cluster,
        &["describe", "topology", "word-count", "-n", ns],
        None,
    );
    for want in [
        "Components:",
        "Executed Per Second:",
        "Capacity:",
        "Busiest:",
    ] {
        assert!(
            described.contains(want),
            "describe lacks {want:?}:\n{described}"
        );
    }
    let wide = kubectl(
        cluster,
        &["get", "topology", "word-count", "-n", ns, "-o", "wide"],
        None,
    );
    assert!(wide.contains("BUSIEST") && wide.contains("PLAN"), "{wide}");
    show(&format!("kubectl get topology -o wide:\n{wide}"));

    let forward = cluster
        .port_forward(NS, &format!("deployment/{RELEASE}-operator"), 8081)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(NS)));
    let url = format!("http://127.0.0.1:{}/#/{ns}/word-count", forward.local_port);
    // The page polls every 2 s; rates show once the workers' windows have
    // traffic, so look again a few times before calling it wrong.
    let mut dom = String::new();
    for _ in 0..5 {
        dom =
            tokio::task::block_in_place(|| squall_testenv::browser::dump_dom(&url, 4000)).unwrap();
        let rates = browser::tagged(&dom, "edge")
            .iter()
            .filter_map(|e| e.get("data-rate")?.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
            .count();
        if rates == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(browser::body_state(&dom), "ready", "{dom}");
    let nodes: Vec<String> = browser::tagged(&dom, "node")
        .into_iter()
        .filter_map(|mut n| n.remove("data-component"))
        .collect();
    assert_eq!(nodes.len(), 3, "graph nodes {nodes:?} in\n{dom}");
    for id in ["sentences", "split", "count"] {
        assert!(nodes.iter().any(|n| n == id), "{id} missing from {nodes:?}");
    }
    let rates: Vec<f64> = browser::tagged(&dom, "edge")
        .iter()
        .filter_map(|e| e.get("data-rate")?.parse().ok())
        .collect();
    assert!(
        rates.len() == 2 && rates.iter().all(|r| *r > 0.0),
        "edge rates {rates:?} in\n{dom}"
    );
    let slots: Vec<String> = browser::tagged(&dom, "worker-row")
        .into_iter()
        .filter_map(|mut w| w.remove("data-slot"))
        .collect();
    assert_eq!(slots, ["0", "1", "2"], "worker rows in\n{dom}");
    assert_eq!(browser::tagged(&dom, "component-row").len(), 3);
    let shot = chart::workspace_root().join("target/test-artifacts/ui-word-count.png");
    tokio::task::block_in_place(|| {
        squall_testenv::browser::screenshot(&url, &shot, 1280, 900, 4000)
    })
    .unwrap();
    show(&format!(
        "web UI through kubectl port-forward: 3 nodes, edge rates {rates:?}, workers {slots:?}; screenshot {}",
        shot.display()
    ));
}

/// `NAME  CONTAINER  ID` for every container of the pods in `ns`.
fn container_ids(cluster: &TestCluster, ns: &str) -> Vec<(String, String, String)> {
    let pods: Value = serde_json::from_str(&kubectl(
        cluster,
        &["get", "pods", "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap();
    let mut out = Vec::new();
    for p in pods["items"].as_array().unwrap() {
        for c in p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.push((
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                c["name"].as_str().unwrap_or("").to_string(),
                c["containerID"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_apply_scale_kill_delete_uninstall() {
    let cluster = TestCluster::shared().await.unwrap();
    let node: Value = serde_json::from_str(&kubectl(
        &cluster,
        &["get", "node", cluster.node(), "-o", "json"],
        None,
    ))
    .unwrap();
    let runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    show(&format!("node {} runs {runtime}", cluster.node()));
    assert!(runtime.starts_with("containerd://"), "{runtime}");
    // Worker pods must fit Pod Security's restricted profile.
    let ns = "flagship";
    cluster
        .create_namespace(
            ns,
            &[
                ("pod-security.kubernetes.io/enforce", "restricted"),
                ("pod-security.kubernetes.io/warn", "restricted"),
            ],
        )
        .await
        .unwrap();

    // 1. helm install; --wait returns once the operator and etcd pods are Ready.
    let values = test_cluster_values();
    let more = format!("etcd:\n  prefix: {PREFIX}\n");
    let installed = Instant::now();
    let notes = chart::install(
        &cluster,
        RELEASE,
        NS,
        &[&values, &more],
        &["--wait", "--timeout=180s"],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(NS)));
    show(&format!(
        "helm install --wait: {:.1}s",
        installed.elapsed().as_secs_f64()
    ));
    let pvc = kubectl(
        &cluster,
        &[
            "get",
            "pvc",
            "-n",
            NS,
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
        None,
    );
    assert_eq!(pvc.trim(), "Bound", "the bundled etcd's volume");
    assert!(
        notes.contains("kubectl get topology")
            && notes.contains(&format!("port-forward deployment/{RELEASE}-operator 8081")),
        "NOTES.txt tells what to run next, and how to reach the web UI:\n{notes}"
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
            .rewrite(
                "config: {rate: 2000}",
                &format!("config: {{rate: 400, limit: {LIMIT}}}"),
            )
            .rewrite("messageTimeoutSeconds: 30", "messageTimeoutSeconds: 5");
    assert!(
        manifest.contains("limit"),
        "the example manifest changed shape"
    );
    let applied = Instant::now();
    let out = kubectl(&cluster, &["apply", "-n", ns, "-f", "-"], Some(&manifest));
    assert!(!out.contains("Warning"), "Pod Security warnings: {out}");

    // 3. Running 3/3 with acked rising.
    let t = wait_topology(&cluster, ns, "Running 3/3 with trees acked", 120, |t| {
        let (phase, workers, acked) = phase_workers_acked(t);
        phase == "Running" && workers == "3/3" && acked > 0
    })
    .await;
    show(&format!(
        "kubectl apply → Running 3/3 with trees acked: {:.1}s",
        applied.elapsed().as_secs_f64()
    ));
    for (pod, container, id) in container_ids(&cluster, ns)
        .into_iter()
        .chain(container_ids(&cluster, NS))
    {
        show(&format!("{pod:<28} {container:<11} {id}"));
        assert!(id.starts_with("containerd://"), "{pod}/{container}: {id:?}");
    }
    let first = phase_workers_acked(&t).2;
    wait_topology(&cluster, ns, "acked rising", 30, |t| {
        phase_workers_acked(t).2 > first
    })
    .await;
    let table = kubectl(&cluster, &["get", "topology", "word-count", "-n", ns], None);
    assert!(
        table.contains("Running") && table.contains("3/3"),
        "{table}"
    );
    what_on_call_sees(&cluster, ns).await;

    // 4. kubectl scale: a rebalance to 4 workers.
    kubectl(
        &cluster,
        &["scale", "topology", "word-count", "-n", ns, "--replicas=4"],
        None,
    );
    wait_topology(&cluster, ns, "Running 4/4 on plan version 2", 120, |t| {
        let (phase, workers, _) = phase_workers_acked(t);
        phase == "Running" && workers == "4/4" && t["status"]["planVersion"] == 2
    })
    .await;

    // 5. Kill a worker that holds no spout task (spouts sit in slots 0 and 1).
    let pid = cluster
        .container_pid(ns, "word-count-worker-2", "worker")
        .unwrap();
    cluster
        .kill_container(ns, "word-count-worker-2", "worker")
        .unwrap();
    let killed = Instant::now();
    show(&format!(
        "killed the worker container of slot 2 (host pid {pid})"
    ));
    wait_until(
        "the killed worker restarted",
        Duration::from_secs(60),
        || {
            let pod: Value = serde_json::from_str(&kubectl(
                &cluster,
                &["get", "pod", "word-count-worker-2", "-n", ns, "-o", "json"],
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
    wait_topology(&cluster, ns, "Running 4/4 after the kill", 60, |t| {
        let (phase, workers, _) = phase_workers_acked(t);
        phase == "Running" && workers == "4/4"
    })
    .await;
    show(&format!(
        "killed worker → Running 4/4 again: {:.1}s",
        killed.elapsed().as_secs_f64()
    ));

    // Nothing lost: every root of both spout tasks acked, none twice.
    let t = wait_topology(&cluster, ns, "every root acked", 180, |t| {
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

    // 6. kubectl delete: pods and etcd keys go. The same queries list them
    // first, so that "nothing left" cannot come from a query that never matched.
    let pods_of_word_count = [
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "squall.dev/topology=word-count",
        "-o",
        "name",
    ];
    let topologies_prefix = format!("{PREFIX}/topologies/");
    let topology_keys = [
        "exec",
        "-n",
        NS,
        "squall-etcd-0",
        "--",
        "/usr/local/bin/etcdctl",
        "get",
        "--prefix",
        "--keys-only",
        &topologies_prefix,
    ];
    let pods = kubectl(&cluster, &pods_of_word_count, None);
    assert!(
        pods.contains("pod/word-count-worker-0"),
        "the worker pods before the delete: {pods}"
    );
    let keys = kubectl(&cluster, &topology_keys, None);
    assert!(
        keys.contains(&format!("/{ns}/word-count/assignment")),
        "the topology's etcd keys before the delete: {keys}"
    );
    kubectl(
        &cluster,
        &[
            "delete",
            "topology",
            "word-count",
            "-n",
            ns,
            "--timeout=120s",
        ],
        None,
    );
    let pods = kubectl(&cluster, &pods_of_word_count, None);
    assert!(pods.trim().is_empty(), "pods left: {pods}");
    // The bundled etcd holds no key of the topology any more (asked from
    // inside its pod: the host has no route to the cluster's addresses).
    let keys = kubectl(&cluster, &topology_keys, None);
    assert!(keys.trim().is_empty(), "etcd keys left: {keys}");
    let leader = kubectl(
        &cluster,
        &[
            "exec",
            "-n",
            NS,
            "squall-etcd-0",
            "--",
            "/usr/local/bin/etcdctl",
            "get",
            "--prefix",
            "--keys-only",
            PREFIX,
        ],
        None,
    );
    show(&format!(
        "etcd keys left under {PREFIX}: {:?}",
        leader.split_whitespace().collect::<Vec<_>>()
    ));

    // 6b. Python and JavaScript topologies with no image of their own: Storm
    // multilang scripts in a ConfigMap, on the `squall` image, applied as typed.
    for (example, name, workers) in [
        (
            "examples/python-word-count/python-word-count.yaml",
            "python-word-count",
            2,
        ),
        (
            "examples/node-word-count/node-word-count.yaml",
            "node-word-count",
            1,
        ),
    ] {
        let applied = Instant::now();
        kubectl(&cluster, &["apply", "-n", ns, "-f", example], None);
        let get = || -> Value {
            serde_json::from_str(&kubectl(
                &cluster,
                &["get", "topology", name, "-n", ns, "-o", "json"],
                None,
            ))
            .unwrap()
        };
        let want = format!("{workers}/{workers}");
        let first = wait_until(
            &format!("{name} Running {want} with acks"),
            Duration::from_secs(120),
            || {
                let (phase, w, acked) = phase_workers_acked(&get());
                let hit = phase == "Running" && w == want && acked > 0;
                async move { hit.then_some(acked) }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{:#}\n{}", get()["status"], cluster.dump(ns)));
        show(&format!(
            "{name}: Running {want} with acked={first} {:.1}s after apply",
            applied.elapsed().as_secs_f64()
        ));
        let later = wait_until(
            &format!("{name}: acked rising"),
            Duration::from_secs(60),
            || {
                let (_, _, acked) = phase_workers_acked(&get());
                async move { (acked > first).then_some(acked) }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{:#}\n{}", get()["status"], cluster.dump(ns)));
        show(&format!("{name}: acked {first} -> {later}"));
        let selector = format!("squall.dev/topology={name}");
        let pods_of = ["get", "pods", "-n", ns, "-l", &selector, "-o", "name"];
        let before = kubectl(&cluster, &pods_of, None);
        assert!(
            before.contains(&format!("pod/{name}-worker-0")),
            "{name}'s worker pods before the delete: {before}"
        );
        kubectl(
            &cluster,
            &["delete", "-n", ns, "-f", example, "--timeout=120s"],
            None,
        );
        let left = kubectl(&cluster, &pods_of, None);
        assert!(left.trim().is_empty(), "pods left: {left}");
    }

    // 7. helm uninstall: only the CRD stays, as Helm does. The release's
    // objects, by its instance label, first: "nothing left" must be a query
    // that matched them.
    let ours = [
        "get",
        "all,serviceaccounts,roles,rolebindings,configmaps,secrets",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=squall",
        "-o",
        "name",
    ];
    let ours_cluster_wide = [
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        "app.kubernetes.io/instance=squall",
        "-o",
        "name",
    ];
    let installed = kubectl(&cluster, &ours, None);
    assert!(
        installed.contains("serviceaccount/squall-operator")
            && installed.contains("deployment.apps/squall-operator"),
        "the release's objects before the uninstall: {installed}"
    );
    let installed = kubectl(&cluster, &ours_cluster_wide, None);
    assert!(
        installed.contains("clusterrole.rbac.authorization.k8s.io/squall-operator"),
        "the release's cluster objects before the uninstall: {installed}"
    );
    chart::uninstall(&cluster, RELEASE, NS).unwrap();
    // Pods of the operator's ReplicaSet are garbage-collected after helm returns.
    wait_until(
        "nothing of ours left after uninstall",
        Duration::from_secs(60),
        || {
            let left = kubectl(&cluster, &ours, None);
            async move { left.trim().is_empty().then_some(()) }
        },
    )
    .await
    .unwrap();
    let cluster_left = kubectl(&cluster, &ours_cluster_wide, None);
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
    let pvcs = kubectl(&cluster, &["get", "pvc", "-n", NS, "-o", "name"], None);
    assert!(
        pvcs.trim().is_empty(),
        "the etcd volume goes with the release: {pvcs}"
    );
    cluster.delete_namespace(ns);
}
