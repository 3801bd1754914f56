//! A bolt run by multilang subprocesses (Storm's `ShellBolt`), one per task.
//!
//! Three threads serve each task's subprocess, so that the executor thread never
//! waits on a pipe and a task-id reply never waits on the executor:
//!
//! - the executor thread takes batches from the bolt's queue, records each input
//!   tuple under a fresh id, and queues its JSON for the writer; it also sends ticks
//!   and heartbeats, watches the subprocess's health and restarts it;
//! - the writer thread writes the queued tuples, ticks and heartbeats to the
//!   subprocess's stdin;
//! - the reader thread (in [`reader`]) reads the subprocess's stdout and acts on it
//!   at once: emits go out through the executor's emitter (shared under a mutex),
//!   and it writes the task ids of an emit to stdin itself, so `storm.py`, which
//!   waits for them after every emit, is answered without a hop to another thread.
//!
//! Both writers share stdin under a mutex, each writing whole messages. The writer
//! may block on a full pipe while holding it; that cannot deadlock the reader,
//! because a subprocess that waits for task ids is reading its stdin.
//!
//! A subprocess that exits, writes garbage or stays silent past its timeout is
//! killed and restarted in place, with backoff. The tuples it held are failed, so
//! their trees replay from their spouts: nothing is lost, and the worker's other
//! tasks keep running (Storm restarts the whole worker).

use std::collections::{HashMap, VecDeque};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use squall_api::{ShellSpec, TaskId};

use super::colocate::Colocation;
use super::process::{Backoff, ShellProcess, Who};
use super::protocol;
use crate::collector::{BoltCollector, Emitter};
use crate::component::{ComponentError, TopologyContext};
use crate::executor::{ExecutorCore, WorkerControl, misrouted};
use crate::metrics::{MetricsSlot, now_ns};
use crate::transfer::{Batch, Msg};
use crate::tuple::{SYSTEM_COMPONENT, TICK_STREAM, Tuple};

mod reader;

use reader::read_loop;

/// Input tuples queued for a subprocess but not yet written (Storm's
/// `topology.shellbolt.max.pending` is 100): beyond this the executor waits, which
/// pushes back on the bolt's upstream.
const MAX_QUEUED_TUPLES: usize = 256;
/// Storm's ShellBolt heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(1);
const IDLE_WAIT: Duration = Duration::from_millis(20);
const PUBLISH: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the writer thread writes, in order; replies never wait for room.
#[derive(Default)]
struct Outgoing {
    queue: VecDeque<Vec<u8>>,
    tuples: usize,
    closed: bool,
}

#[derive(Default)]
struct WriteQueue {
    state: Mutex<Outgoing>,
    changed: Condvar,
}

impl WriteQueue {
    /// Queue an input tuple; waits while the queue is full. False once closed.
    fn push_tuple(&self, bytes: Vec<u8>) -> bool {
        let mut s = lock(&self.state);
        while s.tuples >= MAX_QUEUED_TUPLES && !s.closed {
            s = self
                .changed
                .wait_timeout(s, IDLE_WAIT)
                .map_or_else(|p| p.into_inner().0, |(g, _)| g);
        }
        if s.closed {
            return false;
        }
        s.tuples += 1;
        s.queue.push_back(bytes);
        self.changed.notify_all();
        true
    }

    /// Queue a task-id reply or a heartbeat: never waits (each is small and bounded
    /// by what the subprocess itself sends).
    fn push_reply(&self, bytes: Vec<u8>) {
        let mut s = lock(&self.state);
        if !s.closed {
            s.queue.push_back(bytes);
            self.changed.notify_all();
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// Everything queued, or `None` once closed and drained.
    fn take(&self) -> Option<VecDeque<Vec<u8>>> {
        let mut s = lock(&self.state);
        while s.queue.is_empty() && !s.closed {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.queue.is_empty() {
            return None;
        }
        s.tuples = 0;
        let q = std::mem::take(&mut s.queue);
        self.changed.notify_all();
        Some(q)
    }
}

/// State shared by a task's threads.
struct Shared {
    who: Who,
    task: TaskId,
    emitter: Arc<Mutex<Emitter>>,
    /// Input tuples the subprocess holds, by the id it was given.
    inflight: Mutex<HashMap<u64, Tuple>>,
    out: WriteQueue,
    /// When the subprocess last wrote anything (ns on the runtime clock).
    last_heard_ns: AtomicU64,
    /// The subprocess's stdin, shared by the writer thread and the reader's replies.
    stdin: Mutex<Option<BufWriter<std::process::ChildStdin>>>,
    /// Why the subprocess is broken, once the reader or writer saw it.
    broken: Mutex<Option<String>>,
    dead: AtomicBool,
}

impl Shared {
    fn mark_broken(&self, why: String) {
        let mut b = lock(&self.broken);
        if b.is_none() {
            *b = Some(why);
        }
        self.dead.store(true, Ordering::Release);
    }
}

/// One task: its subprocess and the threads around it.
struct TaskProc {
    ctx: TopologyContext,
    shared: Arc<Shared>,
    proc: Option<ShellProcess>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    backoff: Backoff,
    next_id: u64,
}

/// How to start a task's subprocess.
pub(crate) struct ShellBoltSetup {
    pub(crate) spec: ShellSpec,
    pub(crate) task_to_component: Json,
    pub(crate) streams: Vec<String>,
}

pub(crate) struct ShellBoltExecutor {
    emitter: Arc<Mutex<Emitter>>,
    rx: Receiver<Batch>,
    control: Arc<WorkerControl>,
    metrics: MetricsSlot,
    first_task: TaskId,
    tasks: Vec<TaskProc>,
    setup: ShellBoltSetup,
    timeout: Duration,
    tick_ns: Option<u64>,
}

impl ShellBoltExecutor {
    /// Start every task's subprocess; a subprocess that cannot start fails the start.
    pub(crate) fn start(
        core: ExecutorCore,
        contexts: Vec<TopologyContext>,
        setup: ShellBoltSetup,
        tick_ns: Option<u64>,
    ) -> Result<ShellBoltExecutor, (TaskId, ComponentError)> {
        let timeout = Duration::from_secs(u64::from(setup.spec.timeout_seconds.max(1)));
        let mut ex = ShellBoltExecutor {
            emitter: Arc::new(Mutex::new(core.emitter)),
            rx: core.rx,
            control: core.control,
            metrics: core.metrics,
            first_task: core.first_task,
            tasks: Vec::new(),
            setup,
            timeout,
            tick_ns,
        };
        for ctx in contexts {
            let mut t = TaskProc {
                shared: fresh_shared(&ex.emitter, &ctx),
                ctx,
                proc: None,
                threads: Vec::new(),
                started: Instant::now(),
                backoff: Backoff::default(),
                next_id: 1,
            };
            launch(&ex.setup, ex.timeout, &ex.emitter, &mut t).map_err(|e| (t.ctx.task_id, e))?;
            ex.tasks.push(t);
        }
        Ok(ex)
    }

    /// Kill a broken subprocess, fail the tuples it held, wait out the backoff and
    /// start a new one (retrying until it starts or the worker shuts down).
    fn restart(&mut self, idx: usize, why: &str) {
        let t = &mut self.tasks[idx];
        let held = stop(t);
        let failed = held.len();
        {
            let mut em = lock(&self.emitter);
            em.metrics
                .note_error(t.ctx.task_id, &format!("subprocess restarted: {why}"));
            let mut out = BoltCollector {
                em: &mut em,
                task: t.ctx.task_id,
                exec_start_ns: 0,
                acked_current: 0,
                sample_weight: 1,
            };
            for tuple in held.values() {
                out.fail(tuple);
            }
            em.outbox.flush(now_ns());
        }
        loop {
            let t = &mut self.tasks[idx];
            let delay = t.backoff.next_delay(t.started.elapsed());
            tracing::error!(component = %t.ctx.component_id, task = t.ctx.task_id, reason = why, failed_tuples = failed, restart_in = ?delay, "multilang bolt subprocess killed; restarting it");
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if self.control.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(IDLE_WAIT.min(until.saturating_duration_since(Instant::now())));
            }
            match launch(
                &self.setup,
                self.timeout,
                &self.emitter,
                &mut self.tasks[idx],
            ) {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(component = %self.tasks[idx].ctx.component_id, error = %e, "multilang bolt could not restart");
                    self.tasks[idx].started = Instant::now();
                }
            }
        }
    }

    pub(crate) fn run(mut self) {
        let now = now_ns();
        let mut next_tick = self.tick_ns.map(|t| now + t);
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        let mut next_publish = Instant::now() + PUBLISH;
        loop {
            if self.control.shutdown.load(Ordering::Relaxed) {
                break;
            }
            self.check_health();
            let now = now_ns();
            if let (Some(at), Some(every)) = (next_tick, self.tick_ns)
                && now >= at
            {
                next_tick = Some(at + every);
                for i in 0..self.tasks.len() {
                    self.send_system(i, TICK_STREAM, &[Json::from(every / 1_000_000_000)]);
                }
            }
            if Instant::now() >= next_heartbeat {
                next_heartbeat = Instant::now() + HEARTBEAT;
                for i in 0..self.tasks.len() {
                    self.send_system(i, "__heartbeat", &[]);
                }
            }
            if Instant::now() >= next_publish {
                next_publish = Instant::now() + PUBLISH;
                self.publish();
            }
            let wait = next_tick.map_or(IDLE_WAIT, |at| {
                Duration::from_nanos(at.saturating_sub(now)).min(IDLE_WAIT)
            });
            match self.rx.recv_timeout(wait) {
                Ok(batch) => {
                    self.process(batch);
                    while !self.control.shutdown.load(Ordering::Relaxed)
                        && let Ok(batch) = self.rx.try_recv()
                    {
                        self.process(batch);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    lock(&self.emitter).outbox.flush(now_ns());
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for t in &mut self.tasks {
            stop(t);
        }
        lock(&self.emitter).outbox.flush(now_ns());
        self.publish();
    }

    fn publish(&self) {
        let mut em = lock(&self.emitter);
        em.metrics.at_ns = now_ns();
        lock(&self.metrics).clone_from(&em.metrics);
    }

    /// Restart subprocesses that broke or went silent past the timeout.
    fn check_health(&mut self) {
        let now = now_ns();
        for i in 0..self.tasks.len() {
            let s = &self.tasks[i].shared;
            let why = if s.dead.load(Ordering::Acquire) {
                lock(&s.broken).clone()
            } else {
                let silent = Duration::from_nanos(
                    now.saturating_sub(s.last_heard_ns.load(Ordering::Relaxed)),
                );
                (silent > self.timeout)
                    .then(|| format!("no message (not even a heartbeat reply) for {silent:?}"))
            };
            if let Some(why) = why {
                self.restart(i, &why);
            }
        }
    }

    fn process(&mut self, batch: Batch) {
        let first = self.first_task;
        for env in batch {
            // A stop does not wait for the queue to drain through a slow
            // subprocess: what is left is dropped, and its trees replay.
            if self.control.shutdown.load(Ordering::Relaxed) {
                return;
            }
            let idx = env.task.wrapping_sub(first) as usize;
            match env.msg {
                Msg::Tuple(tuple) if idx < self.tasks.len() => self.send_tuple(idx, tuple),
                msg => misrouted(&mut lock(&self.emitter), first, env.task, &msg, "bolt"),
            }
        }
    }

    /// Hand one input tuple to a task's subprocess.
    fn send_tuple(&mut self, idx: usize, tuple: Tuple) {
        {
            let t = &mut self.tasks[idx];
            let id = t.next_id;
            t.next_id += 1;
            let msg = protocol::tuple_message(
                &id.to_string(),
                tuple.source_component(),
                tuple.source_stream(),
                i64::from(tuple.source_task()),
                tuple.values(),
            );
            tuple.started_ns.set(now_ns());
            let shared = t.shared.clone();
            lock(&shared.inflight).insert(id, tuple);
            lock(&self.emitter).metrics.executed += 1;
            if shared.out.push_tuple(protocol::frame(&msg)) {
                return;
            }
            // The subprocess broke while we waited: restart it; the tuple was failed
            // with the others it held, so it is not sent again.
            let why = lock(&shared.broken)
                .clone()
                .unwrap_or_else(|| "stopped".into());
            if !self.control.shutdown.load(Ordering::Relaxed) {
                self.restart(idx, &why);
            }
        }
    }

    /// A tick or heartbeat tuple (task -1, component `__system`, as Storm sends them).
    fn send_system(&self, idx: usize, stream: &str, values: &[Json]) {
        let t = &self.tasks[idx];
        let msg = serde_json::json!({
            "id": format!("{stream}-{}", now_ns()),
            "comp": SYSTEM_COMPONENT,
            "stream": stream,
            "task": -1,
            "tuple": values,
        });
        t.shared.out.push_reply(protocol::frame(&msg));
    }
}

fn fresh_shared(emitter: &Arc<Mutex<Emitter>>, ctx: &TopologyContext) -> Arc<Shared> {
    Arc::new(Shared {
        who: Who {
            component: ctx.component_id.clone(),
            task: ctx.task_id,
        },
        task: ctx.task_id,
        emitter: emitter.clone(),
        inflight: Mutex::new(HashMap::new()),
        out: WriteQueue::default(),
        last_heard_ns: AtomicU64::new(now_ns()),
        stdin: Mutex::new(None),
        broken: Mutex::new(None),
        dead: AtomicBool::new(false),
    })
}

/// Start the task's subprocess and its reader and writer threads.
fn launch(
    setup: &ShellBoltSetup,
    timeout: Duration,
    emitter: &Arc<Mutex<Emitter>>,
    t: &mut TaskProc,
) -> Result<(), ComponentError> {
    let mut proc = ShellProcess::start(
        &setup.spec,
        &t.ctx,
        &setup.task_to_component,
        &setup.streams,
        timeout,
    )?;
    let (Some(mut stdout), Some(stdin)) = (proc.stdout.take(), proc.stdin.take()) else {
        return Err(ComponentError::new("the subprocess has no pipes"));
    };
    let shared = fresh_shared(emitter, &t.ctx);
    *lock(&shared.stdin) = Some(BufWriter::with_capacity(64 << 10, stdin));
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .map_err(|e| ComponentError::new(format!("cannot start a thread: {e}")))
    };
    let w = shared.clone();
    let writer = spawn(
        format!("shell-write-{}", t.ctx.task_id),
        Box::new(move || write_loop(&w)),
    )?;
    let r = shared.clone();
    // The process that speaks the protocol (a wrapper such as `env` execs it;
    // never our own pid, whatever the subprocess claims).
    let talker = if proc.pid != 0 && proc.pid != std::process::id() {
        proc.pid
    } else {
        proc.child.id()
    };
    let task = t.ctx.task_id;
    let reader = spawn(
        format!("shell-read-{task}"),
        Box::new(move || read_loop(&r, &mut stdout, Colocation::new(talker, task))),
    )?;
    t.shared = shared;
    t.proc = Some(proc);
    t.threads = vec![writer, reader];
    t.started = Instant::now();
    Ok(())
}

/// Stop a task's subprocess and threads; returns the tuples it still held.
fn stop(t: &mut TaskProc) -> HashMap<u64, Tuple> {
    t.shared.out.close();
    t.shared.dead.store(true, Ordering::Release);
    if let Some(mut p) = t.proc.take() {
        p.kill();
    }
    for h in t.threads.drain(..) {
        let _ = h.join();
    }
    std::mem::take(&mut *lock(&t.shared.inflight))
}

fn write_loop(s: &Shared) {
    while let Some(items) = s.out.take() {
        if let Err(e) = write_now(s, items.iter().map(Vec::as_slice)) {
            s.mark_broken(format!("writing to the subprocess: {e}"));
            s.out.close();
            return;
        }
    }
    // Closing stdin tells a well-behaved subprocess to end.
    lock(&s.stdin).take();
}

/// Write whole messages to the subprocess's stdin and flush.
fn write_now<'a>(s: &Shared, items: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
    let mut stdin = lock(&s.stdin);
    let Some(w) = stdin.as_mut() else {
        return Err(std::io::Error::other("stdin is closed"));
    };
    for b in items {
        w.write_all(b)?;
    }
    w.flush()
}
