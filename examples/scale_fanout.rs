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
//!
//! With `COMMANDSTATS=1` it also resets Redis' statistics (`CONFIG RESETSTAT`) when the load
//! starts and prints `INFO commandstats` at its end, per revocation: which commands and
//! scripts the revocations cost Redis (`benches/scale/revoke_cost.sh`).
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

#[path = "scale/common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Res, START_BATCH, commandstats, commandstats_table, cpu_seconds, jti, percentile};
use edgetoken::clock::{Clock, SystemClock};
use edgetoken::revocation::{
    RedisFeed, RedisStore, Revocation, RevocationSettings, RevocationStore,
};
use edgetoken::token::TokenId;
use redis::aio::MultiplexedConnection;

/// Prints `INFO commandstats` (counted since `CONFIG RESETSTAT` at the start of the load) per
/// revocation.
async fn print_commandstats(
    conn: &mut MultiplexedConnection,
    sent: usize,
    mirrors: usize,
    busy_seconds: f64,
) -> Res<()> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    println!();
    println!(
        "Redis commands over the {busy_seconds:.1} s of load ({sent} revocations, {mirrors} \
         mirrors), from CONFIG RESETSTAT to INFO commandstats:"
    );
    println!();
    print!(
        "{}",
        commandstats_table(&commandstats(&info), u64::try_from(sent)?, "per revocation")
    );
    Ok(())
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
    let before = cpu_seconds(&pid, ticks)?;
    tokio::time::sleep(window).await;
    let idle = (cpu_seconds(&pid, ticks)? - before) / seconds;

    let store = Arc::new(RedisStore::open(&settings).await?);
    let commandstats_wanted = std::env::var_os("COMMANDSTATS").is_some_and(|v| v == "1");
    let mut stats_conn = redis::Client::open(settings.redis_url.as_deref().unwrap_or_default())?
        .get_multiplexed_async_connection()
        .await?;
    if commandstats_wanted {
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .exec_async(&mut stats_conn)
            .await?;
    }
    let expires_at = clock.unix_now() + 3600;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let before = cpu_seconds(&pid, ticks)?;
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
    let load = (cpu_seconds(&pid, ticks)? - before) / busy_seconds;
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
    if commandstats_wanted {
        print_commandstats(&mut stats_conn, sent, mirrors, busy_seconds).await?;
    }
    for feed in feeds {
        feed.shutdown().await;
    }
    Ok(())
}
