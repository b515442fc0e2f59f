//! Token records after Redis loses them (issue 13): no process holds the records in memory, so
//! they cannot be re-seeded like revocations. The revocation feed's detection of an emptied or
//! replaced store (generation / `run_id`) notes when; the list API then says
//! `records_complete: false` with `records_since`, the tokens of before keep working until
//! they expire, and they stay revocable by presenting them (RFC 7009) or by user or tenant.
//! Driven through the HTTP API against a real `redis-server`.

use std::time::Duration;

use edgetoken::clock::{Clock as _, SystemClock};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::eventually::eventually;
use crate::support::issuer::{ALICE, TestIssuer, with_redis};

/// How long the feed (heartbeat 100 ms) gets to notice the store changed.
const DETECT: Duration = Duration::from_secs(10);

async fn mint(issuer: &TestIssuer, name: &str) -> (String, String) {
    let minted = ALICE
        .mint(
            issuer,
            "acme",
            json!({"name": name, "duration": "4h", "permissions": ["runs:read"]}),
        )
        .await;
    (
        minted["id"].as_str().unwrap().to_owned(),
        minted["token"].as_str().unwrap().to_owned(),
    )
}

fn names(list: &Value) -> Vec<&str> {
    list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

/// `/v1/verify?tenant=acme` with `token`: the status.
async fn verify(issuer: &TestIssuer, token: &str) -> u16 {
    reqwest::Client::new()
        .get(issuer.url("/v1/verify?tenant=acme"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Awaits the issuer's own mirror re-seeding the store `resets` times in all.
async fn await_reset(issuer: &TestIssuer, resets: u64) {
    let mut health = issuer.services.mirror.health();
    tokio::time::timeout(DETECT, health.wait_for(|h| h.resets >= resets))
        .await
        .expect("the revocation feed to notice the store was reset")
        .unwrap();
}

async fn await_incomplete(issuer: &TestIssuer) -> Value {
    eventually("the list to say records were lost", DETECT)
        .every(Duration::from_millis(50))
        .until(async || {
            let list = ALICE.list(issuer, "acme").await;
            (list["records_complete"] == false).then_some(list)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_the_list_says_records_were_lost_and_old_tokens_stay_revocable() {
    let (redis, issuer) = with_redis().await;
    let (_, before) = mint(&issuer, "before").await;
    let list = ALICE.list(&issuer, "acme").await;
    assert_eq!(list["records_complete"], true, "{list}");
    assert!(list["records_since"].is_null(), "{list}");
    assert_eq!(names(&list), ["before"]);

    let flushed_at = SystemClock.unix_now();
    redis::cmd("FLUSHALL").exec(&mut redis.admin()).unwrap();
    let list = await_incomplete(&issuer).await;
    let since = OffsetDateTime::parse(list["records_since"].as_str().unwrap(), &Rfc3339)
        .unwrap()
        .unix_timestamp();
    assert!(
        (flushed_at..flushed_at + 10).contains(&since),
        "records_since {since} should be when the store was found empty ({flushed_at})"
    );
    assert_eq!(
        names(&list),
        Vec::<&str>::new(),
        "the record went with the store"
    );

    // The token itself is as valid as ever, and tokens minted now are listed.
    assert_eq!(verify(&issuer, &before).await, 200);
    let (_, after) = mint(&issuer, "after").await;
    let list = ALICE.list(&issuer, "acme").await;
    assert_eq!(names(&list), ["after"]);
    assert_eq!(list["records_complete"], false);

    // Its holder revokes it by presenting it: every verifier refuses it at once.
    let response = reqwest::Client::new()
        .post(issuer.url("/v1/revoke"))
        .form(&[("token", before.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(verify(&issuer, &before).await, 401);
    assert_eq!(verify(&issuer, &after).await, 200);

    // A tenant admin may revoke any user while records are incomplete: a former member's
    // records may be among the lost ones.
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/revocations"))
        .json(&json!({"user": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Once every token minted before the loss has expired and its record would have aged
    // out (12 h + leeway + a day of retention), the list is complete again.
    issuer.clock.advance(12 * 3600 + 30 + 86_400 + 1);
    let list = ALICE.list(&issuer, "acme").await;
    assert_eq!(list["records_complete"], true, "{list}");
    assert!(list["records_since"].is_null(), "{list}");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_is_noticed_like_a_flush() {
    let (mut redis, issuer) = with_redis().await;
    let (_, before) = mint(&issuer, "before").await;
    redis.restart_empty();
    let list = await_incomplete(&issuer).await;
    assert!(list["records_since"].is_string(), "{list}");
    assert_eq!(names(&list), Vec::<&str>::new());
    assert_eq!(verify(&issuer, &before).await, 200);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_with_its_data_keeps_the_list_complete() {
    let (mut redis, issuer) = with_redis().await;
    mint(&issuer, "before").await;
    // AOF with fsync on every write: the restart keeps everything. The feed re-seeds
    // revocations all the same (a restart may lose the last writes), but nothing was emptied.
    redis.restart();
    await_reset(&issuer, 1).await;
    let list = ALICE.list(&issuer, "acme").await;
    assert_eq!(list["records_complete"], true, "{list}");
    assert_eq!(names(&list), ["before"]);
    issuer.stop().await;
}
