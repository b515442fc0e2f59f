//! Operations endpoints (SPEC §5): `/healthz` (alive), `/readyz` (keys loaded and revocation
//! state fresh; it also reports the Redis durability, which does not affect readiness),
//! `/metrics` (Prometheus text).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let sample = state.sample();
    let keys = state.verifier.keys().len();
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // One snapshot, the lock released at once (the feed publishes into it).
    let health = state.mirror.health().borrow().clone();
    let body = serde_json::json!({
        "ready": ready,
        "keys": keys,
        "jwks": state.jwks.as_ref().map(|jwks| {
            let status = jwks.status();
            serde_json::json!({
                "url": jwks.display_url(),
                "loaded": status.successes > 0,
                "fetches": status.attempts,
                "age_seconds": status.last_success.map(|at| at.elapsed().as_secs_f64()),
                "last_error": status.last_error,
            })
        }),
        "revocation": {
            "ready": state.mirror.is_ready(),
            "fresh": state.mirror.is_fresh(),
            "staleness_seconds": sample.staleness.map(|s| s.as_secs_f64()),
            "entries": sample.mirror_entries,
            "clock_skew_seconds": sample.clock_skew,
            "clock_skew_alarm": state.mirror.clock_skew_alarm(),
            // What an acknowledged revoke survives: replicas waited for and connected,
            // appendonly/appendfsync, the level; null for the in-process store.
            "durability": health.durability,
            // Where the feed reads from (`read_from_replicas`): "primary" or
            // "replica HOST:PORT", and how often it fell back to the primary.
            "feed_source": health.feed_source,
            "replica_fallbacks": health.replica_fallbacks,
        },
    });
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(state.sample()),
    )
}
