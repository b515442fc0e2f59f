//! Verifiers that read from replicas (`read_from_replicas`, issue 11) with real processes.
//!
//! A primary, two replicas and three sentinels (`support::sentinel`); an issuer that reads
//! from the primary and a verifier with `read_from_replicas = true`. Checked: the verifier's
//! subscription is on a replica, not on the primary (`CLIENT LIST TYPE pubsub` on every node);
//! tokens revoked through the issuer at a steady rate are refused by the verifier on the very
//! next request once the revoke answered 200 (the barrier waited for the verifier's mirror,
//! fed by the replica); then the replica the verifier reads from is killed with `kill -9`
//! while revoking goes on: every answer is 200, 202 or 503 (never a false acknowledgement),
//! every acknowledged revocation is refused afterwards, and the verifier's feed moves to the
//! other replica or the primary. Printed, not asserted: the time from the kill to the mirror
//! reading from another node and fresh again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::deployment::{AUDIENCE, Deployment, ISSUER, mint};
use crate::support::eventually::eventually;
use crate::support::failover::{REQUIREMENT, is_ack, readyz, revoke, verify_status};
use crate::support::process::EdgetokenProcess;
use crate::support::sentinel::{MASTER_NAME, SentinelRedis};

/// Revocations per second, before and after the kill.
const PER_SECOND: u64 = 40;
/// Revoking with the replica healthy.
const STEADY: Duration = Duration::from_secs(3);
/// Revoking around the kill: the kill comes this long after the start of the second run.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// How long the second run revokes in all.
const AROUND_KILL: Duration = Duration::from_secs(5);
/// A staleness below this (2.5 heartbeats) counts as fresh.
const FRESH_MARK: f64 = 0.5;

fn config_text(deployment: &Deployment, sentinels: &[String], read_from_replicas: bool) -> String {
    let addresses = sentinels
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[token]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         [keys]\ndir = \"{keys}\"\n\
         [revocation]\nsentinel_master_name = \"{MASTER_NAME}\"\n\
         sentinel_addresses = [{addresses}]\nkey_prefix = \"{prefix}\"\n\
         heartbeat_ms = 200\nmax_staleness_secs = 10\nwait_timeout_ms = 500\n\
         read_from_replicas = {read_from_replicas}\n\
         [issuer]\ndirectory = \"{users}\"\nmints_per_hour = 100000\n",
        keys = deployment.dir.path().join("keys").display(),
        prefix = deployment.prefix,
        users = deployment.dir.path().join("users.toml").display(),
    )
}

/// Where the verifier's feed reads from, as `/readyz` says: `primary` or `replica H:P`.
fn feed_source(ready: &serde_json::Value) -> String {
    ready["revocation"]["feed_source"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The port of `replica 127.0.0.1:PORT`.
fn replica_port(source: &str) -> Option<u16> {
    source
        .strip_prefix("replica ")?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

/// What one run of revocations saw.
#[derive(Debug, Default)]
struct Run {
    /// Each revoke's token index and answer.
    answers: Vec<(usize, StatusCode)>,
    /// Tokens the verifier accepted right after a 200 for their revoke.
    accepted_after_ack: Vec<usize>,
}

impl Run {
    /// Every answer was an acknowledgement (200, 202) or a 503, and no token was accepted
    /// right after a 200 for its revoke.
    fn assert_never_falsely_acknowledged(&self) {
        let others: Vec<u16> = self
            .answers
            .iter()
            .map(|(_, s)| *s)
            .filter(|s| !is_ack(*s) && *s != StatusCode::SERVICE_UNAVAILABLE)
            .map(|s| s.as_u16())
            .collect();
        assert!(others.is_empty(), "revokes answered {others:?}");
        assert!(
            self.accepted_after_ack.is_empty(),
            "tokens accepted right after a 200: {:?}",
            self.accepted_after_ack
        );
    }
}

/// Revokes `tokens` through the issuer at [`PER_SECOND`], one per tick, each in its own task;
/// after a 200 the verifier must refuse the token on the very next request.
async fn revoke_steadily(
    client: reqwest::Client,
    revoke_url: String,
    verify_url: String,
    tokens: Vec<(usize, String)>,
) -> Run {
    let run = Arc::new(Mutex::new(Run::default()));
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    let mut requests = Vec::new();
    for (index, token) in tokens {
        pace.tick().await;
        let (client, revoke_url, verify_url, run) = (
            client.clone(),
            revoke_url.clone(),
            verify_url.clone(),
            Arc::clone(&run),
        );
        requests.push(tokio::spawn(async move {
            let status = client
                .post(&revoke_url)
                .form(&[("token", token.as_str())])
                .send()
                .await
                .expect("the issuer answers every revoke")
                .status();
            if status == StatusCode::OK
                && verify_status(&client, &verify_url, &token).await == StatusCode::OK
            {
                run.lock().unwrap().accepted_after_ack.push(index);
            }
            run.lock().unwrap().answers.push((index, status));
        }));
    }
    for request in requests {
        request.await.unwrap();
    }
    Arc::try_unwrap(run).unwrap().into_inner().unwrap()
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario told in order: set up, check placement, revoke, kill, observe, check"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_replicas_verifiers_keep_up_with_a_replica_and_fall_back_when_it_dies() {
    let mut redis = SentinelRedis::start();
    let deployment = Deployment::new();
    let sentinels = redis.sentinel_addresses();
    let primary = redis.primary_port().expect("the sentinels name a primary");
    let ports: Vec<u16> = redis.nodes.iter().map(|n| n.port).collect();
    let issuer_process =
        EdgetokenProcess::start(&config_text(&deployment, &sentinels, false), "issuer").await;
    // The edgetoken subscriptions on each node before the verifier starts (the issuer's).
    let before: Vec<usize> = ports
        .iter()
        .map(|p| redis.node(*p).pubsub_clients())
        .collect();
    let debug = std::env::var_os("EDGETOKEN_REPLICAS_DEBUG").is_some();
    let verifier = EdgetokenProcess::start_logging(
        &config_text(&deployment, &sentinels, true),
        "verifier",
        if debug { "info" } else { "warn" },
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The verifier reads from a replica, and its one subscription is there.
    let ready = readyz(&client, &verifier.url("")).await;
    let source = feed_source(&ready);
    eprintln!("replicas: verifier feed_source {source:?}; primary on {primary}");
    let reading = replica_port(&source).unwrap_or_else(|| panic!("not on a replica: {ready}"));
    assert_ne!(reading, primary, "{ready}");
    let after: Vec<usize> = ports
        .iter()
        .map(|p| redis.node(*p).pubsub_clients())
        .collect();
    eprintln!(
        "replicas: edgetoken pub/sub clients per node {ports:?}: before {before:?}, with the verifier {after:?}"
    );
    for (i, port) in ports.iter().enumerate() {
        let expected = before[i] + usize::from(*port == reading);
        assert_eq!(
            after[i], expected,
            "CLIENT LIST TYPE pubsub on {port} (primary {primary}, verifier reads from {reading})"
        );
    }

    let offline = deployment.offline_issuer();
    let per_run = |run: Duration| usize::try_from(run.as_secs() * PER_SECOND).unwrap();
    let tokens: Vec<String> = (0..per_run(STEADY) + per_run(AROUND_KILL))
        .map(|_| mint(&offline, "alice", "acme", "runs:read"))
        .collect();
    let (revoke_url, verify_url) = (issuer_process.url("/v1/revoke"), verifier.url(REQUIREMENT));
    let indexed = |range: std::ops::Range<usize>| -> Vec<(usize, String)> {
        range.map(|i| (i, tokens[i].clone())).collect()
    };

    // Steady state: every 200 is refused by the verifier at once.
    let steady = revoke_steadily(
        client.clone(),
        revoke_url.clone(),
        verify_url.clone(),
        indexed(0..per_run(STEADY)),
    )
    .await;
    let confirmed = steady
        .answers
        .iter()
        .filter(|(_, s)| *s == StatusCode::OK)
        .count();
    eprintln!(
        "replicas: steady run: {} revokes, {confirmed} confirmed (200), others {:?}",
        steady.answers.len(),
        steady
            .answers
            .iter()
            .filter(|(_, s)| *s != StatusCode::OK)
            .map(|(_, s)| s.as_u16())
            .collect::<Vec<_>>()
    );
    assert!(confirmed > 0, "no revoke confirmed in the steady run");
    assert!(
        steady.accepted_after_ack.is_empty(),
        "tokens accepted right after a 200: {:?}",
        steady.accepted_after_ack
    );
    let ready = readyz(&client, &verifier.url("")).await;
    assert_eq!(
        feed_source(&ready),
        source,
        "the feed stayed on its replica"
    );

    // The subscriptions now, the verifier's still on its replica (the issuer has meanwhile
    // subscribed to barrier acknowledgements on the primary).
    let settled: Vec<usize> = ports
        .iter()
        .map(|p| redis.node(*p).pubsub_clients())
        .collect();
    eprintln!("replicas: edgetoken pub/sub clients per node after the steady run {settled:?}");
    let at_reading = ports.iter().position(|p| *p == reading).unwrap();
    assert_eq!(settled[at_reading], after[at_reading], "{settled:?}");

    // Kill the replica the verifier reads from while revoking.
    let second = tokio::spawn(revoke_steadily(
        client.clone(),
        revoke_url.clone(),
        verify_url.clone(),
        indexed(per_run(STEADY)..tokens.len()),
    ));
    tokio::time::sleep(BEFORE_KILL).await;
    let killed = Instant::now();
    redis.node_mut(reading).kill();
    eprintln!("replicas: replica on port {reading} killed (kill -9)");
    let (moved_to, fresh_at) = eventually(
        "the verifier's feed on another node and its mirror fresh",
        Duration::from_secs(30),
    )
    .every(Duration::from_millis(20))
    .until(async || {
        let ready = readyz(&client, &verifier.url("")).await;
        let source = feed_source(&ready);
        let fresh = ready["revocation"]["fresh"].as_bool() == Some(true)
            && ready["revocation"]["staleness_seconds"]
                .as_f64()
                .is_some_and(|s| s < FRESH_MARK);
        let moved = !source.is_empty() && replica_port(&source) != Some(reading);
        (moved && fresh).then(|| (source, Instant::now()))
    })
    .await;
    eprintln!(
        "replicas: kill -> verifier feed on {moved_to:?} and mirror fresh: {:.0} ms",
        (fresh_at - killed).as_secs_f64() * 1000.0
    );
    let around = second.await.unwrap();

    // The subscription moved with the feed: on the other replica, or on the primary.
    let now_on = replica_port(&moved_to).unwrap_or(primary);
    let survivors: Vec<u16> = ports.iter().copied().filter(|p| *p != reading).collect();
    for port in &survivors {
        let i = ports.iter().position(|p| p == port).unwrap();
        let expected = settled[i] + usize::from(*port == now_on);
        assert_eq!(
            redis.node(*port).pubsub_clients(),
            expected,
            "CLIENT LIST TYPE pubsub on {port} after the kill (feed on {moved_to:?})"
        );
    }

    let count = |run: &Run, pick: fn(StatusCode) -> bool| {
        run.answers.iter().filter(|(_, s)| pick(*s)).count()
    };
    eprintln!(
        "replicas: run around the kill: {} revokes: {} answered 200, {} answered 202, {} answered 503",
        around.answers.len(),
        count(&around, |s| s == StatusCode::OK),
        count(&around, |s| s == StatusCode::ACCEPTED),
        count(&around, |s| s == StatusCode::SERVICE_UNAVAILABLE),
    );
    around.assert_never_falsely_acknowledged();

    // Every acknowledged revocation, from both runs, is refused by the verifier now.
    for (index, status) in steady.answers.iter().chain(&around.answers) {
        if is_ack(*status) {
            assert_eq!(
                verify_status(&client, &verify_url, &tokens[*index]).await,
                StatusCode::UNAUTHORIZED,
                "acknowledged token {index} ({status}) at the verifier"
            );
        }
    }
    let ready = readyz(&client, &verifier.url("")).await;
    eprintln!(
        "replicas: verifier after the kill: feed_source {:?}, replica_fallbacks {}",
        ready["revocation"]["feed_source"], ready["revocation"]["replica_fallbacks"]
    );
    if debug {
        eprintln!("verifier stderr:\n{}", verifier.stderr());
    }
}

/// A replica that lags is waited for a moment, then read around: its short log must never be
/// taken for a trimmed log or a lost data set. Both replicas replicate through delaying
/// proxies; once the verifier reads from one, the replication stream is held back 400 ms
/// (beyond the feed's ~100 ms of patience). Checked: every revoke (not waiting for replicas,
/// and waiting up to 2 s for the verifier) is confirmed and refused by the verifier at once,
/// the verifier's mirror resyncs in full only at its start and never re-seeds, and its feed
/// leaves the lagging replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_read_around_and_never_taken_for_lost_revocations() {
    let (redis, proxies) = SentinelRedis::with_delayed_replication().await;
    let deployment = Deployment::new();
    let sentinels = redis.sentinel_addresses();
    let issuer_config = config_text(&deployment, &sentinels, false).replace(
        "wait_timeout_ms = 500\n",
        "wait_timeout_ms = 500\nmin_replicas_acked = 0\nbarrier_timeout_ms = 2000\n",
    );
    let issuer_process = EdgetokenProcess::start(&issuer_config, "issuer").await;
    let verifier = EdgetokenProcess::start_logging(
        &config_text(&deployment, &sentinels, true),
        "verifier",
        "info",
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let source = feed_source(&readyz(&client, &verifier.url("")).await);
    assert!(
        replica_port(&source).is_some(),
        "not on a replica: {source}"
    );

    for proxy in &proxies {
        proxy.set_delay(Duration::from_millis(400), Duration::ZERO);
    }
    let offline = deployment.offline_issuer();
    let tokens: Vec<(usize, String)> = (0..30)
        .map(|i| (i, mint(&offline, "alice", "acme", "runs:read")))
        .collect();
    let run = revoke_steadily(
        client.clone(),
        issuer_process.url("/v1/revoke"),
        verifier.url(REQUIREMENT),
        tokens.clone(),
    )
    .await;
    let statuses: Vec<u16> = run.answers.iter().map(|(_, s)| s.as_u16()).collect();
    eprintln!("replicas (lag): revokes answered {statuses:?}");
    assert!(
        run.answers.iter().all(|(_, s)| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        run.accepted_after_ack.is_empty(),
        "tokens accepted right after a 200: {:?}",
        run.accepted_after_ack
    );
    for (index, token) in &tokens {
        assert_eq!(
            verify_status(&client, &verifier.url(REQUIREMENT), token).await,
            StatusCode::UNAUTHORIZED,
            "token {index}"
        );
    }

    let ready = readyz(&client, &verifier.url("")).await;
    let log = verifier.stderr();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    eprintln!(
        "replicas (lag): verifier feed_source {}, replica_fallbacks {}; log: {} full resyncs, \
         {} fallbacks to the primary, {} re-seeds",
        ready["revocation"]["feed_source"],
        ready["revocation"]["replica_fallbacks"],
        count("resynced in full"),
        count("falls back to the primary"),
        count("re-seeding"),
    );
    assert_eq!(count("resynced in full"), 1, "only the first sync:\n{log}");
    assert_eq!(count("re-seeding"), 0, "{log}");
    assert!(count("lagged behind the primary") > 0, "{log}");
    let metrics = client
        .get(verifier.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fallbacks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgetoken_revocation_replica_fallbacks_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(fallbacks.is_some_and(|n| n >= 2), "{fallbacks:?}");
}

/// A failover of the primary under a verifier that reads from a replica: its replica is
/// promoted or re-pointed, the feed follows through the sessions that fail meanwhile, and no
/// acknowledgement is false. Revokes at [`PER_SECOND`] while the primary is killed with
/// `kill -9`; checked: every answer is 200, 202 or 503, a 200 is refused by the verifier at
/// once and every acknowledged revocation afterwards, and the verifier turns fresh again.
/// Printed: the time from the kill to the mirror fresh again, and where the feed then reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_replicas_verifier_follows_a_failover_of_the_primary() {
    let mut redis = SentinelRedis::start();
    let deployment = Deployment::new();
    let sentinels = redis.sentinel_addresses();
    let old_primary = redis.primary_port().expect("the sentinels name a primary");
    let issuer_process =
        EdgetokenProcess::start(&config_text(&deployment, &sentinels, false), "issuer").await;
    let verifier =
        EdgetokenProcess::start(&config_text(&deployment, &sentinels, true), "verifier").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let source = feed_source(&readyz(&client, &verifier.url("")).await);
    assert!(
        replica_port(&source).is_some(),
        "not on a replica: {source}"
    );

    let offline = deployment.offline_issuer();
    let total = usize::try_from(8 * PER_SECOND).unwrap();
    let tokens: Vec<(usize, String)> = (0..total)
        .map(|i| (i, mint(&offline, "alice", "acme", "runs:read")))
        .collect();
    let run = tokio::spawn(revoke_steadily(
        client.clone(),
        issuer_process.url("/v1/revoke"),
        verifier.url(REQUIREMENT),
        tokens.clone(),
    ));
    tokio::time::sleep(BEFORE_KILL).await;
    let killed = Instant::now();
    redis.node_mut(old_primary).kill();
    eprintln!(
        "replicas (failover): primary on port {old_primary} killed (kill -9); verifier read from {source:?}"
    );
    let staleness = async || {
        readyz(&client, &verifier.url("")).await["revocation"]["staleness_seconds"]
            .as_f64()
            .unwrap_or(f64::INFINITY)
    };
    eventually("the verifier's mirror cut off", Duration::from_secs(10))
        .every(Duration::from_millis(20))
        .until(async || (staleness().await >= FRESH_MARK).then_some(()))
        .await;
    let fresh_at = eventually("the verifier's mirror fresh again", Duration::from_secs(45))
        .every(Duration::from_millis(20))
        .until(async || (staleness().await < FRESH_MARK).then(Instant::now))
        .await;
    let run = run.await.unwrap();
    let new_primary = redis.primary_port().expect("a primary after the failover");
    assert_ne!(new_primary, old_primary, "Sentinel promoted a replica");
    // Named once a session has chosen (between sessions it is empty, which would prove
    // nothing below).
    let source = eventually("the feed to name where it reads", Duration::from_secs(10))
        .until(async || {
            let source = feed_source(&readyz(&client, &verifier.url("")).await);
            (!source.is_empty()).then_some(source)
        })
        .await;
    eprintln!("replicas (failover): new primary on port {new_primary}");
    assert_ne!(
        replica_port(&source),
        Some(new_primary),
        "the feed takes the promoted primary for a replica"
    );
    let count = |pick: fn(StatusCode) -> bool| run.answers.iter().filter(|(_, s)| pick(*s)).count();
    eprintln!(
        "replicas (failover): kill -> verifier mirror fresh again: {:.0} ms; feed_source then {:?}, \
         replica_fallbacks {}; {} revokes: {} answered 200, {} answered 202, {} answered 503",
        (fresh_at - killed).as_secs_f64() * 1000.0,
        source,
        readyz(&client, &verifier.url("")).await["revocation"]["replica_fallbacks"],
        run.answers.len(),
        count(|s| s == StatusCode::OK),
        count(|s| s == StatusCode::ACCEPTED),
        count(|s| s == StatusCode::SERVICE_UNAVAILABLE),
    );
    run.assert_never_falsely_acknowledged();
    for (index, status) in &run.answers {
        if is_ack(*status) {
            assert_eq!(
                verify_status(&client, &verifier.url(REQUIREMENT), &tokens[*index].1).await,
                StatusCode::UNAUTHORIZED,
                "acknowledged token {index} ({status}) at the verifier"
            );
        }
    }
}

/// Replicas that stop confirming writes (their replication stream held back 3 s, beyond the
/// 500 ms `wait_timeout`) while revokes arrive at [`PER_SECOND`]: every revoke answers 503
/// because the replicas did not confirm it, none for a timeout. Each write waits for replicas
/// with `WAIT`, which blocks the connection it runs on; before the store batched the writes
/// that arrive together behind one `WAIT`, 20 revokes queued 20 half-second waits inside
/// Redis, and from about the 10th on each timed out waiting for the ones ahead (and dropped the
/// connection). Once the stream flows again, revokes are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_stop_confirming_get_revokes_refused_after_one_shared_wait_not_a_queue() {
    let (redis, proxies) = SentinelRedis::with_delayed_replication().await;
    let deployment = Deployment::new();
    // Under Sentinel each revoke waits for one replica (`min_replicas_acked` = 1).
    let config = config_text(&deployment, &redis.sentinel_addresses(), false);
    let issuer = EdgetokenProcess::start(&config, "issuer").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let offline = deployment.offline_issuer();
    let revoke_url = issuer.url("/v1/revoke");
    let status_of = async |token: String| revoke(&client, &revoke_url, 0, &token).await.status;
    assert_eq!(
        status_of(mint(&offline, "alice", "acme", "runs:read")).await,
        StatusCode::OK,
        "replicas confirm"
    );

    for proxy in &proxies {
        proxy.set_delay(Duration::from_secs(3), Duration::ZERO);
    }
    let tokens = (0..20)
        .map(|i| (i, mint(&offline, "alice", "acme", "runs:read")))
        .collect();
    // No verifier here (the URL is empty): a 200 is not checked against one, and fails the
    // all-503 assertion below instead.
    let run = revoke_steadily(client.clone(), revoke_url.clone(), String::new(), tokens).await;
    let statuses: Vec<u16> = run.answers.iter().map(|(_, s)| s.as_u16()).collect();
    eprintln!("replicas (held back): revokes answered {statuses:?}");
    assert!(
        run.answers
            .iter()
            .all(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let log = issuer.stderr();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("store unavailable"))
        .collect();
    let count = |what: &str| refusals.iter().filter(|l| l.contains(what)).count();
    let (short, timed_out) = (
        count("confirmed the revocation within"),
        count("did not answer within") + count("timed out"),
    );
    eprintln!("replicas (held back): {short} short of replicas, {timed_out} timed out");
    assert_eq!((short, timed_out), (20, 0), "{log}");

    for proxy in &proxies {
        proxy.set_delay(Duration::ZERO, Duration::ZERO);
    }
    let token = mint(&offline, "alice", "acme", "runs:read");
    eventually("a revoke confirmed again", Duration::from_secs(20))
        .until(async || (status_of(token.clone()).await == StatusCode::OK).then_some(()))
        .await;
}
