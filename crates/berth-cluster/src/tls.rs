//! TLS between the controller and its clients, with the cluster CA as the only root on
//! both sides (rustls, ring). The server asks every client for a certificate but lets a
//! client without one through the handshake: such a connection can only join (with the
//! join token) or read the API description; everything else needs a certificate the
//! controller issued (see controller/auth.rs).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("reading {0}: no PEM certificate in it")]
    NoCertificate(&'static str),
    #[error("building the client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("building the HTTPS client: {0}")]
    Client(#[from] reqwest::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    // A file of anything but certificates parses as none; say so rather than fail every
    // handshake later.
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "the cluster CA certificate")? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "adding the cluster CA as a root",
            source,
        })?;
    }
    Ok(roots)
}

/// The controller's TLS configuration: its certificate, and client certificates
/// verified against the cluster CA (optional at the handshake, required by the API).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .allow_unauthenticated()
            .build()?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TlsError::Pem {
            what: "the controller's key",
            source,
        })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "choosing TLS versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "the controller's certificate")?, key)
        .map_err(|source| TlsError::Rustls {
            what: "loading the controller's certificate",
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How a client proves who it is: a certificate and its key (PEM), or nothing (joining).
pub struct ClientIdentity<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// An HTTPS client that trusts only the cluster CA.
pub fn client(
    ca_pem: &str,
    identity: Option<ClientIdentity>,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, TlsError> {
    // Parsed here first so that a bad file is reported as such, not as a TLS failure.
    certs(ca_pem, "the cluster CA certificate")?;
    let mut b = builder
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .https_only(true);
    if let Some(id) = identity {
        let pem = format!("{}\n{}", id.key_pem, id.cert_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes())?);
    }
    Ok(b.build()?)
}
