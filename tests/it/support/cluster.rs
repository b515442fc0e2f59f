//! A Redis Cluster on loopback for the failover tests: six `redis-server --cluster-enabled yes`
//! (three primaries, one replica each), joined with `redis-cli --cluster create
//! --cluster-replicas 1`, node timeout 1 s, no persistence; a seventh node can be added as a
//! second replica of one primary (`redis-cli --cluster add-node --cluster-slave`). Every node
//! has its own free port, bus port and temp dir and is killed on drop, even when the test
//! panics. `migrate_slot` moves a slot between primaries, slowly.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::eventually::eventually;
use super::sentinel::{Node, data_node_args, free_port, path, temp_dir};

/// How long the cluster gets to form (slots assigned, replicas online, state ok everywhere).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `cluster-node-timeout`: how long a primary may be unreachable before it is failed over.
const NODE_TIMEOUT_MS: u32 = 1000;

/// Six cluster nodes: three primaries with one replica each.
#[derive(Debug)]
pub(crate) struct ClusterRedis {
    pub(crate) nodes: Vec<Node>,
}

fn cluster_node() -> Node {
    Node::spawn(|| {
        let port = free_port();
        // The bus port is set explicitly: the default (port + 10000) may be taken or past 65535.
        let bus = free_port();
        let dir = temp_dir("edgetoken-cluster-");
        let mut args = data_node_args(port, dir.path());
        args.extend([
            "--cluster-port".to_owned(),
            bus.to_string(),
            "--cluster-enabled".to_owned(),
            "yes".to_owned(),
            "--cluster-node-timeout".to_owned(),
            NODE_TIMEOUT_MS.to_string(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--cluster-config-file".to_owned(),
            path(&dir.path().join("nodes.conf")),
        ]);
        (args, dir, port)
    })
}

impl ClusterRedis {
    /// Starts six nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` and every primary has its replica online.
    pub(crate) fn start() -> Self {
        let nodes: Vec<Node> = (0..6).map(|_| cluster_node()).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Node::address))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("running redis-cli --cluster create: {err}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_formed();
        cluster
    }

    /// Adds a seventh node as a second replica of the primary on `primary` and waits until
    /// both of its replicas are online. With one replica, a primary killed leaves its
    /// successor without any, and revokes waiting for one replica answer 503 until one is back.
    pub(crate) fn add_replica(&mut self, primary: u16) {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node(primary).admin())
            .expect("CLUSTER MYID");
        let node = cluster_node();
        let output = Command::new("redis-cli")
            .args(["--cluster", "add-node"])
            .arg(node.address())
            .arg(self.node(primary).address())
            .args(["--cluster-slave", "--cluster-master-id", &id])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("running redis-cli --cluster add-node: {err}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster add-node failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.nodes.push(node);
        eventually("both replicas of the slot's primary online", READY_TIMEOUT)
            .every(Duration::from_millis(100))
            .until_blocking(|| {
                let info: String = Self::ask(primary, redis::cmd("INFO").arg("replication"))?;
                (info.lines().any(|l| l.trim() == "connected_slaves:2")
                    && info.matches("state=online").count() == 2)
                    .then_some(())
            });
        self.wait_formed();
    }

    /// Makes every node require `password` from now on (`masterauth` first, so replicas can
    /// reconnect). Afterwards this type's own checks, which do not authenticate, no longer work.
    pub(crate) fn require_password(&self, password: &str) {
        for setting in ["masterauth", "requirepass"] {
            for node in &self.nodes {
                let answer: String = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(setting)
                    .arg(password)
                    .query(&mut node.admin())
                    .expect("CONFIG SET");
                assert_eq!(answer, "OK");
            }
        }
    }

    /// `host:port` of every node (the seeds the service is given).
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(Node::address).collect()
    }

    /// The node listening on `port`.
    pub(crate) fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a cluster node on that port")
    }

    /// The node listening on `port`, to kill it.
    pub(crate) fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a cluster node on that port")
    }

    /// The slot of `key` as the cluster computes it (`CLUSTER KEYSLOT`).
    pub(crate) fn keyslot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].admin())
            .expect("CLUSTER KEYSLOT")
    }

    /// The port of the node that serves `slot` as a primary, by its own account (`CLUSTER
    /// NODES`, the `myself,master` line); `None` while no live node does.
    pub(crate) fn slot_primary(&self, slot: u16) -> Option<u16> {
        self.live_ports().into_iter().find(|port| {
            let nodes: String =
                Self::ask(*port, redis::cmd("CLUSTER").arg("NODES")).unwrap_or_default();
            nodes.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(2).is_some_and(|flags| {
                    flags.split(',').any(|f| f == "myself")
                        && flags.split(',').any(|f| f == "master")
                }) && fields.iter().skip(8).any(|range| serves(range, slot))
            })
        })
    }

    /// The port of a live, online replica of the primary on `primary`.
    pub(crate) fn replica_of(&self, primary: u16) -> Option<u16> {
        self.live_ports().into_iter().find(|port| {
            let info: String =
                Self::ask(*port, redis::cmd("INFO").arg("replication")).unwrap_or_default();
            info.lines().any(|l| l.trim() == "role:slave")
                && info
                    .lines()
                    .any(|l| l.trim() == format!("master_port:{primary}"))
                && info.lines().any(|l| l.trim() == "master_link_status:up")
        })
    }

    /// `CLUSTER FAILOVER` on the replica on `replica`: a coordinated switch, the primary
    /// pausing its clients until the replica has caught up.
    pub(crate) fn failover(&self, replica: u16) {
        let answer: String = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut self.node(replica).admin())
            .expect("CLUSTER FAILOVER");
        assert_eq!(answer, "OK");
    }

    /// Ports of the live primaries.
    pub(crate) fn primaries(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|port| {
                Self::ask::<String>(*port, redis::cmd("INFO").arg("replication"))
                    .is_some_and(|info| info.lines().any(|l| l.trim() == "role:master"))
            })
            .collect()
    }

    /// Ports of nodes still running that answer PING.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| Self::ask::<String>(n.port, &redis::cmd("PING")).is_some())
            .map(|n| n.port)
            .collect()
    }

    pub(crate) fn ask<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
            .and_then(|mut c| cmd.query(&mut c))
            .ok()
    }

    fn wait_formed(&self) {
        eventually(
            "every cluster node in state ok, every primary with an online replica",
            READY_TIMEOUT,
        )
        .every(Duration::from_millis(100))
        .until_blocking(|| {
            let all_ok = self.nodes.iter().all(|n| {
                Self::ask::<String>(n.port, redis::cmd("CLUSTER").arg("INFO"))
                    .is_some_and(|info| info.lines().any(|l| l.trim() == "cluster_state:ok"))
            });
            let replicated = self
                .nodes
                .iter()
                .filter_map(|n| Self::ask::<String>(n.port, redis::cmd("INFO").arg("replication")))
                .filter(|info| info.lines().any(|l| l.trim() == "role:master"))
                .all(|info| {
                    !info.lines().any(|l| l.trim() == "connected_slaves:0")
                        && info.contains("state=online")
                });
            (all_ok && replicated).then_some(())
        });
    }
}

/// Moves `slot` from the primary on `from` to the primary on `to` the way `redis-cli --cluster
/// reshard` does, slowly: `SETSLOT IMPORTING` on `to`, `SETSLOT MIGRATING` on `from`, then
/// `MIGRATE` one key at a time with `pause` after each (so the slot stays split between the two
/// nodes for a while), then `SETSLOT NODE` on every node. Blocking: run it on its own thread.
pub(crate) fn migrate_slot(slot: u16, from: u16, to: u16, pause: Duration, nodes: &[u16]) {
    let id = |port: u16| -> String {
        ClusterRedis::ask(port, redis::cmd("CLUSTER").arg("MYID")).expect("CLUSTER MYID")
    };
    let (from_id, to_id) = (id(from), id(to));
    let setslot = |port: u16, state: &str, node: &str| -> Option<String> {
        ClusterRedis::ask(
            port,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(node),
        )
    };
    setslot(to, "IMPORTING", &from_id).expect("SETSLOT IMPORTING");
    setslot(from, "MIGRATING", &to_id).expect("SETSLOT MIGRATING");
    loop {
        let keys: Vec<String> = ClusterRedis::ask(
            from,
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100),
        )
        .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let _: Option<String> = ClusterRedis::ask(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg(&key)
                    .arg(0)
                    .arg(5000),
            );
            std::thread::sleep(pause);
        }
    }
    // The new owner first (it bumps its epoch), then the old one, then everyone else.
    setslot(to, "NODE", &to_id).expect("SETSLOT NODE on the new owner");
    setslot(from, "NODE", &to_id).expect("SETSLOT NODE on the old owner");
    for port in nodes.iter().filter(|p| **p != to && **p != from) {
        // Replicas refuse SETSLOT; gossip tells them.
        let _ = setslot(*port, "NODE", &to_id);
    }
}

/// Whether a `CLUSTER NODES` slot field (`N`, `A-B`; `[..]` migration marks skipped) holds
/// `slot`.
fn serves(range: &str, slot: u16) -> bool {
    if range.starts_with('[') {
        return false;
    }
    let (start, end) = range.split_once('-').unwrap_or((range, range));
    match (start.parse::<u16>(), end.parse::<u16>()) {
        (Ok(start), Ok(end)) => (start..=end).contains(&slot),
        _ => false,
    }
}
