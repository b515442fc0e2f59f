//! In-process token records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use super::TokenRecord;
use crate::clock::Clock;
use crate::token::{Subject, TenantId};

/// Records in this process's memory, pruned `retention` after their token expires.
#[derive(Debug, Clone)]
pub struct MemoryRecords {
    records: Arc<Mutex<HashMap<(TenantId, String), TokenRecord>>>,
    retention: Duration,
    clock: Arc<dyn Clock>,
}

impl MemoryRecords {
    /// An empty store.
    pub fn new(retention: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            records: Arc::default(),
            retention,
            clock,
        }
    }

    fn is_kept(&self, record: &TokenRecord, now: OffsetDateTime) -> bool {
        record.expires_at + self.retention > now
    }

    pub(super) fn put(&self, record: &TokenRecord) {
        let now = self.clock.now();
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        // Pruning on write keeps memory bounded by the tokens of the last 12 h + retention.
        records.retain(|_, r| self.is_kept(r, now));
        records.insert(
            (record.tenant.clone(), record.id.as_str().to_owned()),
            record.clone(),
        );
    }

    pub(super) fn get(&self, tenant: &TenantId, id: &str) -> Option<TokenRecord> {
        let now = self.clock.now();
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records
            .get(&(tenant.clone(), id.to_owned()))
            .filter(|r| self.is_kept(r, now))
            .cloned()
    }

    pub(super) fn list(&self, tenant: &TenantId, user: &Subject) -> Vec<TokenRecord> {
        let now = self.clock.now();
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records
            .values()
            .filter(|r| &r.tenant == tenant && &r.user == user && self.is_kept(r, now))
            .cloned()
            .collect()
    }

    pub(super) fn mark_revoked(&self, tenant: &TenantId, id: &str, at: OffsetDateTime) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = records.get_mut(&(tenant.clone(), id.to_owned())) {
            record.revoked_at.get_or_insert(at);
        }
    }
}
