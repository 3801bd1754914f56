//! The typed records of `squall_api::records` (DESIGN §5) on a [`Coordinator`].
//!
//! One policy for records that do not decode: a single record the caller asked
//! for by key (an assignment, a control record) is an error, because acting
//! without it would be wrong (a missing assignment would be rewritten as
//! version 1); a record in a list or a watch (one slot's worker registration
//! or stats) is skipped with a warning and counted in [`corrupt_records`], so
//! one bad `stats/<slot>` cannot stall everything that reads the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use squall_api::records::{
    Assignment, Control, TopologyKeys, WorkerRecord, WorkerStats, topologies_prefix,
};

use crate::{CoordError, Coordinator, LeaseId, WatchEvent};

static CORRUPT_RECORDS: AtomicU64 = AtomicU64::new(0);

/// Records skipped because they did not decode, since this process started
/// (exported on every binary's `/metrics`).
pub fn corrupt_records() -> u64 {
    CORRUPT_RECORDS.load(Ordering::Relaxed)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CoordError> {
    serde_json::from_slice(bytes).map_err(|source| CoordError::Decode {
        key: key.to_string(),
        source,
    })
}

/// Decode a record met in a list or a watch; `None` (warned and counted) if it is corrupt.
fn decode_or_skip<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Option<T> {
    match decode(key, bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            CORRUPT_RECORDS.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%key, error = %e, "skipping a corrupt record");
            None
        }
    }
}

/// Every topology under one key prefix: what the operator sees.
#[derive(Clone)]
pub struct Store {
    pub coord: Arc<dyn Coordinator>,
    prefix: String,
}

impl Store {
    pub fn new(coord: Arc<dyn Coordinator>, prefix: &str) -> Self {
        Store {
            coord,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The key prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The records of one topology.
    pub fn topology(&self, namespace: &str, name: &str) -> TopologyStore {
        TopologyStore::new(self.coord.clone(), &self.prefix, namespace, name)
    }

    /// `(namespace, name)` of every topology that has keys, in key order.
    ///
    /// # Errors
    ///
    /// When etcd cannot be listed.
    pub async fn topologies(&self) -> Result<Vec<(String, String)>, CoordError> {
        let prefix = topologies_prefix(&self.prefix);
        let mut out: Vec<(String, String)> = self
            .coord
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|(key, _)| {
                let mut parts = key.strip_prefix(&prefix)?.splitn(3, '/');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        out.dedup();
        Ok(out)
    }
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

    /// Records under `prefix` whose keys end in a slot number, by slot; corrupt ones skipped.
    async fn by_slot<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<u32, T>, CoordError> {
        Ok(self
            .coord
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((TopologyKeys::slot_of_key(&k)?, decode_or_skip(&k, &v)?)))
            .collect())
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
    /// Live worker registrations (their keys vanish with their supervisors' leases).
    pub async fn workers(&self) -> Result<BTreeMap<u32, WorkerRecord>, CoordError> {
        self.by_slot(&self.keys.workers_prefix()).await
    }
    pub async fn put_stats(
        &self,
        s: &WorkerStats,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        self.put_json(self.keys.stats(s.slot), s, lease).await
    }
    pub async fn stats(&self) -> Result<BTreeMap<u32, WorkerStats>, CoordError> {
        self.by_slot(&self.keys.stats_prefix()).await
    }
    /// Remove the stats record of a slot that no longer exists.
    pub async fn delete_stats(&self, slot: u32) -> Result<(), CoordError> {
        self.coord.delete(&self.keys.stats(slot)).await
    }
    /// Remove every key of the topology.
    pub async fn delete_all(&self) -> Result<(), CoordError> {
        self.coord.delete_prefix(self.keys.root()).await
    }

    /// Watch the registered workers: a map slot → record, updated on every change.
    /// Corrupt records are skipped.
    pub async fn watch_workers(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<BTreeMap<u32, WorkerRecord>>, CoordError> {
        let mut rx = self.coord.watch_prefix(&self.keys.workers_prefix()).await?;
        let (tx, out) = tokio::sync::watch::channel(BTreeMap::new());
        tokio::spawn(async move {
            let mut map = BTreeMap::new();
            let apply = |map: &mut BTreeMap<u32, WorkerRecord>, k: &str, v: &[u8]| {
                if let Some(slot) = TopologyKeys::slot_of_key(k)
                    && let Some(r) = decode_or_skip(k, v)
                {
                    map.insert(slot, r);
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

    /// Watch one key (assignment or control): the latest value, `None` when
    /// absent. A corrupt value is skipped: the last good one stays.
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
                let value = match value {
                    Some(v) => match decode_or_skip::<T>(&key, &v) {
                        Some(t) => Some(t),
                        None => continue,
                    },
                    None => None,
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Ok(out)
    }
}
