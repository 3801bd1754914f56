//! Records/s from a topic through `KafkaSpout → KafkaBolt` in one process,
//! acking on, against a real broker on the same machine (the test
//! environment's, started here unless `--bootstrap` names one), with the
//! broker's and Squall's CPU shares.
//!
//! `cargo bench -p squall-examples --bench kafka -- --records 200000`
//!
//! The run: load `--records` records into a fresh topic, then start the
//! topology and stop it once the group's commits reach the topic's end offsets
//! (every record read, written to the output topic, acknowledged by the broker,
//! acked, and committed). Rate = records / that time.

#![allow(clippy::unwrap_used)] // a benchmark: a panic is the report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use squall_api::TopologySpec;
use squall_runtime::kafka::tools;
use squall_runtime::local::{self, LocalOptions};

#[derive(Parser, Debug)]
#[command(about = "KafkaSpout → KafkaBolt throughput against a local broker")]
struct Args {
    /// Records to push through.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// KafkaSpout tasks (and KafkaBolt tasks).
    #[arg(long, default_value_t = 2)]
    parallelism: u32,
    /// maxSpoutPending per spout task.
    #[arg(long, default_value_t = 5000)]
    max_spout_pending: u32,
    /// Use this broker instead of starting one (then its CPU is not measured
    /// unless `--broker-pid` is given).
    #[arg(long)]
    bootstrap: Option<String>,
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here; 100 ticks/s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn caught_up(b: &str, group: &str, topic: &str) -> bool {
    let (Ok(ends), Ok(committed)) = (
        tools::end_offsets(b, topic),
        tools::committed_offsets(b, group, topic),
    ) else {
        return false;
    };
    ends.iter()
        .all(|(p, end)| committed.get(p).copied().flatten() == Some(*end))
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // starting a broker and pushing 200k records is no test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("kafka bench: run it with `cargo bench -p squall-examples --bench kafka`");
        return;
    }
    squall_runtime::cli::init_logging();
    let args = Args::parse();
    // A broker started here lives (and is stopped) with this binding.
    let broker_here = match args.bootstrap {
        Some(_) => None,
        None => Some(squall_testenv::Kafka::start().expect("start the test broker (make testenv)")),
    };
    let (b, broker_pid) = match (&broker_here, &args.bootstrap) {
        (Some(k), _) => (k.bootstrap_servers().to_string(), Some(k.pid())),
        (None, b) => (b.clone().unwrap_or_default(), args.broker_pid),
    };
    let run_id = std::process::id();
    let (input, output, group) = (
        format!("bench-in-{run_id}"),
        format!("bench-out-{run_id}"),
        format!("bench-{run_id}"),
    );
    tools::create_topic(&b, &input, args.partitions).unwrap();
    tools::create_topic(&b, &output, args.partitions).unwrap();
    let pad = "x".repeat(args.value_bytes.saturating_sub(12));
    let t = Instant::now();
    tools::produce(
        &b,
        &input,
        (0..args.records).map(|i| (None::<&[u8]>, format!("{i:>10}:{pad}"))),
    )
    .unwrap();
    eprintln!(
        "loaded {} records of {} bytes in {:.1}s",
        args.records,
        args.value_bytes,
        t.elapsed().as_secs_f64()
    );

    let manifest = format!(
        "apiVersion: squall.dev/v1alpha1
kind: Topology
metadata: {{name: kafka-bench}}
spec:
  image: x
  maxSpoutPending: {msp}
  messageTimeoutSeconds: 30
  spouts:
    - {{id: in, component: KafkaSpout, parallelism: {p}, config: {{bootstrapServers: \"{b}\", topic: {input}, groupId: {group}, firstOffset: EARLIEST, offsetCommitPeriodMs: 100, maxUncommittedOffsets: {mu}}}}}
  bolts:
    - {{id: out, component: KafkaBolt, parallelism: {p}, config: {{bootstrapServers: \"{b}\", topic: {output}, valueField: value}}}}
  streams:
    - {{from: in, to: out, grouping: {{type: LOCAL_OR_SHUFFLE}}}}
",
        msp = args.max_spout_pending,
        p = args.parallelism,
        mu = args.max_spout_pending * 2,
    );
    let (_, spec) = TopologySpec::from_manifest(&manifest).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let broker = broker_pid.map(|p| p.to_string());
    let cpu_broker0 = broker.as_deref().map_or(0.0, cpu_seconds);
    let cpu_self0 = cpu_seconds("self");
    let t = Instant::now();
    let run = {
        let opts = LocalOptions {
            report_every: None,
            interrupt: Some(stop.clone()),
            ..Default::default()
        };
        std::thread::spawn(move || {
            local::run(&squall_examples::registry(), "kafka-bench", spec, &opts)
        })
    };
    while !caught_up(&b, &group, &input) {
        assert!(!run.is_finished(), "the topology stopped early");
        // Each look opens two clients: not too often, or the broker's CPU is ours.
        std::thread::sleep(Duration::from_millis(250));
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu_broker = broker.as_deref().map_or(0.0, cpu_seconds) - cpu_broker0;
    let cpu_self = cpu_seconds("self") - cpu_self0;
    stop.store(true, Ordering::Relaxed);
    let s = run.join().unwrap().unwrap();
    let written = tools::end_offsets(&b, &output)
        .unwrap()
        .values()
        .sum::<i64>();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "| records | value bytes | seconds | records/s | written | failed | complete p50 / p99 (ms) | broker CPU (cores) | squall CPU (cores) | machine cores |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.2} | {:.0} | {} | {} | {:.2} / {:.2} | {} | {:.2} | {} |",
        args.records,
        args.value_bytes,
        wall,
        args.records as f64 / wall,
        written,
        s.failed,
        s.complete_latency_ms.p50,
        s.complete_latency_ms.p99,
        if broker.is_some() {
            format!("{:.2}", cpu_broker / wall)
        } else {
            "-".into()
        },
        cpu_self / wall,
        cores
    );
}
