//! CA, serving, client certificates and the service-account key, with rcgen.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::{IoContext, Result};

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
    // CA
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "squall-testenv-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    // kube-apiserver serving cert
    let serving_key = KeyPair::generate()?;
    let mut sp = CertificateParams::new(vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    sp.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    sp.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
    for ip in extra_ips {
        sp.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(*ip)));
    }
    sp.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving = sp.signed_by(&serving_key, &issuer)?;

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
