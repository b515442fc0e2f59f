//! A small edgetoken deployment for the verifier tests: a key directory, a user directory,
//! a private Redis and a unique key prefix, plus the configuration text every service of the
//! deployment shares, and helpers to mint through the issuer API or offline.

use std::sync::Arc;

use edgetoken::clock::SystemClock;
use edgetoken::keys::KeyDir;
use edgetoken::permissions::Scope;
use edgetoken::settings::Settings;
use edgetoken::token::{Issuer, Lifetime, MintRequest};
use tempfile::TempDir;

use super::redis::TestRedis;

pub(crate) const ISSUER: &str = "https://issuer.test";
pub(crate) const AUDIENCE: &str = "edge-api";
pub(crate) const ALICE_PASSWORD: &str = "alice-correct-horse";

/// The route policy the forward-auth tests use.
pub(crate) const ROUTES: &str = r#"
[[verifier.routes]]
method = "GET"
path = "/api/{tenant}/runs/*"
permission = "runs:read"

[[verifier.routes]]
method = "POST"
path = "/api/{tenant}/runs"
permission = "runs:write"

[[verifier.routes]]
method = "*"
path = "/api/{tenant}/members/*"
permission = "members:read"
"#;

/// Keys, users, Redis and a prefix shared by the services of one test.
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) dir: TempDir,
    pub(crate) redis: TestRedis,
    pub(crate) prefix: String,
}

impl Deployment {
    /// One signing key, alice (acme: `runs:read`, `members:read`) and bob (globex:
    /// `read-write-all`), a private Redis.
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgetoken-deploy-")
            .tempdir()
            .expect("temp dir");
        KeyDir::new(dir.path().join("keys"))
            .generate(true)
            .expect("generate key");
        let hash = edgetoken::directory::hash_password(ALICE_PASSWORD).expect("hash");
        std::fs::write(
            dir.path().join("users.toml"),
            format!(
                "[users.alice]\npassword_hash = \"{hash}\"\n\
                 [users.alice.tenants.acme]\npermissions = [\"runs:read\", \"members:read\"]\n\
                 [users.bob]\npassword_hash = \"{hash}\"\n\
                 [users.bob.tenants.globex]\npermissions = [\"read-write-all\"]\n"
            ),
        )
        .expect("write users");
        let unique = format!(
            "vt{}{}",
            std::process::id(),
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        )
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        Self {
            dir,
            redis: TestRedis::shared_or_own(),
            prefix: unique,
        }
    }

    /// The key directory.
    pub(crate) fn keys(&self) -> KeyDir {
        KeyDir::new(self.dir.path().join("keys"))
    }

    /// The shared configuration text; `extra` is appended (it may add `[verifier]` keys
    /// through a `[verifier]` table; a `[server]` table only for an `EdgetokenProcess`, which
    /// writes its listen address into it).
    pub(crate) fn config_text(&self, extra: &str) -> String {
        self.config_text_for(
            &self.redis.url(),
            "heartbeat_ms = 200\nmax_staleness_secs = 5\n",
            extra,
        )
    }

    /// As [`Deployment::config_text`], but following the Redis at `redis_url` (a proxy, a
    /// namespace) with `revocation` as the rest of the `[revocation]` table.
    pub(crate) fn config_text_for(&self, redis_url: &str, revocation: &str, extra: &str) -> String {
        format!(
            "[token]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
             [keys]\ndir = \"{}\"\n\
             [revocation]\nredis_url = \"{redis_url}\"\nkey_prefix = \"{}\"\n{revocation}\
             [issuer]\ndirectory = \"{}\"\nmints_per_hour = 100000\n{extra}\n",
            self.dir.path().join("keys").display(),
            self.prefix,
            self.dir.path().join("users.toml").display(),
        )
    }

    /// The parsed configuration.
    pub(crate) fn config(&self, extra: &str) -> Settings {
        Settings::from_toml(&self.config_text(extra)).expect("test config is valid")
    }

    /// An issuer signing with the directory's active key, for minting many tokens quickly.
    pub(crate) fn offline_issuer(&self) -> Issuer {
        Issuer::new(
            self.keys().load_signing().expect("signing key"),
            ISSUER,
            AUDIENCE,
            Arc::new(SystemClock),
        )
    }
}

/// Mints offline: `subject` in `tenant` with `scope`, one hour.
pub(crate) fn mint(issuer: &Issuer, subject: &str, tenant: &str, scope: &str) -> String {
    issuer
        .mint(&MintRequest {
            subject: subject.parse().expect("subject"),
            tenant: tenant.parse().expect("tenant"),
            scope: Scope::parse_claim(scope).expect("scope"),
            lifetime: Lifetime::OneHour,
        })
        .expect("mint")
        .token
        .expose()
        .to_owned()
}

/// A token minted through the issuer API at `issuer_base` as alice in acme: `(id, token)`.
pub(crate) async fn mint_via_api(issuer_base: &str, permissions: &[&str]) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("{issuer_base}/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .json(&serde_json::json!({ "permissions": permissions }))
        .send()
        .await
        .expect("mint request");
    assert_eq!(response.status(), 201, "mint through the issuer API");
    let body: serde_json::Value = response.json().await.expect("mint body");
    (
        body["id"].as_str().expect("id").to_owned(),
        body["token"].as_str().expect("token").to_owned(),
    )
}

/// Revokes token `id` through the issuer API as alice; asserts 204.
pub(crate) async fn revoke_via_api(issuer_base: &str, id: &str) {
    let response = reqwest::Client::new()
        .delete(format!("{issuer_base}/v1/tenants/acme/tokens/{id}"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .send()
        .await
        .expect("revoke request");
    assert_eq!(response.status(), 204, "revoke through the issuer API");
}

/// Alice's token listing in acme from the issuer API at `issuer_base`; `None` when it does not
/// answer with JSON (for polling with `eventually`).
pub(crate) async fn list_via_api(
    client: &reqwest::Client,
    issuer_base: &str,
) -> Option<serde_json::Value> {
    client
        .get(format!("{issuer_base}/v1/tenants/acme/tokens"))
        .basic_auth("alice", Some(ALICE_PASSWORD))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Waits up to `wait` for alice's token `id` to show one use in the issuer's listing at
/// `issuer_base`, and returns its entry (with `last_used_at` and `last_used_from`).
pub(crate) async fn once_used_via_api(
    client: &reqwest::Client,
    issuer_base: &str,
    id: &str,
    wait: std::time::Duration,
) -> serde_json::Value {
    super::eventually::eventually("the use in the list API", wait)
        .every(std::time::Duration::from_millis(100))
        .until(async || {
            let body = list_via_api(client, issuer_base).await?;
            body["tokens"]
                .as_array()?
                .iter()
                .find(|t| t["id"] == id && t["uses"] == 1)
                .cloned()
        })
        .await
}
