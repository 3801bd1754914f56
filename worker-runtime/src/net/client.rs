//! The sending end: one long-lived stream from this worker to each peer.
//!
//! Executors hand batches to [`Links`] (the engine's [`RemoteSink`]). A batch is
//! split by lane, encoded on the executor's own thread, and queued on the peer's
//! link; a task per link sends queued batches as the peer grants credits. The
//! link queues are bounded, so a slow or absent peer makes bolts wait and spouts
//! hold back. A link whose peer goes away reconnects with back-off, following
//! the peer's endpoint as registered in etcd.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use squall_api::records::WorkerRecord;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::NetConfig;
use super::codec::{Schema, encode_envelope, is_control};
use super::proto::transfer_client::TransferClient;
use super::proto::{Batch as WireBatch, Frame, Hello, Lane, frame};
use crate::transfer::{Batch, RemoteSink};

/// Registered workers by slot, as watched in etcd.
pub type Peers = watch::Receiver<BTreeMap<u32, WorkerRecord>>;

struct LinkTx {
    data: mpsc::Sender<Bytes>,
    control: mpsc::Sender<Bytes>,
}

/// Counters of the links, for logs and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub batches_sent: AtomicU64,
    pub connects: AtomicU64,
    pub dropped_envelopes: AtomicU64,
    /// Links whose peer accepted the stream and has not ended it since.
    pub up: AtomicU64,
    /// Streams that were up and then broke (the peer died, hung past the
    /// keep-alive, or moved): the trees in flight through that peer are lost.
    pub lost: AtomicU64,
}

/// Counts a link as up for as long as it lives.
struct Up<'a>(&'a AtomicU64);

impl<'a> Up<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Up(n)
    }
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// This worker's links to its peers.
pub struct Links {
    schema: Arc<Schema>,
    links: Vec<Option<LinkTx>>,
    handle: tokio::runtime::Handle,
    closed: AtomicBool,
    stop: watch::Sender<bool>,
    pub stats: Arc<LinkStats>,
}

impl Links {
    /// Start a link to every slot of `0..slots` but `me`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        handle: tokio::runtime::Handle,
        topology: &str,
        me: u32,
        slots: u32,
        plan_version: u64,
        schema: Arc<Schema>,
        peers: Peers,
        cfg: NetConfig,
        tls: Option<ClientTlsConfig>,
    ) -> Arc<Links> {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(LinkStats::default());
        let mut links = Vec::with_capacity(slots as usize);
        for slot in 0..slots {
            if slot == me {
                links.push(None);
                continue;
            }
            let (dtx, drx) = mpsc::channel(cfg.link_queue);
            let (ctx, crx) = mpsc::channel(cfg.link_queue * 2);
            let hello = Hello {
                topology: topology.to_string(),
                from_slot: me,
                to_slot: slot,
                plan_version,
            };
            handle.spawn(run_link(
                slot,
                hello,
                drx,
                crx,
                peers.clone(),
                stop_rx.clone(),
                cfg,
                tls.clone(),
                stats.clone(),
            ));
            links.push(Some(LinkTx {
                data: dtx,
                control: ctx,
            }));
        }
        Arc::new(Links {
            schema,
            links,
            handle,
            closed: AtomicBool::new(false),
            stop,
            stats,
        })
    }

    /// Stop every link; batches still queued are dropped (their trees time out and replay).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
    }

    /// Every peer accepted its stream, so it runs this plan version's
    /// executors: Storm's "worker active once all connections are ready".
    pub fn all_up(&self) -> bool {
        self.stats.up.load(Ordering::Relaxed) as usize == self.links.iter().flatten().count()
    }

    fn encode(&self, batch: &Batch, want_control: bool) -> Bytes {
        let mut out = Vec::with_capacity(batch.len() * 24);
        let mut skipped = 0u64;
        for env in batch.iter().filter(|e| is_control(&e.msg) == want_control) {
            if !encode_envelope(&self.schema, env, &mut out) {
                skipped += 1;
            }
        }
        if skipped > 0 {
            self.stats
                .dropped_envelopes
                .fetch_add(skipped, Ordering::Relaxed);
        }
        Bytes::from(out)
    }

    fn lanes_of(batch: &Batch) -> (bool, bool) {
        let control = batch.iter().filter(|e| is_control(&e.msg)).count();
        (control < batch.len(), control > 0)
    }

    /// Wait for room on `tx`; `None` when the link is closed.
    fn reserve<'a>(&self, tx: &'a mpsc::Sender<Bytes>) -> Option<mpsc::Permit<'a, Bytes>> {
        loop {
            match tx.try_reserve() {
                Ok(p) => return Some(p),
                Err(mpsc::error::TrySendError::Closed(())) => return None,
                Err(mpsc::error::TrySendError::Full(())) => {}
            }
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            // The timer must be created inside the runtime, hence the async block.
            let wait = self.handle.block_on(async {
                tokio::time::timeout(Duration::from_millis(50), tx.reserve()).await
            });
            if let Ok(r) = wait {
                return r.ok();
            }
        }
    }
}

impl RemoteSink for Links {
    fn try_send(&self, slot: u32, batch: Batch) -> Result<(), Batch> {
        let Some(Some(link)) = self.links.get(slot as usize) else {
            self.stats
                .dropped_envelopes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            return Ok(());
        };
        if self.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (data, control) = Self::lanes_of(&batch);
        let pd = if data {
            match link.data.try_reserve() {
                Ok(p) => Some(p),
                Err(mpsc::error::TrySendError::Full(())) => return Err(batch),
                Err(mpsc::error::TrySendError::Closed(())) => return Ok(()),
            }
        } else {
            None
        };
        let pc = if control {
            match link.control.try_reserve() {
                Ok(p) => Some(p),
                Err(mpsc::error::TrySendError::Full(())) => return Err(batch),
                Err(mpsc::error::TrySendError::Closed(())) => return Ok(()),
            }
        } else {
            None
        };
        if let Some(p) = pd {
            p.send(self.encode(&batch, false));
        }
        if let Some(p) = pc {
            p.send(self.encode(&batch, true));
        }
        Ok(())
    }

    fn send(&self, slot: u32, batch: Batch) -> bool {
        let Some(Some(link)) = self.links.get(slot as usize) else {
            return false;
        };
        let (data, control) = Self::lanes_of(&batch);
        if data {
            let Some(p) = self.reserve(&link.data) else {
                return false;
            };
            p.send(self.encode(&batch, false));
        }
        if control {
            let Some(p) = self.reserve(&link.control) else {
                return false;
            };
            p.send(self.encode(&batch, true));
        }
        true
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[allow(clippy::too_many_arguments)]
async fn run_link(
    slot: u32,
    hello: Hello,
    mut data: mpsc::Receiver<Bytes>,
    mut control: mpsc::Receiver<Bytes>,
    mut peers: Peers,
    mut stop: watch::Receiver<bool>,
    cfg: NetConfig,
    tls: Option<ClientTlsConfig>,
    stats: Arc<LinkStats>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let endpoint = peers
            .borrow()
            .get(&slot)
            .map(|r| r.endpoint.clone())
            .filter(|e| !e.is_empty());
        let Some(endpoint) = endpoint else {
            tokio::select! {
                r = peers.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        let started = Instant::now();
        let mut was_up = false;
        let outcome = tokio::select! {
            r = session(&endpoint, slot, &hello, &mut data, &mut control, &mut peers, cfg, tls.as_ref(), &stats, &mut was_up) => r,
            _ = stop.changed() => return,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(2) {
                    backoff = BACKOFF_MIN;
                }
                if was_up {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = slot, %endpoint, error = %e, "tuple link lost");
                } else {
                    tracing::debug!(peer = slot, %endpoint, error = %e, retry_in = ?backoff, "link down");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life. `Ok` only when the queues are closed for good;
/// `was_up` is set once the peer has accepted the stream.
#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &str,
    slot: u32,
    hello: &Hello,
    data: &mut mpsc::Receiver<Bytes>,
    control: &mut mpsc::Receiver<Bytes>,
    peers: &mut Peers,
    cfg: NetConfig,
    tls: Option<&ClientTlsConfig>,
    stats: &LinkStats,
    was_up: &mut bool,
) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep =
        Endpoint::from_shared(format!("{scheme}://{endpoint}")).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.clone())
            .map_err(|e| format!("tls: {e}"))?;
    }
    let ep = ep
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(cfg.window_bytes))
        .initial_connection_window_size(Some(cfg.window_bytes * 2))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
    let channel = ep.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut client = TransferClient::new(channel)
        .max_encoding_message_size(cfg.max_frame_bytes)
        .max_decoding_message_size(cfg.max_frame_bytes);
    let (ftx, frx) = mpsc::channel::<Frame>(4);
    ftx.send(Frame {
        kind: Some(frame::Kind::Hello(hello.clone())),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut credits = client
        .open(ReceiverStream::new(frx))
        .await
        .map_err(|e| format!("open: {e}"))?
        .into_inner();
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let _up = Up::new(&stats.up);
    *was_up = true;
    tracing::info!(peer = slot, %endpoint, "tuple link up");
    let (mut dc, mut cc) = (0u32, 0u32);
    loop {
        tokio::select! {
            biased;
            m = credits.message() => match m {
                Ok(Some(c)) => {
                    if c.lane == Lane::Control as i32 { cc = cc.saturating_add(c.batches) } else { dc = dc.saturating_add(c.batches) }
                }
                Ok(None) => return Err("peer closed the stream".into()),
                Err(s) => return Err(format!("peer ended the stream: {}", s.message())),
            },
            r = peers.changed() => {
                if r.is_err() { return Ok(()) }
                let now = peers.borrow().get(&slot).map(|r| r.endpoint.clone());
                if now.as_deref() != Some(endpoint) {
                    return Err("peer moved to a new endpoint".into());
                }
            }
            p = control.recv(), if cc > 0 => {
                let Some(payload) = p else { return Ok(()) };
                cc -= 1;
                let f = Frame { kind: Some(frame::Kind::Batch(WireBatch { lane: Lane::Control as i32, payload })) };
                ftx.send(f).await.map_err(|_| "stream closed".to_string())?;
                stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            p = data.recv(), if dc > 0 => {
                let Some(payload) = p else { return Ok(()) };
                dc -= 1;
                let f = Frame { kind: Some(frame::Kind::Batch(WireBatch { lane: Lane::Data as i32, payload })) };
                ftx.send(f).await.map_err(|_| "stream closed".to_string())?;
                stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
