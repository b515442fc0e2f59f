//! A Redis Sentinel deployment on loopback for the failover tests: one primary and two replicas
//! (`redis-server --replicaof`), and three `redis-server --sentinel` watching them (quorum 2,
//! down after 1 s). Every process has its own free port and temp dir and is killed on drop,
//! even when the test panics. A missing `redis-server` fails the test with a message.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::delay_proxy::DelayProxy;
use super::eventually::eventually;
use super::redis::answering_process;

/// The name the sentinels monitor the primary under.
pub(crate) const MASTER_NAME: &str = "edgetoken";
/// How long a node gets to answer PING, and the sentinels to see the whole topology.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a node is started on fresh ports before the test gives up.
const SPAWN_ATTEMPTS: u32 = 5;

/// One `redis-server` process (data node or sentinel).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Node {
    /// Starts the `redis-server` that `setup` describes (its arguments, its dir, its port;
    /// fresh ports on each call) and waits until that very process answers. A port found free
    /// can be taken by another test's server before this one binds it: the node is then
    /// started again on other ports, up to [`SPAWN_ATTEMPTS`] times.
    pub(crate) fn spawn(setup: impl Fn() -> (Vec<String>, TempDir, u16)) -> Self {
        let mut problem = String::new();
        for attempt in 1..=SPAWN_ATTEMPTS {
            let (args, dir, port) = setup();
            match Self::try_spawn(&args, dir, port) {
                Ok(node) => return node,
                Err(err) => {
                    eprintln!("redis-server on port {port} (attempt {attempt}): {err}");
                    problem = err;
                }
            }
        }
        panic!("redis-server did not start in {SPAWN_ATTEMPTS} attempts: {problem}")
    }

    fn try_spawn(args: &[String], dir: TempDir, port: u16) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "spawning redis-server ({err}); the Sentinel and Cluster tests need a \
                     real Redis 7 (apt-get install redis-server)"
                )
            });
        let mut node = Self {
            port,
            dir,
            child: Some(child),
        };
        node.wait_ready()?;
        Ok(node)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A synchronous admin connection.
    pub(crate) fn admin(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("admin connection to a test redis-server")
    }

    /// Clients of this node in pub/sub mode (`CLIENT LIST TYPE pubsub`), leaving out the
    /// sentinels' own (named `sentinel-…`): the subscriptions of edgetoken processes.
    pub(crate) fn pubsub_clients(&self) -> usize {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.admin())
            .expect("CLIENT LIST");
        list.lines()
            .filter(|line| !line.contains("name=sentinel-"))
            .count()
    }

    /// `kill -9`: no shutdown, no final save, connections reset.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Waits until this node's own process answers on its port (`process_id` in `INFO
    /// server`: another test's server that took the port answers too). The reason, with the
    /// node's log, if it exited or never answered.
    fn wait_ready(&mut self) -> Result<(), String> {
        let client = redis::Client::open(self.url()).expect("node URL");
        let pid = self.child.as_ref().map(Child::id);
        let outcome = eventually(
            format!("redis-server on {} to answer PING", self.port),
            READY_TIMEOUT,
        )
        .every(Duration::from_millis(20))
        .try_until_blocking(|| {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(Err(format!("exited with {status}")));
            }
            (answering_process(&client)? == pid?).then_some(Ok(()))
        });
        match outcome.map_err(|t| t.to_string()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(problem)) | Err(problem) => Err(format!("{problem}; log:\n{}", self.log())),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One primary, two replicas, three sentinels.
#[derive(Debug)]
pub(crate) struct SentinelRedis {
    /// The data nodes; `nodes[0]` starts as the primary.
    pub(crate) nodes: Vec<Node>,
    pub(crate) sentinels: Vec<Node>,
}

/// A port free on loopback now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A temp dir named `prefix...`, removed on drop.
pub(crate) fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
}

/// What every test data node runs with, on `port` with its files in `dir`: loopback only, no
/// RDB snapshots, never evicting, and a replica's full sync at once (not after the default
/// 5 s wait for more replicas: until it is online, `WAIT` cannot count it). The caller adds
/// persistence and its role.
pub(crate) fn data_node_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        &path(dir),
        "--logfile",
        &path(&dir.join("redis.log")),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn data_node(primary: Option<u16>) -> Node {
    Node::spawn(|| {
        let port = free_port();
        let dir = temp_dir("edgetoken-sentinel-data-");
        let mut args = data_node_args(port, dir.path());
        args.extend(["--appendonly", "yes", "--appendfsync", "everysec"].map(str::to_owned));
        if let Some(primary) = primary {
            args.extend([
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                primary.to_string(),
            ]);
        }
        (args, dir, port)
    })
}

/// The sentinels' `failover-timeout`, in ms: how long a failover may take, and the longest
/// before a failed election is retried (twice this).
const FAILOVER_TIMEOUT_MS: u64 = 5000;

fn sentinel_node(primary: u16, failover_timeout_ms: u64) -> Node {
    Node::spawn(|| {
        let port = free_port();
        let dir = temp_dir("edgetoken-sentinel-");
        // Sentinel rewrites its config file as it learns the topology: it must be its own file.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = path(dir.path()),
                log = path(&dir.path().join("redis.log")),
            ),
        )
        .expect("write sentinel.conf");
        (vec![path(&conf), "--sentinel".to_owned()], dir, port)
    })
}

/// `p` as a string argument.
pub(crate) fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_owned()
}

impl SentinelRedis {
    /// Starts the six processes and waits until every sentinel knows both replicas and the
    /// two other sentinels (without which no failover can be agreed).
    pub(crate) fn start() -> Self {
        let primary = Self::primary();
        let port = primary.port;
        Self::around(primary, [port, port])
    }

    /// A primary for [`SentinelRedis::around`], started alone, so that the replicas' links to it
    /// can go through something the test controls (a delaying proxy).
    pub(crate) fn primary() -> Node {
        data_node(None)
    }

    /// Starts two replicas of `primary`, each replicating from the port in `links` (the
    /// primary's own, or a proxy in front of it), and three sentinels watching `primary`; waits
    /// as [`SentinelRedis::start`] does.
    ///
    /// With a proxy in a link, the sentinels start with a `failover-timeout` of 10 minutes,
    /// until [`SentinelRedis::allow_failover`]: a sentinel repoints a replica that replicates
    /// from another address than the primary's (`+fix-slave-config`) once `failover-timeout`
    /// has passed since it found the replica, which would route the stream around the proxy
    /// (seen in CI, where a slow setup took more than the usual 5 s).
    pub(crate) fn around(primary: Node, links: [u16; 2]) -> Self {
        let proxied = links.iter().any(|link| *link != primary.port);
        let failover_timeout_ms = if proxied {
            600_000
        } else {
            FAILOVER_TIMEOUT_MS
        };
        let mut nodes = vec![primary];
        nodes.extend(links.map(|link| data_node(Some(link))));
        let sentinels: Vec<Node> = (0..3)
            .map(|_| sentinel_node(nodes[0].port, failover_timeout_ms))
            .collect();
        let deployment = Self { nodes, sentinels };
        deployment.wait_topology();
        deployment
    }

    /// A deployment whose two replicas replicate through delaying proxies (returned with it,
    /// so the test can hold the replication stream back): [`SentinelRedis::around`] them.
    pub(crate) async fn with_delayed_replication() -> (Self, [DelayProxy; 2]) {
        let primary = Self::primary();
        let upstream = format!("127.0.0.1:{}", primary.port)
            .parse()
            .expect("a socket address");
        let proxies = [
            DelayProxy::start(upstream).await,
            DelayProxy::start(upstream).await,
        ];
        let links = [proxies[0].port(), proxies[1].port()];
        let redis = tokio::task::block_in_place(|| Self::around(primary, links));
        (redis, proxies)
    }

    /// Sets every sentinel's `failover-timeout` back to the usual 5 s (see
    /// [`SentinelRedis::around`]); call it once the primary is gone, so that no sentinel
    /// repoints a replica first.
    pub(crate) fn allow_failover(&self) {
        for sentinel in &self.sentinels {
            let () = redis::cmd("SENTINEL")
                .arg("SET")
                .arg(MASTER_NAME)
                .arg("failover-timeout")
                .arg(FAILOVER_TIMEOUT_MS)
                .query(&mut sentinel.admin())
                .expect("SENTINEL SET failover-timeout");
        }
    }

    /// `host:port` of each sentinel.
    pub(crate) fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::address).collect()
    }

    /// The port of the primary the sentinels name now.
    pub(crate) fn primary_port(&self) -> Option<u16> {
        let mut conn = self.sentinels.iter().find_map(|s| {
            redis::Client::open(s.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .ok()
        })?;
        let (_host, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME)
            .query(&mut conn)
            .ok()?;
        port.parse().ok()
    }

    /// The data node listening on `port`.
    pub(crate) fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    /// The data node listening on `port`, to kill it.
    pub(crate) fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    fn wait_topology(&self) {
        let counts = |sentinel: &Node, what: &str| -> usize {
            redis::Client::open(sentinel.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg(what)
                        .arg(MASTER_NAME)
                        .query::<Vec<redis::Value>>(&mut c)
                })
                .map_or(0, |v| v.len())
        };
        let replicas_connected = || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut self.nodes[0].admin())
                .unwrap_or_default();
            info.lines().any(|l| l.trim() == "connected_slaves:2")
                && info.matches("state=online").count() == 2
        };
        eventually(
            "both replicas online, and every sentinel to know them and 2 other sentinels",
            READY_TIMEOUT,
        )
        .every(Duration::from_millis(100))
        .until_blocking(|| {
            (replicas_connected()
                && self
                    .sentinels
                    .iter()
                    .all(|s| counts(s, "replicas") == 2 && counts(s, "sentinels") == 2))
            .then_some(())
        });
    }
}
