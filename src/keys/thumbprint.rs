//! Key ids: RFC 7638 JWK thumbprints of Ed25519 public keys.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::encoding::b64_encode;

/// A key id: the RFC 7638 SHA-256 thumbprint of the public JWK, base64url without padding
/// (43 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

/// Error for text that cannot be a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key id: 43 base64url characters (an RFC 7638 thumbprint)")]
pub struct InvalidKeyId;

impl KeyId {
    /// Parses a kid named from outside (a CLI argument, a stored revocation).
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] unless the text has the shape of a thumbprint: 43 base64url
    /// characters. Whether a key with this id exists is for the caller to check.
    pub fn new(text: &str) -> Result<Self, InvalidKeyId> {
        if is_kid_shaped(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidKeyId)
        }
    }

    /// Wraps text the crate holds from a [`KeyId`] it had before.
    pub(crate) fn from_trusted(text: String) -> Self {
        debug_assert!(is_kid_shaped(&text));
        Self(text)
    }

    /// The kid as it appears in token headers and JWKS.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A SHA-256 thumbprint in base64url is exactly 43 characters of the URL alphabet.
pub(super) fn is_kid_shaped(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl std::str::FromStr for KeyId {
    type Err = InvalidKeyId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::new(&text).map_err(serde::de::Error::custom)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_accepts_a_thumbprint() {
        let kid = thumbprint(&[7; 32]);
        assert_eq!(KeyId::new(kid.as_str()), Ok(kid));
    }

    #[test]
    fn key_id_refuses_text_that_is_not_a_thumbprint() {
        for text in [
            "",
            "k1",
            &"a".repeat(42),
            &"a".repeat(44),
            &format!("{}=", "a".repeat(42)),
        ] {
            assert_eq!(KeyId::new(text), Err(InvalidKeyId), "{text}");
        }
    }

    #[test]
    fn key_id_travels_as_a_json_string_and_is_checked_on_the_way_in() {
        let kid = thumbprint(&[7; 32]);
        let json = serde_json::to_string(&kid).unwrap();
        assert_eq!(json, format!("\"{kid}\""));
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), kid);
        assert!(serde_json::from_str::<KeyId>("\"k1\"").is_err());
    }
}
