//! Permissions, scopes and the catalogue (SPEC §2).
//!
//! A permission is `CATEGORY:read` or `CATEGORY:write`, and `write` includes `read`. The
//! catalogue (from configuration) lists the categories that exist; the shortcuts `read-all`
//! and `read-write-all` expand against it at mint time, so a category added later is never
//! granted to an older token. A [`Scope`] is the set of permissions a token carries, written
//! in the `scope` claim as a space-separated list (RFC 9068 style).
//!
//! This module knows nothing about people: whether someone *holds* a permission is decided
//! by the directory, which hands its answer to [`Scope::missing_from`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest category name accepted, in bytes.
pub const MAX_CATEGORY_LEN: usize = 64;

/// The shortcut for every `:read` permission in the catalogue.
pub const READ_ALL: &str = "read-all";
/// The shortcut for every permission in the catalogue.
pub const READ_WRITE_ALL: &str = "read-write-all";

/// The access level of a permission. `Write` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// `CATEGORY:read`.
    Read,
    /// `CATEGORY:write`, which includes `CATEGORY:read`.
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// One permission, `CATEGORY:read` or `CATEGORY:write`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    category: Category,
    access: Access,
}

/// A permission category name: 1-64 of `a-z`, `0-9`, `-`, `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Category(String);

/// Why a permission, category or scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermissionError {
    /// Not of the form `CATEGORY:read` or `CATEGORY:write`.
    #[error("`{0}` is not a permission: expected CATEGORY:read or CATEGORY:write")]
    Syntax(String),
    /// A well-formed permission whose category is not in the catalogue.
    #[error("unknown permission `{0}`")]
    Unknown(String),
    /// A shortcut used where only concrete permissions are allowed (inside a token).
    #[error("`{0}` is a shortcut, not a permission")]
    Shortcut(String),
    /// A scope with no permission at all.
    #[error("no permission given")]
    Empty,
}

impl Category {
    /// Parses a category name.
    ///
    /// # Errors
    ///
    /// [`PermissionError::Syntax`] when the name is empty, too long or uses other characters.
    pub fn new(name: &str) -> Result<Self, PermissionError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_CATEGORY_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(PermissionError::Syntax(name.to_owned()))
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

impl Permission {
    /// A permission on `category` at `access`.
    pub fn new(category: Category, access: Access) -> Self {
        Self { category, access }
    }

    /// The category.
    pub fn category(&self) -> &Category {
        &self.category
    }

    /// The access level.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether holding `self` grants `other`: same category, and equal access or `write`
    /// over `read`.
    pub fn grants(&self, other: &Permission) -> bool {
        self.category == other.category && self.access >= other.access
    }
}

impl FromStr for Permission {
    type Err = PermissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PermissionError::Syntax(s.to_owned());
        let (category, access) = s.split_once(':').ok_or_else(syntax)?;
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => return Err(syntax()),
        };
        let category = Category::new(category).map_err(|_| syntax())?;
        Ok(Self { category, access })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.category.0, self.access.as_str())
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of permissions: what a token carries or what a person holds in a tenant.
///
/// Kept normalised: a `write` makes the matching `read` redundant, so the `read` is dropped.
/// Two scopes that grant the same things are therefore equal and print the same.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    permissions: BTreeSet<Permission>,
}

impl Scope {
    /// A scope holding `permissions`, normalised.
    pub fn from_permissions(permissions: impl IntoIterator<Item = Permission>) -> Self {
        let mut scope = Self::default();
        for permission in permissions {
            scope.insert(permission);
        }
        scope
    }

    fn insert(&mut self, permission: Permission) {
        if self.grants(&permission) {
            return;
        }
        if permission.access == Access::Write {
            self.permissions
                .remove(&Permission::new(permission.category.clone(), Access::Read));
        }
        self.permissions.insert(permission);
    }

    /// Parses the `scope` claim: permissions separated by single spaces.
    ///
    /// # Errors
    ///
    /// [`PermissionError::Empty`] for an empty claim, [`PermissionError::Syntax`] for a
    /// malformed entry (including doubled, leading or trailing spaces), and
    /// [`PermissionError::Shortcut`] for a shortcut, which never appears inside a token.
    pub fn parse_claim(claim: &str) -> Result<Self, PermissionError> {
        if claim.is_empty() {
            return Err(PermissionError::Empty);
        }
        let mut scope = Self::default();
        for item in claim.split(' ') {
            if item == READ_ALL || item == READ_WRITE_ALL {
                return Err(PermissionError::Shortcut(item.to_owned()));
            }
            scope.insert(item.parse()?);
        }
        Ok(scope)
    }

    /// The `scope` claim text: permissions in sorted order, separated by spaces.
    pub fn to_claim(&self) -> String {
        // Built in place, without a String per permission: verifiers write this into the
        // `X-Auth-Scope` header of every allowed request.
        let mut text = String::with_capacity(self.permissions.len() * 16);
        for permission in &self.permissions {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(permission.category.as_str());
            text.push(':');
            text.push_str(permission.access.as_str());
        }
        text
    }

    /// Whether this scope grants `permission` (directly, or `write` over `read`).
    pub fn grants(&self, permission: &Permission) -> bool {
        // At most two entries can match a category; a range scan would be no faster for the
        // handful of permissions a token carries.
        self.permissions.iter().any(|held| held.grants(permission))
    }

    /// The permissions of `self` that `held` does not grant, in order; empty when `self` is
    /// a subset of what the person holds.
    pub fn missing_from(&self, held: &Scope) -> Vec<Permission> {
        self.permissions
            .iter()
            .filter(|wanted| !held.grants(wanted))
            .cloned()
            .collect()
    }

    /// Whether the scope holds no permission.
    pub fn is_empty(&self) -> bool {
        self.permissions.is_empty()
    }

    /// The permissions, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.permissions.iter()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_claim())
    }
}

/// The permission catalogue: which categories exist (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    categories: BTreeSet<Category>,
}

impl Catalogue {
    /// A catalogue of `categories`.
    ///
    /// # Errors
    ///
    /// [`PermissionError::Empty`] when no category is given.
    pub fn new(categories: impl IntoIterator<Item = Category>) -> Result<Self, PermissionError> {
        let categories: BTreeSet<Category> = categories.into_iter().collect();
        if categories.is_empty() {
            return Err(PermissionError::Empty);
        }
        Ok(Self { categories })
    }

    /// The categories, sorted.
    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.iter()
    }

    /// Every permission the catalogue defines, `read` and `write` for each category.
    pub fn all_permissions(&self) -> impl Iterator<Item = Permission> + '_ {
        self.categories.iter().flat_map(|category| {
            [Access::Read, Access::Write]
                .into_iter()
                .map(|access| Permission::new(category.clone(), access))
        })
    }

    /// Expands a mint request's permission list into a scope: shortcuts become concrete
    /// permissions from the catalogue as it is now, and every concrete permission must name a
    /// catalogued category.
    ///
    /// # Errors
    ///
    /// [`PermissionError::Empty`] for an empty list, [`PermissionError::Syntax`] for a
    /// malformed entry and [`PermissionError::Unknown`] for an uncatalogued category.
    pub fn expand(&self, requested: &[impl AsRef<str>]) -> Result<Scope, PermissionError> {
        if requested.is_empty() {
            return Err(PermissionError::Empty);
        }
        let mut scope = Scope::default();
        for item in requested {
            let item = item.as_ref();
            let access = match item {
                READ_ALL => Some(Access::Read),
                READ_WRITE_ALL => Some(Access::Write),
                _ => None,
            };
            if let Some(access) = access {
                for category in &self.categories {
                    scope.insert(Permission::new(category.clone(), access));
                }
                continue;
            }
            let permission: Permission = item.parse()?;
            if !self.categories.contains(&permission.category) {
                return Err(PermissionError::Unknown(item.to_owned()));
            }
            scope.insert(permission);
        }
        Ok(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::new(["runs", "policies"].map(|c| Category::new(c).unwrap())).unwrap()
    }

    #[test]
    fn write_grants_read_but_not_the_reverse() {
        let write: Permission = "runs:write".parse().unwrap();
        let read: Permission = "runs:read".parse().unwrap();
        assert!(write.grants(&read));
        assert!(!read.grants(&write));
        assert!(!write.grants(&"policies:read".parse().unwrap()));
    }

    #[test]
    fn permission_syntax_is_strict() {
        for bad in [
            "runs",
            "runs:",
            ":read",
            "runs:admin",
            "Runs:read",
            "runs:read:x",
            "1x:read",
        ] {
            assert!(bad.parse::<Permission>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn shortcuts_expand_against_the_current_catalogue() {
        let cat = catalogue();
        assert_eq!(
            cat.expand(&["read-all"]).unwrap().to_claim(),
            "policies:read runs:read"
        );
        assert_eq!(
            cat.expand(&["read-write-all"]).unwrap().to_claim(),
            "policies:write runs:write"
        );
    }

    #[test]
    fn expand_refuses_uncatalogued_and_empty() {
        let cat = catalogue();
        assert_eq!(
            cat.expand(&["members:read"]),
            Err(PermissionError::Unknown("members:read".into()))
        );
        assert_eq!(cat.expand(&[] as &[&str]), Err(PermissionError::Empty));
    }

    #[test]
    fn scope_normalises_read_under_write() {
        let scope = Scope::parse_claim("runs:read runs:write").unwrap();
        assert_eq!(scope.to_claim(), "runs:write");
    }

    #[test]
    fn scope_claim_refuses_shortcuts_and_bad_spacing() {
        assert!(Scope::parse_claim("read-all").is_err());
        assert!(Scope::parse_claim("runs:read  policies:read").is_err());
        assert!(Scope::parse_claim(" runs:read").is_err());
        assert!(Scope::parse_claim("").is_err());
    }

    #[test]
    fn missing_from_names_what_is_not_held() {
        let held = Scope::parse_claim("runs:write").unwrap();
        let wanted = Scope::parse_claim("runs:read policies:read").unwrap();
        assert_eq!(
            wanted.missing_from(&held),
            vec!["policies:read".parse().unwrap()]
        );
    }
}
