//! The access decision shared by forward-auth (`/v1/verify`) and the in-process layer
//! (SPEC §5, §6): read exactly one bearer token, verify it against a requirement, record the
//! outcome, and (with the `server` feature) ask for a JWKS refetch when the `kid` is unknown.
//! An accepted token's use is handed to the [`UsageRecorder`], when there is one, with the
//! client it came from (see [`client_address`]).
//!
//! # Security
//!
//! The token and the `Authorization` header are never logged; decisions log `jti`, `kid`,
//! `tenant` and `reason` at debug level, and metrics count every outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, header};

use super::error::ApiError;
#[cfg(feature = "server")]
use super::jwks::JwksRefresher;
use crate::metrics::Metrics;
use crate::proxies::{Peer, TrustedProxies};
#[cfg(feature = "server")]
use crate::token::Rejection;
use crate::token::warm::Verified;
use crate::token::{Claims, Requirement, Verifier};
use crate::usage::{Presenter, UsageRecorder};

/// The bearer token of `headers`: exactly one `Authorization` header, scheme `Bearer` in any
/// case, one or more spaces, then one token of RFC 6750 `b64token` characters and nothing
/// else.
///
/// # Errors
///
/// [`ApiError::MissingToken`] without an `Authorization` header;
/// [`ApiError::MalformedAuthorization`] for two headers, another scheme, an empty or
/// space-separated token, or bytes outside `b64token`.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(ApiError::MissingToken)?;
    if values.next().is_some() {
        return Err(ApiError::MalformedAuthorization);
    }
    // One pass over the bytes: the scheme, then the RFC 6750 `b64token` alphabet (which is
    // visible ASCII, so the text needs no separate `to_str` check).
    let bytes = value.as_bytes();
    let space = bytes
        .iter()
        .position(|b| *b == b' ')
        .ok_or(ApiError::MalformedAuthorization)?;
    let (scheme, rest) = bytes.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(ApiError::MalformedAuthorization);
    }
    let start = rest.iter().take_while(|b| **b == b' ').count();
    let token = rest.get(start..).unwrap_or_default();
    let padding = token.iter().rev().take_while(|b| **b == b'=').count();
    let body = token.get(..token.len() - padding).unwrap_or_default();
    // A fold without early exit, so the check over a whole (about 500-byte) token
    // vectorises; an early-exit `all` ran byte by byte at a few percent of a warm request.
    let is_b64token = body
        .iter()
        .fold(true, |valid, &b| valid & is_b64token_byte(b));
    if body.is_empty() || !is_b64token {
        return Err(ApiError::MalformedAuthorization);
    }
    let token = std::str::from_utf8(token).map_err(|_| ApiError::MalformedAuthorization)?;
    Ok(token)
}

/// Whether `b` is in RFC 6750's `b64token` alphabet (before the `=` padding),
/// `A-Z a-z 0-9 - . _ ~ + /`, without branches and in few comparisons: `- . /` and the digits
/// are the one range `0x2D..=0x39`, and `| 0x20` folds upper case onto lower.
#[expect(
    clippy::needless_bitwise_bool,
    reason = "no branches, so the check over a whole token vectorises"
)]
fn is_b64token_byte(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'-') <= b'9' - b'-')
        | (b == b'+')
        | (b == b'_')
        | (b == b'~')
}

/// The peer of a request served by `http::serve` (or by `axum::serve` with `ConnectInfo`): its
/// TCP address, or [`Peer::Unix`] over a Unix socket. `None` when the request came some other
/// way (a test's `oneshot`).
pub(crate) fn peer_of(extensions: &axum::http::Extensions) -> Option<Peer> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| Peer::Ip(address.ip()))
        .or_else(|| extensions.get::<Peer>().copied())
}

/// The client address of a request from peer `peer`: when the peer is one of `proxies`,
/// the address it forwards (`X-Real-IP`, else the right-most `X-Forwarded-For` entry that is
/// not itself a trusted proxy), else the peer's own address (none for a Unix-socket peer).
///
/// # Security
///
/// Forwarded headers from any other peer are ignored, as for the route headers: a client
/// cannot choose the address recorded for its use. A forwarded value that does not parse
/// stops the walk and the peer's own address is used.
pub fn client_address(
    headers: &HeaderMap,
    peer: Option<Peer>,
    proxies: Option<&TrustedProxies>,
) -> Option<IpAddr> {
    let peer = peer?;
    let own = peer.ip().map(|ip| ip.to_canonical());
    let Some(proxies) = proxies.filter(|p| p.trusts(peer)) else {
        return own;
    };
    let mut real = headers.get_all("x-real-ip").iter();
    if let (Some(value), None) = (real.next(), real.next()) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .or(own);
    }
    let mut hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or(",").rsplit(','));
    let mut nearest = own;
    for hop in hops.by_ref() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return own;
        };
        let ip = ip.to_canonical();
        nearest = Some(ip);
        if !proxies.contains(ip) {
            return nearest;
        }
    }
    nearest
}

/// The request an accepted token came with, from which usage takes the client address and
/// user agent, worked out only when a use is recorded with addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Presented<'a> {
    /// The request headers.
    pub(crate) headers: &'a HeaderMap,
    /// The connection's peer, when known.
    pub(crate) peer: Option<Peer>,
    /// Peers whose forwarded headers are trusted (none for the layer).
    pub(crate) proxies: Option<&'a TrustedProxies>,
}

impl<'a> Presented<'a> {
    fn presenter(&self) -> Presenter<'a> {
        Presenter {
            address: client_address(self.headers, self.peer, self.proxies),
            agent: self
                .headers
                .get(header::USER_AGENT)
                .map(axum::http::HeaderValue::as_bytes),
        }
    }
}

/// Verifies tokens for HTTP callers: the verifier plus what surrounds a decision.
#[derive(Debug, Clone)]
pub struct Decider {
    verifier: Arc<Verifier>,
    metrics: Option<Arc<Metrics>>,
    usage: Option<UsageRecorder>,
    #[cfg(feature = "server")]
    jwks: Option<Arc<JwksRefresher>>,
}

impl Decider {
    /// Decides with `verifier`; add metrics and a JWKS refresher with the builders.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            metrics: None,
            usage: None,
            #[cfg(feature = "server")]
            jwks: None,
        }
    }

    /// Records every accepted token's use in `usage`.
    #[must_use]
    pub fn with_usage(mut self, usage: UsageRecorder) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The usage recorder, if usage is recorded.
    pub fn usage(&self) -> Option<&UsageRecorder> {
        self.usage.as_ref()
    }

    /// Records every decision in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Requests a refetch from `jwks` whenever a token names an unknown `kid`.
    #[cfg(feature = "server")]
    #[must_use]
    pub fn with_jwks(mut self, jwks: Arc<JwksRefresher>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// The verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Verifies `token` against `requirement`, recording the outcome. `None` means no
    /// requirement could be found and the request is denied: the token is still verified
    /// first, so a bad token answers 401 and only a good one 403 `no_route`.
    ///
    /// # Errors
    ///
    /// [`ApiError::Token`] with the rejection (401, 403 or 503), or [`ApiError::NoRoute`].
    pub fn decide(
        &self,
        token: &str,
        requirement: Option<&Requirement>,
    ) -> Result<Arc<Claims>, ApiError> {
        self.decide_since(token, requirement, Instant::now())
    }

    /// As [`Decider::decide`], timing the decision from `started` (when the caller already
    /// read the clock for this request).
    ///
    /// # Errors
    ///
    /// As [`Decider::decide`].
    pub fn decide_since(
        &self,
        token: &str,
        requirement: Option<&Requirement>,
        started: Instant,
    ) -> Result<Arc<Claims>, ApiError> {
        self.decide_warm(token, requirement, started, None)
            .map(Verified::into_claims)
    }

    /// As [`Decider::decide_since`], telling claims served from the verified-token cache from
    /// claims verified afresh (see [`Verifier::verify_warm`]), and recording an accepted
    /// token's use with the client of `presented` (no address without it).
    pub(crate) fn decide_warm(
        &self,
        token: &str,
        requirement: Option<&Requirement>,
        started: Instant,
        presented: Option<Presented<'_>>,
    ) -> Result<Verified, ApiError> {
        let any = Requirement::any();
        let result = self
            .verifier
            .verify_warm(token, requirement.unwrap_or(&any));
        let outcome = match &result {
            Ok(claims) => {
                tracing::debug!(
                    jti = claims.token_id.as_str(),
                    kid = claims.kid.as_str(),
                    tenant = claims.tenant.as_str(),
                    reason = if requirement.is_some() {
                        "ok"
                    } else {
                        "no_route"
                    },
                    "access decided"
                );
                if requirement.is_some() {
                    "ok"
                } else {
                    "no_route"
                }
            }
            Err(rejection) => {
                tracing::debug!(reason = rejection.code(), "token rejected");
                #[cfg(feature = "server")]
                if *rejection == Rejection::UnknownKey
                    && let Some(jwks) = &self.jwks
                {
                    jwks.request_refetch();
                }
                rejection.code()
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics.record_decision(outcome, started.elapsed());
        }
        match result {
            Ok(_) if requirement.is_none() => Err(ApiError::NoRoute),
            Ok(claims) => {
                if let Some(usage) = &self.usage {
                    usage.record(&claims, || {
                        presented.map_or_else(Presenter::default, |request| request.presenter())
                    });
                }
                Ok(claims)
            }
            Err(rejection) => Err(ApiError::Token(rejection)),
        }
    }

    /// Records an outcome decided without (or after) verification: one of
    /// [`crate::metrics::DECISION_OUTCOMES`].
    pub fn record(&self, error: &ApiError, started: Instant) {
        if let Some(metrics) = &self.metrics {
            metrics.record_decision(error.code(), started.elapsed());
        }
        tracing::debug!(reason = error.code(), "request refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn forwarded(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn client_address_honours_forwarded_headers_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let peer = |s: &str| Some(Peer::Ip(s.parse::<IpAddr>().unwrap()));
        let xff = forwarded(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_address(&xff, peer("127.0.0.1"), Some(&proxies)),
            ip("198.51.100.7"),
            "right-most address that is not a trusted proxy"
        );
        assert_eq!(
            client_address(&xff, peer("192.0.2.1"), Some(&proxies)),
            ip("192.0.2.1"),
            "an untrusted peer's headers are ignored"
        );
        assert_eq!(
            client_address(&xff, peer("127.0.0.1"), None),
            ip("127.0.0.1")
        );
        let real = forwarded(&[
            ("x-real-ip", "198.51.100.8"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(
            client_address(&real, peer("127.0.0.1"), Some(&proxies)),
            ip("198.51.100.8")
        );
        let junk = forwarded(&[("x-forwarded-for", "not-an-ip, 198.51.100.7")]);
        assert_eq!(
            client_address(&junk, peer("127.0.0.1"), Some(&proxies)),
            ip("198.51.100.7")
        );
        let only_junk = forwarded(&[("x-forwarded-for", "198.51.100.7, junk")]);
        assert_eq!(
            client_address(&only_junk, peer("127.0.0.1"), Some(&proxies)),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(&HeaderMap::new(), peer("::ffff:127.0.0.1"), Some(&proxies)),
            ip("127.0.0.1")
        );
        // A Unix-socket peer has no address of its own: a trusted one's forwarded address, or
        // none at all.
        let local = TrustedProxies::parse(&["unix"]).unwrap();
        let unix = Some(Peer::Unix);
        assert_eq!(client_address(&xff, unix, Some(&local)), ip("10.1.1.1"));
        assert_eq!(
            client_address(&real, unix, Some(&local)),
            ip("198.51.100.8")
        );
        assert_eq!(client_address(&HeaderMap::new(), unix, Some(&local)), None);
        assert_eq!(client_address(&only_junk, unix, Some(&local)), None);
        assert_eq!(
            client_address(&xff, unix, Some(&proxies)),
            None,
            "untrusted"
        );
        assert_eq!(client_address(&xff, unix, None), None);
    }

    #[test]
    fn scheme_is_case_insensitive() {
        for value in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER  abc.def.ghi",
        ] {
            assert_eq!(bearer_token(&headers(&[value])).unwrap(), "abc.def.ghi");
        }
    }

    #[test]
    fn b64token_alphabet_is_exactly_rfc_6750() {
        for b in 0..=u8::MAX {
            let expected =
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
            assert_eq!(is_b64token_byte(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn missing_header_is_missing_token() {
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(ApiError::MissingToken)
        ));
    }

    #[test]
    fn anything_but_exactly_one_bearer_token_is_malformed() {
        for value in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearerabc",
            "Bearer abc ",
            "Bearer a\"b",
            "Bearer \tabc",
            "Bearer\tabc",
        ] {
            assert!(
                matches!(
                    bearer_token(&headers(&[value])),
                    Err(ApiError::MalformedAuthorization)
                ),
                "{value}"
            );
        }
        assert!(matches!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(ApiError::MalformedAuthorization)
        ));
    }
}
