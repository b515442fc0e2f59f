//! Redis Sentinel failover with real processes (issue 11, THREATS F8, SPEC §3).
//!
//! Three `redis-server` (a primary and two replicas), three `redis-server --sentinel`, an
//! issuer and a verifier process configured with `sentinel_master_name` and
//! `sentinel_addresses`. Tokens are revoked through the issuer's `POST /v1/revoke` at 50 per
//! second while the primary is killed with `kill -9`. Checked: every answer is an
//! acknowledgement (200, or 202 with its bound) or 503, never anything else; each acknowledged
//! revocation is in the promoted primary and refused by the verifier, and no acknowledged token
//! is accepted at any point after its acknowledgement (202: after the bound it names); the
//! gap shows as 503s. Printed, not asserted (timings depend on the machine): the time from
//! the kill to "revokes accepted again" and to "all mirrors fresh".
//!
//! A second test makes the replicas miss an acknowledged revocation (their replication links go
//! through delaying proxies, lost with the primary) and checks that the mirrors write it back
//! into the promoted primary, the never-forgetful rule through a failover.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;

use crate::support::delay_proxy::DelayProxy;
use crate::support::deployment::{AUDIENCE, Deployment, ISSUER, mint};
use crate::support::eventually::eventually;
use crate::support::process::EdgetokenProcess;
use crate::support::sentinel::{MASTER_NAME, SentinelRedis};

/// The revocation rate of the issue.
const PER_SECOND: u64 = 50;
/// Revoking before the kill, so the steady state is part of the run.
const BEFORE_KILL: Duration = Duration::from_secs(2);
/// Revoking after revokes are accepted again, so the settled state is part of the run.
const AFTER_RECOVERY: Duration = Duration::from_secs(3);
/// The longest the failover may take before the test gives up.
const MAX_GAP: Duration = Duration::from_secs(45);
/// A mirror whose last confirmation is older than this is counted as cut off (2.5 heartbeats).
const STALE_MARK: f64 = 0.5;
/// Verification requirement: alice's tokens hold `runs:read` in acme.
const REQUIREMENT: &str = "/v1/verify?tenant=acme&permission=runs:read";

/// One revoke: which token, when it was sent and answered, the status, and for a 202 the
/// bound within which every verifier refuses the token anyway.
#[derive(Debug, Clone)]
struct Answer {
    token: usize,
    sent: Instant,
    answered: Instant,
    status: StatusCode,
    bound: Duration,
}

/// When `/readyz` was asked, and each mirror's staleness (issuer, verifier) in seconds.
type Sample = (Instant, Vec<f64>);

/// A token accepted after its acknowledgement (plus bound): what must never happen.
#[derive(Debug)]
struct Violation {
    token: usize,
    after_ack: Duration,
}

fn config_text(deployment: &Deployment, sentinels: &[String]) -> String {
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
         require_durability = \"replicated\"\n\
         [issuer]\ndirectory = \"{users}\"\nmints_per_hour = 100000\n",
        keys = deployment.dir.path().join("keys").display(),
        prefix = deployment.prefix,
        users = deployment.dir.path().join("users.toml").display(),
    )
}

/// The `jti` of a token minted by the test (its payload is trusted test data).
fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("payload segment");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON claims");
    claims["jti"].as_str().expect("jti").to_owned()
}

async fn verify_status(client: &reqwest::Client, url: &str, token: &str) -> StatusCode {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_or(StatusCode::SERVICE_UNAVAILABLE, |r| r.status())
}

async fn readyz(client: &reqwest::Client, base: &str) -> serde_json::Value {
    match client.get(format!("{base}/readyz")).send().await {
        Ok(response) => response.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

/// Revokes `token` by presenting it to the issuer (RFC 7009).
async fn revoke(client: &reqwest::Client, url: &str, index: usize, token: &str) -> Answer {
    let sent = Instant::now();
    let response = client
        .post(url)
        .form(&[("token", token)])
        .send()
        .await
        .expect("the issuer answers every revoke (it must not hang past its timeouts)");
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let bound = Duration::from_millis(body["max_staleness_ms"].as_u64().unwrap_or(0));
    Answer {
        token: index,
        sent,
        answered: Instant::now(),
        status,
        bound,
    }
}

fn is_ack(status: StatusCode) -> bool {
    status == StatusCode::OK || status == StatusCode::ACCEPTED
}

#[expect(
    clippy::too_many_lines,
    reason = "one failover scenario told in order: set up, revoke, kill, observe, check"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_no_acknowledged_revocation_and_never_acknowledges_falsely() {
    let mut redis = SentinelRedis::start();
    let deployment = Deployment::new();
    let config = config_text(&deployment, &redis.sentinel_addresses());
    // EDGETOKEN_SENTINEL_DEBUG=1 prints the answers' timeline and the issuer's log.
    let debug = std::env::var_os("EDGETOKEN_SENTINEL_DEBUG").is_some();
    let filter = if debug { "info" } else { "warn" };
    let issuer_process = EdgetokenProcess::start_logging(&config, "issuer", filter).await;
    let verifier = EdgetokenProcess::start(&config, "verifier").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The deployment's durability, as /readyz reports it.
    let ready = readyz(&client, &issuer_process.url("")).await;
    let durability = &ready["revocation"]["durability"];
    eprintln!("sentinel: issuer /readyz durability {durability}");
    assert_eq!(durability["min_replicas_acked"], 1, "{ready}");
    assert_eq!(durability["connected_replicas"], 2, "{ready}");
    assert_eq!(durability["level"], "replicated", "{ready}");

    let old_primary = redis.primary_port().expect("the sentinels name a primary");
    let revoke_url = issuer_process.url("/v1/revoke");
    let verify_url = verifier.url(REQUIREMENT);
    let offline = deployment.offline_issuer();
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let violations: Arc<Mutex<Vec<Violation>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Sweeps every acknowledged token against the verifier: none may pass once its
    // acknowledgement (plus the bound of a 202) is past.
    let prober = {
        let (client, url, tokens, answers, violations, stop) = (
            client.clone(),
            verify_url.clone(),
            Arc::clone(&tokens),
            Arc::clone(&answers),
            Arc::clone(&violations),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let due: Vec<(usize, Instant)> = answers
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|a| is_ack(a.status))
                    .map(|a| (a.token, a.answered + a.bound))
                    .filter(|(_, due)| *due <= Instant::now())
                    .collect();
                for (token, due) in due {
                    let text = tokens.lock().unwrap()[token].clone();
                    if verify_status(&client, &url, &text).await == StatusCode::OK {
                        violations.lock().unwrap().push(Violation {
                            token,
                            after_ack: due.elapsed(),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Watches how fresh each mirror is.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let monitor = {
        let (client, bases, samples, stop) = (
            client.clone(),
            [issuer_process.url(""), verifier.url("")],
            Arc::clone(&samples),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let mut staleness = Vec::new();
                for base in &bases {
                    let ready = readyz(&client, base).await;
                    staleness.push(
                        ready["revocation"]["staleness_seconds"]
                            .as_f64()
                            .unwrap_or(f64::INFINITY),
                    );
                }
                samples.lock().unwrap().push((at, staleness));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Revoke at 50/s; kill the primary after BEFORE_KILL; go on until revokes have been
    // accepted again for AFTER_RECOVERY.
    let started = Instant::now();
    let mut killed_at: Option<Instant> = None;
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    let mut requests = Vec::new();
    loop {
        pace.tick().await;
        if killed_at.is_none() && started.elapsed() >= BEFORE_KILL {
            killed_at = Some(Instant::now());
            redis.node_mut(old_primary).kill();
            eprintln!("sentinel: primary on port {old_primary} killed (kill -9)");
        }
        if let Some(killed) = killed_at {
            let recovered = answers
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.sent > killed && is_ack(a.status))
                .map(|a| a.answered)
                .min();
            if recovered.is_some_and(|at| at.elapsed() >= AFTER_RECOVERY) {
                break;
            }
            assert!(
                killed.elapsed() < MAX_GAP,
                "revokes not accepted again within {MAX_GAP:?} of the kill"
            );
        }
        let token = mint(&offline, "alice", "acme", "runs:read");
        let index = {
            let mut tokens = tokens.lock().unwrap();
            tokens.push(token.clone());
            tokens.len() - 1
        };
        let (client, revoke_url, verify_url, answers, violations) = (
            client.clone(),
            revoke_url.clone(),
            verify_url.clone(),
            Arc::clone(&answers),
            Arc::clone(&violations),
        );
        requests.push(tokio::spawn(async move {
            let answer = revoke(&client, &revoke_url, index, &token).await;
            let confirmed = answer.status == StatusCode::OK;
            answers.lock().unwrap().push(answer.clone());
            // A revoke confirmed by every verifier: the very next request must fail.
            if confirmed && verify_status(&client, &verify_url, &token).await == StatusCode::OK {
                violations.lock().unwrap().push(Violation {
                    token: index,
                    after_ack: answer.answered.elapsed(),
                });
            }
        }));
    }
    for request in requests {
        request.await.unwrap();
    }
    let killed = killed_at.expect("the primary was killed");

    // Every mirror fresh again: both were seen cut off after the kill, and now are not.
    let fresh_at = eventually("every mirror to be fresh again", Duration::from_secs(30))
        .until(async || {
            let samples = samples.lock().unwrap();
            let after: Vec<_> = samples.iter().filter(|(at, _)| *at > killed).collect();
            let mut cut_off = [false, false];
            for (at, staleness) in after {
                for (i, s) in staleness.iter().enumerate() {
                    cut_off[i] |= *s >= STALE_MARK;
                }
                if cut_off.iter().all(|c| *c) && staleness.iter().all(|s| *s < STALE_MARK) {
                    return Some(*at);
                }
            }
            None
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    prober.await.unwrap();
    monitor.await.unwrap();

    let answers = answers.lock().unwrap().clone();
    let tokens = tokens.lock().unwrap().clone();
    let acked: Vec<&Answer> = answers.iter().filter(|a| is_ack(a.status)).collect();
    let refused: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let accepted_again = answers
        .iter()
        .filter(|a| a.sent > killed && is_ack(a.status))
        .map(|a| a.answered)
        .min()
        .expect("revokes accepted again");
    let lagging = acked
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .count();
    eprintln!(
        "sentinel: {} revokes: {} acknowledged ({lagging} of them 202), {} answered 503",
        answers.len(),
        acked.len(),
        refused.len()
    );
    eprintln!(
        "sentinel: kill -> revokes accepted again: {:.0} ms",
        (accepted_again - killed).as_secs_f64() * 1000.0
    );
    eprintln!(
        "sentinel: kill -> all mirrors fresh: {:.0} ms",
        (fresh_at - killed).as_secs_f64() * 1000.0
    );

    if debug {
        let mut timeline: Vec<_> = answers
            .iter()
            .map(|a| {
                (
                    a.sent.saturating_duration_since(killed).as_millis(),
                    a.answered.saturating_duration_since(killed).as_millis(),
                    a.status.as_u16(),
                )
            })
            .collect();
        timeline.sort_unstable();
        eprintln!("timeline (sent, answered, status) ms after kill: {timeline:?}");
        eprintln!("issuer stderr:\n{}", issuer_process.stderr());
    }

    // Never a false acknowledgement: every answer is an acknowledgement or a 503.
    let others: Vec<_> = answers
        .iter()
        .filter(|a| !is_ack(a.status) && a.status != StatusCode::SERVICE_UNAVAILABLE)
        .map(|a| a.status)
        .collect();
    assert!(others.is_empty(), "revokes answered {others:?}");
    assert!(!refused.is_empty(), "the failover gap showed no 503");
    let violations: Vec<String> = violations
        .lock()
        .unwrap()
        .iter()
        .map(|v| format!("token {} accepted {:?} after", v.token, v.after_ack))
        .collect();
    assert!(
        violations.is_empty(),
        "tokens accepted after their acknowledgement: {violations:?}"
    );

    // The promoted primary holds every acknowledged revocation.
    let new_primary = redis.primary_port().expect("a primary after the failover");
    assert_ne!(new_primary, old_primary, "Sentinel promoted a replica");
    let mut conn = redis.node(new_primary).admin();
    let key = format!("{{{}}}:tok", deployment.prefix);
    let missing: Vec<usize> = acked
        .iter()
        .filter(|a| {
            redis::cmd("ZSCORE")
                .arg(&key)
                .arg(jti(&tokens[a.token]))
                .query::<Option<f64>>(&mut conn)
                .unwrap()
                .is_none()
        })
        .map(|a| a.token)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged revocations missing from the new primary: {missing:?}"
    );

    // And the verifier's mirror refuses every one of them.
    for answer in &acked {
        let status = verify_status(&client, &verify_url, &tokens[answer.token]).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "acknowledged token {} at the verifier",
            answer.token
        );
    }
    let ready = readyz(&client, &verifier.url("")).await;
    eprintln!(
        "sentinel: verifier /readyz durability after the failover {}",
        ready["revocation"]["durability"]
    );
}

/// The never-forgetful rule through a failover: a revocation acknowledged (with
/// `min_replicas_acked = 0`, so without waiting for replicas) that no replica received is
/// written back into the promoted primary by the mirrors that hold it, and the verifier refuses
/// the token at every point in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_that_missed_a_revocation_is_reseeded_from_the_mirrors() {
    // The replicas replicate through delaying proxies, so a write can be held back from them
    // and then lost with the proxies when the primary dies.
    let primary = SentinelRedis::primary();
    let upstream = format!("127.0.0.1:{}", primary.port).parse().unwrap();
    let proxies = [
        DelayProxy::start(upstream).await,
        DelayProxy::start(upstream).await,
    ];
    let links = [proxies[0].port(), proxies[1].port()];
    let mut redis = tokio::task::block_in_place(|| SentinelRedis::around(primary, links));
    let deployment = Deployment::new();
    let config = format!(
        "{}\n",
        config_text(&deployment, &redis.sentinel_addresses()).replace(
            "require_durability = \"replicated\"\n",
            "min_replicas_acked = 0\n"
        )
    );
    let issuer_process = EdgetokenProcess::start(&config, "issuer").await;
    let verifier = EdgetokenProcess::start(&config, "verifier").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let verify_url = verifier.url(REQUIREMENT);
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let key = format!("{{{}}}:tok", deployment.prefix);
    let has_revocation = |node: &crate::support::sentinel::Node| {
        redis::cmd("ZSCORE")
            .arg(&key)
            .arg(jti(&token))
            .query::<Option<f64>>(&mut node.admin())
            .unwrap()
            .is_some()
    };

    // Hold the replication stream back, revoke, and check that only the primary has it.
    for proxy in &proxies {
        proxy.set_delay(Duration::from_secs(30), Duration::ZERO);
    }
    let old_primary = redis.primary_port().expect("a primary");
    let answer = revoke(&client, &issuer_process.url("/v1/revoke"), 0, &token).await;
    assert_eq!(answer.status, StatusCode::OK, "the revoke is confirmed");
    assert_eq!(
        verify_status(&client, &verify_url, &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(has_revocation(redis.node(old_primary)));
    let replicas: Vec<u16> = redis
        .nodes
        .iter()
        .map(|n| n.port)
        .filter(|p| *p != old_primary)
        .collect();
    for port in &replicas {
        assert!(
            !has_revocation(redis.node(*port)),
            "replica {port} got the revocation"
        );
    }

    // Kill the primary, and the held-back stream with the proxies.
    let killed = Instant::now();
    redis.node_mut(old_primary).kill();
    drop(proxies);

    // Until the promoted primary holds the revocation again, the verifier never accepts it.
    let reseeded_at = eventually(
        "the promoted primary to hold the revocation",
        Duration::from_secs(45),
    )
    .every(Duration::from_millis(50))
    .until(async || {
        let status = verify_status(&client, &verify_url, &token).await;
        assert_ne!(
            status,
            StatusCode::OK,
            "revoked token accepted during failover"
        );
        let port = redis.primary_port().filter(|p| *p != old_primary)?;
        tokio::task::block_in_place(|| has_revocation(redis.node(port))).then(Instant::now)
    })
    .await;
    eprintln!(
        "sentinel: kill -> promoted primary re-seeded with the missed revocation: {:.0} ms",
        (reseeded_at - killed).as_secs_f64() * 1000.0
    );
    assert_eq!(
        verify_status(&client, &verify_url, &token).await,
        StatusCode::UNAUTHORIZED
    );
}
