//! Benchmark-only comparison servers: bare axum on the same runtime and settings as edgetoken.
//! **`/v1/verify` passes every request**, so this binary listens on loopback only.
//!
//! - `GET /ok`: returns 200 and nothing else (the floor for warm forward-auth, in the HTTP load
//!   benchmark: SPEC §9, `benches/load/run.sh`);
//! - `GET /strict`: one ed25519-dalek `verify_strict` of the bearer token's signature over its
//!   `header.payload`, with the key named by its `kid`, and nothing else: no claims, time or
//!   revocation (the floor for cold forward-auth);
//! - `/v1/verify` and `/v1/verify/<path>` (Envoy's form), any method: 200 with fixed `X-Auth-*`
//!   headers of a passing answer's size, whatever the request carries. A check that decides
//!   nothing, which the edge-proxy benchmark (`benches/proxies/run.sh`) puts where a verifier
//!   goes: the floor of what a check costs a Rust server behind each proxy.
//!
//! Usage: `bare_axum LISTEN_ADDR KEY_DIR` (`LISTEN_ADDR` a loopback address).

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgetoken::keys::{KeyDir, KeyRing};

async fn ok() -> StatusCode {
    StatusCode::OK
}

/// A passing answer of `/v1/verify`'s shape, decided on nothing.
async fn pass_everything() -> (StatusCode, [(&'static str, &'static str); 5]) {
    (
        StatusCode::OK,
        [
            ("x-auth-subject", "bench"),
            ("x-auth-tenant", "acme"),
            ("x-auth-scope", "runs:read"),
            ("x-auth-token-id", "01JZ8Q0W6Y3V7C9B2N4M5K6J7H"),
            ("x-auth-expires", "2026-12-02T09:00:00Z"),
        ],
    )
}

async fn strict(State(ring): State<Arc<KeyRing>>, headers: HeaderMap) -> StatusCode {
    let verified = (|| {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let (signed, signature) = token.rsplit_once('.')?;
        let (header_b64, _) = signed.split_once('.')?;
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
        let key = ring.get(header.get("kid")?.as_str()?)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        Some(key.verify(signed.as_bytes(), &signature))
    })();
    if verified == Some(true) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// On edgetoken's own runtime (`edgetoken::runtime`, one thread per CPU this process may use
/// or `TOKIO_WORKER_THREADS`), so that the floor runs on what the verifier runs on.
fn main() -> Result<(), Box<dyn Error>> {
    let threads = edgetoken::runtime::worker_threads(None)?;
    edgetoken::runtime::build(threads)?.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(keys)) = (args.next(), args.next()) else {
        return Err("usage: bare_axum LISTEN_ADDR KEY_DIR".into());
    };
    let listen: SocketAddr = listen.parse()?;
    if !listen.ip().is_loopback() {
        return Err(
            format!("{listen}: /v1/verify passes every request; listen on loopback").into(),
        );
    }
    // edgetoken's own logging setup (`RUST_LOG`, warn in the benches), so that the floor pays
    // no tracing cost edgetoken does not: without a subscriber, `tracing`'s `log` feature (on
    // through axum's `tower-log`) sends every span to `Span::log` (see null_check_grpc).
    edgetoken::telemetry::init();
    let ring = Arc::new(KeyDir::new(keys).load_ring()?);
    let app = Router::new()
        .route("/ok", get(ok))
        .route("/strict", get(strict))
        .route("/v1/verify", any(pass_everything))
        .route("/v1/verify/{*original}", any(pass_everything))
        .with_state(ring);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
