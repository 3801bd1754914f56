//! The node agent on its own, against any cluster reachable through a
//! kubeconfig (`$KUBECONFIG` or `--kubeconfig=PATH`):
//!
//! `node-agent [--kubeconfig=PATH] [--node=NAME]...`
//!
//! Images map as `ImageMap::from_env` says (see docs/testenv.md). Runs until
//! Ctrl-C or SIGTERM, then kills its containers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use squall_testenv::{Error, ImageMap, NodeAgent, NodeAgentConfig};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let mut kubeconfig = std::env::var_os("KUBECONFIG").map(PathBuf::from);
    let mut nodes = Vec::new();
    for arg in std::env::args().skip(1) {
        if let Some(p) = arg.strip_prefix("--kubeconfig=") {
            kubeconfig = Some(PathBuf::from(p));
        } else if let Some(n) = arg.strip_prefix("--node=") {
            nodes.push(n.to_string());
        } else {
            return Err(Error::Invalid(format!(
                "unknown argument `{arg}` (usage: node-agent [--kubeconfig=PATH] [--node=NAME]...)"
            )));
        }
    }
    let path = kubeconfig
        .ok_or_else(|| Error::Invalid("set KUBECONFIG or pass --kubeconfig=PATH".into()))?;
    let kc = Kubeconfig::read_from(&path)?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| Error::Invalid(format!("{}: no cluster", path.display())))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| Error::Invalid(format!("{}: cluster has no server", path.display())))?;
    let ca = cluster
        .certificate_authority
        .clone()
        .map(PathBuf::from)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the node agent needs `certificate-authority` as a file path",
                path.display()
            ))
        })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let mut cfg = NodeAgentConfig {
        images: ImageMap::from_env()?,
        ..Default::default()
    };
    if !nodes.is_empty() {
        cfg.nodes = nodes;
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::Io {
        context: "install SIGTERM handler".into(),
        source: e,
    })?;
    let agent = NodeAgent::start_with_config(config, server, ca, cfg).await?;
    eprintln!(
        "node-agent: nodes {} ready; pod IPs 127.{}.x.y; pod logs under {}/pods",
        agent.nodes().join(", "),
        agent.ip_block(),
        agent.work_dir().display()
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    agent.stop(Duration::from_secs(5));
    Ok(())
}
