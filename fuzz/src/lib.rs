//! Fixtures shared by the fuzz targets and the seed generator (`src/seed.rs`): fixed keys, a
//! fixed clock, one verifier, one catalogue and one route policy. Sharing them is what makes
//! the minted seeds reach the verifier's accept path, and the revocations below its
//! `revoked` paths, from the first run on.

use std::sync::{Arc, OnceLock};

use edgetoken::clock::ManualClock;
use edgetoken::http::bearer::Decider;
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::permissions::{Catalogue, Category, Scope};
use edgetoken::policy::{RoutePolicy, RouteSpec, Unmatched};
use edgetoken::revocation::{MemoryRevocations, Revocation};
use edgetoken::token::{Issuer, Lifetime, MintRequest, Verifier, VerifierSettings};

/// The golden token's key (tests/data/golden), so `token.jwt` is itself a valid seed.
pub const TRUSTED_SEED: [u8; 32] = *b"edgetoken-golden-token-seed-v001";
/// A trusted key whose tokens are all revoked by a key watermark.
pub const REVOKED_KEY_SEED: [u8; 32] = *b"edgetoken-fuzz-revoked-key-v0001";
/// A key the verifier does not trust: `unknown_key`.
pub const UNTRUSTED_SEED: [u8; 32] = *b"edgetoken-fuzz-untrusted-key-v01";
/// The verifier's time: an hour after the golden token's `iat`, so it is still valid.
pub const NOW: i64 = 1_767_225_600 + 3600;
/// The golden token's issuer and audience.
pub const ISSUER: &str = "https://issuer.example";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "edge-api";
/// A tenant revoked by a tenant watermark at [`NOW`].
pub const REVOKED_TENANT: &str = "revoked-tenant";
/// A user of tenant `golden` revoked by a user watermark at [`NOW`].
pub const REVOKED_USER: &str = "revoked-user";

/// The verifier side, built once per fuzzing process.
#[derive(Debug)]
pub struct Fixture {
    /// The forward-auth decision over [`Fixture::verifier`] (the warm path).
    pub decider: Decider,
    /// The verifier itself.
    pub verifier: Arc<Verifier>,
}

/// The fixture; the same for every input, so a crash reproduces from its input alone.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut ring = KeyRing::new();
        for seed in [&TRUSTED_SEED, &REVOKED_KEY_SEED] {
            let key = SigningKey::from_seed(seed);
            ring.insert(TrustedKey::from_bytes(&key.public_bytes()).expect("fixed key passes"));
        }
        let revocations = MemoryRevocations::new();
        for revocation in [
            Revocation::Tenant {
                tenant: REVOKED_TENANT.parse().expect("tenant"),
                before: NOW,
            },
            Revocation::User {
                tenant: "golden".parse().expect("tenant"),
                subject: REVOKED_USER.parse().expect("subject"),
                before: NOW,
            },
            Revocation::Key {
                kid: SigningKey::from_seed(&REVOKED_KEY_SEED).kid().clone(),
                before: NOW,
            },
        ] {
            revocations.revoke(&revocation);
        }
        let verifier = Arc::new(
            Verifier::new(
                VerifierSettings::new(ISSUER, AUDIENCE),
                ring,
                Arc::new(revocations),
                Arc::new(ManualClock::at(NOW)),
            )
            .expect("valid verifier settings"),
        );
        Fixture {
            decider: Decider::new(verifier.clone()),
            verifier,
        }
    })
}

/// The catalogue of the route policy and scope targets.
pub fn catalogue() -> Catalogue {
    Catalogue::new(
        ["runs", "policies", "billing"].map(|name| Category::new(name).expect("category")),
    )
    .expect("catalogue")
}

/// A route policy with literal, tenant-capture and wildcard routes.
pub fn route_policy() -> RoutePolicy {
    let route = |method: &str, path: &str, permission: Option<&str>| RouteSpec {
        method: method.to_owned(),
        path: path.to_owned(),
        permission: permission.map(str::to_owned),
    };
    RoutePolicy::new(
        &[
            route("GET", "/health", None),
            route("GET", "/t/{tenant}/runs", Some("runs:read")),
            route("POST", "/t/{tenant}/runs/*", Some("runs:write")),
            route("*", "/t/{tenant}/policies/*", Some("policies:write")),
            route("GET", "/files/a.b~c:d@e+f/*", Some("billing:read")),
        ],
        Unmatched::Deny,
        &catalogue(),
    )
    .expect("valid routes")
}

/// Tokens that exercise each outcome of the verifier in [`fixture`]: accepted, expired, not
/// yet valid, revoked by tenant, user and key, and signed by an unknown key.
pub fn minted_tokens() -> Vec<(String, String)> {
    let mint = |seed: &[u8; 32], at: i64, subject: &str, tenant: &str, scope: &str| {
        let issuer = Issuer::new(
            SigningKey::from_seed(seed),
            ISSUER,
            AUDIENCE,
            Arc::new(ManualClock::at(at)),
        );
        issuer
            .mint(&MintRequest {
                subject: subject.parse().expect("subject"),
                tenant: tenant.parse().expect("tenant"),
                scope: Scope::parse_claim(scope).expect("scope"),
                lifetime: Lifetime::FourHours,
            })
            .expect("mints")
            .token
            .expose()
            .to_owned()
    };
    let hour = 3600;
    vec![
        (
            "accepted",
            mint(&TRUSTED_SEED, NOW - 60, "alice", "acme", "runs:read"),
        ),
        (
            "accepted-wide",
            mint(
                &TRUSTED_SEED,
                NOW,
                "bob",
                "golden",
                "billing:read policies:write runs:write",
            ),
        ),
        (
            "expired",
            mint(&TRUSTED_SEED, NOW - 5 * hour, "alice", "acme", "runs:read"),
        ),
        (
            "not-yet-valid",
            mint(&TRUSTED_SEED, NOW + hour, "alice", "acme", "runs:read"),
        ),
        (
            "revoked-tenant",
            mint(
                &TRUSTED_SEED,
                NOW - 60,
                "alice",
                REVOKED_TENANT,
                "runs:read",
            ),
        ),
        (
            "revoked-user",
            mint(&TRUSTED_SEED, NOW - 60, REVOKED_USER, "golden", "runs:read"),
        ),
        (
            "revoked-key",
            mint(&REVOKED_KEY_SEED, NOW - 60, "alice", "acme", "runs:read"),
        ),
        (
            "unknown-key",
            mint(&UNTRUSTED_SEED, NOW - 60, "alice", "acme", "runs:read"),
        ),
    ]
    .into_iter()
    .map(|(name, token)| (name.to_owned(), token))
    .collect()
}
