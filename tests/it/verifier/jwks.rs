//! Trusted keys from a JWKS URL (SPEC §8): an unknown kid is rejected at once and triggers a
//! background refetch, and a failed fetch of any kind (garbage, a half-bad key set, an
//! oversized or empty document, an HTTP error, an unreachable server) keeps the last good key
//! set whole.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use edgetoken::clock::SystemClock;
use edgetoken::http::ApiError;
use edgetoken::http::bearer::Decider;
use edgetoken::http::jwks::{JwksRefresher, JwksSettings, JwksStatus};
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::revocation::{MemoryRevocations, RevocationCheck};
use edgetoken::token::{Issuer, Rejection, Requirement, Verifier, VerifierSettings};

use super::WAIT;
use crate::support::deployment::mint;
use crate::support::jwks_server::JwksServer;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "edge-api";

fn ring(keys: &[&SigningKey]) -> KeyRing {
    let mut ring = KeyRing::new();
    for key in keys {
        ring.insert(TrustedKey::from_bytes(&key.public_bytes()).unwrap());
    }
    ring
}

fn issuer(key: &SigningKey) -> Issuer {
    let copy = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap(), "test".as_ref()).unwrap();
    Issuer::new(copy, ISSUER, AUDIENCE, Arc::new(SystemClock))
}

struct Setup {
    server: JwksServer,
    verifier: Arc<Verifier>,
    refresher: Arc<JwksRefresher>,
}

async fn setup(published: &KeyRing) -> Setup {
    let server = JwksServer::start(published).await;
    let verifier = Arc::new(
        Verifier::new(
            VerifierSettings::new(ISSUER, AUDIENCE),
            KeyRing::new(),
            Arc::new(MemoryRevocations::new()) as Arc<dyn RevocationCheck>,
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let settings = JwksSettings {
        // Only requested refetches happen during a test, and none is ever held back.
        refresh: Duration::from_hours(1),
        min_refetch: Duration::ZERO,
        timeout: Duration::from_secs(2),
        max_bytes: 4096,
        ..JwksSettings::new(server.url.clone())
    };
    let refresher = Arc::new(
        JwksRefresher::start(settings, Arc::clone(&verifier), None)
            .await
            .unwrap(),
    );
    Setup {
        server,
        verifier,
        refresher,
    }
}

/// Requests a refetch and waits for it to complete; returns the status after it.
async fn refetch(refresher: &JwksRefresher) -> JwksStatus {
    let mut status = refresher.subscribe();
    let attempts = status.borrow().attempts;
    refresher.request_refetch();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.attempts > attempts))
        .await
        .expect("refetch completed in time")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn unknown_kid_is_rejected_at_once_and_its_key_fetched_in_the_background() {
    let (k1, k2) = (SigningKey::generate(), SigningKey::generate());
    let setup = setup(&ring(&[&k1])).await;
    assert!(setup.refresher.is_loaded());
    let decider = Decider::new(Arc::clone(&setup.verifier)).with_jwks(Arc::clone(&setup.refresher));
    let new_token = mint(&issuer(&k2), "alice", "acme", "runs:read");

    setup.server.publish(&ring(&[&k1, &k2]));
    let mut status = setup.refresher.subscribe();
    let attempts = status.borrow().attempts;
    let first = decider.decide(&new_token, Some(&Requirement::any()));
    assert!(matches!(first, Err(ApiError::Token(Rejection::UnknownKey))));
    tokio::time::timeout(WAIT, status.wait_for(|s| s.attempts > attempts))
        .await
        .expect("the unknown kid triggered a fetch")
        .unwrap();
    assert!(
        decider
            .decide(&new_token, Some(&Requirement::any()))
            .is_ok()
    );
}

#[tokio::test]
async fn every_kind_of_failed_fetch_keeps_the_last_good_key_set() {
    let (k1, k2) = (SigningKey::generate(), SigningKey::generate());
    let setup = setup(&ring(&[&k1])).await;
    let token = mint(&issuer(&k1), "alice", "acme", "runs:read");
    assert!(setup.verifier.verify(&token, &Requirement::any()).is_ok());

    let good_and_bad = format!(
        r#"{{"keys":[{},{{"kty":"OKP","crv":"Ed25519","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}]}}"#,
        serde_json::to_string(&TrustedKey::from_bytes(&k2.public_bytes()).unwrap().jwk()).unwrap()
    );
    let oversized = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(8192));
    let cases: [(StatusCode, String, &str); 6] = [
        (StatusCode::OK, "not json".into(), "invalid"),
        (StatusCode::OK, good_and_bad, "invalid"),
        (StatusCode::OK, r#"{"keys":[]}"#.into(), "empty"),
        (StatusCode::OK, oversized, "too_large"),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            String::new(),
            "http_status",
        ),
        (
            StatusCode::OK,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","d":"secret"}]}"#.into(),
            "invalid",
        ),
    ];
    for (status, body, code) in cases {
        setup.server.answer(status, body);
        let after = refetch(&setup.refresher).await;
        assert_eq!(after.last_error, Some(code));
        assert_eq!(setup.verifier.keys().len(), 1, "{code}: the ring changed");
        assert!(
            setup.verifier.verify(&token, &Requirement::any()).is_ok(),
            "{code}: the last good key stopped verifying"
        );
    }
    setup.server.stop();
    let after = refetch(&setup.refresher).await;
    assert_eq!(after.last_error, Some("unreachable"));
    assert!(setup.verifier.verify(&token, &Requirement::any()).is_ok());
    assert_eq!(after.successes, 1);
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_verifying_even_when_cached() {
    let (k1, k2) = (SigningKey::generate(), SigningKey::generate());
    let setup = setup(&ring(&[&k1, &k2])).await;
    let old = mint(&issuer(&k1), "alice", "acme", "runs:read");
    // Cached on the second verification; the third is a hit.
    assert!(setup.verifier.verify(&old, &Requirement::any()).is_ok());
    assert!(setup.verifier.verify(&old, &Requirement::any()).is_ok());
    assert!(setup.verifier.verify(&old, &Requirement::any()).is_ok());
    assert!(
        setup.verifier.cache_stats().hits >= 1,
        "the third verification was a hit"
    );
    setup.server.publish(&ring(&[&k2]));
    let after = refetch(&setup.refresher).await;
    assert_eq!(after.keys, 1);
    assert_eq!(
        setup
            .verifier
            .verify(&old, &Requirement::any())
            .unwrap_err(),
        Rejection::UnknownKey
    );
}

#[tokio::test]
async fn an_unreachable_jwks_at_start_leaves_the_verifier_empty_until_it_answers() {
    let k1 = SigningKey::generate();
    let setup = setup(&ring(&[&k1])).await;
    // A second refresher pointed at a port nobody listens on.
    let port = crate::support::process::free_port();
    let verifier = Arc::new(
        Verifier::new(
            VerifierSettings::new(ISSUER, AUDIENCE),
            KeyRing::new(),
            Arc::new(MemoryRevocations::new()) as Arc<dyn RevocationCheck>,
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let refresher = JwksRefresher::start(
        JwksSettings::new(format!("http://127.0.0.1:{port}/jwks.json")),
        Arc::clone(&verifier),
        None,
    )
    .await
    .unwrap();
    assert!(!refresher.is_loaded());
    assert_eq!(refresher.status().last_error, Some("unreachable"));
    assert!(verifier.keys().is_empty());
    drop(setup);
}
