//! [`RedisStore`]: the writing side of the Redis revocation store (SPEC §3).
//!
//! A revoke runs the `EVENT` script (see the parent module for the layout) and is acknowledged
//! only after Redis returned the change's sequence number; with Redis down or refusing, it fails
//! and nothing local changes (THREATS §3.4, hashicorp/vault#2028). The connection is opened
//! lazily, so an issuer can start while Redis is down and answer 503 until it is back.
//!
//! [`RevocationStore::revoke`] then waits at the revocation barrier (up to
//! `barrier_timeout`) until every registered mirror confirmed the change, and says how many
//! did ([`Propagation`]); [`RedisStore::revoke_with_seq`] commits without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::redis::Client;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::barrier::Waiter;
use super::{Keys, Scripts, check_eviction_policy, client, prune, timed, write_event};
use crate::revocation::barrier::{InstanceId, Position, Propagation};
use crate::revocation::mirror::Mirror;
use crate::revocation::settings::RevocationSettings;
use crate::revocation::store::{self, RevocationStore, StoreFuture, StoreKind};
use crate::revocation::{Revocation, StoreError};

/// How many times the connection manager retries a failed reconnect per command before the
/// command fails. Kept small: a revoke against a dead Redis must fail fast (503), not hang.
const RECONNECT_RETRIES: usize = 2;

/// The Redis revocation store, shared behind an `Arc` by the issuer's handlers.
#[derive(Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    settings: RevocationSettings,
    keys: Keys,
    scripts: Scripts,
    connection: OnceCell<ConnectionManager>,
    /// This process's own mirror, if any: updated right after Redis acknowledged, so the
    /// revoking process rejects the token without waiting for the feed.
    local: Option<Arc<Mirror>>,
    /// The revocation barrier: what a revoke waits on after Redis accepted it.
    waiter: Waiter,
    /// Milliseconds after `origin` at which the next opportunistic prune may run.
    next_prune_ms: AtomicU64,
    origin: Instant,
}

impl RedisStore {
    /// A store for `settings.redis_url`. Tries to connect at once: a Redis that answers with a
    /// `maxmemory-policy` other than `noeviction` is refused; an unreachable one is not (the
    /// connection is retried on each revoke, which fails until Redis is back).
    ///
    /// # Errors
    /// [`StoreError::Settings`] / [`StoreError::RedisUrl`] for bad settings, and
    /// [`StoreError::EvictionPolicy`] for a Redis that may evict revocations.
    pub async fn open(settings: &RevocationSettings) -> Result<Self, StoreError> {
        Self::open_inner(settings, None, None).await
    }

    /// As [`RedisStore::open`], and also applies every acknowledged revocation to `mirror`
    /// (this process's own), so the revoking process rejects the token as soon as the revoke
    /// returns, without waiting for the feed.
    ///
    /// # Errors
    /// As [`RedisStore::open`].
    pub async fn open_with_local_mirror(
        settings: &RevocationSettings,
        mirror: Arc<Mirror>,
    ) -> Result<Self, StoreError> {
        Self::open_inner(settings, Some(mirror), None).await
    }

    /// As [`RedisStore::open_with_local_mirror`], where `mirror` is registered in the
    /// barrier's roster as `instance` (by its feed): the revoke counts it confirmed, having
    /// applied the change to it before waiting.
    ///
    /// # Errors
    /// As [`RedisStore::open`].
    pub async fn open_with_registered_mirror(
        settings: &RevocationSettings,
        mirror: Arc<Mirror>,
        instance: InstanceId,
    ) -> Result<Self, StoreError> {
        Self::open_inner(settings, Some(mirror), Some(instance)).await
    }

    async fn open_inner(
        settings: &RevocationSettings,
        local: Option<Arc<Mirror>>,
        own: Option<InstanceId>,
    ) -> Result<Self, StoreError> {
        settings.validate()?;
        let client = client(settings)?;
        let store = Self {
            shared: Arc::new(Shared {
                waiter: Waiter::new(client.clone(), settings, own),
                client,
                settings: settings.clone(),
                keys: Keys::new(&settings.key_prefix),
                scripts: Scripts::new(),
                connection: OnceCell::new(),
                local,
                next_prune_ms: AtomicU64::new(0),
                origin: Instant::now(),
            }),
        };
        match store.shared.connection().await {
            Ok(_) => {}
            Err(err @ StoreError::EvictionPolicy { .. }) => return Err(err),
            Err(err) => tracing::warn!(
                error = %err,
                "Redis revocation store unreachable at start; revokes fail until it answers"
            ),
        }
        Ok(store)
    }

    /// Commits `revocation` to Redis and returns its sequence number, without waiting at the
    /// barrier (tools and tests that watch the mirrors themselves).
    ///
    /// # Errors
    /// See [`RevocationStore::revoke`].
    pub async fn revoke_with_seq(&self, revocation: &Revocation) -> Result<u64, StoreError> {
        Ok(self.shared.commit(revocation).await?.seq)
    }

    /// Removes expired entries from Redis now. Returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let mut conn = self.shared.connection().await?.clone();
        let s = &self.shared;
        prune(&mut conn, &s.keys, &s.scripts, &s.settings).await
    }
}

impl Shared {
    async fn connection(&self) -> Result<&ConnectionManager, StoreError> {
        let timeout = self.settings.command_timeout;
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_max_delay(timeout);
                let mut conn = timed(
                    timeout,
                    "connect",
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await?;
                check_eviction_policy(&mut conn, timeout).await?;
                Ok(conn)
            })
            .await
    }

    /// Commits, then waits at the barrier.
    async fn revoke(self: &Arc<Self>, revocation: &Revocation) -> Result<Propagation, StoreError> {
        let target = self.commit(revocation).await?;
        let mut conn = self.connection().await?.clone();
        let propagation = self.waiter.wait(&mut conn, &target).await?;
        if !propagation.is_confirmed() {
            tracing::warn!(
                lagging = propagation.lagging,
                confirmed = propagation.confirmed,
                refused_within = ?propagation.max_staleness,
                "revocation not confirmed by every mirror within the barrier timeout"
            );
        }
        Ok(propagation)
    }

    /// Writes the change; returns its position (generation and sequence) in the feed.
    async fn commit(self: &Arc<Self>, revocation: &Revocation) -> Result<Position, StoreError> {
        store::validate(revocation)?;
        let body = serde_json::to_string(revocation).map_err(|err| StoreError::Protocol {
            operation: "encode a revocation",
            detail: err.to_string(),
        })?;
        let (set, member, score) = self.keys.entry(revocation);
        let mut conn = self.connection().await?.clone();
        let entry = Some((set, member.as_str(), score));
        let written = write_event(
            &mut conn,
            &self.keys,
            &self.scripts,
            &self.settings,
            &body,
            entry,
        )
        .await;
        // A connection that died since the last command (Redis restarted) fails once while the
        // manager reconnects; one retry hides that. Safe: a change applied twice is a no-op.
        let (seq, generation) = match written {
            Err(StoreError::Redis { source, .. })
                if source.is_connection_dropped() || source.is_io_error() =>
            {
                write_event(
                    &mut conn,
                    &self.keys,
                    &self.scripts,
                    &self.settings,
                    &body,
                    entry,
                )
                .await?
            }
            other => other?,
        };
        // Only now, with Redis' acknowledgement, may local state change.
        if let Some(mirror) = &self.local {
            mirror.apply(revocation);
        }
        self.maybe_prune();
        Ok(Position { generation, seq })
    }

    /// Prunes Redis in the background at most once per `prune_interval`, so a deployment with
    /// only issuers still bounds its state.
    fn maybe_prune(self: &Arc<Self>) {
        let now_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_prune_ms.load(Ordering::Acquire);
        if now_ms < due {
            return;
        }
        let interval = u64::try_from(self.settings.prune_interval.as_millis()).unwrap_or(u64::MAX);
        if self
            .next_prune_ms
            .compare_exchange(
                due,
                now_ms.saturating_add(interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return;
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            let Some(conn) = shared.connection.get() else {
                return;
            };
            let mut conn = conn.clone();
            if let Err(err) =
                prune(&mut conn, &shared.keys, &shared.scripts, &shared.settings).await
            {
                tracing::warn!(error = %err, "pruning expired revocations in Redis failed");
            }
        });
    }
}

impl RevocationStore for RedisStore {
    fn revoke(&self, revocation: Revocation) -> StoreFuture<'_, Propagation> {
        Box::pin(async move { self.shared.revoke(&revocation).await })
    }

    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }
}
