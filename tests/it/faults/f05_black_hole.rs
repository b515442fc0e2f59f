//! F5, black-holed network (THREATS §4): Redis runs in its own network namespace, the
//! verifier process and an in-process mirror outside it; an nftables rule in the namespace
//! drops every packet to and from Redis, so no RST or FIN ever tells the verifier. It must
//! notice through its heartbeat timing out, keep serving from its state while that is younger
//! than `max_staleness`, fail closed at the bound, and recover once the rule is removed.

use std::time::{Duration, Instant};

use edgetoken::clock::{Clock, SystemClock};
use edgetoken::revocation::{
    RedisFeed, RedisStore, Revocation, RevocationCheck as _, RevocationStatus,
};
use reqwest::StatusCode;

use super::{REQUIREMENT, jti_and_exp, metric, ms, status};
use crate::support::deployment::{Deployment, mint};
use crate::support::eventually::eventually;
use crate::support::ids::Facts;
use crate::support::netns::IsolatedRedis;
use crate::support::process::EdgetokenProcess;

/// The heartbeat H: how often the mirror asks Redis for the head of the log.
const HEARTBEAT_MS: u64 = 400;
/// Half of H: a head read that gets no answer fails by then, so a black hole is noticed
/// within H (the next beat) + H/2, inside the 2·H THREATS allows.
const COMMAND_TIMEOUT_MS: u64 = 200;
/// `max_staleness` S.
const MAX_STALENESS_SECS: u64 = 3;
/// THREATS §4: recovery within R after the fault heals.
const RECOVERY: Duration = Duration::from_secs(10);

#[expect(
    clippy::too_many_lines,
    reason = "one fault scenario told in order: set up, inject, observe, heal, check"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_black_holed_redis_is_detected_fails_closed_at_max_staleness_and_recovers() {
    let Some(redis) = IsolatedRedis::start() else {
        return;
    };
    let heartbeat = Duration::from_millis(HEARTBEAT_MS);
    let max_staleness = Duration::from_secs(MAX_STALENESS_SECS);
    let deployment = Deployment::new();
    let revocation = format!(
        "heartbeat_ms = {HEARTBEAT_MS}\ncommand_timeout_ms = {COMMAND_TIMEOUT_MS}\n\
         max_staleness_secs = {MAX_STALENESS_SECS}\n"
    );
    let config_text = deployment.config_text_for(&redis.url(), &revocation, "");
    let config = edgetoken::settings::Settings::from_toml(&config_text).unwrap();
    let settings = config.revocation.clone();
    let mut verifier = EdgetokenProcess::start(&config_text, "verifier").await;
    let url = verifier.url(REQUIREMENT);
    // A mirror in this process on the same path, for the feed's own view (errors, counters).
    let feed = RedisFeed::start(&settings, std::sync::Arc::new(SystemClock))
        .await
        .unwrap();
    let mirror = feed.mirror();
    let store = RedisStore::open(&settings).await.unwrap();

    let issuer = deployment.offline_issuer();
    let (valid, revoked) = (
        mint(&issuer, "alice", "acme", "runs:read"),
        mint(&issuer, "alice", "acme", "runs:read"),
    );
    let (jti, exp) = jti_and_exp(&revoked);
    store
        .revoke_with_seq(&Revocation::Token {
            jti: jti.parse().unwrap(),
            expires_at: exp,
        })
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    eventually(
        "the verifier to refuse the revoked token",
        Duration::from_secs(10),
    )
    .until(async || {
        (status(&client, &url, &revoked).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    eventually("the in-process mirror to be ready", Duration::from_secs(10))
        .until(async || (mirror.is_ready() && mirror.is_fresh()).then_some(()))
        .await;
    let facts = Facts::of(&jti, SystemClock.unix_now() - 60, exp);
    assert_eq!(mirror.status(&facts.get()), RevocationStatus::Revoked);
    let threads_before = verifier.proc_status("Threads");
    let disconnects_before = mirror.health().borrow().disconnects;
    assert_eq!(
        mirror.health().borrow().feed_source.as_deref(),
        Some("primary"),
        "a connected feed names where it reads"
    );

    // The rule takes effect somewhere while `black_hole` runs (a command in the namespace,
    // which a loaded machine can make last tens of milliseconds): the fault happened between
    // `injecting` and `fault`. Bounds that must not be reached early count from the first,
    // bounds that must not be passed late from the second.
    let injecting = Instant::now();
    redis.black_hole();
    let fault = Instant::now();
    let injection = fault.duration_since(injecting);

    // Detection: the in-process feed's heartbeat times out and it drops the session.
    let mut health = mirror.health();
    let lost = tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| !h.connected))
        .await
        .expect("the black hole was never noticed")
        .unwrap()
        .clone();
    let detected = fault.elapsed();
    // A lost session no longer names where it read: /readyz must not report a source the
    // feed has left.
    assert_eq!(
        lost.feed_source, None,
        "feed_source kept after the session was lost"
    );

    // Until the bound, every answer is unchanged: the valid token passes, the revoked fails;
    // the process's staleness gauge rises.
    let mut served = 0_u32;
    let mut staleness_seen = Vec::new();
    let mut last_ok = Duration::ZERO;
    let closed_at = loop {
        let sent = fault.elapsed();
        let answer = status(&client, &url, &valid).await;
        match answer {
            StatusCode::OK => {
                served += 1;
                last_ok = sent;
                assert_eq!(
                    status(&client, &url, &revoked).await,
                    StatusCode::UNAUTHORIZED,
                    "the revoked token while stale"
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => break sent,
            other => panic!("valid token answered {other} {sent:?} into the black hole"),
        }
        if served.is_multiple_of(20) {
            let page = client
                .get(verifier.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            staleness_seen.push(metric(&page, "edgetoken_revocation_staleness_seconds").unwrap());
        }
        assert!(sent < max_staleness + 3 * heartbeat, "never failed closed");
    };
    // Fail-closed holds (the revoked token stays refused), and readiness is down.
    assert_eq!(
        status(&client, &url, &valid).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_ne!(
        status(&client, &url, &revoked).await,
        StatusCode::OK,
        "a revoked token accepted while failed closed"
    );
    let ready = client.get(verifier.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let in_process_stale =
        tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| !h.fresh))
            .await
            .is_ok();
    assert!(in_process_stale, "the in-process mirror never turned stale");
    let threads_stale = verifier.proc_status("Threads");

    redis.heal();
    let healed = Instant::now();
    eventually("the verifier to serve again after the heal", RECOVERY)
        .until(async || (status(&client, &url, &valid).await == StatusCode::OK).then_some(()))
        .await;
    let recovered = healed.elapsed();
    tokio::time::timeout(RECOVERY, health.wait_for(|h| h.fresh && h.connected))
        .await
        .expect("the in-process mirror never recovered")
        .unwrap();
    assert_eq!(
        status(&client, &url, &revoked).await,
        StatusCode::UNAUTHORIZED
    );
    let ready = client.get(verifier.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(
        verifier.is_running(),
        "the verifier exited: {}",
        verifier.stderr()
    );
    let health_now = mirror.health().borrow().clone();

    eprintln!(
        "F5: H {HEARTBEAT_MS} ms, command timeout {COMMAND_TIMEOUT_MS} ms, S_max \
         {MAX_STALENESS_SECS} s; detected after {:.0} ms (bound 2·H = {:.0} ms, {} \
         disconnects); {served} valid requests served unchanged, last 200 at {:.0} ms, first \
         503 at {:.0} ms (S_max ± H = {:.0}..{:.0} ms); staleness gauge rose from {:.2} s to \
         {:.2} s over {} samples; threads {threads_before} before, {threads_stale} while stale; \
         recovered {:.0} ms after the heal",
        ms(detected),
        ms(2 * heartbeat),
        health_now.disconnects - disconnects_before,
        ms(last_ok),
        ms(closed_at),
        ms(max_staleness.saturating_sub(heartbeat)),
        ms(max_staleness + heartbeat),
        staleness_seen.first().copied().unwrap_or_default(),
        staleness_seen.last().copied().unwrap_or_default(),
        staleness_seen.len(),
        ms(recovered),
    );
    assert!(detected <= 2 * heartbeat, "detected after {detected:?}");
    // The last heard mark is at most one heartbeat before the fault, and fails closed at
    // S_max after it: the switch falls in [S_max - H, S_max] after the fault, and a request
    // takes a little, hence the bound S_max ± H.
    assert!(
        closed_at + injection + heartbeat >= max_staleness
            && closed_at <= max_staleness + heartbeat,
        "failed closed {closed_at:?} after the fault ({injection:?} to inject it), not S_max \
         {max_staleness:?} ± H"
    );
    assert!(served > 0, "no request was served before the bound");
    assert!(
        staleness_seen.windows(2).all(|w| w[0] <= w[1])
            && staleness_seen.last().copied().unwrap_or_default() >= 1.0,
        "the staleness gauge did not rise: {staleness_seen:?}"
    );
    assert!(
        threads_stale <= threads_before + 2,
        "threads grew from {threads_before} to {threads_stale} while black-holed"
    );
    assert!(recovered <= RECOVERY);
}
