//! Envoy's gRPC `ext_authz` (SPEC §5, issue 12): `envoy.service.auth.v3.Authorization/Check`
//! on its own listener (`verifier.grpc_listen`), answering exactly what `/v1/verify` answers.
//!
//! The decision is `/v1/verify`'s own (`verifier::decide_check`): one bearer token,
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::IntoResponse as _;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::HeaderValue as EnvoyHeader;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::google::rpc;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use super::bearer::Presented;
use super::error::ApiError;
use super::server::ServerLimits;
use super::verifier::{AUTH_HEADER_NAMES, AUTH_HEADERS, VerifierApi, auth_headers, decide_check};
use super::{AppState, error::ErrorChain, memo};
use crate::proxies::Peer;
use crate::token::Claims;
use crate::token::warm::Verified;

/// How long a connection may leave an HTTP/2 ping unanswered, and how often one is sent: a
/// dead or frozen peer's connection (and its slot under the connection limit) is released
/// within the sum, where TCP alone would keep it for the kernel's keep-alive time (hours).
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest `CheckRequest` accepted (tonic's default is 4 MiB). The deployed Envoy sends
/// one header and no body; 256 KiB holds Envoy's own request-header limit (60 KiB by default)
/// several times over.
const MAX_CHECK_BYTES: usize = 256 * 1024;
/// How long accepting pauses after an `accept` error.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// The client headers a decision reads: every `Authorization` (two are refused) and the
/// `User-Agent` recorded for "last used". Client addresses come from the check's attributes,
/// never from forwarded headers, so no other header is parsed (each would cost a header-name
/// parse and a copy on every check).
const READ_HEADERS: [HeaderName; 2] = [header::AUTHORIZATION, header::USER_AGENT];
/// The prefix of the headers an allowed answer sets, and of the client's that it removes.
const AUTH_PREFIX: &str = "x-auth-";

/// Serves `Check` on `listener` until `shutdown` completes, within `limits`: at most
/// `limits.max_connections` connections at once (further ones wait in the kernel's accept
/// queue until one closes), HTTP/2 keep-alive pings that close a peer that stops answering,
/// and a bound on the size of one `CheckRequest`.
///
/// The HTTP listener's header-read and idle timeouts have no counterpart here: the listener
/// serves Envoy only (see the module docs), which keeps a few long-lived HTTP/2 connections
/// and multiplexes every check over them; closing idle ones would only cost reconnects.
/// A check never waits on I/O, so there is no request timeout either (Envoy has its own).
///
/// # Errors
///
/// tonic's transport error if serving fails.
pub async fn serve_grpc(
    listener: TcpListener,
    state: AppState,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service =
        AuthorizationServer::new(Check { state }).max_decoding_message_size(MAX_CHECK_BYTES);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(PING_INTERVAL))
        .http2_keepalive_timeout(Some(PING_TIMEOUT))
        .serve_with_incoming_shutdown(service, limited(listener, limits.max_connections), shutdown)
        .await
}

/// `listener`'s connections, at most `max` open at once: the next one is accepted only when
/// a permit is free, and each connection holds its permit until it is dropped.
fn limited(
    listener: TcpListener,
    max: usize,
) -> impl futures_util::Stream<Item = std::io::Result<Limited>> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let permits = Arc::new(Semaphore::new(max.max(1)));
    futures_util::stream::unfold((incoming, permits), |(mut incoming, permits)| async move {
        // The semaphore is never closed, so acquiring only waits.
        let permit = Arc::clone(&permits).acquire_owned().await.ok()?;
        let accepted = incoming.next().await?;
        if accepted.is_err() {
            // tonic skips a failed accept and asks again at once: out of descriptors, that
            // would spin. The HTTP listener pauses the same way.
            tokio::time::sleep(ACCEPT_RETRY).await;
        }
        let connection = accepted.map(|stream| Limited {
            stream,
            _permit: permit,
        });
        Some((connection, (incoming, permits)))
    })
}

/// A gRPC connection holding its place under the connection limit.
#[derive(Debug)]
struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    /// The TCP addresses, as tonic gives them for a plain `TcpStream` (`remote_addr()`).
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
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
        let response = match decided.and_then(|verified| allowed(&verified, &original.forged)) {
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
    /// The client's [`READ_HEADERS`].
    headers: HeaderMap,
    /// The client's own `x-auth-*` headers that an allowed answer does not set, each name
    /// once, sorted: an allowed answer removes them.
    forged: Vec<HeaderName>,
    source: Option<IpAddr>,
}

/// The method, target, headers the decision reads and source address in `check`'s
/// attributes (empty when absent: no headers is no token, so 401), and the client's other
/// `x-auth-*` header names. A read header whose name or value HTTP would not carry is left
/// out, and so is an `x-auth-*` name HTTP would not carry (its value does not matter: it is
/// removed, not read); Envoy's pseudo-headers (`:path`, ...) are neither.
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
    let mut forged = Vec::new();
    let mut add = |name: &str, value: &[u8]| {
        // Names compared as HTTP compares them, without case (Envoy sends them lower-cased).
        if let Some(read) = READ_HEADERS
            .iter()
            .find(|read| name.eq_ignore_ascii_case(read.as_str()))
        {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(read.clone(), value);
            }
        } else if name
            .get(..AUTH_PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(AUTH_PREFIX))
            && let Ok(name) = HeaderName::from_bytes(name.as_bytes())
            && !AUTH_HEADERS.contains(&name.as_str())
        {
            forged.push(name);
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
    // Each name once, without a quadratic search: a check may carry many headers.
    forged.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    forged.dedup();
    Original {
        method: &http.method,
        target: &http.path,
        headers,
        forged,
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
    let caller = peer.map(Peer::Ip);
    let presented = Presented {
        headers: &original.headers,
        peer: client(api.is_trusted(caller), peer, original.source).map(Peer::Ip),
        // The address is settled above: the client's own X-Real-IP or X-Forwarded-For are not
        // even parsed (`original` keeps only READ_HEADERS).
        proxies: None,
    };
    decide_check(
        api,
        presented,
        || Ok(api.original_requirement(caller, original.method, original.target)),
        started,
    )
}

/// The client address recorded for "last used": Envoy's view of the downstream peer
/// (`source`) when the gRPC `peer` is a trusted proxy, else the peer itself (as a forwarded
/// address over HTTP).
fn client(is_trusted: bool, peer: Option<IpAddr>, source: Option<IpAddr>) -> Option<IpAddr> {
    let peer = peer.map(|ip| ip.to_canonical());
    if is_trusted { source.or(peer) } else { peer }
}

/// `OK`: the `X-Auth-*` headers replace the client's, and the client's other `x-auth-*`
/// (`forged`) are removed.
fn allowed(verified: &Verified, forged: &[HeaderName]) -> Result<CheckResponse, ApiError> {
    let headers = memo::check_answer_headers(verified, check_auth_headers)?;
    let headers_to_remove = forged.iter().map(|name| name.as_str().to_owned()).collect();
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

/// The `X-Auth-*` headers of an allowed answer for `claims` (`/v1/verify`'s), as header
/// options that replace the client's.
fn check_auth_headers(claims: &Claims) -> Result<Vec<HeaderValueOption>, ApiError> {
    let answer = auth_headers(claims)?;
    Ok(AUTH_HEADER_NAMES
        .iter()
        .filter_map(|name| {
            answer
                .get(name)
                .map(|value| overwrite(name.as_str(), value))
        })
        .collect())
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
        .filter(|(name, _)| *name != header::CONTENT_LENGTH)
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

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{Address as EnvoyAddress, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::http::bearer::Decider;
    use crate::http::verifier::IntrospectionClients;
    use crate::keys::{KeyRing, SigningKey, TrustedKey};
    use crate::revocation::MemoryRevocations;
    use crate::settings::Settings;
    use crate::token::{Issuer, Lifetime, MintRequest, Rejection, Verifier, VerifierSettings};

    #[tokio::test]
    async fn a_connection_past_the_limit_waits_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let incoming = limited(listener, 1);
        let mut incoming = std::pin::pin!(incoming);
        let _first_client = TcpStream::connect(address).await.expect("connect");
        let first = incoming.next().await.expect("open").expect("accepted");
        assert!(first.connect_info().remote_addr().is_some(), "peer known");
        let _second_client = TcpStream::connect(address).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(waiting.is_err(), "second connection taken past the limit");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("taken once the first closed");
        assert!(second.expect("open").is_ok());
    }

    const ROUTES: &str = r#"
[[verifier.routes]]
method = "GET"
path = "/api/{tenant}/runs/*"
permission = "runs:read"

[[verifier.routes]]
method = "POST"
path = "/api/{tenant}/runs"
permission = "runs:write"
"#;

    /// A verifier API with the routes above (loopback trusted) and a `runs:read` token of
    /// alice in acme.
    fn api() -> (VerifierApi, String) {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(1_767_225_600));
        let key = SigningKey::from_seed(&[7; 32]);
        let mut ring = KeyRing::new();
        ring.insert(TrustedKey::from_bytes(&key.public_bytes()).unwrap());
        let verifier = Verifier::new(
            VerifierSettings::new("iss", "aud"),
            ring,
            Arc::new(MemoryRevocations::new()),
            Arc::clone(&clock),
        )
        .unwrap();
        let token = Issuer::new(key, "iss", "aud", clock)
            .mint(&MintRequest {
                subject: "alice".parse().unwrap(),
                tenant: "acme".parse().unwrap(),
                scope: crate::Scope::parse_claim("runs:read").unwrap(),
                lifetime: Lifetime::OneHour,
            })
            .unwrap()
            .token
            .expose()
            .to_owned();
        let settings = Settings::from_toml(ROUTES).unwrap();
        let api = VerifierApi {
            decider: Decider::new(Arc::new(verifier)),
            policy: settings.verifier.policy,
            trusted_proxies: settings.verifier.trusted_proxies,
            introspection: IntrospectionClients::default(),
        };
        (api, token)
    }

    fn check(method: &str, path: &str, headers: &[(&str, &str)], source: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(EnvoyAddress {
                        address: Some(Address::SocketAddress(SocketAddress {
                            address: source.to_owned(),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..Peer::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.to_owned(),
                        path: path.to_owned(),
                        headers: headers
                            .iter()
                            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                            .collect(),
                        ..HttpRequest::default()
                    }),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    /// Envoy's address, in `trusted_proxies` by default.
    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    fn decide_for(
        api: &VerifierApi,
        request: &CheckRequest,
        peer: Option<IpAddr>,
    ) -> Result<Verified, ApiError> {
        decide(api, &original(request), peer, Instant::now())
    }

    #[test]
    fn the_client_is_envoys_source_address_only_from_a_trusted_peer() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client(true, LOOPBACK, ip("198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(client(true, LOOPBACK, None), LOOPBACK);
        assert_eq!(
            client(false, ip("192.0.2.1"), ip("198.51.100.7")),
            ip("192.0.2.1")
        );
        assert_eq!(client(false, ip("::ffff:192.0.2.1"), None), ip("192.0.2.1"));
    }

    #[test]
    fn a_trusted_check_is_judged_by_its_method_and_path() {
        let (api, token) = api();
        let bearer = format!("Bearer {token}");
        let auth = [("authorization", bearer.as_str())];
        let ok = check("GET", "/api/acme/runs/1?page=2", &auth, "198.51.100.7");
        assert!(decide_for(&api, &ok, LOOPBACK).is_ok());
        let write = check("POST", "/api/acme/runs", &auth, "198.51.100.7");
        assert!(matches!(
            decide_for(&api, &write, LOOPBACK),
            Err(ApiError::Token(Rejection::InsufficientScope))
        ));
        let other = check("GET", "/api/globex/runs/1", &auth, "198.51.100.7");
        assert!(matches!(
            decide_for(&api, &other, LOOPBACK),
            Err(ApiError::Token(Rejection::WrongTenant))
        ));
        let unrouted = check("GET", "/api/acme/secrets", &auth, "198.51.100.7");
        assert!(matches!(
            decide_for(&api, &unrouted, LOOPBACK),
            Err(ApiError::NoRoute)
        ));
    }

    #[test]
    fn an_untrusted_callers_request_is_unmatched() {
        let (api, token) = api();
        let bearer = format!("Bearer {token}");
        let request = check(
            "GET",
            "/api/acme/runs/1",
            &[("authorization", &bearer)],
            "198.51.100.7",
        );
        let stranger = Some(IpAddr::from([192, 0, 2, 1]));
        assert!(matches!(
            decide_for(&api, &request, stranger),
            Err(ApiError::NoRoute)
        ));
    }

    #[test]
    fn token_problems_are_refused_before_the_route_as_over_http() {
        let (api, token) = api();
        let none = check("GET", "/api/acme/runs/1", &[], "198.51.100.7");
        assert!(matches!(
            decide_for(&api, &none, LOOPBACK),
            Err(ApiError::MissingToken)
        ));
        // Two Authorization headers arrive joined by a comma: not one bearer token.
        let joined = format!("Bearer {token},Bearer {token}");
        let two = check(
            "GET",
            "/api/acme/runs/1",
            &[("authorization", &joined)],
            "198.51.100.7",
        );
        assert!(matches!(
            decide_for(&api, &two, LOOPBACK),
            Err(ApiError::MalformedAuthorization)
        ));
        // With Envoy's `encode_raw_headers` they arrive apart, in any case: refused too.
        let bearer = format!("Bearer {token}");
        let mut raw = check("GET", "/api/acme/runs/1", &[], "198.51.100.7");
        raw.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .header_map = Some(envoy_types::pb::envoy::config::core::v3::HeaderMap {
            headers: ["Authorization", "authorization"]
                .map(|name| EnvoyHeader {
                    key: name.to_owned(),
                    raw_value: bearer.clone().into_bytes(),
                    ..EnvoyHeader::default()
                })
                .to_vec(),
        });
        assert!(matches!(
            decide_for(&api, &raw, LOOPBACK),
            Err(ApiError::MalformedAuthorization)
        ));
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        let bearer = format!("Bearer {forged}");
        let bad = check(
            "GET",
            "/api/acme/runs/1",
            &[("authorization", &bearer)],
            "198.51.100.7",
        );
        assert!(matches!(
            decide_for(&api, &bad, LOOPBACK),
            Err(ApiError::Token(_))
        ));
    }

    #[test]
    fn original_reads_headers_without_pseudo_headers_and_the_canonical_source() {
        let request = check(
            "GET",
            "/api/acme/runs/1",
            &[
                (":path", "/api/acme/runs/1"),
                (":method", "GET"),
                ("Authorization", "Bearer x"),
                ("user-agent", "curl/8"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-auth-zone", "eu"),
                ("X-Auth-Role", "admin"),
                ("x-auth-role", "root"),
                ("x-auth-subject", "mallory"),
                ("x-auth-bad name", "1"),
            ],
            "::ffff:198.51.100.7",
        );
        let original = original(&request);
        assert_eq!(original.method, "GET");
        assert_eq!(original.target, "/api/acme/runs/1");
        // Only what the decision reads, names in any case.
        assert_eq!(original.headers.len(), 2, "{:?}", original.headers);
        assert_eq!(original.headers["authorization"], "Bearer x");
        assert_eq!(original.headers["user-agent"], "curl/8");
        // The client's x-auth-* that an answer does not set, once each; a name HTTP would not
        // carry is left out.
        assert_eq!(original.forged, ["x-auth-role", "x-auth-zone"]);
        assert_eq!(original.source, Some(IpAddr::from([198, 51, 100, 7])));
        let empty = original_default();
        assert!(empty.headers.is_empty() && empty.forged.is_empty() && empty.source.is_none());
    }

    fn original_default() -> Original<'static> {
        static EMPTY: std::sync::OnceLock<CheckRequest> = std::sync::OnceLock::new();
        original(EMPTY.get_or_init(CheckRequest::default))
    }

    #[test]
    fn allowed_overwrites_the_auth_headers_and_removes_the_clients_others() {
        let (api, token) = api();
        let bearer = format!("Bearer {token}");
        let request = check(
            "GET",
            "/api/acme/runs/1",
            &[
                ("authorization", &bearer),
                ("x-auth-subject", "mallory"),
                ("x-auth-role", "admin"),
            ],
            "198.51.100.7",
        );
        let original = original(&request);
        let verified = decide(&api, &original, LOOPBACK, Instant::now()).unwrap();
        let response = allowed(&verified, &original.forged).unwrap();
        // Seen again the token is cached, and its header options come from this thread's
        // memo: the same answer.
        for _ in 0..3 {
            let again = decide(&api, &original, LOOPBACK, Instant::now()).unwrap();
            assert_eq!(allowed(&again, &original.forged).unwrap(), response);
        }
        let cached = decide(&api, &original, LOOPBACK, Instant::now()).unwrap();
        assert!(
            matches!(cached, Verified::Cached(_)),
            "the token was never cached"
        );
        assert_eq!(response.status.unwrap().code, i32::from(tonic::Code::Ok));
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not an OK response");
        };
        let set: Vec<(&str, &str, i32)> = ok
            .headers
            .iter()
            .map(|option| {
                let header = option.header.as_ref().unwrap();
                (
                    header.key.as_str(),
                    header.value.as_str(),
                    option.append_action,
                )
            })
            .collect();
        let names: Vec<&str> = set.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, AUTH_HEADERS);
        assert!(set.contains(&(
            "x-auth-subject",
            "alice",
            HeaderAppendAction::OverwriteIfExistsOrAdd.into()
        )));
        // `append_action` only: the deprecated `append` stays unset.
        assert!(
            set.iter()
                .all(|(_, _, action)| *action
                    == i32::from(HeaderAppendAction::OverwriteIfExistsOrAdd))
        );
        assert_eq!(ok.headers_to_remove, ["x-auth-role"]);
    }

    #[tokio::test]
    async fn denied_is_the_status_challenge_and_body_of_v1_verify() {
        type Case = (fn() -> ApiError, u16, tonic::Code);
        let cases: [Case; 5] = [
            (|| ApiError::MissingToken, 401, tonic::Code::Unauthenticated),
            (
                || ApiError::Token(Rejection::Expired),
                401,
                tonic::Code::Unauthenticated,
            ),
            (
                || ApiError::Token(Rejection::WrongTenant),
                403,
                tonic::Code::PermissionDenied,
            ),
            (|| ApiError::NoRoute, 403, tonic::Code::PermissionDenied),
            // Not ready, or revocation state too stale: 503 as over HTTP.
            (
                || ApiError::Token(Rejection::Unavailable),
                503,
                tonic::Code::Unavailable,
            ),
        ];
        for (error, status, code) in cases {
            let http = error().into_response();
            let response = denied(error()).await;
            assert_eq!(response.status.unwrap().code, i32::from(code));
            let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
                panic!("not a denied response");
            };
            assert_eq!(denied.status.unwrap().code, i32::from(status));
            let (parts, body) = http.into_parts();
            let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
            assert_eq!(denied.body.as_bytes(), &body[..]);
            let challenge = |options: &[HeaderValueOption]| {
                options
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .filter(|h| h.key == "www-authenticate")
                    .map(|h| h.value.clone())
                    .collect::<Vec<_>>()
            };
            let expected: Vec<String> = parts
                .headers
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(challenge(&denied.headers), expected, "{status}");
            assert!(
                denied
                    .headers
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .any(|h| h.key == "content-type" && h.value == "application/json")
            );
            assert!(
                !denied
                    .headers
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .any(|h| h.key == "content-length")
            );
        }
    }
}
