//! The resync storm (issue 11, `docs/scale.md`): N verifier mirrors follow one Redis holding R
//! live revocations; Redis restarts; every mirror sees a new `run_id`, writes everything it
//! holds back (the re-seed of the never-forgetful rule), publishes a `resync` event and
//! resyncs in full. How long until every mirror follows Redis again, and what does it cost
//! Redis?
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:PORT/ REDIS_PID=PID REDIS_RESTART='sh restart.sh' \
//!     cargo run --release --example scale_storm -- MIRRORS REVOCATIONS
//! ```
//!
//! `benches/scale/storm.sh` runs it against a private `redis-server` (with AOF, so a restart
//! keeps the data, or without, so it comes back empty). `REDIS_RESTART` is a shell command
//! that stops Redis, starts it again on the same port and prints the new process id as the
//! last line of its output once Redis answers `PING`.
//!
//! Steps: name the data set through `RedisStore` (one revocation), bulk-load R token
//! revocations into its state set (`{P}:tok`, the real key layout), start N real `RedisFeed`s
//! in this process and wait until all are ready, then restart Redis and poll every mirror's
//! health every 20 ms. A mirror is *recovered* once it has re-seeded and then resynced in
//! full; the storm is *settled* once every mirror follows the generation and sequence Redis'
//! head shows. Redis' CPU (`/proc/PID/stat`) is read from the moment it answers again to the
//! settlement; `INFO` is sampled every second for the peaks. Prints a Markdown table row
//! (the script prints the header), then the commands Redis ran during the storm.
//!
//! Correctness is checked, not timed: after the storm every mirror and Redis hold at least
//! the R + 1 revocations.
#![expect(clippy::print_stdout, reason = "a measurement tool reports on stdout")]

#[path = "scale/common.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Res, START_BATCH, commandstats, commandstats_table, cpu_seconds, info_field, jti, percentile,
    run_queue_wait,
};
use edgetoken::clock::{Clock, SystemClock};
use edgetoken::revocation::{MirrorHealth, RedisFeed, RedisStore, Revocation, RevocationSettings};
use edgetoken::token::TokenId;
use redis::aio::MultiplexedConnection;

/// How often the mirrors' health is polled.
const POLL: Duration = Duration::from_millis(20);
/// How often Redis' head is read once every mirror recovered, and `INFO` for the peaks.
const HEAD_EVERY: Duration = Duration::from_millis(200);
const INFO_EVERY: Duration = Duration::from_secs(1);
/// Members per `ZADD` and commands per pipeline of the bulk load.
const LOAD_BATCH: usize = 1000;
const LOAD_PIPELINE: usize = 100;

/// The counters of one mirror before the restart.
#[derive(Debug, Clone, Copy)]
struct Counters {
    resets: u64,
    full_resyncs: u64,
    reseeded: u64,
    disconnects: u64,
}

impl Counters {
    fn of(health: &MirrorHealth) -> Self {
        Self {
            resets: health.resets,
            full_resyncs: health.full_resyncs,
            reseeded: health.reseeded,
            disconnects: health.disconnects,
        }
    }
}

/// The peaks of what `INFO` reports while the storm runs.
#[derive(Debug, Default)]
struct Peaks {
    used_memory: u64,
    output_buffer: u64,
    clients: u64,
}

impl Peaks {
    async fn sample(&mut self, conn: &mut MultiplexedConnection) {
        let info: Result<String, _> = redis::cmd("INFO")
            .arg("memory")
            .arg("clients")
            .query_async(conn)
            .await;
        if let Ok(info) = info {
            let field = |name| info_field(&info, name).unwrap_or(0);
            self.used_memory = self.used_memory.max(field("used_memory"));
            self.output_buffer = self
                .output_buffer
                .max(field("client_recent_max_output_buffer"));
            self.clients = self.clients.max(field("connected_clients"));
        }
    }
}

/// Runs the restart command; returns the new Redis process id.
async fn restart(command: String) -> Res<String> {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
    })
    .await??;
    if !output.status.success() {
        return Err(format!(
            "REDIS_RESTART failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    let pid = stdout
        .lines()
        .last()
        .ok_or("REDIS_RESTART printed no pid")?;
    Ok(pid.trim().to_owned())
}

/// Writes `count` token revocations straight into the state set `set`, in the layout the
/// store writes them (member `jti`, score `exp`): the bulk load a full resync reads.
async fn bulk_load(
    conn: &mut MultiplexedConnection,
    set: &str,
    tag: &str,
    count: usize,
    expires_at: i64,
) -> Res<()> {
    let per_pipeline = LOAD_BATCH * LOAD_PIPELINE;
    for chunk in (0..count).step_by(per_pipeline) {
        let mut pipe = redis::pipe();
        for batch in (chunk..(chunk + per_pipeline).min(count)).step_by(LOAD_BATCH) {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(set);
            for i in batch..(batch + LOAD_BATCH).min(count) {
                zadd.arg(expires_at).arg(jti(tag, i));
            }
            pipe.add_command(zadd).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

async fn connect(url: &str) -> Res<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

#[expect(clippy::too_many_lines, reason = "one measurement, read top to bottom")]
#[expect(clippy::cast_precision_loss, reason = "reporting")]
#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: MIRRORS REVOCATIONS";
    let mirrors: usize = args.next().ok_or(usage)?.parse()?;
    let revocations: usize = args.next().ok_or(usage)?.parse()?;
    let url = std::env::var("REDIS_URL").map_err(|_| "REDIS_URL is not set")?;
    let restart_command = std::env::var("REDIS_RESTART").map_err(|_| "REDIS_RESTART is not set")?;
    let ticks: f64 = std::env::var("CLK_TCK").map_or(Ok(100.0), |t| t.parse())?;
    let limit = Duration::from_secs(std::env::var("STORM_LIMIT_S").map_or(Ok(240), |t| t.parse())?);
    let mode = std::env::var("STORM_MODE").unwrap_or_else(|_| "aof".to_owned());
    // The feeds' command timeout (default 2 s), to see what the storm does with a longer one.
    let command_timeout = std::env::var("COMMAND_TIMEOUT_MS")
        .map_or(Ok(RevocationSettings::default().command_timeout), |ms| {
            ms.parse().map(Duration::from_millis)
        })?;
    // The bound of the feeds' bulk steps (resync pages, re-seed pipelines; default 30 s);
    // BULK_TIMEOUT_MS=2000 gives the feed of before that setting, which used the command
    // timeout for them too.
    let bulk_timeout = std::env::var("BULK_TIMEOUT_MS").map_or(
        Ok(RevocationSettings::default()
            .bulk_timeout
            .max(command_timeout)),
        |ms| ms.parse().map(Duration::from_millis),
    )?;
    let tag = jti("storm", std::process::id() as usize);
    let settings = RevocationSettings {
        redis_url: Some(url.clone()),
        key_prefix: format!("storm-{tag}"),
        command_timeout,
        bulk_timeout,
        ..RevocationSettings::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let expires_at = clock.unix_now() + 3600;

    // The data set: named through the store (generation, sequence), then bulk-loaded.
    let store = RedisStore::open(&settings).await?;
    store
        .revoke_with_seq(&Revocation::Token {
            jti: TokenId::new(&jti("named", 0))?,
            expires_at,
        })
        .await?;
    drop(store);
    let mut conn = connect(&url).await?;
    let token_set = format!("{{{}}}:tok", settings.key_prefix);
    bulk_load(&mut conn, &token_set, &tag, revocations, expires_at).await?;
    let held = revocations + 1;

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
    // Let the registrations, reports and heartbeats settle before the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<Counters> = feeds
        .iter()
        .map(|f| Counters::of(&f.mirror().health().borrow()))
        .collect();
    if let Some(short) = feeds.iter().find(|f| f.mirror().size().total() < held) {
        return Err(format!("a mirror holds {} of {held}", short.mirror().size().total()).into());
    }
    drop(conn);

    // The storm.
    let killed = Instant::now();
    let pid = restart(restart_command).await?;
    let up = killed.elapsed();
    let redis_cpu_up = cpu_seconds(&pid, ticks)?;
    let own_cpu_up = cpu_seconds("self", ticks)?;
    let redis_wait_up = run_queue_wait(&pid)?;
    let own_wait_up = run_queue_wait("self")?;
    let mut monitor = connect(&url).await?;
    let mut peaks = Peaks::default();
    peaks.sample(&mut monitor).await;
    let mut recovered: Vec<Option<Duration>> = vec![None; mirrors];
    // Why sessions ended during the storm: each mirror's last error when its disconnect count
    // rises (sampled, so a mirror that failed twice between two polls counts its last error
    // twice).
    let mut disconnects: Vec<u64> = before.iter().map(|c| c.disconnects).collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    // Mirrors past `max_staleness` (answering `Unavailable`, fail-closed by default): the most
    // at once, and the time integral (mirror-seconds).
    let mut stale_peak = 0_usize;
    let mut stale_seconds = 0.0_f64;
    let mut first_reseed: Option<Duration> = None;
    let mut settled: Option<Duration> = None;
    let mut last_head = Instant::now();
    let mut last_info = Instant::now();
    while killed.elapsed() < limit {
        let polled = Instant::now();
        tokio::time::sleep(POLL).await;
        let now = killed.elapsed();
        let stale = feeds.iter().filter(|f| !f.mirror().is_fresh()).count();
        stale_peak = stale_peak.max(stale);
        stale_seconds += stale as f64 * polled.elapsed().as_secs_f64();
        for (((feed, before), at), seen) in feeds
            .iter()
            .zip(&before)
            .zip(recovered.iter_mut())
            .zip(disconnects.iter_mut())
        {
            // Read in place: cloning a thousand healths every poll would load this process.
            let receiver = feed.mirror().health();
            let health = receiver.borrow();
            if health.disconnects > *seen {
                let error = health.last_error.clone().unwrap_or_default();
                *errors.entry(error).or_default() += health.disconnects - *seen;
                *seen = health.disconnects;
            }
            if at.is_some() {
                continue;
            }
            if health.resets > before.resets && first_reseed.is_none() {
                first_reseed = Some(now);
            }
            if health.resets > before.resets
                && health.full_resyncs > before.full_resyncs
                && health.connected
            {
                *at = Some(now);
            }
        }
        if last_info.elapsed() >= INFO_EVERY {
            last_info = Instant::now();
            peaks.sample(&mut monitor).await;
        }
        if recovered.iter().all(Option::is_some) && last_head.elapsed() >= HEAD_EVERY {
            last_head = Instant::now();
            let (generation, seq): (Option<String>, Option<u64>) = redis::pipe()
                .get(format!("{{{}}}:gen", settings.key_prefix))
                .get(format!("{{{}}}:seq", settings.key_prefix))
                .query_async(&mut monitor)
                .await?;
            let at_head = feeds.iter().all(|feed| {
                let health = feed.mirror().health().borrow().clone();
                health.generation == generation && Some(health.applied_seq) == seq
            });
            if at_head {
                settled = Some(killed.elapsed());
                break;
            }
        }
    }
    let storm_end = killed.elapsed();
    let redis_cpu = cpu_seconds(&pid, ticks)? - redis_cpu_up;
    let own_cpu = cpu_seconds("self", ticks)? - own_cpu_up;
    let redis_wait = run_queue_wait(&pid)? - redis_wait_up;
    let own_wait = run_queue_wait("self")? - own_wait_up;
    peaks.sample(&mut monitor).await;
    let stats: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut monitor)
        .await?;
    let commands: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut monitor)
        .await?;

    let after: Vec<Counters> = feeds
        .iter()
        .map(|f| Counters::of(&f.mirror().health().borrow()))
        .collect();
    let delta = |field: fn(&Counters) -> u64| -> u64 {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| field(a).saturating_sub(field(b)))
            .sum()
    };
    let mut times: Vec<Duration> = recovered.iter().flatten().copied().collect();
    times.sort_unstable();
    let seconds =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
    let window = storm_end.saturating_sub(up).as_secs_f64();
    let field = |name| info_field(&stats, name).unwrap_or(0);
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    println!(
        "| {mirrors} | {revocations} | {mode} | {} | {} | {} / {} / {} | {}{} | {:.1} | {:.0} | {:.1} | {} | {} | {} | {} | {:.0} / {:.0} | {:.0} | {:.0} | {} |",
        seconds(Some(up)),
        seconds(first_reseed),
        seconds(Some(percentile(&times, 0.5))),
        seconds(Some(percentile(&times, 0.9))),
        seconds(times.last().copied()),
        seconds(settled),
        if settled.is_some() {
            String::new()
        } else {
            format!(
                " (not settled in {} s; {} of {mirrors} recovered)",
                limit.as_secs(),
                times.len()
            )
        },
        redis_cpu,
        100.0 * redis_cpu / window.max(f64::EPSILON),
        own_cpu,
        delta(|c| c.reseeded),
        delta(|c| c.resets),
        delta(|c| c.full_resyncs),
        delta(|c| c.disconnects),
        mib(field("total_net_input_bytes")),
        mib(field("total_net_output_bytes")),
        mib(peaks.used_memory),
        peaks.output_buffer as f64 / 1024.0,
        peaks.clients,
    );

    // Correctness: nothing was lost, in Redis or in any mirror.
    let in_redis: usize = redis::cmd("ZCARD")
        .arg(&token_set)
        .query_async(&mut monitor)
        .await?;
    let short = feeds
        .iter()
        .filter(|f| f.mirror().size().total() < held)
        .count();
    println!();
    println!(
        "Check: Redis holds {in_redis} token revocations, every mirror at least {held}: {}",
        if in_redis >= held && short == 0 {
            "yes".to_owned()
        } else {
            format!("NO ({short} mirrors short)")
        }
    );
    println!();
    println!(
        "Run-queue wait during the storm (runnable, waiting for a CPU taken by other processes): \
         Redis {redis_wait:.1} s, the mirrors' process {own_wait:.1} s (all threads); command \
         timeout {} ms, bulk timeout {} ms.",
        command_timeout.as_millis(),
        bulk_timeout.as_millis()
    );
    println!();
    println!(
        "Stale mirrors (past max_staleness {} s, so answering Unavailable): at most {stale_peak} \
         at once, {stale_seconds:.0} mirror-seconds in all.",
        settings.max_staleness.as_secs()
    );
    println!();
    println!("Why feed sessions ended during the storm (the mirror's last error, sampled):");
    println!();
    for (error, count) in &errors {
        println!("- {count} × {error}");
    }
    println!();
    println!(
        "Redis commands from its restart to the end of the storm ({} commands, INFO commandstats):",
        field("total_commands_processed")
    );
    println!();
    let stats = commandstats(&commands);
    print!(
        "{}",
        commandstats_table(&stats, u64::try_from(mirrors)?, "per mirror")
    );
    if in_redis < held || short > 0 {
        return Err("revocations were lost".into());
    }
    let shutdown = futures_util::future::join_all(feeds.into_iter().map(RedisFeed::shutdown));
    if tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .is_err()
    {
        println!("(the mirrors did not all leave the barrier within 30 s)");
    }
    Ok(())
}
