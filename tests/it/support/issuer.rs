//! An issuer (the real router on a real socket) for HTTP tests, with a real Redis or the
//! in-process store, a user directory of known people and a manual clock.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgetoken::clock::{Clock, ManualClock, SystemClock};
use edgetoken::config::Role;
use edgetoken::directory::hash_password;
use edgetoken::http::boot::{self, Started};
use edgetoken::http::{self, Services};
use edgetoken::settings::Settings;
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::eventually::eventually;

/// Passwords of the directory's people.
pub(crate) const ALICE_PASSWORD: &str = "alice-correct-horse-battery";
pub(crate) const BOB_PASSWORD: &str = "bob-staple-of-the-battery";

/// The directory: alice is admin of acme and member of globex; bob is a member of acme.
fn directory_toml() -> String {
    let alice = hash_password(ALICE_PASSWORD).unwrap();
    let bob = hash_password(BOB_PASSWORD).unwrap();
    format!(
        r#"
[users.alice]
password_hash = "{alice}"
[users.alice.tenants.acme]
permissions = ["runs:write", "policies:read"]
admin = true
[users.alice.tenants.globex]
permissions = ["read-all"]

[users.bob]
password_hash = "{bob}"
[users.bob.tenants.acme]
permissions = ["runs:read"]
"#
    )
}

/// The directory file text, hashed once per test binary (argon2 is slow on purpose).
pub(crate) fn directory_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(directory_toml)
}

/// A running issuer (role `all`) on `127.0.0.1:<random port>`.
#[derive(Debug)]
pub(crate) struct TestIssuer {
    pub(crate) base: String,
    pub(crate) services: Arc<Services>,
    pub(crate) clock: Arc<ManualClock>,
    dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    revocation: Option<edgetoken::revocation::RevocationEngine>,
}

/// Options for [`TestIssuer::start`].
#[derive(Debug, Default)]
pub(crate) struct Options {
    /// Redis URL; none runs the in-process store.
    pub(crate) redis_url: Option<String>,
    /// Extra TOML appended to the generated config (inside `[issuer]`).
    pub(crate) extra: String,
    /// `keys.reload_secs` (default: the service default).
    pub(crate) key_reload_secs: Option<u64>,
}

impl TestIssuer {
    pub(crate) async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        edgetoken::keys::KeyDir::new(&keys).generate(true).unwrap();
        let directory = dir.path().join("users.toml");
        std::fs::write(&directory, directory_text()).unwrap();
        let prefix = format!("it-{}", unique());
        let reload = options
            .key_reload_secs
            .map_or(String::new(), |secs| format!("reload_secs = {secs}\n"));
        let mut text = format!(
            "[keys]\ndir = \"{}\"\n{reload}[issuer]\ndirectory = \"{}\"\n{extra}\n",
            keys.display(),
            directory.display(),
            extra = options.extra
        );
        if let Some(url) = &options.redis_url {
            let _ = write!(
                text,
                "[revocation]\nredis_url = {url:?}\nkey_prefix = {prefix:?}\nheartbeat_ms = 100\n"
            );
        }
        let path: PathBuf = dir.path().join("edgetoken.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Settings::load(Some(&path), std::iter::empty()).unwrap();
        let clock = Arc::new(ManualClock::at(SystemClock.unix_now()));
        let Started {
            services,
            revocation,
            ..
        } = boot::start(config, Role::All, false, clock.clone() as Arc<dyn Clock>)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let app = http::app(Arc::clone(&services));
        let limits = http::ServerLimits::from_settings(&services.settings.server);
        let server = tokio::spawn(async move {
            http::serve(listener, app, limits, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let issuer = Self {
            base,
            services,
            clock,
            dir,
            shutdown: Some(tx),
            server: Some(server),
            revocation: Some(revocation),
        };
        issuer.wait_ready().await;
        issuer
    }

    /// Waits until `/readyz` answers 200 (the mirror finished its first sync).
    pub(crate) async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        eventually(
            "the issuer's /readyz to answer 200",
            Duration::from_secs(10),
        )
        .until(async || {
            client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
                .then_some(())
        })
        .await;
    }

    /// The issuer's key directory.
    pub(crate) fn key_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(revocation) = self.revocation.take() {
            revocation.shutdown().await;
        }
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client that signs in as `user` with `password`.
#[derive(Debug, Clone)]
pub(crate) struct Person {
    pub(crate) user: &'static str,
    pub(crate) password: &'static str,
}

pub(crate) const ALICE: Person = Person {
    user: "alice",
    password: ALICE_PASSWORD,
};
pub(crate) const BOB: Person = Person {
    user: "bob",
    password: BOB_PASSWORD,
};

impl Person {
    pub(crate) fn post(&self, url: String) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(url)
            .basic_auth(self.user, Some(self.password))
    }

    pub(crate) fn get(&self, url: String) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .get(url)
            .basic_auth(self.user, Some(self.password))
    }

    pub(crate) fn delete(&self, url: String) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .delete(url)
            .basic_auth(self.user, Some(self.password))
    }

    /// Mints in `tenant`; returns the response JSON (panics unless 201).
    pub(crate) async fn mint(
        &self,
        issuer: &TestIssuer,
        tenant: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let response = self
            .post(issuer.url(&format!("/v1/tenants/{tenant}/tokens")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 201, "mint failed: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Lists own tokens in `tenant`.
    pub(crate) async fn list(&self, issuer: &TestIssuer, tenant: &str) -> serde_json::Value {
        let response = self
            .get(issuer.url(&format!("/v1/tenants/{tenant}/tokens")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

/// Asserts `response` has `status` and the JSON error `code`.
pub(crate) async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status, "wrong status");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "wrong error code in {body}");
    assert!(body["message"].is_string(), "no message in {body}");
}

/// A private redis-server and an issuer on it (the two live and die together).
pub(crate) async fn with_redis() -> (super::redis::RedisServer, TestIssuer) {
    let redis = super::redis::RedisServer::start();
    let issuer = TestIssuer::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    (redis, issuer)
}

/// The kids of the JWKS served at `url` (an issuer's `/.well-known/jwks.json`).
pub(crate) async fn jwks_kids(url: &str) -> Vec<String> {
    let jwks: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}
