//! Throughput through one multilang split-sentence bolt: sentences from a Rust spout
//! (flat out, acking on) → one split task run by a Python subprocess → a Rust word
//! count, in one process. Reports sentences acked per second and the subprocess's
//! share of a core, for Storm's own `storm.py` (which waits for the task ids of
//! every emit) and for pystorm (which does not).
//!
//! Needs Storm's libraries as `make testenv` fetches them:
//! `source <(bash tests/testenv/provision.sh --print-env)`, then
//! `cargo run --release -p squall-examples --bin squall-bench-multilang -- --duration 15s`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use squall_api::TopologySpec;
use squall_runtime::local::{self, LocalOptions, Summary};

#[derive(Parser, Debug)]
#[command(about = "Sentences/s through one multilang split-sentence bolt subprocess")]
struct Args {
    /// How long each run lasts.
    #[arg(long, value_parser = squall_runtime::cli::parse_duration, default_value = "15s")]
    duration: Duration,
    /// Storm's multilang libraries (storm.py, and pystorm under python/).
    #[arg(long, env = "SQUALL_MULTILANG")]
    multilang: PathBuf,
    /// Where the example scripts are.
    #[arg(long, default_value = "examples/multilang")]
    scripts: PathBuf,
}

fn manifest(python_path: &str, script: &str) -> String {
    format!(
        "spouts: [{{id: sentences, component: RandomSentenceSpout, config: {{rate: 0}}}}]
maxSpoutPending: 2000
bolts:
  - id: split
    shell: {{command: [env, 'PYTHONPATH={python_path}', python3, '{script}']}}
    outputs: {{default: [word]}}
  - {{id: count, component: WordCount}}
streams:
  - {{from: sentences, to: split, grouping: {{type: SHUFFLE}}}}
  - {{from: split, to: count, grouping: {{type: FIELDS, fields: [word]}}}}
"
    )
}

/// CPU seconds (user + system) of this process's python3 children.
fn children_cpu() -> f64 {
    let me = std::process::id().to_string();
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime(14) stime(15)
        let Some(end) = stat.rfind(')') else { continue };
        let comm = stat
            .get(stat.find('(').map_or(0, |i| i + 1)..end)
            .unwrap_or("");
        let rest: Vec<&str> = stat[end + 2..].split(' ').collect();
        if rest.get(1) == Some(&me.as_str()) && comm.starts_with("python") {
            let f = |i: usize| {
                rest.get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            total += (f(11) + f(12)) / tick;
        }
    }
    total
}

fn run(spec: TopologySpec, duration: Duration) -> anyhow::Result<(Summary, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_ms = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, cpu_ms) = (stop.clone(), cpu_ms.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let c = children_cpu();
                if c > 0.0 {
                    cpu_ms.store((c * 1000.0) as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let started = Instant::now();
    let opts = LocalOptions {
        duration: Some(duration),
        report_every: None,
        interrupt: Some(Arc::new(AtomicBool::new(false))),
        ..Default::default()
    };
    let summary = local::run(&squall_examples::registry(), "multilang-bench", spec, &opts)?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let share = cpu_ms.load(Ordering::Relaxed) as f64 / 1000.0 / started.elapsed().as_secs_f64();
    Ok((summary, share))
}

fn main() -> anyhow::Result<()> {
    squall_runtime::cli::init_logging();
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ml = std::path::absolute(&args.multilang)?;
    let scripts = std::path::absolute(&args.scripts)?;
    anyhow::ensure!(
        ml.join("storm.py").is_file(),
        "no storm.py in {}",
        ml.display()
    );
    println!(
        "one multilang split bolt, acking on, {cores} cores, {:?} per run",
        args.duration
    );
    println!("| bolt | sentences acked/s | words/s | complete p99 (ms) | subprocess CPU (cores) |");
    println!("|---|---|---|---|---|");
    let python_path = format!("{}:{}", ml.display(), ml.join("python").display());
    for (label, script) in [
        ("storm.py BasicBolt", "splitsentence.py"),
        ("pystorm Bolt", "split_pystorm.py"),
    ] {
        let path = scripts.join(script);
        anyhow::ensure!(path.is_file(), "no {}", path.display());
        let (_, spec) =
            TopologySpec::from_manifest(&manifest(&python_path, &path.display().to_string()))
                .context("the benchmark manifest")?;
        let (s, share) = run(spec, args.duration)?;
        let words =
            s.components.get("count").map_or(0, |c| c.executed) as f64 / s.duration_s.max(1e-9);
        println!(
            "| {label} | {:.0} | {:.0} | {:.1} | {:.2} |",
            s.acked_per_s, words, s.complete_latency_ms.p99, share
        );
    }
    Ok(())
}
