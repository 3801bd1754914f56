//! Keeping a multilang bolt's subprocess and its reader thread on one CPU while
//! they talk in round trips.
//!
//! `storm.py` (and `storm.js`, `storm.rb`) waits for the task ids of every emit:
//! each word is a write by the subprocess, a wake-up of the reader thread, a
//! reply, and a wake-up of the subprocess. When the two run on different CPUs,
//! each wake-up is an inter-processor interrupt, and on a VM an idle vCPU is
//! woken through the hypervisor; the pair then spends most of its time waiting.
//! On one CPU a wake-up is a plain context switch. Measured on the 2-core test VM
//! (`squall-bench-multilang`, docs/benchmarks.md): 2.9k → 5.0k sentences/s
//! through one `storm.py` bolt.
//!
//! A subprocess that does not wait (pystorm sends `need_task_ids: false`) is
//! better off with a CPU of its own, since the reader then has work of its own
//! to do in parallel. So the reader watches what the emits ask for, a window at
//! a time, and pins the pair to one CPU only while most emits wait for task ids;
//! otherwise both may run anywhere the worker may.
//!
//! `SQUALL_SHELL_COLOCATE=off` turns this off (for comparisons).

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Emits per decision.
const WINDOW: u32 = 1024;

/// Whether most emits of the last window waited for their task ids. Pure.
#[derive(Debug, Default)]
pub(crate) struct RoundTrips {
    emits: u32,
    waiting: u32,
    colocated: bool,
}

impl RoundTrips {
    /// Count one emit; `Some(colocate)` when the window's verdict changes.
    pub(crate) fn emit(&mut self, waits_for_task_ids: bool) -> Option<bool> {
        self.emits += 1;
        self.waiting += u32::from(waits_for_task_ids);
        if self.emits < WINDOW {
            return None;
        }
        let want = self.waiting * 2 > self.emits;
        self.emits = 0;
        self.waiting = 0;
        (want != self.colocated).then(|| {
            self.colocated = want;
            want
        })
    }
}

/// The CPU affinity of a subprocess and of the calling (reader) thread.
pub(crate) struct Colocation {
    child: Pid,
    /// Where the worker may run (the reader's mask when it started).
    allowed: CpuSet,
    /// The CPU the pair goes to.
    cpu: usize,
    round_trips: RoundTrips,
}

impl Colocation {
    /// For the subprocess `child`, served by the calling thread; `None` when it
    /// is turned off, or the worker may use only one CPU (nothing to gain).
    /// `spread` (the task id) picks the CPU, so that the pairs of a worker's
    /// shell tasks do not all land on the same one.
    pub(crate) fn new(child: u32, spread: u32) -> Option<Colocation> {
        if std::env::var("SQUALL_SHELL_COLOCATE").is_ok_and(|v| v == "off" || v == "0") {
            return None;
        }
        let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect();
        if cpus.len() < 2 {
            return None;
        }
        Some(Colocation {
            child: Pid::from_raw(i32::try_from(child).ok()?),
            cpu: cpus[spread as usize % cpus.len()],
            allowed,
            round_trips: RoundTrips::default(),
        })
    }

    /// Count an emit, and move the pair when the verdict changes.
    pub(crate) fn emit(&mut self, waits_for_task_ids: bool, who: &super::process::Who) {
        let Some(colocate) = self.round_trips.emit(waits_for_task_ids) else {
            return;
        };
        let mask = if colocate {
            let mut one = CpuSet::new();
            if one.set(self.cpu).is_err() {
                return;
            }
            one
        } else {
            self.allowed
        };
        // The subprocess may have just exited; the restart path deals with that.
        let r = sched_setaffinity(Pid::from_raw(0), &mask)
            .and_then(|()| sched_setaffinity(self.child, &mask));
        match r {
            Ok(()) => {
                tracing::info!(component = %who.component, task = who.task, cpu = self.cpu, colocate, "multilang subprocess and its reader: CPU affinity changed")
            }
            Err(e) => {
                tracing::debug!(component = %who.component, task = who.task, error = %e, "cannot change the CPU affinity of a multilang subprocess")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_while_most_emits_wait_and_lets_go_when_they_stop() {
        let mut r = RoundTrips::default();
        for _ in 0..WINDOW - 1 {
            assert_eq!(r.emit(true), None, "no verdict before a whole window");
        }
        assert_eq!(r.emit(true), Some(true));
        for _ in 0..WINDOW {
            assert_eq!(r.emit(true), None, "same verdict: nothing to change");
        }
        // A window of pystorm-like emits (no waiting) lets the pair go.
        let verdicts: Vec<_> = (0..WINDOW).filter_map(|_| r.emit(false)).collect();
        assert_eq!(verdicts, [false]);
        // Exactly half is not most.
        let verdicts: Vec<_> = (0..WINDOW).filter_map(|i| r.emit(i % 2 == 0)).collect();
        assert!(verdicts.is_empty());
    }
}
