//! The warm path (SPEC §9): every tier that lets a token presented again cost little more than
//! a bare `200`, the entry they all point at, and the rules that keep them from deciding
//! anything.
//!
//! - [`VerifiedCache`] (`cache.rs`): the shared, bounded verified-token cache (moka) of
//!   [`Entry`]s, and in front of it each thread's near tier, which holds the same entries.
//! - [`AnswerMemo`] and [`QueryMemo`] (`memo.rs`): per-thread tables of values derived from an
//!   entry (forward-auth's answer headers) or from a query string (its requirement). The HTTP
//!   layer decides what they hold; this module decides how.
//! - `two_way.rs`: the two-way set-associative table the near tier and the answer memo use.
//!
//! The invariants, and where they are enforced:
//!
//! 1. **Only verified tokens have entries.** An [`Entry`] is built in one place,
//!    [`VerifiedCache::admit`], which takes the claims the verifier produced after checking the
//!    signature and time; rejections never reach it, so junk cannot fill any tier.
//! 2. **A hit is the whole token.** Every lookup, near or shared, goes through one
//!    constant-time comparison of the full token bytes against the entry's, so a slot collision
//!    can only miss.
//! 3. **Entries are immutable and hold only time-independent results** (structure, signature,
//!    claims). The verifier checks time, issuer, audience, revocation, the requirement and that
//!    the signing key is still trusted on every call, hit or miss.
//! 4. **No per-thread tier outlives the shared cache.** The near tier and the answer memo hold
//!    entries as `Weak<Entry>`: once moka drops an entry, its raw token is freed and the near
//!    tier misses. A `Weak` also keeps the allocation's address from being reused for another
//!    entry, so the answer memo can key on the address.
//! 5. **Derived values are kept only for cached entries.** [`AnswerMemo`] takes a [`Cached`],
//!    which only the cache makes, from an entry it holds: a token seen once (and so not cached)
//!    never takes a memo slot from tokens in use.
//! 6. **Every tier is bounded** by constants here: two-way tables of a power-of-two count of
//!    sets (checked at compile time), a most-recently-used list checked by `debug_assert!`.
//! 7. **Per thread, lock-free.** A warm hit is a thread-local array lookup, a weak-reference
//!    upgrade and the comparison: no allocation and no lock in any tier; the only shared
//!    writes are the entry's reference count and the cache's hit counter. The memos are
//!    thread-local tables, consulted without touching anything shared.

mod cache;
#[cfg(feature = "server")]
mod memo;
mod two_way;

use std::ops::Deref;
use std::sync::Arc;

pub use cache::{CacheSettings, CacheStats};
pub(crate) use cache::{Slot, VerifiedCache};
#[cfg(feature = "server")]
pub(crate) use memo::{AnswerMemo, QueryMemo};
#[cfg(all(test, feature = "server"))]
pub(crate) use memo::{QUERY_ENTRIES, QUERY_MAX_BYTES};

use super::claims::Claims;

/// One verified token in the shared cache: its whole text, to confirm every hit against, and
/// its claims. Built only by [`VerifiedCache::admit`] and never changed after.
struct Entry {
    token: Box<[u8]>,
    claims: Arc<Claims>,
}

impl std::fmt::Debug for Entry {
    /// The claims only: a raw token is never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// Whether `token` is exactly this entry's token (invariant 2). Constant time, so
    /// the comparison does not reveal a cached token's prefix.
    fn confirms(&self, token: &str) -> bool {
        ct_eq_bytes(&self.token, token.as_bytes())
    }
}

/// Claims served from the verified-token cache: a handle on the cache's own entry, confirmed
/// against the token it was looked up (or admitted) with.
///
/// Only this module makes one, so holding one proves the claims were in the cache when they
/// were verified; it is the entry itself, not a copy, so its address names the entry.
#[derive(Debug)]
pub(crate) struct Cached(Arc<Entry>);

impl Cached {
    /// The claims, shared with the cache.
    pub(crate) fn claims(&self) -> &Arc<Claims> {
        &self.0.claims
    }
}

impl Deref for Cached {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.0.claims
    }
}

/// The claims of a token that passed every check: from the cache, or verified afresh.
#[derive(Debug)]
pub(crate) enum Verified {
    /// The cache's own entry (a warm hit, or the verification that admitted the token).
    Cached(Cached),
    /// Verified afresh and not cached: seen once so far, too long, or the cache is off.
    Fresh(Arc<Claims>),
}

impl Verified {
    /// The claims, as the public API hands them out.
    pub(crate) fn into_claims(self) -> Arc<Claims> {
        match self {
            Self::Cached(cached) => Arc::clone(cached.claims()),
            Self::Fresh(claims) => claims,
        }
    }
}

impl Deref for Verified {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        match self {
            Self::Cached(cached) => cached,
            Self::Fresh(claims) => claims,
        }
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
///
/// `constant_time_eq` compares whole SIMD vectors, hiding each step from the optimiser;
/// subtle's slice `ct_eq` puts a barrier on every element, which on a 450-byte token was a
/// quarter of a warm verify (about 80 of 360 ns in `benches/verify.rs`, even compared in
/// `u64` words).
fn ct_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    // Lengths are public (both crates short-circuit on them); only contents must not leak.
    a.len() == b.len() && constant_time_eq::constant_time_eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_bytes_compares_every_byte_and_the_length() {
        let token: Vec<u8> = (0..=255u8).cycle().take(453).collect();
        assert!(ct_eq_bytes(&token, &token.clone()));
        assert!(ct_eq_bytes(b"", b""));
        for at in [0, 7, 8, 200, 447, 448, 452] {
            let mut other = token.clone();
            other[at] ^= 0x01;
            assert!(!ct_eq_bytes(&token, &other), "difference at {at} missed");
        }
        assert!(!ct_eq_bytes(&token, &token[..452]));
        assert!(!ct_eq_bytes(&token[..8], &token[..9]));
    }
}
