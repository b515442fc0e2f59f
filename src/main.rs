//! The `edgetoken` command line (SPEC §7): key management, offline mint and verify, and
//! password hashing. Each subcommand parses its arguments, calls one library function and
//! prints the result; exit status 0 on success, 1 when a token is rejected, 2 on any error.

use std::fmt::Write as _;
use std::io::{self, BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use edgetoken::clock::Clock as _;
use edgetoken::clock::SystemClock;
use edgetoken::config::{DEFAULT_CONFIG_FILE, ENV_CONFIG_FILE, Role};
use edgetoken::http::Listener;
use edgetoken::http::unix_socket::SocketFile;
use edgetoken::issuance;
use edgetoken::keys::{KeyDir, KeyId};
use edgetoken::revocation::{
    MemoryRevocations, Propagation, RedisStore, Revocation, RevocationStore as _,
};
use edgetoken::settings::{ListenAddress, Settings};
use edgetoken::token::{
    Issuer, Lifetime, MintRequest, Requirement, Subject, TenantId, TokenId, Verifier,
};

#[derive(Debug, Parser)]
#[command(
    name = "edgetoken",
    version,
    about = "Short-lived Ed25519 access tokens, verified at the edge"
)]
struct Cli {
    /// Configuration file (default: edgetoken.toml in the working directory, if present).
    #[arg(long, global = true, env = ENV_CONFIG_FILE)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services. Without a configuration file: everything in one process on
    /// 127.0.0.1:8080, in-process revocation store, a development key and a demo user.
    Serve {
        /// Which services to run (default: `server.role`, which defaults to `all`).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
    /// Generate an Ed25519 key pair in the key directory (private key mode 0600).
    Keygen {
        /// Key directory (default: `keys.dir` from the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Make the new key the signing key even if another one is active.
        #[arg(long)]
        activate: bool,
    },
    /// Inspect and rotate keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Mint a token offline, signing with the active key of the key directory.
    Mint {
        /// Tenant the token opens.
        #[arg(long)]
        tenant: String,
        /// User the token acts for.
        #[arg(long)]
        subject: String,
        /// Permission to grant (repeatable): `CATEGORY:read|write`, `read-all`, `read-write-all`.
        #[arg(long = "permission", short = 'p', required = true)]
        permissions: Vec<String>,
        /// Lifetime: 1h, 4h, 8h, 12h or max.
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Key directory (default: `keys.dir` from the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Verify a token offline (signature, format, time, issuer, audience, requirement).
    /// Offline verification knows no revocations. Reads the token from standard input unless
    /// given as an argument (arguments are visible to other users in `ps`).
    Verify {
        /// The token; `-` or absent reads standard input.
        token: Option<String>,
        /// Require this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Require this permission.
        #[arg(long)]
        permission: Option<String>,
        /// Key directory (default: `keys.dir` from the configuration).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Read a password from standard input and print its argon2id hash (PHC string) for the
    /// user directory.
    HashPassword,
    /// Revoke tokens through the Redis store (`revocation.redis_url`): one token by id, every
    /// token of a user in a tenant, or every token of a tenant.
    Revoke {
        /// One token, by id (`jti`).
        #[arg(long, conflicts_with_all = ["user", "all"])]
        token_id: Option<String>,
        /// With --token-id: the token's `exp` (Unix seconds), so the entry is pruned once the
        /// token is dead. Default: now + 12 h, the longest any token can live.
        #[arg(long, requires = "token_id")]
        expires_at: Option<i64>,
        /// The tenant (with --user or --all).
        #[arg(long, required_unless_present = "token_id")]
        tenant: Option<String>,
        /// Every token of this user in --tenant.
        #[arg(long, requires = "tenant", conflicts_with = "all")]
        user: Option<String>,
        /// Every token of --tenant.
        #[arg(long, requires = "tenant")]
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Issuer,
    Verifier,
    All,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Issuer => Role::Issuer,
            RoleArg::Verifier => Role::Verifier,
            RoleArg::All => Role::All,
        }
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the keys: kid, whether the private key is here, which one signs.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate a new key and make it the signing key; older keys stay trusted for verification.
    Rotate {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Make KID the signing key (its private key must be in the directory). A running issuer
    /// switches to it at its next key reload (`keys.reload_secs`).
    Activate {
        /// The key id. Key ids are base64url and may begin with `-`, which is taken as the id,
        /// not as an option.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the JWKS (public keys only) of every trusted key.
    Jwks {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Revoke every token signed by KID (through the Redis store, so every verifier rejects
    /// them at once) and retire the key's files to `keys/retired/`. The active key cannot be
    /// revoked: rotate first.
    Revoke {
        /// The key id (may begin with `-`, as for `activate`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A token was checked and refused: exit 1, not 2.
#[derive(Debug)]
struct Rejected;

fn main() -> ExitCode {
    edgetoken::telemetry::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Rejected>() => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("token rejected")
    }
}

impl std::error::Error for Rejected {}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config =
        Settings::load(cli.config.as_deref(), std::env::vars()).context("invalid configuration")?;
    let key_dir =
        |dir: Option<PathBuf>| KeyDir::new(dir.unwrap_or_else(|| config.keys.dir.clone()));
    match cli.command {
        Command::Keygen { dir, activate } => {
            let keys = key_dir(dir);
            let key = keys.generate(activate)?;
            let active = keys.active_kid()?.as_deref() == Some(key.kid().as_str());
            print(&format!(
                "{}{}",
                key.kid(),
                if active { " (active)" } else { "" }
            ))
        }
        Command::Keys { command } => keys(&config, command, key_dir),
        Command::Revoke {
            token_id,
            expires_at,
            tenant,
            user,
            all,
        } => revoke_tokens(&config, token_id, expires_at, tenant, user, all),
        Command::Serve { role } => {
            let development = cli.config.is_none() && !Path::new(DEFAULT_CONFIG_FILE).exists();
            let role = role.map_or(config.server.role, Role::from);
            let runtime = serve_runtime(config.server.worker_threads)?;
            runtime.block_on(serve(config.clone(), role, development))
        }
        Command::Mint {
            tenant,
            subject,
            permissions,
            duration,
            dir,
        } => {
            let request = MintRequest {
                subject: Subject::new(&subject).context("--subject")?,
                tenant: TenantId::new(&tenant).context("--tenant")?,
                scope: config
                    .catalogue
                    .expand(&permissions)
                    .context("--permission")?,
                lifetime: duration.parse::<Lifetime>().context("--duration")?,
            };
            let key = key_dir(dir).load_signing()?;
            let issuer = Issuer::new(
                key,
                config.token.issuer.clone(),
                config.token.audience.clone(),
                Arc::new(SystemClock),
            );
            let minted = issuer.mint(&request)?;
            print(minted.token.expose())
        }
        Command::Verify {
            token,
            tenant,
            permission,
            dir,
        } => {
            let token = match token.as_deref() {
                None | Some("-") => read_token_from_stdin()?,
                Some(token) => token.to_owned(),
            };
            let mut requirement = Requirement::any();
            if let Some(tenant) = tenant {
                requirement = requirement.tenant(TenantId::new(&tenant).context("--tenant")?);
            }
            if let Some(permission) = permission {
                requirement = requirement.permission(permission.parse().context("--permission")?);
            }
            let verifier = Verifier::new(
                config.token.clone(),
                key_dir(dir).load_ring()?,
                Arc::new(MemoryRevocations::new()),
                Arc::new(SystemClock),
            )?;
            match verifier.verify(&token, &requirement) {
                Ok(claims) => print(&serde_json::to_string_pretty(&claims.to_json())?),
                Err(rejection) => {
                    let _ = writeln!(io::stderr(), "rejected: {} ({rejection})", rejection.code());
                    Err(Rejected.into())
                }
            }
        }
        Command::HashPassword => {
            let mut password = zeroize::Zeroizing::new(String::new());
            io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            let trimmed = password.trim_end_matches(['\r', '\n']);
            if trimmed.is_empty() {
                bail!("empty password on standard input");
            }
            print(&edgetoken::directory::hash_password(trimmed)?)
        }
    }
}

/// Listens on `listen`: the listener, a Unix socket's file (removed when dropped), and the
/// address as the banner shows it.
async fn bind(listen: &ListenAddress) -> anyhow::Result<(Listener, Option<SocketFile>, String)> {
    match listen {
        ListenAddress::Tcp(tcp) => {
            let listener = tokio::net::TcpListener::bind(tcp)
                .await
                .with_context(|| format!("could not listen on {listen}"))?;
            let address = listener
                .local_addr()
                .context("reading the listen address")?;
            Ok((Listener::from(listener), None, format!("http://{address}")))
        }
        ListenAddress::Unix { path, mode } => {
            let (listener, file) = edgetoken::http::unix_socket::bind(path, *mode)
                .with_context(|| format!("could not listen on {listen}"))?;
            Ok((Listener::from(listener), Some(file), listen.to_string()))
        }
    }
}

/// The runtime `serve` runs on: `server.worker_threads` request threads
/// ([`edgetoken::runtime`]).
fn serve_runtime(
    worker_threads: Option<std::num::NonZeroUsize>,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = edgetoken::runtime::worker_threads(worker_threads)
        .map_err(|e| anyhow::anyhow!("server.worker_threads is 0 (automatic): {e}"))?;
    let runtime = edgetoken::runtime::build(threads).context("starting the async runtime")?;
    tracing::info!(
        threads,
        runtime = edgetoken::runtime::flavor(&runtime),
        "request threads"
    );
    Ok(runtime)
}

async fn serve(config: Settings, role: Role, development: bool) -> anyhow::Result<()> {
    // Refused, not ignored: Envoy would fail every request closed with no hint why.
    #[cfg(not(feature = "grpc"))]
    if role.has_verifier() && config.verifier.grpc_listen.is_some() {
        bail!("verifier.grpc_listen is set, but this binary was built without the `grpc` feature");
    }
    let listen = config.server.listen.clone();
    let limits =
        edgetoken::http::ServerLimits::from_settings(&config.server).fitted_to_descriptors();
    let started = edgetoken::http::boot::start(config, role, development, Arc::new(SystemClock))
        .await
        .context("could not start")?;
    // `_socket_file` removes a Unix socket's file when the server has stopped.
    let (listener, _socket_file, address) = bind(&listen).await?;
    // The banner goes to standard output, not the log: in development it holds the demo
    // password, which must never reach a log file.
    let mut banner = format!(
        "edgetoken {} serving {role} on {address}",
        env!("CARGO_PKG_VERSION")
    );
    for line in &started.banner {
        let _ = write!(banner, "\n  {line}");
    }
    if role.has_issuer() {
        let _ = write!(
            banner,
            "\n  tokens page: {} (open it in a browser and sign in{})",
            if matches!(listen, ListenAddress::Unix { .. }) {
                format!("/ through the proxy in front of {address}")
            } else {
                format!("{address}/")
            },
            if development {
                " as the demo user above"
            } else {
                ""
            }
        );
    }
    #[cfg(feature = "grpc")]
    let grpc = match started.services.settings.verifier.grpc_listen {
        Some(grpc_listen) if role.has_verifier() => {
            let grpc_listener = tokio::net::TcpListener::bind(&grpc_listen)
                .await
                .with_context(|| {
                    format!("could not listen on {grpc_listen} (verifier.grpc_listen)")
                })?;
            let grpc_address = grpc_listener
                .local_addr()
                .context("reading the gRPC listen address")?;
            let _ = write!(
                banner,
                "\n  gRPC ext_authz (envoy.service.auth.v3.Authorization/Check) on {grpc_address}: \
                 for Envoy only, never reachable by clients"
            );
            Some((grpc_listener, grpc_address))
        }
        _ => None,
    };
    print(&banner)?;
    tracing::info!(%address, %role, "listening");
    #[cfg(feature = "grpc")]
    let grpc = grpc.map(|(grpc_listener, grpc_address)| {
        tracing::info!(address = %grpc_address, "gRPC ext_authz listening");
        let services = Arc::clone(&started.services);
        tokio::spawn(edgetoken::http::grpc::serve_grpc(
            grpc_listener,
            services,
            limits,
            shutdown_signal(),
        ))
    });
    let app = edgetoken::http::app(Arc::clone(&started.services));
    edgetoken::http::serve(listener, app, limits, shutdown_signal())
        .await
        .context("server failed")?;
    #[cfg(feature = "grpc")]
    if let Some(grpc) = grpc {
        grpc.await
            .context("gRPC ext_authz task failed")?
            .context("gRPC ext_authz server failed")?;
    }
    if let Some(jwks) = &started.services.jwks {
        jwks.shutdown().await;
    }
    if let Some(reload) = &started.key_reload {
        reload.abort();
    }
    // The last interval's token usage, so a clean stop loses none.
    if let Some(usage) = started
        .services
        .verifier_api
        .as_ref()
        .and_then(|api| api.decider.usage())
    {
        usage.flush_now().await;
    }
    started.revocation.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Commits one revocation through the Redis store, waits for Redis to acknowledge it and
/// then at the barrier for the verifiers to confirm it; returns how that went.
fn commit_revocation(config: &Settings, revocation: Revocation) -> anyhow::Result<Propagation> {
    let settings = &config.revocation;
    if !settings.uses_redis() {
        bail!(
            "revoking from the command line needs revocation.redis_url (or Sentinel, or Cluster): \
             without a shared store no running verifier would learn of it"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let propagation = runtime.block_on(async {
        let store = RedisStore::open(settings).await?;
        store.revoke(revocation).await
    })?;
    Ok(propagation)
}

/// What the CLI says after a revocation: whether every verifier confirmed it.
fn barrier_report(propagation: &Propagation) -> String {
    if propagation.is_confirmed() {
        format!(
            "confirmed by every verifier ({} registered)",
            propagation.confirmed
        )
    } else {
        format!(
            "NOT confirmed by {} verifier(s) within the barrier timeout ({} confirmed); each \
             refuses the token within {:.1} s at the latest",
            propagation.lagging,
            propagation.confirmed,
            propagation.max_staleness.as_secs_f64()
        )
    }
}

fn revoke_tokens(
    config: &Settings,
    token_id: Option<String>,
    expires_at: Option<i64>,
    tenant: Option<String>,
    user: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let (now, leeway) = (SystemClock.unix_now(), config.token.leeway);
    let (revocation, what) = match (token_id, tenant, user, all) {
        (Some(jti), None, None, false) => {
            let jti = TokenId::new(&jti).context("--token-id")?;
            let expires_at = expires_at.unwrap_or(now + edgetoken::token::MAX_LIFETIME_SECS + 300);
            let what = format!("token {jti}");
            (Revocation::Token { jti, expires_at }, what)
        }
        (None, Some(tenant), Some(user), false) => {
            let tenant = TenantId::new(&tenant).context("--tenant")?;
            let user = Subject::new(&user).context("--user")?;
            let what = format!("every token of {user} in {tenant} issued until now");
            (issuance::revoke_user(tenant, user, now, leeway), what)
        }
        (None, Some(tenant), None, true) => {
            let tenant = TenantId::new(&tenant).context("--tenant")?;
            let what = format!("every token of tenant {tenant} issued until now");
            (issuance::revoke_tenant(tenant, now, leeway), what)
        }
        _ => bail!("give --token-id, or --tenant with --user or --all"),
    };
    let propagation = commit_revocation(config, revocation)?;
    print(&format!("revoked {what}; {}", barrier_report(&propagation)))
}

fn keys(
    config: &Settings,
    command: KeysCommand,
    key_dir: impl Fn(Option<PathBuf>) -> KeyDir,
) -> anyhow::Result<()> {
    match command {
        KeysCommand::List { dir, json } => {
            let list = key_dir(dir).list()?;
            if json {
                return print(&serde_json::to_string_pretty(&list)?);
            }
            let mut text =
                String::from("KID                                          PRIVATE  ACTIVE");
            for key in list {
                let _ = write!(
                    text,
                    "\n{}  {:<7}  {}",
                    key.kid,
                    if key.has_private { "yes" } else { "no" },
                    if key.active { "yes" } else { "" }
                );
            }
            print(&text)
        }
        KeysCommand::Rotate { dir } => {
            let key = key_dir(dir).generate(true)?;
            print(&format!("{} (active)", key.kid()))
        }
        KeysCommand::Activate { kid, dir } => {
            key_dir(dir).activate(&kid)?;
            print(&format!("{kid} (active)"))
        }
        KeysCommand::Revoke { kid, dir } => {
            let keys = key_dir(dir);
            if keys.active_kid()?.as_deref() == Some(kid.as_str()) {
                bail!("{kid} is the active signing key; run `edgetoken keys rotate` first");
            }
            if !keys.list()?.iter().any(|k| k.kid == kid) {
                bail!("no key {kid} in {}", keys.path().display());
            }
            let revocation = Revocation::Key {
                kid: KeyId::new(&kid).context("the key id")?,
                before: SystemClock.unix_now(),
            };
            let propagation = commit_revocation(config, revocation)?;
            keys.retire(&kid)?;
            print(&format!(
                "revoked every token signed by {kid}; key files moved to retired/; {}",
                barrier_report(&propagation)
            ))
        }
        KeysCommand::Jwks { dir } => {
            let ring = key_dir(dir).load_ring()?;
            print(&serde_json::to_string_pretty(&ring.jwks())?)
        }
    }
}

/// Reads one token from standard input, refusing anything longer than a token can be so a
/// stray pipe cannot make the CLI buffer without bound.
fn read_token_from_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    let limit = u64::try_from(edgetoken::token::MAX_TOKEN_BYTES).unwrap_or(u64::MAX) + 2;
    io::stdin()
        .take(limit + 1)
        .read_to_string(&mut text)
        .context("reading the token from standard input")?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn print(text: &str) -> anyhow::Result<()> {
    writeln!(io::stdout().lock(), "{text}").context("writing to standard output")
}
