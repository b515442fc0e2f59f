//! Writes the seeds only Rust can make into the corpus directory given as the one argument
//! (fuzz/seed.sh runs it): tokens minted with the fuzz fixture's keys and clock, for every
//! verifier outcome; the header and claim cases of the test catalogue (STYLE.md, Tests: `alg`
//! `none`, HS256, `crit`/`jku`/`x5u`/`x5c`/`jwk`, unknown `kid`, bad claims) re-signed with
//! the trusted key, so only the rule under test refuses them; all as raw tokens,
//! `Authorization` headers and introspection bodies; and the fixture's key ring as a JWKS.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use edgetoken::keys::{KeyRing, SigningKey, TrustedKey};
use edgetoken::token::Requirement;
use edgetoken_fuzz::{REVOKED_KEY_SEED, TRUSTED_SEED, UNTRUSTED_SEED, fixture, minted_tokens};

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: seed CORPUS_DIR");
        std::process::exit(2);
    };
    let mut count = 0;
    let mut tokens = minted_tokens();
    tokens.extend(crafted_tokens(&tokens[0].1));
    for (name, token) in tokens {
        // What verify_token's fixture answers, so a seed that stopped reaching its path (an
        // accepted token no longer accepted) shows here rather than as lost coverage.
        let outcome = fixture()
            .decider
            .decide(&token, Some(&Requirement::any()))
            .map_or_else(|e| e.code(), |_| "accepted");
        println!("seed: {name:<24} {outcome}");
        if name.starts_with("accepted") && outcome != "accepted" {
            eprintln!("seed: {name} should be accepted by the fixture, got {outcome}");
            std::process::exit(1);
        }
        let name = format!("minted-{name}");
        write(&root, "verify_token", &name, token.as_bytes())?;
        write(
            &root,
            "bearer_header",
            &name,
            format!("Bearer {token}").as_bytes(),
        )?;
        let body = format!("token={token}&token_type_hint=access_token");
        write(&root, "introspect_form", &name, body.as_bytes())?;
        count += 3;
    }
    let mut ring = KeyRing::new();
    for seed in [&TRUSTED_SEED, &REVOKED_KEY_SEED, &UNTRUSTED_SEED] {
        let key = SigningKey::from_seed(seed);
        ring.insert(TrustedKey::from_bytes(&key.public_bytes()).expect("fixed key passes"));
    }
    let jwks = serde_json::to_vec_pretty(&ring.jwks()).expect("JWKS serialises");
    write(&root, "jwks", "minted-fixture-ring.json", &jwks)?;
    count += 1;
    println!("seed: wrote {count} minted seeds under {}", root.display());
    Ok(())
}

/// The catalogue's header and claim cases, built from the accepted token `accepted` and signed
/// with the trusted key.
fn crafted_tokens(accepted: &str) -> Vec<(String, String)> {
    let mut parts = accepted.split('.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return Vec::new();
    };
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    };
    let (header, claims) = (decode(header), decode(payload));
    let key = SigningKey::from_seed(&TRUSTED_SEED);
    let sign = |header: &serde_json::Value, claims: &serde_json::Value| {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()));
        format!("{input}.{signature}")
    };
    let with = |value: &serde_json::Value, field: &str, new: serde_json::Value| {
        let mut value = value.clone();
        value[field] = new;
        value
    };
    let without = |value: &serde_json::Value, field: &str| {
        let mut value = value.clone();
        value.as_object_mut().expect("object").remove(field);
        value
    };
    let mut out = Vec::new();
    for (name, header) in [
        ("alg-none", with(&header, "alg", "none".into())),
        ("alg-hs256", with(&header, "alg", "HS256".into())),
        ("kid-unknown", with(&header, "kid", "unknown-kid".into())),
        ("typ-jwt", with(&header, "typ", "JWT".into())),
        ("no-kid", without(&header, "kid")),
        ("crit", with(&header, "crit", serde_json::json!(["exp"]))),
        (
            "jku",
            with(&header, "jku", "https://attacker.example/jwks".into()),
        ),
        (
            "x5u",
            with(&header, "x5u", "https://attacker.example/x5u".into()),
        ),
        ("x5c", with(&header, "x5c", serde_json::json!(["MIIB"]))),
        (
            "jwk",
            with(
                &header,
                "jwk",
                serde_json::json!({"kty": "OKP", "crv": "Ed25519"}),
            ),
        ),
    ] {
        out.push((format!("header-{name}"), sign(&header, &claims)));
    }
    for (name, claims) in [
        (
            "iss-other",
            with(&claims, "iss", "https://attacker.example".into()),
        ),
        ("aud-other", with(&claims, "aud", "other-api".into())),
        (
            "aud-array",
            with(&claims, "aud", serde_json::json!(["edge-api"])),
        ),
        ("exp-float", with(&claims, "exp", serde_json::json!(1.5e9))),
        ("exp-string", with(&claims, "exp", "1767232800".into())),
        (
            "lifetime-13h",
            with(&claims, "exp", serde_json::json!(1_767_225_600 + 13 * 3600)),
        ),
        ("scope-shortcut", with(&claims, "scope", "runs".into())),
        (
            "scope-spaces",
            with(&claims, "scope", "runs:read  runs:write".into()),
        ),
        ("tenant-bad", with(&claims, "tenant", "Not A Slug".into())),
        ("extra-claim", with(&claims, "admin", true.into())),
        ("no-jti", without(&claims, "jti")),
        ("no-exp", without(&claims, "exp")),
    ] {
        out.push((format!("claims-{name}"), sign(&header, &claims)));
    }
    // A tampered payload under the original signature, and a non-canonical signature (S + L).
    let tampered = sign(&header, &with(&claims, "sub", "mallory".into()));
    let original_signature = accepted.rsplit('.').next().unwrap_or_default();
    let (signing_input, _) = tampered.rsplit_once('.').expect("three parts");
    out.push((
        "tampered-payload".into(),
        format!("{signing_input}.{original_signature}"),
    ));
    let mut signature = URL_SAFE_NO_PAD
        .decode(original_signature)
        .expect("base64url");
    add_group_order(&mut signature[32..]);
    let (accepted_input, _) = accepted.rsplit_once('.').expect("three parts");
    out.push((
        "non-canonical-s".into(),
        format!("{accepted_input}.{}", URL_SAFE_NO_PAD.encode(&signature)),
    ));
    out
}

/// Adds the Ed25519 group order L to the little-endian scalar `s` (mod 2^256): the same
/// signature, non-canonically encoded, which `verify_strict` must refuse.
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0_u16;
    for (byte, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
}
