//! The one place that turns a failure into an HTTP response (SPEC §4, §5).
//!
//! Every error body is `{"error": "snake_case_code", "message": "for people"}`. Token
//! rejections also carry an RFC 6750 `WWW-Authenticate` challenge: `invalid_token` with 401,
//! `insufficient_scope` with 403. Internal failures answer with a generic message and log their
//! source chain once, here.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use crate::error_chain::ErrorChain;
use crate::records::RecordError;
use crate::revocation::StoreError;
use crate::token::Rejection;

/// An API failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request is malformed; `code` names the rule (`unknown_field`, `bad_duration`,
    /// `unknown_permission`, `bad_name`, `invalid_request`).
    #[error("{message}")]
    BadRequest {
        /// The error code.
        code: &'static str,
        /// What was wrong, for people.
        message: String,
    },
    /// 401: no valid credentials for the issuer.
    #[error("authentication required")]
    Unauthenticated,
    /// 401: a bearer token was offered to the issuer; tokens cannot mint tokens (SPEC §4).
    #[error("access tokens are not accepted here; sign in as yourself")]
    TokenNotAccepted,
    /// 401/403/503: a token was refused; the status follows the rejection.
    #[error("{0}")]
    Token(Rejection),
    /// 401: no bearer token was presented (RFC 6750 §3.1: the challenge carries no error).
    #[error("a bearer token is required")]
    MissingToken,
    /// 401: the `Authorization` header is not exactly one `Bearer` token (another scheme, two
    /// headers, extra parts). RFC 6750 suggests 400 here; 401 is used because edge proxies
    /// only relay 401 and 403 from an authorisation check.
    #[error("the Authorization header must be exactly `Bearer <token>`")]
    MalformedAuthorization,
    /// 403: no route of the policy matches the request, and unmatched requests are denied.
    #[error("no route of the policy allows this request")]
    NoRoute,
    /// 403: authenticated, but not allowed; `code` names why.
    #[error("{message}")]
    Forbidden {
        /// The error code (`permission_not_held`, `not_a_member`, `not_tenant_admin`, ...).
        code: &'static str,
        /// What was refused, for people.
        message: String,
    },
    /// 404.
    #[error("not found")]
    NotFound,
    /// 413.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 429, with `Retry-After`.
    #[error("too many requests")]
    RateLimited {
        /// When to try again.
        retry_after: Duration,
    },
    /// 503: the store (Redis) is unreachable; nothing was changed.
    #[error("the store is unavailable; nothing was changed, try again")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// 500: a bug or an unexpected failure; details go to the log only.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 400 with `code` and `message`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 403 with `code` and `message`.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthenticated
            | Self::TokenNotAccepted
            | Self::MissingToken
            | Self::MalformedAuthorization => StatusCode::UNAUTHORIZED,
            Self::Token(rejection) => rejection_status(*rejection),
            Self::Forbidden { .. } | Self::NoRoute => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } | Self::Forbidden { code, .. } => code,
            Self::Unauthenticated => "unauthenticated",
            Self::TokenNotAccepted => "token_not_accepted",
            Self::Token(rejection) => rejection.code(),
            Self::MissingToken => "missing_token",
            Self::MalformedAuthorization => "malformed_authorization",
            Self::NoRoute => "no_route",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "body_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// The status a token rejection answers with (SPEC §5): 403 for a valid token that may not do
/// this, 503 when revocation state is too stale to decide, 401 for everything else.
pub fn rejection_status(rejection: Rejection) -> StatusCode {
    match rejection {
        Rejection::WrongTenant | Rejection::InsufficientScope => StatusCode::FORBIDDEN,
        Rejection::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// The RFC 6750 challenge for a rejection, if it has one. The description is the fixed
/// reason code: it never contains anything from the request.
pub fn bearer_challenge(rejection: Rejection) -> Option<HeaderValue> {
    let error = match rejection_status(rejection) {
        StatusCode::UNAUTHORIZED => "invalid_token",
        StatusCode::FORBIDDEN => "insufficient_scope",
        _ => return None,
    };
    HeaderValue::from_str(&format!(
        r#"Bearer error="{error}", error_description="{}""#,
        rejection.code()
    ))
    .ok()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(source) => {
                tracing::error!(error = %ErrorChain(source.as_ref()), "internal error");
            }
            Self::StoreUnavailable(source) => {
                tracing::warn!(error = %ErrorChain(source.as_ref()), "store unavailable");
            }
            _ => {}
        }
        let body = Json(serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        }));
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        // A JSON error is never to be sniffed into something a browser would render.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        match &self {
            Self::Token(rejection) => {
                if let Some(challenge) = bearer_challenge(*rejection) {
                    headers.insert(header::WWW_AUTHENTICATE, challenge);
                }
            }
            Self::MissingToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="edgetoken""#),
                );
            }
            Self::MalformedAuthorization => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer error="invalid_token", error_description="malformed_authorization""#,
                    ),
                );
            }
            Self::NoRoute => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer error="insufficient_scope", error_description="no_route""#,
                    ),
                );
            }
            Self::Unauthenticated | Self::TokenNotAccepted => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="edgetoken", charset="UTF-8""#),
                );
            }
            Self::RateLimited { retry_after } => {
                let secs = retry_after.as_secs().max(1);
                if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}

impl From<crate::issuance::MintRefusal> for ApiError {
    fn from(refusal: crate::issuance::MintRefusal) -> Self {
        let code = match refusal {
            crate::issuance::MintRefusal::NotAMember(_) => "not_a_member",
            crate::issuance::MintRefusal::PermissionNotHeld(_) => "permission_not_held",
        };
        Self::forbidden(code, refusal.to_string())
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        Self::Token(rejection)
    }
}

/// A store that cannot take the write answers 503 (SPEC §3: a revoke never pretends to
/// succeed); a malformed revocation or bad settings are a bug here, 500.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            Self::StoreUnavailable(Box::new(error))
        } else {
            Self::Internal(Box::new(error))
        }
    }
}

/// Records fail like the revocation store: 503 when Redis cannot serve them, else 500.
impl From<RecordError> for ApiError {
    fn from(error: RecordError) -> Self {
        if error.is_unavailable() {
            Self::StoreUnavailable(Box::new(error))
        } else {
            Self::Internal(Box::new(error))
        }
    }
}
