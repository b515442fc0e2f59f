//! The in-process revocation store: the default for a single process without Redis (SPEC §3).
//!
//! [`MemoryRevocations`] is both the store and the check: a revoke applies straight to its
//! own [`Mirror`], which is authoritative (always ready, never stale). Nothing survives a
//! restart, and other processes see nothing; the service says so when it starts. Used by the
//! default `serve`, the offline CLI and the token core's tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::barrier::Propagation;
use super::mirror::Mirror;
use super::settings::RevocationSettings;
use super::store::{self, RevocationStore, StoreError, StoreFuture, StoreKind};
use super::{Revocation, RevocationCheck, RevocationStatus, TokenFacts};
use crate::clock::{Clock, ManualClock};

/// An in-process revocation store and check, shared behind an `Arc`.
#[derive(Debug)]
pub struct MemoryRevocations {
    mirror: Arc<Mirror>,
    clock: Arc<dyn Clock>,
    /// Unix second at or after which the next revoke also prunes.
    next_prune: AtomicI64,
    prune_every: i64,
}

impl Default for MemoryRevocations {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRevocations {
    /// An empty store that keeps every revocation forever and never prunes, whatever the
    /// tokens' expiry: for tests and the offline CLI, where the clock of the tokens (often a
    /// `ManualClock`) is not the wall clock. Services use [`MemoryRevocations::with_settings`].
    pub fn new() -> Self {
        // A clock stuck at the earliest instant: nothing is ever past its prune time.
        Self::with_settings(
            &RevocationSettings::default(),
            Arc::new(ManualClock::at(i64::MIN)),
        )
    }

    /// An empty store using `settings.leeway` and `settings.prune_interval`, reading `clock`.
    pub fn with_settings(settings: &RevocationSettings, clock: Arc<dyn Clock>) -> Self {
        let prune_every = i64::try_from(settings.prune_interval.as_secs())
            .unwrap_or(i64::MAX)
            .max(1);
        Self {
            mirror: Arc::new(Mirror::authoritative(settings, clock.clone())),
            next_prune: AtomicI64::new(clock.unix_now().saturating_add(prune_every)),
            clock,
            prune_every,
        }
    }

    /// Records `revocation`. Idempotent; a later watermark replaces an earlier one, never the
    /// reverse. Expired entries are pruned along the way, at most once per prune interval.
    pub fn revoke(&self, revocation: &Revocation) {
        self.mirror.apply(revocation);
        let now = self.clock.unix_now();
        let due = self.next_prune.load(Ordering::Acquire);
        if now >= due
            && self
                .next_prune
                .compare_exchange(
                    due,
                    now.saturating_add(self.prune_every),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.mirror.prune();
        }
    }

    /// The mirror holding the state, for metrics (size) and for sharing as the check.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }
}

impl RevocationCheck for MemoryRevocations {
    fn status(&self, token: &TokenFacts<'_>) -> RevocationStatus {
        self.mirror.status(token)
    }
}

impl RevocationStore for MemoryRevocations {
    /// One process whose mirror is the store: applied is confirmed
    /// ([`Propagation::in_process`]).
    fn revoke(&self, revocation: Revocation) -> StoreFuture<'_, Propagation> {
        Box::pin(async move {
            store::validate(&revocation)?;
            MemoryRevocations::revoke(self, &revocation);
            Ok::<_, StoreError>(Propagation::in_process())
        })
    }

    fn kind(&self) -> StoreKind {
        StoreKind::InProcess
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::revocation::testing::{Token, jti, subject, tenant};

    const NOW: i64 = 1_800_000_000;

    fn token(name: &str) -> Token {
        Token::new(name, NOW, NOW + 3600)
    }

    #[tokio::test]
    async fn store_revoke_applies_at_once() {
        let store = MemoryRevocations::with_settings(
            &RevocationSettings::default(),
            Arc::new(ManualClock::at(NOW)),
        );
        RevocationStore::revoke(
            &store,
            Revocation::Token {
                jti: jti("abc"),
                expires_at: NOW + 3600,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            store.status(&token("abc").facts()),
            RevocationStatus::Revoked
        );
        assert_eq!(
            store.status(&token("abd").facts()),
            RevocationStatus::NotRevoked
        );
    }

    #[tokio::test]
    async fn a_user_with_the_longest_subject_is_revocable() {
        // A subject may be 255 characters; every user who can hold a token must be revocable.
        let store = MemoryRevocations::new();
        RevocationStore::revoke(
            &store,
            Revocation::User {
                tenant: tenant("acme"),
                subject: subject(&"a".repeat(255)),
                before: NOW,
            },
        )
        .await
        .unwrap();
        assert_eq!(store.mirror().size().total(), 1);
    }

    #[test]
    fn new_store_keeps_revocations_of_tokens_from_any_time() {
        let store = MemoryRevocations::new();
        store.revoke(&Revocation::Token {
            jti: jti("ancient"),
            expires_at: 1_000,
        });
        let mut token = token("ancient");
        token.issued_at = 0;
        token.expires_at = 1_000;
        assert_eq!(store.status(&token.facts()), RevocationStatus::Revoked);
        assert_eq!(store.mirror().prune(), 0);
    }

    #[test]
    fn revoke_prunes_expired_entries_once_per_interval() {
        let clock = Arc::new(ManualClock::at(NOW));
        let store = MemoryRevocations::with_settings(&RevocationSettings::default(), clock.clone());
        store.revoke(&Revocation::Token {
            jti: jti("old"),
            expires_at: NOW + 10,
        });
        clock.advance(3600);
        store.revoke(&Revocation::Token {
            jti: jti("new"),
            expires_at: NOW + 7200,
        });
        assert_eq!(store.mirror().size().tokens, 1);
    }
}
