//! The slice of the kubelet's HTTPS API that `kubectl logs` needs:
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `tailLines`,
//! `limitBytes` and `follow`. kube-apiserver proxies `pods/log` here (to the
//! node's InternalIP and `daemonEndpoints.kubeletEndpoint.port`); it does not
//! verify the kubelet's certificate unless told to, so a self-signed one does.

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{ContainerKey, ContainerLogs, Shared};
use crate::error::{Error, IoContext, Result};

/// Binds the kubelet API listener on a free loopback port.
pub(crate) async fn bind(node_names: &[String]) -> Result<(TcpListener, TlsAcceptor)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .ctx(|| "bind kubelet API port".into())?;
    let key = rcgen::KeyPair::generate()?;
    let mut names = vec!["localhost".to_string()];
    names.extend(node_names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(names)?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    let cert = params.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("kubelet API TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| Error::Invalid(format!("kubelet API TLS: {e}")))?;
    Ok((listener, TlsAcceptor::from(Arc::new(config))))
}

/// Serves until aborted.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            if let Err(e) = handle(tls, &shared).await {
                tracing::debug!("kubelet API: {e}");
            }
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("request head timeout"))??;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(pk, _)| *pk == k)
            .map(|(_, v)| v.to_string())
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let logs = match parts.as_slice() {
        ["containerLogs", ns, pod, container] => {
            let key = ContainerKey {
                namespace: (*ns).to_string(),
                pod: (*pod).to_string(),
                container: (*container).to_string(),
            };
            shared.logs().get(&key).cloned()
        }
        _ => {
            return respond(
                &mut s,
                404,
                "not found: the squall-testenv node agent only serves /containerLogs\n",
            )
            .await;
        }
    };
    let Some(logs) = logs else {
        return respond(&mut s, 404, "container not found (or not started yet)\n").await;
    };
    let tail: Option<usize> = param("tailLines").and_then(|v| v.parse().ok());
    let limit: Option<usize> = param("limitBytes").and_then(|v| v.parse().ok());
    let follow = param("follow").as_deref() == Some("true");
    let mut text = read_both(&logs).await;
    if let Some(n) = tail {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        text = lines[lines.len().saturating_sub(n)..].concat();
    }
    if let Some(l) = limit
        && text.len() > l
    {
        let mut cut = l;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    if !follow {
        return respond(&mut s, 200, &text).await;
    }
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n",
    )
    .await?;
    s.write_all(text.as_bytes()).await?;
    s.flush().await?;
    let mut offsets = [file_len(&logs.stdout).await, file_len(&logs.stderr).await];
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, p) in [&logs.stdout, &logs.stderr].into_iter().enumerate() {
            let new = read_from(p, &mut offsets[i]).await;
            if !new.is_empty() {
                s.write_all(&new).await?;
                s.flush().await?;
            }
        }
    }
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, code: u16, body: &str) -> std::io::Result<()> {
    let reason = if code == 200 { "OK" } else { "Not Found" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.flush().await?;
    s.shutdown().await
}

async fn read_both(l: &ContainerLogs) -> String {
    let out = tokio::fs::read(&l.stdout).await.unwrap_or_default();
    let err = tokio::fs::read(&l.stderr).await.unwrap_or_default();
    let mut s = String::from_utf8_lossy(&out).into_owned();
    s.push_str(&String::from_utf8_lossy(&err));
    s
}

async fn file_len(p: &Path) -> u64 {
    tokio::fs::metadata(p).await.map(|m| m.len()).unwrap_or(0)
}

async fn read_from(p: &Path, offset: &mut u64) -> Vec<u8> {
    let Ok(mut f) = tokio::fs::File::open(p).await else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(*offset)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).await.is_ok() {
        *offset += buf.len() as u64;
    }
    buf
}
