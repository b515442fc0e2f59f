//! [`RedisFeed`]: the background task that keeps one process's [`Mirror`] equal to Redis.
//!
//! The protocol (ordered changes, catch-up, full resync, re-seeding an emptied store) is
//! described in the parent module and decided by the pure state machine in `protocol`. This
//! file only does the I/O: it turns connections, messages and timers into protocol inputs and
//! carries out the actions the protocol returns. It owns the connection lifecycle: a command
//! connection for reads and the heartbeat, and a dedicated RESP2 pub/sub connection for the
//! live feed. redis-rs does not resubscribe a plain pub/sub connection, nor replay what was
//! published while it was down (THREATS §3.1), so the task owns reconnection:
//! when either connection fails, both are dropped, reopened with backoff, the channel is
//! subscribed *before* the state is read, and the mirror catches up by sequence number.
//!
//! With `read_from_replicas` a session subscribes to, and reads the log and the full resync
//! from, a replica checked at the session's start (see `replica`); the command connection
//! (heads, barrier, writes) stays on the primary. A replica that fails or lags mid-session ends
//! the session once the primary answered in its place, and the next session reads from another
//! replica or the primary.
//!
//! Buffering: redis-rs reads the pub/sub socket eagerly into an unbounded queue, so messages
//! that arrive while the task is busy (a catch-up or a full resync) wait in memory, bounded by
//! the revocation rate times that duration. A process that stops reading altogether (stalled or
//! starved) is dropped by Redis' `client-output-buffer-limit pubsub` instead, and recovers
//! through the log or a full resync when it runs again (THREATS F6).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Client, Msg};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::barrier::{BarrierScripts, deregister, register_and_read_head, reporter};
use super::protocol::{Action, Failure, Input, LogEntry, MAX_SYNC_ROUNDS, Protocol, Reason};
use super::replica::{self, AVOID_FOR, LAG_ATTEMPTS, LAG_WAIT, PageFit, ReplicaReads};
use super::{
    Keys, LogFields, RESYNC_BODY, Scripts, check_eviction_policy, connect_for_sync,
    fresh_generation, is_lost_primary, measure_durability, parse_score, primary_client, prune,
    server_run_id, target, timed, watermark, write_event,
};
use crate::clock::Clock;
use crate::error_chain::ErrorChain;
use crate::redis_target::{RedisTarget, jittered};
use crate::revocation::StoreError;
use crate::revocation::barrier::{InstanceId, Position};
use crate::revocation::mirror::Mirror;
use crate::revocation::settings::RevocationSettings;

/// Entries per `XRANGE` page while catching up.
const LOG_PAGE: usize = 1000;
/// Members per `ZSCAN` page of a watermark set during a full resync.
const SCAN_PAGE: usize = 10_000;
/// Token entries per page during a full resync, and pages requested ahead.
const TOKEN_PAGE: u64 = 10_000;
const PAGES_IN_FLIGHT: usize = 3;
/// Members per `ZADD` while re-seeding, and `ZADD`s per pipeline.
const SEED_BATCH: usize = 1000;
const SEED_PIPELINE: usize = 50;

/// Keeps a [`Mirror`] in sync with Redis until dropped or shut down.
///
/// Start one per verifier process. Starting never waits for Redis: a feed started while
/// Redis is down leaves its mirror not ready (so, fail-closed, every lookup answers
/// `Unavailable`) until the first full sync completes (THREATS F9).
#[derive(Debug)]
pub struct RedisFeed {
    mirror: Arc<Mirror>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// This mirror's id in the revocation barrier's roster.
    instance: InstanceId,
    /// What leaving the roster needs.
    target: RedisTarget,
    keys: Keys,
    settings: RevocationSettings,
}

impl RedisFeed {
    /// Starts a feed into a new mirror built from `settings`.
    ///
    /// # Errors
    /// Bad settings, or a reachable Redis whose `maxmemory-policy` is not `noeviction`
    /// ([`StoreError::EvictionPolicy`]). An unreachable Redis is not an error.
    pub async fn start(
        settings: &RevocationSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let mirror = Arc::new(Mirror::new(settings, clock));
        Self::start_with_mirror(settings, mirror).await
    }

    /// Starts a feed into `mirror`, which should come from [`Mirror::new`] with the same
    /// settings.
    ///
    /// # Errors
    /// As [`RedisFeed::start`].
    pub async fn start_with_mirror(
        settings: &RevocationSettings,
        mirror: Arc<Mirror>,
    ) -> Result<Self, StoreError> {
        settings.validate()?;
        let target = target(settings)?;
        let timeout = settings.command_timeout;
        let opened = match primary_client(&target).await {
            Ok(client) => connect_for_sync(&client, settings)
                .await
                .map(|conn| (client, conn)),
            Err(err) => Err(err),
        };
        let probe = match opened {
            Ok((client, mut conn)) => match check_eviction_policy(&mut conn, timeout).await {
                Ok(()) => Some((client, conn)),
                Err(err @ StoreError::EvictionPolicy { .. }) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "Redis did not answer the start-up check");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "Redis unreachable at start; revocation mirror not ready until it answers"
                );
                None
            }
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (positions, positions_rx) = watch::channel(None);
        let instance = InstanceId::random();
        let keys = Keys::new(&settings.key_prefix);
        let worker = Worker {
            target: target.clone(),
            keys: keys.clone(),
            scripts: Scripts::new(),
            barrier_scripts: Arc::new(BarrierScripts::new()),
            settings: settings.clone(),
            mirror: Arc::clone(&mirror),
            protocol: Protocol::new(settings.heartbeat),
            instance: instance.clone(),
            registered_at: None,
            heartbeat_head: None,
            skew_alarm: false,
            positions,
            reads: None,
            head_seq: 0,
            trouble: None,
            avoid: Vec::new(),
        };
        let tasks = vec![
            tokio::spawn(worker.run(probe, shutdown_rx.clone())),
            tokio::spawn(reporter(
                target.clone(),
                keys.clone(),
                settings.clone(),
                instance.clone(),
                positions_rx,
                shutdown_rx.clone(),
            )),
            tokio::spawn(watchdog(Arc::clone(&mirror), shutdown_rx)),
        ];
        Ok(Self {
            mirror,
            shutdown,
            tasks,
            instance,
            target,
            keys,
            settings: settings.clone(),
        })
    }

    /// This mirror's id in the revocation barrier's roster (it registers after its first
    /// full sync; see [`crate::revocation::barrier`]).
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// The mirror this feed keeps in sync: hand it to the verifier as its
    /// [`RevocationCheck`](crate::revocation::RevocationCheck).
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// Stops the feed, waits for its tasks and leaves the barrier's roster, so revokes stop
    /// waiting for this mirror. The mirror keeps its last state (and turns stale).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "revocation feed task failed");
            }
        }
        if let Err(err) = deregister(&self.target, &self.keys, &self.settings, &self.instance).await
        {
            tracing::warn!(
                error = %err,
                "could not leave the revocation barrier; revokes wait for this process until \
                 its registration expires"
            );
        }
    }
}

impl Drop for RedisFeed {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if self.tasks.is_empty() {
            return;
        }
        for task in &self.tasks {
            task.abort();
        }
        // Dropped without `shutdown`: leave the roster in the background if a runtime is
        // still there; otherwise the registration expires after max_staleness.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (target, keys, settings, instance) = (
                self.target.clone(),
                self.keys.clone(),
                self.settings.clone(),
                self.instance.clone(),
            );
            runtime.spawn(async move {
                let _ = deregister(&target, &keys, &settings, &instance).await;
            });
        }
    }
}

/// Why a feed session ended.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the feed connection closed")]
    Disconnected,
    #[error("the revocation store kept changing during {MAX_SYNC_ROUNDS} sync rounds")]
    NoProgress,
    #[error("the revocation feed protocol got an input out of order")]
    OutOfOrder,
    /// The replica the session read from failed or lagged; the primary answered in its place.
    #[error("the feed's replica {address} {reason}")]
    Replica { address: Arc<str>, reason: String },
    /// A session reading from the primary found a usable replica again.
    #[error("a usable replica is back; moving the feed to it")]
    ReplicaBack,
}

impl From<Failure> for FeedError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NoProgress => Self::NoProgress,
            Failure::OutOfOrder => Self::OutOfOrder,
        }
    }
}

/// Whether a rollover records that the data set was lost (`{P}:lost`).
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// The first generation of a data set: nothing was there to lose.
    None,
    /// The generation was found missing or replaced.
    Certain,
    /// Redis restarted: lost if the generation is missing now.
    IfEmpty,
}

/// A heartbeat's head read, made concurrently with the live feed.
///
/// While it is in flight the mirror may apply messages `a0 + 1 ..= a1` (`a0` the sequence
/// applied when it was sent). Redis handed those sequence numbers out, so its head is at least
/// `a1`; a head that reads `a0 <= seq < a1` in the same generation only predates them, and is
/// raised to `a1` before the protocol sees it. Below `a0` it is what it says: the sequence went
/// backwards, and the protocol re-seeds.
#[derive(Debug)]
struct HeartbeatHead {
    /// The generation and sequence read.
    generation: Option<String>,
    seq: u64,
    /// When the read was sent: the mirror is fresh as of then, not as of the answer.
    sent: Instant,
    /// The position applied when it was sent.
    applied: Option<(String, u64)>,
    /// Whether the read also renewed the barrier registration.
    registered: bool,
}

impl HeartbeatHead {
    /// Whether it announces, in the generation followed, changes not applied yet.
    fn is_ahead_of(&self, now: Option<(&str, u64)>) -> bool {
        now.is_some_and(|(generation, applied)| {
            self.generation.as_deref() == Some(generation) && self.adjusted(now).1 > applied
        })
    }

    /// The head as the protocol must see it, given the position applied now.
    fn adjusted(&self, now: Option<(&str, u64)>) -> (Option<String>, u64) {
        let seq = match (&self.applied, now, self.generation.as_deref()) {
            (Some((then_gen, then_seq)), Some((now_gen, now_seq)), Some(head_gen))
                if then_gen == now_gen && head_gen == now_gen && self.seq >= *then_seq =>
            {
                self.seq.max(now_seq)
            }
            _ => self.seq,
        };
        (self.generation.clone(), seq)
    }
}

/// A heartbeat's head read as it completes.
type HeadRead = Result<HeartbeatHead, FeedError>;

/// A heartbeat's head read in flight, if any.
type InFlight = Option<Pin<Box<dyn Future<Output = HeadRead> + Send>>>;

/// Completes at `deadline`; never, when there is none.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes with the read in flight; never, when there is none (the session's `select!` only
/// polls it when there is one).
async fn in_flight(read: &mut InFlight) -> HeadRead {
    match read {
        Some(read) => read.await,
        None => std::future::pending().await,
    }
}

struct Worker {
    /// Where the primary is: asked again at every session, so a session after a failover
    /// follows the new primary.
    target: RedisTarget,
    keys: Keys,
    scripts: Scripts,
    barrier_scripts: Arc<BarrierScripts>,
    settings: RevocationSettings,
    mirror: Arc<Mirror>,
    /// What the mirror follows and what to do next; this task only carries it out.
    protocol: Protocol,
    /// This mirror's id in the barrier's roster.
    instance: InstanceId,
    /// When the last head read that renewed the registration was sent: no "heard" mark may
    /// be later than it (see [`crate::revocation::barrier`], soundness point 1).
    registered_at: Option<Instant>,
    /// A heartbeat's head read that completed while the live feed kept being applied, for the
    /// [`Action::ReadHead`] of the heartbeat it answers (see [`HeartbeatHead`]).
    heartbeat_head: Option<HeartbeatHead>,
    /// Whether the last clock measurement was beyond half the leeway (logged on change).
    skew_alarm: bool,
    /// The position applied, for the reporter task (it keeps only the latest).
    positions: watch::Sender<Option<Position>>,
    /// The replica this session subscribes to and reads the log and resyncs from
    /// (`read_from_replicas`); `None`: the primary.
    reads: Option<ReplicaReads>,
    /// The sequence of the last head handed to the protocol: how far a catch-up must get, so
    /// a replica's page short of it is lag, not the end of the log.
    head_seq: u64,
    /// The replica failed or lagged during the current step and the primary answered in its
    /// place: the step completes, then the session ends with this.
    trouble: Option<FeedError>,
    /// Replicas that failed or lagged, and until when sessions pass them over.
    avoid: Vec<(Arc<str>, Instant)>,
}

impl Worker {
    async fn run(
        mut self,
        mut probe: Option<(Client, MultiplexedConnection)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let err = match self.session(probe.take(), &mut shutdown).await {
                Ok(()) => return,
                Err(err) => err,
            };
            // A replica's trouble ends the session it happened in, not the next one (another
            // error may have ended this one first); the next session checks its replica anew.
            self.trouble = None;
            self.reads = None;
            // Any lost session may mean a lost primary: the next one asks where it is now
            // (for a plain URL this changes nothing).
            if matches!(&err, FeedError::Disconnected)
                || matches!(&err, FeedError::Store(store) if is_lost_primary(store))
            {
                self.target.invalidate();
            }
            for action in self.protocol.handle(Input::Disconnected) {
                let Action::Reconnect { after, lost } = action else {
                    continue;
                };
                let message = ErrorChain(&err).to_string();
                if matches!(err, FeedError::Store(StoreError::EvictionPolicy { .. })) {
                    tracing::error!(error = %err, "refusing to follow a Redis that may evict revocations");
                } else if matches!(err, FeedError::ReplicaBack) {
                    tracing::info!("revocation feed moving from the primary to a replica");
                } else if lost {
                    tracing::warn!(error = %message, "revocation feed lost; reconnecting and catching up");
                } else {
                    tracing::debug!(error = %message, "revocation feed could not connect; retrying");
                }
                self.mirror.update_health(|h| {
                    h.connected = false;
                    h.disconnects += u64::from(lost);
                    h.last_error = Some(message);
                    // No session, no source: `/readyz` must not name a node the feed has left
                    // (the next session names the one it chooses).
                    h.feed_source = None;
                });
                // Jittered: when a primary dies every verifier's feed fails at once, and their
                // reconnects (and sentinel or cluster lookups) should not arrive in step.
                tokio::select! {
                    () = tokio::time::sleep(jittered(after)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// One connection's lifetime: connect, subscribe, sync, then follow the feed.
    async fn session(
        &mut self,
        probe: Option<(Client, MultiplexedConnection)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), FeedError> {
        let timeout = self.settings.command_timeout;
        // The command connection goes to the one primary resolved here, and so does the feed
        // connection unless the session reads from a replica (chosen below).
        let (client, mut conn) = if let Some(opened) = probe {
            opened
        } else {
            let client = primary_client(&self.target).await?;
            let conn = connect_for_sync(&client, &self.settings).await?;
            (client, conn)
        };
        check_eviction_policy(&mut conn, timeout).await?;
        let described = self
            .target
            .describe_primary(&client.get_connection_info().addr().to_string());
        self.report_durability(&mut conn, &described).await;
        let run_id = server_run_id(&mut conn, timeout).await?;
        self.step(&mut conn, Input::RunId(run_id), Instant::now())
            .await?;
        self.check_clock(&mut conn).await;
        let primary = self.primary_replication(&mut conn).await;
        let feed_client = self.choose_reads(primary.as_ref(), &client).await;
        let pubsub = timed(
            timeout,
            "open the feed connection",
            feed_client.get_async_pubsub(),
        )
        .await;
        let mut pubsub = pubsub.map_err(|err| self.feed_node_failed(err))?;
        // Subscribe before reading the state, so no change falls between the two. On a
        // replica too: a change the primary's head read will not show is published on the
        // primary after that read, so it reaches the replica after the subscription.
        let subscribed = timed(
            timeout,
            "subscribe to the feed",
            pubsub.subscribe(&self.keys.channel),
        )
        .await;
        subscribed.map_err(|err| self.feed_node_failed(err))?;
        let mut messages = pubsub.into_on_message();
        self.step(&mut conn, Input::Subscribed, Instant::now())
            .await?;

        let heartbeat = self.settings.heartbeat;
        let mut beat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let prune_every = self.settings.prune_interval;
        let mut prune_tick = tokio::time::interval_at(Instant::now() + prune_every, prune_every);
        prune_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The heartbeat's head read, in flight while live messages keep being applied: over a
        // slow link (F7) a change published meanwhile lands when its message does, not after
        // the read's round trip and a catch-up behind it.
        let mut head_read: InFlight = None;
        // A head read that announced changes the live feed had not delivered yet, and until
        // when the feed may still deliver them.
        let mut parked: Option<(Instant, HeartbeatHead)> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ok(()),
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err(self.feed_closed());
                    };
                    let received = Instant::now();
                    self.step(&mut conn, parse_message(&message), received).await?;
                    let caught_up = parked
                        .as_ref()
                        .is_some_and(|(_, head)| !head.is_ahead_of(self.protocol.position()));
                    if caught_up && let Some((_, head)) = parked.take() {
                        self.answer_heartbeat(&mut conn, head).await?;
                    }
                }
                read = in_flight(&mut head_read), if head_read.is_some() => {
                    head_read = None;
                    let head = read?;
                    if head.is_ahead_of(self.protocol.position()) {
                        // The head announces changes not applied yet. Their messages were
                        // published before the read was answered and are likely on their way:
                        // give them as long again as the read took before paying a catch-up.
                        let answered = Instant::now();
                        parked = Some((answered + (answered - head.sent), head));
                    } else {
                        self.answer_heartbeat(&mut conn, head).await?;
                    }
                }
                () = until(parked.as_ref().map(|(deadline, _)| *deadline)), if parked.is_some() => {
                    if let Some((_, head)) = parked.take() {
                        self.answer_heartbeat(&mut conn, head).await?;
                    }
                }
                _ = beat.tick(), if head_read.is_none() && parked.is_none() => {
                    if self.protocol.is_following() {
                        head_read = Some(Box::pin(self.start_head_read(conn.clone())));
                    } else {
                        self.step(&mut conn, Input::Heartbeat, Instant::now()).await?;
                    }
                }
                _ = prune_tick.tick() => {
                    self.check_clock(&mut conn).await;
                    self.report_durability(&mut conn, &described).await;
                    self.mirror.prune();
                    let pruned = prune(&mut conn, &self.keys, &self.scripts, &self.settings).await;
                    if let Err(err) = pruned {
                        tracing::warn!(error = %err, "pruning expired revocations in Redis failed");
                    }
                    if self.is_replica_back(primary.as_ref()).await {
                        return Err(FeedError::ReplicaBack);
                    }
                }
            }
        }
    }

    /// Measures what the primary gives an acknowledged revoke (replicas, AOF) into the
    /// mirror's health, for `/readyz`: at each session and every prune interval, since
    /// replicas come and go (a failover reconfigures them after the promotion).
    async fn report_durability(&self, conn: &mut MultiplexedConnection, primary: &str) {
        match measure_durability(conn, &self.settings, self.target.follows_failover()).await {
            Ok(mut durability) => self.mirror.update_health(|h| {
                durability.primary = Some(primary.to_owned());
                // Keep what this process's store last saw `WAIT` answer.
                durability.last_replicas_acked =
                    h.durability.as_ref().and_then(|d| d.last_replicas_acked);
                h.durability = Some(durability);
            }),
            Err(err) => tracing::debug!(error = %err, "could not read the Redis durability"),
        }
    }

    /// Feeds `input` to the protocol and carries out its actions, answering each request with
    /// its result, until the protocol asks for nothing more. `at` is when `input` arrived:
    /// the moment [`Action::MarkHeard`] records.
    async fn step(
        &mut self,
        conn: &mut MultiplexedConnection,
        input: Input,
        at: Instant,
    ) -> Result<(), FeedError> {
        let mut actions = VecDeque::from(self.protocol.handle(input));
        while let Some(action) = actions.pop_front() {
            if let Some(answer) = self.perform(conn, action, at).await? {
                actions.extend(self.protocol.handle(answer));
            }
        }
        self.report_position();
        // The primary answered for a replica that failed or lagged: this step's work is done
        // and applied; the next session reads from another node.
        match self.trouble.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Hands the applied position to the reporter once the mirror joined the barrier. Called
    /// once per input, after all its changes are applied; the reporter coalesces further.
    fn report_position(&self) {
        if !self.protocol.is_joined() {
            return;
        }
        let Some((generation, seq)) = self.protocol.position() else {
            return;
        };
        self.positions.send_if_modified(|known| {
            let same = known
                .as_ref()
                .is_some_and(|p| p.seq == seq && p.generation == generation);
            if !same {
                *known = Some(Position {
                    generation: generation.to_owned(),
                    seq,
                });
            }
            !same
        });
    }

    /// Carries out one action; returns the protocol's input for a request.
    async fn perform(
        &mut self,
        conn: &mut MultiplexedConnection,
        action: Action,
        at: Instant,
    ) -> Result<Option<Input>, FeedError> {
        match action {
            Action::MarkConnected => self.mirror.update_health(|h| h.connected = true),
            Action::ReadHead | Action::Join => {
                let joined = self.protocol.is_joined();
                let sent_ahead = self
                    .heartbeat_head
                    .take_if(|head| action == Action::ReadHead && head.registered == joined);
                if let Some(head) = sent_ahead {
                    if head.registered {
                        self.registered_at = Some(head.sent);
                        self.mirror.mark_registered(head.sent);
                    }
                    let (generation, seq) = head.adjusted(self.protocol.position());
                    self.head_seq = seq;
                    return Ok(Some(Input::Head { generation, seq }));
                }
                let (generation, seq) = if joined {
                    self.register_and_read_head(conn).await?
                } else {
                    self.read_head(conn).await?
                };
                self.head_seq = seq;
                return Ok(Some(Input::Head { generation, seq }));
            }
            Action::CreateGeneration => {
                self.rollover(conn, "", Loss::None).await?;
                return Ok(Some(Input::GenerationCreated));
            }
            Action::FullResync { generation, seq } => {
                self.resync(conn, generation, seq).await?;
                return Ok(Some(Input::Resynced));
            }
            Action::ReadLog { from } => {
                let (entries, is_last) = self.catch_up_page(conn, from).await?;
                return Ok(Some(Input::LogPage { entries, is_last }));
            }
            Action::Reseed {
                reason,
                expected,
                head_seq,
                applied_seq,
            } => {
                // Reading from a replica, a sequence behind what was applied may mean the mirror
                // applied changes the primary it asked for its head does not have: a replica
                // promoted while this process still reaches the old primary. Never re-seed on
                // that word: ask for the primary again and let the next session, reading from
                // it, decide. (A replica lags its primary, so in a sound topology a replica-fed
                // mirror is never ahead of it; the other reasons are the primary's own word.)
                if reason == Reason::RolledBack
                    && let Some(address) =
                        self.reads.as_ref().map(|reads| Arc::clone(&reads.address))
                {
                    self.target.invalidate();
                    self.replica_trouble(
                        &address,
                        format!(
                            "delivered a data set the primary's head does not show ({reason:?}); \
                             re-checking from the primary before any re-seed"
                        ),
                    );
                    return Err(self.trouble.take().unwrap_or(FeedError::Disconnected));
                }
                self.reset(conn, reason, &expected, head_seq, applied_seq)
                    .await?;
                return Ok(Some(Input::Reseeded));
            }
            Action::Apply(revocation) => {
                self.mirror.apply(&revocation);
            }
            Action::Advance { seq } => self.mirror.update_health(|h| h.applied_seq = seq),
            Action::CountGap { expected, got } => {
                tracing::debug!(
                    expected,
                    got,
                    "gap in the revocation feed; catching up from the log"
                );
                self.mirror.update_health(|h| h.gaps += 1);
            }
            Action::CountCatchUp => self.mirror.update_health(|h| h.catch_ups += 1),
            Action::MalformedLogEntry { id } => {
                tracing::warn!(id, "malformed revocation log entry; resyncing in full");
            }
            // Heard first, then ready: whoever sees `ready` must also see a fresh mirror, or a
            // caller waking on readiness would find it answering Unavailable for an instant.
            Action::MarkHeard => {
                let at = self
                    .registered_at
                    .map_or(at, |registered| at.min(registered));
                self.mirror.mark_heard(at);
            }
            Action::MarkReady => self.mirror.mark_ready(),
            Action::Fail(failure) => return Err(failure.into()),
            // Only answers `Disconnected`, which `run` handles.
            Action::Reconnect { .. } => {}
        }
        Ok(None)
    }

    /// Measures this process's clock against Redis' `TIME` (the clock revocation expiry is
    /// judged by) and records the skew in the health; a skew beyond half the leeway is logged
    /// as an alarm when it starts and when it ends (THREATS F12). A failed read only skips
    /// this measurement: the heartbeat is what judges the connection.
    async fn check_clock(&mut self, conn: &mut MultiplexedConnection) {
        let sent = Instant::now();
        let answer: Result<(i64, i64), _> = timed(
            self.settings.command_timeout,
            "read Redis' clock",
            ::redis::cmd("TIME").query_async(conn),
        )
        .await;
        let Ok((seconds, micros)) = answer else {
            return;
        };
        let now = self.mirror.clock().now();
        // Redis read its clock about halfway through the round trip.
        let half_trip = i64::try_from(sent.elapsed().as_millis() / 2).unwrap_or(i64::MAX);
        let local_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX)
            .saturating_sub(half_trip);
        let redis_ms = seconds.saturating_mul(1000).saturating_add(micros / 1000);
        let skew_ms = local_ms.saturating_sub(redis_ms);
        let limit_ms = i64::try_from(self.settings.leeway.as_millis() / 2).unwrap_or(i64::MAX);
        let alarm = skew_ms.unsigned_abs() > limit_ms.unsigned_abs();
        if alarm != self.skew_alarm {
            self.skew_alarm = alarm;
            if alarm {
                tracing::warn!(
                    skew_ms,
                    leeway_ms = self.settings.leeway.as_millis(),
                    "clock skew: this process's clock is off Redis' by more than half the \
                     leeway; tokens are judged by this clock, revocation expiry by Redis'"
                );
            } else {
                tracing::info!(skew_ms, "clock skew back within half the leeway");
            }
        }
        self.mirror
            .update_health(|h| h.clock_skew_ms = Some(skew_ms));
    }

    /// Answers a heartbeat with its head read: the protocol compares it with what the mirror
    /// applied (catching up if it is still behind) and marks the mirror heard as of the read.
    async fn answer_heartbeat(
        &mut self,
        conn: &mut MultiplexedConnection,
        head: HeartbeatHead,
    ) -> Result<(), FeedError> {
        if !self.protocol.is_following() {
            return Ok(());
        }
        let sent = head.sent;
        self.heartbeat_head = Some(head);
        let result = self.step(conn, Input::Heartbeat, sent).await;
        // Unused when the heartbeat did not start with a head read.
        self.heartbeat_head = None;
        result
    }

    /// Sends a heartbeat's head read (renewing the registration once joined) on its own handle
    /// of the connection, as a future that borrows nothing of the worker, so the session keeps
    /// applying the live feed until it completes.
    fn start_head_read(
        &self,
        mut conn: MultiplexedConnection,
    ) -> impl Future<Output = HeadRead> + Send + 'static {
        let registered = self.protocol.is_joined();
        let applied = self
            .protocol
            .position()
            .map(|(generation, seq)| (generation.to_owned(), seq));
        let keys = self.keys.clone();
        let scripts = Arc::clone(&self.barrier_scripts);
        let settings = self.settings.clone();
        let instance = self.instance.clone();
        async move {
            let sent = Instant::now();
            let (generation, seq) = if registered {
                let position = applied.as_ref().map(|(g, s)| (g.as_str(), *s));
                register_and_read_head(&mut conn, &keys, &scripts, &settings, &instance, position)
                    .await?
            } else {
                read_head(&mut conn, &keys, &settings).await?
            };
            Ok(HeartbeatHead {
                generation,
                seq,
                sent,
                applied,
                registered,
            })
        }
    }

    /// Renews this mirror's registration in the barrier's roster and reads the head, in one
    /// script; records when, for the cap on "heard" and for metrics.
    async fn register_and_read_head(
        &mut self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(Option<String>, u64), FeedError> {
        let sent = Instant::now();
        let head = register_and_read_head(
            conn,
            &self.keys,
            &self.barrier_scripts,
            &self.settings,
            &self.instance,
            self.protocol.position(),
        )
        .await?;
        self.registered_at = Some(sent);
        self.mirror.mark_registered(sent);
        Ok(head)
    }

    async fn read_head(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<(Option<String>, u64), FeedError> {
        read_head(conn, &self.keys, &self.settings).await
    }

    async fn rollover(
        &self,
        conn: &mut MultiplexedConnection,
        expected: &str,
        loss: Loss,
    ) -> Result<String, FeedError> {
        let mut invocation = self.scripts.rollover.prepare_invoke();
        invocation
            .key(&self.keys.generation)
            .key(&self.keys.lost)
            .arg(expected)
            .arg(fresh_generation())
            .arg(match loss {
                Loss::None => "",
                Loss::Certain => "1",
                Loss::IfEmpty => "0",
            });
        Ok(timed(
            self.settings.command_timeout,
            "set the revocation generation",
            invocation.invoke_async(conn),
        )
        .await?)
    }

    /// Merges the whole state sets into the mirror and records `(generation, seq)`, read
    /// before the scan, in the health.
    async fn full_resync(
        &self,
        conn: &mut MultiplexedConnection,
        generation: String,
        seq: u64,
    ) -> Result<(), FeedError> {
        self.load_tokens(conn).await?;
        for set in [
            self.keys.users.clone(),
            self.keys.tenants.clone(),
            self.keys.kids.clone(),
        ] {
            let keys = self.keys.clone();
            self.scan(conn, &set, |mirror, page| {
                let revocations: Vec<_> = page
                    .chunks_exact(2)
                    .filter_map(|pair| watermark(&keys, &set, &pair[0], parse_score(&pair[1])?))
                    .collect();
                mirror.apply_all(&revocations);
            })
            .await?;
        }
        tracing::info!(
            seq,
            size = self.mirror.size().total(),
            "revocation mirror resynced in full"
        );
        self.mirror.update_health(|h| {
            h.full_resyncs += 1;
            h.generation = Some(generation.clone());
            h.applied_seq = seq;
        });
        Ok(())
    }

    /// Loads the token set in pages by rank from the highest score, keeping a few pages in
    /// flight so Redis builds the next while this one is merged. Ranks counted from the top
    /// are stable under pruning, which only removes the lowest scores; entries added or
    /// raised meanwhile are in the log after the head read before the load.
    async fn load_tokens(&self, conn: &mut MultiplexedConnection) -> Result<(), FeedError> {
        // Bulk: with every mirror resyncing at once, each page waits behind the others'.
        let timeout = self.settings.bulk_timeout;
        let total: usize = timed(
            timeout,
            "count the revocation state",
            ::redis::cmd("ZCARD")
                .arg(&self.keys.tokens)
                .query_async(conn),
        )
        .await?;
        self.mirror.reserve_tokens(total);
        let (keys, base) = (&self.keys, &*conn);
        let mut pages = futures_util::stream::iter(0_u64..)
            .map(|page| {
                let mut conn = base.clone();
                async move {
                    let first = page * TOKEN_PAGE;
                    timed(
                        timeout,
                        "read the revocation state",
                        ::redis::cmd("ZRANGE")
                            .arg(&keys.tokens)
                            .arg(first)
                            .arg(first + TOKEN_PAGE - 1)
                            .arg("REV")
                            .arg("WITHSCORES")
                            .query_async::<Vec<::redis::Value>>(&mut conn),
                    )
                    .await
                }
            })
            .buffered(PAGES_IN_FLIGHT);
        while let Some(page) = pages.next().await {
            let merged = merge_page(&self.mirror, &page?)?;
            if merged < TOKEN_PAGE {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn scan(
        &self,
        conn: &mut MultiplexedConnection,
        set: &str,
        mut merge: impl FnMut(&Mirror, &[String]),
    ) -> Result<(), FeedError> {
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = timed(
                self.settings.bulk_timeout,
                "scan the revocation state",
                ::redis::cmd("ZSCAN")
                    .arg(set)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_PAGE)
                    .query_async(conn),
            )
            .await?;
            merge(&self.mirror, &page);
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Reads one page of the log from sequence `from` on; the flag tells whether it is the
    /// last (shorter than a full page).
    async fn read_log(
        &self,
        conn: &mut MultiplexedConnection,
        from: u64,
    ) -> Result<(Vec<LogEntry>, bool), FeedError> {
        // A catch-up page (at most LOG_PAGE entries) keeps the command timeout: catch-ups
        // follow heartbeats, and a black-holed Redis must end the session as fast as ever.
        let entries: Vec<(String, LogFields)> = timed(
            self.settings.command_timeout,
            "read the revocation log",
            ::redis::cmd("XRANGE")
                .arg(&self.keys.log)
                .arg(format!("{from}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(LOG_PAGE)
                .query_async(conn),
        )
        .await?;
        let is_last = entries.len() < LOG_PAGE;
        let entries = entries
            .into_iter()
            .map(|(id, fields)| LogEntry::read(id, fields))
            .collect();
        Ok((entries, is_last))
    }

    /// The store lost state (emptied, replaced, or its sequence went back): adopt or create
    /// its new generation (compare-and-set from `expected`), write everything this mirror
    /// knows back, and tell the other mirrors to reload.
    async fn reset(
        &self,
        conn: &mut MultiplexedConnection,
        reason: Reason,
        expected: &str,
        head_seq: u64,
        applied_seq: u64,
    ) -> Result<(), FeedError> {
        tracing::warn!(
            ?reason,
            head_seq,
            applied_seq,
            "revocation store may have lost revocations; re-seeding it from this mirror"
        );
        // The same detection tells the token records (which no mirror can restore) that the
        // data set was lost: emptied or replaced for certain; after a restart, if it came back
        // without its generation. A restart that kept its data lost at most its last writes.
        let loss = match reason {
            Reason::Emptied | Reason::Replaced => Loss::Certain,
            Reason::RolledBack | Reason::Restarted => Loss::IfEmpty,
        };
        let generation = self.rollover(conn, expected, loss).await?;
        let written = self.reseed(conn).await?;
        write_event(
            conn,
            &self.keys,
            &self.scripts,
            &self.settings,
            RESYNC_BODY,
            None,
        )
        .await?;
        tracing::warn!(written, generation, "revocation store re-seeded");
        self.mirror.update_health(|h| {
            h.resets += 1;
            h.reseeded += written;
        });
        Ok(())
    }

    async fn reseed(&self, conn: &mut MultiplexedConnection) -> Result<u64, FeedError> {
        let export = self.mirror.export();
        let mut written = 0_u64;
        let mut pending = Vec::with_capacity(SEED_BATCH);
        let mut pipe = ::redis::pipe();
        let mut queued = 0;
        let token_set = self.keys.tokens.as_str();
        let watermark_entries = export
            .watermarks
            .iter()
            .map(|revocation| self.keys.entry(revocation));
        let token_entries = export
            .token_entries()
            .map(|(jti, exp)| (token_set, jti, exp));
        let mut current_set: Option<&str> = None;
        for (set, member, score) in token_entries.chain(watermark_entries) {
            if current_set != Some(set) || pending.len() == SEED_BATCH {
                if let Some(previous) = current_set.filter(|_| !pending.is_empty()) {
                    queue_zadd(&mut pipe, previous, &mut pending);
                    queued += 1;
                }
                current_set = Some(set);
            }
            pending.push((score, member));
            written += 1;
            if queued == SEED_PIPELINE {
                self.send(conn, &pipe).await?;
                pipe = ::redis::pipe();
                queued = 0;
            }
        }
        if let Some(set) = current_set.filter(|_| !pending.is_empty()) {
            queue_zadd(&mut pipe, set, &mut pending);
            queued += 1;
        }
        if queued > 0 {
            self.send(conn, &pipe).await?;
        }
        Ok(written)
    }

    async fn send(
        &self,
        conn: &mut MultiplexedConnection,
        pipe: &::redis::Pipeline,
    ) -> Result<(), FeedError> {
        timed(
            self.settings.bulk_timeout,
            "re-seed the revocation state",
            pipe.query_async::<()>(conn),
        )
        .await?;
        Ok(())
    }
}

/// Reads from a replica (`read_from_replicas`): which node a session reads from, and the reads
/// that may go to a replica, each falling back to the primary.
impl Worker {
    /// The primary's `INFO replication`, which replicas are checked against; `None` when the
    /// setting is off or the primary did not answer (then the session reads from the primary).
    async fn primary_replication(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Option<replica::Replication> {
        if !self.settings.read_from_replicas {
            return None;
        }
        match replica::replication(conn, self.settings.command_timeout).await {
            Ok(primary) => Some(primary),
            Err(err) => {
                tracing::warn!(error = %err, "the primary did not tell its replication state");
                None
            }
        }
    }

    /// Chooses the replica this session reads from (`self.reads`; `None` for the primary,
    /// also when the setting is off) and returns the client for its feed connection: the
    /// replica's, else `primary_client`. Records the choice in the health and logs a fallback.
    async fn choose_reads(
        &mut self,
        primary: Option<&replica::Replication>,
        primary_client: &Client,
    ) -> Client {
        let chosen = if let Some(primary) = primary {
            let avoid = self.avoided();
            let chosen = replica::choose(&self.target, primary, &avoid, &self.settings).await;
            if let Err(reason) = &chosen {
                tracing::warn!(
                    reason,
                    "no usable Redis replica; the revocation feed reads from the primary"
                );
            }
            chosen.ok()
        } else {
            if self.settings.read_from_replicas {
                tracing::warn!("no replica checked; the revocation feed reads from the primary");
            }
            None
        };
        let source = chosen.as_ref().map_or_else(
            || "primary".to_owned(),
            |reads| format!("replica {}", reads.address),
        );
        let fell_back = self.settings.read_from_replicas && chosen.is_none();
        if let Some(reads) = &chosen {
            tracing::info!(replica = %reads.address, "revocation feed reads from a replica");
        }
        self.mirror.update_health(|h| {
            h.feed_source = Some(source);
            h.replica_fallbacks += u64::from(fell_back);
        });
        // The live feed comes from the replica when there is one: a change is published there
        // after it is in the replica's log, and never before the primary has it.
        let client = chosen
            .as_ref()
            .map_or_else(|| primary_client.clone(), |reads| reads.client.clone());
        self.reads = chosen;
        client
    }

    /// The replicas to pass over now.
    fn avoided(&mut self) -> Vec<Arc<str>> {
        let now = Instant::now();
        self.avoid.retain(|(_, until)| *until > now);
        self.avoid
            .iter()
            .map(|(address, _)| Arc::clone(address))
            .collect()
    }

    /// Whether a session reading from the primary although `read_from_replicas` is set finds
    /// a usable replica now (asked every prune interval), so it can move there.
    async fn is_replica_back(&mut self, primary: Option<&replica::Replication>) -> bool {
        let Some(primary) = primary.filter(|_| self.reads.is_none()) else {
            return false;
        };
        let avoid = self.avoided();
        replica::choose(&self.target, primary, &avoid, &self.settings)
            .await
            .is_ok()
    }

    /// Records that the session's replica failed or lagged (`reason`) while the primary
    /// answered in its place: the current step completes, then the session ends, and the next
    /// sessions pass this replica over for [`AVOID_FOR`].
    fn replica_trouble(&mut self, address: &Arc<str>, reason: String) {
        tracing::warn!(
            replica = %address,
            reason,
            "revocation feed falls back to the primary; leaving the replica"
        );
        self.mirror.update_health(|h| h.replica_fallbacks += 1);
        self.avoid.retain(|(avoided, _)| avoided != address);
        self.avoid
            .push((Arc::clone(address), Instant::now() + AVOID_FOR));
        self.trouble.get_or_insert(FeedError::Replica {
            address: Arc::clone(address),
            reason,
        });
    }

    /// The error for a failure of the feed connection: the replica's (the next session avoids
    /// it, and the primary is not reported lost), or the primary's.
    fn feed_node_failed(&mut self, err: StoreError) -> FeedError {
        match self.reads.as_ref().map(|reads| Arc::clone(&reads.address)) {
            Some(address) => {
                self.replica_trouble(
                    &address,
                    format!("failed the feed connection: {}", ErrorChain(&err)),
                );
                self.trouble.take().unwrap_or(FeedError::Store(err))
            }
            None => err.into(),
        }
    }

    /// The error for a feed connection that closed.
    fn feed_closed(&mut self) -> FeedError {
        match self.reads.as_ref().map(|reads| Arc::clone(&reads.address)) {
            Some(address) => {
                self.replica_trouble(&address, "closed the feed connection".to_owned());
                self.trouble.take().unwrap_or(FeedError::Disconnected)
            }
            None => FeedError::Disconnected,
        }
    }

    /// A full resync at the primary's head (`generation`, `seq`): from the replica once its
    /// own head shows it holds that generation up to `seq` (so its sets hold every change
    /// the protocol will count as applied), else from the primary.
    async fn resync(
        &mut self,
        conn: &mut MultiplexedConnection,
        generation: String,
        seq: u64,
    ) -> Result<(), FeedError> {
        if let Some(reads) = self.reads.clone() {
            let mut replica = reads.conn.clone();
            let outcome = match self.replica_reaches(&mut replica, &generation, seq).await {
                Ok(true) => self
                    .full_resync(&mut replica, generation.clone(), seq)
                    .await
                    .map_err(|err| format!("failed the full resync: {}", ErrorChain(&err))),
                Ok(false) => Err(format!(
                    "stayed behind the primary's head (sequence {seq}) for a full resync"
                )),
                Err(err) => Err(format!("did not answer its head: {}", ErrorChain(&err))),
            };
            match outcome {
                Ok(()) => return Ok(()),
                // Whatever was merged from the replica stays (the mirror never shrinks; those
                // are revocations the primary had); the primary's scan completes it.
                Err(reason) => self.replica_trouble(&reads.address, reason),
            }
        }
        self.full_resync(conn, generation, seq).await
    }

    /// Whether the replica reaches `generation` at `seq`, waiting a moment for it.
    async fn replica_reaches(
        &self,
        replica: &mut MultiplexedConnection,
        generation: &str,
        seq: u64,
    ) -> Result<bool, FeedError> {
        for attempt in 0..LAG_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(LAG_WAIT).await;
            }
            let (theirs, their_seq) = self.read_head(replica).await?;
            if replica::covers((theirs.as_deref(), their_seq), generation, seq) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One page of a catch-up from `from`: from the replica when its page reaches the head the
    /// protocol read from the primary (waiting a moment while it lags), else from the
    /// primary. Only the primary's log may show the log trimmed or of another generation, so a
    /// replica's lag never turns into a full resync or a re-seed.
    async fn catch_up_page(
        &mut self,
        conn: &mut MultiplexedConnection,
        from: u64,
    ) -> Result<(Vec<LogEntry>, bool), FeedError> {
        let Some(reads) = self.reads.clone() else {
            return self.read_log(conn, from).await;
        };
        let generation = self.protocol.position().map(|(g, _)| g.to_owned());
        let fit = |page: &(Vec<LogEntry>, bool), target| {
            replica::page_fit(&page.0, page.1, from, generation.as_deref(), target)
        };
        let mut replica = reads.conn.clone();
        let mut failed = None;
        for attempt in 0..LAG_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(LAG_WAIT).await;
            }
            match self.read_log(&mut replica, from).await {
                Ok(page) => match fit(&page, self.head_seq) {
                    PageFit::Reaches => return Ok(page),
                    PageFit::Behind => {}
                    PageFit::Other => break,
                },
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        let page = self.read_log(conn, from).await?;
        // The replica is to blame only when the primary had what it lacked: a log trimmed
        // past `from` is trimmed on both, and then the replica did nothing wrong.
        if let Some(err) = failed {
            self.replica_trouble(&reads.address, format!("failed a log read: {err}"));
        } else if fit(&page, self.head_seq) == PageFit::Reaches {
            self.replica_trouble(
                &reads.address,
                format!(
                    "lagged behind the primary's head (sequence {}) for {:?}",
                    self.head_seq,
                    LAG_WAIT * (LAG_ATTEMPTS - 1)
                ),
            );
        }
        Ok(page)
    }
}

/// Reads the head: the generation and the last sequence handed out (0 when missing).
async fn read_head(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    settings: &RevocationSettings,
) -> Result<(Option<String>, u64), FeedError> {
    let mut pipe = ::redis::pipe();
    pipe.atomic().get(&keys.generation).get(&keys.seq);
    let (generation, seq): (Option<String>, Option<u64>) = timed(
        settings.command_timeout,
        "read the revocation sequence",
        pipe.query_async(conn),
    )
    .await?;
    Ok((generation, seq.unwrap_or(0)))
}

fn parse_message(message: &Msg) -> Input {
    let payload = message.get_payload::<String>().ok();
    let input = Input::from_payload(payload.as_deref());
    if input == Input::MalformedMessage {
        tracing::warn!("malformed revocation feed message; checking the log instead");
    }
    input
}

/// A reply element as text.
fn text(v: &::redis::Value) -> Option<&str> {
    match v {
        ::redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        ::redis::Value::SimpleString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Merges one `ZRANGE … WITHSCORES` page into the mirror; returns how many entries it held.
fn merge_page(mirror: &Mirror, page: &[::redis::Value]) -> Result<u64, FeedError> {
    let malformed = |detail: &str| StoreError::Protocol {
        operation: "read the revocation state",
        detail: detail.to_owned(),
    };
    let mut entries = Vec::with_capacity(page.len() / 2);
    for pair in page.chunks(2) {
        let [member, score] = pair else {
            return Err(malformed("odd number of fields").into());
        };
        let member = text(member).ok_or_else(|| malformed("jti not a string"))?;
        let score = match score {
            ::redis::Value::Double(d) => parse_score(&d.to_string()),
            other => text(other).and_then(parse_score),
        }
        .ok_or_else(|| malformed("score not a number"))?;
        entries.push((member, score));
    }
    let count = entries.len() as u64;
    mirror.merge_tokens(entries);
    Ok(count)
}

fn queue_zadd(pipe: &mut ::redis::Pipeline, set: &str, pending: &mut Vec<(i64, String)>) {
    let mut cmd = ::redis::cmd("ZADD");
    cmd.arg(set).arg("GT");
    for (score, member) in pending.drain(..) {
        cmd.arg(score).arg(member);
    }
    pipe.add_command(cmd).ignore();
}

/// Publishes the fresh → stale transition at the moment staleness reaches the bound, so
/// `/readyz`, metrics and tests see it without polling. (Stale → fresh is published by
/// [`Mirror::mark_heard`] itself.)
async fn watchdog(mirror: Arc<Mirror>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let (true, Some(stale_at)) = (mirror.is_fresh(), mirror.stale_at()) {
            tokio::select! {
                () = tokio::time::sleep_until(stale_at) => {}
                _ = shutdown.changed() => return,
            }
            if !mirror.is_fresh() {
                tracing::warn!(
                    staleness = ?mirror.staleness(),
                    "revocation mirror is stale; applying on_stale policy"
                );
                mirror.update_health(|h| h.fresh = false);
            }
        } else {
            tokio::select! {
                () = mirror.fresh_notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(generation: &str, seq: u64, applied: Option<(&str, u64)>) -> HeartbeatHead {
        HeartbeatHead {
            generation: Some(generation.to_owned()),
            seq,
            sent: Instant::now(),
            applied: applied.map(|(g, s)| (g.to_owned(), s)),
            registered: true,
        }
    }

    #[test]
    fn a_session_end_names_its_cause() {
        let err = FeedError::Store(StoreError::Redis {
            operation: "read the revocation state",
            source: ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        });
        let text = ErrorChain(&err).to_string();
        assert!(
            text.starts_with(
                "revocation store: Redis failed while trying to read the revocation state: "
            ),
            "{text}"
        );
        assert!(text.to_lowercase().contains("timed out"), "{text}");
    }

    #[test]
    fn a_head_read_overtaken_by_applied_messages_is_raised_to_them() {
        // Sent at 10; messages 11 and 12 applied before the answer (11) came back.
        let read = head("g", 11, Some(("g", 10)));
        assert_eq!(read.adjusted(Some(("g", 12))), (Some("g".to_owned()), 12));
        // Nothing applied meanwhile: the head as read (a gap for the protocol to catch up).
        let read = head("g", 15, Some(("g", 10)));
        assert_eq!(read.adjusted(Some(("g", 10))), (Some("g".to_owned()), 15));
    }

    #[test]
    fn a_head_below_what_was_applied_when_sent_is_left_for_the_protocol_to_re_seed() {
        let read = head("g", 7, Some(("g", 10)));
        assert_eq!(read.adjusted(Some(("g", 12))), (Some("g".to_owned()), 7));
        // Another generation, or none, is never adjusted.
        let read = head("other", 3, Some(("g", 10)));
        assert_eq!(
            read.adjusted(Some(("g", 12))),
            (Some("other".to_owned()), 3)
        );
        let missing = HeartbeatHead {
            generation: None,
            ..head("g", 0, Some(("g", 10)))
        };
        assert_eq!(missing.adjusted(Some(("g", 12))), (None, 0));
    }

    #[test]
    fn only_a_head_past_what_is_applied_in_the_followed_generation_waits_for_the_feed() {
        let read = head("g", 12, Some(("g", 10)));
        assert!(read.is_ahead_of(Some(("g", 10))));
        assert!(read.is_ahead_of(Some(("g", 11))));
        assert!(
            !read.is_ahead_of(Some(("g", 12))),
            "the feed delivered what it announced"
        );
        assert!(!head("other", 12, Some(("g", 10))).is_ahead_of(Some(("g", 10))));
        assert!(
            !head("g", 7, Some(("g", 10))).is_ahead_of(Some(("g", 10))),
            "went backwards"
        );
        assert!(!read.is_ahead_of(None));
    }
}
