//! Moving messages between executors: envelopes, batches and the per-executor outbox.
//!
//! Every executor has one bounded input queue of *batches*. An executor collects
//! outgoing messages per destination and hands a whole batch over when it is full,
//! when the executor runs out of input, or when it has lingered for a millisecond,
//! so the cost of a queue operation and a wake-up is shared by many tuples.
//!
//! Flow control: bolts block when a destination queue is full, which slows their
//! producers in turn. Spouts and ackers never block: they park full batches in an
//! overflow list and keep draining their own input, because acks must always be
//! able to flow back to spouts (otherwise spout → bolt → acker → spout would be a
//! deadlock cycle). A spout with overflow stops calling `next_tuple`, and an
//! acker's output is bounded by the open trees, so the overflow stays bounded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use squall_api::TaskId;

use crate::tuple::Tuple;

/// A message for one task, as queues and the wire carry it: one variant per
/// kind of recipient. Each executor hands on only its own kind (a bolt's
/// executor the [`Tuple`], an acker's the [`AckerMsg`], a spout's the
/// [`SpoutMsg`]); a message of another kind is misrouted, which the executor
/// counts (`misrouted` in its metrics) and logs the first time.
pub enum Msg {
    /// A data tuple for a bolt task.
    Tuple(Tuple),
    /// For an acker task, from a spout or a bolt.
    Acker(AckerMsg),
    /// For a spout task, from an acker.
    Spout(SpoutMsg),
}

/// What spouts and bolts tell an acker about the tree `root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckerMsg {
    /// A spout started the tree with these edges.
    Init {
        root: u64,
        val: u64,
        spout_task: TaskId,
    },
    /// A tuple of the tree was acked.
    Ack { root: u64, val: u64 },
    /// A tuple of the tree was failed.
    Fail { root: u64 },
    /// A bolt asked for more time.
    Reset { root: u64 },
}

/// What an acker tells a spout task about the tree `root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoutMsg {
    /// The tree completed.
    Ack { root: u64 },
    /// The tree failed.
    Fail { root: u64 },
    /// Restart the tree's timeout.
    Reset { root: u64 },
}

impl Msg {
    /// The kind of recipient the message is for, for logs.
    pub fn recipient(&self) -> &'static str {
        match self {
            Msg::Tuple(_) => "bolt",
            Msg::Acker(_) => "acker",
            Msg::Spout(_) => "spout",
        }
    }
}

/// A message and the task it is for.
pub struct Envelope {
    pub task: TaskId,
    pub msg: Msg,
}

/// The unit moved through queues and over the wire.
pub type Batch = Vec<Envelope>;

/// Tuning of the in-process transfer.
#[derive(Debug, Clone, Copy)]
pub struct TransferConfig {
    /// Envelopes per batch.
    pub batch_size: usize,
    /// Batches an executor's input queue holds.
    pub queue_batches: usize,
    /// Longest time a partial batch waits while its executor stays busy.
    pub linger_ns: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            batch_size: squall_api::sizing::BATCH_SIZE,
            queue_batches: squall_api::sizing::QUEUE_BATCHES,
            linger_ns: 1_000_000,
        }
    }
}

/// An executor's input queue.
pub fn queue(cfg: &TransferConfig) -> (SyncSender<Batch>, Receiver<Batch>) {
    sync_channel(cfg.queue_batches.max(1))
}

/// Receives batches for tasks that live in other worker processes.
pub trait RemoteSink: Send + Sync {
    /// Hand a batch to the link towards `slot` without waiting; gives it back when the link is full.
    fn try_send(&self, slot: u32, batch: Batch) -> Result<(), Batch>;
    /// Hand a batch over, waiting for room. Returns `false` when the batch was dropped
    /// (the peer is gone for good; its trees will time out and be replayed).
    fn send(&self, slot: u32, batch: Batch) -> bool;
}

/// Where a task lives, seen from one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// An executor queue in this process.
    Local(usize),
    /// Another worker slot.
    Remote(u32),
    /// Nobody runs the task (for example between plan versions): messages are dropped.
    Nowhere,
}

/// The routing table of one worker: by task id.
pub struct Routes {
    pub dest: Vec<Dest>,
    pub local: Vec<SyncSender<Batch>>,
    pub remote: Option<Arc<dyn RemoteSink>>,
    /// Number of remote slots addressable (`Dest::Remote(s)` has `s < remote_slots`).
    pub remote_slots: usize,
}

impl Routes {
    fn dest_of(&self, task: TaskId) -> Dest {
        self.dest
            .get(task as usize)
            .copied()
            .unwrap_or(Dest::Nowhere)
    }
}

/// Whether a full destination blocks the sender or parks the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    Block,
    Overflow,
}

/// One executor's outgoing batches.
pub struct Outbox {
    routes: Arc<Routes>,
    /// Pending batches: local queues first, then remote slots.
    pending: Vec<Batch>,
    dirty: Vec<usize>,
    overflow: VecDeque<(usize, Batch)>,
    mode: SendMode,
    cfg: TransferConfig,
    last_flush_ns: u64,
    /// Messages dropped because their destination is gone.
    pub dropped: u64,
}

impl Outbox {
    pub fn new(routes: Arc<Routes>, mode: SendMode, cfg: TransferConfig) -> Self {
        let n = routes.local.len() + routes.remote_slots;
        Outbox {
            routes,
            pending: (0..n).map(|_| Vec::new()).collect(),
            dirty: Vec::new(),
            overflow: VecDeque::new(),
            mode,
            cfg,
            last_flush_ns: 0,
            dropped: 0,
        }
    }

    /// Queue a message for `task`; sends its batch once full.
    #[inline]
    pub fn push(&mut self, task: TaskId, msg: Msg) {
        let idx = match self.routes.dest_of(task) {
            Dest::Local(i) => i,
            Dest::Remote(s) => self.routes.local.len() + s as usize,
            Dest::Nowhere => {
                self.dropped += 1;
                return;
            }
        };
        let Some(batch) = self.pending.get_mut(idx) else {
            self.dropped += 1;
            return;
        };
        if batch.is_empty() {
            batch.reserve(self.cfg.batch_size);
            self.dirty.push(idx);
        }
        batch.push(Envelope { task, msg });
        if batch.len() >= self.cfg.batch_size {
            self.flush_one(idx);
        }
    }

    fn flush_one(&mut self, idx: usize) {
        let batch = std::mem::take(&mut self.pending[idx]);
        if let Some(p) = self.dirty.iter().position(|&d| d == idx) {
            self.dirty.swap_remove(p);
        }
        if batch.is_empty() {
            return;
        }
        if !self.overflow.is_empty() {
            self.overflow.push_back((idx, batch));
            return;
        }
        if let Some(batch) = self.deliver(idx, batch) {
            self.overflow.push_back((idx, batch));
        }
    }

    /// Try to hand `batch` to `idx`; gives it back if it must wait (overflow mode only).
    fn deliver(&mut self, idx: usize, batch: Batch) -> Option<Batch> {
        let local = self.routes.local.len();
        if idx < local {
            let tx = &self.routes.local[idx];
            match self.mode {
                SendMode::Block => {
                    let n = batch.len() as u64;
                    if tx.send(batch).is_err() {
                        self.dropped += n;
                    }
                    None
                }
                SendMode::Overflow => match tx.try_send(batch) {
                    Ok(()) => None,
                    Err(TrySendError::Full(b)) => Some(b),
                    Err(TrySendError::Disconnected(b)) => {
                        self.dropped += b.len() as u64;
                        None
                    }
                },
            }
        } else {
            let slot = (idx - local) as u32;
            let Some(remote) = self.routes.remote.clone() else {
                self.dropped += batch.len() as u64;
                return None;
            };
            match self.mode {
                SendMode::Block => {
                    let n = batch.len() as u64;
                    if !remote.send(slot, batch) {
                        self.dropped += n;
                    }
                    None
                }
                SendMode::Overflow => remote.try_send(slot, batch).err(),
            }
        }
    }

    /// Send every partial batch.
    pub fn flush(&mut self, now_ns: u64) {
        self.last_flush_ns = now_ns;
        while let Some(&idx) = self.dirty.last() {
            self.flush_one(idx);
        }
        self.retry_overflow();
    }

    /// Flush if a partial batch has waited longer than the linger time.
    #[inline]
    pub fn flush_if_lingering(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_flush_ns) >= self.cfg.linger_ns {
            self.flush(now_ns);
        }
    }

    /// Retry parked batches in order; stops at the first that still does not fit.
    pub fn retry_overflow(&mut self) {
        while let Some((idx, batch)) = self.overflow.pop_front() {
            if let Some(batch) = self.deliver(idx, batch) {
                self.overflow.push_front((idx, batch));
                return;
            }
        }
    }

    /// Whether batches are parked waiting for room.
    pub fn congested(&self) -> bool {
        !self.overflow.is_empty()
    }
}
