//! Storm's ThroughputVsLatency over two worker processes (gRPC between them,
//! etcd for coordination), and how fast a `kill -9` of one of them is
//! recovered from, with Storm's default 30 s message timeout.
//!
//! `cargo bench -p squall-examples --bench cluster -- --duration 20s`
//!
//! Three runs of `squall-examples local --processes`, each with a 1 s live table:
//! 1. flat out: the steady rate is the median of the spout's acked/s rows
//!    after a warm-up;
//! 2. scheduled at half that rate: complete latency counts from each root's
//!    scheduled emit, so falling behind shows up (no coordinated omission);
//! 3. flat out, then `kill -9` of the worker of slot 1 (split and the acker):
//!    the supervisors publish stats every 200 ms here, and the bench reads
//!    slot 0's (the spout's) acked count from etcd with each snapshot's own
//!    timestamp. Executors refresh their counters once a second, so the
//!    resolution is about 1 s. Recovery is the time from the kill to the end
//!    of the first window of at least 1 s, wholly after the kill, whose rate
//!    is back at 90% of the rate over the 5 s before it.
//!
//! Every figure is printed as one JSON line `{"figure", "value", "unit"}`.

#![allow(clippy::unwrap_used)] // a benchmark: a panic is the report

use squall_examples::bench::{figure, median};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

/// The topology binary: this build's, or `SQUALL_BENCH_BIN` (another build
/// of `squall-examples`, to compare two commits run alternately).
fn bin() -> String {
    std::env::var("SQUALL_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_squall-examples").to_string())
}

#[derive(Parser, Debug)]
#[command(about = "Throughput vs latency over two worker processes, and recovery from kill -9")]
struct Args {
    /// The benchmark topology (its `workers` becomes 2).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/throughput-vs-latency/topology.yaml"))]
    manifest: PathBuf,
    /// How long each throughput run lasts.
    #[arg(long, value_parser = squall_runtime::cli::parse_duration, default_value = "20s")]
    duration: Duration,
    /// Rows of the live table (seconds) ignored as warm-up.
    #[arg(long, default_value_t = 4)]
    warmup_rows: usize,
    /// Skip the kill run.
    #[arg(long)]
    no_kill: bool,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// One run's live rows (when read, spout acked/s) and its final summary.
struct Run {
    rows: Vec<(Instant, f64)>,
    summary: Value,
    /// Unix milliseconds of the kill.
    killed_at: Option<u64>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Slot 0's spout acked count by snapshot time (unix ms), sampled from etcd
/// every 50 ms until `stop`.
fn sample_acked(
    etcd: String,
    topology: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(u64, u64)>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(squall_coord::connect(&etcd, &Default::default()))
            .unwrap();
        let store = squall_coord::TopologyStore::new(
            client,
            squall_api::records::DEFAULT_PREFIX,
            "default",
            &topology,
        );
        let mut out: Vec<(u64, u64)> = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(stats) = rt.block_on(store.stats())
                && let Some(w) = stats.get(&0)
                && let Some(c) = w.components.get("spout")
                && out.last().is_none_or(|l| l.0 < w.timestamp_ms)
            {
                out.push((w.timestamp_ms, c.acked));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    })
}

/// Seconds from `killed` (unix ms) until the end of the first window of at
/// least 1 s, wholly after the kill, whose rate is ≥ 90% of the rate before
/// the kill; and that rate.
fn recovery(samples: &[(u64, u64)], killed: u64) -> (f64, Option<f64>) {
    let rate = |a: (u64, u64), b: (u64, u64)| {
        (b.1.saturating_sub(a.1)) as f64 * 1000.0 / (b.0.saturating_sub(a.0)).max(1) as f64
    };
    // The rate over the 5 s before the kill.
    let before: Vec<_> = samples.iter().filter(|s| s.0 <= killed).collect();
    let (Some(last), Some(first)) = (before.last(), before.iter().find(|s| s.0 + 5000 >= killed))
    else {
        return (0.0, None);
    };
    let base = rate(**first, **last);
    let after: Vec<_> = samples.iter().filter(|s| s.0 > killed).collect();
    for (i, a) in after.iter().enumerate() {
        if let Some(b) = after[i..].iter().find(|b| b.0 >= a.0 + 1000)
            && rate(**a, **b) >= 0.9 * base
        {
            return (base, Some(b.0.saturating_sub(killed) as f64 / 1000.0));
        }
    }
    (base, None)
}

/// The spout's acked/s from a row of the live table (`spout spout emitted/s transfer/s acked/s …`).
fn spout_acked(line: &str) -> Option<f64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.first() == Some(&"spout") && f.get(1) == Some(&"spout"))
        .then(|| f.get(4)?.parse().ok())
        .flatten()
}

/// Run `manifest` over two processes against `etcd`; `kill_after_rows`: kill
/// slot 1's worker once that many rows showed acks.
fn run(
    etcd: &str,
    manifest: &str,
    dir: &Path,
    duration: Duration,
    kill_after_rows: Option<usize>,
) -> Run {
    let path = dir.join("topology.yaml");
    std::fs::write(&path, manifest).unwrap();
    let logs = dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    let mut child = Command::new(bin())
        .args(["local", "--processes", "--json", "--report-interval", "1s"])
        .args(["--etcd", etcd, "--duration"])
        .arg(format!("{}s", duration.as_secs()))
        .arg("--log-dir")
        .arg(&logs)
        .arg(&path)
        .env("SQUALL_HEALTH_INTERVAL", "200ms")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start squall-examples local --processes");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(r) = spout_acked(&line) {
                let _ = tx.send((Instant::now(), r));
            }
        }
    });
    let mut rows = Vec::new();
    let mut killed_at = None;
    while let Ok(row) = rx.recv() {
        rows.push(row);
        let flowing = rows.iter().filter(|(_, r)| *r > 0.0).count();
        if killed_at.is_none() && kill_after_rows.is_some_and(|n| flowing >= n) {
            let pid = std::fs::read_to_string(logs.join("worker-1.pid")).unwrap();
            let ok = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -9 the worker of slot 1 ({})", pid.trim());
            killed_at = Some(unix_ms());
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the run failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    Run {
        rows,
        summary,
        killed_at,
    }
}

fn with_rate(manifest: &str, rate: f64) -> String {
    let m = manifest.replace("config: {rate: 0}", &format!("config: {{rate: {rate:.0}}}"));
    assert_ne!(
        m, manifest,
        "the manifest's spout must say `config: {{rate: 0}}`"
    );
    m
}

fn main() {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.manifest).unwrap();
    let manifest = text.replace("workers: 1\n", "workers: 2\n");
    assert_ne!(manifest, text, "the manifest must say `workers: 1`");
    assert!(
        !manifest.contains("messageTimeoutSeconds"),
        "the kill run measures Storm's default message timeout (30 s)"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = rt.block_on(squall_testenv::Etcd::start()).unwrap();
    let url = etcd.client_url().to_string();
    let dir = std::env::temp_dir().join(format!("squall-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "two worker processes, acking on, {cores} cores, {:?} per run",
        args.duration
    );
    figure("cores", cores as f64, "cores");

    let peak = run(&url, &manifest, &dir, args.duration, None);
    let steady: Vec<f64> = peak
        .rows
        .iter()
        .skip(args.warmup_rows)
        .map(|r| r.1)
        .collect();
    let peak_rate = median(steady);
    figure("two_process_peak_acked_per_s", peak_rate, "sentences/s");
    figure(
        "two_process_peak_p99_ms",
        peak.summary["complete_latency_ms"]["p99"]
            .as_f64()
            .unwrap_or(0.0),
        "ms",
    );

    let half = run(
        &url,
        &with_rate(&manifest, peak_rate / 2.0),
        &dir,
        args.duration,
        None,
    );
    let half_rate: Vec<f64> = half
        .rows
        .iter()
        .skip(args.warmup_rows)
        .map(|r| r.1)
        .collect();
    figure(
        "two_process_half_peak_acked_per_s",
        median(half_rate),
        "sentences/s",
    );
    for p in ["p50", "p99", "max"] {
        figure(
            &format!("two_process_half_peak_{p}_ms"),
            half.summary["complete_latency_ms"][p]
                .as_f64()
                .unwrap_or(0.0),
            "ms",
        );
    }

    if !args.no_kill {
        let kill_rows = args.warmup_rows + 5;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = sample_acked(url.clone(), "throughput-vs-latency".into(), stop.clone());
        let k = run(
            &url,
            &manifest,
            &dir,
            args.duration.max(Duration::from_secs(20)),
            Some(kill_rows),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler.join().unwrap();
        let killed = k.killed_at.expect("the run ended before the kill");
        let (before, back) = recovery(&samples, killed);
        figure("kill_rate_before_acked_per_s", before, "sentences/s");
        figure("kill_recovery_s", back.unwrap_or(f64::INFINITY), "s");
        figure(
            "kill_trees_failed",
            k.summary["failed"].as_f64().unwrap_or(0.0),
            "trees",
        );
        figure(
            "kill_trees_replayed",
            k.summary["replayed"].as_f64().unwrap_or(0.0),
            "trees",
        );
        // Only the snapshots where the counter moved (executors refresh it once a second).
        let mut moved: Vec<(u64, u64)> = Vec::new();
        for s in &samples {
            if moved.last().is_none_or(|l| l.1 != s.1) {
                moved.push(*s);
            }
        }
        let around: Vec<String> = moved
            .windows(2)
            .filter(|w| w[1].0 + 3000 >= killed && w[0].0 <= killed + 6000)
            .map(|w| {
                let r =
                    w[1].1.saturating_sub(w[0].1) as f64 * 1000.0 / (w[1].0 - w[0].0).max(1) as f64;
                format!("{:+.1}s {r:.0}", (w[1].0 as f64 - killed as f64) / 1000.0)
            })
            .collect();
        eprintln!(
            "kill run, spout acked/s by snapshot (time from the kill): {}",
            around.join(", ")
        );
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
