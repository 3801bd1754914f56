//! One task per pod: sets up its directory, volumes and credentials, runs its
//! containers as processes, probes them, restarts them, reports status, and
//! carries out deletion.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, KeyToPath, ObjectFieldSelector, Pod,
    PodCondition, PodIP, PodSpec, PodStatus, Probe, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::{ContainerKey, ContainerLogs, ProcKey, RunningProc, Shared};
use crate::control_plane::{KubeconfigUser, write_kubeconfig};
use crate::process;

type Msg = String;

pub(crate) async fn run_pod(shared: Arc<Shared>, mut rx: watch::Receiver<Option<Pod>>) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let Some(mut w) = PodWorker::new(shared.clone(), pod) else {
        return;
    };
    loop {
        let latest = rx.borrow_and_update().clone();
        match latest {
            None => {
                // The pod is gone from the API (force-deleted): just kill.
                w.kill_all(Duration::ZERO);
                return;
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                w.pod = p;
                w.delete_gracefully(&mut rx).await;
                return;
            }
            Some(p) => w.pod = p,
        }
        w.step().await;
        if let Err(e) = w.report().await {
            tracing::warn!("pod {}/{} status: {e}", w.ns, w.name);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { w.kill_all(Duration::from_secs(1)); return; },
            _ = tokio::time::sleep(shared.config.poll_interval) => {}
        }
    }
}

#[derive(Debug, Clone)]
enum CState {
    Waiting { reason: String, message: String },
    Running { started: Time },
    Terminated(ContainerStateTerminated),
}

#[derive(Debug, Default)]
struct ProbeState {
    next: Option<Instant>,
    successes: i32,
    failures: i32,
}

struct Ctr {
    spec: Container,
    key: ContainerKey,
    pkey: ProcKey,
    state: CState,
    last_terminated: Option<ContainerStateTerminated>,
    restart_count: i32,
    next_start: Instant,
    backoff: Duration,
    ready: bool,
    started_once: bool,
    /// Will not run again (terminated under its restart policy, or init done).
    done: bool,
    run_started: Instant,
    readiness: ProbeState,
    liveness: ProbeState,
    env: Vec<(String, String)>,
    logs: ContainerLogs,
}

struct Setup {
    /// volume name → local directory or file
    volumes: HashMap<String, PathBuf>,
    kubeconfig: Option<PathBuf>,
}

struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    spec: PodSpec,
    ns: String,
    name: String,
    uid: String,
    ip: String,
    node: String,
    dir: PathBuf,
    start_time: Time,
    setup: Option<Setup>,
    setup_error: Option<Msg>,
    next_setup: Instant,
    inits: Vec<Ctr>,
    ctrs: Vec<Ctr>,
    last_report: Option<serde_json::Value>,
}

impl PodWorker {
    fn new(shared: Arc<Shared>, pod: Pod) -> Option<PodWorker> {
        let spec = pod.spec.clone()?;
        let ns = pod.metadata.namespace.clone()?;
        let name = pod.metadata.name.clone()?;
        let uid = pod.metadata.uid.clone()?;
        let node = spec.node_name.clone()?;
        let ip = if spec.host_network == Some(true) {
            "127.0.0.1".to_string()
        } else {
            shared.allocate_ip()
        };
        let short_uid: String = uid.chars().take(8).collect();
        let dir = shared
            .work_dir
            .join("pods")
            .join(format!("{ns}_{name}_{short_uid}"));
        let logs_dir = dir.join("logs");
        if let Err(e) = std::fs::create_dir_all(&logs_dir) {
            tracing::warn!("pod dir {}: {e}", logs_dir.display());
        }
        let mk = |c: &Container| {
            let key = ContainerKey {
                namespace: ns.clone(),
                pod: name.clone(),
                container: c.name.clone(),
            };
            let logs = ContainerLogs {
                stdout: logs_dir.join(format!("{}.stdout", c.name)),
                stderr: logs_dir.join(format!("{}.stderr", c.name)),
            };
            Ctr {
                spec: c.clone(),
                pkey: ProcKey {
                    key: key.clone(),
                    uid: uid.clone(),
                },
                key,
                state: CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last_terminated: None,
                restart_count: 0,
                next_start: Instant::now(),
                backoff: shared.config.backoff_initial,
                ready: false,
                started_once: false,
                done: false,
                run_started: Instant::now(),
                readiness: ProbeState::default(),
                liveness: ProbeState::default(),
                env: Vec::new(),
                logs,
            }
        };
        let inits = spec
            .init_containers
            .iter()
            .flatten()
            .map(&mk)
            .collect::<Vec<_>>();
        let ctrs = spec.containers.iter().map(&mk).collect::<Vec<_>>();
        Some(PodWorker {
            shared,
            pod,
            spec,
            ns,
            name,
            uid,
            ip,
            node,
            dir,
            start_time: Time(Timestamp::now()),
            setup: None,
            setup_error: None,
            next_setup: Instant::now(),
            inits,
            ctrs,
            last_report: None,
        })
    }

    fn restart_policy(&self) -> &str {
        self.spec.restart_policy.as_deref().unwrap_or("Always")
    }

    // ------------------------------------------------------------ lifecycle

    async fn step(&mut self) {
        if self.setup.is_none() {
            if Instant::now() < self.next_setup {
                return;
            }
            match self.do_setup().await {
                Ok(s) => {
                    self.setup = Some(s);
                    self.setup_error = None;
                }
                Err(e) => {
                    self.setup_error = Some(e);
                    self.next_setup = Instant::now() + Duration::from_secs(1);
                    return;
                }
            }
        }
        // Init containers, in order, each to successful completion.
        let policy = self.restart_policy().to_string();
        let mut i = 0;
        while i < self.inits.len() {
            if self.inits[i].done {
                if matches!(&self.inits[i].state, CState::Terminated(t) if t.exit_code == 0) {
                    i += 1;
                    continue;
                }
                return; // failed for good (restartPolicy Never): pod Failed
            }
            // Init containers restart on failure unless the pod's policy is Never.
            let init_policy = if policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            self.step_container(true, i, init_policy).await;
            if !self.inits[i].done {
                return;
            }
        }
        for i in 0..self.ctrs.len() {
            self.step_container(false, i, &policy).await;
        }
    }

    fn ctr(&mut self, init: bool, i: usize) -> &mut Ctr {
        if init {
            &mut self.inits[i]
        } else {
            &mut self.ctrs[i]
        }
    }

    async fn step_container(&mut self, init: bool, i: usize, policy: &str) {
        // Exited?
        let exited = {
            let key = self.ctr(init, i).pkey.clone();
            let mut procs = self.shared.procs();
            match procs.get_mut(&key).map(|p| p.child.try_wait()) {
                Some(Ok(Some(st))) => {
                    procs.remove(&key);
                    Some(st)
                }
                Some(Err(_)) => {
                    procs.remove(&key);
                    None
                }
                _ => None,
            }
        };
        if let Some(st) = exited {
            let (bi, bm) = (
                self.shared.config.backoff_initial,
                self.shared.config.backoff_max,
            );
            let c = self.ctr(init, i);
            on_exit(c, st, policy, bi, bm);
        }
        let running = matches!(self.ctr(init, i).state, CState::Running { .. });
        if !running {
            let c = self.ctr(init, i);
            if !c.done && Instant::now() >= c.next_start {
                self.start_container(init, i).await;
            }
            return;
        }
        self.probe(init, i).await;
    }

    async fn start_container(&mut self, init: bool, i: usize) {
        let spec = self.ctr(init, i).spec.clone();
        let prepared = self.prepare(&spec).await;
        let (program, args, env, cwd) = match prepared {
            Ok(p) => p,
            Err((reason, message)) => {
                let c = self.ctr(init, i);
                c.state = CState::Waiting { reason, message };
                c.next_start = Instant::now() + Duration::from_secs(1);
                return;
            }
        };
        let shared = self.shared.clone();
        let c = self.ctr(init, i);
        let open = |p: &Path| OpenOptions::new().create(true).append(true).open(p);
        let (out, err) = match (open(&c.logs.stdout), open(&c.logs.stderr)) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                c.state = CState::Waiting {
                    reason: "CreateContainerError".into(),
                    message: format!("log file: {e}"),
                };
                c.next_start = Instant::now() + Duration::from_secs(1);
                return;
            }
        };
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match process::spawn(cmd) {
            Ok(child) => {
                let pid = child.id();
                let key = c.key.clone();
                shared.procs().insert(
                    c.pkey.clone(),
                    RunningProc {
                        child,
                        started: Instant::now(),
                    },
                );
                shared.logs().insert(key, c.logs.clone());
                if c.started_once {
                    c.restart_count += 1;
                }
                c.started_once = true;
                c.env = env;
                c.state = CState::Running {
                    started: Time(Timestamp::now()),
                };
                c.run_started = Instant::now();
                c.ready = false;
                let now = Instant::now();
                let delay = |p: &Option<Probe>| {
                    p.as_ref().map(|p| {
                        now + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
                    })
                };
                c.readiness = ProbeState {
                    next: delay(&c.spec.readiness_probe),
                    ..Default::default()
                };
                c.liveness = ProbeState {
                    next: delay(&c.spec.liveness_probe),
                    ..Default::default()
                };
                if c.spec.readiness_probe.is_none() {
                    c.ready = true;
                }
                tracing::debug!("started {:?} pid {pid}", c.key);
            }
            Err(e) => {
                c.state = CState::Waiting {
                    reason: "RunContainerError".into(),
                    message: format!("exec {}: {e}", program.display()),
                };
                c.next_start = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// Resolves program, args (with `$(VAR)` and mount-path rewriting), env, cwd.
    async fn prepare(
        &self,
        spec: &Container,
    ) -> Result<(PathBuf, Vec<String>, Vec<(String, String)>, PathBuf), (String, Msg)> {
        let image = spec.image.clone().unwrap_or_default();
        let image_bin = self.shared.config.images.resolve(&image);
        let mut env = self
            .container_env(spec)
            .await
            .map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
        // The image's binary directory is on PATH, as an image's would be.
        if let Some(bin) = image_bin {
            let dir = bin
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            let path = match env.iter().find(|(k, _)| k == "PATH") {
                Some((_, p)) if !p.is_empty() => format!("{dir}:{p}"),
                _ => format!("{dir}:/usr/local/bin:/usr/bin:/bin"),
            };
            env.retain(|(k, _)| k != "PATH" && k != "SQUALL_IMAGE_BINARY");
            env.push(("PATH".into(), path));
            env.push(("SQUALL_IMAGE_BINARY".into(), bin.display().to_string()));
        }
        let mounts = self.mounts(spec);
        let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let fix = |s: &str| rewrite_mounts(&expand(s, &vars), &mounts);
        let (program, mut args): (PathBuf, Vec<String>) = match spec.command.as_deref() {
            Some([first, rest @ ..]) => (
                resolve_program(first, image_bin).map_err(|m| ("ErrImagePull".to_string(), m))?,
                rest.iter().map(|a| fix(a)).collect(),
            ),
            _ => {
                let bin = image_bin.ok_or_else(|| {
                    (
                        "ErrImagePull".to_string(),
                        format!(
                            "image `{image}` is not in the node agent's image map \
                             (see docs/testenv.md: SQUALL_IMAGE_MAP / SQUALL_IMAGES)"
                        ),
                    )
                })?;
                (bin.to_path_buf(), Vec::new())
            }
        };
        if !program.is_file() {
            return Err((
                "ErrImagePull".into(),
                format!(
                    "image `{image}` maps to {}, which does not exist (build it first, e.g. `cargo build --workspace --bins`)",
                    program.display()
                ),
            ));
        }
        args.extend(spec.args.iter().flatten().map(|a| fix(a)));
        let default_cwd = self.dir.join("containers").join(&spec.name);
        let _ = std::fs::create_dir_all(&default_cwd);
        let cwd = spec
            .working_dir
            .as_deref()
            .map(|w| PathBuf::from(rewrite_mounts(w, &mounts)))
            .filter(|p| p.is_dir())
            .unwrap_or(default_cwd);
        Ok((program, args, env, cwd))
    }

    /// (mountPath, local path) pairs of a container, longest mountPath first.
    fn mounts(&self, spec: &Container) -> Vec<(String, PathBuf)> {
        let Some(setup) = &self.setup else {
            return Vec::new();
        };
        let mut m: Vec<(String, PathBuf)> = spec
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|vm| {
                let base = setup.volumes.get(&vm.name)?;
                let local = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    Some(sp) => base.join(sp),
                    None => base.clone(),
                };
                Some((vm.mount_path.trim_end_matches('/').to_string(), local))
            })
            .collect();
        m.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        m
    }

    async fn container_env(&self, spec: &Container) -> Result<Vec<(String, String)>, Msg> {
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        };
        for name in &self.shared.config.inherit_env {
            if let Ok(v) = std::env::var(name) {
                set(&mut env, name.clone(), v);
            }
        }
        set(&mut env, "HOSTNAME".into(), self.name.clone());
        if let Some(port) = self.shared.server_url.rsplit(':').next() {
            set(
                &mut env,
                "KUBERNETES_SERVICE_HOST".into(),
                "127.0.0.1".into(),
            );
            set(&mut env, "KUBERNETES_SERVICE_PORT".into(), port.to_string());
        }
        if let Some(kc) = self.setup.as_ref().and_then(|s| s.kubeconfig.as_ref()) {
            set(&mut env, "KUBECONFIG".into(), kc.display().to_string());
        }
        set(
            &mut env,
            "SQUALL_POD_DIR".into(),
            self.dir.display().to_string(),
        );
        for (mount_path, local) in self.mounts(spec) {
            let vol = spec
                .volume_mounts
                .iter()
                .flatten()
                .find(|vm| vm.mount_path.trim_end_matches('/') == mount_path)
                .map(|vm| vm.name.clone())
                .unwrap_or_default();
            set(
                &mut env,
                format!("SQUALL_MOUNT_{}", env_name(&vol)),
                local.display().to_string(),
            );
        }
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match self.get_configmap(&r.name).await? {
                    Some(cm) => {
                        for (k, v) in cm.data.unwrap_or_default() {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("configmap {} not found", r.name)),
                }
            }
            if let Some(r) = &from.secret_ref {
                match self.get_secret(&r.name).await? {
                    Some(s) => {
                        for (k, v) in s.data.unwrap_or_default() {
                            set(&mut env, format!("{prefix}{k}"), bytes_str(&v));
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("secret {} not found", r.name)),
                }
            }
        }
        for e in spec.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                let vars: HashMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                rewrite_mounts(&expand(v, &vars), &self.mounts(spec))
            } else if let Some(src) = &e.value_from {
                if let Some(f) = &src.field_ref {
                    self.field(f)?
                } else if let Some(r) = &src.config_map_key_ref {
                    match self.get_configmap(&r.name).await? {
                        Some(cm) => match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => v,
                            None if r.optional == Some(true) => continue,
                            None => {
                                return Err(format!("key {} not in configmap {}", r.key, r.name));
                            }
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(format!("configmap {} not found", r.name)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    match self.get_secret(&r.name).await? {
                        Some(s) => match s.data.and_then(|d| d.get(&r.key).map(bytes_str)) {
                            Some(v) => v,
                            None if r.optional == Some(true) => continue,
                            None => return Err(format!("key {} not in secret {}", r.key, r.name)),
                        },
                        None if r.optional == Some(true) => continue,
                        None => return Err(format!("secret {} not found", r.name)),
                    }
                } else if let Some(r) = &src.resource_field_ref {
                    resource_value(spec, &r.resource)
                } else {
                    return Err(format!("env {}: unsupported valueFrom", e.name));
                }
            } else {
                String::new()
            };
            set(&mut env, e.name.clone(), value);
        }
        Ok(env)
    }

    fn field(&self, f: &ObjectFieldSelector) -> Result<String, Msg> {
        let meta = &self.pod.metadata;
        let path = f.field_path.as_str();
        let label = |m: &Option<BTreeMap<String, String>>, prefix: &str| {
            let k = path
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix("']"))
                .unwrap_or_default();
            m.as_ref()
                .and_then(|m| m.get(k).cloned())
                .unwrap_or_default()
        };
        Ok(match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.ns.clone(),
            "metadata.uid" => self.uid.clone(),
            "status.podIP" => self.ip.clone(),
            "status.podIPs" => self.ip.clone(),
            "status.hostIP" | "status.hostIPs" => "127.0.0.1".into(),
            "spec.nodeName" => self.node.clone(),
            "spec.serviceAccountName" => self.spec.service_account_name.clone().unwrap_or_default(),
            p if p.starts_with("metadata.labels['") => label(&meta.labels, "metadata.labels['"),
            p if p.starts_with("metadata.annotations['") => {
                label(&meta.annotations, "metadata.annotations['")
            }
            "metadata.labels" => fmt_map(&meta.labels),
            "metadata.annotations" => fmt_map(&meta.annotations),
            other => return Err(format!("unsupported fieldRef {other}")),
        })
    }

    async fn get_configmap(&self, name: &str) -> Result<Option<ConfigMap>, Msg> {
        let api: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &self.ns);
        api.get_opt(name)
            .await
            .map_err(|e| format!("get configmap {name}: {e}"))
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, Msg> {
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &self.ns);
        api.get_opt(name)
            .await
            .map_err(|e| format!("get secret {name}: {e}"))
    }

    // ------------------------------------------------------------ setup

    async fn do_setup(&mut self) -> Result<Setup, Msg> {
        let mut volumes = HashMap::new();
        let vol_dir = self.dir.join("volumes");
        let mut token_cache: HashMap<Option<String>, String> = HashMap::new();
        // API credentials first (projected volumes reuse the token).
        let sa_name = self
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut kubeconfig = None;
        if self.spec.automount_service_account_token != Some(false) {
            let sas: Api<ServiceAccount> = Api::namespaced(self.shared.client.clone(), &self.ns);
            let sa = sas
                .get_opt(&sa_name)
                .await
                .map_err(|e| format!("get serviceaccount {sa_name}: {e}"))?;
            if let Some(sa) = sa
                && sa.automount_service_account_token != Some(false)
            {
                let token = self.token(&sa_name, None, &mut token_cache).await?;
                let sa_dir = self.dir.join("serviceaccount");
                write_file(&sa_dir.join("token"), token.as_bytes())?;
                write_file(&sa_dir.join("namespace"), self.ns.as_bytes())?;
                let ca =
                    std::fs::read(&self.shared.ca_cert).map_err(|e| format!("read ca: {e}"))?;
                write_file(&sa_dir.join("ca.crt"), &ca)?;
                let kc = self.dir.join("kubeconfig");
                write_kubeconfig(
                    &kc,
                    &self.shared.server_url,
                    &self.shared.ca_cert,
                    KubeconfigUser::Token(&token),
                    Some(&self.ns),
                )
                .map_err(|e| e.to_string())?;
                kubeconfig = Some(kc);
            }
        }
        for v in self.spec.volumes.clone().iter().flatten() {
            let dir = vol_dir.join(&v.name);
            if v.empty_dir.is_some() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("emptyDir {}: {e}", v.name))?;
            } else if let Some(cm) = &v.config_map {
                std::fs::create_dir_all(&dir).map_err(|e| format!("configMap {}: {e}", v.name))?;
                self.write_configmap(&dir, &cm.name, cm.items.as_deref(), cm.optional)
                    .await?;
            } else if let Some(s) = &v.secret {
                std::fs::create_dir_all(&dir).map_err(|e| format!("secret {}: {e}", v.name))?;
                let name = s.secret_name.clone().unwrap_or_default();
                self.write_secret(&dir, &name, s.items.as_deref(), s.optional)
                    .await?;
            } else if let Some(p) = &v.projected {
                std::fs::create_dir_all(&dir).map_err(|e| format!("projected {}: {e}", v.name))?;
                for src in p.sources.iter().flatten() {
                    if let Some(t) = &src.service_account_token {
                        let token = self
                            .token(&sa_name, t.audience.clone(), &mut token_cache)
                            .await?;
                        write_file(&dir.join(&t.path), token.as_bytes())?;
                    }
                    if let Some(cm) = &src.config_map {
                        self.write_configmap(&dir, &cm.name, cm.items.as_deref(), cm.optional)
                            .await?;
                    }
                    if let Some(s) = &src.secret {
                        self.write_secret(&dir, &s.name, s.items.as_deref(), s.optional)
                            .await?;
                    }
                    if let Some(d) = &src.downward_api {
                        for item in d.items.iter().flatten() {
                            if let Some(f) = &item.field_ref {
                                write_file(&dir.join(&item.path), self.field(f)?.as_bytes())?;
                            }
                        }
                    }
                }
            } else if let Some(d) = &v.downward_api {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("downwardAPI {}: {e}", v.name))?;
                for item in d.items.iter().flatten() {
                    if let Some(f) = &item.field_ref {
                        write_file(&dir.join(&item.path), self.field(f)?.as_bytes())?;
                    }
                }
            } else if let Some(h) = &v.host_path {
                volumes.insert(v.name.clone(), PathBuf::from(&h.path));
                continue;
            } else {
                return Err(format!(
                    "volume {}: unsupported type (emptyDir, configMap, secret, projected, downwardAPI, hostPath are)",
                    v.name
                ));
            }
            volumes.insert(v.name.clone(), dir);
        }
        Ok(Setup {
            volumes,
            kubeconfig,
        })
    }

    async fn token(
        &self,
        sa: &str,
        audience: Option<String>,
        cache: &mut HashMap<Option<String>, String>,
    ) -> Result<String, Msg> {
        if let Some(t) = cache.get(&audience) {
            return Ok(t.clone());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.iter().cloned().collect(),
                expiration_seconds: Some(7 * 24 * 3600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.name.clone()),
                    uid: Some(self.uid.clone()),
                }),
            },
            ..Default::default()
        };
        let resp = api
            .create_token_request(sa, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("TokenRequest for serviceaccount {sa}: {e}"))?;
        let token = resp
            .status
            .map(|s| s.token)
            .ok_or_else(|| format!("TokenRequest for serviceaccount {sa}: no token"))?;
        cache.insert(audience, token.clone());
        Ok(token)
    }

    async fn write_configmap(
        &self,
        dir: &Path,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
    ) -> Result<(), Msg> {
        let Some(cm) = self.get_configmap(name).await? else {
            return if optional == Some(true) {
                Ok(())
            } else {
                Err(format!("configmap {name} not found"))
            };
        };
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            data.insert(k, v.0);
        }
        write_items(dir, &data, items, &format!("configmap {name}"))
    }

    async fn write_secret(
        &self,
        dir: &Path,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
    ) -> Result<(), Msg> {
        let Some(s) = self.get_secret(name).await? else {
            return if optional == Some(true) {
                Ok(())
            } else {
                Err(format!("secret {name} not found"))
            };
        };
        let data: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        write_items(dir, &data, items, &format!("secret {name}"))
    }

    // ------------------------------------------------------------ probes

    async fn probe(&mut self, init: bool, i: usize) {
        let ip = self.ip.clone();
        let images = self.shared.config.images.clone();
        let shared = self.shared.clone();
        let now = Instant::now();
        let c = self.ctr(init, i);
        if let (Some(p), Some(next)) = (c.spec.readiness_probe.clone(), c.readiness.next)
            && now >= next
        {
            let ok = run_probe(&p, &ip, &c.spec, &c.env, &images).await;
            apply_result(&mut c.readiness, &p, ok);
            if ok && c.readiness.successes >= p.success_threshold.unwrap_or(1).max(1) {
                c.ready = true;
            } else if !ok && c.readiness.failures >= p.failure_threshold.unwrap_or(3).max(1) {
                c.ready = false;
            }
        }
        if let (Some(p), Some(next)) = (c.spec.liveness_probe.clone(), c.liveness.next)
            && now >= next
        {
            let ok = run_probe(&p, &ip, &c.spec, &c.env, &images).await;
            apply_result(&mut c.liveness, &p, ok);
            if !ok && c.liveness.failures >= p.failure_threshold.unwrap_or(3).max(1) {
                let key = c.pkey.clone();
                c.liveness.next = None;
                if let Some(p) = shared.procs().get(&key) {
                    let _ = process::signal_group(p.child.id(), Signal::SIGKILL);
                }
            }
        }
    }

    // ------------------------------------------------------------ deletion

    fn kill_all(&mut self, grace: Duration) {
        let keys: Vec<ProcKey> = self
            .inits
            .iter()
            .chain(self.ctrs.iter())
            .map(|c| c.pkey.clone())
            .collect();
        let mut taken = Vec::new();
        {
            let mut procs = self.shared.procs();
            for k in &keys {
                if let Some(p) = procs.remove(k) {
                    taken.push(p);
                }
            }
        }
        for p in &taken {
            let _ = process::signal_group(p.child.id(), Signal::SIGTERM);
        }
        for mut p in taken {
            process::terminate(&mut p.child, grace);
        }
    }

    async fn delete_gracefully(&mut self, rx: &mut watch::Receiver<Option<Pod>>) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self.spec.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        let deadline = Instant::now() + Duration::from_secs(grace);
        let keys: Vec<ProcKey> = self
            .inits
            .iter()
            .chain(self.ctrs.iter())
            .map(|c| c.pkey.clone())
            .collect();
        {
            let procs = self.shared.procs();
            for k in &keys {
                if let Some(p) = procs.get(k) {
                    let _ = process::signal_group(p.child.id(), Signal::SIGTERM);
                }
            }
        }
        loop {
            let all_exited = {
                let mut procs = self.shared.procs();
                keys.iter().all(|k| {
                    procs
                        .get_mut(k)
                        .map(|p| !matches!(p.child.try_wait(), Ok(None)))
                        .unwrap_or(true)
                })
            };
            if all_exited || Instant::now() >= deadline || rx.borrow().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_all(Duration::ZERO);
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!("finish deletion of pod {}/{}: {e}", self.ns, self.name),
        }
    }

    // ------------------------------------------------------------ status

    async fn report(&mut self) -> Result<(), kube::Error> {
        let status = self.status();
        let value = serde_json::to_value(&status).unwrap_or_default();
        if self.last_report.as_ref() == Some(&value) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.ns);
        let patch = serde_json::json!({ "status": value });
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.last_report = Some(value);
        Ok(())
    }

    fn status(&self) -> PodStatus {
        let now = Time(Timestamp::now());
        let inits_ok = self
            .inits
            .iter()
            .all(|c| matches!(&c.state, CState::Terminated(t) if t.exit_code == 0));
        let any_init_failed = self
            .inits
            .iter()
            .any(|c| c.done && matches!(&c.state, CState::Terminated(t) if t.exit_code != 0));
        let all_done = !self.ctrs.is_empty() && self.ctrs.iter().all(|c| c.done);
        let all_ok = self
            .ctrs
            .iter()
            .all(|c| matches!(&c.state, CState::Terminated(t) if t.exit_code == 0));
        let any_started = self.ctrs.iter().any(|c| c.started_once);
        let phase = if any_init_failed || (all_done && !all_ok) {
            "Failed"
        } else if all_done {
            "Succeeded"
        } else if any_started {
            "Running"
        } else {
            "Pending"
        };
        let ctrs_ready = !self.ctrs.is_empty()
            && self
                .ctrs
                .iter()
                .all(|c| c.ready && matches!(c.state, CState::Running { .. }));
        let cond = |t: &str, ok: bool| PodCondition {
            type_: t.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            last_transition_time: Some(self.start_time.clone()),
            ..Default::default()
        };
        // Transition times are kept stable so an unchanged status is not re-sent.
        let _ = now;
        let conditions = vec![
            cond("PodScheduled", true),
            cond("Initialized", inits_ok),
            cond("ContainersReady", ctrs_ready),
            cond("Ready", ctrs_ready),
        ];
        let mut status = PodStatus {
            phase: Some(phase.to_string()),
            conditions: Some(conditions),
            host_ip: Some("127.0.0.1".into()),
            host_ips: Some(vec![HostIP {
                ip: "127.0.0.1".into(),
            }]),
            pod_ip: Some(self.ip.clone()),
            pod_ips: Some(vec![PodIP {
                ip: self.ip.clone(),
            }]),
            start_time: Some(self.start_time.clone()),
            container_statuses: Some(self.ctrs.iter().map(container_status).collect()),
            ..Default::default()
        };
        if !self.inits.is_empty() {
            status.init_container_statuses =
                Some(self.inits.iter().map(container_status).collect());
        }
        if let Some(e) = &self.setup_error {
            status.message = Some(e.clone());
            status.reason = Some("ContainerCreating".into());
        }
        status
    }
}

fn container_status(c: &Ctr) -> ContainerStatus {
    let state = match &c.state {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        CState::Running { started } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started.clone()),
            }),
            ..Default::default()
        },
        CState::Terminated(t) => ContainerState {
            terminated: Some(t.clone()),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: c.spec.name.clone(),
        image: c.spec.image.clone().unwrap_or_default(),
        image_id: format!(
            "squall-testenv://{}",
            c.spec.image.clone().unwrap_or_default()
        ),
        container_id: c.started_once.then(|| {
            format!(
                "squall-testenv://{}_{}_{}_{}",
                c.key.namespace, c.key.pod, c.key.container, c.restart_count
            )
        }),
        ready: c.ready && matches!(c.state, CState::Running { .. }),
        started: Some(matches!(c.state, CState::Running { .. })),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: c.last_terminated.clone().map(|t| ContainerState {
            terminated: Some(t),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn on_exit(c: &mut Ctr, st: ExitStatus, policy: &str, bi: Duration, bm: Duration) {
    let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
    let started = match &c.state {
        CState::Running { started } => Some(started.clone()),
        _ => None,
    };
    let term = ContainerStateTerminated {
        exit_code: code,
        signal: st.signal(),
        reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
        started_at: started,
        finished_at: Some(Time(Timestamp::now())),
        container_id: Some(format!(
            "squall-testenv://{}_{}_{}_{}",
            c.key.namespace, c.key.pod, c.key.container, c.restart_count
        )),
        message: None,
    };
    c.ready = false;
    let restart = match policy {
        "Always" => true,
        "OnFailure" => code != 0,
        _ => false,
    };
    if restart {
        if c.run_started.elapsed() > Duration::from_secs(60) {
            c.backoff = bi;
        }
        let delay = c.backoff;
        c.backoff = (c.backoff * 2).min(bm);
        c.next_start = Instant::now() + delay;
        c.last_terminated = Some(term);
        c.state = CState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!("back-off {delay:?} restarting failed container"),
        };
    } else {
        c.done = true;
        c.state = CState::Terminated(term);
    }
}

fn apply_result(s: &mut ProbeState, p: &Probe, ok: bool) {
    if ok {
        s.successes += 1;
        s.failures = 0;
    } else {
        s.failures += 1;
        s.successes = 0;
    }
    s.next =
        Some(Instant::now() + Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64));
}

async fn run_probe(
    p: &Probe,
    ip: &str,
    spec: &Container,
    env: &[(String, String)],
    images: &super::ImageMap,
) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let port_of = |port: &IntOrString| -> Option<u16> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => spec
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    if let Some(h) = &p.http_get {
        let host = h.host.clone().unwrap_or_else(|| ip.to_string());
        let (Ok(addr), Some(port)) = (host.parse::<IpAddr>(), port_of(&h.port)) else {
            return false;
        };
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            // No TLS client here: an accepted connection counts.
            return tokio::time::timeout(timeout, tokio::net::TcpStream::connect((addr, port)))
                .await
                .is_ok_and(|r| r.is_ok());
        }
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|hh| (hh.name.clone(), hh.value.clone()))
            .collect();
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        return matches!(
            crate::http::get(SocketAddr::new(addr, port), &host, &path, &headers, timeout).await,
            Ok((code, _)) if (200..400).contains(&code)
        );
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| ip.to_string());
        let (Ok(addr), Some(port)) = (host.parse::<IpAddr>(), port_of(&t.port)) else {
            return false;
        };
        return tokio::time::timeout(timeout, tokio::net::TcpStream::connect((addr, port)))
            .await
            .is_ok_and(|r| r.is_ok());
    }
    if let Some(g) = &p.grpc {
        // No gRPC health client: an accepted connection counts.
        let Ok(port) = u16::try_from(g.port) else {
            return false;
        };
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return false;
        };
        return tokio::time::timeout(timeout, tokio::net::TcpStream::connect((addr, port)))
            .await
            .is_ok_and(|r| r.is_ok());
    }
    if let Some(e) = &p.exec {
        let Some([first, rest @ ..]) = e.command.as_deref() else {
            return false;
        };
        let image = spec.image.clone().unwrap_or_default();
        let Ok(program) = resolve_program(first, images.resolve(&image)) else {
            return false;
        };
        let mut cmd = Command::new(program);
        cmd.args(rest)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(mut child) = process::spawn(cmd) else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st.success(),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    process::terminate(&mut child, Duration::ZERO);
                    return false;
                }
            }
        }
    }
    true
}

// ------------------------------------------------------------ helpers

/// The binary for a container `command[0]`: the image's binary when the
/// names match, a sibling of it, an existing absolute path, or a PATH lookup.
fn resolve_program(cmd0: &str, image_bin: Option<&Path>) -> Result<PathBuf, Msg> {
    let base = Path::new(cmd0)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(bin) = image_bin {
        if bin.file_name().map(|f| f.to_string_lossy()) == Some(base.as_str().into()) {
            return Ok(bin.to_path_buf());
        }
        if let Some(sib) = bin.parent().map(|d| d.join(&base))
            && sib.is_file()
        {
            return Ok(sib);
        }
    }
    let p = Path::new(cmd0);
    if p.is_absolute() && p.is_file() {
        return Ok(p.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join(&base);
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    match image_bin {
        // An entrypoint-style command we cannot place: run the image binary.
        Some(bin) if cmd0.is_empty() => Ok(bin.to_path_buf()),
        _ => Err(format!(
            "command `{cmd0}`: not the image's binary, not next to it, not on this machine"
        )),
    }
}

/// Kubernetes `$(VAR)` expansion; `$$` escapes; unknown references stay.
fn expand(s: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces a leading mountPath (also after `--flag=`) with its local dir.
fn rewrite_mounts(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let one = |v: &str| -> Option<String> {
        for (mp, local) in mounts {
            if mp.is_empty() {
                continue;
            }
            if v == mp {
                return Some(local.display().to_string());
            }
            if let Some(rest) = v.strip_prefix(mp.as_str())
                && rest.starts_with('/')
            {
                return Some(format!("{}{rest}", local.display()));
            }
        }
        None
    };
    if let Some(r) = one(s) {
        return r;
    }
    if let Some((flag, val)) = s.split_once('=')
        && let Some(r) = one(val)
    {
        return format!("{flag}={r}");
    }
    s.to_string()
}

fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn bytes_str(b: &ByteString) -> String {
    String::from_utf8_lossy(&b.0).into_owned()
}

fn fmt_map(m: &Option<BTreeMap<String, String>>) -> String {
    m.iter()
        .flatten()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn resource_value(spec: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let r = spec.resources.as_ref();
    let q = match kind {
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => r.and_then(|r| r.limits.as_ref()),
    }
    .and_then(|m| m.get(name))
    .map(|q| q.0.clone());
    q.unwrap_or_else(|| "0".into())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), Msg> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    std::fs::write(path, data).map_err(|e| format!("write {}: {e}", path.display()))
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    what: &str,
) -> Result<(), Msg> {
    match items {
        Some(items) => {
            for it in items {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| format!("{what}: no key {}", it.key))?;
                write_file(&dir.join(&it.path), v)?;
            }
        }
        None => {
            for (k, v) in data {
                write_file(&dir.join(k), v)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_vars() {
        let vars: HashMap<&str, &str> = [("A", "1"), ("POD_IP", "127.1.0.1")].into_iter().collect();
        assert_eq!(expand("$(POD_IP):80", &vars), "127.1.0.1:80");
        assert_eq!(expand("$$(A) $(B) $(A)", &vars), "$(A) $(B) 1");
        assert_eq!(expand("$x", &vars), "$x");
    }

    #[test]
    fn mount_rewrite() {
        let m = vec![
            (
                "/etc/squall/conf".to_string(),
                PathBuf::from("/tmp/p/v/conf"),
            ),
            ("/etc".to_string(), PathBuf::from("/tmp/p/v/etc")),
        ];
        assert_eq!(
            rewrite_mounts("/etc/squall/conf/a.yaml", &m),
            "/tmp/p/v/conf/a.yaml"
        );
        assert_eq!(
            rewrite_mounts("--config=/etc/squall/conf", &m),
            "--config=/tmp/p/v/conf"
        );
        assert_eq!(rewrite_mounts("/etcetera", &m), "/etcetera");
        assert_eq!(rewrite_mounts("/etc/x", &m), "/tmp/p/v/etc/x");
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("config-vol.1"), "CONFIG_VOL_1");
    }
}
