//! Verification benchmarks for SPEC §9: every comparison measures both of its sides in one
//! criterion group, in the same run, so the ratios `benches/ratios.py` prints are meaningful
//! on a shared, noisy machine.
//!
//! - `cold_vs_verify_strict`: a bare ed25519-dalek `verify_strict` of one realistic token's
//!   signing input (and of the cold pool's tokens in turn), against `Verifier::verify` on
//!   tokens never seen before (cache enabled and disabled), and jsonwebtoken's `decode` of the
//!   same token as a reference point.
//! - `warm_vs_cold`: the same token again and again (a cache hit; time, issuer/audience,
//!   revocation and the requirement still checked) against the cold verify.
//! - `reject_vs_cold`: cheap rejections (random base64url, 9 KiB, `alg: none`) against the
//!   cold verify.
//! - `mint_vs_sign`: `Issuer::mint` against a bare Ed25519 sign of the same bytes.
//! - `usage_vs_warm`: the warm verify alone against the warm verify plus recording the
//!   token's use (issue 10: a repeat use in the same interval, as on a busy verifier).
//!
//! The realistic token is about 450 bytes (checked at start-up): a 43-character kid, a
//! 22-character jti and three permissions. Cold tokens come from a pool minted before any
//! measurement; the cold routine times only `verify` calls, replaces the verifier (and so its
//! cache) untimed whenever the pool wraps, and asserts afterwards that no call was a cache hit
//! and every call succeeded.
//!
//! Run: `cargo bench --bench verify -- --warm-up-time 1 --measurement-time 3`, then
//! `python3 benches/ratios.py`.
#![expect(
    clippy::expect_used,
    reason = "bench setup: a broken fixture must abort the run loudly, not measure nonsense"
)]

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use ed25519_dalek::{Signature, VerifyingKey};
use edgetoken::clock::{Clock as _, ManualClock, SystemClock};
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::permissions::Scope;
use edgetoken::revocation::{MemoryRevocations, Revocation};
use edgetoken::token::{
    CacheSettings, Issuer, Lifetime, Malformed, MintRequest, Rejection, Requirement, Verifier,
    VerifierSettings,
};

const ISSUER: &str = "https://id.acme.io";
const AUDIENCE: &str = "api";
const SUBJECT: &str = "u-18427";
const TENANT: &str = "acme";
const SCOPE: &str = "members:read policies:write runs:read";
const SEED: [u8; 32] = [7; 32];

/// Tokens in the cold pool. Larger than the default cache (100,000 entries), so the cache
/// fills and evicts as it would in production; the pool is reused (with a fresh verifier)
/// when a run needs more cold calls than it holds.
const POOL_SIZE: usize = 150_000;

/// Everything the benches share, built before any measurement.
struct Fixture {
    key: SigningKey,
    issuer: Issuer,
    clock: Arc<ManualClock>,
    revocations: Arc<MemoryRevocations>,
    request: MintRequest,
    requirement: Requirement,
    /// One realistic token, for the bare, warm and jsonwebtoken routines.
    token: String,
    /// Minted on first use: only the cold routines need it, and it takes a few seconds.
    pool: OnceLock<Vec<String>>,
}

impl Fixture {
    fn new() -> Self {
        // A frozen clock at the real time: the verifier's time rules are deterministic, and
        // jsonwebtoken (which reads the system clock) accepts the same tokens.
        let clock = Arc::new(ManualClock::at(SystemClock.unix_now()));
        let key = SigningKey::from_seed(&SEED);
        let issuer = Issuer::new(key.clone(), ISSUER, AUDIENCE, clock.clone());
        let request = MintRequest {
            subject: SUBJECT.parse().expect("subject"),
            tenant: TENANT.parse().expect("tenant"),
            scope: Scope::parse_claim(SCOPE).expect("scope"),
            lifetime: Lifetime::EightHours,
        };
        let token = issuer
            .mint(&request)
            .expect("mint")
            .token
            .expose()
            .to_owned();
        assert!(
            (440..=480).contains(&token.len()),
            "the realistic token is {} bytes, not about 450",
            token.len()
        );
        let fixture = Self {
            revocations: Arc::new(realistic_revocations(clock.unix_now())),
            requirement: Requirement::any()
                .tenant(TENANT.parse().expect("tenant"))
                .permission("runs:read".parse().expect("permission")),
            key,
            issuer,
            clock,
            request,
            token,
            pool: OnceLock::new(),
        };
        let verifier = fixture.verifier(CacheSettings::default());
        verifier
            .verify(&fixture.token, &fixture.requirement)
            .expect("the realistic token verifies");
        fixture
    }

    fn verifier(&self, cache: CacheSettings) -> Verifier {
        let mut ring = KeyRing::new();
        ring.insert(TrustedKey::from_bytes(&self.key.public_bytes()).expect("trusted key"));
        Verifier::new(
            VerifierSettings::new(ISSUER, AUDIENCE),
            ring,
            self.revocations.clone(),
            self.clock.clone(),
        )
        .expect("verifier settings")
        .with_cache(cache)
    }

    fn pool(&self) -> &[String] {
        self.pool.get_or_init(|| {
            (0..POOL_SIZE)
                .map(|_| {
                    let minted = self.issuer.mint(&self.request).expect("mint");
                    minted.token.expose().to_owned()
                })
                .collect()
        })
    }
}

/// A mirror that is not trivially empty: other tokens, users, tenants and keys are revoked, so
/// every lookup of the verified token has to search a populated map.
fn realistic_revocations(now: i64) -> MemoryRevocations {
    let revocations = MemoryRevocations::new();
    for i in 0..1_000 {
        revocations.revoke(&Revocation::Token {
            jti: format!("revoked-token-{i:09}-abcdefgh")
                .parse()
                .expect("jti"),
            expires_at: now + 3600,
        });
    }
    for i in 0..100 {
        revocations.revoke(&Revocation::User {
            tenant: TENANT.parse().expect("tenant"),
            subject: format!("user-{i}@customer.example")
                .parse()
                .expect("subject"),
            before: now,
        });
        revocations.revoke(&Revocation::Tenant {
            tenant: format!("tenant-{i}").parse().expect("tenant"),
            before: now,
        });
    }
    revocations.revoke(&Revocation::Key {
        kid: "retired-key-0000000000000000000000000000000"
            .parse()
            .expect("kid"),
        before: now,
    });
    revocations
}

/// Cold verify: every call sees a token it has never seen. Only the `verify` calls are timed;
/// replacing the verifier when the pool wraps (so a reused token can never be a hit) is not.
fn bench_cold(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    fixture: &Fixture,
    cache: CacheSettings,
) {
    let pool = fixture.pool();
    group.bench_function(id, |b| {
        let mut verifier = fixture.verifier(cache);
        let mut next = 0;
        b.iter_custom(|iters| {
            let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
            let mut elapsed = Duration::ZERO;
            while left > 0 {
                if next == pool.len() {
                    verifier = fixture.verifier(cache);
                    next = 0;
                }
                let chunk = &pool[next..pool.len().min(next + left)];
                let mut accepted = 0;
                let start = Instant::now();
                for token in chunk {
                    let verdict =
                        verifier.verify(black_box(token), black_box(&fixture.requirement));
                    accepted += usize::from(black_box(verdict).is_ok());
                }
                elapsed += start.elapsed();
                assert_eq!(accepted, chunk.len(), "a cold token was rejected");
                next += chunk.len();
                left -= chunk.len();
            }
            assert_eq!(
                verifier.cache_stats().hits,
                0,
                "a cold verify hit the cache"
            );
            elapsed
        });
    });
}

fn cold_vs_verify_strict(c: &mut Criterion, fixture: &Fixture) {
    let (signing_input, signature_b64) = fixture.token.rsplit_once('.').expect("three parts");
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .expect("base64url signature")
        .try_into()
        .expect("64-byte signature");
    let signature = Signature::from_bytes(&signature);
    let public = VerifyingKey::from_bytes(&fixture.key.public_bytes()).expect("public key");
    public
        .verify_strict(signing_input.as_bytes(), &signature)
        .expect("the bare signature verifies");

    let jwt_key = jsonwebtoken::DecodingKey::from_ed_components(
        &URL_SAFE_NO_PAD.encode(fixture.key.public_bytes()),
    )
    .expect("jsonwebtoken key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 30;
    jsonwebtoken::decode::<JwtClaims>(&fixture.token, &jwt_key, &validation)
        .expect("jsonwebtoken accepts the token");

    let mut group = c.benchmark_group("cold_vs_verify_strict");
    group.bench_function("bare_verify_strict", |b| {
        b.iter(|| {
            black_box(&public).verify_strict(black_box(signing_input.as_bytes()), &signature)
        });
    });
    // The same check over the cold pool's tokens, one different token per call like the cold
    // routine: the single-token loop above lets the branch predictor learn the variable-time
    // scalar multiplication of one signature, which flatters the bare side by a few percent.
    let pool: Vec<(&[u8], Signature)> = fixture
        .pool()
        .iter()
        .map(|token| {
            let (signing_input, signature_b64) = token.rsplit_once('.').expect("three parts");
            let signature: [u8; 64] = URL_SAFE_NO_PAD
                .decode(signature_b64)
                .expect("base64url signature")
                .try_into()
                .expect("64-byte signature");
            (signing_input.as_bytes(), Signature::from_bytes(&signature))
        })
        .collect();
    group.bench_function("bare_verify_strict_pool", |b| {
        let mut next = 0;
        b.iter(|| {
            let (signing_input, signature) = &pool[next];
            next = (next + 1) % pool.len();
            black_box(&public).verify_strict(black_box(signing_input), signature)
        });
    });
    bench_cold(&mut group, "cold_verify", fixture, CacheSettings::default());
    bench_cold(
        &mut group,
        "cold_no_cache",
        fixture,
        CacheSettings {
            max_entries: 0,
            ..CacheSettings::default()
        },
    );
    group.bench_function("jsonwebtoken_decode", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<JwtClaims>(
                black_box(&fixture.token),
                black_box(&jwt_key),
                black_box(&validation),
            )
        });
    });
    group.finish();
}

/// The claims as jsonwebtoken decodes them: the same nine claims, typed, unknown ones refused,
/// so it does comparable JSON work.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "fields are only parsed")]
struct JwtClaims {
    iss: String,
    aud: String,
    sub: String,
    tenant: String,
    scope: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
}

fn warm_vs_cold(c: &mut Criterion, fixture: &Fixture) {
    let mut group = c.benchmark_group("warm_vs_cold");
    group.bench_function("warm_verify", |b| {
        let verifier = fixture.verifier(CacheSettings::default());
        // The cache admits a token on its second verification; both happen before timing.
        for _ in 0..2 {
            verifier
                .verify(&fixture.token, &fixture.requirement)
                .expect("warm-up verify");
        }
        b.iter(|| verifier.verify(black_box(&fixture.token), black_box(&fixture.requirement)));
        let stats = verifier.cache_stats();
        assert_eq!(stats.misses, 2, "a warm verify missed the cache");
        assert!(stats.hits > 0, "the warm verify never hit the cache");
    });
    bench_cold(&mut group, "cold_verify", fixture, CacheSettings::default());
    group.finish();
}

fn usage_vs_warm(c: &mut Criterion, fixture: &Fixture) {
    use edgetoken::usage::{MemoryUsage, Presenter, UsageRecorder, UsageSettings, UsageStore};
    let mut group = c.benchmark_group("usage_vs_warm");
    let verifier = fixture.verifier(CacheSettings::default());
    for _ in 0..2 {
        verifier
            .verify(&fixture.token, &fixture.requirement)
            .expect("warm-up verify");
    }
    group.bench_function("warm_verify", |b| {
        b.iter(|| verifier.verify(black_box(&fixture.token), black_box(&fixture.requirement)));
    });
    let clock: Arc<dyn edgetoken::Clock> = Arc::new(SystemClock);
    let recorder = UsageRecorder::new(
        UsageSettings::default(),
        UsageStore::Memory(MemoryUsage::new(Arc::clone(&clock))),
        Duration::from_hours(24),
        clock,
    );
    let address = "203.0.113.7".parse().expect("address");
    group.bench_function("warm_verify_and_record_use", |b| {
        b.iter(|| {
            let claims = verifier
                .verify(black_box(&fixture.token), black_box(&fixture.requirement))
                .expect("warm verify");
            recorder.record(&claims, || Presenter {
                address: Some(address),
                agent: Some(b"bench/1.0"),
            });
            claims
        });
    });
    group.finish();
}

fn reject_vs_cold(c: &mut Criterion, fixture: &Fixture) {
    let verifier = fixture.verifier(CacheSettings::default());
    let garbage = garbage_token(450);
    let oversized = format!(
        "{}.{}.{}",
        "A".repeat(3072),
        "B".repeat(3072),
        "C".repeat(3070)
    );
    let bad_header = {
        // `alg: none` with the right typ and kid, then a real payload and signature: the
        // header decodes and parses, and is refused at the `alg` check.
        let (_, rest) = fixture.token.split_once('.').expect("three parts");
        let header = format!(
            r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#,
            fixture.key.kid().as_str()
        );
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header))
    };
    assert_eq!(oversized.len(), 9 * 1024);
    let cases = [
        ("reject_garbage", garbage, None),
        ("reject_oversized", oversized, Some(Malformed::TooLong)),
        ("reject_bad_header", bad_header, Some(Malformed::Algorithm)),
    ];

    let mut group = c.benchmark_group("reject_vs_cold");
    for (id, token, expected) in &cases {
        let rejection = verifier
            .verify(token, &fixture.requirement)
            .expect_err("the bad token is rejected");
        assert!(
            matches!(rejection, Rejection::Malformed(_)),
            "{id}: {rejection:?}"
        );
        if let Some(expected) = expected {
            assert_eq!(rejection, Rejection::Malformed(*expected), "{id}");
        }
        group.bench_function(*id, |b| {
            b.iter(|| verifier.verify(black_box(token), black_box(&fixture.requirement)));
        });
    }
    bench_cold(&mut group, "cold_verify", fixture, CacheSettings::default());
    group.finish();
}

/// `len` random base64url characters split into three parts by two dots: what a scanner or a
/// fuzzer sends. A fixed xorshift seed keeps it the same from run to run.
fn garbage_token(len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut text: String = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(ALPHABET[usize::try_from(state % 64).unwrap_or_default()])
        })
        .collect();
    text.replace_range(len / 3..=len / 3, ".");
    text.replace_range(2 * len / 3..=2 * len / 3, ".");
    text
}

fn mint_vs_sign(c: &mut Criterion, fixture: &Fixture) {
    let (signing_input, _) = fixture.token.rsplit_once('.').expect("three parts");
    let mut group = c.benchmark_group("mint_vs_sign");
    group.bench_function("bare_sign", |b| {
        b.iter(|| black_box(&fixture.key).sign(black_box(signing_input.as_bytes())));
    });
    group.bench_function("mint", |b| {
        b.iter(|| fixture.issuer.mint(black_box(&fixture.request)));
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let fixture = Fixture::new();
    cold_vs_verify_strict(&mut c, &fixture);
    warm_vs_cold(&mut c, &fixture);
    reject_vs_cold(&mut c, &fixture);
    mint_vs_sign(&mut c, &fixture);
    usage_vs_warm(&mut c, &fixture);
    c.final_summary();
}
