//! The configuration: TOML text through `Settings::from_toml`, the raw tree (unknown fields
//! refused) and every validation rule (routes, URLs, proxies, secrets, limits). Configuration
//! is operator input, but a verifier may load one written by other tooling, and a panic at
//! start-up is a denial of service.

#![no_main]

use edgetoken::settings::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::from_toml(text);
    }
});
