//! [`RedisStore`]: the writing side of the Redis revocation store (SPEC §3).
//!
//! A revoke runs the `EVENT` script (see the parent module for the layout) and is acknowledged
//! only after Redis returned the change's sequence number; with Redis down or refusing, it fails
//! and nothing local changes (THREATS §3.4, hashicorp/vault#2028). The connection is opened
//! lazily, so an issuer can start while Redis is down and answer 503 until it is back.
//!
//! Durable acknowledgement: when `min_replicas_acked` > 0 (by default whenever the primary
//! has replicas, and always under Sentinel or Cluster) the write and a `WAIT min_replicas_acked
//! wait_timeout` go to Redis as one pipeline on one connection, so `WAIT` counts exactly that
//! write; fewer replicas within the timeout and the revoke fails (503), nothing is
//! acknowledged and the local mirror is not touched (THREATS F8: asynchronous replication loses
//! acknowledged writes on failover). The pipeline matters: sent separately, a reconnect between
//! the two would run `WAIT` on a fresh connection with no writes, which answers at once.
//! Concurrent revokes share one such pipeline ([`GroupCommit`]): `WAIT` blocks the connection
//! it runs on, so one runs at a time, and the revokes that arrive meanwhile go together in the
//! next, rather than each queueing a wait of its own inside Redis.
//!
//! Failover: the connection goes to the primary the [`RedisTarget`] names. A command that
//! fails with a lost connection, a timeout, `READONLY` (a demoted primary) or, in a Cluster,
//! `MOVED`/`ASK`/`TRYAGAIN`/`CLUSTERDOWN` drops that connection and tells the target, so the
//! next revoke asks the sentinels (or the cluster) again; each new connection is checked
//! (eviction policy, durability) before use. One open runs at a time, in a task of its own,
//! and every revoke meanwhile waits for it ([`ConnectionSlot`]); a failure reported late on
//! an older connection leaves the new one alone. Each revoke, too, runs in a task of its own
//! within [`RevocationSettings::revoke_deadline`], so a client that gives up stops nothing
//! halfway and every revoke answers in bounded time.
//!
//! [`RevocationStore::revoke`] then waits at the revocation barrier (up to
//! `barrier_timeout`) until every registered mirror confirmed the change, and says how many
//! did ([`Propagation`]); [`RedisStore::revoke_with_seq`] commits without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use futures_util::FutureExt as _;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::barrier::Waiter;
use super::group_commit::{GroupCommit, Runner};
use super::{
    Keys, PendingWrite, Scripts, check_durability, check_eviction_policy, is_lost_primary,
    measure_durability, prune, target, timed, write_event, write_events_and_wait,
};
use crate::redis_conn::slot::{ConnectionSlot, Opened};
use crate::redis_target::{Primary, RedisTarget};
use crate::revocation::Durability;
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
    target: RedisTarget,
    settings: RevocationSettings,
    keys: Keys,
    scripts: Scripts,
    /// The connection to the primary, opened on first use and replaced after a failover;
    /// one open at a time, which no caller's cancellation stops ([`ConnectionSlot`]).
    connection: ConnectionSlot<Checked, StoreError>,
    /// This process's own mirror, if any: updated right after Redis acknowledged, so the
    /// revoking process rejects the token without waiting for the feed.
    local: Option<Arc<Mirror>>,
    /// The revocation barrier: what a revoke waits on after Redis accepted it.
    waiter: Waiter,
    /// Milliseconds after `origin` at which the next opportunistic prune may run.
    next_prune_ms: AtomicU64,
    origin: Instant,
}

/// A checked connection to one primary.
#[derive(Debug, Clone)]
struct Checked {
    conn: ConnectionManager,
    /// What the primary gives, measured when the connection opened.
    durability: Durability,
    /// The writes that wait for replicas, batched behind one `WAIT` at a time on `conn`.
    commits: Arc<Commits>,
}

/// A replicated write's sequence number and generation, and how many replicas confirmed it.
type Written = ((u64, String), u64);

/// The group commit of one connection's replicated writes.
type Commits = GroupCommit<PendingWrite, Written, StoreError>;

/// The most writes one pipeline carries (about 1 KiB each).
const MAX_BATCH: usize = 64;

/// A checked connection and the primary it goes to.
type Open = Opened<Checked>;

impl RedisStore {
    /// A store for `settings.redis_url` (or the Sentinel or Cluster primary). Tries to connect
    /// at once: a Redis that answers with a `maxmemory-policy` other than `noeviction`, or
    /// gives less than `require_durability`, is refused; an unreachable one is not (the
    /// connection is retried on each revoke, which fails until Redis is back).
    ///
    /// # Errors
    /// [`StoreError::Settings`] / [`StoreError::RedisUrl`] for bad settings, and
    /// [`StoreError::EvictionPolicy`] for a Redis that may evict revocations, and
    /// [`StoreError::Durability`] for one below `require_durability`.
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
        let target = target(settings)?;
        let store = Self {
            shared: Arc::new(Shared {
                waiter: Waiter::new(target.clone(), settings, own),
                target,
                settings: settings.clone(),
                keys: Keys::new(&settings.key_prefix),
                scripts: Scripts::new(),
                connection: ConnectionSlot::default(),
                local,
                next_prune_ms: AtomicU64::new(0),
                origin: Instant::now(),
            }),
        };
        match store.shared.connection().await {
            // `connection` logged what the primary gives.
            Ok(_) => {}
            Err(err @ (StoreError::EvictionPolicy { .. } | StoreError::Durability { .. })) => {
                return Err(err);
            }
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
        Ok(self.shared.commit(revocation).await?.0.seq)
    }

    /// Removes expired entries from Redis now. Returns how many.
    ///
    /// # Errors
    /// [`StoreError`] when Redis is unreachable.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let mut conn = self.shared.connection().await?.value.conn;
        let s = &self.shared;
        prune(&mut conn, &s.keys, &s.scripts, &s.settings).await
    }
}

/// States, at start and after each move of the primary, what an acknowledged revoke survives,
/// and warns when revokes cannot be acknowledged at all for want of replicas.
fn log_durability(primary: &str, durability: &Durability) {
    tracing::info!(
        primary,
        level = %durability.level,
        min_replicas_acked = durability.min_replicas_acked,
        connected_replicas = durability.connected_replicas,
        appendonly = ?durability.appendonly,
        appendfsync = ?durability.appendfsync,
        "Redis revocation store: {}",
        durability.describe()
    );
    if durability.connected_replicas < durability.min_replicas_acked {
        tracing::warn!(
            min_replicas_acked = durability.min_replicas_acked,
            connected_replicas = durability.connected_replicas,
            "fewer replicas connected than revokes wait for: revokes answer 503 until enough \
             are online"
        );
    }
}

impl Shared {
    /// The connection to the current primary, opened (and checked) if there is none or the
    /// target names another primary now. The open runs on its own ([`ConnectionSlot`]): every
    /// revoke that arrives meanwhile waits for the same one.
    async fn connection(self: &Arc<Self>) -> Result<Open, StoreError> {
        let primary = self
            .target
            .primary()
            .await
            .map_err(|source| StoreError::Redis {
                operation: "find the Redis primary",
                source,
            })?;
        let address = Arc::clone(&primary.address);
        let shared = Arc::clone(self);
        self.connection
            .get(
                &address,
                move || async move { shared.open(primary).await },
                || StoreError::Protocol {
                    operation: "open a connection to the Redis primary",
                    detail: "the open ended without an answer".to_owned(),
                },
            )
            .await
    }

    /// Opens a connection to `primary` and checks it (eviction policy, durability).
    async fn open(&self, primary: Primary) -> Result<Checked, StoreError> {
        let timeout = self.settings.command_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // A write may wait for replicas (`WAIT`) on top of its own time; each command is
            // still bounded by `timed` with its own timeout.
            .set_response_timeout(Some(timeout + self.settings.wait_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(timeout);
        let mut conn = timed(
            timeout,
            "connect",
            ConnectionManager::new_with_config(primary.client, config),
        )
        .await
        .inspect_err(|_| self.target.forget(&primary.address))?;
        check_eviction_policy(&mut conn, timeout).await?;
        let mut durability =
            measure_durability(&mut conn, &self.settings, self.target.follows_failover()).await?;
        durability.primary = Some(self.target.describe_primary(&primary.address));
        check_durability(&durability, &self.settings)?;
        log_durability(&primary.address, &durability);
        if let Some(mirror) = &self.local {
            let reported = durability.clone();
            mirror.update_health(|h| h.durability = Some(reported));
        }
        let commits = self.commits(conn.clone(), durability.min_replicas_acked);
        Ok(Checked {
            conn,
            durability,
            commits,
        })
    }

    /// The group commit of `conn`: each batch is the writes and one `WAIT` for `wanted`
    /// replicas, as one pipeline.
    fn commits(&self, conn: ConnectionManager, wanted: u32) -> Arc<Commits> {
        let (keys, settings) = (self.keys.clone(), self.settings.clone());
        let run: Runner<PendingWrite, Written, StoreError> = Box::new(move |changes| {
            let (mut conn, keys, settings) = (conn.clone(), keys.clone(), settings.clone());
            async move {
                let (written, acked) =
                    write_events_and_wait(&mut conn, &keys, &settings, &changes, wanted).await?;
                Ok(written.into_iter().map(|w| (w, acked)).collect())
            }
            .boxed()
        });
        GroupCommit::new(run, MAX_BATCH, || StoreError::Protocol {
            operation: "write a revocation and wait for replicas",
            detail: "its batch ended without an answer".to_owned(),
        })
    }

    /// After a command on `failed` failed: if the error says the primary is lost, forgets
    /// that connection and that primary, so the next call finds the primary again. A failure
    /// reported late by a command on an older connection leaves a newer one alone.
    fn note_failure(&self, err: &StoreError, failed: &Open) {
        if is_lost_primary(err) {
            self.target.forget(&failed.address);
            if self.target.follows_failover() {
                self.connection.forget(failed.id);
            }
        }
    }

    /// Commits, then waits at the barrier.
    async fn revoke(self: &Arc<Self>, revocation: &Revocation) -> Result<Propagation, StoreError> {
        let (target, open) = self.commit(revocation).await?;
        let mut conn = open.value.conn;
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

    /// Writes the change; returns its position (generation and sequence) in the feed, and the
    /// connection Redis acknowledged it on (the barrier reads the roster there).
    async fn commit(
        self: &Arc<Self>,
        revocation: &Revocation,
    ) -> Result<(Position, Open), StoreError> {
        store::validate(revocation)?;
        let body = serde_json::to_string(revocation).map_err(|err| StoreError::Protocol {
            operation: "encode a revocation",
            detail: err.to_string(),
        })?;
        let (set, member, score) = self.keys.entry(revocation);
        let entry = (set, member.as_str(), score);
        let open = self.connection().await?;
        let written = self.write(&open, &body, entry).await;
        // A connection that died since the last command (Redis restarted) fails once while the
        // manager reconnects; one retry hides that. Safe: a change applied twice is a no-op.
        // Under Sentinel or Cluster the retry goes to whatever primary is named now (after
        // `MOVED`, the slot's new owner; after `ASK`, the same node again: 503).
        let ((seq, generation), open) = match written {
            Err(err) if is_lost_primary(&err) => {
                self.note_failure(&err, &open);
                let open = self.connection().await?;
                let retried = self.write(&open, &body, entry).await;
                if let Err(err) = &retried {
                    self.note_failure(err, &open);
                }
                (retried?, open)
            }
            other => (other?, open),
        };
        // Only now, with Redis' acknowledgement, may local state change.
        if let Some(mirror) = &self.local {
            mirror.apply(revocation);
        }
        self.maybe_prune();
        Ok((Position { generation, seq }, open))
    }

    /// Writes the change on `open`; when replicas must confirm it, with `WAIT` in the same
    /// pipeline shared with the revokes that arrive meanwhile ([`write_events_and_wait`],
    /// [`GroupCommit`]), and fails unless enough did.
    async fn write(
        &self,
        open: &Open,
        body: &str,
        entry: (&str, &str, i64),
    ) -> Result<(u64, String), StoreError> {
        let wanted = open.value.durability.min_replicas_acked;
        if wanted == 0 {
            return write_event(
                &mut open.value.conn.clone(),
                &self.keys,
                &self.scripts,
                &self.settings,
                body,
                Some(entry),
            )
            .await;
        }
        let change = PendingWrite {
            body: body.to_owned(),
            set: entry.0.to_owned(),
            member: entry.1.to_owned(),
            score: entry.2,
        };
        let ((seq, generation), acked) = open.value.commits.submit(change).await?;
        if let Some(mirror) = &self.local {
            mirror.update_health(|h| {
                if let Some(durability) = h.durability.as_mut() {
                    durability.last_replicas_acked = Some(acked);
                }
            });
        }
        if acked < u64::from(wanted) {
            tracing::warn!(
                acked,
                wanted,
                seq,
                "revocation not confirmed by enough replicas; answering 503"
            );
            return Err(StoreError::NotReplicated {
                acked,
                wanted,
                timeout: self.settings.wait_timeout,
            });
        }
        Ok((seq, generation))
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
            let Some(mut conn) = shared.connection.current().map(|open| open.value.conn) else {
                return;
            };
            if let Err(err) =
                prune(&mut conn, &shared.keys, &shared.scripts, &shared.settings).await
            {
                tracing::warn!(error = %err, "pruning expired revocations in Redis failed");
            }
        });
    }
}

impl RevocationStore for RedisStore {
    /// Runs the revoke in a task of its own, bounded by
    /// [`RevocationSettings::revoke_deadline`]: a caller that goes away (its HTTP client gave
    /// up) does not stop it halfway, and the caller has its answer by the deadline. The task
    /// starts when this is called, not when the future is first polled, so this must be
    /// called inside a Tokio runtime.
    fn revoke(&self, revocation: Revocation) -> StoreFuture<'_, Propagation> {
        let shared = Arc::clone(&self.shared);
        let deadline = shared.settings.revoke_deadline();
        let task = tokio::spawn(
            async move { tokio::time::timeout(deadline, shared.revoke(&revocation)).await }
                .in_current_span(),
        );
        Box::pin(async move {
            match task.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_elapsed)) => Err(StoreError::Timeout {
                    operation: "revoke",
                    timeout: deadline,
                }),
                Err(ended) => {
                    tracing::error!(error = %ended, "a revoke ended without an answer");
                    Err(StoreError::Protocol {
                        operation: "revoke",
                        detail: format!("the revoke's task ended without an answer: {ended}"),
                    })
                }
            }
        })
    }

    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }
}
