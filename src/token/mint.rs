//! Minting: claims in, compact JWS out (SPEC §1, §2).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rand_core::{OsRng, RngCore as _};
use serde::Serialize;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::claims::{Claims, Subject, TenantId, TokenId, WireClaims};
use super::{TOKEN_ALGORITHM, TOKEN_TYPE};
use crate::clock::Clock;
use crate::encoding::b64_encode;
use crate::keys::{KeyId, SigningKey};
use crate::permissions::Scope;

/// The lifetimes a token can be minted with (SPEC §1). There is no other: a token never lives
/// longer than 12 hours and is never extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifetime {
    /// One hour, the default.
    #[default]
    OneHour,
    /// Four hours.
    FourHours,
    /// Eight hours.
    EightHours,
    /// Twelve hours, also spelled `max`.
    TwelveHours,
}

/// The longest lifetime, in seconds.
pub const MAX_LIFETIME_SECS: i64 = 12 * 3600;

impl Lifetime {
    /// The lifetime in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::OneHour => 3600,
            Self::FourHours => 4 * 3600,
            Self::EightHours => 8 * 3600,
            Self::TwelveHours => MAX_LIFETIME_SECS,
        }
    }

    /// The canonical spelling (`1h`, `4h`, `8h`, `12h`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneHour => "1h",
            Self::FourHours => "4h",
            Self::EightHours => "8h",
            Self::TwelveHours => "12h",
        }
    }
}

/// A duration that is not one of `1h`, `4h`, `8h`, `12h`, `max`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duration must be one of 1h, 4h, 8h, 12h or max")]
pub struct InvalidLifetime;

impl std::str::FromStr for Lifetime {
    type Err = InvalidLifetime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1h" => Ok(Self::OneHour),
            "4h" => Ok(Self::FourHours),
            "8h" => Ok(Self::EightHours),
            "12h" | "max" => Ok(Self::TwelveHours),
            _ => Err(InvalidLifetime),
        }
    }
}

/// What to mint. Every field is already validated by its type.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The user the token acts for.
    pub subject: Subject,
    /// The one tenant it opens.
    pub tenant: TenantId,
    /// The permissions it grants, already expanded from shortcuts and checked against what
    /// the person holds.
    pub scope: Scope,
    /// How long it lives.
    pub lifetime: Lifetime,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// A token must grant at least one permission.
    #[error("a token needs at least one permission")]
    EmptyScope,
    /// Serialising the claims failed (it cannot for these types; kept to avoid a panic).
    #[error("could not serialise the claims")]
    Encoding(#[source] serde_json::Error),
}

/// A raw token. Shown once and never logged: `Debug` and `Display` print a placeholder, and
/// the text is zeroized on drop.
#[derive(Clone)]
pub struct RawToken(Zeroizing<String>);

impl RawToken {
    /// The compact JWS. Hand it to the person who minted it and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawToken(<redacted>)")
    }
}

/// A freshly minted token and its claims.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The raw token.
    pub token: RawToken,
    /// What it says.
    pub claims: Claims,
}

#[derive(Serialize)]
struct WireHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// The key that signs and the header it produces, swapped together so a token's `kid`
/// always names the key that signed it.
#[derive(Debug)]
struct Signer {
    key: SigningKey,
    /// The base64url header, the same for every token of this key: computed once.
    header_b64: String,
}

impl Signer {
    fn new(key: SigningKey) -> Self {
        let header = WireHeader {
            alg: TOKEN_ALGORITHM,
            typ: TOKEN_TYPE,
            kid: key.kid().as_str(),
        };
        // A struct of three string fields always serialises.
        let header_json = serde_json::to_vec(&header).unwrap_or_default();
        Self {
            header_b64: b64_encode(&header_json),
            key,
        }
    }
}

/// Signs tokens with the one active key.
///
/// The key can be replaced while the issuer serves ([`Issuer::set_key`], used by the key
/// directory reload): each mint reads the current key once, so a token is wholly of the old
/// key or wholly of the new one.
#[derive(Debug)]
#[expect(
    clippy::struct_field_names,
    reason = "`issuer` is the iss claim, named as in SPEC"
)]
pub struct Issuer {
    signer: RwLock<Arc<Signer>>,
    issuer: String,
    audience: String,
    clock: Arc<dyn Clock>,
}

impl Issuer {
    /// An issuer signing with `key`, stamping `iss` = `issuer` and `aud` = `audience`.
    pub fn new(
        key: SigningKey,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            signer: RwLock::new(Arc::new(Signer::new(key))),
            issuer: issuer.into(),
            audience: audience.into(),
            clock,
        }
    }

    /// The current signer. The lock is held only to clone an `Arc`, never across signing.
    fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.signer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The signing key's kid.
    pub fn kid(&self) -> KeyId {
        self.signer().key.kid().clone()
    }

    /// Signs every later token with `key`; tokens being minted right now finish with the key
    /// they started with.
    ///
    /// # Security
    ///
    /// Whoever verifies these tokens must trust `key` before it signs: the key directory
    /// reload puts it in the verifier's ring first (`http::boot`).
    pub fn set_key(&self, key: SigningKey) {
        let signer = Arc::new(Signer::new(key));
        *self.signer.write().unwrap_or_else(PoisonError::into_inner) = signer;
    }

    /// Mints a token: `iat` = `nbf` = now, `exp` = now + lifetime, a fresh 128-bit `jti`.
    ///
    /// # Errors
    ///
    /// [`MintError::EmptyScope`] for a request without permissions.
    pub fn mint(&self, request: &MintRequest) -> Result<MintedToken, MintError> {
        if request.scope.is_empty() {
            return Err(MintError::EmptyScope);
        }
        let now = self.clock.unix_now();
        let exp = now.saturating_add(request.lifetime.seconds());
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let jti = b64_encode(&id);
        let wire = WireClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: request.subject.as_str().to_owned(),
            tenant: request.tenant.as_str().to_owned(),
            scope: request.scope.to_claim(),
            iat: now,
            nbf: now,
            exp,
            jti,
        };
        // Claims are built with a serializer, never by string concatenation (THREATS 1G#45).
        let payload = serde_json::to_vec(&wire).map_err(MintError::Encoding)?;
        let signer = self.signer();
        let mut token = String::with_capacity(signer.header_b64.len() + payload.len() * 4 / 3 + 90);
        token.push_str(&signer.header_b64);
        token.push('.');
        token.push_str(&b64_encode(&payload));
        let signature = signer.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&b64_encode(&signature));

        let time = |secs: i64| {
            OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let claims = Claims {
            issuer: wire.iss,
            audience: wire.aud,
            subject: request.subject.clone(),
            tenant: request.tenant.clone(),
            scope: request.scope.clone(),
            issued_at: time(now),
            not_before: time(now),
            expires_at: time(exp),
            // 16 random bytes are always 22 base64url characters, a valid TokenId.
            token_id: TokenId::from_trusted(wire.jti),
            kid: signer.key.kid().clone(),
        };
        Ok(MintedToken {
            token: RawToken(Zeroizing::new(token)),
            claims,
        })
    }
}
