//! Tokens: format, minting and strict verification (SPEC §1).
//!
//! A token is a compact JWS: `base64url(header) "." base64url(claims) "." base64url(sig)`,
//! with header `{"alg":"EdDSA","typ":"at+jwt","kid":KID}` and the nine claims of
//! [`Claims`]. [`Issuer`] mints; [`Verifier`] checks every rule and returns the typed claims
//! or a [`Rejection`]. `jsonwebtoken` is not on this path: its EdDSA check is not strict and it
//! checks neither `typ` nor the lifetime cap, so every rule is implemented once, in
//! `verify.rs`, over ed25519-dalek's `verify_strict`.

mod claims;
mod mint;
mod rejection;
mod verify;
pub(crate) mod warm;

pub use claims::{Claims, InvalidId, Subject, TenantId, TokenId};
pub use mint::{
    InvalidLifetime, Issuer, Lifetime, MAX_LIFETIME_SECS, MintError, MintRequest, MintedToken,
    RawToken,
};
pub use rejection::{Malformed, Rejection};
pub use verify::{MAX_LEEWAY, Requirement, SettingsError, Verifier, VerifierSettings};
pub use warm::{CacheSettings, CacheStats};

#[cfg(test)]
mod pattern_tests;

/// The largest token accepted, in bytes (SPEC §1: 8 KiB), checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The only `alg` accepted and produced (RFC 8037).
pub const TOKEN_ALGORITHM: &str = "EdDSA";

/// The only `typ` accepted and produced (RFC 9068 access token).
pub const TOKEN_TYPE: &str = "at+jwt";

/// The first 49 characters of every token edgetoken mints, whatever its key or claims.
///
/// The header is always serialised as `{"alg":"EdDSA","typ":"at+jwt","kid":"` + a 43-character
/// kid + `"}`: its first 37 bytes are fixed, and 36 of them fill 48 base64url characters; the
/// 49th holds the top six bits of the 37th byte (the kid's opening quote). The 50th already
/// depends on the kid. Secret scanners can key on this prefix; see [`TOKEN_PATTERN`].
pub const TOKEN_PREFIX: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6I";

/// A regular expression that matches one whole edgetoken token, for secret scanners (GitHub
/// secret scanning custom patterns, gitleaks, trufflehog) and log scrubbers.
///
/// Written in the syntax those tools share (RE2 / Rust `regex`: no look-around, no counted
/// repetition above 1000):
///
/// - `\b(` and [`TOKEN_PREFIX`]: the fixed start of the header;
/// - `[i-n]`: the 50th character, the quote's last two bits and the top of the kid's first
///   character (base64url characters lie between `0x2D` and `0x7A`);
/// - `[A-Za-z0-9_-]{57}`: the rest of the kid; `ifQ`: the kid's closing `"}` (the header is
///   always 110 characters);
/// - `\.eyJpc3MiOi[A-Za-z0-9_-]+`: the claims, which always begin `{"iss":` (mint order);
/// - `\.[A-Za-z0-9_-]{85}[AQgw]`: the 64-byte Ed25519 signature, 86 characters whose last
///   one carries two bits;
/// - `([^A-Za-z0-9_-]|$)`: the end of the base64url run. Not `\b`: `-` is a base64url
///   character but not a word character, so `\b` would let a longer signature (an RSA one over
///   our header, one time in 1,024) match at its 86th character. Without look-ahead this end
///   is part of the match, so the token itself is capture group 1, and the character after
///   it group 2 (a scrubber replaces matches with `[REDACTED]$2` to keep it). The start stays
///   `\b`, which takes no character, so tokens one space or newline apart are all found; it
///   lets a `-` come before the token, where 49 fixed characters make a chance match
///   negligible.
///
/// The README's "Leaked tokens" section quotes it verbatim (a unit test checks that), and the
/// integration test `leaked` checks every minted token matches and other JWTs do not.
pub const TOKEN_PATTERN: &str = r"\b(eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6I[i-n][A-Za-z0-9_-]{57}ifQ\.eyJpc3MiOi[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{85}[AQgw])([^A-Za-z0-9_-]|$)";
