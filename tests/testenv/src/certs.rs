//! CA, serving, client certificates and the service-account key, with rcgen:
//! for the control plane, and for an etcd that serves TLS.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::{IoContext, Result};
use crate::etcd::EtcdTlsMaterial;

/// Paths of the generated PKI files.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The kubelet's client identity (`system:node:<NODE_NAME>` in `system:nodes`).
    pub kubelet_cert: PathBuf,
    pub kubelet_key: PathBuf,
}

/// The name of the real node's Node object (its kubelet's identity).
pub(crate) const NODE_NAME: &str = "squall-node";

fn write(path: &Path, data: &str) -> Result<()> {
    std::fs::write(path, data).ctx(|| format!("write {}", path.display()))
}

/// A self-signed CA named `cn`: its certificate and key (PEM), and the issuer
/// that signs with it.
fn ca(cn: &str) -> Result<(String, String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    Ok((cert_pem, key_pem, Issuer::new(p, key)))
}

/// A serving certificate for `names` and `ips`, signed by `issuer`, with the
/// extended key usages `eku`.
fn serving_cert(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    names: &[&str],
    ips: &[Ipv4Addr],
    eku: &[ExtendedKeyUsagePurpose],
) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    for ip in ips {
        p.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(*ip)));
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = eku.to_vec();
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// A client certificate for user `cn` in group `org`, signed by `issuer`.
fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    org: &str,
) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// Generates everything into `dir`; `extra_ips` go into the API server's
/// serving certificate (the node IP, where the API server listens inside the
/// node's network namespace).
pub(crate) fn generate(dir: &Path, extra_ips: &[Ipv4Addr]) -> Result<Pki> {
    let (ca_pem, ca_key_pem, issuer) = ca("squall-testenv-ca")?;

    // kube-apiserver serving cert
    let mut ips = vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 1)];
    ips.extend_from_slice(extra_ips);
    let (serving, serving_key) = serving_cert(
        &issuer,
        "kube-apiserver",
        &[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        &ips,
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )?;

    // admin client identity (system:masters)
    let (admin, admin_key) = client_cert(&issuer, "squall-testenv-admin", "system:masters")?;

    // the kubelet's identity, for the Node authorizer and NodeRestriction
    let (kubelet, kubelet_key) =
        client_cert(&issuer, &format!("system:node:{NODE_NAME}"), "system:nodes")?;

    // service-account token signing key
    let sa_key = KeyPair::generate()?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        admin_cert_pem: admin.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        kubelet_cert: dir.join("kubelet-client.crt"),
        kubelet_key: dir.join("kubelet-client.key"),
    };
    write(&pki.kubelet_cert, &kubelet.pem())?;
    write(&pki.kubelet_key, &kubelet_key.serialize_pem())?;
    write(&pki.ca_cert, &ca_pem)?;
    write(&pki.ca_key, &ca_key_pem)?;
    write(&pki.serving_cert, &serving.pem())?;
    write(&pki.serving_key, &serving_key.serialize_pem())?;
    write(&pki.admin_cert, &pki.admin_cert_pem)?;
    write(&pki.admin_key, &pki.admin_key_pem)?;
    write(&pki.sa_key, &sa_key.serialize_pem())?;
    write(&pki.sa_pub, &sa_key.public_key_pem())?;
    Ok(pki)
}

/// The files of an etcd that serves TLS on loopback and requires client
/// certificates: its own serving pair, and what clients get.
#[derive(Debug, Clone)]
pub(crate) struct EtcdPki {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client: EtcdTlsMaterial,
}

/// Generates an etcd PKI into `dir`: one CA that signs etcd's serving
/// certificate (for `localhost` and 127.0.0.1) and a client identity, and a
/// second, unrelated CA that signs another client identity etcd must refuse.
pub(crate) fn generate_etcd(dir: &Path) -> Result<EtcdPki> {
    let (ca_pem, _, issuer) = ca("squall-testenv-etcd-ca")?;
    // Client auth as well: etcd's gRPC gateway dials etcd itself with the
    // serving pair, and etcd checks that against --trusted-ca-file too.
    let (server, server_key) = serving_cert(
        &issuer,
        "etcd",
        &["localhost"],
        &[Ipv4Addr::LOCALHOST],
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let (client, client_key) = client_cert(&issuer, "squall-testenv-etcd-client", "squall")?;
    let (_, _, foreign_issuer) = ca("squall-testenv-foreign-ca")?;
    let (foreign, foreign_key) =
        client_cert(&foreign_issuer, "squall-testenv-foreign-client", "squall")?;

    let pki = EtcdPki {
        server_cert: dir.join("etcd-server.crt"),
        server_key: dir.join("etcd-server.key"),
        client: EtcdTlsMaterial {
            ca_file: dir.join("etcd-ca.crt"),
            cert_file: dir.join("etcd-client.crt"),
            key_file: dir.join("etcd-client.key"),
            foreign_cert_file: dir.join("foreign-client.crt"),
            foreign_key_file: dir.join("foreign-client.key"),
        },
    };
    let c = &pki.client;
    for (path, pem) in [
        (&pki.server_cert, server.pem()),
        (&pki.server_key, server_key.serialize_pem()),
        (&c.ca_file, ca_pem),
        (&c.cert_file, client.pem()),
        (&c.key_file, client_key.serialize_pem()),
        (&c.foreign_cert_file, foreign.pem()),
        (&c.foreign_key_file, foreign_key.serialize_pem()),
    ] {
        write(path, &pem)?;
    }
    Ok(pki)
}
