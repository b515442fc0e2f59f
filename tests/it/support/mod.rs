//! Shared helpers for the integration tests: hand-built tokens (`tokens`) and the shared test
//! vectors read in place (`vectors`).

pub(crate) mod tokens;
pub(crate) mod vectors;
