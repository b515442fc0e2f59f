//! Ed25519 keys: identity, hygiene, signing and the trusted key ring (SPEC §8).
//!
//! - [`KeyId`] is the RFC 7638 JWK thumbprint of a public key; it is the token's `kid`.
//! - [`check_public_key`] is the key loader's policy: it refuses small-order, non-canonical and
//!   torsioned points and the published RFC 8032 / RFC 8037 test keys, so a key that made
//!   `verify_strict` permissive can never be trusted (THREATS §2, 1B#8, 1G#44).
//! - [`SigningKey`] is the one private key that signs; it derives its public key from the seed,
//!   so the double-public-key signing oracle cannot exist (THREATS 1G#43).
//! - [`KeyRing`] holds every trusted public key by kid, in memory only; the verifier looks kids
//!   up here and nowhere else (THREATS 1B#6).
//! - [`KeyDir`] reads and writes the `keys/` directory: PKCS#8 PEM private keys (mode 0600) and
//!   public JWKs.

mod files;
mod policy;
mod ring;
mod signing;
mod thumbprint;

pub use files::{KeyDir, KeyFileInfo};
pub use policy::{check_public_key, is_published_test_key};
pub use ring::{KeyRing, TrustedKey};
pub use signing::SigningKey;
pub use thumbprint::{InvalidKeyId, KeyId, thumbprint};

use std::path::PathBuf;

/// Why a key was refused or could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The point is not a valid, canonical Ed25519 encoding.
    #[error("public key is not a canonical Ed25519 point encoding")]
    NonCanonical,
    /// The point has small order: signatures under it can verify for any message.
    #[error("public key is a small-order point")]
    SmallOrder,
    /// The point has a torsion component; honest keys never do.
    #[error("public key has a torsion component")]
    Torsioned,
    /// One of the published RFC 8032 / RFC 8037 test keys, whose private half is public.
    #[error("key is a published test key (RFC 8032 / RFC 8037); generate a real one")]
    PublishedTestKey,
    /// A private key file readable by group or others.
    #[error(
        "{path}: private key file is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that could not be parsed.
    #[error("{path}: {reason}")]
    Format {
        /// The file (or source) that was being read.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A private key whose derived public key differs from the public key stored beside it.
    #[error("{path}: private key does not match its public key")]
    Mismatch {
        /// The private key file.
        path: PathBuf,
    },
    /// No key is marked active for signing.
    #[error("no active signing key in {dir}; run `edgetoken keygen --dir {dir}`")]
    NoActiveKey {
        /// The key directory.
        dir: PathBuf,
    },
    /// A kid that is not in the ring or directory.
    #[error("unknown key id `{0}`")]
    UnknownKid(String),
    /// A file system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
