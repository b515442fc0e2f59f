//! The key directory (`keys/`): where keys live on disk (SPEC §8).
//!
//! Layout, one pair per key:
//!
//! ```text
//! keys/<kid>.key.pem   PKCS#8 PEM private key, mode 0600 (only on the issuer)
//! keys/<kid>.jwk.json  public JWK with kid, use and alg
//! keys/ACTIVE          the kid of the one key that signs
//! ```
//!
//! Every public JWK in the directory is trusted, so a rotated-out key keeps verifying its
//! tokens until its file is removed. Other files (a README, say) are ignored. A private key
//! readable by group or others is refused, and so is a private key whose public half differs
//! from the JWK stored beside it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::ring::PublicJwk;
use super::thumbprint::is_kid_shaped;
use super::{KeyError, KeyRing, SigningKey, TrustedKey};

const PRIVATE_SUFFIX: &str = ".key.pem";
const PUBLIC_SUFFIX: &str = ".jwk.json";
const ACTIVE_FILE: &str = "ACTIVE";

/// A key directory.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

/// What `keys list` shows about one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyFileInfo {
    /// The kid.
    pub kid: String,
    /// Whether the private key is present here (only on the issuer).
    pub has_private: bool,
    /// Whether this is the key that signs.
    pub active: bool,
}

impl KeyDir {
    /// The directory at `dir` (not touched until used).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    #[expect(
        clippy::unused_self,
        reason = "reads as self.io(path) at every call site"
    )]
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
        let path = path.to_owned();
        move |source| KeyError::Io { path, source }
    }

    /// Generates a key, writes both halves, and makes it the active key if `activate` is set
    /// or no key is active yet.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] when the directory or files cannot be written. Nothing is marked
    /// active unless both halves were written.
    pub fn generate(&self, activate: bool) -> Result<SigningKey, KeyError> {
        fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let key = SigningKey::generate();
        let kid = key.kid().as_str();
        let pem = key.to_pkcs8_pem()?;
        self.write_new(&format!("{kid}{PRIVATE_SUFFIX}"), pem.as_bytes(), 0o600)?;
        let public = TrustedKey::from_bytes(&key.public_bytes())?;
        let jwk = serde_json::to_vec_pretty(&public.jwk()).map_err(|e| KeyError::Format {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        self.write_new(&format!("{kid}{PUBLIC_SUFFIX}"), &jwk, 0o644)?;
        if activate || self.active_kid()?.is_none() {
            self.activate(kid)?;
        }
        Ok(key)
    }

    /// Writes a new file through a temporary name and a rename, so a crash never leaves a
    /// half-written key under its real name.
    fn write_new(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), KeyError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(self.io(&tmp))?;
        file.write_all(contents).map_err(self.io(&tmp))?;
        file.sync_all().map_err(self.io(&tmp))?;
        fs::rename(&tmp, &path).map_err(self.io(&path))
    }

    /// Marks `kid` as the signing key. Its private key must be present and valid.
    ///
    /// # Errors
    ///
    /// [`KeyError::UnknownKid`] when no private key for `kid` is here, or any load error.
    pub fn activate(&self, kid: &str) -> Result<(), KeyError> {
        self.load_private(kid)?;
        let path = self.dir.join(ACTIVE_FILE);
        let tmp = self.dir.join(format!(".{ACTIVE_FILE}.tmp"));
        fs::write(&tmp, format!("{kid}\n")).map_err(self.io(&tmp))?;
        fs::rename(&tmp, &path).map_err(self.io(&path))
    }

    /// The kid in `ACTIVE`, if the file exists.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] for read errors other than absence.
    pub fn active_kid(&self) -> Result<Option<String>, KeyError> {
        let path = self.dir.join(ACTIVE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::Io { path, source: e }),
        }
    }

    /// Loads the active signing key.
    ///
    /// # Errors
    ///
    /// [`KeyError::NoActiveKey`] when none is marked, or any error of loading it.
    pub fn load_signing(&self) -> Result<SigningKey, KeyError> {
        let kid = self.active_kid()?.ok_or_else(|| KeyError::NoActiveKey {
            dir: self.dir.clone(),
        })?;
        self.load_private(&kid)
    }

    fn load_private(&self, kid: &str) -> Result<SigningKey, KeyError> {
        // The kid names a file here, so it must be a thumbprint and nothing else: never a path.
        if !is_kid_shaped(kid) {
            return Err(KeyError::UnknownKid(kid.to_owned()));
        }
        let path = self.dir.join(format!("{kid}{PRIVATE_SUFFIX}"));
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::UnknownKid(kid.to_owned()));
            }
            Err(e) => return Err(KeyError::Io { path, source: e }),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path, mode });
        }
        let pem = zeroize::Zeroizing::new(fs::read_to_string(&path).map_err(self.io(&path))?);
        let key = SigningKey::from_pkcs8_pem(&pem, &path)?;
        if key.kid().as_str() != kid {
            return Err(KeyError::Mismatch { path });
        }
        let public_path = self.dir.join(format!("{kid}{PUBLIC_SUFFIX}"));
        if public_path.exists() {
            let public = self.load_public(&public_path)?;
            if public.to_bytes() != key.public_bytes() {
                return Err(KeyError::Mismatch { path });
            }
        }
        Ok(key)
    }

    fn load_public(&self, path: &Path) -> Result<TrustedKey, KeyError> {
        let text = fs::read(path).map_err(self.io(path))?;
        let jwk: PublicJwk = serde_json::from_slice(&text).map_err(|e| KeyError::Format {
            path: path.to_owned(),
            reason: format!("not a public Ed25519 JWK: {e}"),
        })?;
        TrustedKey::from_jwk(&jwk, &path.display().to_string())
    }

    /// Loads every trusted public key into a ring. Private keys present are loaded too, so a
    /// bad private key (wrong mode, mismatch) is refused here as well.
    ///
    /// # Errors
    ///
    /// The first key that fails to load or breaks the policy; a half-trusted directory is
    /// never returned.
    pub fn load_ring(&self) -> Result<KeyRing, KeyError> {
        let mut ring = KeyRing::new();
        for (kid, has_private) in self.scan()? {
            if has_private {
                let key = self.load_private(&kid)?;
                ring.insert(TrustedKey::from_bytes(&key.public_bytes())?);
            } else {
                let key = self.load_public(&self.dir.join(format!("{kid}{PUBLIC_SUFFIX}")))?;
                if key.kid().as_str() != kid {
                    return Err(KeyError::Format {
                        path: self.dir.join(format!("{kid}{PUBLIC_SUFFIX}")),
                        reason: "file name is not the key's thumbprint".into(),
                    });
                }
                ring.insert(key);
            }
        }
        Ok(ring)
    }

    /// Moves `kid`'s files to `retired/` inside the directory, so nothing loads or trusts
    /// the key any more (a verifier reading this directory drops it on its next load).
    ///
    /// # Errors
    ///
    /// [`KeyError::UnknownKid`] for a kid that is not here, [`KeyError::Io`] on file errors.
    pub fn retire(&self, kid: &str) -> Result<(), KeyError> {
        if !is_kid_shaped(kid) {
            return Err(KeyError::UnknownKid(kid.to_owned()));
        }
        let retired = self.dir.join("retired");
        fs::create_dir_all(&retired).map_err(self.io(&retired))?;
        let mut moved = false;
        for suffix in [PRIVATE_SUFFIX, PUBLIC_SUFFIX] {
            let name = format!("{kid}{suffix}");
            let from = self.dir.join(&name);
            if from.exists() {
                fs::rename(&from, retired.join(&name)).map_err(self.io(&from))?;
                moved = true;
            }
        }
        if moved {
            Ok(())
        } else {
            Err(KeyError::UnknownKid(kid.to_owned()))
        }
    }

    /// Lists the keys in the directory, sorted by kid.
    ///
    /// # Errors
    ///
    /// [`KeyError::Io`] when the directory cannot be read.
    pub fn list(&self) -> Result<Vec<KeyFileInfo>, KeyError> {
        let active = self.active_kid()?;
        Ok(self
            .scan()?
            .into_iter()
            .map(|(kid, has_private)| KeyFileInfo {
                active: active.as_deref() == Some(kid.as_str()),
                kid,
                has_private,
            })
            .collect())
    }

    /// Kids found in the directory, with whether each has a private key.
    fn scan(&self) -> Result<Vec<(String, bool)>, KeyError> {
        let mut found = std::collections::BTreeMap::<String, bool>::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(KeyError::Io {
                    path: self.dir.clone(),
                    source: e,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(kid) = name
                .strip_suffix(PRIVATE_SUFFIX)
                .filter(|k| is_kid_shaped(k))
            {
                found.insert(kid.to_owned(), true);
            } else if let Some(kid) = name
                .strip_suffix(PUBLIC_SUFFIX)
                .filter(|k| is_kid_shaped(k))
            {
                found.entry(kid.to_owned()).or_insert(false);
            }
        }
        Ok(found.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path());
        let key = keys.generate(false).unwrap();
        let loaded = keys.load_signing().unwrap();
        assert_eq!(loaded.kid(), key.kid());
        let ring = keys.load_ring().unwrap();
        assert!(ring.contains(key.kid().as_str()));
        let mode = fs::metadata(dir.path().join(format!("{}{PRIVATE_SUFFIX}", key.kid())))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn group_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path());
        let key = keys.generate(false).unwrap();
        let path = dir.path().join(format!("{}{PRIVATE_SUFFIX}", key.kid()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            keys.load_signing(),
            Err(KeyError::Permissions { .. })
        ));
        assert!(matches!(
            keys.load_ring(),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn second_key_is_trusted_but_not_active_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path());
        let first = keys.generate(false).unwrap();
        let second = keys.generate(false).unwrap();
        assert_eq!(keys.load_signing().unwrap().kid(), first.kid());
        assert_eq!(keys.load_ring().unwrap().len(), 2);
        keys.activate(second.kid().as_str()).unwrap();
        assert_eq!(keys.load_signing().unwrap().kid(), second.kid());
    }

    #[test]
    fn path_shaped_active_kid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(ACTIVE_FILE), "../../etc/passwd\n").unwrap();
        assert!(matches!(
            KeyDir::new(dir.path()).load_signing(),
            Err(KeyError::UnknownKid(_))
        ));
    }
}
