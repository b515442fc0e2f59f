//! The HTTP shell (SPEC §4, §5): state, routers and the server loop.
//!
//! Handlers extract, call one core method and map the result; [`error::ApiError`] is the only
//! place that picks a status. Each service module has a `router()` that [`router`] merges
//! according to the role. [`serve`] takes its listener and shutdown future from the caller, so
//! tests bind `127.0.0.1:0` and shut down deterministically.
//!
//! With the `layer` feature alone, only the in-process guard is here: [`layer`], the decision
//! it shares with forward-auth ([`bearer`]) and [`ApiError`]; the rest needs `server`.

pub mod bearer;
#[cfg(feature = "server")]
pub mod boot;
pub mod error;
#[cfg(feature = "server")]
pub mod extract;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "server")]
mod issuer;
#[cfg(feature = "server")]
pub mod jwks;
pub mod layer;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
mod memo;
#[cfg(feature = "server")]
mod ops;
#[cfg(feature = "server")]
pub mod page;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod unix_socket;
#[cfg(feature = "server")]
pub mod verifier;

#[cfg(feature = "server")]
use std::sync::Arc;

#[cfg(feature = "server")]
use axum::Router;
#[cfg(feature = "server")]
use axum::extract::{DefaultBodyLimit, MatchedPath};
#[cfg(feature = "server")]
use tower_http::trace::TraceLayer;

pub use self::error::ApiError;
#[cfg(feature = "server")]
use self::jwks::JwksRefresher;
#[cfg(feature = "server")]
use self::limits::RateLimiter;
#[cfg(feature = "server")]
pub use self::server::{App, Listener, ServerLimits, serve};
#[cfg(feature = "server")]
use self::verifier::VerifierApi;
#[cfg(feature = "server")]
use crate::clock::Clock;
#[cfg(feature = "server")]
use crate::config::{AuthMode, Role};
#[cfg(feature = "server")]
use crate::directory::Directory;
#[cfg(feature = "server")]
use crate::metrics::{Metrics, StateSample};
#[cfg(feature = "server")]
use crate::permissions::Catalogue;
#[cfg(feature = "server")]
use crate::records::RecordStore;
#[cfg(feature = "server")]
use crate::revocation::{Mirror, RevocationStore};
#[cfg(feature = "server")]
use crate::settings::Settings;
#[cfg(feature = "server")]
use crate::token::{Issuer, Verifier};

/// Everything a request handler may need, shared by all of them.
#[cfg(feature = "server")]
pub type AppState = Arc<Services>;

/// The running services of one process.
#[derive(Debug)]
#[cfg(feature = "server")]
pub struct Services {
    /// The validated settings.
    pub settings: Arc<Settings>,
    /// Which services are served.
    pub role: Role,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Verifies tokens (both roles: the issuer checks tokens presented for self-revocation).
    pub verifier: Arc<Verifier>,
    /// This process's revocation mirror.
    pub mirror: Arc<Mirror>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The issuer's parts, when the role includes it.
    pub issuer: Option<IssuerState>,
    /// The verifier API's parts, when the role includes it.
    pub verifier_api: Option<VerifierApi>,
    /// Keeps the trusted keys equal to the issuer's JWKS, when keys come from a URL.
    pub jwks: Option<Arc<JwksRefresher>>,
}

/// How the issuer authenticates people.
#[derive(Clone)]
#[cfg(feature = "server")]
pub struct AuthSettings {
    /// Directory or trusted header.
    pub mode: AuthMode,
    /// Trusted-header mode: the user id header.
    pub user_header: String,
    /// Trusted-header mode: the secret header.
    pub proxy_secret_header: String,
    /// Trusted-header mode: the secret.
    pub proxy_secret: zeroize::Zeroizing<String>,
}

#[cfg(feature = "server")]
impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("mode", &self.mode)
            .field("user_header", &self.user_header)
            .field("proxy_secret_header", &self.proxy_secret_header)
            .finish_non_exhaustive()
    }
}

/// The issuer's parts.
#[derive(Debug)]
#[cfg(feature = "server")]
pub struct IssuerState {
    /// Signs tokens; shared with the key directory reload, which switches its key when
    /// `keys/ACTIVE` changes.
    pub issuer: Arc<Issuer>,
    /// People.
    pub directory: Arc<Directory>,
    /// The permission catalogue.
    pub catalogue: Catalogue,
    /// Token metadata.
    pub records: RecordStore,
    /// Token usage ("last used"), as every verifier flushes it.
    pub usage: crate::usage::UsageStore,
    /// Where revocations are written.
    pub revocations: Arc<dyn RevocationStore>,
    /// How people sign in.
    pub auth: AuthSettings,
    /// Failed sign-ins per user id.
    pub failed_signins: Arc<RateLimiter>,
    /// Password checks (argon2id, 19 MiB each) allowed at once.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// Mints per person.
    pub mints: Arc<RateLimiter>,
    /// User and tenant revocations per tenant admin.
    pub tenant_revocations: Arc<RateLimiter>,
    /// The tokens page's sessions.
    pub sessions: page::Sessions,
}

#[cfg(feature = "server")]
impl Services {
    /// The issuer's parts, or 404 when this process does not run the issuer.
    ///
    /// # Errors
    ///
    /// [`ApiError::NotFound`] in the verifier role.
    pub fn issuer(&self) -> Result<&IssuerState, ApiError> {
        self.issuer.as_ref().ok_or(ApiError::NotFound)
    }

    /// The verifier API's parts, or 404 when this process does not run the verifier.
    ///
    /// # Errors
    ///
    /// [`ApiError::NotFound`] in the issuer role.
    pub fn verifier_api(&self) -> Result<&VerifierApi, ApiError> {
        self.verifier_api.as_ref().ok_or(ApiError::NotFound)
    }

    /// What `/metrics` and `/readyz` report about state.
    pub fn sample(&self) -> StateSample {
        // One read of the mirror's health, released before anything else. Each `borrow()`
        // takes the watch's read lock until the end of its statement, and std's `RwLock` lets
        // no new reader in while a writer waits: a second `borrow()` in the same statement,
        // with the feed's `send_modify` waiting between the two, blocked both for good. Seen
        // as an issuer whose two worker threads stopped (`/readyz` polled during a failover).
        let (applied_seq, clock_skew_ms, replica_fallbacks) = {
            let health = self.mirror.health();
            let health = health.borrow();
            (
                health.applied_seq,
                health.clock_skew_ms,
                health.replica_fallbacks,
            )
        };
        StateSample {
            cache: self.verifier.cache_stats(),
            mirror_entries: u64::try_from(self.mirror.size().total()).unwrap_or(u64::MAX),
            staleness: self.mirror.is_ready().then(|| self.mirror.staleness()),
            ready: self.mirror.is_ready() && self.mirror.is_fresh(),
            trusted_keys: u64::try_from(self.verifier.keys().len()).unwrap_or(u64::MAX),
            jwks_age: self.jwks.as_ref().map(|jwks| {
                jwks.status()
                    .last_success
                    .map_or(std::time::Duration::MAX, |at| at.elapsed())
            }),
            applied_seq,
            #[expect(
                clippy::cast_precision_loss,
                reason = "milliseconds of skew, far below 2^52"
            )]
            clock_skew: clock_skew_ms.map(|ms| ms as f64 / 1000.0),
            registration_age: self.mirror.registration_age(),
            replica_fallbacks,
            usage: self
                .verifier_api
                .as_ref()
                .and_then(|api| api.decider.usage())
                .map(crate::usage::UsageRecorder::stats),
        }
    }

    /// Ready to decide: at least one trusted key (from the directory, or a JWKS fetched at
    /// least once; a later failed fetch keeps the last good keys and readiness), and the
    /// revocation mirror synced and fresh.
    pub fn is_ready(&self) -> bool {
        self.mirror.is_ready() && self.mirror.is_fresh() && !self.verifier.keys().is_empty()
    }
}

/// What [`serve`] answers for `state.role`: the [`router`], with forward-auth answered
/// directly by the server loop when the role includes the verifier.
#[cfg(feature = "server")]
pub fn app(state: AppState) -> App {
    let forward_auth = state.role.has_verifier().then(|| Arc::clone(&state));
    App::new(router(state), forward_auth)
}

/// The router for `state.role`.
#[cfg(feature = "server")]
pub fn router(state: AppState) -> Router {
    let mut router = ops::router();
    if state.role.has_issuer() {
        router = router.merge(issuer::router()).merge(page::router());
    }
    router = router.layer(
        TraceLayer::new_for_http()
            // The span names the matched route, never the raw URI: paths and queries may
            // carry tenant names or, from careless clients, tokens.
            .make_span_with(|request: &axum::extract::Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("<unmatched>", MatchedPath::as_str);
                tracing::debug_span!("http", method = %request.method(), route)
            }),
    );
    // The verifier's routes are merged after the trace layer, so forward-auth (tens of
    // thousands of requests a second, each already counted in metrics and logged at debug
    // with its reason) does not pay for a span per request; forward-auth comes after the body
    // limit too, which only sets a request extension for body extractors it never runs.
    if state.role.has_verifier() {
        router = router.merge(verifier::introspect_router());
    }
    router = router.layer(DefaultBodyLimit::max(state.settings.server.max_body_bytes));
    if state.role.has_verifier() {
        router = router.merge(verifier::forward_auth_router());
    }
    router.with_state(state)
}
