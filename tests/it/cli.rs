//! The command line as a user runs it: bad input anywhere gives a clear message and a non-zero
//! exit (1 for a rejected token, 2 for everything else), never a panic.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use crate::support::process::{edgetoken, first_word, run_cli as run};

/// Asserts exit status `code` and that stderr mentions `needle`, without a panic.
fn assert_fails(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn keygen(dir: &Path) -> String {
    first_word(&run(dir, &["keygen"], ""))
}

#[test]
fn keygen_then_list_shows_the_active_key() {
    let dir = tempfile::tempdir().unwrap();
    let kid = keygen(dir.path());
    let output = run(dir.path(), &["keys", "list", "--json"], "");
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list[0]["kid"], kid.as_str());
    assert_eq!(list[0]["active"], true);
    let mode = std::fs::metadata(dir.path().join(format!("keys/{kid}.key.pem")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn mint_refuses_bad_arguments_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let mint = |extra: &[&str]| {
        let mut args = vec![
            "mint",
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "-p",
            "runs:read",
        ];
        args.extend_from_slice(extra);
        run(dir.path(), &args, "")
    };
    assert_fails(&mint(&["--duration", "13h"]), 2, "--duration");
    assert_fails(&mint(&["-p", "runs:admin"]), 2, "--permission");
    assert_fails(&mint(&["-p", "billing:read"]), 2, "unknown permission");
    let output = run(
        dir.path(),
        &[
            "mint",
            "--tenant",
            "Acme Corp",
            "--subject",
            "alice",
            "-p",
            "runs:read",
        ],
        "",
    );
    assert_fails(&output, 2, "--tenant");
}

#[test]
fn verify_names_the_rejection_reason_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    assert_fails(
        &run(dir.path(), &["verify"], "not.a.token\n"),
        1,
        "malformed",
    );
    assert_fails(
        &run(dir.path(), &["verify"], &"x".repeat(20_000)),
        1,
        "malformed",
    );
}

#[test]
fn a_group_readable_private_key_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let kid = keygen(dir.path());
    let pem = dir.path().join(format!("keys/{kid}.key.pem"));
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(
        dir.path(),
        &[
            "mint",
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "-p",
            "runs:read",
        ],
        "",
    );
    assert_fails(&output, 2, "chmod 600");
}

#[test]
fn a_corrupt_private_key_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let kid = keygen(dir.path());
    let pem = dir.path().join(format!("keys/{kid}.key.pem"));
    std::fs::write(
        &pem,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = run(dir.path(), &["keys", "jwks"], "");
    assert_fails(&output, 2, &format!("{kid}.key.pem"));
}

#[test]
fn a_bad_config_file_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("edgetoken.toml"),
        "[token]\nleeway_secs = 600\n",
    )
    .unwrap();
    assert_fails(
        &run(dir.path(), &["keys", "list"], ""),
        2,
        "token.leeway_secs",
    );
    std::fs::write(dir.path().join("edgetoken.toml"), "[token\n").unwrap();
    assert_fails(&run(dir.path(), &["keys", "list"], ""), 2, "edgetoken.toml");
    std::fs::write(dir.path().join("edgetoken.toml"), "[tokens]\n").unwrap();
    assert_fails(&run(dir.path(), &["keys", "list"], ""), 2, "tokens");
}

#[test]
fn serve_with_a_config_but_no_key_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("edgetoken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    assert_fails(&run(dir.path(), &["serve"], ""), 2, "edgetoken keygen");
}

#[test]
fn hash_password_refuses_empty_input() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(
        &run(dir.path(), &["hash-password"], "\n"),
        2,
        "empty password",
    );
    let output = run(dir.path(), &["hash-password"], "s3cret\n");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("$argon2id$"));
}

#[test]
fn revoking_from_the_command_line_needs_a_shared_store() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["revoke", "--tenant", "acme", "--all"], "");
    assert_fails(&output, 2, "revocation.redis_url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_from_the_command_line_reaches_every_mirror() {
    use edgetoken::clock::SystemClock;
    use edgetoken::revocation::{
        RedisFeed, RevocationCheck as _, RevocationSettings, RevocationStatus,
    };

    use crate::support::ids::{self, Facts};

    let redis = crate::support::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let output = edgetoken(dir.path())
        .args(["revoke", "--tenant", "acme", "--user", "alice"])
        .env("EDGETOKEN_REVOCATION__REDIS_URL", redis.url())
        .env("EDGETOKEN_REVOCATION__KEY_PREFIX", "cli-test")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("revoked every token of alice in acme")
    );

    let settings = RevocationSettings {
        redis_url: Some(redis.url()),
        key_prefix: "cli-test".into(),
        ..RevocationSettings::default()
    };
    let feed = RedisFeed::start(&settings, std::sync::Arc::new(SystemClock))
        .await
        .unwrap();
    let mut health = feed.mirror().health();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        health.wait_for(|h| h.ready && h.fresh),
    )
    .await
    .expect("mirror ready in 10 s")
    .unwrap();
    let now = edgetoken::clock::Clock::unix_now(&SystemClock);
    let facts = |subject: &str| Facts {
        subject: ids::subject(subject),
        ..Facts::of("AAAAAAAAAAAAAAAAAAAAAA", now - 60, now + 3600)
    };
    assert_eq!(
        feed.mirror().status(&facts("alice").get()),
        RevocationStatus::Revoked
    );
    assert_eq!(
        feed.mirror().status(&facts("bob").get()),
        RevocationStatus::NotRevoked
    );
    feed.shutdown().await;
}

#[test]
fn a_split_role_without_redis_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    std::fs::write(
        dir.path().join("edgetoken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    for role in ["issuer", "verifier"] {
        let output = run(dir.path(), &["serve", "--role", role], "");
        assert_fails(&output, 2, "needs revocation.redis_url");
    }
}

#[test]
fn a_configured_issuer_without_a_directory_gets_no_demo_user() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    std::fs::write(
        dir.path().join("edgetoken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &["serve"], "");
    assert_fails(&output, 2, "issuer.directory");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_from_the_command_line_says_whether_every_verifier_confirmed() {
    use edgetoken::clock::SystemClock;
    use edgetoken::revocation::{RedisFeed, RevocationSettings};

    let redis = crate::support::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = RevocationSettings {
        redis_url: Some(redis.url()),
        key_prefix: "cli-barrier".into(),
        ..RevocationSettings::default()
    };
    let feed = RedisFeed::start(&settings, std::sync::Arc::new(SystemClock))
        .await
        .unwrap();
    let mut health = feed.mirror().health();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        health.wait_for(|h| h.ready),
    )
    .await
    .expect("mirror ready in 10 s")
    .unwrap();
    let revoke = || {
        let output = edgetoken(dir.path())
            .args(["revoke", "--tenant", "acme", "--all"])
            .env("EDGETOKEN_REVOCATION__REDIS_URL", redis.url())
            .env("EDGETOKEN_REVOCATION__KEY_PREFIX", "cli-barrier")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let stdout = revoke();
    assert!(
        stdout.contains("confirmed by every verifier (1 registered)"),
        "{stdout}"
    );

    // A verifier that registered and went silent (frozen, or cut off from Redis): its
    // registration lives on until its deadline, here far ahead.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("ZADD")
        .arg("{cli-barrier}:live")
        .arg(4_000_000_000_000_000_i64)
        .arg("silent")
        .exec(&mut conn)
        .unwrap();
    let stdout = revoke();
    assert!(
        stdout.contains("NOT confirmed by 1 verifier(s)"),
        "{stdout}"
    );
    feed.shutdown().await;
}

/// Key ids are base64url, so one in 64 begins with `-`; `keys activate` and `keys revoke` take
/// such an id as the id, not as an unknown option.
#[test]
fn key_ids_beginning_with_a_hyphen_are_ids_not_options() {
    let dir = tempfile::tempdir().unwrap();
    let first = keygen(dir.path());
    let hyphenated = (0..1000)
        .map(|_| first_word(&run(dir.path(), &["keys", "rotate"], "")))
        .find(|kid| kid.starts_with('-'))
        .expect("one in 64 key ids begins with '-'");
    let activated = run(dir.path(), &["keys", "activate", &first], "");
    assert!(activated.status.success(), "{activated:?}");
    let activated = run(dir.path(), &["keys", "activate", &hyphenated], "");
    assert!(activated.status.success(), "{activated:?}");
    let list = run(dir.path(), &["keys", "list", "--json"], "");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let active: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["active"] == true)
        .filter_map(|key| key["kid"].as_str())
        .collect();
    assert_eq!(active, [hyphenated.as_str()]);
    // Refused for what it is (the active key), not as an unknown option.
    let revoked = run(dir.path(), &["keys", "revoke", &hyphenated], "");
    assert_fails(&revoked, 2, "is the active signing key");
}
