//! A Rust service that checks edgetoken tokens in-process (SPEC §6), with the same decision,
//! statuses and challenges as the `/v1/verify` sidecar.
//!
//! Run `cargo run --example axum_service`: it trusts a fresh key, prints a token for tenant
//! `acme` with `runs:read`, and serves on 127.0.0.1:3000:
//!
//! ```text
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/api/acme/runs      # 200
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/api/globex/runs    # 403
//! curl -X POST -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/api/acme/runs  # 403
//! curl http://127.0.0.1:3000/api/acme/runs                                         # 401
//! ```
//!
//! A real service loads the issuer's public keys instead (`KeyDir::load_ring`, or, with the
//! `server` feature, a `JwksRefresher` on the issuer's JWKS URL, passed to the layer with
//! `with_jwks`) and uses a Redis-fed revocation mirror (`RevocationEngine`) instead of the
//! in-process one. It needs only the `layer` feature.

#![expect(clippy::print_stdout, reason = "the example prints its demo token")]

use std::error::Error;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use edgetoken::clock::SystemClock;
use edgetoken::http::layer::{RequireToken, VerifiedToken};
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::permissions::{Catalogue, Category, Scope};
use edgetoken::policy::{RoutePolicy, RouteSpec, Unmatched};
use edgetoken::revocation::{MemoryRevocations, RevocationCheck};
use edgetoken::token::{Issuer, Lifetime, MintRequest, Verifier, VerifierSettings};

async fn list_runs(VerifiedToken(claims): VerifiedToken) -> String {
    format!("runs of tenant {} for {}\n", claims.tenant, claims.subject)
}

async fn start_run(VerifiedToken(claims): VerifiedToken) -> String {
    format!("run started in {} by {}\n", claims.tenant, claims.subject)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let key = SigningKey::generate();
    let mut ring = KeyRing::new();
    ring.insert(TrustedKey::from_bytes(&key.public_bytes())?);
    let clock = Arc::new(SystemClock);
    let revocations = Arc::new(MemoryRevocations::new());
    let verifier = Arc::new(Verifier::new(
        VerifierSettings::new("https://issuer.example", "api"),
        ring,
        Arc::clone(revocations.mirror()) as Arc<dyn RevocationCheck>,
        clock.clone(),
    )?);

    let catalogue = Catalogue::new([Category::new("runs")?])?;
    let route = |method: &str, permission: &str| RouteSpec {
        method: method.into(),
        path: "/api/{tenant}/runs".into(),
        permission: Some(permission.into()),
    };
    let policy = RoutePolicy::new(
        &[route("GET", "runs:read"), route("POST", "runs:write")],
        Unmatched::Deny,
        &catalogue,
    )?;

    let app = Router::new()
        .route("/api/{tenant}/runs", get(list_runs).post(start_run))
        .layer(RequireToken::new(verifier).with_policy(policy));

    let issuer = Issuer::new(key, "https://issuer.example", "api", clock);
    let minted = issuer.mint(&MintRequest {
        subject: "alice".parse()?,
        tenant: "acme".parse()?,
        scope: Scope::parse_claim("runs:read")?,
        lifetime: Lifetime::OneHour,
    })?;
    println!("TOKEN={}", minted.token.expose());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
