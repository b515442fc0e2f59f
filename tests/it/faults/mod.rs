//! The fault-injection scenarios of THREATS §4 that need more than one Redis per test: F1
//! (baseline propagation under load), F5 (black-holed network), F7 (Redis latency), F12 (clock
//! skew on a verifier) and F14 (adversarial input flood). F2-F4, F6, F9-F11, F13 and F15 live
//! in `revocation.rs` and `verifier/rotation.rs`.
//!
//! Every scenario drives real processes (redis-server, the built `edgetoken` binary or the
//! service on a real socket) and real faults (a network namespace with an nftables DROP rule, a
//! delaying TCP proxy, a skewed clock). Each prints its measured figures with `eprintln!`
//! (`cargo test --test it faults -- --nocapture` shows them) and asserts its pass criteria.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;

mod f01_propagation;
mod f05_black_hole;
mod f07_latency;
mod f12_clock_skew;
mod f14_flood;

/// The requirement every scenario asks for: alice's tokens hold `runs:read` in acme.
const REQUIREMENT: &str = "/v1/verify?tenant=acme&permission=runs:read";

/// A `/v1/verify` answer: the status and the reason code (`error_description`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    status: StatusCode,
    code: Option<String>,
}

/// Asks `url` (a `/v1/verify` URL) about `authorization` (a whole `Authorization` value;
/// empty: no header).
async fn verify(client: &reqwest::Client, url: &str, authorization: &str) -> Outcome {
    let mut request = client.get(url);
    if !authorization.is_empty() {
        request = request.header("authorization", authorization);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("verify request to {url}: {err}"));
    let code = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("error_description=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned);
    Outcome {
        status: response.status(),
        code,
    }
}

/// The status `/v1/verify` at `url` gives `token`.
async fn status(client: &reqwest::Client, url: &str, token: &str) -> StatusCode {
    verify(client, url, &format!("Bearer {token}")).await.status
}

/// `(jti, exp)` of a token minted by the test (its payload is trusted test data).
fn jti_and_exp(token: &str) -> (String, i64) {
    let payload = token.split('.').nth(1).expect("payload segment");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON claims");
    (
        claims["jti"].as_str().expect("jti").to_owned(),
        claims["exp"].as_i64().expect("exp"),
    )
}

/// The `p`-th percentile (0-100, nearest rank) of `samples`, which it sorts.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within the sample count"
    )]
    let rank = ((p / 100.0 * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Milliseconds with three decimals, for the printed figures.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A count from the environment (`name`), or `default`: lets a long run raise a constant.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value of metric `name` (no labels) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
