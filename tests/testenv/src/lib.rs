//! Test environment for Squall: a real etcd, a real kube-apiserver +
//! kube-controller-manager control plane, and a real node (containerd, runc,
//! CNI bridge, kubelet, kube-proxy, kube-scheduler, CoreDNS) inside a network
//! namespace of its own. See `docs/testenv.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), squall_testenv::Error> {
//! let etcd = squall_testenv::Etcd::start().await?;            // bare etcd
//! println!("{}", etcd.client_url());
//! let (etcd, tls) = squall_testenv::Etcd::start_tls().await?; // TLS, client certs required
//! println!("{} {}", etcd.client_url(), tls.ca_file.display());
//! let cluster = squall_testenv::TestCluster::shared().await?; // the run's real cluster
//! let ns = cluster.namespace("my-test").await?;               // a namespace of its own
//! # let _ = ns; Ok(()) }
//! ```

mod bins;
pub mod browser;
mod certs;
mod cluster;
mod control_plane;
mod error;
mod etcd;
mod http;
pub use http::get_blocking as http_get;
mod kafka;
pub mod node;
mod process;
mod promcheck;
mod rewrite;
mod tempdir;
mod wait;

pub use bins::{
    CACHE_KEY, COREDNS_VERSION, ETCD_VERSION, HELM_VERSION, K8S_VERSION, KAFKA_VERSION, bin_dir,
    binary, kafka_dir, multilang_dir, promcheck_binary, spout_ledger,
};
pub use cluster::{CLUSTER_ENV, TestCluster};
pub use control_plane::ControlPlane;
pub use error::{Error, Result};
pub use etcd::{Etcd, EtcdTlsMaterial};
pub use kafka::Kafka;
pub use node::{ClusterInfo, RealCluster};
pub use process::ManagedProcess;
pub use promcheck::promcheck;
pub use rewrite::Rewrite;
pub use tempdir::TempDir;
pub use wait::wait_until;

/// Logs to stderr, `RUST_LOG` or `info` for the harness and warnings elsewhere.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,squall_testenv=info,kube_client=off")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
