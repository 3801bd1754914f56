//! Starting, greeting and stopping one multilang subprocess.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value as Json, json};
use squall_api::ShellSpec;

use super::protocol::{self, ShellMsg};
use crate::component::{ComponentError, TopologyContext};

/// Longest stderr line forwarded whole to the worker's log.
const MAX_STDERR_LINE: u64 = 16 << 10;

/// Who a subprocess is, for its log lines.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub(crate) component: String,
    pub(crate) task: u32,
}

/// A started subprocess that answered the handshake.
pub(crate) struct ShellProcess {
    pub(crate) child: Child,
    /// Taken by the writer thread of a bolt.
    pub(crate) stdin: Option<ChildStdin>,
    /// Taken by the reader thread once the handshake is done.
    pub(crate) stdout: Option<BufReader<ChildStdout>>,
    pub(crate) pid: u32,
    stderr: Option<std::thread::JoinHandle<()>>,
}

/// The program to run: a relative path with a `/` resolves against `dir` (as the
/// issue's manifest format says); a bare name is looked up on `PATH` by the OS.
fn program(spec: &ShellSpec, dir: &Path) -> PathBuf {
    let p = PathBuf::from(&spec.command[0]);
    if p.is_relative() && spec.command[0].contains('/') {
        dir.join(p)
    } else {
        p
    }
}

/// The working directory: `dir` (relative to the process's own), else the process's.
fn working_dir(spec: &ShellSpec) -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    match &spec.dir {
        Some(d) => here.join(d),
        None => here,
    }
}

/// Storm's context as `TopologyContext.toJSONString` renders it, for the handshake.
fn context_json(ctx: &TopologyContext, task_to_component: &Json, streams: &[String]) -> Json {
    json!({
        "taskid": ctx.task_id,
        "componentid": ctx.component_id,
        "task->component": task_to_component,
        "streams": streams,
        "topology": ctx.topology,
        "taskindex": ctx.task_index,
        "componenttasks": ctx.component_tasks,
    })
}

impl ShellProcess {
    /// Start the subprocess in its directory, send Storm's handshake (conf, context,
    /// pidDir) and wait up to `timeout` for its pid.
    pub(crate) fn start(
        spec: &ShellSpec,
        ctx: &TopologyContext,
        task_to_component: &Json,
        streams: &[String],
        timeout: Duration,
    ) -> Result<ShellProcess, ComponentError> {
        let who = Who {
            component: ctx.component_id.clone(),
            task: ctx.task_id,
        };
        let fail = ComponentError::new;
        if spec.command.is_empty() {
            return Err(fail("the shell command is empty".into()));
        }
        let dir = working_dir(spec);
        if !dir.is_dir() {
            return Err(fail(format!(
                "shell.dir {} is not a directory",
                dir.display()
            )));
        }
        let pid_dir = std::env::temp_dir()
            .join(format!("squall-shell-{}", std::process::id()))
            .join(format!("{}-{}", ctx.component_id, ctx.task_id));
        std::fs::create_dir_all(&pid_dir)
            .map_err(|e| fail(format!("cannot create pidDir {}: {e}", pid_dir.display())))?;
        let prog = program(spec, &dir);
        let mut child = Command::new(&prog)
            .args(&spec.command[1..])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot start {} (in {}): {e}",
                    prog.display(),
                    dir.display()
                ))
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("the subprocess has no pipes".into()));
        };
        let stderr = forward_stderr(stderr, who.clone());
        let conf: serde_json::Map<String, Json> = ctx
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let setup = json!({
            "conf": conf,
            "context": context_json(ctx, task_to_component, streams),
            "pidDir": pid_dir.display().to_string(),
        });
        let _ = stdin.write_all(&protocol::frame(&setup));
        let _ = stdin.flush();
        let mut proc = ShellProcess {
            child,
            stdin: Some(stdin),
            stdout: None,
            pid: 0,
            stderr: Some(stderr),
        };
        // Read the pid on a helper thread, so that a silent subprocess cannot hang us.
        let (tx, rx) = mpsc::channel();
        let mut stdout = BufReader::new(stdout);
        std::thread::Builder::new()
            .name(format!("shell-hello-{}", ctx.task_id))
            .spawn(move || {
                let r = protocol::read_message(&mut stdout).map(protocol::parse);
                let _ = tx.send((r, stdout));
            })
            .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
        match rx.recv_timeout(timeout) {
            Ok((Ok(Ok(ShellMsg::Pid(pid))), stdout)) => {
                proc.stdout = Some(stdout);
                proc.pid = pid;
                tracing::info!(component = %who.component, task = who.task, pid, command = %spec.command.join(" "), "multilang subprocess started");
                Ok(proc)
            }
            Ok((other, _)) => {
                proc.kill();
                let got = match other {
                    Ok(Ok(m)) => format!("{m:?}"),
                    Ok(Err(e)) | Err(e) => e.to_string(),
                };
                Err(fail(format!(
                    "{} did not answer the multilang handshake with its pid: {got}",
                    spec.command.join(" ")
                )))
            }
            Err(_) => {
                proc.kill();
                Err(fail(format!(
                    "{} did not answer the multilang handshake within {timeout:?}",
                    spec.command.join(" ")
                )))
            }
        }
    }

    /// Kill the subprocess and reap it; idempotent.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ShellProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copy the subprocess's stderr to the worker's log, line by line, tagged.
fn forward_stderr(stderr: std::process::ChildStderr, who: Who) -> std::thread::JoinHandle<()> {
    let name = format!("shell-stderr-{}", who.task);
    let run = move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match std::io::Read::take(&mut r, MAX_STDERR_LINE).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    tracing::warn!(component = %who.component, task = who.task, "subprocess stderr: {}", text.trim_end());
                }
            }
        }
    };
    std::thread::Builder::new()
        .name(name)
        .spawn(run)
        .unwrap_or_else(|_| std::thread::spawn(|| ()))
}

/// A log line from the subprocess, at its level (Storm's `log` command).
pub(crate) fn log_line(who: &Who, level: u8, msg: &str) {
    match level {
        0 => tracing::trace!(component = %who.component, task = who.task, "{msg}"),
        1 => tracing::debug!(component = %who.component, task = who.task, "{msg}"),
        2 => tracing::info!(component = %who.component, task = who.task, "{msg}"),
        3 => tracing::warn!(component = %who.component, task = who.task, "{msg}"),
        _ => tracing::error!(component = %who.component, task = who.task, "{msg}"),
    }
}

/// Restart pacing for a subprocess that keeps dying: 100 ms doubling to 10 s,
/// back to the start once a subprocess has lived a minute.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    pub(crate) fn next_delay(&mut self, lived: Duration) -> Duration {
        if lived > Duration::from_secs(60) {
            self.failures = 0;
        }
        let d = Duration::from_millis(100) * 2u32.saturating_pow(self.failures.min(7));
        self.failures = self.failures.saturating_add(1);
        d.min(Duration::from_secs(10))
    }
}

/// Storm's multilang `metrics` command, as Storm's `CountShellMetric` takes it:
/// `params` is a non-negative integer added to the component's counter `name`.
/// A refusal (other params, or a name beyond the executor's limit) is logged
/// at its first occurrence and then at every power of two (`refused` counts them).
pub(crate) fn count_metric(
    who: &Who,
    metrics: &mut crate::metrics::ExecMetrics,
    name: &str,
    params: &serde_json::Value,
    refused: &mut u64,
) {
    let why = match params.as_u64() {
        None => format!("params must be a non-negative integer (a count), got {params}"),
        Some(n) if metrics.add_component_metric(name, n) => return,
        Some(_) => format!(
            "a component keeps at most {} metrics",
            crate::metrics::MAX_COMPONENT_METRICS
        ),
    };
    *refused += 1;
    if refused.is_power_of_two() {
        tracing::warn!(component = %who.component, task = who.task, metric = %name, refused = *refused, "multilang metric not counted: {why}");
    }
}
