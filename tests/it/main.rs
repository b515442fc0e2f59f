//! The integration test binary: drives the public API the way a user would (STYLE: one
//! integration binary, modules per area).

mod golden;
mod minting;
mod mutations;
mod support;
mod token_rejections;
mod vectors;
