//! The golden token in `tests/data/golden/` keeps verifying, and today's issuer still produces
//! it byte for byte (SPEC §1 format; STYLE: golden tokens keep verifying).

#![allow(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions: a failed expectation is a failed test"
)]

use std::path::PathBuf;
use std::sync::Arc;

use edgetoken::clock::ManualClock;
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::permissions::Scope;
use edgetoken::revocation::MemoryRevocations;
use edgetoken::token::{
    Issuer, Lifetime, MintRequest, Rejection, Requirement, Verifier, VerifierSettings,
};

use crate::support::tokens::{b64, parts, unb64};

const SEED: [u8; 32] = *b"edgetoken-golden-token-seed-v001";
const IAT: i64 = 1_767_225_600;
const EXP: i64 = IAT + 12 * 3600;
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "edge-api";

fn golden_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name);
    std::fs::read_to_string(&path).expect("golden file is committed")
}

fn golden_token() -> String {
    golden_file("token.jwt").trim_end().to_owned()
}

fn golden_key() -> TrustedKey {
    let jwk = serde_json::from_str(&golden_file("key.jwk.json")).expect("JWK parses");
    TrustedKey::from_jwk(&jwk, "tests/data/golden/key.jwk.json").expect("golden key passes")
}

fn verifier_at(clock: &Arc<ManualClock>) -> Verifier {
    let mut ring = KeyRing::new();
    ring.insert(golden_key());
    Verifier::new(
        VerifierSettings::new(ISSUER, AUDIENCE),
        ring,
        Arc::new(MemoryRevocations::new()),
        clock.clone(),
    )
    .expect("valid settings")
}

#[test]
fn golden_token_verifies_at_its_iat_with_its_claims() {
    let clock = Arc::new(ManualClock::at(IAT));
    let need = Requirement::any()
        .tenant("golden".parse().expect("tenant"))
        .permission("runs:read".parse().expect("permission"));
    let claims = verifier_at(&clock)
        .verify(&golden_token(), &need)
        .expect("golden token verifies");
    assert_eq!(claims.issuer, ISSUER);
    assert_eq!(claims.audience, AUDIENCE);
    assert_eq!(claims.subject.as_str(), "golden-user");
    assert_eq!(claims.tenant.as_str(), "golden");
    assert_eq!(claims.scope.to_claim(), "policies:write runs:read");
    assert_eq!(claims.issued_at.unix_timestamp(), IAT);
    assert_eq!(claims.not_before.unix_timestamp(), IAT);
    assert_eq!(claims.expires_at.unix_timestamp(), EXP);
    assert_eq!(claims.kid, *golden_key().kid());
}

#[test]
fn golden_token_expires_at_exp_plus_leeway() {
    let clock = Arc::new(ManualClock::at(EXP + 29));
    let verifier = verifier_at(&clock);
    assert!(
        verifier
            .verify(&golden_token(), &Requirement::any())
            .is_ok()
    );
    clock.set(EXP + 30);
    assert_eq!(
        verifier.verify(&golden_token(), &Requirement::any()).err(),
        Some(Rejection::Expired)
    );
}

#[test]
fn golden_key_is_the_fixed_seed_key() {
    let key = SigningKey::from_seed(&SEED);
    let golden = golden_key();
    assert_eq!(key.public_bytes(), golden.to_bytes());
    assert_eq!(key.kid(), golden.kid());
}

#[test]
fn golden_signature_is_reproduced_byte_for_byte() {
    let token = golden_token();
    let [header, payload, signature] = parts(&token);
    let signing_input = format!("{header}.{payload}");
    let resigned = SigningKey::from_seed(&SEED).sign(signing_input.as_bytes());
    assert_eq!(b64(resigned), signature);
}

#[test]
fn todays_issuer_mints_the_golden_token_but_for_its_random_jti() {
    let golden = golden_token();
    let [golden_header, golden_payload, _] = parts(&golden);
    let golden_claims: serde_json::Value =
        serde_json::from_slice(&unb64(golden_payload)).expect("claims JSON");
    let golden_jti = golden_claims["jti"].as_str().expect("jti");

    let issuer = Issuer::new(
        SigningKey::from_seed(&SEED),
        ISSUER,
        AUDIENCE,
        Arc::new(ManualClock::at(IAT)),
    );
    let minted = issuer
        .mint(&MintRequest {
            subject: "golden-user".parse().expect("subject"),
            tenant: "golden".parse().expect("tenant"),
            scope: Scope::parse_claim("policies:write runs:read").expect("scope"),
            lifetime: Lifetime::TwelveHours,
        })
        .expect("mints");
    let fresh = minted.token.expose();
    let [fresh_header, fresh_payload, _] = parts(fresh);
    assert_eq!(fresh_header, golden_header);

    // Put the golden jti into the fresh claims text: the bytes must then be the golden ones,
    // and signing them must give the golden token exactly.
    let fresh_json = String::from_utf8(unb64(fresh_payload)).expect("UTF-8");
    let with_golden_jti = fresh_json.replace(minted.claims.token_id.as_str(), golden_jti);
    assert_eq!(b64(&with_golden_jti), golden_payload);
    let signing_input = format!("{fresh_header}.{}", b64(&with_golden_jti));
    let signature = SigningKey::from_seed(&SEED).sign(signing_input.as_bytes());
    assert_eq!(format!("{signing_input}.{}", b64(signature)), golden);
}
