//! Typed settings of the revocation engine (SPEC §3), with their defaults.
//!
//! This module owns the values the engine runs with and their validation; reading them from
//! the configuration file and the environment is `config`'s job, which builds a
//! [`RevocationSettings`] and hands it over. The defaults follow SPEC §3 and THREATS §4.

use std::fmt;
use std::time::Duration;

use super::{DurabilityLevel, StoreError};
use crate::redis_target::{ClusterSettings, SentinelSettings};

/// The longest lifetime a token may have (SPEC §1): a watermark revocation can be pruned once
/// this plus the leeway has passed since its `before`.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_hours(12);

/// The longest `wait_timeout` accepted.
const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `barrier_timeout` accepted.
const MAX_BARRIER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `bulk_timeout`: a sync step waiting longer than this is stuck, not queued.
const MAX_BULK_TIMEOUT: Duration = Duration::from_mins(10);

/// What a verifier does once its revocation state is older than `max_staleness` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Answer [`RevocationStatus::Unavailable`](super::RevocationStatus::Unavailable) (503) for
    /// every token the stale state does not already know to be revoked. The default.
    #[default]
    FailClosed,
    /// Keep answering from the last state seen. A token revoked while the mirror was cut off
    /// keeps working for at most its remaining lifetime (≤ 12 h); choose this only with an
    /// alarm on staleness.
    Serve,
}

/// Settings of the revocation store and of every verifier's mirror.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationSettings {
    /// Redis URL (`redis://` or `rediss://`, optionally with `?protocol=resp3`). `None` (the
    /// default) runs the in-process store: one process, nothing survives a restart.
    ///
    /// # Security
    /// May hold a password; `Debug` prints it redacted.
    pub redis_url: Option<String>,
    /// Redis under Sentinel: the primary is whatever the sentinels name, followed through
    /// failovers. Exclusive with `redis_url`. Default `None`.
    pub sentinel: Option<SentinelSettings>,
    /// Redis Cluster: the primary is that of the slot of the hash tag `{key_prefix}`, which
    /// holds every key of the deployment, found through seed nodes and followed through
    /// failovers and resharding. Exclusive with `redis_url` and `sentinel`. Default `None`.
    pub cluster: Option<ClusterSettings>,
    /// Replicas that must confirm a revoke (`WAIT`) before it is acknowledged; fewer within
    /// `wait_timeout` and the revoke answers 503. `None` (the default): 1 when the primary
    /// has replicas (always under Sentinel or Cluster), 0 otherwise.
    pub min_replicas_acked: Option<u32>,
    /// How long a revoke waits for `min_replicas_acked` replicas. Default 500 ms, at most
    /// 10 s; the write with its wait may take `command_timeout` plus this.
    pub wait_timeout: Duration,
    /// The least durability the deployment must give (see [`DurabilityLevel`]): a Redis
    /// primary below it is refused at start, and revokes against it answer 503. Default
    /// [`DurabilityLevel::None`].
    pub require_durability: DurabilityLevel,
    /// Prefix of every Redis key and channel of this deployment, so several deployments (and
    /// tests) can share one Redis. 1-64 of `A-Z a-z 0-9 _ - . :`. Default `edgetoken`.
    pub key_prefix: String,
    /// How old the mirror's last confirmation from Redis may get before `on_stale` applies.
    /// Default 60 s (SPEC §3).
    pub max_staleness: Duration,
    /// Policy past `max_staleness`, and for a mirror that never completed its first sync.
    /// Default [`OnStale::FailClosed`].
    pub on_stale: OnStale,
    /// How often a mirror asks Redis for the current sequence number. Bounds how late a missed
    /// change or an emptied Redis is noticed, and refreshes staleness. Default 1 s.
    pub heartbeat: Duration,
    /// Clock leeway of token validation (SPEC §1): entries are kept until `exp + leeway`.
    /// Default 30 s.
    pub leeway: Duration,
    /// Longest wait for any single Redis command before it counts as failed. Default 2 s.
    pub command_timeout: Duration,
    /// Longest wait for one bulk step of a mirror's sync: a page of a full resync, a re-seed
    /// pipeline. Default 30 s, at least `command_timeout`.
    ///
    /// Why apart from `command_timeout`: after a Redis restart every mirror re-seeds and
    /// resyncs at once, and each reply waits behind the others' bulk work. A failed step ends
    /// the session and the next one starts the sync over, so a short timeout there turns the
    /// queue into more queue (`docs/scale.md`, the resync storm: 1,000 mirrors did not settle
    /// in 240 s with 2 s, and did in 50 s with 10 s). A dead Redis is still noticed within
    /// `command_timeout`: the heartbeat and every other command keep it.
    pub bulk_timeout: Duration,
    /// How many changes the replay log keeps. A mirror further behind than this resyncs in full
    /// instead of catching up. Default 100 000.
    pub log_max_len: u64,
    /// How often expired entries are pruned from the mirror and from Redis. Default 30 s.
    pub prune_interval: Duration,
    /// How long a revoke waits, after Redis accepted it, for every registered mirror to
    /// confirm it applied the change (the barrier, SPEC §3). Past it the revoke answers that
    /// some mirrors lag, and the bound within which they refuse anyway. Zero: do not wait.
    /// Default 50 ms; at most 10 s.
    pub barrier_timeout: Duration,
    /// Verifier feeds subscribe, catch up and resync in full against a replica of the
    /// primary (found through the sentinels, checked to be linked to the primary), so pub/sub
    /// fan-out and bulk reads spread over the replicas; every write, and every read that can
    /// decide a re-seed, stays on the primary. A feed falls back to the primary when no
    /// replica is usable. Needs Sentinel. Default `false`.
    pub read_from_replicas: bool,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            sentinel: None,
            cluster: None,
            min_replicas_acked: None,
            wait_timeout: Duration::from_millis(500),
            require_durability: DurabilityLevel::None,
            key_prefix: "edgetoken".to_owned(),
            max_staleness: Duration::from_mins(1),
            on_stale: OnStale::FailClosed,
            heartbeat: Duration::from_secs(1),
            leeway: Duration::from_secs(30),
            command_timeout: Duration::from_secs(2),
            bulk_timeout: Duration::from_secs(30),
            log_max_len: 100_000,
            prune_interval: Duration::from_secs(30),
            barrier_timeout: Duration::from_millis(50),
            read_from_replicas: false,
        }
    }
}

impl RevocationSettings {
    /// Checks every field.
    ///
    /// # Errors
    /// [`StoreError::Settings`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |field: &'static str, reason: &str| StoreError::Settings {
            field,
            reason: reason.to_owned(),
        };
        let prefix_ok = (1..=64).contains(&self.key_prefix.len())
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !prefix_ok {
            return Err(invalid("key_prefix", "must be 1-64 of A-Z a-z 0-9 _ - . :"));
        }
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str()).map_err(StoreError::RedisUrl)?;
        }
        if let Some(sentinel) = &self.sentinel {
            if self.redis_url.is_some() {
                return Err(invalid(
                    "sentinel",
                    "set either redis_url or the sentinel settings, not both",
                ));
            }
            sentinel
                .validate()
                .map_err(|reason| invalid("sentinel", &reason))?;
        }
        if let Some(cluster) = &self.cluster {
            if self.redis_url.is_some() || self.sentinel.is_some() {
                return Err(invalid(
                    "cluster",
                    "set one of redis_url, the sentinel settings or cluster_nodes, not several",
                ));
            }
            cluster
                .validate()
                .map_err(|reason| invalid("cluster", &reason))?;
        }
        if self.wait_timeout.is_zero() || self.wait_timeout > MAX_WAIT_TIMEOUT {
            return Err(invalid(
                "wait_timeout",
                "must be above zero and at most 10 s: a revoke holds its caller that long",
            ));
        }
        if self.require_durability > DurabilityLevel::None && self.min_replicas_acked == Some(0) {
            return Err(invalid(
                "min_replicas_acked",
                "0 gives durability `none`, below require_durability",
            ));
        }
        if self.require_durability > DurabilityLevel::None && !self.uses_redis() {
            return Err(invalid(
                "require_durability",
                "the in-process store keeps nothing across a restart; it needs Redis",
            ));
        }
        for (field, value) in [
            ("max_staleness", self.max_staleness),
            ("heartbeat", self.heartbeat),
            ("command_timeout", self.command_timeout),
            ("prune_interval", self.prune_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.bulk_timeout < self.command_timeout || self.bulk_timeout > MAX_BULK_TIMEOUT {
            return Err(invalid(
                "bulk_timeout",
                "must be at least command_timeout and at most 10 min",
            ));
        }
        if self.heartbeat >= self.max_staleness {
            return Err(invalid(
                "heartbeat",
                "must be shorter than max_staleness, or the mirror is stale between heartbeats",
            ));
        }
        if self.leeway > Duration::from_mins(5) {
            return Err(invalid("leeway", "must be at most 5 min (SPEC §1)"));
        }
        if self.barrier_timeout > MAX_BARRIER_TIMEOUT {
            return Err(invalid(
                "barrier_timeout",
                "must be at most 10 s: a revoke holds its caller that long",
            ));
        }
        if self.read_from_replicas && self.sentinel.is_none() && self.cluster.is_none() {
            return Err(invalid(
                "read_from_replicas",
                "needs Sentinel or Cluster: replicas are found through the sentinels or the \
                 cluster's seeds, and a redis_url names a single node",
            ));
        }
        if self.log_max_len == 0 {
            return Err(invalid("log_max_len", "must be greater than zero"));
        }
        Ok(())
    }

    /// Whether revocations live in Redis (a URL, Sentinel or Cluster) rather than in this
    /// process.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || self.sentinel.is_some() || self.cluster.is_some()
    }

    /// Where Redis is, for logs and the start banner, without credentials.
    pub fn describe_redis(&self) -> String {
        match (&self.redis_url, &self.sentinel, &self.cluster) {
            (Some(url), _, _) => redact_url(url),
            (None, Some(sentinel), _) => sentinel.describe(),
            (None, None, Some(cluster)) => cluster.describe(&self.key_prefix),
            (None, None, None) => "in-process".to_owned(),
        }
    }

    /// The longest a revoke against Redis takes to answer: 3 × `command_timeout` +
    /// `wait_timeout` + `barrier_timeout`, 6.55 s by default. A revoke still under way then
    /// answers 503, even if Redis already holds the change (a retry is a no-op, and this
    /// process's mirror refuses the token already). A budget, not the sum of every step's own
    /// timeout (an open alone may send five commands): it fits an open, the write with its
    /// `WAIT` and the barrier on a Redis that answers, and ends a revoke on one that does not.
    pub fn revoke_deadline(&self) -> Duration {
        self.command_timeout
            .saturating_mul(3)
            .saturating_add(self.wait_timeout)
            .saturating_add(self.barrier_timeout)
    }

    /// The leeway in whole seconds, as used by the prune arithmetic.
    pub(crate) fn leeway_secs(&self) -> i64 {
        i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX)
    }

    /// How long after its `before` a watermark revocation can still matter: the longest token
    /// lifetime plus the leeway, in seconds.
    pub(crate) fn watermark_retention_secs(&self) -> i64 {
        let lifetime = i64::try_from(MAX_TOKEN_LIFETIME.as_secs()).unwrap_or(i64::MAX);
        lifetime.saturating_add(self.leeway_secs())
    }
}

impl fmt::Debug for RevocationSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationSettings")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .field("min_replicas_acked", &self.min_replicas_acked)
            .field("wait_timeout", &self.wait_timeout)
            .field("require_durability", &self.require_durability)
            .field("key_prefix", &self.key_prefix)
            .field("max_staleness", &self.max_staleness)
            .field("on_stale", &self.on_stale)
            .field("heartbeat", &self.heartbeat)
            .field("leeway", &self.leeway)
            .field("command_timeout", &self.command_timeout)
            .field("bulk_timeout", &self.bulk_timeout)
            .field("log_max_len", &self.log_max_len)
            .field("prune_interval", &self.prune_interval)
            .field("barrier_timeout", &self.barrier_timeout)
            .field("read_from_replicas", &self.read_from_replicas)
            .finish()
    }
}

/// `redis://user:secret@host/` → `redis://***@host/`: the credentials never reach a log.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_credentials, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_spec() {
        let settings = RevocationSettings::default();
        settings.validate().unwrap();
        assert_eq!(settings.max_staleness, Duration::from_mins(1));
        assert_eq!(settings.on_stale, OnStale::FailClosed);
        assert_eq!(settings.leeway, Duration::from_secs(30));
        assert!(settings.redis_url.is_none());
    }

    #[test]
    fn bulk_timeout_is_at_least_the_command_timeout_and_at_most_ten_minutes() {
        assert_eq!(
            RevocationSettings::default().bulk_timeout,
            Duration::from_secs(30)
        );
        for (bulk, ok) in [
            (Duration::from_secs(2), true),
            (Duration::from_mins(10), true),
            (Duration::from_secs(1), false),
            (Duration::from_secs(601), false),
        ] {
            let settings = RevocationSettings {
                bulk_timeout: bulk,
                ..RevocationSettings::default()
            };
            let outcome = settings.validate();
            assert_eq!(outcome.is_ok(), ok, "{bulk:?}: {outcome:?}");
            if !ok {
                assert!(matches!(
                    outcome,
                    Err(StoreError::Settings {
                        field: "bulk_timeout",
                        ..
                    })
                ));
            }
        }
    }

    #[test]
    fn validate_names_the_bad_key_prefix() {
        let settings = RevocationSettings {
            key_prefix: "a b".to_owned(),
            ..RevocationSettings::default()
        };
        let err = settings.validate().unwrap_err();
        assert!(matches!(
            err,
            StoreError::Settings {
                field: "key_prefix",
                ..
            }
        ));
    }

    #[test]
    fn validate_refuses_heartbeat_not_shorter_than_max_staleness() {
        let settings = RevocationSettings {
            heartbeat: Duration::from_mins(1),
            ..RevocationSettings::default()
        };
        let err = settings.validate().unwrap_err();
        assert!(matches!(
            err,
            StoreError::Settings {
                field: "heartbeat",
                ..
            }
        ));
    }

    #[test]
    fn validate_refuses_a_redis_url_that_does_not_parse() {
        let settings = RevocationSettings {
            redis_url: Some("http://cache:6379".to_owned()),
            ..RevocationSettings::default()
        };
        assert!(matches!(settings.validate(), Err(StoreError::RedisUrl(_))));
    }

    fn sentinel() -> SentinelSettings {
        SentinelSettings {
            master_name: "edgetoken".to_owned(),
            addresses: vec!["10.0.0.1:26379".to_owned()],
            password: Some("hunter2".to_owned()),
        }
    }

    #[test]
    fn validate_refuses_both_a_url_and_sentinel() {
        let settings = RevocationSettings {
            redis_url: Some("redis://cache:6379".to_owned()),
            sentinel: Some(sentinel()),
            ..RevocationSettings::default()
        };
        assert!(matches!(
            settings.validate(),
            Err(StoreError::Settings {
                field: "sentinel",
                ..
            })
        ));
        let settings = RevocationSettings {
            sentinel: Some(sentinel()),
            ..RevocationSettings::default()
        };
        settings.validate().unwrap();
        assert!(settings.uses_redis());
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    fn cluster() -> ClusterSettings {
        ClusterSettings {
            nodes: vec!["10.0.0.1:7000".to_owned(), "10.0.0.2:7001".to_owned()],
            password: Some("hunter2".to_owned()),
        }
    }

    #[test]
    fn validate_refuses_cluster_with_a_url_or_sentinel_and_bad_nodes() {
        for other in [
            RevocationSettings {
                redis_url: Some("redis://cache:6379".to_owned()),
                ..RevocationSettings::default()
            },
            RevocationSettings {
                sentinel: Some(sentinel()),
                ..RevocationSettings::default()
            },
        ] {
            let settings = RevocationSettings {
                cluster: Some(cluster()),
                ..other
            };
            assert!(matches!(
                settings.validate(),
                Err(StoreError::Settings {
                    field: "cluster",
                    ..
                })
            ));
        }
        let bad = RevocationSettings {
            cluster: Some(ClusterSettings {
                nodes: vec!["10.0.0.1".to_owned()],
                password: None,
            }),
            ..RevocationSettings::default()
        };
        let Err(StoreError::Settings { field, reason }) = bad.validate() else {
            panic!("a seed without a port accepted");
        };
        assert_eq!(field, "cluster");
        assert!(reason.contains("`10.0.0.1` is not host:port"), "{reason}");
        let settings = RevocationSettings {
            cluster: Some(cluster()),
            ..RevocationSettings::default()
        };
        settings.validate().unwrap();
        assert!(settings.uses_redis());
        assert!(!format!("{settings:?}").contains("hunter2"));
        let described = settings.describe_redis();
        assert!(
            described.starts_with("cluster slot ") && described.contains("10.0.0.2:7001"),
            "{described}"
        );
    }

    #[test]
    fn validate_refuses_a_wait_timeout_over_ten_seconds() {
        let settings = RevocationSettings {
            wait_timeout: Duration::from_secs(11),
            ..RevocationSettings::default()
        };
        assert!(matches!(
            settings.validate(),
            Err(StoreError::Settings {
                field: "wait_timeout",
                ..
            })
        ));
    }

    #[test]
    fn validate_refuses_required_durability_that_cannot_be_met() {
        let in_process = RevocationSettings {
            require_durability: DurabilityLevel::Replicated,
            ..RevocationSettings::default()
        };
        assert!(in_process.validate().is_err());
        let no_replicas = RevocationSettings {
            redis_url: Some("redis://cache:6379".to_owned()),
            min_replicas_acked: Some(0),
            require_durability: DurabilityLevel::Replicated,
            ..RevocationSettings::default()
        };
        assert!(no_replicas.validate().is_err());
    }

    #[test]
    fn validate_accepts_a_tls_redis_url() {
        // `rediss://` needs the redis crate's rustls features: without them it does not parse.
        let settings = RevocationSettings {
            redis_url: Some("rediss://:secret@cache.example:6380/0".to_owned()),
            ..RevocationSettings::default()
        };
        settings.validate().unwrap();
    }

    #[test]
    fn debug_redacts_redis_password() {
        let settings = RevocationSettings {
            redis_url: Some("redis://user:hunter2@cache:6380/0".to_owned()),
            ..RevocationSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("redis://***@cache:6380/0"));
    }
}
