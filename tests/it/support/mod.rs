//! Shared test support: real external processes the integration tests drive (`redis`),
//! hand-built tokens (`tokens`) and the shared test vectors read in place (`vectors`).

pub(crate) mod issuer;
pub(crate) mod process;
pub(crate) mod redis;
pub(crate) mod tokens;
pub(crate) mod vectors;
