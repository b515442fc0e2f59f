//! The route policy's request-target matcher (`policy::decode_path` and
//! `RoutePolicy::requirement`), also differentially. Input: the method, a newline, the raw
//! target (no newline: `GET` and the whole input).
//!
//! Properties: a decoded segment is never `.` or `..` and holds no `/`, `\`, `%` or control
//! character; and a path that decodes round-trips: its segments, percent-encoded again and
//! joined, decode to the same segments and match the same route with the same requirement
//! (or the same refusal).

#![no_main]

use std::sync::OnceLock;

use edgetoken::fuzzing::decode_path;
use edgetoken::policy::{MAX_PATH_BYTES, RoutePolicy};
use edgetoken_fuzz::route_policy;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986 unreserved characters is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn policy() -> &'static RoutePolicy {
    static POLICY: OnceLock<RoutePolicy> = OnceLock::new();
    POLICY.get_or_init(route_policy)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, target) = text.split_once('\n').unwrap_or(("GET", text));
    let matched = policy()
        .requirement(method, target)
        .map(|m| m.map(|m| (m.pattern.to_owned(), m.requirement)));
    let Ok(segments) = decode_path(target) else {
        assert!(matched.is_err(), "a refused path matched a route");
        return;
    };
    for segment in &segments {
        assert!(segment != "." && segment != "..", "dot segment {segment:?}");
        assert!(
            !segment
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '%') || c.is_control()),
            "ambiguous segment {segment:?}"
        );
    }
    let encoded: Vec<String> = segments
        .iter()
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect();
    let again = format!("/{}", encoded.join("/"));
    if again.len() > MAX_PATH_BYTES {
        return;
    }
    assert_eq!(decode_path(&again).as_ref(), Ok(&segments), "{again:?}");
    let rematched = policy()
        .requirement(method, &again)
        .map(|m| m.map(|m| (m.pattern.to_owned(), m.requirement)));
    assert_eq!(
        matched, rematched,
        "{target:?} and {again:?} match differently"
    );
});
