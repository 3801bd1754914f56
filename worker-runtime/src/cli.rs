//! The standard command line every topology binary gets.
//!
//! ```text
//! my-topology local <manifest> [--duration 30s] [--json] [--metrics-addr 127.0.0.1:9090]
//! my-topology validate <manifest>
//! my-topology components
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use squall_api::{TopologySpec, validate};

use crate::component::Registry;
use crate::local::{self, LocalOptions};

#[derive(Parser, Debug)]
#[command(version, about = "A Squall topology binary", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a topology manifest in this process (like Storm's LocalCluster).
    Local(LocalArgs),
    /// Check a manifest against this binary's components and print the plan.
    Validate { manifest: PathBuf },
    /// List the components this binary provides, with their output streams, as JSON.
    Components,
    /// Run one worker slot of a topology whose assignment is in etcd (what a worker pod runs).
    Worker(WorkerArgs),
    /// Run the supervisor sidecar of one worker slot (the same as the `squall-supervisor` binary).
    Supervisor(SupervisorArgs),
    /// Move a running topology to a new number of workers (like `storm rebalance -n`).
    Rebalance(RebalanceArgs),
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// The topology, `namespace/name`.
    #[arg(long)]
    topology: String,
    /// The worker slot to run.
    #[arg(long)]
    slot: u32,
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    #[arg(long, env = "SQUALL_ETCD")]
    etcd: String,
    /// etcd key prefix.
    #[arg(long, default_value = squall_api::records::DEFAULT_PREFIX)]
    prefix: String,
    /// Where the tuple transport listens.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// The host or IP peers use to reach this worker (default: the listen IP; set it to the pod IP).
    #[arg(long, env = "POD_IP")]
    advertise: Option<String>,
    /// The localhost address the supervisor talks to.
    #[arg(long, default_value = "127.0.0.1:7071")]
    agent_addr: SocketAddr,
    /// Tuples per batch between executors and on the wire.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (the pod's probes).
    #[arg(long)]
    http: Option<SocketAddr>,
}

/// The supervisor's flags, shared by the `supervisor` subcommand and the `squall-supervisor` binary.
#[derive(clap::Args, Debug)]
pub struct SupervisorArgs {
    #[arg(long)]
    topology: String,
    #[arg(long)]
    slot: u32,
    #[arg(long, env = "SQUALL_ETCD")]
    etcd: String,
    #[arg(long, default_value = squall_api::records::DEFAULT_PREFIX)]
    prefix: String,
    #[arg(long, default_value = "127.0.0.1:7071")]
    agent_addr: SocketAddr,
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// Lease renewal interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    heartbeat: Duration,
    /// Lease time-to-live.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    ttl: Duration,
    /// How often to check the worker and publish its stats.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    health_interval: Duration,
    /// Exit non-zero when etcd has been unreachable this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    etcd_deadline: Duration,
}

#[derive(clap::Args, Debug)]
struct RebalanceArgs {
    #[arg(long)]
    topology: String,
    /// The new number of workers.
    #[arg(long)]
    workers: u32,
    #[arg(long, env = "SQUALL_ETCD")]
    etcd: String,
    #[arg(long, default_value = squall_api::records::DEFAULT_PREFIX)]
    prefix: String,
}

#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// The Topology manifest (the same file `kubectl apply` takes).
    manifest: PathBuf,
    /// Stop after this long, e.g. `30s`, `2m`, `500ms`. Default: until the spouts are done or Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print the final summary as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// How often to print the live table, e.g. `5s`; `0s` turns it off.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    report_interval: Duration,
    /// Tuples per batch between executors.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Run each worker slot as its own process (worker + supervisor pairs), coordinated through etcd.
    #[arg(long, requires = "etcd")]
    processes: bool,
    /// With `--processes`: etcd endpoints, e.g. `http://127.0.0.1:2379`.
    #[arg(long)]
    etcd: Option<String>,
    /// With `--processes`: the number of worker processes (default: the manifest's `workers`).
    #[arg(long)]
    workers: Option<u32>,
    /// With `--processes`: the topology's namespace in etcd.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// With `--processes`: where the processes' logs and pid files go.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// Run a supervisor sidecar until it stops; the exit code tells Kubernetes why.
pub fn run_supervisor(a: SupervisorArgs) -> anyhow::Result<ExitCode> {
    let (namespace, name) = crate::cluster::split_topology(&a.topology);
    let opts = crate::cluster::supervisor::SupervisorOptions {
        pod: a.pod.unwrap_or_else(|| format!("{name}-{}", a.slot)),
        namespace,
        name,
        slot: a.slot,
        etcd: a.etcd,
        prefix: a.prefix,
        agent: a.agent_addr,
        heartbeat: a.heartbeat,
        ttl: a.ttl,
        health_every: a.health_interval,
        etcd_deadline: a.etcd_deadline,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(crate::cluster::supervisor::run(opts)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(error = %e, "supervisor stopping");
            eprintln!("error: {e}");
            Ok(ExitCode::from(crate::cluster::supervisor::exit_code(&e)))
        }
    }
}

/// Parse `250ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{s}' (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Install the log subscriber (stderr, `RUST_LOG`, default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the CLI for a binary whose components are in `registry`.
pub fn main(registry: Registry) -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match dispatch(cli, registry) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_manifest(path: &PathBuf) -> anyhow::Result<(String, TopologySpec)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (name, spec) =
        TopologySpec::from_manifest(&text).with_context(|| format!("in {}", path.display()))?;
    let name = name.unwrap_or_else(|| {
        path.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("topology")
            .to_string()
    });
    Ok((name, spec))
}

fn dispatch(cli: Cli, registry: Registry) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Components => {
            println!("{}", serde_json::to_string_pretty(&registry.catalog())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { manifest } => {
            let (name, spec) = read_manifest(&manifest)?;
            validate(&spec, Some(&registry.catalog()))
                .with_context(|| format!("in {}", manifest.display()))?;
            let plan = squall_api::PhysicalPlan::compute(&spec);
            println!(
                "{name}: valid; {} tasks in {} executors on {} workers",
                plan.task_count(),
                plan.executors.len(),
                plan.workers
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Local(args) => {
            let (name, spec) = read_manifest(&args.manifest)?;
            let interrupt = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, interrupt.clone())
                    .context("cannot install signal handler")?;
            }
            let opts = LocalOptions {
                duration: args.duration,
                report_every: (!args.report_interval.is_zero()).then_some(args.report_interval),
                table_to_stderr: args.json,
                metrics_addr: args.metrics_addr,
                transfer: crate::transfer::TransferConfig {
                    batch_size: args.batch_size.max(1),
                    ..Default::default()
                },
                interrupt: Some(interrupt),
            };
            let summary = if args.processes {
                validate(&spec, Some(&registry.catalog()))
                    .with_context(|| format!("in {}", args.manifest.display()))?;
                let launch = crate::cluster::launcher::LaunchOptions {
                    namespace: args.namespace.clone(),
                    etcd: args.etcd.clone().unwrap_or_default(),
                    prefix: squall_api::records::DEFAULT_PREFIX.to_string(),
                    workers: args.workers,
                    duration: args.duration,
                    report_every: opts.report_every,
                    table_to_stderr: args.json,
                    log_dir: args.log_dir.clone(),
                    batch_size: args.batch_size.max(1),
                    interrupt: opts.interrupt.clone(),
                };
                crate::cluster::launcher::run(&name, spec, &launch)?
            } else {
                local::run(&registry, &name, spec, &opts)
                    .with_context(|| format!("in {}", args.manifest.display()))?
            };
            let final_table = format_summary(&summary);
            if args.json {
                eprint!("{final_table}");
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{final_table}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(a) => {
            let (namespace, name) = crate::cluster::split_topology(&a.topology);
            let opts = crate::cluster::worker_mode::WorkerOptions {
                namespace,
                name,
                slot: a.slot,
                etcd: a.etcd,
                prefix: a.prefix,
                listen: a.listen,
                advertise: a.advertise,
                agent: a.agent_addr,
                transfer: crate::transfer::TransferConfig {
                    batch_size: a.batch_size.max(1),
                    ..Default::default()
                },
                net: crate::net::NetConfig::default(),
                rebalance_drain: Duration::from_secs(5),
                http: a.http,
            };
            crate::cluster::worker_mode::run(registry, opts)
        }
        Command::Supervisor(a) => run_supervisor(a),
        Command::Rebalance(a) => {
            let (namespace, name) = crate::cluster::split_topology(&a.topology);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let version = rt.block_on(crate::cluster::launcher::rebalance(
                &a.etcd, &a.prefix, &namespace, &name, a.workers,
            ))?;
            println!(
                "{namespace}/{name}: assignment version {version} with {} workers",
                a.workers
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The human-readable final summary.
pub fn format_summary(s: &local::Summary) -> String {
    let mut out = format!(
        "=== {} finished ({}) after {:.1}s: acked={} failed={} emitted={} replayed={} open={} acked/s={:.0} complete latency p50={:.2}ms p99={:.2}ms max={:.2}ms\n",
        s.topology,
        s.stopped_by,
        s.duration_s,
        s.acked,
        s.failed,
        s.emitted,
        s.replayed,
        s.open_at_end,
        s.acked_per_s,
        s.complete_latency_ms.p50,
        s.complete_latency_ms.p99,
        s.complete_latency_ms.max
    );
    for (id, c) in &s.components {
        out.push_str(&format!(
            "    {id:<16} emitted={:<10} transferred={:<10} acked={:<10} failed={:<8} executed={:<10}\n",
            c.emitted, c.transferred, c.acked, c.failed, c.executed
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
