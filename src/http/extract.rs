//! Request extractors: who is calling the issuer, and strict JSON bodies.
//!
//! Authentication (SPEC §4): in `directory` mode HTTP Basic against argon2id hashes (run on
//! the blocking pool, after the failed-sign-in limit is checked so an attacker cannot buy
//! argon2 work past it); in `trusted-header` mode the user id from a header, accepted only
//! with the shared proxy secret, compared in constant time. A bearer token is never a
//! credential here: tokens cannot beget tokens.

use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq as _;

use super::error::ApiError;
use super::{AppState, IssuerState};
use crate::config::AuthMode;
use crate::directory::User;
use crate::token::Subject;

/// How long a sign-in waits for a free password-check slot before 429.
const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(5);

/// A person who proved who they are to the issuer.
#[derive(Debug, Clone)]
pub struct Person(pub User);

impl FromRequestParts<AppState> for Person {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let issuer = state.issuer()?;
        // Exactly one: with two (Basic then Bearer, or two Basic), which one counts must not
        // be left to the order a proxy or client happened to send them in (THREATS #57).
        let authorization = single_header(&parts.headers, header::AUTHORIZATION.as_str())?
            .and_then(|v| v.to_str().ok());
        if authorization.is_some_and(|v| starts_with_ignore_case(v, "bearer ")) {
            return Err(ApiError::TokenNotAccepted);
        }
        match issuer.auth.mode {
            AuthMode::Directory => basic(authorization, issuer).await,
            AuthMode::TrustedHeader => trusted_header(&parts.headers, issuer).map(Person),
        }
    }
}

/// The one value of header `name`, `None` when absent.
///
/// # Errors
///
/// 400 `invalid_request` when the header is repeated.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("the {name} header must appear at most once"),
        ));
    }
    Ok(first)
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
    sign_in(issuer, user, password).await.map(Person)
}

/// Checks `user` and `password` against the directory: the one sign-in path of both the API
/// (HTTP Basic) and the tokens page's form, so both share the failed-sign-in limit, the
/// bounded argon2 work and the audit events (THREATS #53).
///
/// # Errors
///
/// [`ApiError::Unauthenticated`] for any wrong user or password (one answer for both),
/// [`ApiError::RateLimited`] past the failed-sign-in limit or when no password-check slot
/// frees up in time, [`ApiError::Internal`] when the check could not run.
///
/// # Security
///
/// The password is never logged; the user id only when it names a directory user.
pub async fn sign_in(issuer: &IssuerState, user: &str, password: &str) -> Result<User, ApiError> {
    // Checked against the user-id grammar before anything is stored, counted or hashed: an
    // id no user can have (a 250 KB string, a token pasted as the user name) is refused here,
    // so attacker-chosen text never pins memory in the limiter (THREATS #54).
    if Subject::new(user).is_err() {
        audit_failed_sign_in(issuer, user);
        return Err(ApiError::Unauthenticated);
    }
    // The attempt is counted before the argon2 work and refunded on success: checking first
    // and counting only failures let any number of concurrent guesses through the limit.
    issuer
        .failed_signins
        .acquire(user)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    // At most as many argon2 hashes (19 MiB each) at once as there are cores; the rest wait a
    // little, then get 429, so a flood of sign-ins cannot exhaust memory or blocking threads.
    // Such a 429 says nothing about the password, so it gives its attempt back.
    let Ok(permit) = tokio::time::timeout(
        PASSWORD_CHECK_WAIT,
        Arc::clone(&issuer.password_checks).acquire_owned(),
    )
    .await
    else {
        issuer.failed_signins.refund(user);
        return Err(ApiError::RateLimited {
            retry_after: Duration::from_secs(1),
        });
    };
    let _permit = permit.map_err(|e| ApiError::Internal(Box::new(e)))?;
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
        return Ok(user);
    }
    audit_failed_sign_in(issuer, &user_id);
    Err(ApiError::Unauthenticated)
}

/// One `audit` event for a failed sign-in. The user id is logged only when it names a user
/// of the directory: anything else may be a token or a password typed into the wrong field
/// (THREATS #55), so only its length and a short keyed digest (which lets an operator see the
/// same wrong id recur, and reveals nothing about it) are logged.
fn audit_failed_sign_in(issuer: &IssuerState, user: &str) {
    if issuer.directory.user(user).is_some() {
        tracing::info!(target: "audit", event = "sign_in", user, outcome = "failed");
    } else {
        tracing::info!(
            target: "audit",
            event = "sign_in",
            user_len = user.len(),
            user_digest = %log_digest(user),
            outcome = "failed",
        );
    }
}

/// A short digest of `text`, keyed per process: equal texts give equal digests within one
/// run, and nobody without the key can test a guess against it.
fn log_digest(text: &str) -> String {
    static KEY: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let digest = KEY.get_or_init(RandomState::new).hash_one(text);
    format!("{:08x}", digest >> 32)
}

/// Trusted-header mode: the person the proxy names in the user header, accepted only with the
/// proxy secret (compared in constant time); the one check of both the API and the page.
///
/// # Errors
///
/// [`ApiError::Unauthenticated`] for a missing, repeated or wrong secret, or a missing,
/// repeated or unknown user.
pub fn trusted_header(headers: &HeaderMap, issuer: &IssuerState) -> Result<User, ApiError> {
    let secret = single_header(headers, issuer.auth.proxy_secret_header.as_str())
        .map_err(|_| ApiError::Unauthenticated)?
        .map(HeaderValue::as_bytes)
        .ok_or(ApiError::Unauthenticated)?;
    if !bool::from(secret.ct_eq(issuer.auth.proxy_secret.as_bytes())) {
        return Err(ApiError::Unauthenticated);
    }
    // Exactly one user header: a proxy that appends rather than replaces would otherwise let
    // a client-sent value ride along, and which one wins must not be left to chance.
    let user = single_header(headers, issuer.auth.user_header.as_str())
        .map_err(|_| ApiError::Unauthenticated)?
        .and_then(|v| v.to_str().ok())
        .and_then(|id| issuer.directory.user(id))
        .ok_or(ApiError::Unauthenticated)?;
    Ok(user.clone())
}

/// Whether `Content-Type` names `media_type` (parameters such as `charset` aside, case
/// ignored): the one check of a body's declared type, for JSON and form bodies alike.
pub fn has_media_type(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(media_type))
}

/// A JSON body parsed strictly into `T` (which should `deny_unknown_fields`), with every
/// failure mapped to the API's error shape: 413 over the body limit, 400 otherwise, with
/// `unknown_field` for a member `T` does not know.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = has_media_type(req.headers(), "application/json");
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
            // The framework's own text names its internals ("Failed to buffer the request
            // body"); people get a plain sentence, the log gets the detail.
            tracing::debug!(error = %rejection.body_text(), "request body unreadable");
            ApiError::bad_request("invalid_request", "the request body could not be read")
        }
    })
}
