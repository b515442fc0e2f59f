//! [`TOKEN_PREFIX`] and [`TOKEN_PATTERN`] against the serialisation [`Issuer`] really uses,
//! and against the README that quotes them.

use std::sync::Arc;

use super::{Issuer, Lifetime, MintRequest, TOKEN_PATTERN, TOKEN_PREFIX};
use crate::clock::ManualClock;
use crate::keys::SigningKey;
use crate::permissions::Scope;

fn minted(seed: u8) -> String {
    let issuer = Issuer::new(
        SigningKey::from_seed(&[seed; 32]),
        "https://issuer.example",
        "edgetoken",
        Arc::new(ManualClock::at(1_767_225_600)),
    );
    let request = MintRequest {
        subject: "alice".parse().unwrap(),
        tenant: "acme".parse().unwrap(),
        scope: Scope::parse_claim("runs:read").unwrap(),
        lifetime: Lifetime::OneHour,
    };
    issuer.mint(&request).unwrap().token.expose().to_owned()
}

#[test]
fn every_header_starts_with_the_prefix_and_is_110_characters() {
    for seed in 0..=255 {
        let token = minted(seed);
        let (header, _) = token.split_once('.').unwrap();
        assert!(header.starts_with(TOKEN_PREFIX), "{header}");
        assert_eq!(header.len(), 110, "{header}");
        assert!(header.ends_with("ifQ"), "{header}");
    }
}

#[test]
fn the_prefix_is_the_longest_every_kid_shares() {
    let headers: Vec<String> = (0..=255)
        .map(|seed| minted(seed).split_once('.').unwrap().0.to_owned())
        .collect();
    let next: std::collections::BTreeSet<u8> = headers
        .iter()
        .map(|h| h.as_bytes()[TOKEN_PREFIX.len()])
        .collect();
    assert!(next.len() > 1, "character 50 varies with the kid");
    assert!(next.iter().all(|c| (b'i'..=b'n').contains(c)), "{next:?}");
}

#[test]
fn the_pattern_matches_minted_tokens_in_text() {
    let pattern = regex::Regex::new(TOKEN_PATTERN).unwrap();
    for seed in 0..32 {
        let token = minted(seed);
        let text = format!("Authorization: Bearer {token}\n");
        let found = pattern.captures(&text).map(|c| c.get(1).unwrap().as_str());
        assert_eq!(found, Some(token.as_str()));
        // One more base64url character, `-` and `_` included, makes it something else: a
        // longer signature is not an Ed25519 one.
        for more in ["A", "-", "_", "-A", "_x"] {
            let longer = format!("{token}{more}");
            assert!(!pattern.is_match(&longer), "{longer}");
        }
        assert!(!pattern.is_match(&format!("x{token}")));
    }
}

#[test]
fn the_pattern_finds_tokens_one_character_apart() {
    let pattern = regex::Regex::new(TOKEN_PATTERN).unwrap();
    let tokens: Vec<String> = (0..4).map(minted).collect();
    for separator in ["\n", " ", ",", "\r\n"] {
        let text = tokens.join(separator);
        let found: Vec<&str> = pattern
            .captures_iter(&text)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        assert_eq!(found, tokens, "separated by {separator:?}");
    }
}

#[test]
fn a_scrubber_keeps_what_follows_a_token() {
    let pattern = regex::Regex::new(TOKEN_PATTERN).unwrap();
    let (first, second) = (minted(1), minted(2));
    let text = format!("a={first}\n{{\"token\":\"{second}\"}} end {first}");
    assert_eq!(
        pattern.replace_all(&text, "[REDACTED]$2"),
        "a=[REDACTED]\n{\"token\":\"[REDACTED]\"} end [REDACTED]"
    );
}

#[test]
fn the_readme_quotes_the_pattern_and_prefix_verbatim() {
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&format!("`{TOKEN_PREFIX}`")),
        "README's Leaked tokens section must quote TOKEN_PREFIX"
    );
    assert!(
        readme.lines().any(|line| line == TOKEN_PATTERN),
        "README's Leaked tokens section must quote TOKEN_PATTERN on a line of its own"
    );
}
