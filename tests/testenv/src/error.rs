use std::path::PathBuf;
use std::time::Duration;

/// Errors of the test environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A provisioned binary is missing.
    #[error(
        "testenv binary `{name}` not found at {path}: run `make testenv` \
         (or `bash tests/testenv/provision.sh`) first, or point SQUALL_TESTENV_BIN at a directory \
         holding etcd, kube-apiserver, kube-controller-manager and helm"
    )]
    BinaryMissing { name: String, path: PathBuf },
    /// The provisioned Kafka broker is missing.
    #[error(
        "testenv Kafka broker not found at {path}: run `make testenv` \
         (or `bash tests/testenv/provision.sh`) first, or point SQUALL_TESTENV_KAFKA at a directory \
         whose libs/ holds the kafka_2.13 jars and their dependencies"
    )]
    KafkaMissing { path: PathBuf },
    /// Chromium, for the browser tests, is missing.
    #[error(
        "chromium not found at {path}: run `make testenv` (or `bash tests/testenv/provision.sh`), \
         or `apt-get install chromium` (Debian's package installs /usr/bin/chromium)"
    )]
    ChromiumMissing { path: PathBuf },
    /// The provisioned promcheck (tests/testenv/promcheck) is missing.
    #[error(
        "testenv promcheck not found at {path}: run `make testenv` \
         (or `bash tests/testenv/provision.sh`) first, or point SQUALL_PROMCHECK at the binary \
         built from tests/testenv/promcheck"
    )]
    PromcheckMissing { path: PathBuf },
    /// Prometheus' parser or promlint rejected a metrics text.
    #[error("promcheck rejected the metrics text: {0}")]
    MetricsRejected(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A component did not become ready in time.
    #[error("{component} not ready within {timeout:?}: {detail}")]
    NotReady {
        component: String,
        timeout: Duration,
        detail: String,
    },
    /// A component exited while we waited for it.
    #[error("{component} exited unexpectedly ({status}); last log lines:\n{log_tail}")]
    Exited {
        component: String,
        status: String,
        log_tail: String,
    },
    /// Certificate or key generation failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Invalid configuration or input.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
