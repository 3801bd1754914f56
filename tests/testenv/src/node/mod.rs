//! A real Kubernetes node: containerd + runc + CNI bridge, kubelet,
//! kube-proxy, kube-scheduler and CoreDNS, with the control plane, all inside
//! one network namespace that the harness creates (see shared notes,
//! real-node.md). The host reaches the cluster only through relays on
//! `127.0.0.1`, and the teardown restores the host.

pub mod config;
pub mod host;
mod images;
pub mod netns;
pub mod relay;
pub mod storage;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde::{Deserialize, Serialize};

use crate::bins::binary;
use crate::certs::NODE_NAME;
use crate::control_plane::{ControlPlane, KubeconfigUser, write_kubeconfig};
use crate::error::{Error, IoContext, Result};
use crate::etcd::Etcd;
use crate::process::ManagedProcess;
use host::HostSnapshot;
use netns::{NODE_IP, NetNs};
use relay::Dialer;

use images::import_images;
pub use images::{ROLL_FROM, ROLL_TO, default_images_dir};

/// Where node state directories live (not under the temp dir, whose sweep
/// would recurse into a crashed node's mounts).
pub const STATE_ROOT: &str = "/var/tmp/squall-cluster";
/// The port of the state etcd (the one topologies use) on the node IP.
pub const STATE_ETCD_PORT: u16 = 12379;

/// The node's network namespace and a dialer into it.
#[derive(Debug)]
pub struct NodeNet {
    pub(crate) ns: NetNs,
    pub(crate) dialer: Dialer,
}

/// What a test needs to use a running cluster, written to `cluster.json` so
/// that test processes can share one cluster (see [`crate::SharedCluster`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Admin kubeconfig, for the host (API server through the relay).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<relay port>`.
    pub server_url: String,
    /// The Node's name.
    pub node: String,
    /// The node IP (inside the namespace; never reachable from the host).
    pub node_ip: String,
    /// An etcd for topology state, from the host (relay).
    pub etcd_url: String,
    /// The same etcd, from pods (on the node IP).
    pub etcd_url_from_pods: String,
    /// The network namespace (`ip netns` name).
    pub netns: String,
    /// The cluster's state directory (logs of every daemon).
    pub dir: PathBuf,
    /// The images imported into the node's containerd.
    pub images: Vec<String>,
}

/// A control plane plus one real node. Dropping it tears everything down and
/// restores the host.
pub struct RealCluster {
    provisioner: Option<tokio::task::JoinHandle<()>>,
    coredns: Option<ManagedProcess>,
    kube_proxy: Option<ManagedProcess>,
    scheduler: Option<ManagedProcess>,
    kubelet: Option<ManagedProcess>,
    containerd: Option<ManagedProcess>,
    state_etcd: Option<Etcd>,
    control_plane: Option<ControlPlane>,
    net: Option<Arc<NodeNet>>,
    info: ClusterInfo,
    dir: PathBuf,
    snapshot: HostSnapshot,
    torn_down: bool,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("info", &self.info)
            .finish()
    }
}

fn need_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "`{name}` is not installed: the real node needs Debian's containerd, runc, iptables, \
             containernetworking-plugins and util-linux (`make testenv` installs them as root)"
        )))
    }
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                component: what.into(),
                timeout,
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl RealCluster {
    /// Starts the control plane and the node inside a new network namespace,
    /// imports every image archive (`*.tar`) from `images_dir`, and waits
    /// until the Node is Ready and CoreDNS answers.
    ///
    /// # Errors
    /// Not root, a missing binary or package, or a component that does not
    /// come up (the error carries its log tail).
    pub async fn start(images_dir: &Path) -> Result<RealCluster> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Invalid(
                "a real node needs root (network namespaces, containerd, kubelet)".into(),
            ));
        }
        for tool in ["containerd", "runc", "ctr", "iptables", "nsenter", "ip"] {
            need_tool(tool)?;
        }
        for b in ["kubelet", "kube-proxy", "kube-scheduler", "coredns"] {
            binary(b)?;
        }
        sweep_leftovers();
        if let Some(other) = live_cluster() {
            return Err(Error::Invalid(format!(
                "a real cluster already runs on this machine (pid {other}, state in {STATE_ROOT}/{other}): \
                 one at a time, since every kubelet here shares the top-level kubepods cgroups; \
                 use that one (its cluster.json) or stop it first"
            )));
        }
        let pid = std::process::id();
        let dir = PathBuf::from(STATE_ROOT).join(pid.to_string());
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let snapshot = HostSnapshot::take();
        let ns = NetNs::create(&format!("squall-{pid}"))?;
        let dialer = Dialer::new(&ns.path())?;
        let net = Arc::new(NodeNet { ns, dialer });
        let mut cluster = RealCluster {
            provisioner: None,
            coredns: None,
            kube_proxy: None,
            scheduler: None,
            kubelet: None,
            containerd: None,
            state_etcd: None,
            control_plane: None,
            net: Some(net.clone()),
            info: ClusterInfo {
                kubeconfig: PathBuf::new(),
                server_url: String::new(),
                node: NODE_NAME.into(),
                node_ip: NODE_IP.into(),
                etcd_url: String::new(),
                etcd_url_from_pods: String::new(),
                netns: net.ns.name().into(),
                dir: dir.clone(),
                images: Vec::new(),
            },
            dir,
            snapshot,
            torn_down: false,
        };
        // On error, `cluster` drops here and tears down what did start.
        cluster.boot(&net, images_dir).await?;
        Ok(cluster)
    }

    async fn boot(&mut self, net: &Arc<NodeNet>, images_dir: &Path) -> Result<()> {
        let t0 = Instant::now();
        let cp = ControlPlane::start_with(Some(net.clone())).await?;
        let node_kubeconfig = cp.node_kubeconfig_path().to_path_buf();
        let ca = cp.ca_cert_path().to_path_buf();
        let (kubelet_cert, kubelet_key) =
            (cp.pki().kubelet_cert.clone(), cp.pki().kubelet_key.clone());
        self.info.kubeconfig = cp.kubeconfig_path().to_path_buf();
        self.info.server_url = cp.server_url().to_string();
        let client = cp.client();
        self.control_plane = Some(cp);
        tracing::info!("control plane up in {:?}", t0.elapsed());

        let state_etcd = Etcd::start_in(net, NODE_IP, STATE_ETCD_PORT).await?;
        self.info.etcd_url = state_etcd.client_url().to_string();
        self.info.etcd_url_from_pods = state_etcd.inner_url().to_string();
        self.state_etcd = Some(state_etcd);

        // containerd
        let d = &self.dir;
        for sub in [
            "ctr",
            "cni/net.d",
            "cni/ipam",
            "kubelet/root",
            "kubelet/pki",
            "kubelet/pod-logs",
            "volumes",
            "logs",
        ] {
            std::fs::create_dir_all(d.join(sub)).ctx(|| format!("mkdir {sub}"))?;
        }
        let write = |name: &str, text: String| -> Result<PathBuf> {
            let p = d.join(name);
            std::fs::write(&p, text).ctx(|| format!("write {}", p.display()))?;
            Ok(p)
        };
        let ctr_conf = write("containerd.toml", config::containerd(d))?;
        write("cni/net.d/10-squall.conflist", config::cni(d))?;
        let mut cmd = net.ns.command("containerd");
        cmd.arg("--config").arg(&ctr_conf);
        self.containerd = Some(ManagedProcess::start(
            "containerd",
            cmd,
            &d.join("logs/containerd.log"),
        )?);
        let sock = d.join("ctr/containerd.sock");
        {
            let ctr = self
                .containerd
                .as_mut()
                .ok_or_else(|| Error::Invalid("containerd".into()))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !sock.exists() {
                ctr.check_alive()?;
                if Instant::now() > deadline {
                    return Err(Error::NotReady {
                        component: "containerd".into(),
                        timeout: Duration::from_secs(30),
                        detail: ctr.log_tail(20),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.info.images = import_images(&sock, images_dir)?;
        tracing::info!(
            "containerd up, {} images imported, at {:?}",
            self.info.images.len(),
            t0.elapsed()
        );

        // kubelet
        let kubelet_kubeconfig = d.join("kubelet/kubeconfig");
        write_kubeconfig(
            &kubelet_kubeconfig,
            "https://127.0.0.1:6443",
            &ca,
            KubeconfigUser::ClientCert {
                cert: &kubelet_cert,
                key: &kubelet_key,
            },
            None,
        )?;
        let kubelet_conf = write("kubelet/config.json", config::kubelet(d, &ca))?;
        let mut cmd = net.ns.command(binary("kubelet")?);
        cmd.arg(format!("--config={}", kubelet_conf.display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!("--root-dir={}", d.join("kubelet/root").display()))
            .arg(format!("--cert-dir={}", d.join("kubelet/pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg("--v=1");
        self.kubelet = Some(ManagedProcess::start(
            "kubelet",
            cmd,
            &d.join("logs/kubelet.log"),
        )?);

        // kube-proxy, kube-scheduler, CoreDNS
        let proxy_conf = write(
            "kube-proxy.json",
            config::kube_proxy(&node_kubeconfig, NODE_NAME),
        )?;
        let mut cmd = net.ns.command(binary("kube-proxy")?);
        cmd.arg(format!("--config={}", proxy_conf.display()))
            .arg("--v=1");
        self.kube_proxy = Some(ManagedProcess::start(
            "kube-proxy",
            cmd,
            &d.join("logs/kube-proxy.log"),
        )?);
        let mut cmd = net.ns.command(binary("kube-scheduler")?);
        cmd.arg(format!("--kubeconfig={}", node_kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                node_kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                node_kubeconfig.display()
            ))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        self.scheduler = Some(ManagedProcess::start(
            "kube-scheduler",
            cmd,
            &d.join("logs/kube-scheduler.log"),
        )?);
        let corefile = write("Corefile", config::corefile(&node_kubeconfig))?;
        let mut cmd = net.ns.command(binary("coredns")?);
        cmd.arg("-conf").arg(&corefile);
        self.coredns = Some(ManagedProcess::start(
            "coredns",
            cmd,
            &d.join("logs/coredns.log"),
        )?);

        storage::install(&client).await?;
        self.provisioner = Some(tokio::spawn(storage::run(
            client.clone(),
            d.join("volumes"),
        )));

        // Ready: the Node reports Ready (the kubelet runs and CNI is configured).
        let nodes: Api<Node> = Api::all(client.clone());
        let kubelet_log = d.join("logs/kubelet.log");
        wait_for("the node (kubelet Ready)", Duration::from_secs(90), || {
            let nodes = nodes.clone();
            let log = kubelet_log.clone();
            async move {
                match nodes.get_opt(NODE_NAME).await {
                    Ok(Some(n)) => {
                        let ready = n
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        if ready {
                            Ok(Some(()))
                        } else {
                            Err("Node not Ready yet".into())
                        }
                    }
                    Ok(None) => Err(format!(
                        "no Node yet; kubelet log:\n{}",
                        crate::process::log_tail(&log, 15)
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await?;
        self.check_alive()?;
        tracing::info!("node Ready at {:?}", t0.elapsed());
        Ok(())
    }

    /// An error naming the first daemon that has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in [
            &mut self.containerd,
            &mut self.kubelet,
            &mut self.kube_proxy,
            &mut self.scheduler,
            &mut self.coredns,
        ]
        .into_iter()
        .flatten()
        {
            p.check_alive()?;
        }
        if let Some(cp) = self.control_plane.as_mut() {
            cp.check_alive()?;
        }
        Ok(())
    }

    /// What tests need to reach the cluster.
    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    /// The control plane.
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.control_plane.as_ref()
    }

    /// Stops everything and restores the host (also done on drop).
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let t0 = Instant::now();
        if let Some(p) = self.provisioner.take() {
            p.abort();
        }
        // No controller may recreate what is deleted now.
        if let Some(cp) = self.control_plane.as_mut() {
            cp.stop_controller_manager();
        }
        if let Some(mut s) = self.scheduler.take() {
            s.stop();
        }
        if let (Some(cp), Some(_)) = (self.control_plane.as_ref(), self.kubelet.as_ref()) {
            delete_all_pods(cp);
        }
        for p in [&mut self.coredns, &mut self.kube_proxy, &mut self.kubelet] {
            if let Some(mut p) = p.take() {
                p.stop();
            }
        }
        // Whatever the kubelet did not stop: every container sits in a kubepods cgroup.
        host::remove_cgroups("kubepods");
        if let Some(mut c) = self.containerd.take() {
            c.stop();
        }
        // Shims outlive containerd; they name its socket on their command line.
        host::kill_by_cmdline(&self.dir.display().to_string());
        self.state_etcd = None;
        self.control_plane = None;
        host::unmount_under(&self.dir);
        if let Some(net) = self.net.take() {
            match Arc::try_unwrap(net) {
                Ok(mut n) => n.ns.delete(),
                Err(n) => {
                    let _ = Command::new("ip")
                        .args(["netns", "del", n.ns.name()])
                        .output();
                }
            }
        }
        self.snapshot.restore();
        if std::env::var_os("SQUALL_KEEP_CLUSTER_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        tracing::info!("real node torn down in {:?}", t0.elapsed());
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Deletes every pod and waits (up to 60 s) until the kubelet has stopped
/// them, so that CNI releases their addresses and their mounts go away.
fn delete_all_pods(cp: &ControlPlane) {
    let _ = cp
        .kubectl()
        .args([
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=2",
            "--wait=false",
        ])
        .output();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = cp
            .kubectl()
            .args(["get", "pods", "--all-namespaces", "-o", "name"])
            .output();
        match out {
            Ok(o) if o.status.success() && o.stdout.iter().all(u8::is_ascii_whitespace) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    tracing::warn!("pods still present after 60 s; tearing down anyway");
}

/// The pid of a running cluster's owner, if any.
fn live_cluster() -> Option<u32> {
    std::fs::read_dir(STATE_ROOT)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .find(|pid| *pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

/// Tears down what crashed runs left: their processes, mounts, network
/// namespaces and state directories (a state directory is named for the pid
/// that owned it).
pub fn sweep_leftovers() {
    let Ok(rd) = std::fs::read_dir(STATE_ROOT) else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        tracing::warn!("cleaning up a crashed cluster in {}", dir.display());
        host::kill_by_cmdline(&dir.display().to_string());
        host::unmount_under(&dir);
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("squall-{pid}")])
            .output();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
