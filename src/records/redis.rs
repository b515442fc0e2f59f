//! Token records in Redis.
//!
//! # Key layout
//!
//! Keys share the hash tag `{P}` of the deployment's `key_prefix` (like the revocation keys):
//!
//! | Key | Type | Content | Expiry |
//! |---|---|---|---|
//! | `{P}:rec:<tenant>:<jti>` | string | the record as JSON | token `exp` + retention |
//! | `{P}:recu:<tenant>:<sub>` | sorted set | the user's jtis in the tenant, score `exp` | pushed to the latest `exp` + retention |
//!
//! A record and its index entry are written in one `MULTI`, so a failed write leaves neither;
//! index entries past `exp + retention` are trimmed when the index is read.
//!
//! Records are not restored when Redis loses them (no process keeps them in memory, unlike
//! revocations); the revocation feed, which detects an emptied or replaced data set, notes the
//! time in `{P}:lost` (see [`crate::revocation::redis`]), and [`RedisRecords::lost_at`] reads
//! it so listings can say they are incomplete.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;

use super::{RecordError, TokenRecord};
use crate::clock::Clock;
use crate::redis_conn::{LazyConnection, Lease};
use crate::redis_target::RedisTarget;
use crate::token::{Subject, TenantId};

/// Records in Redis, shared by every issuer of a deployment.
#[derive(Clone)]
pub struct RedisRecords {
    conn: Arc<LazyConnection>,
    prefix: String,
    /// The revocation feed's `{P}:lost`.
    lost_key: String,
    retention: Duration,
    timeout: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RedisRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, which may hold a password.
        f.debug_struct("RedisRecords")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_error(operation: &'static str) -> impl FnOnce(redis::RedisError) -> RecordError {
    move |source| RecordError::Redis { operation, source }
}

impl RedisRecords {
    /// A store on `url` (connected lazily, reconnecting after failures).
    ///
    /// # Errors
    ///
    /// [`RecordError::RedisUrl`] when the URL does not parse.
    pub fn new(
        url: &str,
        prefix: &str,
        retention: Duration,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, RecordError> {
        let target = RedisTarget::url(url).map_err(RecordError::RedisUrl)?;
        Ok(Self::on_target(target, prefix, retention, timeout, clock))
    }

    /// A store on the primary `target` names (the deployment's Redis, URL, Sentinel or Cluster).
    pub(crate) fn on_target(
        target: RedisTarget,
        prefix: &str,
        retention: Duration,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            conn: Arc::new(LazyConnection::new(target, timeout)),
            prefix: prefix.to_owned(),
            lost_key: crate::revocation::redis::Keys::new(prefix).lost,
            retention,
            timeout,
            clock,
        }
    }

    async fn conn(&self) -> Result<Lease, RecordError> {
        self.conn.get().await.map_err(|error| {
            RecordError::connecting("connect for token records", error, self.timeout)
        })
    }

    /// Runs one idempotent operation, once more on a fresh connection if the first attempt
    /// found the connection dropped (Redis restarted since the last call): the manager
    /// reconnects, but only after failing the command that noticed.
    async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T, RecordError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let lease = self.conn().await?;
        let first = op(lease.value.clone()).await;
        match first {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                // Under Sentinel or Cluster the primary may have moved: the retry asks where it is.
                self.conn.lost(&lease);
                let lease = self.conn().await?;
                let retried = op(lease.value.clone()).await;
                self.conn
                    .checked(&lease, retried)
                    .map_err(redis_error(operation))
            }
            other => self
                .conn
                .checked(&lease, other)
                .map_err(redis_error(operation)),
        }
    }

    fn record_key(&self, tenant: &TenantId, id: &str) -> String {
        format!("{{{}}}:rec:{tenant}:{id}", self.prefix)
    }

    fn index_key(&self, tenant: &TenantId, user: &Subject) -> String {
        format!("{{{}}}:recu:{tenant}:{user}", self.prefix)
    }

    fn keep_until(&self, expires_at: OffsetDateTime) -> i64 {
        (expires_at + self.retention).unix_timestamp()
    }

    pub(super) async fn put(&self, record: &TokenRecord) -> Result<(), RecordError> {
        let json = serde_json::to_string(record).map_err(|source| RecordError::Encoding {
            operation: "encode a token record",
            source,
        })?;
        let until = self.keep_until(record.expires_at);
        let index = self.index_key(&record.tenant, &record.user);
        let lease = self.conn().await?;
        let mut conn = lease.value.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.record_key(&record.tenant, record.id.as_str()), json)
            .arg("EXAT")
            .arg(until)
            .ignore()
            .zadd(
                &index,
                record.id.as_str(),
                record.expires_at.unix_timestamp(),
            )
            .ignore()
            .cmd("EXPIREAT")
            .arg(&index)
            .arg(until)
            .arg("GT")
            .ignore()
            .cmd("EXPIREAT")
            .arg(&index)
            .arg(until)
            .arg("NX")
            .ignore();
        let () = self
            .conn
            .checked(&lease, pipe.query_async(&mut conn).await)
            .map_err(redis_error("store a token record"))?;
        Ok(())
    }

    pub(super) async fn get(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<TokenRecord>, RecordError> {
        let key = self.record_key(tenant, id);
        let json: Option<String> = self
            .run("read a token record", |mut conn| {
                let key = key.clone();
                async move { conn.get(key).await }
            })
            .await?;
        json.map(|j| decode(&j)).transpose()
    }

    pub(super) async fn list(
        &self,
        tenant: &TenantId,
        user: &Subject,
    ) -> Result<Vec<TokenRecord>, RecordError> {
        let index = self.index_key(tenant, user);
        let horizon = (self.clock.now() - self.retention).unix_timestamp();
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&index, "-inf", format!("({horizon}"))
            .zrange(&index, 0, -1);
        let (_, ids): (i64, Vec<String>) = self
            .run("list token records", |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(tenant, id)).collect();
        let found: Vec<Option<String>> = self
            .run("read token records", |mut conn| {
                let mget = redis::cmd("MGET").arg(&keys).clone();
                async move { mget.query_async(&mut conn).await }
            })
            .await?;
        found.into_iter().flatten().map(|j| decode(&j)).collect()
    }

    /// When the data set holding the records was last found lost (see the module docs).
    pub(super) async fn lost_at(&self) -> Result<Option<OffsetDateTime>, RecordError> {
        let key = self.lost_key.clone();
        let lost: Option<i64> = self
            .run("read when token records were lost", |mut conn| {
                let key = key.clone();
                async move { conn.get(key).await }
            })
            .await?;
        Ok(lost.and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok()))
    }

    pub(super) async fn mark_revoked(
        &self,
        tenant: &TenantId,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<(), RecordError> {
        let Some(mut record) = self.get(tenant, id).await? else {
            return Ok(());
        };
        if record.revoked_at.is_some() {
            return Ok(());
        }
        record.revoked_at = Some(at);
        let json = serde_json::to_string(&record).map_err(|source| RecordError::Encoding {
            operation: "encode a token record",
            source,
        })?;
        // KEEPTTL keeps the record's expiry; XX never resurrects a record that aged out.
        let set = redis::cmd("SET")
            .arg(self.record_key(tenant, id))
            .arg(json)
            .arg("KEEPTTL")
            .arg("XX")
            .clone();
        let _: Option<String> = self
            .run("mark a token record revoked", |mut conn| {
                let set = set.clone();
                async move { set.query_async(&mut conn).await }
            })
            .await?;
        Ok(())
    }
}

fn decode(json: &str) -> Result<TokenRecord, RecordError> {
    serde_json::from_str(json).map_err(|source| RecordError::Encoding {
        operation: "decode a token record",
        source,
    })
}
