//! The revocation store interface: where a revoke call goes (SPEC §3).
//!
//! A [`RevocationStore`] accepts a [`Revocation`] and acknowledges it only once it is
//! committed where every verifier's mirror will see it: in Redis ([`RedisStore`]) or, for a
//! single process without Redis, in the process's own mirror ([`MemoryRevocations`]). A
//! failed revoke changed nothing the caller can rely on and maps to 503; it never pretends to
//! succeed (THREATS §3.5 point 3). Lookups are not here: they go through the mirror's
//! [`RevocationCheck`](super::RevocationCheck).
//!
//! [`RedisStore`]: super::RedisStore
//! [`MemoryRevocations`]: super::MemoryRevocations

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::Revocation;
use super::barrier::Propagation;

/// A boxed future, so stores can sit behind `dyn RevocationStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Longest identifier the store accepts: a `sub` may be 255 characters (the longest
/// identifier a token carries; a `jti` is at most 128), and every user who can hold a token
/// must be revocable by user.
const MAX_ID_LEN: usize = 255;

/// Where revocations are written.
pub trait RevocationStore: Send + Sync + fmt::Debug {
    /// Commits `revocation`, then waits at the revocation barrier (up to `barrier_timeout`)
    /// until every registered mirror applied it. Success means it is durable in the store;
    /// the [`Propagation`] says how many mirrors confirmed it and how many lag (each of which
    /// refuses the token within its `max_staleness`). Idempotent, so a caller may retry after
    /// an error.
    ///
    /// # Errors
    /// [`StoreError`] when the store is unreachable, too slow, refused the write, or the
    /// revocation is malformed. After an error the revocation may or may not have been
    /// applied (a reply can be lost after the write): the caller reports failure and retries.
    fn revoke(&self, revocation: Revocation) -> StoreFuture<'_, Propagation>;

    /// Which kind of store this is, for the startup log line and metrics.
    fn kind(&self) -> StoreKind;
}

/// The store implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One process, nothing survives a restart.
    InProcess,
    /// Redis, shared by every issuer and verifier of the deployment.
    Redis,
}

/// Why a revocation store operation failed. `Clone`, so that every revoke waiting on one
/// connection open gets its error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis refused, failed or dropped the connection.
    #[error("revocation store: Redis failed while trying to {operation}")]
    Redis {
        /// What we were doing.
        operation: &'static str,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error(
        "revocation store: Redis did not answer within {timeout:?} while trying to {operation}"
    )]
    Timeout {
        /// What we were doing.
        operation: &'static str,
        /// The configured command timeout.
        timeout: Duration,
    },
    /// Redis answered something this version does not understand.
    #[error("revocation store: unexpected reply from Redis while trying to {operation}: {detail}")]
    Protocol {
        /// What we were doing.
        operation: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// Redis may evict keys, which would silently un-revoke tokens (THREATS §3.3).
    #[error(
        "Redis maxmemory-policy is `{policy}`, which can evict revocations; run \
         `CONFIG SET maxmemory-policy noeviction` and set `maxmemory-policy noeviction` in \
         redis.conf (or your provider's parameter group)"
    )]
    EvictionPolicy {
        /// The policy Redis reported.
        policy: String,
    },
    /// Redis accepted the revocation, but fewer replicas than `min_replicas_acked` confirmed
    /// it within `wait_timeout` (`WAIT`): it could be lost by a failover, so it is not
    /// acknowledged (503). Retrying is safe: a revocation applied twice is a no-op.
    #[error(
        "revocation store: only {acked} of the {wanted} replica(s) required confirmed the \
         revocation within {timeout:?}"
    )]
    NotReplicated {
        /// Replicas that confirmed.
        acked: u64,
        /// Replicas required (`min_replicas_acked`).
        wanted: u32,
        /// The `WAIT` timeout.
        timeout: Duration,
    },
    /// The Redis primary gives less durability than `require_durability` asks for.
    #[error(
        "revocation store: Redis gives durability `{found}` but require_durability is \
         `{required}` ({detail})"
    )]
    Durability {
        /// The required level.
        required: super::DurabilityLevel,
        /// The level measured.
        found: super::DurabilityLevel,
        /// What was measured.
        detail: String,
    },
    /// The Redis URL does not parse.
    #[error("invalid revocation setting `redis_url`")]
    RedisUrl(#[source] redis::RedisError),
    /// A setting is out of range.
    #[error("invalid revocation setting `{field}`: {reason}")]
    Settings {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The revocation itself is malformed.
    #[error("invalid revocation: {0}")]
    InvalidRevocation(&'static str),
}

impl StoreError {
    /// Whether the store cannot take writes now (unreachable, slow, full, or configured to
    /// evict), which the HTTP layer answers with 503 (SPEC §3), as opposed to a malformed
    /// revocation or bad settings.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Redis { .. }
                | Self::Timeout { .. }
                | Self::Protocol { .. }
                | Self::EvictionPolicy { .. }
                | Self::NotReplicated { .. }
                | Self::Durability { .. }
        )
    }
}

/// Checks what every store requires of a revocation before writing it.
///
/// Identifiers are 1-255 bytes without control characters; a `jti` is also restricted to
/// visible ASCII (`!`..`~`), which every `jti` we mint satisfies (base64url), so nothing odd
/// reaches logs, keys or the feed.
///
/// # Errors
/// [`StoreError::InvalidRevocation`] for an empty, over-long or ill-formed identifier.
pub(crate) fn validate(revocation: &Revocation) -> Result<(), StoreError> {
    let ok =
        |id: &str| !id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control);
    let visible = |id: &str| ok(id) && id.bytes().all(|b| b.is_ascii_graphic());
    let valid = match revocation {
        Revocation::Token { jti, .. } => visible(jti.as_str()),
        Revocation::User {
            tenant, subject, ..
        } => ok(tenant.as_str()) && ok(subject.as_str()),
        Revocation::Tenant { tenant, .. } => ok(tenant.as_str()),
        Revocation::Key { kid, .. } => ok(kid.as_str()),
    };
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidRevocation(
            "identifiers must be 1-255 bytes without control characters, a jti visible ASCII",
        ))
    }
}
