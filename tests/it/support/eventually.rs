//! Awaiting a condition within a timeout: the one poll loop of the integration tests.
//!
//! Tests await the real signal where there is one (a watch channel, a child's exit). Where the
//! only signal is the state itself (a port that starts listening, a JWKS that changes, a
//! revocation reaching another process), they poll it through [`eventually`], which fails with
//! the name of what was awaited instead of hanging.
//!
//! ```ignore
//! eventually("the verifier to trust 2 keys", WAIT)
//!     .until(async || (keys(&verifier).await == 2).then_some(()))
//!     .await;
//! ```

use std::fmt;
use std::time::{Duration, Instant};

/// How often a condition is checked unless [`Eventually::every`] says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(20);

/// A condition to await: what it is (for the failure message), for how long, how often.
#[must_use = "nothing is awaited until `until` (or a variant) is called"]
#[derive(Debug)]
pub(crate) struct Eventually {
    what: String,
    timeout: Duration,
    interval: Duration,
}

/// Awaits `what` for at most `timeout`, checking every 20 ms.
pub(crate) fn eventually(what: impl Into<String>, timeout: Duration) -> Eventually {
    Eventually {
        what: what.into(),
        timeout,
        interval: DEFAULT_INTERVAL,
    }
}

/// A condition that did not hold in time.
#[derive(Debug)]
pub(crate) struct TimedOut {
    what: String,
    timeout: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} awaiting {}",
            self.timeout, self.what
        )
    }
}

impl Eventually {
    /// Checks every `interval` instead; zero only yields between checks.
    pub(crate) fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The first `Some` that `check` returns; fails the test, naming what was awaited, if none
    /// comes within the timeout. `check` may fail the test itself (a process that exited).
    pub(crate) async fn until<T>(self, check: impl AsyncFnMut() -> Option<T>) -> T {
        self.try_until(check)
            .await
            .unwrap_or_else(|timed_out| panic!("{timed_out}"))
    }

    /// As [`Eventually::until`], but hands the timeout back to a caller that has a fallback.
    pub(crate) async fn try_until<T>(
        self,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> Result<T, TimedOut> {
        let started = Instant::now();
        loop {
            if let Some(value) = check().await {
                return Ok(value);
            }
            if started.elapsed() >= self.timeout {
                return Err(self.timed_out());
            }
            if self.interval.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(self.interval).await;
            }
        }
    }

    /// [`Eventually::until`] for code outside a runtime: blocks the thread between checks.
    pub(crate) fn until_blocking<T>(self, check: impl FnMut() -> Option<T>) -> T {
        self.try_until_blocking(check)
            .unwrap_or_else(|timed_out| panic!("{timed_out}"))
    }

    /// [`Eventually::try_until`] for code outside a runtime.
    pub(crate) fn try_until_blocking<T>(
        self,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T, TimedOut> {
        let started = Instant::now();
        loop {
            if let Some(value) = check() {
                return Ok(value);
            }
            if started.elapsed() >= self.timeout {
                return Err(self.timed_out());
            }
            if self.interval.is_zero() {
                std::thread::yield_now();
            } else {
                std::thread::sleep(self.interval);
            }
        }
    }

    fn timed_out(self) -> TimedOut {
        TimedOut {
            what: self.what,
            timeout: self.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value_the_check_gives() {
        let mut checks = 0;
        let value = eventually("the third check", Duration::from_secs(5))
            .every(Duration::ZERO)
            .until(async || {
                checks += 1;
                (checks == 3).then_some(checks)
            })
            .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn eventually_names_what_it_awaited_when_it_times_out() {
        let timed_out = eventually("a condition that never holds", Duration::from_millis(30))
            .try_until(async || None::<()>)
            .await
            .unwrap_err();
        assert!(
            timed_out
                .to_string()
                .contains("a condition that never holds")
        );
    }

    #[test]
    fn eventually_blocking_checks_at_least_once() {
        let value = eventually("an immediate value", Duration::ZERO).until_blocking(|| Some(7));
        assert_eq!(value, 7);
    }
}
