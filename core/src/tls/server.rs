use super::{load_certs, provider, TlsError};
use crate::config::ListenerTls;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// Builds the listener's TLS config from its PEM files. Used at start (where
/// an error stops the gateway) and on reload (where an error keeps the old
/// certificates and is logged).
pub fn server_config(tls: &ListenerTls) -> Result<Arc<ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let certs = load_certs(&tls.cert)?;
    let key_bytes = std::fs::read(&tls.key).map_err(|source| TlsError::Read {
        path: tls.key.clone(),
        source,
    })?;
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Pem {
            path: tls.key.clone(),
            message: e.to_string(),
        })?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Remembers the modification times of a listener's PEM files so the main
/// thread can tell when to rebuild its config.
#[derive(Debug)]
pub struct CertWatch {
    paths: Vec<PathBuf>,
    seen: Vec<Option<SystemTime>>,
}

impl CertWatch {
    pub fn new(tls: &ListenerTls) -> Self {
        let mut paths = vec![tls.cert.clone(), tls.key.clone()];
        paths.extend(tls.client_ca.iter().cloned());
        let seen = paths.iter().map(|p| mtime(p)).collect();
        Self { paths, seen }
    }

    /// True once when any file's modification time changed since last asked.
    pub fn changed(&mut self) -> bool {
        let now: Vec<_> = self.paths.iter().map(|p| mtime(p)).collect();
        if now != self.seen {
            self.seen = now;
            true
        } else {
            false
        }
    }
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The subject of a verified client certificate (`CN=team-a, O=acme`), for
/// identity. `None` when the certificate cannot be parsed, which a verifier
/// that accepted it makes unlikely.
pub fn client_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn subject_of_a_client_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "team-a");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme");
        let cert = p.self_signed(&key).unwrap();
        let subject = super::client_subject(cert.der()).unwrap();
        assert!(subject.contains("CN=team-a"), "{subject}");
        assert!(subject.contains("O=acme"), "{subject}");
        assert_eq!(super::client_subject(b"not a certificate"), None);
    }
}
