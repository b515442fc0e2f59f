//! Measures the revocation mirror at scale (SPEC §9): memory growth with 1,000,000 live token
//! revocations, and the time a verifier takes to resync that many from Redis.
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no &        # a private Redis, not 6379
//! REDIS_URL=redis://127.0.0.1:6390/ cargo run --release --example revocation_scale [-- ENTRIES]
//! ```
//!
//! Without `REDIS_URL` only the in-memory part runs. Memory is reported two ways: the
//! resident-set growth of this process (Linux `/proc/self/status`), and the mirror's own
//! estimate of its table sizes. The resync part writes ENTRIES token revocations straight into
//! the state set of a fresh key prefix (the layout documented in `revocation::redis`), starts a
//! `RedisFeed` and times it until the mirror is ready; it deletes its keys afterwards.
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::clock::{Clock, SystemClock};
use edgetoken::revocation::{Mirror, RedisFeed, RedisStore, Revocation, RevocationSettings};
use edgetoken::token::TokenId;
use sha2::{Digest, Sha256};

type Res<T> = Result<T, Box<dyn Error>>;

fn jti(ns: &[u8], i: usize) -> String {
    let digest = Sha256::new()
        .chain_update(ns)
        .chain_update(i.to_le_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Resident set size of this process in bytes (Linux).
fn rss() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?;
    Ok(kib * 1024)
}

#[expect(clippy::cast_precision_loss, reason = "reporting MiB")]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn memory(entries: usize, clock: &Arc<dyn Clock>) -> Res<()> {
    let settings = RevocationSettings::default();
    let before = rss()?;
    let mirror = Mirror::authoritative(&settings, Arc::clone(clock));
    let expires_at = clock.unix_now() + 3600;
    let started = Instant::now();
    for i in 0..entries {
        mirror.apply(&Revocation::Token {
            jti: TokenId::new(&jti(b"mem", i))?,
            expires_at,
        });
    }
    let elapsed = started.elapsed();
    let after = rss()?;
    println!("## in-memory mirror, {entries} token revocations");
    println!("- RSS growth: {:.1} MiB", mib(after.saturating_sub(before)));
    println!(
        "- table estimate (Mirror::heap_bytes): {:.1} MiB",
        mib(mirror.heap_bytes() as u64)
    );
    println!("- apply one by one: {elapsed:?} total");
    Ok(())
}

async fn resync(url: &str, entries: usize, clock: &Arc<dyn Clock>) -> Res<()> {
    let prefix = format!("scale-{}", jti(b"prefix", std::process::id() as usize));
    let settings = RevocationSettings {
        redis_url: Some(url.to_owned()),
        key_prefix: prefix.clone(),
        command_timeout: Duration::from_secs(10),
        ..RevocationSettings::default()
    };
    // Name the data set (gen, seq) through the real store, then bulk-load the state set.
    let store = RedisStore::open(&settings).await?;
    let expires_at = clock.unix_now() + 3600;
    store
        .revoke_with_seq(&Revocation::Token {
            jti: TokenId::new(&jti(b"seed", 0))?,
            expires_at,
        })
        .await?;
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let set = format!("{{{prefix}}}:tok");
    let load = Instant::now();
    for chunk_start in (0..entries).step_by(100_000) {
        let mut pipe = redis::pipe();
        for batch in (chunk_start..(chunk_start + 100_000).min(entries)).step_by(1000) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(&set);
            for i in batch..(batch + 1000).min(entries) {
                cmd.arg(expires_at).arg(jti(b"res", i));
            }
            pipe.add_command(cmd).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    println!("## full resync from Redis, {entries} token revocations (+1)");
    println!("- bulk load into Redis: {:?}", load.elapsed());

    let before = rss()?;
    let started = Instant::now();
    let feed = RedisFeed::start(&settings, Arc::clone(clock)).await?;
    let mut health = feed.mirror().health();
    health.wait_for(|h| h.ready).await?;
    let elapsed = started.elapsed();
    let after = rss()?;
    println!("- RedisFeed::start → ready: {elapsed:?}");
    println!("- mirror size: {}", feed.mirror().size().tokens);
    println!(
        "- RSS growth during resync: {:.1} MiB (table estimate {:.1} MiB)",
        mib(after.saturating_sub(before)),
        mib(feed.mirror().heap_bytes() as u64)
    );
    feed.shutdown().await;
    let keys: Vec<String> = ["gen", "seq", "log", "tok", "usr", "ten", "kid"]
        .iter()
        .map(|k| format!("{{{prefix}}}:{k}"))
        .collect();
    redis::cmd("DEL").arg(&keys).exec_async(&mut conn).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let entries = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    memory(entries, &clock)?;
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => resync(&url, entries, &clock).await?,
        _ => println!("(REDIS_URL not set: resync not measured)"),
    }
    Ok(())
}
