//! People, their tenants and permissions, and their passwords (SPEC §2, §4).
//!
//! The directory is a TOML file read at start:
//!
//! ```toml
//! [users.alice]
//! password_hash = "$argon2id$v=19$..."   # from `edgetoken hash-password`; omit in trusted-header mode
//!
//! [users.alice.tenants.acme]
//! permissions = ["runs:write", "policies:read"]   # or "read-all" / "read-write-all"
//! admin = true                                     # may revoke other users' tokens in acme
//! ```
//!
//! Shortcuts expand against the catalogue when the file is loaded, so what a person holds is
//! always a concrete scope. Passwords are stored only as argon2id PHC strings and checked
//! with argon2's own verification, which compares in constant time; an unknown user costs the
//! same argon2 work as a known one, so response time does not reveal who exists.
//!
//! The password parts (hashing, checking, [`Directory::authenticate`]) need the `passwords`
//! feature, which `server` and `cli` turn on; without it the directory still holds people and
//! their memberships, and refuses a file with a `password_hash` it could not validate.

use std::collections::BTreeMap;
use std::path::Path;

#[cfg(feature = "passwords")]
use argon2::password_hash::rand_core::{OsRng, RngCore as _};
#[cfg(feature = "passwords")]
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
#[cfg(feature = "passwords")]
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::Deserialize;
#[cfg(feature = "passwords")]
use subtle::ConstantTimeEq as _;

use crate::permissions::{Catalogue, Scope};
use crate::token::{Subject, TenantId};

/// Why a password could not be hashed, or a stored hash could not be used.
#[cfg(feature = "passwords")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The stored hash is not an argon2id PHC string.
    #[error("password hash is not an argon2id PHC string")]
    BadHash,
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Hashes `password` with argon2id (the argon2 crate's defaults: 19 MiB, 2 passes, 1 lane,
/// the OWASP minimum) and a random salt.
///
/// # Errors
///
/// [`PasswordError::Hashing`] if argon2 refuses the input (for example an absurdly long one).
///
/// # Security
///
/// This is deliberately slow (tens of milliseconds): services call it off the async threads.
#[cfg(feature = "passwords")]
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Checks `password` against a stored argon2id PHC string.
///
/// # Errors
///
/// [`PasswordError::BadHash`] when `stored` is not an argon2id hash; a wrong password is
/// `Ok(false)`.
#[cfg(feature = "passwords")]
pub fn verify_password(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let hash = PasswordHash::new(stored).map_err(|_| PasswordError::BadHash)?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::BadHash);
    }
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

/// Argon2 working memory (19 MiB per check with the default parameters), kept between checks
/// and reused.
///
/// Allocating it per check let the allocator keep each freed block in the arena of whichever
/// blocking thread ran the check: 400 wrong sign-ins on 2 cores took RSS from 9 MB to 632 MB.
/// Reused, the memory stays at one block per concurrent check, and the service runs at most
/// one check per core, so RSS stays within cores × 19 MiB of the idle figure.
#[cfg(feature = "passwords")]
#[derive(Debug, Default)]
pub struct PasswordMemory {
    free: std::sync::Mutex<Vec<Vec<Block>>>,
}

#[cfg(feature = "passwords")]
impl Clone for PasswordMemory {
    /// A clone starts with no memory of its own.
    fn clone(&self) -> Self {
        Self::default()
    }
}

#[cfg(feature = "passwords")]
impl PasswordMemory {
    /// Checks `password` against a stored argon2id PHC string, as [`verify_password`] does,
    /// in reused memory.
    ///
    /// # Errors
    ///
    /// [`PasswordError::BadHash`] when `stored` is not a usable argon2id hash; a wrong
    /// password is `Ok(false)`.
    pub fn verify(&self, password: &str, stored: &str) -> Result<bool, PasswordError> {
        let hash = PasswordHash::new(stored).map_err(|_| PasswordError::BadHash)?;
        if hash.algorithm.as_str() != "argon2id" {
            return Err(PasswordError::BadHash);
        }
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return Err(PasswordError::BadHash);
        };
        let params = Params::try_from(&hash).map_err(|_| PasswordError::BadHash)?;
        let version = hash
            .version
            .map_or(Ok(Version::default()), Version::try_from)
            .map_err(|_| PasswordError::BadHash)?;
        let mut salt_bytes = [0u8; 64];
        let salt = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|_| PasswordError::BadHash)?;
        let block_count = params.block_count();
        let mut blocks = self.take(block_count);
        let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
        let hashed = Argon2::new(Algorithm::Argon2id, version, params)
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                blocks.get_mut(..block_count).unwrap_or_default(),
            );
        self.give_back(blocks);
        hashed.map_err(|e| PasswordError::Hashing(e.to_string()))?;
        Ok(bool::from(out.as_slice().ct_eq(expected.as_bytes())))
    }

    fn take(&self, block_count: usize) -> Vec<Block> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut blocks = reused.unwrap_or_default();
        // Grows once per slot to the largest cost in use; never shrinks.
        if blocks.len() < block_count {
            blocks.resize(block_count, Block::default());
        }
        blocks
    }

    fn give_back(&self, blocks: Vec<Block>) {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One buffer per concurrent check is enough; more would only come from more
        // concurrency than the caller allows, and is dropped.
        let slots = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        if free.len() < slots {
            free.push(blocks);
        }
    }
}

/// What a person holds in one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Their effective permissions there.
    pub permissions: Scope,
    /// Whether they administer the tenant (may revoke any user's tokens, or all of them).
    pub admin: bool,
}

/// One person.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The user id, used as `sub`.
    pub id: Subject,
    password_hash: Option<String>,
    /// Tenants they belong to.
    pub tenants: BTreeMap<TenantId, Membership>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

impl User {
    /// A user with a password hash (or none, for trusted-header mode).
    pub fn new(
        id: Subject,
        password_hash: Option<String>,
        tenants: BTreeMap<TenantId, Membership>,
    ) -> Self {
        Self {
            id,
            password_hash,
            tenants,
        }
    }

    /// Their membership in `tenant`, if any.
    pub fn membership(&self, tenant: &TenantId) -> Option<&Membership> {
        self.tenants.get(tenant)
    }
}

/// Why the directory file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A field is wrong; `field` is its dotted path.
    #[error("{field}: {message}")]
    Field {
        /// Dotted path, e.g. `users.alice.tenants.acme.permissions`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    password_hash: Option<String>,
    #[serde(default)]
    tenants: BTreeMap<String, RawMembership>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembership {
    permissions: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// The people edgetoken knows.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    users: BTreeMap<Subject, User>,
    #[cfg(feature = "passwords")]
    memory: PasswordMemory,
}

/// A valid argon2id hash of a random password nobody knows: verifying against it makes an
/// unknown user cost the same as a known one.
#[cfg(feature = "passwords")]
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        hash_password(&crate::encoding::b64_encode(&secret)).unwrap_or_default()
    })
}

impl Directory {
    /// Reads and validates a directory file.
    ///
    /// # Errors
    ///
    /// [`DirectoryError`] naming the file or field at fault.
    pub fn load(path: &Path, catalogue: &Catalogue) -> Result<Self, DirectoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, catalogue).map_err(|e| match e {
            DirectoryError::Field { field, message } => DirectoryError::Field {
                field: format!("{}: {field}", path.display()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates a directory from TOML text.
    ///
    /// # Errors
    ///
    /// [`DirectoryError::Field`] naming the field at fault.
    pub fn from_toml(text: &str, catalogue: &Catalogue) -> Result<Self, DirectoryError> {
        let field = |field: String, message: String| DirectoryError::Field { field, message };
        let raw: RawDirectory =
            toml::from_str(text).map_err(|e| field("directory".into(), e.message().to_owned()))?;
        let mut users = BTreeMap::new();
        for (id, raw_user) in raw.users {
            let path = format!("users.{id}");
            let subject = Subject::new(&id).map_err(|e| field(path.clone(), e.to_string()))?;
            #[cfg(not(feature = "passwords"))]
            if raw_user.password_hash.is_some() {
                return Err(field(
                    format!("{path}.password_hash"),
                    "checking passwords needs edgetoken's `passwords` feature".into(),
                ));
            }
            #[cfg(feature = "passwords")]
            if let Some(hash) = &raw_user.password_hash {
                let parsed = PasswordHash::new(hash)
                    .map_err(|e| field(format!("{path}.password_hash"), e.to_string()))?;
                if parsed.algorithm.as_str() != "argon2id" {
                    return Err(field(
                        format!("{path}.password_hash"),
                        "must be an argon2id hash from `edgetoken hash-password`".into(),
                    ));
                }
            }
            let mut tenants = BTreeMap::new();
            for (tenant, membership) in raw_user.tenants {
                let tenant_path = format!("{path}.tenants.{tenant}");
                let tenant_id = TenantId::new(&tenant)
                    .map_err(|e| field(tenant_path.clone(), e.to_string()))?;
                let permissions = catalogue
                    .expand(&membership.permissions)
                    .map_err(|e| field(format!("{tenant_path}.permissions"), e.to_string()))?;
                tenants.insert(
                    tenant_id,
                    Membership {
                        permissions,
                        admin: membership.admin,
                    },
                );
            }
            users.insert(
                subject.clone(),
                User::new(subject, raw_user.password_hash, tenants),
            );
        }
        Ok(Self {
            users,
            #[cfg(feature = "passwords")]
            memory: PasswordMemory::default(),
        })
    }

    /// A directory of the given users.
    pub fn from_users(users: impl IntoIterator<Item = User>) -> Self {
        Self {
            users: users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            #[cfg(feature = "passwords")]
            memory: PasswordMemory::default(),
        }
    }

    /// The user `id`, if known (trusted-header mode: the proxy already authenticated them).
    pub fn user(&self, id: &str) -> Option<&User> {
        let id = Subject::new(id).ok()?;
        self.users.get(&id)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks `id` and `password`; `None` unless both are right. Runs argon2 even for unknown
    /// users and users without a password, so timing does not tell them apart.
    ///
    /// # Security
    ///
    /// Slow by design (argon2id): call it off the async threads (`spawn_blocking`).
    #[cfg(feature = "passwords")]
    pub fn authenticate(&self, id: &str, password: &str) -> Option<&User> {
        let user = self.user(id);
        let stored = user
            .and_then(|u| u.password_hash.as_deref())
            .unwrap_or_else(|| decoy_hash());
        let matches = self.memory.verify(password, stored).unwrap_or(false);
        user.filter(|u| matches && u.password_hash.is_some())
    }
}

#[cfg(all(test, feature = "passwords"))]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash).unwrap());
        assert!(!verify_password("wrong horse", &hash).unwrap());
    }

    #[test]
    fn reused_memory_verifies_like_the_crate() {
        let memory = PasswordMemory::default();
        let hash = hash_password("correct horse").unwrap();
        for _ in 0..2 {
            assert!(memory.verify("correct horse", &hash).unwrap());
            assert!(!memory.verify("wrong horse", &hash).unwrap());
        }
        let other = "$argon2id$v=19$m=8192,t=1,p=2$c29tZXNhbHRzb21lc2FsdA$";
        let cheap = format!("{other}{}", "A".repeat(43));
        assert!(
            !memory.verify("x", &cheap).unwrap(),
            "other parameters work too"
        );
        assert_eq!(memory.free.lock().unwrap().len(), 1, "one buffer, reused");
    }

    #[test]
    fn non_argon2id_hash_is_refused() {
        assert!(matches!(
            verify_password("x", "$2b$12$abc"),
            Err(PasswordError::BadHash)
        ));
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;
    use crate::permissions::Category;

    fn catalogue() -> Catalogue {
        Catalogue::new(["runs", "policies"].map(|c| Category::new(c).unwrap())).unwrap()
    }

    #[test]
    #[cfg(feature = "passwords")]
    fn loads_users_and_expands_shortcuts() {
        let hash = hash_password("pw-alice").unwrap();
        let text = format!(
            "[users.alice]\npassword_hash = \"{hash}\"\n[users.alice.tenants.acme]\npermissions = [\"read-all\"]\nadmin = true\n"
        );
        let dir = Directory::from_toml(&text, &catalogue()).unwrap();
        let alice = dir.authenticate("alice", "pw-alice").unwrap();
        let acme = alice.membership(&TenantId::new("acme").unwrap()).unwrap();
        assert_eq!(acme.permissions.to_claim(), "policies:read runs:read");
        assert!(acme.admin);
        assert!(dir.authenticate("alice", "wrong").is_none());
        assert!(dir.authenticate("bob", "pw-alice").is_none());
    }

    #[test]
    fn unknown_permission_is_named() {
        let text = "[users.alice.tenants.acme]\npermissions = [\"members:read\"]\n";
        let err = Directory::from_toml(text, &catalogue()).unwrap_err();
        assert!(
            matches!(err, DirectoryError::Field { ref field, .. } if field == "users.alice.tenants.acme.permissions"),
            "{err}"
        );
    }

    #[test]
    fn non_argon2id_hash_is_named() {
        let text = "[users.alice]\npassword_hash = \"$2b$12$abcdefghijklmnopqrstuv\"\n";
        let err = Directory::from_toml(text, &catalogue()).unwrap_err();
        assert!(
            matches!(err, DirectoryError::Field { ref field, .. } if field == "users.alice.password_hash")
        );
    }

    #[test]
    #[cfg(feature = "passwords")]
    fn user_without_password_cannot_sign_in() {
        let text = "[users.sso]\n[users.sso.tenants.acme]\npermissions = [\"runs:read\"]\n";
        let dir = Directory::from_toml(text, &catalogue()).unwrap();
        assert!(dir.user("sso").is_some());
        assert!(dir.authenticate("sso", "").is_none());
    }
}
