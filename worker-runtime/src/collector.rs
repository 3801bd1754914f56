//! Output collectors: how spouts and bolts emit, ack and fail (DESIGN §4).
//!
//! A collector lives for one call of a component method, on the executor
//! thread that makes the call. Emits go into the executor's outbound batches.
//! A bolt's emit may block while a full batch waits for room in a full
//! destination queue: that is the backpressure that slows producers down to
//! their consumers. A spout's emit never blocks: full batches wait aside, and
//! the spout is not polled until they are sent.

#![warn(missing_docs)]

use std::sync::Arc;

use smallvec::SmallVec;
use squall_api::{DEFAULT_STREAM, GroupingType, TaskId};

use crate::executor::HostedAcker;
use crate::grouping::{Grouper, Targets};
use crate::idmap::IdSet;
use crate::layout::Layout;
use crate::metrics::{ExecMetrics, now_ns};
use crate::spout_trees::SpoutTrees;
use crate::transfer::{AckerMsg, Msg, Outbox};
use crate::tuple::{Anchors, Tuple, Values};

/// A small, fast, non-cryptographic generator for edge and root ids (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(crate::tuple::mix(seed, now_ns() ^ u64::from(std::process::id())) | 1)
    }
    /// A random id that is never 0 (0 means "complete" to the acker).
    #[inline]
    pub(crate) fn id(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1
    }
}

/// Why an emit did not go out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The component's registered [`Outputs`](crate::Outputs) do not declare
    /// this stream.
    #[error("stream '{0}' is not declared by this component")]
    UnknownStream(String),
    /// An `emit_direct` to a task that is not a DIRECT subscriber of the stream.
    #[error("task {task} does not subscribe to stream '{stream}' with a DIRECT grouping")]
    NotDirect {
        /// The task the emit named.
        task: TaskId,
        /// The stream of the emit.
        stream: String,
    },
}

/// Per-executor emit machinery shared by both collectors.
pub(crate) struct Emitter {
    pub(crate) layout: Arc<Layout>,
    pub(crate) component: usize,
    /// By stream, by subscription.
    groupers: Vec<Vec<Grouper>>,
    default_stream: Option<usize>,
    pub(crate) outbox: Outbox,
    pub(crate) rng: Rng,
    pub(crate) metrics: ExecMetrics,
    /// Emit errors so far (logged once each kind).
    pub(crate) errors: u64,
    /// The acker executor a spout's executor hosts, if any
    /// ([`Emitter::host`]).
    pub(crate) hosted: Option<Box<HostedAcker>>,
    /// The index in the layout's acker tasks of the hosted acker's first
    /// task: where this executor's spouts root their trees.
    root_acker: Option<u64>,
}

impl Emitter {
    pub(crate) fn new(
        layout: Arc<Layout>,
        component: usize,
        slot: u32,
        outbox: Outbox,
        seed: u64,
    ) -> Emitter {
        let groupers = layout.groupers(component, slot, seed);
        let default_stream = layout.streams[component]
            .iter()
            .position(|s| s.fields.stream == DEFAULT_STREAM);
        Emitter {
            layout,
            component,
            groupers,
            default_stream,
            outbox,
            rng: Rng::seeded(seed),
            metrics: ExecMetrics::default(),
            errors: 0,
            hosted: None,
            root_acker: None,
        }
    }

    /// Run the acker executor `acker` here, and root this executor's trees
    /// at its first task.
    pub(crate) fn host(&mut self, acker: HostedAcker) {
        let first = self.layout.acker_tasks.first().copied().unwrap_or(0);
        self.root_acker = Some(u64::from(acker.first_task().wrapping_sub(first)));
        self.hosted = Some(Box::new(acker));
    }

    /// A new random root. Bolts find a tree's acker from its root alone
    /// ([`Emitter::acker_for`]), so an executor that hosts an acker draws
    /// roots that lead there (62 random bits instead of 64).
    #[inline]
    fn new_root(&mut self) -> u64 {
        let r = self.rng.id();
        let n = self.layout.acker_tasks.len() as u64;
        match self.root_acker {
            Some(k) if n > 1 => (((r >> 1) / n) | 1) * n + k,
            _ => r,
        }
    }

    fn stream(&self, name: &str) -> Result<usize, EmitError> {
        if name == DEFAULT_STREAM {
            return self
                .default_stream
                .ok_or_else(|| EmitError::UnknownStream(name.to_string()));
        }
        self.layout.streams[self.component]
            .iter()
            .position(|s| s.fields.stream == name)
            .ok_or_else(|| EmitError::UnknownStream(name.to_string()))
    }

    /// Target tasks for an emit (or the checked direct task).
    fn targets(
        &mut self,
        stream: usize,
        direct: Option<TaskId>,
        values: &[crate::tuple::Value],
    ) -> Result<Targets, EmitError> {
        let mut out = Targets::new();
        match direct {
            None => {
                for g in &mut self.groupers[stream] {
                    g.choose(values, &mut out);
                }
            }
            Some(task) => {
                let ok = self.groupers[stream].iter().any(|g| {
                    g.kind() == GroupingType::Direct && g.tasks().binary_search(&task).is_ok()
                });
                if !ok {
                    let stream = self.layout.streams[self.component][stream]
                        .fields
                        .stream
                        .clone();
                    return Err(EmitError::NotDirect { task, stream });
                }
                out.push(task);
            }
        }
        Ok(out)
    }

    /// The acker task that tracks the tree `root` (a division per ack, so
    /// one acker, the common case in one process, skips it).
    #[inline]
    fn acker_for(&self, root: u64) -> TaskId {
        match self.layout.acker_tasks.as_slice() {
            [one] => *one,
            a => a[(root % a.len() as u64) as usize],
        }
    }

    fn note_error(&mut self, e: &EmitError) {
        self.errors += 1;
        if self.errors.is_power_of_two() {
            tracing::warn!(component = self.layout.component_id(self.component), error = %e, count = self.errors, "emit dropped");
        }
    }

    /// Send one tuple per target; the last target gets the values without a copy.
    fn send_tuples(
        &mut self,
        stream: usize,
        targets: &Targets,
        mut values: Values,
        source_task: TaskId,
        mut anchors_for: impl FnMut(&mut Rng) -> Anchors,
    ) {
        let fields = self.layout.streams[self.component][stream].fields;
        self.metrics.emitted += 1;
        self.metrics.transferred += targets.len() as u64;
        for (i, &t) in targets.iter().enumerate() {
            let vals = if i + 1 == targets.len() {
                std::mem::take(&mut values)
            } else {
                values.clone()
            };
            let anchors = anchors_for(&mut self.rng);
            self.outbox.push(
                t,
                Msg::Tuple(Tuple::new(vals, fields, source_task, anchors)),
            );
        }
    }
}

/// Acking state of one spout task.
pub(crate) struct SpoutTaskState {
    pub(crate) task: TaskId,
    /// Its open tuple trees.
    pub(crate) trees: SpoutTrees,
    /// Message ids that failed and may be emitted again (to count replays).
    pub(crate) failed_ids: IdSet,
    /// With acking off, message ids to ack right after `next_tuple` returns.
    pub(crate) immediate_acks: Vec<u64>,
}

/// Cap on remembered failed message ids, so a spout that never replays cannot grow it forever.
const MAX_FAILED_IDS: usize = 1 << 20;

impl SpoutTaskState {
    /// The state of spout task `task`, in a topology whose message timeout is `timeout_ns`.
    pub(crate) fn new(task: TaskId, timeout_ns: u64) -> Self {
        SpoutTaskState {
            task,
            trees: SpoutTrees::new(timeout_ns),
            failed_ids: IdSet::default(),
            immediate_acks: Vec::new(),
        }
    }

    pub(crate) fn remember_failed(&mut self, msg_id: u64) {
        if self.failed_ids.len() < MAX_FAILED_IDS {
            self.failed_ids.insert(msg_id);
        }
    }
}

/// What a spout emits through (Storm's `SpoutOutputCollector`).
pub struct SpoutCollector<'a> {
    pub(crate) em: &'a mut Emitter,
    pub(crate) st: &'a mut SpoutTaskState,
    pub(crate) emitted: usize,
}

impl SpoutCollector<'_> {
    /// Emit on the default stream. With a message id the tuple is tracked: the
    /// spout's `ack` or `fail` is called with it once the tree completes or fails.
    /// Returns the number of target tasks.
    pub fn emit(&mut self, values: Values, msg_id: Option<u64>) -> usize {
        self.emit_inner(DEFAULT_STREAM, None, values, msg_id, None)
            .map_or(0, |t| t.len())
    }

    /// Emit on a named stream.
    pub fn emit_stream(
        &mut self,
        stream: &str,
        values: Values,
        msg_id: Option<u64>,
    ) -> Result<usize, EmitError> {
        self.emit_inner(stream, None, values, msg_id, None)
            .map(|t| t.len())
    }

    /// Emit to one task of a bolt that subscribes to `stream` with a DIRECT grouping.
    pub fn emit_direct(
        &mut self,
        task: TaskId,
        stream: &str,
        values: Values,
        msg_id: Option<u64>,
    ) -> Result<usize, EmitError> {
        self.emit_inner(stream, Some(task), values, msg_id, None)
            .map(|t| t.len())
    }

    /// Emit a tracked tuple whose complete latency counts from `scheduled_ns` (on
    /// [`crate::metrics::now_ns`]'s clock) rather than from now. A load generator
    /// uses this so that falling behind its schedule shows up as latency.
    pub fn emit_scheduled(&mut self, values: Values, msg_id: u64, scheduled_ns: u64) -> usize {
        self.emit_inner(
            DEFAULT_STREAM,
            None,
            values,
            Some(msg_id),
            Some(scheduled_ns),
        )
        .map_or(0, |t| t.len())
    }

    /// Open tuple trees of this task.
    pub fn pending(&self) -> usize {
        self.st.trees.len()
    }

    /// Emit and return the target tasks (a multilang spout answers its subprocess with them).
    pub(crate) fn emit_inner(
        &mut self,
        stream: &str,
        direct: Option<TaskId>,
        values: Values,
        msg_id: Option<u64>,
        start_ns: Option<u64>,
    ) -> Result<Targets, EmitError> {
        let em = &mut *self.em;
        let stream = em.stream(stream).inspect_err(|e| em.note_error(e))?;
        let targets = em
            .targets(stream, direct, &values)
            .inspect_err(|e| em.note_error(e))?;
        self.emitted += 1;
        let task = self.st.task;
        let Some(msg_id) = msg_id else {
            em.send_tuples(stream, &targets, values, task, |_| Anchors::new());
            return Ok(targets);
        };
        em.metrics.roots += 1;
        if self.st.failed_ids.remove(&msg_id) {
            em.metrics.replayed += 1;
        }
        if !em.layout.acking {
            em.send_tuples(stream, &targets, values, task, |_| Anchors::new());
            self.st.immediate_acks.push(msg_id);
            return Ok(targets);
        }
        let root = em.new_root();
        let mut xor = 0u64;
        em.send_tuples(stream, &targets, values, task, |rng| {
            let edge = rng.id();
            xor ^= edge;
            smallvec::smallvec![(root, edge)]
        });
        let acker = em.acker_for(root);
        let init = AckerMsg::Init {
            root,
            val: xor,
            spout_task: task,
        };
        match &mut em.hosted {
            Some(h) if h.tasks.owns(acker) => {
                if let Some(said) = h.tasks.step(acker, init, &mut h.metrics) {
                    h.said.push(said);
                }
            }
            _ => em.outbox.push(acker, Msg::Acker(init)),
        }
        let now = now_ns();
        self.st
            .trees
            .track(root, msg_id, start_ns.unwrap_or(now), now);
        Ok(targets)
    }
}

/// What a bolt emits, acks and fails through (Storm's `OutputCollector`).
pub struct BoltCollector<'a> {
    pub(crate) em: &'a mut Emitter,
    pub(crate) task: TaskId,
    /// Start time of the tuple being executed; acks of it are timed when it returns.
    pub(crate) exec_start_ns: u64,
    pub(crate) acked_current: u32,
    /// How many tuples one timed tuple stands for (latencies are sampled).
    pub(crate) sample_weight: u64,
}

impl BoltCollector<'_> {
    /// Emit on the default stream, anchored to `anchors` (empty = unanchored).
    pub fn emit(&mut self, anchors: &[&Tuple], values: Values) -> usize {
        self.emit_inner(DEFAULT_STREAM, None, anchors, values)
            .map_or(0, |t| t.len())
    }

    /// Emit on a named stream, anchored to `anchors`.
    pub fn emit_stream(
        &mut self,
        stream: &str,
        anchors: &[&Tuple],
        values: Values,
    ) -> Result<usize, EmitError> {
        self.emit_inner(stream, None, anchors, values)
            .map(|t| t.len())
    }

    /// Emit to one task of a bolt that subscribes to `stream` with a DIRECT grouping.
    pub fn emit_direct(
        &mut self,
        task: TaskId,
        stream: &str,
        anchors: &[&Tuple],
        values: Values,
    ) -> Result<usize, EmitError> {
        self.emit_inner(stream, Some(task), anchors, values)
            .map(|t| t.len())
    }

    /// Emit and return the target tasks (a multilang bolt answers its subprocess with them).
    pub(crate) fn emit_inner(
        &mut self,
        stream: &str,
        direct: Option<TaskId>,
        anchors: &[&Tuple],
        values: Values,
    ) -> Result<Targets, EmitError> {
        let em = &mut *self.em;
        let stream = em.stream(stream).inspect_err(|e| em.note_error(e))?;
        let targets = em
            .targets(stream, direct, &values)
            .inspect_err(|e| em.note_error(e))?;
        let acking = em.layout.acking && anchors.iter().any(|a| !a.anchors.is_empty());
        if !acking {
            em.send_tuples(stream, &targets, values, self.task, |_| Anchors::new());
        } else {
            // One fresh edge per (anchor, new tuple): XORed into the anchor's ack
            // value and into the new tuple's id for each of the anchor's roots.
            em.send_tuples(stream, &targets, values, self.task, |rng| {
                let mut ids = Anchors::new();
                for a in anchors {
                    if a.anchors.is_empty() {
                        continue;
                    }
                    let edge = rng.id();
                    a.ack_val.set(a.ack_val.get() ^ edge);
                    for &(root, _) in &a.anchors {
                        match ids.iter_mut().find(|(r, _)| *r == root) {
                            Some((_, v)) => *v ^= edge,
                            None => ids.push((root, edge)),
                        }
                    }
                }
                ids
            });
        }
        Ok(targets)
    }

    /// The tuple is fully processed.
    pub fn ack(&mut self, input: &Tuple) {
        self.em.metrics.acked += 1;
        self.time_process(input);
        if !self.em.layout.acking {
            return;
        }
        let extra = input.ack_val.get();
        let roots: SmallVec<[(u64, u64); 2]> = input.anchors.iter().copied().collect();
        for (root, edge) in roots {
            let acker = self.em.acker_for(root);
            self.em.outbox.push(
                acker,
                Msg::Acker(AckerMsg::Ack {
                    root,
                    val: edge ^ extra,
                }),
            );
        }
    }

    /// The tuple could not be processed: its trees fail and their spouts may replay.
    pub fn fail(&mut self, input: &Tuple) {
        self.em.metrics.failed += 1;
        self.time_process(input);
        if !self.em.layout.acking {
            return;
        }
        for &(root, _) in &input.anchors {
            let acker = self.em.acker_for(root);
            self.em
                .outbox
                .push(acker, Msg::Acker(AckerMsg::Fail { root }));
        }
    }

    /// Restart the message timeout of the input's trees (for slow or long-held tuples).
    pub fn reset_timeout(&mut self, input: &Tuple) {
        if !self.em.layout.acking {
            return;
        }
        for &(root, _) in &input.anchors {
            let acker = self.em.acker_for(root);
            self.em
                .outbox
                .push(acker, Msg::Acker(AckerMsg::Reset { root }));
        }
    }

    /// Log an error on behalf of the component.
    pub fn report_error(&mut self, error: &dyn std::fmt::Display) {
        tracing::error!(component = self.em.layout.component_id(self.em.component), task = self.task, %error, "bolt reported an error");
        self.em.metrics.note_error(self.task, &error.to_string());
    }

    fn time_process(&mut self, input: &Tuple) {
        let started = input.started_ns.get();
        if started == self.exec_start_ns {
            self.acked_current += 1;
        } else if started != 0 {
            self.em
                .metrics
                .record_process_sampled(now_ns().saturating_sub(started), self.sample_weight);
        }
    }
}
