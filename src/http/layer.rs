//! The in-process guard (SPEC §6): a tower layer and an axum extractor that give a Rust
//! service the same decision as `/v1/verify`, with the same statuses and `WWW-Authenticate`
//! challenges (both go through [`ApiError`]), without a sidecar.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use edgetoken::http::layer::{RequireToken, VerifiedToken};
//! # fn app(verifier: Arc<edgetoken::Verifier>, policy: edgetoken::policy::RoutePolicy) -> Router {
//! async fn runs(VerifiedToken(claims): VerifiedToken) -> String {
//!     format!("runs of {} for {}", claims.tenant, claims.subject)
//! }
//! Router::new()
//!     .route("/api/{tenant}/runs", get(runs))
//!     .layer(RequireToken::new(verifier).with_policy(policy))
//! # }
//! ```
//!
//! The requirement comes from a [`RoutePolicy`] matched against the request's own method and
//! path (apply the layer to the outer router: a nested router sees a shortened path), or from
//! one fixed [`Requirement`]; with neither, any valid token passes. Verification is
//! synchronous and in memory, so the layer adds no `.await` of its own.
//!
//! With [`RequireToken::with_usage`], every accepted token's use is recorded (issue 10), with
//! the TCP peer from axum's `ConnectInfo<SocketAddr>` (when the service is served with
//! `into_make_service_with_connect_info`, or by [`super::serve`], which also marks a
//! Unix-socket peer) and the user agent.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::bearer::{Decider, Presented, bearer_token};
use super::error::ApiError;
#[cfg(feature = "server")]
use super::jwks::JwksRefresher;
use crate::metrics::Metrics;
use crate::policy::RoutePolicy;
use crate::token::{Claims, Requirement, Verifier};
use crate::usage::UsageRecorder;

#[derive(Debug)]
enum Rule {
    Fixed(Requirement),
    Policy(RoutePolicy),
}

#[derive(Debug)]
struct Guard {
    decider: Decider,
    rule: Rule,
}

/// A tower layer that lets a request through only with a valid bearer token meeting the
/// requirement, and hands the verified claims to handlers as [`VerifiedToken`].
#[derive(Debug, Clone)]
pub struct RequireToken {
    guard: Arc<Guard>,
}

impl RequireToken {
    /// Any valid, unrevoked token passes.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            guard: Arc::new(Guard {
                decider: Decider::new(verifier),
                rule: Rule::Fixed(Requirement::any()),
            }),
        }
    }

    fn map(self, f: impl FnOnce(Guard) -> Guard) -> Self {
        let guard = Arc::try_unwrap(self.guard).unwrap_or_else(|shared| Guard {
            decider: shared.decider.clone(),
            rule: match &shared.rule {
                Rule::Fixed(requirement) => Rule::Fixed(requirement.clone()),
                Rule::Policy(policy) => Rule::Policy(policy.clone()),
            },
        });
        Self {
            guard: Arc::new(f(guard)),
        }
    }

    /// Every request needs `requirement`.
    #[must_use]
    pub fn with_requirement(self, requirement: Requirement) -> Self {
        self.map(|guard| Guard {
            rule: Rule::Fixed(requirement),
            ..guard
        })
    }

    /// The requirement comes from `policy`, matched against the request's method and path;
    /// an unmatched request follows the policy's `unmatched` setting.
    #[must_use]
    pub fn with_policy(self, policy: RoutePolicy) -> Self {
        self.map(|guard| Guard {
            rule: Rule::Policy(policy),
            ..guard
        })
    }

    /// Records every decision in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        self.map(|guard| Guard {
            decider: guard.decider.with_metrics(metrics),
            ..guard
        })
    }

    /// Records every accepted token's use in `usage` (see the module docs for the address).
    #[must_use]
    pub fn with_usage(self, usage: UsageRecorder) -> Self {
        self.map(|guard| Guard {
            decider: guard.decider.with_usage(usage),
            ..guard
        })
    }

    /// Asks `jwks` for a refetch when a token names an unknown `kid` (the refresher fetches
    /// over HTTP, so it needs the `server` feature).
    #[cfg(feature = "server")]
    #[must_use]
    pub fn with_jwks(self, jwks: Arc<JwksRefresher>) -> Self {
        self.map(|guard| Guard {
            decider: guard.decider.with_jwks(jwks),
            ..guard
        })
    }
}

impl Guard {
    fn check(&self, request: &Request) -> Result<Arc<Claims>, ApiError> {
        let started = Instant::now();
        let token = bearer_token(request.headers())
            .inspect_err(|error| self.decider.record(error, started))?;
        let requirement = match &self.rule {
            Rule::Fixed(requirement) => Some(requirement.clone()),
            Rule::Policy(policy) => {
                let target = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |target| target.as_str());
                match policy.requirement(request.method().as_str(), target) {
                    Ok(Some(matched)) => Some(matched.requirement),
                    Ok(None) => policy.unmatched_requirement(),
                    // A path no route can be trusted to judge is denied outright, whatever
                    // `unmatched` says (see `RoutePolicy::requirement`).
                    Err(_) => None,
                }
            }
        };
        let presented = Presented {
            headers: request.headers(),
            peer: super::bearer::peer_of(request.extensions()),
            proxies: None,
        };
        self.decider
            .decide_warm(token, requirement.as_ref(), started, Some(presented))
            .map(crate::token::warm::Verified::into_claims)
    }
}

impl<S> Layer<S> for RequireToken {
    type Service = RequireTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireTokenService {
            inner,
            guard: Arc::clone(&self.guard),
        }
    }
}

/// The service [`RequireToken`] wraps around a router or handler.
#[derive(Debug, Clone)]
pub struct RequireTokenService<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> Service<Request> for RequireTokenService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.guard.check(&request) {
            Ok(claims) => {
                request.extensions_mut().insert(VerifiedToken(claims));
                // Call the instance that was polled ready; leave a fresh clone for next time.
                let clone = self.inner.clone();
                let mut ready_inner = std::mem::replace(&mut self.inner, clone);
                Either::Left(ready_inner.call(request))
            }
            Err(error) => Either::Right(ready(Ok(error.into_response()))),
        }
    }
}

/// The claims of the token [`RequireToken`] accepted for this request.
#[derive(Debug, Clone)]
pub struct VerifiedToken(pub Arc<Claims>);

impl<S: Send + Sync> FromRequestParts<S> for VerifiedToken {
    type Rejection = ApiError;

    /// # Errors
    ///
    /// [`ApiError::Internal`] (500) when the route is not behind [`RequireToken`]: a wiring
    /// mistake must not look like an anonymous request.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            ApiError::Internal(
                "VerifiedToken used on a route without the RequireToken layer".into(),
            )
        })
    }
}
