//! The in-process layer (SPEC §6): a small axum service guarded by `RequireToken` with a
//! route policy gets the forward-auth decision, statuses and challenges, and sees a
//! revocation on the next request.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use edgetoken::clock::SystemClock;
use edgetoken::http::layer::{RequireToken, VerifiedToken};
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::permissions::{Catalogue, Category};
use edgetoken::policy::{RoutePolicy, RouteSpec, Unmatched};
use edgetoken::revocation::{MemoryRevocations, Revocation, RevocationCheck};
use edgetoken::token::{Issuer, Verifier, VerifierSettings};
use reqwest::StatusCode;

use crate::support::deployment::mint;

async fn runs(VerifiedToken(claims): VerifiedToken) -> String {
    format!("{}@{}", claims.subject, claims.tenant)
}

struct App {
    base: String,
    issuer: Issuer,
    revocations: Arc<MemoryRevocations>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn app() -> App {
    let key = SigningKey::generate();
    let mut ring = KeyRing::new();
    ring.insert(TrustedKey::from_bytes(&key.public_bytes()).unwrap());
    let clock = Arc::new(SystemClock);
    let revocations = Arc::new(MemoryRevocations::new());
    let verifier = Arc::new(
        Verifier::new(
            VerifierSettings::new("https://issuer.test", "edge-api"),
            ring,
            Arc::clone(revocations.mirror()) as Arc<dyn RevocationCheck>,
            clock.clone(),
        )
        .unwrap(),
    );
    let catalogue = Catalogue::new([Category::new("runs").unwrap()]).unwrap();
    let policy = RoutePolicy::new(
        &[RouteSpec {
            method: "GET".into(),
            path: "/api/{tenant}/runs".into(),
            permission: Some("runs:read".into()),
        }],
        Unmatched::Deny,
        &catalogue,
    )
    .unwrap();
    let router = Router::new()
        .route("/api/{tenant}/runs", get(runs))
        .route("/api/{tenant}/other", get(runs))
        .layer(RequireToken::new(verifier).with_policy(policy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    App {
        base,
        issuer: Issuer::new(key, "https://issuer.test", "edge-api", clock),
        revocations,
        _shutdown: tx,
    }
}

fn challenge(response: &reqwest::Response) -> String {
    response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn layer_lets_a_valid_token_through_and_hands_the_claims_to_the_handler() {
    let app = app().await;
    let token = mint(&app.issuer, "alice", "acme", "runs:read");
    let response = reqwest::Client::new()
        .get(format!("{}/api/acme/runs", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "alice@acme");
}

#[tokio::test]
async fn layer_answers_like_forward_auth_with_statuses_and_challenges() {
    let app = app().await;
    let token = mint(&app.issuer, "alice", "acme", "runs:read");
    let client = reqwest::Client::new();
    let missing = client
        .get(format!("{}/api/acme/runs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&missing), r#"Bearer realm="edgetoken""#);
    for (path, reason) in [
        ("/api/globex/runs", "wrong_tenant"),
        ("/api/acme/other", "no_route"),
    ] {
        let response = client
            .get(format!("{}{path}", app.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            challenge(&response),
            format!(r#"Bearer error="insufficient_scope", error_description="{reason}""#)
        );
    }
}

#[tokio::test]
async fn layer_refuses_a_token_on_the_request_after_its_revocation() {
    let app = app().await;
    let minted = app
        .issuer
        .mint(&edgetoken::token::MintRequest {
            subject: "alice".parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            scope: edgetoken::Scope::parse_claim("runs:read").unwrap(),
            lifetime: edgetoken::token::Lifetime::OneHour,
        })
        .unwrap();
    let token = minted.token.expose();
    let client = reqwest::Client::new();
    let url = format!("{}/api/acme/runs", app.base);
    let ok = client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    app.revocations.revoke(&Revocation::Token {
        jti: minted.claims.token_id.clone(),
        expires_at: minted.claims.expires_at.unix_timestamp(),
    });
    let refused = client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&refused),
        r#"Bearer error="invalid_token", error_description="revoked""#
    );
}
