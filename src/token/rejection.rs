//! Why a token was refused (SPEC §1).

/// Why a token was rejected. [`Rejection::code`] is the SPEC §1 reason, used unchanged as the
/// log field, the metric label and the error code in responses.
///
/// # Security
///
/// No variant carries token bytes or claim values: a rejection can be logged and returned
/// without echoing attacker input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The token is not a well-formed edgetoken token; the inner value says which rule failed.
    #[error("malformed token: {0}")]
    Malformed(#[from] Malformed),
    /// The signature does not verify under the key named by `kid`.
    #[error("bad signature")]
    BadSignature,
    /// `kid` names no trusted key.
    #[error("unknown key")]
    UnknownKey,
    /// `now >= exp + leeway`.
    #[error("token expired")]
    Expired,
    /// `now < nbf - leeway`, or `iat` is in the future beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp - iat` exceeds 12 hours, or `exp` is more than 12 hours (plus leeway) away.
    #[error("token lifetime exceeds 12 hours")]
    LifetimeTooLong,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is not the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The token, its user, its tenant or its key has been revoked.
    #[error("token revoked")]
    Revoked,
    /// The request names a tenant other than the token's.
    #[error("token is for another tenant")]
    WrongTenant,
    /// The token's scope does not grant the permission the request needs.
    #[error("insufficient scope")]
    InsufficientScope,
    /// The revocation state is past its staleness bound, so no decision can be made safely.
    #[error("revocation state unavailable")]
    Unavailable,
}

impl Rejection {
    /// The `snake_case` reason code of SPEC §1.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Revoked => "revoked",
            Self::WrongTenant => "wrong_tenant",
            Self::InsufficientScope => "insufficient_scope",
            Self::Unavailable => "unavailable",
        }
    }

    /// Every reason code, for pre-registering metric labels.
    pub const CODES: [&'static str; 12] = [
        "malformed",
        "bad_signature",
        "unknown_key",
        "expired",
        "not_yet_valid",
        "lifetime_too_long",
        "wrong_issuer",
        "wrong_audience",
        "revoked",
        "wrong_tenant",
        "insufficient_scope",
        "unavailable",
    ];
}

/// Which structural rule a malformed token broke. Useful in debug logs and tests; responses
/// only ever say `malformed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// Longer than the 8 KiB cap (checked before anything else).
    #[error("longer than the size limit")]
    TooLong,
    /// Not exactly three `.`-separated parts, or an empty part.
    #[error("not three non-empty parts")]
    Segments,
    /// A part is not strict base64url (alphabet, no padding, no whitespace, zero unused bits).
    #[error("not strict base64url")]
    Base64,
    /// The header is not a strict JSON object of exactly `alg`, `typ` and `kid` strings
    /// (duplicates, unknown parameters such as `crit`/`jku`/`jwk`, trailing data all fail).
    #[error("header is not a strict JSON object of alg, typ and kid")]
    Header,
    /// `alg` is not exactly `EdDSA`.
    #[error("algorithm is not EdDSA")]
    Algorithm,
    /// `typ` is not exactly `at+jwt`.
    #[error("type is not at+jwt")]
    Type,
    /// The signature is not exactly 64 bytes.
    #[error("signature is not 64 bytes")]
    SignatureLength,
    /// The claims are not a strict JSON object of exactly the nine claims with their types
    /// (integers for times, one string for `aud`).
    #[error("claims are not a strict JSON object of the required claims")]
    Claims,
    /// A claim has the right type but an invalid value (tenant slug, jti length, scope
    /// syntax, subject characters, `exp` not after `iat`, overflowing times).
    #[error("a claim has an invalid value")]
    ClaimValue,
}
