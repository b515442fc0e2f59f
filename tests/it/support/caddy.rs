//! Caddy for the proxy tests: `deploy/caddy/Caddyfile` with only the addresses changed, run by
//! Debian's pinned `caddy` package, with its data and config directories in the test's temp
//! dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::edge_proxy::{Ports, deploy_file, find_binary, replace_exactly_once};
use super::process::free_port;

const FILE: &str = "caddy/Caddyfile";

fn binary() -> PathBuf {
    find_binary("caddy", &[PathBuf::from("/usr/bin")]).unwrap_or_else(|| {
        panic!(
            "Caddy is not installed: the proxy tests need Debian's caddy package: \
             apt-get install caddy (.ci/run does)"
        )
    })
}

/// The command running the deployed configuration pointed at `ports`, written into `dir`.
pub(super) fn command(dir: &Path, ports: Ports) -> Command {
    let config = deploy_file(FILE);
    // The admin API on a port of its own: several Caddys run at once.
    let config = replace_exactly_once(
        &config,
        FILE,
        "admin localhost:2019",
        &format!("admin 127.0.0.1:{}", free_port()),
    );
    let config = replace_exactly_once(
        &config,
        FILE,
        "http://:8000 {",
        &format!("http://127.0.0.1:{} {{", ports.edge),
    );
    let config = replace_exactly_once(
        &config,
        FILE,
        "forward_auth verifier-1:8080 verifier-2:8080 {",
        &format!("forward_auth 127.0.0.1:{} {{", ports.verifier),
    );
    let config = replace_exactly_once(
        &config,
        FILE,
        "reverse_proxy upstream:8080 {",
        &format!("reverse_proxy 127.0.0.1:{} {{", ports.upstream),
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, config).expect("write Caddyfile");
    let mut command = Command::new(binary());
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"));
    command
}
