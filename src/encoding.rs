//! Strict decoding of attacker-supplied bytes: base64url and JSON (THREATS 1D), for tokens and
//! for keys (a JWK's `x`) alike; it depends on neither.
//!
//! Anything keyed on the raw token string (the verified-token cache, revocation by token,
//! logs) depends on there being exactly one spelling of each token, and a key on exactly one
//! spelling of its `x`, so every leniency that allows a second spelling is refused here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// Decodes strict base64url: URL alphabet only, no `=` padding, no whitespace, and zero
/// unused bits in the last character (RFC 4648 §3.5, RFC 7515 §2). `None` on any deviation.
pub(crate) fn strict_b64_decode(text: &[u8]) -> Option<Vec<u8>> {
    // The base64 crate's URL_SAFE_NO_PAD engine refuses padding (`RequireNone`) and non-zero
    // trailing bits (`decode_allow_trailing_bits` is false); tests pin both behaviours.
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Encodes base64url without padding.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Parses a strict JSON object into `T`.
///
/// `T` must be a derived struct with `deny_unknown_fields`: serde then refuses duplicate and
/// unknown members and wrong types, where a `serde_json::Value` would silently keep the last
/// duplicate. On top of that the text must start with `{` and end with `}`: no BOM, no
/// whitespace around the object and nothing after it.
pub(crate) fn strict_json_object<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    if bytes.first() != Some(&b'{') || bytes.last() != Some(&b'}') {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only parsed")]
    struct Sample {
        a: i64,
    }

    #[test]
    fn base64_refuses_padding_whitespace_std_alphabet_and_trailing_bits() {
        assert_eq!(strict_b64_decode(b"AQ").as_deref(), Some(&[1u8][..]));
        for bad in [
            &b"AQ=="[..],
            b"AQ=",
            b" AQ",
            b"AQ\n",
            b"A+",
            b"A/",
            b"AR",
            b"A?",
        ] {
            assert!(strict_b64_decode(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn json_refuses_duplicates_trailing_data_and_unknown_members() {
        assert!(strict_json_object::<Sample>(br#"{"a":1}"#).is_some());
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"a":1}x"#,
            br#"{"a":1}{"a":1}"#,
            b"\xEF\xBB\xBF{\"a\":1}",
            br#" {"a":1}"#,
            br#"{"a":1,"b":2}"#,
            br#"{"a":"1"}"#,
            br#"{"a":1.5}"#,
            br#"{"a":1e3}"#,
            br#"["a"]"#,
        ] {
            assert!(
                strict_json_object::<Sample>(bad).is_none(),
                "{bad:?} accepted"
            );
        }
    }
}
