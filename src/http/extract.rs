//! Request extractors: who is calling the issuer, and strict JSON bodies.
//!
//! Authentication (SPEC §4): in `directory` mode HTTP Basic against argon2id hashes (run on
//! the blocking pool, after the failed-sign-in limit is checked so an attacker cannot buy
//! argon2 work past it); in `trusted-header` mode the user id from a header, accepted only
//! with the shared proxy secret, compared in constant time. A bearer token is never a
//! credential here: tokens cannot beget tokens.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq as _;

use super::error::ApiError;
use super::{AppState, IssuerState};
use crate::config::AuthMode;
use crate::directory::User;

/// How long a sign-in waits for a free password-check slot before 429.
const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(5);

/// A person who proved who they are to the issuer.
#[derive(Debug, Clone)]
pub struct Person(pub User);

impl FromRequestParts<AppState> for Person {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let issuer = state.issuer()?;
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if authorization.is_some_and(|v| starts_with_ignore_case(v, "bearer ")) {
            return Err(ApiError::TokenNotAccepted);
        }
        match issuer.auth.mode {
            AuthMode::Directory => basic(authorization, issuer).await,
            AuthMode::TrustedHeader => trusted_header(parts, issuer),
        }
    }
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

async fn basic(authorization: Option<&str>, issuer: &IssuerState) -> Result<Person, ApiError> {
    let encoded = authorization
        .filter(|v| starts_with_ignore_case(v, "basic "))
        .and_then(|v| v.get(6..))
        .ok_or(ApiError::Unauthenticated)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ApiError::Unauthenticated)?;
    let decoded = zeroize::Zeroizing::new(decoded);
    let text = std::str::from_utf8(&decoded).map_err(|_| ApiError::Unauthenticated)?;
    let (user, password) = text.split_once(':').ok_or(ApiError::Unauthenticated)?;
    // The attempt is counted before the argon2 work and refunded on success: checking first
    // and counting only failures let any number of concurrent guesses through the limit.
    issuer
        .failed_signins
        .acquire(user)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    // At most as many argon2 hashes (19 MiB each) at once as there are cores; the rest wait a
    // little, then get 429, so a flood of sign-ins cannot exhaust memory or blocking threads.
    let _permit = tokio::time::timeout(
        PASSWORD_CHECK_WAIT,
        Arc::clone(&issuer.password_checks).acquire_owned(),
    )
    .await
    .map_err(|_| ApiError::RateLimited {
        retry_after: Duration::from_secs(1),
    })?
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let directory = Arc::clone(&issuer.directory);
    let (user_id, password) = (
        user.to_owned(),
        zeroize::Zeroizing::new(password.to_owned()),
    );
    let id = user_id.clone();
    let found =
        tokio::task::spawn_blocking(move || directory.authenticate(&id, &password).cloned())
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
    if let Some(user) = found {
        issuer.failed_signins.refund(&user_id);
        return Ok(Person(user));
    }
    // Debug formatting escapes the attacker-chosen id, so it cannot forge log lines.
    tracing::info!(target: "audit", event = "sign_in", user = ?user_id, outcome = "failed");
    Err(ApiError::Unauthenticated)
}

fn trusted_header(parts: &Parts, issuer: &IssuerState) -> Result<Person, ApiError> {
    let secret = parts
        .headers
        .get(issuer.auth.proxy_secret_header.as_str())
        .map(axum::http::HeaderValue::as_bytes)
        .ok_or(ApiError::Unauthenticated)?;
    if !bool::from(secret.ct_eq(issuer.auth.proxy_secret.as_bytes())) {
        return Err(ApiError::Unauthenticated);
    }
    // Exactly one user header: a proxy that appends rather than replaces would otherwise let
    // a client-sent value ride along, and which one wins must not be left to chance.
    let mut users = parts
        .headers
        .get_all(issuer.auth.user_header.as_str())
        .iter();
    let (first, second) = (users.next(), users.next());
    let user = first
        .filter(|_| second.is_none())
        .and_then(|v| v.to_str().ok())
        .and_then(|id| issuer.directory.user(id))
        .ok_or(ApiError::Unauthenticated)?;
    Ok(Person(user.clone()))
}

/// A JSON body parsed strictly into `T` (which should `deny_unknown_fields`), with every
/// failure mapped to the API's error shape: 413 over the body limit, 400 otherwise, with
/// `unknown_field` for a member `T` does not know.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        let bytes = body_bytes(req, state).await?;
        if !is_json {
            // Also blocks cross-site form posts riding on a browser's cached credentials.
            return Err(ApiError::bad_request(
                "invalid_request",
                "Content-Type must be application/json",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let message = e.to_string();
            let code = if message.starts_with("unknown field") {
                "unknown_field"
            } else {
                "invalid_request"
            };
            ApiError::bad_request(code, message)
        })
    }
}

/// The body as bytes, with the body limit's failure mapped to 413.
///
/// # Errors
///
/// [`ApiError::PayloadTooLarge`] over the limit, [`ApiError::BadRequest`] for an unreadable
/// body.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("invalid_request", rejection.body_text())
        }
    })
}
