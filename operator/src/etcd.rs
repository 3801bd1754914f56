//! The operator's view of etcd: assignments and control records it writes,
//! worker registrations and stats it reads, cleanup, and leader election.
//!
//! Keys and record types come from `squall_api::records`; this module only does I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, GetOptions, Identity, TlsOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use squall_api::records::{
    Assignment, Control, TopologyKeys, WorkerRecord, WorkerStats, topologies_prefix,
};

/// An etcd failure, with the key it concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {op} {key}: {source}")]
    Etcd {
        op: &'static str,
        key: String,
        source: etcd_client::Error,
    },
    #[error("etcd: record at {key} is not valid JSON for its type: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("etcd: cannot connect to {endpoints:?}: {source}")]
    Connect {
        endpoints: Vec<String>,
        source: etcd_client::Error,
    },
    #[error("etcd: {op} timed out after {secs}s")]
    Timeout { op: &'static str, secs: u64 },
    #[error("etcd TLS: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
}

/// PEM files for a TLS connection to etcd.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA bundle that signed etcd's serving certificate.
    pub ca: Option<String>,
    /// Client certificate and key, for etcd's client-certificate auth.
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    fn options(&self) -> Result<TlsOptions, StoreError> {
        let read = |path: &str| {
            std::fs::read(path).map_err(|source| StoreError::TlsFile {
                path: path.to_string(),
                source,
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

/// How long one etcd call may take before the reconcile gives up and retries later.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `endpoints`; `timeout` bounds every request (leave it off for
/// calls that block by design, such as a leader-election campaign).
pub async fn connect_client(
    endpoints: &[String],
    tls: &TlsFiles,
    timeout: Option<Duration>,
) -> Result<Client, StoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(t) = timeout {
        opts = opts.with_timeout(t);
    }
    if !tls.is_empty() {
        opts = opts.with_tls(tls.options()?);
    }
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|source| StoreError::Connect {
            endpoints: endpoints.to_vec(),
            source,
        })
}

/// A cheap, cloneable handle to etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: &TlsFiles,
    ) -> Result<Store, StoreError> {
        let client = connect_client(endpoints, tls, Some(CALL_TIMEOUT)).await?;
        Ok(Store {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn keys(&self, namespace: &str, name: &str) -> TopologyKeys {
        TopologyKeys::new(&self.prefix, namespace, name)
    }

    async fn timed<T>(
        op: &'static str,
        key: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r.map_err(|source| StoreError::Etcd {
                op,
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(StoreError::Timeout {
                op,
                secs: CALL_TIMEOUT.as_secs(),
            }),
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let mut c = self.client.clone();
        let resp = Self::timed("get", key, c.get(key, None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: key.to_string(),
                source,
            })
    }

    async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
            key: key.to_string(),
            source,
        })?;
        let mut c = self.client.clone();
        Self::timed("put", key, c.put(key, bytes, None))
            .await
            .map(|_| ())
    }

    /// Records under a prefix whose key ends in a slot number, by slot. Corrupt ones are skipped with a warning.
    async fn by_slot<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<u32, T>, StoreError> {
        let mut c = self.client.clone();
        let resp = Self::timed(
            "list",
            prefix,
            c.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(slot) = TopologyKeys::slot_of_key(&key) else {
                continue;
            };
            match serde_json::from_slice(kv.value()) {
                Ok(v) => {
                    out.insert(slot, v);
                }
                Err(e) => tracing::warn!(%key, error = %e, "ignoring a corrupt record"),
            }
        }
        Ok(out)
    }

    pub async fn assignment(&self, keys: &TopologyKeys) -> Result<Option<Assignment>, StoreError> {
        self.get_json(&keys.assignment()).await
    }

    pub async fn put_assignment(
        &self,
        keys: &TopologyKeys,
        a: &Assignment,
    ) -> Result<(), StoreError> {
        self.put_json(&keys.assignment(), a).await
    }

    pub async fn control(&self, keys: &TopologyKeys) -> Result<Option<Control>, StoreError> {
        self.get_json(&keys.control()).await
    }

    pub async fn put_control(&self, keys: &TopologyKeys, c: &Control) -> Result<(), StoreError> {
        self.put_json(&keys.control(), c).await
    }

    /// Live worker registrations (their keys vanish with their supervisors' leases).
    pub async fn workers(
        &self,
        keys: &TopologyKeys,
    ) -> Result<BTreeMap<u32, WorkerRecord>, StoreError> {
        self.by_slot(&keys.workers_prefix()).await
    }

    pub async fn stats(
        &self,
        keys: &TopologyKeys,
    ) -> Result<BTreeMap<u32, WorkerStats>, StoreError> {
        self.by_slot(&keys.stats_prefix()).await
    }

    /// Remove every key of a topology.
    pub async fn delete_topology(&self, keys: &TopologyKeys) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let root = keys.root();
        Self::timed(
            "delete",
            root,
            c.delete(root, Some(DeleteOptions::new().with_prefix())),
        )
        .await
        .map(|_| ())
    }

    /// Remove stats records of slots that no longer exist.
    pub async fn delete_stats(&self, keys: &TopologyKeys, slot: u32) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let key = keys.stats(slot);
        Self::timed("delete", &key.clone(), c.delete(key, None))
            .await
            .map(|_| ())
    }

    /// `(namespace, name)` of every topology that has keys in etcd.
    pub async fn topologies(&self) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = topologies_prefix(&self.prefix);
        let mut c = self.client.clone();
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let resp = Self::timed("list", &prefix, c.get(prefix.as_str(), Some(opts))).await?;
        let mut out: Vec<(String, String)> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let mut parts = key.strip_prefix(&prefix)?.splitn(3, '/');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        out.dedup();
        Ok(out)
    }
}
