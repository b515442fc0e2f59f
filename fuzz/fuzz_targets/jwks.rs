//! JWKS documents (`KeyRing::from_jwks_json`), which a verifier fetches from the issuer over
//! the network: every key must pass the key policy or the document is refused whole.
//!
//! Property: an accepted ring's own JWKS is accepted again and gives the same ring.

#![no_main]

use edgetoken::keys::KeyRing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ring) = KeyRing::from_jwks_json(data, "fuzz") {
        let document = serde_json::to_vec(&ring.jwks()).expect("JWKS serialises");
        let again = KeyRing::from_jwks_json(&document, "fuzz").expect("our JWKS is accepted");
        assert_eq!(ring.jwks(), again.jwks(), "the JWKS does not round-trip");
    }
});
