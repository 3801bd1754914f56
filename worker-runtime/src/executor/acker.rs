//! Acker tasks at work: on a thread of their own (an [`AckerExecutor`]), or
//! hosted by a spout's executor in the same worker ([`HostedAcker`]).
//!
//! A spout executor hosts one acker executor of its worker when there is one
//! to spare (not a multilang spout's executor, whose `next_tuple` waits on a
//! subprocess; a native spout's must not block, as in Storm), and roots its
//! trees there ([`crate::collector::Emitter`]), so a
//! tree's ack-init and the acker's verdict on it are function calls on the
//! spout's thread instead of two messages through queues (and, across
//! processes, over the wire). Acks from bolts reach the host's input queue,
//! which is the hosted acker tasks' queue. The profile behind this is in
//! `docs/benchmarks.md`; `SQUALL_FUSE_ACKERS=off` keeps every acker on its
//! own thread.

use std::time::Duration;

use squall_api::TaskId;

use super::{ExecutorCore, IDLE_WAIT, misrouted};
use crate::acker::{AckerOutcome, AckerState};
use crate::metrics::{ExecMetrics, MetricsSlot, now_ns};
use crate::transfer::{AckerMsg, Batch, Msg, SpoutMsg};

/// Whether spout executors host an acker of their worker (on unless
/// `SQUALL_FUSE_ACKERS=off`).
pub(crate) fn fusing_enabled() -> bool {
    std::env::var("SQUALL_FUSE_ACKERS").map_or(true, |v| v != "off")
}

/// The acker tasks of one executor: their states, their rotation, and what
/// each message makes them tell a spout task.
pub(crate) struct AckerTasks {
    first_task: TaskId,
    states: Vec<AckerState>,
    rotate_every_ns: u64,
    next_rotate_ns: u64,
}

impl AckerTasks {
    /// Tasks `first_task..first_task + count`, forgetting trees untouched
    /// for one to two message timeouts (`timeout_ns`).
    pub(crate) fn new(first_task: TaskId, count: usize, timeout_ns: u64) -> Self {
        let rotate_every_ns = timeout_ns.max(1);
        AckerTasks {
            first_task,
            states: (0..count).map(|_| AckerState::new()).collect(),
            rotate_every_ns,
            next_rotate_ns: now_ns() + rotate_every_ns,
        }
    }

    /// Whether `task` is one of these.
    #[inline]
    pub(crate) fn owns(&self, task: TaskId) -> bool {
        (task.wrapping_sub(self.first_task) as usize) < self.states.len()
    }

    /// One message to `task` (which must be [owned](Self::owns)), counted in
    /// `m`; what to tell which spout task, if anything.
    #[inline]
    pub(crate) fn step(
        &mut self,
        task: TaskId,
        msg: AckerMsg,
        m: &mut ExecMetrics,
    ) -> Option<(TaskId, SpoutMsg)> {
        m.executed += 1;
        let state = self
            .states
            .get_mut(task.wrapping_sub(self.first_task) as usize)?;
        let outcome = match msg {
            AckerMsg::Init {
                root,
                val,
                spout_task,
            } => state.init(root, val, spout_task),
            AckerMsg::Ack { root, val } => state.ack(root, val),
            AckerMsg::Fail { root } => state.fail(root),
            AckerMsg::Reset { root } => state.reset(root),
        }?;
        Some(match outcome {
            AckerOutcome::Complete { root, spout_task } => {
                m.acked += 1;
                (spout_task, SpoutMsg::Ack { root })
            }
            AckerOutcome::Failed { root, spout_task } => {
                m.failed += 1;
                (spout_task, SpoutMsg::Fail { root })
            }
            AckerOutcome::Reset { root, spout_task } => (spout_task, SpoutMsg::Reset { root }),
        })
    }

    /// Forget trees untouched for a whole period, once per message timeout.
    pub(crate) fn rotate_if_due(&mut self, now: u64) {
        if now >= self.next_rotate_ns {
            self.next_rotate_ns = now + self.rotate_every_ns;
            for s in &mut self.states {
                s.rotate();
            }
        }
    }
}

/// An acker executor run by a spout's executor: its tasks, and the metrics it
/// publishes as the acker executor it stands for (with no busy time: like
/// the spout's, it is not timed).
pub(crate) struct HostedAcker {
    pub(crate) tasks: AckerTasks,
    pub(crate) metrics: ExecMetrics,
    pub(crate) slot: MetricsSlot,
    /// What it said to spout tasks while a spout was emitting (an init that
    /// completes its tree at once: a tuple emitted to no task), to hand over
    /// when the spout returns.
    pub(crate) said: Vec<(TaskId, SpoutMsg)>,
}

impl HostedAcker {
    pub(crate) fn new(tasks: AckerTasks, slot: MetricsSlot) -> Self {
        HostedAcker {
            tasks,
            metrics: ExecMetrics::default(),
            slot,
            said: Vec::new(),
        }
    }

    /// Its first task, where the host roots its trees.
    pub(crate) fn first_task(&self) -> TaskId {
        self.tasks.first_task
    }

    /// Copy the metrics to the slot the worker reads.
    pub(crate) fn publish(&mut self, now: u64) {
        self.metrics.at_ns = now;
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.clone_from(&self.metrics);
    }
}

/// An executor whose thread runs only acker tasks.
pub(crate) struct AckerExecutor {
    pub(crate) core: ExecutorCore,
    pub(crate) tasks: AckerTasks,
}

impl AckerExecutor {
    pub(crate) fn run(mut self) {
        loop {
            if self.core.stopping() {
                break;
            }
            let now = now_ns();
            self.tasks.rotate_if_due(now);
            self.core.publish_if_due(now);
            let wait = if self.core.emitter.outbox.congested() {
                Duration::from_millis(1)
            } else {
                IDLE_WAIT
            };
            match self.core.rx.recv_timeout(wait) {
                Ok(batch) => {
                    self.process(batch);
                    while let Ok(batch) = self.core.rx.try_recv() {
                        self.process(batch);
                    }
                    self.core.emitter.outbox.flush(now_ns());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    self.core.emitter.outbox.flush(now_ns())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.core.emitter.outbox.flush(now_ns());
        self.core.publish(now_ns());
    }

    fn process(&mut self, batch: Batch) {
        let first = self.core.first_task;
        let start = now_ns();
        let em = &mut self.core.emitter;
        for env in batch {
            let said = match env.msg {
                Msg::Acker(msg) if self.tasks.owns(env.task) => {
                    self.tasks.step(env.task, msg, &mut em.metrics)
                }
                msg => {
                    misrouted(em, first, env.task, &msg, "acker");
                    None
                }
            };
            if let Some((spout_task, msg)) = said {
                em.outbox.push(spout_task, Msg::Spout(msg));
            }
        }
        em.metrics.busy_ns += now_ns().saturating_sub(start);
    }
}
