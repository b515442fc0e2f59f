//! The request path of usage recording and the flusher that collects it.
//!
//! # How the warm path avoids shared locks
//!
//! Each worker thread keeps, per recorder, a table of the tokens it accepted this interval:
//! jti → a [`Slot`] (uses, last-use second) plus the client it last reported. The table is
//! `thread_local!`, so looking a token up takes no lock and touches no other thread's memory.
//! A slot is written by its one thread with plain atomic loads and stores (no read-modify-write
//! instruction) and only read by the flusher, which remembers how many uses it reported.
//!
//! The handoff is a `std::sync::mpsc` channel (a lock-free list): a thread sends a slot when
//! it first sees a token in an interval (allocating it then, once), and a note when the
//! token's client (address or user agent) changed. The client is looked at, and the caller's
//! closure that reads the headers called, at most once a second per slot. A repeat use is
//! therefore a clock read, a lookup in the thread's table and two stores to its own slot: no
//! lock, no allocation, no shared write.
//!
//! The flusher bumps an interval counter (read with a relaxed load on each use); a thread
//! that sees it changed empties its table, so idle tokens leave every tier and tables stay
//! small. The flusher keeps each slot until no thread holds it any more, after draining it.
//!
//! Bounds: at most `2 × max_entries` slots are started per interval (beyond, the use is
//! dropped and counted); a flush writes at most `max_entries` tokens, the most recently used,
//! and counts the rest as dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::time::Duration;

use time::OffsetDateTime;

use super::store::{TokenUse, UsageStore};
use super::{Presenter, UsageSettings, UsageStats, clean_agent};
use crate::clock::Clock;
use crate::token::{Claims, TenantId, TokenId};

/// Longest user agent kept, in bytes (after removing control characters).
pub const AGENT_MAX_BYTES: usize = 128;

/// Longest time one pipeline of a flush may take before the rest of its batch is dropped.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Most tokens written in one pipeline. An ordinary interval is one pipeline; an interval of
/// many tokens (every request a new token) is written in several, one after the other, so no
/// single pipeline outgrows [`FLUSH_TIMEOUT`] on a loaded Redis and a failure loses less.
const FLUSH_CHUNK: usize = 10_000;

/// Largest per-thread table kept (emptied) from one interval to the next.
const RETAINED_CAPACITY: usize = 4_096;

/// Distinguishes recorders in one process (tests run several services in one binary), so
/// each has its own thread-local table.
static NEXT_RECORDER: AtomicU64 = AtomicU64::new(1);

/// Which token a slot counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    tenant: TenantId,
    id: TokenId,
    expires_at: OffsetDateTime,
}

/// One token's uses on one thread: written by that thread only, read by the flusher.
#[derive(Debug)]
struct Slot {
    token: TokenKey,
    /// Uses since the slot was made (the flusher remembers how many it reported).
    uses: AtomicU64,
    /// The latest use, Unix seconds.
    last_at: AtomicI64,
}

impl Slot {
    /// Counts a use at `now`. Only the owning thread writes, so plain loads and stores do:
    /// no read-modify-write instruction on the request path.
    fn count(&self, now: i64) {
        let uses = self.uses.load(Ordering::Relaxed);
        self.uses.store(uses + 1, Ordering::Release);
        if now > self.last_at.load(Ordering::Relaxed) {
            self.last_at.store(now, Ordering::Release);
        }
    }
}

/// The client of a use, as recorded: the address and the raw user agent (already cut to
/// [`AGENT_MAX_BYTES`]; cleaned by the flusher, off the request path).
#[derive(Debug, PartialEq, Eq)]
struct Client {
    address: Option<IpAddr>,
    agent: Box<[u8]>,
}

impl Client {
    fn is(&self, address: Option<IpAddr>, agent: &[u8]) -> bool {
        self.address == address && *self.agent == *agent
    }
}

/// What a thread hands the flusher: a slot (the first time it is sent) and, with it, the
/// client of the use at `at`.
#[derive(Debug)]
struct Note {
    slot: Arc<Slot>,
    at: i64,
    client: Arc<Client>,
}

/// What one thread holds for one token this interval.
#[derive(Debug)]
struct Held {
    slot: Arc<Slot>,
    client: Arc<Client>,
    client_at: i64,
}

/// One thread's table for one recorder.
#[derive(Debug)]
struct Table {
    recorder: u64,
    alive: Weak<Shared>,
    interval: u64,
    sender: mpsc::Sender<Note>,
    held: HashMap<Box<str>, Held>,
}

thread_local! {
    /// This thread's tables, one per live recorder (one in a normal process).
    static TABLES: RefCell<Vec<Table>> = const { RefCell::new(Vec::new()) };
}

/// What the request path and the flusher share; only read on a repeat use.
#[derive(Debug)]
struct Shared {
    id: u64,
    record_address: bool,
    /// Slots started per interval, at most.
    max_started: usize,
    interval: AtomicU64,
    started: AtomicUsize,
    sender: mpsc::Sender<Note>,
    stats: Stats,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Stats {
    flushed: AtomicU64,
    dropped_store: AtomicU64,
    dropped_full: AtomicU64,
    failed_flushes: AtomicU64,
}

/// A slot the flusher tracks, with the latest client noted for it and not yet flushed.
#[derive(Debug)]
struct Tracked {
    slot: Arc<Slot>,
    /// The slot's use count at the last flush.
    reported: u64,
    client: Option<(i64, Arc<Client>)>,
}

/// The flusher's side: the channel's receiving end and every slot it was handed.
#[derive(Debug)]
struct Collector {
    receiver: mpsc::Receiver<Note>,
    tracked: HashMap<usize, Tracked>,
}

/// The flusher's state, shared by its task and [`UsageRecorder::flush_now`].
#[derive(Debug)]
struct Flusher {
    collector: tokio::sync::Mutex<Collector>,
    store: UsageStore,
    retention: Duration,
    max_entries: usize,
    record_address: bool,
}

/// Records accepted token uses and flushes them to the usage store. Cheap to clone; the
/// flusher stops once every clone is dropped.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    shared: Arc<Shared>,
    flusher: Arc<Flusher>,
}

impl UsageRecorder {
    /// A recorder writing to `store` (on a connection of its own), whose keys expire
    /// `retention` after their token, and its flusher, every `settings.flush`.
    ///
    /// The flusher runs on its own thread with its own single-threaded runtime and its own
    /// store connection: collecting a large interval (up to `2 × max_entries` slots), packing
    /// its pipeline and reading the replies are milliseconds of work that must never hold a
    /// request worker. On that thread the kernel interleaves it with the workers, where a
    /// task on the request runtime would run to completion before the requests queued behind
    /// it. If the thread cannot be started, the flusher runs as a task on the current runtime
    /// (call from within a Tokio runtime).
    pub fn start(
        settings: UsageSettings,
        store: &UsageStore,
        retention: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let recorder = Self::new(settings, store.with_own_connection(), retention, clock);
        let flushes = flush_every(
            settings.flush,
            Arc::downgrade(&recorder.shared),
            Arc::clone(&recorder.flusher),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let spawned = match runtime {
            Ok(runtime) => std::thread::Builder::new()
                .name("edgetoken-usage".to_owned())
                .spawn(move || runtime.block_on(flushes)),
            Err(error) => Err(error),
        };
        if let Err(error) = spawned {
            tracing::warn!(%error, "no thread for the usage flusher; it runs on the request runtime");
            tokio::spawn(flush_every(
                settings.flush,
                Arc::downgrade(&recorder.shared),
                Arc::clone(&recorder.flusher),
            ));
        }
        recorder
    }

    /// A recorder without a flusher task: flush with [`UsageRecorder::flush_now`].
    pub fn new(
        settings: UsageSettings,
        store: UsageStore,
        retention: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel();
        let max_entries = settings.max_entries.max(1);
        Self {
            shared: Arc::new(Shared {
                id: NEXT_RECORDER.fetch_add(1, Ordering::Relaxed),
                record_address: settings.record_address,
                max_started: max_entries.saturating_mul(2),
                interval: AtomicU64::new(0),
                started: AtomicUsize::new(0),
                sender,
                stats: Stats::default(),
                clock,
            }),
            flusher: Arc::new(Flusher {
                collector: tokio::sync::Mutex::new(Collector {
                    receiver,
                    tracked: HashMap::new(),
                }),
                store,
                retention,
                max_entries,
                record_address: settings.record_address,
            }),
        }
    }

    /// Whether the client address and user agent are recorded: when not, the caller need not
    /// work them out.
    pub fn records_address(&self) -> bool {
        self.shared.record_address
    }

    /// The store usage is flushed to (and the list API reads).
    pub fn store(&self) -> &UsageStore {
        &self.flusher.store
    }

    /// Counters since start.
    pub fn stats(&self) -> UsageStats {
        let stats = &self.shared.stats;
        UsageStats {
            flushed: stats.flushed.load(Ordering::Relaxed),
            dropped_store: stats.dropped_store.load(Ordering::Relaxed),
            dropped_full: stats.dropped_full.load(Ordering::Relaxed),
            failed_flushes: stats.failed_flushes.load(Ordering::Relaxed),
        }
    }

    /// Records one accepted use of the token of `claims`. `presenter` says who presented it;
    /// it is called only when the client is recorded and this thread has not looked at this
    /// token's client yet this second, so working out an address is not a per-request cost.
    /// Never blocks and never fails: at worst the use is dropped and counted.
    pub fn record<'a>(&self, claims: &Claims, presenter: impl FnOnce() -> Presenter<'a>) {
        let shared = &*self.shared;
        let now = shared.clock.unix_now();
        let interval = shared.interval.load(Ordering::Relaxed);
        TABLES.with_borrow_mut(|tables| {
            let table = table_for(tables, &self.shared);
            if table.interval != interval {
                // After a burst of new tokens the table's capacity stays with it; lookups in a
                // large, nearly empty table miss the cache, so a large one is let go.
                if table.held.capacity() > RETAINED_CAPACITY {
                    table.held = HashMap::new();
                } else {
                    table.held.clear();
                }
                table.interval = interval;
            }
            if let Some(held) = table.held.get_mut(claims.token_id.as_str())
                && held.slot.token.tenant == claims.tenant
            {
                held.slot.count(now);
                // The client is looked at once a second per slot: the latest use's client is
                // known to the second, like its time, and neither reading headers nor a token
                // shared by clients that alternate costs anything per request.
                if now > held.client_at {
                    held.client_at = now;
                    let (address, agent) = client_of(shared.record_address, presenter);
                    if !held.client.is(address, agent) {
                        let client = Arc::new(Client {
                            address,
                            agent: agent.into(),
                        });
                        held.client = Arc::clone(&client);
                        let note = Note {
                            slot: Arc::clone(&held.slot),
                            at: now,
                            client,
                        };
                        // A closed channel means the recorder is being dropped: nothing to do.
                        let _ = table.sender.send(note);
                    }
                }
                return;
            }
            if shared.started.fetch_add(1, Ordering::Relaxed) >= shared.max_started {
                shared.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let (address, agent) = client_of(shared.record_address, presenter);
            let slot = Arc::new(Slot {
                token: TokenKey {
                    tenant: claims.tenant.clone(),
                    id: claims.token_id.clone(),
                    expires_at: claims.expires_at,
                },
                uses: AtomicU64::new(1),
                last_at: AtomicI64::new(now),
            });
            let client = Arc::new(Client {
                address,
                agent: agent.into(),
            });
            let note = Note {
                slot: Arc::clone(&slot),
                at: now,
                client: Arc::clone(&client),
            };
            if table.sender.send(note).is_ok() {
                table.held.insert(
                    claims.token_id.as_str().into(),
                    Held {
                        slot,
                        client,
                        client_at: now,
                    },
                );
            }
        });
    }

    /// Collects every thread's aggregate and writes it to the store now (what the flusher
    /// task does every interval); waits for a flush already running.
    pub async fn flush_now(&self) {
        self.flusher.flush(&self.shared).await;
    }
}

/// Flushes every `period` until every clone of the recorder is gone.
async fn flush_every(period: Duration, shared: Weak<Shared>, flusher: Arc<Flusher>) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        flusher.flush(&shared).await;
    }
}

/// The address and the user agent (cut to [`AGENT_MAX_BYTES`]) to record, if any.
fn client_of<'a>(
    record_address: bool,
    presenter: impl FnOnce() -> Presenter<'a>,
) -> (Option<IpAddr>, &'a [u8]) {
    if !record_address {
        return (None, &[]);
    }
    let presenter = presenter();
    let agent = presenter.agent.unwrap_or_default();
    (
        presenter.address,
        agent.get(..AGENT_MAX_BYTES).unwrap_or(agent),
    )
}

/// This thread's table for the recorder of `shared`, made on its first use (dropping tables
/// of recorders that are gone).
fn table_for<'a>(tables: &'a mut Vec<Table>, shared: &Arc<Shared>) -> &'a mut Table {
    let position = if let Some(position) = tables.iter().position(|t| t.recorder == shared.id) {
        position
    } else {
        tables.retain(|t| t.alive.strong_count() > 0);
        tables.push(Table {
            recorder: shared.id,
            alive: Arc::downgrade(shared),
            interval: shared.interval.load(Ordering::Relaxed),
            sender: shared.sender.clone(),
            held: HashMap::new(),
        });
        tables.len() - 1
    };
    &mut tables[position]
}

/// One token's aggregate across threads, before it is written.
#[derive(Debug)]
struct Merged {
    uses: u64,
    last_at: i64,
    client: Option<(i64, Arc<Client>)>,
}

impl Flusher {
    /// One flush: collect, bound, write in pipelines of at most [`FLUSH_CHUNK`] tokens, each
    /// with a timeout; at the first failure, drop what is left of the batch and count it.
    async fn flush(&self, shared: &Shared) {
        let mut collector = self.collector.lock().await;
        let batch = self.collect(&mut collector, shared);
        let stats = &shared.stats;
        for (index, chunk) in batch.chunks(FLUSH_CHUNK).enumerate() {
            let count = |tokens: usize| u64::try_from(tokens).unwrap_or(u64::MAX);
            let outcome =
                tokio::time::timeout(FLUSH_TIMEOUT, self.store.merge(chunk, self.retention)).await;
            let failure = match outcome {
                Ok(Ok(first_uses)) => {
                    stats
                        .flushed
                        .fetch_add(count(chunk.len()), Ordering::Relaxed);
                    for token in chunk
                        .iter()
                        .zip(first_uses)
                        .filter_map(|(t, f)| f.then_some(t))
                    {
                        tracing::info!(
                            target: "audit",
                            event = "first_use",
                            tenant = %token.tenant,
                            jti = token.id.as_str(),
                            from = token.from.as_deref().unwrap_or("-"),
                        );
                    }
                    continue;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {FLUSH_TIMEOUT:?}"),
            };
            // The store is down or overloaded: the rest of the batch would fare no better,
            // and waiting for it would only make the next flush late.
            let left = batch.len() - index * FLUSH_CHUNK;
            stats
                .dropped_store
                .fetch_add(count(left), Ordering::Relaxed);
            stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error = failure,
                tokens = left,
                "usage flush failed; this interval's usage is dropped"
            );
            break;
        }
    }

    /// Starts a new interval and merges what every thread recorded since the last flush.
    fn collect(&self, collector: &mut Collector, shared: &Shared) -> Vec<TokenUse> {
        shared.interval.fetch_add(1, Ordering::Relaxed);
        shared.started.store(0, Ordering::Relaxed);
        while let Ok(note) = collector.receiver.try_recv() {
            let key = Arc::as_ptr(&note.slot).addr();
            let tracked = collector.tracked.entry(key).or_insert_with(|| Tracked {
                slot: Arc::clone(&note.slot),
                reported: 0,
                client: None,
            });
            if tracked.client.as_ref().is_none_or(|(at, _)| note.at >= *at) {
                tracked.client = Some((note.at, note.client));
            }
        }
        let mut merged: HashMap<TokenKey, Merged> = HashMap::new();
        collector.tracked.retain(|_, tracked| {
            // Checked before draining: once only the flusher holds a slot, no thread can add
            // to it, so this drain is its last.
            let orphan = Arc::strong_count(&tracked.slot) == 1;
            let total = tracked.slot.uses.load(Ordering::Acquire);
            let uses = total - tracked.reported;
            tracked.reported = total;
            let client = tracked.client.take();
            if uses > 0 || client.is_some() {
                let last_at = tracked.slot.last_at.load(Ordering::Acquire);
                let entry = merged.entry(tracked.slot.token.clone()).or_insert(Merged {
                    uses: 0,
                    last_at,
                    client: None,
                });
                entry.uses += uses;
                entry.last_at = entry.last_at.max(last_at);
                if let Some((at, client)) = client
                    && entry.client.as_ref().is_none_or(|(seen, _)| at >= *seen)
                {
                    entry.client = Some((at, client));
                }
            }
            !orphan
        });
        let mut batch: Vec<(TokenKey, Merged)> = merged.into_iter().collect();
        if batch.len() > self.max_entries {
            batch.sort_unstable_by_key(|(_, m)| std::cmp::Reverse(m.last_at));
            let dropped = batch.len() - self.max_entries;
            batch.truncate(self.max_entries);
            shared.stats.dropped_full.fetch_add(
                u64::try_from(dropped).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        batch
            .into_iter()
            .filter(|(_, m)| m.uses > 0)
            .map(|(token, m)| {
                let client = m.client.map(|(_, c)| c).filter(|_| self.record_address);
                TokenUse {
                    tenant: token.tenant,
                    id: token.id,
                    expires_at: token.expires_at,
                    uses: m.uses,
                    last_at: OffsetDateTime::from_unix_timestamp(m.last_at)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    from: client
                        .as_ref()
                        .and_then(|c| c.address)
                        .map(|a| a.to_canonical().to_string()),
                    agent: client
                        .as_ref()
                        .map(|c| clean_agent(&c.agent))
                        .filter(|a| !a.is_empty()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::usage::MemoryUsage;

    fn claims(id: &str, tenant: &str) -> Claims {
        Claims {
            issuer: "i".into(),
            audience: "a".into(),
            subject: "alice".parse().unwrap(),
            tenant: tenant.parse().unwrap(),
            scope: crate::permissions::Scope::parse_claim("runs:read").unwrap(),
            issued_at: OffsetDateTime::from_unix_timestamp(1_000).unwrap(),
            not_before: OffsetDateTime::from_unix_timestamp(1_000).unwrap(),
            expires_at: OffsetDateTime::from_unix_timestamp(5_000).unwrap(),
            token_id: id.parse().unwrap(),
            kid: crate::keys::KeyId::new(&"k".repeat(43)).unwrap(),
        }
    }

    fn recorder(max_entries: usize, clock: &Arc<ManualClock>) -> UsageRecorder {
        let clock: Arc<dyn Clock> = clock.clone();
        let store = UsageStore::Memory(MemoryUsage::new(Arc::clone(&clock)));
        UsageRecorder::new(
            UsageSettings {
                max_entries,
                ..UsageSettings::default()
            },
            store,
            Duration::from_mins(1),
            clock,
        )
    }

    fn presenter(address: &str, agent: &'static [u8]) -> Presenter<'static> {
        Presenter {
            address: Some(address.parse().unwrap()),
            agent: Some(agent),
        }
    }

    #[tokio::test]
    async fn uses_from_many_threads_merge_to_one_token_with_the_latest_client() {
        let clock = Arc::new(ManualClock::at(2_000));
        let recorder = recorder(100, &clock);
        let token = claims("aaaaaaaaaaaaaaaaaaaaaa", "acme");
        // Joined threads (not scoped ones, whose thread-local destructors may still be running
        // when the scope returns), so their tables are gone when the flusher collects.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (recorder, token) = (recorder.clone(), token.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        recorder.record(&token, || presenter("10.0.0.1", b"curl"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        clock.advance(3);
        recorder.record(&token, || presenter("10.0.0.2", b"agent\n2"));
        let mut collector = recorder.flusher.collector.lock().await;
        let batch = recorder.flusher.collect(&mut collector, &recorder.shared);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].uses, 4001);
        assert_eq!(batch[0].last_at.unix_timestamp(), 2_003);
        assert_eq!(batch[0].from.as_deref(), Some("10.0.0.2"));
        assert_eq!(batch[0].agent.as_deref(), Some("agent2"));
        // Drained: the next interval starts empty, and threads that ended freed their slots.
        let again = recorder.flusher.collect(&mut collector, &recorder.shared);
        assert!(again.is_empty());
        assert!(
            collector.tracked.len() <= 1,
            "only this thread's slot may remain"
        );
    }

    #[test]
    fn the_client_is_worked_out_once_a_second_per_token_not_per_request() {
        let clock = Arc::new(ManualClock::at(2_000));
        let recorder = recorder(100, &clock);
        let token = claims("hhhhhhhhhhhhhhhhhhhhhh", "acme");
        let asked = std::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            presenter("10.0.0.1", b"curl")
        };
        for _ in 0..1000 {
            recorder.record(&token, ask);
        }
        assert_eq!(asked.get(), 1, "once for the new slot");
        clock.advance(1);
        for _ in 0..1000 {
            recorder.record(&token, ask);
        }
        assert_eq!(asked.get(), 2, "once more in the next second");
    }

    #[tokio::test]
    async fn record_address_off_keeps_neither_address_nor_agent() {
        let clock = Arc::new(ManualClock::at(2_000));
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let recorder = UsageRecorder::new(
            UsageSettings {
                record_address: false,
                ..UsageSettings::default()
            },
            UsageStore::Memory(MemoryUsage::new(Arc::clone(&dyn_clock))),
            Duration::from_mins(1),
            dyn_clock,
        );
        recorder.record(&claims("bbbbbbbbbbbbbbbbbbbbbb", "acme"), || {
            presenter("10.0.0.1", b"curl")
        });
        let mut collector = recorder.flusher.collector.lock().await;
        let batch = recorder.flusher.collect(&mut collector, &recorder.shared);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            (batch[0].from.as_deref(), batch[0].agent.as_deref()),
            (None, None)
        );
    }

    #[tokio::test]
    async fn beyond_the_bound_the_oldest_tokens_are_dropped_and_counted() {
        let clock = Arc::new(ManualClock::at(2_000));
        let recorder = recorder(2, &clock);
        for (n, id) in [
            "cccccccccccccccccccccc",
            "dddddddddddddddddddddd",
            "eeeeeeeeeeeeeeeeeeeeee",
        ]
        .iter()
        .enumerate()
        {
            clock.advance(1);
            recorder.record(&claims(id, "acme"), Presenter::default);
            assert_eq!(recorder.stats().dropped_full, 0, "token {n}");
        }
        for id in ["ffffffffffffffffffffff", "gggggggggggggggggggggg"] {
            recorder.record(&claims(id, "acme"), Presenter::default);
        }
        // Five started against a bound of 2 × 2: the fifth is refused at once.
        assert_eq!(recorder.stats().dropped_full, 1);
        let mut collector = recorder.flusher.collector.lock().await;
        let batch = recorder.flusher.collect(&mut collector, &recorder.shared);
        assert_eq!(batch.len(), 2);
        assert_eq!(recorder.stats().dropped_full, 3);
        assert!(
            batch
                .iter()
                .all(|u| u.id.as_str() != "cccccccccccccccccccccc")
        );
    }

    #[tokio::test]
    async fn an_interval_larger_than_one_pipeline_is_written_whole() {
        let clock = Arc::new(ManualClock::at(2_000));
        let tokens = FLUSH_CHUNK * 2 + 7;
        let recorder = recorder(tokens, &clock);
        let ids: Vec<String> = (0..tokens).map(|n| format!("{n:0>22}")).collect();
        for id in &ids {
            recorder.record(&claims(id, "acme"), Presenter::default);
        }
        recorder.flush_now().await;
        let stats = recorder.stats();
        assert_eq!(stats.flushed, u64::try_from(tokens).unwrap());
        assert_eq!((stats.dropped_store, stats.failed_flushes), (0, 0));
        let tenant: TenantId = "acme".parse().unwrap();
        let last: Vec<&str> = ids.iter().rev().take(3).map(String::as_str).collect();
        let stored = recorder.store().of_tokens(&tenant, &last).await.unwrap();
        assert_eq!(stored.len(), 3, "the last pipeline's tokens are stored too");
    }
}
