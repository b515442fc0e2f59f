//! Criterion benchmarks of token verification (filled in by the bench work).
fn main() {}
