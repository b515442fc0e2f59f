//! Configuration: one TOML file plus `EDGETOKEN_SECTION__FIELD` environment overrides
//! (SPEC §7).
//!
//! Sources apply in this order: built-in defaults, then the file (`--config FILE`, or
//! `edgetoken.toml` in the working directory when present), then the environment. Every
//! section refuses unknown fields, and [`Config::load`] validates everything before anything
//! starts, naming the offending field (`token.leeway_secs: ...`), so a typo can never silently
//! fall back to a default.
//!
//! Environment values are read as TOML values when they parse as one (`60`, `true`,
//! `["a","b"]`) and as plain strings otherwise: `EDGETOKEN_TOKEN__LEEWAY_SECS=60`,
//! `EDGETOKEN_PERMISSIONS__CATEGORIES='["runs","members"]'`,
//! `EDGETOKEN_TOKEN__ISSUER=https://issuer.example`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::permissions::{Catalogue, Category};
use crate::token::{CacheSettings, MAX_LEEWAY, VerifierSettings};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "EDGETOKEN_";
/// The environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG_FILE: &str = "EDGETOKEN_CONFIG";
/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "edgetoken.toml";

/// The whole configuration tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Token format and verification rules.
    pub token: TokenConfig,
    /// Where keys live.
    pub keys: KeysConfig,
    /// The permission catalogue.
    pub permissions: PermissionsConfig,
    /// The verified-token cache.
    pub cache: CacheConfig,
}

/// `[token]`: what every token says about who issued it and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// `iss` stamped by the issuer and required by verifiers. Default
    /// `http://127.0.0.1:8080`. Set it to the issuer's public URL in production.
    pub issuer: String,
    /// `aud` stamped and required. Default `edgetoken`. Distinct audiences keep tokens for one
    /// API from opening another.
    pub audience: String,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, in seconds. Default 30, at most 300.
    pub leeway_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".into(),
            audience: "edgetoken".into(),
            leeway_secs: 30,
        }
    }
}

/// `[keys]`: the key directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Directory of PKCS#8 private keys (mode 0600), public JWKs and `ACTIVE`. Default `keys`.
    pub dir: PathBuf,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("keys"),
        }
    }
}

/// `[permissions]`: the catalogue of SPEC §2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Permission categories; each has `:read` and `:write`. Default `runs`, `policies`,
    /// `detections`, `members`.
    pub categories: Vec<String>,
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        Self {
            categories: ["runs", "policies", "detections", "members"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// `[cache]`: the verified-token cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most verified tokens remembered. Default 100000; 0 disables the cache (every request
    /// pays a signature check).
    pub max_entries: u64,
    /// Longer tokens are verified but not cached. Default 2048 bytes.
    pub max_token_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let defaults = CacheSettings::default();
        Self {
            max_entries: defaults.max_entries,
            max_token_bytes: defaults.max_token_bytes,
        }
    }
}

/// Why the configuration was refused. Always names the file or field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has the wrong type or is unknown.
    #[error("{field}: {message}")]
    Field {
        /// Dotted path of the field, e.g. `token.leeway_secs`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override that is not of the form `EDGETOKEN_SECTION__FIELD`.
    #[error("{name}: environment overrides are EDGETOKEN_SECTION__FIELD (double underscore)")]
    EnvName {
        /// The variable's name.
        name: String,
    },
}

impl ConfigError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (or `edgetoken.toml` if present when `file` is `None`),
    /// then the `EDGETOKEN_*` variables in `env`, and validates the result.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, variable or field at fault.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => read_table(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                read_table(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::field(&e.path().to_string(), e.inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads from a TOML string (no environment); for tests and embedded defaults.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: PathBuf::from("<string>"),
                    message: e.to_string(),
                })?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::field(&e.path().to_string(), e.inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that serde's types cannot express.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Field`] for the first broken rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token.leeway_secs > MAX_LEEWAY.as_secs() {
            return Err(ConfigError::field(
                "token.leeway_secs",
                "must be at most 300 seconds",
            ));
        }
        if self.token.issuer.is_empty() {
            return Err(ConfigError::field("token.issuer", "must not be empty"));
        }
        if self.token.audience.is_empty() {
            return Err(ConfigError::field("token.audience", "must not be empty"));
        }
        self.catalogue()?;
        Ok(())
    }

    /// The verifier's settings from `[token]`.
    pub fn verifier_settings(&self) -> VerifierSettings {
        VerifierSettings {
            issuer: self.token.issuer.clone(),
            audience: self.token.audience.clone(),
            leeway: Duration::from_secs(self.token.leeway_secs),
        }
    }

    /// The permission catalogue from `[permissions]`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Field`] naming `permissions.categories` for an empty list or a bad name.
    pub fn catalogue(&self) -> Result<Catalogue, ConfigError> {
        let field = "permissions.categories";
        let categories = self
            .permissions
            .categories
            .iter()
            .map(|name| Category::new(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::field(field, e.to_string()))?;
        Catalogue::new(categories).map_err(|e| ConfigError::field(field, e.to_string()))
    }

    /// The cache bounds from `[cache]`.
    pub fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            max_entries: self.cache.max_entries,
            max_token_bytes: self.cache.max_token_bytes,
        }
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Applies `EDGETOKEN_SECTION__FIELD=value` overrides onto `table`.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == ENV_CONFIG_FILE {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::EnvName { name });
        }
        let value = parse_env_value(&raw);
        let mut node = &mut *table;
        let (last, sections) = path
            .split_last()
            .ok_or(ConfigError::EnvName { name: name.clone() })?;
        for section in sections {
            let entry = node
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                ConfigError::field(
                    &path.join("."),
                    format!("{name}: `{section}` is not a section"),
                )
            })?;
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}

/// A TOML value if the text is one (`60`, `true`, `["a"]`), else the text as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::load(Some(Path::new("/dev/null")), env(&[])).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::from_toml("[token]\nleway_secs = 3\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "token.leway_secs"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = Config::from_toml("[token]\nleeway_secs = \"soon\"\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "token.leeway_secs")
        );
    }

    #[test]
    fn leeway_over_five_minutes_is_refused() {
        let err = Config::from_toml("[token]\nleeway_secs = 301\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "token.leeway_secs")
        );
    }

    #[test]
    fn env_overrides_file_and_parses_types() {
        let config = Config::load(
            Some(Path::new("/dev/null")),
            env(&[
                ("EDGETOKEN_TOKEN__LEEWAY_SECS", "60"),
                ("EDGETOKEN_TOKEN__ISSUER", "https://issuer.example"),
                ("EDGETOKEN_PERMISSIONS__CATEGORIES", r#"["runs","members"]"#),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.token.leeway_secs, 60);
        assert_eq!(config.token.issuer, "https://issuer.example");
        assert_eq!(config.permissions.categories, ["runs", "members"]);
    }

    #[test]
    fn env_override_of_unknown_field_is_refused() {
        let err = Config::load(
            Some(Path::new("/dev/null")),
            env(&[("EDGETOKEN_TOKEN__LEWAY", "1")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("leway"), "{err}");
        let err = Config::load(
            Some(Path::new("/dev/null")),
            env(&[("EDGETOKEN_TOKEN", "1")]),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::EnvName { .. }));
    }

    #[test]
    fn bad_category_is_named() {
        let err = Config::from_toml("[permissions]\ncategories = [\"Runs\"]\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "permissions.categories")
        );
    }
}
