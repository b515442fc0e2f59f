//! Start-up: turns validated [`Settings`] into running [`Services`] (SPEC §7 `serve`).
//!
//! With no configuration file edgetoken runs in development mode: everything in one process,
//! the in-process revocation store, a development key created in `keys/` if none exists, and
//! a `demo` user in a `demo` tenant whose generated password is printed once. The banner says
//! all of this plainly, including that nothing survives a restart. With a configuration file
//! nothing is invented: a missing key or directory is an error that names what to do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::bearer::Decider;
use super::jwks::JwksRefresher;
use super::limits::RateLimiter;
use super::verifier::{IntrospectionClients, VerifierApi};
use super::{AuthSettings, IssuerState, Services};
use crate::clock::Clock;
use crate::config::Role;
use crate::directory::{Directory, Membership, User, hash_password};
use crate::keys::{KeyDir, KeyError, KeyRing, SigningKey};
use crate::metrics::Metrics;
use crate::records::{MemoryRecords, RecordError, RecordStore, RedisRecords};
use crate::redis_target::RedisTarget;
use crate::revocation::{RevocationEngine, RevocationStore, StoreError, StoreKind};
use crate::settings::Settings;
use crate::token::{Issuer, Subject, TenantId, Verifier};
use crate::usage::{MemoryUsage, RedisUsage, UsageRecorder, UsageStore};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The revocation store refused to start (eviction policy, bad URL).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token record store could not be set up (bad URL).
    #[error(transparent)]
    Records(#[from] RecordError),
    /// The user directory could not be loaded.
    #[error(transparent)]
    Directory(#[from] crate::directory::DirectoryError),
    /// Configuration that only turns out wrong at start.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Anything else, with what was being done.
    #[error("{0}")]
    Other(String),
}

/// The services plus what must be shut down with them.
#[derive(Debug)]
pub struct Started {
    /// Shared state for the router.
    pub services: Arc<Services>,
    /// The revocation engine (its Redis feed runs until [`RevocationEngine::shutdown`]).
    pub revocation: RevocationEngine,
    /// The key directory reload task, if any; abort it at shutdown.
    pub key_reload: Option<tokio::task::JoinHandle<()>>,
    /// Lines for the start-up banner (printed once by `main`; may hold the demo password).
    pub banner: Vec<String>,
}

/// Builds every service for `role` from `settings`. `development` enables the embedded
/// defaults (dev key, demo user) that a configured deployment never gets.
///
/// # Errors
///
/// [`StartError`] naming what is missing or refused.
pub async fn start(
    settings: Settings,
    role: Role,
    development: bool,
    clock: Arc<dyn Clock>,
) -> Result<Started, StartError> {
    let settings = Arc::new(settings);
    let mut banner = Vec::new();
    let key_dir = KeyDir::new(&settings.keys.dir);
    let signing_key = if role.has_issuer() {
        Some(signing_key(&settings, &key_dir, development, &mut banner)?)
    } else {
        None
    };
    let jwks_source = settings.verifier.jwks.clone();
    let ring = initial_ring(&settings, &key_dir, role)?;
    let metrics = Arc::new(Metrics::new());
    let revocation = open_revocation(&settings, &clock, &mut banner).await?;
    let verifier = Arc::new(
        Verifier::new(
            settings.token.clone(),
            ring,
            revocation.check(),
            Arc::clone(&clock),
        )
        .map_err(|e| StartError::Other(e.to_string()))?
        .with_cache(settings.cache),
    );
    let jwks = match jwks_source {
        None => None,
        Some(source) => {
            let (url, refresh) = (source.url.clone(), source.refresh);
            let refresher =
                JwksRefresher::start(source, Arc::clone(&verifier), Some(Arc::clone(&metrics)))
                    .await
                    .map_err(|e| StartError::Other(e.to_string()))?;
            banner.push(format!(
                "trusted keys from {} ({}), refreshed every {} s",
                crate::config::redact_url(&url),
                if refresher.is_loaded() {
                    format!("{} keys loaded", verifier.keys().len())
                } else {
                    "NOT YET REACHABLE: not ready until it answers".to_owned()
                },
                refresh.as_secs()
            ));
            Some(Arc::new(refresher))
        }
    };
    let redis = redis_target(&settings.revocation)?;
    let usage = usage_store(&settings, redis.clone(), &clock);
    let verifier_api = if role.has_verifier() {
        let recorder = usage_recorder(&settings, &usage, &clock, &mut banner);
        Some(verifier_api(
            &settings,
            &verifier,
            &metrics,
            jwks.as_ref(),
            recorder,
        ))
    } else {
        None
    };
    let issuer = match signing_key {
        Some(key) => {
            let stores = (revocation.store(), redis);
            let mut state =
                issuer_state(&settings, key, stores, development, &clock, &mut banner).await?;
            state.usage = usage;
            Some(state)
        }
        None => None,
    };
    let key_reload = settings
        .keys
        .reload
        .filter(|_| jwks.is_none())
        .map(|period| {
            let signer = issuer.as_ref().map(|state| Arc::clone(&state.issuer));
            spawn_key_reload(key_dir, Arc::clone(&verifier), signer, period)
        });
    Ok(Started {
        services: Arc::new(Services {
            settings,
            role,
            clock,
            verifier,
            mirror: Arc::clone(revocation.mirror()),
            metrics,
            issuer,
            verifier_api,
            jwks,
        }),
        revocation,
        key_reload,
        banner,
    })
}

/// The keys trusted at start: the key directory's, or none yet when they come from the
/// issuer's JWKS (filled by the first fetch; until then nothing verifies and `/readyz` says
/// so). Also refuses role and key-source combinations that cannot work.
fn initial_ring(settings: &Settings, key_dir: &KeyDir, role: Role) -> Result<KeyRing, StartError> {
    if role != Role::All && !settings.revocation.uses_redis() {
        // Split roles share revocations only through Redis: an issuer alone would acknowledge
        // revocations no verifier ever sees, and a verifier alone would never see any.
        return Err(StartError::Other(format!(
            "--role {role} needs revocation.redis_url (or Sentinel, or Cluster): the in-process \
             store is for a single process running every role (--role all)"
        )));
    }
    let from_jwks = settings.verifier.jwks.is_some();
    if from_jwks && role.has_issuer() {
        return Err(StartError::Other(
            "verifier.jwks_url is for --role verifier; the issuer trusts its own key directory"
                .into(),
        ));
    }
    if from_jwks {
        // Filled by the first JWKS fetch; until then nothing verifies and /readyz says so.
        return Ok(KeyRing::new());
    }
    let ring = key_dir.load_ring()?;
    if ring.is_empty() {
        return Err(StartError::Other(format!(
            "no trusted keys in {}; copy the issuer's public keys (*.jwk.json) there, or set \
             verifier.jwks_url",
            settings.keys.dir.display()
        )));
    }
    Ok(ring)
}

/// Reloads the key directory every `period`, so keys added or retired on disk and a changed
/// `ACTIVE` take effect without a restart (the issuer's JWKS follows, and with it every
/// JWKS-fed verifier).
fn spawn_key_reload(
    key_dir: KeyDir,
    verifier: Arc<Verifier>,
    signer: Option<Arc<Issuer>>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let dir = key_dir.clone();
            let wants_signing = signer.is_some();
            let loaded = tokio::task::spawn_blocking(move || {
                (dir.load_ring(), wants_signing.then(|| dir.load_signing()))
            })
            .await;
            match loaded {
                Ok((ring, signing)) => {
                    apply_key_reload(&verifier, signer.as_deref(), ring, signing);
                }
                Err(error) => tracing::warn!(%error, "key directory reload task failed"),
            }
        }
    })
}

/// Applies one reload of the key directory: the trusted keys, then (on an issuer) the signing
/// key `ACTIVE` names.
///
/// - A directory that fails to load, holds no key, or does not hold the key that is to sign
///   keeps the last good keys and signing key whole: a half-edited directory must not stop
///   every token, nor have this process sign tokens it does not itself trust.
/// - A signing key that fails to load (`ACTIVE` naming a missing or bad private key) keeps
///   the last good signing key; the trusted keys still reload.
/// - The new signing key is put in the verifier's ring before it signs anything, so its first
///   token already verifies here and appears in this issuer's JWKS.
fn apply_key_reload(
    verifier: &Verifier,
    signer: Option<&Issuer>,
    ring: Result<KeyRing, KeyError>,
    signing: Option<Result<SigningKey, KeyError>>,
) {
    let ring = match ring {
        Ok(ring) if !ring.is_empty() => ring,
        Ok(_) => {
            tracing::warn!("key directory holds no key now; keeping the last good keys");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "key directory reload failed; keeping the last good keys");
            return;
        }
    };
    let next_signing = match signing {
        Some(Ok(key)) => Some(key),
        Some(Err(error)) => {
            let kid = signer.map(|s| s.kid().to_string()).unwrap_or_default();
            tracing::warn!(
                %error,
                kid,
                "signing key in the key directory failed to load; keeping the last good \
                 signing key"
            );
            None
        }
        None => None,
    };
    if let Some(signer) = signer {
        let signing_kid = next_signing
            .as_ref()
            .map_or_else(|| signer.kid(), |key| key.kid().clone());
        if !ring.contains(signing_kid.as_str()) {
            tracing::warn!(
                kid = %signing_kid,
                "key directory does not hold the public key of the signing key; keeping the \
                 last good keys"
            );
            return;
        }
    }
    let kids = |ring: &KeyRing| -> Vec<String> {
        ring.keys().iter().map(|k| k.kid().to_string()).collect()
    };
    let (before, after) = (kids(&verifier.keys()), kids(&ring));
    if before != after {
        tracing::info!(
            ?before,
            ?after,
            "trusted keys reloaded from the key directory"
        );
        verifier.set_keys(ring);
    }
    if let (Some(signer), Some(key)) = (signer, next_signing) {
        let previous = signer.kid();
        if previous != *key.kid() {
            tracing::info!(
                previous = %previous,
                kid = %key.kid(),
                "issuer now signs with the key ACTIVE names"
            );
            signer.set_key(key);
        }
    }
}

/// Where token usage is merged and read: the deployment's Redis, or this process's memory
/// (the in-process store, one process).
fn usage_store(
    settings: &Settings,
    redis: Option<RedisTarget>,
    clock: &Arc<dyn Clock>,
) -> UsageStore {
    let store = &settings.revocation;
    match redis {
        Some(target) => UsageStore::Redis(RedisUsage::on_target(
            target,
            &store.key_prefix,
            store.command_timeout,
        )),
        None => UsageStore::Memory(MemoryUsage::new(Arc::clone(clock))),
    }
}

/// Where the deployment's Redis primary is (URL, Sentinel or Cluster): one resolver shared by the
/// stores outside the revocation engine (usage, records, sessions); `None` for the
/// in-process store.
fn redis_target(
    store: &crate::revocation::RevocationSettings,
) -> Result<Option<RedisTarget>, StartError> {
    if store.uses_redis() {
        Ok(Some(crate::revocation::redis::target(store)?))
    } else {
        Ok(None)
    }
}

/// The verifier's usage recorder (with its flusher task), unless `usage.enabled` is off.
fn usage_recorder(
    settings: &Settings,
    store: &UsageStore,
    clock: &Arc<dyn Clock>,
    banner: &mut Vec<String>,
) -> Option<UsageRecorder> {
    let usage = settings.usage;
    banner.push(if usage.enabled {
        format!(
            "token usage: recorded{}, flushed every {} s",
            if usage.record_address {
                " with client address and user agent"
            } else {
                " (time and count only)"
            },
            usage.flush.as_secs()
        )
    } else {
        "token usage: not recorded (usage.enabled = false)".to_owned()
    });
    usage.enabled.then(|| {
        UsageRecorder::start(
            usage,
            store,
            settings.issuer.records_retention,
            Arc::clone(clock),
        )
    })
}

/// The verifier API: route policy, trusted proxies, introspection clients, and a decider that
/// records metrics and usage and asks the JWKS refresher for unknown kids.
fn verifier_api(
    settings: &Settings,
    verifier: &Arc<Verifier>,
    metrics: &Arc<Metrics>,
    jwks: Option<&Arc<JwksRefresher>>,
    usage: Option<UsageRecorder>,
) -> VerifierApi {
    let mut decider = Decider::new(Arc::clone(verifier)).with_metrics(Arc::clone(metrics));
    if let Some(jwks) = jwks {
        decider = decider.with_jwks(Arc::clone(jwks));
    }
    if let Some(usage) = usage {
        decider = decider.with_usage(usage);
    }
    VerifierApi {
        decider,
        policy: settings.verifier.policy.clone(),
        trusted_proxies: settings.verifier.trusted_proxies.clone(),
        introspection: IntrospectionClients::new(&settings.verifier.introspection_clients),
    }
}

/// The active signing key; in development, created if there is none.
fn signing_key(
    settings: &Settings,
    key_dir: &KeyDir,
    development: bool,
    banner: &mut Vec<String>,
) -> Result<SigningKey, StartError> {
    if key_dir.active_kid()?.is_none() {
        if !development {
            return Err(KeyError::NoActiveKey {
                dir: settings.keys.dir.clone(),
            }
            .into());
        }
        let key = key_dir.generate(true)?;
        banner.push(format!(
            "created a development signing key {} in {}",
            key.kid(),
            settings.keys.dir.display()
        ));
    }
    Ok(key_dir.load_signing()?)
}

/// Starts the revocation engine and says in the banner which store it runs on.
async fn open_revocation(
    settings: &Settings,
    clock: &Arc<dyn Clock>,
    banner: &mut Vec<String>,
) -> Result<RevocationEngine, StartError> {
    let settings = &settings.revocation;
    let engine = RevocationEngine::start(settings, Arc::clone(clock)).await?;
    banner.push(match engine.kind() {
        StoreKind::InProcess => "revocation store: IN-PROCESS (no revocation.redis_url): one \
                                 process only, nothing survives a restart"
            .to_owned(),
        StoreKind::Redis => format!(
            "revocation store: Redis {} (prefix {}), max staleness {:?}, on stale: {:?}, {}",
            settings.describe_redis(),
            settings.key_prefix,
            settings.max_staleness,
            settings.on_stale,
            engine.durability().map_or_else(
                || "durability not measured yet (Redis unreachable)".to_owned(),
                |d| match &d.primary {
                    Some(primary) => format!("{} on {primary}", d.describe()),
                    None => d.describe(),
                }
            ),
        ),
    });
    Ok(engine)
}

/// The issuer's parts: signer, directory (the demo one in development), records, limits;
/// `stores` are the revocation store and the Redis primary's resolver (`None`: in process).
async fn issuer_state(
    settings: &Settings,
    key: SigningKey,
    stores: (Arc<dyn RevocationStore>, Option<RedisTarget>),
    development: bool,
    clock: &Arc<dyn Clock>,
    banner: &mut Vec<String>,
) -> Result<IssuerState, StartError> {
    let (revocations, redis) = stores;
    banner.push(format!("issuer signing with key {}", key.kid()));
    let catalogue = settings.catalogue.clone();
    let directory = if let Some(path) = &settings.issuer.directory {
        Directory::load(path, &catalogue)?
    } else {
        if !development {
            return Err(StartError::Other(
                "issuer.directory: a configured issuer needs a user directory file; the demo \
                 user exists only when edgetoken runs without a configuration file"
                    .into(),
            ));
        }
        let (directory, password) = demo_directory(&catalogue).await?;
        banner.push(format!(
            "DEVELOPMENT directory: user `demo`, password `{}`, tenant `demo` \
             (admin, every permission); shown once, not stored",
            password.as_str()
        ));
        directory
    };
    let store = &settings.revocation;
    let retention = settings.issuer.records_retention;
    let records = match &redis {
        Some(target) => RecordStore::Redis(RedisRecords::on_target(
            target.clone(),
            &store.key_prefix,
            retention,
            store.command_timeout,
            Arc::clone(clock),
        )),
        None => RecordStore::Memory(MemoryRecords::new(retention, Arc::clone(clock))),
    };
    let page = &settings.page;
    let sessions = match redis {
        Some(target) => crate::http::page::Sessions::on_target(
            target,
            &store.key_prefix,
            store.command_timeout,
            page.session_idle,
            page.session_absolute,
            Arc::clone(clock),
        ),
        None => crate::http::page::Sessions::memory(
            page.session_idle,
            page.session_absolute,
            Arc::clone(clock),
        ),
    };
    Ok(IssuerState {
        sessions,
        issuer: Arc::new(Issuer::new(
            key,
            settings.token.issuer.clone(),
            settings.token.audience.clone(),
            Arc::clone(clock),
        )),
        directory: Arc::new(directory),
        catalogue,
        records,
        // Replaced by `start` with the store the verifier's recorder shares.
        usage: UsageStore::Memory(MemoryUsage::new(Arc::clone(clock))),
        revocations,
        auth: AuthSettings {
            mode: settings.issuer.auth,
            user_header: settings.issuer.user_header.clone(),
            proxy_secret_header: settings.issuer.proxy_secret_header.clone(),
            proxy_secret: settings.issuer.proxy_secret.clone(),
        },
        password_checks: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        )),
        failed_signins: RateLimiter::swept(
            settings.issuer.failed_signins_per_minute,
            Duration::from_mins(1),
        ),
        mints: RateLimiter::swept(settings.issuer.mints_per_hour, Duration::from_hours(1)),
        tenant_revocations: RateLimiter::swept(
            settings.issuer.tenant_revocations_per_minute,
            Duration::from_mins(1),
        ),
    })
}

/// The development directory: `demo` in tenant `demo`, admin, every permission, with a fresh
/// random password (returned so the banner can show it once).
async fn demo_directory(
    catalogue: &crate::permissions::Catalogue,
) -> Result<(Directory, zeroize::Zeroizing<String>), StartError> {
    let mut secret = [0u8; 18];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let password = zeroize::Zeroizing::new(crate::encoding::b64_encode(&secret));
    let to_hash = password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&to_hash))
        .await
        .map_err(|e| StartError::Other(e.to_string()))?
        .map_err(|e| StartError::Other(e.to_string()))?;
    let demo = |s: &str| Subject::new(s).map_err(|e| StartError::Other(e.to_string()));
    let tenant = TenantId::new("demo").map_err(|e| StartError::Other(e.to_string()))?;
    let membership = Membership {
        permissions: crate::permissions::Scope::from_permissions(catalogue.all_permissions()),
        admin: true,
    };
    let user = User::new(
        demo("demo")?,
        Some(hash),
        BTreeMap::from([(tenant, membership)]),
    );
    Ok((Directory::from_users([user]), password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::revocation::MemoryRevocations;
    use crate::token::VerifierSettings;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32])
    }

    fn ring(keys: &[&SigningKey]) -> KeyRing {
        let mut ring = KeyRing::new();
        for key in keys {
            ring.insert(crate::keys::TrustedKey::from_bytes(&key.public_bytes()).unwrap());
        }
        ring
    }

    fn parts(old: &SigningKey) -> (Verifier, Issuer) {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(1_767_225_600));
        let verifier = Verifier::new(
            VerifierSettings::new("iss", "aud"),
            ring(&[old]),
            Arc::new(MemoryRevocations::new()),
            Arc::clone(&clock),
        )
        .unwrap();
        (verifier, Issuer::new(old.clone(), "iss", "aud", clock))
    }

    #[test]
    fn a_new_active_key_is_trusted_then_signs() {
        let (old, new) = (key(1), key(2));
        let (verifier, issuer) = parts(&old);
        apply_key_reload(
            &verifier,
            Some(&issuer),
            Ok(ring(&[&old, &new])),
            Some(Ok(new.clone())),
        );
        assert_eq!(&issuer.kid(), new.kid());
        assert!(verifier.keys().contains(new.kid().as_str()));
        assert!(verifier.keys().contains(old.kid().as_str()));
    }

    #[test]
    fn a_signing_key_that_fails_to_load_keeps_the_last_good_one() {
        let (old, other) = (key(1), key(3));
        let (verifier, issuer) = parts(&old);
        apply_key_reload(
            &verifier,
            Some(&issuer),
            Ok(ring(&[&old, &other])),
            Some(Err(KeyError::UnknownKid("x".into()))),
        );
        assert_eq!(&issuer.kid(), old.kid());
        assert_eq!(verifier.keys().len(), 2, "the trusted keys still reload");
    }

    #[test]
    fn a_directory_without_the_signing_key_changes_nothing() {
        let (old, new, other) = (key(1), key(2), key(3));
        let (verifier, issuer) = parts(&old);
        // ACTIVE names `new`, but its public key is not among the trusted keys.
        apply_key_reload(&verifier, Some(&issuer), Ok(ring(&[&other])), Some(Ok(new)));
        assert_eq!(&issuer.kid(), old.kid());
        assert_eq!(verifier.keys().len(), 1);
        assert!(verifier.keys().contains(old.kid().as_str()));
    }

    #[test]
    fn a_directory_that_fails_to_load_keeps_everything() {
        let (old, new) = (key(1), key(2));
        let (verifier, issuer) = parts(&old);
        apply_key_reload(
            &verifier,
            Some(&issuer),
            Err(KeyError::UnknownKid("x".into())),
            Some(Ok(new)),
        );
        assert_eq!(&issuer.kid(), old.kid());
        assert!(verifier.keys().contains(old.kid().as_str()));
    }
}
