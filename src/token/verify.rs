//! Verification: every rule of SPEC §1, in the order of THREATS §0.
//!
//! 1. length cap, before any split or decode;
//! 2. exactly three non-empty parts;
//! 3. the header: strict base64url holding a strict JSON object of exactly `alg`, `typ`, `kid`
//!    (so `crit`, `jku`, `x5u`, `x5c`, `jwk`, `b64`, `cty`, `zip` are refused, never followed);
//! 4. `alg` is `EdDSA` and `typ` is `at+jwt`, byte for byte; then the payload and the signature
//!    are strict base64url and the signature is 64 bytes;
//! 5. `kid` is looked up in the in-memory key ring, nowhere else;
//! 6. ed25519-dalek `verify_strict` over the received `header.payload` bytes;
//! 7. only then the claims: strict JSON into a typed struct, then value rules;
//! 8. time rules against the injected clock, then `iss` and `aud`;
//! 9. revocation, then the request's tenant and permission.
//!
//! Steps 1-7 are pure functions of the token bytes and the key ring, so their result is cached
//! (see `warm`); steps 8-9 run on every call.

use std::borrow::Cow;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use time::OffsetDateTime;

use super::claims::{Claims, Subject, TenantId, TokenId, WireClaims};
use super::mint::MAX_LIFETIME_SECS;
use super::rejection::{Malformed, Rejection};
use super::warm::{CacheSettings, CacheStats, Cached, Slot, Verified, VerifiedCache};
use super::{MAX_TOKEN_BYTES, TOKEN_ALGORITHM, TOKEN_TYPE};
use crate::clock::Clock;
use crate::encoding::{strict_b64_decode, strict_json_object};
use crate::keys::{KeyId, KeyRing};
use crate::permissions::{Permission, Scope};
use crate::revocation::{RevocationCheck, RevocationStatus};

/// The largest leeway accepted (SPEC §1: at most 5 minutes).
pub const MAX_LEEWAY: Duration = Duration::from_mins(5);

/// What a verifier expects of every token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierSettings {
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud`.
    pub audience: String,
    /// Allowed clock skew for `exp`, `nbf` and `iat` (default 30 s, at most 5 min).
    pub leeway: Duration,
}

/// Settings that break a rule of SPEC §1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Leeway above five minutes.
    #[error("leeway must be at most 300 seconds")]
    LeewayTooLarge,
    /// An empty issuer or audience would match nothing useful.
    #[error("issuer and audience must not be empty")]
    EmptyIssuerOrAudience,
}

impl VerifierSettings {
    /// Settings with the default 30 s leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
        }
    }

    /// Checks the SPEC bounds.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] naming the broken rule.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.leeway > MAX_LEEWAY {
            return Err(SettingsError::LeewayTooLarge);
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(SettingsError::EmptyIssuerOrAudience);
        }
        Ok(())
    }
}

/// What a particular request needs of a token, beyond validity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// The tenant the request is for, if it names one.
    pub tenant: Option<TenantId>,
    /// The permission the request needs, if any.
    pub permission: Option<Permission>,
}

impl Requirement {
    /// No tenant and no permission: any valid, unrevoked token passes.
    pub fn any() -> Self {
        Self::default()
    }

    /// Requires the token to be for `tenant`.
    #[must_use]
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Requires the token's scope to grant `permission`.
    #[must_use]
    pub fn permission(mut self, permission: Permission) -> Self {
        self.permission = Some(permission);
        self
    }
}

/// Verifies tokens locally: in-memory keys, in-memory revocation mirror, injected clock. It
/// never waits on the network.
#[derive(Debug)]
pub struct Verifier {
    settings: VerifierSettings,
    /// Swapped whole when keys rotate or the JWKS is refreshed; readers never see a half
    /// updated ring.
    keys: RwLock<Arc<KeyRing>>,
    revocation: Arc<dyn RevocationCheck>,
    clock: Arc<dyn Clock>,
    cache: Option<VerifiedCache>,
}

impl Verifier {
    /// A verifier with the default cache.
    ///
    /// # Errors
    ///
    /// [`SettingsError`] when `settings` break SPEC §1 bounds.
    pub fn new(
        settings: VerifierSettings,
        keys: KeyRing,
        revocation: Arc<dyn RevocationCheck>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(Self {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            revocation,
            clock,
            cache: VerifiedCache::new(CacheSettings::default()),
        })
    }

    /// Replaces the cache with one of the given bounds (`max_entries` 0 disables it).
    #[must_use]
    pub fn with_cache(mut self, settings: CacheSettings) -> Self {
        self.cache = VerifiedCache::new(settings);
        self
    }

    /// The settings.
    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// The trusted keys now.
    pub fn keys(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the trusted keys. Tokens signed by a key no longer in the ring fail from the
    /// next call on, cached or not.
    pub fn set_keys(&self, keys: KeyRing) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// Cache hit/miss counts (all zero when the cache is disabled).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map(VerifiedCache::stats)
            .unwrap_or_default()
    }

    /// Verifies `token` against every rule of SPEC §1 and the request's `requirement`.
    ///
    /// # Errors
    ///
    /// The first [`Rejection`] met, in the order given in the module documentation.
    ///
    /// # Security
    ///
    /// The token is attacker input: it is length-capped before anything else, never logged,
    /// and never echoed in a rejection.
    pub fn verify(&self, token: &str, requirement: &Requirement) -> Result<Arc<Claims>, Rejection> {
        self.verify_warm(token, requirement)
            .map(Verified::into_claims)
    }

    /// As [`Verifier::verify`], telling cached claims from claims verified afresh, so that the
    /// warm path can key what it derives from them on the cache's own entry.
    ///
    /// # Errors
    ///
    /// As [`Verifier::verify`].
    pub(crate) fn verify_warm(
        &self,
        token: &str,
        requirement: &Requirement,
    ) -> Result<Verified, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Malformed::TooLong.into());
        }
        let now = self.clock.unix_now();
        // The token is hashed once, for the lookup and the insert alike.
        let cache = self.cache.as_ref().map(|cache| (cache, cache.slot(token)));
        let hit = cache.and_then(|(cache, slot)| self.cached(cache, slot, token));
        let verified = if let Some(cached) = hit {
            Verified::Cached(cached)
        } else {
            let claims = Arc::new(self.verify_signed(token)?);
            // Only live tokens are worth a cache slot.
            self.check_time(&claims, now)?;
            match cache {
                Some((cache, slot)) => cache.admit(slot, token, claims),
                None => Verified::Fresh(claims),
            }
        };
        let claims: &Claims = &verified;
        self.check_time(claims, now)?;
        if claims.issuer != self.settings.issuer {
            return Err(Rejection::WrongIssuer);
        }
        if claims.audience != self.settings.audience {
            return Err(Rejection::WrongAudience);
        }
        match self.revocation.status(&claims.revocation_facts()) {
            RevocationStatus::NotRevoked => {}
            RevocationStatus::Revoked => return Err(Rejection::Revoked),
            RevocationStatus::Unavailable => return Err(Rejection::Unavailable),
        }
        if requirement
            .tenant
            .as_ref()
            .is_some_and(|tenant| *tenant != claims.tenant)
        {
            return Err(Rejection::WrongTenant);
        }
        if requirement
            .permission
            .as_ref()
            .is_some_and(|permission| !claims.scope.grants(permission))
        {
            return Err(Rejection::InsufficientScope);
        }
        Ok(verified)
    }

    /// A cache hit, provided the signing key is still trusted: removing a key from the ring
    /// must stop its tokens at once, cached or not.
    fn cached(&self, cache: &VerifiedCache, slot: Slot, token: &str) -> Option<Cached> {
        let cached = cache.get(slot, token)?;
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.contains(cached.kid.as_str()).then_some(cached)
    }

    /// Steps 2-7: structure, header, key lookup, strict signature, typed claims.
    fn verify_signed(&self, token: &str) -> Result<Claims, Rejection> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed::Segments.into());
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(Malformed::Segments.into());
        }
        // The header first, alone: it is short, and most junk dies here, before the longer
        // payload and signature are decoded at all.
        let header = strict_b64_decode(header_b64.as_bytes()).ok_or(Malformed::Base64)?;
        let header: WireHeader<'_> = strict_json_object(&header).ok_or(Malformed::Header)?;
        if header.alg != TOKEN_ALGORITHM {
            return Err(Malformed::Algorithm.into());
        }
        if header.typ != TOKEN_TYPE {
            return Err(Malformed::Type.into());
        }
        let payload = strict_b64_decode(payload_b64.as_bytes()).ok_or(Malformed::Base64)?;
        let signature = strict_b64_decode(signature_b64.as_bytes()).ok_or(Malformed::Base64)?;
        if signature.len() != 64 {
            return Err(Malformed::SignatureLength.into());
        }
        let kid = {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            let key = keys.get(&header.kid).ok_or(Rejection::UnknownKey)?;
            // The signing input is the received ASCII, never a re-serialisation.
            let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
            if !key.verify(signing_input.as_bytes(), &signature) {
                return Err(Rejection::BadSignature);
            }
            key.kid().clone()
        };
        let wire: WireClaims = strict_json_object(&payload).ok_or(Malformed::Claims)?;
        typed_claims(wire, kid).ok_or_else(|| Malformed::ClaimValue.into())
    }

    /// `nbf - leeway <= now < exp + leeway`, `iat <= now + leeway`, and the 12-hour cap on both
    /// `exp - iat` and `exp - now`. All arithmetic is checked (THREATS 1F#35).
    fn check_time(&self, claims: &Claims, now: i64) -> Result<(), Rejection> {
        // MAX_LEEWAY is 300 s, so the conversion cannot truncate.
        let leeway = i64::try_from(self.settings.leeway.as_secs()).unwrap_or(300);
        let iat = claims.issued_at.unix_timestamp();
        let nbf = claims.not_before.unix_timestamp();
        let exp = claims.expires_at.unix_timestamp();
        let overflow = || Rejection::from(Malformed::ClaimValue);
        if now >= exp.checked_add(leeway).ok_or_else(overflow)? {
            return Err(Rejection::Expired);
        }
        if now < nbf.checked_sub(leeway).ok_or_else(overflow)?
            || iat > now.checked_add(leeway).ok_or_else(overflow)?
        {
            return Err(Rejection::NotYetValid);
        }
        let lifetime = exp.checked_sub(iat).ok_or_else(overflow)?;
        let remaining = exp.checked_sub(now).ok_or_else(overflow)?;
        if lifetime > MAX_LIFETIME_SECS || remaining > MAX_LIFETIME_SECS + leeway {
            return Err(Rejection::LifetimeTooLong);
        }
        Ok(())
    }
}

/// The protected header, borrowed from the decoded bytes: no allocation on the path every
/// rejection of a bad header takes (a value written with JSON escapes is unescaped into an
/// owned string, and then compared like any other).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow)]
    typ: Cow<'a, str>,
    #[serde(borrow)]
    kid: Cow<'a, str>,
}

/// Step 7's value rules. `None` means [`Malformed::ClaimValue`]. The 12-hour cap is not a
/// value rule but its own rejection, decided in [`Verifier::check_time`].
fn typed_claims(wire: WireClaims, kid: KeyId) -> Option<Claims> {
    let time = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).ok();
    let lifetime = wire.exp.checked_sub(wire.iat)?;
    if lifetime <= 0 || wire.nbf > wire.exp {
        return None;
    }
    Some(Claims {
        subject: Subject::new(&wire.sub).ok()?,
        tenant: TenantId::new(&wire.tenant).ok()?,
        scope: Scope::parse_claim(&wire.scope).ok()?,
        token_id: TokenId::new(&wire.jti).ok()?,
        issued_at: time(wire.iat)?,
        not_before: time(wire.nbf)?,
        expires_at: time(wire.exp)?,
        issuer: wire.iss,
        audience: wire.aud,
        kid,
    })
}
