//! Leader election through etcd's election API, so that several operator
//! replicas are safe: only the leader reconciles.

use std::time::Duration;

use etcd_client::Client;
use squall_api::invocation::EtcdTlsFiles;
use tokio::sync::oneshot;

use crate::etcd::{bounded, connect_client};
use crate::{CoordError, Fence, LeaseId};

/// This process leads until [`Leadership::lost`] returns or it resigns.
pub struct Leadership {
    lost: oneshot::Receiver<()>,
    client: Client,
    lease: LeaseId,
    fence: Fence,
}

impl Leadership {
    /// The fence of this leadership, for [`crate::EtcdCoordinator::fenced`]:
    /// writes made with it fail once this leadership has ended, even if this
    /// process has not noticed yet.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Step down at once (revoke the lease), so that a standby takes over
    /// without waiting for the lease to expire.
    ///
    /// # Errors
    ///
    /// When etcd does not answer; the lease then expires by itself.
    pub async fn resign(mut self) -> Result<(), CoordError> {
        let lease = self.lease;
        bounded(
            "revoke leader lease",
            &lease.to_string(),
            self.client.lease_revoke(lease),
        )
        .await
        .map(|_| ())
    }

    /// Wait until the lease that backs the leadership is gone (etcd unreachable
    /// past its time-to-live, or the lease revoked). Another replica may lead
    /// from then on, so the caller must stop acting at once.
    pub async fn lost(self) {
        // A dropped sender means the keep-alive task ended: lost as well.
        let _ = self.lost.await;
    }
}

/// Block until this process (`me`) leads the election named `key`.
///
/// The lease is kept alive from before the campaign starts, so a standby keeps
/// its place in the queue, and for as long as the returned [`Leadership`] is
/// awaited. `ttl` is how long etcd waits after the last keep-alive before
/// another candidate takes over (at least 2 s).
///
/// # Errors
///
/// When etcd cannot be reached, or refuses the lease or the campaign.
pub async fn campaign(
    endpoints: &[String],
    tls: &EtcdTlsFiles,
    key: &str,
    me: &str,
    ttl: Duration,
) -> Result<Leadership, CoordError> {
    // A campaign blocks until this replica leads, so its client has no request timeout.
    let mut client = connect_client(endpoints, tls, None).await?;
    let etcd = |op: &'static str| {
        let key = key.to_string();
        move |source| CoordError::Etcd { op, key, source }
    };
    let ttl_s = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = client
        .lease_grant(ttl_s, None)
        .await
        .map_err(etcd("grant leader lease"))?
        .id();
    let (mut keeper, mut responses) = client
        .lease_keep_alive(lease)
        .await
        .map_err(etcd("keep leader lease alive"))?;
    let (tx, lost) = oneshot::channel();
    tokio::spawn(async move {
        let period = Duration::from_secs((ttl_s as u64 / 3).max(1));
        loop {
            tokio::time::sleep(period).await;
            let alive = match keeper.keep_alive().await {
                Ok(()) => matches!(responses.message().await, Ok(Some(r)) if r.ttl() > 0),
                Err(_) => false,
            };
            if !alive {
                let _ = tx.send(());
                return;
            }
        }
    });
    tracing::info!(%key, %me, "campaigning for leadership");
    let won = client
        .campaign(key, me, lease)
        .await
        .map_err(etcd("campaign"))?;
    let fence = won
        .leader()
        .map(|l| Fence {
            key: l.key().to_vec(),
            revision: l.rev(),
        })
        .ok_or_else(|| {
            etcd("campaign")(etcd_client::Error::InvalidArgs(
                "etcd answered the campaign without a leader key".into(),
            ))
        })?;
    tracing::info!(%me, "elected leader");
    Ok(Leadership {
        lost,
        client,
        lease,
        fence,
    })
}
