//! Measures revocation propagation (SPEC §3, §9): from the revoke call's response to the
//! rejection of the token in each of several separate verifier *processes*.
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no &        # a private Redis, not 6379
//! REDIS_URL=redis://127.0.0.1:6390/ cargo run --release --example revocation_propagation \
//!     [-- REVOCATIONS [VERIFIERS]]                              # defaults: 1000 and 3
//! ```
//!
//! The driver starts VERIFIERS copies of this program in `verifier` mode. Each runs a
//! `RedisFeed` with its own mirror and connections, derives the same list of token ids from a
//! shared seed, and prints `i` on stdout as soon as its mirror's `RevocationCheck::status`
//! answers `Revoked` for token `i` (it wakes on every mirror change, never polls). The driver
//! revokes the tokens one at a time through `RedisStore`, takes the instant the revoke call
//! returned, and the instant it read each verifier's line; the difference is the propagation
//! delay, pipe and wake-up included (so slightly pessimistic). It then prints p50/p99/max.
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::error::Error;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::clock::{Clock, SystemClock};
use edgetoken::keys::KeyId;
use edgetoken::revocation::{
    RedisFeed, RedisStore, Revocation, RevocationCheck, RevocationSettings, RevocationStatus,
    TokenFacts,
};
use edgetoken::token::{Subject, TenantId, TokenId};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Longest wait for any one verifier to see one revocation before the run is declared broken.
const STUCK: Duration = Duration::from_secs(10);

fn jti(seed: &str, i: usize) -> String {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update(i.to_le_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn settings(url: &str, prefix: &str) -> RevocationSettings {
    RevocationSettings {
        redis_url: Some(url.to_owned()),
        key_prefix: prefix.to_owned(),
        ..RevocationSettings::default()
    }
}

async fn verifier(url: &str, prefix: &str, seed: &str, count: usize) -> Res<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let feed = RedisFeed::start(&settings(url, prefix), Arc::clone(&clock)).await?;
    let mirror = Arc::clone(feed.mirror());
    let mut health = mirror.health();
    health.wait_for(|h| h.ready).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let jtis = (0..count)
        .map(|i| TokenId::new(&jti(seed, i)))
        .collect::<Result<Vec<_>, _>>()?;
    let (subject, tenant) = (Subject::new("alice")?, TenantId::new("acme")?);
    let kid = KeyId::new(&format!("{:k<43}", "k1"))?;
    let now = clock.unix_now();
    let mut next = 0;
    while next < count {
        let facts = TokenFacts {
            jti: &jtis[next],
            subject: &subject,
            tenant: &tenant,
            kid: &kid,
            issued_at: now,
            expires_at: now + 3600,
        };
        if mirror.status(&facts) == RevocationStatus::Revoked {
            writeln!(out, "{next}")?;
            out.flush()?;
            next += 1;
        } else {
            health.changed().await?;
        }
    }
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

async fn driver(url: &str, count: usize, verifiers: usize) -> Res<()> {
    let tag = jti("run", std::process::id() as usize);
    let prefix = format!("prop-{tag}");
    let exe = std::env::current_exe()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let mut children = Vec::new();
    for v in 0..verifiers {
        let mut child = tokio::process::Command::new(&exe)
            .args(["verifier", url, &prefix, &tag, &count.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send((v, line, Instant::now())).is_err() {
                    return;
                }
            }
        });
        children.push(child);
    }
    let mut ready = 0;
    while ready < verifiers {
        let (_, line, _) = tokio::time::timeout(STUCK, rx.recv())
            .await?
            .ok_or("verifier exited")?;
        if line == "ready" {
            ready += 1;
        }
    }

    let store = RedisStore::open(&settings(url, &prefix)).await?;
    let expires_at = SystemClock.unix_now() + 3600;
    let mut delays: Vec<Vec<Duration>> = vec![Vec::with_capacity(count); verifiers];
    let mut early = 0_usize;
    for i in 0..count {
        let revocation = Revocation::Token {
            jti: TokenId::new(&jti(&tag, i))?,
            expires_at,
        };
        store.revoke_with_seq(&revocation).await?;
        let acked = Instant::now();
        let mut seen = 0;
        while seen < verifiers {
            let (v, line, at) = tokio::time::timeout(STUCK, rx.recv())
                .await?
                .ok_or("verifier exited")?;
            if line.parse::<usize>()? != i {
                return Err(format!("verifier {v} reported {line}, expected {i}").into());
            }
            // A line read before `acked` was taken: the feed beat the reply; count it as 0.
            early += usize::from(at < acked);
            delays[v].push(at.saturating_duration_since(acked));
            seen += 1;
        }
    }
    println!("## revocation propagation: {count} revocations, {verifiers} verifier processes");
    println!("| verifier | p50 | p99 | max |");
    println!("|---|---|---|---|");
    let mut all: Vec<Duration> = Vec::with_capacity(count * verifiers);
    for (v, samples) in delays.iter_mut().enumerate() {
        samples.sort_unstable();
        println!(
            "| {v} | {:?} | {:?} | {:?} |",
            percentile(samples, 0.50),
            percentile(samples, 0.99),
            percentile(samples, 1.0)
        );
        all.extend_from_slice(samples);
    }
    all.sort_unstable();
    println!(
        "| all | {:?} | {:?} | {:?} |",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    println!(
        "({early} of {} rejections were seen before the revoke reply)",
        all.len()
    );
    for mut child in children {
        child.wait().await?;
    }
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let keys: Vec<String> = ["gen", "seq", "log", "tok", "usr", "ten", "kid"]
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
        let [_, _, url, prefix, seed, count] = args.as_slice() else {
            return Err("usage: verifier URL PREFIX SEED COUNT".into());
        };
        return verifier(url, prefix, seed, count.parse()?).await;
    }
    let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL to a private Redis")?;
    let count = args.get(1).map_or(Ok(1000), |n| n.parse())?;
    let verifiers = args.get(2).map_or(Ok(3), |n| n.parse())?;
    driver(&url, count, verifiers).await
}
