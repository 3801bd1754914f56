//! The certificates of the tuple transport: one CA per topology, and one
//! identity its workers share, so that a worker accepts a connection only from
//! a peer of the same topology (mutual TLS), and a pod of another topology, or
//! anything else on the network, is refused during the handshake.
//!
//! The operator generates them into a Secret that worker pods mount; the
//! `--processes` launcher generates them into its run directory. Workers read
//! them with `--tls-dir`.

use std::path::Path;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA certificate (PEM), as a file in the TLS directory and a key of the Secret.
pub const CA_FILE: &str = "ca.crt";
/// The workers' certificate (PEM).
pub const CERT_FILE: &str = "tls.crt";
/// The workers' private key (PEM).
pub const KEY_FILE: &str = "tls.key";
/// The name in the workers' certificate, which clients verify (peers are
/// dialled by IP address, which the certificate cannot know in advance).
pub const SERVER_NAME: &str = "squall-worker";

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the transport certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} s after 1970 is out of the range of a certificate's validity")]
    Time(i64),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// `t` as a certificate's time (whole seconds).
fn datetime(t: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| TlsError::Time(secs))
}

/// A topology's transport PKI, in PEM.
#[derive(Clone)]
pub struct TopologyPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TopologyPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyPki").finish_non_exhaustive()
    }
}

impl TopologyPki {
    /// A fresh CA for `topology` (`namespace/name`) and an identity it signs,
    /// valid both to serve and to connect, under [`SERVER_NAME`].
    ///
    /// # Errors
    ///
    /// When rcgen cannot make a key or a certificate.
    pub fn generate(topology: &str) -> Result<TopologyPki, TlsError> {
        Self::generate_valid(topology, None)
    }

    /// As [`TopologyPki::generate`], with both certificates valid from
    /// `validity.0` to `validity.1` (peers refuse them outside it); `None`
    /// keeps rcgen's default, which does not expire in practice.
    ///
    /// # Errors
    ///
    /// When rcgen cannot make a key or a certificate, or a time is out of
    /// the range a certificate can hold.
    pub fn generate_valid(
        topology: &str,
        validity: Option<(SystemTime, SystemTime)>,
    ) -> Result<TopologyPki, TlsError> {
        let window = |p: &mut CertificateParams| -> Result<(), TlsError> {
            if let Some((from, to)) = validity {
                p.not_before = datetime(from)?;
                p.not_after = datetime(to)?;
            }
            Ok(())
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        window(&mut ca)?;
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("squall transport CA {topology}"),
        );
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        window(&mut leaf)?;
        leaf.distinguished_name
            .push(DnType::CommonName, format!("squall worker {topology}"));
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(TopologyPki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The three files, by name.
    pub fn files(&self) -> [(&'static str, &str); 3] {
        [
            (CA_FILE, &self.ca_pem),
            (CERT_FILE, &self.cert_pem),
            (KEY_FILE, &self.key_pem),
        ]
    }

    /// Write the three files into `dir` (created if needed); the key is
    /// readable by its owner only.
    ///
    /// # Errors
    ///
    /// When a file cannot be written, naming it.
    pub fn write_to(&self, dir: &Path) -> Result<(), TlsError> {
        let failed = |path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(failed(dir))?;
        for (name, pem) in self.files() {
            let path = dir.join(name);
            std::fs::write(&path, pem).map_err(failed(&path))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.join(KEY_FILE);
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(failed(&key))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Whether a peer that trusts `pki`'s CA accepts its certificate at `at`.
    fn verify_at(pki: &TopologyPki, at: SystemTime) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        use std::sync::Arc;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let leaf = CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap();
        let at = UnixTime::since_unix_epoch(at.duration_since(std::time::UNIX_EPOCH).unwrap());
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(SERVER_NAME).unwrap(),
                &[],
                at,
            )
            .map(|_| ())
    }

    #[test]
    fn certificates_are_refused_outside_their_validity() {
        use std::time::Duration;
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let pki = TopologyPki::generate_valid("ns/a", Some((now - day, now + day))).unwrap();
        verify_at(&pki, now).unwrap();
        let expired = verify_at(&pki, now + 2 * day).unwrap_err();
        assert!(format!("{expired:?}").contains("Expired"), "{expired:?}");
        let early = verify_at(&pki, now - 2 * day).unwrap_err();
        assert!(format!("{early:?}").contains("NotValidYet"), "{early:?}");
        // Without a window: valid for decades.
        let lasting = TopologyPki::generate("ns/a").unwrap();
        verify_at(&lasting, now + 3650 * day).unwrap();
    }

    #[test]
    fn each_topology_gets_its_own_ca_and_files_are_written() {
        let a = TopologyPki::generate("ns/a").unwrap();
        let b = TopologyPki::generate("ns/a").unwrap();
        assert_ne!(a.ca_pem, b.ca_pem, "a fresh CA each time");
        for pem in [&a.ca_pem, &a.cert_pem] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        assert!(a.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{a:?}").contains("PRIVATE"), "no key in Debug");
        let dir = std::env::temp_dir().join(format!("squall-tls-test-{}", std::process::id()));
        a.write_to(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(CA_FILE)).unwrap(),
            a.ca_pem
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
