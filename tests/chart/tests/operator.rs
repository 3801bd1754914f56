//! The operator installed by the chart runs as pods from its image on the
//! shared real node: two replicas become Ready under the chart's
//! ServiceAccount, one is elected leader, each serves /metrics on its pod IP,
//! and the leader acts on a Topology through the chart's RBAC. When the leader
//! is SIGKILLed, the standby leads within the lease's time-to-live, acts, and
//! duplicates no worker pod. The chart's
//! bundled etcd runs as a StatefulSet with a PVC, reached by Service DNS.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::Value;
use squall_chart_tests::{self as chart, test_cluster_values, watch_namespace_values};
use squall_testenv::{TestCluster, wait_until};

const RELEASE: &str = "squall-op";

fn kubectl_json(cluster: &TestCluster, args: &[&str]) -> Value {
    let mut cmd = cluster.kubectl();
    cmd.args(args).args(["-o", "json"]);
    serde_json::from_str(&chart::run(cmd, None).unwrap()).unwrap()
}

/// GET over plain HTTP, from inside the node's network namespace.
fn http_get(cluster: &TestCluster, addr: &str, path: &str) -> Option<String> {
    let mut s = cluster.connect_in_node(addr.parse().ok()?).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // One write: a small server may read the request once and answer.
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    // A reset after the answer still leaves the answer read.
    let _ = s.read_to_end(&mut out);
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The Topology `word-count`'s worker pods that are not being deleted, as
/// (slot, name, uid), in slot order (the operator names them by slot).
fn worker_pods(cluster: &TestCluster, ns: &str) -> Vec<(u32, String, String)> {
    let pods = kubectl_json(
        cluster,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "squall.dev/topology=word-count",
        ],
    );
    let mut out: Vec<(u32, String, String)> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let m = &p["metadata"];
            (
                m["labels"]["squall.dev/slot"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
                m["name"].as_str().unwrap().to_string(),
                m["uid"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_from_the_chart_runs_with_its_service_account() {
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace("chart-op").await.unwrap();
    let topo_ns = cluster.namespace("chart-op-topologies").await.unwrap();
    let values = test_cluster_values();
    // Two replicas: leader election is on, one leads, the other stands by (and is Ready).
    let more = "operator:\n  replicas: 2\netcd:\n  prefix: /squall-chart\n";
    chart::install(
        &cluster,
        RELEASE,
        &ns,
        &[&values, more, &watch_namespace_values(&topo_ns)],
        &["--wait", "--timeout=180s"],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(&ns)));

    // The bundled etcd is a StatefulSet on a bound PVC.
    let pvcs = kubectl_json(&cluster, &["get", "pvc", "-n", &ns]);
    let pvcs = pvcs["items"].as_array().unwrap().clone();
    assert_eq!(pvcs.len(), 1, "{pvcs:#?}");
    assert_eq!(pvcs[0]["status"]["phase"], "Bound", "{:#}", pvcs[0]);

    let pods = kubectl_json(
        &cluster,
        &[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            &format!("app.kubernetes.io/component=operator,app.kubernetes.io/instance={RELEASE}"),
        ],
    );
    let pods = pods["items"].as_array().unwrap().clone();
    assert_eq!(pods.len(), 2, "{pods:#?}");
    for pod in &pods {
        assert!(ready(pod), "{:#}", pod["status"]);
        // etcd starts with the operator: the operator waits for it rather
        // than exiting into the kubelet's back-off.
        assert_eq!(
            pod["status"]["containerStatuses"][0]["restartCount"],
            0,
            "{:#}\n{}",
            pod["status"],
            cluster.dump(&ns)
        );
        assert_eq!(
            pod["spec"]["serviceAccountName"],
            format!("{RELEASE}-operator")
        );
        let id = pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap_or("");
        assert!(
            id.starts_with("containerd://"),
            "runs in a container: {id:?}"
        );
        let args = pod["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--leader-elect"), "{args}");
        let ip = pod["status"]["podIP"].as_str().unwrap();
        let metrics = http_get(&cluster, &format!("{ip}:8080"), "/metrics").unwrap_or_default();
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    }
    let ips: Vec<String> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    let names: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let the_leader = || {
        let leaders: Vec<usize> = (0..ips.len())
            .filter(|&i| {
                http_get(&cluster, &format!("{}:8080", ips[i]), "/metrics")
                    .is_some_and(|m| m.contains("squall_operator_leader 1"))
            })
            .collect();
        async move { (leaders.len() == 1).then(|| leaders[0]) }
    };
    let first_leader = wait_until(
        "exactly one replica leads",
        Duration::from_secs(30),
        the_leader,
    )
    .await
    .unwrap();

    // The leader acts on a Topology: the finalizer and the status it writes
    // need the chart's RBAC (topologies patch, status, finalizers).
    let example = chart::workspace_root().join("examples/word-count/topology.yaml");
    let mut cmd = cluster.kubectl();
    cmd.args(["apply", "-n", &topo_ns, "-f"]).arg(&example);
    chart::run(cmd, None).unwrap();
    let phase = wait_until(
        "word-count gets a status phase",
        Duration::from_secs(60),
        || {
            let topo = kubectl_json(&cluster, &["get", "topology", "word-count", "-n", &topo_ns]);
            let phase = topo["status"]["phase"].as_str().map(str::to_owned);
            let finalized = topo["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            async move { phase.filter(|_| finalized) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(&ns)));
    assert!(!phase.is_empty());
    // The operator's own log lines: the dump's events also hold other
    // components' (a kubelet may be refused a just-bound PVC for a moment
    // by the node authorizer, and says "forbidden" too).
    let dump = cluster.dump(&ns);
    let mine = format!("[pod/{RELEASE}-operator-");
    let logs: Vec<&str> = dump.lines().filter(|l| l.starts_with(&mine)).collect();
    assert!(
        logs.iter().any(|l| l.contains("operator running"))
            && !logs.iter().any(|l| l.contains("forbidden")),
        "the operator was denied something, or its logs are missing:\n{dump}"
    );

    // Failover. SIGKILL the leader's process (no resign, so its lease must
    // expire): the standby leads within the lease's time-to-live, and acts, and
    // no worker pod is duplicated.
    let workers = || worker_pods(&cluster, &topo_ns);
    let before = wait_until("3 worker pods", Duration::from_secs(60), || {
        let pods = workers();
        async move { (pods.len() == 3).then_some(pods) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(&ns)));
    let killed = std::time::Instant::now();
    cluster
        .kill_container(&ns, &names[first_leader], "operator")
        .unwrap();
    // The chart leaves the operator's lease at its default, 10 s.
    let next = wait_until(
        "the standby takes over",
        Duration::from_secs(10 + 10),
        || {
            let leader = the_leader();
            async move { leader.await.filter(|&i| i != first_leader) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(&ns)));
    eprintln!(
        "failover: {} led, was SIGKILLed, and {} led {:.1} s later",
        names[first_leader],
        names[next],
        killed.elapsed().as_secs_f64()
    );
    // The new leader acts: a deleted worker pod is replaced, once.
    let (gone_slot, gone_pod, _) = before[0].clone();
    let mut cmd = cluster.kubectl();
    cmd.args(["delete", "pod", "-n", &topo_ns, &gone_pod, "--wait=false"]);
    chart::run(cmd, None).unwrap();
    let after = wait_until(
        "the new leader replaces the deleted worker pod",
        Duration::from_secs(60),
        || {
            let pods = workers();
            let replaced = pods
                .iter()
                .any(|(slot, name, _)| *slot == gone_slot && *name != gone_pod)
                || pods.iter().any(|(slot, _, uid)| {
                    *slot == gone_slot && !before.iter().any(|b| &b.2 == uid)
                });
            async move { replaced.then_some(pods) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.dump(&ns)));
    // Give a duplicate the time to appear: several reconcile passes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = workers();
    let slots: Vec<u32> = settled.iter().map(|p| p.0).collect();
    assert_eq!(
        slots,
        [0, 1, 2],
        "one pod per slot: {settled:?} (just after: {after:?})"
    );
    for kept in &before[1..] {
        assert!(
            settled.contains(kept),
            "{kept:?} was left alone: {settled:?}"
        );
    }
    // The killed replica comes back (the kubelet restarts it) as the standby.
    let again = wait_until(
        "one leader again, after the restart",
        Duration::from_secs(60),
        the_leader,
    )
    .await
    .unwrap();
    assert_eq!(again, next, "the new leader keeps leading");

    // Deleting it: the operator removes its finalizer, pods go.
    let mut cmd = cluster.kubectl();
    cmd.args([
        "delete",
        "topology",
        "word-count",
        "-n",
        &topo_ns,
        "--timeout=60s",
    ]);
    chart::run(cmd, None).unwrap();
    chart::uninstall(&cluster, RELEASE, &ns).unwrap();
    cluster.delete_namespace(&topo_ns);
    cluster.delete_namespace(&ns);
}
