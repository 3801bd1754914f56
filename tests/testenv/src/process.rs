//! Child processes that die with us.
//!
//! Every child is spawned from one long-lived thread with
//! `PR_SET_PDEATHSIG=SIGKILL` (the signal fires when the *spawning thread*
//! exits, so that thread must outlive every child: it lives as long as the
//! process), in its own process group so that signals reach grandchildren too.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> io::Result<&'static Mutex<mpsc::Sender<Request>>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    if let Some(s) = SPAWNER.get() {
        return Ok(s);
    }
    let (tx, rx) = mpsc::channel::<Request>();
    let tx = SPAWNER.get_or_init(move || {
        let spawned = std::thread::Builder::new()
            .name("squall-testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    Ok(tx)
}

/// Spawns `cmd` in its own process group, killed (SIGKILL) if this process dies.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    cmd.process_group(0);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe syscalls prctl(2), getppid(2) and kill(2); it
    // allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            if nix::unistd::getppid() != parent {
                // The parent already died before prctl took effect.
                let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    {
        let tx = spawner()?
            .lock()
            .map_err(|_| io::Error::other("spawner lock poisoned"))?;
        tx.send((cmd, reply_tx))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Sends `sig` to the process group led by `pid` (our children lead their own group).
pub(crate) fn signal_group(pid: u32, sig: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::EINVAL)?;
    killpg(Pid::from_raw(pid), sig)
}

/// Waits for `child` up to `timeout`, polling.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM the group, wait up to `grace`, then SIGKILL and reap.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        // Still kill leftovers of the group.
        let _ = signal_group(child.id(), Signal::SIGKILL);
        return;
    }
    let _ = signal_group(child.id(), Signal::SIGTERM);
    if wait_timeout(child, grace).is_none() {
        let _ = signal_group(child.id(), Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = signal_group(child.id(), Signal::SIGKILL);
}

/// A long-running component (etcd, kube-apiserver, ...) with its output in a
/// log file; SIGTERM, then SIGKILL after a few seconds, on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `program args...` with stdout+stderr appended to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<ManagedProcess> {
        let out = File::create(log).ctx(|| format!("create log {}", log.display()))?;
        let err = out
            .try_clone()
            .ctx(|| format!("dup log {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = spawn(cmd).ctx(|| format!("start {name}"))?;
        Ok(ManagedProcess {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// SIGTERM, then SIGKILL after a few seconds (what drop does), now.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }

    /// An error if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name.clone(),
                status: status.to_string(),
                log_tail: self.log_tail(40),
            }),
            Err(e) => Err(Error::Io {
                context: format!("wait for {}", self.name),
                source: e,
            }),
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// The last `n` lines of a file (empty if unreadable).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A currently free TCP port on 127.0.0.1 (bind :0 and release).
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").ctx(|| "bind a free port".into())?;
    let port = l.local_addr().ctx(|| "local addr".into())?.port();
    Ok(port)
}
