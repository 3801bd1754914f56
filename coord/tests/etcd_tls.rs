//! `squall-coord` against a real etcd that serves TLS and requires client
//! certificates (`squall_testenv::Etcd::start_tls`): the coordination contract
//! and leader election over TLS, and the refusals — no client certificate, a
//! client certificate from a CA etcd does not trust, a CA file that is not
//! there — each a clear error within a bounded time, never a hang.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use squall_coord::{CoordError, Coordinator, EtcdCoordinator, EtcdTlsFiles, contract, leader};
use squall_testenv::{Etcd, EtcdTlsMaterial};

/// Longest a refused connection may take to say so: the connect timeout
/// (2 × `REQUEST_TIMEOUT`) plus one request's, with room to spare.
const REFUSAL_BOUND: Duration = Duration::from_secs(15);

async fn tls_etcd() -> (Etcd, EtcdTlsMaterial, Vec<String>) {
    let (etcd, tls) = Etcd::start_tls().await.unwrap();
    assert!(
        etcd.client_url().starts_with("https://"),
        "{}",
        etcd.client_url()
    );
    let endpoints = vec![etcd.client_url().to_string()];
    (etcd, tls, endpoints)
}

fn path(p: &Path) -> Option<String> {
    Some(p.display().to_string())
}

/// The CA and the client identity etcd trusts.
fn trusted(tls: &EtcdTlsMaterial) -> EtcdTlsFiles {
    EtcdTlsFiles {
        ca_file: path(&tls.ca_file),
        cert_file: path(&tls.cert_file),
        key_file: path(&tls.key_file),
    }
}

const PROBE_KEY: &str = "/squall/probe";

/// Connects with `files` and makes one request, and asserts that this fails
/// well: a [`CoordError`] (at connect, or naming the request) within
/// [`REFUSAL_BOUND`], with etcd logging `reason` as why it rejected the
/// connection; then that the trusted identity still works on the same etcd,
/// so the refusal was about the certificate.
///
/// The client-side text is not asserted beyond naming the request: the
/// handshake finishes on the client before etcd checks its certificate
/// (TLS 1.3), so the first request sees etcd's alert (`CertificateRequired`,
/// `UnknownCA`) or only the connection closing under it, by a race.
async fn assert_refused(etcd: &Etcd, tls: &EtcdTlsMaterial, files: &EtcdTlsFiles, reason: &str) {
    let endpoints = [etcd.client_url().to_string()];
    let started = Instant::now();
    let attempt = async {
        let c = EtcdCoordinator::connect(&endpoints, files).await?;
        c.get(PROBE_KEY).await
    };
    let e = match tokio::time::timeout(REFUSAL_BOUND, attempt).await {
        Err(_) => panic!("no answer within {REFUSAL_BOUND:?}: a hang, not a refusal"),
        Ok(Ok(v)) => panic!("etcd accepted the connection and answered {v:?}"),
        Ok(Err(e)) => e,
    };
    eprintln!("refused after {:?}: {e}", started.elapsed());
    match &e {
        CoordError::Etcd { op, key, .. } => assert_eq!((*op, key.as_str()), ("get", PROBE_KEY)),
        CoordError::Connect {
            endpoints: named, ..
        } => assert_eq!(named, &endpoints),
        other => panic!("expected a connect or request error, got {other:?}"),
    }
    let logged = squall_testenv::wait_until(
        "etcd logs why it rejected the connection",
        Duration::from_secs(5),
        || async {
            let log = std::fs::read_to_string(etcd.log_path()).unwrap_or_default();
            log.lines()
                .find(|l| l.contains("rejected connection") && l.contains(reason))
                .map(str::to_string)
        },
    )
    .await;
    if let Err(err) = logged {
        let log = std::fs::read_to_string(etcd.log_path()).unwrap_or_default();
        panic!("{err}: no \"rejected connection\" line with {reason:?} in etcd's log:\n{log}");
    }

    let c = EtcdCoordinator::connect(&endpoints, &trusted(tls))
        .await
        .unwrap();
    assert_eq!(c.get(PROBE_KEY).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_etcd_keeps_the_coordination_contract() {
    let (_etcd, tls, endpoints) = tls_etcd().await;
    let c = EtcdCoordinator::connect(&endpoints, &trusted(&tls))
        .await
        .unwrap();
    contract::check(Arc::new(c) as Arc<dyn Coordinator>, "/contract-test/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_is_elected_over_tls() {
    let (_etcd, tls, endpoints) = tls_etcd().await;
    let elected = tokio::time::timeout(
        Duration::from_secs(10),
        leader::campaign(
            &endpoints,
            &trusted(&tls),
            "/squall/operator/leader",
            "a",
            Duration::from_secs(2),
        ),
    )
    .await
    .expect("the only candidate is elected at once")
    .unwrap();
    elected.resign().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let (etcd, tls, _) = tls_etcd().await;
    let ca_only = EtcdTlsFiles {
        ca_file: path(&tls.ca_file),
        ..EtcdTlsFiles::default()
    };
    assert_refused(&etcd, &tls, &ca_only, "client didn't provide a certificate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (etcd, tls, _) = tls_etcd().await;
    let foreign = EtcdTlsFiles {
        ca_file: path(&tls.ca_file),
        cert_file: path(&tls.foreign_cert_file),
        key_file: path(&tls.foreign_key_file),
    };
    assert_refused(&etcd, &tls, &foreign, "unknown authority").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_is_named() {
    let (etcd, tls, endpoints) = tls_etcd().await;
    let missing = etcd.dir().join("no-such-ca.crt").display().to_string();
    let files = EtcdTlsFiles {
        ca_file: Some(missing.clone()),
        ..trusted(&tls)
    };
    let e = match EtcdCoordinator::connect(&endpoints, &files).await {
        Ok(_) => panic!("connected with a CA file that does not exist"),
        Err(e) => e,
    };
    match &e {
        CoordError::TlsFile { path, .. } => assert_eq!(path, &missing),
        other => panic!("expected CoordError::TlsFile, got {other:?}"),
    }
    assert!(e.to_string().contains(&missing), "{e}");
}
