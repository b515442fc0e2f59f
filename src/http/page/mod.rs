//! The personal tokens page (issue 9, SPEC §4 "The tokens page"; THREATS #47-#53): people
//! sign in, pick a tenant, create a token and copy it once, list their tokens and revoke them,
//! in a browser, served by the issuer itself.
//!
//! Server-rendered HTML from askama templates (`templates/`, compiled and type-checked at
//! build time, every value HTML-escaped), one stylesheet and one small script (`assets/`),
//! all embedded in the binary. Every operation calls the same functions as the JSON API
//! (`issuer::mint_for`, `list_for`, `revoke_own`; `extract::sign_in`, `trusted_header`), so
//! the page has no rules of its own about who may mint, list or revoke what.
//!
//! Security, in one place each:
//! - sessions: [`session`]; the cookie is `HttpOnly`, `SameSite=Strict`, and `Secure` with
//!   the `__Host-` prefix when `page.public_origin` is `https`; a new id at every sign-in.
//! - CSRF: every state-changing post carries the session's CSRF token (sign-in: a
//!   double-submit cookie, as there is no session yet), compared in constant time, and it must
//!   come from our origin (`same_origin`: `Sec-Fetch-Site: same-origin` when sent, `Origin`
//!   ours, or `null`/absent only with that `Sec-Fetch-Site`).
//! - headers on every response of this router (`security_headers`): a CSP without inline
//!   script or style, `frame-ancestors 'none'`, `X-Frame-Options`, `nosniff`,
//!   `Referrer-Policy: no-referrer`, and `Cache-Control: no-store` on every page.
//! - the raw token is rendered once, into the response of the create post (no redirect that
//!   could carry it), `no-store`; it is never logged, stored, or put in a URL. Each create
//!   form has a one-time id, so a re-posted form (reload, Back) neither mints nor shows a
//!   token.

pub mod session;

use std::fmt::Write as _;

use askama::Template;
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

pub use self::session::{Session, Sessions};
use super::AppState;
use super::error::{ApiError, ErrorChain};
use super::extract::{self, body_bytes, has_media_type, single_header};
use super::issuer::{self, MintInput, TokenView};
use crate::config::AuthMode;
use crate::directory::User;
use crate::permissions::{Access, Catalogue, Permission, READ_ALL, READ_WRITE_ALL, Scope};
use crate::token::TenantId;

const CSS: &str = include_str!("assets/page.css");
const JS: &str = include_str!("assets/page.js");
const ICON: &str = include_str!("assets/icon.svg");

/// The Content-Security-Policy of every page: nothing inline, nothing from elsewhere, never
/// framed, forms post only here (THREATS #48, #49).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The page's routes, with the security headers on every response.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/tenants/{tenant}/tokens", get(tokens_page).post(create))
        .route("/tenants/{tenant}/tokens/{id}/revoke", post(revoke))
        .route("/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
}

/// Adds the security headers to every response of the page router; pages (anything that is
/// not an asset) are `no-store`, as they hold personal data and CSRF tokens.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "page.css" => (CSS, "text/css; charset=utf-8"),
        "page.js" => (JS, "text/javascript; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The header and navigation every page shares.
#[derive(Debug, Default)]
struct Chrome {
    title: String,
    user: Option<String>,
    csrf: String,
    can_sign_out: bool,
    tenants: Vec<TenantLink>,
}

#[derive(Debug)]
struct TenantLink {
    slug: String,
    current: bool,
}

impl Chrome {
    fn new(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            ..Self::default()
        }
    }

    fn of(title: &str, current: &Current, mode: AuthMode, tenant: Option<&TenantId>) -> Self {
        Self {
            title: title.to_owned(),
            user: Some(current.user.id.as_str().to_owned()),
            csrf: current.session.csrf.clone(),
            can_sign_out: mode == AuthMode::Directory,
            tenants: current
                .user
                .tenants
                .keys()
                .map(|t| TenantLink {
                    slug: t.as_str().to_owned(),
                    current: Some(t) == tenant,
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    username: &'a str,
    notice: Option<&'a str>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    chrome: Chrome,
    heading: &'a str,
    message: &'a str,
    link: &'a str,
    link_text: &'a str,
}

/// The list page: the create form and the person's tokens in one tenant.
#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Chrome,
    tenant: String,
    notice: Option<String>,
    error: Option<String>,
    form_id: String,
    offer_read_all: bool,
    offer_read_write_all: bool,
    default_scope: &'static str,
    categories: Vec<CategoryChoice>,
    tokens: Vec<TokenRow>,
    /// Set when the token store lost its records at this time (issue 13): the list says that
    /// tokens created before it may be missing, and how to revoke them anyway.
    records_lost: Option<LostRecords>,
}

/// When the token store lost its records, ready to print.
#[derive(Debug)]
struct LostRecords {
    iso: String,
    text: String,
}

#[derive(Debug)]
struct CategoryChoice {
    name: String,
    write: bool,
}

/// One row of the list, ready to print.
#[derive(Debug)]
struct TokenRow {
    id: String,
    name: Option<String>,
    permissions: String,
    created_iso: String,
    created_text: String,
    expires_iso: String,
    expires_text: String,
    /// When and from where it was last used, as verifiers reported (issue 10).
    last_used: Option<LastUsed>,
    status: &'static str,
    status_label: &'static str,
}

/// A token's last reported use.
#[derive(Debug)]
struct LastUsed {
    iso: String,
    text: String,
    /// The client address, when addresses are recorded.
    from: Option<String>,
    /// Approximate uses so far.
    uses: u64,
}

#[derive(Template)]
#[template(path = "created.html")]
struct CreatedPage<'a> {
    chrome: Chrome,
    tenant: &'a str,
    token: &'a str,
    name: Option<&'a str>,
    permissions: String,
    expires_iso: String,
    expires_text: String,
}

#[derive(Template)]
#[template(path = "revoke.html")]
struct RevokePage<'a> {
    chrome: Chrome,
    tenant: &'a str,
    id: &'a str,
    name: Option<&'a str>,
    permissions: String,
}

/// An HTML response with `status`; a template that fails to render (a bug) answers with a
/// plain sentence, never a trace.
fn html(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "page template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Something went wrong on our side. Try again.",
            )
                .into_response()
        }
    }
}

fn message(
    status: StatusCode,
    chrome: Chrome,
    heading: &str,
    text: &str,
    link: &str,
    link_text: &str,
) -> Response {
    html(
        status,
        &MessagePage {
            chrome,
            heading,
            message: text,
            link,
            link_text,
        },
    )
}

/// 303 to `location` (a fixed path built here, never from the request's own text).
fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The sentence for people, and a heading, for an API failure (SPEC §4's error codes).
fn refusal(error: &ApiError) -> (&'static str, String) {
    match error {
        ApiError::Forbidden {
            code: "permission_not_held",
            message,
        } => (
            "Permission not held",
            format!(
                "{}. A token can only carry permissions you hold yourself in this tenant.",
                sentence(message)
            ),
        ),
        ApiError::Forbidden { message, .. } => ("Not allowed", format!("{}.", sentence(message))),
        ApiError::RateLimited { retry_after } => (
            "Too many requests",
            format!(
                "You made too many requests. Wait {} seconds, then try again.",
                retry_after.as_secs().max(1)
            ),
        ),
        ApiError::StoreUnavailable(_) => (
            "Store unavailable",
            "The token store cannot be reached right now, so nothing was changed. Try again in \
             a moment."
                .to_owned(),
        ),
        ApiError::BadRequest { message, .. } => {
            ("Check the form", format!("{}.", sentence(message)))
        }
        ApiError::NotFound => (
            "Not found",
            "That token does not exist, or it is not yours.".to_owned(),
        ),
        ApiError::Unauthenticated | ApiError::TokenNotAccepted => (
            "Sign-in needed",
            "We could not tell who you are. Sign in again.".to_owned(),
        ),
        _ => (
            "Something went wrong",
            "Something went wrong on our side, and nothing was changed. Try again; if it keeps \
             happening, tell your operator."
                .to_owned(),
        ),
    }
}

/// `text` with a capital first letter and no final full stop.
fn sentence(text: &str) -> String {
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Logs what an API failure hides from people, once, as [`ApiError`]'s response does.
fn log_failure(error: &ApiError) {
    match error {
        ApiError::Internal(source) => {
            tracing::error!(error = %ErrorChain(source.as_ref()), "internal error on the tokens page");
        }
        ApiError::StoreUnavailable(source) => {
            tracing::warn!(error = %ErrorChain(source.as_ref()), "store unavailable for the tokens page");
        }
        _ => {}
    }
}

fn api_failure(error: &ApiError, chrome: Chrome, link: &str, link_text: &str) -> Response {
    log_failure(error);
    let (heading, text) = refusal(error);
    message(error.status(), chrome, heading, &text, link, link_text)
}

// ---------------------------------------------------------------------------------------------
// Cookies and sessions

fn session_cookie_name(state: &AppState) -> &'static str {
    if state.settings.page.secure_cookies {
        "__Host-edgetoken-session"
    } else {
        "edgetoken-session"
    }
}

fn sign_in_cookie_name(state: &AppState) -> &'static str {
    if state.settings.page.secure_cookies {
        "__Host-edgetoken-signin"
    } else {
        "edgetoken-signin"
    }
}

/// The value of cookie `name`; `None` when absent or sent more than once (which one would
/// count must not be left to the browser's order; THREATS #57).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(value);
            }
        }
    }
    found
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` over TLS; no
/// expiry, so the browser drops it when it closes (the server enforces the timeouts).
fn set_cookie(state: &AppState, name: &str, value: &str, clear: bool) -> Option<HeaderValue> {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if state.settings.page.secure_cookies {
        text.push_str("; Secure");
    }
    if clear {
        text.push_str("; Max-Age=0");
    }
    HeaderValue::from_str(&text).ok()
}

fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The signed-in person of a request, with their session.
#[derive(Debug)]
struct Current {
    user: User,
    id: String,
    session: Session,
    /// A cookie to set (trusted-header mode starts sessions on the fly).
    set_cookie: Option<HeaderValue>,
}

/// Why there is no [`Current`]: a response to send instead.
enum NoSession {
    /// Nobody signed in: to the sign-in page.
    SignIn,
    /// A session cookie whose session ended (or never existed): to sign-in, saying so.
    Ended,
    /// Anything else, already rendered.
    Response(Response),
}

impl NoSession {
    /// The response for a page view (`post` false) or a form post that was lost.
    fn into_response(self, state: &AppState, post: bool) -> Response {
        let clear = set_cookie(state, session_cookie_name(state), "", true);
        match self {
            Self::SignIn => see_other("/sign-in"),
            Self::Ended if post => with_cookie(see_other("/sign-in?ended=post"), clear),
            Self::Ended => with_cookie(see_other("/sign-in?ended=1"), clear),
            Self::Response(response) => response,
        }
    }
}

async fn current(state: &AppState, headers: &HeaderMap) -> Result<Current, NoSession> {
    let issuer = state
        .issuer()
        .map_err(|_| NoSession::Response(StatusCode::NOT_FOUND.into_response()))?;
    let cookie_id = cookie(headers, session_cookie_name(state));
    let store_failure = |error: session::SessionError| {
        let error = ApiError::from(error);
        NoSession::Response(api_failure(&error, Chrome::new("Error"), "/", "Try again"))
    };
    match issuer.auth.mode {
        AuthMode::Directory => {
            let id = cookie_id.ok_or(NoSession::SignIn)?;
            let session = issuer
                .sessions
                .load(id)
                .await
                .map_err(store_failure)?
                .ok_or(NoSession::Ended)?;
            let user = issuer
                .directory
                .user(&session.user)
                .cloned()
                .ok_or(NoSession::Ended)?;
            Ok(Current {
                user,
                id: id.to_owned(),
                session,
                set_cookie: None,
            })
        }
        AuthMode::TrustedHeader => {
            // The proxy names the person on every request, exactly as for the API; the
            // session only carries the CSRF token and the used form ids.
            let user = extract::trusted_header(headers, issuer).map_err(|_| {
                NoSession::Response(message(
                    StatusCode::UNAUTHORIZED,
                    Chrome::new("Not signed in"),
                    "Not signed in",
                    "The sign-in proxy did not say who you are. Sign in through it, then open \
                     this page again.",
                    "/",
                    "Try again",
                ))
            })?;
            if let Some(id) = cookie_id
                && let Some(session) = issuer.sessions.load(id).await.map_err(store_failure)?
                && session.user == user.id.as_str()
            {
                return Ok(Current {
                    user,
                    id: id.to_owned(),
                    session,
                    set_cookie: None,
                });
            }
            if let Some(old) = cookie_id {
                issuer.sessions.delete(old).await.map_err(store_failure)?;
            }
            let (id, session) = issuer
                .sessions
                .create(user.id.as_str())
                .await
                .map_err(store_failure)?;
            let set_cookie = set_cookie(state, session_cookie_name(state), &id, false);
            Ok(Current {
                user,
                id,
                session,
                set_cookie,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forms, CSRF and origin

/// A parsed `application/x-www-form-urlencoded` body; wiped when dropped, as the sign-in
/// form's holds a password.
struct Form(Vec<(String, String)>);

impl Drop for Form {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for (_, value) in &mut self.0 {
            value.zeroize();
        }
    }
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

async fn read_form(state: &AppState, request: Request) -> Result<(HeaderMap, Form), Box<Response>> {
    let (parts, body) = request.into_parts();
    let is_form = has_media_type(&parts.headers, "application/x-www-form-urlencoded");
    let bytes = body_bytes(Request::from_parts(parts.clone(), body), state)
        .await
        .map_err(|e| Box::new(api_failure(&e, Chrome::new("Error"), "/", "Back")))?;
    if !is_form {
        return Err(Box::new(message(
            StatusCode::BAD_REQUEST,
            Chrome::new("Error"),
            "Check the form",
            "This request was not a form. Use the page's own forms.",
            "/",
            "Back",
        )));
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).map_err(|_| {
        Box::new(message(
            StatusCode::BAD_REQUEST,
            Chrome::new("Error"),
            "Check the form",
            "The form could not be read. Use the page's own forms.",
            "/",
            "Back",
        ))
    })?;
    Ok((parts.headers, Form(fields)))
}

/// The origin browsers must post from: `page.public_origin`, or `http://` + `Host`.
fn expected_origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = &state.settings.page.public_origin {
        return Some(origin.clone());
    }
    let host = single_header(headers, header::HOST.as_str())
        .ok()
        .flatten()?
        .to_str()
        .ok()?;
    Some(format!("http://{}", host.to_ascii_lowercase()))
}

/// Whether a post comes from our own pages (THREATS #47). `Sec-Fetch-Site`, which only the
/// browser can set, must be `same-origin` when sent; then `Origin` must be ours, absent, or
/// `null` (browsers send `Origin: null` on form posts from a page with
/// `Referrer-Policy: no-referrer`, which this page has). Without `Sec-Fetch-Site`, `Origin`
/// must equal ours exactly. A request with neither is refused.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let fetch_site = match single_header(headers, "sec-fetch-site") {
        Ok(value) => value.map(HeaderValue::as_bytes),
        Err(_) => return false,
    };
    if fetch_site.is_some_and(|site| site != b"same-origin") {
        return false;
    }
    let is_ours = |origin: &HeaderValue| {
        expected_origin(state, headers).is_some_and(|expected| {
            origin
                .to_str()
                .is_ok_and(|o| o.eq_ignore_ascii_case(&expected))
        })
    };
    match (single_header(headers, header::ORIGIN.as_str()), fetch_site) {
        (Ok(Some(origin)), None) => is_ours(origin),
        (Ok(Some(origin)), Some(_)) => origin.as_bytes() == b"null" || is_ours(origin),
        (Ok(None), fetch_site) => fetch_site.is_some(),
        (Err(_), _) => false,
    }
}

/// Constant-time comparison of a submitted CSRF token with the expected one.
fn csrf_matches(submitted: Option<&str>, expected: &str) -> bool {
    submitted
        .is_some_and(|s| session::is_id(s) && bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
}

fn cross_site_refusal() -> Response {
    message(
        StatusCode::FORBIDDEN,
        Chrome::new("Refused"),
        "Request refused",
        "This form was not sent from this site, so nothing was changed. If you used this \
         page, reload it and try again.",
        "/",
        "Back to my tokens",
    )
}

fn stale_form_refusal(chrome: Chrome, back: &str) -> Response {
    message(
        StatusCode::FORBIDDEN,
        chrome,
        "Form out of date",
        "This form is out of date (you may have signed in again elsewhere), so nothing was \
         changed. Reload the page and try again.",
        back,
        "Reload",
    )
}

/// Origin and CSRF token of a post from a signed-in person.
fn check_post(
    state: &AppState,
    headers: &HeaderMap,
    current: &Current,
    form: &Form,
    back: &str,
) -> Result<(), Box<Response>> {
    if !same_origin(state, headers) {
        return Err(Box::new(cross_site_refusal()));
    }
    if !csrf_matches(form.get("csrf"), &current.session.csrf) {
        let mode = state.issuer().map_or(AuthMode::Directory, |i| i.auth.mode);
        return Err(Box::new(stale_form_refusal(
            Chrome::of("Form out of date", current, mode, None),
            back,
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let current = match current(&state, &headers).await {
        Ok(current) => current,
        Err(no) => return no.into_response(&state, false),
    };
    let mode = state.issuer().map_or(AuthMode::Directory, |i| i.auth.mode);
    let response = match current.user.tenants.keys().next() {
        Some(tenant) => see_other(&format!("/tenants/{tenant}/tokens")),
        None => message(
            StatusCode::OK,
            Chrome::of("No tenants", &current, mode, None),
            "No tenants",
            "You do not belong to any tenant yet, so you cannot create tokens. Ask a tenant \
             admin to add you.",
            "/",
            "Reload",
        ),
    };
    with_cookie(response, current.set_cookie)
}

fn sign_in_form(
    state: &AppState,
    status: StatusCode,
    username: &str,
    notice: Option<&str>,
    error: Option<String>,
) -> Response {
    let csrf = session::random_id();
    let page = html(
        status,
        &SignInPage {
            chrome: Chrome::new("Sign in"),
            csrf: &csrf,
            username,
            notice,
            error,
        },
    );
    with_cookie(
        page,
        set_cookie(state, sign_in_cookie_name(state), &csrf, false),
    )
}

async fn sign_in_page(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    if state
        .issuer()
        .is_ok_and(|i| i.auth.mode == AuthMode::TrustedHeader)
    {
        return see_other("/");
    }
    let notice = match query.as_deref() {
        Some("ended=post") => Some(
            "Your session ended before your form was sent, so nothing was created or revoked. \
             Sign in again, then fill in the form again.",
        ),
        Some("ended=1") => Some("Your session has ended. Sign in again to continue."),
        Some("signed_out=1") => Some("You are signed out."),
        _ => None,
    };
    sign_in_form(&state, StatusCode::OK, "", notice, None)
}

async fn sign_in(State(state): State<AppState>, request: Request) -> Response {
    let issuer = match state.issuer() {
        Ok(issuer) if issuer.auth.mode == AuthMode::Directory => issuer,
        _ => return see_other("/"),
    };
    let (headers, form) = match read_form(&state, request).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    if !same_origin(&state, &headers) {
        return cross_site_refusal();
    }
    let username = form.get("username").unwrap_or_default();
    let expected = cookie(&headers, sign_in_cookie_name(&state)).unwrap_or_default();
    if !csrf_matches(form.get("csrf"), expected) {
        return sign_in_form(
            &state,
            StatusCode::FORBIDDEN,
            username,
            None,
            Some("This sign-in form had expired. Please sign in again.".to_owned()),
        );
    }
    let password = form.get("password").unwrap_or_default();
    let user = match extract::sign_in(issuer, username, password).await {
        Ok(user) => user,
        Err(ApiError::Unauthenticated) => {
            return sign_in_form(
                &state,
                StatusCode::UNAUTHORIZED,
                username,
                None,
                Some("The username or password is not right.".to_owned()),
            );
        }
        Err(ApiError::RateLimited { retry_after }) => {
            return sign_in_form(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                username,
                None,
                Some(format!(
                    "Too many sign-in attempts. Wait {} seconds, then try again.",
                    retry_after.as_secs().max(1)
                )),
            );
        }
        Err(error) => return api_failure(&error, Chrome::new("Error"), "/sign-in", "Try again"),
    };
    // A new id at every sign-in (THREATS #50): whatever id the browser held before, perhaps
    // planted, ends here.
    if let Some(old) = cookie(&headers, session_cookie_name(&state))
        && let Err(error) = issuer.sessions.delete(old).await
    {
        return api_failure(&error.into(), Chrome::new("Error"), "/sign-in", "Try again");
    }
    let id = match issuer.sessions.create(user.id.as_str()).await {
        Ok((id, _)) => id,
        Err(error) => {
            return api_failure(&error.into(), Chrome::new("Error"), "/sign-in", "Try again");
        }
    };
    tracing::info!(target: "audit", event = "page_sign_in", user = %user.id, outcome = "ok");
    let response = with_cookie(
        see_other("/"),
        set_cookie(&state, session_cookie_name(&state), &id, false),
    );
    with_cookie(
        response,
        set_cookie(&state, sign_in_cookie_name(&state), "", true),
    )
}

async fn sign_out(State(state): State<AppState>, request: Request) -> Response {
    let (headers, form) = match read_form(&state, request).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    let current = match current(&state, &headers).await {
        Ok(current) => current,
        Err(no) => return no.into_response(&state, false),
    };
    if let Err(response) = check_post(&state, &headers, &current, &form, "/") {
        return *response;
    }
    if let Ok(issuer) = state.issuer()
        && let Err(error) = issuer.sessions.delete(&current.id).await
    {
        return api_failure(&error.into(), Chrome::new("Error"), "/", "Try again");
    }
    with_cookie(
        see_other("/sign-in?signed_out=1"),
        set_cookie(&state, session_cookie_name(&state), "", true),
    )
}

/// The tenant of a path, if the person belongs to it; otherwise the page saying so.
fn member_tenant(
    state: &AppState,
    current: &Current,
    raw: &str,
) -> Result<TenantId, Box<Response>> {
    let mode = state.issuer().map_or(AuthMode::Directory, |i| i.auth.mode);
    match TenantId::new(raw) {
        Ok(tenant) if current.user.membership(&tenant).is_some() => Ok(tenant),
        _ => Err(Box::new(message(
            StatusCode::FORBIDDEN,
            Chrome::of("Not a member", current, mode, None),
            "Not a member",
            "You are not a member of that tenant, so you have no tokens there.",
            "/",
            "Back to my tokens",
        ))),
    }
}

async fn tokens_page(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let current = match current(&state, &headers).await {
        Ok(current) => current,
        Err(no) => return no.into_response(&state, false),
    };
    let tenant = match member_tenant(&state, &current, &tenant) {
        Ok(tenant) => tenant,
        Err(response) => return with_cookie(*response, current.set_cookie),
    };
    let notice = query.as_deref().and_then(revoke_notice);
    let response = list_response(&state, &current, &tenant, StatusCode::OK, notice, None).await;
    with_cookie(response, current.set_cookie)
}

/// What the list says after a revoke, from the redirect's query: whether every verifier
/// confirmed it (the barrier), or how many lag and the bound within which they refuse anyway.
fn revoke_notice(query: &str) -> Option<String> {
    let number = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse::<u64>().ok())
    };
    if let Some(confirmed) = number("revoked") {
        return Some(format!(
            "Token revoked. All {confirmed} verifier(s) confirmed it: it is refused from its \
             next request anywhere."
        ));
    }
    let (lagging, within) = (number("lagging")?, number("within")?);
    Some(format!(
        "Token revoked, but {lagging} verifier(s) did not confirm in time. Each refuses it \
         within {within} seconds at the latest; every other verifier refuses it already."
    ))
}

/// Renders the list page (with `error`, after a refused create).
async fn list_response(
    state: &AppState,
    current: &Current,
    tenant: &TenantId,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let Ok(issuer) = state.issuer() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let chrome = Chrome::of("Tokens", current, issuer.auth.mode, Some(tenant));
    let listing = match issuer::list_for(state, &current.user, tenant.as_str()).await {
        Ok(listing) => listing,
        Err(error) => return api_failure(&error, chrome, "", "Reload"),
    };
    let mut page = tokens_view(
        chrome,
        &issuer.catalogue,
        current,
        tenant,
        &listing.tokens,
        state.clock.now(),
    );
    page.records_lost = listing.records_since.map(|at| LostRecords {
        iso: iso(at),
        text: utc_text(at),
    });
    html(
        status,
        &TokensPage {
            notice,
            error,
            ..page
        },
    )
}

fn tokens_view(
    chrome: Chrome,
    catalogue: &Catalogue,
    current: &Current,
    tenant: &TenantId,
    tokens: &[TokenView],
    now: OffsetDateTime,
) -> TokensPage {
    let empty = Scope::default();
    let held = current
        .user
        .membership(tenant)
        .map_or(&empty, |m| &m.permissions);
    let holds_all = |shortcut: &str| {
        catalogue
            .expand(&[shortcut])
            .is_ok_and(|scope| scope.missing_from(held).is_empty())
    };
    let offer_read_all = holds_all(READ_ALL);
    let categories = catalogue
        .categories()
        .filter(|c| held.grants(&Permission::new((*c).clone(), Access::Read)))
        .map(|c| CategoryChoice {
            name: c.as_str().to_owned(),
            write: held.grants(&Permission::new(c.clone(), Access::Write)),
        })
        .collect();
    TokensPage {
        chrome,
        tenant: tenant.as_str().to_owned(),
        notice: None,
        error: None,
        form_id: session::random_id(),
        offer_read_all,
        offer_read_write_all: holds_all(READ_WRITE_ALL),
        default_scope: if offer_read_all { READ_ALL } else { "custom" },
        categories,
        tokens: tokens
            .iter()
            .map(|t| token_row(catalogue, t, now))
            .collect(),
        records_lost: None,
    }
}

fn token_row(catalogue: &Catalogue, token: &TokenView, now: OffsetDateTime) -> TokenRow {
    TokenRow {
        id: token.id.clone(),
        name: token.name.clone(),
        permissions: permissions_label(catalogue, &token.permissions),
        created_iso: iso(token.created_at),
        created_text: utc_text(token.created_at),
        expires_iso: iso(token.expires_at),
        // A revoked token's expiry is history: no countdown that suggests it still works.
        expires_text: if token.status == "revoked" {
            utc_text(token.expires_at)
        } else {
            format!(
                "{} ({})",
                utc_text(token.expires_at),
                relative(token.expires_at - now)
            )
        },
        last_used: token.last_used_at.map(|at| LastUsed {
            iso: iso(at),
            text: format!("{} ({})", utc_text(at), relative(at - now)),
            from: token.last_used_from.clone(),
            uses: token.uses,
        }),
        status: token.status,
        status_label: match token.status {
            "active" => "Active",
            "expired" => "Expired",
            _ => "Revoked",
        },
    }
}

/// The shortcut's name when a token's permissions are exactly what it expands to today,
/// otherwise the permissions themselves.
fn permissions_label(catalogue: &Catalogue, permissions: &[String]) -> String {
    let scope = Scope::parse_claim(&permissions.join(" ")).ok();
    for (shortcut, label) in [(READ_WRITE_ALL, "Read & write all"), (READ_ALL, "Read all")] {
        if scope.is_some() && catalogue.expand(&[shortcut]).ok() == scope {
            return label.to_owned();
        }
    }
    permissions.join(", ")
}

fn iso(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `2026-12-01 14:31 UTC`: what shows before the script turns it into local time.
fn utc_text(at: OffsetDateTime) -> String {
    let mut text = String::with_capacity(20);
    let _ = write!(
        text,
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    );
    text
}

/// `in 3 hours`, `5 minutes ago`.
fn relative(span: time::Duration) -> String {
    let minutes = span.whole_minutes();
    let amount = minutes.unsigned_abs();
    let text = if amount < 1 {
        "less than a minute".to_owned()
    } else if amount < 60 {
        format!("{amount} minute{}", if amount == 1 { "" } else { "s" })
    } else {
        let hours = amount / 60;
        format!("{hours} hour{}", if hours == 1 { "" } else { "s" })
    };
    if minutes < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// The permissions a create form asks for, or the sentence saying what is wrong with it.
fn requested_permissions(form: &Form) -> Result<Vec<String>, String> {
    let picked: Vec<String> = form
        .0
        .iter()
        .filter_map(|(key, value)| {
            let category = key.strip_prefix("perm.")?;
            match value.as_str() {
                "read" | "write" => Some(format!("{category}:{value}")),
                _ => None,
            }
        })
        .collect();
    match form.get("scope") {
        Some(shortcut @ (READ_ALL | READ_WRITE_ALL)) if picked.is_empty() => {
            Ok(vec![shortcut.to_owned()])
        }
        Some(READ_ALL | READ_WRITE_ALL) => Err("You chose a shortcut and single categories \
                                                 at once. Choose one of them."
            .to_owned()),
        Some("custom") if !picked.is_empty() => Ok(picked),
        _ => Err("Choose at least one permission.".to_owned()),
    }
}

async fn create(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let (headers, form) = match read_form(&state, request).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    let mut current = match current(&state, &headers).await {
        Ok(current) => current,
        Err(no) => return no.into_response(&state, true),
    };
    let back = format!(
        "/tenants/{}/tokens",
        TenantId::new(&tenant).map_or("", |_| tenant.as_str())
    );
    if let Err(response) = check_post(&state, &headers, &current, &form, &back) {
        return with_cookie(*response, current.set_cookie);
    }
    let tenant = match member_tenant(&state, &current, &tenant) {
        Ok(tenant) => tenant,
        Err(response) => return *response,
    };
    let Ok(issuer) = state.issuer() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mode = issuer.auth.mode;
    // One mint per rendered form: a reload or Back re-posts it, and must neither mint again
    // nor show a token a second time.
    let form_id = form.get("form").unwrap_or_default();
    if !session::is_id(form_id) || !current.session.use_form(form_id) {
        return message(
            StatusCode::CONFLICT,
            Chrome::of("Already sent", &current, mode, Some(&tenant)),
            "Already sent",
            "This form was already sent, so no new token was created. A token is shown only \
             once: if you did not copy it, revoke it in your list and create a new one.",
            &back,
            "Back to my tokens",
        );
    }
    if let Err(error) = issuer.sessions.save(&current.id, &current.session).await {
        return api_failure(
            &error.into(),
            Chrome::of("Error", &current, mode, Some(&tenant)),
            &back,
            "Back to my tokens",
        );
    }
    let permissions = match requested_permissions(&form) {
        Ok(permissions) => permissions,
        Err(problem) => {
            return list_response(
                &state,
                &current,
                &tenant,
                StatusCode::BAD_REQUEST,
                None,
                Some(problem),
            )
            .await;
        }
    };
    let name = form
        .get("name")
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let input = MintInput {
        name,
        duration: form.get("duration").map(str::to_owned),
        permissions,
    };
    let minted = match issuer::mint_for(&state, &current.user, tenant.as_str(), input).await {
        Ok(minted) => minted,
        Err(error) => {
            log_failure(&error);
            let (heading, text) = refusal(&error);
            return list_response(
                &state,
                &current,
                &tenant,
                error.status(),
                None,
                Some(format!("{heading}: {text}")),
            )
            .await;
        }
    };
    let page = CreatedPage {
        chrome: Chrome::of("Token created", &current, mode, Some(&tenant)),
        tenant: tenant.as_str(),
        token: &minted.token,
        name: minted.name.as_deref(),
        permissions: permissions_label(&issuer.catalogue, &minted.permissions),
        expires_iso: iso(minted.expires_at),
        expires_text: utc_text(minted.expires_at),
    };
    let mut response = html(StatusCode::OK, &page);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn revoke(
    State(state): State<AppState>,
    Path((tenant, id)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (headers, form) = match read_form(&state, request).await {
        Ok(read) => read,
        Err(response) => return *response,
    };
    let current = match current(&state, &headers).await {
        Ok(current) => current,
        Err(no) => return no.into_response(&state, true),
    };
    let tenant = match member_tenant(&state, &current, &tenant) {
        Ok(tenant) => tenant,
        Err(response) => return *response,
    };
    let back = format!("/tenants/{tenant}/tokens");
    if let Err(response) = check_post(&state, &headers, &current, &form, &back) {
        return *response;
    }
    let Ok(issuer) = state.issuer() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let chrome = || Chrome::of("Revoke token", &current, issuer.auth.mode, Some(&tenant));
    if form.get("confirm") != Some("yes") {
        // Without the script's confirmation, the server asks.
        let tokens = match issuer::list_for(&state, &current.user, tenant.as_str()).await {
            Ok(listing) => listing.tokens,
            Err(error) => return api_failure(&error, chrome(), &back, "Back to my tokens"),
        };
        let Some(token) = tokens.iter().find(|t| t.id == id) else {
            return api_failure(&ApiError::NotFound, chrome(), &back, "Back to my tokens");
        };
        return html(
            StatusCode::OK,
            &RevokePage {
                chrome: chrome(),
                tenant: tenant.as_str(),
                id: &token.id,
                name: token.name.as_deref(),
                permissions: permissions_label(&issuer.catalogue, &token.permissions),
            },
        );
    }
    match issuer::revoke_own(&state, &current.user, tenant.as_str(), &id).await {
        // The outcome travels in the redirect's query (numbers only, never the token), so a
        // reload of the list keeps saying what happened.
        Ok(propagation) if propagation.is_confirmed() => {
            see_other(&format!("{back}?revoked={}", propagation.confirmed))
        }
        Ok(propagation) => see_other(&format!(
            "{back}?lagging={}&within={}",
            propagation.lagging,
            propagation.max_staleness.as_secs().max(1)
        )),
        Err(error) => api_failure(&error, chrome(), &back, "Back to my tokens"),
    }
}

/// One token for [`render_list_for_bench`]: id, name, permissions, creation and expiry.
pub type BenchRow = (
    String,
    Option<String>,
    Vec<String>,
    OffsetDateTime,
    OffsetDateTime,
);

/// Renders the list page for `user` in `tenant` from `tokens` (no store, no session): the
/// benchmark's entry point for the server-side render budget (under 20 ms for 200 tokens).
///
/// # Errors
///
/// The template error, which would be a bug.
#[doc(hidden)]
pub fn render_list_for_bench(
    catalogue: &Catalogue,
    user: &User,
    tenant: &TenantId,
    tokens: &[BenchRow],
    now: OffsetDateTime,
) -> Result<String, askama::Error> {
    let current = Current {
        user: user.clone(),
        id: String::new(),
        session: Session {
            user: user.id.as_str().to_owned(),
            csrf: session::random_id(),
            created: now.unix_timestamp(),
            seen: now.unix_timestamp(),
            used_forms: Vec::new(),
        },
        set_cookie: None,
    };
    let views: Vec<TokenView> = tokens
        .iter()
        .map(|(id, name, permissions, created, expires)| TokenView {
            id: id.clone(),
            name: name.clone(),
            permissions: permissions.clone(),
            created_at: *created,
            expires_at: *expires,
            revoked_at: None,
            status: if now >= *expires { "expired" } else { "active" },
            last_used_at: None,
            last_used_from: None,
            uses: 0,
        })
        .collect();
    let chrome = Chrome::of("Tokens", &current, AuthMode::Directory, Some(tenant));
    tokens_view(chrome, catalogue, &current, tenant, &views, now).render()
}

/// The embedded assets and their sizes in bytes (CSS, JS, icon), for the page-weight budget.
pub fn asset_sizes() -> [(&'static str, usize); 3] {
    [
        ("page.css", CSS.len()),
        ("page.js", JS.len()),
        ("icon.svg", ICON.len()),
    ]
}
