//! The Redis revocation store and the change feed that keeps every mirror in sync (SPEC §3).
//!
//! [`RedisStore`] writes revocations; [`RedisFeed`] runs in every verifier and keeps its
//! [`Mirror`](crate::revocation::Mirror) equal to Redis. This module owns the Redis data layout, the Lua
//! scripts and the feed protocol (decided by the pure state machine in `protocol`, driven by
//! `feed`); the in-memory lookup lives in `mirror`.
//!
//! # Design: pub/sub is a hint, the log and the state are the truth
//!
//! Redis pub/sub is at-most-once: a subscriber that is disconnected, reconnecting or dropped
//! for a full output buffer misses messages silently (THREATS §3.2). So every change carries a
//! sequence number, is recorded in a replay log and in the state sets, and a mirror:
//! - applies live messages strictly in order; on a gap it catches up from the log (`XRANGE`)
//!   and, if the log no longer reaches back far enough, resyncs in full from the state sets;
//! - after any disconnect, resubscribes *before* reading, then catches up the same way;
//! - polls the head (generation and sequence) every `heartbeat`, which both detects missed
//!   messages and refreshes its staleness ("last heard from Redis").
//!
//! # Never forgetful
//!
//! A generation id (random, stored in `gen`) names the data set. When a mirror finds it missing
//! or changed (Redis restarted empty, was flushed, or failed over to a replica without it),
//! finds the sequence behind what it already applied, or reconnects to a Redis whose `run_id`
//! changed (any restart or failover may have lost the last writes: AOF `everysec` loses up to a
//! second, replication is asynchronous; and new writes could reuse the lost sequence numbers),
//! it:
//! 1. moves to a new generation (compare-and-set from the one it knew, so concurrent mirrors
//!    agree on one, and sequence numbers from before and after never mix), or adopts the one
//!    another mirror already set;
//! 2. writes every entry it holds back into the state sets (`ZADD GT`, idempotent);
//! 3. publishes a `resync` event, so every other mirror reloads the union;
//! 4. resyncs in full itself. The mirror only ever merges, so it never shrinks on such an
//!    event, and no acknowledged revocation any mirror still holds is lost.
//!
//! At start and on every reconnect, a Redis whose `maxmemory-policy` is not `noeviction` is
//! refused ([`StoreError::EvictionPolicy`]): eviction would silently delete revocations.
//!
//! # Failover (Sentinel, Cluster)
//!
//! Every connection goes to the primary a `RedisTarget` (`crate::redis_target`) names (a URL,
//! what the sentinels say now, or the primary of the cluster slot of `{P}`); a lost
//! connection, or a `MOVED` from a slot that changed hands, makes the next one ask again.
//! In a Cluster the feed stays on classic `PUBLISH`/`SUBSCRIBE` on the slot's primary (the
//! redis crate's async pub/sub has no `SSUBSCRIBE`; the feed's heartbeat, a keyed script,
//! meets the `MOVED` of a failover within one heartbeat anyway). A promoted replica is another
//! Redis process, so its `run_id` differs from the old primary's and every mirror takes the
//! never-forgetful path above: a revocation the replica had not received is written back by
//! any mirror that holds it. To keep that window empty in the first place, a revoke waits for
//! `min_replicas_acked` replicas (`WAIT`) before it is acknowledged (`store`).
//!
//! # Key layout
//!
//! Every key shares the hash tag `{P}`, where `P` is the configured `key_prefix`, so the
//! scripts' keys live in one Cluster slot and deployments sharing a Redis stay apart:
//!
//! | Key | Type | Content |
//! |---|---|---|
//! | `{P}:gen` | string | generation id: 32 hex chars, created once per data set |
//! | `{P}:seq` | string | last sequence number handed out (`INCR`) |
//! | `{P}:log` | stream | one entry per change, id `<seq>-0`, fields `gen` and `body`; trimmed to about `log_max_len` entries |
//! | `{P}:tok` | sorted set | token revocations: member `jti`, score `exp` |
//! | `{P}:usr` | sorted set | user watermarks: member JSON `["tenant","subject"]`, score `before` |
//! | `{P}:ten` | sorted set | tenant watermarks: member tenant, score `before` |
//! | `{P}:kid` | sorted set | key watermarks: member kid, score `before` |
//! | `{P}:feed` | pub/sub channel | the live feed |
//! | `{P}:live` | sorted set | barrier registrations: member instance id, score its deadline (ms, Redis clock) |
//! | `{P}:inst` | hash | barrier positions: field instance id, value `<generation> <seq>` applied |
//! | `{P}:acks` | pub/sub channel | barrier acknowledgements: `<instance> <generation> <seq>` |
//! | `{P}:lost` | string | Unix seconds (Redis' clock) when a mirror last found the data set emptied or replaced; read by the token records (`crate::records`), whose entries from before it are gone |
//!
//! Scores are whole Unix seconds (exact in a double). Watermarks are written with `ZADD GT`,
//! so they only rise. Pruning (a script run every `prune_interval`, with Redis' own `TIME`)
//! removes token entries once `exp + leeway <= now` and watermarks once
//! `before + 12 h + leeway <= now`: exactly when no token they cover can still be valid.
//!
//! # Feed messages
//!
//! One script (`EVENT`) does atomically: create `gen` if missing, `ZADD GT` the state entry,
//! `INCR seq`, `XADD` to the log, `PUBLISH` to the channel. The published payload is
//!
//! ```text
//! <seq> SP <gen> SP <body>
//! ```
//!
//! where `<seq>` is the decimal sequence number, `<gen>` the generation id, and `<body>`
//! either the JSON of a [`Revocation`] (for example
//! `{"kind":"token","jti":"…","expires_at":1767229140}`) or the word `resync`, which asks
//! every mirror to reload from the state sets. Log entries carry the same `gen` and `body`.
//!
//! # The barrier
//!
//! `{P}:live`, `{P}:inst` and `{P}:acks` let a revoke wait until every live mirror applied
//! it; the protocol and why it is sound are in [`crate::revocation::barrier`]. Scripts:
//! `HEAD` (renew a registration and read the head), `REPORT` (raise a position and publish
//! it), `ROSTER` (Redis' time and every registration, removing the expired ones).

mod barrier;
mod feed;
mod group_commit;
pub(crate) mod protocol;
mod replica;
mod store;

pub use self::feed::RedisFeed;
pub use self::store::RedisStore;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Script};
use rand_core::{OsRng, RngCore};

use super::durability::{self, Durability};
use super::settings::RevocationSettings;
use super::{Revocation, StoreError};
use crate::keys::KeyId;
use crate::redis_target::RedisTarget;
use crate::token::{Subject, TenantId};

/// The Redis names of one deployment.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) generation: String,
    pub(crate) seq: String,
    pub(crate) log: String,
    pub(crate) tokens: String,
    pub(crate) users: String,
    pub(crate) tenants: String,
    pub(crate) kids: String,
    pub(crate) channel: String,
    /// The barrier's registrations: instance → deadline (sorted set).
    pub(crate) live: String,
    /// The barrier's positions: instance → `<generation> <seq>` (hash).
    pub(crate) instances: String,
    /// The barrier's acknowledgement channel.
    pub(crate) acks: String,
    /// When the data set was last found lost (emptied or replaced): Unix seconds.
    pub(crate) lost: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        let key = |suffix: &str| format!("{{{prefix}}}:{suffix}");
        Self {
            generation: key("gen"),
            seq: key("seq"),
            log: key("log"),
            tokens: key("tok"),
            users: key("usr"),
            tenants: key("ten"),
            kids: key("kid"),
            channel: key("feed"),
            live: key("live"),
            instances: key("inst"),
            acks: key("acks"),
            lost: key("lost"),
        }
    }

    /// The state set of a revocation, and its member and score there.
    pub(crate) fn entry<'a>(&'a self, revocation: &Revocation) -> (&'a str, String, i64) {
        match revocation {
            Revocation::Token { jti, expires_at } => (&self.tokens, jti.to_string(), *expires_at),
            Revocation::User {
                tenant,
                subject,
                before,
            } => (&self.users, user_member(tenant, subject), *before),
            Revocation::Tenant { tenant, before } => (&self.tenants, tenant.to_string(), *before),
            Revocation::Key { kid, before } => (&self.kids, kid.to_string(), *before),
        }
    }
}

/// The member of `{P}:usr` for a user: a JSON pair, so no separator can be ambiguous.
fn user_member(tenant: &TenantId, subject: &Subject) -> String {
    serde_json::Value::from(vec![tenant.as_str(), subject.as_str()]).to_string()
}

fn parse_user_member(member: &str) -> Option<(TenantId, Subject)> {
    serde_json::from_str::<(TenantId, Subject)>(member).ok()
}

/// The `EVENT` script: the only writer of changes. See the module docs.
///
/// KEYS: gen, seq, log, state set. ARGV: fresh generation, channel, body, log max length,
/// member (empty for a `resync` event), score.
const EVENT_LUA: &str = r"
local gen = redis.call('GET', KEYS[1])
if not gen then
  redis.call('SET', KEYS[1], ARGV[1])
  gen = ARGV[1]
end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[4], 'GT', ARGV[6], ARGV[5])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'gen', gen, 'body', ARGV[3])
redis.call('PUBLISH', ARGV[2], seq .. ' ' .. gen .. ' ' .. ARGV[3])
return {seq, gen}
";

/// The `ROLLOVER` script: adopt the current generation, or create one if there is none or if
/// it still equals `expected` (the generation whose sequence went backwards). When the data set
/// was lost, it first raises `lost` to Redis' time (whole seconds): `1` says it was (the
/// generation was found missing or replaced), `0` says it was if the generation is missing
/// now (Redis restarted, and came back empty or not), empty says nothing was lost (the first
/// generation of a data set).
///
/// KEYS: gen, lost. ARGV: expected (empty: none), fresh generation, lost (`1`, `0` or empty).
const ROLLOVER_LUA: &str = r"
local gen = redis.call('GET', KEYS[1])
if ARGV[3] == '1' or (ARGV[3] == '0' and not gen) then
  local now = tonumber(redis.call('TIME')[1])
  local known = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if now > known then
    redis.call('SET', KEYS[2], now)
  end
end
if (not gen) or gen == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return gen
";

/// The `PRUNE` script, on Redis' clock. KEYS: tok, usr, ten, kid. ARGV: leeway, watermark
/// retention (seconds).
const PRUNE_LUA: &str = r"
local now = tonumber(redis.call('TIME')[1])
local n = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
for i = 2, 4 do
  n = n + redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[2]))
end
return n
";

/// The scripts, hashed once.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) event: Script,
    pub(crate) rollover: Script,
    pub(crate) prune: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            event: Script::new(EVENT_LUA),
            rollover: Script::new(ROLLOVER_LUA),
            prune: Script::new(PRUNE_LUA),
        }
    }
}

/// A change as carried by the feed and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A revocation.
    Revoke(Revocation),
    /// Reload everything from the state sets (published after a re-seed).
    Resync,
}

const RESYNC_BODY: &str = "resync";

impl Change {
    pub(crate) fn parse_body(body: &str) -> Option<Self> {
        if body == RESYNC_BODY {
            Some(Self::Resync)
        } else {
            serde_json::from_str(body).ok().map(Self::Revoke)
        }
    }
}

/// One live feed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) seq: u64,
    pub(crate) generation: String,
    pub(crate) change: Change,
}

impl Event {
    /// Parses `<seq> <gen> <body>`; `None` for anything else.
    pub(crate) fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(3, ' ');
        let seq = parts.next()?.parse().ok()?;
        let generation = parts.next()?.to_owned();
        let change = Change::parse_body(parts.next()?)?;
        Some(Self {
            seq,
            generation,
            change,
        })
    }
}

/// A new random generation id: 128 bits as 32 hex characters.
pub(crate) fn fresh_generation() -> String {
    let mut bytes = [0_u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().fold(String::with_capacity(32), |mut out, b| {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Runs `fut` under the command timeout, mapping both failure kinds to [`StoreError`].
pub(crate) async fn timed<T>(
    timeout: Duration,
    operation: &'static str,
    fut: impl Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(StoreError::Redis { operation, source }),
        Err(_elapsed) => Err(StoreError::Timeout { operation, timeout }),
    }
}

/// Where the configured Redis primary is: the URL, what the sentinels name, or the primary
/// of the deployment's cluster slot.
pub(crate) fn target(settings: &RevocationSettings) -> Result<RedisTarget, StoreError> {
    match (&settings.redis_url, &settings.sentinel, &settings.cluster) {
        (Some(url), _, _) => RedisTarget::url(url).map_err(StoreError::RedisUrl),
        (None, Some(sentinel), _) => RedisTarget::sentinel(sentinel, settings.command_timeout)
            .map_err(|err| StoreError::Settings {
                field: "sentinel",
                reason: err.to_string(),
            }),
        (None, None, Some(cluster)) => {
            RedisTarget::cluster(cluster, &settings.key_prefix, settings.command_timeout).map_err(
                |err| StoreError::Settings {
                    field: "cluster",
                    reason: err.to_string(),
                },
            )
        }
        (None, None, None) => Err(StoreError::Settings {
            field: "redis_url",
            reason: "a Redis store needs a URL, Sentinel or Cluster".to_owned(),
        }),
    }
}

/// The current primary's client (for Sentinel or Cluster, looked up if needed).
pub(crate) async fn primary_client(target: &RedisTarget) -> Result<Client, StoreError> {
    target.client().await.map_err(|source| StoreError::Redis {
        operation: "find the Redis primary",
        source,
    })
}

/// Opens a multiplexed command connection to the current primary, with the command timeout
/// on connect and replies. A failed connect tells the target, so the next one asks the
/// sentinels (or the cluster) again.
pub(crate) async fn command_connection(
    target: &RedisTarget,
    timeout: Duration,
) -> Result<MultiplexedConnection, StoreError> {
    let client = primary_client(target).await?;
    connect(&client, timeout)
        .await
        .inspect_err(|_| target.invalidate())
}

/// Opens a multiplexed command connection to `client`'s server, with the command timeout on
/// connect and replies.
pub(crate) async fn connect(
    client: &Client,
    timeout: Duration,
) -> Result<MultiplexedConnection, StoreError> {
    connect_answering_within(client, timeout, timeout).await
}

/// A connection for a mirror's sync: opened within `settings.command_timeout`, its replies
/// awaited up to `settings.bulk_timeout`, so a resync page or a re-seed pipeline queued behind
/// other mirrors' does not fail the session. Each command on it is bounded by its own
/// [`timed`]: the bulk steps by `bulk_timeout`, everything else by `command_timeout`.
pub(crate) async fn connect_for_sync(
    client: &Client,
    settings: &RevocationSettings,
) -> Result<MultiplexedConnection, StoreError> {
    connect_answering_within(client, settings.command_timeout, settings.bulk_timeout).await
}

async fn connect_answering_within(
    client: &Client,
    timeout: Duration,
    response: Duration,
) -> Result<MultiplexedConnection, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(response));
    timed(
        timeout,
        "connect",
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
}

/// Whether a failed command means the connection, or the node's role, is gone (a timeout
/// included): the caller should drop the connection and find the primary again.
pub(crate) fn is_lost_primary(err: &StoreError) -> bool {
    match err {
        StoreError::Timeout { .. } => true,
        StoreError::Redis { source, .. } => crate::redis_target::is_lost_primary_error(source),
        _ => false,
    }
}

/// Reads what the primary gives an acknowledged revoke: connected replicas (`INFO
/// replication`), `appendonly` and `appendfsync` (`CONFIG GET`; `INFO persistence` where a
/// managed service disables `CONFIG`), and how many replicas revokes wait for.
pub(crate) async fn measure_durability<C>(
    conn: &mut C,
    settings: &RevocationSettings,
    failover: bool,
) -> Result<Durability, StoreError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    let timeout = settings.command_timeout;
    let replication: String = timed(
        timeout,
        "read INFO replication",
        ::redis::cmd("INFO").arg("replication").query_async(conn),
    )
    .await?;
    let connected_replicas = info_field(&replication, "connected_slaves")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let config = async |conn: &mut C, name: &'static str| -> Option<String> {
        let pair: Vec<String> = timed(
            timeout,
            "read CONFIG GET",
            ::redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(conn),
        )
        .await
        .ok()?;
        pair.get(1).cloned()
    };
    let mut appendonly = config(conn, "appendonly").await.map(|v| v == "yes");
    if appendonly.is_none() {
        let persistence: Option<String> = timed(
            timeout,
            "read INFO persistence",
            ::redis::cmd("INFO").arg("persistence").query_async(conn),
        )
        .await
        .ok();
        appendonly = persistence
            .as_deref()
            .and_then(|info| info_field(info, "aof_enabled"))
            .map(|v| v == "1");
    }
    let appendfsync = config(conn, "appendfsync").await;
    let min_replicas_acked = settings
        .min_replicas_acked
        .unwrap_or_else(|| durability::default_min_replicas_acked(failover, connected_replicas));
    Ok(Durability::new(
        connected_replicas,
        min_replicas_acked,
        appendonly,
        appendfsync,
    ))
}

/// Refuses a primary below `require_durability`.
pub(crate) fn check_durability(
    durability: &Durability,
    settings: &RevocationSettings,
) -> Result<(), StoreError> {
    if durability.level >= settings.require_durability {
        Ok(())
    } else {
        Err(StoreError::Durability {
            required: settings.require_durability,
            found: durability.level,
            detail: durability.describe(),
        })
    }
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
}

/// Refuses a Redis that may evict keys (THREATS §3.3, F11).
///
/// Reads `INFO memory`, which managed services keep even where they disable `CONFIG`.
pub(crate) async fn check_eviction_policy<C>(
    conn: &mut C,
    timeout: Duration,
) -> Result<(), StoreError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    let info: String = timed(
        timeout,
        "read INFO memory",
        ::redis::cmd("INFO").arg("memory").query_async(conn),
    )
    .await?;
    let policy = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("maxmemory_policy:"))
        .ok_or_else(|| StoreError::Protocol {
            operation: "read INFO memory",
            detail: "no maxmemory_policy line".to_owned(),
        })?;
    if policy == "noeviction" {
        Ok(())
    } else {
        Err(StoreError::EvictionPolicy {
            policy: policy.to_owned(),
        })
    }
}

/// The `run_id` Redis reports in `INFO server`: it changes on every restart.
pub(crate) async fn server_run_id<C>(conn: &mut C, timeout: Duration) -> Result<String, StoreError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    let info: String = timed(
        timeout,
        "read INFO server",
        ::redis::cmd("INFO").arg("server").query_async(conn),
    )
    .await?;
    info.lines()
        .find_map(|line| line.trim().strip_prefix("run_id:"))
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Protocol {
            operation: "read INFO server",
            detail: "no run_id line".to_owned(),
        })
}

/// The `EVENT` script's keys and arguments for `body`, writing `entry` (set, member, score)
/// if given, in the script's order.
fn event_call<'a>(
    keys: &'a Keys,
    settings: &RevocationSettings,
    body: &str,
    entry: Option<(&'a str, &str, i64)>,
) -> ([&'a str; 4], [String; 6]) {
    let (set, member, score) = entry.unwrap_or((&keys.seq, "", 0));
    (
        [&keys.generation, &keys.seq, &keys.log, set],
        [
            fresh_generation(),
            keys.channel.clone(),
            body.to_owned(),
            settings.log_max_len.to_string(),
            member.to_owned(),
            score.to_string(),
        ],
    )
}

/// Runs the `EVENT` script for `body`, writing `entry` (set, member, score) if given.
/// Returns the sequence number and generation of the change.
pub(crate) async fn write_event<C>(
    conn: &mut C,
    keys: &Keys,
    scripts: &Scripts,
    settings: &RevocationSettings,
    body: &str,
    entry: Option<(&str, &str, i64)>,
) -> Result<(u64, String), StoreError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    let (script_keys, args) = event_call(keys, settings, body, entry);
    let mut invocation = scripts.event.prepare_invoke();
    invocation.key(&script_keys[..]).arg(&args[..]);
    timed(
        settings.command_timeout,
        "write a revocation",
        invocation.invoke_async(conn),
    )
    .await
}

/// One write for [`write_events_and_wait`]: the event's body and the state-set entry (set,
/// member, score) it writes.
#[derive(Debug, Clone)]
pub(crate) struct PendingWrite {
    pub(crate) body: String,
    pub(crate) set: String,
    pub(crate) member: String,
    pub(crate) score: i64,
}

/// As [`write_event`] for each of `changes`, then `WAIT replicas wait_timeout`, as one
/// pipeline on `conn`: `WAIT` counts the replicas that have this connection's writes, so sent
/// on its own after a reconnect it would count a fresh connection with no writes and answer at
/// once. Returns each change's sequence number and generation, in order, and how many replicas
/// confirmed them all.
///
/// `EVAL` with the source rather than `EVALSHA`: a pipeline cannot recover from `NOSCRIPT` (a
/// primary just promoted has an empty script cache), and revokes are rare.
pub(crate) async fn write_events_and_wait<C>(
    conn: &mut C,
    keys: &Keys,
    settings: &RevocationSettings,
    changes: &[PendingWrite],
    replicas: u32,
) -> Result<(Vec<(u64, String)>, u64), StoreError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    let wait_ms = u64::try_from(settings.wait_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut pipe = ::redis::pipe();
    for change in changes {
        let entry = (change.set.as_str(), change.member.as_str(), change.score);
        let (script_keys, args) = event_call(keys, settings, &change.body, Some(entry));
        pipe.cmd("EVAL")
            .arg(EVENT_LUA)
            .arg(script_keys.len())
            .arg(&script_keys[..])
            .arg(&args[..]);
    }
    pipe.cmd("WAIT").arg(replicas).arg(wait_ms);
    // The pipeline may take a command's time plus the wait itself.
    let mut replies: Vec<::redis::Value> = timed(
        settings.command_timeout + settings.wait_timeout,
        "write revocations and wait for replicas",
        pipe.query_async(conn),
    )
    .await?;
    let malformed = |detail: String| StoreError::Protocol {
        operation: "read the replies of a write and its WAIT",
        detail,
    };
    let wait = replies
        .pop()
        .ok_or_else(|| malformed("no reply".to_owned()))?;
    if replies.len() != changes.len() {
        return Err(malformed(format!(
            "{} replies for {} writes",
            replies.len(),
            changes.len()
        )));
    }
    let acked: u64 = ::redis::from_redis_value(wait).map_err(|e| malformed(e.to_string()))?;
    let written = replies
        .into_iter()
        .map(::redis::from_redis_value::<(u64, String)>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(e.to_string()))?;
    Ok((written, acked))
}

/// Removes expired entries from the state sets, on Redis' clock. Returns how many.
pub(crate) async fn prune<C>(
    conn: &mut C,
    keys: &Keys,
    scripts: &Scripts,
    settings: &RevocationSettings,
) -> Result<u64, StoreError>
where
    C: ::redis::aio::ConnectionLike + Send,
{
    let mut invocation = scripts.prune.prepare_invoke();
    invocation
        .key(&keys.tokens)
        .key(&keys.users)
        .key(&keys.tenants)
        .key(&keys.kids)
        .arg(settings.leeway_secs())
        .arg(settings.watermark_retention_secs());
    timed(
        settings.command_timeout,
        "prune expired revocations",
        invocation.invoke_async(conn),
    )
    .await
}

/// Parses a sorted-set score that we wrote as whole seconds.
pub(crate) fn parse_score(score: &str) -> Option<i64> {
    if let Ok(whole) = score.parse::<i64>() {
        return Some(whole);
    }
    let value: f64 = score.parse().ok()?;
    if !value.is_finite() || value.abs() > 9.0e15 {
        return None;
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "scores are whole seconds we wrote, checked to be finite and within ±2^53"
    )]
    Some(value as i64)
}

/// Builds the watermark revocation of `set` from one member and score; `None` for a member
/// that is not a valid identifier of its kind (no edgetoken writes one).
pub(crate) fn watermark(keys: &Keys, set: &str, member: &str, before: i64) -> Option<Revocation> {
    if set == keys.users {
        let (tenant, subject) = parse_user_member(member)?;
        Some(Revocation::User {
            tenant,
            subject,
            before,
        })
    } else if set == keys.tenants {
        Some(Revocation::Tenant {
            tenant: TenantId::new(member).ok()?,
            before,
        })
    } else if set == keys.kids {
        Some(Revocation::Key {
            kid: KeyId::new(member).ok()?,
            before,
        })
    } else {
        None
    }
}

/// A log entry's fields.
pub(crate) type LogFields = HashMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::testing::{subject, tenant};

    #[test]
    fn keys_share_one_hash_tag_per_prefix() {
        let keys = Keys::new("t1");
        assert_eq!(keys.tokens, "{t1}:tok");
        assert_eq!(keys.channel, "{t1}:feed");
        assert_eq!(keys.generation, "{t1}:gen");
    }

    #[test]
    fn event_payload_round_trips() {
        let revocation = Revocation::User {
            tenant: tenant("acme"),
            subject: subject("a\"b\\c"),
            before: 7,
        };
        let body = serde_json::to_string(&revocation).unwrap();
        let event = Event::parse(&format!("42 abcd {body}")).unwrap();
        assert_eq!(event.seq, 42);
        assert_eq!(event.generation, "abcd");
        assert_eq!(event.change, Change::Revoke(revocation));
        assert_eq!(
            Event::parse("43 abcd resync").unwrap().change,
            Change::Resync
        );
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        for payload in [
            "",
            "x abcd resync",
            "1 abcd",
            "1 abcd {\"kind\":\"nope\"}",
            "-1 g resync",
            // Identifiers are checked on the way in: no verified token could carry these.
            "1 abcd {\"kind\":\"token\",\"jti\":\"short\",\"expires_at\":1}",
            "1 abcd {\"kind\":\"tenant\",\"tenant\":\"Acme\",\"before\":1}",
        ] {
            assert_eq!(Event::parse(payload), None, "{payload}");
        }
    }

    #[test]
    fn user_member_is_unambiguous() {
        let member = user_member(&tenant("a-b"), &subject("c\":d"));
        assert_eq!(
            parse_user_member(&member),
            Some((tenant("a-b"), subject("c\":d")))
        );
    }

    #[test]
    fn watermark_skips_members_that_are_not_identifiers_of_their_kind() {
        let keys = Keys::new("t1");
        assert_eq!(
            watermark(&keys, &keys.tenants, "acme", 7),
            Some(Revocation::Tenant {
                tenant: tenant("acme"),
                before: 7
            })
        );
        assert_eq!(watermark(&keys, &keys.tenants, "Acme", 7), None);
        assert_eq!(watermark(&keys, &keys.kids, "k1", 7), None);
        assert_eq!(watermark(&keys, &keys.users, "[\"acme\",\"a b\"]", 7), None);
    }

    #[test]
    fn generations_are_random_hex() {
        let a = fresh_generation();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, fresh_generation());
    }

    #[test]
    fn parse_score_accepts_whole_seconds_only_in_range() {
        assert_eq!(parse_score("1767229140"), Some(1_767_229_140));
        assert_eq!(parse_score("1.76722914e9"), Some(1_767_229_140));
        assert_eq!(parse_score("inf"), None);
        assert_eq!(parse_score("x"), None);
    }
}
