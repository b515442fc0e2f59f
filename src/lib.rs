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
//! # Module map
//!
//! Dependencies point inward: the shell ([`http`], `main`, [`telemetry`]) calls the core, and
//! no core module sees HTTP (no `Request` or `HeaderMap` in a signature), which
//! `cargo check --lib --no-default-features` proves.
//!
//! Core, always built:
//! - [`token`]: the token format, [`Issuer`] (mint) and [`Verifier`] (every SPEC §1 rule, in
//!   memory, never awaiting the network), [`Rejection`]; `token::warm` owns the warm path
//!   (the verified-token cache, its per-thread tiers and memos). Uses `keys`, `revocation`,
//!   `permissions` and `clock`.
//! - [`keys`]: key ids (thumbprints), key hygiene, the signing key, the trusted [`KeyRing`]
//!   and key files.
//! - [`revocation`]: the [`RevocationCheck`] seam the verifier calls, the in-memory mirror,
//!   and the Redis store and feed that keep it current (why `redis` is not optional).
//! - [`records`]: token metadata (never the token), in memory or in Redis.
//! - [`usage`]: "last used": each verifier's per-thread aggregate of accepted uses and its
//!   periodic, commutative flush to Redis or memory.
//! - [`permissions`], [`policy`], [`proxies`]: scopes and the catalogue, the route policy
//!   that turns a method and path into a [`Requirement`], and trusted proxy addresses; no I/O.
//! - [`directory`]: people and their memberships; password hashing and checking only with the
//!   `passwords` feature (argon2).
//! - [`config`]: the raw TOML tree (defaults, file, environment); [`settings`]: the same,
//!   validated once and typed, which start-up, handlers and the CLI consume; [`clock`]:
//!   injected time.
//! - [`issuance`]: the issuer's rules, once, for the API and the CLI (who may mint what, the
//!   watermark of a user or tenant revocation).
//!
//! Shell, behind features:
//! - `layer`: [`http::layer`] (the tower layer and axum extractor), [`http::bearer`] (the
//!   decision it shares with forward-auth), [`http::ApiError`] (the one error-to-wire
//!   mapping) and [`metrics`].
//! - `server` (`layer` + `passwords`, utoipa, reqwest, hyper): the rest of [`http`]: boot,
//!   issuer, verifier API, ops, the JWKS refresher and the server loop.
//! - `cli`: the `edgetoken` binary and [`telemetry`].
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
mod encoding;
pub mod error_chain;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "layer")]
pub mod http;
pub mod issuance;
pub mod keys;
pub mod permissions;
pub mod policy;
pub mod proxies;
pub mod records;
mod redis_conn;
pub mod redis_target;
pub mod revocation;
pub mod runtime;
pub mod settings;
pub mod token;
pub mod usage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use keys::{KeyRing, SigningKey};
pub use permissions::{Catalogue, Permission, Scope};
pub use revocation::{RevocationCheck, RevocationStatus};
pub use token::{Claims, Issuer, Rejection, Requirement, Verifier, VerifierSettings};
#[cfg(feature = "layer")]
pub mod metrics;
#[cfg(feature = "cli")]
pub mod telemetry;
