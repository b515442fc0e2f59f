//! Helpers shared by the `scale_*` examples (issue 11, `docs/scale.md`): each example is its
//! own crate, so they include this file with `#[path]`.
#![allow(dead_code, reason = "each example uses a part of these helpers")]

use std::error::Error;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The examples' error type.
pub(crate) type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Feeds started at once: a thousand simultaneous connects would only measure the accept queue.
pub(crate) const START_BATCH: usize = 50;

/// A distinct, valid `jti` for `(seed, i)`: 16 bytes of a digest, 22 base64url characters.
pub(crate) fn jti(seed: &str, i: usize) -> String {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update(i.to_le_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// CPU time (user + system) of process `pid` so far, in seconds, from `/proc/PID/stat`, whose
/// times are in `ticks_per_second` (`getconf CLK_TCK`, 100 unless set).
pub(crate) fn cpu_seconds(pid: &str, ticks_per_second: f64) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at `state`, field 3.
    let rest = stat.rsplit_once(") ").ok_or("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_second)
}

/// Time the threads of process `pid` spent runnable but waiting for a CPU so far, in seconds:
/// the sum of the second field of `/proc/PID/task/*/schedstat` (nanoseconds). On a shared
/// machine this says how much of a measurement's wall time was other processes' CPU.
pub(crate) fn run_queue_wait(pid: &str) -> Res<f64> {
    let mut nanos = 0_u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let wait: u64 = stat
            .split_whitespace()
            .nth(1)
            .ok_or("malformed schedstat")?
            .parse()?;
        nanos += wait;
    }
    #[expect(clippy::cast_precision_loss, reason = "reporting seconds")]
    Ok(nanos as f64 / 1e9)
}

/// The `p` quantile (0 to 1) of a sorted, non-empty sample (zero when empty).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "an index into a non-empty sample"
)]
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// One line of `INFO commandstats`: a command's calls and the microseconds Redis spent in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandStat {
    /// The command, lower case (`evalsha`, `zadd`, ...).
    pub(crate) command: String,
    /// Calls.
    pub(crate) calls: u64,
    /// Microseconds spent, in total.
    pub(crate) usec: u64,
}

/// Parses `INFO commandstats` (`cmdstat_zadd:calls=3,usec=25,usec_per_call=8.33,...`), the
/// busiest command first.
pub(crate) fn commandstats(info: &str) -> Vec<CommandStat> {
    let mut stats: Vec<CommandStat> = info
        .lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
            };
            Some(CommandStat {
                command: name.to_owned(),
                calls: field("calls")?,
                usec: field("usec")?,
            })
        })
        .collect();
    stats.sort_by_key(|stat| std::cmp::Reverse(stat.usec));
    stats
}

/// One numeric field (`name:value`) of an `INFO` reply.
pub(crate) fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        line.trim()
            .strip_prefix(name)?
            .strip_prefix(':')?
            .parse()
            .ok()
    })
}

/// The commands of `stats` as a Markdown table, `per` dividing calls and time (per revocation,
/// say). The time of `evalsha`/`eval` includes that of the commands its scripts call, which
/// also have lines of their own, so the lines do not add up.
#[expect(clippy::cast_precision_loss, reason = "reporting")]
pub(crate) fn commandstats_table(stats: &[CommandStat], per: u64, per_label: &str) -> String {
    let per = per.max(1) as f64;
    let mut out = format!(
        "| command | calls | µs in Redis | µs per call | calls {per_label} | µs {per_label} |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for stat in stats {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.2} | {:.1} |",
            stat.command,
            stat.calls,
            stat.usec,
            stat.usec as f64 / stat.calls.max(1) as f64,
            stat.calls as f64 / per,
            stat.usec as f64 / per,
        );
    }
    out.push_str(
        "\n(`evalsha`/`eval` time includes the commands its scripts call, listed on their own \
         lines too.)\n",
    );
    out
}
