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
    // A token pasted as the Basic user id (`curl -u "$TOKEN:"`, a habit from other PAT
    // services), and a password typed into the user field (THREATS #55).
    for (user, password) in [(tokens[0].1.as_str(), ""), (wrong_password, "")] {
        let failed = client
            .get(url("/v1/tenants/acme/tokens"))
            .basic_auth(user, Some(password))
            .send()
            .unwrap();
        assert_eq!(failed.status(), 401);
    }
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
    assert!(
        logs.contains("user_digest"),
        "failed sign-ins with ids of nobody are logged, by length and digest:\n{logs}"
    );
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

/// A configured service (directory of alice and bob) run as the binary, with `extra` TOML
/// appended and the shell command `prefix` (such as a `ulimit`) run before it.
fn configured_server(dir: &std::path::Path, extra: &str, prefix: &str) -> ServeProcess {
    std::fs::write(dir.join("users.toml"), directory_text()).unwrap();
    edgetoken::keys::KeyDir::new(dir.join("keys"))
        .generate(true)
        .unwrap();
    std::fs::write(
        dir.join("edgetoken.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra}[issuer]\ndirectory = \"users.toml\"\n"
        ),
    )
    .unwrap();
    let mut command = edgetoken(dir);
    if prefix.is_empty() {
        command.arg("serve");
        return ServeProcess::start(command, dir);
    }
    let binary = command.get_program().to_owned();
    let mut shell = std::process::Command::new("sh");
    shell
        .current_dir(dir)
        .args(["-c", &format!("{prefix} && exec \"$0\" serve")])
        .arg(binary)
        .env_remove("RUST_LOG");
    ServeProcess::start(shell, dir)
}

#[test]
fn sign_in_floods_leave_memory_and_logs_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = configured_server(dir.path(), "", "");
    let url = format!("{}/v1/tenants/acme/tokens", server.base);
    let before = server.rss_kib();
    // 1,200 sign-ins with a 250 KB random-looking user id each (THREATS #54), then 400 wrong
    // passwords for distinct well-formed ids, each costing a full argon2 check.
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let url = url.clone();
            scope.spawn(move || {
                let client = reqwest::blocking::Client::new();
                for i in 0..300 {
                    let id = format!("{worker}-{i}-{}", "q".repeat(250_000));
                    let status = client
                        .get(&url)
                        .basic_auth(id, Some("x"))
                        .send()
                        .unwrap()
                        .status();
                    assert_eq!(status, 401);
                }
                for i in 0..100 {
                    let status = client
                        .get(&url)
                        .basic_auth(format!("guess-{worker}-{i}"), Some("wrong"))
                        .send()
                        .unwrap()
                        .status();
                    assert!(status == 401 || status == 429, "{status}");
                }
            });
        }
    });
    let after = server.rss_kib();
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as u64;
    // One argon2 block (19 MiB) per core, plus room for the allocator and thread stacks.
    let bound_kib = cores * 19 * 1024 + 48 * 1024;
    assert!(
        after.saturating_sub(before) < bound_kib,
        "RSS grew from {before} KiB to {after} KiB (bound: {bound_kib} KiB of growth)"
    );
    server.stop();
    let log_bytes = std::fs::metadata(&server.stderr).unwrap().len();
    assert!(
        log_bytes < 1024 * 1024,
        "1,600 failed sign-ins wrote {log_bytes} bytes of log: oversized ids must not be logged"
    );
}

#[test]
fn idle_connections_cannot_exhaust_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = configured_server(dir.path(), "", "ulimit -n 256");
    let address = server.base.trim_start_matches("http://").to_owned();
    // More idle sockets than the process has descriptors (THREATS #56).
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..3 {
        let status = client
            .get(format!("{}/healthz", server.base))
            .send()
            .expect("/healthz answers while 300 idle sockets are open")
            .status();
        assert_eq!(status, 200);
    }
    drop(idle);
    server.stop();
}

/// Whether the server closes `stream` (EOF) within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read as _;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn half_sent_and_idle_connections_are_closed_on_time() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut server = configured_server(
        dir.path(),
        "header_read_timeout_secs = 1\nidle_timeout_secs = 2\n",
        "",
    );
    let address = server.base.trim_start_matches("http://").to_owned();
    let window = std::time::Duration::from_secs(8);

    let mut silent = std::net::TcpStream::connect(&address).unwrap();
    assert!(
        closed_within(&mut silent, window),
        "a silent connection is closed"
    );

    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    assert!(
        closed_within(&mut slow, window),
        "a half-sent head is closed"
    );

    let mut kept = std::net::TcpStream::connect(&address).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        closed_within(&mut kept, window),
        "an idle keep-alive connection is closed"
    );
    server.stop();
}

/// Asserts the request threads and runtime a server started with `EDGETOKEN_LOG_FORMAT=json`
/// logged.
fn assert_request_threads(server: &ServeProcess, threads: u64, runtime: &str) {
    let event = std::fs::read_to_string(&server.stderr)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["fields"]["message"] == "request threads")
        .unwrap_or_else(|| panic!("no `request threads` event:\n{}", server.output()));
    assert_eq!(event["fields"]["threads"], threads, "{event}");
    assert_eq!(event["fields"]["runtime"], runtime, "{event}");
}

#[test]
fn one_request_thread_serves_everything_on_the_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = configured_server(
        dir.path(),
        "worker_threads = 1\n",
        "export EDGETOKEN_LOG_FORMAT=json",
    );
    assert_request_threads(&server, 1, "current-thread");

    // Sign-in (argon2, on the blocking pool), a mint, checks and a revoke, all on one thread.
    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let minted: serde_json::Value = client
        .post(url("/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .json(&json!({"name": "one thread", "permissions": ["runs:read"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = minted["token"].as_str().expect("a token");
    let check = |permission: &str| {
        client
            .get(url(&format!(
                "/v1/verify?tenant=acme&permission={permission}"
            )))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(check("runs:read"), 200);
    assert_eq!(check("runs:write"), 403);
    let revoked = client
        .post(url("/v1/revoke"))
        .form(&[("token", token)])
        .send()
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    assert_eq!(check("runs:read"), 401);
    server.stop();
}

#[test]
fn automatic_request_threads_honour_tokio_worker_threads_and_refuse_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = configured_server(
        dir.path(),
        "",
        "export EDGETOKEN_LOG_FORMAT=json TOKIO_WORKER_THREADS=3",
    );
    assert_request_threads(&server, 3, "multi-thread");
    server.stop();

    // tokio itself would panic on this; edgetoken refuses to start and says why.
    let output = edgetoken(dir.path())
        .arg("serve")
        .env("TOKIO_WORKER_THREADS", "all")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TOKIO_WORKER_THREADS=\"all\"") && stderr.contains("above 0"),
        "{stderr}"
    );
    // An explicit setting wins over the variable.
    std::fs::write(
        dir.path().join("edgetoken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nworker_threads = 2\n[issuer]\ndirectory = \"users.toml\"\n",
    )
    .unwrap();
    let mut command = edgetoken(dir.path());
    command
        .arg("serve")
        .env("TOKIO_WORKER_THREADS", "all")
        .env("EDGETOKEN_LOG_FORMAT", "json");
    let mut server = ServeProcess::start(command, dir.path());
    assert_request_threads(&server, 2, "multi-thread");
    server.stop();
}
