//! The verified-token cache and its per-thread near tier (invariants: see the parent module).
//!
//! It remembers only the result of the expensive, time-independent checks (structure and
//! signature, and the parsed claims), keyed by a keyed hash of the token and confirmed against
//! the full token bytes on a hit. Expiry, revocation, issuer/audience and the requirement are
//! checked by the verifier on every call, hit or miss, so a cached token that expires or is
//! revoked fails on its very next use. Rejections are never cached: an attacker cannot fill
//! the cache with junk, because junk never reaches it.
//!
//! A token is cached on its second successful verification, not its first. A small
//! doorkeeper (one word per slot bucket) remembers tokens seen once. Tokens in real use are
//! presented many times, so this costs them one more signature check; tokens presented once
//! (a client minting a token per call, or someone replaying a stock of valid tokens) never
//! pay for an insert (about 1 KiB allocated per entry) nor push tokens in real use out.

use std::cell::RefCell;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::two_way::{self, Sets};
use super::{Cached, Claims, Entry, Verified};

/// Bounds of the verified-token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most tokens kept at once (default 100,000). 0 disables the cache.
    pub max_entries: u64,
    /// Tokens longer than this are verified but not cached (default 2,048 bytes; edgetoken's
    /// own tokens are about 450).
    pub max_token_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_token_bytes: 2048,
        }
    }
}

/// Hit and miss counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to verify the signature.
    pub misses: u64,
    /// Entries held now (approximate, as moka reports it).
    pub entries: u64,
}

/// How many trailing bytes of a token pick its slot: 64 of a signature's 86 characters.
const SLOT_BYTES: usize = 64;

/// Where a token lives in the cache; see [`VerifiedCache::slot`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot(u64);

/// Near-tier sets per worker thread (a power of two), of two slots each (see `two_way`).
const NEAR_SETS: usize = 512;

/// A shared-cache entry remembered by one thread, with the cache and slot it came from.
struct NearEntry {
    cache: u64,
    slot: u64,
    /// Weak, so the near tier never keeps an entry (and its raw token) alive past its place
    /// in the shared cache: once moka drops it, this no longer upgrades and counts as a miss
    /// (invariant 4).
    entry: Weak<Entry>,
}

impl NearEntry {
    /// Whether this is the entry of `cache`'s `slot`: caches share the (per-thread) near tier.
    fn is_of(&self, cache: u64, slot: Slot) -> bool {
        self.cache == cache && self.slot == slot.0
    }
}

thread_local! {
    /// The near tier: entries this thread found lately in the shared cache, by slot.
    ///
    /// A lookup in the shared moka cache records the read for its eviction policy (a channel
    /// send, then housekeeping), which was a third of a warm verify; a hit here is an array
    /// index and a reference-count increment. Entries are the shared cache's own, held weakly
    /// and confirmed against the whole token like any hit, and everything a hit skips is
    /// time-independent (see the module docs). The cost is recency: hits here are not
    /// reported to moka, so under capacity pressure moka may evict a token this thread keeps
    /// using, which is then verified afresh. At most 1,024 weak references per thread.
    static NEAR: RefCell<Sets<NearEntry, NEAR_SETS>> = const { RefCell::new(Sets::new()) };
}

/// Tells caches apart in the (process-wide) near tier; never reused.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub(crate) struct VerifiedCache {
    /// This cache's identity in the near tier.
    id: u64,
    entries: moka::sync::Cache<u64, Arc<Entry>>,
    /// `SipHash` with per-process random keys: an attacker cannot aim tokens at one bucket.
    hasher: std::collections::hash_map::RandomState,
    max_token_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    /// The doorkeeper: the last slot seen in each bucket (a power-of-two count of buckets).
    seen_once: Box<[AtomicU64]>,
}

/// Doorkeeper buckets: about one per cache entry, between 2^10 and 2^20 (8 MiB at most).
fn doorkeeper_buckets(max_entries: u64) -> usize {
    let wanted = usize::try_from(max_entries).unwrap_or(usize::MAX);
    wanted.clamp(1 << 10, 1 << 20).next_power_of_two()
}

impl VerifiedCache {
    pub(crate) fn new(settings: CacheSettings) -> Option<Self> {
        if settings.max_entries == 0 {
            return None;
        }
        Some(Self {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            entries: moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                // No entry is useful past the longest token lifetime plus the largest leeway.
                .time_to_live(std::time::Duration::from_mins(12 * 60 + 5))
                .build(),
            hasher: std::collections::hash_map::RandomState::new(),
            max_token_bytes: settings.max_token_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            seen_once: (0..doorkeeper_buckets(settings.max_entries))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    /// The slot of `token`: its keyed hash, computed once per verify and used for both the
    /// lookup and, on a miss, the insert. A slot used with the wrong token is harmless: a
    /// lookup always confirms the whole token, so it can only miss.
    ///
    /// Only the last [`SLOT_BYTES`] bytes are hashed. In a token those are signature
    /// characters, and Ed25519 signatures of different claims differ, so they tell cached
    /// tokens apart as well as the whole token would, for a sixth of the hashing, which every
    /// call pays, hit, miss or rejection. Tokens that share a tail only share a slot: the full
    /// comparison turns them away, and only signed tokens are ever inserted, so an attacker
    /// cannot crowd a slot with junk.
    pub(crate) fn slot(&self, token: &str) -> Slot {
        let tail = token.len().saturating_sub(SLOT_BYTES);
        Slot(
            self.hasher
                .hash_one(token.as_bytes().get(tail..).unwrap_or_default()),
        )
    }

    /// The cache's entry for exactly `token` (whose slot is `slot`), if present: from this
    /// thread's near tier, else from the shared cache (and then kept in the near tier).
    pub(crate) fn get(&self, slot: Slot, token: &str) -> Option<Cached> {
        let found = NEAR.with_borrow_mut(|near| {
            let set = near.set(slot.0);
            let mine = |held: &NearEntry| held.is_of(self.id, slot);
            if let Some(held) = two_way::find(set, mine)
                && let Some(entry) = held.entry.upgrade()
                && entry.confirms(token)
            {
                return Some(Cached(entry));
            }
            let entry = self.entries.get(&slot.0)?;
            if !entry.confirms(token) {
                return None;
            }
            let held = NearEntry {
                cache: self.id,
                slot: slot.0,
                entry: Arc::downgrade(&entry),
            };
            // A stale entry for this slot (moved to the front by `find`) is replaced in place.
            two_way::put(set, held, mine);
            Some(Cached(entry))
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches `token`, whose `claims` the verifier has just produced (signature and time
    /// checked), if this is its second verification (see the module docs). The only place an
    /// [`Entry`] is built (invariant 1).
    pub(crate) fn admit(&self, slot: Slot, token: &str, claims: Arc<Claims>) -> Verified {
        if token.len() > self.max_token_bytes {
            return Verified::Fresh(claims);
        }
        // The bucket count is a power of two, so masking picks a bucket; truncating the u64
        // on a 32-bit target only drops high bits the mask discards anyway.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "masked to the bucket count"
        )]
        let bucket = (slot.0 as usize) & (self.seen_once.len() - 1);
        let Some(seen) = self.seen_once.get(bucket) else {
            return Verified::Fresh(claims);
        };
        if seen.swap(slot.0, Ordering::Relaxed) != slot.0 {
            return Verified::Fresh(claims);
        }
        let entry = Arc::new(Entry {
            token: token.as_bytes().into(),
            claims,
        });
        self.entries.insert(slot.0, Arc::clone(&entry));
        Verified::Cached(Cached(entry))
    }

    /// Drops the shared cache's entry for `slot` at once, as an eviction would, and returns
    /// once moka no longer holds it.
    ///
    /// moka keeps a removed value in its pending-write log until housekeeping applies it, and
    /// one housekeeping run gives up after 100 ms; on a loaded machine a few runs were seen to
    /// stop short (the near tier then still upgraded the entry). So this watches the entry
    /// itself, through a weak reference, and runs housekeeping until it is gone (at most 10 s:
    /// a test whose caller still holds the entry then fails on its own assertion).
    #[cfg(test)]
    pub(crate) fn evict(&self, slot: Slot) {
        let watched = self
            .entries
            .get(&slot.0)
            .map(|entry| Arc::downgrade(&entry));
        self.entries.invalidate(&slot.0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            self.entries.run_pending_tasks();
            let released = watched.as_ref().is_none_or(|weak| weak.strong_count() == 0);
            if released || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Arc<Claims> {
        Arc::new(Claims::sample())
    }

    #[test]
    fn a_token_sharing_a_cached_tokens_slot_is_a_miss() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let cached = format!("{}.{}", "a".repeat(300), "s".repeat(86));
        let forged = format!("{}.{}", "b".repeat(300), "s".repeat(86));
        let slot = cache.slot(&cached);
        cache.admit(slot, &cached, claims());
        cache.admit(slot, &cached, claims());
        assert!(cache.get(cache.slot(&cached), &cached).is_some());
        assert!(cache.get(cache.slot(&forged), &forged).is_none());
        // Even a slot computed from another token cannot return this one's claims.
        assert!(cache.get(slot, &forged).is_none());
    }

    #[test]
    fn short_tokens_have_a_slot_too() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        for _ in 0..2 {
            cache.admit(cache.slot("a.b.c"), "a.b.c", claims());
        }
        assert!(cache.get(cache.slot("a.b.c"), "a.b.c").is_some());
        assert!(cache.get(cache.slot(""), "").is_none());
    }

    #[test]
    fn a_token_is_cached_on_its_second_verification_only() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let token = format!("{}.{}", "t".repeat(300), "u".repeat(86));
        let slot = cache.slot(&token);
        let once = cache.admit(slot, &token, claims());
        assert!(matches!(once, Verified::Fresh(_)), "seen once: fresh");
        assert!(cache.get(slot, &token).is_none(), "seen once: not cached");
        let twice = cache.admit(slot, &token, claims());
        assert!(matches!(twice, Verified::Cached(_)), "seen twice: cached");
        assert!(cache.get(slot, &token).is_some(), "seen twice: cached");
    }

    #[test]
    fn the_near_tier_keeps_caches_apart() {
        let first = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let second = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let token = format!("{}.{}", "n".repeat(300), "m".repeat(86));
        for _ in 0..2 {
            first.admit(first.slot(&token), &token, claims());
        }
        assert!(first.get(first.slot(&token), &token).is_some());
        // Same thread, same slot number: the other cache still has nothing for it.
        let slot = Slot(first.slot(&token).0);
        assert!(second.get(slot, &token).is_none());
    }

    #[test]
    fn a_near_entry_for_another_token_falls_through_to_the_shared_cache() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let old = format!("{}.{}", "o".repeat(300), "p".repeat(86));
        let new = format!("{}.{}", "q".repeat(300), "r".repeat(86));
        let slot = cache.slot(&old);
        for _ in 0..2 {
            cache.admit(slot, &old, claims());
        }
        assert!(
            cache.get(slot, &old).is_some(),
            "now in this thread's near tier"
        );
        // The shared cache's entry for the slot is replaced by another token's.
        cache.entries.insert(
            slot.0,
            Arc::new(Entry {
                token: new.as_bytes().into(),
                claims: claims(),
            }),
        );
        assert!(cache.get(slot, &new).is_some(), "found past the near entry");
        assert!(cache.get(slot, &old).is_none(), "the near tier followed");
    }

    #[test]
    fn the_near_tier_does_not_outlive_the_shared_cache() {
        let cache = VerifiedCache::new(CacheSettings::default()).expect("enabled");
        let token = format!("{}.{}", "w".repeat(300), "x".repeat(86));
        let slot = cache.slot(&token);
        let claims = claims();
        for _ in 0..2 {
            cache.admit(slot, &token, Arc::clone(&claims));
        }
        assert!(
            cache.get(slot, &token).is_some(),
            "now in this thread's near tier"
        );
        cache.evict(slot);
        assert!(
            cache.get(slot, &token).is_none(),
            "gone from moka, gone here"
        );
        assert_eq!(
            Arc::strong_count(&claims),
            1,
            "nothing else holds the entry"
        );
    }
}
