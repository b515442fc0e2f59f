//! The deployment files in `deploy/` stay valid: the configurations docker-compose mounts,
//! with the environment overrides it sets, load; the demo directory loads against the
//! catalogue.

use std::path::Path;

use edgetoken::directory::Directory;
use edgetoken::settings::Settings;

fn deploy(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn compose_verifier_configuration_loads_with_its_environment() {
    let config = Settings::load(
        Some(&deploy("verifier.toml")),
        env(&[
            ("EDGETOKEN_SERVER__LISTEN", "0.0.0.0:8080"),
            (
                "EDGETOKEN_REVOCATION__REDIS_URL",
                "redis://:change-me@redis:6379/",
            ),
            (
                "EDGETOKEN_VERIFIER__JWKS_URL",
                "http://issuer:8080/.well-known/jwks.json",
            ),
            ("EDGETOKEN_VERIFIER__ALLOW_INSECURE_JWKS", "true"),
            ("EDGETOKEN_VERIFIER__TRUSTED_PROXIES", r#"["172.28.0.10"]"#),
        ]),
    )
    .unwrap();
    // Every variable above is the one docker-compose.yml sets for the verifiers.
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap();
    for name in [
        "EDGETOKEN_REVOCATION__REDIS_URL",
        "EDGETOKEN_VERIFIER__JWKS_URL",
        "EDGETOKEN_VERIFIER__ALLOW_INSECURE_JWKS",
        "EDGETOKEN_VERIFIER__TRUSTED_PROXIES",
    ] {
        assert!(
            compose.contains(name),
            "docker-compose.yml no longer sets {name}"
        );
    }
    assert!(config.verifier.policy.has_routes());
    let edge: std::net::IpAddr = "172.28.0.10".parse().unwrap();
    assert!(config.verifier.trusted_proxies.contains(edge));
    assert!(
        !config
            .verifier
            .trusted_proxies
            .contains("127.0.0.1".parse().unwrap()),
        "only the edge is trusted"
    );
}

#[test]
fn compose_issuer_configuration_and_demo_directory_load() {
    let config = Settings::load(
        Some(&deploy("issuer.toml")),
        env(&[
            ("EDGETOKEN_SERVER__LISTEN", "0.0.0.0:8080"),
            (
                "EDGETOKEN_REVOCATION__REDIS_URL",
                "redis://:change-me@redis:6379/",
            ),
        ]),
    )
    .unwrap();
    let verifier = Settings::load(Some(&deploy("verifier.toml")), env(&[])).unwrap();
    assert_eq!(
        config.token, verifier.token,
        "issuer and verifiers must agree on iss/aud"
    );
    Directory::load(&deploy("users.toml"), &config.catalogue).unwrap();
}
