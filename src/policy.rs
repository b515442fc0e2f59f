//! The route policy: which requirement a request method and path carry (SPEC §5).
//!
//! Configuration maps `method` + `path` pattern to the permission a request needs; a
//! `{tenant}` segment captures the tenant the token must be for, and a final `*` segment
//! matches any rest of the path. The first route that matches wins; a request no route matches
//! is denied unless the operator chose [`Unmatched::AllowAuthenticated`].
//!
//! This module owns pattern validation and matching, and the path normalisation both share.
//! It knows no HTTP types: the forward-auth handler and the in-process layer hand it the
//! method and the raw path as strings.
//!
//! # Security: one view of the path
//!
//! The proxy forwards the raw request target; the upstream decodes it once. Matching decodes
//! each segment exactly once, too, and refuses (rather than normalises) anything two
//! components could read differently: `.` and `..` segments, raw or encoded; an encoded `/`;
//! a backslash; control characters; a `%` that survives decoding (so `%252e` cannot become
//! `.` in an upstream that decodes twice); and malformed escapes. Comparison is
//! case-sensitive, byte for byte. A refused path matches no route, so it is denied by default.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use crate::permissions::{Catalogue, Permission};
use crate::token::{Requirement, TenantId};

/// The longest request path matched, in bytes; longer ones are refused.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// The capture segment naming the tenant.
const TENANT_CAPTURE: &str = "{tenant}";

/// One route as written in the configuration (`[[verifier.routes]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// An HTTP method in upper case (`GET`), or `*` for any.
    pub method: String,
    /// A path pattern: `/`-separated literal segments, at most one `{tenant}` segment, and
    /// optionally a final `*` segment matching any rest of the path (including none).
    pub path: String,
    /// The permission the route needs (`CATEGORY:read|write`), from the catalogue. Absent:
    /// any valid token (for the captured tenant, if any) passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
}

/// What to do with a request no route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Refuse it (403, `no_route`), even with a valid token. The default: a route nobody
    /// thought about is closed.
    #[default]
    Deny,
    /// Let any valid, unrevoked token through, with no tenant or permission requirement.
    AllowAuthenticated,
}

/// Why a route of the configuration was refused; names the route and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routes[{index}].{field}: {message}")]
pub struct RouteError {
    /// The route's position in the list, from 0.
    pub index: usize,
    /// `method`, `path` or `permission`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Why a request path cannot be matched. Any of these means "no route": denied by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path is not absolute")]
    NotAbsolute,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path too long")]
    TooLong,
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    #[error("malformed percent-encoding")]
    BadEncoding,
    /// A `.` or `..` segment, raw or encoded.
    #[error("dot segment")]
    DotSegment,
    /// A segment that decodes to something two parsers could read differently: `/`, `\`,
    /// `%`, or a control character.
    #[error("ambiguous character in a segment")]
    Ambiguous,
    /// A route matched but its `{tenant}` segment is not a tenant slug. Refused rather than
    /// passed on to later routes, which may be looser.
    #[error("tenant segment is not a tenant slug")]
    InvalidTenant,
}

impl PathError {
    /// A `snake_case` code for logs.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotAbsolute => "not_absolute",
            Self::TooLong => "too_long",
            Self::BadEncoding => "bad_encoding",
            Self::DotSegment => "dot_segment",
            Self::Ambiguous => "ambiguous",
            Self::InvalidTenant => "invalid_tenant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Tenant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodMatch {
    Any,
    Exactly(String),
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    method: MethodMatch,
    segments: Vec<Segment>,
    /// A final `*`: any rest of the path, including none.
    rest: bool,
    permission: Option<Permission>,
    /// The pattern as configured, for logs.
    pattern: String,
}

/// The validated route policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    routes: Vec<Route>,
    unmatched: Unmatched,
}

/// A route matched a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// The route's pattern as configured (safe to log: it is ours, not the request's).
    pub pattern: &'a str,
    /// What the token must satisfy.
    pub requirement: Requirement,
}

impl RoutePolicy {
    /// Validates `specs` against the permission catalogue.
    ///
    /// # Errors
    ///
    /// [`RouteError`] naming the first bad route and field: a method that is not an upper-case
    /// token or `*`; a path that is not absolute, has an empty, dot, percent-encoded or
    /// misplaced `*` segment, or two `{tenant}` captures; a permission that is not
    /// `CATEGORY:read|write` or whose category is not in the catalogue; or a route that an
    /// earlier one makes unreachable (the same route twice included).
    pub fn new(
        specs: &[RouteSpec],
        unmatched: Unmatched,
        catalogue: &Catalogue,
    ) -> Result<Self, RouteError> {
        let mut routes: Vec<Route> = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let error = |field, message: String| RouteError {
                index,
                field,
                message,
            };
            let method = parse_method(&spec.method).map_err(|m| error("method", m.into()))?;
            let (segments, rest) = parse_pattern(&spec.path).map_err(|m| error("path", m))?;
            let permission = spec
                .permission
                .as_deref()
                .map(|text| {
                    let permission: Permission = text
                        .parse()
                        .map_err(|e| error("permission", format!("{e}")))?;
                    if catalogue.categories().any(|c| c == permission.category()) {
                        Ok(permission)
                    } else {
                        Err(error(
                            "permission",
                            format!("category of `{text}` is not in permissions.categories"),
                        ))
                    }
                })
                .transpose()?;
            let route = Route {
                method,
                segments,
                rest,
                permission,
                pattern: spec.path.clone(),
            };
            if let Some(earlier) = routes.iter().position(|earlier| earlier.shadows(&route)) {
                return Err(error(
                    "path",
                    format!(
                        "unreachable: routes[{earlier}] matches every request this route would"
                    ),
                ));
            }
            routes.push(route);
        }
        Ok(Self { routes, unmatched })
    }

    /// Whether any route is configured.
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// What an unmatched request gets.
    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }

    /// The requirement of a request no route matches: none (denied) under
    /// `unmatched = "deny"`, any valid token under `allow_authenticated`. The one place this
    /// rule lives; a path refused as ambiguous never gets here (it is denied outright).
    pub fn unmatched_requirement(&self) -> Option<Requirement> {
        match self.unmatched {
            Unmatched::Deny => None,
            Unmatched::AllowAuthenticated => Some(Requirement::any()),
        }
    }

    /// The requirement of the first route matching `method` and the raw request `target`
    /// (path, optionally followed by `?query`; the query is ignored). `Ok(None)` when no
    /// route matches.
    ///
    /// # Errors
    ///
    /// [`PathError`] for a path that cannot be matched safely, or whose first matching route
    /// captures something that is not a tenant. Callers deny such a request outright, whatever
    /// `unmatched` says: `allow_authenticated` is for paths no route describes, not for paths
    /// an attacker bent so no route would recognise them.
    pub fn requirement(
        &self,
        method: &str,
        target: &str,
    ) -> Result<Option<RouteMatch<'_>>, PathError> {
        let segments = decode_path(target)?;
        for route in &self.routes {
            if let Some(requirement) = route.matches(method, &segments)? {
                return Ok(Some(RouteMatch {
                    pattern: &route.pattern,
                    requirement,
                }));
            }
        }
        Ok(None)
    }
}

impl Route {
    /// The requirement if the route matches (with the captured tenant, if any).
    ///
    /// # Errors
    ///
    /// [`PathError::InvalidTenant`] when every literal segment matches but the `{tenant}`
    /// segment is not a tenant slug.
    fn matches(
        &self,
        method: &str,
        path: &[Cow<'_, str>],
    ) -> Result<Option<Requirement>, PathError> {
        if let MethodMatch::Exactly(expected) = &self.method
            && expected != method
        {
            return Ok(None);
        }
        if path.len() < self.segments.len() || (!self.rest && path.len() != self.segments.len()) {
            return Ok(None);
        }
        let mut captured = None;
        for (segment, actual) in self.segments.iter().zip(path) {
            match segment {
                Segment::Literal(literal) if *literal == **actual => {}
                Segment::Literal(_) => return Ok(None),
                Segment::Tenant => captured = Some(actual),
            }
        }
        let tenant = captured
            .map(|t| TenantId::new(t).map_err(|_| PathError::InvalidTenant))
            .transpose()?;
        Ok(Some(Requirement {
            tenant,
            permission: self.permission.clone(),
        }))
    }

    /// Whether every request `later` matches is matched by `self` first.
    fn shadows(&self, later: &Self) -> bool {
        let method = match (&self.method, &later.method) {
            (MethodMatch::Any, _) => true,
            (MethodMatch::Exactly(a), MethodMatch::Exactly(b)) => a == b,
            (MethodMatch::Exactly(_), MethodMatch::Any) => false,
        };
        let length = if self.rest {
            later.segments.len() >= self.segments.len()
        } else {
            !later.rest && later.segments.len() == self.segments.len()
        };
        method
            && length
            && self
                .segments
                .iter()
                .zip(&later.segments)
                .all(|(mine, theirs)| mine == theirs)
    }
}

fn parse_method(method: &str) -> Result<MethodMatch, &'static str> {
    if method == "*" {
        return Ok(MethodMatch::Any);
    }
    let valid = (1..=32).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase());
    if valid {
        Ok(MethodMatch::Exactly(method.to_owned()))
    } else {
        Err("must be an upper-case HTTP method such as GET, or `*` for any")
    }
}

/// Pattern segments may only use characters that need no encoding, so the configured text is
/// exactly what a decoded request segment is compared with.
fn is_pattern_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@' | b'+')
}

fn parse_pattern(path: &str) -> Result<(Vec<Segment>, bool), String> {
    let body = path
        .strip_prefix('/')
        .ok_or("must start with `/`".to_owned())?;
    if path.len() > MAX_PATH_BYTES {
        return Err("too long".into());
    }
    let mut segments = Vec::new();
    let mut rest = false;
    let parts: Vec<&str> = body.split('/').collect();
    let last = parts.len() - 1;
    for (position, part) in parts.into_iter().enumerate() {
        match part {
            "*" if position == last => rest = true,
            "*" => return Err("`*` may only be the last segment".into()),
            TENANT_CAPTURE if segments.contains(&Segment::Tenant) => {
                return Err("at most one `{tenant}` segment".into());
            }
            TENANT_CAPTURE => segments.push(Segment::Tenant),
            "" if position == last && position == 0 => {} // the pattern `/`
            "" => return Err("empty segment (`//` or a trailing `/`)".into()),
            "." | ".." => return Err("`.` and `..` segments never match".into()),
            literal if literal.bytes().all(is_pattern_char) => {
                segments.push(Segment::Literal(literal.to_owned()));
            }
            literal => {
                return Err(format!(
                    "segment `{literal}` may use only letters, digits and - _ . ~ : @ +, \
                     or be exactly {{tenant}} or a final *"
                ));
            }
        }
    }
    Ok((segments, rest))
}

/// Splits a raw request target into decoded path segments (see the module's security notes).
/// `/` is the empty list; an empty segment (`//`) is kept as `""`, which no pattern has. A
/// segment without an escape is borrowed from `target` (every segment is still checked): on
/// the route-mode hot path this is one allocation, not one per segment.
pub(crate) fn decode_path(target: &str) -> Result<Vec<Cow<'_, str>>, PathError> {
    if target.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let body = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = Vec::with_capacity(SEGMENTS_HINT);
    for raw in body.split('/') {
        segments.push(decode_segment(raw)?);
    }
    Ok(segments)
}

/// Room for this many path segments is made at once: typical API paths have fewer.
const SEGMENTS_HINT: usize = 8;

fn decode_segment(raw: &str) -> Result<Cow<'_, str>, PathError> {
    // percent_decode_str passes a malformed escape through unchanged; refuse it instead.
    let bytes = raw.as_bytes();
    let mut escaped = false;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            escaped = true;
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::BadEncoding);
            }
        }
    }
    // Without an escape, decoding is the identity on text that is already UTF-8: the
    // segment is used as it is, and checked below exactly as a decoded one.
    let decoded = if escaped {
        percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| PathError::BadEncoding)?
    } else {
        Cow::Borrowed(raw)
    };
    if decoded == "." || decoded == ".." {
        return Err(PathError::DotSegment);
    }
    if decoded
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '%') || c.is_control())
    {
        return Err(PathError::Ambiguous);
    }
    Ok(decoded)
}

impl fmt::Display for Unmatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deny => "deny",
            Self::AllowAuthenticated => "allow_authenticated",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permissions::Category;

    fn catalogue() -> Catalogue {
        Catalogue::new(
            ["runs", "members"]
                .map(|c| Category::new(c).unwrap())
                .to_vec(),
        )
        .unwrap()
    }

    fn spec(method: &str, path: &str, permission: Option<&str>) -> RouteSpec {
        RouteSpec {
            method: method.into(),
            path: path.into(),
            permission: permission.map(Into::into),
        }
    }

    fn policy(specs: &[RouteSpec]) -> RoutePolicy {
        RoutePolicy::new(specs, Unmatched::Deny, &catalogue()).unwrap()
    }

    fn runs() -> RoutePolicy {
        policy(&[
            spec("GET", "/api/{tenant}/runs/*", Some("runs:read")),
            spec("POST", "/api/{tenant}/runs", Some("runs:write")),
            spec("*", "/api/{tenant}/members", Some("members:read")),
            spec("GET", "/status", None),
        ])
    }

    fn need(policy: &RoutePolicy, method: &str, target: &str) -> Option<Requirement> {
        policy
            .requirement(method, target)
            .unwrap()
            .map(|m| m.requirement)
    }

    #[test]
    fn an_invalid_tenant_segment_is_refused_not_passed_to_a_looser_route() {
        let policy = policy(&[
            spec("GET", "/api/{tenant}/runs/*", Some("runs:read")),
            spec("*", "/api/*", None),
        ]);
        assert_eq!(
            policy.requirement("GET", "/api/ACME/runs/1").unwrap_err(),
            PathError::InvalidTenant
        );
        assert!(
            policy
                .requirement("GET", "/api/acme/runs/1")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn tenant_capture_and_permission_make_the_requirement() {
        let need = need(&runs(), "GET", "/api/acme/runs/42?x=1").unwrap();
        assert_eq!(need.tenant.unwrap().as_str(), "acme");
        assert_eq!(need.permission.unwrap().to_string(), "runs:read");
    }

    #[test]
    fn wildcard_matches_any_rest_including_none() {
        let policy = runs();
        assert!(need(&policy, "GET", "/api/acme/runs").is_some());
        assert!(need(&policy, "GET", "/api/acme/runs/a/b/c").is_some());
        assert!(need(&policy, "GET", "/api/acme/runsx").is_none());
    }

    #[test]
    fn method_must_match_exactly_unless_star() {
        let policy = runs();
        assert!(need(&policy, "get", "/api/acme/runs").is_none());
        assert!(need(&policy, "DELETE", "/api/acme/runs").is_none());
        assert!(need(&policy, "DELETE", "/api/acme/members").is_some());
    }

    #[test]
    fn route_without_permission_or_capture_needs_only_a_valid_token() {
        assert_eq!(need(&runs(), "GET", "/status"), Some(Requirement::any()));
    }

    #[test]
    fn first_match_wins() {
        let policy = policy(&[
            spec("GET", "/api/{tenant}/runs/public", None),
            spec("GET", "/api/{tenant}/runs/*", Some("runs:read")),
        ]);
        let need = need(&policy, "GET", "/api/acme/runs/public").unwrap();
        assert!(need.permission.is_none());
    }

    #[test]
    fn comparison_is_case_sensitive_and_tenant_must_be_a_slug() {
        let policy = runs();
        assert!(need(&policy, "GET", "/API/acme/runs").is_none());
        assert_eq!(
            policy.requirement("GET", "/api/Acme/runs").unwrap_err(),
            PathError::InvalidTenant
        );
    }

    #[test]
    fn segments_are_decoded_once() {
        let policy = runs();
        let need = need(&policy, "GET", "/api/%61cme/runs").unwrap();
        assert_eq!(need.tenant.unwrap().as_str(), "acme");
    }

    #[test]
    fn ambiguous_paths_are_refused_not_normalised() {
        let policy = runs();
        for (target, error) in [
            ("/api/acme/../other/runs", PathError::DotSegment),
            ("/api/acme/%2e%2e/runs", PathError::DotSegment),
            ("/api/acme/runs/./x", PathError::DotSegment),
            ("/api/acme%2fother/runs", PathError::Ambiguous),
            ("/api/acme/runs/%252e%252e", PathError::Ambiguous),
            ("/api/acme/runs/a%5cb", PathError::Ambiguous),
            ("/api/acme/runs/%00", PathError::Ambiguous),
            ("/api/acme/runs/%zz", PathError::BadEncoding),
            ("/api/acme/runs/%4", PathError::BadEncoding),
            ("/api/acme/runs/%ff", PathError::BadEncoding),
            ("api/acme/runs", PathError::NotAbsolute),
            ("http://evil/api/acme/runs", PathError::NotAbsolute),
        ] {
            assert_eq!(
                policy.requirement("GET", target).unwrap_err(),
                error,
                "{target}"
            );
        }
        let long = format!("/api/acme/runs/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(
            policy.requirement("GET", &long).unwrap_err(),
            PathError::TooLong
        );
    }

    #[test]
    fn empty_segments_match_no_fixed_pattern() {
        assert!(need(&runs(), "POST", "/api//acme/runs").is_none());
        assert!(need(&runs(), "POST", "/api/acme/runs/").is_none());
    }

    #[test]
    fn bad_routes_are_refused_with_index_and_field() {
        let cases = [
            (spec("get", "/a", None), "method"),
            (spec("GET", "a", None), "path"),
            (spec("GET", "/a/*/b", None), "path"),
            (spec("GET", "/{tenant}/{tenant}", None), "path"),
            (spec("GET", "/a//b", None), "path"),
            (spec("GET", "/a/../b", None), "path"),
            (spec("GET", "/a%2fb", None), "path"),
            (spec("GET", "/{user}", None), "path"),
            (spec("GET", "/a", Some("runs:admin")), "permission"),
            (spec("GET", "/a", Some("billing:read")), "permission"),
        ];
        for (bad, field) in cases {
            let specs = [spec("GET", "/ok", None), bad.clone()];
            let err = RoutePolicy::new(&specs, Unmatched::Deny, &catalogue()).unwrap_err();
            assert_eq!((err.index, err.field), (1, field), "{bad:?}: {err}");
        }
    }

    #[test]
    fn shadowed_and_duplicate_routes_are_refused() {
        for (first, second) in [
            (
                spec("GET", "/a/b", None),
                spec("GET", "/a/b", Some("runs:read")),
            ),
            (spec("*", "/a/*", None), spec("GET", "/a/b/c", None)),
            (
                spec("GET", "/{tenant}/*", None),
                spec("GET", "/{tenant}/x", None),
            ),
        ] {
            let err = RoutePolicy::new(&[first, second], Unmatched::Deny, &catalogue());
            assert_eq!(err.unwrap_err().index, 1);
        }
        // Not shadowed: a narrower method first, or a literal before a capture.
        assert!(
            RoutePolicy::new(
                &[spec("GET", "/a/*", None), spec("*", "/a/b", None)],
                Unmatched::Deny,
                &catalogue()
            )
            .is_ok()
        );
    }
}
