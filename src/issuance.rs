//! The issuer's rules, each in one place, for the HTTP handlers and the CLI alike (SPEC §2,
//! §3, §4): who may mint what, and what a user or tenant revocation covers.
//!
//! Nothing here does I/O or sees HTTP: the handlers authenticate, call these, then sign and
//! store; the CLI builds the same revocations.

use std::time::Duration;

use crate::directory::User;
use crate::permissions::{Permission, Scope};
use crate::revocation::Revocation;
use crate::token::{Subject, TenantId};

/// Why a person may not mint a scope in a tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintRefusal {
    /// They are not a member of the tenant.
    #[error("you are not a member of tenant {0}")]
    NotAMember(TenantId),
    /// They do not hold these permissions there (SPEC §2: only what you hold yourself).
    #[error("you do not hold: {}", names(.0))]
    PermissionNotHeld(Vec<Permission>),
}

fn names(permissions: &[Permission]) -> String {
    permissions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `person` may mint `scope` in `tenant`: a member, holding every permission.
///
/// # Errors
///
/// [`MintRefusal`] naming the tenant, or every permission not held.
pub fn check_mint(person: &User, tenant: &TenantId, scope: &Scope) -> Result<(), MintRefusal> {
    let membership = person
        .membership(tenant)
        .ok_or_else(|| MintRefusal::NotAMember(tenant.clone()))?;
    let missing = scope.missing_from(&membership.permissions);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MintRefusal::PermissionNotHeld(missing))
    }
}

/// The watermark of a user or tenant revocation made at `now` (Unix seconds): tokens issued at
/// or before it are revoked. It sits a leeway ahead, so a token minted just before the
/// revocation by an issuer whose clock runs up to a leeway fast (its `iat` from that clock) is
/// covered too; tokens minted in the following leeway are revoked as well.
pub fn watermark(now: i64, leeway: Duration) -> i64 {
    now.saturating_add(i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX))
}

/// Every token of `subject` in `tenant` issued up to [`watermark`].
pub fn revoke_user(tenant: TenantId, subject: Subject, now: i64, leeway: Duration) -> Revocation {
    Revocation::User {
        tenant,
        subject,
        before: watermark(now, leeway),
    }
}

/// Every token of `tenant` issued up to [`watermark`].
pub fn revoke_tenant(tenant: TenantId, now: i64, leeway: Duration) -> Revocation {
    Revocation::Tenant {
        tenant,
        before: watermark(now, leeway),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::directory::Membership;

    fn alice() -> User {
        let acme = Membership {
            permissions: Scope::parse_claim("runs:write policies:read").unwrap(),
            admin: false,
        };
        User::new(
            Subject::new("alice").unwrap(),
            None,
            BTreeMap::from([(TenantId::new("acme").unwrap(), acme)]),
        )
    }

    #[test]
    fn a_member_mints_what_she_holds_and_write_includes_read() {
        let acme = TenantId::new("acme").unwrap();
        let scope = Scope::parse_claim("runs:read policies:read").unwrap();
        assert_eq!(check_mint(&alice(), &acme, &scope), Ok(()));
    }

    #[test]
    fn a_permission_not_held_is_named() {
        let acme = TenantId::new("acme").unwrap();
        let scope = Scope::parse_claim("runs:read policies:write members:read").unwrap();
        let refusal = check_mint(&alice(), &acme, &scope).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "you do not hold: members:read, policies:write"
        );
    }

    #[test]
    fn another_tenant_is_refused() {
        let globex = TenantId::new("globex").unwrap();
        let scope = Scope::parse_claim("runs:read").unwrap();
        assert_eq!(
            check_mint(&alice(), &globex, &scope),
            Err(MintRefusal::NotAMember(globex))
        );
    }

    #[test]
    fn watermarks_sit_a_leeway_ahead_and_saturate() {
        assert_eq!(watermark(1_000, Duration::from_secs(30)), 1_030);
        assert_eq!(watermark(i64::MAX - 1, Duration::from_secs(30)), i64::MAX);
        let revocation = revoke_tenant(TenantId::new("acme").unwrap(), 10, Duration::ZERO);
        assert!(matches!(revocation, Revocation::Tenant { before: 10, .. }));
    }
}
