//! Reads from a replica for the feed (`read_from_replicas`, issue 11): which replica a session
//! reads from, whether it is healthy, and whether what it answered may be used.
//!
//! A feed that reads from a replica subscribes there (Redis propagates `PUBLISH` to replicas,
//! whose subscribers get it, so the fan-out spreads over the replicas) and reads the log
//! catch-up and the full resync there. Everything that writes or that can decide a re-seed
//! stays on the primary: the head reads (they renew the barrier registration, and a lagging
//! replica's head would look like a rolled-back or emptied store), `run_id`, the eviction and
//! durability checks, generation creation, re-seeding, pruning and the barrier scripts. A
//! replica's answer is only used when it shows the replica got at least as far as the
//! primary's head said; otherwise the feed waits a moment for it, then reads from the primary,
//! so a lagging replica never looks like a trimmed log or a lost data set.
//!
//! This module holds the pure decisions (unit-tested here) and the session-start choice; the
//! feed (`feed.rs`) carries them out. SPEC §3.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Client;
use ::redis::aio::MultiplexedConnection;
use rand_core::{OsRng, RngCore};

use super::protocol::LogEntry;
use super::{connect_for_sync, timed};
use crate::redis_target::RedisTarget;
use crate::revocation::StoreError;
use crate::revocation::settings::RevocationSettings;

/// How often a read from a replica that is behind the primary's head is retried, and how long
/// apart, before the read goes to the primary: about 100 ms of replication lag is absorbed.
pub(super) const LAG_ATTEMPTS: u32 = 10;
pub(super) const LAG_WAIT: Duration = Duration::from_millis(10);

/// How long a replica that failed or lagged a session is passed over by the next ones.
pub(super) const AVOID_FOR: Duration = Duration::from_secs(30);

/// A replica a session reads from: its feed client (for the subscription), a command
/// connection (for the log and resync reads) and its address.
#[derive(Clone)]
pub(super) struct ReplicaReads {
    pub(super) client: Client,
    pub(super) conn: MultiplexedConnection,
    pub(super) address: Arc<str>,
}

impl std::fmt::Debug for ReplicaReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds connection settings that may include a password.
        f.debug_struct("ReplicaReads")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// What `INFO replication` says about a node, as far as choosing a replica needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Replication {
    /// `role:` (`master` or `slave`).
    pub(super) role: Option<String>,
    /// `master_host:master_port`, the node it replicates from (for messages: behind NAT or
    /// a proxy it differs from the address the sentinels give the primary).
    pub(super) master: Option<String>,
    /// `master_link_status:up`.
    pub(super) link_up: bool,
    /// `master_replid`: the replication history the node is in. A replica synced with the
    /// primary has the primary's; one still attached to a primary that failed over does not.
    pub(super) replid: Option<String>,
}

impl Replication {
    /// Reads the fields of an `INFO replication` answer; unknown lines are ignored.
    pub(super) fn parse(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .filter_map(|line| line.trim().split_once(':'))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.trim().to_owned())
        };
        let master = match (field("master_host"), field("master_port")) {
            (Some(host), Some(port)) => Some(format!("{host}:{port}")),
            _ => None,
        };
        Self {
            role: field("role"),
            master,
            link_up: field("master_link_status").as_deref() == Some("up"),
            replid: field("master_replid"),
        }
    }

    /// Whether a feed may read from this node, `primary` being what the primary's own
    /// `INFO replication` says; else why not. Deny by default: a node that is not a replica,
    /// whose link is down, or that is not in the primary's replication history (attached to
    /// another node, such as a primary that failed over) is not used. The history, not the
    /// address, is compared: addresses differ behind NAT, proxies and host names.
    pub(super) fn judge(&self, primary: &Self) -> Result<(), String> {
        if self.role.as_deref() != Some("slave") {
            return Err(format!(
                "answers as {}, not as a replica",
                self.role.as_deref().unwrap_or("an unknown role")
            ));
        }
        if !self.link_up {
            return Err(format!(
                "its link to {} is down",
                self.master.as_deref().unwrap_or("its primary")
            ));
        }
        if primary.role.as_deref() != Some("master") {
            return Err("the primary does not answer as a primary".to_owned());
        }
        if self.replid.is_none() || self.replid != primary.replid {
            return Err(format!(
                "replicates from {}, not in the primary's replication history",
                self.master.as_deref().unwrap_or("nothing")
            ));
        }
        Ok(())
    }
}

/// What a replica's log page is worth to a catch-up that wants sequence `from` on, in
/// `generation`, up to at least `target` (the primary's head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PageFit {
    /// In order from `from`, in the generation, and reaching `target` (or a full page, which
    /// the next read continues): use it.
    Reaches,
    /// In order but short of `target`: the replica lags; wait for it a moment.
    Behind,
    /// Out of order (trimmed), of another generation or unreadable: only the primary's log
    /// may decide what that means, so read the page there at once.
    Other,
}

/// Judges a replica's `XRANGE` page (see [`PageFit`]). `is_last`: the page was shorter than
/// requested.
pub(super) fn page_fit(
    entries: &[LogEntry],
    is_last: bool,
    from: u64,
    generation: Option<&str>,
    target: u64,
) -> PageFit {
    let mut next = from;
    for entry in entries {
        let in_order = entry.seq == Some(next);
        if !in_order || entry.generation.as_deref() != generation || entry.change.is_none() {
            return PageFit::Other;
        }
        next += 1;
    }
    // `next - 1` is the last sequence the page holds (from - 1 when it is empty).
    if !is_last || next > target {
        PageFit::Reaches
    } else {
        PageFit::Behind
    }
}

/// Whether a replica whose head reads `replica` may serve a full resync for the primary's
/// head (`generation`, `seq`): it holds that generation and at least that sequence, so its
/// sets hold every change up to `seq` (later ones are merged too, and the log re-applies
/// them, which changes nothing).
pub(super) fn covers(replica: (Option<&str>, u64), generation: &str, seq: u64) -> bool {
    replica.0 == Some(generation) && replica.1 >= seq
}

/// The order to try `count` candidates in, starting at `start` (random, so verifiers spread
/// over the replicas).
pub(super) fn rotation(count: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (start + i) % count.max(1))
}

/// Reads a node's `INFO replication`.
pub(super) async fn replication(
    conn: &mut MultiplexedConnection,
    timeout: Duration,
) -> Result<Replication, StoreError> {
    let info: String = timed(
        timeout,
        "read the replication state",
        ::redis::cmd("INFO").arg("replication").query_async(conn),
    )
    .await?;
    Ok(Replication::parse(&info))
}

/// Chooses the replica a session reads from: the replicas the sentinels list, tried from a
/// random one on, skipping `avoid`, each connected to and checked with `INFO replication`
/// against `primary` (the primary's own). `Err`, with the reasons, when none is usable: the
/// session then reads from the primary.
pub(super) async fn choose(
    target: &RedisTarget,
    primary: &Replication,
    avoid: &[Arc<str>],
    settings: &RevocationSettings,
) -> Result<ReplicaReads, String> {
    let candidates = target
        .replicas()
        .await
        .map_err(|err| format!("no replica list: {err}"))?;
    if candidates.is_empty() {
        return Err("no usable replica is listed".to_owned());
    }
    let start = usize::try_from(OsRng.next_u32()).unwrap_or(0) % candidates.len();
    let mut reasons = Vec::new();
    for index in rotation(candidates.len(), start) {
        let Some(candidate) = candidates.get(index) else {
            continue;
        };
        let address = Arc::clone(&candidate.address);
        if avoid.contains(&address) {
            reasons.push(format!("{address}: failed or lagged recently"));
            continue;
        }
        match check(&candidate.client, target.is_cluster(), primary, settings).await {
            Ok(conn) => {
                return Ok(ReplicaReads {
                    client: candidate.client.clone(),
                    conn,
                    address,
                });
            }
            Err(reason) => reasons.push(format!("{address}: {reason}")),
        }
    }
    Err(reasons.join("; "))
}

/// Connects to a candidate and checks it replicates from `primary` with its link up. A
/// cluster replica is first told `READONLY`: without it, it redirects every keyed read
/// (`MOVED`) to the primary.
async fn check(
    client: &Client,
    cluster: bool,
    primary: &Replication,
    settings: &RevocationSettings,
) -> Result<MultiplexedConnection, String> {
    let timeout = settings.command_timeout;
    let mut conn = connect_for_sync(client, settings)
        .await
        .map_err(|err| err.to_string())?;
    if cluster {
        timed(
            timeout,
            "allow reads on a cluster replica",
            ::redis::cmd("READONLY").query_async::<()>(&mut conn),
        )
        .await
        .map_err(|err| err.to_string())?;
    }
    let replica = replication(&mut conn, timeout)
        .await
        .map_err(|err| err.to_string())?;
    replica.judge(primary)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::redis::Change;

    const REPLICA_INFO: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n\
                                master_port:6380\r\nmaster_link_status:up\r\n\
                                master_last_io_seconds_ago:0\r\n\
                                master_replid:8f3a\r\nslave_repl_offset:1234\r\n";
    const PRIMARY_INFO: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                                master_replid:8f3a\r\nmaster_replid2:0000\r\n";

    #[test]
    fn a_linked_replica_in_the_primary_history_is_usable() {
        let info = Replication::parse(REPLICA_INFO);
        assert_eq!(info.master.as_deref(), Some("127.0.0.1:6380"));
        assert_eq!(info.replid.as_deref(), Some("8f3a"));
        assert!(info.judge(&Replication::parse(PRIMARY_INFO)).is_ok());
    }

    #[test]
    fn a_replica_is_refused_when_its_link_is_down_or_it_follows_another_history() {
        let primary = Replication::parse(PRIMARY_INFO);
        let down = REPLICA_INFO.replace("link_status:up", "link_status:down");
        let refused = Replication::parse(&down).judge(&primary).unwrap_err();
        assert!(refused.contains("down"), "{refused}");
        // Still attached to a primary that failed over: another replication id.
        let failed_over = Replication::parse(&PRIMARY_INFO.replace("8f3a", "77aa"));
        let refused = Replication::parse(REPLICA_INFO).judge(&failed_over);
        assert!(refused.unwrap_err().contains("history"));
        // A primary is no replica; a replica named as the primary is no primary.
        assert!(primary.judge(&primary).is_err());
        let replica = Replication::parse(REPLICA_INFO);
        assert!(replica.judge(&replica).is_err());
        assert!(Replication::parse("").judge(&primary).is_err());
    }

    fn entry(seq: u64, generation: &str) -> LogEntry {
        LogEntry {
            id: format!("{seq}-0"),
            seq: Some(seq),
            generation: Some(generation.to_owned()),
            change: Some(Change::Resync),
        }
    }

    #[test]
    fn a_replica_page_up_to_the_primary_head_is_used() {
        let page = [entry(5, "g"), entry(6, "g"), entry(7, "g")];
        assert_eq!(page_fit(&page, true, 5, Some("g"), 7), PageFit::Reaches);
        assert_eq!(page_fit(&page, true, 5, Some("g"), 6), PageFit::Reaches);
        // A full page short of the head: the next page continues from the replica.
        assert_eq!(page_fit(&page, false, 5, Some("g"), 100), PageFit::Reaches);
    }

    #[test]
    fn a_replica_page_short_of_the_primary_head_is_lag_not_a_trimmed_log() {
        let page = [entry(5, "g"), entry(6, "g")];
        assert_eq!(page_fit(&page, true, 5, Some("g"), 7), PageFit::Behind);
        assert_eq!(page_fit(&[], true, 5, Some("g"), 5), PageFit::Behind);
    }

    #[test]
    fn a_replica_page_out_of_order_or_of_another_generation_is_left_to_the_primary() {
        let trimmed = [entry(6, "g"), entry(7, "g")];
        assert_eq!(page_fit(&trimmed, true, 5, Some("g"), 7), PageFit::Other);
        let other = [entry(5, "old")];
        assert_eq!(page_fit(&other, true, 5, Some("g"), 5), PageFit::Other);
        let mut unreadable = entry(5, "g");
        unreadable.change = None;
        assert_eq!(
            page_fit(&[unreadable], true, 5, Some("g"), 5),
            PageFit::Other
        );
    }

    #[test]
    fn a_full_resync_uses_a_replica_only_at_or_past_the_primary_head() {
        assert!(covers((Some("g"), 10), "g", 10));
        assert!(covers((Some("g"), 12), "g", 10));
        assert!(!covers((Some("g"), 9), "g", 10), "behind: lag");
        assert!(!covers((Some("old"), 50), "g", 10), "another data set");
        assert!(!covers((None, 0), "g", 0), "no generation yet");
    }

    #[test]
    fn every_candidate_is_tried_once_from_the_start() {
        assert_eq!(rotation(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(1, 0).collect::<Vec<_>>(), [0]);
        assert_eq!(rotation(0, 0).count(), 0);
    }
}
