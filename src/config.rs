//! Configuration: one TOML file plus `EDGETOKEN_SECTION__FIELD` environment overrides
//! (SPEC §7).
//!
//! Sources apply in this order: built-in defaults, then the file (`--config FILE`, or
//! `edgetoken.toml` in the working directory when present), then the environment. Every
//! section refuses unknown fields. This module holds the raw tree; [`crate::settings`] checks
//! the rules serde cannot express and turns it into typed settings once, naming the offending
//! field (`token.leeway_secs: ...`), so a typo can never silently fall back to a default.
//!
//! Environment values are read as TOML values when they parse as one (`60`, `true`,
//! `["a","b"]`) and as plain strings otherwise: `EDGETOKEN_TOKEN__LEEWAY_SECS=60`,
//! `EDGETOKEN_PERMISSIONS__CATEGORIES='["runs","members"]'`,
//! `EDGETOKEN_TOKEN__ISSUER=https://issuer.example`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::token::CacheSettings;

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "EDGETOKEN_";
/// The environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG_FILE: &str = "EDGETOKEN_CONFIG";
/// The environment variable choosing the log format (`json`; see `telemetry`). Like
/// [`ENV_CONFIG_FILE`] it is read before the configuration, so it is not an override.
pub const ENV_LOG_FORMAT: &str = "EDGETOKEN_LOG_FORMAT";
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
    /// The HTTP server.
    pub server: ServerConfig,
    /// The revocation store and mirror.
    pub revocation: RevocationConfig,
    /// The issuer service: how people sign in, limits, records.
    pub issuer: IssuerConfig,
    /// The verifier service: where keys come from, forward-auth route policy, introspection.
    pub verifier: VerifierConfig,
    /// Token usage ("last used") recorded by verifiers.
    pub usage: UsageConfig,
    /// The personal tokens page (`/`), served with the issuer.
    pub page: PageConfig,
}

/// `[page]`: the personal tokens page served by the issuer at `/` (issue 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageConfig {
    /// The page's public origin as browsers see it, e.g. `https://tokens.example.com`.
    /// Empty (the default): the page is served over plain HTTP straight to the browser, and
    /// the expected origin is `http://` plus the request's `Host`. Set it whenever a proxy
    /// terminates TLS or rewrites `Host`: an `https` origin makes the session cookie `Secure`
    /// with the `__Host-` prefix, and every form post must come from exactly this origin.
    pub public_origin: String,
    /// A session unused for this many seconds ends. Default 1800 (30 minutes).
    pub session_idle_secs: u64,
    /// A session ends this many seconds after sign-in, however busy. Default 28800 (8 hours).
    pub session_absolute_secs: u64,
}

impl Default for PageConfig {
    fn default() -> Self {
        Self {
            public_origin: String::new(),
            session_idle_secs: 1800,
            session_absolute_secs: 8 * 3600,
        }
    }
}

/// Which services one process runs (SPEC §7 `--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The issuer API only.
    Issuer,
    /// The verifier API only.
    Verifier,
    /// Both, in one process (the default).
    #[default]
    All,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Issuer => "issuer",
            Self::Verifier => "verifier",
            Self::All => "all",
        })
    }
}

impl Role {
    /// Whether the issuer endpoints are served.
    pub fn has_issuer(self) -> bool {
        matches!(self, Self::Issuer | Self::All)
    }

    /// Whether the verifier endpoints are served.
    pub fn has_verifier(self) -> bool {
        matches!(self, Self::Verifier | Self::All)
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on: an IP address and port, or `unix:PATH` for a Unix socket (for a
    /// proxy on the same host). Default `127.0.0.1:8080`.
    pub listen: String,
    /// The permissions of a `unix:` listen socket's file, in octal: who may connect. Default
    /// `"0660"`, the owner and its group.
    pub unix_socket_mode: String,
    /// Services to run: `issuer`, `verifier` or `all` (default). `--role` overrides it.
    pub role: Role,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 16384.
    pub max_body_bytes: usize,
    /// A request head must arrive whole within this many seconds of its first byte (and a
    /// new connection's first head within this time of opening); slower connections are
    /// closed (slowloris). Default 10.
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection without a request for this many seconds is closed. Default 60.
    pub idle_timeout_secs: u64,
    /// Connections open at once. At the limit, and when the process runs out of file
    /// descriptors, the oldest idle connections are closed to make room. Lowered at start to
    /// fit the open-file limit. Default 4096.
    pub max_connections: usize,
    /// Threads that run requests. 0 (the default): `TOKIO_WORKER_THREADS` when set, else one
    /// per CPU this process may run on. One thread runs everything on tokio's current-thread
    /// runtime (see [`crate::runtime`]). At most 1024.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            unix_socket_mode: "0660".into(),
            role: Role::All,
            max_body_bytes: 16 * 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 4096,
            worker_threads: 0,
        }
    }
}

/// `[revocation]`: see SPEC §3.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevocationConfig {
    /// Redis URL (`redis://[:password@]host:port[/db]`, or `rediss://` for TLS over rustls,
    /// trusting the system's roots; `SSL_CERT_FILE` / `SSL_CERT_DIR` override them). Empty (the default) runs the
    /// in-process store: one process, nothing survives a restart (unless Sentinel or Cluster
    /// is set). Exclusive with the `sentinel_*` and `cluster_*` settings.
    pub redis_url: String,
    /// Redis under Sentinel: the name the sentinels monitor the primary under. Set it with
    /// `sentinel_addresses` instead of `redis_url`; the service then follows failovers.
    /// Default empty (no Sentinel).
    pub sentinel_master_name: String,
    /// The sentinels, as `host:port` (for example `["10.0.0.1:26379", "10.0.0.2:26379"]`).
    /// Default none.
    pub sentinel_addresses: Vec<String>,
    /// The sentinels' password, if they require one (`requirepass` in sentinel.conf). Set it
    /// through `EDGETOKEN_REVOCATION__SENTINEL_PASSWORD` rather than the file. Default none.
    pub sentinel_password: String,
    /// Redis Cluster: seed nodes, as `host:port` (for example `["10.0.0.1:7000",
    /// "10.0.0.2:7000"]`), asked in order which node is the primary of the slot holding every
    /// key of this deployment (the hash tag `{key_prefix}`). Set instead of `redis_url` and
    /// the `sentinel_*` settings; the service then follows failovers and resharding. Default
    /// none.
    pub cluster_nodes: Vec<String>,
    /// The password every cluster node requires (`requirepass`), if any. Set it through
    /// `EDGETOKEN_REVOCATION__CLUSTER_PASSWORD` rather than the file. Default none.
    pub cluster_password: String,
    /// Replicas that must confirm each revoke (`WAIT`) before it is acknowledged; fewer within
    /// `wait_timeout_ms` and the revoke answers 503. Default: 1 when the primary has replicas
    /// (always under Sentinel or Cluster), 0 otherwise.
    pub min_replicas_acked: Option<u32>,
    /// How long a revoke waits for `min_replicas_acked` replicas, in milliseconds. Default
    /// 500, at most 10000.
    pub wait_timeout_ms: u64,
    /// The least durability Redis must give an acknowledged revoke: `none` (default),
    /// `replicated` (confirmed by `min_replicas_acked` ≥ 1 replicas) or `fsync` (replicated,
    /// and the primary runs `appendonly yes` with `appendfsync always`). A Redis below it is
    /// refused at start, and revokes against it answer 503.
    pub require_durability: crate::revocation::DurabilityLevel,
    /// Prefix of every Redis key of this deployment. Default `edgetoken`.
    pub key_prefix: String,
    /// How old the mirror may get before `on_stale` applies, in seconds. Default 60.
    pub max_staleness_secs: u64,
    /// Past `max_staleness`: `fail_closed` (default: verification answers 503) or `serve`
    /// (keep answering from the last state; a revocation made meanwhile is not seen).
    pub on_stale: crate::revocation::OnStale,
    /// How often each mirror confirms its state with Redis, in milliseconds. Default 1000.
    pub heartbeat_ms: u64,
    /// Longest wait for one Redis command, in milliseconds. Default 2000.
    pub command_timeout_ms: u64,
    /// Longest wait for one bulk step of a mirror's sync (a page of a full resync, a re-seed
    /// pipeline), in milliseconds. Default 30000.
    pub bulk_timeout_ms: u64,
    /// How long a revoke waits for every registered verifier to confirm it applied the
    /// revocation, in milliseconds (the barrier). Past it the revoke answers `202` with the
    /// number of lagging verifiers and the bound within which they refuse the token anyway.
    /// 0: do not wait. Default 50, at most 10000.
    pub barrier_timeout_ms: u64,
    /// Verifiers' feeds subscribe, catch up and resync from a replica the sentinels list
    /// (checked linked to the primary), falling back to the primary when none is usable;
    /// writes and anything that decides a re-seed stay on the primary. Needs Sentinel.
    /// Default false.
    pub read_from_replicas: bool,
}

impl std::fmt::Debug for RevocationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationConfig")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("sentinel_master_name", &self.sentinel_master_name)
            .field("sentinel_addresses", &self.sentinel_addresses)
            .field(
                "sentinel_password",
                &(!self.sentinel_password.is_empty()).then_some("<redacted>"),
            )
            .field("cluster_nodes", &self.cluster_nodes)
            .field(
                "cluster_password",
                &(!self.cluster_password.is_empty()).then_some("<redacted>"),
            )
            .field("min_replicas_acked", &self.min_replicas_acked)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .field("require_durability", &self.require_durability)
            .field("key_prefix", &self.key_prefix)
            .field("max_staleness_secs", &self.max_staleness_secs)
            .field("on_stale", &self.on_stale)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("bulk_timeout_ms", &self.bulk_timeout_ms)
            .field("barrier_timeout_ms", &self.barrier_timeout_ms)
            .field("read_from_replicas", &self.read_from_replicas)
            .finish()
    }
}

/// A Redis URL with any password replaced, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Default for RevocationConfig {
    fn default() -> Self {
        let defaults = crate::revocation::RevocationSettings::default();
        // The settings' durations as this file's whole milliseconds.
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            redis_url: String::new(),
            sentinel_master_name: String::new(),
            sentinel_addresses: Vec::new(),
            sentinel_password: String::new(),
            cluster_nodes: Vec::new(),
            cluster_password: String::new(),
            min_replicas_acked: None,
            wait_timeout_ms: millis(defaults.wait_timeout),
            require_durability: defaults.require_durability,
            key_prefix: defaults.key_prefix,
            max_staleness_secs: defaults.max_staleness.as_secs(),
            on_stale: defaults.on_stale,
            heartbeat_ms: 1000,
            command_timeout_ms: 2000,
            bulk_timeout_ms: millis(defaults.bulk_timeout),
            barrier_timeout_ms: millis(defaults.barrier_timeout),
            read_from_replicas: defaults.read_from_replicas,
        }
    }
}

/// How people authenticate to the issuer (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// HTTP Basic against the directory file's argon2id hashes.
    #[default]
    Directory,
    /// The user id from `user_header`, accepted only with the shared proxy secret.
    TrustedHeader,
}

/// `[issuer]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// `directory` (default) or `trusted-header`.
    pub auth: AuthMode,
    /// The user directory file (users, tenants, permissions, password hashes). Empty (the
    /// default) runs the development directory: a `demo` user in a `demo` tenant with a
    /// password printed once at start.
    pub directory: PathBuf,
    /// trusted-header mode: the header carrying the signed-in user id. Default
    /// `X-Forwarded-User`.
    pub user_header: String,
    /// trusted-header mode: the header carrying the proxy secret. Default
    /// `X-Edgetoken-Proxy-Secret`.
    pub proxy_secret_header: String,
    /// trusted-header mode: the shared secret (at least 32 characters), compared in constant
    /// time. Set it through `EDGETOKEN_ISSUER__PROXY_SECRET` rather than the file.
    pub proxy_secret: String,
    /// Failed sign-ins allowed per user id per minute before 429. Default 5.
    pub failed_signins_per_minute: u32,
    /// Tokens a person may mint per hour before 429. Default 60.
    pub mints_per_hour: u32,
    /// User and tenant revocations one tenant admin may make per minute before 429 (each is
    /// copied into every mirror for 12 hours). Default 10.
    pub tenant_revocations_per_minute: u32,
    /// How long token records outlive their token, in seconds (listings show them as
    /// expired meanwhile). Default 86400.
    pub records_retention_secs: u64,
    /// `Cache-Control: max-age` of the JWKS, in seconds. Default 300.
    pub jwks_max_age_secs: u64,
}

impl std::fmt::Debug for IssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerConfig")
            .field("auth", &self.auth)
            .field("directory", &self.directory)
            .field("user_header", &self.user_header)
            .field("proxy_secret_header", &self.proxy_secret_header)
            .field("proxy_secret", &"<redacted>")
            .field("failed_signins_per_minute", &self.failed_signins_per_minute)
            .field("mints_per_hour", &self.mints_per_hour)
            .field(
                "tenant_revocations_per_minute",
                &self.tenant_revocations_per_minute,
            )
            .field("records_retention_secs", &self.records_retention_secs)
            .field("jwks_max_age_secs", &self.jwks_max_age_secs)
            .finish()
    }
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            auth: AuthMode::Directory,
            directory: PathBuf::new(),
            user_header: "X-Forwarded-User".into(),
            proxy_secret_header: "X-Edgetoken-Proxy-Secret".into(),
            proxy_secret: String::new(),
            failed_signins_per_minute: 5,
            mints_per_hour: 60,
            tenant_revocations_per_minute: 10,
            records_retention_secs: 86_400,
            jwks_max_age_secs: 300,
        }
    }
}

/// `[verifier]`: the verifier service (SPEC §5, §8).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierConfig {
    /// The issuer's JWKS URL (`https://issuer.example/.well-known/jwks.json`). Empty (the
    /// default) reads trusted keys from `keys.dir` instead. Only for `--role verifier`: the
    /// issuer trusts its own key directory.
    pub jwks_url: String,
    /// Allow a plain `http://` JWKS URL to a host other than loopback. Default false: whoever
    /// can alter the fetched document chooses the trusted keys, so the key set must come over
    /// TLS unless the network path is one you control (a private container network, say).
    pub allow_insecure_jwks: bool,
    /// How often the JWKS is fetched again, in seconds. Default 300.
    pub jwks_refresh_secs: u64,
    /// A token naming an unknown `kid` triggers a background refetch, at most once per this
    /// many seconds (the token itself is rejected `unknown_key`). Default 30.
    pub jwks_min_refetch_secs: u64,
    /// Longest wait for one JWKS fetch, in milliseconds. Default 5000.
    pub jwks_timeout_ms: u64,
    /// Largest JWKS document accepted, in bytes; a larger one is refused whole. Default 65536.
    pub jwks_max_bytes: usize,
    /// Peers (IP addresses or CIDR blocks, and `unix` for every peer of a Unix-socket
    /// `server.listen`) whose `X-Forwarded-*`/`X-Original-*` headers are honoured by
    /// `/v1/verify`. Default this host only: `["127.0.0.1/32", "::1/128", "unix"]`.
    pub trusted_proxies: Vec<String>,
    /// What a request that no route matches gets: `deny` (default, 403 `no_route`) or
    /// `allow_authenticated` (any valid token passes, with no tenant or permission check).
    pub unmatched: crate::policy::Unmatched,
    /// The route policy: `[[verifier.routes]]` with `method`, `path` and `permission`. First
    /// match wins. Default none (then `/v1/verify` takes its requirement from the `tenant` and
    /// `permission` query parameters).
    pub routes: Vec<crate::policy::RouteSpec>,
    /// Callers allowed to use `/v1/introspect` (RFC 7662), by HTTP Basic `id:secret`. Default
    /// none: the endpoint answers 404.
    pub introspection_clients: Vec<IntrospectionClient>,
    /// Where the gRPC `envoy.service.auth.v3.Authorization/Check` service listens, for Envoy's
    /// gRPC `ext_authz` (`127.0.0.1:9191`). Default empty: off. Same decisions as
    /// `/v1/verify`; its attributes are believed only from peers in `trusted_proxies`, and it
    /// has no authentication of its own, so bind it where only Envoy reaches it.
    pub grpc_listen: String,
}

impl std::fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("jwks_url", &redact_url(&self.jwks_url))
            .field("allow_insecure_jwks", &self.allow_insecure_jwks)
            .field("jwks_refresh_secs", &self.jwks_refresh_secs)
            .field("jwks_min_refetch_secs", &self.jwks_min_refetch_secs)
            .field("jwks_timeout_ms", &self.jwks_timeout_ms)
            .field("jwks_max_bytes", &self.jwks_max_bytes)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("unmatched", &self.unmatched)
            .field("routes", &self.routes)
            .field("introspection_clients", &self.introspection_clients)
            .field("grpc_listen", &self.grpc_listen)
            .finish()
    }
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            jwks_url: String::new(),
            allow_insecure_jwks: false,
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 30,
            jwks_timeout_ms: 5000,
            jwks_max_bytes: 64 * 1024,
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into(), "unix".into()],
            unmatched: crate::policy::Unmatched::Deny,
            routes: Vec::new(),
            introspection_clients: Vec::new(),
            grpc_listen: String::new(),
        }
    }
}

/// One `[[verifier.introspection_clients]]` entry.
///
/// # Security
///
/// `Debug` redacts the secret; set it through the environment
/// (`EDGETOKEN_VERIFIER__INTROSPECTION_CLIENTS='[{id="gw",secret="..."}]'`) rather than a file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionClient {
    /// The client id: 1-64 of `A-Z a-z 0-9 - _ .`.
    pub id: String,
    /// The client secret, at least 32 characters; compared in constant time.
    pub secret: String,
}

impl std::fmt::Debug for IntrospectionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionClient")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
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
    /// How often a running service reloads `dir`, in seconds, so a key added or retired
    /// (`edgetoken keys revoke`) and, on the issuer, a changed `ACTIVE` (`edgetoken keys
    /// rotate`) take effect without a restart; the new signing key is trusted before it signs.
    /// Default 30; 0 never reloads. A directory or signing key that fails to load keeps the
    /// last good one.
    pub reload_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("keys"),
            reload_secs: 30,
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

/// `[usage]`: what verifiers record about the tokens they accept (issue 10), shown by the
/// list API as `last_used_at`, `last_used_from` and `uses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Record each accepted token's last use and use count. Default true. Recording never
    /// delays or fails a verification: usage is aggregated in memory and flushed in the
    /// background.
    pub enabled: bool,
    /// Also record the client address (the trusted forwarded address, else the TCP peer) and
    /// user agent (first 128 bytes, control characters removed) of the latest use. Default
    /// true. Privacy: false records only the time and count.
    pub record_address: bool,
    /// Seconds between two flushes to the store, 1 to 3600: how fresh "last used" is.
    /// Default 10.
    pub flush_secs: u64,
    /// Most tokens aggregated per flush interval; past it the least recently used are dropped
    /// (counted in `edgetoken_usage_dropped_total`). Default 100000.
    pub max_entries: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        let defaults = crate::usage::UsageSettings::default();
        Self {
            enabled: defaults.enabled,
            record_address: defaults.record_address,
            flush_secs: defaults.flush.as_secs(),
            max_entries: defaults.max_entries,
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
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Field {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (or `edgetoken.toml` if present when `file` is `None`),
    /// then the `EDGETOKEN_*` variables in `env`. The result is the raw tree: build
    /// [`crate::settings::Settings`] from it (or use `Settings::load`) to validate it.
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
        Ok(config)
    }

    /// Parses a TOML string (no environment) into the raw tree.
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
        Ok(config)
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
        if name == ENV_CONFIG_FILE || name == ENV_LOG_FORMAT {
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
    use crate::settings::Settings;

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
        assert!(Settings::new(&config).is_ok());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Settings::from_toml("[token]\nleway_secs = 3\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "token.leway_secs"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = Settings::from_toml("[token]\nleeway_secs = \"soon\"\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "token.leeway_secs")
        );
    }

    #[test]
    fn leeway_over_five_minutes_is_refused() {
        let err = Settings::from_toml("[token]\nleeway_secs = 301\n").unwrap_err();
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
    fn the_variables_read_before_the_configuration_are_not_overrides() {
        let config = Config::load(
            Some(Path::new("/dev/null")),
            env(&[
                (ENV_CONFIG_FILE, "/etc/edgetoken.toml"),
                (ENV_LOG_FORMAT, "json"),
            ]),
        )
        .unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn trusted_header_mode_needs_a_long_proxy_secret_and_a_directory() {
        let err = Settings::from_toml(
            "[issuer]\nauth = \"trusted-header\"\nproxy_secret = \"short\"\ndirectory = \"u.toml\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "issuer.proxy_secret")
        );
        let err = Settings::from_toml(&format!(
            "[issuer]\nauth = \"trusted-header\"\nproxy_secret = \"{}\"\n",
            "s".repeat(32)
        ))
        .unwrap_err();
        assert!(matches!(err, ConfigError::Field { ref field, .. } if field == "issuer.directory"));
    }

    #[test]
    fn redis_password_is_redacted_in_debug() {
        let config = Config::from_toml(
            "[revocation]\nredis_url = \"redis://:s3cret@redis.internal:6379/0\"\n",
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("redis.internal"), "{debug}");
    }

    #[test]
    fn verifier_routes_are_validated_with_their_index() {
        let err = Settings::from_toml(
            "[[verifier.routes]]\nmethod = \"GET\"\npath = \"/a\"\n\
             [[verifier.routes]]\nmethod = \"GET\"\npath = \"/b\"\npermission = \"billing:read\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "verifier.routes[1].permission"),
            "{err}"
        );
    }

    #[test]
    fn verifier_options_are_validated_by_name() {
        for (toml, name) in [
            ("[verifier]\njwks_url = \"ftp://x\"\n", "verifier.jwks_url"),
            (
                "[verifier]\njwks_url = \"http://issuer.example/.well-known/jwks.json\"\n",
                "verifier.jwks_url",
            ),
            (
                "[verifier]\njwks_url = \"http://127.0.0.1.attacker.example/jwks\"\n",
                "verifier.jwks_url",
            ),
            (
                "[verifier]\njwks_url = \"http://localhost.attacker.example/jwks\"\n",
                "verifier.jwks_url",
            ),
            (
                "[verifier]\njwks_min_refetch_secs = 0\n",
                "verifier.jwks_min_refetch_secs",
            ),
            (
                "[verifier]\njwks_refresh_secs = 10\n",
                "verifier.jwks_refresh_secs",
            ),
            (
                "[verifier]\ntrusted_proxies = [\"10.0.0.1/8\"]\n",
                "verifier.trusted_proxies[0]",
            ),
            (
                "[[verifier.introspection_clients]]\nid = \"gw\"\nsecret = \"short\"\n",
                "verifier.introspection_clients[0].secret",
            ),
        ] {
            let err = Settings::from_toml(toml).unwrap_err();
            assert!(
                matches!(err, ConfigError::Field { ref field, .. } if field == name),
                "{toml}: {err}"
            );
        }
    }

    #[test]
    fn introspection_secret_is_redacted_in_debug() {
        let config = Config::from_toml(
            "[[verifier.introspection_clients]]\nid = \"gw\"\nsecret = \"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\"\n",
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_category_is_named() {
        let err = Settings::from_toml("[permissions]\ncategories = [\"Runs\"]\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::Field { ref field, .. } if field == "permissions.categories")
        );
    }
}
