//! Who is calling: the cluster admin (the CLI on the controller host), a host's agent, or
//! nobody. A join token (made by `controller init`) lets an agent register; registering
//! returns a credential bound to that host, and every later request of the agent carries
//! it, so an agent can only act as its own host. Only SHA-256 digests of the token and
//! of credentials are stored; comparisons are constant-time.
//!
//! The transport under this is HTTP on the controller's listener; the identity
//! abstraction ([`Identity`]) is what handlers check, so binding credentials to client
//! certificates (mutual TLS, issue 5 item 5) changes only how an `Identity` is derived.

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

/// What the controller keeps to check callers (never the secrets themselves).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    pub join_token_sha256: String,
    pub admin_token_sha256: String,
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

fn hex(b: &[u8]) -> String {
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

/// A host credential: `<host>.<secret>`; the store keeps the digest of the whole string
/// under the host's key.
pub fn host_credential(host: &str) -> Result<String, AuthError> {
    Ok(format!("{host}.{}", random_token()?))
}

/// The host a credential claims to be (checked against the stored digest by the caller).
pub fn credential_host(cred: &str) -> Option<&str> {
    cred.rsplit_once('.').map(|(h, _)| h)
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
    fn host_credentials_name_their_host() {
        let c = host_credential("node-1.example").unwrap();
        assert_eq!(credential_host(&c), Some("node-1.example"));
        assert_eq!(credential_host("nodot"), None);
    }
}
