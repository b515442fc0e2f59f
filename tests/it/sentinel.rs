//! Redis Sentinel failover with real processes (issue 11, THREATS F8, SPEC §3).
//!
//! Three `redis-server` (a primary and two replicas), three `redis-server --sentinel`, an
//! issuer and a verifier process configured with `sentinel_master_name` and
//! `sentinel_addresses`. Tokens are revoked through the issuer at 50 per second while the
//! primary is killed with `kill -9` (the driver and its checks: `support::failover`); here,
//! also: the gap shows as 503s, and each acknowledged revocation is in the promoted primary.
//!
//! A second test makes the replicas miss an acknowledged revocation (their replication links go
//! through delaying proxies, lost with the primary) and checks that the mirrors write it back
//! into the promoted primary, the never-forgetful rule through a failover.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::deployment::{AUDIENCE, Deployment, ISSUER, mint};
use crate::support::eventually::eventually;
use crate::support::failover::{REQUIREMENT, Run, client, jti, readyz, revoke, verify_status};
use crate::support::process::EdgetokenProcess;
use crate::support::sentinel::{MASTER_NAME, SentinelRedis};

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
    let client = client();

    // The deployment's durability, as /readyz reports it.
    let ready = readyz(&client, &issuer_process.url("")).await;
    let durability = &ready["revocation"]["durability"];
    eprintln!("sentinel: issuer /readyz durability {durability}");
    assert_eq!(durability["min_replicas_acked"], 1, "{ready}");
    assert_eq!(durability["connected_replicas"], 2, "{ready}");
    assert_eq!(durability["level"], "replicated", "{ready}");

    let old_primary = redis.primary_port().expect("the sentinels name a primary");
    let outcome = Run {
        label: "sentinel",
        deployment: &deployment,
        issuer: &issuer_process,
        verifier: &verifier,
        expect_gap: true,
        debug,
        settled: None,
    }
    .through(|| {
        redis.node_mut(old_primary).kill();
        eprintln!("sentinel: primary on port {old_primary} killed (kill -9)");
    })
    .await;

    // The promoted primary holds every acknowledged revocation.
    let new_primary = redis.primary_port().expect("a primary after the failover");
    assert_ne!(new_primary, old_primary, "Sentinel promoted a replica");
    let missing = outcome.missing_from(&mut redis.node(new_primary).admin(), &deployment.prefix);
    assert!(
        missing.is_empty(),
        "acknowledged revocations missing from the new primary: {missing:?}"
    );
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
    let (mut redis, proxies) = SentinelRedis::with_delayed_replication().await;
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
    let client = client();
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
    redis.allow_failover();

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
