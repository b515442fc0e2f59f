//! The claims of an edgetoken token (SPEC §1) and the identifiers they carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::KeyId;
use crate::permissions::Scope;

/// Error for an identifier that breaks its syntax rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {rule}")]
pub struct InvalidId {
    what: &'static str,
    rule: &'static str,
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $rule:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the identifier.
            ///
            /// # Errors
            ///
            /// [`InvalidId`] when the text breaks the rule in the type's documentation.
            pub fn new(text: &str) -> Result<Self, InvalidId> {
                let check: fn(&str) -> bool = $check;
                if check(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(InvalidId { what: $what, rule: $rule })
                }
            }

            /// Wraps text the crate generated itself and knows to be valid.
            #[allow(dead_code, reason = "not every identifier is generated")]
            pub(crate) fn from_trusted(text: String) -> Self {
                debug_assert!(($check as fn(&str) -> bool)(&text));
                Self(text)
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A tenant slug: 1-64 of `a-z`, `0-9`, `-` (SPEC §1). The pattern keeps tenant ids safe to
    /// use in Redis keys, paths, headers and logs.
    TenantId,
    "tenant",
    "1-64 characters of a-z, 0-9 and -",
    |t| (1..=64).contains(&t.len())
        && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
);

string_id!(
    /// A user id (`sub`): 1-255 visible ASCII characters (no spaces or control characters), so
    /// it can travel in an `X-Auth-Subject` header without escaping or injection.
    Subject,
    "subject",
    "1-255 visible ASCII characters",
    |s| (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
);

string_id!(
    /// A token id (`jti`): 22-128 base64url characters, so at least 128 bits when minted from
    /// 16 random bytes (SPEC §1).
    TokenId,
    "token id",
    "22-128 base64url characters",
    |j| (22..=128).contains(&j.len())
        && j.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
);

/// The verified claims of a token, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub issuer: String,
    /// `aud` (one string).
    pub audience: String,
    /// `sub`: the user the token acts for.
    pub subject: Subject,
    /// `tenant`: the one tenant the token opens.
    pub tenant: TenantId,
    /// `scope`: the permissions granted.
    pub scope: Scope,
    /// `iat`.
    pub issued_at: OffsetDateTime,
    /// `nbf`.
    pub not_before: OffsetDateTime,
    /// `exp`.
    pub expires_at: OffsetDateTime,
    /// `jti`.
    pub token_id: TokenId,
    /// The `kid` of the key that signed the token (from the protected header).
    pub kid: KeyId,
}

/// The claims as they travel: exactly the nine SPEC §1 claims, integers for times, and
/// nothing else (unknown claims are refused, like unknown header parameters).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireClaims {
    pub(crate) iss: String,
    pub(crate) aud: String,
    pub(crate) sub: String,
    pub(crate) tenant: String,
    pub(crate) scope: String,
    pub(crate) iat: i64,
    pub(crate) nbf: i64,
    pub(crate) exp: i64,
    pub(crate) jti: String,
}

impl Claims {
    /// The claims as the JSON object carried in the token, plus `kid` for display
    /// (`edgetoken verify` prints this).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject,
            "tenant": self.tenant,
            "scope": self.scope.to_claim(),
            "iat": self.issued_at.unix_timestamp(),
            "nbf": self.not_before.unix_timestamp(),
            "exp": self.expires_at.unix_timestamp(),
            "jti": self.token_id,
            "kid": self.kid.as_str(),
        })
    }

    /// The facts a revocation lookup needs, borrowed.
    pub fn revocation_facts(&self) -> crate::revocation::TokenFacts<'_> {
        crate::revocation::TokenFacts {
            jti: &self.token_id,
            subject: &self.subject,
            tenant: &self.tenant,
            kid: &self.kid,
            issued_at: self.issued_at.unix_timestamp(),
            expires_at: self.expires_at.unix_timestamp(),
        }
    }
}

#[cfg(test)]
impl Claims {
    /// Valid claims for unit tests that only need some claims to hold (caches, memos).
    pub(crate) fn sample() -> Self {
        let at = OffsetDateTime::UNIX_EPOCH;
        Self {
            issuer: "iss".into(),
            audience: "aud".into(),
            subject: Subject::new("alice").expect("subject"),
            tenant: TenantId::new("acme").expect("tenant"),
            scope: Scope::parse_claim("runs:read").expect("scope"),
            issued_at: at,
            not_before: at,
            expires_at: at,
            token_id: TokenId::new(&"A".repeat(22)).expect("jti"),
            kid: crate::keys::thumbprint(&[9; 32]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_slug_rule() {
        assert!(TenantId::new("acme-1").is_ok());
        for bad in ["", "Acme", "a_b", "a b", "a\0", &"a".repeat(65)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_id_needs_128_bits() {
        assert!(TokenId::new(&"A".repeat(22)).is_ok());
        assert!(TokenId::new(&"A".repeat(21)).is_err());
        assert!(TokenId::new(&"A".repeat(129)).is_err());
        assert!(TokenId::new(&format!("{}=", "A".repeat(22))).is_err());
    }

    #[test]
    fn subject_refuses_header_injection() {
        assert!(Subject::new("alice@example.com").is_ok());
        assert!(Subject::new("alice\r\nX-Auth-Tenant: other").is_err());
        assert!(Subject::new("alice smith").is_err());
    }
}
