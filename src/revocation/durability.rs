//! What an acknowledged revoke survives (SPEC §3, THREATS §3.3 and F8).
//!
//! Redis replicates asynchronously and persists on its own schedule, so "Redis accepted it" is
//! not "it survives the primary's death". This module names the levels a deployment gives
//! ([`DurabilityLevel`]), what was measured on the primary ([`Durability`]: replicas,
//! `appendonly`, `appendfsync`, and how many replicas a revoke must reach), and how the two
//! compare with the operator's `require_durability`. Measuring is the Redis store's job
//! (`revocation::redis`); this file is pure.

use std::fmt;

/// How much an acknowledged revoke survives; levels are ordered, each includes the one below.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityLevel {
    /// Accepted by the primary only: a failover to a lagging replica, or a restart without an
    /// fsynced AOF, can lose it (until a mirror that holds it re-seeds the store). The default
    /// requirement.
    #[default]
    None,
    /// Every revoke is confirmed by at least one replica (`WAIT`, `min_replicas_acked` ≥ 1)
    /// before it is acknowledged: it survives the loss of the primary.
    Replicated,
    /// `Replicated`, and the primary also writes its AOF with `appendfsync always`: it
    /// survives losing the primary and every replica's memory at once.
    Fsync,
}

impl DurabilityLevel {
    /// The `snake_case` name, as in the configuration and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Replicated => "replicated",
            Self::Fsync => "fsync",
        }
    }
}

impl fmt::Display for DurabilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the Redis primary gives an acknowledged revoke, as measured when a connection to it
/// opens (and, for `last_replicas_acked`, at each revoke).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Durability {
    /// The level this adds up to.
    pub level: DurabilityLevel,
    /// Replicas connected to the primary (`INFO replication`, `connected_slaves`).
    pub connected_replicas: u32,
    /// Replicas each revoke waits for (`WAIT`) before it is acknowledged: the configured
    /// `min_replicas_acked`, or its default.
    pub min_replicas_acked: u32,
    /// `appendonly` (`CONFIG GET`, else `INFO persistence`); `None` when Redis would not say.
    pub appendonly: Option<bool>,
    /// `appendfsync` (`always`, `everysec`, `no`); `None` when `CONFIG` is disabled.
    pub appendfsync: Option<String>,
    /// Replicas that confirmed the last revoke this process made (`WAIT`'s answer); `None`
    /// before one, or when revokes do not wait.
    pub last_replicas_acked: Option<u64>,
    /// Where this was measured: `cluster slot N, primary HOST:PORT`, `sentinel master NAME,
    /// primary HOST:PORT`, or the address of a single Redis.
    pub primary: Option<String>,
}

impl Durability {
    /// Measured facts, with the level they add up to.
    pub(crate) fn new(
        connected_replicas: u32,
        min_replicas_acked: u32,
        appendonly: Option<bool>,
        appendfsync: Option<String>,
    ) -> Self {
        let level = if min_replicas_acked == 0 {
            DurabilityLevel::None
        } else if appendonly == Some(true) && appendfsync.as_deref() == Some("always") {
            DurabilityLevel::Fsync
        } else {
            DurabilityLevel::Replicated
        };
        Self {
            level,
            connected_replicas,
            min_replicas_acked,
            appendonly,
            appendfsync,
            last_replicas_acked: None,
            primary: None,
        }
    }

    /// One line for the start banner and logs.
    pub fn describe(&self) -> String {
        format!(
            "durability {}: revokes wait for {} replica(s) ({} connected), appendonly {}, \
             appendfsync {}",
            self.level,
            self.min_replicas_acked,
            self.connected_replicas,
            self.appendonly
                .map_or("unknown", |on| if on { "yes" } else { "no" }),
            self.appendfsync.as_deref().unwrap_or("unknown"),
        )
    }
}

/// The default of `min_replicas_acked`: 1 when the primary has replicas, 0 otherwise. Under
/// Sentinel or Cluster (`failover`) it is always 1: the primary is there to be replaced by a
/// replica, and a revoke only on the primary is lost by exactly that failover (F8); with no
/// replica connected, revokes then answer 503 until one is.
pub(crate) fn default_min_replicas_acked(failover: bool, connected_replicas: u32) -> u32 {
    u32::from(failover || connected_replicas > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_replicas_waited_for_and_fsync() {
        assert_eq!(
            Durability::new(2, 0, Some(true), Some("always".into())).level,
            DurabilityLevel::None
        );
        assert_eq!(
            Durability::new(2, 1, Some(true), Some("everysec".into())).level,
            DurabilityLevel::Replicated
        );
        assert_eq!(
            Durability::new(2, 1, Some(true), Some("always".into())).level,
            DurabilityLevel::Fsync
        );
        assert!(DurabilityLevel::Fsync > DurabilityLevel::Replicated);
        assert!(DurabilityLevel::Replicated > DurabilityLevel::None);
    }

    #[test]
    fn replicas_are_waited_for_by_default_when_there_are_some_or_under_failover() {
        assert_eq!(default_min_replicas_acked(false, 0), 0);
        assert_eq!(default_min_replicas_acked(false, 2), 1);
        assert_eq!(default_min_replicas_acked(true, 0), 1);
    }
}
