//! kube-apiserver + kube-controller-manager on top of a private etcd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::bins::binary;
use crate::certs::{self, Pki};
use crate::error::{Error, IoContext, Result};
use crate::etcd::Etcd;
use crate::node::NodeNet;
use crate::node::netns::NODE_IP;
use crate::node::relay::Relay;
use crate::process::{ManagedProcess, free_port};
use crate::tempdir::TempDir;

const APISERVER_TIMEOUT: Duration = Duration::from_secs(90);
const KCM_TIMEOUT: Duration = Duration::from_secs(90);

/// A running control plane: etcd, kube-apiserver (TLS, RBAC, service-account
/// tokens) and kube-controller-manager. Everything is stopped and its
/// temporary directories removed on drop, also when a test panics (then the
/// tails of the component logs are printed to stderr).
pub struct ControlPlane {
    // Field order = drop order.
    controller_manager: ManagedProcess,
    // Held for its listener: the host reaches the API server through it.
    _apiserver_relay: Option<Relay>,
    apiserver: ManagedProcess,
    etcd: Etcd,
    client: kube::Client,
    kube_config: kube::Config,
    server_url: String,
    kubeconfig: PathBuf,
    /// Inside the node's network namespace: the kubeconfig of the node's own
    /// components (the API server at its in-namespace address).
    node_kubeconfig: PathBuf,
    pki: Pki,
    dir: TempDir,
    net: Option<Arc<NodeNet>>,
}

/// The API server's port inside the node's network namespace.
pub(crate) const NODE_APISERVER_PORT: u16 = 6443;

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("kubeconfig", &self.kubeconfig)
            .field("etcd", &self.etcd.client_url())
            .finish()
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager, waits for
    /// `/readyz` and for the `default` service account (the controllers run),
    /// and writes an admin kubeconfig.
    pub async fn start() -> Result<ControlPlane> {
        Self::start_with(None).await
    }

    /// As [`ControlPlane::start`], but inside the node's network namespace
    /// when `net` is given: the API server listens on the node IP (where the
    /// kubelet and pods reach it) and the host reaches it through a relay on
    /// `127.0.0.1`, so [`ControlPlane::server_url`] and the kubeconfig work
    /// from the host as before.
    pub(crate) async fn start_with(net: Option<Arc<NodeNet>>) -> Result<ControlPlane> {
        let etcd = match &net {
            Some(n) => Etcd::start_in(n, "127.0.0.1", 2379).await?,
            None => Etcd::start().await?,
        };
        let mut last = None;
        for _ in 0..3 {
            match Self::start_apiserver(&etcd, net.as_ref()).await {
                Ok(parts) => return Self::finish(etcd, parts, net).await,
                Err(e @ Error::BinaryMissing { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("kube-apiserver did not start".into())))
    }

    async fn start_apiserver(etcd: &Etcd, net: Option<&Arc<NodeNet>>) -> Result<ApiserverParts> {
        let bin = binary("kube-apiserver")?;
        // Fail early, before anything runs, if the controller manager is missing too.
        binary("kube-controller-manager")?;
        let dir = TempDir::new("k8s")?;
        let pki_dir = dir.path().join("pki");
        std::fs::create_dir_all(&pki_dir).ctx(|| format!("mkdir {}", pki_dir.display()))?;
        let node_ip: Ipv4Addr = NODE_IP
            .parse()
            .map_err(|e| Error::Invalid(format!("node IP: {e}")))?;
        let pki = certs::generate(&pki_dir, &[node_ip])?;
        let (port, mut cmd) = match net {
            Some(n) => (NODE_APISERVER_PORT, n.ns.command(bin)),
            None => (free_port()?, Command::new(bin)),
        };
        match net {
            // A real node: the Node authorizer and NodeRestriction admit the
            // kubelet; the `kubernetes` Service points at the node IP.
            Some(_) => cmd
                .arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={NODE_IP}"))
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg(format!(
                    "--kubelet-client-certificate={}",
                    pki.admin_cert.display()
                ))
                .arg(format!("--kubelet-client-key={}", pki.admin_key.display()))
                .arg("--kubelet-preferred-address-types=InternalIP,Hostname"),
            None => cmd
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--authorization-mode=RBAC")
                .arg("--endpoint-reconciler-type=none"),
        };
        cmd.arg(format!("--etcd-servers={}", etcd.inner_url()))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", pki_dir.display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("--v=1")
            .current_dir(dir.path());
        let mut apiserver = ManagedProcess::start(
            "kube-apiserver",
            cmd,
            &dir.path().join("kube-apiserver.log"),
        )?;

        let relay = match net {
            Some(n) => {
                let target: SocketAddr = format!("{NODE_IP}:{NODE_APISERVER_PORT}")
                    .parse()
                    .map_err(|e| Error::Invalid(format!("apiserver address: {e}")))?;
                Some(Relay::start(&n.dialer, 0, target).await?)
            }
            None => None,
        };
        let server_url = match &relay {
            Some(r) => format!("https://{}", r.local_addr()),
            None => format!("https://127.0.0.1:{port}"),
        };
        let node_kubeconfig = dir.path().join("kubeconfig-node");
        write_kubeconfig(
            &node_kubeconfig,
            &format!("https://127.0.0.1:{port}"),
            &pki.ca_cert,
            KubeconfigUser::ClientCert {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
            None,
        )?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server_url,
            &pki.ca_cert,
            KubeconfigUser::ClientCert {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
            None,
        )?;
        let kube_config = config_from_kubeconfig(&kubeconfig).await?;
        let client = kube::Client::try_from(kube_config.clone())?;

        // Wait for /readyz.
        let deadline = Instant::now() + APISERVER_TIMEOUT;
        loop {
            apiserver.check_alive()?;
            let req = http_get("/readyz")?;
            let detail = match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => break,
                Ok(body) => format!("/readyz: {body}"),
                Err(e) => format!("/readyz: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    component: "kube-apiserver".into(),
                    timeout: APISERVER_TIMEOUT,
                    detail: format!("{detail}; log:\n{}", apiserver.log_tail(30)),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(ApiserverParts {
            apiserver,
            relay,
            client,
            kube_config,
            server_url,
            kubeconfig,
            node_kubeconfig,
            pki,
            dir,
        })
    }

    async fn finish(
        etcd: Etcd,
        parts: ApiserverParts,
        net: Option<Arc<NodeNet>>,
    ) -> Result<ControlPlane> {
        let ApiserverParts {
            apiserver,
            relay,
            client,
            kube_config,
            server_url,
            kubeconfig,
            node_kubeconfig,
            pki,
            dir,
        } = parts;
        let bin = binary("kube-controller-manager")?;
        let (mut cmd, kcfg) = match &net {
            Some(n) => (n.ns.command(bin), node_kubeconfig.clone()),
            None => (Command::new(bin), kubeconfig.clone()),
        };
        cmd.arg(format!("--kubeconfig={}", kcfg.display()))
            .arg(format!("--authentication-kubeconfig={}", kcfg.display()))
            .arg(format!("--authorization-kubeconfig={}", kcfg.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                pki.ca_cert.display()
            ))
            .arg(format!(
                "--cluster-signing-key-file={}",
                pki.ca_key.display()
            ))
            .arg(format!(
                "--use-service-account-credentials={}",
                net.is_some()
            ))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--controllers=*")
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=1")
            .current_dir(dir.path());
        let controller_manager = ManagedProcess::start(
            "kube-controller-manager",
            cmd,
            &dir.path().join("kube-controller-manager.log"),
        )?;
        let mut cp = ControlPlane {
            controller_manager,
            _apiserver_relay: relay,
            apiserver,
            etcd,
            client,
            kube_config,
            server_url,
            kubeconfig,
            node_kubeconfig,
            pki,
            dir,
            net,
        };
        // The service-account controller creating `default` shows the
        // controllers run (and pods can be created: admission needs it).
        let deadline = Instant::now() + KCM_TIMEOUT;
        loop {
            cp.controller_manager.check_alive()?;
            cp.apiserver.check_alive()?;
            let sas: Api<ServiceAccount> = Api::namespaced(cp.client.clone(), "default");
            if sas.get_opt("default").await?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    component: "kube-controller-manager".into(),
                    timeout: KCM_TIMEOUT,
                    detail: format!(
                        "no `default` service account yet; log:\n{}",
                        cp.controller_manager.log_tail(30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(cp)
    }

    /// An admin (`system:masters`) client.
    ///
    /// A new client each call, bound to the tokio runtime it is called on
    /// (a kube client's background task lives on the runtime that built it):
    /// so a control plane shared between `#[tokio::test]`s still works. Call
    /// it inside a runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config.clone()).unwrap_or_else(|_| self.client.clone())
    }

    /// The admin client configuration.
    pub fn kube_config(&self) -> kube::Config {
        self.kube_config.clone()
    }

    /// The admin kubeconfig (works with kubectl and helm).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The admin kubeconfig for processes inside the node's network namespace
    /// (the API server at `127.0.0.1:6443` there); the host kubeconfig
    /// otherwise.
    pub fn node_kubeconfig_path(&self) -> &Path {
        if self.net.is_some() {
            &self.node_kubeconfig
        } else {
            &self.kubeconfig
        }
    }

    pub(crate) fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Stops kube-controller-manager now (a node's teardown does this first,
    /// so that no controller recreates the pods being deleted).
    pub(crate) fn stop_controller_manager(&mut self) {
        self.controller_manager.stop();
    }

    /// The cluster CA certificate (PEM file).
    pub fn ca_cert_path(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The etcd behind the apiserver.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The control plane's temporary directory (kubeconfig, pki, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// kube-apiserver's log file.
    pub fn apiserver_log(&self) -> &Path {
        self.apiserver.log_path()
    }

    /// kube-controller-manager's log file.
    pub fn controller_manager_log(&self) -> &Path {
        self.controller_manager.log_path()
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`; add args and run it.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        c
    }

    /// `helm` from the cache, with KUBECONFIG set and helm's cache/config/data
    /// dirs inside this control plane's temporary directory.
    pub fn helm(&self) -> Result<Command> {
        let mut c = Command::new(binary("helm")?);
        let home = self.dir.path().join("helm");
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        Ok(c)
    }

    /// Creates a namespace and waits (up to 30 s) for its `default` service
    /// account, without which pods are rejected.
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        create_namespace(&self.client, name, &[]).await
    }

    /// Whether kube-apiserver and kube-controller-manager still run.
    pub fn check_alive(&mut self) -> Result<()> {
        self.apiserver.check_alive()?;
        self.controller_manager.check_alive()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- squall-testenv: kube-apiserver log (tail) ----\n{}\n---- kube-controller-manager log (tail) ----\n{}\n----",
                self.apiserver.log_tail(12),
                self.controller_manager.log_tail(12)
            );
        }
    }
}

/// Creates namespace `name` with `labels` (one that exists is fine) and
/// waits (up to 30 s) for its `default` service account, without which pods
/// are rejected.
pub(crate) async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<()> {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
        .collect();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}
    }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    while sas.get_opt("default").await?.is_none() {
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                component: format!("service account default in namespace {name}"),
                timeout,
                detail: "not created by kube-controller-manager".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

struct ApiserverParts {
    apiserver: ManagedProcess,
    relay: Option<Relay>,
    client: kube::Client,
    kube_config: kube::Config,
    server_url: String,
    kubeconfig: PathBuf,
    node_kubeconfig: PathBuf,
    pki: Pki,
    dir: TempDir,
}

pub(crate) fn http_get(path: &str) -> Result<http::Request<Vec<u8>>> {
    http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Invalid(format!("request {path}: {e}")))
}

pub(crate) enum KubeconfigUser<'a> {
    ClientCert { cert: &'a Path, key: &'a Path },
}

/// Writes a kubeconfig (as JSON, which is YAML) with one cluster/user/context.
pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: KubeconfigUser<'_>,
    namespace: Option<&str>,
) -> Result<()> {
    let user = match user {
        KubeconfigUser::ClientCert { cert, key } => serde_json::json!({
            "client-certificate": cert, "client-key": key,
        }),
    };
    let cfg = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "squall-testenv", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "squall-testenv", "user": user}],
        "contexts": [{"name": "squall-testenv", "context": {"cluster": "squall-testenv", "user": "squall-testenv", "namespace": namespace.unwrap_or("default")}}],
        "current-context": "squall-testenv",
    });
    let text = serde_json::to_string_pretty(&cfg)?;
    std::fs::write(path, text).ctx(|| format!("write {}", path.display()))
}

/// A client configuration from a kubeconfig file.
pub(crate) async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config> {
    let kc = Kubeconfig::read_from(path)?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
}
