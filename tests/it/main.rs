//! The integration test binary: drives edgetoken's public API, CLI and services the way a user
//! would, against real processes (redis-server, nginx).
//!
//! One binary (faster to link, one place for shared support); each area is a module. Run one
//! area with `cargo test --test it revocation`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test code: a failed setup or assertion must fail the test loudly, with context"
)]

mod cli;
mod cluster;
mod faults;
mod golden;
mod interop;
mod issuer;
mod leaked;
mod minting;
mod mutations;
mod page;
mod records_lost;
mod redis_tls;
mod replicas;
mod revocation;
mod sentinel;
mod serve;
mod signing_reload;
mod support;
mod token_rejections;
mod vectors;
mod verifier;
