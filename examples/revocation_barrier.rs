//! Measures the revoke call with the revocation barrier (SPEC §3, §9; issue 15): how long a
//! revoke takes to answer when it waits until every registered verifier process confirmed it.
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no &        # a private Redis, not 6379
//! REDIS_URL=redis://127.0.0.1:6390/ cargo run --release --example revocation_barrier \
//!     [-- REVOCATIONS [VERIFIER_COUNTS]]                        # defaults: 1000 and 1,3,10
//! ```
//!
//! For each verifier count V the driver starts V copies of this program in `verifier` mode
//! (each a `RedisFeed` with its own mirror and connections, registered in the barrier's roster
//! after its first sync), waits until all are ready, then revokes REVOCATIONS tokens one at a
//! time through `RevocationStore::revoke` (commit, then wait at the barrier, default 50 ms
//! timeout) and times each call from start to answer. It prints p50/p99/max and how many
//! answers were not confirmed by every verifier. The verifiers stop cleanly (leaving the
//! roster) when the driver closes their standard input.
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::error::Error;
use std::io::{Read as _, Write as _};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgetoken::clock::{Clock, SystemClock};
use edgetoken::revocation::{
    RedisFeed, RedisStore, Revocation, RevocationSettings, RevocationStore as _,
};
use edgetoken::token::TokenId;
use tokio::io::{AsyncBufReadExt as _, BufReader};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Longest wait for a verifier to get ready.
const STUCK: Duration = Duration::from_secs(30);

fn settings(url: &str, prefix: &str) -> RevocationSettings {
    RevocationSettings {
        redis_url: Some(url.to_owned()),
        key_prefix: prefix.to_owned(),
        ..RevocationSettings::default()
    }
}

async fn verifier(url: &str, prefix: &str) -> Res<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let feed = RedisFeed::start(&settings(url, prefix), clock).await?;
    feed.mirror().health().wait_for(|h| h.ready).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // Runs until the driver closes our standard input.
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    feed.shutdown().await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a non-empty sample"
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A token id unique to this run, round and index: 22 base64url characters.
fn jti(round: usize, i: usize) -> String {
    format!("{:0>8}{:0>4}{:0>10}", std::process::id(), round, i)
}

async fn round(url: &str, round_no: usize, count: usize, verifiers: usize) -> Res<()> {
    let prefix = format!("barrier-{}-{round_no}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..verifiers {
        let mut child = tokio::process::Command::new(&exe)
            .args(["verifier", url, &prefix])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        children.push((child, async move { lines.next_line().await }));
    }
    let mut running = Vec::new();
    for (child, ready) in children {
        let line = tokio::time::timeout(STUCK, ready).await??;
        if line.as_deref() != Some("ready") {
            return Err("a verifier did not get ready".into());
        }
        running.push(child);
    }

    let store = RedisStore::open(&settings(url, &prefix)).await?;
    let expires_at = SystemClock.unix_now() + 3600;
    // A few unmeasured revokes: connections, scripts and the acknowledgement listener.
    for i in 0..10 {
        let jti = TokenId::new(&jti(round_no, count + i))?;
        store.revoke(Revocation::Token { jti, expires_at }).await?;
    }
    let mut times = Vec::with_capacity(count);
    let mut lagging = 0_usize;
    let mut confirmed = 0_usize;
    for i in 0..count {
        let revocation = Revocation::Token {
            jti: TokenId::new(&jti(round_no, i))?,
            expires_at,
        };
        let started = Instant::now();
        let propagation = store.revoke(revocation).await?;
        times.push(started.elapsed());
        lagging += usize::from(!propagation.is_confirmed());
        confirmed = confirmed.max(propagation.confirmed);
    }
    times.sort_unstable();
    println!(
        "| {verifiers} | {count} | {:?} | {:?} | {:?} | {confirmed} | {lagging} |",
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    for mut child in running {
        drop(child.stdin.take());
        child.wait().await?;
    }
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = [
        "gen", "seq", "log", "tok", "usr", "ten", "kid", "live", "inst",
    ]
    .iter()
    .map(|k| format!("{{{prefix}}}:{k}"))
    .collect();
    redis::cmd("DEL").arg(&keys).exec_async(&mut conn).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("verifier") {
        let [_, _, url, prefix] = args.as_slice() else {
            return Err("usage: verifier URL PREFIX".into());
        };
        return verifier(url, prefix).await;
    }
    let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL to a private Redis")?;
    let count = args.get(1).map_or(Ok(1000), |n| n.parse())?;
    let counts = args
        .get(2)
        .map_or("1,3,10", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<usize>, _>>()?;
    println!("## revoke call with the barrier (default 50 ms timeout), loopback");
    println!("| verifiers | revokes | p50 | p99 | max | confirmed by | not confirmed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, verifiers) in counts.into_iter().enumerate() {
        round(&url, n, count, verifiers).await?;
    }
    Ok(())
}
