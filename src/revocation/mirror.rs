//! The in-memory revocation mirror every verifier checks tokens against (SPEC §3).
//!
//! A [`Mirror`] holds the whole live revocation state of the deployment in compact maps and
//! answers [`RevocationCheck::status`] from memory, without I/O, in well under a microsecond.
//! It owns:
//! - the data: token revocations keyed by the 16 bytes a canonical 22-character base64url
//!   `jti` decodes to (with a `Box<str>` fallback map for any other `jti`), each with its prune
//!   time as a `u32` of Unix seconds; and the user, tenant and key watermark maps;
//! - freshness: whether the first full sync completed (readiness) and when Redis was last
//!   heard from (staleness), with the `on_stale` policy applied in `status`;
//! - pruning: an entry is removed only once no token it covers can still be valid, which is
//!   `exp + leeway` for a token and `before + 12 h + leeway` for a watermark. It reads this
//!   verifier's own [`Clock`], the same one that decides whether the token has expired, so a
//!   skewed clock prunes an entry exactly when that verifier stops accepting its token anyway
//!   (Redis prunes its copy on its own clock).
//!
//! It leaves out where changes come from: the Redis feed (`redis` module) or the in-process
//! store ([`MemoryRevocations`](super::MemoryRevocations)) call [`Mirror::apply`].
//!
//! Invariants: applying is idempotent and commutative (a set union with watermarks that only
//! rise), so duplicated, replayed or reordered changes converge to the same state; and the
//! mirror never drops an entry except by pruning, so a resync from an emptied store can only
//! add to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::settings::{OnStale, RevocationSettings};
use super::{Revocation, RevocationCheck, RevocationStatus, TokenFacts};
use crate::clock::Clock;
use crate::keys::KeyId;
use crate::token::{Subject, TenantId, TokenId};

/// Length of a `jti` made of 128 random bits in base64url without padding.
const COMPACT_JTI_LEN: usize = 22;

/// How many entries one write-lock hold touches at most while merging or pruning in bulk, so a
/// full resync or a large prune never stalls lookups for long.
const BULK_CHUNK: usize = 4096;

/// base64url alphabet → sextet, 0xFF for anything else.
const SEXTETS: [u8; 256] = {
    let mut table = [0xFF_u8; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut i: u8 = 0;
    while i < 64 {
        table[alphabet[i as usize] as usize] = i;
        i += 1;
    }
    table
};

/// The 16 bytes behind a canonical 22-character base64url `jti`, or `None` for any other `jti`.
///
/// Strict decoding (URL alphabet, no padding, the 4 unused trailing bits zero) makes this
/// injective on strings: two different strings never map to the same key, so the compact map
/// keeps the exact-match semantics of `jti` (THREATS 1F #40). Hand-rolled because it sits on
/// the lookup path; a test checks it against the `base64` crate's strict decoder.
fn compact_jti(jti: &str) -> Option<[u8; 16]> {
    let bytes: &[u8; COMPACT_JTI_LEN] = jti.as_bytes().try_into().ok()?;
    let (last, head) = bytes.split_last()?;
    let mut acc: u128 = 0;
    for &b in head {
        let sextet = SEXTETS[usize::from(b)];
        if sextet == 0xFF {
            return None;
        }
        acc = (acc << 6) | u128::from(sextet);
    }
    // 21 sextets carry 126 bits; the last character adds 2 and must leave its low 4 bits zero.
    let sextet = SEXTETS[usize::from(*last)];
    if sextet == 0xFF || sextet & 0x0F != 0 {
        return None;
    }
    acc = (acc << 2) | u128::from(sextet >> 4);
    Some(acc.to_be_bytes())
}

fn expand_jti(key: &[u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Unix seconds clamped into `u32`; clamping up only keeps an entry longer.
fn to_u32_secs(secs: i64) -> u32 {
    u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
}

/// The revocation data, without locking or freshness.
#[derive(Debug, Default)]
pub(crate) struct RevocationSet {
    /// Canonical 22-char `jti` → prune time (`exp + leeway`, Unix seconds).
    tokens: HashMap<[u8; 16], u32>,
    /// Any other `jti` → prune time.
    other_tokens: HashMap<Box<str>, u32>,
    /// tenant → subject → watermark.
    users: HashMap<Box<str>, HashMap<Box<str>, i64>>,
    /// tenant → watermark.
    tenants: HashMap<Box<str>, i64>,
    /// kid → watermark.
    keys: HashMap<Box<str>, i64>,
}

fn raise<K, Q>(map: &mut HashMap<K, i64>, key: &Q, value: i64) -> bool
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq + for<'a> From<&'a Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    match map.get_mut(key) {
        Some(current) if *current >= value => false,
        Some(current) => {
            *current = value;
            true
        }
        None => {
            map.insert(K::from(key), value);
            true
        }
    }
}

fn extend_u32<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K, value: u32) -> bool {
    match map.get_mut(&key) {
        Some(current) if *current >= value => false,
        Some(current) => {
            *current = value;
            true
        }
        None => {
            map.insert(key, value);
            true
        }
    }
}

impl RevocationSet {
    fn is_revoked(&self, token: &TokenFacts<'_>) -> bool {
        let covered = |before: Option<&i64>| before.is_some_and(|b| token.issued_at <= *b);
        let (jti, tenant) = (token.jti.as_str(), token.tenant.as_str());
        let by_id = match compact_jti(jti) {
            Some(key) => self.tokens.contains_key(&key),
            None => self.other_tokens.contains_key(jti),
        };
        by_id
            || covered(self.tenants.get(tenant))
            // A revoked key stops all its tokens, not only those minted before (see the
            // module docs of `revocation`).
            || self.keys.contains_key(token.kid.as_str())
            || covered(
                self.users
                    .get(tenant)
                    .and_then(|subjects| subjects.get(token.subject.as_str())),
            )
    }

    /// Adds `revocation` unless every token it covers is already invalid at `now`.
    fn apply(&mut self, revocation: &Revocation, now: i64, limits: &Limits) -> bool {
        match revocation {
            Revocation::Token { jti, expires_at } => {
                let prune_at = expires_at.saturating_add(limits.leeway);
                if prune_at <= now {
                    return false;
                }
                let prune_at = to_u32_secs(prune_at);
                match compact_jti(jti.as_str()) {
                    Some(key) => extend_u32(&mut self.tokens, key, prune_at),
                    None => extend_u32(&mut self.other_tokens, Box::from(jti.as_str()), prune_at),
                }
            }
            Revocation::User {
                tenant,
                subject,
                before,
            } => {
                if limits.watermark_expired(*before, now) {
                    return false;
                }
                let subjects = match self.users.get_mut(tenant.as_str()) {
                    Some(subjects) => subjects,
                    None => self.users.entry(Box::from(tenant.as_str())).or_default(),
                };
                raise(subjects, subject.as_str(), *before)
            }
            Revocation::Tenant { tenant, before } => {
                !limits.watermark_expired(*before, now)
                    && raise(&mut self.tenants, tenant.as_str(), *before)
            }
            Revocation::Key { kid, before } => {
                !limits.watermark_expired(*before, now)
                    && raise(&mut self.keys, kid.as_str(), *before)
            }
        }
    }

    fn size(&self) -> MirrorSize {
        MirrorSize {
            tokens: self.tokens.len() + self.other_tokens.len(),
            users: self.users.values().map(HashMap::len).sum(),
            tenants: self.tenants.len(),
            keys: self.keys.len(),
        }
    }

    fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket plus the entries; buckets ≈ capacity · 8/7.
        fn table<K, V>(map: &HashMap<K, V>) -> usize {
            map.capacity() * 8 / 7 * (size_of::<(K, V)>() + 1)
        }
        let strings = |len: usize| len;
        table(&self.tokens)
            + table(&self.other_tokens)
            + self
                .other_tokens
                .keys()
                .map(|k| strings(k.len()))
                .sum::<usize>()
            + table(&self.users)
            + self
                .users
                .iter()
                .map(|(tenant, subjects)| {
                    tenant.len()
                        + table(subjects)
                        + subjects.keys().map(|s| strings(s.len())).sum::<usize>()
                })
                .sum::<usize>()
            + table(&self.tenants)
            + self.tenants.keys().map(|k| k.len()).sum::<usize>()
            + table(&self.keys)
            + self.keys.keys().map(|k| k.len()).sum::<usize>()
    }
}

/// The retention arithmetic, fixed at construction.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Leeway, seconds.
    leeway: i64,
    /// Longest lifetime plus leeway, seconds.
    watermark_retention: i64,
}

impl Limits {
    fn watermark_expired(&self, before: i64, now: i64) -> bool {
        before.saturating_add(self.watermark_retention) <= now
    }
}

/// Entry counts of a mirror, per granularity; for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorSize {
    /// Token revocations.
    pub tokens: usize,
    /// User watermarks.
    pub users: usize,
    /// Tenant watermarks.
    pub tenants: usize,
    /// Key watermarks.
    pub keys: usize,
}

impl MirrorSize {
    /// All entries together.
    pub fn total(&self) -> usize {
        self.tokens + self.users + self.tenants + self.keys
    }
}

/// What the mirror and its feed report about themselves, for `/readyz`, metrics and tests.
///
/// Published through [`Mirror::health`]; every change of state (an applied revocation, a
/// resync, a disconnect, becoming stale) sends a new value, so callers await the real event
/// instead of polling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorHealth {
    /// The first full sync completed.
    pub ready: bool,
    /// Staleness is below `max_staleness` (always true for the in-process store).
    pub fresh: bool,
    /// The change feed is connected and subscribed.
    pub connected: bool,
    /// Generation of the Redis data set the mirror follows.
    pub generation: Option<String>,
    /// Sequence number of the last change applied in order.
    pub applied_seq: u64,
    /// Revocations applied that changed the mirror.
    pub changes: u64,
    /// Full resyncs from the state keys.
    pub full_resyncs: u64,
    /// Catch-ups from the replay log.
    pub catch_ups: u64,
    /// Gaps in the sequence seen on the live feed.
    pub gaps: u64,
    /// Losses of the feed connection.
    pub disconnects: u64,
    /// Times the store was found emptied, replaced or rolled back.
    pub resets: u64,
    /// Entries written back into Redis after a reset.
    pub reseeded: u64,
    /// Entries pruned because no token they cover can still be valid.
    pub pruned: u64,
    /// The last error the feed met, for operators.
    pub last_error: Option<String>,
    /// This process's clock minus Redis' (`TIME`), in milliseconds, as the feed last measured
    /// it (at each connection and every prune interval); `None` until measured, and for the
    /// in-process store. Token times are judged by this process's clock and revocation
    /// expiry by Redis', so a skew beyond half the leeway is logged as an alarm.
    pub clock_skew_ms: Option<i64>,
    /// What the Redis primary gives an acknowledged revoke (replicas, AOF), as measured by the
    /// feed at each connection and by this process's store; `None` until measured, and for
    /// the in-process store.
    pub durability: Option<super::Durability>,
    /// Where the feed reads from this session (`read_from_replicas`): `primary`, or
    /// `replica HOST:PORT`; `None` between sessions (before the first, and from a lost one
    /// until the next chooses) and for the in-process store.
    pub feed_source: Option<String>,
    /// Sessions whose feed wanted a replica but read from the primary (none usable, or the
    /// replica failed or lagged mid-session).
    pub replica_fallbacks: u64,
}

/// The in-memory revocation state of one process, with its freshness.
///
/// Shared as `Arc<Mirror>` between the feed that writes it and the verifier that reads it.
#[derive(Debug)]
pub struct Mirror {
    set: RwLock<RevocationSet>,
    /// The in-process store: always ready and fresh, it is its own source of truth.
    authoritative: bool,
    ready: AtomicBool,
    /// Origin of `last_heard`.
    origin: Instant,
    /// Nanoseconds after `origin` plus one when Redis last confirmed our state; 0 = never.
    last_heard: AtomicU64,
    /// Nanoseconds after `origin` plus one when the feed last renewed this mirror's
    /// registration in the revocation barrier; 0 = not registered. For metrics only.
    registered: AtomicU64,
    max_staleness: Duration,
    on_stale: OnStale,
    limits: Limits,
    clock: Arc<dyn Clock>,
    health: watch::Sender<MirrorHealth>,
    /// Signalled when the mirror turns fresh; the feed's watchdog waits on it while stale.
    fresh_signal: Notify,
}

impl Mirror {
    /// An empty mirror that follows a store: not ready (and so, under
    /// [`OnStale::FailClosed`], answering `Unavailable`) until its feed completes a full sync.
    pub fn new(settings: &RevocationSettings, clock: Arc<dyn Clock>) -> Self {
        Self::build(settings, clock, false)
    }

    /// An empty mirror that is the store itself (the in-process store): always ready, never
    /// stale.
    pub fn authoritative(settings: &RevocationSettings, clock: Arc<dyn Clock>) -> Self {
        Self::build(settings, clock, true)
    }

    /// The clock skew alarm: the skew the feed last measured against Redis is beyond half
    /// the leeway (THREATS F12).
    pub fn clock_skew_alarm(&self) -> bool {
        self.health
            .borrow()
            .clock_skew_ms
            .is_some_and(|ms| ms.unsigned_abs() > self.limits.leeway.unsigned_abs() * 500)
    }

    /// The clock this mirror judges expiry by (the process's).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn build(settings: &RevocationSettings, clock: Arc<dyn Clock>, authoritative: bool) -> Self {
        let (health, _) = watch::channel(MirrorHealth {
            ready: authoritative,
            fresh: authoritative,
            ..MirrorHealth::default()
        });
        Self {
            set: RwLock::new(RevocationSet::default()),
            authoritative,
            ready: AtomicBool::new(authoritative),
            origin: Instant::now(),
            last_heard: AtomicU64::new(0),
            registered: AtomicU64::new(0),
            max_staleness: settings.max_staleness,
            on_stale: settings.on_stale,
            limits: Limits {
                leeway: settings.leeway_secs(),
                watermark_retention: settings.watermark_retention_secs(),
            },
            clock,
            health,
            fresh_signal: Notify::new(),
        }
    }

    // A poisoned lock means a panic while writing; every write leaves the maps consistent
    // (single inserts and removals), so the data is still good and we keep serving it.
    fn read(&self) -> RwLockReadGuard<'_, RevocationSet> {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, RevocationSet> {
        self.set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies one confirmed revocation. Idempotent; returns whether the mirror changed.
    ///
    /// A revocation whose tokens are all invalid already (past `exp + leeway`, or a watermark
    /// past `before + 12 h + leeway`) is not stored.
    pub fn apply(&self, revocation: &Revocation) -> bool {
        let now = self.clock.unix_now();
        let changed = self.write().apply(revocation, now, &self.limits);
        if changed {
            self.health.send_modify(|h| h.changes += 1);
        }
        changed
    }

    /// Applies many confirmed revocations, taking the write lock for a bounded chunk at a time.
    /// Returns how many changed the mirror.
    pub fn apply_all<'a, I>(&self, revocations: I) -> usize
    where
        I: IntoIterator<Item = &'a Revocation>,
    {
        let now = self.clock.unix_now();
        let mut changed = 0;
        let mut iter = revocations.into_iter().peekable();
        while iter.peek().is_some() {
            let mut set = self.write();
            for revocation in iter.by_ref().take(BULK_CHUNK) {
                changed += usize::from(set.apply(revocation, now, &self.limits));
            }
        }
        if changed > 0 {
            self.health.send_modify(|h| h.changes += changed as u64);
        }
        changed
    }

    /// Merges token revocations given as `(jti, exp)` pairs; the bulk path of a full resync,
    /// which avoids building a [`Revocation`] per entry.
    pub(crate) fn merge_tokens<'a, I>(&self, tokens: I) -> usize
    where
        I: IntoIterator<Item = (&'a str, i64)>,
    {
        let now = self.clock.unix_now();
        let mut changed = 0;
        let mut iter = tokens.into_iter().peekable();
        while iter.peek().is_some() {
            let mut set = self.write();
            for (jti, expires_at) in iter.by_ref().take(BULK_CHUNK) {
                let prune_at = expires_at.saturating_add(self.limits.leeway);
                if prune_at <= now {
                    continue;
                }
                let prune_at = to_u32_secs(prune_at);
                let inserted = match compact_jti(jti) {
                    Some(key) => extend_u32(&mut set.tokens, key, prune_at),
                    None => extend_u32(&mut set.other_tokens, Box::from(jti), prune_at),
                };
                changed += usize::from(inserted);
            }
        }
        if changed > 0 {
            self.health.send_modify(|h| h.changes += changed as u64);
        }
        changed
    }

    /// Makes room for `total` token entries at once, so a full resync does not rehash the
    /// table while it grows.
    pub(crate) fn reserve_tokens(&self, total: usize) {
        let mut set = self.write();
        let additional = total.saturating_sub(set.tokens.len());
        set.tokens.reserve(additional);
    }

    /// Removes every entry that can no longer matter at the clock's current time. Returns how
    /// many were removed.
    ///
    /// Expired entries are found under the read lock, so lookups carry on meanwhile, and
    /// removed under short write locks.
    pub fn prune(&self) -> usize {
        let now = self.clock.unix_now();
        let expired_u32 = |prune_at: u32| i64::from(prune_at) <= now;
        let expired_wm = |before: i64| self.limits.watermark_expired(before, now);
        let (tokens, others, any_watermark) = {
            let set = self.read();
            let tokens: Vec<[u8; 16]> = set
                .tokens
                .iter()
                .filter(|(_, at)| expired_u32(**at))
                .map(|(key, _)| *key)
                .collect();
            let others: Vec<Box<str>> = set
                .other_tokens
                .iter()
                .filter(|(_, at)| expired_u32(**at))
                .map(|(key, _)| key.clone())
                .collect();
            let any_watermark = set.tenants.values().any(|b| expired_wm(*b))
                || set.keys.values().any(|b| expired_wm(*b))
                || set
                    .users
                    .values()
                    .flat_map(HashMap::values)
                    .any(|b| expired_wm(*b));
            (tokens, others, any_watermark)
        };
        let mut removed = 0;
        for chunk in tokens.chunks(BULK_CHUNK) {
            let mut set = self.write();
            for key in chunk {
                // Re-check under the write lock: a concurrent apply may have extended it.
                if set.tokens.get(key).is_some_and(|at| expired_u32(*at)) {
                    set.tokens.remove(key);
                    removed += 1;
                }
            }
        }
        let mut set = self.write();
        for key in &others {
            if set.other_tokens.get(key).is_some_and(|at| expired_u32(*at)) {
                set.other_tokens.remove(key);
                removed += 1;
            }
        }
        if any_watermark {
            let before = set.size().total();
            set.tenants.retain(|_, b| !expired_wm(*b));
            set.keys.retain(|_, b| !expired_wm(*b));
            for subjects in set.users.values_mut() {
                subjects.retain(|_, b| !expired_wm(*b));
            }
            set.users.retain(|_, subjects| !subjects.is_empty());
            removed += before - set.size().total();
        }
        // Give memory back after a wave of expiries; only when the table is mostly empty, so
        // the rehash is cheap.
        if set.tokens.len() * 4 < set.tokens.capacity() {
            let target = set.tokens.len() * 2;
            set.tokens.shrink_to(target);
        }
        drop(set);
        if removed > 0 {
            self.health.send_modify(|h| h.pruned += removed as u64);
        }
        removed
    }

    /// Every live entry as [`Revocation`]s, for tests, tooling and re-seeding. O(size).
    ///
    /// A token entry merged from Redis whose `jti` is not a [`TokenId`] (no edgetoken writes
    /// one, and it could match no verified token) is left out.
    pub fn snapshot(&self) -> Vec<Revocation> {
        let set = self.read();
        let leeway = self.limits.leeway;
        let token = |jti: TokenId, prune_at: u32| Revocation::Token {
            jti,
            expires_at: i64::from(prune_at) - leeway,
        };
        let mut out = Vec::with_capacity(set.size().total());
        // A compact key is 16 bytes written as 22 base64url characters: a valid token id.
        out.extend(
            set.tokens
                .iter()
                .map(|(k, at)| token(TokenId::from_trusted(expand_jti(k)), *at)),
        );
        out.extend(
            set.other_tokens
                .iter()
                .filter_map(|(k, at)| Some(token(TokenId::new(k).ok()?, *at))),
        );
        out.extend(set.watermarks());
        out
    }

    /// The compact token entries (as `(key, exp)`) and the watermarks: what a re-seed writes
    /// back, copied out cheaply so the read lock is held only for the copy.
    pub(crate) fn export(&self) -> Export {
        let set = self.read();
        let leeway = self.limits.leeway;
        Export {
            tokens: set
                .tokens
                .iter()
                .map(|(k, at)| (*k, i64::from(*at) - leeway))
                .collect(),
            other_tokens: set
                .other_tokens
                .iter()
                .map(|(k, at)| (k.clone(), i64::from(*at) - leeway))
                .collect(),
            watermarks: set.watermarks(),
        }
    }

    /// Entry counts, for metrics.
    pub fn size(&self) -> MirrorSize {
        self.read().size()
    }

    /// Estimated heap bytes held by the maps, for metrics and the memory bench.
    pub fn heap_bytes(&self) -> usize {
        self.read().heap_bytes()
    }

    /// Whether the first full sync completed (always true for the in-process store).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Time since Redis last confirmed this mirror's state; `Duration::MAX` before the first
    /// confirmation, and zero for the in-process store.
    pub fn staleness(&self) -> Duration {
        if self.authoritative {
            return Duration::ZERO;
        }
        match self.last_heard.load(Ordering::Acquire) {
            0 => Duration::MAX,
            stamp => {
                let heard = self.origin + Duration::from_nanos(stamp - 1);
                Instant::now().saturating_duration_since(heard)
            }
        }
    }

    /// Ready, and staleness below `max_staleness`: the state can be trusted.
    pub fn is_fresh(&self) -> bool {
        self.authoritative || (self.is_ready() && self.staleness() < self.max_staleness)
    }

    /// The configured staleness bound.
    pub fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// A receiver of [`MirrorHealth`] changes; await `changed()` or `wait_for` on it.
    pub fn health(&self) -> watch::Receiver<MirrorHealth> {
        self.health.subscribe()
    }

    /// Records that Redis confirmed the state as of `at` (kept monotonic).
    pub(crate) fn mark_heard(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let stamp = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.last_heard.fetch_max(stamp, Ordering::AcqRel);
        self.publish_fresh();
    }

    /// Records that the feed renewed this mirror's barrier registration at `at`.
    pub(crate) fn mark_registered(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let stamp = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.registered.fetch_max(stamp, Ordering::AcqRel);
    }

    /// Time since the feed last renewed this mirror's registration in the revocation
    /// barrier's roster; `None` while not registered (before the first full sync, or for the
    /// in-process store). Sampled by metrics; the verification path never reads it.
    pub fn registration_age(&self) -> Option<Duration> {
        match self.registered.load(Ordering::Acquire) {
            0 => None,
            stamp => {
                let renewed = self.origin + Duration::from_nanos(stamp - 1);
                Some(Instant::now().saturating_duration_since(renewed))
            }
        }
    }

    /// Marks the first full sync as complete.
    pub(crate) fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.health.send_modify(|h| h.ready = true);
        }
        self.publish_fresh();
    }

    fn publish_fresh(&self) {
        if !self.health.borrow().fresh && self.is_fresh() {
            self.health.send_modify(|h| h.fresh = true);
            self.fresh_signal.notify_one();
        }
    }

    /// Resolves once the mirror turned fresh (or immediately if it did since the last call).
    pub(crate) async fn fresh_notified(&self) {
        self.fresh_signal.notified().await;
    }

    /// The instant `max_staleness` after the last confirmation: when the mirror turns stale.
    pub(crate) fn stale_at(&self) -> Option<Instant> {
        match self.last_heard.load(Ordering::Acquire) {
            0 => None,
            stamp => Some(self.origin + Duration::from_nanos(stamp - 1) + self.max_staleness),
        }
    }

    /// Updates the published health.
    pub(crate) fn update_health(&self, update: impl FnOnce(&mut MirrorHealth)) {
        self.health.send_modify(update);
    }
}

impl RevocationSet {
    /// The watermarks as revocations. Every key of these maps was copied out of a
    /// [`Revocation`] by `apply`, so it is a valid identifier of its kind.
    fn watermarks(&self) -> Vec<Revocation> {
        let mut out = Vec::new();
        for (tenant, subjects) in &self.users {
            for (subject, before) in subjects {
                out.push(Revocation::User {
                    tenant: TenantId::from_trusted(tenant.to_string()),
                    subject: Subject::from_trusted(subject.to_string()),
                    before: *before,
                });
            }
        }
        out.extend(
            self.tenants
                .iter()
                .map(|(tenant, before)| Revocation::Tenant {
                    tenant: TenantId::from_trusted(tenant.to_string()),
                    before: *before,
                }),
        );
        out.extend(self.keys.iter().map(|(kid, before)| Revocation::Key {
            kid: KeyId::from_trusted(kid.to_string()),
            before: *before,
        }));
        out
    }
}

/// A copy of a mirror's entries, for re-seeding Redis.
#[derive(Debug, Default)]
pub(crate) struct Export {
    /// Compact token keys with their `exp`.
    pub(crate) tokens: Vec<([u8; 16], i64)>,
    /// Other `jti`s with their `exp`.
    pub(crate) other_tokens: Vec<(Box<str>, i64)>,
    /// User, tenant and key watermarks.
    pub(crate) watermarks: Vec<Revocation>,
}

impl Export {
    /// The token entries as `(jti, exp)`.
    pub(crate) fn token_entries(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        self.tokens
            .iter()
            .map(|(k, exp)| (expand_jti(k), *exp))
            .chain(
                self.other_tokens
                    .iter()
                    .map(|(k, exp)| (k.to_string(), *exp)),
            )
    }
}

impl RevocationCheck for Mirror {
    fn status(&self, token: &TokenFacts<'_>) -> RevocationStatus {
        // A known revocation is reported even from stale state: it can only be more current.
        if self.read().is_revoked(token) {
            RevocationStatus::Revoked
        } else if self.on_stale == OnStale::Serve || self.is_fresh() {
            RevocationStatus::NotRevoked
        } else {
            RevocationStatus::Unavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::revocation::testing::{Token, jti, kid, subject, tenant};

    const NOW: i64 = 1_800_000_000;
    const JTI: &str = "AAECAwQFBgcICQoLDA0ODw";

    fn mirror(clock: Arc<ManualClock>) -> Mirror {
        Mirror::authoritative(&RevocationSettings::default(), clock)
    }

    fn token(name: &str) -> Token {
        Token::new(name, NOW - 60, NOW + 3600)
    }

    #[test]
    fn compact_jti_round_trips_canonical_ids_only() {
        let key = compact_jti(JTI).unwrap();
        assert_eq!(key, core::array::from_fn(|i| u8::try_from(i).unwrap()));
        assert_eq!(expand_jti(&key), JTI);
        // Same 16 bytes with non-zero trailing bits: a different string, so not compact.
        assert_eq!(compact_jti("AAECAwQFBgcICQoLDA0ODx"), None);
        assert_eq!(compact_jti("AAECAwQFBgcICQoLDA0ODw=="), None);
        assert_eq!(compact_jti("AAECAwQFBgcICQoLDA0OD+"), None);
    }

    #[test]
    fn token_lookup_is_exact_and_case_sensitive() {
        let m = mirror(Arc::new(ManualClock::at(NOW)));
        m.apply(&Revocation::Token {
            jti: jti(JTI),
            expires_at: NOW + 3600,
        });
        m.apply(&Revocation::Token {
            jti: jti("jti-revoked-0001"),
            expires_at: NOW + 3600,
        });
        assert_eq!(m.status(&token(JTI).facts()), RevocationStatus::Revoked);
        assert_eq!(
            m.status(&token("jti-revoked-0001").facts()),
            RevocationStatus::Revoked
        );
        assert_eq!(
            m.status(&token("JTI-REVOKED-0001").facts()),
            RevocationStatus::NotRevoked
        );
        assert_eq!(
            m.status(&token("AAECAwQFBgcICQoLDA0ODx").facts()),
            RevocationStatus::NotRevoked
        );
    }

    #[test]
    fn watermark_revokes_tokens_issued_at_or_before_it_only() {
        let m = mirror(Arc::new(ManualClock::at(NOW)));
        m.apply(&Revocation::User {
            tenant: tenant("acme"),
            subject: subject("alice"),
            before: NOW - 60,
        });
        let mut token = token(JTI);
        assert_eq!(m.status(&token.facts()), RevocationStatus::Revoked);
        token.issued_at = NOW - 59;
        assert_eq!(m.status(&token.facts()), RevocationStatus::NotRevoked);
        token.issued_at = NOW - 60;
        token.subject = subject("bob");
        assert_eq!(m.status(&token.facts()), RevocationStatus::NotRevoked);
        token.subject = subject("alice");
        token.tenant = tenant("other");
        assert_eq!(m.status(&token.facts()), RevocationStatus::NotRevoked);
    }

    #[test]
    fn watermarks_only_rise() {
        let m = mirror(Arc::new(ManualClock::at(NOW)));
        let tenant = |before| Revocation::Tenant {
            tenant: tenant("acme"),
            before,
        };
        assert!(m.apply(&tenant(NOW - 10)));
        assert!(!m.apply(&tenant(NOW - 100)));
        assert!(!m.apply(&tenant(NOW - 10)));
        assert!(m.apply(&tenant(NOW)));
        assert_eq!(m.snapshot(), vec![tenant(NOW)]);
    }

    #[test]
    fn entries_are_pruned_exactly_when_no_covered_token_can_be_valid() {
        let clock = Arc::new(ManualClock::at(NOW));
        let m = mirror(clock.clone());
        m.apply(&Revocation::Token {
            jti: jti(JTI),
            expires_at: NOW + 100,
        });
        m.apply(&Revocation::Key {
            kid: kid("k1"),
            before: NOW,
        });
        // Valid until exp + leeway (30 s): kept one second before.
        clock.set(NOW + 129);
        assert_eq!(m.prune(), 0);
        clock.set(NOW + 130);
        assert_eq!(m.prune(), 1);
        assert_eq!(m.size().tokens, 0);
        // The key watermark lasts 12 h + leeway after `before`.
        clock.set(NOW + 12 * 3600 + 29);
        assert_eq!(m.prune(), 0);
        clock.set(NOW + 12 * 3600 + 30);
        assert_eq!(m.prune(), 1);
        assert_eq!(m.size().total(), 0);
    }

    #[test]
    fn apply_skips_revocations_of_already_invalid_tokens() {
        let m = mirror(Arc::new(ManualClock::at(NOW)));
        assert!(!m.apply(&Revocation::Token {
            jti: jti(JTI),
            expires_at: NOW - 30,
        }));
        assert_eq!(m.size().total(), 0);
    }

    #[test]
    fn mirror_without_sync_is_unavailable_unless_serving_stale() {
        let clock = Arc::new(ManualClock::at(NOW));
        let closed = Mirror::new(&RevocationSettings::default(), clock.clone());
        assert!(!closed.is_ready());
        assert_eq!(closed.staleness(), Duration::MAX);
        assert_eq!(
            closed.status(&token(JTI).facts()),
            RevocationStatus::Unavailable
        );
        let serve = Mirror::new(
            &RevocationSettings {
                on_stale: OnStale::Serve,
                ..RevocationSettings::default()
            },
            clock,
        );
        assert_eq!(
            serve.status(&token(JTI).facts()),
            RevocationStatus::NotRevoked
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mirror_turns_unavailable_once_staleness_reaches_the_bound() {
        let settings = RevocationSettings {
            max_staleness: Duration::from_secs(5),
            ..RevocationSettings::default()
        };
        let m = Mirror::new(&settings, Arc::new(ManualClock::at(NOW)));
        m.mark_ready();
        m.mark_heard(Instant::now());
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(m.status(&token(JTI).facts()), RevocationStatus::NotRevoked);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(m.status(&token(JTI).facts()), RevocationStatus::Unavailable);
        m.mark_heard(Instant::now());
        assert_eq!(m.status(&token(JTI).facts()), RevocationStatus::NotRevoked);
    }

    #[test]
    fn stale_mirror_still_reports_known_revocations() {
        let m = Mirror::new(
            &RevocationSettings::default(),
            Arc::new(ManualClock::at(NOW)),
        );
        m.apply(&Revocation::Token {
            jti: jti(JTI),
            expires_at: NOW + 60,
        });
        assert_eq!(m.status(&token(JTI).facts()), RevocationStatus::Revoked);
    }

    proptest::proptest! {
        #[test]
        fn compact_jti_agrees_with_strict_base64(bytes in proptest::prelude::any::<[u8; 16]>(),
                                                 noise in "[A-Za-z0-9_=+/-]{22}") {
            let canonical = URL_SAFE_NO_PAD.encode(bytes);
            proptest::prop_assert_eq!(compact_jti(&canonical), Some(bytes));
            let strict = URL_SAFE_NO_PAD.decode(noise.as_bytes()).ok()
                .and_then(|v| <[u8; 16]>::try_from(v).ok());
            proptest::prop_assert_eq!(compact_jti(&noise), strict);
        }

        #[test]
        fn apply_order_and_duplicates_do_not_change_the_result(
            ops in proptest::collection::vec((0_u8..4, 0_u8..4, -50_i64..50), 0..40),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let revocations: Vec<Revocation> = ops
                .iter()
                .map(|(kind, id, offset)| {
                    let id = format!("id{id}");
                    let at = NOW + offset;
                    match kind {
                        0 => Revocation::Token { jti: jti(&id), expires_at: at },
                        1 => Revocation::User { tenant: tenant("t"), subject: subject(&id), before: at },
                        2 => Revocation::Tenant { tenant: tenant(&id), before: at },
                        _ => Revocation::Key { kid: kid(&id), before: at },
                    }
                })
                .collect();
            let forward = mirror(Arc::new(ManualClock::at(NOW)));
            forward.apply_all(&revocations);
            let shuffled = mirror(Arc::new(ManualClock::at(NOW)));
            let mut order: Vec<usize> = (0..revocations.len()).collect();
            // A cheap deterministic shuffle driven by `seed`, with every entry applied twice.
            order.sort_by_key(|i| (*i as u64).wrapping_mul(seed | 1).rotate_left(17));
            for i in order.iter().chain(order.iter().rev()) {
                shuffled.apply(&revocations[*i]);
            }
            let mut a = forward.snapshot();
            let mut b = shuffled.snapshot();
            let key = |r: &Revocation| format!("{r:?}");
            a.sort_by_key(key);
            b.sort_by_key(key);
            proptest::prop_assert_eq!(a, b);
        }
    }
}
