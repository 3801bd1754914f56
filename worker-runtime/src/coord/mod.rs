//! Coordination: where assignments, control, worker registrations and stats live.
//!
//! One trait, [`Coordinator`], with two implementations: [`EtcdCoordinator`] for
//! real clusters and [`MemoryCoordinator`], an in-memory twin with the same
//! semantics (leases that expire, prefix watches) for local runs and tests.
//! [`TopologyStore`] puts the typed records of `squall_api::records` (DESIGN §5)
//! on top. Changes are pushed by watches; nothing polls.

#[doc(hidden)]
pub mod contract;
mod etcd;
mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use squall_api::records::{Assignment, Control, TopologyKeys, WorkerRecord, WorkerStats};
use tokio::sync::mpsc;

pub use etcd::EtcdCoordinator;
pub use memory::MemoryCoordinator;

/// A lease id; keys put under a lease vanish when it expires.
pub type LeaseId = i64;

/// Why a coordination call failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
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
    #[error("etcd TLS: cannot read {path} (from {var}): {source}")]
    TlsFile {
        var: &'static str,
        path: String,
        source: std::io::Error,
    },
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

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CoordError> {
    serde_json::from_slice(bytes).map_err(|source| CoordError::Decode {
        key: key.to_string(),
        source,
    })
}

/// The typed records of one topology.
#[derive(Clone)]
pub struct TopologyStore {
    pub coord: Arc<dyn Coordinator>,
    pub keys: TopologyKeys,
}

impl TopologyStore {
    pub fn new(coord: Arc<dyn Coordinator>, prefix: &str, namespace: &str, name: &str) -> Self {
        TopologyStore {
            coord,
            keys: TopologyKeys::new(prefix, namespace, name),
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, key: String) -> Result<Option<T>, CoordError> {
        match self.coord.get(&key).await? {
            Some(b) => decode(&key, &b).map(Some),
            None => Ok(None),
        }
    }

    async fn put_json<T: Serialize>(
        &self,
        key: String,
        v: &T,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        self.coord.put(&key, serde_json::to_vec(v)?, lease).await
    }

    pub async fn assignment(&self) -> Result<Option<Assignment>, CoordError> {
        self.get_json(self.keys.assignment()).await
    }
    pub async fn put_assignment(&self, a: &Assignment) -> Result<(), CoordError> {
        self.put_json(self.keys.assignment(), a, None).await
    }
    pub async fn control(&self) -> Result<Option<Control>, CoordError> {
        self.get_json(self.keys.control()).await
    }
    pub async fn put_control(&self, c: &Control) -> Result<(), CoordError> {
        self.put_json(self.keys.control(), c, None).await
    }
    pub async fn register_worker(
        &self,
        r: &WorkerRecord,
        lease: LeaseId,
    ) -> Result<(), CoordError> {
        self.put_json(self.keys.worker(r.slot), r, Some(lease))
            .await
    }
    pub async fn workers(&self) -> Result<BTreeMap<u32, WorkerRecord>, CoordError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.coord.list(&self.keys.workers_prefix()).await? {
            if let Some(slot) = TopologyKeys::slot_of_key(&k) {
                out.insert(slot, decode(&k, &v)?);
            }
        }
        Ok(out)
    }
    pub async fn put_stats(
        &self,
        s: &WorkerStats,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        self.put_json(self.keys.stats(s.slot), s, lease).await
    }
    pub async fn stats(&self) -> Result<BTreeMap<u32, WorkerStats>, CoordError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.coord.list(&self.keys.stats_prefix()).await? {
            if let Some(slot) = TopologyKeys::slot_of_key(&k) {
                out.insert(slot, decode(&k, &v)?);
            }
        }
        Ok(out)
    }
    /// Remove every key of the topology.
    pub async fn delete_all(&self) -> Result<(), CoordError> {
        self.coord.delete_prefix(self.keys.root()).await
    }

    /// Watch the registered workers: a map slot → record, updated on every change.
    /// Records that fail to decode are logged and skipped.
    pub async fn watch_workers(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<BTreeMap<u32, WorkerRecord>>, CoordError> {
        let mut rx = self.coord.watch_prefix(&self.keys.workers_prefix()).await?;
        let (tx, out) = tokio::sync::watch::channel(BTreeMap::new());
        tokio::spawn(async move {
            let mut map = BTreeMap::new();
            let apply = |map: &mut BTreeMap<u32, WorkerRecord>, k: &str, v: &[u8]| {
                if let Some(slot) = TopologyKeys::slot_of_key(k) {
                    match decode::<WorkerRecord>(k, v) {
                        Ok(r) => {
                            map.insert(slot, r);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a worker record"),
                    }
                }
            };
            while let Some(ev) = rx.recv().await {
                match ev {
                    WatchEvent::Snapshot(kvs) => {
                        map.clear();
                        for (k, v) in kvs {
                            apply(&mut map, &k, &v);
                        }
                    }
                    WatchEvent::Put(k, v) => apply(&mut map, &k, &v),
                    WatchEvent::Delete(k) => {
                        if let Some(slot) = TopologyKeys::slot_of_key(&k) {
                            map.remove(&slot);
                        }
                    }
                }
                if tx.send(map.clone()).is_err() {
                    break;
                }
            }
        });
        Ok(out)
    }

    /// Watch one key (assignment or control): the latest value, `None` when absent.
    pub async fn watch_key<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: String,
    ) -> Result<tokio::sync::watch::Receiver<Option<T>>, CoordError> {
        let mut rx = self.coord.watch_prefix(&key).await?;
        let (tx, out) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let value = match ev {
                    WatchEvent::Snapshot(kvs) => {
                        kvs.into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
                    }
                    WatchEvent::Put(k, v) if k == key => Some(v),
                    WatchEvent::Delete(k) if k == key => None,
                    _ => continue,
                };
                let value = match value.map(|v| decode::<T>(&key, &v)).transpose() {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a record");
                        continue;
                    }
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Ok(out)
    }
}

/// Connect to etcd (`http://host:port`, comma-separated for several) or, with
/// `memory:`, make a fresh in-memory twin.
pub async fn connect(url: &str) -> Result<Arc<dyn Coordinator>, CoordError> {
    if url == "memory:" {
        return Ok(Arc::new(MemoryCoordinator::new()));
    }
    let endpoints: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    Ok(Arc::new(EtcdCoordinator::connect(&endpoints).await?))
}

#[cfg(test)]
mod tests;
