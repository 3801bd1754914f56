//! Executors: one thread each, running one or more tasks of one component.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use squall_api::{ACKER_ID, TaskId};

use crate::collector::{BoltCollector, Emitter, SpoutCollector, SpoutTaskState};
use crate::component::{Bolt, Spout};
use crate::metrics::{ExecMetrics, MetricsSlot, now_ns};
use crate::transfer::{Batch, Msg, SpoutMsg};
use crate::tuple::Tuple;

use crate::control::SpoutMaking;
pub use crate::control::{Crash, ParkedSpout, SpoutProgress, WorkerControl};

mod acker;
pub(crate) use acker::{AckerExecutor, AckerTasks, HostedAcker, fusing_enabled};

const PUBLISH_NS: u64 = 1_000_000_000;
/// Longest a waiting executor sleeps before it looks at its control flags again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// `next_tuple` calls per task between looks at the input queue.
const SPOUT_BURST: usize = 64;

/// The parts every executor has.
pub(crate) struct ExecutorCore {
    pub(crate) emitter: Emitter,
    pub(crate) rx: Receiver<Batch>,
    pub(crate) control: Arc<WorkerControl>,
    pub(crate) metrics: MetricsSlot,
    pub(crate) first_task: TaskId,
    last_publish_ns: u64,
}

impl ExecutorCore {
    pub(crate) fn new(
        emitter: Emitter,
        rx: Receiver<Batch>,
        control: Arc<WorkerControl>,
        metrics: MetricsSlot,
        first_task: TaskId,
    ) -> Self {
        ExecutorCore {
            emitter,
            rx,
            control,
            metrics,
            first_task,
            last_publish_ns: 0,
        }
    }

    fn publish_if_due(&mut self, now: u64) {
        if now.saturating_sub(self.last_publish_ns) >= PUBLISH_NS {
            self.publish(now);
        }
    }

    fn publish(&mut self, now: u64) {
        self.last_publish_ns = now;
        self.emitter.metrics.at_ns = now;
        let mut slot = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        slot.clone_from(&self.emitter.metrics);
        drop(slot);
        if let Some(h) = &mut self.emitter.hosted {
            h.publish(now);
        }
    }

    fn stopping(&self) -> bool {
        self.control.shutdown.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// Spouts

pub(crate) struct SpoutExecutor {
    pub(crate) core: ExecutorCore,
    pub(crate) tasks: Vec<(Box<dyn Spout>, SpoutTaskState)>,
    pub(crate) progress: Arc<SpoutProgress>,
}

impl SpoutExecutor {
    pub(crate) fn run(mut self) {
        let mut active = false;
        let max_pending = self.core.emitter.layout.max_pending;
        let mut peer_losses = self.core.control.peer_losses.load(Ordering::Relaxed);
        loop {
            if self.core.stopping() {
                break;
            }
            let losses = self.core.control.peer_losses.load(Ordering::Relaxed);
            if losses != peer_losses {
                peer_losses = losses;
                self.fail_open_trees();
            }
            // Acks first: they free pending slots and must never back up.
            loop {
                match self.core.rx.try_recv() {
                    Ok(batch) => self.handle(batch),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.close(),
                }
            }
            let want_active = self.core.control.active.load(Ordering::Relaxed);
            if want_active != active {
                active = want_active;
                for (spout, _) in &mut self.tasks {
                    if active {
                        spout.activate()
                    } else {
                        spout.deactivate()
                    }
                }
            }
            let now = now_ns();
            self.expire(now);
            if let Some(h) = &mut self.core.emitter.hosted {
                h.tasks.rotate_if_due(now);
            }

            let mut emitted = 0;
            if active && !self.core.emitter.outbox.congested() {
                for (spout, st) in &mut self.tasks {
                    for _ in 0..SPOUT_BURST {
                        if st.trees.len() >= max_pending {
                            break;
                        }
                        let mut out = SpoutCollector {
                            em: &mut self.core.emitter,
                            st,
                            emitted: 0,
                        };
                        spout.next_tuple(&mut out);
                        let n = out.emitted;
                        // With acking off, a tracked emit is complete at once.
                        for id in std::mem::take(&mut st.immediate_acks) {
                            self.core.emitter.metrics.acked += 1;
                            let mut out = SpoutCollector {
                                em: &mut self.core.emitter,
                                st,
                                emitted: 0,
                            };
                            spout.ack_emitting(id, &mut out);
                        }
                        if n == 0 {
                            break;
                        }
                        emitted += n;
                    }
                }
            }
            self.hand_over_said();
            self.report_progress(active);
            let now = now_ns();
            self.core.publish_if_due(now);
            if emitted == 0 {
                // Nothing to do: send what we have, then wait for acks or the next poll.
                self.core.emitter.outbox.flush(now);
                // Storm's spout wait strategy: a short sleep, cut short by an arriving ack.
                let wait = Duration::from_millis(1);
                match self.core.rx.recv_timeout(wait) {
                    Ok(batch) => self.handle(batch),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return self.close(),
                }
            } else {
                self.core.emitter.outbox.flush_if_lingering(now);
            }
        }
        self.close();
    }

    /// Publish the open trees and whether the spouts are `active` (see
    /// [`SpoutProgress::active`] for the order).
    fn report_progress(&self, active: bool) {
        let pending = self.tasks.iter().map(|(_, st)| st.trees.len()).sum();
        self.progress.pending.store(pending, Ordering::Relaxed);
        let done = self
            .tasks
            .iter()
            .all(|(s, st)| s.is_done() && st.trees.is_empty());
        self.progress.done.store(done, Ordering::Relaxed);
        self.progress.active.store(active, Ordering::Release);
    }

    fn handle(&mut self, batch: Batch) {
        let now = now_ns();
        let first = self.core.first_task;
        let spouts = self.tasks.len();
        for env in batch {
            let mine = (env.task.wrapping_sub(first) as usize) < spouts;
            let em = &mut self.core.emitter;
            let said = match (env.msg, &mut em.hosted) {
                (Msg::Spout(msg), _) if mine => Some((env.task, msg)),
                // For the acker this executor hosts.
                (msg, Some(h)) if h.tasks.owns(env.task) => match msg {
                    Msg::Acker(msg) => h.tasks.step(env.task, msg, &mut h.metrics),
                    msg => {
                        let first = h.first_task();
                        count_misrouted(&mut h.metrics, ACKER_ID, first, env.task, &msg, "acker");
                        None
                    }
                },
                (msg, _) => {
                    misrouted(em, first, env.task, &msg, "spout");
                    None
                }
            };
            if let Some((task, msg)) = said {
                self.tell_spout(task, msg, now);
            }
        }
        self.hand_over_said();
    }

    /// What an acker says about a tree of spout task `task`: handled here
    /// when the task is this executor's, sent on otherwise (from a hosted
    /// acker, about a tree of a spout elsewhere).
    #[inline]
    fn tell_spout(&mut self, task: TaskId, msg: SpoutMsg, now: u64) {
        let idx = task.wrapping_sub(self.core.first_task) as usize;
        match self.tasks.get_mut(idx) {
            Some((spout, st)) => spout_step(&mut self.core.emitter, spout.as_mut(), st, msg, now),
            None => self.core.emitter.outbox.push(task, Msg::Spout(msg)),
        }
    }

    /// Hand over what the hosted acker said while a spout was emitting (and
    /// what that made the spout emit in turn, until nothing is left).
    fn hand_over_said(&mut self) {
        loop {
            let said = match &mut self.core.emitter.hosted {
                Some(h) if !h.said.is_empty() => std::mem::take(&mut h.said),
                _ => return,
            };
            let now = now_ns();
            for (task, msg) in said {
                self.tell_spout(task, msg, now);
            }
        }
    }

    /// Fail every open tree, in emit order, so the spouts replay them now.
    fn fail_open_trees(&mut self) {
        let mut failed = 0usize;
        for (spout, st) in &mut self.tasks {
            for p in st.trees.drain_in_order(now_ns()) {
                failed += 1;
                fail_to_spout(&mut self.core.emitter, spout.as_mut(), st, p.msg_id);
            }
        }
        tracing::warn!(
            first_task = self.core.first_task,
            trees = failed,
            "a peer worker was lost: failed the open trees for replay"
        );
    }

    /// Fail trees whose timeout has passed.
    fn expire(&mut self, now: u64) {
        for (spout, st) in &mut self.tasks {
            while let Some(p) = st.trees.expire(now) {
                fail_to_spout(&mut self.core.emitter, spout.as_mut(), st, p.msg_id);
            }
        }
    }

    fn close(mut self) {
        self.core.emitter.outbox.flush(now_ns());
        self.report_progress(false);
        if self.core.control.keep_spouts.load(Ordering::Relaxed) {
            // Acks that already arrived complete their trees instead of replaying them.
            while let Ok(batch) = self.core.rx.try_recv() {
                self.handle(batch);
            }
            let mut parked = Vec::new();
            for (mut spout, mut st) in std::mem::take(&mut self.tasks) {
                // Fail the open trees in emit order, so that the spout replays them in order.
                for p in st.trees.drain_in_order(now_ns()) {
                    self.core.emitter.metrics.failed += 1;
                    st.remember_failed(p.msg_id);
                    spout.fail(p.msg_id);
                }
                let Some(made) = SpoutMaking::of(&self.core.emitter.layout, st.task) else {
                    spout.close(); // cannot happen: the task is in its own layout
                    continue;
                };
                parked.push(ParkedSpout {
                    task: st.task,
                    spout,
                    state: st,
                    made,
                });
            }
            self.core
                .control
                .parked_spouts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(parked);
        }
        for (spout, _) in &mut self.tasks {
            spout.close();
        }
        self.core.publish(now_ns());
    }
}

/// What an acker says about a tree of `st`, at `now`.
#[inline]
fn spout_step(
    em: &mut Emitter,
    spout: &mut dyn Spout,
    st: &mut SpoutTaskState,
    msg: SpoutMsg,
    now: u64,
) {
    match msg {
        SpoutMsg::Ack { root } => {
            if let Some(p) = st.trees.complete(root, now) {
                em.metrics.acked += 1;
                em.metrics.record_complete(now.saturating_sub(p.start_ns));
                let mut out = SpoutCollector { em, st, emitted: 0 };
                spout.ack_emitting(p.msg_id, &mut out);
            }
        }
        SpoutMsg::Fail { root } => {
            if let Some(p) = st.trees.fail(root, now) {
                fail_to_spout(em, spout, st, p.msg_id);
            }
        }
        SpoutMsg::Reset { root } => {
            st.trees.reset(root, now);
        }
    }
}

/// A tree of `st` failed (the acker said so, it timed out, or a peer was
/// lost): count it, remember its id so a replay counts as one, and tell the
/// spout, which may emit from `fail`.
fn fail_to_spout(em: &mut Emitter, spout: &mut dyn Spout, st: &mut SpoutTaskState, msg_id: u64) {
    em.metrics.failed += 1;
    st.remember_failed(msg_id);
    let mut out = SpoutCollector { em, st, emitted: 0 };
    spout.fail_emitting(msg_id, &mut out);
}

// ---------------------------------------------------------------------------------------------
// Bolts

pub(crate) struct BoltExecutor {
    pub(crate) core: ExecutorCore,
    pub(crate) bolts: Vec<Box<dyn Bolt>>,
    pub(crate) tick_ns: Option<u64>,
    /// Tuples executed, to pick the ones whose latency is timed.
    pub(crate) executed: u64,
}

/// A bolt executor times one tuple in this many (execute and process
/// latency, busy time), as Storm samples its executor statistics: the clock
/// reads and histogram records cost the count bolt of the benchmark about
/// 11% of its time when every tuple was timed. Counts stay exact.
const LATENCY_SAMPLE_EVERY: u64 = 8;

impl BoltExecutor {
    pub(crate) fn run(mut self) {
        let mut next_tick = self.tick_ns.map(|t| now_ns() + t);
        loop {
            if self.core.stopping() {
                break;
            }
            let now = now_ns();
            if let (Some(at), Some(every)) = (next_tick, self.tick_ns)
                && now >= at
            {
                next_tick = Some(at + every);
                for i in 0..self.bolts.len() {
                    self.execute(i, Tuple::tick());
                }
            }
            self.core.publish_if_due(now);
            let wait = next_tick.map_or(IDLE_WAIT, |at| {
                Duration::from_nanos(at.saturating_sub(now)).min(IDLE_WAIT)
            });
            match self.core.rx.recv_timeout(wait) {
                Ok(batch) => {
                    self.process(batch);
                    // Keep going while input is waiting; send partial batches once it runs dry.
                    while !self.core.stopping()
                        && let Ok(batch) = self.core.rx.try_recv()
                    {
                        self.process(batch);
                    }
                    self.idle();
                    self.core.emitter.outbox.flush(now_ns());
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.idle();
                    self.core.emitter.outbox.flush(now_ns());
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.core.emitter.outbox.flush(now_ns());
        for b in &mut self.bolts {
            b.cleanup();
        }
        self.core.publish(now_ns());
    }

    fn process(&mut self, batch: Batch) {
        let first = self.core.first_task;
        for env in batch {
            // A stop does not wait for a full queue to drain (a slow bolt's
            // can take hours): what is left is dropped, and its trees replay.
            if self.core.stopping() {
                return;
            }
            let idx = env.task.wrapping_sub(first) as usize;
            match env.msg {
                Msg::Tuple(tuple) if idx < self.bolts.len() => self.execute(idx, tuple),
                msg => misrouted(&mut self.core.emitter, first, env.task, &msg, "bolt"),
            }
        }
        self.core.emitter.outbox.flush_if_lingering(now_ns());
    }

    /// The input ran dry: let each bolt settle what it holds ([`Bolt::idle`]).
    fn idle(&mut self) {
        let now = now_ns();
        for (idx, bolt) in self.bolts.iter_mut().enumerate() {
            let mut out = BoltCollector {
                em: &mut self.core.emitter,
                task: self.core.first_task + idx as TaskId,
                exec_start_ns: now,
                acked_current: 0,
                sample_weight: LATENCY_SAMPLE_EVERY,
            };
            bolt.idle(&mut out);
        }
    }

    /// Execute one tuple; one in [`LATENCY_SAMPLE_EVERY`] is timed.
    #[inline]
    fn execute(&mut self, idx: usize, tuple: Tuple) {
        self.executed += 1;
        // Untimed tuples keep `started_ns` 0, so their acks are not timed
        // either; `exec_start_ns` MAX never matches it.
        let start = if self.executed.is_multiple_of(LATENCY_SAMPLE_EVERY) {
            let now = now_ns();
            tuple.started_ns.set(now);
            now
        } else {
            u64::MAX
        };
        let layout = &self.core.emitter.layout;
        if let Some(&source) = layout.task_component.get(tuple.source_task as usize) {
            self.core
                .emitter
                .metrics
                .record_input(source, &layout.component_ids);
        }
        let task = self.core.first_task + idx as TaskId;
        let mut out = BoltCollector {
            em: &mut self.core.emitter,
            task,
            exec_start_ns: start,
            acked_current: 0,
            sample_weight: LATENCY_SAMPLE_EVERY,
        };
        self.bolts[idx].execute(tuple, &mut out);
        let acked = out.acked_current;
        let m = &mut self.core.emitter.metrics;
        if start == u64::MAX {
            m.count_execute();
            return;
        }
        let took = now_ns().saturating_sub(start);
        m.record_execute_sampled(took, LATENCY_SAMPLE_EVERY);
        for _ in 0..acked {
            m.record_process_sampled(took, LATENCY_SAMPLE_EVERY);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Misrouted messages

/// A message reached an executor that does not take it: one for another kind
/// of recipient than `takes` (the kind of this executor's tasks), or for a
/// task this executor (whose first task is `first`) does not run. Nothing
/// sends such a message unless the engine or a peer has a bug, so it is
/// dropped, counted in the executor's `misrouted` metric, and the first is
/// logged and reported as an error of the component.
#[cold]
#[inline(never)]
pub(crate) fn misrouted(
    em: &mut Emitter,
    first: TaskId,
    task: TaskId,
    msg: &Msg,
    takes: &'static str,
) {
    let component = em.layout.component_id(em.component);
    count_misrouted(&mut em.metrics, component, first, task, msg, takes);
}

/// [`misrouted`], counted in `m`, the metrics of an executor of `component`.
#[cold]
#[inline(never)]
pub(crate) fn count_misrouted(
    m: &mut ExecMetrics,
    component: &str,
    first: TaskId,
    task: TaskId,
    msg: &Msg,
    takes: &'static str,
) {
    m.misrouted += 1;
    if m.misrouted > 1 {
        return;
    }
    let kind = msg.recipient();
    let what = if kind == takes {
        format!("{kind} message to task {task}, which this executor does not run")
    } else {
        format!("{kind} message to task {task}, at a {takes}'s executor")
    };
    tracing::error!(
        component,
        task = first,
        "misrouted: {what}; dropped (more are only counted, in squall_misrouted_total)"
    );
    m.note_error(first, &format!("misrouted message dropped: {what}"));
}
