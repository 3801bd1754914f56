//! Shared by the operator's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use etcd_client::{Client as Etcd, GetOptions};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use squall_testenv::TestCluster;
pub use squall_testenv::wait_until as wait_for;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A control plane plus a node agent that runs the workspace's binaries as pods.
pub async fn cluster() -> TestCluster {
    TestCluster::start().await.unwrap()
}

/// The operator as a local process (as in development: `KUBECONFIG` + `--etcd`), killed on drop.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    pub fn start(cluster: &TestCluster, prefix: &str) -> Operator {
        Self::start_with_etcd(cluster, cluster.control_plane().etcd().client_url(), prefix)
    }

    /// With topology state in its own etcd (so a test can stop it without the API server).
    pub fn start_with_etcd(cluster: &TestCluster, etcd: &str, prefix: &str) -> Operator {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cluster
            .control_plane()
            .dir()
            .join(format!("operator-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_squall-operator"))
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("RUST_LOG", "info,squall_operator=debug")
            .args(["--etcd", etcd, "--etcd-prefix", prefix])
            .args([
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--heartbeat-grace-seconds",
                "5",
            ])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kubectl(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    cluster
        .control_plane()
        .kubectl()
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn kubectl_stdin(cluster: &TestCluster, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cluster
        .control_plane()
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn install_crd(cluster: &TestCluster) {
    let out = kubectl(cluster, &["apply", "-f", "crds/topology.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(
        cluster,
        &[
            "wait",
            "--for=condition=Established",
            "crd/topologies.squall.dev",
            "--timeout=30s",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn etcd_get<T: serde::de::DeserializeOwned>(etcd: &mut Etcd, key: &str) -> Option<T> {
    let resp = etcd.get(key, None).await.ok()?;
    serde_json::from_slice(resp.kvs().first()?.value()).ok()
}

pub async fn etcd_keys(etcd: &mut Etcd, prefix: &str) -> Vec<String> {
    let resp = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

pub async fn pods(client: &kube::Client, ns: &str, topology: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("squall.dev/topology={topology}")))
        .await
        .unwrap()
        .items
}
