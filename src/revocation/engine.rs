//! [`RevocationEngine`]: one handle that wires a store and this process's mirror from
//! [`RevocationSettings`] (SPEC §3).
//!
//! With no Redis URL it is the in-process store (and says so in the log); with one, a
//! [`RedisFeed`] keeps the local mirror in sync and a [`RedisStore`] writes revocations, also
//! applying them locally once Redis acknowledged. The HTTP layer holds the engine; the
//! verifier holds [`RevocationEngine::check`].
//!
//! The revocation barrier lives here too: the feed registers this process's mirror in the
//! roster (after its first full sync) and reports what it applied; the store's revoke waits
//! until every registered mirror confirmed (see [`crate::revocation::barrier`]). The store
//! knows this process's own registration, which its local apply confirms.

use std::sync::Arc;

use super::RevocationCheck;
use super::barrier::InstanceId;
use super::memory::MemoryRevocations;
use super::mirror::Mirror;
use super::redis::{RedisFeed, RedisStore};
use super::settings::RevocationSettings;
use super::store::{RevocationStore, StoreError, StoreKind};
use crate::clock::Clock;

/// The revocation store and the local mirror of one process.
#[derive(Debug)]
pub struct RevocationEngine {
    mirror: Arc<Mirror>,
    store: Arc<dyn RevocationStore>,
    feed: Option<RedisFeed>,
}

impl RevocationEngine {
    /// Starts the engine `settings` describe.
    ///
    /// Never waits for an unreachable Redis: the mirror stays not ready and revokes fail
    /// until it answers.
    ///
    /// # Errors
    /// Bad settings, or a Redis that may evict revocations ([`StoreError::EvictionPolicy`]).
    pub async fn start(
        settings: &RevocationSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        settings.validate()?;
        if !settings.uses_redis() {
            tracing::warn!(
                "no Redis URL configured: revocations live in this process only and do not \
                 survive a restart"
            );
            let store = Arc::new(MemoryRevocations::with_settings(settings, clock));
            return Ok(Self {
                mirror: Arc::clone(store.mirror()),
                store,
                feed: None,
            });
        }
        let feed = RedisFeed::start(settings, clock).await?;
        let mirror = Arc::clone(feed.mirror());
        let store = RedisStore::open_with_registered_mirror(
            settings,
            Arc::clone(&mirror),
            feed.instance().clone(),
        )
        .await?;
        Ok(Self {
            mirror,
            store: Arc::new(store),
            feed: Some(feed),
        })
    }

    /// The lookup the verifier calls on every token.
    pub fn check(&self) -> Arc<dyn RevocationCheck> {
        Arc::clone(&self.mirror) as Arc<dyn RevocationCheck>
    }

    /// The local mirror, for readiness, staleness and size.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// Where revoke calls go.
    pub fn store(&self) -> Arc<dyn RevocationStore> {
        Arc::clone(&self.store)
    }

    /// What the Redis primary gives an acknowledged revoke, as last measured (at start, and
    /// at each reconnection); `None` for the in-process store or before Redis answered.
    pub fn durability(&self) -> Option<super::Durability> {
        self.mirror.health().borrow().durability.clone()
    }

    /// Which store is in use.
    pub fn kind(&self) -> StoreKind {
        self.store.kind()
    }

    /// This process's id in the barrier's roster; `None` for the in-process store.
    pub fn instance(&self) -> Option<&InstanceId> {
        self.feed.as_ref().map(RedisFeed::instance)
    }

    /// Stops the feed, if any, leaving the barrier's roster.
    pub async fn shutdown(self) {
        if let Some(feed) = self.feed {
            feed.shutdown().await;
        }
    }
}
