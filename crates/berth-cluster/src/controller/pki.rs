//! The cluster's certificate authority. `controller init` makes a CA (ECDSA P-256); the
//! controller signs its own serving certificate at start and each agent's certificate
//! at join, from a certificate signing request, so an agent's private key never leaves
//! its host. The CA's key lives in the store (like kubeadm's uploaded certificates) so
//! that every controller on one etcd can issue certificates; `controller init` also
//! writes `ca.crt` for distribution to hosts.
//!
//! The subject of a CSR is not trusted: the controller writes the certificate's name
//! from the identity it has checked (the join token plus the host name), and the
//! certificate's SHA-256 fingerprint is what the API maps to an identity (see auth.rs),
//! so a re-join revokes the previous certificate.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("reading random bytes for a certificate serial: {0}")]
    Random(std::io::Error),
    #[error("invalid certificate subject alternative name {0:?}")]
    BadSan(String),
    #[error("the system clock is outside what a certificate can say")]
    Clock,
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Rcgen { what, source }
}

/// The CA as stored: both PEMs (the key is only ever read by controllers).
#[derive(Clone, Serialize, Deserialize)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf certificate is for.
pub enum Role<'a> {
    /// The controller's serving certificate, valid for these names and addresses.
    Server(&'a [String]),
    /// A client: an agent (`host:NAME`) or the admin.
    Client,
}

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
/// Validity from the moment of issue: the CA ten years, leaves one (an agent gets a new
/// one at every join, and renews its certificate long before that; see agent.rs).
pub const CA_VALIDITY: std::time::Duration = DAY.saturating_mul(3_652);
pub const LEAF_VALIDITY: std::time::Duration = DAY.saturating_mul(365);
/// Backdating, for hosts whose clocks run a little behind the controller's.
const SKEW: std::time::Duration = std::time::Duration::from_secs(3_600);

/// `now` ± an offset as the certificate's time type.
fn at(now: std::time::SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| PkiError::Clock)?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|_| PkiError::Clock)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(PkiError::Random)?;
    // Positive, as DER integers for serials must be.
    b[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&b))
}

fn params(cn: &str, validity: std::time::Duration) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::OrganizationName, "berth");
    p.distinguished_name.push(DnType::CommonName, cn);
    let now = std::time::SystemTime::now();
    p.not_before = at(now - SKEW)?;
    p.not_after = at(now + validity)?;
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

/// Makes a new CA.
pub fn new_ca() -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
    let mut p = params("berth cluster CA", CA_VALIDITY)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p
        .self_signed(&key)
        .map_err(rc("self-signing the CA certificate"))?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issuer(ca: &CaMaterial) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(rc("reading the CA key"))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(rc("reading the CA certificate"))
}

fn leaf(cn: &str, role: &Role) -> Result<CertificateParams, PkiError> {
    let mut p = params(cn, LEAF_VALIDITY)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    match role {
        Role::Server(names) => {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for n in names.iter() {
                let san = match n.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) if !is_dns_name(n) => return Err(PkiError::BadSan(n.clone())),
                    Err(_) => SanType::DnsName(
                        n.clone()
                            .try_into()
                            .map_err(|_| PkiError::BadSan(n.clone()))?,
                    ),
                };
                if !p.subject_alt_names.contains(&san) {
                    p.subject_alt_names.push(san);
                }
            }
        }
        Role::Client => p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    Ok(p)
}

/// Letters, digits, '-', '_' and '.', as host names are; anything else is a typo.
fn is_dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A certificate and a fresh key made here (the controller's own, the admin's).
pub fn issue(ca: &CaMaterial, cn: &str, role: Role) -> Result<Issued, PkiError> {
    let key = KeyPair::generate().map_err(rc(format!("generating a key for {cn}")))?;
    let cert = leaf(cn, &role)?
        .signed_by(&key, &issuer(ca)?)
        .map_err(rc(format!("signing the certificate of {cn}")))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A client certificate for the key in `csr_pem` (whose signature proves the caller
/// holds it), named `cn` whatever the CSR asked for.
pub fn sign_csr(ca: &CaMaterial, csr_pem: &str, cn: &str) -> Result<String, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(rc("reading the certificate signing request"))?;
    let cert = leaf(cn, &Role::Client)?
        .signed_by(&csr.public_key, &issuer(ca)?)
        .map_err(rc(format!("signing the certificate of {cn}")))?;
    Ok(cert.pem())
}

/// A key and a CSR for it (the agent's side of joining).
pub fn new_csr(cn: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rc("generating the agent key"))?;
    let csr = CertificateParams::new(Vec::<String>::new())
        .and_then(|mut p| {
            p.distinguished_name.push(DnType::CommonName, cn);
            p.serialize_request(&key)
        })
        .and_then(|r| r.pem())
        .map_err(rc("making the certificate signing request"))?;
    Ok((key.serialize_pem(), csr))
}

/// The SHA-256 of a certificate's DER, lowercase hex: how the API knows a client.
pub fn fingerprint(der: &[u8]) -> String {
    super::auth::hex(&Sha256::digest(der))
}

/// The fingerprint of the first certificate in a PEM text.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|d| fingerprint(&d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_subject_is_ignored_and_the_key_is_the_callers() {
        let ca = new_ca().unwrap();
        let (key, csr) = new_csr("admin").unwrap();
        let cert = sign_csr(&ca, &csr, "host:n1").unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer| d.to_vec())
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn: Vec<_> = x.subject().iter_common_name().collect();
        assert_eq!(cn[0].as_str().unwrap(), "host:n1");
        // The certificate carries the CSR's public key.
        let kp = KeyPair::from_pem(&key).unwrap();
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            kp.public_key_raw()
        );
        assert_eq!(pem_fingerprint(&cert).unwrap(), fingerprint(&der));
    }

    #[test]
    fn validity_runs_from_the_moment_of_issue() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ca = new_ca().unwrap();
        let leaf = issue(&ca, "admin", Role::Client).unwrap();
        for (pem, days) in [(&ca.cert_pem, 3_652), (&leaf.cert_pem, 365)] {
            let der: rustls::pki_types::CertificateDer =
                rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
            let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
            let v = x.validity();
            // Backdated an hour for clock skew; valid for exactly the period from now
            // (a minute's slack for a slow test), whatever the date of issue.
            assert!((v.not_before.timestamp() - (now - 3_600)).abs() < 60);
            assert!((v.not_after.timestamp() - (now + days * 86_400)).abs() < 60);
        }
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = new_ca().unwrap();
        let (_, csr) = new_csr("x").unwrap();
        // Flip one character of the base64 body.
        let mut b = csr.into_bytes();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let e = sign_csr(&ca, &String::from_utf8(b).unwrap(), "host:x").unwrap_err();
        assert!(e.to_string().contains("certificate signing request"), "{e}");
    }

    #[test]
    fn server_names_become_sans() {
        let ca = new_ca().unwrap();
        let names = ["127.0.0.1".to_string(), "ctl.example".to_string()];
        let s = issue(&ca, "controller", Role::Server(&names)).unwrap();
        let der: rustls::pki_types::CertificateDer =
            rustls::pki_types::pem::PemObject::from_pem_slice(s.cert_pem.as_bytes()).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = x.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 2);
        assert!(issue(&ca, "c", Role::Server(&["bad name!".into()])).is_err());
    }
}
