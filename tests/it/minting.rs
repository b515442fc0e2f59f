//! The minting side of the token core (THREATS 1G): what the issuer refuses to produce, and
//! that what it produces passes the verifier's strict rules.

#![allow(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions: a failed expectation is a failed test"
)]

use edgetoken::permissions::Scope;
use edgetoken::token::{
    Issuer, Lifetime, MintError, MintRequest, SettingsError, Subject, TenantId, TokenId,
    VerifierSettings,
};

use crate::support::tokens::{AUDIENCE, Fixture, ISSUER, NOW, SEED, parts, unb64};

fn issuer(fx: &Fixture) -> Issuer {
    Issuer::new(
        edgetoken::keys::SigningKey::from_seed(&SEED),
        ISSUER,
        AUDIENCE,
        fx.clock.clone(),
    )
}

fn request(subject: &str, scope: Scope, lifetime: Lifetime) -> MintRequest {
    MintRequest {
        subject: subject.parse().expect("subject"),
        tenant: "acme".parse().expect("tenant"),
        scope,
        lifetime,
    }
}

#[test]
fn mint_refuses_a_token_without_permissions() {
    let fx = Fixture::new();
    let outcome = issuer(&fx).mint(&request("alice", Scope::default(), Lifetime::OneHour));
    assert!(matches!(outcome, Err(MintError::EmptyScope)));
}

#[test]
fn every_offered_lifetime_verifies_and_none_exceeds_12_hours() {
    let fx = Fixture::new();
    let scope = Scope::parse_claim("runs:read").expect("scope");
    for lifetime in [
        Lifetime::OneHour,
        Lifetime::FourHours,
        Lifetime::EightHours,
        Lifetime::TwelveHours,
    ] {
        let minted = issuer(&fx)
            .mint(&request("alice", scope.clone(), lifetime))
            .expect("mints");
        let claims = fx.verify(minted.token.expose()).expect("verifies");
        let lifetime_secs = claims.expires_at.unix_timestamp() - claims.issued_at.unix_timestamp();
        assert_eq!(lifetime_secs, lifetime.seconds());
        assert!(lifetime_secs <= 12 * 3600);
        assert_eq!(claims.issued_at.unix_timestamp(), NOW);
    }
}

#[test]
fn mint_serialises_claims_so_a_quote_in_the_subject_cannot_inject_claims() {
    // THREATS 1G#45: `sub` may hold any visible ASCII, including `"` and `,`; the claims are
    // built with a serializer, so this stays one string and the tenant is unchanged.
    let fx = Fixture::new();
    let hostile = r#"alice","tenant":"globex","x":""#;
    let scope = Scope::parse_claim("runs:read").expect("scope");
    let minted = issuer(&fx)
        .mint(&request(hostile, scope, Lifetime::OneHour))
        .expect("mints");
    let claims = fx.verify(minted.token.expose()).expect("verifies");
    assert_eq!(claims.subject.as_str(), hostile);
    assert_eq!(claims.tenant.as_str(), "acme");
}

#[test]
fn identifiers_refuse_values_that_would_break_claims_or_headers() {
    for tenant in ["acme\",\"scope\":\"runs:write", "Acme", "a\0", ""] {
        assert!(tenant.parse::<TenantId>().is_err(), "{tenant:?}");
    }
    for subject in ["alice\r\nX-Auth-Tenant: globex", "alice bob", ""] {
        assert!(subject.parse::<Subject>().is_err(), "{subject:?}");
    }
    assert!(TokenId::new(&"A".repeat(21)).is_err());
}

#[test]
fn minted_jti_is_fresh_128_bit_base64url() {
    let fx = Fixture::new();
    let scope = Scope::parse_claim("runs:read").expect("scope");
    let issuer = issuer(&fx);
    let first = issuer
        .mint(&request("alice", scope.clone(), Lifetime::OneHour))
        .expect("mints");
    let second = issuer
        .mint(&request("alice", scope, Lifetime::OneHour))
        .expect("mints");
    assert_ne!(first.claims.token_id, second.claims.token_id);
    assert_eq!(unb64(first.claims.token_id.as_str()).len(), 16);
    // Same key, same header; different jti, so different claims and signature.
    assert_eq!(
        parts(first.token.expose())[0],
        parts(second.token.expose())[0]
    );
}

#[test]
fn raw_token_never_prints_itself() {
    let fx = Fixture::new();
    let scope = Scope::parse_claim("runs:read").expect("scope");
    let minted = issuer(&fx)
        .mint(&request("alice", scope, Lifetime::OneHour))
        .expect("mints");
    let debug = format!("{minted:?}");
    assert!(!debug.contains(minted.token.expose()));
    assert!(!debug.contains(parts(minted.token.expose())[2]));
}

#[test]
fn verifier_settings_refuse_leeway_over_five_minutes() {
    let mut settings = VerifierSettings::new(ISSUER, AUDIENCE);
    settings.leeway = std::time::Duration::from_mins(5);
    assert_eq!(settings.validate(), Ok(()));
    settings.leeway = std::time::Duration::from_secs(301);
    assert_eq!(settings.validate(), Err(SettingsError::LeewayTooLarge));
}
