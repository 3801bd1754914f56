//! Test environment for Squall (issue 3): a real etcd, a real kube-apiserver +
//! kube-controller-manager control plane, and a node agent that runs pods as
//! local processes. See `docs/testenv.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), squall_testenv::Error> {
//! let etcd = squall_testenv::Etcd::start().await?;          // bare etcd
//! println!("{}", etcd.client_url());
//! let cluster = squall_testenv::TestCluster::start().await?; // control plane + node agent
//! let client = cluster.client();
//! # let _ = client; Ok(()) }
//! ```

mod bins;
mod certs;
mod control_plane;
mod error;
mod etcd;
mod http;
pub mod node_agent;
mod process;
mod tempdir;
mod wait;

pub use bins::{CACHE_KEY, ETCD_VERSION, HELM_VERSION, K8S_VERSION, bin_dir, binary};
pub use control_plane::{ControlPlane, TestCluster};
pub use error::{Error, Result};
pub use etcd::Etcd;
pub use node_agent::{ContainerKey, ContainerLogs, ImageMap, NodeAgent, NodeAgentConfig};
pub use process::ManagedProcess;
pub use tempdir::TempDir;
pub use wait::wait_until;
