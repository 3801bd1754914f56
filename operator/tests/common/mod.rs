//! Shared by the operator's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use squall_coord::Coordinator;
use squall_testenv::TestCluster;
pub use squall_testenv::wait_until as wait_for;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The run's shared real cluster and a fresh namespace of this test's own
/// (deleted at the end of the test when it passed; kept for a look otherwise).
pub struct Env {
    pub cluster: TestCluster,
    pub ns: String,
}

impl std::ops::Deref for Env {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.cluster
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.cluster.delete_namespace(&self.ns);
        }
    }
}

pub async fn env(prefix: &str) -> Env {
    let cluster = TestCluster::shared().await.unwrap();
    let ns = cluster.namespace(prefix).await.unwrap();
    Env { cluster, ns }
}

/// The operator as a local process (as in development: `KUBECONFIG` + `--etcd`), killed on drop.
pub struct Operator {
    child: Child,
    log: PathBuf,
    ui: String,
    http: String,
}

impl Operator {
    /// The operator on this host (as in development), watching the test's
    /// namespace, with the cluster's state etcd (pods reach it at its node address).
    pub fn start(env: &Env, prefix: &str) -> Operator {
        Self::start_with_etcd(env, env.etcd_url(), env.etcd_url_from_pods(), prefix)
    }

    /// With topology state in its own etcd (so a test can stop it without the
    /// API server): `etcd` from this host, `worker_etcd` from pods.
    pub fn start_with_etcd(env: &Env, etcd: &str, worker_etcd: &str, prefix: &str) -> Operator {
        Self::start_with(env, etcd, worker_etcd, prefix, &[])
    }

    /// As [`Operator::start`], with more flags.
    pub fn start_with_args(env: &Env, prefix: &str, extra: &[&str]) -> Operator {
        Self::start_with(env, env.etcd_url(), env.etcd_url_from_pods(), prefix, extra)
    }

    fn start_with(
        env: &Env,
        etcd: &str,
        worker_etcd: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Operator {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!(
            "squall-operator-test-{}-{n}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (http, ui) = (
            format!("127.0.0.1:{}", free()),
            format!("127.0.0.1:{}", free()),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_squall-operator"))
            .env("KUBECONFIG", env.kubeconfig_path())
            .env("RUST_LOG", "info,squall_operator=debug")
            .args([
                "--etcd",
                etcd,
                "--worker-etcd",
                worker_etcd,
                "--etcd-prefix",
                prefix,
            ])
            .args(["--namespace", &env.ns])
            .args([
                "--http-addr",
                &http,
                "--heartbeat-grace-seconds",
                "5",
                "--ui-addr",
                &ui,
            ])
            .args(extra)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Operator {
            child,
            log,
            ui,
            http,
        }
    }

    /// Where its `/metrics`, `/healthz` and `/readyz` listen.
    pub fn http_addr(&self) -> &str {
        &self.http
    }

    /// Where its web UI listens.
    pub fn ui_addr(&self) -> &str {
        &self.ui
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

/// `kubectl -n <the test's namespace> ARGS` from the repository root.
pub fn kubectl(env: &Env, args: &[&str]) -> std::process::Output {
    env.kubectl()
        .args(["-n", &env.ns])
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn kubectl_stdin(env: &Env, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = env
        .kubectl()
        .args(["-n", &env.ns])
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

/// `kubectl apply -f -` of `manifest`, which must succeed.
pub fn apply_ok(env: &Env, manifest: &str) {
    let out = kubectl_stdin(env, &["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies the CRD (server-side, so that tests applying it at once agree).
pub fn install_crd(env: &Env) {
    let out = kubectl(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "crds/topology.yaml",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(
        env,
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

/// etcd, as the operator itself reaches it.
pub type Etcd = std::sync::Arc<dyn Coordinator>;

pub async fn etcd_connect(url: &str) -> Etcd {
    squall_coord::connect(url, &Default::default())
        .await
        .unwrap()
}

pub async fn etcd_get<T: serde::de::DeserializeOwned>(etcd: &Etcd, key: &str) -> Option<T> {
    serde_json::from_slice(&etcd.get(key).await.ok()??).ok()
}

/// The keys under `prefix`. A transport error (a connection the client held
/// was closed under it) is tried again on a fresh connection, twice, before
/// it fails the test: the client reconnects on the next call.
pub async fn etcd_keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    let mut tries = 0;
    loop {
        match etcd.list(prefix).await {
            Ok(kvs) => return kvs.into_iter().map(|(k, _)| k).collect(),
            Err(e) if tries < 2 => {
                tries += 1;
                eprintln!("etcd list {prefix} failed ({e}); trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => panic!("etcd list {prefix}: {e}"),
        }
    }
}

pub async fn pods(client: &kube::Client, ns: &str, topology: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("squall.dev/topology={topology}")))
        .await
        .unwrap()
        .items
}

/// Wait up to `secs` for an Event in `ns` with `reason` whose message satisfies `says`.
pub async fn wait_event(
    client: &kube::Client,
    ns: &str,
    reason: &str,
    secs: u64,
    says: impl Fn(&str) -> bool,
) -> squall_testenv::Result<()> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let says = &says;
    wait_for(
        &format!("a {reason} event"),
        std::time::Duration::from_secs(secs),
        || {
            let e = events.clone();
            async move {
                let list = e.list(&ListParams::default()).await.ok()?;
                list.items
                    .iter()
                    .any(|ev| {
                        ev.reason.as_deref() == Some(reason)
                            && ev.message.as_deref().is_some_and(says)
                    })
                    .then_some(())
            }
        },
    )
    .await
}

/// How many passes over `topology` this operator has completed without an
/// error (it logs each at debug, which `Operator::start` turns on). Passes
/// over one topology run one at a time, so once this count is two past a
/// reading, a whole pass started after that reading.
pub fn passes(op: &Operator, topology: &str) -> usize {
    let end = format!("reconciled topology={topology}");
    op.log()
        .lines()
        .filter(|l| l.trim_end().ends_with(&end))
        .count()
}

/// Wait until this operator has completed a whole pass over `topology` that
/// started now or later: evidence that what it reports is current.
pub async fn a_fresh_pass(op: &Operator, topology: &str, secs: u64) {
    let seen = passes(op, topology);
    wait_for(
        &format!("a new operator pass over {topology}"),
        std::time::Duration::from_secs(secs),
        || async move { (passes(op, topology) >= seen + 2).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log()));
}
