//! A real etcd on free loopback ports with a temporary data dir, serving
//! plain HTTP or TLS with client-certificate auth.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::bins::binary;
use crate::certs;
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

/// The client side of an etcd started by [`Etcd::start_tls`]: PEM files in
/// the etcd's temporary directory, removed with it when the [`Etcd`] drops.
#[derive(Debug, Clone)]
pub struct EtcdTlsMaterial {
    /// The CA that signed etcd's serving certificate (for `localhost` and
    /// 127.0.0.1) and the only CA etcd trusts for client certificates.
    pub ca_file: PathBuf,
    /// A client certificate signed by [`EtcdTlsMaterial::ca_file`]: etcd
    /// accepts it.
    pub cert_file: PathBuf,
    /// The key of [`EtcdTlsMaterial::cert_file`].
    pub key_file: PathBuf,
    /// A client certificate signed by another CA, which etcd does not trust:
    /// etcd must refuse it.
    pub foreign_cert_file: PathBuf,
    /// The key of [`EtcdTlsMaterial::foreign_cert_file`].
    pub foreign_key_file: PathBuf,
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
    // Where /health answers in plain HTTP: the client address, or for a TLS
    // etcd its metrics listener (the client port wants a client certificate).
    health_addr: SocketAddr,
    inner_url: String,
    // How it was started, for [`Etcd::restart`].
    bin: PathBuf,
    peer_url: String,
    extra_args: Vec<String>,
    dir: TempDir,
    _net: Option<Arc<NodeNet>>,
}

impl Etcd {
    /// Starts etcd (from the provisioned cache) on free loopback ports and
    /// waits until `/health` reports healthy.
    ///
    /// # Errors
    ///
    /// [`Error::BinaryMissing`] when etcd is not provisioned; otherwise when
    /// it fails to become healthy within 30 s three times, each on fresh ports.
    pub async fn start() -> Result<Etcd> {
        Ok(Self::start_retrying(false).await?.0)
    }

    /// As [`Etcd::start`], but serving TLS on its `https://` client URL and
    /// requiring a client certificate signed by its own CA
    /// (`--client-cert-auth`, `--trusted-ca-file`). The returned material
    /// holds that CA, a client identity it signed, and a foreign identity
    /// etcd refuses.
    ///
    /// # Errors
    ///
    /// As [`Etcd::start`], and when the certificates cannot be generated.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), squall_testenv::Error> {
    /// let (etcd, tls) = squall_testenv::Etcd::start_tls().await?;
    /// assert!(etcd.client_url().starts_with("https://"));
    /// println!("{}", tls.ca_file.display());
    /// # Ok(()) }
    /// ```
    pub async fn start_tls() -> Result<(Etcd, EtcdTlsMaterial)> {
        let (etcd, tls) = Self::start_retrying(true).await?;
        let tls = tls.ok_or_else(|| Error::Invalid("etcd started without TLS".into()))?;
        Ok((etcd, tls))
    }

    async fn start_retrying(tls: bool) -> Result<(Etcd, Option<EtcdTlsMaterial>)> {
        let mut last = None;
        // Ports are picked free but could be taken by someone else before
        // etcd binds them: try a few times.
        for _ in 0..3 {
            match Self::start_once(tls).await {
                Ok(e) => return Ok(e),
                Err(e @ Error::BinaryMissing { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("etcd did not start".into())))
    }

    async fn start_once(tls: bool) -> Result<(Etcd, Option<EtcdTlsMaterial>)> {
        let bin = binary("etcd")?;
        let dir = TempDir::new("etcd")?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let scheme = if tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let client_addr = SocketAddr::from(([127, 0, 0, 1], client_port));
        let mut cmd = Command::new(&bin);
        etcd_args(&mut cmd, dir.path(), &client_url, &peer_url);
        let (health_addr, material, extra_args) = if tls {
            let pki = certs::generate_etcd(dir.path())?;
            let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let extra = vec![
                format!("--cert-file={}", pki.server_cert.display()),
                format!("--key-file={}", pki.server_key.display()),
                format!("--trusted-ca-file={}", pki.client.ca_file.display()),
                "--client-cert-auth=true".to_string(),
                format!("--listen-metrics-urls=http://{metrics_addr}"),
            ];
            (metrics_addr, Some(pki.client), extra)
        } else {
            (client_addr, None, Vec::new())
        };
        cmd.args(&extra_args);
        let process = ManagedProcess::start("etcd", cmd, &dir.path().join("etcd.log"))?;
        let mut etcd = Etcd {
            _relay: None,
            process,
            inner_url: client_url.clone(),
            client_url,
            client_addr,
            health_addr,
            bin,
            peer_url,
            extra_args,
            dir,
            _net: None,
        };
        etcd.wait_healthy().await?;
        Ok((etcd, material))
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
        let mut cmd = net.ns.command(&bin);
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
            health_addr: client_addr,
            inner_url,
            bin,
            peer_url,
            extra_args: Vec::new(),
            dir,
            _net: Some(net.clone()),
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// Stops etcd (SIGTERM) and starts it again on the same addresses and
    /// data, as an operator's restart of etcd would, then waits until it is
    /// healthy. Clients see connections drop and must reconnect.
    ///
    /// # Errors
    ///
    /// When it does not come back healthy within 30 s.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.stop();
        let mut cmd = match &self._net {
            Some(net) => net.ns.command(&self.bin),
            None => Command::new(&self.bin),
        };
        etcd_args(&mut cmd, self.dir.path(), &self.inner_url, &self.peer_url);
        cmd.args(&self.extra_args);
        self.process =
            ManagedProcess::start("etcd", cmd, &self.dir.path().join("etcd-restarted.log"))?;
        self.wait_healthy().await
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
                self.health_addr,
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

    /// The client URL, e.g. `http://127.0.0.1:41234`, or `https://…` for
    /// [`Etcd::start_tls`].
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
