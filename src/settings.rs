//! Typed settings: the configuration parsed once, validated, and turned into the values the
//! services use (SPEC §7).
//!
//! [`Config`] is the raw TOML tree, with its defaults, its environment
//! overrides and its field names; it stays at the edge. [`Settings::new`] checks every rule
//! that serde's types cannot express and builds, once, everything that validating it needs
//! anyway (the catalogue, the route policy, the trusted proxies, the revocation settings,
//! durations instead of integer seconds). Start-up and the handlers read only these values;
//! nothing is rebuilt from the raw tree later. Every error names the field at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{AuthMode, Config, ConfigError, IntrospectionClient, Role};
use crate::permissions::{Catalogue, Category};
use crate::policy::RoutePolicy;
use crate::proxies::TrustedProxies;
use crate::revocation::RevocationSettings;
use crate::token::{CacheSettings, MAX_LEEWAY, VerifierSettings};
use crate::usage::UsageSettings;

/// The validated settings of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What tokens must say, and the clock leeway (`[token]`).
    pub token: VerifierSettings,
    /// The key directory (`[keys]`).
    pub keys: KeySettings,
    /// The permission catalogue (`[permissions]`).
    pub catalogue: Catalogue,
    /// The verified-token cache bounds (`[cache]`).
    pub cache: CacheSettings,
    /// The HTTP server (`[server]`).
    pub server: ServerSettings,
    /// The revocation store and mirror (`[revocation]`, with the leeway of `[token]`).
    pub revocation: RevocationSettings,
    /// The issuer service (`[issuer]`).
    pub issuer: IssuerSettings,
    /// The verifier service (`[verifier]`).
    pub verifier: VerifierServiceSettings,
    /// Token usage recording (`[usage]`).
    pub usage: UsageSettings,
    /// The personal tokens page (`[page]`).
    pub page: PageSettings,
}

/// `[page]`: the personal tokens page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSettings {
    /// The public origin (`scheme://host[:port]`, no path); `None` means plain HTTP, origin
    /// taken from the request's `Host`.
    pub public_origin: Option<String>,
    /// Whether the session cookie is `Secure` with the `__Host-` prefix: exactly when the
    /// public origin is `https`.
    pub secure_cookies: bool,
    /// Idle timeout of a session.
    pub session_idle: Duration,
    /// Absolute timeout of a session.
    pub session_absolute: Duration,
}

impl Default for PageSettings {
    fn default() -> Self {
        Self {
            public_origin: None,
            secure_cookies: false,
            session_idle: Duration::from_mins(30),
            session_absolute: Duration::from_hours(8),
        }
    }
}

/// `[keys]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    /// The key directory.
    pub dir: PathBuf,
    /// How often running services reload the trusted keys from it; `None` never.
    pub reload: Option<Duration>,
}

/// Where the HTTP server listens (`server.listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A Unix socket at this path (`unix:PATH`), with its file's permission bits.
    Unix {
        /// The socket file.
        path: PathBuf,
        /// Its mode (`server.unix_socket_mode`).
        mode: u32,
    },
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes on Linux, the last
/// one the terminating NUL).
const MAX_UNIX_PATH: usize = 107;

impl ListenAddress {
    /// Parses `server.listen`: `HOST:PORT`, or `unix:PATH` whose file gets `mode`.
    fn parse(text: &str, mode: u32) -> Result<Self, String> {
        let Some(path) = text.strip_prefix("unix:") else {
            return text.parse::<SocketAddr>().map(Self::Tcp).map_err(|e| {
                format!("`{text}` is not an IP address and port nor unix:PATH ({e})")
            });
        };
        if path.is_empty() {
            return Err("unix: needs the socket's path, as in unix:/run/edgetoken.sock".into());
        }
        if path.len() > MAX_UNIX_PATH || path.contains('\0') {
            return Err(format!(
                "`{path}` is not a usable Unix socket path (at most {MAX_UNIX_PATH} bytes, no NUL)"
            ));
        }
        Ok(Self::Unix {
            path: PathBuf::from(path),
            mode,
        })
    }
}

/// Parses `server.unix_socket_mode`: permission bits in octal (`0660`, `660` or `0o660`).
fn socket_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o777 && !digits.is_empty())
        .ok_or_else(|| format!("`{text}` is not octal permissions like 0660"))
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(address) => address.fmt(f),
            Self::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: ListenAddress,
    /// Services to run unless `--role` says otherwise.
    pub role: Role,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// A request head must arrive whole within this time of its first byte.
    pub header_read_timeout: Duration,
    /// A keep-alive connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Threads that run requests; `None` decides at start ([`crate::runtime::worker_threads`]).
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

/// `[issuer]`.
#[derive(Clone)]
pub struct IssuerSettings {
    /// How people sign in.
    pub auth: AuthMode,
    /// The user directory file; `None` runs the development directory.
    pub directory: Option<PathBuf>,
    /// trusted-header mode: the user id header.
    pub user_header: String,
    /// trusted-header mode: the secret header.
    pub proxy_secret_header: String,
    /// trusted-header mode: the shared secret.
    pub proxy_secret: zeroize::Zeroizing<String>,
    /// Failed sign-ins per user id per minute.
    pub failed_signins_per_minute: u32,
    /// Mints per person per hour.
    pub mints_per_hour: u32,
    /// User and tenant revocations per admin per minute.
    pub tenant_revocations_per_minute: u32,
    /// How long token records outlive their token.
    pub records_retention: Duration,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: Duration,
}

impl std::fmt::Debug for IssuerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSettings")
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
            .field("records_retention", &self.records_retention)
            .field("jwks_max_age", &self.jwks_max_age)
            .finish()
    }
}

/// `[verifier]`.
#[derive(Debug, Clone)]
pub struct VerifierServiceSettings {
    /// Keys from the issuer's JWKS instead of the key directory.
    pub jwks: Option<JwksSettings>,
    /// Peers whose forwarded headers are honoured.
    pub trusted_proxies: TrustedProxies,
    /// The forward-auth route policy (with its `unmatched` rule).
    pub policy: RoutePolicy,
    /// Who may introspect.
    pub introspection_clients: Vec<IntrospectionClient>,
    /// Where the gRPC `ext_authz` `Check` service listens; `None` (the default) runs none.
    pub grpc_listen: Option<SocketAddr>,
}

/// Where and how often to fetch the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// The JWKS URL (`http://` or `https://`).
    pub url: String,
    /// Time between periodic fetches. Default 300 s.
    pub refresh: Duration,
    /// Least time between two fetches when refetches are requested. Default 30 s. Before the
    /// first success, fetches are retried every `min(min_refetch, 2 s)`.
    pub min_refetch: Duration,
    /// Longest wait for one fetch, connection included. Default 5 s.
    pub timeout: Duration,
    /// Largest document accepted, in bytes. Default 64 KiB.
    pub max_bytes: usize,
}

impl JwksSettings {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refresh: Duration::from_mins(5),
            min_refetch: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_bytes: 64 * 1024,
        }
    }
}

impl Settings {
    /// Loads the configuration (see [`Config::load`]) and builds the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, variable or field at fault.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::new(&Config::load(file, env)?)
    }

    /// Parses TOML text (no environment) and builds the settings; for tests and tools.
    ///
    /// # Errors
    ///
    /// As [`Settings::load`].
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::new(&Config::from_toml(text)?)
    }

    /// Checks every rule of `config` that serde's types cannot express, and builds the typed
    /// settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Field`] for the first broken rule.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let t = &config.token;
        if t.leeway_secs > MAX_LEEWAY.as_secs() {
            return Err(field("token.leeway_secs", "must be at most 300 seconds"));
        }
        if t.issuer.is_empty() {
            return Err(field("token.issuer", "must not be empty"));
        }
        if t.audience.is_empty() {
            return Err(field("token.audience", "must not be empty"));
        }
        let token = VerifierSettings {
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            leeway: Duration::from_secs(t.leeway_secs),
        };
        let catalogue = catalogue(config)?;
        let server = server(config)?;
        let revocation = revocation(config);
        revocation
            .validate()
            .map_err(|e| field("revocation", e.to_string()))?;
        let issuer = issuer(config)?;
        let verifier = verifier(config, &catalogue)?;
        if let ListenAddress::Tcp(listen) = server.listen
            && verifier.grpc_listen == Some(listen)
        {
            return Err(field(
                "verifier.grpc_listen",
                "must differ from server.listen: gRPC ext_authz has its own listener",
            ));
        }
        let usage = usage(config)?;
        let page = page(config)?;
        Ok(Self {
            token,
            keys: KeySettings {
                dir: config.keys.dir.clone(),
                reload: (config.keys.reload_secs > 0)
                    .then(|| Duration::from_secs(config.keys.reload_secs)),
            },
            catalogue,
            cache: CacheSettings {
                max_entries: config.cache.max_entries,
                max_token_bytes: config.cache.max_token_bytes,
            },
            server,
            revocation,
            issuer,
            verifier,
            usage,
            page,
        })
    }
}

fn usage(config: &Config) -> Result<UsageSettings, ConfigError> {
    let u = &config.usage;
    if !(1..=3600).contains(&u.flush_secs) {
        return Err(field("usage.flush_secs", "must be 1 to 3600 seconds"));
    }
    if u.max_entries == 0 {
        return Err(field("usage.max_entries", "must be above 0"));
    }
    Ok(UsageSettings {
        enabled: u.enabled,
        record_address: u.record_address,
        flush: Duration::from_secs(u.flush_secs),
        max_entries: u.max_entries,
    })
}

fn page(config: &Config) -> Result<PageSettings, ConfigError> {
    let p = &config.page;
    let public_origin = if p.public_origin.is_empty() {
        None
    } else {
        let origin = p.public_origin.trim_end_matches('/');
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let valid = rest.is_some_and(|host| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
        if !valid {
            return Err(field(
                "page.public_origin",
                "must be an origin like https://tokens.example.com (scheme, host, optional \
                 port; no path)",
            ));
        }
        Some(origin.to_ascii_lowercase())
    };
    if p.session_idle_secs == 0 || p.session_absolute_secs == 0 {
        return Err(field(
            "page",
            "session_idle_secs and session_absolute_secs must be above 0",
        ));
    }
    if p.session_idle_secs > p.session_absolute_secs {
        return Err(field(
            "page.session_idle_secs",
            "must be at most page.session_absolute_secs",
        ));
    }
    Ok(PageSettings {
        secure_cookies: public_origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://")),
        public_origin,
        session_idle: Duration::from_secs(p.session_idle_secs),
        session_absolute: Duration::from_secs(p.session_absolute_secs),
    })
}

fn field(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: name.to_owned(),
        message: message.into(),
    }
}

fn catalogue(config: &Config) -> Result<Catalogue, ConfigError> {
    let name = "permissions.categories";
    let categories = config
        .permissions
        .categories
        .iter()
        .map(|c| Category::new(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| field(name, e.to_string()))?;
    Catalogue::new(categories).map_err(|e| field(name, e.to_string()))
}

fn server(config: &Config) -> Result<ServerSettings, ConfigError> {
    let s = &config.server;
    let mode = socket_mode(&s.unix_socket_mode).map_err(|e| field("server.unix_socket_mode", e))?;
    let listen = ListenAddress::parse(&s.listen, mode).map_err(|e| field("server.listen", e))?;
    for (name, is_zero) in [
        ("server.max_body_bytes", s.max_body_bytes == 0),
        ("server.max_connections", s.max_connections == 0),
        (
            "server.header_read_timeout_secs",
            s.header_read_timeout_secs == 0,
        ),
        ("server.idle_timeout_secs", s.idle_timeout_secs == 0),
    ] {
        if is_zero {
            return Err(field(name, "must be above 0"));
        }
    }
    if s.worker_threads > MAX_WORKER_THREADS {
        return Err(field(
            "server.worker_threads",
            format!("must be at most {MAX_WORKER_THREADS} (0 picks one per CPU)"),
        ));
    }
    Ok(ServerSettings {
        listen,
        role: s.role,
        max_body_bytes: s.max_body_bytes,
        header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        max_connections: s.max_connections,
        worker_threads: std::num::NonZeroUsize::new(s.worker_threads),
    })
}

/// More request threads than this is a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;

fn revocation(config: &Config) -> RevocationSettings {
    let r = &config.revocation;
    // Any sentinel field set asks for Sentinel; `validate` names what is missing.
    let sentinel =
        (!r.sentinel_master_name.is_empty() || !r.sentinel_addresses.is_empty()).then(|| {
            crate::redis_target::SentinelSettings {
                master_name: r.sentinel_master_name.clone(),
                addresses: r.sentinel_addresses.clone(),
                password: (!r.sentinel_password.is_empty()).then(|| r.sentinel_password.clone()),
            }
        });
    // A password alone asks for nothing; `cluster_nodes` does.
    let cluster = (!r.cluster_nodes.is_empty()).then(|| crate::redis_target::ClusterSettings {
        nodes: r.cluster_nodes.clone(),
        password: (!r.cluster_password.is_empty()).then(|| r.cluster_password.clone()),
    });
    RevocationSettings {
        redis_url: (!r.redis_url.is_empty()).then(|| r.redis_url.clone()),
        sentinel,
        cluster,
        min_replicas_acked: r.min_replicas_acked,
        wait_timeout: Duration::from_millis(r.wait_timeout_ms),
        require_durability: r.require_durability,
        key_prefix: r.key_prefix.clone(),
        max_staleness: Duration::from_secs(r.max_staleness_secs),
        on_stale: r.on_stale,
        heartbeat: Duration::from_millis(r.heartbeat_ms),
        leeway: Duration::from_secs(config.token.leeway_secs),
        command_timeout: Duration::from_millis(r.command_timeout_ms),
        bulk_timeout: Duration::from_millis(r.bulk_timeout_ms),
        barrier_timeout: Duration::from_millis(r.barrier_timeout_ms),
        read_from_replicas: r.read_from_replicas,
        ..RevocationSettings::default()
    }
}

fn issuer(config: &Config) -> Result<IssuerSettings, ConfigError> {
    let i = &config.issuer;
    if i.auth == AuthMode::TrustedHeader {
        if i.proxy_secret.len() < 32 {
            return Err(field(
                "issuer.proxy_secret",
                "trusted-header mode needs a proxy secret of at least 32 characters",
            ));
        }
        if i.directory.as_os_str().is_empty() {
            return Err(field(
                "issuer.directory",
                "trusted-header mode needs a directory file of users and permissions",
            ));
        }
        for (name, value) in [
            ("issuer.user_header", &i.user_header),
            ("issuer.proxy_secret_header", &i.proxy_secret_header),
        ] {
            check_header_name(value).map_err(|reason| field(name, reason))?;
        }
    }
    if i.failed_signins_per_minute == 0
        || i.mints_per_hour == 0
        || i.tenant_revocations_per_minute == 0
    {
        return Err(field(
            "issuer",
            "failed_signins_per_minute, mints_per_hour and tenant_revocations_per_minute must \
             be above 0",
        ));
    }
    Ok(IssuerSettings {
        auth: i.auth,
        directory: (!i.directory.as_os_str().is_empty()).then(|| i.directory.clone()),
        user_header: i.user_header.clone(),
        proxy_secret_header: i.proxy_secret_header.clone(),
        proxy_secret: zeroize::Zeroizing::new(i.proxy_secret.clone()),
        failed_signins_per_minute: i.failed_signins_per_minute,
        mints_per_hour: i.mints_per_hour,
        tenant_revocations_per_minute: i.tenant_revocations_per_minute,
        records_retention: Duration::from_secs(i.records_retention_secs),
        jwks_max_age: Duration::from_secs(i.jwks_max_age_secs),
    })
}

/// An HTTP header name: 1-64 of `A-Z a-z 0-9 -` (checked here so the core needs no HTTP
/// types).
fn check_header_name(name: &str) -> Result<(), &'static str> {
    let valid = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err("must be a header name of 1-64 letters, digits and dashes")
    }
}

fn verifier(
    config: &Config,
    catalogue: &Catalogue,
) -> Result<VerifierServiceSettings, ConfigError> {
    let v = &config.verifier;
    let jwks = if v.jwks_url.is_empty() {
        None
    } else {
        check_jwks_url(&v.jwks_url, v.allow_insecure_jwks)?;
        Some(JwksSettings {
            url: v.jwks_url.clone(),
            refresh: Duration::from_secs(v.jwks_refresh_secs),
            min_refetch: Duration::from_secs(v.jwks_min_refetch_secs),
            timeout: Duration::from_millis(v.jwks_timeout_ms),
            max_bytes: v.jwks_max_bytes,
        })
    };
    if v.jwks_min_refetch_secs == 0 {
        return Err(field("verifier.jwks_min_refetch_secs", "must be above 0"));
    }
    if v.jwks_refresh_secs < v.jwks_min_refetch_secs {
        return Err(field(
            "verifier.jwks_refresh_secs",
            "must be at least verifier.jwks_min_refetch_secs",
        ));
    }
    if !(100..=60_000).contains(&v.jwks_timeout_ms) {
        return Err(field(
            "verifier.jwks_timeout_ms",
            "must be between 100 and 60000",
        ));
    }
    if !(1024..=1024 * 1024).contains(&v.jwks_max_bytes) {
        return Err(field(
            "verifier.jwks_max_bytes",
            "must be between 1024 and 1048576",
        ));
    }
    let trusted_proxies = TrustedProxies::parse(&v.trusted_proxies).map_err(|e| {
        field(
            &format!("verifier.trusted_proxies[{}]", e.index),
            format!(
                "`{}` is not an IP address or CIDR block ({})",
                e.entry, e.reason
            ),
        )
    })?;
    let policy = RoutePolicy::new(&v.routes, v.unmatched, catalogue).map_err(|e| {
        field(
            &format!("verifier.routes[{}].{}", e.index, e.field),
            e.message,
        )
    })?;
    let mut ids = std::collections::BTreeSet::new();
    for (index, client) in v.introspection_clients.iter().enumerate() {
        let name = |part: &str| format!("verifier.introspection_clients[{index}].{part}");
        let id_ok = (1..=64).contains(&client.id.len())
            && client
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(field(&name("id"), "must be 1-64 of A-Z a-z 0-9 - _ ."));
        }
        if !ids.insert(client.id.as_str()) {
            return Err(field(&name("id"), "duplicate client id"));
        }
        if client.secret.chars().count() < 32 {
            return Err(field(&name("secret"), "must be at least 32 characters"));
        }
    }
    let grpc_listen = if v.grpc_listen.is_empty() {
        None
    } else {
        Some(v.grpc_listen.parse::<SocketAddr>().map_err(|e| {
            field(
                "verifier.grpc_listen",
                format!("`{}` is not an IP address and port ({e})", v.grpc_listen),
            )
        })?)
    };
    Ok(VerifierServiceSettings {
        jwks,
        trusted_proxies,
        policy,
        introspection_clients: v.introspection_clients.clone(),
        grpc_listen,
    })
}

fn check_jwks_url(url: &str, allow_insecure: bool) -> Result<(), ConfigError> {
    let name = "verifier.jwks_url";
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
        return Err(field(
            name,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        if !is_loopback_host(host_port) && !allow_insecure {
            return Err(field(
                name,
                "plain http:// lets anyone on the path choose the trusted keys: use https://, \
                 or set verifier.allow_insecure_jwks = true for a network you control",
            ));
        }
    }
    Ok(())
}

/// Whether `host_port` (`host`, `host:port`, `[v6]` or `[v6]:port`) names the loopback
/// interface: `localhost` exactly, or a loopback IP address. Names are compared whole, so
/// `localhost.example` or `127.0.0.1.example` are not loopback.
fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_address_or_a_unix_socket_path() {
        let listen = |toml: &str| Settings::from_toml(toml).map(|s| s.server.listen);
        assert_eq!(
            listen("").unwrap(),
            ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            listen("[server]\nlisten = \"unix:/run/edgetoken/v.sock\"\n").unwrap(),
            ListenAddress::Unix {
                path: "/run/edgetoken/v.sock".into(),
                mode: 0o660
            }
        );
        let unix = listen("[server]\nlisten = \"unix:v.sock\"\nunix_socket_mode = \"0o600\"\n");
        assert_eq!(
            unix.unwrap(),
            ListenAddress::Unix {
                path: "v.sock".into(),
                mode: 0o600
            }
        );
        assert_eq!(
            ListenAddress::Unix {
                path: "/s".into(),
                mode: 0
            }
            .to_string(),
            "unix:/s"
        );
        for (bad, field, why) in [
            (
                "listen = \"unix:\"",
                "server.listen",
                "needs the socket's path",
            ),
            (
                "listen = \"localhost:8080\"",
                "server.listen",
                "nor unix:PATH",
            ),
            (
                "unix_socket_mode = \"0999\"",
                "server.unix_socket_mode",
                "not octal",
            ),
            (
                "unix_socket_mode = \"1777\"",
                "server.unix_socket_mode",
                "not octal",
            ),
            (
                "unix_socket_mode = \"\"",
                "server.unix_socket_mode",
                "not octal",
            ),
        ] {
            let error = listen(&format!("[server]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(field) && error.contains(why),
                "{bad}: {error}"
            );
        }
        let long = format!("[server]\nlisten = \"unix:/{}\"\n", "a".repeat(107));
        let error = listen(&long).unwrap_err().to_string();
        assert!(error.contains("at most 107 bytes"), "{error}");
    }

    #[test]
    fn worker_threads_is_automatic_by_default_and_bounded() {
        let threads = |toml: &str| Settings::from_toml(toml).map(|s| s.server.worker_threads);
        assert_eq!(threads("").unwrap(), None);
        assert_eq!(threads("[server]\nworker_threads = 0\n").unwrap(), None);
        assert_eq!(
            threads("[server]\nworker_threads = 1\n").unwrap(),
            std::num::NonZeroUsize::new(1)
        );
        assert_eq!(
            threads("[server]\nworker_threads = 1024\n").unwrap(),
            std::num::NonZeroUsize::new(1024)
        );
        let error = threads("[server]\nworker_threads = 1025\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.worker_threads") && error.contains("at most 1024"),
            "{error}"
        );
        let error = threads("[server]\nworker_threads = -1\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.worker_threads"), "{error}");
    }

    #[test]
    fn grpc_listen_is_off_by_default_and_parsed_when_set() {
        assert_eq!(Settings::from_toml("").unwrap().verifier.grpc_listen, None);
        let set = Settings::from_toml("[verifier]\ngrpc_listen = \"127.0.0.1:9191\"\n").unwrap();
        assert_eq!(
            set.verifier.grpc_listen,
            Some("127.0.0.1:9191".parse().unwrap())
        );
        for bad in ["9191", "localhost:9191", "127.0.0.1", "127.0.0.1:8080"] {
            let text = format!("[verifier]\ngrpc_listen = \"{bad}\"\n");
            let Err(ConfigError::Field { field, .. }) = Settings::from_toml(&text) else {
                panic!("{bad} accepted");
            };
            assert_eq!(field, "verifier.grpc_listen", "{bad}");
        }
    }

    #[test]
    fn sentinel_is_read_from_the_file_and_the_environment_and_excludes_redis_url() {
        let settings = Settings::load(
            Some(Path::new("/dev/null")),
            [
                ("EDGETOKEN_REVOCATION__SENTINEL_MASTER_NAME", "edgetoken"),
                (
                    "EDGETOKEN_REVOCATION__SENTINEL_ADDRESSES",
                    r#"["10.0.0.1:26379","10.0.0.2:26379"]"#,
                ),
                ("EDGETOKEN_REVOCATION__SENTINEL_PASSWORD", "hunter2"),
                ("EDGETOKEN_REVOCATION__MIN_REPLICAS_ACKED", "2"),
                ("EDGETOKEN_REVOCATION__REQUIRE_DURABILITY", "fsync"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .unwrap();
        let r = &settings.revocation;
        let sentinel = r.sentinel.as_ref().unwrap();
        assert_eq!(sentinel.master_name, "edgetoken");
        assert_eq!(sentinel.addresses, ["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert_eq!(sentinel.password.as_deref(), Some("hunter2"));
        assert_eq!(r.min_replicas_acked, Some(2));
        assert_eq!(
            r.require_durability,
            crate::revocation::DurabilityLevel::Fsync
        );
        assert!(r.uses_redis());
        assert!(!format!("{settings:?}").contains("hunter2"));

        let both = "[revocation]\nredis_url = \"redis://cache:6379\"\n\
                    sentinel_master_name = \"edgetoken\"\n\
                    sentinel_addresses = [\"10.0.0.1:26379\"]\n";
        let Err(ConfigError::Field { field, message }) = Settings::from_toml(both) else {
            panic!("a URL and Sentinel together accepted");
        };
        assert_eq!(field, "revocation");
        assert!(message.contains("not both"), "{message}");
        let half = "[revocation]\nsentinel_master_name = \"edgetoken\"\n";
        assert!(Settings::from_toml(half).is_err());
    }

    #[test]
    fn cluster_is_read_from_the_environment_and_excludes_a_url_and_sentinel() {
        let settings = Settings::load(
            Some(Path::new("/dev/null")),
            [
                (
                    "EDGETOKEN_REVOCATION__CLUSTER_NODES",
                    r#"["10.0.0.1:7000","10.0.0.2:7000"]"#,
                ),
                ("EDGETOKEN_REVOCATION__CLUSTER_PASSWORD", "hunter2"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .unwrap();
        let r = &settings.revocation;
        let cluster = r.cluster.as_ref().unwrap();
        assert_eq!(cluster.nodes, ["10.0.0.1:7000", "10.0.0.2:7000"]);
        assert_eq!(cluster.password.as_deref(), Some("hunter2"));
        assert!(r.uses_redis());
        assert!(!format!("{settings:?}").contains("hunter2"));

        for other in [
            "redis_url = \"redis://cache:6379\"\n",
            "sentinel_master_name = \"edgetoken\"\nsentinel_addresses = [\"10.0.0.1:26379\"]\n",
        ] {
            let text = format!("[revocation]\n{other}cluster_nodes = [\"10.0.0.1:7000\"]\n");
            let Err(ConfigError::Field { field, message }) = Settings::from_toml(&text) else {
                panic!("cluster with {other} accepted");
            };
            assert_eq!(field, "revocation");
            assert!(message.contains("not several"), "{message}");
        }
        let bad = "[revocation]\ncluster_nodes = [\"10.0.0.1:7000\", \"redis://10.0.0.2\"]\n";
        let Err(ConfigError::Field { message, .. }) = Settings::from_toml(bad) else {
            panic!("a URL as a seed accepted");
        };
        assert!(message.contains("not host:port"), "{message}");
    }

    #[test]
    fn read_from_replicas_is_off_by_default_and_needs_sentinel_or_cluster() {
        assert!(
            !Settings::from_toml("")
                .unwrap()
                .revocation
                .read_from_replicas
        );
        let settings = Settings::load(
            Some(Path::new("/dev/null")),
            [
                ("EDGETOKEN_REVOCATION__SENTINEL_MASTER_NAME", "edgetoken"),
                (
                    "EDGETOKEN_REVOCATION__SENTINEL_ADDRESSES",
                    r#"["10.0.0.1:26379"]"#,
                ),
                ("EDGETOKEN_REVOCATION__READ_FROM_REPLICAS", "true"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .unwrap();
        assert!(settings.revocation.read_from_replicas);
        let cluster =
            "[revocation]\ncluster_nodes = [\"10.0.0.1:7000\"]\nread_from_replicas = true\n";
        assert!(
            Settings::from_toml(cluster)
                .unwrap()
                .revocation
                .read_from_replicas
        );
        // A URL names one node: there are no replicas to find, so the setting is refused.
        for revocation in ["redis_url = \"redis://cache:6379\"\n", ""] {
            let text = format!("[revocation]\n{revocation}read_from_replicas = true\n");
            let Err(ConfigError::Field { field, message }) = Settings::from_toml(&text) else {
                panic!("read_from_replicas accepted without replicas to find: {revocation}");
            };
            assert_eq!(field, "revocation", "{message}");
            assert!(message.contains("needs Sentinel"), "{message}");
        }
    }

    #[test]
    fn loopback_hosts_are_recognised_whole() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "localhost:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "127.0.0.1.example",
            "localhost.example",
            "10.0.0.1",
            "[::2]",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
