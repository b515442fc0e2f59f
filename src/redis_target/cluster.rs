//! Redis Cluster: where the primary of the deployment's one slot is.
//!
//! Every key of a deployment carries the hash tag `{P}` (`P` = `key_prefix`), so all of them,
//! and the scripts that touch several at once, live in one slot: the slot of `P`. The service
//! therefore needs no cluster client: it asks a seed node which node is that slot's primary
//! (`CLUSTER SHARDS`, Redis 7; `CLUSTER SLOTS` before it), checks with `ROLE` that the node
//! answers as a primary, and talks to it as to a single Redis. A slot that moved (a failover
//! or a resharding) shows as `MOVED` on the next command, which the callers report as a lost
//! primary (see [`super::is_lost_primary_error`]); the next lookup follows it.
//!
//! For feeds that read from replicas, it also lists the slot's online replicas from the same
//! reply; a feed sends `READONLY` on its connection to one, without which a cluster replica
//! redirects every keyed read to the primary.
//!
//! What it leaves out: TLS to cluster nodes, ACL users (only a password shared by every node),
//! and learning nodes beyond the configured seeds. SPEC §3.

use std::fmt;
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisError, RedisResult, Value,
};

use super::parse_host_port;

/// Slots in a Redis Cluster.
const SLOTS: u16 = 16384;

/// How to reach a Redis Cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Seed nodes, as `host:port`; asked in this order which node holds the deployment's slot.
    pub nodes: Vec<String>,
    /// The password every cluster node requires (`requirepass`), if any.
    ///
    /// # Security
    /// `Debug` prints it redacted.
    pub password: Option<String>,
}

impl fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("nodes", &self.nodes)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClusterSettings {
    /// Checks that there is a seed and that every seed is `host:port`.
    ///
    /// # Errors
    /// A message saying what is wrong, for the caller to attach to its field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("cluster_nodes needs at least one host:port".to_owned());
        }
        for address in &self.nodes {
            parse_host_port(address).map_err(|reason| format!("cluster_nodes: {reason}"))?;
        }
        Ok(())
    }

    /// `cluster slot N via seeds A, B`, for logs and the start banner (no password).
    pub fn describe(&self, key_prefix: &str) -> String {
        format!(
            "cluster slot {} (hash tag {{{key_prefix}}}) via seeds {}",
            slot_of(key_prefix),
            self.nodes.join(", ")
        )
    }

    fn node_info(&self, host: String, port: u16) -> RedisResult<ConnectionInfo> {
        let mut info = ConnectionAddr::Tcp(host, port).into_connection_info()?;
        if let Some(password) = &self.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        Ok(info)
    }
}

/// The cluster slot of every key of the deployment with `key_prefix` (hash tag `{P}`).
pub fn slot_of(key_prefix: &str) -> u16 {
    let slot = Slot::for_key(format!("{{{key_prefix}}}"));
    // The redis crate computes the slot (CRC16 of the tag) but does not expose its number,
    // only equality with `Slot::new(n)`: finding `n` costs 16384 comparisons, once per
    // target. `for_key` always gives a slot below 16384, so the search finds it; 0 is never
    // reached as a fallback.
    (0..SLOTS)
        .find(|n| Slot::new(*n) == Some(slot))
        .unwrap_or_default()
}

/// Finds the primary of one slot through the seed nodes.
pub(super) struct Lookup {
    settings: ClusterSettings,
    /// The seeds, parsed once (validated before the target is built).
    seeds: Vec<(String, u16)>,
    pub(super) slot: u16,
}

impl Lookup {
    pub(super) fn new(settings: &ClusterSettings, key_prefix: &str) -> RedisResult<Self> {
        let seeds = settings
            .nodes
            .iter()
            .map(|address| {
                parse_host_port(address).map_err(|reason| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "cluster node", reason))
                })
            })
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Self {
            settings: settings.clone(),
            seeds,
            slot: slot_of(key_prefix),
        })
    }

    /// Asks the seeds in order for the slot's primary, and returns a client for it once it
    /// answers `ROLE` as a primary. Each seed (with the check of the node it names) gets half
    /// of `timeout`, so one that hangs leaves time for the next; the caller bounds the whole.
    ///
    /// # Errors
    /// Every seed's reason, joined: unreachable, no primary for the slot, or the named primary
    /// unreachable or not a primary (a failover in progress).
    pub(super) async fn primary(&self, timeout: Duration) -> Result<Client, String> {
        let per_seed = timeout / 2;
        let mut problems = Vec::new();
        for (host, port) in &self.seeds {
            let asked = tokio::time::timeout(per_seed, self.ask(host, *port, per_seed)).await;
            match asked {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(problem)) => problems.push(format!("seed {host}:{port}: {problem}")),
                Err(_elapsed) => {
                    problems.push(format!("seed {host}:{port}: no answer within {per_seed:?}"));
                }
            }
        }
        Err(problems.join("; "))
    }

    async fn ask(&self, host: &str, port: u16, timeout: Duration) -> Result<Client, String> {
        let shard = self.shard(host, port, timeout).await?;
        let (host, port) = primary_of(&shard, self.slot)?.address(host);
        let shown = format!("{host}:{port}");
        let info = self
            .settings
            .node_info(host, port)
            .map_err(|e| e.to_string())?;
        let client = Client::open(info.clone()).map_err(|e| e.to_string())?;
        // The seed's view may be behind (a dead primary not yet replaced): believe the node.
        let mut primary = connect(info, timeout).await?;
        let role: Vec<Value> = redis::cmd("ROLE")
            .query_async(&mut primary)
            .await
            .map_err(|e| format!("{shown}: {e}"))?;
        match role.first().and_then(text) {
            Some(role) if role == "master" => Ok(client),
            _ => Err(format!(
                "{shown} is named the primary of slot {} but is not one",
                self.slot
            )),
        }
    }

    /// The replicas of the slot's primary not marked failed, as the first seed that answers
    /// lists them; no replica is an empty list. Their health as replicas (link up, same history as the
    /// primary) is the feed's to judge, as under Sentinel. Each seed gets half of `timeout`.
    ///
    /// # Errors
    /// Every seed's reason, joined, when none answers.
    pub(super) async fn replicas(&self, timeout: Duration) -> Result<Vec<Client>, String> {
        let per_seed = timeout / 2;
        let mut problems = Vec::new();
        for (host, port) in &self.seeds {
            let asked = tokio::time::timeout(per_seed, self.shard(host, *port, per_seed)).await;
            let shard = match asked {
                Ok(Ok(shard)) => shard,
                Ok(Err(problem)) => {
                    problems.push(format!("seed {host}:{port}: {problem}"));
                    continue;
                }
                Err(_elapsed) => {
                    problems.push(format!("seed {host}:{port}: no answer within {per_seed:?}"));
                    continue;
                }
            };
            return shard
                .iter()
                .filter(|node| !node.primary && !node.failed)
                .map(|node| {
                    let (host, port) = node.address(host);
                    let info = self
                        .settings
                        .node_info(host, port)
                        .map_err(|e| e.to_string())?;
                    Client::open(info).map_err(|e| e.to_string())
                })
                .collect();
        }
        Err(problems.join("; "))
    }

    /// The nodes of the slot's shard, as the seed at `host:port` sees them.
    async fn shard(&self, host: &str, port: u16, timeout: Duration) -> Result<Vec<Node>, String> {
        let seed = self
            .settings
            .node_info(host.to_owned(), port)
            .map_err(|e| e.to_string())?;
        let mut conn = connect(seed, timeout).await?;
        let shards = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async::<Value>(&mut conn)
            .await;
        match shards {
            Ok(reply) => shard_in_shards(&reply, self.slot),
            // Before Redis 7 there is no CLUSTER SHARDS: CLUSTER SLOTS says the same.
            Err(err) if err.code().is_some() => {
                let reply = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                shard_in_slots(&reply, self.slot)
            }
            Err(err) => Err(err.to_string()),
        }
    }
}

async fn connect(
    info: ConnectionInfo,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    Client::open(info)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}

/// A node of the slot's shard, as a cluster reply names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    /// Empty (or `?`) when the node is reached at the address it was asked on.
    host: String,
    port: u16,
    primary: bool,
    /// `health` is `online` (`CLUSTER SLOTS` lists no health: taken as online).
    online: bool,
    /// `health` is `fail`. A replica still `loading` (or whose offset the asked node has not
    /// heard yet: a fresh cluster reports its replicas `loading` for a while) is not failed:
    /// whether it is usable is the feed's to judge, from the replica itself.
    failed: bool,
}

impl Node {
    /// The node's address, an empty host meaning the seed's (Redis' convention).
    fn address(&self, seed_host: &str) -> (String, u16) {
        let host = if self.host.is_empty() || self.host == "?" {
            seed_host.to_owned()
        } else {
            self.host.clone()
        };
        (host, self.port)
    }
}

/// The online primary among the nodes of `slot`'s shard. After a failover the shard may still
/// list the old primary, failed, beside the new one: the online one is the answer.
fn primary_of(shard: &[Node], slot: u16) -> Result<&Node, String> {
    if let Some(online) = shard.iter().find(|node| node.primary && node.online) {
        return Ok(online);
    }
    if shard.iter().any(|node| node.primary) {
        Err(format!(
            "the primary of slot {slot} is not online (a failover in progress)"
        ))
    } else {
        Err(format!("no primary for slot {slot}"))
    }
}

/// The nodes of the shard holding `slot` in a `CLUSTER SHARDS` reply (RESP2 flat arrays or
/// RESP3 maps).
fn shard_in_shards(reply: &Value, slot: u16) -> Result<Vec<Node>, String> {
    let shards = elements(reply).ok_or("CLUSTER SHARDS: not an array")?;
    for shard in shards {
        let shard = fields(shard).ok_or("CLUSTER SHARDS: a shard is not a map")?;
        let ranges = field(&shard, "slots")
            .and_then(elements)
            .ok_or("CLUSTER SHARDS: a shard without slots")?;
        let holds = ranges.chunks(2).any(|pair| match pair {
            [start, end] => int(start)
                .zip(int(end))
                .is_some_and(|(start, end)| (start..=end).contains(&i64::from(slot))),
            _ => false,
        });
        if !holds {
            continue;
        }
        let nodes = field(&shard, "nodes")
            .and_then(elements)
            .ok_or("CLUSTER SHARDS: a shard without nodes")?;
        return nodes
            .iter()
            .map(|node| {
                let node = fields(node).ok_or("CLUSTER SHARDS: a node is not a map")?;
                let is = |name: &str, value: &str| {
                    field(&node, name).and_then(text).as_deref() == Some(value)
                };
                let host = field(&node, "endpoint")
                    .and_then(text)
                    .filter(|e| e != "?")
                    .or_else(|| field(&node, "ip").and_then(text))
                    .unwrap_or_default();
                let port = field(&node, "port")
                    .and_then(int)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or("CLUSTER SHARDS: a node without a port")?;
                Ok(Node {
                    host,
                    port,
                    primary: is("role", "master"),
                    online: is("health", "online"),
                    failed: is("health", "fail"),
                })
            })
            .collect();
    }
    Err(format!("slot {slot} is not served by any shard"))
}

/// The nodes serving `slot` in a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, ...],
/// replicas...]` per range, the primary first.
fn shard_in_slots(reply: &Value, slot: u16) -> Result<Vec<Node>, String> {
    let ranges = elements(reply).ok_or("CLUSTER SLOTS: not an array")?;
    for range in ranges {
        let range = elements(range).ok_or("CLUSTER SLOTS: a range is not an array")?;
        let (Some(start), Some(end)) = (range.first().and_then(int), range.get(1).and_then(int))
        else {
            return Err("CLUSTER SLOTS: a range without bounds".to_owned());
        };
        if !(start..=end).contains(&i64::from(slot)) {
            continue;
        }
        return range
            .iter()
            .skip(2)
            .enumerate()
            .map(|(position, node)| {
                let node = elements(node).ok_or("CLUSTER SLOTS: a node is not an array")?;
                let port = node
                    .get(1)
                    .and_then(int)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or("CLUSTER SLOTS: a node without a port")?;
                Ok(Node {
                    host: node.first().and_then(text).unwrap_or_default(),
                    port,
                    primary: position == 0,
                    online: true,
                    failed: false,
                })
            })
            .collect();
    }
    Err(format!("slot {slot} is not served by any node"))
}

fn elements(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A map's entries, from a RESP3 map or a RESP2 array of alternating names and values.
fn fields(value: &Value) -> Option<Vec<(String, &Value)>> {
    match value {
        Value::Map(pairs) => pairs
            .iter()
            .map(|(name, value)| Some((text(name)?, value)))
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .map(|pair| match pair {
                [name, value] => Some((text(name)?, value)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn field<'a>(fields: &[(String, &'a Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn node(ip: &str, port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            bulk("id"),
            bulk("abc"),
            bulk("port"),
            Value::Int(port),
            bulk("ip"),
            bulk(ip),
            bulk("endpoint"),
            bulk(ip),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            Value::Int(42),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(ranges: &[i64], nodes: Vec<Value>) -> Value {
        Value::Array(vec![
            bulk("slots"),
            Value::Array(ranges.iter().map(|n| Value::Int(*n)).collect()),
            bulk("nodes"),
            Value::Array(nodes),
        ])
    }

    #[test]
    fn the_slot_is_the_crc16_of_the_hash_tag() {
        // Values from the Redis documentation of CLUSTER KEYSLOT.
        assert_eq!(slot_of("hash_tag"), 2515);
        assert_eq!(slot_of("somekey"), 11058);
    }

    #[test]
    fn shards_reply_names_the_online_primary_of_the_slot() {
        let reply = Value::Array(vec![
            shard(
                &[0, 5460],
                vec![
                    node("10.0.0.1", 7000, "master", "online"),
                    node("10.0.0.4", 7003, "replica", "online"),
                ],
            ),
            shard(
                &[5461, 10922, 12000, 12001],
                vec![
                    node("10.0.0.5", 7004, "replica", "online"),
                    node("10.0.0.2", 7001, "master", "online"),
                    node("10.0.0.6", 7005, "replica", "fail"),
                    node("10.0.0.7", 7006, "replica", "loading"),
                ],
            ),
        ]);
        let shard = shard_in_shards(&reply, 12001).unwrap();
        assert_eq!(
            primary_of(&shard, 12001).unwrap().address("seed"),
            ("10.0.0.2".to_owned(), 7001)
        );
        // A failed replica is left out; one still loading is the feed's to judge.
        let replicas: Vec<_> = shard
            .iter()
            .filter(|n| !n.primary && !n.failed)
            .map(|n| n.address("seed"))
            .collect();
        assert_eq!(
            replicas,
            [("10.0.0.5".to_owned(), 7004), ("10.0.0.7".to_owned(), 7006)]
        );
        let first = shard_in_shards(&reply, 0).unwrap();
        assert_eq!(primary_of(&first, 0).unwrap().port, 7000);
        assert!(shard_in_shards(&reply, 11000).is_err(), "unserved slot");
    }

    #[test]
    fn shards_reply_with_a_failed_primary_is_a_failover_in_progress() {
        let reply = Value::Array(vec![shard(
            &[0, 16383],
            vec![
                node("10.0.0.1", 7000, "master", "failed"),
                node("10.0.0.4", 7003, "replica", "online"),
            ],
        )]);
        let nodes = shard_in_shards(&reply, 100).unwrap();
        let err = primary_of(&nodes, 100).unwrap_err();
        assert!(err.contains("not online"), "{err}");
        // Once a replica took over, the failed old primary listed first is passed over.
        let reply = Value::Array(vec![shard(
            &[0, 16383],
            vec![
                node("10.0.0.1", 7000, "master", "fail"),
                node("10.0.0.4", 7003, "master", "online"),
            ],
        )]);
        let nodes = shard_in_shards(&reply, 100).unwrap();
        assert_eq!(primary_of(&nodes, 100).unwrap().port, 7003);
        let err = primary_of(&nodes[..1], 100).unwrap_err();
        assert!(err.contains("not online"), "{err}");
        let err = primary_of(&[], 100).unwrap_err();
        assert!(err.contains("no primary"), "{err}");
    }

    #[test]
    fn shards_reply_as_resp3_maps_is_read_the_same() {
        let map = |pairs: Vec<(&str, Value)>| {
            Value::Map(pairs.into_iter().map(|(k, v)| (bulk(k), v)).collect())
        };
        let reply = Value::Array(vec![map(vec![
            (
                "slots",
                Value::Array(vec![Value::Int(0), Value::Int(16383)]),
            ),
            (
                "nodes",
                Value::Array(vec![map(vec![
                    ("port", Value::Int(7002)),
                    ("ip", bulk("10.0.0.3")),
                    ("endpoint", bulk("?")),
                    ("role", bulk("master")),
                    ("health", bulk("online")),
                ])]),
            ),
        ])]);
        let shard = shard_in_shards(&reply, 9).unwrap();
        let found = primary_of(&shard, 9).unwrap();
        assert_eq!(found.host, "10.0.0.3", "`?` endpoint falls back to the ip");
        assert_eq!(found.port, 7002);
    }

    #[test]
    fn slots_reply_names_the_first_node_of_the_range() {
        let range =
            |start: i64, end: i64, nodes: &[(&str, i64)]| {
                let mut items = vec![Value::Int(start), Value::Int(end)];
                items.extend(nodes.iter().map(|(host, port)| {
                    Value::Array(vec![bulk(host), Value::Int(*port), bulk("id")])
                }));
                Value::Array(items)
            };
        let reply = Value::Array(vec![
            range(0, 5460, &[("10.0.0.1", 7000), ("10.0.0.4", 7003)]),
            range(5461, 16383, &[("", 7001), ("10.0.0.5", 7004)]),
        ]);
        let shard = shard_in_slots(&reply, 5460).unwrap();
        assert_eq!(
            primary_of(&shard, 5460).unwrap().address("seed"),
            ("10.0.0.1".to_owned(), 7000)
        );
        assert_eq!(shard[1].address("seed"), ("10.0.0.4".to_owned(), 7003));
        assert!(!shard[1].primary);
        let shard = shard_in_slots(&reply, 16383).unwrap();
        let found = primary_of(&shard, 16383).unwrap();
        assert_eq!(
            found.address("seed"),
            ("seed".to_owned(), 7001),
            "empty host: the seed's"
        );
        assert!(shard_in_slots(&Value::Array(vec![]), 1).is_err());
        assert!(shard_in_slots(&Value::Int(1), 1).is_err());
    }

    #[test]
    fn cluster_nodes_must_be_host_and_port_and_the_password_is_redacted() {
        let settings = |nodes: &[&str]| ClusterSettings {
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            password: Some("hunter2".to_owned()),
        };
        settings(&["10.0.0.1:7000", "[::1]:7001", "redis-0.internal:7002"])
            .validate()
            .unwrap();
        for bad in ["10.0.0.1", "host:0", ":7000", "redis://h:7000", "h:70000"] {
            let err = settings(&[bad]).validate().unwrap_err();
            assert!(err.contains("not host:port"), "{bad}: {err}");
        }
        assert!(settings(&[]).validate().is_err());
        assert!(!format!("{:?}", settings(&["h:1"])).contains("hunter2"));
    }
}
