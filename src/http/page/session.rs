//! Server-side sessions of the tokens page (issue 9; THREATS #50).
//!
//! The browser holds only a random session id (256 bits, base64url) in an `HttpOnly`,
//! `SameSite=Strict` cookie. The server keeps the session under the SHA-256 digest of that
//! id, so whoever reads the store (a Redis dump, a `MONITOR`) cannot replay a cookie from it.
//! A session holds the user id, its CSRF token, its start and last-use times, and the ids of
//! create forms already used (so a re-posted form cannot mint, nor show, a second token).
//! It never holds a password or a token.
//!
//! Timeouts: a session ends when unused for `idle` or `absolute` after sign-in, whichever
//! comes first; times come from the service's [`Clock`]. In Redis
//! (`{P}:sess:<sha256 hex>`, a JSON string) the key's expiry is set to the same bound, so
//! ended sessions disappear on their own; in process, ended sessions are swept when the map
//! is full, and the map is bounded ([`MAX_MEMORY_SESSIONS`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand_core::RngCore as _;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::clock::Clock;
use crate::encoding::b64_encode;
use crate::redis_conn::{LazyConnection, Lease, OpenError};
use crate::redis_target::RedisTarget;

/// Sessions kept at most by the in-process store.
pub const MAX_MEMORY_SESSIONS: usize = 100_000;

/// Create-form ids remembered per session (older ones fall out; a form older than the last
/// 32 creates is refused anyway only if re-posted, which needs its CSRF token).
const USED_FORMS_KEPT: usize = 32;

/// Length of a session id, CSRF token or form id as base64url text: 32 random bytes.
const ID_CHARS: usize = 43;

/// One signed-in person's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The user id.
    pub user: String,
    /// The CSRF token every state-changing form must carry.
    pub csrf: String,
    /// Sign-in time (Unix seconds).
    pub created: i64,
    /// Last use (Unix seconds).
    pub seen: i64,
    /// Create-form ids already used, newest last.
    #[serde(default)]
    pub used_forms: Vec<String>,
}

impl Session {
    /// Records that create form `form` was used; false when it was used before.
    pub fn use_form(&mut self, form: &str) -> bool {
        if self.used_forms.iter().any(|f| f == form) {
            return false;
        }
        if self.used_forms.len() >= USED_FORMS_KEPT {
            self.used_forms.remove(0);
        }
        self.used_forms.push(form.to_owned());
        true
    }
}

/// Why the session store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Redis refused, failed or dropped the connection.
    #[error("sessions: Redis failed while trying to {operation}")]
    Redis {
        /// What we were doing.
        operation: &'static str,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("sessions: Redis did not answer in time while trying to {operation}")]
    Timeout {
        /// What we were doing.
        operation: &'static str,
    },
    /// The in-process store is full of live sessions.
    #[error("sessions: the in-process store is full")]
    Full,
    /// The Redis URL does not parse.
    #[error("invalid session setting `redis_url`")]
    RedisUrl(#[source] redis::RedisError),
}

impl From<SessionError> for super::super::ApiError {
    fn from(error: SessionError) -> Self {
        Self::StoreUnavailable(Box::new(error))
    }
}

/// A fresh random id: 256 bits from the OS, base64url (43 characters).
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    b64_encode(&bytes)
}

/// Whether `text` has the shape of an id [`random_id`] makes; anything else is never looked
/// up, hashed or stored.
pub fn is_id(text: &str) -> bool {
    text.len() == ID_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The store key of session `id`: its SHA-256, hex.
fn digest(id: &str) -> String {
    let hash = Sha256::digest(id.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in hash {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Where sessions live: in process, or Redis when `revocation.redis_url` is set.
#[derive(Debug)]
pub struct Sessions {
    backend: Backend,
    idle: Duration,
    absolute: Duration,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
enum Backend {
    Memory(Mutex<HashMap<String, Session>>),
    Redis(RedisSessions),
}

impl Sessions {
    /// An in-process store.
    pub fn memory(idle: Duration, absolute: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            backend: Backend::Memory(Mutex::new(HashMap::new())),
            idle,
            absolute,
            clock,
        }
    }

    /// A Redis store on `url`, keys under `{prefix}:sess:`, connected lazily.
    ///
    /// # Errors
    ///
    /// [`SessionError::RedisUrl`] when the URL does not parse.
    pub fn redis(
        url: &str,
        prefix: &str,
        timeout: Duration,
        idle: Duration,
        absolute: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SessionError> {
        let target = RedisTarget::url(url).map_err(SessionError::RedisUrl)?;
        Ok(Self::on_target(
            target, prefix, timeout, idle, absolute, clock,
        ))
    }

    /// A Redis store on the primary `target` names (URL, Sentinel or Cluster), keys under
    /// `{prefix}:sess:`, connected lazily.
    pub(crate) fn on_target(
        target: RedisTarget,
        prefix: &str,
        timeout: Duration,
        idle: Duration,
        absolute: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            backend: Backend::Redis(RedisSessions {
                conn: LazyConnection::new(target, timeout),
                prefix: prefix.to_owned(),
            }),
            idle,
            absolute,
            clock,
        }
    }

    /// Starts a session for `user`; returns its id (for the cookie only) and the session.
    ///
    /// # Errors
    ///
    /// [`SessionError`] when the store cannot take it.
    pub async fn create(&self, user: &str) -> Result<(String, Session), SessionError> {
        let now = self.clock.unix_now();
        let id = random_id();
        let session = Session {
            user: user.to_owned(),
            csrf: random_id(),
            created: now,
            seen: now,
            used_forms: Vec::new(),
        };
        self.save(&id, &session).await?;
        Ok((id, session))
    }

    /// The live session of `id`, its last use moved to now; `None` when there is none or it
    /// ended (and is then deleted).
    ///
    /// # Errors
    ///
    /// [`SessionError`] when the store cannot be read or written.
    pub async fn load(&self, id: &str) -> Result<Option<Session>, SessionError> {
        if !is_id(id) {
            return Ok(None);
        }
        let key = digest(id);
        let found = match &self.backend {
            Backend::Memory(map) => map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned(),
            Backend::Redis(redis) => redis.get(&key).await?,
        };
        let Some(mut session) = found else {
            return Ok(None);
        };
        let now = self.clock.unix_now();
        if self.remaining(&session, now).is_none() {
            self.delete(id).await?;
            return Ok(None);
        }
        session.seen = now;
        self.save(id, &session).await?;
        Ok(Some(session))
    }

    /// Stores `session` under `id` (after a change such as a used form).
    ///
    /// # Errors
    ///
    /// [`SessionError`] when the store cannot be written.
    pub async fn save(&self, id: &str, session: &Session) -> Result<(), SessionError> {
        let now = self.clock.unix_now();
        let Some(ttl) = self.remaining(session, now) else {
            return Ok(());
        };
        let key = digest(id);
        match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                if map.len() >= MAX_MEMORY_SESSIONS && !map.contains_key(&key) {
                    map.retain(|_, s| self.remaining(s, now).is_some());
                    if map.len() >= MAX_MEMORY_SESSIONS {
                        return Err(SessionError::Full);
                    }
                }
                map.insert(key, session.clone());
                Ok(())
            }
            Backend::Redis(redis) => redis.set(&key, session, ttl).await,
        }
    }

    /// Ends session `id` (sign-out, or a new sign-in replacing it).
    ///
    /// # Errors
    ///
    /// [`SessionError`] when Redis cannot be written; the session then still lives.
    pub async fn delete(&self, id: &str) -> Result<(), SessionError> {
        if !is_id(id) {
            return Ok(());
        }
        let key = digest(id);
        match &self.backend {
            Backend::Memory(map) => {
                map.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
                Ok(())
            }
            Backend::Redis(redis) => redis.delete(&key).await,
        }
    }

    /// How long `session` may still live at `now`: the nearer of the idle and absolute
    /// bounds; `None` once either passed.
    fn remaining(&self, session: &Session, now: i64) -> Option<Duration> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let idle_end = session.seen.saturating_add(secs(self.idle));
        let absolute_end = session.created.saturating_add(secs(self.absolute));
        let end = idle_end.min(absolute_end);
        (now < end).then(|| Duration::from_secs(u64::try_from(end - now).unwrap_or(1)))
    }
}

/// Sessions in Redis.
struct RedisSessions {
    conn: LazyConnection,
    prefix: String,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, which may hold a password.
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSessions {
    fn key(&self, digest: &str) -> String {
        format!("{{{}}}:sess:{digest}", self.prefix)
    }

    async fn conn(&self) -> Result<Lease, SessionError> {
        let operation = "connect";
        self.conn.get().await.map_err(|error| match error {
            OpenError::Timeout => SessionError::Timeout { operation },
            OpenError::Redis(source) => SessionError::Redis { operation, source },
        })
    }

    async fn get(&self, digest: &str) -> Result<Option<Session>, SessionError> {
        let lease = self.conn().await?;
        let mut conn = lease.value.clone();
        let json: Option<String> = self
            .conn
            .checked(&lease, conn.get(self.key(digest)).await)
            .map_err(|source| SessionError::Redis {
                operation: "read a session",
                source,
            })?;
        // A value this version cannot read is treated as no session: the person signs in
        // again, which is always safe.
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn set(
        &self,
        digest: &str,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), SessionError> {
        let json = serde_json::to_string(session).unwrap_or_default();
        let lease = self.conn().await?;
        let mut conn = lease.value.clone();
        let () = self
            .conn
            .checked(
                &lease,
                conn.set_ex(self.key(digest), json, ttl.as_secs().max(1))
                    .await,
            )
            .map_err(|source| SessionError::Redis {
                operation: "write a session",
                source,
            })?;
        Ok(())
    }

    async fn delete(&self, digest: &str) -> Result<(), SessionError> {
        let lease = self.conn().await?;
        let mut conn = lease.value.clone();
        let _: i64 = self
            .conn
            .checked(&lease, conn.del(self.key(digest)).await)
            .map_err(|source| SessionError::Redis {
                operation: "delete a session",
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn store() -> (Sessions, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let sessions = Sessions::memory(
            Duration::from_mins(1),
            Duration::from_mins(5),
            Arc::clone(&clock) as Arc<dyn Clock>,
        );
        (sessions, clock)
    }

    #[tokio::test]
    async fn a_session_ends_when_idle_too_long() {
        let (sessions, clock) = store();
        let (id, _) = sessions.create("alice").await.unwrap();
        clock.advance(59);
        assert!(sessions.load(&id).await.unwrap().is_some());
        clock.advance(60);
        assert!(sessions.load(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_busy_session_still_ends_at_the_absolute_timeout() {
        let (sessions, clock) = store();
        let (id, _) = sessions.create("alice").await.unwrap();
        for _ in 0..5 {
            clock.advance(50);
            assert!(sessions.load(&id).await.unwrap().is_some());
        }
        clock.advance(49);
        assert!(sessions.load(&id).await.unwrap().is_some());
        clock.advance(1);
        assert!(sessions.load(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn ids_are_random_and_malformed_ids_are_not_looked_up() {
        let (sessions, _) = store();
        let (a, _) = sessions.create("alice").await.unwrap();
        let (b, _) = sessions.create("alice").await.unwrap();
        assert_ne!(a, b);
        assert!(is_id(&a));
        assert!(sessions.load("short").await.unwrap().is_none());
    }

    #[test]
    fn a_form_is_used_once() {
        let mut session = Session {
            user: "alice".into(),
            csrf: random_id(),
            created: 0,
            seen: 0,
            used_forms: Vec::new(),
        };
        assert!(session.use_form("f1"));
        assert!(!session.use_form("f1"));
    }
}
