//! Test-only helpers for the `charts/squall` Helm chart.
//!
//! The chart's own tests (`tests/render.rs`, `tests/cluster.rs`) use them, and
//! so can the end-to-end suite: [`test_cluster_values`] gives the values for
//! the shared real cluster, and [`install`] / [`uninstall`] drive `helm`
//! against any [`Cluster`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use squall_chart_tests as chart;
//! let cluster = squall_testenv::TestCluster::shared().await?;
//! let values = chart::test_cluster_values();
//! chart::install(&cluster, "squall", "squall-system", &[&values], &["--wait", "--timeout=120s"])?;
//! // ... kubectl apply a topology, watch it ...
//! chart::uninstall(&cluster, "squall", "squall-system")?;
//! # Ok(()) }
//! ```
//!
//! Every helper runs the cached `helm` (`squall_testenv::binary("helm")`) or
//! the control plane's `kubectl`, and returns its stdout, or an error that
//! carries the command's stderr so a failing test says why.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
pub use squall_testenv::{ControlPlane, TestCluster};

/// What the chart helpers need of a cluster: `kubectl` and `helm` pointed at
/// it. Both the shared real cluster and a bare control plane have them.
pub trait Cluster {
    /// `kubectl --kubeconfig <admin>`.
    fn kubectl(&self) -> Command;
    /// `helm` with KUBECONFIG set and private helm homes.
    fn helm(&self) -> Result<Command>;
}

impl Cluster for ControlPlane {
    fn kubectl(&self) -> Command {
        ControlPlane::kubectl(self)
    }
    fn helm(&self) -> Result<Command> {
        Ok(ControlPlane::helm(self)?)
    }
}

impl Cluster for TestCluster {
    fn kubectl(&self) -> Command {
        TestCluster::kubectl(self)
    }
    fn helm(&self) -> Result<Command> {
        let home = std::env::temp_dir().join(format!("squall-chart-helm-{}", std::process::id()));
        Ok(TestCluster::helm(self, &home)?)
    }
}

/// The release name the docs use (`helm install squall charts/squall`).
pub const RELEASE: &str = "squall";

/// Where the chart mounts the etcd TLS Secret in the operator container.
pub const ETCD_TLS_DIR: &str = "/etc/squall/etcd-tls";

/// Kinds that are not namespaced, among those the chart renders or could.
pub const CLUSTER_SCOPED_KINDS: &[&str] = &[
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "Namespace",
    "PriorityClass",
    "StorageClass",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Testenv(#[from] squall_testenv::Error),
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n--- stderr\n{stderr}\n--- stdout\n{stdout}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("rendered manifest is not YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("rendered manifest is not JSON-compatible: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Missing(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `charts/squall` in the workspace.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts").join("squall")
}

/// The cached `helm`, for commands that need no cluster (`lint`, `template`).
/// Its cache/config/data homes go to a temporary directory so that a test
/// never reads or writes the user's helm repositories.
pub fn helm() -> Result<Command> {
    let mut c = Command::new(squall_testenv::binary("helm")?);
    let home = std::env::temp_dir().join("squall-chart-tests-helm");
    c.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    Ok(c)
}

/// Values files written for one helm call, removed on drop.
struct ValuesFiles {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl ValuesFiles {
    fn write(values: &[&str]) -> Result<ValuesFiles> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "squall-chart-values-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let mut paths = Vec::new();
        for (i, text) in values.iter().enumerate() {
            let path = dir.join(format!("values-{i}.yaml"));
            std::fs::write(&path, text).map_err(|source| Error::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
            paths.push(path);
        }
        Ok(ValuesFiles { dir, paths })
    }

    fn add_to(&self, cmd: &mut Command) {
        for p in &self.paths {
            cmd.arg("--values").arg(p);
        }
    }
}

impl Drop for ValuesFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` (feeding `stdin` if given) and returns its stdout; a non-zero
/// exit is an [`Error::Failed`] with both streams.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String> {
    let command = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    // Feed stdin from a thread so that a child writing a lot before it has
    // read everything cannot deadlock against us.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if let Some(f) = feeder {
        // A child that exits without reading all of stdin is judged by its exit status.
        let _ = f.join();
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            stdout,
            stderr,
        });
    }
    Ok(stdout)
}

/// `helm lint --strict charts/squall` with the given values files; returns
/// helm's report (which has no `[WARNING]` or `[ERROR]` line when it passes).
pub fn lint(values: &[&str]) -> Result<String> {
    let files = ValuesFiles::write(values)?;
    let mut cmd = helm()?;
    cmd.args(["lint", "--strict"]).arg(chart_dir());
    files.add_to(&mut cmd);
    run(cmd, None)
}

/// `helm template <release> charts/squall --namespace <namespace>` with the
/// values files and any extra flags (`--include-crds`, `--set k=v`).
pub fn template(release: &str, namespace: &str, values: &[&str], extra: &[&str]) -> Result<String> {
    let files = ValuesFiles::write(values)?;
    let mut cmd = helm()?;
    cmd.arg("template")
        .arg(release)
        .arg(chart_dir())
        .arg(format!("--namespace={namespace}"));
    files.add_to(&mut cmd);
    cmd.args(extra);
    run(cmd, None)
}

/// `helm install <release> charts/squall --namespace <ns> --create-namespace`
/// against the control plane, with the values files and extra flags (such as
/// `--wait --timeout=90s`). Returns helm's output (which includes NOTES.txt).
pub fn install(
    cp: &impl Cluster,
    release: &str,
    namespace: &str,
    values: &[&str],
    extra: &[&str],
) -> Result<String> {
    let files = ValuesFiles::write(values)?;
    let mut cmd = cp.helm()?;
    cmd.arg("install")
        .arg(release)
        .arg(chart_dir())
        .arg(format!("--namespace={namespace}"))
        .arg("--create-namespace");
    files.add_to(&mut cmd);
    cmd.args(extra);
    run(cmd, None)
}

/// `helm uninstall <release> --namespace <ns> --wait`.
pub fn uninstall(cp: &impl Cluster, release: &str, namespace: &str) -> Result<String> {
    let mut cmd = cp.helm()?;
    cmd.arg("uninstall")
        .arg(release)
        .arg(format!("--namespace={namespace}"))
        .args(["--wait", "--timeout=60s"]);
    run(cmd, None)
}

/// Installs the chart's CRD (`charts/squall/crds/topology.yaml`) with a
/// server-side apply and waits until it is Established, as `helm install`
/// does before rendering the templates.
pub fn apply_crd(cp: &impl Cluster) -> Result<()> {
    let crd = chart_dir().join("crds").join("topology.yaml");
    let mut cmd = cp.kubectl();
    cmd.args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&crd);
    run(cmd, None)?;
    let mut cmd = cp.kubectl();
    cmd.args([
        "wait",
        "--for=condition=Established",
        "crd/topologies.squall.dev",
        "--timeout=30s",
    ]);
    run(cmd, None)?;
    Ok(())
}

/// `kubectl apply --dry-run=server -f -` with `manifests` on stdin: the API
/// server validates and admits every object without storing it.
pub fn dry_run_server(cp: &impl Cluster, manifests: &str) -> Result<String> {
    let mut cmd = cp.kubectl();
    cmd.args(["apply", "--dry-run=server", "-f", "-"]);
    run(cmd, Some(manifests))
}

/// Values for the shared real test cluster: the chart's defaults (bundled
/// etcd as a StatefulSet with a PVC, reached by its Service's DNS name; images
/// from `make images`, already on the node), with debug logs and a short grace
/// period so that uninstalling does not wait long. Pass further values files
/// after this one to override.
pub fn test_cluster_values() -> String {
    "# Values for the squall-testenv real cluster (see squall-chart-tests).\n\
     operator:\n  \
       log:\n    level: \"info,squall_operator=debug\"\n  \
       terminationGracePeriodSeconds: 5\n"
        .to_string()
}

/// `operator.watchNamespace`: an operator of a test's own, which leaves the
/// other tests' namespaces alone on the shared cluster.
pub fn watch_namespace_values(namespace: &str) -> String {
    format!("operator:\n  watchNamespace: \"{namespace}\"\n")
}

/// Values for an external etcd (no bundled StatefulSet).
pub fn external_etcd_values(endpoints: &[&str]) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("etcd:\n  external:\n    endpoints: [{endpoints}]\n")
}

/// Values for an external etcd reached with TLS client certificates from the
/// Secret `secret_name`.
pub fn external_etcd_tls_values(endpoints: &[&str], secret_name: &str) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "etcd:\n  external:\n    endpoints: [{endpoints}]\n    tls:\n      secretName: \"{secret_name}\"\n"
    )
}

/// The objects of a rendered manifest, as JSON values.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub objects: Vec<Value>,
}

impl Manifest {
    /// Parses `helm template` output (multi-document YAML; empty documents
    /// are skipped).
    pub fn parse(text: &str) -> Result<Manifest> {
        use serde::Deserialize as _;
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            objects.push(serde_json::to_value(v)?);
        }
        Ok(Manifest { objects })
    }

    /// Every object of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let kind = kind.to_owned();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.of_kind(kind)
            .find(|o| o["metadata"]["name"] == name)
            .ok_or_else(|| {
                Error::Missing(format!(
                    "no {kind} named {name:?}; rendered: {:?}",
                    self.kinds_and_names()
                ))
            })
    }

    /// `Kind/name` of every object, for messages.
    pub fn kinds_and_names(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// The operator Deployment (the only Deployment the chart renders).
    pub fn operator_deployment(&self) -> Result<&Value> {
        self.of_kind("Deployment")
            .next()
            .ok_or_else(|| Error::Missing("no operator Deployment rendered".into()))
    }

    /// The operator container of the operator Deployment.
    pub fn operator_container(&self) -> Result<&Value> {
        let d = self.operator_deployment()?;
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "operator"))
            .ok_or_else(|| Error::Missing("no container named operator".into()))
    }

    /// The operator container's args.
    pub fn operator_args(&self) -> Result<Vec<String>> {
        Ok(self.operator_container()?["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The value of `--flag=value` among the operator's args.
    pub fn operator_flag(&self, flag: &str) -> Result<Option<String>> {
        let prefix = format!("{flag}=");
        Ok(self
            .operator_args()?
            .into_iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned)))
    }
}
