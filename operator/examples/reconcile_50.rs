//! Measures the operator with many topologies at once on the test cluster.
//!
//! With `make dev-cluster` running (or inside `with-cluster`), as root:
//! `SQUALL_TEST_CLUSTER=/var/tmp/squall-cluster/<pid>/cluster.json cargo run -p squall-operator --example reconcile_50 [-- N]`
//! (after `cargo build --workspace`): applies N small topologies (default 50, one
//! worker each) in one `kubectl apply`, and reports how long until every one has
//! its assignment and pod, and until every one is Running with trees acked; then
//! deletes them all and reports how long the teardown takes.

#![allow(clippy::unwrap_used)] // a measurement tool: a panic is the report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use squall_api::{Phase, Topology};
use squall_testenv::TestCluster;

fn manifest(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {{name: t{i:03}}}\nspec:\n  image: squall-examples:0.1.0\n  workers: 1\n  killWaitSeconds: 1\n  spouts: [{{id: s, component: TestWordSpout, config: {{rate: 20}}}}]\n  bolts: [{{id: x, component: ExclamationBolt}}]\n  streams: [{{from: s, to: x, grouping: {{type: SHUFFLE}}}}]\n---\n"
            )
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace("reconcile").await.unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let kubectl = || {
        let mut c = cluster.kubectl();
        c.current_dir(&repo).args(["-n", &ns]);
        c
    };
    assert!(
        kubectl()
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "crds/topology.yaml"
            ])
            .status()
            .unwrap()
            .success()
    );
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| repo.join("target").display().to_string());
    let mut op = Command::new(format!("{target}/debug/squall-operator"))
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .args([
            "--etcd",
            cluster.etcd_url(),
            "--worker-etcd",
            cluster.etcd_url_from_pods(),
            "--namespace",
            &ns,
            "--http-addr",
            "127.0.0.1:0",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let api: Api<Topology> = Api::namespaced(cluster.client(), &ns);
    let start = Instant::now();
    let mut apply = kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(manifest(n).as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success());
    let applied = start.elapsed();

    let (mut all_assigned, mut all_running) = (None, None);
    while all_running.is_none() && start.elapsed() < Duration::from_secs(600) {
        let list = api.list(&ListParams::default()).await.unwrap();
        let assigned = list
            .items
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.plan_version).is_some())
            .count();
        let running = list
            .items
            .iter()
            .filter(|t| {
                t.status.as_ref().is_some_and(|s| {
                    s.phase == Some(Phase::Running)
                        && s.stats.as_ref().is_some_and(|x| x.acked_total > 0)
                })
            })
            .count();
        if assigned == n && all_assigned.is_none() {
            all_assigned = Some(start.elapsed());
        }
        if running == n {
            all_running = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    println!("{n} topologies on {cores} cores: kubectl apply took {applied:?}");
    println!("  all assigned (plan in etcd, pods created): {all_assigned:?}");
    println!("  all Running with trees acked:               {all_running:?}");

    let start = Instant::now();
    assert!(
        kubectl()
            .args(["delete", "topology", "--all", "--wait=false"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    while !api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
        && start.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "  all deleted (finalizers done):               {:?}",
        start.elapsed()
    );
    let _ = op.kill();
    let _ = op.wait();
}
