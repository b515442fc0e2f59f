//! F7, Redis latency and jitter (THREATS §4): the verifier process follows Redis through a
//! proxy that delays every chunk 500 ms ± 200 ms in each direction. Verification reads only
//! the in-memory mirror, so the number of requests the verifier answers in a fixed window
//! must not drop against a baseline taken through the same proxy without delay; revocations
//! still arrive within the delay plus `T_prop`; and the verifier does not flap (the proxy counts
//! every connection it accepts, so a reconnect shows whatever the verifier reports).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgetoken::revocation::{RedisStore, Revocation};
use reqwest::StatusCode;

use super::{REQUIREMENT, jti_and_exp, ms, percentile, status};
use crate::support::delay_proxy::DelayProxy;
use crate::support::deployment::{Deployment, list_via_api, mint, mint_via_api};
use crate::support::eventually::eventually;
use crate::support::process::EdgetokenProcess;
use crate::support::redis::RedisServer;

/// The one-way delay and its jitter (THREATS F7: toxiproxy `latency` 500 ms ± 200 ms).
const DELAY: Duration = Duration::from_millis(500);
const JITTER: Duration = Duration::from_millis(200);
/// H and the command timeout of the verifier: a head read through the proxy takes up to
/// 2 × 700 ms, under the 2 s command timeout, so latency alone never fails a command.
const HEARTBEAT_MS: u64 = 200;
const COMMAND_TIMEOUT_MS: u64 = 2_000;
/// The verifier's `max_staleness`, well above a delayed heartbeat's round trip.
const MAX_STALENESS_SECS: u64 = 10;
/// Each load window (baseline, then under latency).
const WINDOW: Duration = Duration::from_secs(4);
/// Revocations timed under latency.
const REVOCATIONS: usize = 10;
const LOAD_WORKERS: usize = 4;

/// Requests answered by `workers` in `window`, with their latencies; every answer must be 200.
async fn load(url: &str, token: &str, window: Duration) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|_| {
            let (client, url, token, stop) = (
                client.clone(),
                url.to_owned(),
                token.to_owned(),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = status(&client, &url, &token).await;
                    assert_eq!(answer, StatusCode::OK, "valid token under latency");
                    took.push(sent.elapsed());
                }
                took
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_redis_latency_leaves_verification_alone_and_revocations_arrive() {
    let redis = RedisServer::start();
    let proxy = DelayProxy::in_front_of(&redis.url()).await;
    let deployment = Deployment::new();
    let revocation = format!(
        "heartbeat_ms = {HEARTBEAT_MS}\ncommand_timeout_ms = {COMMAND_TIMEOUT_MS}\n\
         max_staleness_secs = {MAX_STALENESS_SECS}\n"
    );
    // Usage flushes every second, so its lazy Redis connection opens during the baseline and
    // is not counted as a reconnect under latency.
    let config_text =
        deployment.config_text_for(&proxy.redis_url(), &revocation, "[usage]\nflush_secs = 1\n");
    let mut verifier = EdgetokenProcess::start(&config_text, "verifier").await;
    let url = verifier.url(REQUIREMENT);
    // The revoking side talks to Redis directly: the fault is on the verifier's path.
    let mut settings = edgetoken::settings::Settings::from_toml(&config_text)
        .unwrap()
        .revocation;
    settings.redis_url = Some(redis.url());
    let store = RedisStore::open(&settings).await.unwrap();
    let issuer = deployment.offline_issuer();
    let valid = mint(&issuer, "alice", "acme", "runs:read");
    let client = reqwest::Client::new();

    let mut baseline = load(&url, &valid, WINDOW).await;
    proxy.set_delay(DELAY, JITTER);
    // Let the delayed heartbeats settle in before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connections_before = proxy.accepted();
    let latency_started = Instant::now();
    let mut delayed = load(&url, &valid, WINDOW).await;

    // T_prop as in F1: 2·H; the bound is THREATS' `delay + jitter + T_prop`. It holds because
    // the feed applies live messages while a heartbeat's head read is in flight, and a head
    // that announces changes not yet delivered waits as long as its read took for their
    // messages before a catch-up read (`src/revocation/redis/feed.rs`).
    let t_prop = 2 * Duration::from_millis(HEARTBEAT_MS);
    let bound = DELAY + JITTER + t_prop;
    let mut delays = Vec::with_capacity(REVOCATIONS);
    for _ in 0..REVOCATIONS {
        let token = mint(&issuer, "alice", "acme", "runs:read");
        assert_eq!(status(&client, &url, &token).await, StatusCode::OK);
        let (jti, exp) = jti_and_exp(&token);
        store
            .revoke_with_seq(&Revocation::Token {
                jti: jti.parse().unwrap(),
                expires_at: exp,
            })
            .await
            .unwrap();
        let ack = Instant::now();
        let delay = eventually(
            "the revoked token refused under latency",
            Duration::from_secs(10),
        )
        .every(Duration::from_millis(5))
        .until(async || {
            (status(&client, &url, &token).await == StatusCode::UNAUTHORIZED).then(|| ack.elapsed())
        })
        .await;
        delays.push(delay);
    }
    let under_latency = latency_started.elapsed();
    let reconnects = proxy.accepted() - connections_before;
    assert!(verifier.is_running(), "{}", verifier.stderr());
    let warnings = verifier.stderr().matches("revocation feed lost").count();

    let (base_count, delayed_count) = (baseline.len(), delayed.len());
    let (base_p99, delayed_p99) = (
        percentile(&mut baseline, 99.0),
        percentile(&mut delayed, 99.0),
    );
    let (prop_p50, prop_max) = (
        percentile(&mut delays, 50.0),
        percentile(&mut delays, 100.0),
    );
    eprintln!(
        "F7: {:.0} ms ± {:.0} ms per chunk each way; verify requests in {:.0} s: {base_count} \
         baseline, {delayed_count} under latency (p99 {:.3} ms vs {:.3} ms); {REVOCATIONS} \
         revocations ack -> refused: p50 {:.0} ms, max {:.0} ms (bound {:.0} ms = delay + jitter + \
         T_prop); {reconnects} new \
         Redis connections and {warnings} feed-lost warnings in {:.1} s under latency",
        ms(DELAY),
        ms(JITTER),
        WINDOW.as_secs_f64(),
        ms(base_p99),
        ms(delayed_p99),
        ms(prop_p50),
        ms(prop_max),
        ms(bound),
        under_latency.as_secs_f64(),
    );
    // Counting, not timing: the in-memory path answers at least half as many requests as
    // without latency (a loaded CI box varies; a path that waited on Redis would answer a few
    // dozen at 0.5-1.4 s each).
    assert!(
        delayed_count * 2 >= base_count,
        "{delayed_count} requests under latency vs {base_count} without"
    );
    assert!(prop_max <= bound, "propagation {prop_max:?} over {bound:?}");
    // No reconnect storm: at most one new connection per started minute.
    let minutes = under_latency.as_secs() / 60 + 1;
    assert!(
        reconnects <= minutes && warnings as u64 <= minutes,
        "{reconnects} reconnects, {warnings} warnings in {under_latency:?}"
    );
}

/// A revoke whose client gives up while Redis is slow is finished anyway, with everything that
/// belongs to it: the revocation lands, the audit log records it, and the token's record shows
/// when it was revoked. Before, the handler was dropped with the client, midway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f07_a_revoke_whose_client_gives_up_is_still_audited_and_noted() {
    let deployment = Deployment::new();
    let proxy = DelayProxy::in_front_of(&deployment.redis.url()).await;
    let config_text = deployment.config_text_for(&proxy.redis_url(), "", "");
    let issuer = EdgetokenProcess::start_logging(&config_text, "issuer", "info").await;
    let (id, token) = mint_via_api(&issuer.url(""), &["runs:read"]).await;

    // Each Redis round trip now takes 1.2 s: the write, the barrier's roster read and the
    // record's update take over 3 s, and the client waits 1 s. RFC 7009 revocation by the
    // token itself, so that nothing reads Redis before the revoke starts.
    proxy.set_delay(Duration::from_millis(600), Duration::ZERO);
    let gave_up = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .post(issuer.url("/v1/revoke"))
        .form(&[("token", &token)])
        .send()
        .await;
    assert!(gave_up.is_err(), "answered within 1 s: {gave_up:?}");
    proxy.set_delay(Duration::ZERO, Duration::ZERO);

    let client = reqwest::Client::new();
    let listing = eventually("the record to show the revocation", Duration::from_secs(15))
        .until(async || {
            let listing = list_via_api(&client, &issuer.url("")).await?;
            listing["tokens"][0]["revoked_at"]
                .is_string()
                .then_some(listing)
        })
        .await;
    assert_eq!(listing["tokens"][0]["status"], "revoked", "{listing}");
    let log = issuer.stderr();
    assert!(
        log.lines().any(|line| line.contains("\"revoke\"")
            && line.contains(&format!("\"{id}\""))
            && line.contains("\"ok\"")),
        "no audit event for the revoke of {id}:\n{log}"
    );
}
