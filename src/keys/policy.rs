//! The key loader's policy for public keys (THREATS §2, 1B#8, 1G#44).
//!
//! `verify_strict` already rejects small-order keys, but it accepts signatures under keys with
//! a torsion component (mixed-order points), and `VerifyingKey::from_bytes` accepts
//! non-canonical encodings. Honest keys are never like that, so the loader refuses them before
//! they can be trusted; the verifier's behaviour is then the same on every build.

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::VerifyingKey;

use super::KeyError;

/// Public keys of the RFC 8032 §7.1 examples (TEST 1, 2, 3, 1024, SHA(abc)); TEST 1 is also the
/// RFC 8037 Appendix A key. Their private keys are printed in the RFCs.
const PUBLISHED_TEST_KEYS: [[u8; 32]; 5] = [
    hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
    hex32("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),
    hex32("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025"),
    hex32("278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e"),
    hex32("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"),
];

/// Decodes 64 hex digits at compile time; a bad literal fails the build, not a run.
const fn hex32(text: &str) -> [u8; 32] {
    #[expect(
        clippy::panic,
        reason = "const evaluation: a bad literal fails the build"
    )]
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let bytes = text.as_bytes();
    assert!(bytes.len() == 64, "expected 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(bytes[2 * i]) << 4) | nibble(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

/// Whether `public` is one of the published RFC 8032 / RFC 8037 test keys.
pub fn is_published_test_key(public: &[u8; 32]) -> bool {
    PUBLISHED_TEST_KEYS.contains(public)
}

/// Checks an Ed25519 public key against the loader's policy and returns it ready to verify.
///
/// # Errors
///
/// - [`KeyError::NonCanonical`]: not a point, or not its canonical encoding (y ≥ p, or the
///   sign bit set on x = 0).
/// - [`KeyError::SmallOrder`]: one of the eight small-order points.
/// - [`KeyError::Torsioned`]: a mixed-order point.
/// - [`KeyError::PublishedTestKey`]: a key whose private half is printed in an RFC.
pub fn check_public_key(public: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    let compressed = CompressedEdwardsY(*public);
    let point = compressed.decompress().ok_or(KeyError::NonCanonical)?;
    if point.compress() != compressed {
        return Err(KeyError::NonCanonical);
    }
    if point.is_small_order() {
        return Err(KeyError::SmallOrder);
    }
    if !point.is_torsion_free() {
        return Err(KeyError::Torsioned);
    }
    if is_published_test_key(public) {
        return Err(KeyError::PublishedTestKey);
    }
    VerifyingKey::from_bytes(public).map_err(|_| KeyError::NonCanonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_point_is_small_order() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            check_public_key(&identity),
            Err(KeyError::SmallOrder)
        ));
    }

    #[test]
    fn y_equal_to_p_is_non_canonical() {
        // y = p = 2^255 - 19 encodes the same point as y = 0 when reduced.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(matches!(check_public_key(&p), Err(KeyError::NonCanonical)));
    }

    #[test]
    fn rfc8032_test_1_key_is_refused() {
        assert!(matches!(
            check_public_key(&PUBLISHED_TEST_KEYS[0]),
            Err(KeyError::PublishedTestKey)
        ));
    }

    #[test]
    fn a_fresh_key_passes() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        assert!(check_public_key(key.verifying_key().as_bytes()).is_ok());
    }
}
