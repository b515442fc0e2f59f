//! Identifiers for tests: valid newtypes from short names, and token facts owned by the test
//! so it can lend them as [`TokenFacts`].

use edgetoken::keys::KeyId;
use edgetoken::revocation::TokenFacts;
use edgetoken::token::{Subject, TenantId, TokenId};

/// `name` padded with `-` to a token id's 22 characters (a 22-character id stays as it is).
pub(crate) fn jti(name: &str) -> TokenId {
    TokenId::new(&format!("{name:-<22}")).unwrap()
}

/// `name` padded with `-` to a key id's 43 characters.
pub(crate) fn kid(name: &str) -> KeyId {
    KeyId::new(&format!("{name:-<43}")).unwrap()
}

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub(crate) fn subject(name: &str) -> Subject {
    Subject::new(name).unwrap()
}

/// The facts of one token, owned.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub(crate) jti: TokenId,
    pub(crate) subject: Subject,
    pub(crate) tenant: TenantId,
    pub(crate) kid: KeyId,
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
}

impl Facts {
    /// Token `name` (see [`jti`]) of alice in acme, signed by key `k1` (see [`kid`]).
    pub(crate) fn of(name: &str, issued_at: i64, expires_at: i64) -> Self {
        Self {
            jti: jti(name),
            subject: subject("alice"),
            tenant: tenant("acme"),
            kid: kid("k1"),
            issued_at,
            expires_at,
        }
    }

    /// The facts, lent.
    pub(crate) fn get(&self) -> TokenFacts<'_> {
        TokenFacts {
            jti: &self.jti,
            subject: &self.subject,
            tenant: &self.tenant,
            kid: &self.kid,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
        }
    }
}
