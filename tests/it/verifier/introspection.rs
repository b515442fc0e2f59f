//! `POST /v1/introspect` (RFC 7662): only configured clients may ask, an active token is
//! described, and anything else is exactly `{"active": false}`.

use edgetoken::config::Role;
use reqwest::StatusCode;

use crate::support::deployment::{Deployment, mint};
use crate::support::process::Served;

const SECRET: &str = "introspection-secret-0123456789-abcdef";

async fn introspect(
    served: &Served,
    credentials: Option<(&str, &str)>,
    token: &str,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(served.url("/v1/introspect"))
        .form(&[("token", token)]);
    if let Some((id, secret)) = credentials {
        request = request.basic_auth(id, Some(secret));
    }
    request.send().await.unwrap()
}

async fn verifier(deployment: &Deployment) -> Served {
    let extra =
        format!("[[verifier.introspection_clients]]\nid = \"gateway\"\nsecret = \"{SECRET}\"\n");
    Served::start(deployment.config(&extra), Role::Verifier).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_describes_an_active_token_to_an_authenticated_client() {
    let deployment = Deployment::new();
    let served = verifier(&deployment).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let response = introspect(&served, Some(("gateway", SECRET)), &token).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["scope"], "runs:read");
    assert_eq!(body["token_type"], "access_token");
    assert_eq!(body["iss"], crate::support::deployment::ISSUER);
    assert_eq!(body["aud"], crate::support::deployment::AUDIENCE);
    for claim in ["exp", "iat", "jti"] {
        assert!(!body[claim].is_null(), "{claim} missing: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_of_anything_but_an_active_token_says_only_inactive() {
    let deployment = Deployment::new();
    let served = verifier(&deployment).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let tampered = format!("{token}x");
    for token in ["", "garbage", "a.b.c", tampered.as_str()] {
        let response = introspect(&served, Some(("gateway", SECRET)), token).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"active":false}"#,
            "{token}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_refuses_unknown_clients_and_wrong_secrets() {
    let deployment = Deployment::new();
    let served = verifier(&deployment).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    for credentials in [
        None,
        Some(("gateway", "not-the-secret-not-the-secret-not-the")),
        Some(("other", SECRET)),
    ] {
        let response = introspect(&served, credentials, &token).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{credentials:?}"
        );
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body.get("active").is_none(), "{body}");
    }
    // A bearer token is no client credential.
    let response = reqwest::Client::new()
        .post(served.url("/v1/introspect"))
        .bearer_auth(&token)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_is_off_without_configured_clients() {
    let deployment = Deployment::new();
    let served = Served::start(deployment.config(""), Role::Verifier).await;
    let response = introspect(&served, Some(("gateway", SECRET)), "x").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_bodies_over_the_server_limit_are_refused() {
    let deployment = Deployment::new();
    let served = verifier(&deployment).await;
    // The default `server.max_body_bytes` is 16 KiB.
    let huge = "a".repeat(20 * 1024);
    let response = introspect(&served, Some(("gateway", SECRET)), &huge).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "body_too_large", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_basic_headers_are_refused_whichever_comes_first() {
    use base64::Engine as _;
    let deployment = Deployment::new();
    let served = verifier(&deployment).await;
    let token = mint(&deployment.offline_issuer(), "alice", "acme", "runs:read");
    let basic = |text: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    };
    let (good, bad) = (basic(&format!("gateway:{SECRET}")), basic("gateway:wrong"));
    for (first, second) in [(&good, &bad), (&bad, &good)] {
        let response = reqwest::Client::new()
            .post(served.url("/v1/introspect"))
            .header("authorization", first)
            .header("authorization", second)
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_introspection_keeps_the_connection_usable() {
    use tokio::io::AsyncWriteExt as _;
    let deployment = Deployment::new();
    let served = verifier(&deployment).await;
    let mut stream = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    // A client whose body follows its head a moment later (a large form, a slow link): the
    // refusal must not be sent before the body is read and then leave the connection dead.
    let body = format!("token={}", "a".repeat(4000));
    let head = format!(
        "POST /v1/introspect HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z2F0ZXdheTp3cm9uZw==\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Two requests on one keep-alive connection: the 401 must not silently end it.
    let mut answers = String::new();
    for _ in 0..2 {
        stream.write_all(head.as_bytes()).await.unwrap();
        // Simulates the client's pace, not a synchronisation: the answer is awaited below.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stream.write_all(body.as_bytes()).await.unwrap();
        let answer =
            tokio::time::timeout(std::time::Duration::from_secs(5), read_answer(&mut stream))
                .await
                .expect("an answer within 5 s");
        let closes = answer.to_ascii_lowercase().contains("connection: close");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            !closes,
            "the connection stays open without announcing otherwise"
        );
        answers.push_str(&answer);
    }
    assert_eq!(answers.matches("HTTP/1.1 401").count(), 2);
}

/// One HTTP/1.1 answer with a `Content-Length` body, read whole.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "connection closed mid-answer: {text}");
        bytes.extend_from_slice(&buffer[..read]);
    }
}
