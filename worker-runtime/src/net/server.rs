//! The receiving end of worker-to-worker streams.
//!
//! Each incoming stream gets one delivery thread per lane. The stream reader
//! never blocks: it only accepts as many batches as it has granted credits for,
//! and hands them to the lane's thread, which decodes them, splits them over the
//! executor queues (waiting while a bolt's queue is full), and then grants the
//! credit back. A slow bolt therefore holds credits, and its senders wait.
//!
//! A stream is accepted only while this worker runs executors for the plan
//! version the sender runs (the hello says which). Before that, and after the
//! plan moves on, the stream is refused or closed and the sender keeps its
//! batches queued and retries: a batch is never decoded against another plan's
//! schema, and never dropped because the executors were not up yet.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::NetConfig;
use super::codec::{Schema, decode};
use super::proto::transfer_server::Transfer;
use super::proto::{Credit, Frame, Lane, frame};
use crate::transfer::{Batch, Dest};
use crate::worker::Inbound;

/// What incoming batches are delivered to: the running worker's queues.
pub struct Target {
    /// The assignment version these executors run.
    pub version: u64,
    pub inbound: Arc<Inbound>,
    pub schema: Arc<Schema>,
}

/// The target if it runs plan `version`.
fn current(slot: &TargetSlot, version: u64) -> Option<Arc<Target>> {
    slot.read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .filter(|t| t.version == version)
}

/// The current target; `None` while no executors run (before the first plan, between versions).
pub type TargetSlot = Arc<RwLock<Option<Arc<Target>>>>;

/// The `Transfer` gRPC service of one worker.
pub struct TransferService {
    pub slot: u32,
    pub topology: String,
    pub target: TargetSlot,
    pub cfg: NetConfig,
    /// (peer slot, plan version) pairs already refused, to log each once.
    pub refused: std::sync::Mutex<std::collections::HashSet<(u32, u64)>>,
}

#[tonic::async_trait]
impl Transfer for TransferService {
    type OpenStream = ReceiverStream<Result<Credit, Status>>;

    async fn open(
        &self,
        request: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let peer = request.remote_addr();
        let mut frames = request.into_inner();
        let first = frames.message().await?;
        let hello = match first.and_then(|f| f.kind) {
            Some(frame::Kind::Hello(h)) => h,
            _ => {
                tracing::error!(?peer, "tuple stream did not start with a hello; closing it");
                return Err(Status::invalid_argument(
                    "a stream must start with a hello frame",
                ));
            }
        };
        if hello.to_slot != self.slot || hello.topology != self.topology {
            tracing::warn!(?peer, to = hello.to_slot, topology = %hello.topology, "stream for another worker; refusing it");
            return Err(Status::failed_precondition(format!(
                "this is slot {} of {}, not slot {} of {}",
                self.slot, self.topology, hello.to_slot, hello.topology
            )));
        }
        if current(&self.target, hello.plan_version).is_none() {
            // Said once per peer and version: the sender retries every second at most.
            let mut said = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if said.insert((hello.from_slot, hello.plan_version)) {
                let running = self
                    .target
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|t| t.version);
                tracing::info!(
                    from = hello.from_slot,
                    version = hello.plan_version,
                    running = ?running,
                    "refusing a tuple stream until this worker runs the sender's plan version"
                );
            }
            return Err(Status::unavailable(format!(
                "slot {} does not run plan version {} (yet)",
                self.slot, hello.plan_version
            )));
        }
        // Credits in flight never exceed what the lanes granted, so this channel never fills.
        let (credits, rx) =
            mpsc::channel(2 * (self.cfg.data_credits + self.cfg.control_credits) as usize + 4);
        let lanes = [
            (Lane::Data, self.cfg.data_credits),
            (Lane::Control, self.cfg.control_credits),
        ];
        let (fault_tx, mut fault_rx) = mpsc::channel::<String>(2);
        let mut senders: Vec<SyncSender<Bytes>> = Vec::new();
        for (lane, n) in lanes {
            let (tx, lane_rx) = sync_channel::<Bytes>(n as usize);
            let target = self.target.clone();
            let version = hello.plan_version;
            let lane_credits = credits.clone();
            let fault = fault_tx.clone();
            let name = format!(
                "recv-{}-{}",
                hello.from_slot,
                if lane == Lane::Data { "data" } else { "ctl" }
            );
            std::thread::Builder::new()
                .name(name)
                .spawn(move || deliver(lane_rx, target, version, lane_credits, lane, fault))
                .map_err(|e| {
                    Status::resource_exhausted(format!("cannot start a delivery thread: {e}"))
                })?;
            senders.push(tx);
            let _ = credits.try_send(Ok(Credit {
                lane: lane as i32,
                batches: n,
            }));
        }
        drop(fault_tx);
        let from = hello.from_slot;
        tracing::info!(from, ?peer, "tuple stream opened");
        tokio::spawn(async move {
            let reason = loop {
                let msg = tokio::select! {
                    m = frames.message() => m,
                    Some(f) = fault_rx.recv() => break Err(f),
                };
                match msg {
                    Ok(Some(Frame {
                        kind: Some(frame::Kind::Batch(b)),
                    })) => {
                        let lane = usize::from(b.lane == Lane::Control as i32);
                        if b.lane != Lane::Data as i32 && b.lane != Lane::Control as i32 {
                            break Err(format!("unknown lane {}", b.lane));
                        }
                        match senders[lane].try_send(b.payload) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => {
                                break Err("sender exceeded its credits".to_string());
                            }
                            Err(TrySendError::Disconnected(_)) => break Ok(()),
                        }
                    }
                    Ok(Some(_)) => break Err("unexpected frame after hello".to_string()),
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(format!("stream error: {}", status.message())),
                }
            };
            match reason {
                Ok(()) => tracing::info!(from, "tuple stream closed by its sender"),
                Err(why) => {
                    tracing::error!(from, %why, "closing a tuple stream");
                    let _ = credits.try_send(Err(Status::invalid_argument(why)));
                }
            }
            // Dropping the lane senders ends the delivery threads.
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One lane's delivery thread: decode, split by executor queue, deliver, grant credit.
fn deliver(
    rx: std::sync::mpsc::Receiver<Bytes>,
    target: TargetSlot,
    version: u64,
    credits: mpsc::Sender<Result<Credit, Status>>,
    lane: Lane,
    fault: mpsc::Sender<String>,
) {
    let mut parts: Vec<(usize, Batch)> = Vec::new();
    while let Ok(payload) = rx.recv() {
        // The executors stopped or moved to another plan: close the stream so the
        // sender keeps the rest of its queue and retries against the new plan.
        let Some(t) = current(&target, version) else {
            let _ = fault.try_send(format!("plan version {version} no longer runs here"));
            return;
        };
        match decode(&t.schema, &payload) {
            Ok(batch) => {
                for env in batch {
                    let Some(Dest::Local(q)) = t.inbound.dest.get(env.task as usize).copied()
                    else {
                        continue;
                    };
                    match parts.iter_mut().find(|(i, _)| *i == q) {
                        Some((_, b)) => b.push(env),
                        None => parts.push((q, vec![env])),
                    }
                }
                for (q, b) in parts.drain(..) {
                    if let Some(tx) = t.inbound.queues.get(q) {
                        // Blocks while the executor's queue is full: that is the back-pressure.
                        let _ = tx.send(b);
                    }
                }
            }
            Err(e) => {
                let _ = fault.try_send(format!("malformed batch: {e}"));
                return;
            }
        }
        if credits
            .blocking_send(Ok(Credit {
                lane: lane as i32,
                batches: 1,
            }))
            .is_err()
        {
            return;
        }
    }
}
