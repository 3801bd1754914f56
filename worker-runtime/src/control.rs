//! What a worker's executors share: the control flags, the first crash, the
//! spouts parked by a rebalance, and each spout executor's progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use squall_api::TaskId;

use crate::collector::SpoutTaskState;
use crate::component::Spout;

/// Commands shared by all executors of a worker.
pub struct WorkerControl {
    pub active: AtomicBool,
    pub shutdown: AtomicBool,
    /// On shutdown, spout executors fail their open trees (so the spouts replay
    /// them) and park their spouts here instead of closing them, so that a new
    /// plan version can carry them over (a rebalance keeps spout state).
    pub keep_spouts: AtomicBool,
    pub parked_spouts: std::sync::Mutex<Vec<ParkedSpout>>,
    /// The first executor that panicked: the worker cannot be trusted after it
    /// (its tasks' trees would time out and replay into a dead thread forever),
    /// so whoever runs the worker ends it.
    pub crashed: std::sync::Mutex<Option<Crash>>,
    /// Bumped when a peer worker is lost (see [`WorkerControl::peer_lost`]).
    pub peer_losses: AtomicU64,
}

/// A component that panicked: which executor, and the panic's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub component: String,
    /// The executor's tasks, `first..=last`.
    pub tasks: (TaskId, TaskId),
    pub message: String,
}

impl std::fmt::Display for Crash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = self.tasks;
        let tasks = if a == b {
            format!("task {a}")
        } else {
            format!("tasks {a}..={b}")
        };
        write!(
            f,
            "component '{}' ({tasks}) panicked: {}",
            self.component, self.message
        )
    }
}

/// A spout task parked by a rebalance, to be carried into the next plan version
/// when the task stays in this worker: the user's spout with its in-memory
/// state, and the task's acking state without its open trees (they were failed
/// to the spout, which replays them; the failed ids are kept so that those
/// replays are counted as replays).
pub struct ParkedSpout {
    pub task: TaskId,
    pub spout: Box<dyn Spout>,
    pub(crate) state: SpoutTaskState,
    /// What the spout was made from; a plan that makes the task from something
    /// else (another component, command or config) opens a new spout instead.
    pub(crate) made: SpoutMaking,
}

/// What a spout task is made from under a layout: its component, the registered
/// implementation or shell command, and the config it was opened with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpoutMaking {
    component: String,
    implementation: String,
    shell: Option<squall_api::ShellSpec>,
    config: Arc<squall_api::Config>,
}

impl SpoutMaking {
    /// How `layout` makes `task`; `None` for a task it does not have.
    pub(crate) fn of(layout: &crate::layout::Layout, task: TaskId) -> Option<SpoutMaking> {
        let c = *layout.task_component.get(task as usize)? as usize;
        Some(SpoutMaking {
            component: layout.plan.components.get(c)?.id.clone(),
            implementation: layout.implementations.get(c)?.clone(),
            shell: layout.shells.get(c)?.clone(),
            config: layout.configs.get(c)?.clone(),
        })
    }
}

impl std::fmt::Debug for WorkerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerControl")
            .field("active", &self.active)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl WorkerControl {
    pub fn new(active: bool) -> Arc<Self> {
        Arc::new(WorkerControl {
            active: AtomicBool::new(active),
            shutdown: AtomicBool::new(false),
            keep_spouts: AtomicBool::new(false),
            parked_spouts: std::sync::Mutex::new(Vec::new()),
            crashed: std::sync::Mutex::new(None),
            peer_losses: AtomicU64::new(0),
        })
    }

    /// A peer worker died or became unreachable: the trees in flight through
    /// it cannot complete. Rather than wait out the message timeout, every
    /// spout executor fails all its open trees at its next turn, and its spouts
    /// replay them. Which trees passed through the peer is not tracked (that
    /// would cost the hot path), so trees that did not are replayed too: the
    /// duplicates are bounded by `maxSpoutPending` per spout task.
    pub fn peer_lost(&self) {
        self.peer_losses.fetch_add(1, Ordering::Relaxed);
    }

    /// Record an executor's panic (the first one wins) and stop every executor.
    pub fn crash(&self, crash: Crash) {
        let mut c = self.crashed.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            tracing::error!(component = %crash.component, first_task = crash.tasks.0, "{crash}; stopping the worker");
            *c = Some(crash);
        }
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// The panic that ended this worker's executors, if one did.
    pub fn crashed(&self) -> Option<Crash> {
        self.crashed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a spout executor reports about its progress, for draining and finite runs.
#[derive(Debug)]
pub struct SpoutProgress {
    /// Open tuple trees over the executor's tasks.
    pub pending: AtomicUsize,
    /// Every task's spout reports `is_done`.
    pub done: AtomicBool,
    /// The spouts were active at the last report (true until the first):
    /// stored after `pending`, so a reader that sees `false` reads a
    /// `pending` taken after the executor stopped emitting. Without it, a
    /// drain could read 0 from before the executor's last burst of emits.
    pub active: AtomicBool,
}

impl Default for SpoutProgress {
    fn default() -> Self {
        SpoutProgress {
            pending: AtomicUsize::new(0),
            done: AtomicBool::new(false),
            active: AtomicBool::new(true),
        }
    }
}
