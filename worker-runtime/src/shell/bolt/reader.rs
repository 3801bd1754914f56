//! The reader thread of a multilang bolt's subprocess: it reads the
//! subprocess's stdout and acts on each message at once. Emits go out through
//! the executor's emitter, and the task ids of an emit are written back to stdin
//! from this thread, so `storm.py`, which waits for them after every emit, is
//! answered without a hop to another thread.

use std::sync::atomic::Ordering;

use serde_json::Value as Json;
use squall_api::DEFAULT_STREAM;

use super::{Shared, lock, write_now};
use crate::collector::BoltCollector;
use crate::metrics::now_ns;
use crate::shell::colocate::Colocation;
use crate::shell::process::{count_metric, log_line};
use crate::shell::protocol::{self, ShellMsg};
use crate::tuple::Tuple;

pub(super) fn read_loop(
    s: &Shared,
    stdout: &mut std::io::BufReader<std::process::ChildStdout>,
    mut colocation: Option<Colocation>,
) {
    let mut metrics_refused = 0;
    loop {
        let msg = match protocol::read_message(stdout).and_then(protocol::parse) {
            Ok(m) => m,
            Err(e) => {
                s.mark_broken(e.to_string());
                s.out.close();
                return;
            }
        };
        s.last_heard_ns.store(now_ns(), Ordering::Relaxed);
        // Emits are sent on when the tuple that caused them is acked or failed (one
        // batch per input rather than one per emit), or once they linger.
        let emit = matches!(msg, ShellMsg::Emit(_));
        if let (Some(c), ShellMsg::Emit(e)) = (colocation.as_mut(), &msg) {
            c.emit(e.waits_for_task_ids(), &s.who);
        }
        handle(s, msg, &mut metrics_refused);
        if stdout.buffer().is_empty() {
            let mut em = lock(&s.emitter);
            if emit {
                em.outbox.flush_if_lingering(now_ns());
            } else {
                em.outbox.flush(now_ns());
            }
        }
    }
}

/// Resolve an input tuple id as the subprocess wrote it (storm.py keeps the string
/// it was given; other libraries may turn it into a number).
fn tuple_id(id: &Json) -> Option<u64> {
    match id {
        Json::String(s) => s.parse().ok(),
        Json::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Act on one message; `metrics_refused` counts the `metrics` commands refused
/// so far (see [`count_metric`]).
fn handle(s: &Shared, msg: ShellMsg, metrics_refused: &mut u64) {
    match msg {
        ShellMsg::Emit(e) => {
            let waits = e.waits_for_task_ids();
            let stream = e.stream.as_deref().unwrap_or(DEFAULT_STREAM);
            let targets = {
                let mut em = lock(&s.emitter);
                let inflight = lock(&s.inflight);
                let anchors: Vec<&Tuple> = e
                    .anchors
                    .iter()
                    .filter_map(|a| tuple_id(a).and_then(|id| inflight.get(&id)))
                    .collect();
                let mut out = BoltCollector {
                    em: &mut em,
                    task: s.task,
                    exec_start_ns: 0,
                    acked_current: 0,
                    sample_weight: 1,
                };
                out.emit_inner(stream, e.task, &anchors, e.values)
            };
            let targets = targets.unwrap_or_else(|err| {
                tracing::error!(component = %s.who.component, task = s.task, error = %err, "multilang emit dropped");
                Default::default()
            });
            if waits {
                let reply = Json::Array(targets.iter().map(|&t| Json::from(t)).collect());
                if let Err(e) = write_now(s, std::iter::once(protocol::frame(&reply).as_slice())) {
                    s.mark_broken(format!("writing to the subprocess: {e}"));
                    s.out.close();
                }
            }
        }
        ShellMsg::Ack { id } => finish(s, &id, true),
        ShellMsg::Fail { id } => finish(s, &id, false),
        ShellMsg::Sync => {}
        ShellMsg::Log { msg, level } => log_line(&s.who, level, &msg),
        ShellMsg::Error { msg } => {
            tracing::error!(component = %s.who.component, task = s.task, error = %msg, "multilang bolt reported an error");
            lock(&s.emitter).metrics.note_error(s.task, &msg);
        }
        ShellMsg::Metrics { name, params } => count_metric(
            &s.who,
            &mut lock(&s.emitter).metrics,
            &name,
            &params,
            metrics_refused,
        ),
        ShellMsg::Pid(_) | ShellMsg::TaskIds | ShellMsg::Unknown(_) => {
            tracing::warn!(component = %s.who.component, message = ?msg, "unexpected multilang message; ignored")
        }
    }
}

/// The subprocess acked or failed an input tuple.
fn finish(s: &Shared, id: &Json, ack: bool) {
    let Some(tuple) = tuple_id(id).and_then(|id| lock(&s.inflight).remove(&id)) else {
        // A tick, a heartbeat, or an id from before a restart.
        return;
    };
    let mut em = lock(&s.emitter);
    let mut out = BoltCollector {
        em: &mut em,
        task: s.task,
        exec_start_ns: 0,
        acked_current: 0,
        sample_weight: 1,
    };
    if ack {
        out.ack(&tuple);
    } else {
        out.fail(&tuple);
    }
}
