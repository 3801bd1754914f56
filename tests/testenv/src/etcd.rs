//! A real etcd on free loopback ports with a temporary data dir.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bins::binary;
use crate::error::{Error, Result};
use crate::process::{ManagedProcess, free_port};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd; stopped and its data removed on drop.
#[derive(Debug)]
pub struct Etcd {
    // Field order = drop order: the process goes before its directory.
    process: ManagedProcess,
    client_url: String,
    client_addr: SocketAddr,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd (from the provisioned cache) on free loopback ports and
    /// waits until `/health` reports healthy.
    pub async fn start() -> Result<Etcd> {
        let mut last = None;
        // Ports are picked free but could be taken by someone else before
        // etcd binds them: try a few times.
        for _ in 0..3 {
            match Self::start_once().await {
                Ok(e) => return Ok(e),
                Err(e @ Error::BinaryMissing { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("etcd did not start".into())))
    }

    async fn start_once() -> Result<Etcd> {
        let bin = binary("etcd")?;
        let dir = TempDir::new("etcd")?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(bin);
        cmd.arg("--name=squall")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=squall={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn")
            .current_dir(dir.path());
        let process = ManagedProcess::start("etcd", cmd, &dir.path().join("etcd.log"))?;
        let client_addr = SocketAddr::from(([127, 0, 0, 1], client_port));
        let mut etcd = Etcd {
            process,
            client_url,
            client_addr,
            dir,
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.process.check_alive()?;
            let detail = match crate::http::get(
                self.client_addr,
                "127.0.0.1",
                "/health",
                &[],
                Duration::from_secs(2),
            )
            .await
            {
                Ok((200, body)) if body.contains("\"true\"") => return Ok(()),
                Ok((code, body)) => format!("/health answered {code}: {body}"),
                Err(e) => format!("/health: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    component: "etcd".into(),
                    timeout: START_TIMEOUT,
                    detail: format!("{detail}; log:\n{}", self.process.log_tail(30)),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The temporary directory (data dir and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd's log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// etcd's process id (a test can kill it to simulate an outage).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
