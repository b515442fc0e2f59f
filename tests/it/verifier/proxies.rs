//! Forward-auth through the other common edge proxies, for real (SPEC §5, issue 12): Envoy
//! (HTTP `ext_authz`, `deploy/envoy/edge.yaml`; gRPC `ext_authz` to the verifier's
//! `grpc_listen`, `deploy/envoy/edge-grpc.yaml`), Traefik (`ForwardAuth`, `deploy/traefik/`) and
//! Caddy (`forward_auth`, `deploy/caddy/Caddyfile`), each running its shipped configuration
//! with only the addresses changed, in front of a real verifier process (route mode) and an
//! upstream that echoes what it received. Every scenario is one function run against each
//! proxy; nginx has its own module (`verifier::nginx`). The README's snippets of these files
//! are checked here to be verbatim excerpts of them.

use std::sync::Arc;

use edgetoken::clock::ManualClock;
use edgetoken::config::Role;
use edgetoken::token::{Issuer, Lifetime, MintRequest};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::WAIT;
use crate::support::deployment::{
    AUDIENCE, Deployment, ISSUER, ROUTES, mint, mint_via_api, once_used_via_api, revoke_via_api,
};
use crate::support::echo_upstream::EchoUpstream;
use crate::support::edge_proxy::{EdgeProxy, ProxyKind};
use crate::support::eventually::eventually;
use crate::support::process::{EdgetokenProcess, Served, free_port};

/// A deployment behind one proxy: the issuer (in process), a verifier process with the route
/// policy, the echo upstream and the proxy.
struct Edge {
    deployment: Deployment,
    issuer: Served,
    verifier: EdgetokenProcess,
    upstream: EchoUpstream,
    proxy: EdgeProxy,
    client: reqwest::Client,
}

async fn edge(kind: ProxyKind) -> Edge {
    let deployment = Deployment::new();
    let issuer = Served::start(deployment.config(""), Role::Issuer).await;
    // gRPC ext_authz talks to the verifier's own gRPC listener.
    let grpc_port = (kind == ProxyKind::EnvoyGrpc).then(free_port);
    let grpc = grpc_port.map_or_else(String::new, |port| {
        format!("[verifier]\ngrpc_listen = \"127.0.0.1:{port}\"\n")
    });
    // Uses are flushed every second, for the "last used" scenario. One request thread, as a
    // sidecar on one core runs (the current-thread runtime; `verifier::nginx` leaves it
    // automatic: the multi-thread runtime on a machine with more than one core).
    let config = deployment.config_text(&format!(
        "{grpc}{ROUTES}\n[usage]\nflush_secs = 1\n[server]\nworker_threads = 1\n"
    ));
    let verifier = EdgetokenProcess::start(&config, "verifier").await;
    let upstream = EchoUpstream::start().await;
    let verifier_port = grpc_port.unwrap_or(verifier.port);
    let proxy = EdgeProxy::start(kind, verifier_port, upstream.addr.port()).await;
    Edge {
        deployment,
        issuer,
        verifier,
        upstream,
        proxy,
        client: reqwest::Client::new(),
    }
}

/// What one request through the edge came back with.
struct Answer {
    status: StatusCode,
    /// Every `WWW-Authenticate` the client received.
    challenges: Vec<String>,
    body: String,
}

impl Edge {
    async fn send(&self, method: &str, path: &str, token: Option<&str>) -> Answer {
        self.send_with(method, path, token, &[]).await
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            self.proxy.url(path),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let challenges = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let body = response.text().await.unwrap();
        Answer {
            status,
            challenges,
            body,
        }
    }

    /// Asserts a refusal: `status`, the challenge relayed exactly once and equal to
    /// `challenge`, the verifier's JSON body with `code`, and the upstream not reached.
    async fn assert_refused(
        &self,
        (method, path, token): (&str, &str, Option<&str>),
        status: StatusCode,
        challenge: &str,
        code: &str,
    ) {
        let hits = self.upstream.hits();
        let answer = self.send(method, path, token).await;
        let context = format!("{method} {path}: {} {}", answer.status, answer.body);
        assert_eq!(answer.status, status, "{context}\n{}", self.proxy.log());
        assert_eq!(answer.challenges, [challenge], "{context}");
        let body: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{context}: the verifier's JSON body: {e}"));
        assert_eq!(body["error"], code, "{context}");
        assert_eq!(
            self.upstream.hits(),
            hits,
            "{context}: reached the upstream"
        );
    }
}

/// The upstream's echo of a request that passed.
fn echoed(answer: &Answer) -> Value {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// The values the upstream received for header `name`.
fn header_values<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn invalid_token(reason: &str) -> String {
    format!(r#"Bearer error="invalid_token", error_description="{reason}""#)
}

fn insufficient_scope(reason: &str) -> String {
    format!(r#"Bearer error="insufficient_scope", error_description="{reason}""#)
}

async fn passes_a_valid_token_with_only_the_verifiers_headers(kind: ProxyKind) {
    let edge = edge(kind).await;
    let (id, token) = mint_via_api(&edge.issuer.url(""), &["runs:read"]).await;
    let forged = [
        ("X-Auth-Subject", "mallory"),
        ("X-Auth-Tenant", "globex"),
        ("X-Auth-Scope", "runs:write"),
        ("X-Auth-Token-Id", "forged"),
        ("X-Auth-Expires", "99999999999"),
        ("X-Auth-Role", "admin"),
    ];
    let answer = edge
        .send_with("GET", "/api/acme/runs/42?page=2", Some(&token), &forged)
        .await;
    let echo = echoed(&answer);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["uri"], "/api/acme/runs/42?page=2");
    assert_eq!(header_values(&echo, "x-auth-subject"), ["alice"]);
    assert_eq!(header_values(&echo, "x-auth-tenant"), ["acme"]);
    assert_eq!(header_values(&echo, "x-auth-scope"), ["runs:read"]);
    assert_eq!(header_values(&echo, "x-auth-token-id"), [id.as_str()]);
    let expires = header_values(&echo, "x-auth-expires");
    assert_eq!(expires.len(), 1, "{echo}");
    assert_ne!(expires[0], "99999999999", "{echo}");
    assert!(expires[0].parse::<u64>().is_ok(), "{echo}");
    // A client-sent X-Auth-* the verifier does not set is removed, not passed along.
    assert!(header_values(&echo, "x-auth-role").is_empty(), "{echo}");
    // The upstream trusts the headers, never sees the token.
    assert!(header_values(&echo, "authorization").is_empty(), "{echo}");
    let log = edge.proxy.log();
    assert!(
        !log.to_ascii_lowercase().contains("deprecat"),
        "{kind} reports a deprecated option in the shipped configuration:\n{log}"
    );
}

async fn records_the_clients_address_for_last_used_not_a_forged_one(kind: ProxyKind) {
    let edge = edge(kind).await;
    let (id, token) = mint_via_api(&edge.issuer.url(""), &["runs:read"]).await;
    let forged = [
        ("X-Real-IP", "203.0.113.66"),
        ("X-Forwarded-For", "203.0.113.67"),
    ];
    echoed(
        &edge
            .send_with("GET", "/api/acme/runs/1", Some(&token), &forged)
            .await,
    );
    let issuer = edge.issuer.url("");
    let used = once_used_via_api(&edge.client, &issuer, &id, WAIT).await;
    // The test client is on loopback: the proxy's view of it, not what it claimed.
    assert_eq!(used["last_used_from"], "127.0.0.1", "{used}");
}

async fn refuses_missing_forged_and_expired_tokens_with_401(kind: ProxyKind) {
    let edge = edge(kind).await;
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    let path = "/api/acme/runs/1";
    edge.assert_refused(
        ("GET", path, None),
        StatusCode::UNAUTHORIZED,
        r#"Bearer realm="edgetoken""#,
        "missing_token",
    )
    .await;

    let mut forged = token.into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    edge.assert_refused(
        ("GET", path, Some(&forged)),
        StatusCode::UNAUTHORIZED,
        &invalid_token("bad_signature"),
        "bad_signature",
    )
    .await;

    let past = Arc::new(ManualClock::at(
        edgetoken::clock::Clock::unix_now(&edgetoken::clock::SystemClock) - 3 * 3600,
    ));
    let expired = Issuer::new(
        edge.deployment.keys().load_signing().unwrap(),
        ISSUER,
        AUDIENCE,
        past,
    )
    .mint(&MintRequest {
        subject: "alice".parse().unwrap(),
        tenant: "acme".parse().unwrap(),
        scope: edgetoken::Scope::parse_claim("runs:read").unwrap(),
        lifetime: Lifetime::OneHour,
    })
    .unwrap();
    edge.assert_refused(
        ("GET", path, Some(expired.token.expose())),
        StatusCode::UNAUTHORIZED,
        &invalid_token("expired"),
        "expired",
    )
    .await;
}

async fn refuses_wrong_tenant_and_missing_permission_with_403(kind: ProxyKind) {
    let edge = edge(kind).await;
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
        edge.assert_refused(
            (method, path, Some(&token)),
            StatusCode::FORBIDDEN,
            &insufficient_scope(reason),
            reason,
        )
        .await;
    }
}

async fn routes_by_the_original_method_and_path_whatever_the_client_claims(kind: ProxyKind) {
    let edge = edge(kind).await;
    let issuer = edge.deployment.offline_issuer();
    let reader = mint(&issuer, "alice", "acme", "runs:read");
    // A client naming a readable route in the route headers of every proxy is still judged by
    // the request it actually makes: a write, which its token does not allow.
    let claims = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/api/acme/runs/1"),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/api/acme/runs/1"),
    ];
    let hits = edge.upstream.hits();
    let answer = edge
        .send_with("POST", "/api/acme/runs", Some(&reader), &claims)
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(
        answer.challenges,
        [insufficient_scope("insufficient_scope")]
    );
    assert_eq!(edge.upstream.hits(), hits);

    // The same headers on a request its token allows change nothing either.
    let echo = echoed(
        &edge
            .send_with("GET", "/api/acme/runs/7", Some(&reader), &claims)
            .await,
    );
    assert_eq!(echo["uri"], "/api/acme/runs/7");

    // The write route passes for a token that may write, with the method the client used.
    let writer = mint(&issuer, "bob", "globex", "runs:write");
    let echo = echoed(&edge.send("POST", "/api/globex/runs", Some(&writer)).await);
    assert_eq!(echo["method"], "POST");
    assert_eq!(header_values(&echo, "x-auth-tenant"), ["globex"]);

    // The refused write's own path passes as a read: the method decides, not only the path.
    let echo = echoed(&edge.send("GET", "/api/acme/runs", Some(&reader)).await);
    assert_eq!(echo["method"], "GET");
}

async fn refuses_a_token_revoked_through_the_issuer_on_the_next_request(kind: ProxyKind) {
    let edge = edge(kind).await;
    let (id, token) = mint_via_api(&edge.issuer.url(""), &["runs:read"]).await;
    let path = "/api/acme/runs/1";
    echoed(&edge.send("GET", path, Some(&token)).await);
    // 204 only once every live verifier applied it (the revocation barrier).
    revoke_via_api(&edge.issuer.url(""), &id).await;
    edge.assert_refused(
        ("GET", path, Some(&token)),
        StatusCode::UNAUTHORIZED,
        &invalid_token("revoked"),
        "revoked",
    )
    .await;
}

async fn fails_closed_when_the_verifier_stops(kind: ProxyKind) {
    let mut edge = edge(kind).await;
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    let path = "/api/acme/runs/1";
    echoed(&edge.send("GET", path, Some(&token)).await);
    edge.verifier.stop();
    let hits = edge.upstream.hits();
    for _ in 0..3 {
        let answer = edge.send("GET", path, Some(&token)).await;
        assert!(
            matches!(answer.status.as_u16(), 401 | 403 | 500..=599),
            "{kind} answered {} with the verifier stopped: {}",
            answer.status,
            answer.body
        );
    }
    assert_eq!(edge.upstream.hits(), hits, "{kind} passed a request on");
}

async fn fails_closed_when_the_verifier_hangs(kind: ProxyKind) {
    let edge = edge(kind).await;
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    let path = "/api/acme/runs/1";
    echoed(&edge.send("GET", path, Some(&token)).await);
    // Frozen: connections are accepted by the kernel, nothing answers.
    edge.verifier.signal("STOP");
    eventually("the verifier to be stopped", WAIT)
        .until(async || edge.verifier.is_stopped().then_some(()))
        .await;
    let hits = edge.upstream.hits();
    // Each proxy gives up after its timeout: Envoy 0.25 s, Caddy 1 s, Traefik 30 s (fixed).
    let answer = edge.send("GET", path, Some(&token)).await;
    edge.verifier.signal("CONT");
    assert!(
        matches!(answer.status.as_u16(), 500..=599),
        "{kind} answered {} with the verifier frozen: {}",
        answer.status,
        answer.body
    );
    assert_eq!(edge.upstream.hits(), hits, "{kind} passed a request on");
}

/// Each scenario, once per proxy: `verifier::proxies::<proxy>::<scenario>`.
macro_rules! for_each_proxy {
    ($($proxy:ident => $kind:expr),* $(,)?) => {$(
        mod $proxy {
            use super::ProxyKind;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn passes_a_valid_token_with_only_the_verifiers_headers() {
                super::passes_a_valid_token_with_only_the_verifiers_headers($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn records_the_clients_address_for_last_used_not_a_forged_one() {
                super::records_the_clients_address_for_last_used_not_a_forged_one($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refuses_missing_forged_and_expired_tokens_with_401() {
                super::refuses_missing_forged_and_expired_tokens_with_401($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refuses_wrong_tenant_and_missing_permission_with_403() {
                super::refuses_wrong_tenant_and_missing_permission_with_403($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn routes_by_the_original_method_and_path_whatever_the_client_claims() {
                super::routes_by_the_original_method_and_path_whatever_the_client_claims($kind)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refuses_a_token_revoked_through_the_issuer_on_the_next_request() {
                super::refuses_a_token_revoked_through_the_issuer_on_the_next_request($kind)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fails_closed_when_the_verifier_hangs() {
                super::fails_closed_when_the_verifier_hangs($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fails_closed_when_the_verifier_stops() {
                super::fails_closed_when_the_verifier_stops($kind).await;
            }
        }
    )*};
}

for_each_proxy! {
    envoy => ProxyKind::Envoy,
    envoy_grpc => ProxyKind::EnvoyGrpc,
    traefik => ProxyKind::Traefik,
    caddy => ProxyKind::Caddy,
}

/// Whether `block` occurs in `file` as consecutive whole lines, all indented by one prefix
/// (a README snippet may drop the file's common indentation).
fn is_excerpt(file: &str, block: &str) -> bool {
    let lines: Vec<&str> = file.lines().collect();
    let block: Vec<&str> = block.lines().collect();
    let Some(first) = block.first() else {
        return false;
    };
    lines.windows(block.len()).any(|window| {
        let Some(prefix) = window[0].strip_suffix(*first) else {
            return false;
        };
        prefix.chars().all(|c| c == ' ' || c == '\t')
            && window.iter().zip(&block).all(|(line, wanted)| {
                if wanted.is_empty() {
                    line.trim().is_empty()
                } else {
                    line.strip_prefix(prefix) == Some(*wanted)
                }
            })
    })
}

#[test]
fn readme_snippets_are_excerpts_of_the_deployed_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let marker = "<!-- snippet: ";
    let mut checked = Vec::new();
    for (index, _) in readme.match_indices(marker) {
        let rest = &readme[index + marker.len()..];
        let (file, rest) = rest.split_once(" -->\n").expect("snippet marker closes");
        let rest = rest
            .strip_prefix("```")
            .expect("a code block follows the marker");
        let (_language, rest) = rest.split_once('\n').unwrap();
        let (block, _) = rest.split_once("\n```").expect("the code block closes");
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("README snippet names {file}: {e}"));
        assert!(
            is_excerpt(&text, block),
            "the README's snippet of {file} is not an excerpt of it:\n{block}"
        );
        checked.push(file);
    }
    checked.sort_unstable();
    assert_eq!(
        checked,
        [
            "deploy/caddy/Caddyfile",
            "deploy/envoy/edge-grpc.yaml",
            "deploy/envoy/edge-grpc.yaml",
            "deploy/envoy/edge.yaml",
            "deploy/traefik/dynamic.yml"
        ]
    );
}
