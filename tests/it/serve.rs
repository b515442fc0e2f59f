//! The `edgetoken serve` binary as an operator runs it: the README's start command on embedded
//! defaults, and what its logs may (not) contain.

use base64::Engine as _;
use serde_json::json;

use crate::support::issuer::{ALICE_PASSWORD, directory_text};
use crate::support::process::{ServeProcess, edgetoken};

#[test]
fn serve_with_no_configuration_mints_as_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = edgetoken(dir.path());
    // Only the port differs from the README's command, so tests can run in parallel.
    command
        .args(["serve"])
        .env("EDGETOKEN_SERVER__LISTEN", "127.0.0.1:0");
    let mut server = ServeProcess::start(command, dir.path());
    let banner = std::fs::read_to_string(&server.stdout).unwrap();
    assert!(
        banner.contains("IN-PROCESS"),
        "the banner says the store is in-process:\n{banner}"
    );
    assert!(banner.contains("nothing survives a restart"), "{banner}");
    assert!(
        banner.contains("created a development signing key"),
        "{banner}"
    );
    let password = banner
        .split("password `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("the banner shows the demo password once");
    assert!(
        std::fs::read_dir(dir.path().join("keys")).unwrap().count() >= 3,
        "a development key pair and ACTIVE were written to keys/"
    );

    // curl -u demo:PASSWORD -H 'Content-Type: application/json' \
    //   -d '{"name":"my script","duration":"4h","permissions":["read-all"]}' \
    //   http://127.0.0.1:8080/v1/tenants/demo/tokens
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v1/tenants/demo/tokens", server.base))
        .basic_auth("demo", Some(password))
        .header("content-type", "application/json")
        .body(r#"{"name":"my script","duration":"4h","permissions":["read-all"]}"#)
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().unwrap();
    assert!(body["token"].as_str().unwrap().starts_with("eyJ"));
    server.stop();
}

#[test]
fn raw_tokens_and_passwords_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), directory_text()).unwrap();
    edgetoken::keys::KeyDir::new(dir.path().join("keys"))
        .generate(true)
        .unwrap();
    std::fs::write(
        dir.path().join("edgetoken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[issuer]\ndirectory = \"users.toml\"\n",
    )
    .unwrap();
    let mut command = edgetoken(dir.path());
    command.args(["serve"]).env("RUST_LOG", "trace");
    let mut server = ServeProcess::start(command, dir.path());
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let wrong_password = "hunter2-is-not-alice";

    // A failed sign-in, two mints, a listing, a revoke by id and one by presentation.
    let failed = client
        .get(url("/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(wrong_password))
        .send()
        .unwrap();
    assert_eq!(failed.status(), 401);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let minted: serde_json::Value = client
            .post(url("/v1/tenants/acme/tokens"))
            .basic_auth("alice", Some(ALICE_PASSWORD))
            .json(&json!({"name": "logged?", "permissions": ["runs:read"]}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        tokens.push((
            minted["id"].as_str().unwrap().to_owned(),
            minted["token"].as_str().unwrap().to_owned(),
        ));
    }
    let listing = client
        .get(url("/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(listing.status(), 200);
    let revoked = client
        .delete(url(&format!("/v1/tenants/acme/tokens/{}", tokens[0].0)))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let presented = client
        .post(url("/v1/revoke"))
        .form(&[("token", tokens[1].1.as_str())])
        .send()
        .unwrap();
    assert_eq!(presented.status(), 200);
    // A token offered as a minting credential.
    let refused = client
        .post(url("/v1/tenants/acme/tokens"))
        .bearer_auth(&tokens[1].1)
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    server.stop();

    let logs = server.output();
    assert!(
        logs.contains("\"mint\"") || logs.contains("event=\"mint\"") || logs.contains("event=mint"),
        "audit events are logged (so the search below means something):\n{logs}"
    );
    assert!(logs.contains(&tokens[0].0), "token ids (jti) are logged");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE_PASSWORD}"));
    for (_, token) in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(token.as_str()), "a raw token was logged");
        assert!(!logs.contains(signature), "a token signature was logged");
    }
    for secret in [ALICE_PASSWORD, wrong_password, basic.as_str()] {
        assert!(
            !logs.contains(secret),
            "a password or credential was logged"
        );
    }
}
