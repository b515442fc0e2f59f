//! Envoy's gRPC `ext_authz` (SPEC §5, issue 12): `envoy.service.auth.v3.Authorization/Check`
//! on its own listener (`verifier.grpc_listen`), answering exactly what `/v1/verify` answers.
//!
//! The decision is `/v1/verify`'s own ([`super::verifier::decide_check`]): one bearer token,
//! the route policy, the decider (verification, metrics, usage). Only the mapping lives here:
//!
//! - **In**: the client's headers from `attributes.request.http` (`headers`, or `header_map`
//!   when Envoy sends raw headers); route mode from `attributes.request.http.method` and
//!   `path` (the request target, query included, never read as a query-mode requirement, as
//!   for the Envoy HTTP path form); the client address for "last used" from
//!   `attributes.source.address`, Envoy's view of the downstream peer.
//! - **Out**: allowed is `OK` with `OkHttpResponse.headers` = the `X-Auth-*` headers, each
//!   `OVERWRITE_IF_EXISTS_OR_ADD` so a client's value is replaced, and every other client
//!   `x-auth-*` in `headers_to_remove`. Refused is `DeniedHttpResponse` with the status, the
//!   headers (one `WWW-Authenticate`, `Content-Type`) and the JSON body that `ApiError`
//!   gives `/v1/verify`, with gRPC status `UNAUTHENTICATED` (401), `PERMISSION_DENIED` (403)
//!   or `UNAVAILABLE` (503: not ready, revocation state stale).
//!
//! # Security
//!
//! A `Check` says which request to judge and who sent it: its attributes are believed only
//! from a gRPC peer in `verifier.trusted_proxies`, as forwarded headers are over HTTP. From
//! any other peer the request is unmatched (so `unmatched` decides, `deny` by default) and
//! the peer itself is recorded as the client. The listener has no authentication of its own:
//! bind it where only Envoy reaches it, never where clients can.

use std::future::Future;
use std::net::IpAddr;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse as _;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::google::rpc;
use tokio::net::TcpListener;

use super::bearer::Presented;
use super::error::ApiError;
use super::verifier::{AUTH_HEADERS, VerifierApi, answer_headers, decide_check};
use super::{AppState, error::ErrorChain};
use crate::token::warm::Verified;

/// Serves `Check` on `listener` until `shutdown` completes.
///
/// # Errors
///
/// tonic's transport error if serving fails.
pub async fn serve_grpc(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            AuthorizationServer::new(Check { state }),
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}

/// The `Authorization` service.
#[derive(Debug)]
struct Check {
    state: AppState,
}

#[tonic::async_trait]
impl Authorization for Check {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let peer = request.remote_addr().map(|address| address.ip());
        let check = request.into_inner();
        let original = original(&check);
        let decided = self
            .state
            .verifier_api()
            .and_then(|api| decide(api, &original, peer, started));
        let response = match decided.and_then(|verified| allowed(&verified, &original.headers)) {
            Ok(response) => response,
            Err(error) => denied(error).await,
        };
        Ok(tonic::Response::new(response))
    }
}

/// The parts of a `Check` the decision reads.
#[derive(Debug, Default)]
struct Original<'a> {
    method: &'a str,
    target: &'a str,
    headers: HeaderMap,
    source: Option<IpAddr>,
}

/// The method, target, headers and source address in `check`'s attributes (empty when
/// absent: no headers is no token, so 401). A header whose name or value HTTP would not carry
/// is left out, and so are Envoy's pseudo-headers (`:path`, ...).
fn original(check: &CheckRequest) -> Original<'_> {
    let Some(attributes) = check.attributes.as_ref() else {
        return Original::default();
    };
    let source = attributes
        .source
        .as_ref()
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| match &address.address {
            Some(Address::SocketAddress(socket)) => socket.address.parse::<IpAddr>().ok(),
            _ => None,
        })
        .map(|ip| ip.to_canonical());
    let Some(http) = attributes.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return Original {
            source,
            ..Original::default()
        };
    };
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: &[u8]| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    };
    match &http.header_map {
        // `encode_raw_headers`: each header as sent, repeated ones kept apart.
        Some(map) => {
            for header in &map.headers {
                let value = if header.raw_value.is_empty() {
                    header.value.as_bytes()
                } else {
                    &header.raw_value
                };
                add(&header.key, value);
            }
        }
        // Repeated headers arrive joined by `,`: two `Authorization` headers become one value
        // that is not a single bearer token, so they are refused as over HTTP.
        None => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes());
            }
        }
    }
    Original {
        method: &http.method,
        target: &http.path,
        headers,
        source,
    }
}

/// `/v1/verify`'s decision for `check`, asked by gRPC peer `peer`.
fn decide(
    api: &VerifierApi,
    original: &Original<'_>,
    peer: Option<IpAddr>,
    started: Instant,
) -> Result<Verified, ApiError> {
    // Envoy's view of the client, from a trusted Envoy; else the caller itself.
    let client = if api.is_trusted(peer) {
        original.source.or(peer)
    } else {
        peer
    };
    let presented = Presented {
        headers: &original.headers,
        peer: client,
        // The address is settled above: the client's own X-Real-IP or X-Forwarded-For (in
        // `headers`) are never read.
        proxies: None,
    };
    decide_check(
        api,
        presented,
        || Ok(api.original_requirement(peer, original.method, original.target)),
        started,
    )
}

/// `OK`: the `X-Auth-*` headers replace the client's, and the client's other `x-auth-*`
/// (`client`) are removed.
fn allowed(verified: &Verified, client: &HeaderMap) -> Result<CheckResponse, ApiError> {
    let answer = answer_headers(verified)?;
    let headers = AUTH_HEADERS
        .iter()
        .filter_map(|name| answer.get(*name).map(|value| overwrite(name, value)))
        .collect();
    let headers_to_remove = client
        .keys()
        .map(HeaderName::as_str)
        .filter(|name| name.starts_with("x-auth-") && !AUTH_HEADERS.contains(name))
        .map(str::to_owned)
        .collect();
    Ok(CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok.into(),
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    })
}

/// A header that replaces any value of the same name.
fn overwrite(name: &str, value: &HeaderValue) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader {
            key: name.to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ..EnvoyHeader::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// The refusal `/v1/verify` answers with, as a `DeniedHttpResponse`: `ApiError`'s own
/// response (status, headers, JSON body), so both protocols say the same.
async fn denied(error: ApiError) -> CheckResponse {
    let code = match error.status() {
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    };
    let (parts, body) = error.into_response().into_parts();
    // The body is a small JSON object already in memory.
    let body = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "reading an error body");
            String::new()
        }
    };
    let headers = parts
        .headers
        .iter()
        // Envoy sets the length of the body it sends.
        .filter(|(name, _)| *name != axum::http::header::CONTENT_LENGTH)
        .map(|(name, value)| overwrite(name.as_str(), value))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: code.into(),
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers,
            body,
        })),
        ..CheckResponse::default()
    }
}
