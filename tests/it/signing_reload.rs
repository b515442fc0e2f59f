//! The issuer picks up a new signing key without a restart (issue 13): `edgetoken keys rotate`
//! (or `keys activate`, or writing `keys/ACTIVE`) while `edgetoken serve` runs, and the next
//! key reload (`keys.reload_secs`) switches the signing key; tokens of the old key keep
//! verifying, and an `ACTIVE` that fails to load keeps the last good signing key.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::eventually::eventually;
use crate::support::issuer::{ALICE_PASSWORD, directory_text, jwks_kids};
use crate::support::process::{EdgetokenProcess, edgetoken, first_word};
use crate::support::tokens::{parts, unb64};

/// Long enough for a few reloads at `reload_secs = 1` on a busy machine.
const SWITCH: Duration = Duration::from_secs(15);

fn kid_of(token: &str) -> String {
    let header: Value = serde_json::from_slice(&unb64(parts(token)[0])).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

async fn mint(issuer: &EdgetokenProcess) -> String {
    let response = reqwest::Client::new()
        .post(issuer.url("/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .json(&json!({"permissions": ["runs:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn verify(issuer: &EdgetokenProcess, token: &str) -> u16 {
    reqwest::Client::new()
        .get(issuer.url("/v1/verify?tenant=acme"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Mints until a token carries `kid`; returns it.
async fn await_signing_with(issuer: &EdgetokenProcess, kid: &str) -> String {
    eventually(format!("the issuer to sign with {kid}"), SWITCH)
        .every(Duration::from_millis(200))
        .until(async || {
            let token = mint(issuer).await;
            (kid_of(&token) == kid).then_some(token)
        })
        .await
}

/// Runs `edgetoken keys ARGS --dir DIR`; returns the kid it printed first.
fn keys_command(cwd: &Path, dir: &Path, args: &[&str]) -> String {
    let output = edgetoken(cwd)
        .arg("keys")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    first_word(&output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_without_a_restart_and_old_tokens_keep_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let first = edgetoken::keys::KeyDir::new(&keys).generate(true).unwrap();
    let first = first.kid().to_string();
    let users = dir.path().join("users.toml");
    std::fs::write(&users, directory_text()).unwrap();
    let config = format!(
        "[keys]\ndir = {:?}\nreload_secs = 1\n[issuer]\ndirectory = {:?}\nmints_per_hour = 1000\n",
        keys.display().to_string(),
        users.display().to_string(),
    );
    let issuer = EdgetokenProcess::start(&config, "all").await;
    let old = mint(&issuer).await;
    assert_eq!(kid_of(&old), first);

    // Rotate while it runs: the next reload trusts the new key, then signs with it.
    let second = keys_command(dir.path(), &keys, &["rotate"]);
    assert_ne!(second, first);
    let new = await_signing_with(&issuer, &second).await;
    assert_eq!(
        verify(&issuer, &new).await,
        200,
        "the new key's token verifies"
    );
    assert_eq!(
        verify(&issuer, &old).await,
        200,
        "the old key's token still verifies"
    );
    let kids = jwks_kids(&issuer.url("/.well-known/jwks.json")).await;
    assert!(kids.contains(&first) && kids.contains(&second), "{kids:?}");

    // An ACTIVE naming a key that is not there keeps the last good signing key.
    std::fs::write(keys.join("ACTIVE"), format!("{}\n", "A".repeat(43))).unwrap();
    eventually("the failed reload to be logged", SWITCH)
        .every(Duration::from_millis(100))
        .until(async || {
            issuer
                .stderr()
                .contains("keeping the last good signing key")
                .then_some(())
        })
        .await;
    let token = mint(&issuer).await;
    assert_eq!(kid_of(&token), second);
    assert_eq!(verify(&issuer, &token).await, 200);

    // `keys activate` switches back to a key that is still trusted.
    assert_eq!(
        keys_command(dir.path(), &keys, &["activate", &first]),
        first
    );
    let back = await_signing_with(&issuer, &first).await;
    assert_eq!(verify(&issuer, &back).await, 200);
    assert_eq!(verify(&issuer, &new).await, 200);
}
