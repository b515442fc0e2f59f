//! Forward-auth's per-thread memos (SPEC §9: a warm forward-auth answer should cost little
//! more than a bare `200`): the parsed requirement by query string, and the `X-Auth-*` headers
//! of an allowed answer by cached token, as HTTP headers and as gRPC `ext_authz` header
//! options. What they hold is decided here; how they are keyed, held and bounded, and why that
//! is safe, by `token::warm`, which owns every per-thread tier.
//!
//! Nothing here decides access: the token is verified, and its expiry, revocation, tenant and
//! permission checked, on every request before these are consulted.

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::LocalKey;

use axum::http::HeaderMap;
#[cfg(feature = "grpc")]
use envoy_types::ext_authz::v3::pb::HeaderValueOption;

use super::ApiError;
use crate::token::warm::{AnswerMemo, QueryMemo, Verified};
use crate::token::{Claims, Requirement};

thread_local! {
    static QUERIES: RefCell<QueryMemo<Option<Arc<Requirement>>>> =
        const { RefCell::new(QueryMemo::new()) };
    static ANSWERS: RefCell<AnswerMemo<HeaderMap>> = const { RefCell::new(AnswerMemo::new()) };
    #[cfg(feature = "grpc")]
    static CHECK_ANSWERS: RefCell<AnswerMemo<Vec<HeaderValueOption>>> =
        const { RefCell::new(AnswerMemo::new()) };
}

/// `parse(query)`, remembered by `query` when it succeeds. `parse` must depend on the query
/// alone. Failures are not kept: they are rare, and junk must not take room.
///
/// # Errors
///
/// What `parse` returns.
pub(super) fn query_requirement(
    query: &str,
    parse: impl FnOnce(&str) -> Result<Option<Requirement>, ApiError>,
) -> Result<Option<Arc<Requirement>>, ApiError> {
    if !QueryMemo::<()>::admits(query) {
        return Ok(parse(query)?.map(Arc::new));
    }
    if let Some(found) = QUERIES.with_borrow_mut(|memo| memo.find(query)) {
        return Ok(found);
    }
    let parsed = parse(query)?.map(Arc::new);
    QUERIES.with_borrow_mut(|memo| memo.keep(query, parsed.clone()));
    Ok(parsed)
}

/// `build(claims)`, remembered for a cached token's entry. Claims verified afresh (a token
/// seen once so far, or the cache off) are built every time: remembering their answer would
/// only push out those of tokens in use.
///
/// # Errors
///
/// What `build` returns.
pub(super) fn answer_headers(
    verified: &Verified,
    build: impl FnOnce(&Claims) -> Result<HeaderMap, ApiError>,
) -> Result<HeaderMap, ApiError> {
    remembered(&ANSWERS, verified, build)
}

/// [`answer_headers`] for gRPC `ext_authz`: the header options of an `OK` check, built once
/// per cached token rather than converted from the HTTP headers (names looked up, values
/// copied and checked as UTF-8) on every check.
///
/// # Errors
///
/// What `build` returns.
#[cfg(feature = "grpc")]
pub(super) fn check_answer_headers(
    verified: &Verified,
    build: impl FnOnce(&Claims) -> Result<Vec<HeaderValueOption>, ApiError>,
) -> Result<Vec<HeaderValueOption>, ApiError> {
    remembered(&CHECK_ANSWERS, verified, build)
}

/// `build(claims)`, remembered in this thread's `memo` for a cached token's entry; built every
/// time for claims verified afresh.
fn remembered<A: Clone>(
    memo: &'static LocalKey<RefCell<AnswerMemo<A>>>,
    verified: &Verified,
    build: impl FnOnce(&Claims) -> Result<A, ApiError>,
) -> Result<A, ApiError> {
    let Verified::Cached(cached) = verified else {
        return build(verified);
    };
    if let Some(answer) = memo.with_borrow_mut(|memo| memo.find(cached)) {
        return Ok(answer);
    }
    let answer = build(verified)?;
    memo.with_borrow_mut(|memo| memo.keep(cached, answer.clone()));
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TenantId;
    use crate::token::warm::{CacheSettings, QUERY_ENTRIES, QUERY_MAX_BYTES, VerifiedCache};
    use axum::http::HeaderValue;

    /// Whether looking `query` up now parses it (it was not remembered).
    fn is_parsed_again(query: &str) -> bool {
        let mut parsed = false;
        query_requirement(query, |_| {
            parsed = true;
            Ok(None)
        })
        .unwrap();
        parsed
    }

    fn requirement(tenant: &str) -> Requirement {
        Requirement::any().tenant(TenantId::new(tenant).unwrap())
    }

    #[test]
    fn query_is_parsed_once_and_failures_are_not_kept() {
        let query = "memo-test-query-1";
        let first = query_requirement(query, |_| Ok(Some(requirement("acme")))).unwrap();
        let again = query_requirement(query, |_| panic!("parsed twice")).unwrap();
        assert!(Arc::ptr_eq(
            first.as_ref().unwrap(),
            again.as_ref().unwrap()
        ));

        let bad = "memo-test-query-2";
        assert!(query_requirement(bad, |_| Err(ApiError::MissingToken)).is_err());
        let parsed = query_requirement(bad, |_| Ok(Some(requirement("beta")))).unwrap();
        assert_eq!(parsed.unwrap().tenant.as_ref().unwrap().as_str(), "beta");
    }

    #[test]
    fn query_memo_stays_bounded() {
        for i in 0..QUERY_ENTRIES * 3 {
            query_requirement(&format!("memo-bound-{i}"), |_| Ok(None)).unwrap();
        }
        assert_eq!(
            QUERIES.with_borrow(|memo| memo.queries().count()),
            QUERY_ENTRIES
        );
        // The most recent ones are kept; the oldest went first.
        let last = format!("memo-bound-{}", QUERY_ENTRIES * 3 - 1);
        query_requirement(&last, |_| panic!("the most recent query was dropped")).unwrap();
        let first = "memo-bound-0";
        assert!(
            is_parsed_again(first),
            "the oldest query should have been dropped"
        );
    }

    #[test]
    fn a_query_used_again_moves_to_the_front() {
        let name = |i: usize| format!("memo-recency-{i}");
        for i in 0..QUERY_ENTRIES {
            query_requirement(&name(i), |_| Ok(None)).unwrap();
        }
        // The oldest, used again, becomes the newest; the next oldest goes instead.
        query_requirement(&name(0), |_| panic!("the oldest was dropped early")).unwrap();
        query_requirement("memo-recency-new", |_| Ok(None)).unwrap();
        query_requirement(&name(0), |_| panic!("a recently used query was dropped")).unwrap();
        assert!(
            is_parsed_again(&name(1)),
            "the least recently used query should have gone"
        );
    }

    #[test]
    fn long_queries_are_never_remembered() {
        let long = format!("tenant=acme{}", "&".repeat(QUERY_MAX_BYTES));
        query_requirement(&long, |_| Ok(Some(requirement("acme")))).unwrap();
        assert!(is_parsed_again(&long), "a long query was remembered");
        assert!(QUERIES.with_borrow(|memo| memo.queries().all(|q| q.len() <= QUERY_MAX_BYTES)));
    }

    #[test]
    fn answers_are_built_every_time_for_fresh_claims_and_once_for_a_cached_entry() {
        let headers = |value: &'static str| {
            move |_: &Claims| {
                let mut map = HeaderMap::new();
                map.insert("x-auth-subject", HeaderValue::from_static(value));
                Ok(map)
            }
        };
        // Verified afresh, as for a token seen once: built every time, never kept.
        let fresh = Verified::Fresh(Arc::new(Claims::sample()));
        answer_headers(&fresh, headers("fresh")).unwrap();
        let rebuilt = answer_headers(&fresh, headers("again")).unwrap();
        assert_eq!(rebuilt["x-auth-subject"], "again");

        let cache = VerifiedCache::new(CacheSettings::default()).unwrap();
        let token = format!("{}.{}", "m".repeat(300), "e".repeat(86));
        let slot = cache.slot(&token);
        let claims = Arc::new(Claims::sample());
        let _ = cache.admit(slot, &token, Arc::clone(&claims));
        let cached = cache.admit(slot, &token, claims);
        assert!(matches!(cached, Verified::Cached(_)));
        let first = answer_headers(&cached, headers("first")).unwrap();
        let again = answer_headers(&cached, |_| panic!("built twice")).unwrap();
        assert_eq!(first, again);
    }
}
