//! The verifier service (SPEC §5, §6, §8): forward-auth through a real nginx, Envoy, Traefik
//! and Caddy, the HTTP API's decisions, introspection, JWKS key loading, the in-process layer,
//! and several real processes sharing one Redis.

mod barrier;
mod deploy;
mod forward_auth;
mod introspection;
mod jwks;
mod layer;
mod nginx;
mod processes;
mod proxies;
mod rotation;
mod unix_socket;
mod usage;

use std::time::Duration;

use edgetoken::revocation::Mirror;

/// Longest wait for anything a test awaits.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Waits until the mirror has applied at least `changes` changes (its health channel fires on
/// every applied change).
pub(crate) async fn wait_for_changes(mirror: &Mirror, changes: u64) {
    let mut health = mirror.health();
    tokio::time::timeout(WAIT, health.wait_for(|h| h.changes >= changes))
        .await
        .expect("mirror applied the change in time")
        .expect("mirror health channel open");
}
