//! A spout run by a multilang subprocess (Storm's `ShellSpout`).
//!
//! The exchange is synchronous, as in Storm: the executor thread sends `next`, `ack`,
//! `fail`, `activate` or `deactivate`, and handles what the subprocess writes until it
//! says `sync`. Emits it makes from its `ack` and `fail` handlers (where replays
//! usually happen) go out through the same collector. A reader thread turns stdout
//! into messages, so that a subprocess that hangs is noticed after the timeout
//! instead of blocking the executor forever.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use squall_api::{DEFAULT_STREAM, ShellSpec};

use super::process::{Backoff, ShellProcess, Who, count_metric, log_line};
use super::protocol::{self, Emit, ReadError, ShellMsg};
use crate::collector::SpoutCollector;
use crate::component::{ComponentError, Spout, TopologyContext};

/// Emits held while no collector was at hand (bounded; the excess is dropped with an error).
const MAX_DEFERRED: usize = 10_000;
/// Failed ids remembered to recognise their replays.
const MAX_FAILED: usize = 1 << 16;

struct Running {
    proc: ShellProcess,
    rx: Receiver<Result<ShellMsg, ReadError>>,
    started: Instant,
}

pub(crate) struct ShellSpout {
    spec: ShellSpec,
    ctx: TopologyContext,
    task_to_component: Json,
    streams: Vec<String>,
    timeout: Duration,
    who: Who,
    running: Option<Running>,
    retry_at: Instant,
    backoff: Backoff,
    /// Squall's message id → the subprocess's (any JSON value, as in Storm).
    ids: HashMap<u64, Json>,
    next_id: u64,
    /// Failed ids (as JSON text) → the message id they had, so that a replay keeps
    /// its id and the executor counts it as a replay. Bounded.
    failed: HashMap<String, u64>,
    /// Emits made while no collector was at hand (a rebalance failing open trees).
    deferred: VecDeque<Emit>,
    active: bool,
    warned_lenient: bool,
    /// Errors not yet handed to the executor's metrics (they are, at the next
    /// `next_tuple`): how many, and the latest.
    errors: (u64, Option<String>),
    /// `metrics` commands received while no collector was at hand (bounded),
    /// counted at the next `next_tuple`; and how many were refused.
    metrics: Vec<(String, Json)>,
    metrics_refused: u64,
}

/// How long `activate` and `deactivate` wait for their `sync`.
const LENIENT_WAIT: Duration = Duration::from_secs(1);

impl ShellSpout {
    pub(crate) fn start(
        spec: ShellSpec,
        ctx: &TopologyContext,
        task_to_component: Json,
        streams: Vec<String>,
    ) -> Result<ShellSpout, ComponentError> {
        let timeout = Duration::from_secs(u64::from(spec.timeout_seconds.max(1)));
        let mut s = ShellSpout {
            who: Who {
                component: ctx.component_id.clone(),
                task: ctx.task_id,
            },
            spec,
            ctx: ctx.clone(),
            task_to_component,
            streams,
            timeout,
            running: None,
            retry_at: Instant::now(),
            backoff: Backoff::default(),
            ids: HashMap::new(),
            next_id: 1,
            failed: HashMap::new(),
            deferred: VecDeque::new(),
            active: false,
            warned_lenient: false,
            errors: (0, None),
            metrics: Vec::new(),
            metrics_refused: 0,
        };
        s.running = Some(s.launch()?);
        Ok(s)
    }

    fn launch(&self) -> Result<Running, ComponentError> {
        let mut proc = ShellProcess::start(
            &self.spec,
            &self.ctx,
            &self.task_to_component,
            &self.streams,
            self.timeout,
        )?;
        let Some(mut stdout) = proc.stdout.take() else {
            return Err(ComponentError::new("the subprocess has no stdout"));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        std::thread::Builder::new()
            .name(format!("shell-read-{}", self.ctx.task_id))
            .spawn(move || {
                loop {
                    let m = protocol::read_message(&mut stdout).and_then(protocol::parse);
                    let stop = m.is_err();
                    if tx.send(m).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(|e| ComponentError::new(format!("cannot start a thread: {e}")))?;
        Ok(Running {
            proc,
            rx,
            started: Instant::now(),
        })
    }

    /// Make sure a subprocess runs, restarting a dead one when its backoff is over.
    fn ensure_running(&mut self) -> bool {
        if self.running.is_some() {
            return true;
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        match self.launch() {
            Ok(r) => {
                self.running = Some(r);
                if self.active {
                    let _ = self.converse("activate", None, None);
                }
                self.running.is_some()
            }
            Err(e) => {
                self.retry_at = Instant::now() + self.backoff.next_delay(Duration::ZERO);
                tracing::error!(component = %self.who.component, task = self.who.task, error = %e, "multilang spout could not restart");
                false
            }
        }
    }

    /// The subprocess misbehaved: kill it and schedule a restart. Its message ids are
    /// forgotten: acks and fails for them can no longer reach it.
    fn broken(&mut self, why: &str) {
        let lived = self
            .running
            .as_ref()
            .map_or(Duration::ZERO, |r| r.started.elapsed());
        if let Some(mut r) = self.running.take() {
            r.proc.kill();
        }
        let delay = self.backoff.next_delay(lived);
        self.retry_at = Instant::now() + delay;
        self.ids.clear();
        self.failed.clear();
        tracing::error!(component = %self.who.component, task = self.who.task, reason = why, restart_in = ?delay, "multilang spout subprocess killed; restarting it");
        self.note_error(format!("subprocess restarted: {why}"));
    }

    fn write(&mut self, msg: &Json) -> Result<(), String> {
        let Some(r) = self.running.as_mut() else {
            return Err("no subprocess".into());
        };
        let Some(stdin) = r.proc.stdin.as_mut() else {
            return Err("no stdin".into());
        };
        stdin
            .write_all(&protocol::frame(msg))
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to the subprocess: {e}"))
    }

    /// Send one command and handle what comes back until `sync`.
    fn converse(
        &mut self,
        command: &str,
        id: Option<&Json>,
        mut out: Option<&mut SpoutCollector<'_>>,
    ) -> Result<(), ()> {
        if let Err(e) = self.write(&protocol::spout_command(command, id)) {
            self.broken(&e);
            return Err(());
        }
        // storm.js's default `activate` and `deactivate` never call `done`, so they
        // never answer: wait briefly for those, and go on without the `sync`.
        let lenient = matches!(command, "activate" | "deactivate");
        let wait = if lenient {
            self.timeout.min(LENIENT_WAIT)
        } else {
            self.timeout
        };
        loop {
            let Some(r) = self.running.as_ref() else {
                return Err(());
            };
            let msg = match r.rx.recv_timeout(wait) {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    self.broken(&e.to_string());
                    return Err(());
                }
                Err(RecvTimeoutError::Timeout) if lenient => {
                    if !self.warned_lenient {
                        self.warned_lenient = true;
                        tracing::warn!(component = %self.who.component, task = self.who.task, "the subprocess did not answer '{command}' (storm.js's default handlers never do); going on");
                    }
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    let why = format!("no reply to '{command}' within {:?}", self.timeout);
                    self.broken(&why);
                    return Err(());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.broken("the subprocess closed its stdout");
                    return Err(());
                }
            };
            match msg {
                ShellMsg::Sync => return Ok(()),
                ShellMsg::Emit(e) => {
                    let reply = match out.as_deref_mut() {
                        Some(out) => self.emit(e, out),
                        None => self.defer(e),
                    };
                    if let Some(reply) = reply
                        && let Err(e) = self.write(&reply)
                    {
                        self.broken(&e);
                        return Err(());
                    }
                }
                ShellMsg::Log { msg, level } => log_line(&self.who, level, &msg),
                ShellMsg::Error { msg } => {
                    tracing::error!(component = %self.who.component, task = self.who.task, error = %msg, "multilang spout reported an error");
                    self.note_error(msg);
                }
                ShellMsg::Metrics { name, params } => match out.as_deref_mut() {
                    Some(out) => count_metric(
                        &self.who,
                        &mut out.em.metrics,
                        &name,
                        &params,
                        &mut self.metrics_refused,
                    ),
                    None if self.metrics.len() < MAX_DEFERRED => self.metrics.push((name, params)),
                    None => self.metrics_refused += 1,
                },
                ShellMsg::Ack { .. } | ShellMsg::Fail { .. } => {
                    tracing::warn!(component = %self.who.component, "a spout cannot ack or fail; ignored")
                }
                ShellMsg::Pid(_) | ShellMsg::TaskIds | ShellMsg::Unknown(_) => {
                    tracing::warn!(component = %self.who.component, message = ?msg, "unexpected multilang message; ignored")
                }
            }
        }
    }

    /// Emit through the collector; the task-id reply when the subprocess waits for one.
    fn emit(&mut self, e: Emit, out: &mut SpoutCollector<'_>) -> Option<Json> {
        let waits = e.waits_for_task_ids();
        let stream = e.stream.as_deref().unwrap_or(DEFAULT_STREAM);
        let msg_id = e.id.map(|id| {
            let k = self.failed.remove(&id.to_string()).unwrap_or_else(|| {
                self.next_id += 1;
                self.next_id
            });
            self.ids.insert(k, id);
            k
        });
        let targets = match out.emit_inner(stream, e.task, e.values, msg_id, None) {
            Ok(t) => t,
            Err(err) => {
                if let Some(k) = msg_id {
                    self.ids.remove(&k);
                }
                tracing::error!(component = %self.who.component, task = self.who.task, error = %err, "multilang emit dropped");
                Default::default()
            }
        };
        waits.then(|| Json::Array(targets.iter().map(|&t| Json::from(t)).collect()))
    }

    fn defer(&mut self, e: Emit) -> Option<Json> {
        let reply = e.waits_for_task_ids().then(|| Json::Array(Vec::new()));
        if self.deferred.len() < MAX_DEFERRED {
            self.deferred.push_back(e);
        } else {
            tracing::error!(component = %self.who.component, "too many emits outside next_tuple; one dropped");
        }
        reply
    }

    fn note_error(&mut self, msg: String) {
        // Only the latest is shown; the count is what matters for the rest.
        self.errors.0 += 1;
        self.errors.1 = Some(msg);
    }

    fn ack_or_fail(&mut self, command: &str, msg_id: u64, out: Option<&mut SpoutCollector<'_>>) {
        // An id from before a restart means nothing to the new subprocess.
        let Some(id) = self.ids.remove(&msg_id) else {
            return;
        };
        if command == "fail" && self.failed.len() < MAX_FAILED {
            self.failed.insert(id.to_string(), msg_id);
        }
        if self.running.is_some() {
            let _ = self.converse(command, Some(&id), out);
        }
    }
}

impl Spout for ShellSpout {
    fn next_tuple(&mut self, out: &mut SpoutCollector<'_>) {
        if let (n, Some(latest)) = std::mem::take(&mut self.errors) {
            out.em.metrics.note_error(self.who.task, &latest);
            out.em.metrics.errors += n.saturating_sub(1);
        }
        for (name, params) in std::mem::take(&mut self.metrics) {
            count_metric(
                &self.who,
                &mut out.em.metrics,
                &name,
                &params,
                &mut self.metrics_refused,
            );
        }
        if !self.ensure_running() {
            return;
        }
        while let Some(e) = self.deferred.pop_front() {
            self.emit(e, out);
        }
        let _ = self.converse("next", None, Some(out));
    }

    fn ack(&mut self, msg_id: u64) {
        self.ack_or_fail("ack", msg_id, None);
    }

    fn fail(&mut self, msg_id: u64) {
        self.ack_or_fail("fail", msg_id, None);
    }

    fn ack_emitting(&mut self, msg_id: u64, out: &mut SpoutCollector<'_>) {
        self.ack_or_fail("ack", msg_id, Some(out));
    }

    fn fail_emitting(&mut self, msg_id: u64, out: &mut SpoutCollector<'_>) {
        self.ack_or_fail("fail", msg_id, Some(out));
    }

    fn activate(&mut self) {
        self.active = true;
        if self.running.is_some() {
            let _ = self.converse("activate", None, None);
        }
    }

    fn deactivate(&mut self) {
        self.active = false;
        if self.running.is_some() {
            let _ = self.converse("deactivate", None, None);
        }
    }

    fn close(&mut self) {
        if let Some(mut r) = self.running.take() {
            r.proc.kill();
        }
    }
}
