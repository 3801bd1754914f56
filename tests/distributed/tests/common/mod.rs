//! Helpers: an etcd that can be restarted on the same ports, and the launcher.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_squall-test-topology");

/// A unique scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("squall-dist-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("SQUALL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd on fixed loopback ports, so that it can be killed and started again.
pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let mut e = Etcd {
            child: None,
            url: String::new(),
            client_port: free_port(),
            peer_port: free_port(),
            dir: dir.join("etcd"),
        };
        e.url = format!("http://127.0.0.1:{}", e.client_port);
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let bin = squall_testenv::binary("etcd").expect("etcd binary: run `make testenv` first");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(bin)
            .arg("--name=squall")
            .arg(format!("--data-dir={}", self.dir.display()))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=squall={peer}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen within 20s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL etcd (an outage), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `local --processes` launcher.
pub struct Launch {
    pub child: Child,
    pub logs: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Launch {
    pub fn start(etcd: &str, manifest: &str, dir: &Path, extra: &[&str]) -> Launch {
        Self::start_with_env(etcd, manifest, dir, extra, &[])
    }

    /// [`Launch::start`] with more environment for the launcher and its workers.
    pub fn start_with_env(
        etcd: &str,
        manifest: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Launch {
        let path = dir.join("topology.yaml");
        std::fs::write(&path, manifest).unwrap();
        let logs = dir.join("logs");
        let mut child = Command::new(BIN)
            .args([
                "local",
                "--processes",
                "--json",
                "--report-interval",
                "0s",
                "--etcd",
                etcd,
                "--log-dir",
            ])
            .arg(&logs)
            .args(extra)
            .arg(&path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the launcher");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Launch {
            child,
            logs,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Print the tail of the launcher's stderr and of every worker log, for
    /// a failed test's output.
    fn dump_logs(&self) {
        fn tail(text: &str) -> String {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(80)..].join("\n")
        }
        eprintln!("--- launcher stderr (tail) ---\n{}", tail(&self.stderr()));
        let Ok(entries) = std::fs::read_dir(&self.logs) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        logs.sort();
        for log in logs
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("--- {} (tail) ---\n{}", log.display(), tail(&text));
        }
    }

    /// The pid of a slot's worker (as last (re)started by the launcher).
    pub fn worker_pid(&self, slot: u32) -> i32 {
        let f = self.logs.join(format!("worker-{slot}.pid"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(&f)
                && let Ok(p) = s.trim().parse()
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no pid file {} within 10s",
                f.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the run to end by itself; the JSON summary.
    pub fn wait(mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                assert!(
                    status.success(),
                    "launcher failed ({status}):\n{}\n{}",
                    out,
                    self.stderr()
                );
                let last = out.lines().last().unwrap_or_default();
                return serde_json::from_str(last).unwrap_or_else(|e| {
                    panic!(
                        "no JSON summary ({e}) in:\n{out}\nstderr:\n{}",
                        self.stderr()
                    )
                });
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the run did not finish within {timeout:?}; launcher stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        // A failed test shows what the launcher and its workers said last.
        if std::thread::panicking() {
            self.dump_logs();
        }
        // A launcher that is still running on a failed test takes its children along.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A word count whose two spout tasks each emit `limit` sentences at `rate`/s.
/// With 3 workers the plan puts the spout executors in slots 0 and 1; slot 2 holds none.
pub fn word_count(name: &str, workers: u32, rate: u32, limit: u32) -> String {
    format!(
        "apiVersion: squall.dev/v1alpha1
kind: Topology
metadata:
  name: {name}
spec:
  image: squall-examples:test
  workers: {workers}
  messageTimeoutSeconds: 3
  maxSpoutPending: 500
  spouts:
    - {{id: sentences, component: RandomSentenceSpout, parallelism: 2, config: {{rate: {rate}, limit: {limit}}}}}
  bolts:
    - {{id: split, component: SplitSentence, parallelism: 3}}
    - {{id: count, component: WordCount, parallelism: 3, tasks: 6}}
  streams:
    - {{from: sentences, to: split, grouping: {{type: SHUFFLE}}}}
    - {{from: split, to: count, grouping: {{type: FIELDS, fields: [word]}}}}
"
    )
}

pub fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("summary has no '{k}': {v}"))
}

/// Every root acked: the spouts finished by themselves and acked exactly `expected` trees.
pub fn assert_all_acked(s: &serde_json::Value, expected: u64) {
    assert_eq!(
        s["stopped_by"], "limit",
        "the spouts must finish by themselves: {s}"
    );
    assert_eq!(
        u(s, "acked"),
        expected,
        "every root must be acked exactly once: {s}"
    );
    assert_eq!(u(s, "open_at_end"), 0, "no tree may stay open: {s}");
    assert_eq!(
        u(s, "failed"),
        u(s, "replayed"),
        "every failed root is replayed: {s}"
    );
    assert_eq!(
        u(s, "emitted"),
        expected + u(s, "replayed"),
        "roots = first emits + replays: {s}"
    );
}
