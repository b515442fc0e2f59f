//! Shared test support: real external processes the integration tests drive.

pub(crate) mod redis;
