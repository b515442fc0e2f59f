//! The private key that signs tokens.

use std::fmt;

use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rand_core::OsRng;
use zeroize::Zeroizing;

use super::{KeyError, KeyId, check_public_key, thumbprint};

/// An Ed25519 signing key with its kid.
///
/// # Security
///
/// The public key is always derived from the private seed inside ed25519-dalek (v2), never
/// supplied separately, which rules out the double-public-key signing oracle
/// (RUSTSEC-2022-0093). The seed is zeroized on drop, and `Debug` prints only the kid.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    kid: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    /// A key from a 32-byte RFC 8032 seed, without the loader's policy checks.
    ///
    /// Meant for tests with fixed seeds and for reproducing RFC vectors; production keys come
    /// from [`SigningKey::generate`] or [`SigningKey::from_pkcs8_pem`].
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// Parses a PKCS#8 PEM private key and applies the loader's policy to its public half.
    ///
    /// # Errors
    ///
    /// [`KeyError::Format`] when the PEM is not an Ed25519 PKCS#8 key, or any policy error of
    /// [`check_public_key`] (a published test key, for example).
    pub fn from_pkcs8_pem(pem: &str, source: &std::path::Path) -> Result<Self, KeyError> {
        let inner =
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Format {
                path: source.to_owned(),
                reason: format!("not an Ed25519 PKCS#8 private key: {e}"),
            })?;
        check_public_key(inner.verifying_key().as_bytes())?;
        Ok(Self::from_dalek(inner))
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> Self {
        let kid = thumbprint(inner.verifying_key().as_bytes());
        Self { inner, kid }
    }

    /// The PKCS#8 PEM encoding of the private key; zeroized when dropped.
    ///
    /// Written as a version 1 `PrivateKeyInfo` holding the seed only (RFC 8410 §7), the form
    /// every PKCS#8 reader accepts; OpenSSL 4 / pyca refuse the version 2 form with the public
    /// key appended. The public key is always derived from the seed on load anyway.
    ///
    /// # Errors
    ///
    /// [`KeyError::Format`] if encoding fails (it does not for valid keys).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let seed_only = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.inner.to_bytes(),
            public_key: None,
        };
        seed_only
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| KeyError::Format {
                path: std::path::PathBuf::from("<memory>"),
                reason: format!("PKCS#8 encoding failed: {e}"),
            })
    }

    /// The kid (RFC 7638 thumbprint of the public key).
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The 32-byte public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.inner.verifying_key().to_bytes()
    }

    /// Signs `message` (for a JWS, the ASCII `header.payload`), returning the 64-byte
    /// signature. Ed25519 is deterministic: the same key and message give the same bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.inner.sign(message).to_bytes()
    }
}
