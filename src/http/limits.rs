//! Per-key rate limits: failed sign-ins per user id, mints per person (SPEC §4 limits).
//!
//! A fixed window per key, in this process's memory. With several issuers behind a balancer
//! each enforces its own window, so the effective limit is the per-process limit times the
//! number of issuers; that is documented in the README.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A fixed-window counter per key.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Keys tracked before old windows are swept, so an attacker cycling user ids cannot grow the
/// map without bound.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    /// `limit` events per `window` per key.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` if `key` has used up its window; does not count anything.
    ///
    /// # Errors
    ///
    /// The time until the window resets.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(key) {
            Some((start, count)) if now < *start + self.window && *count >= self.limit => {
                Err(*start + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts one event for `key`.
    pub fn record(&self, key: &str) {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= SWEEP_AT {
            let window = self.window;
            windows.retain(|_, (start, _)| now < *start + window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Gives back one event counted for `key` in its current window (an attempt that turned
    /// out not to count, such as a successful sign-in).
    pub fn refund(&self, key: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, count)) = windows.get_mut(key) {
            *count = count.saturating_sub(1);
        }
    }

    /// Checks and, if allowed, counts one event.
    ///
    /// # Errors
    ///
    /// The time until the window resets.
    pub fn acquire(&self, key: &str) -> Result<(), Duration> {
        self.check(key)?;
        self.record(key);
        Ok(())
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
}
