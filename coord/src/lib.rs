//! `squall-coord`: what the operator and the engine share *and* that does I/O.
//!
//! `squall-api` holds the contract and does no I/O; the operator must not link
//! the engine. Everything both binaries need that touches the outside world
//! lives here, once:
//!
//! - [`Coordinator`]: the part of etcd Squall uses (keys, leases, prefix watches),
//!   with [`EtcdCoordinator`] for real clusters and [`MemoryCoordinator`], an
//!   in-memory twin with the same semantics, for local runs and unit tests;
//!   [`contract::check`] is the behaviour both must show.
//! - [`Store`] and [`TopologyStore`]: the typed records of `squall_api::records`
//!   on top, with one policy for corrupt records (skipped with a warning and
//!   counted in [`corrupt_records`]).
//! - [`leader`]: leader election for the operator, and the [`Fence`] that
//!   makes a deposed leader's writes fail in etcd itself.
//! - [`admin`]: the `/metrics`, `/healthz`, `/readyz` server every binary runs,
//!   and [`prom`]: the Prometheus text it serves (headers, escaping, histograms).
//! - [`logging`]: one log setup, with a panic hook that logs through `tracing`.
//! - [`ui`]: the web UI's page and the server of its JSON.
//! - [`tls`]: the certificates of the tuple transport's mutual TLS.

pub mod admin;
#[doc(hidden)]
pub mod contract;
mod coordinator;
mod etcd;
pub mod leader;
pub mod logging;
mod memory;
pub mod prom;
mod store;
pub mod tls;
pub mod ui;

pub use coordinator::{CoordError, Coordinator, LeaseId, WatchEvent};
pub use etcd::{EtcdCoordinator, Fence, REQUEST_TIMEOUT};
pub use memory::MemoryCoordinator;
pub use squall_api::invocation::EtcdTlsFiles;
pub use store::{Store, TopologyStore, corrupt_records};

use std::sync::Arc;

/// Connect to etcd (`http://host:port`, comma-separated for several) or, with
/// `memory:`, make a fresh in-memory twin.
///
/// # Errors
///
/// [`CoordError::Connect`] when etcd does not answer within twice
/// [`REQUEST_TIMEOUT`], [`CoordError::TlsFile`] when a TLS file cannot be read.
pub async fn connect(url: &str, tls: &EtcdTlsFiles) -> Result<Arc<dyn Coordinator>, CoordError> {
    if url == "memory:" {
        return Ok(Arc::new(MemoryCoordinator::new()));
    }
    Ok(Arc::new(
        EtcdCoordinator::connect(&endpoints(url), tls).await?,
    ))
}

/// `a, b,c` → `["a", "b", "c"]`.
pub fn endpoints(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests;
