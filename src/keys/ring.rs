//! The ring of trusted public keys, looked up by kid in memory only.

use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{KeyError, KeyId, check_public_key, thumbprint};
use crate::encoding::{b64_encode, strict_b64_decode};

/// A public key that passed the loader's policy, with its kid.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    kid: KeyId,
    key: VerifyingKey,
}

impl TrustedKey {
    /// Applies the loader's policy to a raw 32-byte public key.
    ///
    /// # Errors
    ///
    /// Any refusal of [`check_public_key`].
    pub fn from_bytes(public: &[u8; 32]) -> Result<Self, KeyError> {
        let key = check_public_key(public)?;
        Ok(Self {
            kid: thumbprint(public),
            key,
        })
    }

    /// The kid.
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The raw public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Verifies an Ed25519 signature over `message` with `verify_strict`: non-canonical S or R,
    /// small-order R and small-order keys all fail (RFC 8032 §5.1.7 plus dalek's strict
    /// checks). This is the only signature check edgetoken performs.
    ///
    /// Returns `false` for any signature that is not exactly 64 bytes.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.key
            .verify_strict(message, &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// The public JWK (RFC 8037 §2) with `kid`, `use` and `alg`.
    pub fn jwk(&self) -> PublicJwk {
        PublicJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64_encode(self.key.as_bytes()),
            kid: Some(self.kid.as_str().to_owned()),
            key_use: Some("sig".into()),
            alg: Some("EdDSA".into()),
        }
    }

    /// Reads a public JWK, checks it is an Ed25519 OKP key and applies the loader's policy.
    /// A `kid`, when present, must equal the thumbprint.
    ///
    /// # Errors
    ///
    /// [`KeyError::Format`] naming `source` for anything but an Ed25519 public JWK, or any
    /// refusal of [`check_public_key`].
    pub fn from_jwk(jwk: &PublicJwk, source: &str) -> Result<Self, KeyError> {
        let format = |reason: &str| KeyError::Format {
            path: source.into(),
            reason: reason.to_owned(),
        };
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(format("not an Ed25519 OKP key"));
        }
        if jwk.alg.as_deref().is_some_and(|alg| alg != "EdDSA") {
            return Err(format("`alg` is not EdDSA"));
        }
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err(format("`use` is not sig"));
        }
        let raw = strict_b64_decode(jwk.x.as_bytes())
            .ok_or_else(|| format("`x` is not canonical base64url"))?;
        let public: [u8; 32] = raw.try_into().map_err(|_| format("`x` is not 32 bytes"))?;
        let key = Self::from_bytes(&public)?;
        if jwk
            .kid
            .as_deref()
            .is_some_and(|kid| kid != key.kid.as_str())
        {
            return Err(format("`kid` is not the RFC 7638 thumbprint of the key"));
        }
        Ok(key)
    }
}

/// A public Ed25519 JWK as published in a JWKS (RFC 7517, RFC 8037). Never holds `d`: a JWK
/// with private members is refused when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicJwk {
    /// Key type, `OKP`.
    pub kty: String,
    /// Curve, `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// The RFC 7638 thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `sig`.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

/// A JWK Set document: `{"keys": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<PublicJwk>,
}

/// The trusted public keys, by kid. Several at once, so keys can rotate (SPEC §8).
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: HashMap<String, TrustedKey>,
}

impl KeyRing {
    /// An empty ring: it trusts nothing, so every token is refused as `unknown_key`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key`. Inserting a key twice is harmless.
    pub fn insert(&mut self, key: TrustedKey) {
        self.keys.insert(key.kid.as_str().to_owned(), key);
    }

    /// Stops trusting `kid`; returns whether it was trusted.
    pub fn remove(&mut self, kid: &str) -> bool {
        self.keys.remove(kid).is_some()
    }

    /// The key named `kid`, by exact match. The kid is attacker-supplied: it is only ever a
    /// map key here, never a path, URL or query (THREATS 1B#6).
    pub fn get(&self, kid: &str) -> Option<&TrustedKey> {
        self.keys.get(kid)
    }

    /// Whether the ring trusts `kid`.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys, sorted by kid.
    pub fn keys(&self) -> Vec<&TrustedKey> {
        let mut keys: Vec<_> = self.keys.values().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys
    }

    /// The JWKS document of every trusted key (public keys only, by construction).
    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys().into_iter().map(TrustedKey::jwk).collect(),
        }
    }

    /// Builds a ring from a JWKS document, applying the loader's policy to every key.
    ///
    /// # Errors
    ///
    /// [`KeyError::Format`] when the document is not a JWKS of public Ed25519 keys, or any
    /// policy refusal: one bad key refuses the whole document, so a tampered JWKS cannot
    /// half-apply.
    pub fn from_jwks_json(json: &[u8], source: &str) -> Result<Self, KeyError> {
        let jwks: Jwks = serde_json::from_slice(json).map_err(|e| KeyError::Format {
            path: source.into(),
            reason: format!("not a JWKS of public Ed25519 keys: {e}"),
        })?;
        let mut ring = Self::new();
        for jwk in &jwks.keys {
            ring.insert(TrustedKey::from_jwk(jwk, source)?);
        }
        Ok(ring)
    }
}
