//! `make dev-cluster`: a control plane plus node agent in the foreground.
//!
//! Prints one line `KUBECONFIG=<path>` on stdout once ready, then runs until
//! Ctrl-C (SIGINT) or SIGTERM, then stops the pods and the control plane and
//! removes every temporary directory. Images map to binaries as
//! `ImageMap::from_env` says (workspace binaries under target/, overridden by
//! `$SQUALL_IMAGE_MAP` and `$SQUALL_IMAGES`); see docs/testenv.md.

use std::io::Write;
use std::process::ExitCode;

use squall_testenv::{ControlPlane, ImageMap, NodeAgent, NodeAgentConfig};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dev-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), squall_testenv::Error> {
    let images = ImageMap::from_env()?;
    let mut nodes = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.strip_prefix("--node=") {
            Some(n) if !n.is_empty() => nodes.push(n.to_string()),
            _ => {
                return Err(squall_testenv::Error::Invalid(format!(
                    "unknown argument `{arg}` (usage: dev-cluster [--node=NAME]...)"
                )));
            }
        }
    }
    let mut config = NodeAgentConfig {
        images,
        ..Default::default()
    };
    if !nodes.is_empty() {
        config.nodes = nodes;
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| squall_testenv::Error::Io {
        context: "install SIGTERM handler".into(),
        source: e,
    })?;
    eprintln!("dev-cluster: starting etcd, kube-apiserver, kube-controller-manager ...");
    let cp = ControlPlane::start().await?;
    let agent = NodeAgent::start(&cp, config.clone()).await?;
    eprintln!("dev-cluster: api server   {}", cp.server_url());
    eprintln!("dev-cluster: etcd         {}", cp.etcd().client_url());
    eprintln!("dev-cluster: nodes        {}", agent.nodes().join(", "));
    eprintln!("dev-cluster: pod IPs      127.{}.x.y", agent.ip_block());
    eprintln!(
        "dev-cluster: pod logs     {}/pods",
        agent.work_dir().display()
    );
    eprintln!("dev-cluster: logs         {}", cp.dir().display());
    for (image, bin) in config.images.entries() {
        let mark = if bin.is_file() {
            ""
        } else {
            "  (missing: build it)"
        };
        eprintln!(
            "dev-cluster: image        {image} -> {}{mark}",
            bin.display()
        );
    }
    println!("KUBECONFIG={}", cp.kubeconfig_path().display());
    let _ = std::io::stdout().flush();
    eprintln!("dev-cluster: ready; Ctrl-C to stop");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("dev-cluster: stopping ...");
    drop(agent);
    drop(cp);
    eprintln!("dev-cluster: stopped");
    Ok(())
}
