//! Per-thread memo tables for values that are the same on every warm request for the same
//! input (invariants: see the parent module).
//!
//! A warm request's verification is a few hundred nanoseconds, so work that is the same on
//! every request for the same input shows: parsing the query requirement and building the
//! `X-Auth-*` headers each cost about as much as the verification itself. The HTTP layer keeps
//! one table of each per worker thread (no lock or shared cache line between workers) and
//! decides what goes in; these types decide how it is keyed, held and bounded.
//!
//! Nothing here decides access: the token is verified, and its expiry, revocation, tenant and
//! permission checked, on every request before an answer is looked up.

use std::sync::{Arc, Weak};

use super::two_way::{self, Sets};
use super::{Cached, Entry};

/// Sets of an answer memo (a power of two), of two slots each (see `two_way`). Forward-auth's
/// answers are header maps of about 1.5 KiB, so a thread holds at most about 1.5 MiB of them;
/// gRPC `ext_authz`'s header options, smaller, have a memo of their own on a thread that
/// serves gRPC.
const ANSWER_SETS: usize = 512;

/// Distinct query strings remembered, most recently used first; the least recently used one
/// goes when a new one comes. A proxy has one per protected location, so the one it just used
/// is usually first: a string comparison, with no hashing.
pub(crate) const QUERY_ENTRIES: usize = 32;

/// Longer query strings are never remembered: a real requirement is well under this, and the
/// memo is filled before the token is verified, so junk must stay small.
pub(crate) const QUERY_MAX_BYTES: usize = 256;

/// One remembered answer: the entry it was derived from, and the answer.
struct Answer<A> {
    /// Weak, so the memo never keeps an entry (or its raw token) alive past its place in the
    /// cache, while its address cannot be reused for another entry (invariant 4).
    entry: Weak<Entry>,
    answer: A,
}

/// Answers derived from cached entries, by entry, in a two-way set table: a new answer
/// displaces the least recently used one, so the table never grows and never needs sweeping.
///
/// Keyed by the entry's allocation, not by equal claims: a token verified afresh (another
/// entry) gets its own answer. Only a [`Cached`] handle can key it, so only tokens the cache
/// holds take a slot (invariant 5).
pub(crate) struct AnswerMemo<A> {
    sets: Sets<Answer<A>, ANSWER_SETS>,
}

impl<A: Clone> AnswerMemo<A> {
    /// An empty memo (allocated on first use).
    pub(crate) const fn new() -> Self {
        Self { sets: Sets::new() }
    }

    /// The answer remembered for `cached`'s entry, if any.
    pub(crate) fn find(&mut self, cached: &Cached) -> Option<A> {
        let set = self.sets.set(set_hash(&cached.0));
        two_way::find(set, is_for(cached)).map(|held| held.answer.clone())
    }

    /// Remembers `answer` for `cached`'s entry, in place of any earlier one.
    pub(crate) fn keep(&mut self, cached: &Cached, answer: A) {
        let set = self.sets.set(set_hash(&cached.0));
        let held = Answer {
            entry: Arc::downgrade(&cached.0),
            answer,
        };
        two_way::put(set, held, is_for(cached));
    }
}

/// Whether an answer is `cached`'s. Comparing addresses is sound: `cached` holds its entry
/// alive, and an answer's `Weak` keeps its entry's address from being reused, so equal
/// addresses are the same entry.
fn is_for<A>(cached: &Cached) -> impl Fn(&Answer<A>) -> bool {
    let address = Arc::as_ptr(&cached.0);
    move |held: &Answer<A>| std::ptr::eq(held.entry.as_ptr(), address)
}

/// The hash of an entry's address that picks its set: Fibonacci hashing, whose top bits are
/// shifted down, because an address's low bits are alignment and neighbouring entries are a
/// fixed stride apart, so the low bits alone would use few sets.
fn set_hash(entry: &Arc<Entry>) -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    const BITS: u32 = ANSWER_SETS.trailing_zeros();
    let address = u64::try_from(Arc::as_ptr(entry).addr()).unwrap_or_default();
    address.wrapping_mul(GOLDEN) >> (u64::BITS - BITS)
}

/// Values by query string, most recently used first, at most [`QUERY_ENTRIES`] of them, each
/// of a query of at most [`QUERY_MAX_BYTES`].
pub(crate) struct QueryMemo<V> {
    recent: Vec<(Box<str>, V)>,
}

impl<V: Clone> QueryMemo<V> {
    /// An empty memo.
    pub(crate) const fn new() -> Self {
        Self { recent: Vec::new() }
    }

    /// Whether `query` is short enough to be remembered; a longer one need not be looked up.
    pub(crate) fn admits(query: &str) -> bool {
        query.len() <= QUERY_MAX_BYTES
    }

    /// The value remembered for `query`, which becomes the most recently used.
    pub(crate) fn find(&mut self, query: &str) -> Option<V> {
        let at = self
            .recent
            .iter()
            .position(|(known, _)| **known == *query)?;
        self.recent[..=at].rotate_right(1);
        Some(self.recent[0].1.clone())
    }

    /// Remembers `value` for `query` (unless it is too long), displacing the least recently
    /// used query when full. Call it only after [`QueryMemo::find`] missed.
    pub(crate) fn keep(&mut self, query: &str, value: V) {
        if !Self::admits(query) {
            return;
        }
        debug_assert!(
            self.recent.iter().all(|(known, _)| **known != *query),
            "a query is remembered once"
        );
        self.recent.truncate(QUERY_ENTRIES - 1);
        self.recent.insert(0, (query.into(), value));
        debug_assert!(
            self.recent.len() <= QUERY_ENTRIES,
            "the query memo is bounded"
        );
    }

    /// The queries remembered, most recently used first.
    #[cfg(test)]
    pub(crate) fn queries(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(|(query, _)| &**query)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CacheSettings, Verified, VerifiedCache};
    use super::*;
    use crate::token::Claims;

    /// A handle on a cache entry for `token`, as the verifier gets on its second verification.
    fn cached(cache: &VerifiedCache, token: &str, claims: &Arc<Claims>) -> Cached {
        let slot = cache.slot(token);
        let _ = cache.admit(slot, token, Arc::clone(claims));
        match cache.admit(slot, token, Arc::clone(claims)) {
            Verified::Cached(cached) => cached,
            Verified::Fresh(_) => panic!("not admitted on the second verification"),
        }
    }

    #[test]
    fn answers_are_kept_per_entry_not_per_value() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let mut memo = AnswerMemo::new();
        let claims = Arc::new(Claims::sample());
        let token = format!("{}.{}", "a".repeat(300), "s".repeat(86));
        let entry = cached(&cache, &token, &claims);
        assert_eq!(memo.find(&entry), None);
        memo.keep(&entry, "first");
        assert_eq!(memo.find(&entry), Some("first"));
        // The same entry found again (a warm hit) finds the answer.
        let hit = cache.get(cache.slot(&token), &token).expect("cached");
        assert_eq!(memo.find(&hit), Some("first"));
        // Equal claims in another entry (a token verified afresh) get their own answer.
        let other = format!("{}.{}", "b".repeat(300), "t".repeat(86));
        let copy = cached(&cache, &other, &Arc::new((*claims).clone()));
        assert_eq!(memo.find(&copy), None);
        memo.keep(&copy, "second");
        assert_eq!(memo.find(&copy), Some("second"));
        assert_eq!(memo.find(&entry), Some("first"));
    }

    #[test]
    fn an_answer_does_not_keep_its_entry_alive() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let mut memo = AnswerMemo::new();
        let claims = Arc::new(Claims::sample());
        let token = format!("{}.{}", "c".repeat(300), "u".repeat(86));
        memo.keep(&cached(&cache, &token, &claims), "answer");
        cache.evict(cache.slot(&token));
        assert_eq!(
            Arc::strong_count(&claims),
            1,
            "nothing else holds the claims"
        );
    }

    #[test]
    fn sets_spread_over_the_table() {
        let claims = Arc::new(Claims::sample());
        let entries: Vec<_> = (0..256)
            .map(|_| {
                Arc::new(Entry {
                    token: Box::default(),
                    claims: Arc::clone(&claims),
                })
            })
            .collect();
        let used: std::collections::HashSet<_> = entries.iter().map(set_hash).collect();
        assert!(used.len() > 150, "{} sets for 256 allocations", used.len());
        assert!(used.iter().all(|set| *set < ANSWER_SETS as u64));
    }
}
