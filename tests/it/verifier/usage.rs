//! "Last used" (issue 10): verifiers record accepted token uses in memory and flush them to
//! Redis (or this process's memory) in one batch per interval; the issuer's list API shows
//! them. Against a real redis-server: the number of Redis writes per token is counted with
//! `MONITOR`, two verifiers merge, a rejected token records nothing, and a killed Redis
//! leaves verification answering while the dropped usage is counted in `/metrics`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgetoken::config::Role;
use edgetoken::settings::Settings;
use edgetoken::usage::{RedisUsage, TokenUse, UsageStore};
use edgetoken::{Clock as _, ManualClock};
use redis::Commands as _;
use reqwest::StatusCode;
use time::OffsetDateTime;

use crate::support::deployment::{ALICE_PASSWORD, Deployment, mint, mint_via_api};
use crate::support::eventually::eventually;
use crate::support::process::{EdgetokenProcess, Served};
use crate::support::redis::RedisServer;
use crate::support::tokens::{parts, unb64};

const VERIFY: &str = "/v1/verify?tenant=acme&permission=runs:read";

/// `config` with usage flushed every `flush`.
fn with_flush(mut config: Settings, flush: Duration) -> Settings {
    config.usage.flush = flush;
    config
}

async fn verify(client: &reqwest::Client, served: &Served, token: &str) -> StatusCode {
    client
        .get(served.url(VERIFY))
        .bearer_auth(token)
        .header("User-Agent", "usage-test/1.0")
        .send()
        .await
        .expect("verify request")
        .status()
}

/// The usage hash of token `id` (in tenant acme) as Redis holds it.
fn usage_hash(deployment: &Deployment, id: &str) -> std::collections::HashMap<String, String> {
    let mut conn = redis::Client::open(deployment.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    conn.hgetall(format!("{{{}}}:use:acme:{id}", deployment.prefix))
        .unwrap()
}

/// alice's token `id` as the list API shows it.
async fn listed(served: &Served, id: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(served.url("/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .expect("the token is listed")
}

/// The commands a Redis server receives, as `MONITOR` reports them, from a raw connection.
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    stream: TcpStream,
}

impl Monitor {
    fn start(url: &str) -> Self {
        let address = url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let mut stream = TcpStream::connect(&address).expect("connect for MONITOR");
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim(), "+OK", "MONITOR started");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self { lines, stream }
    }

    /// Commands sent by clients (not run inside a script) that name `key`, but for this
    /// test's own reads (`HGETALL`).
    fn client_commands_on(&self, key: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| {
                line.contains(key) && !line.contains(" lua]") && !line.contains("\"HGETALL\"")
            })
            .cloned()
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_uses_of_one_token_make_at_most_two_redis_writes() {
    let deployment = Deployment::new();
    let served = Served::start(deployment.config(""), Role::Verifier).await;
    assert_eq!(
        served.services.settings.usage.flush,
        Duration::from_secs(10)
    );
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let id = jti(&token);
    let key = format!("{{{}}}:use:acme:{id}", deployment.prefix);
    let monitor = Monitor::start(&deployment.redis.url());

    let client = reqwest::Client::new();
    let started = Instant::now();
    let streams = (0..8).map(|_| {
        let (client, url, token) = (client.clone(), served.url(VERIFY), token.clone());
        async move {
            for _ in 0..1250 {
                let status = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, StatusCode::OK);
            }
        }
    });
    futures_util::future::join_all(streams).await;
    eprintln!(
        "10,000 accepted requests in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // The flusher runs every 10 s: the requests span at most one flush boundary.
    let uses = eventually("the 10,000 uses to be flushed", Duration::from_secs(25))
        .until(async || {
            let hash = usage_hash(&deployment, &id);
            (hash.get("uses").map(String::as_str) == Some("10000")).then_some(hash)
        })
        .await;
    assert_eq!(uses["from"], "127.0.0.1");
    let writes = monitor.client_commands_on(&key);
    eprintln!(
        "Redis commands naming the usage key: {} ({:?})",
        writes.len(),
        writes
            .iter()
            .map(|w| w.split(' ').nth(3).unwrap_or_default())
            .collect::<Vec<_>>()
    );
    assert!(
        (1..=2).contains(&writes.len()),
        "at most two writes for 10,000 uses: {writes:#?}"
    );
    assert!(
        writes.iter().all(|w| w.contains("\"EVALSHA\"")),
        "{writes:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_verifiers_flushing_one_token_merge_to_the_latest_time_and_the_summed_count() {
    let deployment = Deployment::new();
    let config = || with_flush(deployment.config(""), Duration::from_secs(1));
    let now = now_plus(0);
    // The first verifier's clock is ahead, so its (earlier) flush holds the latest use.
    let ahead = Served::start_with_clock(
        config(),
        Role::Verifier,
        Arc::new(ManualClock::at(now + 100)),
    )
    .await;
    let behind = Served::start(config(), Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let id = jti(&token);
    let client = reqwest::Client::new();

    for _ in 0..3 {
        assert_eq!(verify(&client, &ahead, &token).await, StatusCode::OK);
    }
    eventually("the first verifier's flush", Duration::from_secs(5))
        .until(async || (usage_hash(&deployment, &id).get("uses")? == "3").then_some(()))
        .await;
    for _ in 0..5 {
        assert_eq!(verify(&client, &behind, &token).await, StatusCode::OK);
    }
    let hash = eventually("the second verifier's flush", Duration::from_secs(5))
        .until(async || {
            let hash = usage_hash(&deployment, &id);
            (hash.get("uses")? == "8").then_some(hash)
        })
        .await;
    assert_eq!(hash["at"], (now + 100).to_string(), "the latest use wins");
    assert_eq!(hash["first_at"], (now + 100).to_string());
    assert_eq!(hash["agent"], "usage-test/1.0");
    let ttl: i64 = redis::Client::open(deployment.redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
        .ttl(format!("{{{}}}:use:acme:{id}", deployment.prefix))
        .unwrap();
    assert!(
        ttl > 3600,
        "expires with the record (exp + retention): {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_merge_commutes_and_reports_the_first_use_once() {
    let deployment = Deployment::new();
    let store = UsageStore::Redis(
        RedisUsage::new(
            &deployment.redis.url(),
            &deployment.prefix,
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let at = |unix: i64| OffsetDateTime::from_unix_timestamp(unix).unwrap();
    let batch = |uses: u64, last: i64, from: &str| TokenUse {
        tenant: "acme".parse().unwrap(),
        id: "uuuuuuuuuuuuuuuuuuuuuu".parse().unwrap(),
        expires_at: at(now_plus(3600)),
        uses,
        last_at: at(last),
        from: Some(from.to_owned()),
        agent: None,
    };
    let retention = Duration::from_hours(24);
    let base = now_plus(0);
    // The later use arrives first: the earlier flush must not move the time back.
    let first = store
        .merge(&[batch(3, base + 10, "10.0.0.1")], retention)
        .await
        .unwrap();
    let second = store
        .merge(&[batch(4, base + 5, "10.0.0.2")], retention)
        .await
        .unwrap();
    assert_eq!((first, second), (vec![true], vec![false]));
    let tenant = "acme".parse().unwrap();
    let usage = store
        .of_tokens(
            &tenant,
            &["uuuuuuuuuuuuuuuuuuuuuu", "never-used-token-000000"],
        )
        .await
        .unwrap();
    assert_eq!(usage.len(), 1, "a token never used has no usage");
    let usage = &usage["uuuuuuuuuuuuuuuuuuuuuu"];
    assert_eq!(usage.uses, 7);
    assert_eq!(usage.last_used_at, Some(at(base + 10)));
    assert_eq!(usage.last_used_from.as_deref(), Some("10.0.0.1"));
}

/// The `jti` of a token this test minted.
fn jti(token: &str) -> String {
    let payload: serde_json::Value = serde_json::from_slice(&unb64(parts(token)[1])).unwrap();
    payload["jti"].as_str().unwrap().to_owned()
}

fn now_plus(seconds: i64) -> i64 {
    edgetoken::SystemClock.unix_now() + seconds
}

/// Mints through the API, uses the token once, and waits for the list API to show it.
async fn use_shows_in_the_list_within_flush_secs_and_a_second(served: &Served) {
    let (id, token) = mint_via_api(&served.url(""), &["runs:read"]).await;
    let before = listed(served, &id).await;
    assert_eq!(before["uses"], 0);
    assert!(before["last_used_at"].is_null() && before["last_used_from"].is_null());

    let response = reqwest::Client::new()
        .get(served.url(VERIFY))
        .bearer_auth(&token)
        // From loopback, a trusted proxy by default: its forwarded address is the client's.
        .header("X-Real-IP", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let used = Instant::now();
    let flush = served.services.settings.usage.flush;
    let shown = eventually("the use in the list API", flush + Duration::from_secs(1))
        .every(Duration::from_millis(50))
        .until(async || {
            let token = listed(served, &id).await;
            (token["uses"] == 1).then_some(token)
        })
        .await;
    eprintln!(
        "use visible in the list API after {:.2} s (flush every {} s)",
        used.elapsed().as_secs_f64(),
        flush.as_secs()
    );
    assert_eq!(shown["last_used_from"], "203.0.113.7");
    let at = OffsetDateTime::parse(
        shown["last_used_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((at.unix_timestamp() - now_plus(0)).abs() <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_api_shows_a_use_within_flush_secs_and_a_second_with_redis() {
    let deployment = Deployment::new();
    let served = Served::start(
        with_flush(deployment.config(""), Duration::from_secs(1)),
        Role::All,
    )
    .await;
    use_shows_in_the_list_within_flush_secs_and_a_second(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_api_shows_a_use_with_the_in_process_store() {
    let deployment = Deployment::new();
    let mut config = with_flush(deployment.config(""), Duration::from_secs(1));
    config.revocation.redis_url = None;
    let served = Served::start(config, Role::All).await;
    use_shows_in_the_list_within_flush_secs_and_a_second(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_records_nothing() {
    let deployment = Deployment::new();
    let served = Served::start(
        with_flush(deployment.config(""), Duration::from_secs(1)),
        Role::All,
    )
    .await;
    let (refused_id, refused) = mint_via_api(&served.url(""), &["runs:read"]).await;
    let (used_id, used) = mint_via_api(&served.url(""), &["runs:read"]).await;
    let client = reqwest::Client::new();
    // A valid signature for another tenant (403), and the same token tampered with (401).
    let wrong_tenant = client
        .get(served.url("/v1/verify?tenant=globex&permission=runs:read"))
        .bearer_auth(&refused)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_tenant.status(), StatusCode::FORBIDDEN);
    let tampered = format!("{}A", &refused[..refused.len() - 1]);
    let tampered = if tampered == refused {
        format!("{}B", &refused[..refused.len() - 1])
    } else {
        tampered
    };
    assert_eq!(
        verify(&client, &served, &tampered).await,
        StatusCode::UNAUTHORIZED
    );
    // An accepted use after them: once it is flushed, so would anything recorded before it.
    assert_eq!(verify(&client, &served, &used).await, StatusCode::OK);
    eventually("the accepted use to be flushed", Duration::from_secs(5))
        .until(async || (listed(&served, &used_id).await["uses"] == 1).then_some(()))
        .await;
    assert!(usage_hash(&deployment, &refused_id).is_empty());
    let listed = listed(&served, &refused_id).await;
    assert_eq!(listed["uses"], 0);
    assert!(listed["last_used_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_disabled_records_nothing() {
    let deployment = Deployment::new();
    let mut config = with_flush(deployment.config(""), Duration::from_secs(1));
    config.usage.enabled = false;
    let served = Served::start(config, Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let id = jti(&token);
    assert_eq!(
        verify(&reqwest::Client::new(), &served, &token).await,
        StatusCode::OK
    );
    assert!(
        served
            .services
            .verifier_api()
            .unwrap()
            .decider
            .usage()
            .is_none()
    );
    let metrics = reqwest::get(served.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("edgetoken_usage_flushed_total 0"),
        "{metrics}"
    );
    assert!(usage_hash(&deployment, &id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_flushes_keeps_verifying_and_counts_dropped_usage() {
    let deployment = Deployment::new();
    let mut redis = RedisServer::start();
    let mut config = with_flush(deployment.config(""), Duration::from_secs(1));
    config.revocation.redis_url = Some(redis.url());
    // The mirror's own staleness rule is not under test here.
    config.revocation.max_staleness = Duration::from_mins(2);
    let served = Served::start(config, Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let client = reqwest::Client::new();
    assert_eq!(verify(&client, &served, &token).await, StatusCode::OK);
    let usage = served
        .services
        .verifier_api()
        .unwrap()
        .decider
        .usage()
        .unwrap()
        .clone();
    eventually("a flush to Redis", Duration::from_secs(5))
        .until(async || (usage.stats().flushed >= 1).then_some(()))
        .await;

    redis.kill();
    let mut slowest = Duration::ZERO;
    let mut requests = 0_u32;
    let dropped = eventually("usage dropped while Redis is down", Duration::from_secs(15))
        .every(Duration::from_millis(20))
        .until(async || {
            let sent = Instant::now();
            assert_eq!(verify(&client, &served, &token).await, StatusCode::OK);
            slowest = slowest.max(sent.elapsed());
            requests += 1;
            let metrics = reqwest::get(served.url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metrics
                .lines()
                .find(|l| l.starts_with(r#"edgetoken_usage_dropped_total{reason="store"}"#))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .filter(|dropped| *dropped > 0)
        })
        .await;
    eprintln!(
        "Redis down: {requests} requests all 200, slowest {:.2} ms; {dropped} aggregates dropped",
        slowest.as_secs_f64() * 1000.0
    );
    assert!(usage.stats().failed_flushes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_introspection_records_a_use_and_inactive_does_not() {
    let deployment = Deployment::new();
    let secret = "introspection-secret-0123456789-abcdef";
    let extra =
        format!("[[verifier.introspection_clients]]\nid = \"gateway\"\nsecret = \"{secret}\"\n");
    let served = Served::start(
        with_flush(deployment.config(&extra), Duration::from_secs(1)),
        Role::Verifier,
    )
    .await;
    let issuer = deployment.offline_issuer();
    let (active, tampered) = (
        mint(&issuer, "alice", "acme", "runs:read"),
        mint(&issuer, "alice", "acme", "runs:read"),
    );
    let introspect = async |token: &str| -> serde_json::Value {
        reqwest::Client::new()
            .post(served.url("/v1/introspect"))
            .basic_auth("gateway", Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert_eq!(introspect(&format!("{tampered}x")).await["active"], false);
    assert_eq!(introspect(&active).await["active"], true);
    let hash = eventually("the introspected use to be flushed", Duration::from_secs(5))
        .until(async || {
            let hash = usage_hash(&deployment, &jti(&active));
            (hash.get("uses")? == "1").then_some(hash)
        })
        .await;
    assert_eq!(hash["from"], "127.0.0.1");
    assert!(usage_hash(&deployment, &jti(&tampered)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_records_accepted_uses_with_the_tcp_peer() {
    use edgetoken::http::layer::RequireToken;
    use edgetoken::usage::{MemoryUsage, UsageRecorder, UsageSettings};
    use tower::ServiceExt as _;

    let deployment = Deployment::new();
    let served = Served::start(deployment.config(""), Role::Verifier).await;
    let clock: Arc<dyn edgetoken::Clock> = Arc::new(edgetoken::SystemClock);
    let store = UsageStore::Memory(MemoryUsage::new(Arc::clone(&clock)));
    let recorder = UsageRecorder::new(
        UsageSettings::default(),
        store.clone(),
        Duration::from_hours(24),
        clock,
    );
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(
            RequireToken::new(Arc::clone(&served.services.verifier)).with_usage(recorder.clone()),
        );
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let request = |token: &str| {
        let mut request = axum::http::Request::builder()
            .uri("/")
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "layer-client")
            .body(axum::body::Body::empty())
            .unwrap();
        request.extensions_mut().insert(axum::extract::ConnectInfo(
            "198.51.100.20:4000"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
        ));
        request
    };
    for _ in 0..2 {
        let response = app.clone().oneshot(request(&token)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = app.clone().oneshot(request("not.a.token")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    recorder.flush_now().await;
    let tenant = "acme".parse().unwrap();
    let usage = store
        .of_tokens(&tenant, &[jti(&token).as_str()])
        .await
        .unwrap();
    let usage = &usage[&jti(&token)];
    assert_eq!(usage.uses, 2);
    assert_eq!(usage.last_used_from.as_deref(), Some("198.51.100.20"));
    assert_eq!(usage.last_used_agent.as_deref(), Some("layer-client"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_verifier_processes_sum_their_uses_and_audit_the_first_use_once() {
    let deployment = Deployment::new();
    let config = deployment.config_text("[usage]\nflush_secs = 1\n");
    let verifiers = futures_util::future::join_all(
        (0..2).map(|_| EdgetokenProcess::start_logging(&config, "verifier", "warn,audit=info")),
    )
    .await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let id = jti(&token);
    let client = reqwest::Client::new();
    for (verifier, uses) in verifiers.iter().zip([2, 3]) {
        for _ in 0..uses {
            let status = client
                .get(verifier.url(VERIFY))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::OK);
        }
    }
    eventually("both processes' uses to be summed", Duration::from_secs(5))
        .until(async || (usage_hash(&deployment, &id).get("uses")? == "5").then_some(()))
        .await;
    let audits = || -> Vec<usize> {
        verifiers
            .iter()
            .map(|v| {
                v.stderr()
                    .lines()
                    .filter(|l| l.contains("first_use") && l.contains(&id))
                    .count()
            })
            .collect()
    };
    // Logged just after the flush that created the key returned.
    let audited = eventually("the first-use audit event", Duration::from_secs(5))
        .until(async || {
            let audited = audits();
            (audited.iter().sum::<usize>() >= 1).then_some(audited)
        })
        .await;
    assert_eq!(
        audited.iter().sum::<usize>(),
        1,
        "one first_use audit event across both verifiers: {audited:?}"
    );
}
