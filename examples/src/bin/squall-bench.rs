//! Storm's ThroughputVsLatency benchmark, in one process.
//!
//! First runs the topology flat out to find the peak rate of acked sentences, then
//! again with the spouts scheduled at a fraction of that peak (half by default),
//! where complete latency counts from each sentence's scheduled emit time.
//!
//! `cargo run --release -p squall-examples --bin squall-bench -- --duration 20s`
//!
//! Each part runs `--runs` times (3 by default); the figures are the medians,
//! printed after the tables as one JSON line each: `{"figure", "value", "unit"}`
//! (`make bench` documents them).

use squall_examples::bench::{figure, median};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use squall_api::TopologySpec;
use squall_runtime::local::{self, LocalOptions, Summary};

#[derive(Parser, Debug)]
#[command(about = "Throughput vs latency benchmark (word count with acking), in one process")]
struct Args {
    /// The benchmark topology.
    #[arg(long, default_value = "examples/throughput-vs-latency/topology.yaml")]
    manifest: PathBuf,
    /// How long each run lasts.
    #[arg(long, value_parser = squall_runtime::cli::parse_duration, default_value = "15s")]
    duration: Duration,
    /// The fixed-rate run's rate as a fraction of the measured peak.
    #[arg(long, default_value_t = 0.5)]
    fraction: f64,
    /// Skip the peak run and use this total rate (sentences/s) for the fixed-rate run.
    #[arg(long)]
    rate: Option<f64>,
    /// Print each summary as JSON too.
    #[arg(long)]
    json: bool,
    /// Runs of each part; the figures are the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn run(spec: &TopologySpec, total_rate: f64, duration: Duration) -> anyhow::Result<Summary> {
    let mut spec = spec.clone();
    let spout_tasks: u32 = spec.spouts.iter().map(|s| s.task_count()).sum();
    for s in &mut spec.spouts {
        s.config.insert(
            "rate".into(),
            serde_json::json!(total_rate / f64::from(spout_tasks.max(1))),
        );
        s.config.remove("limit");
    }
    let opts = LocalOptions {
        duration: Some(duration),
        report_every: None,
        interrupt: Some(Arc::new(AtomicBool::new(false))),
        ..Default::default()
    };
    Ok(local::run(
        &squall_examples::registry(),
        "throughput-vs-latency",
        spec,
        &opts,
    )?)
}

fn row(label: &str, s: &Summary) -> String {
    format!(
        "| {label} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        s.acked_per_s,
        s.complete_latency_ms.p50,
        s.complete_latency_ms.p99,
        s.complete_latency_ms.max,
        s.failed
    )
}

fn main() -> anyhow::Result<()> {
    squall_runtime::cli::init_logging();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?;
    let (_, spec) = TopologySpec::from_manifest(&text)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    println!(
        "throughput vs latency, one process, acking on, {cores} cores, {:?} per run",
        args.duration
    );
    println!(
        "| run | sentences acked/s | complete p50 (ms) | complete p99 (ms) | max (ms) | failed |"
    );
    println!("|---|---|---|---|---|---|");
    let runs = args.runs.max(1);
    let mut figures = Vec::new();
    let fixed_rate = match args.rate {
        Some(r) => r,
        None => {
            let mut peaks = Vec::new();
            for _ in 0..runs {
                let peak = run(&spec, 0.0, args.duration)?;
                println!("{}", row("flat out", &peak));
                if args.json {
                    println!("{}", serde_json::to_string(&peak)?);
                }
                peaks.push(peak);
            }
            let rate = median(peaks.iter().map(|s| s.acked_per_s).collect());
            figures.push(("one_process_peak_acked_per_s", rate, "sentences/s"));
            figures.push((
                "one_process_peak_p99_ms",
                median(peaks.iter().map(|s| s.complete_latency_ms.p99).collect()),
                "ms",
            ));
            rate * args.fraction
        }
    };
    let mut fixed = Vec::new();
    for _ in 0..runs {
        let s = run(&spec, fixed_rate, args.duration)?;
        println!("{}", row(&format!("fixed rate {fixed_rate:.0}/s"), &s));
        if args.json {
            println!("{}", serde_json::to_string(&s)?);
        }
        fixed.push(s);
    }
    figures.push((
        "one_process_fixed_rate_acked_per_s",
        median(fixed.iter().map(|s| s.acked_per_s).collect()),
        "sentences/s",
    ));
    figures.push((
        "one_process_fixed_rate_p50_ms",
        median(fixed.iter().map(|s| s.complete_latency_ms.p50).collect()),
        "ms",
    ));
    figures.push((
        "one_process_fixed_rate_p99_ms",
        median(fixed.iter().map(|s| s.complete_latency_ms.p99).collect()),
        "ms",
    ));
    figure("cores", cores as f64, "cores");
    for (name, value, unit) in figures {
        figure(name, value, unit);
    }
    Ok(())
}
