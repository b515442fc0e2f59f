//! Time as an injected dependency (SPEC §1 time rules).
//!
//! Every time rule in edgetoken reads the clock through [`Clock`], so tests move time with
//! [`ManualClock`] instead of sleeping, and production uses [`SystemClock`]. [`OffsetClock`]
//! shifts another clock by a fixed amount, as a host whose clock is skewed (THREATS §4 F12).
//! This module owns nothing else: leeway and lifetime policy live in `token::verify`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time, UTC.
    fn now(&self) -> OffsetDateTime;

    /// The current time as whole seconds since the Unix epoch (JWT `NumericDate`).
    fn unix_now(&self) -> i64 {
        self.now().unix_timestamp()
    }
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one place that reads the wall clock; everything else goes through Clock"
    )]
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Straight from the system clock: every verification reads this, and building an
    /// `OffsetDateTime` (a calendar date) only to take its timestamp cost as much again.
    #[expect(
        clippy::disallowed_methods,
        reason = "SystemClock is where the wall clock is read; everything else goes through Clock"
    )]
    fn unix_now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|since| i64::try_from(since.as_secs()).ok())
            // A clock set before 1970 (or past year 292 billion) takes the long way.
            .unwrap_or_else(|| self.now().unix_timestamp())
    }
}

/// A clock that only moves when told to; for tests and deterministic tooling.
///
/// Resolution is one second, which is the resolution of every JWT time claim.
#[derive(Debug)]
pub struct ManualClock {
    unix: AtomicI64,
}

impl ManualClock {
    /// A clock frozen at `unix` seconds since the epoch.
    pub fn at(unix: i64) -> Self {
        Self {
            unix: AtomicI64::new(unix),
        }
    }

    /// Sets the clock to `unix` seconds since the epoch.
    pub fn set(&self, unix: i64) {
        self.unix.store(unix, Ordering::SeqCst);
    }

    /// Moves the clock forward (or backward, for negative values) by `seconds`.
    pub fn advance(&self, seconds: i64) {
        self.unix.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        // Out-of-range values saturate to the epoch rather than panic; a test that sets an
        // absurd time gets an obviously wrong "now", not a crash.
        OffsetDateTime::from_unix_timestamp(self.unix.load(Ordering::SeqCst))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn unix_now(&self) -> i64 {
        self.unix.load(Ordering::SeqCst)
    }
}

/// Another clock shifted by a fixed number of seconds: a host whose clock runs ahead
/// (positive offset) or behind (negative) of the reference, for clock-skew tests (F12).
#[derive(Debug, Clone)]
pub struct OffsetClock {
    reference: Arc<dyn Clock>,
    offset_secs: i64,
}

impl OffsetClock {
    /// `reference` shifted by `offset_secs` (negative: behind it).
    pub fn new(reference: Arc<dyn Clock>, offset_secs: i64) -> Self {
        Self {
            reference,
            offset_secs,
        }
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> OffsetDateTime {
        let reference = self.reference.now();
        // Out-of-range results saturate to the reference rather than panic, as in ManualClock.
        reference
            .checked_add(time::Duration::seconds(self.offset_secs))
            .unwrap_or(reference)
    }

    fn unix_now(&self) -> i64 {
        self.reference.unix_now().saturating_add(self.offset_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(1_000);
        assert_eq!(clock.unix_now(), 1_000);
        clock.advance(30);
        assert_eq!(clock.unix_now(), 1_030);
        assert_eq!(clock.now().unix_timestamp(), 1_030);
        clock.set(5);
        assert_eq!(clock.unix_now(), 5);
    }

    #[test]
    fn offset_clock_follows_its_reference_shifted() {
        let reference = Arc::new(ManualClock::at(1_000));
        let ahead = OffsetClock::new(reference.clone(), 300);
        let behind = OffsetClock::new(reference.clone(), -300);
        assert_eq!(ahead.unix_now(), 1_300);
        assert_eq!(behind.unix_now(), 700);
        reference.advance(5);
        assert_eq!(ahead.unix_now(), 1_305);
        assert_eq!(ahead.now().unix_timestamp(), 1_305);
        assert_eq!(behind.now().unix_timestamp(), 705);
    }

    #[test]
    fn system_clock_shortcut_agrees_with_the_calendar_time() {
        let clock = SystemClock;
        let before = clock.now().unix_timestamp();
        let unix = clock.unix_now();
        let after = clock.now().unix_timestamp();
        assert!(
            before <= unix && unix <= after,
            "{before} <= {unix} <= {after}"
        );
    }
}
