//! `make dev-cluster` gives a person a real cluster and gives the host back.
//!
//! Without a shared cluster (`make test` runs this first, on its own): it
//! prints `KUBECONFIG=`, serves a Ready node whose runtime is containerd, and
//! on Ctrl-C (SIGINT) tears everything down and restores the host: no
//! process, mount, network namespace or cgroup of the node is left, the
//! global sysctls the kubelet touches are as before, and fixed paths it
//! created are gone. Under the shared cluster (`with-cluster`), a second
//! cluster is refused with a clear message, since kubelets here would share
//! the top-level kubepods cgroups.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::Read;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Kills dev-cluster if the test fails, and then shows what it said on stderr.
struct KillOnDrop(Child, Arc<Mutex<String>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(-(self.0.id() as i32)), Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- dev-cluster stderr ----\n{}", self.1.lock().unwrap());
        }
    }
}

fn spawn() -> (KillOnDrop, mpsc::Receiver<String>) {
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let mut child = KillOnDrop(
        // As the README has a person type it, from the repository root, in a
        // process group of its own (Ctrl-C reaches the whole group).
        Command::new("make")
            .arg("dev-cluster")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .process_group(0)
            // A person's shell, not a sub-make of `make test`'s.
            .env_remove("MAKELEVEL")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        stderr_text.clone(),
    );
    let mut stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            stderr_text
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_exit(child: &mut KillOnDrop, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "dev-cluster did not exit within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dev_cluster_serves_a_real_node_and_gives_the_host_back() {
    if std::env::var_os(squall_testenv::CLUSTER_ENV).is_some() {
        // The shared cluster runs: a second one must be refused, clearly.
        let (mut child, _rx) = spawn();
        let status = wait_exit(&mut child, 60);
        assert!(!status.success(), "a second cluster started");
        let said = child.1.lock().unwrap().clone();
        assert!(
            said.contains("a real cluster already runs"),
            "refusal without the reason: {said}"
        );
        return;
    }
    let sysctls = [
        "vm/overcommit_memory",
        "kernel/panic",
        "kernel/panic_on_oops",
    ];
    let before: Vec<String> = sysctls.iter().map(|k| sysctl(k)).collect();
    let fixed = [
        "/var/lib/kubelet",
        "/var/log/containers",
        "/run/containerd",
        "/var/lib/cni",
    ];
    let absent_before: Vec<&str> = fixed
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let netns_before = netns_names();

    let (mut child, rx) = spawn();
    let first = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("dev-cluster printed nothing within 180 s");
    let kubeconfig = first
        .strip_prefix("KUBECONFIG=")
        .unwrap_or_else(|| panic!("first stdout line is not KUBECONFIG=...: {first:?}"))
        .to_string();
    assert!(Path::new(&kubeconfig).is_file());
    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            &kubeconfig,
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {.status.nodeInfo.containerRuntimeVersion}{"\n"}{end}"#,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.trim().starts_with("squall-node=True containerd://"),
        "{text}"
    );
    let state_dir = child.1.lock().unwrap().clone();
    let state_dir = state_dir
        .lines()
        .find_map(|l| l.strip_prefix("dev-cluster: logs"))
        .map(|l| l.trim().trim_end_matches("/logs").to_string())
        .unwrap();
    assert!(Path::new(&state_dir).is_dir(), "{state_dir}");
    assert!(
        netns_names().len() > netns_before.len(),
        "the node has a network namespace of its own"
    );

    // Ctrl-C: SIGINT to the foreground process group.
    kill(Pid::from_raw(-(child.0.id() as i32)), Signal::SIGINT).unwrap();
    // make itself reports the interrupt; dev-cluster says it stopped cleanly.
    let _ = wait_exit(&mut child, 120);
    let said = child.1.lock().unwrap().clone();
    assert!(said.contains("dev-cluster: stopped"), "{said}");

    // The host is as it was.
    let after: Vec<String> = sysctls.iter().map(|k| sysctl(k)).collect();
    assert_eq!(before, after, "sysctls {sysctls:?} restored");
    for p in absent_before {
        assert!(!Path::new(p).exists(), "{p} left behind");
    }
    assert_eq!(netns_names(), netns_before, "network namespaces left");
    assert!(!Path::new(&state_dir).exists(), "{state_dir} left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&state_dir),
        "mounts left under {state_dir}"
    );
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        assert!(
            !h.path().join("kubepods").exists(),
            "kubepods cgroup left in {}",
            h.path().display()
        );
    }
    let procs = squall_testenv::node::host::pids_with_cmdline(&state_dir);
    assert!(procs.is_empty(), "processes left: {procs:?}");
}
