//! edgetoken: short-lived, tenant-bound Ed25519 access tokens, verified at the edge.
#![doc = "work in progress"]

pub mod clock;
pub mod revocation;
