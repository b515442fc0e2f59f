//! Leaked tokens (issue 13): the secret-scanner pattern `TOKEN_PATTERN` matches every token
//! edgetoken mints, through the HTTP issuer and the library issuer, whatever its name,
//! permissions, tenant, duration, subject, issuer URL or key; and JWTs of other issuers do not
//! match it.

use std::sync::Arc;

use base64::Engine as _;

use edgetoken::clock::ManualClock;
use edgetoken::keys::SigningKey;
use edgetoken::permissions::Scope;
use edgetoken::token::{Issuer, Lifetime, MintRequest, TOKEN_PATTERN, TOKEN_PREFIX};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand_core::{OsRng, RngCore as _};
use regex::Regex;
use serde_json::json;

use crate::support::issuer::{ALICE, BOB, Options, TestIssuer};
use crate::support::tokens::{NOW, b64, sign_raw};

fn pattern() -> Regex {
    Regex::new(TOKEN_PATTERN).expect("TOKEN_PATTERN compiles")
}

/// Asserts the pattern's capture group 1 is exactly `token` when it sits in text the way leaks
/// look.
fn assert_found(pattern: &Regex, token: &str) {
    for text in [
        token.to_owned(),
        format!("Authorization: Bearer {token}\r\n"),
        format!("{{\"token\":\"{token}\"}}"),
        format!("https://api.example/x?access_token={token}&page=2"),
        format!("export EDGETOKEN='{token}'"),
    ] {
        let found: Vec<&str> = pattern
            .captures_iter(&text)
            .map(|c| c.get(1).expect("group 1 is the token").as_str())
            .collect();
        assert_eq!(found, [token], "in {text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_the_http_issuer_mints_matches_the_scanner_pattern() {
    let issuer = TestIssuer::start(Options {
        extra: "mints_per_hour = 1000\n".into(),
        ..Options::default()
    })
    .await;
    let pattern = pattern();
    let names = [
        None,
        Some("ci".to_owned()),
        Some("deploy bot — prod ✓".to_owned()),
        Some("x".repeat(100)),
        Some("\"quoted\" <b>name</b> & more".to_owned()),
    ];
    let durations = ["1h", "4h", "8h", "12h", "max"];
    let mut minted = 0;
    for (i, name) in names.iter().enumerate() {
        for (j, duration) in durations.iter().enumerate() {
            let (person, tenant, permissions) = match (i + j) % 5 {
                0 => (&ALICE, "acme", json!(["runs:write", "policies:read"])),
                1 => (&ALICE, "acme", json!(["runs:read"])),
                2 => (&ALICE, "globex", json!(["read-all"])),
                3 => (&ALICE, "globex", json!(["detections:read", "members:read"])),
                _ => (&BOB, "acme", json!(["runs:read"])),
            };
            let mut body = json!({"duration": duration, "permissions": permissions});
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            let answer = person.mint(&issuer, tenant, body).await;
            let token = answer["token"].as_str().unwrap();
            assert!(token.starts_with(TOKEN_PREFIX), "{token}");
            assert_found(&pattern, token);
            minted += 1;
        }
    }
    assert_eq!(minted, 25);
    issuer.stop().await;
}

#[test]
fn every_token_the_library_issuer_mints_matches_the_scanner_pattern() {
    let pattern = pattern();
    let scopes = [
        "runs:read",
        "runs:write policies:read",
        "detections:read members:read policies:read runs:read",
        "detections:write members:write policies:write runs:write",
    ];
    let issuers = [
        "http://127.0.0.1:8080",
        "https://tokens.example.com",
        "https://issuer.example/tenants/x?y=z",
        "",
    ];
    let lifetimes = [
        Lifetime::OneHour,
        Lifetime::FourHours,
        Lifetime::EightHours,
        Lifetime::TwelveHours,
    ];
    let mut checked = 0;
    for round in 0..2_000_usize {
        // A fresh random key every few tokens: the kid varies the header.
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let issuer = Issuer::new(
            SigningKey::from_seed(&seed),
            issuers[round % issuers.len()],
            if round % 3 == 0 {
                "edgetoken"
            } else {
                "edge-api"
            },
            Arc::new(ManualClock::at(NOW + i64::try_from(round).unwrap())),
        );
        let subject = match round % 4 {
            0 => "alice".to_owned(),
            1 => format!("user-{round}@example.com"),
            2 => "x".repeat(255),
            _ => "CN=svc,O=Example".to_owned(),
        };
        let tenant = match round % 3 {
            0 => "acme".to_owned(),
            1 => format!("tenant-{round}"),
            _ => "a".repeat(64),
        };
        let request = MintRequest {
            subject: subject.parse().unwrap(),
            tenant: tenant.parse().unwrap(),
            scope: Scope::parse_claim(scopes[round % scopes.len()]).unwrap(),
            lifetime: lifetimes[(round / 4) % lifetimes.len()],
        };
        let token = issuer.mint(&request).unwrap();
        let token = token.token.expose();
        assert!(
            pattern.is_match(token),
            "round {round} does not match: {token}"
        );
        if round % 50 == 0 {
            assert_found(&pattern, token);
        }
        checked += 1;
    }
    assert_eq!(checked, 2_000);
}

/// A token of `header` and `payload` (raw JSON text) with a random signature of `sig_len`
/// bytes: what matters to a scanner is the shape, not whether it verifies.
fn forged(header: &str, payload: &str, sig_len: usize) -> String {
    let mut signature = vec![0u8; sig_len];
    OsRng.fill_bytes(&mut signature);
    format!("{}.{}.{}", b64(header), b64(payload), b64(signature))
}

fn random_kid(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    b64(bytes).chars().take(len).collect()
}

/// JWTs other issuers produce: other algorithms, other header orders and members, other
/// `typ`, kids of other shapes, and our exact header over claims that are not ours.
fn other_issuers_tokens() -> Vec<(&'static str, String)> {
    let claims = json!({
        "sub": "alice", "iss": "https://login.example", "aud": "api",
        "iat": NOW, "exp": NOW + 3600, "scope": "runs:read",
    });
    let ed_key = SigningKey::from_seed(&[7; 32]);
    let ed_pem = ed_key.to_pkcs8_pem().unwrap();
    let der: String = ed_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let ed_encoding = EncodingKey::from_ed_der(&der);
    let kid = ed_key.kid().to_string();
    let mut tokens = Vec::new();
    for i in 0..50 {
        let claims = json!({"n": i, "claims": claims});
        // jsonwebtoken writes `typ` before `alg`, whatever the algorithm.
        let hs = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(format!("secret-{i}").as_bytes()),
        )
        .unwrap();
        tokens.push(("jsonwebtoken HS256", hs));
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.clone());
        tokens.push((
            "jsonwebtoken EdDSA at+jwt with kid",
            jsonwebtoken::encode(&header, &claims, &ed_encoding).unwrap(),
        ));
        let cases = hand_built(&claims.to_string());
        for (what, header, payload, sig_len) in cases {
            tokens.push((what, forged(&header, &payload, sig_len)));
        }
        tokens.push((
            "our header and claims, RSA-sized signature with `-` after 86 characters",
            longer_signature_ending_like_ours(i),
        ));
        // A real signature, but over a header with a space in it.
        tokens.push((
            "our members with whitespace",
            sign_raw(
                &ed_key,
                format!(r#"{{"alg": "EdDSA","typ":"at+jwt","kid":"{kid}"}}"#).as_bytes(),
                br#"{"iss":"https://issuer.example"}"#,
            ),
        ));
    }
    tokens
}

/// Our header and claims with a 256-byte signature whose 86th character could end an Ed25519
/// one and whose 87th is `-`, `_` or a letter: a word boundary would end the match there, one
/// random RSA-sized signature in 1,024 looks like this. `i` picks the characters.
fn longer_signature_ending_like_ours(i: usize) -> String {
    let token = forged(
        &our_header(&random_kid(43)),
        r#"{"iss":"https://issuer.example"}"#,
        256,
    );
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let last = ["A", "Q", "g", "w"][i % 4];
    let next = ["-", "_", "x"][i % 3];
    format!(
        "{signed}.{}{last}{next}{}",
        &signature[..85],
        &signature[87..]
    )
}

/// The header edgetoken writes, byte for byte, with `kid`.
fn our_header(kid: &str) -> String {
    format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#)
}

/// Hand-built headers of other issuers, over `payload`: (what, header, payload, signature
/// length in bytes).
fn hand_built(payload: &str) -> [(&'static str, String, String, usize); 10] {
    let k43 = random_kid(43);
    let ours = our_header(&k43);
    [
        (
            "RS256 with kid",
            format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{k43}"}}"#),
            payload.to_owned(),
            256,
        ),
        (
            "RS256 at+jwt",
            format!(
                r#"{{"alg":"RS256","typ":"at+jwt","kid":"{}"}}"#,
                random_kid(20)
            ),
            payload.to_owned(),
            256,
        ),
        (
            "ES256",
            format!(r#"{{"alg":"ES256","typ":"at+jwt","kid":"{k43}"}}"#),
            payload.to_owned(),
            64,
        ),
        (
            "EdDSA typ JWT",
            format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{k43}"}}"#),
            payload.to_owned(),
            64,
        ),
        (
            "EdDSA kid before typ",
            format!(r#"{{"alg":"EdDSA","kid":"{k43}","typ":"at+jwt"}}"#),
            payload.to_owned(),
            64,
        ),
        (
            "EdDSA without kid",
            r#"{"alg":"EdDSA","typ":"at+jwt"}"#.to_owned(),
            payload.to_owned(),
            64,
        ),
        (
            "EdDSA with a UUID kid",
            r#"{"alg":"EdDSA","typ":"at+jwt","kid":"6f1c2a9e-1b3d-4c5e-9f70-123456789abc"}"#
                .to_owned(),
            payload.to_owned(),
            64,
        ),
        (
            "Ed25519 (RFC 9864)",
            format!(r#"{{"alg":"Ed25519","typ":"at+jwt","kid":"{k43}"}}"#),
            payload.to_owned(),
            64,
        ),
        (
            "our header, claims not starting with iss",
            ours.clone(),
            payload.to_owned(),
            64,
        ),
        (
            "our header and claims, RSA-sized signature",
            ours,
            r#"{"iss":"https://issuer.example","sub":"x"}"#.to_owned(),
            256,
        ),
    ]
}

#[test]
fn jwts_of_other_issuers_do_not_match_the_scanner_pattern() {
    let pattern = pattern();
    let tokens = other_issuers_tokens();
    let matched: Vec<&str> = tokens
        .iter()
        .filter(|(_, token)| pattern.is_match(token))
        .map(|(what, _)| *what)
        .collect();
    eprintln!(
        "{} of {} JWTs of other issuers matched the edgetoken pattern",
        matched.len(),
        tokens.len()
    );
    assert!(tokens.len() >= 600);
    assert_eq!(matched, Vec::<&str>::new(), "false positives");
}
