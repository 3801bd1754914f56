//! The gRPC transport between worker processes (DESIGN §3.4).
//!
//! One long-lived stream per ordered pair of workers carries batches of
//! envelopes in a compact encoding ([`codec`]), on two lanes with credit-based
//! flow control ([`server`], [`client`]).

pub mod client;
pub mod codec;
pub mod server;

pub mod proto {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    tonic::include_proto!("squall.v1");
}

use std::net::SocketAddr;
use std::path::Path;

use squall_coord::tls::{CA_FILE, CERT_FILE, KEY_FILE, SERVER_NAME};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Tuning of the wire.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Data-lane batches a receiver accepts ahead of delivering them.
    pub data_credits: u32,
    /// Control-lane batches a receiver accepts ahead of delivering them.
    pub control_credits: u32,
    /// Encoded batches queued per link and lane before senders wait.
    pub link_queue: usize,
    /// Largest frame a receiver accepts; a larger one closes the stream.
    pub max_frame_bytes: usize,
    /// HTTP/2 stream window.
    pub window_bytes: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            data_credits: 32,
            control_credits: 64,
            link_queue: 16,
            max_frame_bytes: 8 << 20,
            window_bytes: 4 << 20,
        }
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("transport TLS: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("transport TLS: {0}")]
    Tls(String),
}

/// Mutual TLS on the tuple transport: this worker's identity, and the CA its
/// peers' certificates must come from (one per topology, see
/// [`squall_coord::tls`]). A peer without such a certificate is refused in the
/// handshake, before it can send a byte of a tuple.
#[derive(Clone, Debug)]
pub struct TransportTls {
    server: ServerTlsConfig,
    client: ClientTlsConfig,
}

impl TransportTls {
    /// Read `ca.crt`, `tls.crt` and `tls.key` from `dir`.
    ///
    /// # Errors
    ///
    /// [`NetError::TlsFile`] naming a file that cannot be read.
    pub fn load(dir: &Path) -> Result<TransportTls, NetError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| NetError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let ca = Certificate::from_pem(read(CA_FILE)?);
        let identity = Identity::from_pem(read(CERT_FILE)?, read(KEY_FILE)?);
        Ok(TransportTls {
            server: ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(ca.clone()),
            client: ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(identity)
                .domain_name(SERVER_NAME),
        })
    }

    /// What a client dials with.
    pub fn client(&self) -> ClientTlsConfig {
        self.client.clone()
    }
}

/// Bind a listener (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), NetError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| NetError::Bind { addr, source })?;
    let local = l
        .local_addr()
        .map_err(|source| NetError::Bind { addr, source })?;
    Ok((l, local))
}

/// Serve the tuple transport on `listener` until the process ends, over mutual
/// TLS when `tls` is given. Connection errors (a peer that speaks garbage, a
/// reset, a handshake without a valid certificate) end that connection only.
///
/// # Errors
///
/// [`NetError::Tls`] when the TLS configuration is not usable.
pub fn serve_transfer(
    listener: TcpListener,
    service: server::TransferService,
    tls: Option<&TransportTls>,
) -> Result<tokio::task::JoinHandle<()>, NetError> {
    let cfg = service.cfg;
    let svc = proto::transfer_server::TransferServer::new(service)
        .max_decoding_message_size(cfg.max_frame_bytes)
        .max_encoding_message_size(cfg.max_frame_bytes);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server.clone())
            .map_err(|e| NetError::Tls(e.to_string()))?;
    }
    Ok(tokio::spawn(async move {
        let r = builder
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(cfg.window_bytes))
            .initial_connection_window_size(Some(cfg.window_bytes * 2))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(3)))
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "tuple transport server stopped");
        }
    }))
}
