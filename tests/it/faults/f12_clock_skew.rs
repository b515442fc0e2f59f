//! F12, clock skew on a verifier (THREATS §4): verifiers whose clocks run 5 min ahead of and
//! 5 min behind a reference clock serve `/v1/verify` on real sockets against a real Redis.
//! Each decides `exp`/`nbf`/`iat` exactly by the leeway against its own clock, so the test
//! states, per token, the verdict the rules give at `reference + skew` and checks that
//! verdict to the second at every edge. Revocation expiry does not follow a verifier's clock:
//! Redis keeps (and prunes) revocations by its own time, so a verifier running ahead that
//! drops an entry from its own mirror removes nothing that a verifier behind still needs.

use std::sync::Arc;
use std::time::Duration;

use edgetoken::clock::{Clock, ManualClock, OffsetClock, SystemClock};
use edgetoken::config::Role;
use edgetoken::revocation::{RedisFeed, RedisStore, Revocation, RevocationSettings};
use reqwest::StatusCode;

use super::{Outcome, REQUIREMENT, verify};
use crate::support::deployment::{self, Deployment};
use crate::support::eventually::eventually;
use crate::support::process::Served;
use crate::support::tokens::{header_for, sign, valid_claims};

/// THREATS F12: ±5 min.
const SKEW: i64 = 300;

/// A token signed by the deployment's key with these time claims and a unique `jti`.
fn token(key: &edgetoken::keys::SigningKey, name: &str, iat: i64, nbf: i64, exp: i64) -> String {
    let jti = format!("f12-{name}-{:0>18}", iat.unsigned_abs() % 1_000_000);
    let jti: String = jti
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let claims = valid_claims()
        .set_str("iss", deployment::ISSUER)
        .set_str("jti", &jti)
        .set_int("iat", iat)
        .set_int("nbf", nbf)
        .set_int("exp", exp);
    sign(key, &header_for(key), &claims)
}

/// The rules at a verifier whose clock reads `now`: expired once `now ≥ exp + leeway`, not yet
/// valid while `nbf` or `iat` is past `now + leeway`.
fn expected(now: i64, leeway: i64, iat: i64, nbf: i64, exp: i64) -> Option<&'static str> {
    if now >= exp + leeway {
        Some("expired")
    } else if nbf > now + leeway || iat > now + leeway {
        Some("not_yet_valid")
    } else {
        None
    }
}

fn outcome(expected: Option<&'static str>) -> Outcome {
    match expected {
        None => Outcome {
            status: StatusCode::OK,
            code: None,
        },
        Some(code) => Outcome {
            status: StatusCode::UNAUTHORIZED,
            code: Some(code.to_owned()),
        },
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one fault scenario told in order: set up, inject, observe, heal, check"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f12_skewed_verifiers_apply_the_leeway_to_the_second_and_leave_revocation_expiry_to_redis()
{
    let deployment = Deployment::new();
    let config = deployment.config("");
    let leeway = i64::try_from(config.token.leeway.as_secs()).unwrap();
    let key = deployment.keys().load_signing().unwrap();
    // Frozen, so an edge one second away is decided against a known "now".
    let r = SystemClock.unix_now();
    let reference = Arc::new(ManualClock::at(r));
    let skewed =
        |skew: i64| -> Arc<dyn Clock> { Arc::new(OffsetClock::new(reference.clone(), skew)) };
    let mut verifiers = Vec::new();
    for skew in [-SKEW, 0, SKEW] {
        let served =
            Served::start_with_clock(deployment.config(""), Role::Verifier, skewed(skew)).await;
        verifiers.push((skew, served));
    }
    let client = reqwest::Client::new();

    // The skew alarm: each verifier measured its clock against Redis' when it connected, and
    // `/readyz` says so. The reference clock is frozen at the test's start, so each measured
    // skew is its offset less the seconds since (at most a minute here).
    let mut measured = Vec::new();
    for (skew, served) in &verifiers {
        let ready: serde_json::Value = client
            .get(served.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let revocation = &ready["revocation"];
        let seen = revocation["clock_skew_seconds"]
            .as_f64()
            .expect("skew measured");
        #[expect(clippy::cast_precision_loss, reason = "seconds of skew")]
        let offset = *skew as f64;
        assert!(
            (offset - 60.0..=offset + 1.0).contains(&seen),
            "verifier at {skew:+} s measured {seen} s against Redis"
        );
        assert_eq!(
            revocation["clock_skew_alarm"].as_bool(),
            Some(*skew != 0),
            "alarm at {skew:+} s (measured {seen} s, leeway {leeway} s)"
        );
        measured.push((*skew, seen));
    }

    let mut checked = 0;
    let mut refused_by_skew = Vec::new();
    for (skew, served) in &verifiers {
        let now = r + skew;
        let url = served.url(REQUIREMENT);
        // (name, iat, nbf, exp): tokens fresh by the reference clock, then each edge of the
        // leeway one second either side, at this verifier's own time.
        let cases = [
            ("fresh-at-reference", r, r, r + 3600),
            ("expiring-at-reference", r - 3000, r - 3000, r + 60),
            ("exp-last-second", now - 3600, now - 3600, now - leeway + 1),
            ("exp-edge", now - 3600, now - 3600, now - leeway),
            ("nbf-edge", now - 10, now + leeway, now + 3600),
            ("nbf-past-edge", now - 10, now + leeway + 1, now + 3600),
            ("iat-edge", now + leeway, now, now + 3600),
            ("iat-past-edge", now + leeway + 1, now, now + 3600),
        ];
        for (name, iat, nbf, exp) in cases {
            let want = expected(now, leeway, iat, nbf, exp);
            let token = token(&key, name, iat, nbf, exp);
            let got = verify(&client, &url, &format!("Bearer {token}")).await;
            assert_eq!(got, outcome(want), "{name} at skew {skew:+} s");
            checked += 1;
            if name.ends_with("at-reference") && want.is_some() {
                refused_by_skew.push(format!("{name} refused at {skew:+} s ({want:?})"));
            }
        }
    }
    // What the skew does to tokens that are fine by the reference clock, with leeway 30 s:
    // behind by 5 min a freshly minted token is not yet valid, ahead by 5 min a token with a
    // minute left is already expired. The reference verifier accepts both.
    assert_eq!(
        refused_by_skew,
        [
            "fresh-at-reference refused at -300 s (Some(\"not_yet_valid\"))",
            "expiring-at-reference refused at +300 s (Some(\"expired\"))",
        ]
    );

    // Revocation expiry: a revoked token with two minutes left by the reference clock.
    let settings = RevocationSettings {
        prune_interval: Duration::from_millis(100),
        ..config.revocation.clone()
    };
    let store = RedisStore::open(&settings).await.unwrap();
    let revoked = token(&key, "revoked", r - 400, r - 400, r + 120);
    let jti = super::jti_and_exp(&revoked).0;
    store
        .revoke_with_seq(&Revocation::Token {
            jti: jti.parse().unwrap(),
            expires_at: r + 120,
        })
        .await
        .unwrap();
    // A canary whose `exp + leeway` passes two seconds from now by Redis' clock: its
    // disappearance from Redis is the signal that a prune of Redis ran since.
    let canary = "f12-canary-00000000000001";
    store
        .revoke_with_seq(&Revocation::Token {
            jti: canary.parse().unwrap(),
            expires_at: SystemClock.unix_now() - leeway + 2,
        })
        .await
        .unwrap();
    let mut admin = redis::Client::open(deployment.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let tok_key = format!("{{{}}}:tok", settings.key_prefix);
    let mut stored_until = |jti: &str| -> Option<f64> {
        redis::cmd("ZSCORE")
            .arg(&tok_key)
            .arg(jti)
            .query(&mut admin)
            .unwrap()
    };
    assert!(stored_until(canary).is_some());
    let refused = |code: &str| Outcome {
        status: StatusCode::UNAUTHORIZED,
        code: Some(code.to_owned()),
    };
    for (skew, served) in &verifiers[..2] {
        let url = served.url(REQUIREMENT);
        eventually(
            format!("the verifier at {skew:+} s to refuse as revoked"),
            Duration::from_secs(10),
        )
        .until(async || {
            (verify(&client, &url, &format!("Bearer {revoked}")).await == refused("revoked"))
                .then_some(())
        })
        .await;
    }
    // The verifier 5 min ahead refuses it as expired, and its mirror prunes the entry by its
    // own clock (exp + leeway has passed there); its feed also prunes Redis, by Redis' clock.
    let ahead_url = verifiers[2].1.url(REQUIREMENT);
    assert_eq!(
        verify(&client, &ahead_url, &format!("Bearer {revoked}")).await,
        refused("expired")
    );
    let ahead = RedisFeed::start(&settings, skewed(SKEW)).await.unwrap();
    let mut health = ahead.mirror().health();
    tokio::time::timeout(
        Duration::from_secs(10),
        health.wait_for(|h| h.ready && h.fresh),
    )
    .await
    .expect("the mirror ahead never synced")
    .unwrap();
    // By its clock no token the entry covers can still be valid: it holds none.
    assert_eq!(ahead.mirror().size().tokens, 0);
    // The feed ahead prunes Redis on its tick (the verifiers' feeds only every 30 s).
    eventually(
        "a prune of Redis to remove the canary",
        Duration::from_secs(10),
    )
    .until(async || stored_until(canary).is_none().then_some(()))
    .await;
    #[expect(clippy::cast_precision_loss, reason = "a Unix time, exact in an f64")]
    let expires_at = (r + 120) as f64;
    let pruned_by_redis_clock = store.prune().await.unwrap();
    let kept_until = stored_until(&jti);
    assert_eq!(
        kept_until,
        Some(expires_at),
        "Redis dropped a live revocation"
    );
    assert_eq!(pruned_by_redis_clock, 0);
    for (skew, served) in &verifiers[..2] {
        assert_eq!(
            verify(
                &client,
                &served.url(REQUIREMENT),
                &format!("Bearer {revoked}")
            )
            .await,
            refused("revoked"),
            "the verifier at {skew:+} s after the one ahead pruned"
        );
    }
    eprintln!(
        "F12: leeway {leeway} s, skews -{SKEW}/0/+{SKEW} s: {checked} time-claim cases decided \
         to the second by each verifier's clock; {refused_by_skew:?}; a revocation pruned by \
         the mirror {SKEW} s ahead stayed in Redis (score {kept_until:?}) and refused at -{SKEW} s \
         and 0 s; skew measured against Redis (offset, seconds): {measured:?}, alarm at ±{SKEW} s"
    );
}
