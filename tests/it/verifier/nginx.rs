//! Forward-auth through a real nginx `auth_request` (SPEC §5), configured with the
//! repository's `deploy/nginx/edge.conf` and `upstream.conf`: the verifier's answer decides,
//! nginx copies the `X-Auth-*` headers to the upstream, and a revocation made at the issuer
//! is refused at the edge.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use edgetoken::clock::ManualClock;
use edgetoken::config::Role;
use edgetoken::token::{Issuer, Lifetime, MintRequest};
use reqwest::StatusCode;

use super::wait_for_changes;
use crate::support::deployment::{
    AUDIENCE, Deployment, ISSUER, ROUTES, mint, mint_via_api, revoke_via_api,
};
use crate::support::nginx::Nginx;
use crate::support::process::Served;

/// The response's `WWW-Authenticate` challenge (empty when absent), which must be sent at most
/// once: nginx's `auth_request` relays a 401's challenge itself, so a config that also added
/// it would answer with two.
fn challenge(response: &reqwest::Response) -> String {
    let all: Vec<&str> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap_or("<not visible ASCII>"))
        .collect();
    assert!(
        all.len() <= 1,
        "WWW-Authenticate sent {} times: {all:?}",
        all.len()
    );
    all.first().copied().unwrap_or_default().to_owned()
}

/// Sends one raw HTTP/1.1 request, so the request target reaches nginx byte for byte (HTTP
/// clients normalise `..` and `%2e` away).
fn raw_get(port: u16, target: &str, token: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

struct Edge {
    deployment: Deployment,
    issuer: Served,
    verifier: Served,
    nginx: Nginx,
    client: reqwest::Client,
}

async fn edge() -> Edge {
    let deployment = Deployment::new();
    let issuer = Served::start(deployment.config(""), Role::Issuer).await;
    let verifier = Served::start(deployment.config(ROUTES), Role::Verifier).await;
    let nginx = Nginx::start_edge(verifier.addr.port());
    Edge {
        deployment,
        issuer,
        verifier,
        nginx,
        client: reqwest::Client::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_forwards_a_valid_token_with_verifier_headers_and_strips_client_ones() {
    let edge = edge().await;
    let (id, token) = mint_via_api(&edge.issuer.url(""), &["runs:read"]).await;
    let response = edge
        .client
        .get(edge.nginx.url("/api/acme/runs/42"))
        .bearer_auth(&token)
        .header("X-Auth-Subject", "mallory")
        .header("X-Auth-Tenant", "globex")
        .header("X-Auth-Scope", "runs:write")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        edge.nginx.error_log()
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("subject=alice\n"), "{body}");
    assert!(body.contains("tenant=acme\n"), "{body}");
    assert!(body.contains("scope=runs:read\n"), "{body}");
    assert!(body.contains(&format!("token_id={id}\n")), "{body}");
    assert!(
        !body.contains("mallory") && !body.contains("globex"),
        "{body}"
    );
    // The upstream trusts the headers, never sees the token.
    assert!(body.contains("authorization=\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refuses_missing_forged_and_expired_tokens_with_401() {
    let edge = edge().await;
    let issuer = edge.deployment.offline_issuer();
    let token = mint(&issuer, "alice", "acme", "runs:read");
    let url = edge.nginx.url("/api/acme/runs/1");

    let missing = edge.client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&missing), r#"Bearer realm="edgetoken""#);

    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let response = edge
        .client
        .get(&url)
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&response).starts_with(r#"Bearer error="invalid_token""#),
        "{}",
        challenge(&response)
    );

    let past = Arc::new(ManualClock::at(
        edgetoken::clock::Clock::unix_now(&edgetoken::clock::SystemClock) - 3 * 3600,
    ));
    let old_issuer = Issuer::new(
        edge.deployment.keys().load_signing().unwrap(),
        ISSUER,
        AUDIENCE,
        past,
    );
    let expired = old_issuer
        .mint(&MintRequest {
            subject: "alice".parse().unwrap(),
            tenant: "acme".parse().unwrap(),
            scope: edgetoken::Scope::parse_claim("runs:read").unwrap(),
            lifetime: Lifetime::OneHour,
        })
        .unwrap();
    let response = edge
        .client
        .get(&url)
        .bearer_auth(expired.token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&response),
        r#"Bearer error="invalid_token", error_description="expired""#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refuses_wrong_tenant_missing_permission_and_unrouted_paths_with_403() {
    let edge = edge().await;
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    for (method, path, reason) in [
        ("GET", "/api/globex/runs/1", "wrong_tenant"),
        ("POST", "/api/acme/runs", "insufficient_scope"),
        ("GET", "/api/acme/members/7", "insufficient_scope"),
        ("GET", "/api/acme/secrets", "no_route"),
    ] {
        let response = edge
            .client
            .request(method.parse().unwrap(), edge.nginx.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(
            challenge(&response),
            format!(r#"Bearer error="insufficient_scope", error_description="{reason}""#),
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_edge_refuses_encoded_dot_segments_that_nginx_itself_normalises() {
    let edge = edge().await;
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    // nginx routes the normalised path (/api/globex/...), the verifier sees the raw target and
    // refuses to guess: no route, so denied.
    let port = edge.nginx.port;
    let response = tokio::task::spawn_blocking(move || {
        raw_get(port, "/api/acme/runs/%2e%2e/%2e%2e/globex/runs/1", &token)
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("no_route"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refuses_a_token_revoked_through_the_issuer_api() {
    let edge = edge().await;
    let (id, token) = mint_via_api(&edge.issuer.url(""), &["runs:read"]).await;
    let url = edge.nginx.url("/api/acme/runs/1");
    let before = edge
        .client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), StatusCode::OK);

    let changes = edge.verifier.services.mirror.health().borrow().changes;
    revoke_via_api(&edge.issuer.url(""), &id).await;
    wait_for_changes(&edge.verifier.services.mirror, changes + 1).await;

    let after = edge
        .client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&after),
        r#"Bearer error="invalid_token", error_description="revoked""#
    );
}
