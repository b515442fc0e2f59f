//! A `redis-server` inside its own network namespace, reached over a veth pair, whose traffic
//! an nftables rule can black-hole (THREATS §4 F5: packets dropped, no RST, no FIN).
//!
//! The test process stays in the host namespace with one end of the pair (`10.231.N.1/30`);
//! Redis listens on the other end (`10.231.N.2`) inside the namespace. Dropping the guard
//! kills Redis and deletes the namespace and the pair, also when the test panics.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Without them the test is skipped with the
//! reason printed, except under `CI=true`, where that is a failure: CI installs both.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use super::eventually::eventually;

/// The port Redis listens on inside the namespace (nothing else lives there).
const PORT: u16 = 16_379;
/// The nftables table holding the black-hole rules.
const TABLE: &str = "edgetoken_fault";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `program args` and returns its combined output on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| format!("`{program}` could not run: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}` failed with {}: {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// A network namespace with a veth pair to the host and a Redis inside; torn down on drop.
#[derive(Debug)]
pub(crate) struct IsolatedRedis {
    namespace: String,
    host_link: String,
    address: SocketAddr,
    redis: Option<Child>,
    dir: TempDir,
}

impl IsolatedRedis {
    /// Creates the namespace and starts Redis in it, or returns why it cannot (outside CI).
    ///
    /// # Panics
    ///
    /// Under `CI=true` when the namespace cannot be made; and when Redis does not start.
    pub(crate) fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(redis) => Some(redis),
            Err(reason) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "the black-hole fault needs root, `ip` (iproute2) and `nft` (nftables), \
                     which CI installs: {reason}"
                );
                eprintln!("skipping: cannot build a network namespace here: {reason}");
                None
            }
        }
    }

    fn try_start() -> Result<Self, String> {
        run("nft", &["--version"])?;
        let n = (std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed)) % 250;
        let namespace = format!("etk-f5-{}-{n}", std::process::id());
        let host_link = format!("etkh{n}");
        let ns_link = format!("etkn{n}");
        let (host_ip, ns_ip) = (format!("10.231.{n}.1"), format!("10.231.{n}.2"));
        let dir = tempfile::Builder::new()
            .prefix("edgetoken-netns-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // The guard exists before the first change, so a half-built setup is removed too.
        let mut redis = Self {
            namespace: namespace.clone(),
            host_link: host_link.clone(),
            address: format!("{ns_ip}:{PORT}")
                .parse()
                .map_err(|e| format!("{e}"))?,
            redis: None,
            dir,
        };
        let ns = namespace.as_str();
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
            ],
        )?;
        run("ip", &["link", "set", &ns_link, "netns", ns])?;
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_link],
        )?;
        run("ip", &["link", "set", &host_link, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        in_ns(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_link])?;
        in_ns(&["ip", "link", "set", &ns_link, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        redis.spawn_redis(&ns_ip)?;
        Ok(redis)
    }

    fn spawn_redis(&mut self, ip: &str) -> Result<(), String> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "redis-server"])
            .args(["--port", &PORT.to_string(), "--bind", ip])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("redis-server in the namespace: {err}"))?;
        self.redis = Some(child);
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        eventually(
            "redis-server in the namespace to answer PING",
            Duration::from_secs(10),
        )
        .every(Duration::from_millis(20))
        .try_until_blocking(|| {
            client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .ok()
        })
        .map(drop)
        .map_err(|timed_out| timed_out.to_string())
    }

    /// `redis://10.231.N.2:PORT/`, reachable from the host namespace.
    pub(crate) fn url(&self) -> String {
        format!("redis://{}/", self.address)
    }

    /// Drops every packet to and from Redis inside the namespace: no RST, no FIN, no ICMP.
    pub(crate) fn black_hole(&self) {
        let port = PORT.to_string();
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", self.namespace.as_str(), "nft"];
            all.extend_from_slice(args);
            run("ip", &all).expect("nft rule in the namespace");
        };
        nft(&["add", "table", "inet", TABLE]);
        for (chain, hook, field) in [("in", "input", "dport"), ("out", "output", "sport")] {
            nft(&[
                "add",
                "chain",
                "inet",
                TABLE,
                chain,
                &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
            ]);
            nft(&[
                "add", "rule", "inet", TABLE, chain, "tcp", field, &port, "drop",
            ]);
        }
    }

    /// Removes the black hole: packets flow again (connections TCP kept alive resume).
    pub(crate) fn heal(&self) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.namespace,
                "nft",
                "delete",
                "table",
                "inet",
                TABLE,
            ],
        )
        .expect("delete the black-hole table");
    }
}

impl Drop for IsolatedRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace deletes its end of the pair, and with it the host end; the
        // explicit delete covers a pair that never moved into the namespace.
        let _ = run("ip", &["netns", "del", &self.namespace]);
        let _ = run("ip", &["link", "del", &self.host_link]);
    }
}
