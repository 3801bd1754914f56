//! The standard command line every topology binary gets.
//!
//! ```text
//! my-topology local <manifest> [--duration 30s] [--json] [--metrics-addr 127.0.0.1:9090]
//! my-topology validate <manifest>
//! my-topology components
//! ```
//!
//! and `worker`, `supervisor` and `rebalance` for running in a cluster.

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use squall_api::invocation::{ETCD_ENV, EtcdTlsFiles, POD_IP_ENV, POD_NAME_ENV};
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

/// The flags both processes of a slot take: the common part of what
/// `squall_api::invocation::WorkerInvocation` renders.
#[derive(clap::Args, Debug)]
struct SlotArgs {
    /// The topology, `namespace/name`.
    #[arg(long)]
    topology: String,
    /// The worker slot.
    #[arg(long)]
    slot: u32,
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    #[arg(long, env = ETCD_ENV)]
    etcd: String,
    /// etcd key prefix.
    #[arg(long, default_value = squall_api::records::DEFAULT_PREFIX)]
    prefix: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsFiles,
    /// The localhost address where the worker serves its supervisor.
    #[arg(long, default_value = "127.0.0.1:7071")]
    agent_addr: SocketAddr,
}

/// The worker's flags: what `WorkerInvocation::worker_args` renders.
#[derive(clap::Args, Debug)]
struct WorkerArgs {
    #[command(flatten)]
    slot: SlotArgs,
    /// Where the tuple transport listens.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// The host or IP peers use to reach this worker (default: the listen IP; set it to the pod IP).
    #[arg(long, env = POD_IP_ENV)]
    advertise: Option<String>,
    /// Tuples per batch between executors and on the wire.
    #[arg(long, default_value_t = squall_api::sizing::BATCH_SIZE)]
    batch_size: usize,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (the pod's probes).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Mutual TLS on the tuple transport, with `ca.crt`, `tls.crt` and
    /// `tls.key` from this directory: peers must hold a certificate from the
    /// same CA (one per topology). Without it, the transport is plaintext.
    #[arg(long, env = "SQUALL_TLS_DIR")]
    tls_dir: Option<std::path::PathBuf>,
}

/// The supervisor's flags, shared by the `supervisor` subcommand and the
/// `squall-supervisor` binary: what `WorkerInvocation::supervisor_args` renders.
#[derive(clap::Args, Debug)]
pub struct SupervisorArgs {
    #[command(flatten)]
    slot: SlotArgs,
    /// The pod name recorded in the registration (default: `<name>-<slot>`).
    #[arg(long, env = POD_NAME_ENV)]
    pod: Option<String>,
    /// Lease renewal interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    heartbeat: Duration,
    /// Lease time-to-live.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    ttl: Duration,
    /// How often to check the worker and publish its stats (the cluster
    /// benchmark sets the environment variable to sample finely).
    #[arg(long, env = "SQUALL_HEALTH_INTERVAL", value_parser = parse_duration, default_value = "1s")]
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
    #[arg(long, env = ETCD_ENV)]
    etcd: String,
    #[arg(long, default_value = squall_api::records::DEFAULT_PREFIX)]
    prefix: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsFiles,
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
    /// Serve the web UI (topology graph, components, workers) on this
    /// address, e.g. `127.0.0.1:8081`; with `--processes` too.
    #[arg(long)]
    ui: Option<SocketAddr>,
    /// How often to print the live table, e.g. `5s`; `0s` turns it off.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    report_interval: Duration,
    /// Tuples per batch between executors.
    #[arg(long, default_value_t = squall_api::sizing::BATCH_SIZE)]
    batch_size: usize,
    /// Run each worker slot as its own process (worker + supervisor pairs), coordinated through etcd.
    #[arg(long, requires = "etcd")]
    processes: bool,
    /// With `--processes`: etcd endpoints, e.g. `http://127.0.0.1:2379`.
    #[arg(long)]
    etcd: Option<String>,
    #[command(flatten)]
    etcd_tls: EtcdTlsFiles,
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
    let s = a.slot;
    let (namespace, name) = crate::cluster::split_topology(&s.topology);
    let opts = crate::cluster::supervisor::SupervisorOptions {
        pod: a.pod.unwrap_or_else(|| format!("{name}-{}", s.slot)),
        namespace,
        name,
        slot: s.slot,
        etcd: s.etcd,
        prefix: s.prefix,
        etcd_tls: s.etcd_tls,
        agent: s.agent_addr,
        heartbeat: a.heartbeat,
        ttl: a.ttl,
        health_every: a.health_interval,
        etcd_deadline: a.etcd_deadline,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // In a container the supervisor is PID 1, which the kernel shields from
    // every signal it does not handle: without this, a pod's deletion would
    // wait out its whole grace period.
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupt.clone())?;
    }
    let signalled = async {
        while !interrupt.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = crate::cluster::supervisor::run(opts) => r,
            () = signalled => {
                tracing::info!("signalled; stopping");
                Ok(())
            }
        }
    });
    match outcome {
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

/// Install the log subscriber and panic hook every Squall binary uses
/// (stderr, `RUST_LOG`, default `info`; JSON with `SQUALL_LOG_FORMAT=json`).
pub fn init_logging() {
    use squall_coord::logging;
    logging::init(logging::LogFormat::from_env(), "info");
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
    let (name, mut spec) =
        TopologySpec::from_manifest(&text).with_context(|| format!("in {}", path.display()))?;
    // In local mode a shell component's `dir` is relative to the manifest's folder,
    // so that `squall local examples/x/topology.yaml` works from anywhere.
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    for c in spec.spouts.iter_mut().chain(spec.bolts.iter_mut()) {
        if let Some(sh) = c.shell.as_mut() {
            let dir = folder.join(sh.dir.as_deref().unwrap_or(""));
            sh.dir = Some(dir.display().to_string());
        }
    }
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
                ui_addr: args.ui,
                transfer: crate::transfer::TransferConfig {
                    batch_size: args.batch_size.max(1),
                    ..Default::default()
                },
                interrupt: Some(interrupt),
            };
            let summary = if args.processes {
                // `--workers` overrides the manifest, and is part of what must be valid.
                let mut spec = spec;
                if let Some(w) = args.workers {
                    spec.workers = w.max(1);
                }
                validate(&spec, Some(&registry.catalog()))
                    .with_context(|| format!("in {}", args.manifest.display()))?;
                let launch = crate::cluster::launcher::LaunchOptions {
                    namespace: args.namespace.clone(),
                    etcd: args.etcd.clone().unwrap_or_default(),
                    prefix: squall_api::records::DEFAULT_PREFIX.to_string(),
                    etcd_tls: args.etcd_tls.clone(),
                    duration: args.duration,
                    report_every: opts.report_every,
                    table_to_stderr: args.json,
                    log_dir: args.log_dir.clone(),
                    ui_addr: args.ui,
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
            let s = a.slot;
            let (namespace, name) = crate::cluster::split_topology(&s.topology);
            let opts = crate::cluster::worker_mode::WorkerOptions {
                namespace,
                name,
                slot: s.slot,
                etcd: s.etcd,
                prefix: s.prefix,
                etcd_tls: s.etcd_tls,
                listen: a.listen,
                advertise: a.advertise,
                agent: s.agent_addr,
                transfer: crate::transfer::TransferConfig {
                    batch_size: a.batch_size.max(1),
                    ..Default::default()
                },
                net: crate::net::NetConfig::default(),
                rebalance_drain: Duration::from_secs(5),
                http: a.http,
                tls_dir: a.tls_dir,
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
                &a.etcd,
                &a.etcd_tls,
                &a.prefix,
                &namespace,
                &name,
                a.workers,
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
pub fn format_summary(s: &crate::report::Summary) -> String {
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
    #![allow(clippy::unwrap_used)]

    use super::*;
    use squall_api::invocation::{WorkerFlags, WorkerInvocation};
    use squall_api::records::TopologyRef;

    /// What the CLI parsed, as the invocation it came from.
    fn parsed(s: &SlotArgs, worker: WorkerFlags, pod: Option<String>) -> WorkerInvocation {
        let (namespace, name) = crate::cluster::split_topology(&s.topology);
        WorkerInvocation {
            topology: TopologyRef { namespace, name },
            slot: s.slot,
            etcd: s.etcd.clone(),
            prefix: s.prefix.clone(),
            etcd_tls: s.etcd_tls.clone(),
            agent_addr: s.agent_addr.to_string(),
            worker,
            pod,
        }
    }

    /// Render → parse with the real parser → the same invocation, for the
    /// shapes the operator (a pod, after the kubelet expanded `$(POD_IP)`) and
    /// the local launcher write.
    #[test]
    fn every_rendered_worker_command_line_parses_back_to_itself() {
        let pod = WorkerInvocation {
            topology: TopologyRef {
                namespace: "prod".into(),
                name: "word-count".into(),
            },
            slot: 3,
            etcd: "https://a:2379,https://b:2379".into(),
            prefix: "/squall".into(),
            etcd_tls: EtcdTlsFiles {
                ca_file: Some("/etc/squall/etcd-tls/ca.crt".into()),
                cert_file: Some("/etc/squall/etcd-tls/tls.crt".into()),
                key_file: Some("/etc/squall/etcd-tls/tls.key".into()),
            },
            agent_addr: "127.0.0.1:7071".into(),
            worker: WorkerFlags {
                listen: "10.1.2.3:6700".into(),
                advertise: Some("10.1.2.3".into()),
                http: Some("10.1.2.3:8080".into()),
                batch_size: Some(256),
                tls_dir: Some("/etc/squall/transport-tls".into()),
            },
            pod: Some("word-count-worker-3".into()),
        };
        let local = WorkerInvocation {
            etcd: "http://127.0.0.1:2379".into(),
            etcd_tls: EtcdTlsFiles::default(),
            agent_addr: "127.0.0.1:41234".into(),
            worker: WorkerFlags {
                listen: "127.0.0.1:0".into(),
                advertise: None,
                http: None,
                batch_size: Some(64),
                tls_dir: None,
            },
            pod: None,
            ..pod.clone()
        };
        for inv in [pod, local] {
            let argv = std::iter::once("topology-binary".to_string()).chain(inv.worker_args());
            let Command::Worker(w) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not the worker subcommand")
            };
            let flags = WorkerFlags {
                listen: w.listen.to_string(),
                advertise: w.advertise.clone(),
                http: w.http.map(|h| h.to_string()),
                batch_size: Some(w.batch_size),
                tls_dir: w.tls_dir.as_ref().map(|d| d.display().to_string()),
            };
            // The worker takes no `--pod`.
            let expected = WorkerInvocation {
                pod: None,
                ..inv.clone()
            };
            assert_eq!(parsed(&w.slot, flags, None), expected);

            let argv = ["topology-binary".to_string(), "supervisor".to_string()]
                .into_iter()
                .chain(inv.supervisor_args());
            let Command::Supervisor(s) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not the supervisor subcommand")
            };
            // The supervisor takes no worker flags.
            assert_eq!(parsed(&s.slot, inv.worker.clone(), s.pod.clone()), inv);
        }
    }

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
