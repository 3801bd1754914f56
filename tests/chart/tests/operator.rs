//! The operator installed by the chart runs as a pod on the test control
//! plane (the node agent runs `squall-operator` from the workspace's target
//! directory): it becomes Ready, elected leader, under the chart's
//! ServiceAccount, serves /metrics on its pod IP, and acts on a
//! Topology through the chart's RBAC.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::Value;
use squall_chart_tests::{self as chart, RELEASE, test_cluster_values};
use squall_testenv::{ImageMap, TestCluster, wait_until};

const NS: &str = "squall-system";

fn kubectl_json(cluster: &TestCluster, args: &[&str]) -> Value {
    let mut cmd = cluster.control_plane().kubectl();
    cmd.args(args).args(["-o", "json"]);
    serde_json::from_str(&chart::run(cmd, None).unwrap()).unwrap()
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // One write: a small server may read the request once and answer.
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    // A reset after the answer still leaves the answer read.
    let _ = s.read_to_end(&mut out);
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_from_the_chart_runs_with_its_service_account() {
    let binary = ImageMap::workspace_defaults()
        .resolve("squall-operator")
        .map(|p| p.to_path_buf())
        .unwrap();
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p squall-operator` (make test builds it)",
        binary.display()
    );
    let cluster = TestCluster::start().await.unwrap();
    let cp = cluster.control_plane();
    let values = test_cluster_values(&[cp.etcd().client_url()]);
    // Two replicas: leader election is on, one leads, the other stands by (and is Ready).
    let more = "operator:\n  replicas: 2\netcd:\n  prefix: /squall-chart\n";
    chart::install(
        cp,
        RELEASE,
        NS,
        &[&values, more],
        &["--wait", "--timeout=120s"],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent().dump_logs()));

    let pods = kubectl_json(
        &cluster,
        &[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/component=operator,app.kubernetes.io/instance=squall",
        ],
    );
    let pods = pods["items"].as_array().unwrap().clone();
    assert_eq!(pods.len(), 2, "{pods:#?}");
    for pod in &pods {
        assert!(ready(pod), "{:#}", pod["status"]);
        assert_eq!(pod["spec"]["serviceAccountName"], "squall-operator");
        let args = pod["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--leader-elect"), "{args}");
        // The metrics server answers on the pod's own IP (the chart's
        // operator.http.host=$(POD_IP), expanded from the downward API).
        let ip = pod["status"]["podIP"].as_str().unwrap();
        let metrics = http_get(&format!("{ip}:8080"), "/metrics").unwrap_or_default();
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    }
    let ips: Vec<String> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    wait_until("exactly one replica leads", Duration::from_secs(30), || {
        let leaders = ips
            .iter()
            .filter(|ip| {
                http_get(&format!("{ip}:8080"), "/metrics")
                    .is_some_and(|m| m.contains("squall_operator_leader 1"))
            })
            .count();
        async move { (leaders == 1).then_some(()) }
    })
    .await
    .unwrap();

    // One of them leads and acts on a Topology: the finalizer and the status
    // it writes need the chart's RBAC (topologies patch, status, finalizers).
    let example = chart::workspace_root().join("examples/word-count/topology.yaml");
    let mut cmd = cp.kubectl();
    cmd.args(["apply", "-n", "default", "-f"]).arg(&example);
    chart::run(cmd, None).unwrap();
    let phase = wait_until(
        "word-count gets a status phase",
        Duration::from_secs(60),
        || {
            let topo = kubectl_json(
                &cluster,
                &["get", "topology", "word-count", "-n", "default"],
            );
            let phase = topo["status"]["phase"].as_str().map(str::to_owned);
            let finalized = topo["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            async move { phase.filter(|_| finalized) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent().dump_logs()));
    assert!(!phase.is_empty());
    let forbidden = cluster.agent().dump_logs();
    assert!(
        !forbidden.contains("forbidden"),
        "the operator was denied something:\n{forbidden}"
    );

    // Deleting it: the operator removes its finalizer, pods go.
    let mut cmd = cp.kubectl();
    cmd.args([
        "delete",
        "topology",
        "word-count",
        "-n",
        "default",
        "--timeout=60s",
    ]);
    chart::run(cmd, None).unwrap();
    chart::uninstall(cp, RELEASE, NS).unwrap();
}
