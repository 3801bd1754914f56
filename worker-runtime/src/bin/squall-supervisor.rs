//! The supervisor sidecar of a worker pod (see `squall_runtime::cluster::supervisor`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use squall_runtime::cli::parse_duration;
use squall_runtime::cluster::split_topology;
use squall_runtime::cluster::supervisor::{self, SupervisorOptions};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Squall supervisor sidecar: heartbeat, registration, stats and control for one worker"
)]
struct Args {
    /// The topology, `namespace/name`.
    #[arg(long)]
    topology: String,
    /// The worker slot this pod runs.
    #[arg(long)]
    slot: u32,
    /// etcd endpoints, e.g. `http://127.0.0.1:2379` (comma-separated for several).
    #[arg(long, env = "SQUALL_ETCD")]
    etcd: String,
    /// etcd key prefix.
    #[arg(long, default_value = squall_api::records::DEFAULT_PREFIX)]
    prefix: String,
    /// The worker's localhost agent address.
    #[arg(long, default_value = "127.0.0.1:7071")]
    agent_addr: SocketAddr,
    /// The pod name to record (default: $POD_NAME or `<name>-<slot>`).
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// Lease renewal interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    heartbeat: Duration,
    /// Lease time-to-live: a worker is dead this long after its last heartbeat.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    ttl: Duration,
    /// How often to check the worker and publish its stats.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    health_interval: Duration,
    /// Exit non-zero when etcd has been unreachable this long.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    etcd_deadline: Duration,
}

fn main() -> ExitCode {
    squall_runtime::cli::init_logging();
    let args = Args::parse();
    let (namespace, name) = split_topology(&args.topology);
    let opts = SupervisorOptions {
        pod: args.pod.unwrap_or_else(|| format!("{name}-{}", args.slot)),
        namespace,
        name,
        slot: args.slot,
        etcd: args.etcd,
        prefix: args.prefix,
        agent: args.agent_addr,
        heartbeat: args.heartbeat,
        ttl: args.ttl,
        health_every: args.health_interval,
        etcd_deadline: args.etcd_deadline,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(supervisor::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "supervisor stopping");
            eprintln!("error: {e}");
            ExitCode::from(supervisor::exit_code(&e))
        }
    }
}
