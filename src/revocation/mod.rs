//! Revocation: the check the verifier runs on every token (SPEC §3).
//!
//! This module defines the seam between the token core and the revocation engine:
//! [`RevocationCheck`] is what `Verifier::verify` calls, synchronously and without I/O, for
//! every token, cached or not. [`Revocation`] is one acknowledged revocation at any of the four
//! granularities SPEC §3 names.
//!
//! Watermark rule: a user or tenant revocation with watermark `T` (whole seconds) revokes every
//! matching token whose `iat <= T`; tokens minted later keep working. Callers set `T` a leeway
//! *after* the moment of revocation, so a token minted just before it by an issuer whose clock
//! runs up to a leeway ahead is still covered (its `iat` comes from that other clock).
//!
//! A key revocation is not a watermark: it revokes every token signed by the key, whenever
//! minted, for as long as it is held (until `T + 12 h + leeway`). A revoked key may be in an
//! attacker's hands, and its tokens minted after the revocation are exactly the ones to stop;
//! by the time the entry is pruned the key has left every key ring (`edgetoken keys revoke`
//! retires its files, key directories are reloaded and JWKS verifiers follow the issuer).
//!
//! # The engine
//!
//! - [`Mirror`]: each process's in-memory copy of the whole live revocation state; implements
//!   [`RevocationCheck`], and reports readiness, staleness, size and [`MirrorHealth`] for
//!   `/readyz` and metrics. Past `max_staleness` it answers
//!   [`RevocationStatus::Unavailable`] unless `on_stale = serve` ([`OnStale`]).
//! - [`RevocationStore`]: where revoke calls go; acknowledged only once committed.
//!   [`RedisStore`] writes to Redis; [`MemoryRevocations`] is the in-process store (one
//!   process, nothing survives a restart).
//! - [`RedisFeed`]: keeps a mirror equal to Redis through an ordered, replayable change feed
//!   that survives lost pub/sub messages, disconnects and Redis restarting empty. The Redis key
//!   layout and message format are documented in [`redis`].
//! - [`barrier`]: the revocation barrier. Every mirror fed from Redis registers and reports
//!   the position it applied; a revoke waits until every registered mirror confirmed, up to
//!   `barrier_timeout`, and answers with a [`Propagation`] (confirmed, or how many lag and
//!   the bound within which they refuse anyway). The protocol and its soundness argument are
//!   in that module.
//! - [`RevocationEngine`]: wires them from [`RevocationSettings`].
//!
//! Typical wiring: `let engine = RevocationEngine::start(&settings, clock).await?;` then hand
//! `engine.check()` to the verifier and `engine.store()` to the revoke handlers; `/readyz` is
//! `engine.mirror().is_fresh()`; metrics read `engine.mirror().size()` and `.staleness()`.

pub mod barrier;
mod durability;
mod engine;
mod memory;
mod mirror;
pub mod redis;
mod settings;
mod store;

pub use self::barrier::{InstanceId, Propagation};
pub use self::durability::{Durability, DurabilityLevel};
pub use self::engine::RevocationEngine;
pub use self::memory::MemoryRevocations;
pub use self::mirror::{Mirror, MirrorHealth, MirrorSize};
pub use self::redis::{RedisFeed, RedisStore};
pub use self::settings::{MAX_TOKEN_LIFETIME, OnStale, RevocationSettings};
pub use self::store::{RevocationStore, StoreError, StoreFuture, StoreKind};

use std::fmt;

use crate::keys::KeyId;
use crate::token::{Subject, TenantId, TokenId};

/// The facts about a verified token that revocation decisions depend on.
///
/// Borrowed from the verified claims, so a lookup allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct TokenFacts<'a> {
    /// `jti`: the token id.
    pub jti: &'a TokenId,
    /// `sub`: the user the token was minted for.
    pub subject: &'a Subject,
    /// `tenant`: the tenant the token is bound to.
    pub tenant: &'a TenantId,
    /// `kid`: the thumbprint of the key that signed the token.
    pub kid: &'a KeyId,
    /// `iat`, seconds since the Unix epoch.
    pub issued_at: i64,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// The answer of a revocation lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationStatus {
    /// Not revoked, according to state that is fresh enough to trust.
    NotRevoked,
    /// Revoked at one of the four granularities.
    Revoked,
    /// The revocation state is older than the staleness bound and the operator chose to fail
    /// closed, so no answer can be given.
    Unavailable,
}

/// A synchronous, in-memory revocation lookup.
///
/// # Contract
///
/// Implementations answer from memory in well under a microsecond and never block on I/O:
/// the verifier calls this on every request, on its hot path.
pub trait RevocationCheck: Send + Sync + fmt::Debug {
    /// Whether the token described by `token` has been revoked.
    fn status(&self, token: &TokenFacts<'_>) -> RevocationStatus;
}

/// One revocation, at one of the four granularities of SPEC §3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Revocation {
    /// One token, by `jti`. Kept until `expires_at` plus leeway.
    Token {
        /// The token id.
        jti: TokenId,
        /// The token's `exp`, seconds since the epoch: when the entry may be pruned.
        expires_at: i64,
    },
    /// Every token of `subject` in `tenant` issued at or before `before`.
    User {
        /// The tenant.
        tenant: TenantId,
        /// The user id (`sub`).
        subject: Subject,
        /// Watermark, seconds since the epoch.
        before: i64,
    },
    /// Every token of `tenant` issued at or before `before`.
    Tenant {
        /// The tenant.
        tenant: TenantId,
        /// Watermark, seconds since the epoch.
        before: i64,
    },
    /// Every token signed by key `kid`, whenever minted; held until `before + 12 h + leeway`.
    Key {
        /// The key id (RFC 7638 thumbprint).
        kid: KeyId,
        /// Watermark, seconds since the epoch.
        before: i64,
    },
}

impl Revocation {
    /// Whether this revocation applies to `token`.
    pub fn covers(&self, token: &TokenFacts<'_>) -> bool {
        match self {
            Self::Token { jti, .. } => jti == token.jti,
            Self::User {
                tenant,
                subject,
                before,
            } => tenant == token.tenant && subject == token.subject && token.issued_at <= *before,
            Self::Tenant { tenant, before } => tenant == token.tenant && token.issued_at <= *before,
            Self::Key { kid, .. } => kid == token.kid,
        }
    }
}

/// Valid identifiers from short names, and owned token facts to lend, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::TokenFacts;
    use crate::keys::KeyId;
    use crate::token::{Subject, TenantId, TokenId};

    /// `name` padded with `-` to a token id (22 characters, so not the compact form unless
    /// `name` already is one).
    pub(crate) fn jti(name: &str) -> TokenId {
        TokenId::new(&format!("{name:-<22}")).unwrap()
    }

    /// `name` padded with `-` to the length of a key id.
    pub(crate) fn kid(name: &str) -> KeyId {
        KeyId::new(&format!("{name:-<43}")).unwrap()
    }

    pub(crate) fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    pub(crate) fn subject(name: &str) -> Subject {
        Subject::new(name).unwrap()
    }

    /// The facts of one token, owned.
    #[derive(Debug, Clone)]
    pub(crate) struct Token {
        pub(crate) jti: TokenId,
        pub(crate) subject: Subject,
        pub(crate) tenant: TenantId,
        pub(crate) kid: KeyId,
        pub(crate) issued_at: i64,
        pub(crate) expires_at: i64,
    }

    impl Token {
        /// Token `name` of alice in acme, signed by key `k1`.
        pub(crate) fn new(name: &str, issued_at: i64, expires_at: i64) -> Self {
            Self {
                jti: jti(name),
                subject: subject("alice"),
                tenant: tenant("acme"),
                kid: kid("k1"),
                issued_at,
                expires_at,
            }
        }

        pub(crate) fn facts(&self) -> TokenFacts<'_> {
            TokenFacts {
                jti: &self.jti,
                subject: &self.subject,
                tenant: &self.tenant,
                kid: &self.kid,
                issued_at: self.issued_at,
                expires_at: self.expires_at,
            }
        }
    }
}
