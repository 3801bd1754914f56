//! `squall-operator`: Nimbus on Kubernetes.
//!
//! Runs in the cluster (the Helm chart) or outside it with `KUBECONFIG` set:
//! `squall-operator --etcd http://127.0.0.1:2379`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use squall_api::invocation::EtcdTlsFiles;
use squall_coord::logging::{self, LogFormat};
use squall_coord::{EtcdCoordinator, Store};

use squall_operator::controller::{self, Context};
use squall_operator::pods::PodSettings;
use squall_operator::telemetry::{self, Metrics};
use squall_operator::views;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Squall operator: reconciles Topology resources into worker pods"
)]
struct Args {
    /// etcd endpoints for topology state, comma-separated (also handed to
    /// workers, unless --worker-etcd says otherwise).
    #[arg(
        long,
        env = "SQUALL_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    etcd: Vec<String>,
    /// The same etcd as worker pods reach it, when that differs from --etcd:
    /// an operator run outside the cluster reaches etcd at one address, pods
    /// at another.
    #[arg(long, env = "SQUALL_WORKER_ETCD_ENDPOINTS", value_delimiter = ',')]
    worker_etcd: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, env = "SQUALL_ETCD_PREFIX", default_value = squall_api::records::DEFAULT_PREFIX)]
    etcd_prefix: String,
    #[command(flatten)]
    etcd_tls: EtcdTlsFiles,
    /// A Secret (keys ca.crt, tls.crt, tls.key) that worker pods mount to reach etcd over TLS.
    #[arg(long, env = "SQUALL_ETCD_TLS_SECRET")]
    etcd_tls_secret: Option<String>,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SQUALL_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// The supervisor sidecar image put in every worker pod.
    #[arg(long, env = "SQUALL_SUPERVISOR_IMAGE", default_value = concat!("ghcr.io/squall-dev/squall-supervisor:", env!("CARGO_PKG_VERSION")))]
    supervisor_image: String,
    /// Image pull policy for worker pods (default: the cluster's).
    #[arg(long, env = "SQUALL_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "SQUALL_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Address of the read-only web UI (the Storm UI's views: topologies,
    /// graph, components, workers, events). Empty: no UI.
    #[arg(long, env = "SQUALL_UI_ADDR")]
    ui_addr: Option<SocketAddr>,
    /// Elect a leader through etcd, so several replicas are safe.
    #[arg(long, env = "SQUALL_LEADER_ELECT")]
    leader_elect: bool,
    /// Leader lease TTL in seconds.
    #[arg(long, env = "SQUALL_LEADER_LEASE_SECONDS", default_value_t = 10)]
    leader_lease_seconds: i64,
    /// A ready worker pod without a heartbeat for this long is replaced.
    #[arg(long, env = "SQUALL_HEARTBEAT_GRACE_SECONDS", default_value_t = 15)]
    heartbeat_grace_seconds: u64,
    /// Renew each topology's transport certificates this often, counted from
    /// its creation, by rolling its worker pods (no tree fails); a
    /// certificate is valid for two periods. 0: never (certificates that do
    /// not expire in practice).
    #[arg(long, env = "SQUALL_TRANSPORT_TLS_ROTATION_SECONDS", default_value_t = 30 * 86_400)]
    transport_tls_rotation_seconds: u64,
    /// Log lines as `text` or `json`.
    #[arg(long, env = logging::LOG_FORMAT_ENV, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format, "info,kube_runtime=warn");
    let metrics = Arc::new(Metrics::default());
    let bound = squall_coord::admin::serve(args.http_addr, telemetry::endpoints(metrics.clone()))
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    // Served from the start: a standby replica answers too (with no topologies).
    let views = Arc::new(views::Views::default());
    if let Some(addr) = args.ui_addr {
        let source = views.clone();
        let bound = squall_coord::ui::serve(addr, move || source.snapshot())
            .with_context(|| format!("cannot listen on {addr} for the web UI"))?;
        tracing::info!(%bound, "serving the web UI");
    }

    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let mut etcd = EtcdCoordinator::connect(&args.etcd, &args.etcd_tls).await?;
    metrics.ready.store(true, Ordering::Relaxed);

    if args.leader_elect {
        etcd = etcd.fenced(lead(&args, &metrics).await?);
    }
    let store = Store::new(Arc::new(etcd), &args.etcd_prefix);
    metrics.leader.store(true, Ordering::Relaxed);

    let reporter = Reporter {
        controller: "squall-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let settings = PodSettings {
        supervisor_image: args.supervisor_image.clone(),
        etcd_endpoints: if args.worker_etcd.is_empty() {
            args.etcd.clone()
        } else {
            args.worker_etcd.clone()
        },
        etcd_prefix: args.etcd_prefix.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        etcd_tls_secret: args.etcd_tls_secret.clone(),
        transport_tls_rotation: (args.transport_tls_rotation_seconds > 0)
            .then(|| Duration::from_secs(args.transport_tls_rotation_seconds)),
    };
    let ctx = Context::new(
        client,
        store,
        settings,
        recorder,
        metrics,
        Duration::from_secs(args.heartbeat_grace_seconds),
        views,
    );

    let sweeper = ctx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = controller::sweep_orphans(&sweeper).await {
                tracing::warn!(error = %e, "orphan sweep failed");
            }
        }
    });

    tracing::info!(namespace = ?args.namespace, etcd = ?args.etcd, "operator running");
    controller::run(ctx, args.namespace.clone()).await;
    tracing::info!("operator stopped");
    Ok(())
}

/// Block until this replica leads, then watch the leadership in the
/// background and exit the process if it is lost (Kubernetes restarts it as a
/// standby): another replica may already be acting. Returns the fence for the
/// store's writes, which etcd refuses once the leadership has ended, even
/// before this process notices.
async fn lead(args: &Args, metrics: &Metrics) -> anyhow::Result<squall_coord::Fence> {
    let key = squall_api::records::leader_key(&args.etcd_prefix);
    let me = std::env::var("POD_NAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    metrics.leader.store(false, Ordering::Relaxed);
    let ttl = Duration::from_secs(args.leader_lease_seconds.max(2).unsigned_abs());
    // etcd may come up after the operator (a chart installs both at once):
    // keep trying, rather than exit and wait out the kubelet's back-off.
    let mut retry = Duration::from_millis(500);
    let leadership = loop {
        match squall_coord::leader::campaign(&args.etcd, &args.etcd_tls, &key, &me, ttl).await {
            Ok(leadership) => break leadership,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "leader election: etcd did not answer; trying again");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(10));
            }
        }
    };
    let fence = leadership.fence();
    tokio::spawn(async move {
        leadership.lost().await;
        tracing::error!("lost the leader lease; exiting so a standby can take over");
        std::process::exit(2);
    });
    Ok(fence)
}
