//! `with-cluster [--] COMMAND...`: starts one real single-node cluster, runs
//! COMMAND with `SQUALL_TEST_CLUSTER` pointing at the cluster's description
//! (so every test process shares this one cluster, a namespace each), then
//! tears the cluster down and exits with COMMAND's status. `make test` runs
//! the whole suite this way.

use std::process::ExitCode;

use squall_testenv::RealCluster;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    squall_testenv::init_tracing();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("usage: with-cluster [--] COMMAND [ARGS...]");
        return ExitCode::from(2);
    }
    let cmd = args;
    let images = squall_testenv::node::default_images_dir();
    let t0 = std::time::Instant::now();
    eprintln!("with-cluster: starting a control plane and a real node ...");
    let cluster = match RealCluster::start(&images).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("with-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info_path = cluster.info().dir.join("cluster.json");
    let text = match serde_json::to_string_pretty(cluster.info()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("with-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&info_path, text) {
        eprintln!("with-cluster: write {}: {e}", info_path.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "with-cluster: node {} Ready in {:.1}s; images: {}",
        cluster.info().node,
        t0.elapsed().as_secs_f64(),
        cluster.info().images.join(", ")
    );
    let mut child = match tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("SQUALL_TEST_CLUSTER", &info_path)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("with-cluster: cannot run {:?}: {e}", cmd[0]);
            return ExitCode::FAILURE;
        }
    };
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        _ = tokio::signal::ctrl_c() => None,
        _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => None,
    };
    if status.is_none() {
        let _ = child.kill().await;
    }
    eprintln!("with-cluster: tearing down the cluster ...");
    drop(cluster);
    match status.and_then(|s| s.code()) {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
