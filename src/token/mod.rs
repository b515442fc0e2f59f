//! Tokens: format, minting and strict verification (SPEC §1).
//!
//! A token is a compact JWS: `base64url(header) "." base64url(claims) "." base64url(sig)`,
//! with header `{"alg":"EdDSA","typ":"at+jwt","kid":KID}` and the nine claims of
//! [`Claims`]. [`Issuer`] mints; [`Verifier`] checks every rule and returns the typed claims
//! or a [`Rejection`]. `jsonwebtoken` is not on this path: its EdDSA check is not strict and it
//! checks neither `typ` nor the lifetime cap, so every rule is implemented once, in
//! `verify.rs`, over ed25519-dalek's `verify_strict`.

mod cache;
mod claims;
mod encoding;
mod mint;
mod rejection;
mod verify;

pub use cache::{CacheSettings, CacheStats};
pub use claims::{Claims, InvalidId, Subject, TenantId, TokenId};
pub use mint::{
    InvalidLifetime, Issuer, Lifetime, MAX_LIFETIME_SECS, MintError, MintRequest, MintedToken,
    RawToken,
};
pub use rejection::{Malformed, Rejection};
pub use verify::{MAX_LEEWAY, Requirement, SettingsError, Verifier, VerifierSettings};

// Its crate users (the decoy and first-run passwords) all come with `passwords`.
#[cfg(feature = "passwords")]
pub(crate) use encoding::b64_encode as b64;
pub(crate) use encoding::strict_b64_decode;

/// The largest token accepted, in bytes (SPEC §1: 8 KiB), checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The only `alg` accepted and produced (RFC 8037).
pub const TOKEN_ALGORITHM: &str = "EdDSA";

/// The only `typ` accepted and produced (RFC 9068 access token).
pub const TOKEN_TYPE: &str = "at+jwt";
