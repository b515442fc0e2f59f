//! The forward-auth verifier path (`/v1/verify`) on raw bytes, against the fixture's fixed key
//! ring, revocations and clock (src/lib.rs): the token as a `Bearer` header through
//! `bearer_token`, then `Decider::decide` (the warm path with its verified-token cache), and
//! the same text straight through `Verifier::verify`.
//!
//! Beyond "never panics", three properties: the cache never changes an answer (the first,
//! cold decision equals the second, warm one and the plain verifier's); an accepted token's
//! claims name our issuer and audience; and they satisfy the requirement of their own tenant
//! and every permission of their own scope.

#![no_main]

use axum::http::{HeaderMap, HeaderValue, header};
use edgetoken::http::bearer::bearer_token;
use edgetoken::token::Requirement;
use edgetoken_fuzz::{AUDIENCE, ISSUER, fixture};
use libfuzzer_sys::fuzz_target;

fn code<T>(result: &Result<T, edgetoken::http::ApiError>) -> Option<&'static str> {
    result.as_ref().err().map(edgetoken::http::ApiError::code)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    if let Ok(token) = std::str::from_utf8(data) {
        let any = Requirement::any();
        let cold = fixture.decider.decide(token, Some(&any));
        let warm = fixture.decider.decide(token, Some(&any));
        let plain = fixture.verifier.verify(token, &any);
        assert_eq!(code(&cold), code(&warm), "the cache changed the answer");
        assert_eq!(
            cold.as_ref().ok(),
            plain.as_ref().ok(),
            "the warm path and the verifier disagree"
        );
        assert_eq!(
            cold.is_err(),
            plain.is_err(),
            "the warm path and the verifier disagree"
        );
        if let Ok(claims) = cold {
            assert_eq!(claims.issuer, ISSUER);
            assert_eq!(claims.audience, AUDIENCE);
            for permission in claims.scope.iter() {
                let need = Requirement::any()
                    .tenant(claims.tenant.clone())
                    .permission(permission.clone());
                assert!(
                    fixture.decider.decide(token, Some(&need)).is_ok(),
                    "an accepted token fails its own tenant and scope"
                );
            }
        }
    }
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(data);
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        if let Ok(token) = bearer_token(&headers) {
            let _ = fixture.decider.decide(token, Some(&Requirement::any()));
        }
    }
});
