//! The cluster CA's private key is kept in the store sealed (AES-256-GCM) under a key
//! that only controllers hold, in a file of their directory (`ca.seal`, 0600), as
//! kubeadm encrypts the certificates it uploads with a key the operator passes along.
//! Whoever can read the store (etcd's data, a backup of it) can't mint certificates
//! without that file. The sealed form is hex of nonce ‖ ciphertext ‖ tag, with a fixed
//! purpose as associated data, so a sealed value can't be replayed as another secret.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Bound into every sealed value (authenticated, not secret).
const PURPOSE: &[u8] = b"berth cluster CA key v1";

#[derive(Debug, Error)]
pub enum SealError {
    #[error("generating randomness for the CA seal")]
    Random,
    #[error("the CA seal must be 64 hex digits (32 bytes)")]
    BadSeal,
    #[error("the sealed CA key is not hex of nonce, ciphertext and tag")]
    BadSealed,
    #[error(
        "the CA key does not open with this seal: the seal file is not the one this cluster \
         was initialized with, or the stored key was altered"
    )]
    Open,
}

/// A controller's key for the CA's private key.
pub struct Seal {
    key: [u8; 32],
    aead: LessSafeKey,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seal").finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Seal {
    fn new(key: [u8; 32]) -> Result<Seal, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::BadSeal)?;
        Ok(Seal {
            key,
            aead: LessSafeKey::new(unbound),
        })
    }

    pub fn generate() -> Result<Seal, SealError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SealError::Random)?;
        Seal::new(key)
    }

    /// From the seal file's text (64 hex digits).
    pub fn from_hex(text: &str) -> Result<Seal, SealError> {
        let key: [u8; 32] = unhex(text)
            .and_then(|b| b.try_into().ok())
            .ok_or(SealError::BadSeal)?;
        Seal::new(key)
    }

    /// The seal file's text.
    pub fn to_hex(&self) -> String {
        hex(&self.key)
    }

    pub fn seal(&self, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(PURPOSE),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        Ok(hex(&nonce) + &hex(&data))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = unhex(sealed).ok_or(SealError::BadSealed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::BadSealed);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::BadSealed)?;
        let mut data = rest.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(PURPOSE), &mut data)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_with_its_seal_only_and_unaltered() {
        let s = Seal::generate().unwrap();
        let sealed = s.seal(b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(s.open(&sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(s.seal(b"x").unwrap(), s.seal(b"x").unwrap());
        let other = Seal::generate().unwrap();
        assert!(matches!(other.open(&sealed), Err(SealError::Open)));
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(matches!(s.open(&altered), Err(SealError::Open)));
        assert!(matches!(s.open("zz"), Err(SealError::BadSealed)));
        assert!(matches!(s.open("00"), Err(SealError::BadSealed)));
    }

    #[test]
    fn the_seal_file_round_trips_and_bad_ones_are_named() {
        let s = Seal::generate().unwrap();
        let again = Seal::from_hex(&format!("{}\n", s.to_hex())).unwrap();
        assert_eq!(again.open(&s.seal(b"k").unwrap()).unwrap(), b"k");
        for bad in ["", "abc", &"0".repeat(62), &"g".repeat(64)] {
            assert!(
                matches!(Seal::from_hex(bad), Err(SealError::BadSeal)),
                "{bad}"
            );
        }
    }
}
