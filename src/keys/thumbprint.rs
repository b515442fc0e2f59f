//! Key ids: RFC 7638 JWK thumbprints of Ed25519 public keys.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::encoding::b64_encode;

/// A key id: the RFC 7638 SHA-256 thumbprint of the public JWK, base64url without padding
/// (43 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// The kid as it appears in token headers and JWKS.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The RFC 7638 thumbprint of the Ed25519 public key `public` (RFC 8037 §2: members `crv`,
/// `kty`, `x` in lexicographic order, no whitespace).
pub fn thumbprint(public: &[u8; 32]) -> KeyId {
    // The required members are fixed strings plus base64url text, so formatting them directly
    // is the RFC 7638 §3.3 canonical form; no JSON escaping can be needed.
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        b64_encode(public)
    );
    KeyId(b64_encode(&Sha256::digest(canonical.as_bytes())))
}
