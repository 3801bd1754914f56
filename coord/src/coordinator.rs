//! [`Coordinator`]: the part of etcd Squall uses, as one trait.

use std::time::Duration;

use tokio::sync::mpsc;

/// A lease id; keys put under a lease vanish when it expires.
pub type LeaseId = i64;

/// Why a coordination call failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd: {op} {key}: {source}")]
    Etcd {
        op: &'static str,
        key: String,
        source: etcd_client::Error,
    },
    #[error("etcd: {op} {key} did not answer within {after:?}")]
    Timeout {
        op: &'static str,
        key: String,
        after: Duration,
    },
    #[error("etcd: cannot connect to {endpoints:?}: {reason}")]
    Connect {
        endpoints: Vec<String>,
        reason: String,
    },
    #[error("etcd TLS: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    /// A fenced write (see [`crate::Fence`]) found that this process no longer
    /// holds the leadership it was fenced with: another replica may be acting.
    #[error("etcd: {op} {key} refused: this replica no longer leads")]
    Fenced { op: &'static str, key: String },
    #[error("lease {0} has expired")]
    LeaseExpired(LeaseId),
    #[error("record at {key} is not valid: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the watch on {0} ended")]
    WatchClosed(String),
}

/// What a prefix watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The complete state under the prefix: sent first, and again after the watch
    /// had to be re-established (for example after etcd restarted).
    Snapshot(Vec<(String, Vec<u8>)>),
    Put(String, Vec<u8>),
    Delete(String),
}

/// A key-value store with leases and prefix watches: the part of etcd Squall uses.
///
/// Every call is bounded in time (an etcd that does not answer is an error the
/// caller can act on, never a hang), except that a watch lives until its
/// receiver is dropped.
#[async_trait::async_trait]
pub trait Coordinator: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CoordError>;
    /// Every key under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, CoordError>;
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError>;
    async fn delete(&self, key: &str) -> Result<(), CoordError>;
    async fn delete_prefix(&self, prefix: &str) -> Result<(), CoordError>;
    /// A new lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError>;
    /// Refresh a lease; [`CoordError::LeaseExpired`] if it is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError>;
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordError>;
    /// Watch everything under `prefix`: a snapshot first, then changes. The watch
    /// survives outages of the store (it re-syncs with a new snapshot) and ends
    /// only when the receiver is dropped.
    async fn watch_prefix(&self, prefix: &str) -> Result<mpsc::Receiver<WatchEvent>, CoordError>;
}
