//! Measures how long a token-usage flush holds up the request runtime (issue 10).
//!
//! ```text
//! taskset -c 1 cargo run --release --example usage_flush_stall [-- TOKENS [ROUNDS]]
//! # defaults: 150000 tokens (a cold load-bench interval), 3 rounds; with a private Redis
//! # (never 6379) the flush also packs its pipeline and reads the replies:
//! REDIS_URL=redis://127.0.0.1:6390/ taskset -c 1 cargo run --release --example usage_flush_stall
//! ```
//!
//! One Tokio worker, as in the load benchmark (`TOKIO_WORKER_THREADS=1`, one pinned core). The
//! worker records TOKENS uses of as many different tokens (every request a new token, the
//! worst case for the flush), then a probe task on that worker asks to wake every millisecond
//! while the interval is flushed, and the lateness of each wake-up is what a request arriving
//! then would have waited. Two ways, alternating in each round:
//!
//! - `on the runtime`: `flush_now()` called from a task on the worker, which is where the
//!   flusher task ran before it had a thread of its own;
//! - `own thread`: `UsageRecorder::start`, whose flusher runs on its own thread.
//!
//! Prints, per round and way, when the interval was flushed (for `own thread` this includes
//! waiting for the flusher's 2-second schedule) and the probe's p99 and maximum lateness.
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::Scope;
use edgetoken::clock::{Clock, SystemClock};
use edgetoken::keys::KeyId;
use edgetoken::token::{Claims, TokenId};
use edgetoken::usage::{
    MemoryUsage, Presenter, RedisUsage, UsageRecorder, UsageSettings, UsageStore,
};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The probe's period: how often it asks to run.
const TICK: Duration = Duration::from_millis(1);
/// How long the probe keeps watching after the flush is done.
const AFTER: Duration = Duration::from_millis(200);
/// Longest wait for a flush on the flusher's own schedule.
const STUCK: Duration = Duration::from_secs(30);

/// Where the flush runs.
#[derive(Debug, Clone, Copy)]
enum Way {
    OnRuntime,
    OwnThread,
}

/// One measurement.
struct Stall {
    flush: Duration,
    p99: Duration,
    max: Duration,
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map_or(Ok(150_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let redis_url = std::env::var("REDIS_URL").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let claims = Arc::new(cold_claims(tokens)?);
    println!(
        "{tokens} tokens per flush, one worker, store: {}",
        if redis_url.is_some() {
            "Redis"
        } else {
            "in-process"
        }
    );
    println!("| round | way | flushed after (ms) | probe lateness p99 (ms) | max (ms) |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for round in 1..=rounds {
        for way in [Way::OnRuntime, Way::OwnThread] {
            let stall =
                runtime.block_on(measure(way, Arc::clone(&claims), redis_url.as_deref()))?;
            println!(
                "| {round} | {} | {:.1} | {:.2} | {:.2} |",
                match way {
                    Way::OnRuntime => "on the runtime",
                    Way::OwnThread => "own thread",
                },
                ms(stall.flush),
                ms(stall.p99),
                ms(stall.max),
            );
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `count` tokens' claims with distinct random ids, valid for an hour.
fn cold_claims(count: usize) -> Res<Vec<Claims>> {
    let now = SystemClock.now();
    let kid = KeyId::new(&"k".repeat(43))?;
    (0..count)
        .map(|_| {
            let mut id = [0_u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
            Ok(Claims {
                issuer: "https://issuer.example".to_owned(),
                audience: "bench".to_owned(),
                subject: "alice".parse()?,
                tenant: "acme".parse()?,
                scope: Scope::parse_claim("runs:read")?,
                issued_at: now,
                not_before: now,
                expires_at: now + time::Duration::hours(1),
                token_id: TokenId::new(&URL_SAFE_NO_PAD.encode(id))?,
                kid: kid.clone(),
            })
        })
        .collect()
}

fn store(redis_url: Option<&str>, clock: &Arc<dyn Clock>) -> Res<UsageStore> {
    Ok(match redis_url {
        Some(url) => {
            let prefix = format!("usage-stall-{}", SystemClock.now().unix_timestamp_nanos());
            UsageStore::Redis(RedisUsage::new(url, &prefix, Duration::from_secs(5))?)
        }
        None => UsageStore::Memory(MemoryUsage::new(Arc::clone(clock))),
    })
}

/// Records every token once on the worker, then flushes `way` while the probe watches.
async fn measure(way: Way, claims: Arc<Vec<Claims>>, redis_url: Option<&str>) -> Res<Stall> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let settings = UsageSettings {
        max_entries: claims.len(),
        // Long enough for the recording to finish first; the probe waits for the flush.
        flush: Duration::from_secs(2),
        ..UsageSettings::default()
    };
    let retention = Duration::from_mins(1);
    let store = store(redis_url, &clock)?;
    let recorder = match way {
        Way::OnRuntime => UsageRecorder::new(settings, store, retention, Arc::clone(&clock)),
        Way::OwnThread => UsageRecorder::start(settings, &store, retention, Arc::clone(&clock)),
    };
    // Recorded on the worker (a task), as the request path records.
    let recording = {
        let (recorder, claims) = (recorder.clone(), Arc::clone(&claims));
        tokio::spawn(async move {
            let address = "192.0.2.7".parse().ok();
            for token in claims.iter() {
                recorder.record(token, || Presenter {
                    address,
                    agent: Some(b"wrk"),
                });
            }
        })
    };
    recording.await?;
    let wanted = u64::try_from(claims.len())?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let probe = tokio::spawn(probe(Arc::clone(&samples)));
    let started = Instant::now();
    match way {
        Way::OnRuntime => {
            let recorder = recorder.clone();
            tokio::spawn(async move { recorder.flush_now().await }).await?;
        }
        Way::OwnThread => {
            while recorder.stats().flushed < wanted {
                if started.elapsed() > STUCK {
                    return Err("the flusher thread did not flush in time".into());
                }
                tokio::time::sleep(TICK).await;
            }
        }
    }
    let flush = started.elapsed();
    tokio::time::sleep(AFTER).await;
    probe.abort();
    if !probe.await.is_err_and(|error| error.is_cancelled()) {
        return Err("the probe stopped by itself".into());
    }
    let mut lateness = std::mem::take(&mut *samples.lock().map_err(|_| "probe samples poisoned")?);
    if recorder.stats().flushed < wanted {
        return Err(format!("flushed {} of {wanted}", recorder.stats().flushed).into());
    }
    lateness.sort_unstable();
    // The 99th percentile: the sample 99 % of the way up the sorted list.
    let p99 = lateness
        .get(lateness.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    Ok(Stall {
        flush,
        p99,
        max: lateness.last().copied().unwrap_or_default(),
    })
}

/// Asks to wake every [`TICK`] and records in `samples` how late each wake-up was.
async fn probe(samples: Arc<Mutex<Vec<Duration>>>) {
    loop {
        let asked = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = asked.elapsed().saturating_sub(TICK);
        if let Ok(mut samples) = samples.lock() {
            samples.push(late);
        }
    }
}
