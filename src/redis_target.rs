//! Where the deployment's Redis primary is: one URL, whatever the Sentinels name now, or the
//! primary of the deployment's Redis Cluster slot.
//!
//! Every part that talks to Redis (the revocation store, feed and barrier, token records,
//! usage, page sessions) opens its connections through a `RedisTarget`, so a failover is
//! followed in one place. For a URL the target is a fixed `redis::Client`. For
//! Sentinel it asks the sentinels for the primary of `master_name` (the redis crate's
//! `Sentinel`, which reads `SENTINEL MASTERS`, skips a primary flagged down and checks with
//! `ROLE` that the node it names really is a primary), and:
//! - remembers the answer until a caller reports that a connection to it failed or that it
//!   answered as a replica (`RedisTarget::invalidate`, or `RedisTarget::forget` naming the
//!   address that failed; see [`is_lost_primary_error`]). One lookup at a time, in a task of
//!   its own that callers wait on and none can cancel. No
//!   periodic re-check: a primary that failed over either dies (connections break) or is
//!   demoted (writes answer `READONLY`), and either is reported; and thousands of verifiers
//!   re-asking every second would load the sentinels and the primary for nothing;
//! - after a failed lookup (sentinels unreachable, or still naming the dead primary during a
//!   failover) waits a bounded, jittered back-off before asking again, answering the last
//!   error meanwhile, so callers retrying in a loop cannot flood the sentinels.
//!
//! For Cluster it asks the seed nodes which node is the primary of the slot holding every
//! key of the deployment (`cluster`), with the same caching and back-off; a slot that moved
//! answers `MOVED`, reported like a lost connection.
//!
//! For feeds that read from replicas (`read_from_replicas`), it also lists the replicas the
//! sentinels or the cluster know (`RedisTarget::replicas`); choosing one and judging its
//! health is the feed's job. SPEC §3.

mod cluster;

pub use cluster::{ClusterSettings, slot_of};

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use redis::sentinel::Sentinel;
use redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, RedisResult};
use tokio::time::Instant;
use tracing::Instrument as _;

/// The first wait after a failed lookup; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait after failed lookups: bounds how late a finished failover is noticed.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How to reach a Redis deployment that runs under Sentinel.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub master_name: String,
    /// The sentinels, as `host:port`; asked in this order, up to three at once.
    pub addresses: Vec<String>,
    /// The sentinels' password (`requirepass` in sentinel.conf), if any.
    ///
    /// # Security
    /// `Debug` prints it redacted.
    pub password: Option<String>,
}

impl fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field("addresses", &self.addresses)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SentinelSettings {
    /// Checks the name and parses every address.
    ///
    /// # Errors
    /// A message saying what is wrong, for the caller to attach to its field.
    pub fn validate(&self) -> Result<(), String> {
        if self.master_name.is_empty() || self.master_name.chars().any(char::is_whitespace) {
            return Err("sentinel_master_name must be a non-empty name without spaces".to_owned());
        }
        if self.addresses.is_empty() {
            return Err("sentinel_addresses needs at least one host:port".to_owned());
        }
        for address in &self.addresses {
            parse_host_port(address)?;
        }
        Ok(())
    }

    /// `master NAME via sentinels A, B, C`, for logs and the start banner (no password).
    pub fn describe(&self) -> String {
        format!(
            "master {} via sentinels {}",
            self.master_name,
            self.addresses.join(", ")
        )
    }

    fn connection_infos(&self) -> RedisResult<Vec<redis::ConnectionInfo>> {
        self.addresses
            .iter()
            .map(|address| {
                let (host, port) = parse_host_port(address).map_err(|reason| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "sentinel address", reason))
                })?;
                let mut info = ConnectionAddr::Tcp(host, port).into_connection_info()?;
                if let Some(password) = &self.password {
                    let redis = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(redis);
                }
                Ok(info)
            })
            .collect()
    }
}

/// `host:port` (an IPv6 host in brackets: `[::1]:26379`).
fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    let bad = || format!("`{address}` is not host:port");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_parse| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// Where the primary is: cheap to clone, shared by every connection of one component.
#[derive(Clone)]
pub(crate) struct RedisTarget {
    inner: Arc<Inner>,
}

enum Inner {
    // Both boxed: which variant is larger depends on the TLS features, and either way a
    // target should not carry the other's size.
    /// A fixed primary, with its address computed once.
    Url(Box<Primary>),
    /// A primary that can move: named by the sentinels or by the cluster.
    Resolved(Box<Resolver>),
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the URL, which may hold a password: never print it.
        match &*self.inner {
            Inner::Url(_) => f.write_str("RedisTarget::Url"),
            Inner::Resolved(resolver) => f
                .debug_struct("RedisTarget::Resolved")
                .field("source", &resolver.source.name())
                .finish_non_exhaustive(),
        }
    }
}

/// A primary's client and its address (what tells two answers apart).
#[derive(Clone)]
pub(crate) struct Primary {
    pub(crate) client: Client,
    pub(crate) address: Arc<str>,
}

impl Primary {
    fn of(client: Client) -> Self {
        Self {
            address: Arc::from(client.get_connection_info().addr().to_string()),
            client,
        }
    }
}

struct Resolver {
    source: Source,
    timeout: Duration,
    /// Held during a lookup: one at a time, the callers waiting behind it find its answer.
    lookup: tokio::sync::Mutex<()>,
    state: Mutex<ResolverState>,
}

/// Who names the primary.
enum Source {
    Sentinel {
        master_name: String,
        /// The sentinel client (it caches its connections; used under `Resolver::lookup`).
        sentinel: tokio::sync::Mutex<Sentinel>,
    },
    Cluster(cluster::Lookup),
}

impl Source {
    /// `master NAME` or `cluster slot N`, for logs and `/readyz`.
    fn name(&self) -> String {
        match self {
            Self::Sentinel { master_name, .. } => format!("sentinel master {master_name}"),
            Self::Cluster(lookup) => format!("cluster slot {}", lookup.slot),
        }
    }

    /// Who was asked, for the error of a failed lookup.
    fn asked(&self) -> &'static str {
        match self {
            Self::Sentinel { .. } => "no Redis primary from the sentinels",
            Self::Cluster(_) => "no Redis primary from the cluster's seed nodes",
        }
    }

    async fn find(&self, timeout: Duration) -> Result<Client, String> {
        match self {
            Self::Sentinel {
                master_name,
                sentinel,
            } => {
                let mut sentinel = sentinel.lock().await;
                match tokio::time::timeout(timeout, sentinel.async_master_for(master_name, None))
                    .await
                {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_elapsed) => Err(format!("no sentinel answered within {timeout:?}")),
                }
            }
            Self::Cluster(lookup) => {
                match tokio::time::timeout(timeout, lookup.primary(timeout)).await {
                    Ok(found) => found,
                    Err(_elapsed) => Err(format!("no cluster node answered within {timeout:?}")),
                }
            }
        }
    }
}

#[derive(Default)]
struct ResolverState {
    /// The last primary named, until a caller reports it lost.
    known: Option<Primary>,
    /// After a failed lookup: no new one before this, and the error to answer meanwhile.
    retry: Option<(Instant, String)>,
    backoff: Option<Duration>,
}

impl RedisTarget {
    /// A target for one URL (`redis://`, `rediss://`).
    pub(crate) fn url(url: &str) -> RedisResult<Self> {
        Ok(Self {
            inner: Arc::new(Inner::Url(Box::new(Primary::of(Client::open(url)?)))),
        })
    }

    /// A target that follows the primary the sentinels name; each lookup bounded by `timeout`.
    pub(crate) fn sentinel(settings: &SentinelSettings, timeout: Duration) -> RedisResult<Self> {
        let sentinel = Sentinel::build(settings.connection_infos()?)?;
        Ok(Self::resolved(
            Source::Sentinel {
                master_name: settings.master_name.clone(),
                sentinel: tokio::sync::Mutex::new(sentinel),
            },
            timeout,
        ))
    }

    /// A target that follows the primary of the cluster slot of `{key_prefix}`, asking the
    /// seed nodes; each lookup bounded by `timeout`.
    pub(crate) fn cluster(
        settings: &ClusterSettings,
        key_prefix: &str,
        timeout: Duration,
    ) -> RedisResult<Self> {
        Ok(Self::resolved(
            Source::Cluster(cluster::Lookup::new(settings, key_prefix)?),
            timeout,
        ))
    }

    fn resolved(source: Source, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner::Resolved(Box::new(Resolver {
                source,
                timeout,
                lookup: tokio::sync::Mutex::new(()),
                state: Mutex::new(ResolverState::default()),
            }))),
        }
    }

    /// Whether the nodes are a Redis Cluster's: a connection that reads from a replica there
    /// must say `READONLY` first, or every keyed read is redirected to the primary.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(&*self.inner, Inner::Resolved(resolver) if matches!(resolver.source, Source::Cluster(_)))
    }

    /// Whether the primary can move (Sentinel, Cluster): a lost connection then drops the
    /// connection and asks where the primary is now.
    pub(crate) fn follows_failover(&self) -> bool {
        matches!(&*self.inner, Inner::Resolved(_))
    }

    /// Where a primary at `address` sits in this target, for `/readyz` and logs:
    /// `cluster slot N, primary HOST:PORT`, `sentinel master NAME, primary HOST:PORT`, or the
    /// address alone.
    pub(crate) fn describe_primary(&self, address: &str) -> String {
        match &*self.inner {
            Inner::Url(_) => address.to_owned(),
            Inner::Resolved(resolver) => {
                format!("{}, primary {address}", resolver.source.name())
            }
        }
    }

    /// The current primary.
    ///
    /// # Errors
    /// For Sentinel: no sentinel answered within the timeout, none names a primary that
    /// answers as one (a failover in progress), or the last lookup failed and its back-off
    /// has not passed yet.
    pub(crate) async fn primary(&self) -> RedisResult<Primary> {
        match &*self.inner {
            Inner::Url(primary) => Ok(Primary::clone(primary)),
            Inner::Resolved(resolver) => {
                if let Some(answer) = resolver.cached() {
                    return answer;
                }
                // The lookup runs in a task of its own: a caller dropped while it waits (its
                // HTTP client went away) must not throw away the lookup others queue for.
                let target = self.clone();
                let lookup = tokio::spawn(
                    async move {
                        match &*target.inner {
                            Inner::Url(primary) => Ok(Primary::clone(primary)),
                            Inner::Resolved(resolver) => resolver.primary().await,
                        }
                    }
                    .in_current_span(),
                );
                lookup.await.unwrap_or_else(|ended| {
                    Err(RedisError::from((
                        ErrorKind::Io,
                        "the primary lookup ended without an answer",
                        ended.to_string(),
                    )))
                })
            }
        }
    }

    /// The current primary's client (see [`RedisTarget::primary`]).
    ///
    /// # Errors
    /// As [`RedisTarget::primary`].
    pub(crate) async fn client(&self) -> RedisResult<Client> {
        Ok(self.primary().await?.client)
    }

    /// The replicas of the primary, as the sentinels list them now (those not flagged down
    /// that answer `ROLE` as replicas) or the cluster lists the slot's online replicas, each
    /// with its address; none for a URL, which names no replicas. Asked anew at every call: the feed calls it once per session.
    ///
    /// # Errors
    /// No sentinel (or seed) answered within the timeout, or the lookup failed.
    pub(crate) async fn replicas(&self) -> RedisResult<Vec<Primary>> {
        match &*self.inner {
            Inner::Url(_) => Ok(Vec::new()),
            Inner::Resolved(resolver) => resolver.replicas().await,
        }
    }

    /// Reports that a connection to the primary failed, or that the slot moved: the next
    /// lookup asks the sentinels or the cluster. Nothing to do for a URL (the client
    /// reconnects to the same address).
    pub(crate) fn invalidate(&self) {
        if let Inner::Resolved(resolver) = &*self.inner {
            resolver.lock().known = None;
        }
    }

    /// As [`RedisTarget::invalidate`], but only while the remembered primary is the one at
    /// `address`: a failure seen on a connection to a primary already replaced says nothing
    /// of the new one, and forgetting it would cost every caller a lookup.
    pub(crate) fn forget(&self, address: &str) {
        if let Inner::Resolved(resolver) = &*self.inner {
            let mut state = resolver.lock();
            if state
                .known
                .as_ref()
                .is_some_and(|known| *known.address == *address)
            {
                state.known = None;
            }
        }
    }
}

impl Resolver {
    fn lock(&self) -> std::sync::MutexGuard<'_, ResolverState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The remembered primary; else the last error while its back-off lasts; else `None`: a
    /// lookup is due.
    fn cached(&self) -> Option<RedisResult<Primary>> {
        let state = self.lock();
        let now = Instant::now();
        if let Some(primary) = &state.known {
            return Some(Ok(primary.clone()));
        }
        if let Some((until, error)) = &state.retry
            && now < *until
        {
            return Some(Err(lookup_error(self.source.asked(), error.clone())));
        }
        None
    }

    /// The replicas the sentinels, or the cluster's seeds for the slot, list; no replica is
    /// an empty list, not an error. Not cached and without back-off: one call per feed
    /// session, which has its own back-off.
    async fn replicas(&self) -> RedisResult<Vec<Primary>> {
        let (master_name, sentinel) = match &self.source {
            Source::Sentinel {
                master_name,
                sentinel,
            } => (master_name, sentinel),
            Source::Cluster(lookup) => {
                let found = tokio::time::timeout(self.timeout, lookup.replicas(self.timeout))
                    .await
                    .unwrap_or_else(|_elapsed| {
                        Err(format!(
                            "no cluster node answered within {:?}",
                            self.timeout
                        ))
                    });
                return found
                    .map(|clients| clients.into_iter().map(Primary::of).collect())
                    .map_err(|detail| {
                        RedisError::from((ErrorKind::Io, "no replicas from the cluster", detail))
                    });
            }
        };
        let mut sentinel = sentinel.lock().await;
        let found = tokio::time::timeout(
            self.timeout,
            sentinel.async_get_replica_clients(master_name, None),
        )
        .await;
        drop(sentinel);
        match found {
            Ok(Ok(clients)) => Ok(clients.into_iter().map(Primary::of).collect()),
            Ok(Err(err)) if err.kind() == ErrorKind::NoValidReplicasFoundBySentinel => {
                Ok(Vec::new())
            }
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Err(RedisError::from((
                ErrorKind::Io,
                "no replicas from the sentinels",
                format!("no sentinel answered within {:?}", self.timeout),
            ))),
        }
    }

    async fn primary(&self) -> RedisResult<Primary> {
        if let Some(answer) = self.cached() {
            return answer;
        }
        // One lookup at a time; whoever waited here finds its answer in the cache.
        let lookup = self.lookup.lock().await;
        if let Some(answer) = self.cached() {
            return answer;
        }
        let found = self.source.find(self.timeout).await;
        drop(lookup);
        let mut state = self.lock();
        match found {
            Ok(client) => {
                let primary = Primary::of(client);
                let moved = state
                    .known
                    .as_ref()
                    .is_none_or(|known| known.address != primary.address);
                if moved {
                    tracing::info!(
                        target_name = %self.source.name(),
                        primary = %primary.address,
                        "Redis primary found"
                    );
                }
                state.known = Some(primary.clone());
                state.retry = None;
                state.backoff = None;
                Ok(primary)
            }
            Err(error) => {
                let backoff = state
                    .backoff
                    .map_or(MIN_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                state.backoff = Some(backoff);
                state.retry = Some((Instant::now() + jittered(backoff), error.clone()));
                tracing::warn!(
                    target_name = %self.source.name(),
                    error = %error,
                    "{}; asking again after a back-off",
                    self.source.asked()
                );
                Err(lookup_error(self.source.asked(), error))
            }
        }
    }
}

/// Whether a failed command means the connection, or the node's role, is gone: the caller
/// should tell the target (`RedisTarget::forget`) and find the primary again. `READONLY`
/// is a primary demoted to replica (a failover behind a partition), `MASTERDOWN` a replica
/// that lost its primary, `LOADING` a node still reading its data after a restart.
///
/// Cluster: `MOVED` is the slot served elsewhere now (a failover or a resharding finished),
/// `CLUSTERDOWN` a cluster that cannot serve the slot. `ASK` and `TRYAGAIN` are a slot in
/// the middle of a migration: the command fails (a revoke answers 503, never a false
/// acknowledgement) and is not followed to the importing node, because the deployment's
/// scripts touch several keys at once and a migrating slot splits them between two nodes
/// (`TRYAGAIN` there anyway). The next lookup still names the migrating node until the
/// migration ends; then `MOVED` sends every caller to the new owner.
pub fn is_lost_primary_error(err: &RedisError) -> bool {
    err.is_connection_dropped()
        || err.is_io_error()
        || err.is_timeout()
        || err.is_connection_refusal()
        || matches!(
            err.code(),
            Some(
                "READONLY"
                    | "MASTERDOWN"
                    | "LOADING"
                    | "MOVED"
                    // A transaction (MULTI/EXEC) one of whose commands was refused before it
                    // ran: in a cluster, a `MOVED` inside it shows only as this.
                    | "EXECABORT"
                    | "ASK"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
            )
        )
}

fn lookup_error(asked: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::Io, asked, detail))
}

/// `delay` scaled by a random factor in [0.5, 1): callers that failed together (every
/// verifier, when the primary died) spread their retries instead of arriving at once.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let factor = 0.5 + f64::from(OsRng.next_u32()) / f64::from(u32::MAX) / 2.0;
    delay.mul_f64(factor.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(addresses: &[&str]) -> SentinelSettings {
        SentinelSettings {
            master_name: "edgetoken".to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            password: Some("hunter2".to_owned()),
        }
    }

    #[test]
    fn sentinel_addresses_must_be_host_and_port() {
        settings(&["10.0.0.1:26379", "[::1]:26380", "s3.internal:26379"])
            .validate()
            .unwrap();
        for bad in ["10.0.0.1", "host:0", ":26379", "host:port", "redis://h:1"] {
            assert!(settings(&[bad]).validate().is_err(), "{bad}");
        }
        assert!(settings(&[]).validate().is_err());
    }

    #[test]
    fn sentinel_debug_redacts_the_password() {
        let shown = format!("{:?}", settings(&["h:1"]));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }
}
