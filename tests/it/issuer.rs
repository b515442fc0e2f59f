//! The issuer API over HTTP, as a client uses it (SPEC §4; issue "Issuer service").
//!
//! Each test starts the real router on a real socket; tests that concern shared state run
//! against their own `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use edgetoken::clock::Clock as _;
use edgetoken::revocation::{Revocation, RevocationCheck as _};
use edgetoken::token::{Rejection, Requirement, TenantId, TokenId};
use serde_json::json;

use crate::support::eventually::eventually;
use crate::support::ids::Facts;
use crate::support::issuer::{
    ALICE, BOB, Options, TestIssuer, assert_error, jwks_kids, with_redis,
};

fn tenant(name: &str) -> Requirement {
    Requirement::any().tenant(TenantId::new(name).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lives_from_mint_to_revocation() {
    let (_redis, issuer) = with_redis().await;
    let minted = ALICE
        .mint(
            &issuer,
            "acme",
            json!({"name": "ci script", "duration": "4h", "permissions": ["runs:read"]}),
        )
        .await;
    let token = minted["token"].as_str().unwrap().to_owned();
    let id = minted["id"].as_str().unwrap().to_owned();
    assert_eq!(minted["tenant"], "acme");
    assert_eq!(minted["permissions"], json!(["runs:read"]));
    assert_eq!(minted["name"], "ci script");

    // It opens acme at the verifier.
    let claims = issuer
        .services
        .verifier
        .verify(&token, &tenant("acme"))
        .unwrap();
    assert_eq!(claims.subject.as_str(), "alice");
    assert_eq!(
        (claims.expires_at - claims.issued_at).whole_hours(),
        4,
        "4h lifetime"
    );

    // Listed, by metadata only.
    let listing = ALICE.list(&issuer, "acme").await;
    let text = listing.to_string();
    assert!(!text.contains(&token), "the raw token must never be listed");
    assert!(
        !text.contains(token.split('.').nth(2).unwrap()),
        "nor its signature"
    );
    assert_eq!(listing["tokens"][0]["id"], id.as_str());
    assert_eq!(listing["tokens"][0]["status"], "active");
    assert!(listing["tokens"][0]["revoked_at"].is_null());

    // Revoked: 204, idempotent, rejected on the next verification, listed as revoked.
    for _ in 0..2 {
        let response = ALICE
            .delete(issuer.url(&format!("/v1/tenants/acme/tokens/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    assert_eq!(
        issuer
            .services
            .verifier
            .verify(&token, &tenant("acme"))
            .unwrap_err(),
        Rejection::Revoked
    );
    let listing = ALICE.list(&issuer, "acme").await;
    assert_eq!(listing["tokens"][0]["status"], "revoked");
    assert!(listing["tokens"][0]["revoked_at"].is_string());
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offered_duration_mints_its_lifetime() {
    let issuer = TestIssuer::start(Options::default()).await;
    for (duration, hours) in [("1h", 1), ("4h", 4), ("8h", 8), ("12h", 12), ("max", 12)] {
        let minted = ALICE
            .mint(
                &issuer,
                "acme",
                json!({"duration": duration, "permissions": ["runs:read"]}),
            )
            .await;
        let claims = issuer
            .services
            .verifier
            .verify(minted["token"].as_str().unwrap(), &Requirement::any())
            .unwrap();
        assert_eq!(
            (claims.expires_at - claims.issued_at).whole_hours(),
            hours,
            "{duration}"
        );
    }
    // No duration: the default hour.
    let minted = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let claims = issuer
        .services
        .verifier
        .verify(minted["token"].as_str().unwrap(), &Requirement::any())
        .unwrap();
    assert_eq!((claims.expires_at - claims.issued_at).whole_hours(), 1);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_response_is_never_cached() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortcuts_expand_to_what_the_catalogue_holds() {
    let issuer = TestIssuer::start(Options::default()).await;
    let minted = ALICE
        .mint(&issuer, "globex", json!({"permissions": ["read-all"]}))
        .await;
    assert_eq!(
        minted["permissions"],
        json!([
            "detections:read",
            "members:read",
            "policies:read",
            "runs:read"
        ])
    );
    issuer.stop().await;
}

async fn mint_refused(
    issuer: &TestIssuer,
    tenant: &str,
    body: serde_json::Value,
    status: u16,
    code: &str,
) {
    let response = ALICE
        .post(issuer.url(&format!("/v1/tenants/{tenant}/tokens")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(response, status, code).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_lifetimes_beyond_twelve_hours() {
    let issuer = TestIssuer::start(Options::default()).await;
    for duration in ["13h", "forever", "24h", "0h", "1H", ""] {
        mint_refused(
            &issuer,
            "acme",
            json!({"duration": duration, "permissions": ["runs:read"]}),
            400,
            "bad_duration",
        )
        .await;
    }
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_unknown_permissions_and_fields() {
    let issuer = TestIssuer::start(Options::default()).await;
    mint_refused(
        &issuer,
        "acme",
        json!({"permissions": ["runs:admin"]}),
        400,
        "unknown_permission",
    )
    .await;
    mint_refused(
        &issuer,
        "acme",
        json!({"permissions": ["billing:read"]}),
        400,
        "unknown_permission",
    )
    .await;
    mint_refused(
        &issuer,
        "acme",
        json!({"permissions": ["runs:read"], "lifetime": "12h"}),
        400,
        "unknown_field",
    )
    .await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_a_permission_the_person_does_not_hold_and_names_it() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .json(&json!({"permissions": ["runs:read", "policies:write", "members:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "permission_not_held");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("policies:write") && message.contains("members:read"),
        "{message}"
    );
    assert!(!message.contains("runs:read"), "{message}");
    // read-write-all is more than alice holds in acme.
    mint_refused(
        &issuer,
        "acme",
        json!({"permissions": ["read-write-all"]}),
        403,
        "permission_not_held",
    )
    .await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_a_tenant_the_person_does_not_belong_to() {
    let issuer = TestIssuer::start(Options::default()).await;
    mint_refused(
        &issuer,
        "initech",
        json!({"permissions": ["runs:read"]}),
        403,
        "not_a_member",
    )
    .await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_names_over_one_hundred_characters() {
    let issuer = TestIssuer::start(Options::default()).await;
    let long = "n".repeat(101);
    mint_refused(
        &issuer,
        "acme",
        json!({"name": long, "permissions": ["runs:read"]}),
        400,
        "bad_name",
    )
    .await;
    mint_refused(
        &issuer,
        "acme",
        json!({"name": "", "permissions": ["runs:read"]}),
        400,
        "bad_name",
    )
    .await;
    mint_refused(
        &issuer,
        "acme",
        json!({"name": "a\nb", "permissions": ["runs:read"]}),
        400,
        "bad_name",
    )
    .await;
    // Exactly 100 characters (multi-byte ones count once) is fine.
    ALICE
        .mint(
            &issuer,
            "acme",
            json!({"name": "é".repeat(100), "permissions": ["runs:read"]}),
        )
        .await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_a_one_megabyte_body() {
    let issuer = TestIssuer::start(Options::default()).await;
    let body = format!(
        r#"{{"permissions":["runs:read"],"name":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "body_too_large").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_a_wrong_password_and_no_credentials() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = reqwest::Client::new()
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some("not-her-password"))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_error(response, 401, "unauthenticated").await;
    let response = reqwest::Client::new()
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthenticated").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_never_a_credential_for_minting() {
    let issuer = TestIssuer::start(Options::default()).await;
    let minted = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:write"]}))
        .await;
    let token = minted["token"].as_str().unwrap();
    for path in ["/v1/tenants/acme/tokens", "/v1/tenants/acme/revocations"] {
        let response = reqwest::Client::new()
            .post(issuer.url(path))
            .bearer_auth(token)
            .json(&json!({"permissions": ["runs:read"]}))
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "token_not_accepted").await;
    }
    let response = reqwest::Client::new()
        .get(issuer.url("/v1/tenants/acme/tokens"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "token_not_accepted").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_refuses_a_non_json_content_type() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .header("content-type", "text/plain")
        .body(r#"{"permissions":["runs:read"]}"#)
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_someone_elses_token_is_not_found() {
    let issuer = TestIssuer::start(Options::default()).await;
    let minted = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let id = minted["id"].as_str().unwrap();
    let response = BOB
        .delete(issuer.url(&format!("/v1/tenants/acme/tokens/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found").await;
    for unknown in ["AAAAAAAAAAAAAAAAAAAAAA", "not:a*token", "%2E%2E%2Fkeys"] {
        let response = ALICE
            .delete(issuer.url(&format!("/v1/tenants/acme/tokens/{unknown}")))
            .send()
            .await
            .unwrap();
        assert_error(response, 404, "not_found").await;
    }
    // Still valid: bob's attempt changed nothing.
    assert!(
        issuer
            .services
            .verifier
            .verify(minted["token"].as_str().unwrap(), &Requirement::any())
            .is_ok()
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_shows_only_the_callers_tokens_in_that_tenant() {
    let issuer = TestIssuer::start(Options::default()).await;
    let alice_acme = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    ALICE
        .mint(&issuer, "globex", json!({"permissions": ["runs:read"]}))
        .await;
    BOB.mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let listing = ALICE.list(&issuer, "acme").await;
    let tokens = listing["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], alice_acme["id"]);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_opens_another_tenant() {
    let issuer = TestIssuer::start(Options::default()).await;
    let minted = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let token = minted["token"].as_str().unwrap();
    assert!(
        issuer
            .services
            .verifier
            .verify(token, &tenant("acme"))
            .is_ok()
    );
    assert_eq!(
        issuer
            .services
            .verifier
            .verify(token, &tenant("globex"))
            .unwrap_err(),
        Rejection::WrongTenant
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_user_in_one_tenant_leaves_their_other_tenants_working() {
    let (_redis, issuer) = with_redis().await;
    let acme = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let globex = ALICE
        .mint(&issuer, "globex", json!({"permissions": ["runs:read"]}))
        .await;
    let bobs = BOB
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/revocations"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let verify = |t: &serde_json::Value| {
        issuer
            .services
            .verifier
            .verify(t["token"].as_str().unwrap(), &Requirement::any())
    };
    assert_eq!(verify(&acme).unwrap_err(), Rejection::Revoked);
    assert!(
        verify(&globex).is_ok(),
        "alice's globex token keeps working"
    );
    assert!(verify(&bobs).is_ok(), "bob's acme token keeps working");
    assert_eq!(
        ALICE.list(&issuer, "acme").await["tokens"][0]["status"],
        "revoked"
    );

    // A token minted after the watermark (the revocation time plus the 30 s leeway) works.
    issuer.clock.advance(31);
    let fresh = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    assert!(verify(&fresh).is_ok());
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_revokes_every_token_of_the_tenant() {
    let (_redis, issuer) = with_redis().await;
    let a = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let b = BOB
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let other = ALICE
        .mint(&issuer, "globex", json!({"permissions": ["runs:read"]}))
        .await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/revocations"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    for (token, revoked) in [(&a, true), (&b, true), (&other, false)] {
        let result = issuer
            .services
            .verifier
            .verify(token["token"].as_str().unwrap(), &Requirement::any());
        assert_eq!(result.is_err(), revoked);
    }
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tenant_admins_revoke_others_and_bodies_are_checked() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = BOB
        .post(issuer.url("/v1/tenants/acme/revocations"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "not_tenant_admin").await;
    // alice administers acme, not globex.
    let response = ALICE
        .post(issuer.url("/v1/tenants/globex/revocations"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "not_tenant_admin").await;
    for body in [
        json!({}),
        json!({"all": false}),
        json!({"user": "bob", "all": true}),
        json!({"user": "a b"}),
    ] {
        let response = ALICE
            .post(issuer.url("/v1/tenants/acme/revocations"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "invalid_request").await;
    }
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_revokes_a_token_by_presenting_it() {
    let issuer = TestIssuer::start(Options::default()).await;
    let minted = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let token = minted["token"].as_str().unwrap();
    let revoke = |form: Vec<(&'static str, String)>| {
        reqwest::Client::new()
            .post(issuer.url("/v1/revoke"))
            .form(&form)
            .send()
    };
    let response = revoke(vec![
        ("token", token.to_owned()),
        ("token_type_hint", "access_token".into()),
    ])
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        issuer
            .services
            .verifier
            .verify(token, &Requirement::any())
            .unwrap_err(),
        Rejection::Revoked
    );
    // RFC 7009 §2.2: an invalid token is not an error, and reveals nothing.
    let response = revoke(vec![("token", "garbage".into())]).await.unwrap();
    assert_eq!(response.status(), 200);
    let response = revoke(vec![]).await.unwrap();
    assert_error(response, 400, "invalid_request").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_is_rate_limited_per_person() {
    let issuer = TestIssuer::start(Options {
        extra: "mints_per_hour = 2\n".into(),
        ..Options::default()
    })
    .await;
    for _ in 0..2 {
        ALICE
            .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
            .await;
    }
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after));
    assert_error(response, 429, "rate_limited").await;
    // Bob has his own allowance.
    BOB.mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_rate_limited_per_user() {
    let issuer = TestIssuer::start(Options {
        extra: "failed_signins_per_minute = 3\n".into(),
        ..Options::default()
    })
    .await;
    let attempt = |password: &'static str| {
        reqwest::Client::new()
            .get(issuer.url("/v1/tenants/acme/tokens"))
            .basic_auth("alice", Some(password))
            .send()
    };
    for _ in 0..3 {
        assert_error(attempt("wrong").await.unwrap(), 401, "unauthenticated").await;
    }
    // Even the right password waits now: the limit is checked before any argon2 work.
    let response = attempt(crate::support::issuer::ALICE_PASSWORD)
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 429, "rate_limited").await;
    // Another user is unaffected.
    assert_eq!(
        BOB.get(issuer.url("/v1/tenants/acme/tokens"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_mint_and_revoke_answer_503_and_change_nothing() {
    let (mut redis, issuer) = with_redis().await;
    let kept = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let id = kept["id"].as_str().unwrap().to_owned();
    redis.kill();

    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.contains("store_unavailable"), "{body}");
    assert!(
        !body.contains("eyJ"),
        "no token may leave a failed mint: {body}"
    );
    let response = ALICE
        .delete(issuer.url(&format!("/v1/tenants/acme/tokens/{id}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 503, "store_unavailable").await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/revocations"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_error(response, 503, "store_unavailable").await;

    redis.restart();
    issuer.wait_ready().await;
    // Nothing was half written: one token listed, still active, still valid.
    let listing = ALICE.list(&issuer, "acme").await;
    let tokens = listing["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{listing}");
    assert_eq!(tokens[0]["status"], "active");
    assert!(
        issuer
            .services
            .verifier
            .verify(kept["token"].as_str().unwrap(), &Requirement::any())
            .is_ok()
    );
    // And it works again.
    let response = ALICE
        .delete(issuer.url(&format!("/v1/tenants/acme/tokens/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    assert_eq!(
        issuer
            .services
            .mirror
            .status(&Facts::of(&id, 0, i64::MAX / 2).get()),
        edgetoken::revocation::RevocationStatus::Revoked
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_publishes_public_keys_only_with_a_max_age() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = reqwest::get(issuer.url("/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=300")
    );
    let jwks: serde_json::Value = response.json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key.get("d").is_none(), "never a private key");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_list_the_catalogue_and_shortcuts() {
    let issuer = TestIssuer::start(Options::default()).await;
    let body: serde_json::Value = reqwest::get(issuer.url("/v1/permissions"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["categories"],
        json!(["detections", "members", "policies", "runs"])
    );
    assert_eq!(body["shortcuts"]["read-all"].as_array().unwrap().len(), 4);
    assert!(
        body["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("runs:write"))
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_issuer_route() {
    let issuer = TestIssuer::start(Options::default()).await;
    let doc: serde_json::Value = reqwest::get(issuer.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["basic"]["scheme"],
        "basic"
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/tenants/{tenant}/tokens", "post"),
        ("/v1/tenants/{tenant}/tokens", "get"),
        ("/v1/tenants/{tenant}/tokens/{id}", "delete"),
        ("/v1/tenants/{tenant}/revocations", "post"),
        ("/v1/revoke", "post"),
        ("/v1/permissions", "get"),
        ("/.well-known/jwks.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    issuer.stop().await;
}

const PROXY_SECRET: &str = "a-shared-proxy-secret-of-at-least-32-chars";

async fn trusted_header_issuer() -> TestIssuer {
    TestIssuer::start(Options {
        extra: format!("auth = \"trusted-header\"\nproxy_secret = \"{PROXY_SECRET}\"\n"),
        ..Options::default()
    })
    .await
}

fn behind_proxy(issuer: &TestIssuer, user: &str, secret: Option<&str>) -> reqwest::RequestBuilder {
    let mut request = reqwest::Client::new()
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .header("X-Forwarded-User", user)
        .json(&json!({"permissions": ["runs:read"]}));
    if let Some(secret) = secret {
        request = request.header("X-Edgetoken-Proxy-Secret", secret);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_header_mode_accepts_the_user_header_only_with_the_proxy_secret() {
    let issuer = trusted_header_issuer().await;
    let response = behind_proxy(&issuer, "bob", Some(PROXY_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    let claims = issuer
        .services
        .verifier
        .verify(body["token"].as_str().unwrap(), &Requirement::any())
        .unwrap();
    assert_eq!(claims.subject.as_str(), "bob");

    let missing = behind_proxy(&issuer, "bob", None).send().await.unwrap();
    assert_error(missing, 401, "unauthenticated").await;
    let wrong = behind_proxy(
        &issuer,
        "bob",
        Some("a-shared-proxy-secret-of-at-least-32-chaRs"),
    )
    .send()
    .await
    .unwrap();
    assert_error(wrong, 401, "unauthenticated").await;
    let unknown = behind_proxy(&issuer, "mallory", Some(PROXY_SECRET))
        .send()
        .await
        .unwrap();
    assert_error(unknown, 401, "unauthenticated").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_header_mode_ignores_basic_credentials() {
    let issuer = trusted_header_issuer().await;
    let response = ALICE
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthenticated").await;
    issuer.stop().await;
}

/// Polls the JWKS until `done` holds, for at most 10 s (the reload runs every second).
async fn wait_for_jwks(issuer: &TestIssuer, done: impl Fn(&[String]) -> bool) {
    eventually("the key reload in the JWKS", Duration::from_secs(10))
        .every(Duration::from_millis(50))
        .until(async || done(&jwks_kids(&issuer.url("/.well-known/jwks.json")).await).then_some(()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_added_and_retired_on_disk_take_effect_without_a_restart() {
    let issuer = TestIssuer::start(Options {
        key_reload_secs: Some(1),
        ..Options::default()
    })
    .await;
    let keys = edgetoken::keys::KeyDir::new(issuer.key_dir());
    let second = keys.generate(false).unwrap();
    let kid = second.kid().to_string();
    wait_for_jwks(&issuer, |kids| kids.contains(&kid)).await;

    // A token of the new key verifies; once its files are retired it no longer does.
    let signer = edgetoken::token::Issuer::new(
        second,
        "http://127.0.0.1:8080",
        "edgetoken",
        issuer.clock.clone(),
    );
    let minted = signer
        .mint(&edgetoken::token::MintRequest {
            subject: "alice".parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            scope: edgetoken::permissions::Scope::parse_claim("runs:read").unwrap(),
            lifetime: edgetoken::token::Lifetime::OneHour,
        })
        .unwrap();
    let token = minted.token.expose();
    assert!(
        issuer
            .services
            .verifier
            .verify(token, &Requirement::any())
            .is_ok()
    );
    keys.retire(&kid).unwrap();
    wait_for_jwks(&issuer, |kids| !kids.contains(&kid)).await;
    assert_eq!(
        issuer
            .services
            .verifier
            .verify(token, &Requirement::any())
            .unwrap_err(),
        Rejection::UnknownKey
    );
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_password_guesses_cannot_outrun_the_sign_in_limit() {
    let issuer = TestIssuer::start(Options {
        extra: "failed_signins_per_minute = 3\n".into(),
        ..Options::default()
    })
    .await;
    let guesses = (0..12).map(|i| {
        reqwest::Client::new()
            .get(issuer.url("/v1/tenants/acme/tokens"))
            .basic_auth("alice", Some(format!("guess-{i}")))
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        checked, 3,
        "only the allowance reaches a password check: {statuses:?}"
    );
    assert_eq!(limited, 9, "{statuses:?}");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_a_tenant_you_are_not_in_is_refused_like_minting_there() {
    let issuer = TestIssuer::start(Options::default()).await;
    let response = BOB
        .get(issuer.url("/v1/tenants/globex/tokens"))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "not_a_member").await;
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_bidi_controls_are_refused() {
    let issuer = TestIssuer::start(Options::default()).await;
    for name in [
        "deploy\u{202E}txt.exe",
        "a\u{2066}b\u{2069}",
        "x\u{200F}",
        "tab\there",
    ] {
        let response = ALICE
            .post(issuer.url("/v1/tenants/acme/tokens"))
            .json(&json!({"name": name, "permissions": ["runs:read"]}))
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "bad_name").await;
    }
    let accepted = ALICE
        .mint(
            &issuer,
            "acme",
            json!({"name": "Déploiement – nuit ☾", "permissions": ["runs:read"]}),
        )
        .await;
    assert_eq!(accepted["name"], "Déploiement – nuit ☾");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_errors_are_not_sniffed_and_name_no_framework_internals() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let issuer = TestIssuer::start(Options::default()).await;
    let response = BOB
        .get(issuer.url("/v1/tenants/globex/tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    // A chunked body that breaks off mid-chunk: the body cannot be read.
    let address = issuer.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let credentials = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", ALICE.user, ALICE.password))
    };
    let request = format!(
        "POST /v1/tenants/acme/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_request"), "{answer}");
    assert!(answer.contains("nosniff"), "{answer}");
    assert!(!answer.to_lowercase().contains("buffer"), "{answer}");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused_not_first_wins() {
    let issuer = TestIssuer::start(Options::default()).await;
    let minted = ALICE
        .mint(&issuer, "acme", json!({"permissions": ["runs:read"]}))
        .await;
    let token = minted["token"].as_str().unwrap();
    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", ALICE.user, ALICE.password))
        )
    };
    let bearer = format!("Bearer {token}");
    for (first, second) in [(&basic, &bearer), (&bearer, &basic), (&basic, &basic)] {
        let response = reqwest::Client::new()
            .get(issuer.url("/v1/tenants/acme/tokens"))
            .header("authorization", first)
            .header("authorization", second)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "invalid_request").await;
    }
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_header_mode_refuses_two_proxy_secrets() {
    let issuer = trusted_header_issuer().await;
    let response = behind_proxy(&issuer, "alice", Some(PROXY_SECRET))
        .header("X-Edgetoken-Proxy-Secret", "a-client-sent-guess")
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthenticated").await;
    let alone = behind_proxy(&issuer, "alice", Some(PROXY_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(alone.status(), 201, "one secret is accepted");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_revocations_take_members_or_token_holders_only() {
    use edgetoken::permissions::Scope;
    use edgetoken::records::TokenRecord;
    use edgetoken::token::{Lifetime, MintRequest};
    let issuer = TestIssuer::start(Options::default()).await;
    let revoke = |user: String| {
        ALICE
            .post(issuer.url("/v1/tenants/acme/revocations"))
            .json(&json!({ "user": user }))
            .send()
    };
    for junk in ["a b".to_owned(), "x".repeat(300)] {
        assert_error(revoke(junk).await.unwrap(), 400, "invalid_request").await;
    }
    // Well-formed ids of nobody in acme (a typo, a wildcard) are refused, and say why.
    for nobody in ["bobb", "*"] {
        assert_error(revoke(nobody.into()).await.unwrap(), 400, "unknown_user").await;
    }
    // A member is revocable.
    assert_eq!(revoke("bob".into()).await.unwrap().status(), 204);
    // So is a former member whose token still lives (a record without a directory entry).
    let state = issuer.services.issuer.as_ref().unwrap();
    let minted = state
        .issuer
        .mint(&MintRequest {
            subject: "carol".parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            scope: Scope::parse_claim("runs:read").unwrap(),
            lifetime: Lifetime::OneHour,
        })
        .unwrap();
    state
        .records
        .put(&TokenRecord::of(&minted.claims, None))
        .await
        .unwrap();
    assert_eq!(revoke("carol".into()).await.unwrap().status(), 204);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_revocations_are_rate_limited_per_admin() {
    let issuer = TestIssuer::start(Options {
        extra: "tenant_revocations_per_minute = 2\n".into(),
        ..Options::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = ALICE
            .post(issuer.url("/v1/tenants/acme/revocations"))
            .json(&json!({"user": "bob"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(statuses, [204, 204, 429]);
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_ids_outside_the_grammar_leave_nothing_in_the_limiter() {
    let issuer = TestIssuer::start(Options::default()).await;
    let limiter = &issuer.services.issuer.as_ref().unwrap().failed_signins;
    for (i, len) in [300, 10_000, 250_000].into_iter().enumerate() {
        let id = format!("{i}{}", "u".repeat(len));
        let response = reqwest::Client::new()
            .get(issuer.url("/v1/tenants/acme/tokens"))
            .basic_auth(id, Some("pw"))
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "unauthenticated").await;
    }
    assert_eq!(
        limiter.tracked(),
        0,
        "nothing stored for ids no user can have"
    );
    let response = reqwest::Client::new()
        .get(issuer.url("/v1/tenants/acme/tokens"))
        .basic_auth("nobody-of-this-name", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthenticated").await;
    assert_eq!(limiter.tracked(), 1, "a well-formed id is counted");
    issuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_for_want_of_a_password_slot_gives_its_attempt_back() {
    let issuer = TestIssuer::start(Options {
        extra: "failed_signins_per_minute = 2\n".into(),
        ..Options::default()
    })
    .await;
    let slots = Arc::clone(&issuer.services.issuer.as_ref().unwrap().password_checks);
    let permits = u32::try_from(slots.available_permits()).unwrap();
    let held = slots.acquire_many_owned(permits).await.unwrap();
    // Every slot is taken: both attempts wait, then get 429 without any password check.
    let attempts = (0..2).map(|_| {
        reqwest::Client::new()
            .get(issuer.url("/v1/tenants/acme/tokens"))
            .basic_auth("alice", Some("a-wrong-password"))
            .send()
    });
    for response in futures_util::future::join_all(attempts).await {
        assert_error(response.unwrap(), 429, "rate_limited").await;
    }
    drop(held);
    // Those two said nothing about the password, so the limit of 2 still has room for 2.
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .get(issuer.url("/v1/tenants/acme/tokens"))
            .basic_auth("alice", Some("a-wrong-password"))
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "unauthenticated").await;
    }
    issuer.stop().await;
}

/// `/readyz` and `/metrics` sample the mirror's health while the feed writes it: a thread
/// sampling and a thread changing the mirror must both finish. Before, one sample took the
/// health's read lock twice in one statement, and a change arriving between the two (its
/// writer waiting, which lets no new reader in) blocked both threads for good: an issuer whose
/// two worker threads stopped during a Redis Cluster failover, `gdb` showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_the_health_while_the_mirror_changes_never_deadlocks() {
    const ROUNDS: usize = 200_000;
    let issuer = TestIssuer::start(Options::default()).await;
    let (done, finished) = std::sync::mpsc::channel();
    let sampler = {
        let (services, done) = (Arc::clone(&issuer.services), done.clone());
        std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                std::hint::black_box(services.sample());
            }
            done.send("the sampler").unwrap();
        })
    };
    let writer = {
        let services = Arc::clone(&issuer.services);
        let expires_at = issuer.clock.unix_now() + 3600;
        std::thread::spawn(move || {
            for i in 0..ROUNDS {
                let jti = TokenId::new(&format!("deadlock-test-token-{i:08}")).unwrap();
                services
                    .mirror
                    .apply(&Revocation::Token { jti, expires_at });
            }
            done.send("the writer").unwrap();
        })
    };
    for _ in 0..2 {
        let who = finished
            .recv_timeout(Duration::from_mins(1))
            .expect("the sampler and the writer deadlocked on the mirror's health");
        eprintln!("{who} finished {ROUNDS} rounds");
    }
    sampler.join().unwrap();
    writer.join().unwrap();
    issuer.stop().await;
}
