//! The shared test vectors (`../shared/vectors/`), read in place, never copied into the project.
//!
//! STYLE: if the folder is absent, skip with a message locally and fail under `CI=true`.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test helpers outside #[test] functions: a failed expectation is a failed test"
)]

use std::path::{Path, PathBuf};

/// The vectors folder, or `None` (after saying so) when it is absent outside CI.
///
/// # Panics
///
/// When the folder is absent and `CI` is `true`.
pub(crate) fn dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "test vectors not found at {}: CI must check out the shared folder beside the project",
        dir.display()
    );
    eprintln!(
        "skipping: test vectors not found at {} (they are required when CI=true)",
        dir.display()
    );
    None
}

/// Reads and parses `relative` under the vectors folder.
pub(crate) fn json(dir: &Path, relative: &str) -> serde_json::Value {
    let path = dir.join(relative);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lower- or upper-case hex to bytes.
pub(crate) fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length: {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Hex to a fixed-size array.
pub(crate) fn hex_array<const N: usize>(text: &str) -> [u8; N] {
    hex(text)
        .try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

/// A string member of a JSON object.
pub(crate) fn str_of<'a>(value: &'a serde_json::Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` is not a string in {value}"))
}
