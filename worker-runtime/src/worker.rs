//! A worker: the executors of one or more slots, running in this process.
//!
//! Local mode runs every slot of a plan in one worker; a worker pod runs one slot
//! and reaches the others through a [`RemoteSink`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use squall_api::{PlannedKind, TaskId};

use crate::collector::{Emitter, SpoutTaskState};
use crate::component::{ComponentError, Factory, Registry, Spout, TopologyContext};
use crate::control::SpoutMaking;
use crate::executor::{
    AckerExecutor, AckerTasks, BoltExecutor, Crash, ExecutorCore, HostedAcker, ParkedSpout,
    SpoutExecutor, SpoutProgress, WorkerControl, fusing_enabled,
};
use crate::layout::Layout;
use crate::metrics::MetricsHub;
use crate::shell::{self, ShellBoltExecutor, ShellBoltSetup, ShellSpout};
use crate::transfer::{Batch, Dest, Outbox, RemoteSink, Routes, SendMode, TransferConfig, queue};

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // `error` is not a `source`: printed with its chain, it would say everything twice.
    #[error("component '{component}' (task {task}): {error}")]
    Component {
        component: String,
        task: TaskId,
        error: ComponentError,
    },
    #[error("component '{0}' is not registered in this binary")]
    Unregistered(String),
    #[error("could not start an executor thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Run a component's factory and `open`/`prepare` (on the thread that starts
/// the worker), turning a panic into an error, so that the start fails with
/// the component and task named instead of unwinding the whole process.
fn unpanicked<T>(f: impl FnOnce() -> Result<T, ComponentError>) -> Result<T, ComponentError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(ComponentError::new(format!(
            "panicked: {}",
            squall_coord::logging::panic_message(p.as_ref()).unwrap_or("a panic without a message")
        )))
    })
}

/// Builds one spout per task: a registered factory, or a multilang subprocess.
type MakeSpout<'a> = dyn Fn(&TopologyContext) -> Result<Box<dyn Spout>, ComponentError> + 'a;

/// Running executors and the handles to steer them.
pub struct Worker {
    pub layout: Arc<Layout>,
    pub control: Arc<WorkerControl>,
    pub metrics: MetricsHub,
    spouts: Vec<Arc<SpoutProgress>>,
    threads: Vec<JoinHandle<()>>,
    /// Senders into this worker's executor queues, by task id (for batches arriving from peers).
    inbound: Arc<Inbound>,
}

/// Where batches for this worker's tasks go.
pub struct Inbound {
    pub dest: Vec<Dest>,
    pub queues: Vec<std::sync::mpsc::SyncSender<Batch>>,
}

impl Worker {
    /// Build and start the executors of `slots`. Components are constructed and
    /// opened before any thread starts, so a bad component fails the start cleanly.
    pub fn start(
        layout: Arc<Layout>,
        registry: &Registry,
        slots: &[u32],
        remote: Option<Arc<dyn RemoteSink>>,
        transfer: TransferConfig,
        metrics: MetricsHub,
    ) -> Result<Worker, StartError> {
        Self::start_carrying(
            layout,
            registry,
            slots,
            remote,
            transfer,
            metrics,
            Vec::new(),
        )
    }

    /// [`Worker::start`], reusing spouts parked by [`Worker::shutdown_keeping_spouts`]
    /// for the tasks they ran (they are not opened again, and keep their state).
    ///
    /// A parked spout whose task is no longer in `slots` has moved to another
    /// worker: it is closed here, and its in-memory state is lost, as in Storm (the
    /// task starts afresh where it now runs; a real spout replays from a durable
    /// source). So is one whose component, shell command or config differs under
    /// the new layout: the task is opened anew, so that a config change reaches it.
    pub fn start_carrying(
        layout: Arc<Layout>,
        registry: &Registry,
        slots: &[u32],
        remote: Option<Arc<dyn RemoteSink>>,
        transfer: TransferConfig,
        metrics: MetricsHub,
        mut carried: Vec<ParkedSpout>,
    ) -> Result<Worker, StartError> {
        let plan = &layout.plan;
        let mine: Vec<usize> = (0..plan.executors.len())
            .filter(|&i| slots.contains(&plan.executors[i].slot))
            .collect();
        carried.retain_mut(|p| {
            let stays = plan
                .slot_of(p.task)
                .is_some_and(|slot| slots.contains(&slot))
                && plan
                    .component_of(p.task)
                    .is_some_and(|c| c.kind == PlannedKind::Spout);
            if !stays {
                tracing::warn!(
                    task = p.task,
                    "spout task moved to another worker: closing it here; its in-memory state is lost"
                );
                p.spout.close();
                return false;
            }
            // A changed component, command or config reaches the task: it is
            // opened anew, as in Storm (the trees it had open were failed to it
            // when it was parked; a durable source such as Kafka reads them again).
            if SpoutMaking::of(&layout, p.task).as_ref() != Some(&p.made) {
                tracing::warn!(
                    task = p.task,
                    "spout task's component, command or config changed: closing it and opening it anew; its in-memory state is lost"
                );
                p.spout.close();
                return false;
            }
            true
        });

        // Queues for local executors, and where every task lives.
        let mut senders = Vec::with_capacity(mine.len());
        let mut receivers = Vec::with_capacity(mine.len());
        for _ in &mine {
            let (tx, rx) = queue(&transfer);
            senders.push(tx);
            receivers.push(rx);
        }
        // Each spout executor hosts one acker executor of this worker while
        // both last (`executor::acker`): by index in `mine`, the host of each
        // hosted acker executor. Not a multilang spout's: its `next_tuple`
        // waits for a subprocess, and acks must not wait behind it.
        let component_of = |qi: usize| plan.executors[mine[qi]].component;
        let kind_of = |qi: usize| plan.components[component_of(qi)].kind;
        let mut host = vec![None; mine.len()];
        if layout.acking && fusing_enabled() {
            let spouts = (0..mine.len()).filter(|&qi| {
                kind_of(qi) == PlannedKind::Spout && layout.shells[component_of(qi)].is_none()
            });
            let ackers = (0..mine.len()).filter(|&qi| kind_of(qi) == PlannedKind::Acker);
            for (acker, spout) in ackers.zip(spouts) {
                host[acker] = Some(spout);
            }
        }
        let mut dest = vec![Dest::Nowhere; plan.task_count() as usize + 1];
        for (qi, &ei) in mine.iter().enumerate() {
            for t in plan.executors[ei].tasks() {
                dest[t as usize] = Dest::Local(host[qi].unwrap_or(qi));
            }
        }
        if remote.is_some() {
            for e in plan.executors.iter().filter(|e| !slots.contains(&e.slot)) {
                for t in e.tasks() {
                    dest[t as usize] = Dest::Remote(e.slot);
                }
            }
        }
        let routes = Arc::new(Routes {
            dest: dest.clone(),
            local: senders.clone(),
            remote,
            remote_slots: plan.workers as usize,
        });
        let inbound = Arc::new(Inbound {
            dest,
            queues: senders,
        });

        // A worker with peers starts with its spouts held back; its owner
        // activates them once the links to the peers are up.
        let control = WorkerControl::new(layout.spec.active && routes.remote.is_none());
        let mut spouts = Vec::new();
        // (component, its tasks, the executor's loop)
        type Runnable = (String, (TaskId, TaskId), Box<dyn FnOnce() + Send>);
        let mut runnables: Vec<Runnable> = Vec::new();
        let mut hosted: Vec<Option<HostedAcker>> = (0..mine.len()).map(|_| None).collect();
        for (qi, &ei) in mine.iter().enumerate() {
            let Some(h) = host[qi] else { continue };
            let ex = &plan.executors[ei];
            let comp = &plan.components[ex.component];
            let slot = metrics.register(&comp.id, comp.kind, ex.tasks());
            let tasks = AckerTasks::new(ex.first_task, ex.tasks().len(), layout.timeout_ns);
            hosted[h] = Some(HostedAcker::new(tasks, slot));
        }
        for (qi, (&ei, rx)) in mine.iter().zip(receivers).enumerate() {
            if host[qi].is_some() {
                continue; // its host runs it
            }
            let ex = &plan.executors[ei];
            let comp = &plan.components[ex.component];
            let mode = if comp.kind == PlannedKind::Bolt {
                SendMode::Block
            } else {
                SendMode::Overflow
            };
            let outbox = Outbox::new(routes.clone(), mode, transfer);
            let mut emitter = Emitter::new(
                layout.clone(),
                ex.component,
                ex.slot,
                outbox,
                ei as u64 * 7919 + 1,
            );
            if let Some(acker) = hosted[qi].take() {
                emitter.host(acker);
            }
            let slot = metrics.register(&comp.id, comp.kind, ex.tasks());
            let core = ExecutorCore::new(emitter, rx, control.clone(), slot, ex.first_task);
            let span = (ex.first_task, ex.tasks().last().unwrap_or(ex.first_task));
            let ctx = |task: TaskId| TopologyContext {
                topology: layout.topology.clone(),
                component_id: comp.id.clone(),
                task_id: task,
                task_index: task - comp.first_task,
                component_tasks: comp.task_count,
                slot: ex.slot,
                config: layout.configs[ex.component].clone(),
            };
            let fail = |task, error| StartError::Component {
                component: comp.id.clone(),
                task,
                error,
            };
            let run: Box<dyn FnOnce() + Send> = match comp.kind {
                PlannedKind::Acker => {
                    let tasks = AckerTasks::new(ex.first_task, ex.tasks().len(), layout.timeout_ns);
                    let exec = AckerExecutor { core, tasks };
                    Box::new(move || exec.run())
                }
                PlannedKind::Spout => {
                    let implementation = &layout.implementations[ex.component];
                    let shell = layout.shells[ex.component].as_ref();
                    let registered = registry.components.get(implementation).map(|r| &r.factory);
                    let make: &MakeSpout<'_> = match (shell, registered) {
                        (Some(sh), _) => &|c: &TopologyContext| {
                            Ok(Box::new(ShellSpout::start(
                                sh.clone(),
                                c,
                                shell::task_to_component(&layout),
                                shell::streams(&layout, ex.component),
                            )?) as Box<dyn Spout>)
                        },
                        (None, Some(Factory::Spout(make))) => make,
                        _ => return Err(StartError::Unregistered(implementation.clone())),
                    };
                    let mut tasks = Vec::new();
                    for t in ex.tasks() {
                        if let Some(i) = carried.iter().position(|p| p.task == t) {
                            let p = carried.swap_remove(i);
                            tracing::info!(task = t, "spout task carried over with its state");
                            let mut state = p.state;
                            // Its trees were failed when it was parked; the
                            // new plan's message timeout applies from here.
                            debug_assert!(state.trees.is_empty());
                            state.trees = crate::spout_trees::SpoutTrees::new(layout.timeout_ns);
                            tasks.push((p.spout, state));
                            continue;
                        }
                        let c = ctx(t);
                        let spout = unpanicked(|| {
                            let mut spout = make(&c)?;
                            spout.open(&c)?;
                            Ok(spout)
                        })
                        .map_err(|e| fail(t, e))?;
                        tasks.push((spout, SpoutTaskState::new(t, layout.timeout_ns)));
                    }
                    let progress = Arc::new(SpoutProgress::default());
                    spouts.push(progress.clone());
                    let exec = SpoutExecutor {
                        core,
                        tasks,
                        progress,
                    };
                    Box::new(move || exec.run())
                }
                PlannedKind::Bolt if layout.shells[ex.component].is_some() => {
                    let setup = ShellBoltSetup {
                        spec: layout.shells[ex.component]
                            .clone()
                            .unwrap_or_else(|| unreachable!()),
                        task_to_component: shell::task_to_component(&layout),
                        streams: shell::streams(&layout, ex.component),
                    };
                    let contexts = ex.tasks().map(&ctx).collect();
                    let exec = ShellBoltExecutor::start(
                        core,
                        contexts,
                        setup,
                        layout.tick_ns[ex.component],
                    )
                    .map_err(|(t, e)| fail(t, e))?;
                    Box::new(move || exec.run())
                }
                PlannedKind::Bolt => {
                    let implementation = &layout.implementations[ex.component];
                    let Some(Factory::Bolt(make)) =
                        registry.components.get(implementation).map(|r| &r.factory)
                    else {
                        return Err(StartError::Unregistered(implementation.clone()));
                    };
                    let mut bolts = Vec::new();
                    for t in ex.tasks() {
                        let c = ctx(t);
                        let bolt = unpanicked(|| {
                            let mut bolt = make(&c)?;
                            bolt.prepare(&c)?;
                            Ok(bolt)
                        })
                        .map_err(|e| fail(t, e))?;
                        bolts.push(bolt);
                    }
                    let exec = BoltExecutor {
                        core,
                        bolts,
                        tick_ns: layout.tick_ns[ex.component],
                        executed: 0,
                    };
                    Box::new(move || exec.run())
                }
            };
            runnables.push((comp.id.clone(), span, run));
        }

        let mut threads = Vec::with_capacity(runnables.len());
        for (component, tasks, run) in runnables {
            let name = format!("{component}-{}", tasks.0);
            // A panic in a component ends the worker: it is caught here, recorded,
            // and every executor stops; whoever runs the worker exits non-zero.
            let ctl = control.clone();
            let guarded = move || {
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    ctl.crash(Crash {
                        component,
                        tasks,
                        message: squall_coord::logging::panic_message(p.as_ref())
                            .unwrap_or("a panic without a message")
                            .to_string(),
                    });
                }
            };
            match std::thread::Builder::new().name(name).spawn(guarded) {
                Ok(h) => threads.push(h),
                Err(e) => {
                    control.shutdown.store(true, Ordering::Relaxed);
                    for h in threads {
                        let _ = h.join();
                    }
                    return Err(StartError::Thread(e));
                }
            }
        }
        Ok(Worker {
            layout,
            control,
            metrics,
            spouts,
            threads,
            inbound,
        })
    }

    /// Activate or deactivate the spouts.
    pub fn set_active(&self, active: bool) {
        self.control.active.store(active, Ordering::Relaxed);
    }

    /// Open tuple trees over all spout tasks of this worker.
    pub fn pending(&self) -> usize {
        self.spouts
            .iter()
            .map(|p| p.pending.load(Ordering::Relaxed))
            .sum()
    }

    /// After [`Worker::set_active`]`(false)`: every spout executor has seen it,
    /// and no tree is open. A drain waits for this rather than for
    /// `pending() == 0`, which an executor still finishing a burst of emits
    /// may not have reported yet.
    pub fn drained(&self) -> bool {
        self.spouts
            .iter()
            .all(|p| !p.active.load(Ordering::Acquire) && p.pending.load(Ordering::Relaxed) == 0)
    }

    /// Every spout of this worker is finished and has no open tree.
    pub fn spouts_done(&self) -> bool {
        self.spouts.iter().all(|p| p.done.load(Ordering::Relaxed))
    }

    /// The component panic that stopped this worker's executors, if one did.
    pub fn crashed(&self) -> Option<Crash> {
        self.control.crashed()
    }

    /// Where batches from peers should go.
    pub fn inbound(&self) -> Arc<Inbound> {
        self.inbound.clone()
    }

    /// Stop every executor, but keep the spouts (open trees are failed to them,
    /// so they replay) for [`Worker::start_carrying`].
    pub fn shutdown_keeping_spouts(self) -> Vec<ParkedSpout> {
        self.control.keep_spouts.store(true, Ordering::Relaxed);
        let control = self.control.clone();
        let _open = self.shutdown();
        std::mem::take(
            &mut *control
                .parked_spouts
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Stop every executor and wait for the threads (components are closed/cleaned up).
    /// Returns the tuple trees still open then: exact, since nothing acks any more.
    pub fn shutdown(self) -> usize {
        self.control.shutdown.store(true, Ordering::Relaxed);
        for h in self.threads {
            if h.join().is_err() {
                tracing::error!("an executor thread panicked");
            }
        }
        self.spouts
            .iter()
            .map(|p| p.pending.load(Ordering::Relaxed))
            .sum()
    }
}
