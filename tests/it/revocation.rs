//! Revocation engine against real `redis-server` processes (SPEC §3, THREATS §4).
//!
//! Each test owns its Redis (or uses `REDIS_URL` when it injects no fault) and its own key
//! prefix. Propagation is awaited through the mirror's health channel, which fires on every
//! applied change, resync, disconnect and staleness transition: no test sleeps to synchronise.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::clock::{Clock, ManualClock, SystemClock};
use edgetoken::revocation::{
    Mirror, MirrorHealth, OnStale, RedisFeed, RedisStore, Revocation, RevocationCheck,
    RevocationEngine, RevocationSettings, RevocationStatus, RevocationStore, StoreError, StoreKind,
    TokenFacts,
};
use edgetoken::token::TokenId;
use futures_util::StreamExt as _;
use rand_core::{OsRng, RngCore};
use redis::Commands as _;

use crate::support::delay_proxy::DelayProxy;
use crate::support::eventually::eventually;
use crate::support::ids::{Facts, jti, kid, subject, tenant};
use crate::support::redis::{RedisServer, TestRedis};

/// Upper bound for any awaited event; generous for a loaded 2-core CI box.
const WAIT: Duration = Duration::from_secs(15);
/// Revocations published while F4 kills the feed connection.
const TOTAL: usize = 400;
/// Revocations in the F6 burst.
const BURST: usize = 100_000;

fn random_id() -> String {
    let mut bytes = [0_u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random_jti() -> TokenId {
    jti(&random_id())
}

fn now() -> i64 {
    SystemClock.unix_now()
}

/// [`settings`] for `redis`, cleaned up afterwards if `redis` is shared.
fn settings_for(redis: &TestRedis) -> RevocationSettings {
    let settings = settings(&redis.url());
    redis.track_prefix(&settings.key_prefix);
    settings
}

/// Settings with small timings so fault tests stay fast, and a fresh prefix.
fn settings(url: &str) -> RevocationSettings {
    RevocationSettings {
        redis_url: Some(url.to_owned()),
        key_prefix: format!("it-{}", random_id()),
        max_staleness: Duration::from_secs(2),
        heartbeat: Duration::from_millis(100),
        command_timeout: Duration::from_millis(500),
        ..RevocationSettings::default()
    }
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn facts(name: &str) -> Facts {
    Facts::of(name, now() - 60, now() + 3600)
}

fn token(name: &str) -> Revocation {
    Revocation::Token {
        jti: jti(name),
        expires_at: now() + 3600,
    }
}

/// Waits until `done` holds, re-checking on every health change of `mirror`.
async fn wait_until(
    mirror: &Mirror,
    what: &str,
    mut done: impl FnMut(&Mirror, &MirrorHealth) -> bool,
) {
    let mut health = mirror.health();
    let waited = tokio::time::timeout(WAIT, health.wait_for(|h| done(mirror, h))).await;
    match waited {
        Ok(Ok(_)) => {}
        Ok(Err(closed)) => panic!("mirror health channel closed waiting for {what}: {closed}"),
        Err(elapsed) => panic!(
            "{elapsed}: timed out after {WAIT:?} waiting for {what}; health: {:?}",
            *mirror.health().borrow()
        ),
    }
}

async fn wait_revoked(mirror: &Mirror, jti: &str) {
    wait_until(mirror, &format!("{jti} revoked"), |m, _| {
        m.status(&facts(jti).get()) == RevocationStatus::Revoked
    })
    .await;
}

async fn wait_ready(mirror: &Mirror) {
    wait_until(mirror, "first sync", |m, _| m.is_ready() && m.is_fresh()).await;
}

/// The store's entries, read straight from the documented key layout.
fn store_state(admin: &mut redis::Connection, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (set, kind) in [("tok", 0), ("usr", 1), ("ten", 2), ("kid", 3)] {
        let entries: Vec<(String, f64)> = admin
            .zrange_withscores(format!("{{{prefix}}}:{set}"), 0, -1)
            .unwrap();
        for (member, score) in entries {
            #[expect(clippy::cast_possible_truncation, reason = "whole seconds")]
            let at = score as i64;
            let revocation = match kind {
                0 => Revocation::Token {
                    jti: member.parse().unwrap(),
                    expires_at: at,
                },
                1 => {
                    let (tenant, subject) = serde_json::from_str(&member).unwrap();
                    Revocation::User {
                        tenant,
                        subject,
                        before: at,
                    }
                }
                2 => Revocation::Tenant {
                    tenant: member.parse().unwrap(),
                    before: at,
                },
                _ => Revocation::Key {
                    kid: member.parse().unwrap(),
                    before: at,
                },
            };
            out.insert(format!("{revocation:?}"));
        }
    }
    out
}

fn mirror_state(mirror: &Mirror) -> BTreeSet<String> {
    mirror.snapshot().iter().map(|r| format!("{r:?}")).collect()
}

fn admin_for(redis: &TestRedis) -> redis::Connection {
    match redis {
        TestRedis::Own(server) => server.admin(),
        TestRedis::External(url, _) => redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to REDIS_URL"),
    }
}

// ---------------------------------------------------------------------------------------------
// Granularity and propagation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_granularity_revokes_exactly_its_tokens() {
    let redis = TestRedis::shared_or_own();
    let settings = settings_for(&redis);
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let store = RedisStore::open(&settings).await.unwrap();
    let m = feed.mirror();
    wait_ready(m).await;
    let t = now();
    let untouched = Facts::of("untouched-token", t - 10, t + 3600);
    let base = untouched.get();
    let (bob_id, other, beta_id, k2) = (subject("bob"), tenant("other"), tenant("beta"), kid("k2"));

    let jti = random_id();
    store.revoke_with_seq(&token(&jti)).await.unwrap();
    wait_revoked(m, &jti).await;
    assert_eq!(m.status(&base), RevocationStatus::NotRevoked);

    let user = Revocation::User {
        tenant: tenant("acme"),
        subject: subject("bob"),
        before: t,
    };
    let bob = TokenFacts {
        subject: &bob_id,
        ..base
    };
    store.revoke_with_seq(&user).await.unwrap();
    wait_until(m, "user watermark", |m, _| {
        m.status(&bob) == RevocationStatus::Revoked
    })
    .await;
    // Same user in another tenant, a later token of bob, and alice: untouched.
    let bob_elsewhere = TokenFacts {
        tenant: &other,
        ..bob
    };
    let bob_later = TokenFacts {
        issued_at: t + 1,
        ..bob
    };
    assert_eq!(m.status(&bob_elsewhere), RevocationStatus::NotRevoked);
    assert_eq!(m.status(&bob_later), RevocationStatus::NotRevoked);
    assert_eq!(m.status(&base), RevocationStatus::NotRevoked);

    let beta_revocation = Revocation::Tenant {
        tenant: beta_id.clone(),
        before: t,
    };
    let beta = TokenFacts {
        tenant: &beta_id,
        ..base
    };
    store.revoke_with_seq(&beta_revocation).await.unwrap();
    wait_until(m, "tenant watermark", |m, _| {
        m.status(&beta) == RevocationStatus::Revoked
    })
    .await;
    assert_eq!(
        m.status(&TokenFacts {
            issued_at: t + 1,
            ..beta
        }),
        RevocationStatus::NotRevoked
    );
    assert_eq!(m.status(&base), RevocationStatus::NotRevoked);

    let key = Revocation::Key {
        kid: k2.clone(),
        before: t,
    };
    let signed_k2 = TokenFacts { kid: &k2, ..base };
    store.revoke_with_seq(&key).await.unwrap();
    wait_until(m, "key watermark", |m, _| {
        m.status(&signed_k2) == RevocationStatus::Revoked
    })
    .await;
    // A revoked key may be in an attacker's hands: its tokens minted later fail too.
    assert_eq!(
        m.status(&TokenFacts {
            issued_at: t + 1,
            ..signed_k2
        }),
        RevocationStatus::Revoked
    );
    assert_eq!(m.status(&base), RevocationStatus::NotRevoked);

    let mut admin = admin_for(&redis);
    assert_eq!(
        mirror_state(m),
        store_state(&mut admin, &settings.key_prefix)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_three_mirrors_after_revoke_returns() {
    let redis = TestRedis::shared_or_own();
    let settings = settings_for(&redis);
    let mut feeds = Vec::new();
    for _ in 0..3 {
        feeds.push(RedisFeed::start(&settings, clock()).await.unwrap());
    }
    let store = RedisStore::open(&settings).await.unwrap();
    for feed in &feeds {
        wait_ready(feed.mirror()).await;
    }
    for _ in 0..20 {
        let jti = random_id();
        RevocationStore::revoke(&store, token(&jti)).await.unwrap();
        for feed in &feeds {
            wait_revoked(feed.mirror(), &jti).await;
        }
    }
    let other = random_id();
    for feed in &feeds {
        assert_eq!(
            feed.mirror().status(&facts(&other).get()),
            RevocationStatus::NotRevoked
        );
        assert_eq!(feed.mirror().size().tokens, 20);
    }
}

/// The barrier's roster, read by every revoke, sweeps positions left without a registration
/// (a mirror that reported after its registration lapsed) only when there can be some: it
/// keeps the live mirror's position, drops the stray one, and leaves a clean hash alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_sweeps_barrier_positions_left_without_a_registration() {
    let redis = TestRedis::shared_or_own();
    let settings = settings_for(&redis);
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let store = RedisStore::open(&settings).await.unwrap();
    wait_ready(feed.mirror()).await;
    let mut admin = admin_for(&redis);
    let (live, positions) = (
        format!("{{{}}}:live", settings.key_prefix),
        format!("{{{}}}:inst", settings.key_prefix),
    );
    let first = random_id();
    RevocationStore::revoke(&store, token(&first))
        .await
        .unwrap();
    wait_revoked(feed.mirror(), &first).await;
    let registered: Vec<String> = admin.zrange(&live, 0, -1).unwrap();
    assert_eq!(registered.len(), 1, "the feed's registration");
    let own = registered[0].clone();
    // A position whose mirror is gone: more positions than registrations.
    let _: () = admin.hset(&positions, "gone-mirror", "g 1").unwrap();

    let second = random_id();
    RevocationStore::revoke(&store, token(&second))
        .await
        .unwrap();
    let left: Vec<String> = admin.hkeys(&positions).unwrap();
    assert_eq!(left, [own], "the stray position swept, the live one kept");
    assert_eq!(feed.mirror().size().tokens, 2);
}

/// A mirror that holds changes the primary lacks (the sequence went back: a promoted replica
/// that missed the last writes) never records or publishes that position at the barrier:
/// there it would confirm the revokes the primary numbers next, which the mirror skips as
/// already applied. It re-seeds instead, under a new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_head_confirms_nothing_at_the_barrier() {
    let redis = TestRedis::shared_or_own();
    let settings = settings_for(&redis);
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let store = RedisStore::open(&settings).await.unwrap();
    wait_ready(feed.mirror()).await;
    let jti = random_id();
    RevocationStore::revoke(&store, token(&jti)).await.unwrap();
    wait_revoked(feed.mirror(), &jti).await;
    let health = feed.mirror().health().borrow().clone();
    let (generation, applied) = (health.generation.expect("a generation"), health.applied_seq);

    let mut admin = admin_for(&redis);
    let prefix = &settings.key_prefix;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut acks = client.get_async_pubsub().await.unwrap();
    acks.subscribe(format!("{{{prefix}}}:acks")).await.unwrap();
    // The primary "lost" the last write: its sequence is one behind what the mirror applied,
    // and it holds no position for the mirror.
    let _: () = admin.del(format!("{{{prefix}}}:inst")).unwrap();
    let _: () = admin.set(format!("{{{prefix}}}:seq"), applied - 1).unwrap();
    let past = format!(" {generation} {applied}");
    let mut messages = acks.into_on_message();
    let watched = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(message) = messages.next().await {
            let text: String = message.get_payload().unwrap();
            assert!(
                !text.ends_with(&past),
                "published a position past the head: {text}"
            );
        }
    })
    .await;
    assert!(watched.is_err(), "the acknowledgement channel closed");
    let positions: Vec<String> = admin.hvals(format!("{{{prefix}}}:inst")).unwrap();
    assert!(
        positions
            .iter()
            .all(|p| !p.starts_with(&format!("{generation} "))),
        "a position in the rolled-back generation: {positions:?}"
    );
    // The mirror noticed and re-seeded: a new generation that holds the revocation.
    wait_until(feed.mirror(), "a new generation", |_, h| {
        h.generation.as_deref().is_some_and(|g| g != generation)
    })
    .await;
    assert!(
        store_state(&mut admin, prefix)
            .iter()
            .any(|e| e.contains(&jti))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_process_rejects_at_once_through_its_local_mirror() {
    let redis = TestRedis::shared_or_own();
    let engine = RevocationEngine::start(&settings_for(&redis), clock())
        .await
        .unwrap();
    assert_eq!(engine.kind(), StoreKind::Redis);
    wait_ready(engine.mirror()).await;
    let jti = random_id();
    engine.store().revoke(token(&jti)).await.unwrap();
    // No waiting: the acknowledged revocation is applied locally before revoke returns.
    assert_eq!(
        engine.check().status(&facts(&jti).get()),
        RevocationStatus::Revoked
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_without_redis_url_runs_the_in_process_store() {
    let engine = RevocationEngine::start(&RevocationSettings::default(), clock())
        .await
        .unwrap();
    assert_eq!(engine.kind(), StoreKind::InProcess);
    assert!(engine.mirror().is_ready());
    let jti = random_id();
    engine.store().revoke(token(&jti)).await.unwrap();
    assert_eq!(
        engine.check().status(&facts(&jti).get()),
        RevocationStatus::Revoked
    );
}

// ---------------------------------------------------------------------------------------------
// Pruning

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_pruned_from_redis_but_live_ones_stay() {
    let redis = TestRedis::shared_or_own();
    let settings = settings_for(&redis);
    let store = RedisStore::open(&settings).await.unwrap();
    let leeway = i64::try_from(settings.leeway.as_secs()).unwrap();
    let retention = 12 * 3600 + leeway;
    let t = now();
    let expired = [
        Revocation::Token {
            jti: random_jti(),
            expires_at: t - leeway - 5,
        },
        Revocation::Tenant {
            tenant: tenant("gone"),
            before: t - retention - 5,
        },
    ];
    let live = [
        Revocation::Token {
            jti: random_jti(),
            expires_at: t - leeway + 60,
        },
        Revocation::Tenant {
            tenant: tenant("kept"),
            before: t - retention + 60,
        },
    ];
    for revocation in expired.iter().chain(&live) {
        store.revoke_with_seq(revocation).await.unwrap();
    }
    store.prune().await.unwrap();
    let mut admin = admin_for(&redis);
    let remaining = store_state(&mut admin, &settings.key_prefix);
    let expected: BTreeSet<String> = live.iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(remaining, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_prunes_an_entry_once_its_token_can_no_longer_be_valid() {
    let redis = TestRedis::shared_or_own();
    let settings = RevocationSettings {
        prune_interval: Duration::from_millis(100),
        ..settings_for(&redis)
    };
    let t = now();
    let clock = Arc::new(ManualClock::at(t));
    let feed = RedisFeed::start(&settings, clock.clone()).await.unwrap();
    let m = feed.mirror();
    let store = RedisStore::open(&settings).await.unwrap();
    wait_ready(m).await;
    let short = random_id();
    let long = random_id();
    for (id, expires_at) in [(&short, t + 60), (&long, t + 3600)] {
        store
            .revoke_with_seq(&Revocation::Token {
                jti: jti(id),
                expires_at,
            })
            .await
            .unwrap();
    }
    wait_revoked(m, &short).await;
    wait_revoked(m, &long).await;
    // One second before `exp + leeway` the entry must stay; at it, it goes.
    let leeway = i64::try_from(settings.leeway.as_secs()).unwrap();
    clock.set(t + 60 + leeway - 1);
    assert_eq!(m.prune(), 0);
    clock.set(t + 60 + leeway);
    wait_until(m, "the feed's periodic prune", |_, h| h.pruned >= 1).await;
    let mut expired = facts(&short);
    expired.expires_at = t + 60;
    assert_eq!(m.status(&expired.get()), RevocationStatus::NotRevoked);
    assert_eq!(m.status(&facts(&long).get()), RevocationStatus::Revoked);
    assert_eq!(m.size().tokens, 1);
}

// ---------------------------------------------------------------------------------------------
// Faults (THREATS §4)

/// Revokes until Redis accepts: right after a restart the first command may still meet the
/// old, dead connection.
async fn revoke_when_back(store: &RedisStore, revocation: &Revocation) -> u64 {
    eventually("Redis to accept a revoke again", WAIT)
        .every(Duration::ZERO)
        .until(async || match store.revoke_with_seq(revocation).await {
            Ok(seq) => Some(seq),
            Err(err) => {
                assert!(err.is_unavailable(), "{err}");
                None
            }
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_kill_and_restart_with_aof_keeps_revocations_and_fails_revokes_meanwhile() {
    let mut server = RedisServer::start();
    let settings = settings(&server.url());
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let m = feed.mirror();
    let local = Arc::new(Mirror::new(&settings, clock()));
    let store = RedisStore::open_with_local_mirror(&settings, Arc::clone(&local))
        .await
        .unwrap();
    wait_ready(m).await;
    let before = random_id();
    store.revoke_with_seq(&token(&before)).await.unwrap();
    wait_revoked(m, &before).await;

    server.kill();
    // The mirror keeps serving its last state (staleness is still far below the bound).
    assert_eq!(m.status(&facts(&before).get()), RevocationStatus::Revoked);
    assert_eq!(
        m.status(&facts(&random_id()).get()),
        RevocationStatus::NotRevoked
    );
    // A revoke during the outage fails and changes nothing locally.
    let during = random_id();
    let err = store.revoke_with_seq(&token(&during)).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_ne!(
        local.status(&facts(&during).get()),
        RevocationStatus::Revoked
    );

    server.restart();
    let after = random_id();
    revoke_when_back(&store, &token(&after)).await;
    wait_revoked(m, &after).await;
    // The restart is noticed (new run_id) and the store re-seeded, in case it lost writes.
    wait_until(m, "restart handled", |_, h| {
        h.disconnects >= 1 && h.connected && h.resets >= 1
    })
    .await;
    assert_eq!(m.status(&facts(&before).get()), RevocationStatus::Revoked);
    assert_eq!(
        m.status(&facts(&during).get()),
        RevocationStatus::NotRevoked
    );
    assert_eq!(
        mirror_state(m),
        store_state(&mut server.admin(), &settings.key_prefix)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_empty_restart_is_detected_and_redis_is_reseeded_from_mirrors() {
    let mut server = RedisServer::start();
    let settings = settings(&server.url());
    let m1 = RedisFeed::start(&settings, clock()).await.unwrap();
    let m2 = RedisFeed::start(&settings, clock()).await.unwrap();
    let store = RedisStore::open(&settings).await.unwrap();
    wait_ready(m1.mirror()).await;
    wait_ready(m2.mirror()).await;
    let jtis: Vec<String> = (0..50).map(|_| random_id()).collect();
    for jti in &jtis {
        store.revoke_with_seq(&token(jti)).await.unwrap();
    }
    let user = Revocation::User {
        tenant: tenant("acme"),
        subject: subject("alice"),
        before: now() - 3600,
    };
    store.revoke_with_seq(&user).await.unwrap();
    for feed in [&m1, &m2] {
        wait_until(feed.mirror(), "all 51 entries", |m, _| {
            m.size().total() == 51
        })
        .await;
    }
    let before_reset = mirror_state(m1.mirror());

    server.restart_empty();

    for feed in [&m1, &m2] {
        // Reset detected, Redis re-seeded, and a full resync of the union done afterwards.
        wait_until(feed.mirror(), "reset and resync", |_, h| {
            h.resets >= 1 && h.full_resyncs >= 2 && h.fresh
        })
        .await;
        // The mirror never shrank, and every revoked token stays rejected.
        assert_eq!(mirror_state(feed.mirror()), before_reset);
        for jti in &jtis {
            assert_eq!(
                feed.mirror().status(&facts(jti).get()),
                RevocationStatus::Revoked
            );
        }
    }
    assert_eq!(
        store_state(&mut server.admin(), &settings.key_prefix),
        before_reset
    );
    // A verifier that starts now learns everything from the re-seeded Redis.
    let late = RedisFeed::start(&settings, clock()).await.unwrap();
    wait_ready(late.mirror()).await;
    assert_eq!(mirror_state(late.mirror()), before_reset);
    // And the store keeps working in the new generation.
    let fresh = random_id();
    revoke_when_back(&store, &token(&fresh)).await;
    for feed in [&m1, &m2, &late] {
        wait_revoked(feed.mirror(), &fresh).await;
    }
}

/// A verifier whose whole runtime can be frozen, like a stopped or starved process: the feed,
/// the pub/sub driver and the heartbeat all stop reading until resumed.
struct FreezableVerifier {
    mirror: Arc<Mirror>,
    control: std::sync::mpsc::Sender<Option<std::sync::mpsc::Receiver<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FreezableVerifier {
    fn start(settings: &RevocationSettings) -> Self {
        let settings = settings.clone();
        let (mirror_tx, mirror_rx) = std::sync::mpsc::channel();
        let (control, commands) =
            std::sync::mpsc::channel::<Option<std::sync::mpsc::Receiver<()>>>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let feed = RedisFeed::start(&settings, clock()).await.unwrap();
                mirror_tx.send(Arc::clone(feed.mirror())).unwrap();
                let (forward_tx, mut forward_rx) = tokio::sync::mpsc::unbounded_channel();
                std::thread::spawn(move || {
                    while let Ok(command) = commands.recv() {
                        if forward_tx.send(command).is_err() {
                            return;
                        }
                    }
                });
                while let Some(command) = forward_rx.recv().await {
                    match command {
                        // Freeze: block this runtime's only thread until told to resume.
                        Some(resume) => {
                            let _ = resume.recv();
                        }
                        None => break,
                    }
                }
                feed.shutdown().await;
            });
        });
        Self {
            mirror: mirror_rx.recv().unwrap(),
            control,
            thread: Some(thread),
        }
    }

    /// Freezes the verifier; it resumes when the returned sender is dropped.
    fn freeze(&self) -> std::sync::mpsc::Sender<()> {
        let (resume, wait) = std::sync::mpsc::channel();
        self.control.send(Some(wait)).unwrap();
        resume
    }
}

impl Drop for FreezableVerifier {
    fn drop(&mut self) {
        let _ = self.control.send(None);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_that_lost_acknowledged_writes_is_reseeded_and_reused_sequence_numbers_apply() {
    let mut server = RedisServer::start();
    let settings = settings(&server.url());
    let verifiers = [
        FreezableVerifier::start(&settings),
        FreezableVerifier::start(&settings),
    ];
    let store = RedisStore::open(&settings).await.unwrap();
    for v in &verifiers {
        wait_ready(&v.mirror).await;
    }
    let kept = random_id();
    store.revoke_with_seq(&token(&kept)).await.unwrap();
    server.save_data();
    // Acknowledged and seen by both mirrors, then lost by Redis.
    let lost = random_id();
    let lost_seq = store.revoke_with_seq(&token(&lost)).await.unwrap();
    for v in &verifiers {
        wait_revoked(&v.mirror, &lost).await;
    }

    // The verifiers are frozen through the restart, so Redis hands out `lost_seq` again, to a
    // different revocation, before they reconnect: a mirror trusting sequence numbers alone
    // would take it for a duplicate and never apply it.
    let resume: Vec<_> = verifiers.iter().map(FreezableVerifier::freeze).collect();
    server.restart_with_saved_data();
    let reused = random_id();
    revoke_when_back(&store, &token(&reused)).await;
    let reused_seq = store.revoke_with_seq(&token(&reused)).await.unwrap();
    assert_eq!(
        reused_seq,
        lost_seq + 1,
        "Redis was expected to reuse the lost number"
    );
    drop(resume);

    for v in &verifiers {
        wait_revoked(&v.mirror, &reused).await;
        wait_until(&v.mirror, "reset after restart", |_, h| {
            h.resets >= 1 && h.fresh
        })
        .await;
        assert_eq!(
            v.mirror.status(&facts(&lost).get()),
            RevocationStatus::Revoked
        );
    }
    // The lost revocation is back in Redis, next to the kept and the new one.
    let stored = store_state(&mut server.admin(), &settings.key_prefix);
    assert!(stored.iter().any(|e| e.contains(&lost)), "{stored:?}");
    assert_eq!(stored.len(), 3, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_killing_the_feed_connection_loses_no_revocation() {
    let server = RedisServer::start();
    let settings = settings(&server.url());
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let m = feed.mirror();
    let store = Arc::new(RedisStore::open(&settings).await.unwrap());
    wait_ready(m).await;

    let (progress, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut jtis = Vec::with_capacity(TOTAL);
            for i in 0..TOTAL {
                let jti = random_id();
                store.revoke_with_seq(&token(&jti)).await.unwrap();
                jtis.push(jti);
                let _ = progress.send(i + 1);
            }
            jtis
        })
    };
    let mut admin = server.admin();
    let mut kills = 0;
    while let Some(done) = acked.recv().await {
        if done % 100 == 50 {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut admin)
                .unwrap();
            kills += killed;
        }
    }
    let jtis = writer.await.unwrap();
    assert!(kills >= 1, "no feed connection was killed");
    wait_until(m, "every revocation", |m, _| m.size().tokens == TOTAL).await;
    for jti in &jtis {
        assert_eq!(m.status(&facts(jti).get()), RevocationStatus::Revoked);
    }
    let health = m.health().borrow().clone();
    assert!(health.disconnects >= 1, "{health:?}");
    assert_eq!(
        mirror_state(m),
        store_state(&mut admin, &settings.key_prefix)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_slow_subscriber_dropped_for_its_output_buffer_recovers_to_equal_the_store() {
    let server = RedisServer::start();
    let mut admin = server.admin();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("pubsub 64kb 32kb 1")
        .exec(&mut admin)
        .unwrap();
    let settings = RevocationSettings {
        // A log shorter than the burst, so the dropped mirror must resync in full.
        log_max_len: 2_000,
        command_timeout: Duration::from_secs(2),
        ..settings(&server.url())
    };
    let verifier = FreezableVerifier::start(&settings);
    let m = Arc::clone(&verifier.mirror);
    // The writer waits longer than the mirror: 100,000 revokes 256 at a time on a loaded CI
    // box may take more than 2 s each, and this test is about the subscriber, not the writer.
    let writer = RevocationSettings {
        command_timeout: Duration::from_secs(30),
        ..settings.clone()
    };
    let store = RedisStore::open(&writer).await.unwrap();
    wait_ready(&m).await;

    // The verifier stops reading for the whole burst: Redis' output buffer for its feed
    // connection overflows the 64 kB hard limit and Redis drops it, losing those messages.
    let resume = verifier.freeze();
    let expires_at = now() + 3600;
    let store = &store;
    let acked = futures_util::stream::iter(0..BURST)
        .map(|_| async move {
            let revocation = Revocation::Token {
                jti: random_jti(),
                expires_at,
            };
            store.revoke_with_seq(&revocation).await.map(|_| ())
        })
        .buffer_unordered(256)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(acked, BURST);
    drop(resume);

    wait_until(&m, "the whole burst", |m, _| m.size().tokens == BURST).await;
    assert_eq!(
        mirror_state(&m),
        store_state(&mut admin, &settings.key_prefix)
    );
    let health = m.health().borrow().clone();
    assert!(
        health.disconnects >= 1,
        "Redis never dropped the feed: {health:?}"
    );
    assert!(health.full_resyncs >= 2, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_mirror_started_with_redis_down_is_unavailable_until_first_sync() {
    let mut server = RedisServer::reserve();
    let settings = settings(&server.url());
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let m = feed.mirror();
    let serve = RedisFeed::start(
        &RevocationSettings {
            on_stale: OnStale::Serve,
            ..settings.clone()
        },
        clock(),
    )
    .await
    .unwrap();
    let jti = random_id();
    assert!(!m.is_ready());
    assert!(!m.health().borrow().ready);
    assert_eq!(m.staleness(), Duration::MAX);
    assert_eq!(m.status(&facts(&jti).get()), RevocationStatus::Unavailable);
    assert_eq!(
        serve.mirror().status(&facts(&jti).get()),
        RevocationStatus::NotRevoked
    );

    server.restart();
    wait_ready(m).await;
    assert_eq!(m.status(&facts(&jti).get()), RevocationStatus::NotRevoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f10_frozen_redis_turns_mirror_unavailable_at_the_bound_then_recovers() {
    let server = RedisServer::start();
    let settings = RevocationSettings {
        max_staleness: Duration::from_secs(1),
        ..settings(&server.url())
    };
    let closed = RedisFeed::start(&settings, clock()).await.unwrap();
    let serve = RedisFeed::start(
        &RevocationSettings {
            on_stale: OnStale::Serve,
            ..settings.clone()
        },
        clock(),
    )
    .await
    .unwrap();
    let store = RedisStore::open(&settings).await.unwrap();
    let m = closed.mirror();
    wait_ready(m).await;
    wait_ready(serve.mirror()).await;
    let revoked = random_id();
    store.revoke_with_seq(&token(&revoked)).await.unwrap();
    wait_revoked(m, &revoked).await;
    let valid = random_id();

    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .exec(&mut server.admin())
        .unwrap();

    wait_until(m, "staleness past the bound", |_, h| !h.fresh).await;
    assert!(m.staleness() >= settings.max_staleness);
    assert_eq!(
        m.status(&facts(&valid).get()),
        RevocationStatus::Unavailable
    );
    assert_eq!(m.status(&facts(&revoked).get()), RevocationStatus::Revoked);
    // The operator who chose `serve` keeps answering from the last state.
    assert_eq!(
        serve.mirror().status(&facts(&valid).get()),
        RevocationStatus::NotRevoked
    );
    assert_eq!(
        serve.mirror().status(&facts(&revoked).get()),
        RevocationStatus::Revoked
    );

    wait_until(m, "fresh again after the pause", |_, h| h.fresh).await;
    assert!(m.staleness() < settings.max_staleness);
    assert_eq!(m.status(&facts(&valid).get()), RevocationStatus::NotRevoked);
}

/// A revoke whose caller gives up (an HTTP client timing out) cancels nothing: the connection
/// open it started finishes for the revokes after it, and the revoke itself still lands. Redis
/// is down at start and then answers 300 ms late each way, so an open (about five round trips)
/// takes longer than any caller waits. Before, each revoke ran the open under a lock and took
/// it down when dropped: no open ever finished, and nothing was written (what left an issuer
/// answering no revoke for 45 s under load in a Cluster slot migration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_whose_callers_give_up_still_open_the_connection_and_land() {
    let mut server = RedisServer::reserve();
    let proxy = DelayProxy::in_front_of(&server.url()).await;
    let settings = RevocationSettings {
        command_timeout: Duration::from_millis(1500),
        ..settings(&proxy.redis_url())
    };
    let store = RedisStore::open(&settings).await.unwrap();
    server.restart();
    proxy.set_delay(Duration::from_millis(300), Duration::ZERO);

    let jtis: Vec<String> = (0..5).map(|_| random_id()).collect();
    for jti in &jtis {
        let gave_up = tokio::time::timeout(Duration::from_secs(1), store.revoke(token(jti))).await;
        assert!(
            gave_up.is_err(),
            "a revoke answered within 1 s through 600 ms round trips"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let key = format!("{{{}}}:tok", settings.key_prefix);
    let mut admin = server.admin();
    eventually("every given-up revoke in Redis", WAIT)
        .until(async || {
            let held: Vec<Option<f64>> = jtis
                .iter()
                .map(|jti| admin.zscore(&key, jti).unwrap())
                .collect();
            held.iter().all(Option::is_some).then_some(())
        })
        .await;
    store
        .revoke(token(&random_id()))
        .await
        .expect("a revoke that waits is answered on the open connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_redis_that_may_evict_is_refused_at_start() {
    let server = RedisServer::start();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .exec(&mut server.admin())
        .unwrap();
    let settings = settings(&server.url());
    let refused = |err: StoreError| match err {
        StoreError::EvictionPolicy { policy } => assert_eq!(policy, "volatile-lru"),
        other => panic!("expected EvictionPolicy, got {other}"),
    };
    refused(RedisStore::open(&settings).await.unwrap_err());
    refused(RedisFeed::start(&settings, clock()).await.unwrap_err());
    refused(
        RevocationEngine::start(&settings, clock())
            .await
            .unwrap_err(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f11_full_redis_refuses_revocations_and_evicts_none() {
    let server = RedisServer::start();
    let mut admin = server.admin();
    let settings = settings(&server.url());
    let local = Arc::new(Mirror::new(&settings, clock()));
    let store = RedisStore::open_with_local_mirror(&settings, Arc::clone(&local))
        .await
        .unwrap();
    let used: String = redis::cmd("INFO").arg("memory").query(&mut admin).unwrap();
    let used: u64 = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 256 * 1024)
        .exec(&mut admin)
        .unwrap();
    let mut acked = 0_usize;
    let err = loop {
        match store.revoke_with_seq(&token(&random_id())).await {
            Ok(_) => acked += 1,
            Err(err) => break err,
        }
        assert!(acked < 200_000, "Redis never filled up");
    };
    assert!(err.is_unavailable(), "{err}");
    let stored: usize = admin
        .zcard(format!("{{{}}}:tok", settings.key_prefix))
        .unwrap();
    assert_eq!(
        stored, acked,
        "every acknowledged revocation is still in Redis"
    );
    assert_eq!(local.size().tokens, acked, "nothing unacknowledged applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f15_duplicate_reordered_and_forged_events_leave_mirror_equal_to_store() {
    let redis = TestRedis::shared_or_own();
    let settings = settings_for(&redis);
    let feed = RedisFeed::start(&settings, clock()).await.unwrap();
    let m = feed.mirror();
    let store = RedisStore::open(&settings).await.unwrap();
    wait_ready(m).await;
    let first = token(&random_id());
    let second = token(&random_id());
    store.revoke_with_seq(&first).await.unwrap();
    let seq = store.revoke_with_seq(&second).await.unwrap();
    wait_until(m, "both applied", |_, h| h.applied_seq == seq).await;
    let generation = m.health().borrow().generation.clone().unwrap();

    let mut admin = admin_for(&redis);
    let channel = format!("{{{}}}:feed", settings.key_prefix);
    let body = |r: &Revocation| serde_json::to_string(r).unwrap();
    let expired = Revocation::Token {
        jti: random_jti(),
        expires_at: now() - 3600,
    };
    let forged = token(&random_id());
    let payloads = [
        // Duplicates, in reverse order.
        format!("{seq} {generation} {}", body(&second)),
        format!("{} {generation} {}", seq - 1, body(&first)),
        // A stale event for an expired token, replayed with an old number.
        format!("{} {generation} {}", seq - 1, body(&expired)),
        // A jump ahead that Redis never wrote: a gap the log cannot fill.
        format!("{} {generation} {}", seq + 5, body(&forged)),
        // Another generation, and garbage.
        format!("{} {} {}", seq + 1, "f".repeat(32), body(&forged)),
        "not an event".to_owned(),
    ];
    for payload in &payloads {
        let _: i64 = admin.publish(&channel, payload).unwrap();
    }
    // A real change after the noise: once it is applied, all the noise was handled.
    let third = token(&random_id());
    let seq = store.revoke_with_seq(&third).await.unwrap();
    wait_until(m, "the real change after the noise", |_, h| {
        h.applied_seq == seq
    })
    .await;

    let health = m.health().borrow().clone();
    assert!(health.gaps >= 1, "{health:?}");
    assert_eq!(health.resets, 0, "{health:?}");
    let Revocation::Token { jti: forged, .. } = forged else {
        unreachable!()
    };
    assert_eq!(
        m.status(&facts(forged.as_str()).get()),
        RevocationStatus::NotRevoked
    );
    assert_eq!(m.size().tokens, 3);
    assert_eq!(
        mirror_state(m),
        store_state(&mut admin, &settings.key_prefix)
    );
}
