//! Token records: the metadata of every minted token, never the token itself (SPEC §4).
//!
//! A record holds id, name, tenant, user, permissions, creation, expiry and revocation time.
//! It is written before the raw token is handed out (so every token that exists can be listed
//! and revoked) and expires `retention` after the token does, so listings stay bounded. The
//! raw token is never stored here or anywhere else.
//!
//! Two stores: in-process (the embedded default) and Redis (see `redis.rs` for the layout).
//! Their failures are [`RecordError`]s, apart from the revocation store's: a record is
//! bookkeeping about tokens, not a revocation.

mod error;
mod memory;
mod redis;

pub use self::error::RecordError;

pub use self::memory::MemoryRecords;
pub use self::redis::RedisRecords;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::KeyId;
use crate::token::{Claims, Subject, TenantId, TokenId};

/// What is known about one minted token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The token id (`jti`).
    pub id: TokenId,
    /// The name the person gave it, if any.
    pub name: Option<String>,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its user (`sub`).
    pub user: Subject,
    /// The kid of the key that signed it (for key-level revocation status).
    pub kid: KeyId,
    /// The permissions it grants, as in its `scope` claim.
    pub permissions: Vec<String>,
    /// `iat`.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    /// `exp`.
    #[serde(with = "time::serde::timestamp")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked through its id, if it was.
    #[serde(with = "time::serde::timestamp::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl TokenRecord {
    /// The record of freshly minted `claims`, with an optional `name`.
    pub fn of(claims: &Claims, name: Option<String>) -> Self {
        Self {
            id: claims.token_id.clone(),
            name,
            tenant: claims.tenant.clone(),
            user: claims.subject.clone(),
            kid: claims.kid.clone(),
            permissions: claims.scope.iter().map(ToString::to_string).collect(),
            created_at: claims.issued_at,
            expires_at: claims.expires_at,
            revoked_at: None,
        }
    }

    /// The revocation facts of the token this record describes.
    pub fn facts(&self) -> crate::revocation::TokenFacts<'_> {
        crate::revocation::TokenFacts {
            jti: &self.id,
            subject: &self.user,
            tenant: &self.tenant,
            kid: &self.kid,
            issued_at: self.created_at.unix_timestamp(),
            expires_at: self.expires_at.unix_timestamp(),
        }
    }
}

/// How long a record outlives its token by default: a day, so "expired" still shows in
/// listings for a while.
pub const DEFAULT_RETENTION: Duration = Duration::from_hours(24);

/// Where records live.
#[derive(Debug, Clone)]
pub enum RecordStore {
    /// One process, nothing survives a restart.
    Memory(MemoryRecords),
    /// Redis, shared by every issuer.
    Redis(RedisRecords),
}

impl RecordStore {
    /// Stores a new record. The caller hands out the token only after this succeeded.
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis did not accept it; nothing is half written (one `MULTI`).
    pub async fn put(&self, record: &TokenRecord) -> Result<(), RecordError> {
        match self {
            Self::Memory(store) => {
                store.put(record);
                Ok(())
            }
            Self::Redis(store) => store.put(record).await,
        }
    }

    /// The record of token `id` in `tenant`, if it exists and has not aged out.
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis cannot be read.
    pub async fn get(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<TokenRecord>, RecordError> {
        match self {
            Self::Memory(store) => Ok(store.get(tenant, id)),
            Self::Redis(store) => store.get(tenant, id).await,
        }
    }

    /// `user`'s records in `tenant`, newest first.
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis cannot be read.
    pub async fn list(
        &self,
        tenant: &TenantId,
        user: &Subject,
    ) -> Result<Vec<TokenRecord>, RecordError> {
        let mut records = match self {
            Self::Memory(store) => store.list(tenant, user),
            Self::Redis(store) => store.list(tenant, user).await?,
        };
        records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(records)
    }

    /// When the store last lost its records (Redis found emptied or replaced by the
    /// revocation feed), if it ever did; records written before then may be gone. Always
    /// `None` in process: that store lives and dies with the process.
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis cannot be read.
    pub async fn lost_at(&self) -> Result<Option<OffsetDateTime>, RecordError> {
        match self {
            Self::Memory(_) => Ok(None),
            Self::Redis(store) => store.lost_at().await,
        }
    }

    /// Notes that token `id` was revoked at `at` (the first time only).
    ///
    /// # Errors
    ///
    /// [`RecordError`] when Redis cannot be written.
    pub async fn mark_revoked(
        &self,
        tenant: &TenantId,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<(), RecordError> {
        match self {
            Self::Memory(store) => {
                store.mark_revoked(tenant, id, at);
                Ok(())
            }
            Self::Redis(store) => store.mark_revoked(tenant, id, at).await,
        }
    }
}
