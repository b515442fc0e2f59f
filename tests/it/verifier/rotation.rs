//! Key rotation under load (THREATS F13) across two verifier processes that take their keys
//! from a JWKS URL: the new key is published, picked up by the periodic refresh and then used
//! for signing while old- and new-key tokens are verified in a concurrent loop, with no valid
//! token refused; then the old key is withdrawn from the JWKS and the new one revoked through
//! the store (`Revocation::Key`), and both kinds of token fail at every verifier.
//!
//! The JWKS is served from a test endpoint publishing exactly what the issuer publishes for
//! its key directory (`KeyDir::load_ring().jwks()`), so the test controls the moment each key
//! set goes out; the issuer itself signs offline from the same directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgetoken::keys::{KeyRing, TrustedKey};
use edgetoken::revocation::{RedisStore, Revocation, RevocationSettings, RevocationStore};
use reqwest::StatusCode;
use tokio::sync::RwLock;

use super::WAIT;
use crate::support::deployment::{Deployment, mint};
use crate::support::eventually::eventually;
use crate::support::jwks_server::JwksServer;
use crate::support::process::EdgetokenProcess;

const REQUIREMENT: &str = "/v1/verify?tenant=acme&permission=runs:read";

/// Waits until `/readyz` of `verifier` reports `keys` trusted keys.
async fn wait_for_keys(client: &reqwest::Client, verifier: &EdgetokenProcess, keys: u64) {
    let mut body = serde_json::Value::Null;
    let trusted = eventually(format!("the verifier to trust {keys} keys"), WAIT)
        .every(Duration::from_millis(50))
        .try_until(async || {
            body = client
                .get(verifier.url("/readyz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body["keys"] == keys).then_some(())
        })
        .await;
    if let Err(timed_out) = trusted {
        panic!("{timed_out}: {body}");
    }
}

/// Polls until `token` gets 401 at `verifier`; returns the `WWW-Authenticate` reason.
async fn wait_refused(
    client: &reqwest::Client,
    verifier: &EdgetokenProcess,
    token: &str,
) -> String {
    eventually("the token to be refused", WAIT)
        .every(Duration::from_millis(50))
        .until(async || {
            let response = client
                .get(verifier.url(REQUIREMENT))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (response.status() == StatusCode::UNAUTHORIZED).then(|| {
                response.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .await
}

/// Four tasks verifying tokens from a shared pool at every verifier, round robin.
struct Load {
    stop: Arc<AtomicBool>,
    checked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        client: &reqwest::Client,
        pool: &Arc<RwLock<Vec<String>>>,
        verifiers: &Arc<Vec<EdgetokenProcess>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (checked, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let workers = (0..4_usize)
            .map(|worker| {
                let (client, pool, verifiers) =
                    (client.clone(), Arc::clone(pool), Arc::clone(verifiers));
                let (stop, checked, refused) = (
                    Arc::clone(&stop),
                    Arc::clone(&checked),
                    Arc::clone(&refused),
                );
                tokio::spawn(async move {
                    let mut n = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let token = {
                            let pool = pool.read().await;
                            pool[n % pool.len()].clone()
                        };
                        let status = client
                            .get(verifiers[n % verifiers.len()].url(REQUIREMENT))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .unwrap()
                            .status();
                        checked.fetch_add(1, Ordering::Relaxed);
                        if status != StatusCode::OK {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            checked,
            refused,
            workers,
        }
    }

    /// Lets at least `more` further verifications happen (or [`WAIT`] pass), then stops the
    /// load: `(verifications, refusals)` in all.
    async fn run_for(self, more: u64) -> (u64, u64) {
        let target = self.checked.load(Ordering::Relaxed) + more;
        // Not a failure by itself: the caller asserts on the counts.
        let _ = eventually(format!("{more} more verifications"), WAIT)
            .try_until(async || (self.checked.load(Ordering::Relaxed) >= target).then_some(()))
            .await;
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        (
            self.checked.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_refuses_no_valid_token_and_retired_keys_fail_everywhere() {
    let deployment = Deployment::new();
    let keys = deployment.keys();
    let jwks = JwksServer::start(&keys.load_ring().unwrap()).await;
    let config = deployment.config_text(&format!(
        "[verifier]\njwks_url = \"{}\"\njwks_refresh_secs = 1\njwks_min_refetch_secs = 1\n",
        jwks.url
    ));
    let verifiers = Arc::new(
        futures_util::future::join_all(
            (0..2).map(|_| EdgetokenProcess::start(&config, "verifier")),
        )
        .await,
    );
    let client = reqwest::Client::new();
    let old_issuer = deployment.offline_issuer();
    let old_tokens: Vec<String> = (0..20)
        .map(|_| mint(&old_issuer, "alice", "acme", "runs:read"))
        .collect();
    let pool = Arc::new(RwLock::new(old_tokens.clone()));

    let load = Load::start(&client, &pool, &verifiers);

    // Rotate: add k2 to the key directory, publish it, wait for every verifier to trust it,
    // then sign with it.
    let new_key = keys.generate(true).unwrap();
    jwks.publish(&keys.load_ring().unwrap());
    for verifier in verifiers.iter() {
        wait_for_keys(&client, verifier, 2).await;
    }
    let new_issuer = deployment.offline_issuer();
    assert_eq!(&new_issuer.kid(), new_key.kid());
    let new_tokens: Vec<String> = (0..20)
        .map(|_| mint(&new_issuer, "alice", "acme", "runs:read"))
        .collect();
    pool.write().await.extend(new_tokens.iter().cloned());
    let (checked, refused) = load.run_for(400).await;
    eprintln!("rotation under load: {checked} verifications, {refused} refused");
    assert!(checked >= 400, "too little load: {checked}");
    assert_eq!(refused, 0, "valid tokens refused during the overlap");

    // Retire k1: withdraw it from the JWKS. Its tokens fail everywhere, cached or not.
    let mut without_old = KeyRing::new();
    without_old.insert(TrustedKey::from_bytes(&new_key.public_bytes()).unwrap());
    jwks.publish(&without_old);
    for verifier in verifiers.iter() {
        let reason = wait_refused(&client, verifier, &old_tokens[0]).await;
        assert!(reason.contains("unknown_key"), "{reason}");
    }

    // Revoke k2 through the store: its tokens fail everywhere too.
    let store = RedisStore::open(&RevocationSettings {
        redis_url: Some(deployment.redis.url()),
        key_prefix: deployment.prefix.clone(),
        ..RevocationSettings::default()
    })
    .await
    .unwrap();
    store
        .revoke(Revocation::Key {
            kid: new_key.kid().clone(),
            before: edgetoken::clock::Clock::unix_now(&edgetoken::clock::SystemClock),
        })
        .await
        .unwrap();
    for verifier in verifiers.iter() {
        let reason = wait_refused(&client, verifier, &new_tokens[0]).await;
        assert!(reason.contains("revoked"), "{reason}");
    }
}
