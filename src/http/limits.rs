//! Per-key rate limits: failed sign-ins per user id, mints per person, tenant revocations per
//! admin (SPEC §4 limits).
//!
//! A fixed window per key, in this process's memory. With several issuers behind a balancer
//! each enforces its own window, so the effective limit is the per-process limit times the
//! number of issuers; that is documented in the README.
//!
//! Memory is bounded whatever callers send (THREATS #54): keys are kept as a keyed 64-bit
//! digest (`SipHash` with a per-process random key), never as the text itself, so every entry
//! has the same small size; at most [`MAX_KEYS`] are tracked; and windows that ended are
//! swept by [`RateLimiter::sweep`], which the service runs on a timer, not only when the map
//! fills. When the map is full of live windows a new key is refused rather than tracked, so
//! an attacker cannot buy unlimited guesses by flushing the map. Callers still check input
//! against its grammar before it gets here: nothing invalid should even be hashed.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Keys tracked at most: with about 40 bytes an entry, a limiter stays under 5 MiB.
pub const MAX_KEYS: usize = 100_000;

/// A fixed-window counter per key.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    max_keys: usize,
    digest: RandomState,
    windows: Mutex<HashMap<u64, (Instant, u32)>>,
}

impl RateLimiter {
    /// `limit` events per `window` per key.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self::with_max_keys(limit, window, MAX_KEYS)
    }

    /// A limiter whose ended windows are swept once per window by a background task, which
    /// ends when the limiter is dropped. Call it inside a Tokio runtime.
    pub fn swept(limit: u32, window: Duration) -> Arc<Self> {
        let limiter = Arc::new(Self::new(limit, window));
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(window);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.sweep();
            }
        });
        limiter
    }

    /// As [`RateLimiter::new`], tracking at most `max_keys` keys.
    pub fn with_max_keys(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window,
            max_keys,
            digest: RandomState::new(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The window this limiter counts over.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn key(&self, key: &str) -> u64 {
        self.digest.hash_one(key)
    }

    /// Checks and, if allowed, counts one event for `key`.
    ///
    /// # Errors
    ///
    /// The time until `key`'s window resets; or, when [`MAX_KEYS`] live windows are already
    /// tracked and `key` is not one of them, the time until the oldest of them ends.
    pub fn acquire(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let key = self.key(key);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(&key) && windows.len() >= self.max_keys {
            let window = self.window;
            windows.retain(|_, (start, _)| now < *start + window);
            if windows.len() >= self.max_keys {
                let oldest = windows.values().map(|(start, _)| *start).min();
                return Err(oldest.map_or(window, |start| (start + window) - now));
            }
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err((entry.0 + self.window) - now);
        }
        entry.1 += 1;
        Ok(())
    }

    /// Gives back one event counted for `key` in its current window (an attempt that turned
    /// out not to count, such as a successful sign-in).
    pub fn refund(&self, key: &str) {
        let key = self.key(key);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, count)) = windows.get_mut(&key) {
            *count = count.saturating_sub(1);
        }
    }

    /// Forgets every window that has ended, and gives the memory back when most of the map
    /// is empty.
    pub fn sweep(&self) {
        let now = Instant::now();
        let window = self.window;
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        windows.retain(|_, (start, _)| now < *start + window);
        if windows.capacity() > 4 * windows.len().max(16) {
            windows.shrink_to_fit();
        }
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limit_applies_per_key_and_resets_with_the_window() {
        let limiter = RateLimiter::new(2, Duration::from_mins(1));
        assert!(limiter.acquire("a").is_ok());
        assert!(limiter.acquire("a").is_ok());
        let retry = limiter.acquire("a").unwrap_err();
        assert!(retry <= Duration::from_mins(1));
        assert!(limiter.acquire("b").is_ok());
        limiter.refund("a");
        assert!(
            limiter.acquire("a").is_ok(),
            "a refunded event frees its slot"
        );
        assert!(limiter.acquire("a").is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limiter.acquire("a").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_map_refuses_new_keys_but_keeps_counting_known_ones() {
        let limiter = RateLimiter::with_max_keys(5, Duration::from_mins(1), 3);
        for key in ["a", "b", "c"] {
            assert!(limiter.acquire(key).is_ok());
        }
        assert!(limiter.acquire("d").is_err(), "no room for a fourth key");
        assert!(limiter.acquire("a").is_ok(), "known keys keep their window");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limiter.acquire("d").is_ok(), "ended windows make room");
        assert_eq!(limiter.tracked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_forgets_ended_windows() {
        let limiter = RateLimiter::new(5, Duration::from_mins(1));
        for i in 0..1000 {
            limiter.acquire(&format!("user-{i}")).unwrap();
        }
        limiter.sweep();
        assert_eq!(limiter.tracked(), 1000, "live windows stay");
        tokio::time::advance(Duration::from_secs(61)).await;
        limiter.sweep();
        assert_eq!(limiter.tracked(), 0);
    }
}
