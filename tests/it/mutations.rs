//! Property tests: no mutation of a valid token verifies, and no input panics (THREATS 1D, 1E).
//!
//! Case counts stay modest (512 per property) so the suite stays fast.

use std::sync::LazyLock;

use proptest::prelude::*;

use crate::support::tokens::{Fixture, parts, valid_claims};

/// One valid token and the verifier that accepts it, shared by every case.
static VALID: LazyLock<(Fixture, String)> = LazyLock::new(|| {
    let fx = Fixture::new();
    let token = fx.token(&valid_claims());
    assert!(fx.verify(&token).is_ok(), "the unmutated token verifies");
    (fx, token)
});

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Asserts `mutated` differs from the valid token and is refused.
fn assert_refused(mutated: &str) -> Result<(), TestCaseError> {
    let (fx, token) = &*VALID;
    prop_assume!(mutated != token);
    prop_assert!(
        fx.verify(mutated).is_err(),
        "mutated token verified: {mutated:?}"
    );
    Ok(())
}

/// Any printable ASCII character, the dot, and a few hostile ones.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::char::range(' ', '~'),
        Just('.'),
        Just('='),
        Just('\n'),
        Just('\0'),
        Just('\u{feff}'),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn flipping_any_bit_of_a_valid_token_never_verifies(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let token = &VALID.1;
        let mut bytes = token.clone().into_bytes();
        let at = index.index(bytes.len());
        bytes[at] ^= 1 << bit;
        assert_refused(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn replacing_any_character_never_verifies(index in any::<prop::sample::Index>(), c in any_char()) {
        let mut chars: Vec<char> = VALID.1.chars().collect();
        let at = index.index(chars.len());
        chars[at] = c;
        assert_refused(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn inserting_a_character_never_verifies(index in any::<prop::sample::Index>(), c in any_char()) {
        let mut chars: Vec<char> = VALID.1.chars().collect();
        let at = index.index(chars.len() + 1);
        chars.insert(at, c);
        assert_refused(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn deleting_a_run_of_characters_never_verifies(index in any::<prop::sample::Index>(), len in 1usize..8) {
        let token = &VALID.1;
        let start = index.index(token.len());
        let end = (start + len).min(token.len());
        assert_refused(&format!("{}{}", &token[..start], &token[end..]))?;
    }

    #[test]
    fn truncating_a_valid_token_never_verifies(index in any::<prop::sample::Index>()) {
        let token = &VALID.1;
        assert_refused(&token[..index.index(token.len())])?;
    }

    #[test]
    fn appending_to_a_valid_token_never_verifies(suffix in "\\PC{1,16}") {
        assert_refused(&format!("{}{suffix}", VALID.1))?;
    }

    #[test]
    fn swapping_two_characters_never_verifies(a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let mut chars: Vec<char> = VALID.1.chars().collect();
        let (i, j) = (a.index(chars.len()), b.index(chars.len()));
        chars.swap(i, j);
        assert_refused(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn reordering_or_repeating_segments_never_verifies(order in proptest::collection::vec(0usize..3, 1..6)) {
        let parts = parts(&VALID.1);
        let shuffled: Vec<&str> = order.iter().map(|&i| parts[i]).collect();
        assert_refused(&shuffled.join("."))?;
    }

    #[test]
    fn arbitrary_strings_never_verify_or_panic(text in any::<String>()) {
        prop_assert!(VALID.0.verify(&text).is_err());
    }

    #[test]
    fn arbitrary_three_part_base64url_never_verifies_or_panics(
        header in proptest::collection::vec(any::<u8>(), 0..256),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let token = format!(
            "{}.{}.{}",
            crate::support::tokens::b64(&header),
            crate::support::tokens::b64(&payload),
            crate::support::tokens::b64(&signature),
        );
        prop_assert!(VALID.0.verify(&token).is_err());
    }

    #[test]
    fn validly_signed_arbitrary_json_never_panics(
        header in json_text(),
        claims in json_text(),
    ) {
        // The signature is valid, so the claims parser is reached with arbitrary JSON.
        let (fx, _) = &*VALID;
        let header = if header.is_empty() {
            crate::support::tokens::header_for(&fx.key).json()
        } else {
            header
        };
        let _ = fx.verify(&fx.raw(header.as_bytes(), claims.as_bytes()));
    }
}

/// JSON-ish text built from JSON tokens and the real claim names, so the parser sees
/// near-valid objects, duplicates, wrong types and nesting.
fn json_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1767225600".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        prop::sample::select(vec![
            "alg", "typ", "kid", "iss", "aud", "sub", "tenant", "scope", "iat", "nbf", "exp",
            "jti", "crit",
        ])
        .prop_map(|name| format!("\"{name}\"")),
        "\"[a-z:\\- ]{0,12}\"".prop_map(|s| s),
    ];
    proptest::collection::vec(atom, 0..40).prop_map(|atoms| atoms.concat())
}
