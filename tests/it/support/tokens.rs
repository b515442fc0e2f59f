//! Hand-built tokens for the token core's rejection tests (SPEC §1, THREATS §1).
//!
//! The verifier under test trusts one fixed-seed key. Tokens are assembled from raw header and
//! claims text, so a test can change exactly one thing (a duplicate member, a mistyped time, a
//! header parameter) and sign the result with a valid signature: the rule under test is then
//! the one that fires, not the signature check.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions: a failed expectation is a failed test"
)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::clock::ManualClock;
use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::revocation::{MemoryRevocations, RevocationCheck, RevocationSettings};
use edgetoken::token::{Claims, Rejection, Requirement, Verifier, VerifierSettings};

/// The configured issuer and audience.
pub(crate) const ISSUER: &str = "https://issuer.example";
pub(crate) const AUDIENCE: &str = "edge-api";
/// 2026-01-01T00:00:00Z: the verifier's clock, and `iat`/`nbf` of the default claims.
pub(crate) const NOW: i64 = 1_767_225_600;
/// The default leeway of [`VerifierSettings::new`], in seconds.
pub(crate) const LEEWAY: i64 = 30;
/// A `jti` of the minimum length (22 base64url characters, 128 bits).
pub(crate) const JTI: &str = "jti-valid-000000000001";

/// The trusted key's seed (a fixed test seed, not an RFC test key).
pub(crate) const SEED: [u8; 32] = *b"edgetoken-tests-trusted-key-0001";
/// A second trusted key, for "right kid, wrong key" cases.
pub(crate) const SECOND_SEED: [u8; 32] = *b"edgetoken-tests-trusted-key-0002";
/// A key the verifier does not trust.
pub(crate) const ATTACKER_SEED: [u8; 32] = *b"edgetoken-tests-attacker-key-001";

/// base64url without padding.
pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decode (test input is ours; a failure is a bug in the test).
pub(crate) fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("test base64url")
}

/// A JSON object kept as an ordered list of `name: raw JSON value` members, so tests can
/// write duplicates, raw numbers such as `1e9` and any value type.
#[derive(Debug, Clone)]
pub(crate) struct Members(Vec<(String, String)>);

impl Members {
    /// Replaces every member `name` with one `name: raw`, or appends it.
    #[must_use]
    pub(crate) fn set(mut self, name: &str, raw: &str) -> Self {
        if let Some(pos) = self.0.iter().position(|(n, _)| n == name) {
            self.0.retain(|(n, _)| n != name);
            self.0.insert(pos, (name.to_owned(), raw.to_owned()));
        } else {
            self.0.push((name.to_owned(), raw.to_owned()));
        }
        self
    }

    /// Sets `name` to the JSON string `value`.
    #[must_use]
    pub(crate) fn set_str(self, name: &str, value: &str) -> Self {
        let raw = serde_json::to_string(value).expect("string serialises");
        self.set(name, &raw)
    }

    /// Sets `name` to the integer `value`.
    #[must_use]
    pub(crate) fn set_int(self, name: &str, value: i64) -> Self {
        self.set(name, &value.to_string())
    }

    /// Appends `name: raw` even if `name` is present (a duplicate member).
    #[must_use]
    pub(crate) fn push(mut self, name: &str, raw: &str) -> Self {
        self.0.push((name.to_owned(), raw.to_owned()));
        self
    }

    /// Drops `name`.
    #[must_use]
    pub(crate) fn remove(mut self, name: &str) -> Self {
        self.0.retain(|(n, _)| n != name);
        self
    }

    /// The compact JSON text, members in order.
    pub(crate) fn json(&self) -> String {
        let body: Vec<String> = self
            .0
            .iter()
            .map(|(name, raw)| format!("{}:{raw}", serde_json::to_string(name).expect("name")))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

/// The header edgetoken mints for `key`.
pub(crate) fn header_for(key: &SigningKey) -> Members {
    Members(Vec::new())
        .set_str("alg", "EdDSA")
        .set_str("typ", "at+jwt")
        .set_str("kid", key.kid().as_str())
}

/// Claims that pass every rule: 1 h lifetime from [`NOW`], `runs:read` in tenant `acme`.
pub(crate) fn valid_claims() -> Members {
    Members(Vec::new())
        .set_str("iss", ISSUER)
        .set_str("aud", AUDIENCE)
        .set_str("sub", "alice")
        .set_str("tenant", "acme")
        .set_str("scope", "runs:read")
        .set_int("iat", NOW)
        .set_int("nbf", NOW)
        .set_int("exp", NOW + 3600)
        .set_str("jti", JTI)
}

/// `b64(header) "." b64(payload) "." b64(sign(key, signing input))` over raw bytes.
pub(crate) fn sign_raw(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(payload));
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(signature))
}

/// A token of `header` and `claims` signed by `key`.
pub(crate) fn sign(key: &SigningKey, header: &Members, claims: &Members) -> String {
    sign_raw(key, header.json().as_bytes(), claims.json().as_bytes())
}

/// The three parts of a compact token.
pub(crate) fn parts(token: &str) -> [&str; 3] {
    let mut it = token.split('.');
    let parts = [
        it.next().expect("header"),
        it.next().expect("payload"),
        it.next().expect("signature"),
    ];
    assert!(it.next().is_none(), "test token has more than three parts");
    parts
}

/// HMAC-SHA256 (RFC 2104), for the HS256 key-confusion cases; no HMAC crate is a dependency.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A verifier trusting [`SEED`] and [`SECOND_SEED`], on a [`ManualClock`] at [`NOW`], with an
/// in-memory revocation set.
#[derive(Debug)]
pub(crate) struct Fixture {
    pub(crate) key: SigningKey,
    pub(crate) second: SigningKey,
    pub(crate) attacker: SigningKey,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) revocations: Arc<MemoryRevocations>,
    pub(crate) verifier: Verifier,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Self::build(None)
    }

    /// A fixture whose verifier asks `check` about revocation (the fixture's own
    /// `revocations` is then only used by tests that revoke).
    pub(crate) fn with_revocation_check(check: Arc<dyn RevocationCheck>) -> Self {
        Self::build(Some(check))
    }

    fn build(check: Option<Arc<dyn RevocationCheck>>) -> Self {
        let key = SigningKey::from_seed(&SEED);
        let second = SigningKey::from_seed(&SECOND_SEED);
        let clock = Arc::new(ManualClock::at(NOW));
        // The store reads the fixture's clock: entries are pruned by `exp + leeway` against
        // the same "now" the verifier uses.
        let revocations = Arc::new(MemoryRevocations::with_settings(
            &RevocationSettings::default(),
            clock.clone(),
        ));
        let check = check.unwrap_or_else(|| revocations.clone());
        let verifier = Verifier::new(
            VerifierSettings::new(ISSUER, AUDIENCE),
            ring_of(&[&key, &second]),
            check,
            clock.clone(),
        )
        .expect("valid settings");
        Self {
            key,
            second,
            attacker: SigningKey::from_seed(&ATTACKER_SEED),
            clock,
            revocations,
            verifier,
        }
    }

    /// A token of the trusted key's header and `claims`.
    pub(crate) fn token(&self, claims: &Members) -> String {
        sign(&self.key, &header_for(&self.key), claims)
    }

    /// A token signed by the trusted key with `header` over the default claims.
    pub(crate) fn with_header(&self, header: &Members) -> String {
        sign(&self.key, header, &valid_claims())
    }

    /// A token signed by the trusted key over raw header and claims bytes.
    pub(crate) fn raw(&self, header: &[u8], claims: &[u8]) -> String {
        sign_raw(&self.key, header, claims)
    }

    /// Verifies with no tenant or permission requirement.
    pub(crate) fn verify(&self, token: &str) -> Result<Arc<Claims>, Rejection> {
        self.verifier.verify(token, &Requirement::any())
    }

    /// Asserts that `token` is refused with exactly `expected`.
    #[track_caller]
    pub(crate) fn assert_rejects(&self, token: &str, expected: Rejection) {
        assert_eq!(self.verify(token).err(), Some(expected));
    }
}

/// A ring trusting `keys`.
pub(crate) fn ring_of(keys: &[&SigningKey]) -> KeyRing {
    let mut ring = KeyRing::new();
    for key in keys {
        ring.insert(TrustedKey::from_bytes(&key.public_bytes()).expect("fixture key passes"));
    }
    ring
}

/// The base64url alphabet, in value order.
pub(crate) const ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `signature` (86 characters for 64 bytes) with one of the 4 unused bits of its last
/// character set: the same bytes, spelled non-canonically.
pub(crate) fn set_unused_bit(signature: &str) -> String {
    let (head, last) = signature.split_at(signature.len() - 1);
    let value = ALPHABET
        .iter()
        .position(|&c| c == last.as_bytes()[0])
        .expect("base64url character");
    assert_eq!(value & 0x0f, 0, "canonical spelling has zero unused bits");
    format!("{head}{}", char::from(ALPHABET[value | 1]))
}
