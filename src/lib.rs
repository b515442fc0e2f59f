//! edgetoken: short-lived, tenant-bound Ed25519 access tokens, verified at the edge, with
//! revocation that takes effect at once.
//!
//! # Trust model
//!
//! - The **issuer** holds one Ed25519 private key and mints tokens for people who signed in,
//!   never with more permissions than they hold, for one tenant, for at most 12 hours.
//! - **Verifiers** hold only public keys, looked up by `kid` in memory. They trust nothing a
//!   token says about keys or algorithms: `alg` is pinned to `EdDSA`, the header is a closed
//!   set of `alg`/`typ`/`kid`, and signatures are checked with `verify_strict`.
//! - **Revocation** is mirrored in every verifier's memory from Redis; a verifier that cannot
//!   confirm its mirror is fresh refuses (or, if the operator chose, serves) rather than
//!   guessing.
//! - Attacker input (tokens, key files, configuration, requests) is length-capped and parsed
//!   strictly; a rejection never echoes it, and no raw token, password or private key is ever
//!   logged or stored.
//!
//! # Using the library
//!
//! ```
//! use std::sync::Arc;
//! use edgetoken::clock::SystemClock;
//! use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
//! use edgetoken::permissions::Scope;
//! use edgetoken::revocation::MemoryRevocations;
//! use edgetoken::token::{Issuer, Lifetime, MintRequest, Requirement, Verifier, VerifierSettings};
//!
//! let key = SigningKey::generate();
//! let mut ring = KeyRing::new();
//! ring.insert(TrustedKey::from_bytes(&key.public_bytes())?);
//! let clock = Arc::new(SystemClock);
//! let issuer = Issuer::new(key, "https://issuer.example", "api", clock.clone());
//! let minted = issuer.mint(&MintRequest {
//!     subject: "alice".parse()?,
//!     tenant: "acme".parse()?,
//!     scope: Scope::parse_claim("runs:read")?,
//!     lifetime: Lifetime::OneHour,
//! })?;
//! let verifier = Verifier::new(
//!     VerifierSettings::new("https://issuer.example", "api"),
//!     ring,
//!     Arc::new(MemoryRevocations::new()),
//!     clock,
//! )?;
//! let need = Requirement::any().tenant("acme".parse()?).permission("runs:read".parse()?);
//! let claims = verifier.verify(minted.token.expose(), &need)?;
//! assert_eq!(claims.subject.as_str(), "alice");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clock;
pub mod config;
pub mod directory;
#[cfg(feature = "layer")]
pub mod http;
pub mod keys;
pub mod permissions;
pub mod policy;
pub mod proxies;
pub mod records;
pub mod revocation;
pub mod token;
mod two_way;

pub use clock::{Clock, ManualClock, SystemClock};
pub use keys::{KeyRing, SigningKey};
pub use permissions::{Catalogue, Permission, Scope};
pub use revocation::{RevocationCheck, RevocationStatus};
pub use token::{Claims, Issuer, Rejection, Requirement, Verifier, VerifierSettings};
#[cfg(feature = "layer")]
pub mod metrics;
#[cfg(feature = "cli")]
pub mod telemetry;
