//! `dev-cluster` prints one `KUBECONFIG=` line once ready, serves a Ready
//! node, and cleans up on Ctrl-C (SIGINT).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::Read;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Kills dev-cluster if the test fails, and then shows what it said on stderr.
struct KillOnDrop(Child, Arc<Mutex<String>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!("---- dev-cluster stderr ----\n{}", self.1.lock().unwrap());
        }
    }
}

#[test]
fn dev_cluster_prints_kubeconfig_serves_a_ready_node_and_cleans_up() {
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_dev-cluster"))
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
    let first = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("dev-cluster printed nothing within 120 s");
    let kubeconfig = first
        .strip_prefix("KUBECONFIG=")
        .unwrap_or_else(|| panic!("first stdout line is not KUBECONFIG=...: {first:?}"))
        .to_string();
    assert!(std::path::Path::new(&kubeconfig).is_file());

    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            &kubeconfig,
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "squall-node-0=True");

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "dev-cluster did not stop within 60 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dev-cluster exited with {status}");
    // Nothing else was printed on stdout, and its directories are gone.
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.is_empty(), "extra stdout lines: {rest:?}");
    let dir = std::path::Path::new(&kubeconfig).parent().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}
