//! `make dev-cluster`: a real single-node Kubernetes cluster in the foreground.
//!
//! Prints `KUBECONFIG=<path>` on stdout once the node is Ready, then runs
//! until Ctrl-C (SIGINT) or SIGTERM, then tears the cluster down and restores
//! the host. Images come from `make images` (`target/images`, or
//! `$SQUALL_IMAGES_DIR`). See docs/testenv.md.

use std::io::Write;
use std::process::ExitCode;

use squall_testenv::RealCluster;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    squall_testenv::init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dev-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), squall_testenv::Error> {
    if let Some(arg) = std::env::args().nth(1) {
        return Err(squall_testenv::Error::Invalid(format!(
            "unknown argument `{arg}` (usage: dev-cluster)"
        )));
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| squall_testenv::Error::Io {
        context: "install SIGTERM handler".into(),
        source: e,
    })?;
    let images = squall_testenv::node::default_images_dir();
    eprintln!(
        "dev-cluster: starting a control plane and a real node (images from {}) ...",
        images.display()
    );
    let cluster = RealCluster::start(&images).await?;
    let info = cluster.info().clone();
    eprintln!("dev-cluster: api server        {}", info.server_url);
    eprintln!(
        "dev-cluster: node              {} ({} in network namespace {})",
        info.node, info.node_ip, info.netns
    );
    eprintln!("dev-cluster: etcd (this host)  {}", info.etcd_url);
    eprintln!("dev-cluster: etcd (from pods)  {}", info.etcd_url_from_pods);
    eprintln!("dev-cluster: logs              {}/logs", info.dir.display());
    for image in &info.images {
        eprintln!("dev-cluster: image             {image}");
    }
    // Tests run against this cluster with SQUALL_TEST_CLUSTER=<this file>.
    let info_path = info.dir.join("cluster.json");
    std::fs::write(&info_path, serde_json::to_string_pretty(&info)?).map_err(|e| {
        squall_testenv::Error::Io {
            context: format!("write {}", info_path.display()),
            source: e,
        }
    })?;
    println!("KUBECONFIG={}", info.kubeconfig.display());
    println!("SQUALL_ETCD={}", info.etcd_url);
    println!("SQUALL_WORKER_ETCD={}", info.etcd_url_from_pods);
    println!("SQUALL_TEST_CLUSTER={}", info_path.display());
    let _ = std::io::stdout().flush();
    eprintln!("dev-cluster: ready; Ctrl-C to stop");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    eprintln!("dev-cluster: stopping ...");
    drop(cluster);
    eprintln!("dev-cluster: stopped");
    Ok(())
}
