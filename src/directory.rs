//! People and their passwords (SPEC §4 `directory` mode).
//!
//! Passwords are stored only as argon2id PHC strings (`edgetoken hash-password` makes them)
//! and checked with argon2's own verification, which compares in constant time.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};

/// Why a password could not be hashed, or a stored hash could not be used.
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
pub fn verify_password(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let hash = PasswordHash::new(stored).map_err(|_| PasswordError::BadHash)?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::BadHash);
    }
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok())
}

#[cfg(test)]
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
    fn non_argon2id_hash_is_refused() {
        assert!(matches!(
            verify_password("x", "$2b$12$abc"),
            Err(PasswordError::BadHash)
        ));
    }
}
