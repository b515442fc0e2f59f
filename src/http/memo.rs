//! Per-thread memos on the forward-auth hot path (SPEC §9: a warm forward-auth answer should
//! cost little more than a bare `200`).
//!
//! A warm request's verification is a few hundred nanoseconds, so work that is the same on
//! every request for the same input shows: parsing the query requirement and building the
//! `X-Auth-*` headers each cost about as much as the verification itself. Both are pure
//! functions of their input, so their results are remembered, per worker thread (no lock or
//! shared cache line between workers), in a bounded table:
//!
//! - [`query_requirement`]: the parsed requirement by query string. A proxy sends one query
//!   string per protected location, the same on every request.
//! - [`answer_headers`]: the headers of an allowed answer by verified claims. A warm token's
//!   claims are one shared allocation (the verified-token cache hands out the same `Arc`), so
//!   the allocation's identity is the key. The memo holds a weak reference, which keeps the
//!   allocation (not the claims) in place, so its address cannot be reused for other claims
//!   while the entry lives. Only claims the cache holds too are remembered: the answer of a
//!   token seen once would only push out those of tokens in use.
//!
//! Nothing here decides access: the token is verified, and its expiry, revocation, tenant and
//! permission checked, on every request before these are consulted.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use axum::http::HeaderMap;

use super::ApiError;
use crate::token::{Claims, Requirement};
use crate::two_way;

/// Distinct query strings remembered per thread, most recently used first; the least recently
/// used one goes when a new one comes. A proxy has one per protected location, so the one it
/// just used is usually first: a string comparison, with no hashing.
const QUERY_ENTRIES: usize = 32;

/// Longer query strings are parsed every time, never remembered: a real requirement is well
/// under this, and the memo is filled before the token is verified, so junk must stay small.
const QUERY_MAX_BYTES: usize = 256;

/// Sets of the answer memo per thread (a power of two), of two slots each (see `two_way`). A
/// filled slot holds a header map of about 1.5 KiB, so a thread holds at most about 1.5 MiB.
const ANSWER_SETS: usize = 512;

/// One remembered answer: the claims allocation it was built from, and its headers.
struct Answer {
    claims: Weak<Claims>,
    headers: HeaderMap,
}

/// A query string and the requirement it names, if any.
type ParsedQuery = (Box<str>, Option<Arc<Requirement>>);

thread_local! {
    static QUERIES: RefCell<Vec<ParsedQuery>> = const { RefCell::new(Vec::new()) };
    static ANSWERS: RefCell<Vec<[Option<Answer>; 2]>> = const { RefCell::new(Vec::new()) };
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
    if query.len() > QUERY_MAX_BYTES {
        return Ok(parse(query)?.map(Arc::new));
    }
    let found = QUERIES.with_borrow_mut(|memo| {
        let at = memo.iter().position(|(known, _)| **known == *query)?;
        memo[..=at].rotate_right(1);
        Some(memo[0].1.clone())
    });
    if let Some(found) = found {
        return Ok(found);
    }
    let parsed = parse(query)?.map(Arc::new);
    QUERIES.with_borrow_mut(|memo| {
        memo.truncate(QUERY_ENTRIES - 1);
        memo.insert(0, (query.into(), parsed.clone()));
    });
    Ok(parsed)
}

/// `build(claims)`, remembered for this allocation of `claims`, in a two-way set: a new
/// answer displaces the least recently used one, so the table never grows and never needs
/// sweeping.
///
/// # Errors
///
/// What `build` returns.
pub(super) fn answer_headers(
    claims: &Arc<Claims>,
    build: impl FnOnce(&Claims) -> Result<HeaderMap, ApiError>,
) -> Result<HeaderMap, ApiError> {
    // Claims that nothing else holds are from a token verified afresh and not cached (seen
    // once so far): remembering its answer would only push out those of tokens in use.
    if Arc::strong_count(claims) == 1 {
        return build(claims);
    }
    let index = set_of(claims);
    // Same allocation, not merely equal claims: a token verified afresh gets its own answer.
    let same = |answer: &Answer| std::ptr::eq(answer.claims.as_ptr(), Arc::as_ptr(claims));
    let found = with_answer_set(index, |set| {
        two_way::find(set, same).map(|answer| answer.headers.clone())
    });
    if let Some(headers) = found {
        return Ok(headers);
    }
    let headers = build(claims)?;
    with_answer_set(index, |set| {
        two_way::insert(
            set,
            Answer {
                claims: Arc::downgrade(claims),
                headers: headers.clone(),
            },
        );
    });
    Ok(headers)
}

/// Runs `f` on set `index` of this thread's answer memo, allocating the table on first use.
fn with_answer_set<R>(index: usize, f: impl FnOnce(&mut [Option<Answer>; 2]) -> R) -> R {
    ANSWERS.with_borrow_mut(|sets| {
        if sets.is_empty() {
            sets.resize_with(ANSWER_SETS, || [None, None]);
        }
        f(&mut sets[index])
    })
}

/// The set of an allocation, below [`ANSWER_SETS`]: Fibonacci hashing of its address, whose
/// low bits are alignment and whose neighbours are a fixed stride apart, so a plain modulo
/// would use few sets.
fn set_of(claims: &Arc<Claims>) -> usize {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    const BITS: u32 = ANSWER_SETS.trailing_zeros();
    let address = u64::try_from(Arc::as_ptr(claims).addr()).unwrap_or_default();
    usize::try_from(address.wrapping_mul(GOLDEN) >> (u64::BITS - BITS)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TenantId;
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
        assert_eq!(QUERIES.with_borrow(Vec::len), QUERY_ENTRIES);
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
        assert!(QUERIES.with_borrow(|memo| memo.iter().all(|(q, _)| q.len() <= QUERY_MAX_BYTES)));
    }

    #[test]
    fn answers_are_kept_per_allocation_not_per_value() {
        let claims = Arc::new(Claims::sample());
        let headers = |value: &'static str| {
            move |_: &Claims| {
                let mut map = HeaderMap::new();
                map.insert("x-auth-subject", HeaderValue::from_static(value));
                Ok(map)
            }
        };
        // Held only here, as for a token seen once: built every time, never kept.
        let lone = Arc::new(Claims::sample());
        answer_headers(&lone, headers("lone")).unwrap();
        let rebuilt = answer_headers(&lone, headers("again")).unwrap();
        assert_eq!(rebuilt["x-auth-subject"], "again");

        let _cached = Arc::clone(&claims); // as the verified-token cache holds it
        let first = answer_headers(&claims, headers("first")).unwrap();
        let again = answer_headers(&claims, |_| panic!("built twice")).unwrap();
        assert_eq!(first, again);
        // Equal claims in another allocation (a token verified afresh) get their own answer.
        let copy = Arc::new((*claims).clone());
        let _cached_copy = Arc::clone(&copy);
        let other = answer_headers(&copy, headers("second")).unwrap();
        assert_eq!(other["x-auth-subject"], "second");
    }

    #[test]
    fn sets_spread_over_the_table() {
        let claims: Vec<_> = (0..256).map(|_| Arc::new(Claims::sample())).collect();
        let used: std::collections::HashSet<_> = claims.iter().map(set_of).collect();
        assert!(used.len() > 150, "{} sets for 256 allocations", used.len());
        assert!(used.iter().all(|set| *set < ANSWER_SETS));
    }
}
