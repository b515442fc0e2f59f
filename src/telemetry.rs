//! Logging setup for the binary (SPEC §8): `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`), as human-readable lines or, with `EDGETOKEN_LOG_FORMAT=json`, one JSON
//! object per event for log shippers.
//!
//! # Security
//!
//! Nothing in edgetoken logs a raw token, `Authorization` header, password, secret or private
//! key; events carry `jti`, `kid`, `tenant` and `reason` fields instead.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(crate::config::ENV_LOG_FORMAT).is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (in tests) is harmless; ignore it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
