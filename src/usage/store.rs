//! Where token usage is merged and read: Redis for a deployment, or this process's memory
//! (the embedded defaults, one process).
//!
//! # Redis key layout
//!
//! One hash per used token, under the deployment's `key_prefix` hash tag `{P}` (like the
//! records and revocations):
//!
//! | Key | Field | Content |
//! |---|---|---|
//! | `{P}:use:<tenant>:<jti>` | `at` | latest use, Unix seconds |
//! | | `uses` | uses counted (`HINCRBY`) |
//! | | `from` | client address of the latest use (absent when not recorded) |
//! | | `agent` | user agent of the latest use (absent when not recorded) |
//! | | `first_at`, `first_from` | the first flush that created the key |
//!
//! It expires with the token's record (`EXPIREAT` the token's `exp` + records retention).
//!
//! # Merging
//!
//! Each token is merged by one script call ([`MERGE_SCRIPT`]): add the count, keep the larger
//! time and the client that goes with it, create `first_at` only if absent (`HSETNX`, whose
//! answer says whether this flush saw the token's first use). Adding and taking a maximum
//! commute, so verifiers may flush in any order. A merge is one pipeline: `SCRIPT LOAD` (so a
//! restarted Redis never answers `NOSCRIPT`) and one `EVALSHA` per token; the flusher sends
//! an interval of more than 10,000 tokens as several merges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use super::TokenUsage;
use crate::clock::Clock;
use crate::records::RecordError;
use crate::redis_conn::{LazyConnection, Lease};
use crate::redis_target::RedisTarget;
use crate::token::{TenantId, TokenId};

/// One token's usage since the last flush, as the flusher writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// The token's tenant.
    pub tenant: TenantId,
    /// The token id (`jti`).
    pub id: TokenId,
    /// The token's `exp`: its usage expires with its record.
    pub expires_at: OffsetDateTime,
    /// Uses in this batch.
    pub uses: u64,
    /// The latest use in this batch.
    pub last_at: OffsetDateTime,
    /// The client address of the latest use, when recorded.
    pub from: Option<String>,
    /// The cleaned user agent of the latest use, when recorded.
    pub agent: Option<String>,
}

/// The Lua merge of one token's usage: `KEYS[1]` the usage hash; `ARGV` the latest time, the
/// count, the address and agent (empty when not recorded) and the expiry. Returns 1 when this
/// call created the key (the token's first use seen by any verifier).
const MERGE_SCRIPT: &str = r"
local first = redis.call('HSETNX', KEYS[1], 'first_at', ARGV[1])
if first == 1 and ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'first_from', ARGV[3])
end
redis.call('HINCRBY', KEYS[1], 'uses', ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'at'))
if last == nil or tonumber(ARGV[1]) >= last then
  redis.call('HSET', KEYS[1], 'at', ARGV[1])
  for i, field in ipairs({'from', 'agent'}) do
    if ARGV[2 + i] ~= '' then
      redis.call('HSET', KEYS[1], field, ARGV[2 + i])
    else
      redis.call('HDEL', KEYS[1], field)
    end
  end
end
redis.call('EXPIREAT', KEYS[1], ARGV[5])
return first
";

/// The fields of one usage hash the list reads: `at`, `uses`, `from`, `agent`.
type Fields = (Option<i64>, Option<u64>, Option<String>, Option<String>);

/// Where usage is merged and read.
#[derive(Debug, Clone)]
pub enum UsageStore {
    /// This process only (the embedded defaults).
    Memory(MemoryUsage),
    /// Redis, shared by every verifier and issuer of a deployment.
    Redis(RedisUsage),
}

impl UsageStore {
    /// Merges `batch`, keeping each token's usage until `retention` after it expires.
    /// Returns, per token in order, whether this merge saw its first use.
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis failed; nothing of the batch may be assumed written.
    pub async fn merge(
        &self,
        batch: &[TokenUse],
        retention: Duration,
    ) -> Result<Vec<bool>, RecordError> {
        match self {
            Self::Memory(store) => Ok(store.merge(batch, retention)),
            Self::Redis(store) => store.merge(batch, retention).await,
        }
    }

    /// The same store on a connection of its own (the flusher's, so that its large batches
    /// neither wait behind nor delay the list API's reads, and its replies are parsed on the
    /// flusher's thread).
    #[must_use]
    pub fn with_own_connection(&self) -> Self {
        match self {
            Self::Memory(store) => Self::Memory(store.clone()),
            Self::Redis(store) => Self::Redis(store.with_own_connection()),
        }
    }

    /// The usage of tokens `ids` of `tenant`; a token never used is absent.
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis cannot be read.
    pub async fn of_tokens(
        &self,
        tenant: &TenantId,
        ids: &[&str],
    ) -> Result<HashMap<String, TokenUsage>, RecordError> {
        match self {
            Self::Memory(store) => Ok(store.of_tokens(tenant, ids)),
            Self::Redis(store) => store.of_tokens(tenant, ids).await,
        }
    }
}

/// One token's merged usage in memory.
#[derive(Debug, Clone)]
struct Stored {
    usage: TokenUsage,
    keep_until: OffsetDateTime,
}

/// Usage in this process's memory, pruned when the token's record would be.
#[derive(Debug, Clone)]
pub struct MemoryUsage {
    tokens: Arc<Mutex<HashMap<(TenantId, String), Stored>>>,
    clock: Arc<dyn Clock>,
}

impl MemoryUsage {
    /// An empty store.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            tokens: Arc::default(),
            clock,
        }
    }

    fn merge(&self, batch: &[TokenUse], retention: Duration) -> Vec<bool> {
        let now = self.clock.now();
        // Locked by the flusher and the list API only, never on the request path.
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, stored| stored.keep_until > now);
        batch
            .iter()
            .map(|token| {
                let key = (token.tenant.clone(), token.id.as_str().to_owned());
                let first = !tokens.contains_key(&key);
                let stored = tokens.entry(key).or_insert_with(|| Stored {
                    usage: TokenUsage::default(),
                    keep_until: token.expires_at + retention,
                });
                let usage = &mut stored.usage;
                usage.uses = usage.uses.saturating_add(token.uses);
                if usage.last_used_at.is_none_or(|at| token.last_at >= at) {
                    usage.last_used_at = Some(token.last_at);
                    usage.last_used_from.clone_from(&token.from);
                    usage.last_used_agent.clone_from(&token.agent);
                }
                first
            })
            .collect()
    }

    fn of_tokens(&self, tenant: &TenantId, ids: &[&str]) -> HashMap<String, TokenUsage> {
        let now = self.clock.now();
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter()
            .filter_map(|id| {
                tokens
                    .get(&(tenant.clone(), (*id).to_owned()))
                    .filter(|stored| stored.keep_until > now)
                    .map(|stored| ((*id).to_owned(), stored.usage.clone()))
            })
            .collect()
    }
}

/// Usage in Redis (see the module docs for the layout).
#[derive(Clone)]
pub struct RedisUsage {
    conn: Arc<LazyConnection>,
    prefix: String,
    timeout: Duration,
    script: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, which may hold a password.
        f.debug_struct("RedisUsage")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_error(operation: &'static str) -> impl FnOnce(redis::RedisError) -> RecordError {
    move |source| RecordError::Redis { operation, source }
}

impl RedisUsage {
    /// A store on `url` under `prefix` (connected lazily, reconnecting after failures), each
    /// command answering within `timeout`.
    ///
    /// # Errors
    ///
    /// [`RecordError::RedisUrl`] when the URL does not parse.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, RecordError> {
        let target = RedisTarget::url(url).map_err(RecordError::RedisUrl)?;
        Ok(Self::on_target(target, prefix, timeout))
    }

    /// A store on the primary `target` names (the deployment's Redis, URL, Sentinel or Cluster).
    pub(crate) fn on_target(target: RedisTarget, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn: Arc::new(LazyConnection::new(target, timeout)),
            prefix: prefix.to_owned(),
            timeout,
            script: Arc::new(redis::Script::new(MERGE_SCRIPT)),
        }
    }

    /// The same store on a new connection (opened lazily, like the first).
    #[must_use]
    pub fn with_own_connection(&self) -> Self {
        Self {
            conn: Arc::new(self.conn.fresh()),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            script: Arc::clone(&self.script),
        }
    }

    /// The usage hash of token `id` in `tenant`.
    pub fn key(&self, tenant: &TenantId, id: &str) -> String {
        format!("{{{}}}:use:{tenant}:{id}", self.prefix)
    }

    async fn conn(&self) -> Result<Lease, RecordError> {
        self.conn.get().await.map_err(|error| {
            RecordError::connecting("connect for token usage", error, self.timeout)
        })
    }

    async fn merge(
        &self,
        batch: &[TokenUse],
        retention: Duration,
    ) -> Result<Vec<bool>, RecordError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(MERGE_SCRIPT).ignore();
        for token in batch {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(self.key(&token.tenant, token.id.as_str()))
                .arg(token.last_at.unix_timestamp())
                .arg(token.uses)
                .arg(token.from.as_deref().unwrap_or_default())
                .arg(token.agent.as_deref().unwrap_or_default())
                .arg((token.expires_at + retention).unix_timestamp());
        }
        let lease = self.conn().await?;
        let mut conn = lease.value.clone();
        let created: Vec<i64> = self
            .conn
            .checked(&lease, pipe.query_async(&mut conn).await)
            .map_err(redis_error("merge token usage"))?;
        Ok(created.into_iter().map(|c| c == 1).collect())
    }

    async fn of_tokens(
        &self,
        tenant: &TenantId,
        ids: &[&str],
    ) -> Result<HashMap<String, TokenUsage>, RecordError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.key(tenant, id))
                .arg("at")
                .arg("uses")
                .arg("from")
                .arg("agent");
        }
        let lease = self.conn().await?;
        let mut conn = lease.value.clone();
        let found: Vec<Fields> = self
            .conn
            .checked(&lease, pipe.query_async(&mut conn).await)
            .map_err(redis_error("read token usage"))?;
        Ok(ids
            .iter()
            .zip(found)
            .filter_map(|(id, (at, uses, from, agent))| {
                let at = at.and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())?;
                Some((
                    (*id).to_owned(),
                    TokenUsage {
                        last_used_at: Some(at),
                        last_used_from: from,
                        last_used_agent: agent,
                        uses: uses.unwrap_or_default(),
                    },
                ))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn token_use(uses: u64, at: i64, from: &str) -> TokenUse {
        TokenUse {
            tenant: "acme".parse().unwrap(),
            id: "aaaaaaaaaaaaaaaaaaaaaa".parse().unwrap(),
            expires_at: OffsetDateTime::from_unix_timestamp(5_000).unwrap(),
            uses,
            last_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            from: Some(from.to_owned()),
            agent: None,
        }
    }

    #[test]
    fn memory_merge_keeps_the_latest_use_and_adds_counts_in_any_order() {
        let store = MemoryUsage::new(Arc::new(ManualClock::at(2_000)));
        let retention = Duration::from_mins(1);
        assert_eq!(
            store.merge(&[token_use(3, 2_010, "10.0.0.1")], retention),
            [true]
        );
        assert_eq!(
            store.merge(&[token_use(4, 2_005, "10.0.0.2")], retention),
            [false]
        );
        let usage = &store.of_tokens(&"acme".parse().unwrap(), &["aaaaaaaaaaaaaaaaaaaaaa"])["aaaaaaaaaaaaaaaaaaaaaa"];
        assert_eq!(usage.uses, 7);
        assert_eq!(usage.last_used_at.unwrap().unix_timestamp(), 2_010);
        assert_eq!(usage.last_used_from.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn memory_usage_expires_with_the_record() {
        let clock = Arc::new(ManualClock::at(2_000));
        let store = MemoryUsage::new(clock.clone());
        store.merge(&[token_use(1, 2_000, "10.0.0.1")], Duration::from_mins(1));
        clock.set(5_061);
        let tenant = "acme".parse().unwrap();
        assert!(
            store
                .of_tokens(&tenant, &["aaaaaaaaaaaaaaaaaaaaaa"])
                .is_empty()
        );
    }
}
