//! The tokens page's HTTP-level rules (issue 9; THREATS #47-#53), driven over real sockets
//! the way a browser would: cookies, form posts, `Origin` and `Sec-Fetch-Site`. The browser
//! flow itself is in `tests/browser/` (Playwright).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};

use crate::support::eventually::eventually;
use crate::support::issuer::{ALICE, ALICE_PASSWORD, Options, TestIssuer};
use crate::support::redis::RedisServer;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A browser-like client: no redirects followed, cookies kept by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    origin: String,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(issuer: &TestIssuer) -> Self {
        Self::with_origin(issuer, &issuer.base)
    }

    fn with_origin(issuer: &TestIssuer, origin: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: issuer.base.clone(),
            origin: origin.to_owned(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(SET_COOKIE) {
            let text = value.to_str().unwrap();
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name);
            if !text.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    async fn get(&mut self, path: &str) -> reqwest::Response {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(response.headers());
        response
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.post_with(path, form, &[("origin", self.origin.clone().as_str())])
            .await
    }

    async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        self.keep(response.headers());
        response
    }

    /// Signs in as alice; returns the session id.
    async fn sign_in(&mut self) -> String {
        let page = self.get("/sign-in").await.text().await.unwrap();
        let csrf = hidden(&page, "csrf");
        let response = self
            .post(
                "/sign-in",
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", ALICE_PASSWORD),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        self.cookie("edgetoken-session").expect("a session cookie")
    }

    /// The list page of acme, and its CSRF token and form id.
    async fn list(&mut self) -> (String, String, String) {
        let response = self.get("/tenants/acme/tokens").await;
        assert_eq!(response.status(), StatusCode::OK);
        let page = response.text().await.unwrap();
        let (csrf, form) = (hidden(&page, "csrf"), hidden(&page, "form"));
        (page, csrf, form)
    }
}

/// The value of hidden input `name` in `page`.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

fn location(response: &reqwest::Response) -> &str {
    response.headers()["location"].to_str().unwrap()
}

async fn issuer() -> TestIssuer {
    TestIssuer::start(Options::default()).await
}

#[tokio::test]
async fn every_page_response_carries_the_security_headers() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    for path in ["/sign-in", "/", "/tenants/acme/tokens", "/assets/page.js"] {
        let response = browser.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    let response = browser.get("/sign-in").await;
    assert_eq!(response.headers()["cache-control"], "no-store");
    issuer.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_strict_and_renewed_at_sign_in() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    let page = browser.get("/sign-in").await.text().await.unwrap();
    let csrf = hidden(&page, "csrf");
    // A planted (fixated) id is never adopted.
    let planted = "A".repeat(43);
    browser
        .cookies
        .push(("edgetoken-session".into(), planted.clone()));
    let response = browser
        .post(
            "/sign-in",
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("edgetoken-session="))
        .unwrap();
    assert!(set.contains("; HttpOnly"), "{set}");
    assert!(set.contains("; SameSite=Strict"), "{set}");
    assert!(set.contains("; Path=/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let first = browser.cookie("edgetoken-session").unwrap();
    assert_ne!(first, planted);
    assert!(first.len() >= 22, "at least 128 random bits");

    let second = browser.sign_in().await;
    assert_ne!(second, first, "a new id at every sign-in");
    let mut old = Browser::new(&issuer);
    old.cookies.push(("edgetoken-session".into(), first));
    let response = old.get("/tenants/acme/tokens").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in?ended=1");
    issuer.stop().await;
}

#[tokio::test]
async fn an_https_public_origin_makes_cookies_secure_with_the_host_prefix() {
    let issuer = TestIssuer::start(Options {
        extra: "[page]\npublic_origin = \"https://tokens.example.com\"\n".into(),
        ..Options::default()
    })
    .await;
    let mut browser = Browser::with_origin(&issuer, "https://tokens.example.com");
    let response = browser.get("/sign-in").await;
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-edgetoken-signin="), "{set}");
    assert!(
        set.contains("; Secure") && set.contains("; Path=/"),
        "{set}"
    );
    let csrf = hidden(&response.text().await.unwrap(), "csrf");
    let response = browser
        .post(
            "/sign-in",
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(browser.cookie("__Host-edgetoken-session").is_some());
    issuer.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_csrf_token_is_refused() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let (_, csrf, form) = browser.list().await;
    let wrong = format!("{}A", &csrf[..42]);
    for fields in [
        vec![("form", form.as_str()), ("scope", "read-all")],
        vec![
            ("csrf", wrong.as_str()),
            ("form", form.as_str()),
            ("scope", "read-all"),
        ],
        vec![("csrf", ""), ("form", form.as_str()), ("scope", "read-all")],
    ] {
        let response = browser.post("/tenants/acme/tokens", &fields).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let (list, ..) = browser.list().await;
    assert!(list.contains("no tokens in acme yet"), "nothing was minted");
    issuer.stop().await;
}

#[tokio::test]
async fn a_cross_origin_post_is_refused_even_with_the_right_csrf_token() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let (_, csrf, form) = browser.list().await;
    let fields = [
        ("csrf", csrf.as_str()),
        ("form", form.as_str()),
        ("scope", "read-all"),
    ];
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![],
        vec![
            ("origin", issuer.base.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let response = browser
            .post_with("/tenants/acme/tokens", &fields, &headers)
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert!(response.text().await.unwrap().contains("Request refused"));
    }
    // The sign-in form too (login CSRF).
    let page = browser.get("/sign-in").await.text().await.unwrap();
    let csrf = hidden(&page, "csrf");
    let response = browser
        .post_with(
            "/sign-in",
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    issuer.stop().await;
}

#[tokio::test]
async fn sign_out_deletes_the_session_on_the_server() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    let id = browser.sign_in().await;
    let (_, csrf, _) = browser.list().await;
    let response = browser.post("/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in?signed_out=1");
    let cleared = response.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let mut replay = Browser::new(&issuer);
    replay.cookies.push(("edgetoken-session".into(), id));
    let response = replay.get("/tenants/acme/tokens").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in?ended=1");
    issuer.stop().await;
}

/// Creates a read-all token named `name` in acme; returns the confirmation response.
async fn create(browser: &mut Browser, name: &str) -> reqwest::Response {
    let (_, csrf, form) = browser.list().await;
    browser
        .post(
            "/tenants/acme/tokens",
            &[
                ("csrf", &csrf),
                ("form", &form),
                ("name", name),
                ("duration", "1h"),
                ("scope", "custom"),
                ("perm.runs", "write"),
            ],
        )
        .await
}

#[tokio::test]
async fn a_hostile_token_name_is_rendered_escaped() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let name = "<img src=x onerror=alert(1)>";
    let confirmation = create(&mut browser, name).await.text().await.unwrap();
    let (list, ..) = browser.list().await;
    for page in [&confirmation, &list] {
        // askama writes numeric references: &#60; for <, &#62; for >.
        assert!(
            page.contains("&#60;img src=x onerror=alert(1)&#62;"),
            "{page}"
        );
        assert!(!page.contains(name));
    }
    issuer.stop().await;
}

#[tokio::test]
async fn the_confirmation_is_no_store_and_the_token_never_appears_again() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let (_, csrf, form) = browser.list().await;
    let fields = [
        ("csrf", csrf.as_str()),
        ("form", form.as_str()),
        ("name", "once"),
        ("duration", "4h"),
        ("scope", "custom"),
        ("perm.runs", "write"),
    ];
    let response = browser.post("/tenants/acme/tokens", &fields).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let page = response.text().await.unwrap();
    let start = page.find("data-secret>").unwrap() + "data-secret>".len();
    let token = page[start..].split('<').next().unwrap().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let (list, ..) = browser.list().await;
    assert!(list.contains("once"));
    assert!(!list.contains(&token));
    // The same form posted again (reload, Back) mints nothing and shows nothing.
    let again = browser.post("/tenants/acme/tokens", &fields).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(!again.text().await.unwrap().contains(&token));
    let api = ALICE.list(&issuer, "acme").await;
    assert_eq!(api["tokens"].as_array().unwrap().len(), 1);
    assert!(!api.to_string().contains(&token));
    issuer.stop().await;
}

#[tokio::test]
async fn a_permission_not_held_is_refused_with_a_clear_message() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    // alice holds runs:write and policies:read in acme; the form does not offer more, the
    // server re-checks anyway.
    let (_, csrf, form) = browser.list().await;
    let response = browser
        .post(
            "/tenants/acme/tokens",
            &[
                ("csrf", &csrf),
                ("form", &form),
                ("scope", "custom"),
                ("perm.policies", "write"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let page = response.text().await.unwrap();
    assert!(page.contains("Permission not held"), "{page}");
    assert!(page.contains("policies:write"), "{page}");
    issuer.stop().await;
}

#[tokio::test]
async fn an_idle_session_ends_and_sends_the_person_to_sign_in() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let (_, csrf, form) = browser.list().await;
    issuer.clock.advance(31 * 60);
    let response = browser
        .post(
            "/tenants/acme/tokens",
            &[("csrf", &csrf), ("form", &form), ("scope", "custom")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in?ended=post");
    let page = browser
        .get("/sign-in?ended=post")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Your session ended before your form was sent"));
    issuer.stop().await;
}

#[tokio::test]
async fn failed_sign_ins_share_the_api_rate_limit() {
    let issuer = issuer().await;
    let mut browser = Browser::new(&issuer);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let page = browser.get("/sign-in").await.text().await.unwrap();
        let csrf = hidden(&page, "csrf");
        let response = browser
            .post(
                "/sign-in",
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", "wrong"),
                ],
            )
            .await;
        statuses.push(response.status());
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    // The API's Basic sign-in now counts against the same limit.
    let response = ALICE
        .get(issuer.url("/v1/tenants/acme/tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    issuer.stop().await;
}

#[tokio::test]
async fn sessions_live_in_redis_under_a_digest_of_their_id() {
    let redis = RedisServer::start();
    let issuer = TestIssuer::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let mut browser = Browser::new(&issuer);
    let id = browser.sign_in().await;
    let mut admin = redis.admin();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:sess:*")
        .query(&mut admin)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains(&id), "the raw id is not the key");
    let value: String = redis::cmd("GET").arg(&keys[0]).query(&mut admin).unwrap();
    assert!(!value.contains(&id) && !value.contains(ALICE_PASSWORD));
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query(&mut admin).unwrap();
    assert!(ttl > 0 && ttl <= 1800, "{ttl}");
    let (_, csrf, _) = browser.list().await;
    browser.post("/sign-out", &[("csrf", &csrf)]).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:sess:*")
        .query(&mut admin)
        .unwrap();
    assert!(keys.is_empty(), "sign-out deletes the session: {keys:?}");
    tokio::time::timeout(Duration::from_secs(10), issuer.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_says_when_the_store_lost_the_records() {
    let redis = RedisServer::start();
    let issuer = TestIssuer::start(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let (page, _, _) = browser.list().await;
    assert!(
        !page.contains("id=\"records-lost\""),
        "no note before any loss"
    );

    redis::cmd("FLUSHALL").exec(&mut redis.admin()).unwrap();
    eventually(
        "the issuer to notice the records were lost",
        Duration::from_secs(10),
    )
    .every(Duration::from_millis(50))
    .until(async || {
        let list = ALICE.list(&issuer, "acme").await;
        (list["records_complete"] == false).then_some(())
    })
    .await;
    // The session went with the store: sign in again.
    let mut browser = Browser::new(&issuer);
    browser.sign_in().await;
    let (page, _, _) = browser.list().await;
    let note = page
        .split("id=\"records-lost\"")
        .nth(1)
        .and_then(|rest| rest.split("</p>").next())
        .unwrap_or_else(|| panic!("no records-lost note in {page}"));
    assert!(note.contains("<time datetime=\""), "{note}");
    assert!(note.contains("POST /v1/revoke"), "{note}");
    tokio::time::timeout(Duration::from_secs(10), issuer.stop())
        .await
        .unwrap();
}
