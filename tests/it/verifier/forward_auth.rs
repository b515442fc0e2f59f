//! `/v1/verify` decisions over a real socket (SPEC §5): where the requirement comes from
//! (route policy with trusted forwarded headers, the Envoy path form, query parameters), what
//! an untrusted peer's headers are worth, the `Authorization` rules, the 200 headers, metrics,
//! and 503 once the revocation state is too stale.

use edgetoken::config::Role;
use reqwest::StatusCode;

use crate::support::deployment::{Deployment, ROUTES, mint};
use crate::support::process::Served;
use crate::support::redis::RedisServer;

async fn verifier(deployment: &Deployment, extra: &str) -> Served {
    Served::start(
        deployment.config(&format!("{extra}\n{ROUTES}")),
        Role::Verifier,
    )
    .await
}

fn challenge(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn forwarded(served: &Served, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(served.url("/v1/verify"))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_answers_200_with_auth_headers_for_a_matching_route() {
    let deployment = Deployment::new();
    let served = verifier(&deployment, "").await;
    let token = mint(
        &deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read members:read",
    );
    let response = forwarded(
        &served,
        &token,
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/acme/runs/9?page=2"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-auth-subject"), "alice");
    assert_eq!(header("x-auth-tenant"), "acme");
    assert_eq!(header("x-auth-scope"), "members:read runs:read");
    assert_eq!(header("x-auth-token-id").len(), 22);
    assert!(header("x-auth-expires").parse::<i64>().unwrap() > 0);
    assert_eq!(header("cache-control"), "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_style_original_headers_select_the_route_too() {
    let deployment = Deployment::new();
    let served = verifier(&deployment, "").await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let ok = forwarded(
        &served,
        &token,
        &[
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/acme/runs"),
        ],
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let write = forwarded(
        &served,
        &token,
        &[
            ("X-Original-Method", "POST"),
            ("X-Original-URI", "/api/acme/runs"),
        ],
    )
    .await;
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&write),
        r#"Bearer error="insufficient_scope", error_description="insufficient_scope""#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored_and_the_request_denied() {
    let deployment = Deployment::new();
    // Loopback (the test client) is not a trusted proxy here.
    let served = verifier(
        &deployment,
        "[verifier]\ntrusted_proxies = [\"10.0.0.0/8\"]",
    )
    .await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let response = forwarded(
        &served,
        &token,
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/acme/runs/1"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&response),
        r#"Bearer error="insufficient_scope", error_description="no_route""#
    );
    // A bad token is still 401, not 403: authentication is decided first.
    let bad = forwarded(&served, "a.b.c", &[]).await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forwarded_header_pairs_at_once_are_ambiguous_and_denied() {
    let deployment = Deployment::new();
    let served = verifier(&deployment, "").await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let response = forwarded(
        &served,
        &token,
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/acme/runs/1"),
            ("X-Original-Method", "POST"),
            ("X-Original-URI", "/api/acme/runs"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_allow_authenticated_lets_any_valid_token_through() {
    let deployment = Deployment::new();
    let served = verifier(
        &deployment,
        "[verifier]\nunmatched = \"allow_authenticated\"",
    )
    .await;
    let token = mint(&deployment.offline_issuer(), "bob", "globex", "runs:read");
    let response = forwarded(
        &served,
        &token,
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/elsewhere"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    // A matching route still applies its requirement.
    let routed = forwarded(
        &served,
        &token,
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/acme/runs/1"),
        ],
    )
    .await;
    assert_eq!(routed.status(), StatusCode::FORBIDDEN);
    // A protected path bent so no route would recognise it is denied, not let through as
    // unmatched: dot segments, encoded slashes, a tenant segment that is no tenant.
    for bent in [
        "/api/acme/../globex/runs/1",
        "/api/acme/%2e%2e/globex/runs/1",
        "/api/globex%2fruns/1",
        "/api/GLOBEX/runs/1",
    ] {
        let response = forwarded(
            &served,
            &token,
            &[("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", bent)],
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{bent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_path_prefix_form_matches_the_original_path_and_method() {
    let deployment = Deployment::new();
    let served = verifier(&deployment, "").await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let client = reqwest::Client::new();
    let ok = client
        .get(served.url("/v1/verify/api/acme/runs/3"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let other_tenant = client
        .get(served.url("/v1/verify/api/globex/runs/3"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(other_tenant.status(), StatusCode::FORBIDDEN);
    let write = client
        .post(served.url("/v1/verify/api/acme/runs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_routes_the_query_parameters_give_the_requirement() {
    let deployment = Deployment::new();
    let served = Served::start(deployment.config(""), Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let client = reqwest::Client::new();
    let get = |query: &str| {
        client
            .get(served.url(&format!("/v1/verify{query}")))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(
        get("?tenant=acme&permission=runs:read")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get("?tenant=globex").await.unwrap().status(), 403);
    assert_eq!(get("?permission=runs:write").await.unwrap().status(), 403);
    // Nothing asked: unmatched, denied by default.
    let unmatched = get("").await.unwrap();
    assert_eq!(unmatched.status(), 403);
    assert_eq!(
        challenge(&unmatched),
        r#"Bearer error="insufficient_scope", error_description="no_route""#
    );
    // An unknown or malformed parameter is refused, never ignored.
    assert_eq!(get("?tenant=acme&role=admin").await.unwrap().status(), 400);
    assert_eq!(get("?permission=runs").await.unwrap().status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_answers_carry_each_tokens_own_identity() {
    // Warm answers come from per-thread memos: alternating cached tokens of different people,
    // over several connections, must never hand one the other's headers.
    let deployment = Deployment::new();
    let served = Served::start(deployment.config(""), Role::Verifier).await;
    let issuer = deployment.offline_issuer();
    let people = ["alice", "bob", "carol"];
    let tokens: Vec<_> = people
        .iter()
        .map(|who| mint(&issuer, who, "acme", "runs:read"))
        .collect();
    let url = served.url("/v1/verify?tenant=acme&permission=runs:read");
    for round in 0..20 {
        // A new client now and then, so answers come from more than one connection.
        let client = reqwest::Client::new();
        for (who, token) in people.iter().zip(&tokens) {
            let response = client.get(&url).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), 200, "{who}, round {round}");
            assert_eq!(response.headers()["x-auth-subject"], *who, "round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_get_the_same_answer_without_a_body() {
    let deployment = Deployment::new();
    let served = Served::start(deployment.config(""), Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .head(served.url("/v1/verify?tenant=acme&permission=runs:read"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "0");
        assert_eq!(response.headers()["x-auth-subject"], "alice");
        assert!(response.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_must_be_exactly_one_bearer_token() {
    let deployment = Deployment::new();
    let served = Served::start(
        deployment.config("[verifier]\nunmatched = \"allow_authenticated\""),
        Role::Verifier,
    )
    .await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let client = reqwest::Client::new();
    let send = |values: Vec<String>| {
        let mut request = client.get(served.url("/v1/verify"));
        for value in values {
            request = request.header("authorization", value);
        }
        request.send()
    };
    assert_eq!(
        send(vec![format!("bEaReR {token}")])
            .await
            .unwrap()
            .status(),
        200
    );
    for values in [
        vec![format!("Basic {token}")],
        vec![format!("Bearer {token} {token}")],
        vec![format!("Bearer {token}"), format!("Bearer {token}")],
    ] {
        let response = send(values.clone()).await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            challenge(&response),
            r#"Bearer error="invalid_token", error_description="malformed_authorization""#
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_counted_in_metrics_by_outcome() {
    let deployment = Deployment::new();
    let served = verifier(&deployment, "").await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let route = [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/api/acme/runs/1"),
    ];
    // Cached on the second verification, so the third is a hit.
    for _ in 0..3 {
        assert_eq!(forwarded(&served, &token, &route).await.status(), 200);
    }
    assert_eq!(forwarded(&served, "x.y.z", &route).await.status(), 401);
    let missing = reqwest::get(served.url("/v1/verify")).await.unwrap();
    assert_eq!(missing.status(), 401);
    let text = reqwest::get(served.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"edgetoken_verify_total{outcome="ok"} 3"#,
        r#"edgetoken_verify_total{outcome="malformed"} 1"#,
        r#"edgetoken_verify_total{outcome="missing_token"} 1"#,
        "edgetoken_verify_duration_seconds_count 5",
        "edgetoken_cache_hits 1",
        "edgetoken_revocation_ready 1",
        "edgetoken_trusted_keys 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("edgetoken_cache_hit_ratio"), "{text}");
    assert!(
        text.contains("edgetoken_revocation_staleness_seconds"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_answers_503_once_the_revocation_state_is_too_stale() {
    let deployment = Deployment::new();
    let mut redis = RedisServer::start();
    let mut config = deployment.config("[verifier]\nunmatched = \"allow_authenticated\"");
    config.revocation.redis_url = Some(redis.url());
    config.revocation.max_staleness = std::time::Duration::from_secs(1);
    let served = Served::start(config, Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let send = || {
        reqwest::Client::new()
            .get(served.url("/v1/verify"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    redis.kill();
    let mut health = served.services.mirror.health();
    tokio::time::timeout(super::WAIT, health.wait_for(|h| !h.fresh))
        .await
        .expect("mirror turned stale in time")
        .unwrap();
    let response = send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = reqwest::get(served.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_path_form_and_a_header_pair_at_once_are_ambiguous_and_denied() {
    let deployment = Deployment::new();
    let served = verifier(&deployment, "").await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    // The path names globex (403 on its own); the headers name a route alice may use. Neither
    // source may win over the other (THREATS #57).
    let response = reqwest::Client::new()
        .get(served.url("/v1/verify/api/globex/runs/3"))
        .bearer_auth(&token)
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/api/acme/runs/1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&response),
        r#"Bearer error="insufficient_scope", error_description="no_route""#
    );
}

/// A request: method, path, headers and body.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);

/// The server loop answers forward-auth itself, without the router (`http::App`); the router
/// still routes the same paths to the same handler. Every answer must be the same either way:
/// status, every header but `Date`, and body, for allowed, refused and unrouted requests, in
/// route mode from a trusted and from an untrusted peer, and in query mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_loop_answers_forward_auth_exactly_as_the_router_does() {
    let deployment = Deployment::new();
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let bearer = format!("Bearer {token}");
    let forwarded = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/acme/runs/7"),
    ];
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/v1/verify", forwarded.to_vec(), ""),
        ("HEAD", "/v1/verify", forwarded.to_vec(), ""),
        ("GET", "/v1/verify/api/acme/runs/3", vec![], ""),
        ("HEAD", "/v1/verify/api/acme/runs/3", vec![], ""),
        ("GET", "/v1/verify/api/globex/runs/3", vec![], ""),
        ("POST", "/v1/verify/api/acme/runs", vec![], "{\"a\": 1}"),
        // An encoded slash: a path no route may judge (reqwest sends it as it is).
        ("GET", "/v1/verify/api/acme/runs/a%2Fb", vec![], ""),
        (
            "GET",
            "/v1/verify?tenant=acme&permission=runs:read",
            vec![],
            "",
        ),
        (
            "HEAD",
            "/v1/verify?tenant=acme&permission=runs:read",
            vec![],
            "",
        ),
        (
            "GET",
            "/v1/verify?tenant=acme&permission=runs:write",
            vec![],
            "",
        ),
        ("GET", "/v1/verify?tenant=acme&color=red", vec![], ""),
        ("GET", "/v1/verify/", vec![], ""),
        ("GET", "/v1/verify//", vec![], ""),
        ("GET", "/v1/verifyx", vec![], ""),
        (
            "GET",
            "/v1/verify/x",
            vec![("authorization", "Bearer a.b.c")],
            "",
        ),
        (
            "GET",
            "/v1/verify",
            vec![("authorization", "Basic YTpi")],
            "",
        ),
    ];
    let verifiers = [
        ("route mode", verifier(&deployment, "").await),
        (
            "route mode, untrusted peer",
            verifier(
                &deployment,
                "[verifier]\ntrusted_proxies = [\"192.0.2.0/24\"]",
            )
            .await,
        ),
        (
            "query mode",
            Served::start(deployment.config(""), Role::Verifier).await,
        ),
    ];
    for (mode, served) in &verifiers {
        let app_router = edgetoken::http::router(std::sync::Arc::clone(&served.services));
        for case in &cases {
            let explicit = case.2.iter().any(|(name, _)| *name == "authorization");
            for authorization in [Some(bearer.as_str()), None] {
                let authorization = authorization.filter(|_| !explicit);
                let label = format!("{mode}: {case:?}, token: {}", authorization.is_some());
                assert_same_answer(served, &app_router, case, authorization, &label).await;
            }
        }
    }
}

/// Sends `case` (with `authorization`, if any) to `served` over a socket and to `app_router`
/// directly from a trusted loopback peer, and asserts the two answers are the same.
async fn assert_same_answer(
    served: &Served,
    app_router: &axum::Router,
    (method, path, headers, body): &Case<'_>,
    authorization: Option<&str>,
    label: &str,
) {
    use tower::ServiceExt as _;

    let mut over_socket = reqwest::Client::new().request(method.parse().unwrap(), served.url(path));
    let mut direct = axum::http::Request::builder().method(*method).uri(*path);
    if let Some(authorization) = authorization {
        over_socket = over_socket.header("authorization", authorization);
        direct = direct.header("authorization", authorization);
    }
    for (name, value) in headers {
        over_socket = over_socket.header(*name, *value);
        direct = direct.header(*name, *value);
    }
    let mut direct = direct
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    direct
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            4000,
        ))));
    let served_answer = over_socket.body(body.to_string()).send().await.unwrap();
    let routed = app_router.clone().oneshot(direct).await.unwrap();
    assert_eq!(
        served_answer.status().as_u16(),
        routed.status().as_u16(),
        "{label}"
    );
    let served_names = header_names(served_answer.headers());
    // hyper sets `Content-Length` from an answer's body when the router's response carries
    // none; every other header must come from the answer itself.
    let mut routed_names = header_names(routed.headers());
    if !routed_names.iter().any(|name| name == "content-length") {
        routed_names.push("content-length".to_owned());
        routed_names.sort();
    }
    assert_eq!(served_names, routed_names, "{label}");
    for name in served_names.iter().filter(|name| *name != "content-length") {
        assert_eq!(
            served_answer
                .headers()
                .get(name)
                .map(|v| v.as_bytes().to_vec()),
            routed.headers().get(name).map(|v| v.as_bytes().to_vec()),
            "{label}: {name}"
        );
    }
    let routed_body = axum::body::to_bytes(routed.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(served_answer.bytes().await.unwrap(), routed_body, "{label}");
}

/// The header names of an answer but `Date`, sorted.
fn header_names(map: &axum::http::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = map
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name != "date")
        .collect();
    names.sort();
    names
}

/// The fast path is taken: served with a router that has no routes at all, forward-auth is
/// still answered (by the server loop), and every other path gets the router's 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_is_answered_by_the_server_loop_itself() {
    let deployment = Deployment::new();
    let started = Served::start(deployment.config(""), Role::Verifier).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = edgetoken::http::App::new(
        axum::Router::new(),
        Some(std::sync::Arc::clone(&started.services)),
    );
    let limits = edgetoken::http::ServerLimits::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(edgetoken::http::serve(listener, app, limits, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let allowed = client
        .get(format!("{base}/v1/verify?tenant=acme&permission=runs:read"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()["x-auth-subject"], "alice");
    let refused = client
        .get(format!("{base}/v1/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(!challenge(&refused).is_empty());
    let elsewhere = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
