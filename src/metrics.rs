//! Prometheus metrics (SPEC §8): verify outcomes by reason, verify latency, cache hit ratio,
//! revocation state size and staleness, mints and revokes.
//!
//! Counters and the histogram are updated where the events happen; gauges that describe
//! state (cache, mirror) are sampled when `/metrics` is scraped, so the hot path pays nothing
//! for them.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::revocation::Propagation;
use crate::token::{CacheStats, Rejection};
use crate::usage::UsageStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Token usage counters (issue 10), copied from the recorder at scrape time.
#[derive(Default)]
struct UsageMetrics {
    dropped: Family<ReasonLabel, Counter>,
    flushed: Counter,
    flush_failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevokeLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// State sampled at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateSample {
    /// Verified-token cache counters.
    pub cache: CacheStats,
    /// Entries in the revocation mirror.
    pub mirror_entries: u64,
    /// Time since the mirror last heard from the store; `None` if it never has.
    pub staleness: Option<Duration>,
    /// Whether the mirror is fresh enough to answer.
    pub ready: bool,
    /// Public keys the verifier trusts now.
    pub trusted_keys: u64,
    /// Time since the JWKS was last fetched successfully: `None` without a JWKS URL,
    /// `Duration::MAX` before the first success.
    pub jwks_age: Option<Duration>,
    /// Sequence number of the last revocation change the mirror applied in order.
    pub applied_seq: u64,
    /// Time since the mirror last renewed its registration in the revocation barrier;
    /// `None` when not registered (in-process store, or before the first full sync).
    pub registration_age: Option<Duration>,
    /// Token usage counters; `None` when this process records no usage.
    pub usage: Option<UsageStats>,
    /// This process's clock minus Redis', as the revocation feed last measured it; `None`
    /// when not measured (in-process store, or Redis not reached yet).
    pub clock_skew: Option<f64>,
    /// Feed sessions that wanted a replica (`read_from_replicas`) but read from the primary,
    /// since start.
    pub replica_fallbacks: u64,
}

/// Outcomes of a forward-auth or layer decision that happen before a token is verified, or
/// after it verified: pre-registered next to the rejection codes.
pub const DECISION_OUTCOMES: [&str; 4] =
    ["ok", "missing_token", "malformed_authorization", "no_route"];

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    verify: Family<OutcomeLabel, Counter>,
    /// `verify{outcome="ok"}`, resolved once.
    verify_ok: Counter,
    verify_latency: Histogram,
    mints: Family<OutcomeLabel, Counter>,
    revokes: Family<RevokeLabels, Counter>,
    cache_hits: Gauge<u64, AtomicU64>,
    cache_misses: Gauge<u64, AtomicU64>,
    cache_hit_ratio: Gauge<f64, AtomicU64>,
    mirror_entries: Gauge<u64, AtomicU64>,
    staleness: Gauge<f64, AtomicU64>,
    ready: Gauge<u64, AtomicU64>,
    jwks_fetches: Family<OutcomeLabel, Counter>,
    trusted_keys: Gauge<u64, AtomicU64>,
    jwks_age: Gauge<f64, AtomicU64>,
    barrier_wait: Histogram,
    barrier_revokes: Family<OutcomeLabel, Counter>,
    barrier_mirrors: Family<OutcomeLabel, Counter>,
    applied_seq: Gauge<u64, AtomicU64>,
    registration_age: Gauge<f64, AtomicU64>,
    clock_skew: Gauge<f64, AtomicU64>,
    replica_fallbacks: Counter,
    usage: UsageMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The barrier wait's buckets, 10 µs to ~80 ms: a confirmed barrier on loopback sits well
/// under a millisecond; the top buckets hold the revokes that waited out the timeout.
fn barrier_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 2.0, 14))
}

impl Metrics {
    /// A registry with every edgetoken metric registered under the `edgetoken_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edgetoken");
        let verify = Family::<OutcomeLabel, Counter>::default();
        let verify_ok = verify
            .get_or_create(&OutcomeLabel { outcome: "ok" })
            .clone();
        // 1 µs to ~65 ms: cache hits sit at the bottom, cold verifies near 50 µs.
        let verify_latency = Histogram::new(exponential_buckets(1e-6, 2.0, 17));
        let metrics = Self {
            verify,
            verify_ok,
            verify_latency,
            mints: Family::default(),
            revokes: Family::default(),
            cache_hits: Gauge::default(),
            cache_misses: Gauge::default(),
            cache_hit_ratio: Gauge::default(),
            mirror_entries: Gauge::default(),
            staleness: Gauge::default(),
            ready: Gauge::default(),
            jwks_fetches: Family::default(),
            trusted_keys: Gauge::default(),
            jwks_age: Gauge::default(),
            barrier_wait: barrier_histogram(),
            barrier_revokes: Family::default(),
            barrier_mirrors: Family::default(),
            applied_seq: Gauge::default(),
            registration_age: Gauge::default(),
            clock_skew: Gauge::default(),
            replica_fallbacks: Counter::default(),
            usage: UsageMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "verify",
            "Token verifications by outcome (ok or the rejection reason)",
            metrics.verify.clone(),
        );
        registry.register(
            "verify_duration_seconds",
            "Time spent verifying one token",
            metrics.verify_latency.clone(),
        );
        registry.register("mints", "Tokens minted, by outcome", metrics.mints.clone());
        registry.register(
            "revocations",
            "Revoke calls, by granularity and outcome",
            metrics.revokes.clone(),
        );
        registry.register(
            "cache_hits",
            "Verified-token cache hits since start",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Verified-token cache misses since start",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "cache_hit_ratio",
            "Verified-token cache hits / lookups since start",
            metrics.cache_hit_ratio.clone(),
        );
        registry.register(
            "revocation_mirror_entries",
            "Revocations held in this process's mirror",
            metrics.mirror_entries.clone(),
        );
        registry.register(
            "revocation_staleness_seconds",
            "Seconds since the mirror last heard from the store (+Inf if never)",
            metrics.staleness.clone(),
        );
        registry.register(
            "revocation_ready",
            "1 when the revocation mirror is fresh enough to answer",
            metrics.ready.clone(),
        );
        metrics.register_groups(&mut registry);
        for code in Rejection::CODES.iter().chain(&DECISION_OUTCOMES) {
            // Pre-register every label so dashboards see zeros, not gaps.
            let _ = metrics
                .verify
                .get_or_create(&OutcomeLabel { outcome: code });
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Registers the metrics of the features added since SPEC §8's first list.
    fn register_groups(&self, registry: &mut Registry) {
        self.register_keys(registry);
        self.register_barrier(registry);
        self.register_usage(registry);
    }

    /// Registers the trusted keys' and the JWKS refresher's metrics.
    fn register_keys(&self, registry: &mut Registry) {
        registry.register(
            "jwks_fetches",
            "JWKS fetches by outcome (ok, or why the document was refused and the last good set kept)",
            self.jwks_fetches.clone(),
        );
        registry.register(
            "trusted_keys",
            "Public keys this process trusts now",
            self.trusted_keys.clone(),
        );
        registry.register(
            "jwks_age_seconds",
            "Seconds since the JWKS was last fetched successfully (+Inf if never; 0 without a JWKS URL)",
            self.jwks_age.clone(),
        );
    }

    /// Registers the revocation barrier's metrics (issue 15).
    fn register_barrier(&self, registry: &mut Registry) {
        registry.register(
            "revocation_barrier_wait_seconds",
            "Time a revoke waited, after the store accepted it, for the verifiers to confirm",
            self.barrier_wait.clone(),
        );
        registry.register(
            "revocation_barrier",
            "Revokes by barrier outcome: confirmed (every verifier applied it) or lagging (202)",
            self.barrier_revokes.clone(),
        );
        registry.register(
            "revocation_barrier_mirrors",
            "Verifier mirrors counted by revokes, by outcome: confirmed or lagging",
            self.barrier_mirrors.clone(),
        );
        registry.register(
            "revocation_applied_seq",
            "Sequence number of the last revocation change this process's mirror applied",
            self.applied_seq.clone(),
        );
        registry.register(
            "revocation_registration_age_seconds",
            "Seconds since this mirror renewed its barrier registration (-1 if not registered: in-process store, or not synced yet)",
            self.registration_age.clone(),
        );
        registry.register(
            "clock_skew_seconds",
            "This process's clock minus Redis' TIME, as the revocation feed last measured it (0 until measured); beyond half the leeway the feed logs a clock skew alarm",
            self.clock_skew.clone(),
        );
        registry.register(
            "revocation_replica_fallbacks",
            "Revocation feed sessions that wanted a replica (read_from_replicas) but read from the primary: none usable, or the replica failed or lagged",
            self.replica_fallbacks.clone(),
        );
        for outcome in ["confirmed", "lagging"] {
            let label = OutcomeLabel { outcome };
            let _ = self.barrier_revokes.get_or_create(&label);
            let _ = self.barrier_mirrors.get_or_create(&label);
        }
    }

    /// Registers the token usage metrics (issue 10); sampled from the recorder at scrape time.
    fn register_usage(&self, registry: &mut Registry) {
        registry.register(
            "usage_dropped",
            "Token usage aggregates dropped: store (Redis failed or slow) or full (memory bound)",
            self.usage.dropped.clone(),
        );
        registry.register(
            "usage_flushed",
            "Token usage aggregates written to the store",
            self.usage.flushed.clone(),
        );
        registry.register(
            "usage_flush_failures",
            "Usage flushes that failed or timed out (their usage was dropped)",
            self.usage.flush_failures.clone(),
        );
        for reason in ["store", "full"] {
            let _ = self.usage.dropped.get_or_create(&ReasonLabel { reason });
        }
    }

    /// Records one verification.
    pub fn record_verify(&self, outcome: Result<(), Rejection>, elapsed: Duration) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(rejection) => rejection.code(),
        };
        self.record_decision(outcome, elapsed);
    }

    /// Records one access decision by its outcome code: `ok`, a rejection code, or one of
    /// [`DECISION_OUTCOMES`].
    pub fn record_decision(&self, outcome: &'static str, elapsed: Duration) {
        // The allowed outcome is most requests: its counter is resolved once, at start,
        // rather than looked up in the family (a lock and a hash) on every request.
        if outcome == "ok" {
            self.verify_ok.inc();
        } else {
            self.verify.get_or_create(&OutcomeLabel { outcome }).inc();
        }
        self.verify_latency.observe(elapsed.as_secs_f64());
    }

    /// Records one JWKS fetch: `ok` or the reason the document was refused.
    pub fn record_jwks_fetch(&self, outcome: &'static str) {
        self.jwks_fetches
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Records a mint attempt (`ok`, or the error code).
    pub fn record_mint(&self, outcome: &'static str) {
        self.mints.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Records a revoke call of granularity `kind` (`token`, `user`, `tenant`, `key`).
    pub fn record_revoke(&self, kind: &'static str, outcome: &'static str) {
        self.revokes
            .get_or_create(&RevokeLabels { kind, outcome })
            .inc();
    }

    /// Records a revoke's barrier: its wait, its outcome, and the mirrors that confirmed or
    /// lag.
    pub fn record_barrier(&self, propagation: &Propagation) {
        self.barrier_wait.observe(propagation.waited.as_secs_f64());
        let outcome = if propagation.is_confirmed() {
            "confirmed"
        } else {
            "lagging"
        };
        self.barrier_revokes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        for (outcome, count) in [
            ("confirmed", propagation.confirmed),
            ("lagging", propagation.lagging),
        ] {
            self.barrier_mirrors
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(count as u64);
        }
    }

    /// Renders the Prometheus text format, after sampling `state`.
    pub fn render(&self, state: StateSample) -> String {
        self.cache_hits.set(state.cache.hits);
        self.cache_misses.set(state.cache.misses);
        let lookups = state.cache.hits + state.cache.misses;
        #[expect(
            clippy::cast_precision_loss,
            reason = "a ratio; 2^53 lookups is far away"
        )]
        let ratio = if lookups == 0 {
            0.0
        } else {
            state.cache.hits as f64 / lookups as f64
        };
        self.cache_hit_ratio.set(ratio);
        self.mirror_entries.set(state.mirror_entries);
        self.staleness
            .set(state.staleness.map_or(f64::INFINITY, |s| s.as_secs_f64()));
        self.ready.set(u64::from(state.ready));
        self.trusted_keys.set(state.trusted_keys);
        self.applied_seq.set(state.applied_seq);
        self.registration_age
            .set(state.registration_age.map_or(-1.0, |age| age.as_secs_f64()));
        self.clock_skew.set(state.clock_skew.unwrap_or(0.0));
        self.jwks_age.set(state.jwks_age.map_or(0.0, |age| {
            if age == Duration::MAX {
                f64::INFINITY
            } else {
                age.as_secs_f64()
            }
        }));
        let sampled = state.usage.unwrap_or_default();
        // Counters owned by the recorder, copied in: a scrape sees its totals since start.
        let set = |counter: &Counter, value: u64| {
            counter
                .inner()
                .store(value, std::sync::atomic::Ordering::Relaxed);
        };
        set(
            &self
                .usage
                .dropped
                .get_or_create(&ReasonLabel { reason: "store" }),
            sampled.dropped_store,
        );
        set(
            &self
                .usage
                .dropped
                .get_or_create(&ReasonLabel { reason: "full" }),
            sampled.dropped_full,
        );
        set(&self.usage.flushed, sampled.flushed);
        set(&self.replica_fallbacks, state.replica_fallbacks);
        set(&self.usage.flush_failures, sampled.failed_flushes);
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_outcomes_and_state() {
        let metrics = Metrics::new();
        metrics.record_verify(Err(Rejection::Expired), Duration::from_micros(3));
        metrics.record_verify(Ok(()), Duration::from_micros(40));
        let text = metrics.render(StateSample {
            mirror_entries: 7,
            ready: true,
            ..StateSample::default()
        });
        assert!(
            text.contains(r#"edgetoken_verify_total{outcome="expired"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"edgetoken_verify_total{outcome="ok"} 1"#));
        assert!(text.contains("edgetoken_revocation_mirror_entries 7"));
        assert!(text.contains("edgetoken_revocation_ready 1"));
        let text = metrics.render(StateSample {
            replica_fallbacks: 2,
            ..StateSample::default()
        });
        assert!(
            text.contains("edgetoken_revocation_replica_fallbacks_total 2"),
            "{text}"
        );
    }
}
