//! A plain in-memory revocation set: the simplest [`RevocationCheck`].
//!
//! Used by the offline CLI and by tests of the token core. It has no staleness (it is the
//! source of truth for its own process) and no pruning; the Redis-backed mirror replaces it in
//! the services.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::{Revocation, RevocationCheck, RevocationStatus, TokenFacts};

/// An in-process revocation set, shared behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryRevocations {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashSet<String>,
    users: HashMap<(String, String), i64>,
    tenants: HashMap<String, i64>,
    keys: HashMap<String, i64>,
}

impl MemoryRevocations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `revocation`. Idempotent; a later watermark replaces an earlier one, never the
    /// reverse.
    pub fn revoke(&self, revocation: &Revocation) {
        // A poisoned lock means a panic elsewhere while writing; the data is a set of
        // independent entries, so it is still consistent and we keep going.
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match revocation {
            Revocation::Token { jti, .. } => {
                state.tokens.insert(jti.clone());
            }
            Revocation::User {
                tenant,
                subject,
                before,
            } => raise(&mut state.users, (tenant.clone(), subject.clone()), *before),
            Revocation::Tenant { tenant, before } => {
                raise(&mut state.tenants, tenant.clone(), *before);
            }
            Revocation::Key { kid, before } => raise(&mut state.keys, kid.clone(), *before),
        }
    }
}

fn raise<K: std::hash::Hash + Eq>(map: &mut HashMap<K, i64>, key: K, before: i64) {
    let entry = map.entry(key).or_insert(before);
    *entry = (*entry).max(before);
}

impl RevocationCheck for MemoryRevocations {
    fn status(&self, token: &TokenFacts<'_>) -> RevocationStatus {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let by_watermark = |before: Option<&i64>| before.is_some_and(|b| token.issued_at <= *b);
        let revoked = state.tokens.contains(token.jti)
            || by_watermark(state.tenants.get(token.tenant))
            || by_watermark(state.keys.get(token.kid))
            || (!state.users.is_empty()
                && by_watermark(
                    state
                        .users
                        .get(&(token.tenant.to_owned(), token.subject.to_owned())),
                ));
        if revoked {
            RevocationStatus::Revoked
        } else {
            RevocationStatus::NotRevoked
        }
    }
}
