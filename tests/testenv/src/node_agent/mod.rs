//! A test-only kubelet stand-in: registers Ready nodes, binds pending pods,
//! and runs each container's command as a local process.
//!
//! See `docs/testenv.md` for the rules (image mapping, env, volumes, pod IPs).

mod images;
mod kubelet_api;
mod pod;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Binding, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo, ObjectReference, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use images::ImageMap;

use crate::control_plane::ControlPlane;
use crate::error::{Error, IoContext, Result};
use crate::process;
use crate::tempdir::TempDir;

/// Node agent settings.
#[derive(Debug, Clone)]
pub struct NodeAgentConfig {
    /// Names of the Nodes to register (pods are spread round-robin).
    pub nodes: Vec<String>,
    /// Image → binary mapping.
    pub images: ImageMap,
    /// Node capacity: cpu.
    pub cpu: String,
    /// Node capacity: memory.
    pub memory: String,
    /// Node capacity: pods.
    pub max_pods: u32,
    /// How often pods are listed and containers checked.
    pub poll_interval: Duration,
    /// First restart back-off; doubles on each crash.
    pub backoff_initial: Duration,
    /// Back-off cap.
    pub backoff_max: Duration,
    /// Environment variables copied from the agent's own environment into
    /// every container (containers do not inherit anything else).
    pub inherit_env: Vec<String>,
    /// Where pod directories (logs, volumes, kubeconfigs) go; a temporary
    /// directory removed on drop when `None`.
    pub work_dir: Option<PathBuf>,
}

impl Default for NodeAgentConfig {
    fn default() -> Self {
        NodeAgentConfig {
            nodes: vec!["squall-node-0".to_string()],
            images: ImageMap::workspace_defaults(),
            cpu: "16".into(),
            memory: "64Gi".into(),
            max_pods: 250,
            poll_interval: Duration::from_millis(200),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            inherit_env: [
                "PATH",
                "RUST_BACKTRACE",
                "RUST_LOG",
                "LLVM_PROFILE_FILE",
                "TMPDIR",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            work_dir: None,
        }
    }
}

/// Identifies one container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

/// A container of one pod incarnation: a pod recreated under the same name
/// (StatefulSets, force deletion) never touches the old one's processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ProcKey {
    pub key: ContainerKey,
    pub uid: String,
}

#[derive(Debug)]
pub(crate) struct RunningProc {
    pub child: Child,
    pub started: std::time::Instant,
}

/// Where a container's output goes.
#[derive(Debug, Clone)]
pub struct ContainerLogs {
    /// stdout file (appended across restarts, with a marker line per start).
    pub stdout: PathBuf,
    /// stderr file.
    pub stderr: PathBuf,
}

pub(crate) struct Shared {
    pub client: kube::Client,
    pub config: NodeAgentConfig,
    pub server_url: String,
    pub ca_cert: PathBuf,
    pub work_dir: PathBuf,
    pub procs: Mutex<HashMap<ProcKey, RunningProc>>,
    pub logs: Mutex<BTreeMap<ContainerKey, ContainerLogs>>,
    kubelet_port: u16,
    ip_block: u8,
    next_ip: Mutex<u32>,
    _ip_lock: File,
}

impl Shared {
    pub(crate) fn procs(&self) -> MutexGuard<'_, HashMap<ProcKey, RunningProc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn logs(&self) -> MutexGuard<'_, BTreeMap<ContainerKey, ContainerLogs>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh loopback address 127.<block>.x.y for a pod.
    pub(crate) fn allocate_ip(&self) -> String {
        let mut n = self.next_ip.lock().unwrap_or_else(|p| p.into_inner());
        let i = *n;
        *n = n.wrapping_add(1);
        let hi = (i / 254) % 256;
        let lo = i % 254 + 1;
        format!("127.{}.{hi}.{lo}", self.ip_block)
    }
}

/// The running node agent. Dropping it kills every container process (and
/// removes its work directory unless one was given); the pods stay in the
/// API. When dropped during a panic it prints every container's logs.
pub struct NodeAgent {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    kubelet_api: JoinHandle<()>,
    workers: Arc<Mutex<HashMap<String, PodWorkerHandle>>>,
    runtime: Option<tokio::runtime::Runtime>,
    _work_tmp: Option<TempDir>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent")
            .field("nodes", &self.shared.config.nodes)
            .field("work_dir", &self.shared.work_dir)
            .finish()
    }
}

pub(crate) struct PodWorkerHandle {
    pub tx: watch::Sender<Option<Pod>>,
    pub task: JoinHandle<()>,
}

impl NodeAgent {
    /// Starts an agent against a [`ControlPlane`].
    pub async fn start(cp: &ControlPlane, config: NodeAgentConfig) -> Result<NodeAgent> {
        Self::start_with_config(
            cp.kube_config(),
            cp.server_url().to_string(),
            cp.ca_cert_path().to_path_buf(),
            config,
        )
        .await
    }

    /// Starts an agent talking to the API as `kube_config` says; `server_url`
    /// and `ca_cert` go into the kubeconfigs handed to pods.
    ///
    /// The agent runs on a runtime of its own (two threads), so a test may
    /// block its own runtime (e.g. run `kubectl` with `Command::output`)
    /// without stalling pods, probes, status updates or `kubectl logs`.
    pub async fn start_with_config(
        kube_config: kube::Config,
        server_url: String,
        ca_cert: PathBuf,
        config: NodeAgentConfig,
    ) -> Result<NodeAgent> {
        if config.nodes.is_empty() {
            return Err(Error::Invalid("node agent needs at least one node".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("squall-node-agent")
            .enable_all()
            .build()
            .ctx(|| "start the node agent runtime".into())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let _ = tx.send(init(kube_config, server_url, ca_cert, config).await);
        });
        let init = rx
            .await
            .map_err(|_| Error::Invalid("node agent start-up task died".into()))
            .and_then(|r| r);
        match init {
            Ok(parts) => Ok(NodeAgent {
                shared: parts.shared,
                task: parts.task,
                heartbeat: parts.heartbeat,
                kubelet_api: parts.kubelet_api,
                workers: parts.workers,
                runtime: Some(runtime),
                _work_tmp: parts.work_tmp,
            }),
            Err(e) => {
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    /// Node names this agent registered.
    pub fn nodes(&self) -> &[String] {
        &self.shared.config.nodes
    }

    /// The agent's work directory (pod dirs with logs and volumes).
    pub fn work_dir(&self) -> &Path {
        &self.shared.work_dir
    }

    /// The first octets `127.<block>.` of the pod IPs this agent hands out.
    pub fn ip_block(&self) -> u8 {
        self.shared.ip_block
    }

    /// The pid of a container's current process, if it is running.
    pub fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        let key = key(namespace, pod, container);
        let mut procs = self.shared.procs();
        procs
            .iter_mut()
            .filter(|(k, _)| k.key == key)
            .filter_map(|(_, p)| match p.child.try_wait() {
                Ok(None) => Some((p.started, p.child.id())),
                _ => None,
            })
            .max()
            .map(|(_, pid)| pid)
    }

    /// Pids of all running containers of pods whose name starts with `prefix` in `namespace`.
    pub fn running_pids(&self, namespace: &str, prefix: &str) -> Vec<(ContainerKey, u32)> {
        let mut procs = self.shared.procs();
        let mut out: Vec<(ContainerKey, u32)> = procs
            .iter_mut()
            .filter(|(k, _)| k.key.namespace == namespace && k.key.pod.starts_with(prefix))
            .filter_map(|(k, p)| match p.child.try_wait() {
                Ok(None) => Some((k.key.clone(), p.child.id())),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Sends `signal` to a container's process group (SIGKILL simulates a
    /// crash); returns the pid signalled.
    pub fn signal_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        signal: Signal,
    ) -> Result<u32> {
        let pid = self
            .container_pid(namespace, pod, container)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no running process for container {namespace}/{pod}/{container}"
                ))
            })?;
        process::signal_group(pid, signal).map_err(|e| Error::Io {
            context: format!("signal {signal} to pid {pid}"),
            source: std::io::Error::from(e),
        })?;
        Ok(pid)
    }

    /// Kills (SIGKILL) a container's process, as a crash would; returns its pid.
    pub fn kill_container(&self, namespace: &str, pod: &str, container: &str) -> Result<u32> {
        self.signal_container(namespace, pod, container, Signal::SIGKILL)
    }

    /// Where a container's stdout/stderr go (known once it was first started).
    pub fn container_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Option<ContainerLogs> {
        self.shared
            .logs()
            .get(&key(namespace, pod, container))
            .cloned()
    }

    /// stdout and stderr of a container so far, concatenated with headers.
    pub fn read_logs(&self, namespace: &str, pod: &str, container: &str) -> String {
        match self.container_logs(namespace, pod, container) {
            Some(l) => format_logs(&key(namespace, pod, container), &l),
            None => format!("(no logs for {namespace}/{pod}/{container})"),
        }
    }

    /// Every container's logs, for printing when a test fails.
    pub fn dump_logs(&self) -> String {
        let logs = self.shared.logs().clone();
        let mut out = String::new();
        for (k, l) in &logs {
            out.push_str(&format_logs(k, l));
        }
        out
    }

    /// Stops the agent: kills every container (SIGTERM, then SIGKILL after
    /// `grace`). Pods stay in the API.
    pub fn stop(&self, grace: Duration) {
        self.task.abort();
        self.heartbeat.abort();
        self.kubelet_api.abort();
        {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            for (_, w) in workers.drain() {
                w.task.abort();
            }
        }
        let mut procs = self.shared.procs();
        for p in procs.values() {
            let _ = process::signal_group(p.child.id(), Signal::SIGTERM);
        }
        for (_, mut p) in procs.drain() {
            process::terminate(&mut p.child, grace);
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- squall-testenv node agent: container logs ----\n{}----",
                self.dump_logs()
            );
        }
        self.stop(Duration::from_secs(2));
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Parts {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    kubelet_api: JoinHandle<()>,
    workers: Arc<Mutex<HashMap<String, PodWorkerHandle>>>,
    work_tmp: Option<TempDir>,
}

/// Runs on the agent's own runtime, so the client and all tasks live there.
async fn init(
    kube_config: kube::Config,
    server_url: String,
    ca_cert: PathBuf,
    config: NodeAgentConfig,
) -> Result<Parts> {
    let client = kube::Client::try_from(kube_config)?;
    let (work_tmp, work_dir) = match &config.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).ctx(|| format!("mkdir {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = TempDir::new("node-agent")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let (ip_block, ip_lock) = lock_ip_block()?;
    let (listener, acceptor) = kubelet_api::bind(&config.nodes).await?;
    let kubelet_port = listener
        .local_addr()
        .ctx(|| "kubelet API address".into())?
        .port();
    let shared = Arc::new(Shared {
        client,
        config,
        server_url,
        ca_cert,
        work_dir,
        procs: Mutex::new(HashMap::new()),
        logs: Mutex::new(BTreeMap::new()),
        kubelet_port,
        ip_block,
        next_ip: Mutex::new(0),
        _ip_lock: ip_lock,
    });
    let kubelet_api = tokio::spawn(kubelet_api::serve(listener, acceptor, shared.clone()));
    for node in &shared.config.nodes {
        if let Err(e) = register_node(&shared, node).await {
            kubelet_api.abort();
            return Err(e);
        }
    }
    let workers: Arc<Mutex<HashMap<String, PodWorkerHandle>>> = Arc::default();
    let task = tokio::spawn(run_loop(shared.clone(), workers.clone()));
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
    Ok(Parts {
        shared,
        task,
        heartbeat,
        kubelet_api,
        workers,
        work_tmp,
    })
}

fn key(namespace: &str, pod: &str, container: &str) -> ContainerKey {
    ContainerKey {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
    }
}

fn format_logs(k: &ContainerKey, l: &ContainerLogs) -> String {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    format!(
        "== {}/{}/{} stdout ({}) ==\n{}\n== {}/{}/{} stderr ({}) ==\n{}\n",
        k.namespace,
        k.pod,
        k.container,
        l.stdout.display(),
        read(&l.stdout),
        k.namespace,
        k.pod,
        k.container,
        l.stderr.display(),
        read(&l.stderr)
    )
}

/// Takes an exclusive lock on one 127.<n>.0.0/16 block so that agents in
/// concurrently running test processes never hand out the same pod IP.
fn lock_ip_block() -> Result<(u8, File)> {
    let dir = std::env::temp_dir().join("squall-testenv-ipblocks");
    std::fs::create_dir_all(&dir).ctx(|| format!("mkdir {}", dir.display()))?;
    let start = (std::process::id() % 200) as u16;
    for i in 0..240u16 {
        let block = 10 + ((start + i) % 240) as u8;
        let path = dir.join(format!("{block}.lock"));
        let f = File::create(&path).ctx(|| format!("create {}", path.display()))?;
        if f.try_lock().is_ok() {
            return Ok((block, f));
        }
    }
    Err(Error::Invalid("all loopback IP blocks are in use".into()))
}

fn node_status(shared: &Shared) -> NodeStatus {
    let cap: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(shared.config.cpu.clone())),
        ("memory".to_string(), Quantity(shared.config.memory.clone())),
        (
            "pods".to_string(),
            Quantity(shared.config.max_pods.to_string()),
        ),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ]
    .into_iter()
    .collect();
    let now = Time(Timestamp::now());
    NodeStatus {
        capacity: Some(cap.clone()),
        allocatable: Some(cap),
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: "127.0.0.1".into(),
        }]),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("squall-testenv node agent is posting ready status".into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        }]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(shared.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            boot_id: String::new(),
            container_runtime_version: "squall-testenv://0.1".into(),
            kernel_version: String::new(),
            kube_proxy_version: String::new(),
            kubelet_version: crate::bins::K8S_VERSION.into(),
            machine_id: String::new(),
            operating_system: "linux".into(),
            os_image: "squall-testenv".into(),
            system_uuid: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn register_node(shared: &Shared, name: &str) -> Result<()> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH.to_string(),
        ),
        ("squall.dev/node-agent".to_string(), "true".to_string()),
    ]
    .into_iter()
    .collect();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    patch_node_status(shared, name).await
}

async fn patch_node_status(shared: &Shared, name: &str) -> Result<()> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let patch = serde_json::json!({ "status": node_status(shared) });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for node in &shared.config.nodes {
            if let Err(e) = patch_node_status(&shared, node).await {
                tracing::warn!("node {node} heartbeat: {e}");
            }
        }
    }
}

async fn run_loop(shared: Arc<Shared>, workers: Arc<Mutex<HashMap<String, PodWorkerHandle>>>) {
    let mut rr = 0usize;
    loop {
        if let Err(e) = tick(&shared, &workers, &mut rr).await {
            tracing::warn!("node agent: {e}");
        }
        tokio::time::sleep(shared.config.poll_interval).await;
    }
}

async fn tick(
    shared: &Arc<Shared>,
    workers: &Arc<Mutex<HashMap<String, PodWorkerHandle>>>,
    rr: &mut usize,
) -> Result<()> {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let pods = api.list(&ListParams::default()).await?;
    let mut seen = std::collections::HashSet::new();
    let mut to_finish = Vec::new();
    for pod in pods.items {
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match spec_node {
            None => {
                if pod.metadata.deletion_timestamp.is_none() && wants_us(&pod) {
                    let node = pick_node(shared, &pod, rr);
                    if let Err(e) = bind(shared, &pod, &node).await {
                        tracing::warn!("bind {:?}: {e}", pod.metadata.name);
                    }
                }
            }
            Some(n) if shared.config.nodes.contains(&n) => {
                seen.insert(uid.clone());
                let mut w = workers.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = w.get(&uid) {
                    if h.task.is_finished() && pod.metadata.deletion_timestamp.is_some() {
                        // Its worker is done (say, its final delete call failed).
                        to_finish.push(pod);
                    } else {
                        h.tx.send_replace(Some(pod));
                    }
                } else if is_finished(&pod) {
                    // A finished pod (no processes) being deleted: finish it.
                    if pod.metadata.deletion_timestamp.is_some() {
                        to_finish.push(pod);
                    }
                } else {
                    let (tx, rx) = watch::channel(Some(pod));
                    let task = tokio::spawn(pod::run_pod(shared.clone(), rx));
                    w.insert(uid, PodWorkerHandle { tx, task });
                }
            }
            Some(_) => {}
        }
    }
    for pod in &to_finish {
        finish_deletion(shared, pod).await;
    }
    let mut w = workers.lock().unwrap_or_else(|p| p.into_inner());
    w.retain(|uid, h| {
        if h.task.is_finished() {
            // Worker done (pod finished or deleted); keep a tombstone only while
            // the pod still exists so it is not restarted.
            return seen.contains(uid);
        }
        if !seen.contains(uid) {
            h.tx.send_replace(None);
        }
        true
    });
    Ok(())
}

async fn finish_deletion(shared: &Shared, pod: &Pod) {
    let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), ns);
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    if let Err(e) = api.delete(name, &dp).await {
        tracing::debug!("finish deletion of {ns}/{name}: {e}");
    }
}

fn wants_us(pod: &Pod) -> bool {
    let sched = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler");
    sched == "default-scheduler"
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn pick_node(shared: &Shared, pod: &Pod, rr: &mut usize) -> String {
    let nodes = &shared.config.nodes;
    if let Some(want) = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref())
        .and_then(|sel| sel.get("kubernetes.io/hostname"))
        && nodes.contains(want)
    {
        return want.clone();
    }
    let n = nodes[*rr % nodes.len()].clone();
    *rr = rr.wrapping_add(1);
    n
}

async fn bind(shared: &Shared, pod: &Pod, node: &str) -> Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let _: serde_json::Value = api
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}
