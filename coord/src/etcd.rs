//! [`Coordinator`] on a real etcd, through `etcd-client`.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use squall_api::invocation::EtcdTlsFiles;
use tokio::sync::mpsc;

use crate::{CoordError, Coordinator, LeaseId, WatchEvent};

/// Longest any single etcd request may take, for every binary: an etcd that
/// does not answer is an error the caller can act on, never a hang. Short
/// enough that a supervisor whose keep-alive failed can retry well within its
/// lease's default 5 s time-to-live.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// etcd through a shared, cheaply cloned client that reconnects by itself.
pub struct EtcdCoordinator {
    client: Client,
    fence: Option<Fence>,
}

/// Proof of leadership that etcd itself checks: the election's key and the
/// revision at which this process created it. A write fenced with it is a
/// transaction that applies only while that key still exists with that
/// revision, so a deposed leader (paused, partitioned, or slow to notice that
/// its lease ended) cannot overwrite what its successor wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub(crate) key: Vec<u8>,
    pub(crate) revision: i64,
}

impl EtcdCoordinator {
    /// Connect to `endpoints`, over TLS when `tls` names any file.
    ///
    /// # Errors
    ///
    /// [`CoordError::Connect`] when no endpoint answers in time,
    /// [`CoordError::TlsFile`] when a TLS file cannot be read.
    pub async fn connect(endpoints: &[String], tls: &EtcdTlsFiles) -> Result<Self, CoordError> {
        Ok(EtcdCoordinator {
            client: connect_client(endpoints, tls, Some(REQUEST_TIMEOUT)).await?,
            fence: None,
        })
    }

    /// The same connection, with every write (put, delete) fenced: refused with
    /// [`CoordError::Fenced`] once `fence`'s leadership has ended. Reads,
    /// watches and leases are not fenced.
    #[must_use]
    pub fn fenced(self, fence: Fence) -> Self {
        EtcdCoordinator {
            fence: Some(fence),
            ..self
        }
    }

    /// Apply `op` on `key`: directly, or, when fenced, in a transaction
    /// conditioned on the fence.
    async fn write(&self, op: &'static str, key: &str, txn_op: TxnOp) -> Result<(), CoordError> {
        let mut c = self.client.clone();
        let Some(fence) = &self.fence else {
            bounded(op, key, c.txn(Txn::new().and_then([txn_op]))).await?;
            return Ok(());
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.revision,
            )])
            .and_then([txn_op]);
        if bounded(op, key, c.txn(txn)).await?.succeeded() {
            Ok(())
        } else {
            Err(CoordError::Fenced {
                op,
                key: key.to_string(),
            })
        }
    }
}

/// A raw client for `endpoints`. `timeout` bounds every request; leave it off
/// only for calls that block by design, such as a leader-election campaign.
pub(crate) async fn connect_client(
    endpoints: &[String],
    tls: &EtcdTlsFiles,
    timeout: Option<Duration>,
) -> Result<Client, CoordError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(t) = timeout {
        opts = opts.with_timeout(t);
    }
    if !tls.is_empty() {
        opts = opts.with_tls(tls_options(tls)?);
    }
    let failed = |reason: String| CoordError::Connect {
        endpoints: endpoints.to_vec(),
        reason,
    };
    tokio::time::timeout(REQUEST_TIMEOUT * 2, Client::connect(endpoints, Some(opts)))
        .await
        .map_err(|_| failed(format!("no answer within {:?}", REQUEST_TIMEOUT * 2)))?
        .map_err(|e| failed(e.to_string()))
}

fn tls_options(tls: &EtcdTlsFiles) -> Result<TlsOptions, CoordError> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| CoordError::TlsFile {
            path: path.to_string(),
            source,
        })
    };
    let mut opts = TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        opts = opts.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        opts = opts.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(opts)
}

/// Run one etcd request under [`REQUEST_TIMEOUT`], naming what it was on failure.
pub(crate) async fn bounded<T>(
    op: &'static str,
    key: &str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|source| CoordError::Etcd {
            op,
            key: key.to_string(),
            source,
        }),
        Err(_) => Err(CoordError::Timeout {
            op,
            key: key.to_string(),
            after: REQUEST_TIMEOUT,
        }),
    }
}

fn key_string(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

#[async_trait::async_trait]
impl Coordinator for EtcdCoordinator {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CoordError> {
        let mut c = self.client.clone();
        let resp = bounded("get", key, c.get(key, None)).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, CoordError> {
        let mut c = self.client.clone();
        let resp = bounded(
            "list",
            prefix,
            c.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| (key_string(kv.key()), kv.value().to_vec()))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), CoordError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.write("put", key, TxnOp::put(key, value, opts)).await
    }

    async fn delete(&self, key: &str) -> Result<(), CoordError> {
        self.write("delete", key, TxnOp::delete(key, None)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), CoordError> {
        let opts = DeleteOptions::new().with_prefix();
        self.write("delete", prefix, TxnOp::delete(prefix, Some(opts)))
            .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let mut c = self.client.clone();
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        Ok(bounded("grant lease", "", c.lease_grant(secs, None))
            .await?
            .id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut c = self.client.clone();
        let fut = async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match bounded("keep lease alive", &lease.to_string(), fut).await? {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(CoordError::LeaseExpired(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut c = self.client.clone();
        bounded("revoke lease", &lease.to_string(), c.lease_revoke(lease)).await?;
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<mpsc::Receiver<WatchEvent>, CoordError> {
        let (tx, rx) = mpsc::channel(256);
        let client = self.client.clone();
        let prefix = prefix.to_string();
        // The first snapshot is taken here so that a caller sees errors at once.
        let first = snapshot(&client, &prefix).await?;
        tokio::spawn(watch_loop(client, prefix, tx, first));
        Ok(rx)
    }
}

async fn snapshot(
    client: &Client,
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>)>, i64), CoordError> {
    let mut c = client.clone();
    let resp = bounded(
        "list",
        prefix,
        c.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let rev = resp.header().map_or(0, |h| h.revision());
    Ok((
        resp.kvs()
            .iter()
            .map(|kv| (key_string(kv.key()), kv.value().to_vec()))
            .collect(),
        rev,
    ))
}

/// Snapshot, then follow changes from the snapshot's revision; on any break
/// (etcd restarted, compaction, network) start over with a new snapshot.
async fn watch_loop(
    client: Client,
    prefix: String,
    tx: mpsc::Sender<WatchEvent>,
    first: (Vec<(String, Vec<u8>)>, i64),
) {
    let mut next = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        if tx.is_closed() {
            return;
        }
        let (kvs, rev) = match next.take() {
            Some(s) => s,
            None => match snapshot(&client, &prefix).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%prefix, error = %e, "watch: cannot re-sync yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                    continue;
                }
            },
        };
        if tx.send(WatchEvent::Snapshot(kvs)).await.is_err() {
            return;
        }
        let mut c = client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let mut stream = match bounded("watch", &prefix, c.watch(prefix.as_str(), Some(opts))).await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%prefix, error = %e, "watch: cannot start");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = tx.closed() => return,
            };
            match msg {
                Ok(Some(resp)) => {
                    backoff = Duration::from_millis(50);
                    if resp.canceled() {
                        tracing::debug!(%prefix, reason = resp.cancel_reason(), "watch canceled; re-syncing");
                        break;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = key_string(kv.key());
                        let e = match ev.event_type() {
                            EventType::Put => WatchEvent::Put(key, kv.value().to_vec()),
                            EventType::Delete => WatchEvent::Delete(key),
                        };
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%prefix, error = %e, "watch broke; re-syncing");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_RETRY_MAX);
    }
}
