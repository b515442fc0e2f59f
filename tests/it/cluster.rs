//! Redis Cluster failover with real processes (issue 11, THREATS F8, SPEC §3).
//!
//! Six `redis-server --cluster-enabled yes` (three primaries, one replica each; for the kill,
//! a second replica of the slot's primary), an issuer and a verifier process configured with
//! `cluster_nodes`. Every key of the deployment is in the
//! slot of `{key_prefix}`; tokens are revoked through the issuer at 50 per second while that
//! slot's primary is replaced: by `CLUSTER FAILOVER` on its replica, or by `kill -9`. The
//! driver and its checks are in `support::failover` (never a false acknowledgement, no
//! acknowledged token accepted after its acknowledgement, every acknowledged token refused by
//! the verifier); here, also: every acknowledged revocation is in the slot's new primary, and
//! `/readyz` names the slot and its primary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::cluster::{ClusterRedis, migrate_slot};
use crate::support::deployment::{AUDIENCE, Deployment, ISSUER};
use reqwest::StatusCode;

use crate::support::deployment::mint;
use crate::support::failover::{Outcome, REQUIREMENT, Run, client, readyz, revoke, verify_status};
use crate::support::process::EdgetokenProcess;

fn config_text(deployment: &Deployment, nodes: &[String]) -> String {
    config_reading(deployment, nodes, false)
}

/// As [`config_text`], with the feed reading from the slot's replicas or not.
fn config_reading(deployment: &Deployment, nodes: &[String], read_from_replicas: bool) -> String {
    let nodes = nodes
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[token]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         [keys]\ndir = \"{keys}\"\n\
         [revocation]\ncluster_nodes = [{nodes}]\nkey_prefix = \"{prefix}\"\n\
         heartbeat_ms = 200\nmax_staleness_secs = 10\nwait_timeout_ms = 500\n\
         require_durability = \"replicated\"\nread_from_replicas = {read_from_replicas}\n\
         [issuer]\ndirectory = \"{users}\"\nmints_per_hour = 100000\n",
        keys = deployment.dir.path().join("keys").display(),
        prefix = deployment.prefix,
        users = deployment.dir.path().join("users.toml").display(),
    )
}

/// How the slot's primary is replaced.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `CLUSTER FAILOVER` on the slot's replica.
    Failover,
    /// `kill -9` of the slot's primary.
    Kill,
}

/// Where the verifier's feed reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// The slot's primary (the default).
    Primary,
    /// One of the slot's replicas (`read_from_replicas`), checked before the fault.
    Replica,
}

/// Starts the cluster and both processes, checks `/readyz`, revokes through `fault`, and
/// checks that the slot's new primary holds every acknowledged revocation.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario told in order: set up, check placement, fault, check"
)]
async fn slot_primary_replaced(fault: Fault, feed_reads: Reads) {
    let mut redis = ClusterRedis::start();
    let deployment = Deployment::new();
    let slot = redis.keyslot(&format!("{{{}}}", deployment.prefix));
    let old_primary = redis.slot_primary(slot).expect("a primary for the slot");
    let replica = redis.replica_of(old_primary).expect("a replica of it");
    // After a kill the promoted replica needs a replica of its own, or revokes (which wait
    // for one) answer 503 until the dead node is back: the slot's primary gets a second one.
    // After CLUSTER FAILOVER the old primary is the new one's replica.
    let replicas = match fault {
        Fault::Failover => 1,
        Fault::Kill => {
            redis.add_replica(old_primary);
            2
        }
    };

    let config = config_text(&deployment, &redis.addresses());
    // EDGETOKEN_CLUSTER_DEBUG=1 prints the answers' timeline and the issuer's log.
    let debug = std::env::var_os("EDGETOKEN_CLUSTER_DEBUG").is_some();
    let filter = if debug { "info" } else { "warn" };
    let issuer = EdgetokenProcess::start_logging(&config, "issuer", filter).await;
    let ports: Vec<u16> = redis.nodes.iter().map(|n| n.port).collect();
    let subscribed_before: Vec<usize> = ports
        .iter()
        .map(|p| redis.node(*p).pubsub_clients())
        .collect();
    let verifier_config = config_reading(
        &deployment,
        &redis.addresses(),
        feed_reads == Reads::Replica,
    );
    let verifier = EdgetokenProcess::start(&verifier_config, "verifier").await;
    let client = client();

    // The verifier's feed reads where it should, and its one subscription is there. Source and
    // subscriptions are read together until they agree: after a session that left a replica
    // (one that lagged or failed its first sync, the freshly added one say) `feed_source` is
    // empty until the next session chooses again, and a connection another process just
    // closed or opened (the issuer's, on a loaded machine) may still show for a moment.
    let mut ready = serde_json::Value::Null;
    let mut source = String::new();
    let mut seen: Vec<usize> = Vec::new();
    let mut expected: Vec<usize> = Vec::new();
    let mut reading: Option<u16> = None;
    for _ in 0..100 {
        ready = readyz(&client, &verifier.url("")).await;
        source = ready["revocation"]["feed_source"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        reading = match feed_reads {
            Reads::Primary => (source == "primary").then_some(old_primary),
            Reads::Replica => source
                .strip_prefix("replica 127.0.0.1:")
                .and_then(|p| p.parse().ok()),
        };
        seen = ports
            .iter()
            .map(|p| redis.node(*p).pubsub_clients())
            .collect();
        if let Some(port) = reading {
            expected = ports
                .iter()
                .enumerate()
                .map(|(i, p)| subscribed_before[i] + usize::from(*p == port))
                .collect();
            if seen == expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reading.is_some() && seen == expected,
        "CLIENT LIST TYPE pubsub on {ports:?}: {seen:?}, expected {expected:?} (feed_source \
         {source:?})\n/readyz: {ready}\nverifier stderr:\n{}",
        verifier.stderr()
    );
    let reading = reading.expect("checked above");
    if feed_reads == Reads::Replica {
        let info: String =
            ClusterRedis::ask(reading, redis::cmd("INFO").arg("replication")).unwrap_or_default();
        assert!(
            info.lines().any(|l| l.trim() == "role:slave")
                && info
                    .lines()
                    .any(|l| l.trim() == format!("master_port:{old_primary}")),
            "the verifier reads from {reading}, not a replica of the slot's primary: {info}"
        );
    }
    eprintln!(
        "cluster: the verifier's feed reads from {source} (slot {slot}'s primary {old_primary})"
    );

    // /readyz names the slot and its primary, and the durability of a replicated slot.
    let ready = readyz(&client, &issuer.url("")).await;
    let durability = &ready["revocation"]["durability"];
    eprintln!("cluster: issuer /readyz durability {durability}");
    assert_eq!(
        durability["primary"],
        format!("cluster slot {slot}, primary 127.0.0.1:{old_primary}"),
        "{ready}"
    );
    assert_eq!(durability["min_replicas_acked"], 1, "{ready}");
    assert_eq!(durability["connected_replicas"], replicas, "{ready}");
    assert_eq!(durability["level"], "replicated", "{ready}");

    let label = match (fault, feed_reads) {
        (Fault::Failover, Reads::Primary) => "cluster failover",
        (Fault::Kill, Reads::Primary) => "cluster kill -9",
        (Fault::Failover, Reads::Replica) => "cluster failover, verifier reading from a replica",
        (Fault::Kill, Reads::Replica) => "cluster kill -9, verifier reading from a replica",
    };
    let outcome = Run {
        label,
        deployment: &deployment,
        issuer: &issuer,
        verifier: &verifier,
        expect_gap: matches!(fault, Fault::Kill),
        debug,
        settled: None,
    }
    .through(|| match fault {
        Fault::Failover => {
            redis.failover(replica);
            eprintln!("{label}: CLUSTER FAILOVER on {replica}, the replica of {old_primary}");
        }
        Fault::Kill => {
            redis.node_mut(old_primary).kill();
            eprintln!("{label}: slot {slot}'s primary on {old_primary} killed (kill -9)");
        }
    })
    .await;

    let new_primary = redis
        .slot_primary(slot)
        .expect("a primary after the failover");
    assert_ne!(new_primary, old_primary, "a replica took the slot over");
    assert_all_held(&redis, new_primary, &deployment, &outcome);
    for process in [&issuer, &verifier] {
        let ready = readyz(&client, &process.url("")).await;
        assert_eq!(
            ready["revocation"]["durability"]["primary"],
            format!("cluster slot {slot}, primary 127.0.0.1:{new_primary}"),
            "{ready}"
        );
    }
    let ready = readyz(&client, &verifier.url("")).await;
    eprintln!(
        "{label}: verifier /readyz durability after the failover {}",
        ready["revocation"]["durability"]
    );
}

/// Every acknowledged revocation of `outcome` is in the token set on the node on `port`.
fn assert_all_held(redis: &ClusterRedis, port: u16, deployment: &Deployment, outcome: &Outcome) {
    let missing = outcome.missing_from(&mut redis.node(port).admin(), &deployment.prefix);
    assert!(
        missing.is_empty(),
        "acknowledged revocations missing from the slot's new primary: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_of_the_slot_loses_no_acknowledged_revocation() {
    slot_primary_replaced(Fault::Failover, Reads::Primary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_of_the_slot_primary_loses_no_acknowledged_revocation() {
    slot_primary_replaced(Fault::Kill, Reads::Primary).await;
}

/// `read_from_replicas` under Cluster: the verifier's feed subscribes to, and reads from, one
/// of the slot's replicas (with `READONLY`), and follows the slot through a `kill -9` of its
/// primary (whose replicas are the verifier's own node and another) with the same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_read_from_replicas_verifier_reads_a_slot_replica_through_a_kill() {
    slot_primary_replaced(Fault::Kill, Reads::Replica).await;
}

/// A slot migration while revoking (`SETSLOT MIGRATING`/`IMPORTING`, `MIGRATE` key by key,
/// `SETSLOT NODE`): while the slot is split between two nodes, revokes answer 503 (`ASK`,
/// `TRYAGAIN`: never followed, never a false acknowledgement); once the new owner has it,
/// `MOVED` sends every process there and revokes are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_migration_answers_503_while_split_and_recovers_on_the_new_owner() {
    let redis = ClusterRedis::start();
    let deployment = Deployment::new();
    let slot = redis.keyslot(&format!("{{{}}}", deployment.prefix));
    let from = redis.slot_primary(slot).expect("a primary for the slot");
    let to = redis
        .primaries()
        .into_iter()
        .find(|p| *p != from)
        .expect("another primary");
    let config = config_text(&deployment, &redis.addresses());
    let debug = std::env::var_os("EDGETOKEN_CLUSTER_DEBUG").is_some();
    let filter = if debug { "info" } else { "warn" };
    let issuer = EdgetokenProcess::start_logging(&config, "issuer", filter).await;
    let verifier = EdgetokenProcess::start(&config, "verifier").await;
    let client = client();

    let label = "cluster slot migration";
    let ports: Vec<u16> = redis.nodes.iter().map(|n| n.port).collect();
    let done: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut mover = None;
    let settled = {
        let done = Arc::clone(&done);
        move || *done.lock().unwrap()
    };
    let outcome = Run {
        label,
        deployment: &deployment,
        issuer: &issuer,
        verifier: &verifier,
        expect_gap: true,
        debug,
        settled: Some(&settled),
    }
    .through(|| {
        eprintln!("{label}: moving slot {slot} from {from} to {to}, one key every 300 ms");
        let done = Arc::clone(&done);
        mover = Some(std::thread::spawn(move || {
            migrate_slot(slot, from, to, Duration::from_millis(300), &ports);
            *done.lock().unwrap() = Some(Instant::now());
        }));
    })
    .await;
    mover.expect("the migration ran").join().unwrap();

    assert_eq!(redis.slot_primary(slot), Some(to), "the slot moved");
    assert_all_held(&redis, to, &deployment, &outcome);
    for process in [&issuer, &verifier] {
        let ready = readyz(&client, &process.url("")).await;
        assert_eq!(
            ready["revocation"]["durability"]["primary"],
            format!("cluster slot {slot}, primary 127.0.0.1:{to}"),
            "{ready}"
        );
    }
}

/// `cluster_password` reaches nodes that require one (seeds and the slot's primary), and
/// never shows in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_password_opens_nodes_that_require_one_and_is_never_logged() {
    const PASSWORD: &str = "cluster-secret-d41d8cd9";
    let redis = ClusterRedis::start();
    let deployment = Deployment::new();
    let slot = redis.keyslot(&format!("{{{}}}", deployment.prefix));
    redis.require_password(PASSWORD);
    let config = config_text(&deployment, &redis.addresses()).replace(
        "[revocation]\n",
        &format!("[revocation]\ncluster_password = \"{PASSWORD}\"\n"),
    );
    let issuer = EdgetokenProcess::start_logging(&config, "issuer", "debug").await;
    let verifier = EdgetokenProcess::start(&config, "verifier").await;
    let client = client();

    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let answer = revoke(&client, &issuer.url("/v1/revoke"), 0, &token).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", issuer.stderr());
    assert_eq!(
        verify_status(&client, &verifier.url(REQUIREMENT), &token).await,
        StatusCode::UNAUTHORIZED
    );
    let ready = readyz(&client, &issuer.url("")).await;
    assert_eq!(
        ready["revocation"]["durability"]["level"], "replicated",
        "{ready}"
    );
    assert!(
        !issuer.stderr().contains(PASSWORD),
        "the password was logged"
    );

    // The start banner names the slot, the seeds and the slot's primary.
    let banner = std::fs::read_to_string(issuer.dir().join("stdout.log")).unwrap();
    let line = banner
        .lines()
        .find(|l| l.contains("revocation store: Redis"))
        .unwrap_or_else(|| panic!("no revocation store line in the banner:\n{banner}"));
    eprintln!("cluster: banner: {line}");
    assert!(
        line.contains(&format!(
            "cluster slot {slot} (hash tag {{{}}})",
            deployment.prefix
        )) && line.contains(&format!("on cluster slot {slot}, primary 127.0.0.1:")),
        "{line}"
    );
    assert!(!banner.contains(PASSWORD), "the password was printed");
}
