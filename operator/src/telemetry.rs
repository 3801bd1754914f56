//! Operator metrics, health and readiness, served over plain HTTP.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub errors: AtomicU64,
    /// Sum of reconcile durations in microseconds.
    reconcile_us: AtomicU64,
    /// Whether this replica leads (and so reconciles).
    pub leader: AtomicBool,
    /// Whether the controller is up and watching.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let n = self.reconciles.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP squall_operator_reconciles_total Reconcile passes.\n# TYPE squall_operator_reconciles_total counter\nsquall_operator_reconciles_total {n}"
        );
        let _ = writeln!(
            out,
            "# HELP squall_operator_reconcile_errors_total Failed reconcile passes.\n# TYPE squall_operator_reconcile_errors_total counter\nsquall_operator_reconcile_errors_total {}",
            self.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP squall_operator_reconcile_seconds_total Time spent reconciling.\n# TYPE squall_operator_reconcile_seconds_total counter\nsquall_operator_reconcile_seconds_total {}",
            self.reconcile_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP squall_operator_leader Whether this replica is the leader.\n# TYPE squall_operator_leader gauge\nsquall_operator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n =
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let (code, body) = match path {
                    "/metrics" => ("200 OK", metrics.render()),
                    "/healthz" => ("200 OK", "ok\n".to_string()),
                    // Ready once connected to the API server and etcd; a standby replica is ready too.
                    "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                        ("200 OK", "ok\n".to_string())
                    }
                    "/readyz" => ("503 Service Unavailable", "starting\n".to_string()),
                    _ => ("404 Not Found", "not found\n".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}
