//! Shared test support: real external processes the integration tests drive (`redis`,
//! `nginx`, the edge proxies in `edge_proxy` with `envoy`, `traefik` and `caddy`, an
//! `echo_upstream`, edgetoken itself in `process`), a test deployment (`deployment`), a
//! Redis Sentinel deployment (`sentinel`), a controllable JWKS endpoint (`jwks_server`),
//! hand-built tokens (`tokens`), identifiers and token facts (`ids`), the shared test vectors
//! read in place (`vectors`), the one way to await a condition (`eventually`), and network
//! faults: a delaying TCP proxy (`delay_proxy`) and a Redis in a network namespace that can be
//! black-holed (`netns`).

pub(crate) mod caddy;
pub(crate) mod cluster;
pub(crate) mod delay_proxy;
pub(crate) mod deployment;
pub(crate) mod echo_upstream;
pub(crate) mod edge_proxy;
pub(crate) mod envoy;
pub(crate) mod eventually;
pub(crate) mod failover;
pub(crate) mod ids;
pub(crate) mod issuer;
pub(crate) mod jwks_server;
pub(crate) mod netns;
pub(crate) mod nginx;
pub(crate) mod process;
pub(crate) mod redis;
pub(crate) mod sentinel;
pub(crate) mod tokens;
pub(crate) mod traefik;
pub(crate) mod vectors;
