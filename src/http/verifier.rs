//! The verifier API (SPEC §5): `/v1/verify` forward-auth for edge proxies and
//! `POST /v1/introspect` (RFC 7662).
//!
//! # Where the requirement comes from
//!
//! - **Route mode** (`verifier.routes` is not empty): the route policy decides, from the
//!   original method and path the proxy forwards: `X-Forwarded-Method` + `X-Forwarded-Uri`
//!   (Traefik), else `X-Original-Method` + `X-Original-URI` (nginx `auth_request`), else the
//!   path after `/v1/verify/` with the request's own method (Envoy `ext_authz` with
//!   `path_prefix: /v1/verify`). These are honoured only from a peer in
//!   `verifier.trusted_proxies`; from anyone else they are ignored. Both header pairs at once
//!   is ambiguous and counts as no answer. Query parameters are ignored in route mode.
//! - **Query mode** (no routes): `GET /v1/verify?tenant=T&permission=P`, on exactly
//!   `/v1/verify` (never on the Envoy form, whose query is the client's). An unknown or
//!   repeated parameter is refused (400).
//!
//! When neither gives a requirement (no route matches, the path is refused as ambiguous, the
//! headers are missing, duplicated or untrusted, or no query parameter is set), the request is
//! *unmatched*: with `unmatched = "deny"` (the default) a valid token gets 403 `no_route`,
//! with `allow_authenticated` any valid token passes. The token is verified first either way,
//! so a bad token is always 401.
//!
//! Introspection callers authenticate with HTTP Basic `client_id:client_secret`; only SHA-256
//! digests of the secrets are kept, compared in constant time. Every inactive answer is
//! exactly `{"active": false}`: it never says why.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::bearer::{Decider, Presented, bearer_token};
use super::error::ApiError;
use super::extract::{body_bytes, has_media_type, single_header};
use super::memo;
use super::{AppState, Services};
use crate::config::IntrospectionClient;
use crate::permissions::Permission;
use crate::policy::RoutePolicy;
use crate::proxies::{Peer, TrustedProxies};
use crate::token::warm::Verified;
use crate::token::{Claims, Requirement, TenantId};

/// The path forward-auth answers on.
pub const VERIFY_PATH: &str = "/v1/verify";

/// Forward-auth, which never reads a request body.
pub(super) fn forward_auth_router() -> Router<AppState> {
    Router::new()
        .route(VERIFY_PATH, any(forward_auth))
        .route("/v1/verify/{*original}", any(forward_auth))
}

/// Introspection, which reads a form body (under the server's body limit).
pub(super) fn introspect_router() -> Router<AppState> {
    Router::new().route("/v1/introspect", post(introspect))
}

/// The verifier API's parts.
#[derive(Debug)]
pub struct VerifierApi {
    /// Verifies and records.
    pub decider: Decider,
    /// The route policy.
    pub policy: RoutePolicy,
    /// Peers whose forwarded headers are honoured.
    pub trusted_proxies: TrustedProxies,
    /// Who may introspect.
    pub introspection: IntrospectionClients,
}

/// Introspection callers: ids with SHA-256 digests of their secrets.
#[derive(Clone, Default)]
pub struct IntrospectionClients {
    clients: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for IntrospectionClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.clients.iter().map(|(id, _)| id))
            .finish()
    }
}

impl IntrospectionClients {
    /// From the configuration; the secrets themselves are not kept.
    pub fn new(clients: &[IntrospectionClient]) -> Self {
        Self {
            clients: clients
                .iter()
                .map(|c| (c.id.clone(), Sha256::digest(c.secret.as_bytes()).into()))
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Whether `authorization` is HTTP Basic for a known client and its secret. Every
    /// configured secret is compared (in constant time, on digests, so neither the length nor
    /// the position of a difference shows in timing).
    pub(crate) fn authenticate(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(encoded) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, rest)| rest.trim())
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        let decoded = zeroize::Zeroizing::new(decoded);
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        let (id, secret) = (&decoded[..colon], &decoded[colon + 1..]);
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let mut matched = subtle::Choice::from(0);
        for (known_id, known_digest) in &self.clients {
            let same_id = subtle::Choice::from(u8::from(known_id.as_bytes() == id));
            matched |= same_id & digest.ct_eq(known_digest);
        }
        matched.into()
    }
}

impl VerifierApi {
    /// The requirement of this request, or `None` when it is denied (see the module docs).
    fn requirement(&self, parts: &Parts, peer: Option<Peer>) -> Result<Option<Need>, ApiError> {
        let lookup = if self.policy.has_routes() {
            self.route_requirement(parts, peer)
        } else if parts.uri.path() == VERIFY_PATH {
            match parts.uri.query().filter(|query| !query.is_empty()) {
                Some(query) => memo::query_requirement(query, query_requirement)?
                    .map_or(Lookup::Unmatched, |shared| {
                        Lookup::Found(Need::Shared(shared))
                    }),
                None => Lookup::Unmatched,
            }
        } else {
            Lookup::Unmatched
        };
        Ok(self.resolve(lookup))
    }

    /// The requirement of a request whose original method and target the caller named
    /// directly (Envoy's gRPC `Check`: `attributes.request.http`), from caller `peer`. As the
    /// Envoy path form of `/v1/verify`: route mode only, honoured only from a peer in
    /// `verifier.trusted_proxies`, and the target's query (the client's) is never a query-mode
    /// requirement.
    #[cfg(feature = "grpc")]
    pub(super) fn original_requirement(
        &self,
        peer: Option<Peer>,
        method: &str,
        target: &str,
    ) -> Option<Need> {
        let lookup = if !self.policy.has_routes() {
            Lookup::Unmatched
        } else if self.is_trusted(peer) {
            self.route_lookup(method, target)
        } else {
            tracing::debug!(
                peer = ?peer,
                "Check from a peer outside verifier.trusted_proxies: its request is unmatched"
            );
            Lookup::Unmatched
        };
        self.resolve(lookup)
    }

    /// Whether `peer` is a proxy whose word on the original request is believed.
    pub(super) fn is_trusted(&self, peer: Option<Peer>) -> bool {
        peer.is_some_and(|peer| self.trusted_proxies.trusts(peer))
    }

    fn resolve(&self, lookup: Lookup) -> Option<Need> {
        match lookup {
            Lookup::Found(requirement) => Some(requirement),
            Lookup::Unmatched => self.policy.unmatched_requirement().map(Need::Owned),
            Lookup::Refused => None,
        }
    }

    fn route_requirement(&self, parts: &Parts, peer: Option<Peer>) -> Lookup {
        if !self.is_trusted(peer) {
            if has_forwarded_headers(&parts.headers) {
                tracing::debug!(
                    peer = ?peer,
                    "forwarded headers from a peer outside verifier.trusted_proxies ignored"
                );
            }
            return Lookup::Unmatched;
        }
        let Some((method, target)) = forwarded_request(parts) else {
            return Lookup::Unmatched;
        };
        self.route_lookup(method, target)
    }

    /// The route policy's answer for `method` and `target`.
    fn route_lookup(&self, method: &str, target: &str) -> Lookup {
        match self.policy.requirement(method, target) {
            Ok(Some(matched)) => {
                tracing::debug!(route = matched.pattern, "route matched");
                Lookup::Found(Need::Owned(matched.requirement))
            }
            Ok(None) => Lookup::Unmatched,
            Err(error) => {
                tracing::debug!(reason = error.code(), "forwarded path refused");
                Lookup::Refused
            }
        }
    }
}

/// A request's requirement: shared from the query memo, or built for this request by the
/// route policy (which a shared pointer would only add an allocation to).
pub(super) enum Need {
    /// The query memo's requirement.
    Shared(Arc<Requirement>),
    /// Built by the route policy (or `verifier.unmatched`) for this request.
    Owned(Requirement),
}

impl std::ops::Deref for Need {
    type Target = Requirement;

    fn deref(&self) -> &Requirement {
        match self {
            Self::Shared(shared) => shared,
            Self::Owned(owned) => owned,
        }
    }
}

/// Where a request's requirement came from.
enum Lookup {
    /// A route or the query named it.
    Found(Need),
    /// Nothing describes this request: `verifier.unmatched` decides.
    Unmatched,
    /// The path is one no route may be trusted to judge (a dot segment, an encoded slash, a
    /// bad tenant segment): denied whatever `unmatched` says, so `allow_authenticated` cannot
    /// be reached by bending a protected path.
    Refused,
}

/// The forwarded header pairs, as header names built once (a `&str` name is parsed and
/// lower-cased on every lookup).
const FORWARDED_PAIRS: [(HeaderName, HeaderName); 2] = [
    (
        HeaderName::from_static("x-forwarded-method"),
        HeaderName::from_static("x-forwarded-uri"),
    ),
    (
        HeaderName::from_static("x-original-method"),
        HeaderName::from_static("x-original-uri"),
    ),
];

fn has_forwarded_headers(headers: &HeaderMap) -> bool {
    FORWARDED_PAIRS
        .iter()
        .any(|(m, u)| headers.contains_key(m) || headers.contains_key(u))
}

/// What a request carries under one header name.
#[derive(Clone, Copy)]
enum Field<'a> {
    Absent,
    /// Exactly one value, visible ASCII.
    One(&'a str),
    /// Repeated, or not visible ASCII.
    Unusable,
}

/// The value of `name`, looked up once (presence and value together).
fn field<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Field<'a> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Field::Absent;
    };
    if values.next().is_some() {
        return Field::Unusable;
    }
    value.to_str().map_or(Field::Unusable, Field::One)
}

/// The original method and request target from the forwarded pair present, borrowed from the
/// request. Both pairs at once, or a pair with one half missing or repeated, is no answer at
/// all: a proxy that passes a client's own `X-Forwarded-*` next to its `X-Original-*` must not
/// let the client choose.
fn forwarded_request(parts: &Parts) -> Option<(&str, &str)> {
    let mut found = None;
    for (method, uri) in &FORWARDED_PAIRS {
        let pair = (field(&parts.headers, method), field(&parts.headers, uri));
        if matches!(pair, (Field::Absent, Field::Absent)) {
            continue;
        }
        if found.is_some() {
            return None; // two pairs
        }
        found = Some(pair);
    }
    // The Envoy form: the original path after `/v1/verify/`.
    let original = parts
        .uri
        .path()
        .strip_prefix(VERIFY_PATH)
        .filter(|rest| !rest.is_empty());
    match (found, original) {
        (None, Some(original)) => {
            let target = parts.uri.path_and_query().map_or(original, |pq| {
                pq.as_str().get(VERIFY_PATH.len()..).unwrap_or(original)
            });
            original
                .starts_with('/')
                .then(|| (parts.method.as_str(), target))
        }
        // Two sources of the original request (the path form and a header pair) is as
        // ambiguous as two header pairs: neither may win.
        (Some((Field::One(method), Field::One(uri))), None) => Some((method, uri)),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    tenant: Option<String>,
    permission: Option<String>,
}

/// The requirement a non-empty query names, or `None` when it names no parameter.
pub(crate) fn query_requirement(query: &str) -> Result<Option<Requirement>, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_request", message);
    let params: VerifyQuery =
        serde_urlencoded::from_str(query).map_err(|e| invalid(format!("query: {e}")))?;
    if params.tenant.is_none() && params.permission.is_none() {
        return Ok(None);
    }
    let mut requirement = Requirement::any();
    if let Some(tenant) = params.tenant {
        requirement = requirement
            .tenant(TenantId::new(&tenant).map_err(|e| invalid(format!("tenant: {e}")))?);
    }
    if let Some(permission) = params.permission {
        let permission: Permission = permission
            .parse()
            .map_err(|e| invalid(format!("permission: {e}")))?;
        requirement = requirement.permission(permission);
    }
    Ok(Some(requirement))
}

/// Forward-auth through the router (a router served by something other than
/// [`super::serve`], or a test's `oneshot`): the same answer as [`forward_auth_answer`].
async fn forward_auth(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, _body) = request.into_parts();
    let peer = super::bearer::peer_of(&parts.extensions);
    answer(&state, &parts, peer, started)
}

/// Whether the router gives `path` to forward-auth: `/v1/verify`, or the Envoy form
/// `/v1/verify/<original path>` (not `/v1/verify/` alone). The server loop answers these
/// paths with [`forward_auth_answer`] without going through the router.
pub(super) fn is_forward_auth_path(path: &str) -> bool {
    match path.strip_prefix(VERIFY_PATH) {
        Some("") => true,
        Some(rest) => rest.len() > 1 && rest.starts_with('/'),
        None => false,
    }
}

/// Forward-auth as the server loop calls it for a request on an
/// [`is_forward_auth_path`], from `peer`: 200 with the `X-Auth-*` headers, or the refusal.
///
/// The router's handler gives the same answer; this skips the router's per-request work
/// (matching the path, boxing the handler's future, the route's request extensions), a fifth
/// of a warm check's instructions (docs/proxies-bench.md, "The verifier's share of a check").
/// Forward-auth never reads a body and has no layers, so nothing else differs.
pub(super) fn forward_auth_answer(state: &Services, parts: &Parts, peer: Peer) -> Response {
    answer(state, parts, Some(peer), Instant::now())
}

// Never inlined: `benches/proxies/route_cost.sh` counts the instructions inside it.
#[inline(never)]
fn answer(state: &Services, parts: &Parts, peer: Option<Peer>, started: Instant) -> Response {
    let result = state
        .verifier_api()
        .and_then(|api| decide(api, parts, peer, started));
    match result {
        Ok(verified) => allowed(&verified).unwrap_or_else(IntoResponse::into_response),
        Err(error) => error.into_response(),
    }
}

fn decide(
    api: &VerifierApi,
    parts: &Parts,
    peer: Option<Peer>,
    started: Instant,
) -> Result<Verified, ApiError> {
    let presented = Presented {
        headers: &parts.headers,
        peer,
        proxies: Some(&api.trusted_proxies),
    };
    decide_check(api, presented, || api.requirement(parts, peer), started)
}

/// The forward-auth decision, whichever protocol asked (`/v1/verify` or the gRPC `Check`):
/// exactly one bearer token from `presented.headers`, then the requirement, then the
/// decider, which verifies, counts the outcome and records an accepted token's use with the
/// client `presented` names. A refusal before verification is counted too.
///
/// # Errors
///
/// The refusal, as [`ApiError`]: its status, challenge and body are the answer.
pub(super) fn decide_check(
    api: &VerifierApi,
    presented: Presented<'_>,
    requirement: impl FnOnce() -> Result<Option<Need>, ApiError>,
    started: Instant,
) -> Result<Verified, ApiError> {
    let refused = |error: ApiError| {
        api.decider.record(&error, started);
        error
    };
    let token = bearer_token(presented.headers).map_err(refused)?;
    let requirement = requirement().map_err(refused)?;
    api.decider
        .decide_warm(token, requirement.as_deref(), started, Some(presented))
}

/// The `X-Auth-*` headers a proxy copies to the upstream.
pub const AUTH_HEADERS: [&str; 5] = [
    "x-auth-subject",
    "x-auth-tenant",
    "x-auth-scope",
    "x-auth-token-id",
    "x-auth-expires",
];

/// [`AUTH_HEADERS`] as header names, checked at compile time rather than on every answer.
pub(super) const AUTH_HEADER_NAMES: [HeaderName; 5] = [
    HeaderName::from_static(AUTH_HEADERS[0]),
    HeaderName::from_static(AUTH_HEADERS[1]),
    HeaderName::from_static(AUTH_HEADERS[2]),
    HeaderName::from_static(AUTH_HEADERS[3]),
    HeaderName::from_static(AUTH_HEADERS[4]),
];

/// 200 with the `X-Auth-*` headers of `verified` (built once per cached token, see `memo`).
fn allowed(verified: &Verified) -> Result<Response, ApiError> {
    let headers = answer_headers(verified)?;
    let mut response = StatusCode::OK.into_response();
    *response.headers_mut() = headers;
    Ok(response)
}

/// The headers of an allowed answer: the [`AUTH_HEADERS`] with the claims' values, plus
/// `Cache-Control: no-store` and `Content-Length: 0` (built once per cached token).
///
/// # Errors
///
/// [`ApiError::Internal`] if a claim is not a valid header value (a bug: claims are
/// validated to a header-safe alphabet).
pub(super) fn answer_headers(verified: &Verified) -> Result<HeaderMap, ApiError> {
    memo::answer_headers(verified, auth_headers)
}

/// The headers of an allowed answer for `claims`, built afresh (see [`answer_headers`]).
///
/// # Errors
///
/// As [`answer_headers`].
pub(super) fn auth_headers(claims: &Claims) -> Result<HeaderMap, ApiError> {
    // Every claim was validated to a header-safe alphabet; a failure here is a bug.
    let text =
        |value: &str| HeaderValue::from_str(value).map_err(|e| ApiError::Internal(Box::new(e)));
    let values = [
        text(claims.subject.as_str())?,
        text(claims.tenant.as_str())?,
        text(&claims.scope.to_claim())?,
        text(claims.token_id.as_str())?,
        HeaderValue::from(claims.expires_at.unix_timestamp()),
    ];
    let mut headers = HeaderMap::with_capacity(AUTH_HEADER_NAMES.len() + 2);
    for (name, value) in AUTH_HEADER_NAMES.into_iter().zip(values) {
        headers.insert(name, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Set here, with the rest, so the router does not add it to a full map on every answer.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(headers)
}

/// No `Debug`: it holds a raw token.
#[derive(Deserialize)]
pub(crate) struct IntrospectForm {
    pub(crate) token: String,
    #[serde(rename = "token_type_hint")]
    _hint: Option<String>,
}

/// The RFC 7662 form of an introspection body: `token` exactly once, `token_type_hint` at
/// most once; other parameters are ignored (RFC 7662 §2.1 lets a server define extensions).
/// One function, so the handler and the fuzz target read bodies the same way.
pub(crate) fn introspect_form(body: &[u8]) -> Result<IntrospectForm, ApiError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

/// RFC 7662 token introspection for authenticated clients.
async fn introspect(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let api = state.verifier_api()?;
    if api.introspection.is_empty() {
        return Err(ApiError::NotFound);
    }
    let authorization = single_header(request.headers(), header::AUTHORIZATION.as_str())?.cloned();
    // Kept for usage: the body read below consumes the request. Introspection is not the warm
    // path, so a copy of the headers is affordable.
    let (headers, peer) = (
        request.headers().clone(),
        super::bearer::peer_of(request.extensions()),
    );
    let is_form = has_media_type(request.headers(), "application/x-www-form-urlencoded");
    // The body (under the body limit) is read before the caller is authenticated: a refusal
    // that left it unread would make hyper drop the keep-alive connection without saying so.
    let bytes = body_bytes(request, &()).await?;
    if !api.introspection.authenticate(authorization.as_ref()) {
        return Err(ApiError::Unauthenticated);
    }
    if !is_form {
        return Err(ApiError::bad_request(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let form = introspect_form(&bytes)?;
    let presented = Presented {
        headers: &headers,
        peer,
        proxies: Some(&api.trusted_proxies),
    };
    let decided = api.decider.decide_warm(
        &form.token,
        Some(&Requirement::any()),
        Instant::now(),
        Some(presented),
    );
    let body = match decided.map(Verified::into_claims) {
        Ok(claims) => serde_json::json!({
            "active": true,
            "sub": claims.subject.as_str(),
            "tenant": claims.tenant.as_str(),
            "scope": claims.scope.to_claim(),
            "exp": claims.expires_at.unix_timestamp(),
            "iat": claims.issued_at.unix_timestamp(),
            "nbf": claims.not_before.unix_timestamp(),
            "jti": claims.token_id.as_str(),
            "iss": claims.issuer,
            "aud": claims.audience,
            "token_type": "access_token",
        }),
        Err(_) => serde_json::json!({ "active": false }),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> IntrospectionClients {
        IntrospectionClients::new(&[IntrospectionClient {
            id: "gw".into(),
            secret: "a".repeat(32),
        }])
    }

    fn basic(text: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[test]
    fn introspection_client_needs_its_own_id_and_secret() {
        let clients = clients();
        assert!(clients.authenticate(Some(&basic(&format!("gw:{}", "a".repeat(32))))));
        assert!(!clients.authenticate(Some(&basic(&format!("gw:{}", "b".repeat(32))))));
        assert!(!clients.authenticate(Some(&basic(&format!("other:{}", "a".repeat(32))))));
        assert!(!clients.authenticate(Some(&basic("gw"))));
        assert!(!clients.authenticate(None));
        assert!(!clients.authenticate(Some(&HeaderValue::from_static("Bearer x"))));
    }

    #[test]
    fn debug_shows_ids_only() {
        let text = format!("{:?}", clients());
        assert!(text.contains("gw") && !text.contains("aaaa"));
    }

    #[test]
    fn forward_auth_paths_are_exactly_those_the_router_gives_forward_auth() {
        // `/v1/verify` and `/v1/verify/{*original}` (a catch-all never matches an empty rest).
        for path in [
            "/v1/verify",
            "/v1/verify/x",
            "/v1/verify//",
            "/v1/verify/api/a/runs/1",
        ] {
            assert!(is_forward_auth_path(path), "{path}");
        }
        for path in [
            "/v1/verify/",
            "/v1/verifyx",
            "/v1/verif",
            "/v1/%76erify",
            "/",
            "",
        ] {
            assert!(!is_forward_auth_path(path), "{path}");
        }
    }

    #[test]
    fn query_requirement_parses_tenant_and_permission_strictly() {
        let need = query_requirement("tenant=acme&permission=runs:read")
            .unwrap()
            .unwrap();
        assert_eq!(need.tenant.unwrap().as_str(), "acme");
        assert!(
            query_requirement("&").unwrap().is_none(),
            "no parameter, no requirement"
        );
        assert!(query_requirement("other=").is_err());
        for bad in [
            "tenant=Acme",
            "permission=runs",
            "scope=x",
            "tenant=a&tenant=b",
        ] {
            assert!(query_requirement(bad).is_err(), "{bad}");
        }
    }
}
