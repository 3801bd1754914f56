//! [`Coordinator`] in memory: etcd's semantics (leases that expire and take
//! their keys along, prefix watches with a snapshot first) for one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::{CoordError, Coordinator, LeaseId, WatchEvent};

#[derive(Default)]
struct State {
    kv: BTreeMap<String, (Vec<u8>, Option<LeaseId>)>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    next_lease: LeaseId,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchEvent>)>,
}

impl State {
    fn notify(&mut self, key: &str, ev: &WatchEvent) {
        self.watchers
            .retain(|(p, tx)| !key.starts_with(p.as_str()) || tx.send(ev.clone()).is_ok());
    }

    /// Drop expired leases and their keys.
    fn expire(&mut self, now: Instant) {
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(&l, _)| l)
            .collect();
        for l in dead {
            self.revoke(l);
        }
    }

    fn revoke(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
        let keys: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, (_, l))| *l == Some(lease))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.kv.remove(&k);
            self.notify(&k, &WatchEvent::Delete(k.clone()));
        }
    }
}

/// The in-memory twin. Clones share the same store.
#[derive(Clone, Default)]
pub struct MemoryCoordinator {
    state: Arc<Mutex<State>>,
}

impl MemoryCoordinator {
    pub fn new() -> Self {
        let me = MemoryCoordinator::default();
        // Leases expire on a timer, as etcd's do, whether or not anyone calls in.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&me.state);
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let Some(state) = weak.upgrade() else { return };
                    state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .expire(Instant::now());
                }
            });
        }
        me
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.expire(Instant::now());
        s
    }
}

#[async_trait::async_trait]
impl Coordinator for MemoryCoordinator {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CoordError> {
        Ok(self.lock().kv.get(key).map(|(v, _)| v.clone()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, CoordError> {
        let s = self.lock();
        Ok(s.kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        let mut s = self.lock();
        if let Some(l) = lease
            && !s.leases.contains_key(&l)
        {
            return Err(CoordError::LeaseExpired(l));
        }
        s.kv.insert(key.to_string(), (value.clone(), lease));
        s.notify(key, &WatchEvent::Put(key.to_string(), value));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CoordError> {
        let mut s = self.lock();
        if s.kv.remove(key).is_some() {
            s.notify(key, &WatchEvent::Delete(key.to_string()));
        }
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), CoordError> {
        let mut s = self.lock();
        let keys: Vec<String> =
            s.kv.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect();
        for k in keys {
            s.kv.remove(&k);
            s.notify(&k, &WatchEvent::Delete(k.clone()));
        }
        Ok(())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let mut s = self.lock();
        s.next_lease += 1;
        let id = s.next_lease;
        s.leases.insert(id, (ttl, Instant::now() + ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut s = self.lock();
        match s.leases.get_mut(&lease) {
            Some((ttl, until)) => {
                *until = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(CoordError::LeaseExpired(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.lock().revoke(lease);
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<mpsc::Receiver<WatchEvent>, CoordError> {
        let (utx, mut urx) = mpsc::unbounded_channel();
        {
            let mut s = self.lock();
            let snap =
                s.kv.range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect();
            // Snapshot and registration under one lock: no change falls in between.
            let _ = utx.send(WatchEvent::Snapshot(snap));
            s.watchers.push((prefix.to_string(), utx));
        }
        // Same interface as etcd's: a bounded receiver fed by a task.
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(ev) = urx.recv().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
