//! A real etcd on free loopback ports with a temporary data dir.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::bins::binary;
use crate::error::{Error, Result};
use crate::node::NodeNet;
use crate::node::relay::Relay;
use crate::process::{ManagedProcess, free_port};
use crate::tempdir::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-member etcd's flags, its data in `dir`.
fn etcd_args(cmd: &mut Command, dir: &Path, client_url: &str, peer_url: &str) {
    cmd.arg("--name=squall")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=squall={peer_url}"))
        .arg("--initial-cluster-state=new")
        .arg("--unsafe-no-fsync=true")
        .arg("--log-level=warn")
        .current_dir(dir);
}

/// A running etcd; stopped and its data removed on drop.
#[derive(Debug)]
pub struct Etcd {
    // Field order = drop order: the process goes before its directory.
    // Held for its listener (an etcd inside the node's namespace).
    _relay: Option<Relay>,
    process: ManagedProcess,
    client_url: String,
    client_addr: SocketAddr,
    inner_url: String,
    dir: TempDir,
    _net: Option<Arc<NodeNet>>,
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
        etcd_args(&mut cmd, dir.path(), &client_url, &peer_url);
        let process = ManagedProcess::start("etcd", cmd, &dir.path().join("etcd.log"))?;
        let client_addr = SocketAddr::from(([127, 0, 0, 1], client_port));
        let mut etcd = Etcd {
            _relay: None,
            process,
            inner_url: client_url.clone(),
            client_url,
            client_addr,
            dir,
            _net: None,
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// Starts etcd inside the node's network namespace, listening on
    /// `ip:port` there (fixed ports: the namespace is ours alone), with a
    /// relay on the host's loopback. [`Etcd::client_url`] is the relay (for
    /// the host); [`Etcd::inner_url`] is the address inside the namespace.
    pub(crate) async fn start_in(net: &Arc<NodeNet>, ip: &str, port: u16) -> Result<Etcd> {
        let bin = binary("etcd")?;
        let dir = TempDir::new("etcd")?;
        let inner_url = format!("http://{ip}:{port}");
        let peer_url = format!("http://127.0.0.1:{}", port + 1);
        let mut cmd = net.ns.command(bin);
        etcd_args(&mut cmd, dir.path(), &inner_url, &peer_url);
        let process = ManagedProcess::start("etcd", cmd, &dir.path().join("etcd.log"))?;
        let target: SocketAddr = format!("{ip}:{port}")
            .parse()
            .map_err(|e| Error::Invalid(format!("etcd address {ip}:{port}: {e}")))?;
        let relay = Relay::start(&net.dialer, 0, target).await?;
        let client_addr = relay.local_addr();
        let mut etcd = Etcd {
            _relay: Some(relay),
            process,
            client_url: format!("http://{client_addr}"),
            client_addr,
            inner_url,
            dir,
            _net: Some(net.clone()),
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// The client URL as seen from inside the node's network namespace (from
    /// pods, when it listens on the node IP); equal to [`Etcd::client_url`]
    /// for an etcd on the host.
    pub fn inner_url(&self) -> &str {
        &self.inner_url
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
