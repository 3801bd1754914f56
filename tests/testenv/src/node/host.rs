//! What a real node changes on the host outside its own directory, recorded
//! before it starts and undone after it stops: global sysctls, fixed paths,
//! mounts, cgroups and stray processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Global (not per network namespace) sysctls the kubelet sets.
const GLOBAL_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// Paths outside the state directory that the kubelet, containerd, runc, CNI
/// or buildah create at fixed places.
const FIXED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/var/lib/cni",
    "/run/runc",
    "/etc/cni/net.d/cni.lock",
    "/run/mount",
];

/// The host as it was before a node started.
#[derive(Debug, Clone)]
pub struct HostSnapshot {
    sysctls: Vec<(String, String)>,
    absent: Vec<PathBuf>,
    netns_before: Vec<String>,
}

impl HostSnapshot {
    /// Records the sysctls, which fixed paths do not exist yet, and the
    /// network namespace handles that already exist.
    pub fn take() -> HostSnapshot {
        let sysctls = GLOBAL_SYSCTLS
            .iter()
            .filter_map(|k| {
                let v = std::fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
                Some((k.to_string(), v.trim().to_string()))
            })
            .collect();
        let absent = FIXED_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        HostSnapshot {
            sysctls,
            absent,
            netns_before: netns_handles(),
        }
    }

    /// Restores the sysctls and removes the fixed paths that did not exist
    /// before, and pod network namespace handles (`cni-*`) left behind.
    /// Call after every process of the node has stopped and `dir` is unmounted.
    pub fn restore(&self) {
        for (k, v) in &self.sysctls {
            let path = format!("/proc/sys/{k}");
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != v
                && let Err(e) = std::fs::write(&path, v)
            {
                tracing::warn!("cannot restore {k}={v}: {e}");
            }
        }
        for h in netns_handles() {
            if h.starts_with("cni-") && !self.netns_before.contains(&h) {
                let p = Path::new(super::netns::NETNS_DIR).join(&h);
                let _ = umount2(&p, MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&p);
            }
        }
        for p in &self.absent {
            unmount_under(p);
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
        remove_cgroups("kubepods");
    }
}

fn netns_handles() -> Vec<String> {
    std::fs::read_dir(super::netns::NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Unmounts everything at or below `dir`, deepest first (lazily if busy).
pub fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            if umount2(&m, MntFlags::empty()).is_err() {
                let _ = umount2(&m, MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Kills every process left in cgroups named `name` at the top of each
/// cgroup v1 hierarchy (and the unified one), then removes those cgroups,
/// deepest first. Container processes escape every process group of ours;
/// their cgroups always hold them.
pub fn remove_cgroups(name: &str) {
    let tops: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|h| h.path().join(name))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for _ in 0..10 {
        let mut any = false;
        for top in &tops {
            for pid in pids_in_cgroup_tree(top) {
                any = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for top in &tops {
        rmdir_tree(top);
    }
}

fn pids_in_cgroup_tree(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(pids_in_cgroup_tree(&e.path()));
            }
        }
    }
    out
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    // cgroup directories are removed with rmdir(2) only, and only when empty of tasks.
    let _ = std::fs::remove_dir(dir);
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILLs every process whose command line mentions `needle` (the node's
/// state directory): containerd shims and the containers' processes escape
/// our process groups, so they are found by what they were started with.
pub fn kill_by_cmdline(needle: &str) {
    for _ in 0..5 {
        let pids = pids_with_cmdline(needle);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
