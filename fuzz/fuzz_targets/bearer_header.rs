//! The `Authorization` header parser (`http::bearer::bearer_token`) and the forwarded client
//! address (`client_address`), which read headers a client controls. Each input line is one
//! header value (so repeated headers are reachable); lines that are not valid header values
//! are dropped, as hyper would refuse them.
//!
//! Properties: an extracted token comes from the one `Authorization` value, after a
//! `Bearer` scheme in any case and spaces, and is non-empty RFC 6750 `b64token`; a client
//! address is always found for a TCP peer; a Unix-socket peer (no address of its own) gets
//! none unless it is trusted.

#![no_main]

use axum::http::{HeaderMap, HeaderValue, header};
use edgetoken::http::bearer::{bearer_token, client_address};
use edgetoken::proxies::{Peer, TrustedProxies};
use libfuzzer_sys::fuzz_target;

fn is_b64token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<HeaderValue> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect();
    let mut headers = HeaderMap::new();
    for value in &values {
        headers.append(header::AUTHORIZATION, value.clone());
    }
    if let Ok(token) = bearer_token(&headers) {
        assert_eq!(values.len(), 1, "a token from more than one header");
        let value = values[0].as_bytes();
        assert!(value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "));
        assert!(
            value.ends_with(token.as_bytes()),
            "the token is not the value's tail"
        );
        let between = &value[6..value.len() - token.len()];
        assert!(
            between.iter().all(|b| *b == b' '),
            "something between scheme and token"
        );
        let body = token.trim_end_matches('=');
        assert!(
            !body.is_empty() && body.bytes().all(is_b64token),
            "not a b64token"
        );
    }

    let proxies =
        TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8", "::1", "unix"]).expect("proxies");
    let mut forwarded = HeaderMap::new();
    for (i, value) in values.into_iter().enumerate() {
        let name = if i % 3 == 2 {
            "x-real-ip"
        } else {
            "x-forwarded-for"
        };
        forwarded.append(name, value);
    }
    for peer in ["127.0.0.1", "192.0.2.1", "::ffff:10.1.2.3"] {
        let peer = peer.parse().ok().map(Peer::Ip);
        assert!(client_address(&forwarded, peer, Some(&proxies)).is_some());
    }
    // Trusted: whatever it forwards, or nothing; untrusted: never a forwarded address.
    let _ = client_address(&forwarded, Some(Peer::Unix), Some(&proxies));
    let untrusted = TrustedProxies::parse(&["127.0.0.1"]).expect("proxies");
    assert!(client_address(&forwarded, Some(Peer::Unix), Some(&untrusted)).is_none());
});
