//! Who is calling: the cluster admin, a host's agent, or nobody. Every connection is TLS
//! with the cluster CA (see pki.rs); a client certificate is mapped to an identity by
//! its SHA-256 fingerprint, recorded when the controller issued it:
//!
//! - `/secrets/certs/<fingerprint>` → `admin` or `host:<name>`;
//! - `/secrets/hosts/<name>` → the fingerprint of that host's current certificate, so a
//!   re-join (agent restart, lost state) deletes the old mapping and the old
//!   certificate stops working although it is validly signed.
//!
//! A join token (made by `controller init`) lets an agent without a certificate get one.
//! Only its SHA-256 digest is stored; comparisons are constant-time.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("reading random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Admin,
    Host(String),
}

impl Identity {
    /// The certificate's common name, and the value kept under its fingerprint.
    pub fn record(&self) -> String {
        match self {
            Identity::Admin => "admin".into(),
            Identity::Host(h) => format!("host:{h}"),
        }
    }

    pub fn from_record(s: &str) -> Option<Identity> {
        match s {
            "admin" => Some(Identity::Admin),
            _ => s
                .strip_prefix("host:")
                .filter(|h| !h.is_empty())
                .map(|h| Identity::Host(h.to_string())),
        }
    }
}

/// What the controller keeps to check joining agents (never the token itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    pub join_token_sha256: String,
}

pub fn random_token() -> Result<String, AuthError> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(AuthError::Random)?;
    Ok(hex(&b))
}

pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Constant-time comparison of `secret`'s digest with a stored digest.
pub fn matches(secret: &str, stored_digest: &str) -> bool {
    let d = digest(secret);
    d.len() == stored_digest.len()
        && d.bytes()
            .zip(stored_digest.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_digest_matches() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let d = digest(&a);
        assert!(matches(&a, &d));
        assert!(!matches(&b, &d));
        assert!(!matches("", &d));
    }

    #[test]
    fn identities_round_trip_through_their_records() {
        for id in [Identity::Admin, Identity::Host("node-1.example".into())] {
            assert_eq!(Identity::from_record(&id.record()), Some(id));
        }
        assert_eq!(Identity::from_record("host:"), None);
        assert_eq!(Identity::from_record("root"), None);
    }
}
