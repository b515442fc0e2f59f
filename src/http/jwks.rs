//! Trusted keys from the issuer's JWKS URL, kept current in the background (SPEC §8).
//!
//! A [`JwksRefresher`] fetches the JWKS at start, then every `refresh`, and again (at most
//! once per `min_refetch`) when a token names a `kid` the verifier does not know. Each fetch
//! is bounded in time and size, and its document is applied only whole: the ring is rebuilt by
//! [`KeyRing::from_jwks_json`], which refuses the entire document if any key is bad, and an
//! empty key set is refused too. Whenever a fetch fails (unreachable, timeout, non-200,
//! oversized, garbage) the last good key set stays in force.
//!
//! Verification never waits for this: an unknown `kid` is rejected `unknown_key` at once and
//! only *requests* a refetch; a later request with the same token succeeds once the new key
//! has arrived. What is left out: a key removed from the JWKS stops verifying from the next
//! fetch on, so removing a key is as fast as `refresh` (or use a key revocation, which is
//! immediate).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::keys::{KeyError, KeyRing};
use crate::metrics::Metrics;
use crate::token::Verifier;

pub use crate::settings::JwksSettings;

/// What the refresher has done so far; watch it with [`JwksRefresher::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksStatus {
    /// Fetches completed (successful or not).
    pub attempts: u64,
    /// Fetches whose document was applied.
    pub successes: u64,
    /// When the last successful fetch completed.
    pub last_success: Option<Instant>,
    /// Why the last fetch failed, if it did (a [`FetchError::code`]).
    pub last_error: Option<&'static str>,
    /// Keys in the last applied document.
    pub keys: usize,
}

/// Why one fetch was refused; the last good key set stays in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Connection refused, DNS failure, timeout, reset.
    #[error("JWKS unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// Any status but 200.
    #[error("JWKS answered HTTP {0}")]
    Status(u16),
    /// Larger than `max_bytes`.
    #[error("JWKS larger than {0} bytes")]
    TooLarge(usize),
    /// Not a JWKS of acceptable Ed25519 public keys.
    #[error(transparent)]
    Invalid(#[from] KeyError),
    /// A JWKS with no key, which would reject every token.
    #[error("JWKS holds no key")]
    Empty,
}

impl FetchError {
    /// A `snake_case` code for logs, metrics and `/readyz`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Status(_) => "http_status",
            Self::TooLarge(_) => "too_large",
            Self::Invalid(_) => "invalid",
            Self::Empty => "empty",
        }
    }
}

/// The JWKS could not be set up at all (a URL the HTTP client refuses).
#[derive(Debug, thiserror::Error)]
#[error("verifier.jwks_url: {0}")]
pub struct JwksError(#[source] reqwest::Error);

/// Keeps a [`Verifier`]'s keys equal to the issuer's JWKS. Stops its task when shut down or
/// dropped.
#[derive(Debug)]
pub struct JwksRefresher {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    settings: JwksSettings,
    client: reqwest::Client,
    verifier: Arc<Verifier>,
    metrics: Option<Arc<Metrics>>,
    wake: Notify,
    last_attempt: Mutex<Option<Instant>>,
    status: watch::Sender<JwksStatus>,
}

impl JwksRefresher {
    /// Fetches the JWKS once (waiting at most `timeout`), applies it if it is good, and starts
    /// the background refresh. A failed first fetch is not an error: the verifier then trusts
    /// no key (and is not ready) until a fetch succeeds.
    ///
    /// # Errors
    ///
    /// [`JwksError`] when the HTTP client cannot be built.
    pub async fn start(
        settings: JwksSettings,
        verifier: Arc<Verifier>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // The configured URL is the only place keys come from; never follow elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("edgetoken/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(JwksError)?;
        let inner = Arc::new(Inner {
            settings,
            client,
            verifier,
            metrics,
            wake: Notify::new(),
            last_attempt: Mutex::new(None),
            status: watch::Sender::new(JwksStatus::default()),
        });
        inner.fetch_and_apply().await;
        let task = tokio::spawn(Arc::clone(&inner).run());
        Ok(Self {
            inner,
            task: Mutex::new(Some(task)),
        })
    }

    /// Asks for a fetch soon: now if none happened within `min_refetch`, else when that
    /// window ends. Never waits; many requests collapse into one fetch.
    pub fn request_refetch(&self) {
        self.inner.wake.notify_one();
    }

    /// The current status.
    pub fn status(&self) -> JwksStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver of status changes (one per completed fetch).
    pub fn subscribe(&self) -> watch::Receiver<JwksStatus> {
        self.inner.status.subscribe()
    }

    /// Whether a JWKS document has been applied at least once.
    pub fn is_loaded(&self) -> bool {
        self.inner.status.borrow().successes > 0
    }

    /// The configured URL.
    pub fn url(&self) -> &str {
        &self.inner.settings.url
    }

    /// The URL with any credentials replaced, for logs and `/readyz`.
    pub fn display_url(&self) -> String {
        crate::config::redact_url(&self.inner.settings.url)
    }

    /// Stops the background refresh.
    pub async fn shutdown(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for JwksRefresher {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Inner {
    async fn run(self: Arc<Self>) {
        loop {
            let last = self.last_attempt();
            let loaded = self.status.borrow().successes > 0;
            let period = if loaded {
                self.settings.refresh
            } else {
                self.settings.min_refetch.min(Duration::from_secs(2))
            };
            let periodic = last.map_or_else(Instant::now, |at| at + period);
            tokio::select! {
                () = tokio::time::sleep_until(periodic) => {}
                () = self.wake.notified() => {
                    if let Some(at) = self.last_attempt() {
                        tokio::time::sleep_until(at + self.settings.min_refetch).await;
                    }
                }
            }
            self.fetch_and_apply().await;
        }
    }

    fn last_attempt(&self) -> Option<Instant> {
        *self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn fetch_and_apply(&self) {
        *self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        match self.fetch().await {
            Ok(ring) => {
                let keys = ring.len();
                self.apply(ring);
                self.record("ok");
                self.status.send_modify(|status| {
                    status.attempts += 1;
                    status.successes += 1;
                    status.last_success = Some(Instant::now());
                    status.last_error = None;
                    status.keys = keys;
                });
            }
            Err(error) => {
                tracing::warn!(
                    url = %crate::config::redact_url(&self.settings.url),
                    reason = error.code(),
                    error = %super::error::ErrorChain(&error),
                    "JWKS fetch failed; keeping the last good key set"
                );
                self.record(error.code());
                self.status.send_modify(|status| {
                    status.attempts += 1;
                    status.last_error = Some(error.code());
                });
            }
        }
    }

    fn record(&self, outcome: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.record_jwks_fetch(outcome);
        }
    }

    /// Swaps the whole ring in when its kids changed, logging what changed.
    fn apply(&self, ring: KeyRing) {
        let kids = |ring: &KeyRing| -> BTreeSet<String> {
            ring.keys()
                .into_iter()
                .map(|key| key.kid().as_str().to_owned())
                .collect()
        };
        let old = kids(&self.verifier.keys());
        let new = kids(&ring);
        if old == new {
            return;
        }
        for kid in new.difference(&old) {
            tracing::info!(kid, "trusting a new key from the JWKS");
        }
        for kid in old.difference(&new) {
            tracing::info!(kid, "key no longer in the JWKS; its tokens are now refused");
        }
        self.verifier.set_keys(ring);
    }

    async fn fetch(&self) -> Result<KeyRing, FetchError> {
        let max = self.settings.max_bytes;
        let mut response = self
            .client
            .get(&self.settings.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(FetchError::Unreachable)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(FetchError::TooLarge(max));
        }
        // Read chunk by chunk so a lying or absent Content-Length cannot make us buffer more
        // than `max_bytes`.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::Unreachable)? {
            if body.len() + chunk.len() > max {
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        let ring = KeyRing::from_jwks_json(&body, &crate::config::redact_url(&self.settings.url))?;
        if ring.is_empty() {
            return Err(FetchError::Empty);
        }
        Ok(ring)
    }
}
