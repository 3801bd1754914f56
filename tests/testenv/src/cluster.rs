//! The one real cluster a test run shares (`make test` starts it through
//! `with-cluster`; `make dev-cluster` gives one to a person). Each test takes
//! a namespace of its own, so tests run side by side on one node.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::bins::binary;
use crate::control_plane::config_from_kubeconfig;
use crate::error::{Error, IoContext, Result};
use crate::etcd::Etcd;
use crate::node::ClusterInfo;
use crate::node::relay::Dialer;
use crate::node::{NodeNet, netns::NetNs};

/// The environment variable naming the running cluster's `cluster.json`.
pub const CLUSTER_ENV: &str = "SQUALL_TEST_CLUSTER";

/// A handle on the shared real cluster.
#[derive(Clone)]
pub struct TestCluster {
    info: ClusterInfo,
    kube_config: kube::Config,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("info", &self.info)
            .finish()
    }
}

impl TestCluster {
    /// The cluster that `with-cluster` (run by `make test`) started, from
    /// `$SQUALL_TEST_CLUSTER`.
    ///
    /// # Errors
    /// Outside `make test`: says how to run the test.
    pub async fn shared() -> Result<TestCluster> {
        let path = std::env::var_os(CLUSTER_ENV).filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::Invalid(format!(
                "${CLUSTER_ENV} is not set: this test needs the shared real cluster; run it through \
                 `make test`, or `cargo run -p squall-testenv --bin with-cluster -- cargo test ...` as root"
            ))
        })?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
            context: format!("read {}", Path::new(&path).display()),
            source: e,
        })?;
        let info: ClusterInfo = serde_json::from_str(&text)?;
        let kube_config = config_from_kubeconfig(&info.kubeconfig).await?;
        Ok(TestCluster { info, kube_config })
    }

    /// Where everything is.
    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    /// An admin client, bound to the runtime it is called on.
    ///
    /// # Panics
    /// Never for a valid kubeconfig (checked by [`TestCluster::shared`]).
    pub fn client(&self) -> kube::Client {
        #[allow(clippy::expect_used)]
        kube::Client::try_from(self.kube_config.clone()).expect("client from a checked kubeconfig")
    }

    /// The admin kubeconfig (kubectl and helm work with it).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.info.kubeconfig
    }

    /// An etcd for topology state, reachable from this host.
    pub fn etcd_url(&self) -> &str {
        &self.info.etcd_url
    }

    /// The same etcd as pods reach it.
    pub fn etcd_url_from_pods(&self) -> &str {
        &self.info.etcd_url_from_pods
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.info.node
    }

    /// The cluster's state directory (daemon logs under `logs/`).
    pub fn dir(&self) -> &Path {
        &self.info.dir
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`; add args and run it.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg(format!("--kubeconfig={}", self.info.kubeconfig.display()));
        c
    }

    /// `kubectl port-forward -n <namespace> <target> :<port>`, as a user
    /// reaches the operator's web UI: returns once it forwards, with the local
    /// port; the forward ends when the handle drops.
    ///
    /// # Errors
    /// kubectl cannot start, or exits before it says it forwards.
    pub fn port_forward(&self, namespace: &str, target: &str, port: u16) -> Result<PortForward> {
        use std::io::BufRead;
        let child = self
            .kubectl()
            .args(["port-forward", "-n", namespace, target])
            .arg(format!(":{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ctx(|| "kubectl port-forward".into())?;
        let mut forward = PortForward {
            child,
            local_port: 0,
        };
        // "Forwarding from 127.0.0.1:41235 -> 8081"
        let Some(out) = forward.child.stdout.take() else {
            return Err(Error::Invalid("kubectl port-forward: no stdout".into()));
        };
        let mut lines = std::io::BufReader::new(out).lines();
        let first = lines
            .next()
            .transpose()
            .ctx(|| "kubectl port-forward".into())?;
        let port = first
            .as_deref()
            .and_then(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        match port {
            Some(p) => {
                forward.local_port = p;
                // Keep draining stdout ("Handling connection for ...") so kubectl never blocks.
                std::thread::spawn(move || for _ in lines {});
                Ok(forward)
            }
            None => {
                let mut err = String::new();
                if let Some(mut e) = forward.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                Err(Error::Invalid(format!(
                    "kubectl port-forward did not forward: {first:?} {err}"
                )))
            }
        }
    }

    /// `helm` from the cache with KUBECONFIG set; its cache/config/data
    /// homes under `home` (a test's own directory).
    ///
    /// # Errors
    /// helm is not provisioned.
    pub fn helm(&self, home: &Path) -> Result<Command> {
        let mut c = Command::new(binary("helm")?);
        c.env("KUBECONFIG", &self.info.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        Ok(c)
    }

    /// A fresh namespace named `<prefix>-<n>-<pid>` (waits for its
    /// `default` service account, without which pods are rejected).
    ///
    /// # Errors
    /// The API server refused, or the service account never appeared.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            N.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        self.create_namespace(&name, &[]).await?;
        Ok(name)
    }

    /// Creates namespace `name` with `labels` (409 is fine) and waits for its
    /// `default` service account.
    ///
    /// # Errors
    /// The API server refused, or the service account never appeared.
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        crate::control_plane::create_namespace(&self.client(), name, labels).await
    }

    /// A new etcd of the test's own inside the node's network namespace, on
    /// the node IP (pods reach [`Etcd::inner_url`], this host
    /// [`Etcd::client_url`]); stopped on drop. For tests that take etcd down.
    ///
    /// # Errors
    /// Not root, or etcd did not start.
    pub async fn etcd_in_node(&self) -> Result<Etcd> {
        let ns = NetNs::open(&self.info.netns)?;
        let dialer = Dialer::new(&ns.path())?;
        let net = Arc::new(NodeNet { ns, dialer });
        let mut last = None;
        for _ in 0..5 {
            // Ports inside the namespace are ours alone but shared between tests.
            let port = 20000 + (rand_u16() % 20000) / 2 * 2;
            match Etcd::start_in(&net, &self.info.node_ip, port).await {
                Ok(e) => return Ok(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("etcd did not start".into())))
    }

    /// The host pid of a container's main process (from the pod's
    /// `containerID` and containerd's task list).
    ///
    /// # Errors
    /// No such pod or container, or it does not run.
    pub fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> Result<u32> {
        let out = self
            .kubectl()
            .args(["-n", namespace, "get", "pod", pod, "-o"])
            .arg(format!(
                "jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].containerID}}"
            ))
            .output()
            .map_err(|e| Error::Io {
                context: "run kubectl".into(),
                source: e,
            })?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let id = id.strip_prefix("containerd://").ok_or_else(|| {
            Error::Invalid(format!(
                "{namespace}/{pod} container {container} has no containerd id ({id:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        let sock = self.info.dir.join("ctr/containerd.sock");
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()
            .map_err(|e| Error::Io {
                context: "run ctr".into(),
                source: e,
            })?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id))
                    .then(|| f.next()?.parse::<u32>().ok())
                    .flatten()
            })
            .ok_or_else(|| Error::Invalid(format!("container {id} has no running task")))
    }

    /// Sends `signal` to a container's main process (SIGKILL: the container
    /// dies and the kubelet restarts it; SIGSTOP: it hangs).
    ///
    /// # Errors
    /// See [`TestCluster::container_pid`].
    pub fn signal_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        signal: Signal,
    ) -> Result<()> {
        let pid = self.container_pid(namespace, pod, container)?;
        let pid = i32::try_from(pid).map_err(|_| Error::Invalid(format!("pid {pid}")))?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .map_err(|e| Error::Invalid(format!("kill({pid}, {signal}): {e}")))
    }

    /// SIGKILLs a container's main process.
    ///
    /// # Errors
    /// See [`TestCluster::container_pid`].
    pub fn kill_container(&self, namespace: &str, pod: &str, container: &str) -> Result<()> {
        self.signal_container(namespace, pod, container, Signal::SIGKILL)
    }

    /// A TCP connection to `addr` (a pod or Service address) made from
    /// inside the node's network namespace: the host itself has no route
    /// there, by design.
    ///
    /// # Errors
    /// The namespace is gone, or the connection failed.
    pub fn connect_in_node(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<std::net::TcpStream> {
        let path = format!("{}/{}", crate::node::netns::NETNS_DIR, self.info.netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("connect thread panicked")))
        })
    }

    /// Deletes a namespace without waiting.
    pub fn delete_namespace(&self, name: &str) {
        let _ = self
            .kubectl()
            .args(["delete", "namespace", name, "--wait=false"])
            .output();
    }

    /// For a failing test's message: the pods of `namespace` (wide), its
    /// events, and every container's log tail (previous instance too).
    pub fn dump(&self, namespace: &str) -> String {
        let run = |args: &[&str]| -> String {
            match self.kubectl().args(args).output() {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("kubectl: {e}\n"),
            }
        };
        let mut out = format!("---- pods in {namespace} ----\n");
        out += &run(&["-n", namespace, "get", "pods", "-o", "wide"]);
        out += &format!("---- events in {namespace} ----\n");
        out += &run(&["-n", namespace, "get", "events", "--sort-by=.lastTimestamp"]);
        let names = run(&["-n", namespace, "get", "pods", "-o", "name"]);
        for pod in names.lines().filter(|l| l.starts_with("pod/")) {
            for (flag, label) in [("--tail=40", "log"), ("--previous", "previous log")] {
                let text = run(&[
                    "-n",
                    namespace,
                    "logs",
                    pod,
                    "--all-containers",
                    "--prefix",
                    flag,
                ]);
                if !text.trim().is_empty() && !text.contains("not found") {
                    out += &format!("---- {label} of {pod} ----\n{text}");
                }
            }
        }
        out
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(16)) as u16
}

/// A running `kubectl port-forward`; stopped on drop.
pub struct PortForward {
    child: std::process::Child,
    /// The local port it listens on (127.0.0.1).
    pub local_port: u16,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
