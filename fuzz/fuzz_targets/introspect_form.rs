//! The introspection request (`POST /v1/introspect`, RFC 7662) as the handler reads it: the
//! form body, the HTTP Basic client credentials, and (sharing the urlencoded parser) the
//! `/v1/verify?tenant=&permission=` query of query mode. The whole input is tried as each.
//!
//! Properties: a body's token is its `token` parameter; only the configured client's exact
//! credentials authenticate.

#![no_main]

use base64::Engine as _;
use edgetoken::fuzzing::{
    INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET, introspection_authenticates,
    introspection_token, verify_query,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = introspection_token(data);
    if introspection_authenticates(data) {
        let text = std::str::from_utf8(data).expect("a header value that authenticated is text");
        let (_, encoded) = text.split_once(' ').expect("scheme and credentials");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .expect("credentials are base64");
        let expected = format!("{INTROSPECTION_CLIENT_ID}:{INTROSPECTION_CLIENT_SECRET}");
        assert_eq!(
            decoded,
            expected.as_bytes(),
            "wrong credentials authenticated"
        );
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = verify_query(query);
    }
});
