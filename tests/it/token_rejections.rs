//! Every way a token can be refused, through the public API only (SPEC §1, THREATS 1A-1F).
//!
//! Each test builds one hostile, malformed or out-of-policy token by hand and asserts the exact
//! typed [`Rejection`]. Where a rule sits after the signature check, the token is correctly
//! signed by a trusted key, so the rule under test is the one that fires. Time comes from a
//! `ManualClock` only. Revocation storage itself is tested elsewhere; here it is the in-memory
//! set, used to reach each granularity through `Verifier::verify`.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions: a failed expectation is a failed test"
)]

use std::sync::Arc;

use edgetoken::keys::{KeyError, SigningKey, TrustedKey, thumbprint};
use edgetoken::permissions::Permission;
use edgetoken::revocation::{Revocation, RevocationCheck, RevocationStatus, TokenFacts};
use edgetoken::token::{MAX_TOKEN_BYTES, Malformed, Rejection, Requirement};

use crate::support::tokens::{
    AUDIENCE, Fixture, ISSUER, JTI, LEEWAY, NOW, b64, header_for, hmac_sha256, parts, sign,
    sign_raw, unb64, valid_claims,
};

const HEADER: Rejection = Rejection::Malformed(Malformed::Header);
const CLAIMS: Rejection = Rejection::Malformed(Malformed::Claims);
const CLAIM_VALUE: Rejection = Rejection::Malformed(Malformed::ClaimValue);
const BASE64: Rejection = Rejection::Malformed(Malformed::Base64);
const SEGMENTS: Rejection = Rejection::Malformed(Malformed::Segments);
const ALGORITHM: Rejection = Rejection::Malformed(Malformed::Algorithm);

fn permission(text: &str) -> Permission {
    text.parse().expect("test permission")
}

// ---------------------------------------------------------------------------------------------
// Controls: the hand-built tokens are valid until one thing is changed.

#[test]
fn hand_built_token_with_valid_claims_verifies() {
    let fx = Fixture::new();
    let claims = fx
        .verify(&fx.token(&valid_claims()))
        .expect("control token verifies");
    assert_eq!(claims.subject.as_str(), "alice");
    assert_eq!(claims.tenant.as_str(), "acme");
    assert_eq!(claims.token_id.as_str(), JTI);
    assert_eq!(claims.kid, *fx.key.kid());
}

#[test]
fn token_signed_by_the_second_trusted_key_verifies() {
    let fx = Fixture::new();
    let token = sign(&fx.second, &header_for(&fx.second), &valid_claims());
    assert!(fx.verify(&token).is_ok());
}

// ---------------------------------------------------------------------------------------------
// 1A. Algorithm selection.

#[test]
fn verify_rejects_alg_none_in_every_spelling_with_the_real_signature_attached() {
    let fx = Fixture::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = fx.with_header(&header_for(&fx.key).set_str("alg", alg));
        assert_eq!(fx.verify(&token).err(), Some(ALGORITHM), "alg {alg}");
    }
}

#[test]
fn verify_rejects_alg_none_with_an_empty_signature() {
    let fx = Fixture::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = header_for(&fx.key).set_str("alg", alg).json();
        let token = format!("{}.{}.", b64(header), b64(valid_claims().json()));
        assert_eq!(fx.verify(&token).err(), Some(SEGMENTS), "alg {alg}");
    }
}

#[test]
fn verify_rejects_hs256_keyed_with_the_public_key_in_every_encoding() {
    let fx = Fixture::new();
    let public = fx.key.public_bytes();
    let spki = [
        &[
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ][..],
        &public[..],
    ]
    .concat();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &spki)
    );
    // OpenSSH wire format: string "ssh-ed25519", string key (CVE-2022-29217 used this text).
    let ssh_blob = [
        &[0, 0, 0, 11][..],
        b"ssh-ed25519",
        &[0, 0, 0, 32],
        &public[..],
    ]
    .concat();
    let ssh = format!(
        "ssh-ed25519 {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ssh_blob)
    );
    let secrets: [(&str, Vec<u8>); 4] = [
        ("raw 32 bytes", public.to_vec()),
        ("base64url x", b64(public).into_bytes()),
        ("SPKI PEM", pem.into_bytes()),
        ("OpenSSH public key", ssh.into_bytes()),
    ];
    let header = header_for(&fx.key).set_str("alg", "HS256").json();
    for (label, secret) in secrets {
        let signing_input = format!("{}.{}", b64(&header), b64(valid_claims().json()));
        let mac = hmac_sha256(&secret, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", b64(mac));
        assert_eq!(fx.verify(&token).err(), Some(ALGORITHM), "{label}");
    }
}

#[test]
fn verify_rejects_other_algorithms_compared_case_sensitively() {
    let fx = Fixture::new();
    for alg in [
        "ES256",
        "RS256",
        "Ed448",
        "eddsa",
        "EDDSA",
        "EdDSA ",
        " EdDSA",
        "EdDSA\u{0}",
    ] {
        let token = fx.with_header(&header_for(&fx.key).set_str("alg", alg));
        assert_eq!(fx.verify(&token).err(), Some(ALGORITHM), "alg {alg:?}");
    }
}

#[test]
fn verify_rejects_rfc9864_fully_specified_ed25519_alg_by_policy() {
    let fx = Fixture::new();
    let token = fx.with_header(&header_for(&fx.key).set_str("alg", "Ed25519"));
    fx.assert_rejects(&token, ALGORITHM);
}

#[test]
fn verify_rejects_missing_null_or_non_string_alg_as_header_error() {
    let fx = Fixture::new();
    let headers = [
        header_for(&fx.key).remove("alg"),
        header_for(&fx.key).set("alg", "null"),
        header_for(&fx.key).set("alg", r#"["EdDSA"]"#),
        header_for(&fx.key).set("alg", "1"),
    ];
    for header in headers {
        assert_eq!(
            fx.verify(&fx.with_header(&header)).err(),
            Some(HEADER),
            "{header:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1B. Key selection.

#[test]
fn verify_rejects_token_signed_by_untrusted_kid() {
    let fx = Fixture::new();
    let token = sign(&fx.attacker, &header_for(&fx.attacker), &valid_claims());
    fx.assert_rejects(&token, Rejection::UnknownKey);
}

#[test]
fn verify_rejects_missing_kid() {
    let fx = Fixture::new();
    fx.assert_rejects(&fx.with_header(&header_for(&fx.key).remove("kid")), HEADER);
}

#[test]
fn verify_treats_kid_injection_strings_as_unknown_keys() {
    let fx = Fixture::new();
    for kid in [
        "k9",
        "",
        "../../../../dev/null",
        "/etc/passwd",
        "x' UNION SELECT key FROM keys --",
        "kid\u{0}",
        "kid\r\nX-Injected: 1",
        "http://169.254.169.254/latest/meta-data/",
        &format!("{} ", fx.key.kid()),
        &fx.key.kid().as_str().to_lowercase(),
    ] {
        let token = fx.with_header(&header_for(&fx.key).set_str("kid", kid));
        assert_eq!(
            fx.verify(&token).err(),
            Some(Rejection::UnknownKey),
            "kid {kid:?}"
        );
    }
}

#[test]
fn verify_rejects_non_string_kid() {
    let fx = Fixture::new();
    for raw in ["1", "null", "[]", "{}", "true"] {
        let token = fx.with_header(&header_for(&fx.key).set("kid", raw));
        assert_eq!(fx.verify(&token).err(), Some(HEADER), "kid {raw}");
    }
}

#[test]
fn verify_rejects_attacker_signature_under_a_trusted_kid() {
    let fx = Fixture::new();
    let token = sign(&fx.attacker, &header_for(&fx.key), &valid_claims());
    fx.assert_rejects(&token, Rejection::BadSignature);
}

#[test]
fn verify_rejects_token_signed_by_one_trusted_key_naming_the_other() {
    let fx = Fixture::new();
    let token = sign(&fx.key, &header_for(&fx.second), &valid_claims());
    fx.assert_rejects(&token, Rejection::BadSignature);
}

#[test]
fn key_loader_refuses_small_order_keys() {
    let identity = {
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        bytes
    };
    let order_two = {
        let mut bytes = [0xffu8; 32];
        bytes[0] = 0xec;
        bytes[31] = 0x7f;
        bytes
    };
    let order_four = [0u8; 32];
    for key in [identity, order_two, order_four] {
        assert!(
            matches!(TrustedKey::from_bytes(&key), Err(KeyError::SmallOrder)),
            "{key:02x?}"
        );
    }
}

#[test]
fn small_order_key_signature_that_verifies_any_message_never_verifies_strictly() {
    // A = identity, R = identity, S = 0: [S]B == R + [k]A holds for every message, so the
    // permissive `verify` accepts it (THREATS 1B#8). `verify_strict` must not.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut signature = [0u8; 64];
    signature[0] = 1;
    let raw = ed25519_dalek::VerifyingKey::from_bytes(&identity).expect("decompresses");
    let sig = ed25519_dalek::Signature::from_bytes(&signature);
    for message in [&b"any message"[..], b"another"] {
        assert!(raw.verify_strict(message, &sig).is_err());
        assert!(ed25519_dalek::Verifier::verify(&raw, message, &sig).is_ok());
    }
}

#[test]
fn verify_rejects_token_under_a_small_order_kid_that_no_ring_can_hold() {
    let fx = Fixture::new();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let header = header_for(&fx.key).set_str("kid", thumbprint(&identity).as_str());
    let signing_input = format!("{}.{}", b64(header.json()), b64(valid_claims().json()));
    let mut signature = [0u8; 64];
    signature[0] = 1;
    let token = format!("{signing_input}.{}", b64(signature));
    fx.assert_rejects(&token, Rejection::UnknownKey);
}

#[test]
fn verify_refuses_key_carrying_headers_without_following_them() {
    let fx = Fixture::new();
    let attacker_jwk = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#,
        b64(fx.attacker.public_bytes())
    );
    let cases = [
        ("jwk", attacker_jwk.clone()),
        ("jku", r#""https://attacker.example/jwks.json""#.to_owned()),
        (
            "jku",
            r#""http://169.254.169.254/latest/meta-data/""#.to_owned(),
        ),
        ("x5u", r#""https://attacker.example/cert.pem""#.to_owned()),
        ("x5c", r#"["MIIBszCCAVmgAwIBAgIUQ"]"#.to_owned()),
        ("x5t", r#""dGh1bWI""#.to_owned()),
    ];
    for (name, raw) in cases {
        // Signed by the attacker key the header points at, and by the trusted key: neither is
        // accepted, because the parameter itself is refused before any key is chosen.
        for (key, kid_key) in [(&fx.attacker, &fx.key), (&fx.key, &fx.key)] {
            let token = sign(key, &header_for(kid_key).set(name, &raw), &valid_claims());
            assert_eq!(fx.verify(&token).err(), Some(HEADER), "{name}");
        }
    }
    let no_kid = header_for(&fx.attacker)
        .remove("kid")
        .set("jwk", &attacker_jwk);
    let token = sign(&fx.attacker, &no_kid, &valid_claims());
    fx.assert_rejects(&token, HEADER);
}

// ---------------------------------------------------------------------------------------------
// 1C. Header semantics and token shape.

#[test]
fn verify_rejects_crit_in_every_form() {
    let fx = Fixture::new();
    let headers = [
        header_for(&fx.key)
            .set("crit", r#"["x-policy"]"#)
            .set_str("x-policy", "require-mfa"),
        header_for(&fx.key).set("crit", "[]"),
        header_for(&fx.key).set("crit", r#""exp""#),
        header_for(&fx.key).set("crit", r#"["alg"]"#),
        header_for(&fx.key).set("crit", r#"["absent"]"#),
        header_for(&fx.key).set("crit", r#"["b64","b64"]"#),
    ];
    for header in headers {
        assert_eq!(
            fx.verify(&fx.with_header(&header)).err(),
            Some(HEADER),
            "{header:?}"
        );
    }
}

#[test]
fn verify_rejects_unencoded_payload_b64_false() {
    let fx = Fixture::new();
    let header = header_for(&fx.key)
        .set("b64", "false")
        .set("crit", r#"["b64"]"#);
    // RFC 7797: the payload travels unencoded and the signature covers it raw. The header is
    // checked before the payload is decoded, so the `b64`/`crit` parameters are what fails.
    let payload = r#"{"sub":"alice"}"#;
    let signing_input = format!("{}.{payload}", b64(header.json()));
    let token = format!(
        "{signing_input}.{}",
        b64(fx.key.sign(signing_input.as_bytes()))
    );
    fx.assert_rejects(&token, HEADER);
    // With a normally encoded payload, and without crit, the parameter is still refused.
    fx.assert_rejects(&fx.with_header(&header), HEADER);
    fx.assert_rejects(
        &fx.with_header(&header_for(&fx.key).set("b64", "false")),
        HEADER,
    );
}

#[test]
fn verify_rejects_nested_jwt_cty_without_recursing() {
    let fx = Fixture::new();
    let inner = format!(
        "{}.{}.",
        b64(r#"{"alg":"none"}"#),
        b64(valid_claims().json())
    );
    let header = header_for(&fx.key).set_str("cty", "JWT");
    let token = sign_raw(&fx.key, header.json().as_bytes(), inner.as_bytes());
    fx.assert_rejects(&token, HEADER);
    // Without cty, a payload that is itself a JWT is not a claims object.
    let token = sign_raw(
        &fx.key,
        header_for(&fx.key).json().as_bytes(),
        inner.as_bytes(),
    );
    fx.assert_rejects(&token, CLAIMS);
}

#[test]
fn verify_rejects_wrong_typ() {
    let fx = Fixture::new();
    for typ in [
        "JWT",
        "jwt",
        "at+JWT",
        "AT+JWT",
        "application/at+jwt",
        "id_token+jwt",
        "",
    ] {
        let token = fx.with_header(&header_for(&fx.key).set_str("typ", typ));
        assert_eq!(
            fx.verify(&token).err(),
            Some(Rejection::Malformed(Malformed::Type)),
            "typ {typ:?}"
        );
    }
}

#[test]
fn verify_rejects_missing_or_non_string_typ() {
    let fx = Fixture::new();
    fx.assert_rejects(&fx.with_header(&header_for(&fx.key).remove("typ")), HEADER);
    fx.assert_rejects(
        &fx.with_header(&header_for(&fx.key).set("typ", "null")),
        HEADER,
    );
}

#[test]
fn verify_rejects_unknown_header_parameters_and_zip() {
    let fx = Fixture::new();
    for (name, raw) in [
        ("foo", r#""bar""#),
        ("zip", r#""DEF""#),
        ("cty", r#""at+jwt""#),
        ("enc", r#""A256GCM""#),
        ("Alg", r#""EdDSA""#),
    ] {
        let token = fx.with_header(&header_for(&fx.key).set(name, raw));
        assert_eq!(fx.verify(&token).err(), Some(HEADER), "{name}");
    }
}

#[test]
fn verify_rejects_wrong_segment_counts() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let cases = [
        String::new(),
        ".".to_owned(),
        "..".to_owned(),
        "...".to_owned(),
        h.to_owned(),
        format!("{h}.{p}"),
        format!("{h}.{p}."),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{token}."),
        format!("{token}.{s}"),
        format!("{h}.{p}.{s}.{p}.{s}"),
        format!(".{token}"),
    ];
    for case in cases {
        assert_eq!(fx.verify(&case).err(), Some(SEGMENTS), "{case:?}");
    }
}

#[test]
fn verify_rejects_json_serialized_jws_wrapping_a_valid_token() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let flattened = format!(r#"{{"payload":"{p}","protected":"{h}","signature":"{s}"}}"#);
    fx.assert_rejects(&flattened, SEGMENTS);
    // A polyglot that still has three dot-separated parts fails strict base64url.
    let polyglot = format!(r#"{{"a":"{token}"}}"#);
    fx.assert_rejects(&polyglot, BASE64);
}

// ---------------------------------------------------------------------------------------------
// 1D. Encoding and JSON strictness.

#[test]
fn verify_rejects_padded_base64url_in_any_part() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    for case in [
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}==.{s}"),
        format!("{h}.{p}.{s}=="),
        format!("{h}.{p}.{s}="),
    ] {
        assert_eq!(fx.verify(&case).err(), Some(BASE64), "{case}");
    }
}

#[test]
fn verify_rejects_standard_alphabet_base64() {
    let fx = Fixture::new();
    // Find a token whose signature uses `-` or `_`, then spell it with `+`/`/`.
    let token = (0..64)
        .map(|i| fx.token(&valid_claims().set_str("sub", &format!("user{i}"))))
        .find(|t| parts(t)[2].contains(['-', '_']))
        .expect("some signature has a URL-alphabet character");
    let [h, p, s] = parts(&token);
    let standard = s.replace('-', "+").replace('_', "/");
    fx.assert_rejects(&format!("{h}.{p}.{standard}"), BASE64);
}

#[test]
fn verify_rejects_non_zero_unused_bits_in_the_signature() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    // 64 bytes are 86 characters; the last carries 2 data bits and 4 unused ones. Every other
    // spelling of the same bytes must be refused, or one token would have 16 cache keys.
    let alphabet = crate::support::tokens::ALPHABET;
    let last = s.as_bytes()[s.len() - 1];
    let value = alphabet
        .iter()
        .position(|&c| c == last)
        .expect("in alphabet");
    assert_eq!(value & 0x0f, 0, "canonical spelling has zero unused bits");
    let mut refused = 0;
    for unused in 1..16 {
        let other = char::from(alphabet[(value & 0x30) | unused]);
        let spelled = format!("{h}.{p}.{}{other}", &s[..s.len() - 1]);
        assert_eq!(fx.verify(&spelled).err(), Some(BASE64), "{other}");
        refused += 1;
    }
    assert_eq!(refused, 15);
    assert!(fx.verify(&token).is_ok());
}

#[test]
fn verify_rejects_whitespace_and_line_breaks_around_or_inside_the_token() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let (s1, s2) = s.split_at(40);
    for case in [
        format!(" {token}"),
        format!("{token} "),
        format!("{token}\n"),
        format!("{token}\r\n"),
        format!("\t{token}"),
        format!("{h}.{p}.{s1}\r\n{s2}"),
        format!("{h} .{p}.{s}"),
        format!("{h}.{p}. {s}"),
    ] {
        assert_eq!(fx.verify(&case).err(), Some(BASE64), "{case:?}");
    }
}

#[test]
fn verify_rejects_characters_outside_the_base64url_alphabet() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    for case in [
        format!("?{h}.{p}.{s}"),
        format!("{h}.{p}?.{s}"),
        format!("{h}.{p}.{s}#"),
        format!("{h}.{p}.{s}\u{e9}"),
    ] {
        assert_eq!(fx.verify(&case).err(), Some(BASE64), "{case:?}");
    }
}

#[test]
fn verify_rejects_duplicate_alg_in_either_order() {
    let fx = Fixture::new();
    let kid = fx.key.kid().as_str();
    for header in [
        format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","alg":"none"}}"#),
        format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}","alg":"EdDSA"}}"#),
        format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","alg":"EdDSA"}}"#),
    ] {
        let token = fx.raw(header.as_bytes(), valid_claims().json().as_bytes());
        assert_eq!(fx.verify(&token).err(), Some(HEADER), "{header}");
    }
}

#[test]
fn verify_rejects_duplicate_kid_or_typ() {
    let fx = Fixture::new();
    let kid = fx.key.kid().as_str();
    for header in [
        header_for(&fx.key).push("kid", r#""k9""#),
        header_for(&fx.key).push("kid", &format!("{kid:?}")),
        header_for(&fx.key).push("typ", r#""JWT""#),
    ] {
        assert_eq!(
            fx.verify(&fx.with_header(&header)).err(),
            Some(HEADER),
            "{header:?}"
        );
    }
}

#[test]
fn verify_rejects_duplicate_exp_with_the_expired_value_first() {
    let fx = Fixture::new();
    let claims = valid_claims()
        .set_int("exp", NOW - 3600)
        .push("exp", &(NOW + 3600).to_string());
    fx.assert_rejects(&fx.token(&claims), CLAIMS);
    let reversed = valid_claims().push("exp", &(NOW - 3600).to_string());
    fx.assert_rejects(&fx.token(&reversed), CLAIMS);
}

#[test]
fn verify_rejects_duplicate_tenant() {
    let fx = Fixture::new();
    let claims = valid_claims().push("tenant", r#""other""#);
    fx.assert_rejects(&fx.token(&claims), CLAIMS);
    let same = valid_claims().push("tenant", r#""acme""#);
    fx.assert_rejects(&fx.token(&same), CLAIMS);
}

#[test]
fn verify_rejects_trailing_data_concatenation_and_bom_in_the_header() {
    let fx = Fixture::new();
    let header = header_for(&fx.key).json();
    let claims = valid_claims().json();
    for raw in [
        format!("{header}x"),
        format!("{header}{header}"),
        format!("{header} "),
        format!(" {header}"),
        format!("{header}\n"),
        format!("\u{feff}{header}"),
    ] {
        let token = fx.raw(raw.as_bytes(), claims.as_bytes());
        assert_eq!(fx.verify(&token).err(), Some(HEADER), "{raw:?}");
    }
}

#[test]
fn verify_rejects_trailing_data_concatenation_and_bom_in_the_claims() {
    let fx = Fixture::new();
    let header = header_for(&fx.key).json();
    let claims = valid_claims().json();
    for raw in [
        format!("{claims}x"),
        format!("{claims}{claims}"),
        format!("{claims}\n"),
        format!("\u{feff}{claims}"),
    ] {
        let token = fx.raw(header.as_bytes(), raw.as_bytes());
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{raw:?}");
    }
}

/// `members` as JSON with the marker `X` (in a string value) replaced by `bytes`.
fn json_with_bytes(members: &crate::support::tokens::Members, bytes: &[u8]) -> Vec<u8> {
    let mut json = members.json().into_bytes();
    let at = json.iter().position(|&b| b == b'X').expect("marker");
    json.splice(at..=at, bytes.iter().copied());
    json
}

#[test]
fn verify_rejects_invalid_utf8_in_header_and_claims() {
    let fx = Fixture::new();
    for invalid in [
        &[0xc3, 0x28][..],
        &[0xff],
        &[0xed, 0xa0, 0x80],
        &[0xc0, 0xaf],
    ] {
        let header = json_with_bytes(&header_for(&fx.key).set_str("kid", "X"), invalid);
        let token = fx.raw(&header, valid_claims().json().as_bytes());
        assert_eq!(fx.verify(&token).err(), Some(HEADER), "{invalid:02x?}");

        let claims = json_with_bytes(&valid_claims().set_str("sub", "X"), invalid);
        let token = fx.raw(header_for(&fx.key).json().as_bytes(), &claims);
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{invalid:02x?}");
    }
}

#[test]
fn verify_rejects_lone_surrogates_in_header_and_claims() {
    let fx = Fixture::new();
    let token = fx.with_header(&header_for(&fx.key).set("kid", r#""\ud800""#));
    fx.assert_rejects(&token, HEADER);
    let token = fx.token(&valid_claims().set("sub", r#""alice\udc00""#));
    fx.assert_rejects(&token, CLAIMS);
}

#[test]
fn verify_rejects_non_object_header() {
    let fx = Fixture::new();
    for raw in [r#"["EdDSA"]"#, r#""hello""#, "null", "42", "", "{}"] {
        let token = fx.raw(raw.as_bytes(), valid_claims().json().as_bytes());
        let expected = if raw.is_empty() { SEGMENTS } else { HEADER };
        assert_eq!(fx.verify(&token).err(), Some(expected), "{raw:?}");
    }
}

#[test]
fn verify_rejects_validly_signed_non_object_or_non_json_claims() {
    let fx = Fixture::new();
    let header = header_for(&fx.key).json();
    for raw in [
        r#"["alice"]"#,
        r#""hello""#,
        "null",
        "{}",
        "Example of Ed25519 signing",
    ] {
        let token = fx.raw(header.as_bytes(), raw.as_bytes());
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{raw:?}");
    }
}

#[test]
fn verify_rejects_deeply_nested_header_without_exhausting_the_stack() {
    let fx = Fixture::new();
    // About 6 KiB of JSON still fits the 8 KiB cap once base64url-encoded.
    for depth in [200, 2900] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let header = header_for(&fx.key).set("x", &nested).json();
        let token = fx.raw(header.as_bytes(), b"{}");
        assert!(token.len() <= MAX_TOKEN_BYTES, "depth {depth} fits the cap");
        assert_eq!(fx.verify(&token).err(), Some(HEADER), "depth {depth}");
        let bare = fx.raw(nested.as_bytes(), b"{}");
        assert_eq!(fx.verify(&bare).err(), Some(HEADER), "depth {depth}");
    }
}

#[test]
fn verify_rejects_tokens_over_8_kib_before_decoding() {
    let fx = Fixture::new();
    let too_long = Rejection::Malformed(Malformed::TooLong);
    // A validly signed token that is one byte over the cap.
    let mut claims = valid_claims();
    let token = loop {
        let token = fx.token(&claims);
        if token.len() > MAX_TOKEN_BYTES {
            break token;
        }
        claims = claims.set_str("pad", &"a".repeat(MAX_TOKEN_BYTES - token.len() + 1));
    };
    fx.assert_rejects(&token, too_long);
    fx.assert_rejects(&".".repeat(200_000), too_long);
    fx.assert_rejects(&"a".repeat(MAX_TOKEN_BYTES + 1), too_long);
    fx.assert_rejects(&format!("{}.b.c", "a".repeat(100_000)), too_long);
    // At exactly the cap, the other rules decide.
    fx.assert_rejects(&".".repeat(MAX_TOKEN_BYTES), SEGMENTS);
}

// ---------------------------------------------------------------------------------------------
// 1E. Signature.

/// The group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

#[test]
fn verify_rejects_non_canonical_signature_with_s_plus_l() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let mut signature = unb64(s);
    let mut carry = 0u16;
    for (byte, l) in signature[32..].iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = sum.to_le_bytes()[0];
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L fits 256 bits");
    fx.assert_rejects(
        &format!("{h}.{p}.{}", b64(&signature)),
        Rejection::BadSignature,
    );
}

#[test]
fn verify_rejects_non_canonical_r() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let mut signature = unb64(s);
    // y = p: a non-canonical encoding of the order-4 point y = 0.
    signature[..32].copy_from_slice(&{
        let mut r = [0xffu8; 32];
        r[0] = 0xed;
        r[31] = 0x7f;
        r
    });
    fx.assert_rejects(
        &format!("{h}.{p}.{}", b64(&signature)),
        Rejection::BadSignature,
    );
}

#[test]
fn verify_rejects_truncated_or_extended_signatures() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let signature = unb64(s);
    let length = Rejection::Malformed(Malformed::SignatureLength);
    for bytes in [
        signature[..63].to_vec(),
        [&signature[..], &[0]].concat(),
        signature[..32].to_vec(),
        [&signature[..], &signature[..]].concat(),
        vec![0],
    ] {
        let case = format!("{h}.{p}.{}", b64(&bytes));
        assert_eq!(
            fx.verify(&case).err(),
            Some(length),
            "{} bytes",
            bytes.len()
        );
    }
}

#[test]
fn verify_rejects_all_zero_signature() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, _] = parts(&token);
    fx.assert_rejects(
        &format!("{h}.{p}.{}", b64([0u8; 64])),
        Rejection::BadSignature,
    );
}

#[test]
fn verify_rejects_every_single_bit_flip_in_r_and_s() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, p, s] = parts(&token);
    let signature = unb64(s);
    for bit in (0..512).step_by(7) {
        let mut flipped = signature.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let case = format!("{h}.{p}.{}", b64(&flipped));
        assert_eq!(
            fx.verify(&case).err(),
            Some(Rejection::BadSignature),
            "bit {bit}"
        );
    }
}

#[test]
fn verify_rejects_tampered_scope_with_the_original_signature() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, _, s] = parts(&token);
    let tampered = b64(valid_claims().set_str("scope", "runs:write").json());
    fx.assert_rejects(&format!("{h}.{tampered}.{s}"), Rejection::BadSignature);
}

#[test]
fn verify_rejects_tampered_tenant_with_the_original_signature() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [h, _, s] = parts(&token);
    let tampered = b64(valid_claims().set_str("tenant", "globex").json());
    fx.assert_rejects(&format!("{h}.{tampered}.{s}"), Rejection::BadSignature);
}

#[test]
fn verify_rejects_tampered_kid_with_the_original_signature() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let [_, p, s] = parts(&token);
    let tampered = b64(header_for(&fx.second).json());
    fx.assert_rejects(&format!("{tampered}.{p}.{s}"), Rejection::BadSignature);
}

// ---------------------------------------------------------------------------------------------
// 1F. Claims: time.

#[test]
fn verify_accepts_until_exp_plus_leeway_and_rejects_from_then_on() {
    let fx = Fixture::new();
    let exp = NOW + 3600;
    let token = fx.token(&valid_claims().set_int("exp", exp));
    fx.clock.set(exp + LEEWAY - 1);
    assert!(fx.verify(&token).is_ok());
    fx.clock.set(exp + LEEWAY);
    fx.assert_rejects(&token, Rejection::Expired);
}

#[test]
fn verify_rejects_token_expired_long_ago() {
    let fx = Fixture::new();
    let claims = valid_claims()
        .set_int("iat", NOW - 7200)
        .set_int("nbf", NOW - 7200)
        .set_int("exp", NOW - 120);
    fx.assert_rejects(&fx.token(&claims), Rejection::Expired);
}

#[test]
fn verify_rejects_nbf_in_the_future_beyond_the_leeway() {
    let fx = Fixture::new();
    let at_edge = valid_claims().set_int("nbf", NOW + LEEWAY);
    assert!(fx.verify(&fx.token(&at_edge)).is_ok());
    let past_edge = valid_claims().set_int("nbf", NOW + LEEWAY + 1);
    fx.assert_rejects(&fx.token(&past_edge), Rejection::NotYetValid);
    let far = valid_claims().set_int("nbf", NOW + 600);
    fx.assert_rejects(&fx.token(&far), Rejection::NotYetValid);
}

#[test]
fn verify_rejects_iat_in_the_future_beyond_the_leeway() {
    let fx = Fixture::new();
    let at_edge = valid_claims().set_int("iat", NOW + LEEWAY);
    assert!(fx.verify(&fx.token(&at_edge)).is_ok());
    let past_edge = valid_claims().set_int("iat", NOW + LEEWAY + 1);
    fx.assert_rejects(&fx.token(&past_edge), Rejection::NotYetValid);
    let hour = valid_claims()
        .set_int("iat", NOW + 3600)
        .set_int("exp", NOW + 7200);
    fx.assert_rejects(&fx.token(&hour), Rejection::NotYetValid);
}

#[test]
fn verify_rejects_missing_time_claims() {
    let fx = Fixture::new();
    for name in ["iat", "nbf", "exp"] {
        let token = fx.token(&valid_claims().remove(name));
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{name} missing");
    }
}

#[test]
fn verify_rejects_mistyped_time_claims_as_type_errors() {
    let fx = Fixture::new();
    let mistyped = [
        r#""1767229200""#,
        r#""never""#,
        "true",
        "null",
        "1767229200.5",
        "1.7672292e9",
        "1e9",
        "1e400",
        "9223372036854775808",
        "18446744073709551616",
        "[1767229200]",
        "{}",
    ];
    for name in ["iat", "nbf", "exp"] {
        for raw in mistyped {
            let token = fx.token(&valid_claims().set(name, raw));
            assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{name}: {raw}");
        }
    }
}

#[test]
fn verify_rejects_negative_and_out_of_range_times() {
    let fx = Fixture::new();
    // exp before iat, and exp beyond the representable date range.
    fx.assert_rejects(&fx.token(&valid_claims().set_int("exp", -1)), CLAIM_VALUE);
    fx.assert_rejects(
        &fx.token(&valid_claims().set_int("exp", i64::MAX)),
        CLAIM_VALUE,
    );
    fx.assert_rejects(
        &fx.token(&valid_claims().set_int("exp", i64::MIN)),
        CLAIM_VALUE,
    );
    // iat = -1 makes exp - iat over 56 years.
    fx.assert_rejects(
        &fx.token(&valid_claims().set_int("iat", -1)),
        Rejection::LifetimeTooLong,
    );
    fx.assert_rejects(
        &fx.token(&valid_claims().set_int("iat", i64::MIN)),
        CLAIM_VALUE,
    );
}

#[test]
fn verify_rejects_exp_not_after_iat_or_nbf_after_exp() {
    let fx = Fixture::new();
    fx.assert_rejects(&fx.token(&valid_claims().set_int("exp", NOW)), CLAIM_VALUE);
    let claims = valid_claims().set_int("nbf", NOW + 3601);
    fx.assert_rejects(&fx.token(&claims), CLAIM_VALUE);
}

#[test]
fn verify_rejects_lifetime_of_12_hours_and_one_second() {
    let fx = Fixture::new();
    let max = valid_claims().set_int("exp", NOW + 43_200);
    assert!(fx.verify(&fx.token(&max)).is_ok());
    let over = valid_claims().set_int("exp", NOW + 43_201);
    fx.assert_rejects(&fx.token(&over), Rejection::LifetimeTooLong);
}

#[test]
fn verify_rejects_exp_ten_years_away() {
    let fx = Fixture::new();
    let ten_years = 10 * 365 * 86_400;
    let claims = valid_claims().set_int("exp", NOW + ten_years);
    fx.assert_rejects(&fx.token(&claims), Rejection::LifetimeTooLong);
    // Hiding the lifetime behind a late iat moves iat into the future instead.
    let late_iat = valid_claims()
        .set_int("iat", NOW + ten_years - 3600)
        .set_int("exp", NOW + ten_years);
    fx.assert_rejects(&fx.token(&late_iat), Rejection::NotYetValid);
}

// ---------------------------------------------------------------------------------------------
// 1F. Claims: identifiers, scope, issuer and audience.

#[test]
fn verify_rejects_missing_empty_or_non_string_jti() {
    let fx = Fixture::new();
    fx.assert_rejects(&fx.token(&valid_claims().remove("jti")), CLAIMS);
    fx.assert_rejects(&fx.token(&valid_claims().set_str("jti", "")), CLAIM_VALUE);
    for raw in ["123", "null", r#"["a"]"#] {
        let token = fx.token(&valid_claims().set("jti", raw));
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "jti {raw}");
    }
}

#[test]
fn verify_enforces_jti_length_between_22_and_128() {
    let fx = Fixture::new();
    for (len, ok) in [(21, false), (22, true), (128, true), (129, false)] {
        let token = fx.token(&valid_claims().set_str("jti", &"A".repeat(len)));
        let expected = if ok { None } else { Some(CLAIM_VALUE) };
        assert_eq!(fx.verify(&token).err(), expected, "jti of {len}");
    }
}

#[test]
fn verify_rejects_jti_outside_the_base64url_alphabet() {
    let fx = Fixture::new();
    for jti in [
        "jti-valid-00000000000=1",
        "jti valid 000000000000001",
        "jti/valid+00000000000001",
    ] {
        let token = fx.token(&valid_claims().set_str("jti", jti));
        assert_eq!(fx.verify(&token).err(), Some(CLAIM_VALUE), "{jti}");
    }
}

#[test]
fn verify_rejects_malformed_tenant_values() {
    let fx = Fixture::new();
    let too_long = "a".repeat(65);
    for tenant in [
        "Acme",
        "ACME",
        "tenant-a\u{0}:*",
        "acme corp",
        "acme_1",
        "",
        &too_long,
    ] {
        let token = fx.token(&valid_claims().set_str("tenant", tenant));
        assert_eq!(fx.verify(&token).err(), Some(CLAIM_VALUE), "{tenant:?}");
    }
    let longest = valid_claims().set_str("tenant", &"a".repeat(64));
    assert!(fx.verify(&fx.token(&longest)).is_ok());
}

#[test]
fn verify_rejects_mistyped_or_missing_tenant() {
    let fx = Fixture::new();
    fx.assert_rejects(&fx.token(&valid_claims().remove("tenant")), CLAIMS);
    for raw in [r#"["acme"]"#, "7", "null"] {
        let token = fx.token(&valid_claims().set("tenant", raw));
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "tenant {raw}");
    }
}

#[test]
fn verify_rejects_malformed_scope_values() {
    let fx = Fixture::new();
    for scope in [
        "read-all",
        "read-write-all",
        "runs:read read-all",
        "runs:read  policies:read",
        " runs:read",
        "runs:read ",
        "",
        "runs:admin",
        "runs",
        "Runs:read",
        "runs:read,policies:read",
    ] {
        let token = fx.token(&valid_claims().set_str("scope", scope));
        assert_eq!(fx.verify(&token).err(), Some(CLAIM_VALUE), "{scope:?}");
    }
}

#[test]
fn verify_rejects_non_string_scope() {
    let fx = Fixture::new();
    for raw in ["7", r#"["runs:read"]"#, "null"] {
        let token = fx.token(&valid_claims().set("scope", raw));
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "scope {raw}");
    }
}

#[test]
fn verify_rejects_subject_that_could_inject_headers() {
    let fx = Fixture::new();
    for sub in ["alice\r\nX-Auth-Tenant: other", "alice smith", ""] {
        let token = fx.token(&valid_claims().set_str("sub", sub));
        assert_eq!(fx.verify(&token).err(), Some(CLAIM_VALUE), "{sub:?}");
    }
}

#[test]
fn verify_rejects_wrong_issuer() {
    let fx = Fixture::new();
    for iss in [
        "https://attacker.example",
        "https://issuer.example/",
        "HTTPS://issuer.example",
    ] {
        let token = fx.token(&valid_claims().set_str("iss", iss));
        assert_eq!(
            fx.verify(&token).err(),
            Some(Rejection::WrongIssuer),
            "{iss}"
        );
    }
}

#[test]
fn verify_rejects_wrong_audience() {
    let fx = Fixture::new();
    for aud in ["other-api", "edge-api ", ""] {
        let token = fx.token(&valid_claims().set_str("aud", aud));
        assert_eq!(
            fx.verify(&token).err(),
            Some(Rejection::WrongAudience),
            "{aud:?}"
        );
    }
}

#[test]
fn verify_rejects_audience_given_as_an_array() {
    let fx = Fixture::new();
    let claims = valid_claims().set("aud", &format!(r#"["{AUDIENCE}"]"#));
    fx.assert_rejects(&fx.token(&claims), CLAIMS);
    let two = valid_claims().set("aud", &format!(r#"["{AUDIENCE}","other-api"]"#));
    fx.assert_rejects(&fx.token(&two), CLAIMS);
}

#[test]
fn verify_rejects_unknown_claims() {
    let fx = Fixture::new();
    for (name, raw) in [
        ("admin", "true"),
        ("scp", r#"["runs:write"]"#),
        ("cnf", "{}"),
    ] {
        let token = fx.token(&valid_claims().set(name, raw));
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{name}");
    }
}

#[test]
fn verify_rejects_missing_iss_aud_sub_or_scope() {
    let fx = Fixture::new();
    for name in ["iss", "aud", "sub", "scope"] {
        let token = fx.token(&valid_claims().remove(name));
        assert_eq!(fx.verify(&token).err(), Some(CLAIMS), "{name} missing");
    }
}

// ---------------------------------------------------------------------------------------------
// Requirement: tenant and permission.

#[test]
fn verify_rejects_token_for_another_tenant() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let need = Requirement::any().tenant("globex".parse().expect("tenant"));
    assert_eq!(
        fx.verifier.verify(&token, &need).err(),
        Some(Rejection::WrongTenant)
    );
    let own = Requirement::any().tenant("acme".parse().expect("tenant"));
    assert!(fx.verifier.verify(&token, &own).is_ok());
}

#[test]
fn verify_rejects_read_scope_for_a_write_requirement() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    let need = Requirement::any().permission(permission("runs:write"));
    assert_eq!(
        fx.verifier.verify(&token, &need).err(),
        Some(Rejection::InsufficientScope)
    );
}

#[test]
fn verify_rejects_permission_of_another_category() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims().set_str("scope", "runs:write"));
    let need = Requirement::any().permission(permission("policies:read"));
    assert_eq!(
        fx.verifier.verify(&token, &need).err(),
        Some(Rejection::InsufficientScope)
    );
}

#[test]
fn verify_grants_read_to_a_write_scope() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims().set_str("scope", "policies:read runs:write"));
    for need in ["runs:read", "runs:write", "policies:read"] {
        let need = Requirement::any()
            .tenant("acme".parse().expect("tenant"))
            .permission(permission(need));
        assert!(fx.verifier.verify(&token, &need).is_ok(), "{need:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation, at every granularity, with controls.

fn token_for(fx: &Fixture, sub: &str, tenant: &str, jti: &str) -> String {
    fx.token(
        &valid_claims()
            .set_str("sub", sub)
            .set_str("tenant", tenant)
            .set_str("jti", jti),
    )
}

#[test]
fn verify_rejects_token_revoked_by_id_and_matches_the_id_exactly() {
    let fx = Fixture::new();
    let revoked = token_for(&fx, "alice", "acme", "jti-revoked-000000000001");
    let other_case = token_for(&fx, "alice", "acme", "JTI-REVOKED-000000000001");
    let other_id = token_for(&fx, "alice", "acme", "jti-revoked-000000000002");
    fx.revocations.revoke(&Revocation::Token {
        jti: "jti-revoked-000000000001".parse().unwrap(),
        expires_at: NOW + 3600,
    });
    fx.assert_rejects(&revoked, Rejection::Revoked);
    assert!(
        fx.verify(&other_case).is_ok(),
        "jti match is case-sensitive"
    );
    assert!(fx.verify(&other_id).is_ok());
}

#[test]
fn verify_rejects_every_token_of_a_revoked_user_in_that_tenant_only() {
    let fx = Fixture::new();
    fx.revocations.revoke(&Revocation::User {
        tenant: "acme".parse().unwrap(),
        subject: "alice".parse().unwrap(),
        before: NOW,
    });
    fx.assert_rejects(
        &token_for(&fx, "alice", "acme", "jti-user-0000000000000001"),
        Rejection::Revoked,
    );
    fx.assert_rejects(
        &token_for(&fx, "alice", "acme", "jti-user-0000000000000002"),
        Rejection::Revoked,
    );
    assert!(
        fx.verify(&token_for(&fx, "bob", "acme", "jti-user-0000000000000003"))
            .is_ok()
    );
    assert!(
        fx.verify(&token_for(
            &fx,
            "alice",
            "globex",
            "jti-user-0000000000000004"
        ))
        .is_ok()
    );
}

#[test]
fn user_revocation_spares_tokens_minted_after_its_watermark() {
    let fx = Fixture::new();
    fx.revocations.revoke(&Revocation::User {
        tenant: "acme".parse().unwrap(),
        subject: "alice".parse().unwrap(),
        before: NOW - 1,
    });
    fx.assert_rejects(
        &fx.token(&valid_claims().set_int("iat", NOW - 1)),
        Rejection::Revoked,
    );
    assert!(fx.verify(&fx.token(&valid_claims())).is_ok());
}

#[test]
fn verify_rejects_every_token_of_a_revoked_tenant_only() {
    let fx = Fixture::new();
    fx.revocations.revoke(&Revocation::Tenant {
        tenant: "acme".parse().unwrap(),
        before: NOW,
    });
    fx.assert_rejects(
        &token_for(&fx, "alice", "acme", "jti-tenant-00000000000001"),
        Rejection::Revoked,
    );
    fx.assert_rejects(
        &token_for(&fx, "bob", "acme", "jti-tenant-00000000000002"),
        Rejection::Revoked,
    );
    assert!(
        fx.verify(&token_for(
            &fx,
            "alice",
            "globex",
            "jti-tenant-00000000000003"
        ))
        .is_ok()
    );
}

#[test]
fn verify_rejects_every_token_signed_by_a_revoked_key_only() {
    let fx = Fixture::new();
    fx.revocations.revoke(&Revocation::Key {
        kid: fx.key.kid().clone(),
        before: NOW,
    });
    fx.assert_rejects(&fx.token(&valid_claims()), Rejection::Revoked);
    let by_second = sign(&fx.second, &header_for(&fx.second), &valid_claims());
    assert!(fx.verify(&by_second).is_ok());
}

#[derive(Debug)]
struct StaleMirror;

impl RevocationCheck for StaleMirror {
    fn status(&self, _token: &TokenFacts<'_>) -> RevocationStatus {
        RevocationStatus::Unavailable
    }
}

#[test]
fn verify_refuses_when_the_revocation_state_is_unavailable() {
    let fx = Fixture::with_revocation_check(Arc::new(StaleMirror));
    fx.assert_rejects(&fx.token(&valid_claims()), Rejection::Unavailable);
}

// ---------------------------------------------------------------------------------------------
// The verified-token cache never short-cuts key trust, time or revocation.

#[test]
fn removing_a_key_from_the_ring_rejects_its_cached_tokens() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    // Cached on the second verification, so the third is a hit.
    for _ in 0..3 {
        assert!(fx.verify(&token).is_ok());
    }
    assert!(
        fx.verifier.cache_stats().hits >= 1,
        "third call was a cache hit"
    );
    fx.verifier
        .set_keys(crate::support::tokens::ring_of(&[&fx.second]));
    fx.assert_rejects(&token, Rejection::UnknownKey);
}

#[test]
fn cached_token_is_rejected_once_it_expires() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    // Cached on its second verification; the third is a hit in the shared cache, which puts
    // it in this thread's near tier, so the check below runs on a near-tier hit.
    for _ in 0..3 {
        assert!(fx.verify(&token).is_ok());
    }
    let hits = fx.verifier.cache_stats().hits;
    fx.clock.advance(3600 + LEEWAY);
    fx.assert_rejects(&token, Rejection::Expired);
    assert_eq!(
        fx.verifier.cache_stats().hits,
        hits + 1,
        "expiry was checked on a hit"
    );
}

#[test]
fn cached_token_is_rejected_once_revoked() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    // Cached on its second verification; the third is a hit in the shared cache, which puts
    // it in this thread's near tier, so the check below runs on a near-tier hit.
    for _ in 0..3 {
        assert!(fx.verify(&token).is_ok());
    }
    let hits = fx.verifier.cache_stats().hits;
    fx.revocations.revoke(&Revocation::Token {
        jti: JTI.parse().unwrap(),
        expires_at: NOW + 3600,
    });
    fx.assert_rejects(&token, Rejection::Revoked);
    assert_eq!(
        fx.verifier.cache_stats().hits,
        hits + 1,
        "revocation was checked on a hit"
    );
}

#[test]
fn cached_token_still_meets_the_requirement_check() {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    // As above: the check below runs on a near-tier hit.
    for _ in 0..3 {
        assert!(fx.verify(&token).is_ok());
    }
    let hits = fx.verifier.cache_stats().hits;
    let need = Requirement::any().tenant("globex".parse().expect("tenant"));
    assert_eq!(
        fx.verifier.verify(&token, &need).err(),
        Some(Rejection::WrongTenant)
    );
    assert_eq!(
        fx.verifier.cache_stats().hits,
        hits + 1,
        "the requirement was checked on a hit"
    );
}

#[test]
fn every_rejection_code_is_distinct() {
    let codes: std::collections::HashSet<_> = Rejection::CODES.into_iter().collect();
    assert_eq!(codes.len(), Rejection::CODES.len());
    assert_eq!(Rejection::Unavailable.code(), "unavailable");
    assert_eq!(Rejection::Malformed(Malformed::Header).code(), "malformed");
}

#[test]
fn issuer_minted_token_verifies_and_fails_for_another_issuer_setting() {
    // The issuer and verifier agree on the header and claims layout the hand-built tokens use.
    let fx = Fixture::new();
    let issuer = edgetoken::token::Issuer::new(
        SigningKey::from_seed(&crate::support::tokens::SEED),
        ISSUER,
        AUDIENCE,
        fx.clock.clone(),
    );
    let minted = issuer
        .mint(&edgetoken::token::MintRequest {
            subject: "alice".parse().expect("subject"),
            tenant: "acme".parse().expect("tenant"),
            scope: edgetoken::permissions::Scope::parse_claim("runs:read").expect("scope"),
            lifetime: edgetoken::token::Lifetime::TwelveHours,
        })
        .expect("mints");
    assert!(fx.verify(minted.token.expose()).is_ok());
    let wrong = edgetoken::token::Issuer::new(
        SigningKey::from_seed(&crate::support::tokens::SEED),
        "https://other.example",
        AUDIENCE,
        fx.clock.clone(),
    );
    let minted = wrong
        .mint(&edgetoken::token::MintRequest {
            subject: "alice".parse().expect("subject"),
            tenant: "acme".parse().expect("tenant"),
            scope: edgetoken::permissions::Scope::parse_claim("runs:read").expect("scope"),
            lifetime: edgetoken::token::Lifetime::OneHour,
        })
        .expect("mints");
    fx.assert_rejects(minted.token.expose(), Rejection::WrongIssuer);
}
