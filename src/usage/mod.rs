//! Token usage ("last used", issue 10): when, from where and how often each token was
//! accepted, reported by every verifier without a store write per request (SPEC §4 list API
//! fields `last_used_at`, `last_used_from`, `uses`).
//!
//! - `recorder.rs`: the request path. Each worker thread aggregates the uses it accepts in
//!   its own table, and hands what it starts to the flusher through a lock-free channel; a
//!   repeat use is a thread-local lookup and two uncontended atomic writes.
//! - `store.rs`: where usage is merged (Redis, or this process's memory), commutatively, so
//!   any number of verifiers flushing in any order keep the latest time and add the counts.
//! - [`UsageRecorder::start`] runs the flusher: every `usage.flush_secs` it collects every
//!   thread's aggregate and writes it in pipelined batches (one for any interval of up to
//!   10,000 tokens), each with a timeout, on a thread of its own: a large flush never holds
//!   a request worker. A failed or slow flush drops that interval's usage and counts it;
//!   verification is never delayed or failed by usage.
//!
//! Only accepted requests are recorded (forward-auth 200, the layer's accept, active
//! introspection): a rejected token records nothing. What is kept is approximate by design:
//! counts may lose an interval when the store is down, and the address and user agent are
//! those of the latest use a verifier flushed, to within a second.
//!
//! This module knows no HTTP: callers pass the client address and user agent they trust.

mod recorder;
mod store;

use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

pub use self::recorder::{AGENT_MAX_BYTES, UsageRecorder};
pub use self::store::{MemoryUsage, RedisUsage, TokenUse, UsageStore};

/// `[usage]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    /// Whether verifiers record token use at all (default true).
    pub enabled: bool,
    /// Whether the client address and user agent are recorded (default true); when false,
    /// only the time and the count are.
    pub record_address: bool,
    /// Time between two flushes to the store (default 10 s): how stale "last used" may be.
    pub flush: Duration,
    /// Most tokens aggregated between two flushes (default 100,000); beyond it the least
    /// recently used are dropped and counted.
    pub max_entries: usize,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            record_address: true,
            flush: Duration::from_secs(10),
            max_entries: 100_000,
        }
    }
}

/// Who presented an accepted token, as the caller established it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presenter<'a> {
    /// The client address: the trusted forwarded address, else the TCP peer.
    pub address: Option<IpAddr>,
    /// The raw `User-Agent` header value; truncated and cleaned before it is stored.
    pub agent: Option<&'a [u8]>,
}

/// What is known about one token's use, as the list API and the tokens page show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// When a verifier last accepted it (to the second), or `None`: never used.
    pub last_used_at: Option<OffsetDateTime>,
    /// The client address of that use, when recorded.
    pub last_used_from: Option<String>,
    /// The client's user agent of that use (at most [`AGENT_MAX_BYTES`], no control
    /// characters), when recorded.
    pub last_used_agent: Option<String>,
    /// Uses counted so far (approximate: an interval is lost when the store was down); 0 means
    /// never used.
    pub uses: u64,
}

impl TokenUsage {
    /// Whether no verifier has reported a use of the token.
    pub fn is_never_used(&self) -> bool {
        self.last_used_at.is_none() && self.uses == 0
    }
}

/// Usage counters since start, sampled by `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageStats {
    /// Token aggregates written to the store.
    pub flushed: u64,
    /// Token aggregates dropped because the store failed or timed out.
    pub dropped_store: u64,
    /// Token aggregates (or first uses) dropped because the in-memory bound was reached.
    pub dropped_full: u64,
    /// Flushes that failed or timed out.
    pub failed_flushes: u64,
}

/// `value` with control characters removed, cut to at most [`AGENT_MAX_BYTES`] bytes on a
/// character boundary; invalid UTF-8 is replaced.
pub(crate) fn clean_agent(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut out = String::with_capacity(text.len().min(AGENT_MAX_BYTES));
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > AGENT_MAX_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_agent_strips_control_characters_and_truncates() {
        assert_eq!(
            clean_agent(b"curl/8.0\r\nX-Evil: 1\x1b[31m"),
            "curl/8.0X-Evil: 1[31m"
        );
        let long = "é".repeat(100);
        let cleaned = clean_agent(long.as_bytes());
        assert!(cleaned.len() <= AGENT_MAX_BYTES);
        assert_eq!(cleaned.len(), AGENT_MAX_BYTES);
        assert_eq!(clean_agent(&[0xff, b'a']), "\u{fffd}a");
    }
}
