//! The Redis side of the revocation barrier: the scripts that register a mirror, report its
//! position and read the roster, the mirror's reporter task, and the [`Waiter`] a revoke
//! waits on. The rules (who counts, when a registration is void) are in
//! [`crate::revocation::barrier`], which also states the protocol and why it is sound; the
//! keys are in the parent module's table.
//!
//! Nothing here runs on the verification path: a mirror registers from its feed's head reads
//! and reports from a task of its own, and only a revoke waits.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::redis::Script;
use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use futures_util::StreamExt as _;
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Keys, command_connection, connect, parse_score, primary_client, timed};
use crate::redis_target::{RedisTarget, jittered};
use crate::revocation::StoreError;
use crate::revocation::barrier::{
    Acks, InstanceId, Position, Propagation, Registration, Roster, parse_ack, registration_ttl,
};
use crate::revocation::settings::RevocationSettings;

/// Raises the position of instance `id` in hash `key`: within a generation it only rises, a
/// new generation replaces it. Shared by `HEAD` and `REPORT`.
///
/// `within` first: a position is recorded or published only when it lies in the data set as
/// it is (the head's generation, at or below its sequence). A mirror ahead of the head holds
/// changes this primary never had (a promoted replica that missed the last writes), numbered
/// as the primary will number its next ones: its position would confirm those next revokes,
/// which it skips as already applied. Refused, it confirms nothing until it re-seeded and
/// follows the data set again (its head read shows it behind and re-seeds).
const RAISE_LUA: &str = r"
local function within(gen, seq, head_gen, head_seq)
  return gen ~= '' and head_gen ~= false and gen == head_gen and head_seq ~= false
    and tonumber(seq) <= tonumber(head_seq)
end
-- Only after `within`, which refuses an empty generation.
local function raise(key, id, gen, seq)
  local known = redis.call('HGET', key, id)
  if known then
    local g, s = string.match(known, '^(%S+) (%d+)$')
    if g == gen and tonumber(s) >= tonumber(seq) then return false end
  end
  redis.call('HSET', key, id, gen .. ' ' .. seq)
  return true
end
";

/// `HEAD`: renew a registration (deadline = Redis `TIME` + ttl), raise and publish its
/// position if it lies within the head, and read the head, atomically. KEYS: gen, seq, live,
/// inst. ARGV: instance, ttl (ms), generation (empty: none yet), seq, acks channel.
const HEAD_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head_gen, head_seq = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
if within(ARGV[3], ARGV[4], head_gen, head_seq) and raise(KEYS[4], ARGV[1], ARGV[3], ARGV[4]) then
  redis.call('PUBLISH', ARGV[5], ARGV[1] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
end
return {head_gen, head_seq}
";

/// `REPORT`: raise a position and publish it, if it lies within the head. KEYS: inst, gen,
/// seq. ARGV: instance, generation, seq, acks channel. Returns 1, or 0 for a position past
/// the head (not recorded, not published).
const REPORT_LUA: &str = r"
if not within(ARGV[2], ARGV[3], redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])) then
  return 0
end
raise(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return 1
";

/// `ROSTER`: Redis' time (ms) then, per registration, instance, deadline and position (empty
/// if none); removes registrations whose deadline passed, and positions without one.
/// KEYS: live, inst.
///
/// The sweep of positions (`HKEYS`, then a `ZSCORE` each) costs one lookup per mirror, on every
/// revoke, on the primary: at 100 mirrors about a quarter of the script (`docs/scale.md`). It
/// runs only when there can be something to sweep: a registration just expired, or more
/// positions than registrations (a mirror that reported after its registration lapsed).
const ROSTER_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local out = {tostring(now)}
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], all[i]) or ''
end
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if expired > 0 or redis.call('HLEN', KEYS[2]) > redis.call('ZCARD', KEYS[1]) then
  for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
    if not redis.call('ZSCORE', KEYS[1], id) then redis.call('HDEL', KEYS[2], id) end
  end
end
return out
";

/// First reconnect delay of the acknowledgement listener; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The barrier's scripts, hashed once.
#[derive(Debug)]
pub(crate) struct BarrierScripts {
    head: Script,
    report: Script,
    roster: Script,
}

impl BarrierScripts {
    pub(crate) fn new() -> Self {
        Self {
            head: Script::new(&format!("{RAISE_LUA}{HEAD_LUA}")),
            report: Script::new(&format!("{RAISE_LUA}{REPORT_LUA}")),
            roster: Script::new(ROSTER_LUA),
        }
    }
}

/// Renews `instance`'s registration, records `position` (the one applied so far) and reads
/// the head (generation, sequence), in one script.
pub(crate) async fn register_and_read_head<C>(
    conn: &mut C,
    keys: &Keys,
    scripts: &BarrierScripts,
    settings: &RevocationSettings,
    instance: &InstanceId,
    position: Option<(&str, u64)>,
) -> Result<(Option<String>, u64), StoreError>
where
    C: ConnectionLike + Send,
{
    let ttl =
        u64::try_from(registration_ttl(settings.max_staleness).as_millis()).unwrap_or(u64::MAX);
    let (generation, seq) = position.unwrap_or(("", 0));
    let mut invocation = scripts.head.prepare_invoke();
    invocation
        .key(&keys.generation)
        .key(&keys.seq)
        .key(&keys.live)
        .key(&keys.instances)
        .arg(instance.as_str())
        .arg(ttl)
        .arg(generation)
        .arg(seq)
        .arg(&keys.acks);
    let (generation, seq): (Option<String>, Option<u64>) = timed(
        settings.command_timeout,
        "register with the revocation barrier",
        invocation.invoke_async(conn),
    )
    .await?;
    Ok((generation, seq.unwrap_or(0)))
}

/// Removes `instance` from the roster (a clean shutdown).
pub(crate) async fn deregister(
    target: &RedisTarget,
    keys: &Keys,
    settings: &RevocationSettings,
    instance: &InstanceId,
) -> Result<(), StoreError> {
    let mut conn = command_connection(target, settings.command_timeout).await?;
    let mut pipe = ::redis::pipe();
    pipe.atomic()
        .zrem(&keys.live, instance.as_str())
        .hdel(&keys.instances, instance.as_str());
    timed(
        settings.command_timeout,
        "leave the revocation barrier",
        pipe.query_async::<()>(&mut conn),
    )
    .await
}

/// Reports the positions a feed publishes, one at a time: while a report is in flight the
/// feed may apply more, and the next report carries the latest (the watch keeps only that).
/// A failed report is logged and dropped; the next report, or the next heartbeat's head read
/// (which also publishes the position), carries it.
pub(crate) async fn reporter(
    target: RedisTarget,
    keys: Keys,
    settings: RevocationSettings,
    instance: InstanceId,
    mut positions: watch::Receiver<Option<Position>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let scripts = BarrierScripts::new();
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            changed = positions.changed() => if changed.is_err() { return },
        }
        let Some(position) = positions.borrow_and_update().clone() else {
            continue;
        };
        if conn.is_none() {
            conn = command_connection(&target, settings.command_timeout)
                .await
                .inspect_err(|err| tracing::debug!(error = %err, "barrier reporter cannot connect"))
                .ok();
        }
        let Some(connection) = conn.as_mut() else {
            continue;
        };
        let mut invocation = scripts.report.prepare_invoke();
        invocation
            .key(&keys.instances)
            .key(&keys.generation)
            .key(&keys.seq)
            .arg(instance.as_str())
            .arg(&position.generation)
            .arg(position.seq)
            .arg(&keys.acks);
        let reported: Result<i64, _> = timed(
            settings.command_timeout,
            "report the applied position",
            invocation.invoke_async(connection),
        )
        .await;
        if let Err(err) = reported {
            tracing::debug!(error = %err, "barrier report failed; the next one carries it");
            // The next report reconnects, to the primary the target names then.
            target.invalidate();
            conn = None;
        }
    }
}

/// Reads the roster: Redis' time and every registration still live.
async fn roster<C>(
    conn: &mut C,
    keys: &Keys,
    scripts: &BarrierScripts,
    settings: &RevocationSettings,
) -> Result<Roster, StoreError>
where
    C: ConnectionLike + Send,
{
    let mut invocation = scripts.roster.prepare_invoke();
    invocation.key(&keys.live).key(&keys.instances);
    let reply: Vec<String> = timed(
        settings.command_timeout,
        "read the revocation barrier's roster",
        invocation.invoke_async(conn),
    )
    .await?;
    parse_roster(&reply).ok_or_else(|| StoreError::Protocol {
        operation: "read the revocation barrier's roster",
        detail: "malformed reply".to_owned(),
    })
}

fn parse_roster(reply: &[String]) -> Option<Roster> {
    let (now, rest) = reply.split_first()?;
    let now_ms = parse_score(now)?;
    let mut all = Vec::with_capacity(rest.len() / 3);
    for triple in rest.chunks(3) {
        let [instance, deadline, position] = triple else {
            return None;
        };
        all.push(Registration {
            instance: instance.clone(),
            deadline_ms: parse_score(deadline)?,
            position: Position::parse(position),
        });
    }
    Some(Roster::new(now_ms, all))
}

/// What the acknowledgement listener shares with waiters.
#[derive(Debug)]
struct Heard {
    acks: Mutex<Acks>,
    /// Bumped after every change of `acks`, so waiters wake and re-count.
    version: watch::Sender<u64>,
}

impl Heard {
    fn record(&self, instance: &str, position: Position) {
        let changed = self
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(instance, position);
        if changed {
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}

/// The listener task, aborted with the waiter.
#[derive(Debug)]
struct Listener {
    heard: Arc<Heard>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a revoke waits on: the roster and the acknowledgements, for one store.
///
/// The acknowledgement listener (one pub/sub connection) starts with the first wait, so a
/// process that never revokes never opens it.
#[derive(Debug)]
pub(crate) struct Waiter {
    target: RedisTarget,
    keys: Keys,
    scripts: BarrierScripts,
    settings: RevocationSettings,
    /// This process's own registration, if its mirror follows Redis: confirmed by the local
    /// apply that precedes every wait.
    own: Option<InstanceId>,
    listener: OnceCell<Listener>,
}

impl Waiter {
    pub(crate) fn new(
        target: RedisTarget,
        settings: &RevocationSettings,
        own: Option<InstanceId>,
    ) -> Self {
        Self {
            target,
            keys: Keys::new(&settings.key_prefix),
            scripts: BarrierScripts::new(),
            settings: settings.clone(),
            own,
            listener: OnceCell::new(),
        }
    }

    /// Waits until every live registration confirmed `target` (accepted by Redis already),
    /// for at most `barrier_timeout`.
    ///
    /// # Errors
    /// [`StoreError`] when the roster cannot be read: nobody knows then who applied the
    /// change, and the caller reports failure (the change itself stands; a retry is a no-op).
    pub(crate) async fn wait<C>(
        &self,
        conn: &mut C,
        target: &Position,
    ) -> Result<Propagation, StoreError>
    where
        C: ConnectionLike + Send,
    {
        let started = Instant::now();
        let deadline = started + self.settings.barrier_timeout;
        let heard = &self.listener().await.heard;
        // Subscribed before the roster is read: any acknowledgement recorded from now on
        // wakes us; any recorded before is in the table when we count.
        let mut version = heard.version.subscribe();
        let roster = roster(conn, &self.keys, &self.scripts, &self.settings).await?;
        for registration in roster.live() {
            if let Some(position) = &registration.position {
                heard.record(&registration.instance, position.clone());
            }
        }
        let own = self.own.as_ref().map(InstanceId::as_str);
        loop {
            let tally = {
                let mut acks = heard.acks.lock().unwrap_or_else(PoisonError::into_inner);
                let tally = roster.tally(&acks, target, own);
                if acks.len() > 2 * roster.live().len() + 64 {
                    acks.retain(&roster);
                }
                tally
            };
            let done = tally.lagging == 0
                || !matches!(
                    tokio::time::timeout_at(deadline, version.changed()).await,
                    Ok(Ok(()))
                );
            if done {
                return Ok(Propagation {
                    confirmed: tally.confirmed,
                    lagging: tally.lagging,
                    max_staleness: tally.max_staleness,
                    waited: started.elapsed(),
                });
            }
        }
    }

    async fn listener(&self) -> &Listener {
        self.listener
            .get_or_init(|| async {
                let (version, _) = watch::channel(0);
                let heard = Arc::new(Heard {
                    acks: Mutex::new(Acks::default()),
                    version,
                });
                let task = tokio::spawn(listen(
                    self.target.clone(),
                    self.keys.clone(),
                    self.settings.command_timeout,
                    Arc::clone(&heard),
                ));
                Listener { heard, task }
            })
            .await
    }
}

/// Follows `{P}:acks` into `heard`, reconnecting with backoff. After each subscription it
/// reads every position from `{P}:inst`: a report published while it was not subscribed was
/// written there first, in the same script.
async fn listen(target: RedisTarget, keys: Keys, timeout: Duration, heard: Arc<Heard>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match follow(&target, &keys, timeout, &heard).await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(err) => {
                tracing::debug!(error = %err, "barrier acknowledgements lost; reconnecting");
            }
        }
        // Lost either way: the primary may have moved.
        target.invalidate();
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow(
    target: &RedisTarget,
    keys: &Keys,
    timeout: Duration,
    heard: &Heard,
) -> Result<(), StoreError> {
    // Both connections go to the one primary resolved here.
    let client = primary_client(target).await?;
    let mut pubsub = timed(
        timeout,
        "open the barrier connection",
        client.get_async_pubsub(),
    )
    .await?;
    timed(
        timeout,
        "subscribe to barrier acknowledgements",
        pubsub.subscribe(&keys.acks),
    )
    .await?;
    let mut messages = pubsub.into_on_message();
    let mut conn = connect(&client, timeout).await?;
    let positions: Vec<(String, String)> = timed(
        timeout,
        "read the barrier positions",
        ::redis::cmd("HGETALL")
            .arg(&keys.instances)
            .query_async(&mut conn),
    )
    .await?;
    drop(conn);
    for (instance, position) in positions {
        if let Some(position) = Position::parse(&position) {
            heard.record(&instance, position);
        }
    }
    while let Some(message) = messages.next().await {
        let ack = message
            .get_payload::<String>()
            .ok()
            .and_then(|payload| parse_ack(&payload));
        if let Some((instance, position)) = ack {
            heard.record(&instance, position);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roster_reply_parses_into_live_registrations() {
        let reply: Vec<String> = [
            "1000", "a", "2000", "g1 8", "b", "1000", "", "c", "1500", "",
        ]
        .map(str::to_owned)
        .to_vec();
        let roster = parse_roster(&reply).unwrap();
        let live: Vec<_> = roster
            .live()
            .iter()
            .map(|r| (r.instance.as_str(), r.position.is_some()))
            .collect();
        assert_eq!(live, [("a", true), ("c", false)]);
    }

    #[test]
    fn malformed_roster_replies_are_refused() {
        for reply in [vec![], vec!["x"], vec!["1", "a", "2"]] {
            let reply: Vec<String> = reply.into_iter().map(str::to_owned).collect();
            assert_eq!(parse_roster(&reply), None);
        }
    }
}
