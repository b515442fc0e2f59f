//! What one Redis spends on N verifier mirrors (issue 11, `docs/scale.md`): the heartbeats of N
//! idle mirrors, then revocations at a fixed rate fanned out to all of them, each revoke
//! waiting at the barrier for every mirror's acknowledgement, as the issuer's do.
//!
//! ```text
//! redis-server --port 16391 --save '' --appendonly no --maxclients 10000 &   # private Redis
//! REDIS_URL=redis://127.0.0.1:16391/ REDIS_PID=$! \
//!     cargo run --release --example scale_fanout -- MIRRORS [RATE [SECONDS]]
//! ```
//!
//! `benches/scale/fanout.sh` runs it for 1 to 1,000 mirrors. Each mirror is a real
//! `RedisFeed` (its own subscription, command connection and heartbeat, registered at the
//! barrier), all in this one process, so the process's descriptor limit must allow about three
//! connections per mirror. Redis' CPU is read from `/proc/$REDIS_PID/stat` (utime + stime, in
//! `CLK_TCK` ticks, 100 unless set): over SECONDS idle, then over SECONDS of revocations at
//! `RATE` a second (default 50). Prints one Markdown table row:
//!
//! `| mirrors | idle Redis CPU % | revocations | confirmed by all | p50 / p99 revoke ms | Redis CPU % under load | Redis CPU µs per revocation |`
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::clock::{Clock, SystemClock};
use edgetoken::revocation::{
    RedisFeed, RedisStore, Revocation, RevocationSettings, RevocationStore,
};
use edgetoken::token::TokenId;
use sha2::{Digest, Sha256};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Feeds started at once: a thousand simultaneous connects would only measure the accept queue.
const START_BATCH: usize = 50;

fn jti(seed: &str, i: usize) -> String {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update(i.to_le_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Redis' CPU time so far, in seconds.
fn redis_cpu(pid: &str, ticks_per_second: f64) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at `state`, field 3.
    let rest = stat.rsplit_once(") ").ok_or("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "an index into a non-empty sample"
)]
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let mirrors: usize = args
        .next()
        .ok_or("usage: MIRRORS [RATE [SECONDS]]")?
        .parse()?;
    let rate: f64 = args.next().map_or(Ok(50.0), |a| a.parse())?;
    let seconds: f64 = args.next().map_or(Ok(10.0), |a| a.parse())?;
    let url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let pid = std::env::var("REDIS_PID").map_err(|_| "REDIS_PID is not set")?;
    let ticks: f64 = std::env::var("CLK_TCK").map_or(Ok(100.0), |t| t.parse())?;
    let tag = jti("fanout", std::process::id() as usize);
    let settings = RevocationSettings {
        redis_url: Some(url),
        key_prefix: format!("fanout-{tag}"),
        ..RevocationSettings::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let mut feeds = Vec::with_capacity(mirrors);
    while feeds.len() < mirrors {
        let batch = START_BATCH.min(mirrors - feeds.len());
        let started = futures_util::future::try_join_all(
            (0..batch).map(|_| RedisFeed::start(&settings, Arc::clone(&clock))),
        )
        .await?;
        feeds.extend(started);
    }
    for feed in &feeds {
        feed.mirror().health().wait_for(|h| h.ready).await?;
    }
    // Let the registrations and heartbeats settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs_f64(seconds);
    let before = redis_cpu(&pid, ticks)?;
    tokio::time::sleep(window).await;
    let idle = (redis_cpu(&pid, ticks)? - before) / seconds;

    let store = Arc::new(RedisStore::open(&settings).await?);
    let expires_at = clock.unix_now() + 3600;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let before = redis_cpu(&pid, ticks)?;
    let mut sent = 0_usize;
    while started.elapsed() < window {
        ticker.tick().await;
        let revocation = Revocation::Token {
            jti: TokenId::new(&jti(&tag, sent))?,
            expires_at,
        };
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let at = Instant::now();
            let propagation = store.revoke(revocation).await;
            (at.elapsed(), propagation)
        });
        sent += 1;
    }
    let mut latencies = Vec::with_capacity(sent);
    let mut all_confirmed = 0_usize;
    while let Some(joined) = tasks.join_next().await {
        let (latency, propagation) = joined?;
        if propagation?.confirmed >= mirrors {
            all_confirmed += 1;
        }
        latencies.push(latency);
    }
    let busy_seconds = started.elapsed().as_secs_f64();
    let load = (redis_cpu(&pid, ticks)? - before) / busy_seconds;
    latencies.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "reporting a rate")]
    let per_revocation = (load - idle) * busy_seconds / sent as f64 * 1e6;
    println!(
        "| {mirrors} | {:.1} | {sent} | {all_confirmed} | {:.1} / {:.1} | {:.1} | {:.0} |",
        idle * 100.0,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        load * 100.0,
        per_revocation,
    );
    for feed in feeds {
        feed.shutdown().await;
    }
    Ok(())
}
