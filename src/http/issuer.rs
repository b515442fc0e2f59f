//! The issuer API (SPEC §4): mint, list and revoke tokens; tenant-admin revocations; RFC 7009
//! self-revocation; the permission catalogue; the JWKS; and the OpenAPI document describing
//! all of them, generated from these handlers.
//!
//! Audit: every mint and revoke logs one event on the `audit` target with who, tenant, token
//! id, permissions and outcome. No event, response (other than the mint response) or record
//! ever contains a raw token.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use time::OffsetDateTime;
use tracing::Instrument as _;
use utoipa::{OpenApi, ToSchema};

use super::error::{ApiError, ErrorChain};
use super::extract::{JsonBody, Person, body_bytes};
use super::{AppState, IssuerState};
use crate::directory::User;
use crate::issuance::{self, MintRefusal};
use crate::permissions::{PermissionError, READ_ALL, READ_WRITE_ALL};
use crate::records::TokenRecord;
use crate::revocation::{Propagation, Revocation, RevocationCheck as _, RevocationStatus};
use crate::token::{Lifetime, MintRequest, Rejection, Requirement, Subject, TenantId, TokenId};
use crate::usage::TokenUsage;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/tokens",
            post(mint_token).get(list_tokens),
        )
        .route("/v1/tenants/{tenant}/tokens/{id}", delete(revoke_token))
        .route("/v1/tenants/{tenant}/revocations", post(revoke_many))
        .route("/v1/revoke", post(revoke_presented))
        .route("/v1/permissions", get(permissions))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi))
}

/// The OpenAPI document of the issuer API, generated from the handlers below.
#[derive(OpenApi)]
#[openapi(
    info(title = "edgetoken issuer", description = "Mint, list and revoke short-lived tokens (SPEC §4)."),
    paths(mint_token, list_tokens, revoke_token, revoke_many, revoke_presented, permissions, jwks),
    components(schemas(MintBody, MintedBody, TokenList, TokenView, RevocationsBody, LaggingBody, ErrorBody, PermissionsBody)),
    tags((name = "issuer")),
    modifiers(&BasicAuthScheme)
)]
pub(super) struct IssuerApi;

/// Declares the `basic` security scheme the paths refer to (HTTP Basic against the directory;
/// in trusted-header mode the proxy authenticates instead).
struct BasicAuthScheme;

impl utoipa::Modify for BasicAuthScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "basic",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
            );
    }
}

async fn openapi() -> impl IntoResponse {
    Json(IssuerApi::openapi())
}

/// The error shape of every non-2xx response.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    /// A `snake_case` code.
    error: String,
    /// A sentence for people.
    message: String,
}

/// The longest token name, in characters (SPEC §4).
const MAX_NAME_CHARS: usize = 100;

/// Body of a mint request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MintBody {
    /// Optional, 1-100 characters, no control characters.
    name: Option<String>,
    /// `1h` (default), `4h`, `8h`, `12h` or `max`.
    duration: Option<String>,
    /// Permissions (`CATEGORY:read|write`) or one of the shortcuts `read-all`,
    /// `read-write-all`.
    permissions: Vec<String>,
}

/// A freshly minted token. The only response that ever contains the raw token.
#[derive(Serialize, ToSchema)]
pub(super) struct MintedBody {
    pub(super) id: String,
    /// The raw token: shown once, stored nowhere.
    pub(super) token: String,
    pub(super) name: Option<String>,
    pub(super) tenant: String,
    pub(super) permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub(super) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub(super) expires_at: OffsetDateTime,
}

/// What a mint asks for, from the API's JSON body or the tokens page's form: both go through
/// [`mint_for`], so the rules exist once.
#[derive(Debug)]
pub(super) struct MintInput {
    pub(super) name: Option<String>,
    pub(super) duration: Option<String>,
    pub(super) permissions: Vec<String>,
}

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::new(raw).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))
}

fn validate_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(name) = name else { return Ok(None) };
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(is_refused_in_names) {
        return Err(ApiError::bad_request(
            "bad_name",
            "name must be 1-100 characters without control or bidirectional formatting \
             characters",
        ));
    }
    Ok(Some(name))
}

/// Control characters, and the bidirectional formatting characters that can make a listing
/// show something other than what was typed (Trojan Source, CVE-2021-42574; THREATS #52).
fn is_refused_in_names(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Mint a token for yourself in a tenant you belong to.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/tokens", tag = "issuer",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = MintBody,
    responses(
        (status = 201, description = "Minted; the raw token is in this response only", body = MintedBody),
        (status = 400, description = "Unknown field, bad duration, unknown permission or bad name", body = ErrorBody),
        (status = 401, description = "Not signed in, or a token offered as credential", body = ErrorBody),
        (status = 403, description = "Not a member, or a permission you do not hold", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("basic" = []))
)]
async fn mint_token(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Person(person): Person,
    JsonBody(body): JsonBody<MintBody>,
) -> Result<Response, ApiError> {
    let input = MintInput {
        name: body.name,
        duration: body.duration,
        permissions: body.permissions,
    };
    let body = mint_for(&state, &person, &tenant, input).await?;
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Mints a token for `person` in `tenant`: name, duration and permissions checked, the
/// permissions held re-checked, the mint limit applied, the record written before the token
/// is handed out, and one audit event. The API and the tokens page both call this.
///
/// # Errors
///
/// 400 for bad input, 403 for a tenant or permission not held, 429 past the mint limit, 503
/// when the record could not be stored (the token is then dropped unseen).
pub(super) async fn mint_for(
    state: &AppState,
    person: &User,
    tenant: &str,
    body: MintInput,
) -> Result<MintedBody, ApiError> {
    let issuer = state.issuer()?;
    let tenant = tenant_id(tenant)?;
    let name = validate_name(body.name)?;
    let lifetime = body
        .duration
        .as_deref()
        .unwrap_or("1h")
        .parse::<Lifetime>()
        .map_err(|e| ApiError::bad_request("bad_duration", e.to_string()))?;
    let scope = issuer
        .catalogue
        .expand(&body.permissions)
        .map_err(|e| match e {
            PermissionError::Empty => ApiError::bad_request("invalid_request", e.to_string()),
            _ => ApiError::bad_request("unknown_permission", e.to_string()),
        })?;
    if let Err(refusal) = issuance::check_mint(person, &tenant, &scope) {
        if matches!(refusal, MintRefusal::PermissionNotHeld(_)) {
            audit_mint(
                &person.id,
                &tenant,
                None,
                &scope.to_claim(),
                "permission_not_held",
            );
        }
        return Err(refusal.into());
    }
    issuer
        .mints
        .acquire(person.id.as_str())
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;

    let minted = issuer
        .issuer
        .mint(&MintRequest {
            subject: person.id.clone(),
            tenant: tenant.clone(),
            scope,
            lifetime,
        })
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let claims = &minted.claims;
    // The record is written before the token is handed out: every token that exists can be
    // listed and revoked. If this fails the token is dropped unseen.
    if let Err(error) = issuer
        .records
        .put(&TokenRecord::of(claims, name.clone()))
        .await
    {
        state.metrics.record_mint("store_unavailable");
        audit_mint(
            &person.id,
            &tenant,
            Some(claims.token_id.as_str()),
            &claims.scope.to_claim(),
            "store_unavailable",
        );
        return Err(ApiError::from(error));
    }
    state.metrics.record_mint("ok");
    audit_mint(
        &person.id,
        &tenant,
        Some(claims.token_id.as_str()),
        &claims.scope.to_claim(),
        "ok",
    );
    Ok(MintedBody {
        id: claims.token_id.as_str().to_owned(),
        token: minted.token.expose().to_owned(),
        name,
        tenant: tenant.as_str().to_owned(),
        permissions: claims.scope.iter().map(ToString::to_string).collect(),
        created_at: claims.issued_at,
        expires_at: claims.expires_at,
    })
}

fn audit_mint(
    user: &Subject,
    tenant: &TenantId,
    jti: Option<&str>,
    permissions: &str,
    outcome: &str,
) {
    tracing::info!(
        target: "audit",
        event = "mint",
        user = %user,
        tenant = %tenant,
        jti = jti.unwrap_or("-"),
        permissions,
        outcome,
    );
}

fn audit_revoke(user: &Subject, tenant: &str, kind: &str, target: &str, outcome: &str) {
    tracing::info!(target: "audit", event = "revoke", user = %user, tenant, kind, target, outcome);
}

/// Your tokens in a tenant.
#[derive(Serialize, ToSchema)]
struct TokenList {
    tokens: Vec<TokenView>,
    /// `false` when the token store lost its records (Redis came back empty, or was replaced)
    /// recently enough that tokens minted before then could still be listed: those are
    /// missing here, though they keep working until they expire.
    records_complete: bool,
    /// When records were lost, if `records_complete` is `false` (else null): tokens created
    /// before this time may be missing from `tokens`.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    records_since: Option<OffsetDateTime>,
}

/// The list API's and the tokens page's data: the person's tokens, and since when the list
/// is complete.
#[derive(Debug)]
pub(super) struct Listing {
    pub(super) tokens: Vec<TokenView>,
    /// Set when records from before this time may be missing ([`records_lost_at`]).
    pub(super) records_since: Option<OffsetDateTime>,
}

/// When the token store lost its records, while that still matters: until every token minted
/// before then has expired (12 h and the leeway later) and its record would have aged out
/// (`issuer.records_retention_secs` more). `None` when the records are complete.
///
/// The loss is detected by the revocation feed (the same generation / `run_id` check that
/// re-seeds revocations), which notes its time beside the records; see
/// [`crate::records::RecordStore::lost_at`].
///
/// # Errors
///
/// 503 when the store cannot be read.
pub(crate) async fn records_lost_at(
    state: &AppState,
    issuer: &IssuerState,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(lost) = issuer.records.lost_at().await? else {
        return Ok(None);
    };
    let listed_until = lost
        + time::Duration::seconds(crate::token::MAX_LIFETIME_SECS)
        + state.settings.token.leeway
        + state.settings.issuer.records_retention;
    Ok((state.clock.now() < listed_until).then_some(lost))
}

/// One token's metadata; never the token itself.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenView {
    pub(super) id: String,
    pub(super) name: Option<String>,
    pub(super) permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub(super) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub(super) expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(super) revoked_at: Option<OffsetDateTime>,
    /// `active`, `expired` or `revoked`.
    pub(super) status: &'static str,
    /// When a verifier last accepted it (to the second, fresh to within `usage.flush_secs`),
    /// or null: never used.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(super) last_used_at: Option<OffsetDateTime>,
    /// The client address of that use, or null (never used, or addresses not recorded).
    pub(super) last_used_from: Option<String>,
    /// Approximate number of uses; 0 means never used.
    pub(super) uses: u64,
}

/// `person`'s token records in `tenant`, newest first, each with its usage (the list API's
/// and the tokens page's data).
///
/// # Errors
///
/// [`ApiError`] 503 when the record or usage store cannot be read.
pub(crate) async fn records_with_usage(
    issuer: &IssuerState,
    tenant: &TenantId,
    person: &Subject,
) -> Result<Vec<(TokenRecord, TokenUsage)>, ApiError> {
    let records = issuer.records.list(tenant, person).await?;
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let mut usage = issuer.usage.of_tokens(tenant, &ids).await?;
    Ok(records
        .into_iter()
        .map(|record| {
            let used = usage.remove(record.id.as_str()).unwrap_or_default();
            (record, used)
        })
        .collect())
}

/// List your tokens in a tenant (metadata only).
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/tokens", tag = "issuer",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("basic" = []))
)]
async fn list_tokens(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Person(person): Person,
) -> Result<Json<TokenList>, ApiError> {
    let listing = list_for(&state, &person, &tenant).await?;
    Ok(Json(TokenList {
        tokens: listing.tokens,
        records_complete: listing.records_since.is_none(),
        records_since: listing.records_since,
    }))
}

/// `person`'s tokens in `tenant`, newest first, with their status, and whether records were
/// lost; for the API and the page.
///
/// # Errors
///
/// 403 `not_a_member`, 503 when the records cannot be read.
pub(super) async fn list_for(
    state: &AppState,
    person: &User,
    tenant: &str,
) -> Result<Listing, ApiError> {
    let issuer = state.issuer()?;
    let tenant = tenant_id(tenant)?;
    // The same answer as minting there: a non-member learns nothing from an empty list that
    // a refusal would not tell them, and the two must not disagree.
    if person.membership(&tenant).is_none() {
        return Err(MintRefusal::NotAMember(tenant).into());
    }
    let records = records_with_usage(issuer, &tenant, &person.id).await?;
    let records_since = records_lost_at(state, issuer).await?;
    let now = state.clock.now();
    let tokens = records
        .into_iter()
        .map(|(record, usage)| {
            // A token revoked by a user, tenant or key watermark has no revoked_at of its
            // own; the mirror knows it is revoked all the same.
            let revoked = record.revoked_at.is_some()
                || state.mirror.status(&record.facts()) == RevocationStatus::Revoked;
            let status = if revoked {
                "revoked"
            } else if now >= record.expires_at {
                "expired"
            } else {
                "active"
            };
            TokenView {
                id: record.id.as_str().to_owned(),
                name: record.name,
                permissions: record.permissions,
                created_at: record.created_at,
                expires_at: record.expires_at,
                revoked_at: record.revoked_at,
                status,
                last_used_at: usage.last_used_at,
                last_used_from: usage.last_used_from,
                uses: usage.uses,
            }
        })
        .collect();
    Ok(Listing {
        tokens,
        records_since,
    })
}

/// Revoke one of your tokens. Idempotent; a token that is not yours is 404.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/tokens/{id}", tag = "issuer",
    params(("tenant" = String, Path), ("id" = String, Path, description = "Token id (jti)")),
    responses((status = 204, description = "Revoked, and every verifier confirmed (`Edgetoken-Barrier: confirmed=N`)"), (status = 202, body = LaggingBody, description = "Revoked; some verifiers did not confirm in time"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("basic" = []))
)]
async fn revoke_token(
    State(state): State<AppState>,
    Path((tenant, id)): Path<(String, String)>,
    Person(person): Person,
) -> Result<Response, ApiError> {
    let propagation = revoke_own(&state, &person, &tenant, &id).await?;
    Ok(revoked(StatusCode::NO_CONTENT, propagation))
}

/// Revokes `person`'s own token `id` in `tenant` (idempotent) and waits at the barrier; for
/// the API and the page.
///
/// # Errors
///
/// 404 for a token that is not theirs (or no token id at all), 503 when the revocation store
/// did not accept it (nothing is acknowledged then).
pub(super) async fn revoke_own(
    state: &AppState,
    person: &User,
    tenant: &str,
    id: &str,
) -> Result<Propagation, ApiError> {
    let issuer = state.issuer()?;
    let tenant = tenant_id(tenant)?;
    // Only a well-formed token id can name a record; anything else is simply not found, and
    // never reaches a Redis key.
    let id = TokenId::new(id).map_err(|_| ApiError::NotFound)?;
    let record = issuer
        .records
        .get(&tenant, id.as_str())
        .await?
        .filter(|record| record.user == person.id)
        .ok_or(ApiError::NotFound)?;
    revoke(
        state,
        &person.id,
        Revocation::Token {
            jti: record.id.clone(),
            expires_at: record.expires_at.unix_timestamp(),
        },
        Some((tenant, record.id)),
    )
    .await
}

/// The `Edgetoken-Barrier` header of every revoke answer: how many verifiers confirmed, and
/// how many lag.
pub(crate) const BARRIER_HEADER: &str = "edgetoken-barrier";

/// A revocation some verifiers did not confirm within `barrier_timeout` (202).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LaggingBody {
    /// Always `lagging`.
    barrier: &'static str,
    /// Verifiers (mirrors) that applied the revocation before the answer.
    confirmed: usize,
    /// Registered verifiers that did not confirm in time.
    lagging: usize,
    /// Every lagging verifier refuses the token within this many milliseconds: it catches
    /// up, or its revocation state turns stale and it refuses every token (fail closed).
    max_staleness_ms: u64,
    /// The same, in words.
    message: String,
}

/// The answer to an accepted revocation: `success` (204, or 200 for RFC 7009) once every
/// registered verifier confirmed it, else 202 with a [`LaggingBody`]. Both carry
/// `Edgetoken-Barrier: confirmed=N[, lagging=L]`.
pub(crate) fn revoked(success: StatusCode, propagation: Propagation) -> Response {
    let mut header = format!("confirmed={}", propagation.confirmed);
    let mut response = if propagation.is_confirmed() {
        success.into_response()
    } else {
        let _ = write!(header, ", lagging={}", propagation.lagging);
        let max_staleness_ms =
            u64::try_from(propagation.max_staleness.as_millis()).unwrap_or(u64::MAX);
        let body = LaggingBody {
            barrier: "lagging",
            confirmed: propagation.confirmed,
            lagging: propagation.lagging,
            max_staleness_ms,
            message: format!(
                "revoked; {} verifier(s) did not confirm in time and refuse the token within \
                 {:.1} s at the latest",
                propagation.lagging,
                propagation.max_staleness.as_secs_f64()
            ),
        };
        (StatusCode::ACCEPTED, Json(body)).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&header) {
        response.headers_mut().insert(BARRIER_HEADER, value);
    }
    response
}

/// Commits a revocation and waits at the barrier, with metrics, an audit event and, for a
/// token with a record (`record`: its tenant and id), the record's revocation time. Nothing
/// is acknowledged unless the store accepted it.
///
/// In a task of its own: a revoke that lands is audited, counted and noted on its record even
/// when the client went away before the answer. The answer comes within
/// [`RevocationSettings::revoke_deadline`](crate::revocation::RevocationSettings::revoke_deadline)
/// of the call, as the README promises: the store bounds the commit by it, and the record's
/// note (bookkeeping, two more round trips on a connection of its own that a failover may
/// have left on the lost primary) gets what is left of it, then finishes in the background.
async fn revoke(
    state: &AppState,
    by: &Subject,
    revocation: Revocation,
    record: Option<(TenantId, TokenId)>,
) -> Result<Propagation, ApiError> {
    let answer_by = tokio::time::Instant::now() + state.settings.revocation.revoke_deadline();
    let (state, by) = (state.clone(), by.clone());
    let task = tokio::spawn(
        async move {
            let issuer = state.issuer()?;
            let propagation = commit_revocation(&state, issuer, &by, revocation).await?;
            if let Some((tenant, id)) = record {
                let note = tokio::spawn(
                    async move {
                        if let Ok(issuer) = state.issuer() {
                            mark_record_revoked(&state, issuer, &tenant, id.as_str()).await;
                        }
                    }
                    .in_current_span(),
                );
                if tokio::time::timeout_at(answer_by, note).await.is_err() {
                    tracing::info!(
                        "answering the revoke before its record notes the revocation time"
                    );
                }
            }
            Ok(propagation)
        }
        .in_current_span(),
    );
    task.await
        .map_err(|ended| ApiError::Internal(Box::new(ended)))?
}

/// The store's part of [`revoke`], with its metrics and audit event.
async fn commit_revocation(
    state: &AppState,
    issuer: &IssuerState,
    by: &Subject,
    revocation: Revocation,
) -> Result<Propagation, ApiError> {
    let (kind, tenant, target) = match &revocation {
        Revocation::Token { jti, .. } => ("token", "-".to_owned(), jti.to_string()),
        Revocation::User {
            tenant, subject, ..
        } => ("user", tenant.to_string(), subject.to_string()),
        Revocation::Tenant { tenant, .. } => ("tenant", tenant.to_string(), tenant.to_string()),
        Revocation::Key { kid, .. } => ("key", "-".to_owned(), kid.to_string()),
    };
    match issuer.revocations.revoke(revocation).await {
        Ok(propagation) => {
            state.metrics.record_revoke(kind, "ok");
            state.metrics.record_barrier(&propagation);
            let outcome = if propagation.is_confirmed() {
                "ok"
            } else {
                "ok_lagging"
            };
            audit_revoke(by, &tenant, kind, &target, outcome);
            Ok(propagation)
        }
        Err(error) => {
            state.metrics.record_revoke(kind, "store_unavailable");
            audit_revoke(by, &tenant, kind, &target, "store_unavailable");
            Err(ApiError::from(error))
        }
    }
}

/// Best effort after the revocation is committed: the listing shows the revocation time. If
/// this write fails the token is still revoked (the mirror says so); only the time is missing.
async fn mark_record_revoked(state: &AppState, issuer: &IssuerState, tenant: &TenantId, id: &str) {
    if let Err(error) = issuer
        .records
        .mark_revoked(tenant, id, state.clock.now())
        .await
    {
        tracing::warn!(error = %ErrorChain(&error), jti = id, "could not note the revocation time on the token record");
    }
}

/// A tenant admin's revocation: every token of one user in the tenant, or all of them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RevocationsBody {
    /// Revoke every token of this user in the tenant.
    user: Option<String>,
    /// `true`: revoke every token of the tenant.
    all: Option<bool>,
}

/// Revoke every token of a user in the tenant, or of the whole tenant. Tenant admins only.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/revocations", tag = "issuer",
    params(("tenant" = String, Path)),
    request_body = RevocationsBody,
    responses((status = 204, description = "Revoked, and every verifier confirmed (`Edgetoken-Barrier: confirmed=N`)"), (status = 202, body = LaggingBody, description = "Revoked; some verifiers did not confirm in time"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("basic" = []))
)]
async fn revoke_many(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Person(person): Person,
    JsonBody(body): JsonBody<RevocationsBody>,
) -> Result<Response, ApiError> {
    let issuer = state.issuer()?;
    let tenant = tenant_id(&tenant)?;
    if !person.membership(&tenant).is_some_and(|m| m.admin) {
        return Err(ApiError::forbidden(
            "not_tenant_admin",
            format!("only admins of tenant {tenant} may do this"),
        ));
    }
    let (now, leeway) = (state.clock.unix_now(), state.settings.token.leeway);
    let revocation = match (body.user, body.all) {
        (Some(user), None) => {
            let subject = revocable_user(&state, issuer, &tenant, &user).await?;
            issuance::revoke_user(tenant, subject, now, leeway)
        }
        (None, Some(true)) => issuance::revoke_tenant(tenant, now, leeway),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                r#"give exactly one of {"user": "ID"} or {"all": true}"#,
            ));
        }
    };
    // Each entry is copied into every mirror for 12 hours: one admin may not flood them.
    issuer
        .tenant_revocations
        .acquire(person.id.as_str())
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let propagation = revoke(&state, &person.id, revocation, None).await?;
    Ok(revoked(StatusCode::NO_CONTENT, propagation))
}

/// The user a tenant admin may revoke: a valid id that is a member of the tenant, or that owns
/// a token record there (a former member whose tokens still live stays revocable), or any
/// valid id while records are incomplete (a former member's records may be among those lost).
/// Anything else is refused, so an admin's typo does not silently revoke nobody, and junk ids
/// do not fill every mirror (THREATS #58).
async fn revocable_user(
    state: &AppState,
    issuer: &IssuerState,
    tenant: &TenantId,
    user: &str,
) -> Result<Subject, ApiError> {
    let subject =
        Subject::new(user).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let is_member = issuer
        .directory
        .user(subject.as_str())
        .is_some_and(|u| u.membership(tenant).is_some());
    if is_member
        || !issuer.records.list(tenant, &subject).await?.is_empty()
        || records_lost_at(state, issuer).await?.is_some()
    {
        return Ok(subject);
    }
    Err(ApiError::bad_request(
        "unknown_user",
        format!("{subject} is not a member of tenant {tenant} and holds no token there"),
    ))
}

/// Form of an RFC 7009 revocation request. No `Debug`: it holds a raw token.
#[derive(Deserialize)]
struct PresentedToken {
    token: String,
    #[serde(rename = "token_type_hint")]
    _hint: Option<String>,
}

/// RFC 7009: the holder of a token revokes it by presenting it
/// (`application/x-www-form-urlencoded`, `token=...`). Answers 200 for any token that is not
/// valid, as RFC 7009 §2.2 asks, so the endpoint reveals nothing about tokens.
#[utoipa::path(
    post, path = "/v1/revoke", tag = "issuer",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=<the token>"),
    responses((status = 200, description = "Revoked and confirmed by every verifier (`Edgetoken-Barrier: confirmed=N`), or not a valid token"), (status = 202, body = LaggingBody, description = "Revoked; some verifiers did not confirm in time"), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody))
)]
async fn revoke_presented(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    // Only an issuer revokes: anything else is refused before the body is read.
    state.issuer()?;
    let bytes = body_bytes(request, &()).await?;
    let form: PresentedToken = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let claims = match state.verifier.verify(&form.token, &Requirement::any()) {
        Ok(claims) => claims,
        Err(Rejection::Unavailable) => return Err(ApiError::Token(Rejection::Unavailable)),
        Err(rejection) => {
            tracing::debug!(
                reason = rejection.code(),
                "revocation request for an invalid token"
            );
            return Ok(StatusCode::OK.into_response());
        }
    };
    let propagation = revoke(
        &state,
        &claims.subject,
        Revocation::Token {
            jti: claims.token_id.clone(),
            expires_at: claims.expires_at.unix_timestamp(),
        },
        Some((claims.tenant.clone(), claims.token_id.clone())),
    )
    .await?;
    Ok(revoked(StatusCode::OK, propagation))
}

/// The permission catalogue and shortcuts.
#[derive(Serialize, ToSchema)]
struct PermissionsBody {
    categories: Vec<String>,
    permissions: Vec<String>,
    /// Each shortcut and what it expands to today.
    shortcuts: std::collections::BTreeMap<String, Vec<String>>,
}

/// The permission catalogue.
#[utoipa::path(get, path = "/v1/permissions", tag = "issuer", responses((status = 200, body = PermissionsBody)))]
async fn permissions(State(state): State<AppState>) -> Result<Json<PermissionsBody>, ApiError> {
    let catalogue = &state.issuer()?.catalogue;
    let expand = |shortcut: &str| {
        catalogue
            .expand(&[shortcut])
            .map(|scope| scope.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    Ok(Json(PermissionsBody {
        categories: catalogue
            .categories()
            .map(|c| c.as_str().to_owned())
            .collect(),
        permissions: catalogue.all_permissions().map(|p| p.to_string()).collect(),
        shortcuts: [READ_ALL, READ_WRITE_ALL]
            .into_iter()
            .map(|s| (s.to_owned(), expand(s)))
            .collect(),
    }))
}

/// Every trusted public key (never a private one).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "issuer", responses((status = 200, description = "JWKS (RFC 7517)")))]
async fn jwks(State(state): State<AppState>) -> Response {
    let max_age = state.settings.issuer.jwks_max_age.as_secs();
    let mut response = Json(state.verifier.keys().jwks()).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}
