//! The verifier on a Unix socket (`server.listen = "unix:PATH"`), for a proxy on the same
//! host: a real `edgetoken serve` process behind a real nginx running `deploy/nginx/edge.conf`
//! with `server unix:PATH;` as its verifier, and the socket file's life: its mode, a stale one
//! left by a killed process replaced, a live one never taken over, removal on a clean stop.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use edgetoken::config::Role;
use reqwest::StatusCode;

use super::WAIT;
use crate::support::deployment::{
    Deployment, ROUTES, mint, mint_via_api, once_used_via_api, revoke_via_api,
};
use crate::support::nginx::Nginx;
use crate::support::process::{EdgetokenProcess, Served, edgetoken, unix_get, write_config};

/// The issuer (in process), a verifier process on a Unix socket in `dir` with the route
/// policy and `extra` config, and nginx in front of it.
struct Edge {
    deployment: Deployment,
    issuer: Served,
    verifier: EdgetokenProcess,
    nginx: Nginx,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

async fn edge(extra: &str) -> Edge {
    let deployment = Deployment::new();
    let issuer = Served::start(deployment.config(""), Role::Issuer).await;
    let dir = tempfile::tempdir().expect("socket dir");
    let socket = dir.path().join("verifier.sock");
    // Uses are flushed every second, for "last used".
    let config = deployment.config_text(&format!("{ROUTES}\n{extra}\n[usage]\nflush_secs = 1\n"));
    let verifier = EdgetokenProcess::start_on_unix_socket(&config, "verifier", &socket).await;
    let nginx = Nginx::start_edge_to_unix_socket(&socket);
    Edge {
        deployment,
        issuer,
        verifier,
        nginx,
        _dir: dir,
        client: reqwest::Client::new(),
    }
}

impl Edge {
    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let mut request = self.client.get(self.nginx.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request through nginx");
        let status = response.status();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, challenge, response.text().await.unwrap())
    }
}

/// The challenge of a 403 for `reason` (nginx relays the challenge, not the JSON body).
fn refused(reason: &str) -> String {
    format!(r#"Bearer error="insufficient_scope", error_description="{reason}""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_checks_every_request_with_a_verifier_on_a_unix_socket() {
    let edge = edge("").await;
    let issuer = edge.issuer.url("");
    let (id, token) = mint_via_api(&issuer, &["runs:read"]).await;

    // Passes, with the verifier's X-Auth-* only, routed by the method and path nginx forwarded
    // (trusted: the default `trusted_proxies` holds `unix`).
    let forged = [("X-Auth-Subject", "mallory"), ("X-Real-IP", "203.0.113.66")];
    let (status, _, body) = edge.get("/api/acme/runs/42", Some(&token), &forged).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", edge.nginx.error_log());
    assert!(
        body.contains("subject=alice\n") && body.contains("tenant=acme\n"),
        "{body}"
    );
    assert!(!body.contains("mallory"), "{body}");

    let (status, challenge, _) = edge.get("/api/acme/runs/42", None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge, r#"Bearer realm="edgetoken""#);
    for (path, reason) in [
        ("/api/globex/runs/42", "wrong_tenant"),
        ("/api/acme/members/1", "insufficient_scope"),
    ] {
        let (status, challenge, _) = edge.get(path, Some(&token), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(challenge, refused(reason), "{path}");
    }

    // "Last used from": the client's address as nginx saw it (X-Real-IP from the trusted
    // socket peer), not the one the client claimed.
    let used = once_used_via_api(&edge.client, &issuer, &id, WAIT).await;
    assert_eq!(used["last_used_from"], "127.0.0.1", "{used}");

    // A revoke answers once the verifier refuses the token: its very next request fails.
    revoke_via_api(&issuer, &id).await;
    let (status, challenge, _) = edge.get("/api/acme/runs/42", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge,
        r#"Bearer error="invalid_token", error_description="revoked""#
    );

    // The verifier stopped: refused, never passed.
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    let mut edge = edge;
    edge.verifier.kill();
    let (status, _, _) = edge.get("/api/acme/runs/42", Some(&token), &[]).await;
    assert!(status.is_server_error(), "{status} with the verifier gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_peer_is_not_trusted_without_the_unix_entry() {
    // Only loopback TCP peers are trusted: nginx's route headers over the socket are ignored,
    // so the request matches no route and `unmatched = "deny"` refuses it.
    let edge = edge("[verifier]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let token = mint(
        &edge.deployment.offline_issuer(),
        "alice",
        "acme",
        "runs:read",
    );
    let (status, challenge, _) = edge.get("/api/acme/runs/42", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(challenge, refused("no_route"));
}

/// `edgetoken serve --role verifier` on `socket`, run to its exit: its status and stderr.
fn serve_until_exit(config: &str, socket: &Path) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("config dir");
    let file = write_config(dir.path(), config, &format!("unix:{}", socket.display()));
    let output = edgetoken(dir.path())
        .args(["serve", "--role", "verifier", "--config"])
        .arg(&file)
        .output()
        .expect("run edgetoken");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_is_replaced_when_stale_kept_when_live_and_removed_on_stop() {
    let deployment = Deployment::new();
    let config = deployment.config_text("");
    let dir = tempfile::tempdir().expect("socket dir");
    let socket = dir.path().join("verifier.sock");

    let mut first = EdgetokenProcess::start_on_unix_socket(&config, "verifier", &socket).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the default mode: owner and group");
    first.kill();
    assert!(socket.exists(), "SIGKILL leaves the socket file behind");

    // A new process replaces the stale file.
    let mut second = EdgetokenProcess::start_on_unix_socket(&config, "verifier", &socket).await;

    // A third refuses to take over the live socket, and leaves it working.
    let (status, stderr) = serve_until_exit(&config, &socket);
    assert!(
        !status.success(),
        "a second server on a live socket must fail"
    );
    assert!(stderr.contains("another process is listening"), "{stderr}");
    let answer = unix_get(&socket, "/readyz").expect("the live verifier still answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Nor is a file that is not a socket replaced.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    let (status, stderr) = serve_until_exit(&config, &file);
    assert!(
        !status.success() && stderr.contains("is not a socket"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

    second.stop();
    assert!(!socket.exists(), "a clean stop removes the socket file");
}
