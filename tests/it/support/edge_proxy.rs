//! A real edge proxy per test in front of a verifier and an upstream: Envoy (HTTP or gRPC
//! `ext_authz`), Traefik (`ForwardAuth`) or Caddy (`forward_auth`), each running the
//! repository's `deploy/` configuration with only the addresses changed (see [`super::envoy`],
//! [`super::traefik`], [`super::caddy`]), on free ports, in its own temp dir, output to a log
//! file, killed on drop. A missing proxy fails the test with the command that installs it.
//!
//! The proxy is spawned from the calling thread, which must outlive it: Envoy asks the kernel
//! for a signal when the thread that started it exits (a parent-death signal), so spawn from
//! the test's own thread, never from a blocking-pool or spawned task's thread.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::eventually::eventually;
use super::process::free_port;

/// How long a proxy gets to load its configuration and answer through to the verifier.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The proxies under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// `deploy/envoy/edge.yaml`: HTTP `ext_authz`.
    Envoy,
    /// `deploy/envoy/edge-grpc.yaml`: gRPC `ext_authz`, to the verifier's `grpc_listen`.
    EnvoyGrpc,
    /// `deploy/traefik/traefik.yml` + `dynamic.yml`: `ForwardAuth`.
    Traefik,
    /// `deploy/caddy/Caddyfile`: `forward_auth`.
    Caddy,
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Envoy => "envoy",
            Self::EnvoyGrpc => "envoy-grpc",
            Self::Traefik => "traefik",
            Self::Caddy => "caddy",
        })
    }
}

/// The ports a proxy's configuration is pointed at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    /// Where the proxy listens for clients.
    pub(crate) edge: u16,
    /// The verifier's port (its gRPC port for [`ProxyKind::EnvoyGrpc`]).
    pub(crate) verifier: u16,
    /// The upstream's port.
    pub(crate) upstream: u16,
}

/// A running proxy.
#[derive(Debug)]
pub(crate) struct EdgeProxy {
    kind: ProxyKind,
    dir: TempDir,
    child: Option<Child>,
    /// The port clients connect to.
    pub(crate) port: u16,
}

/// The text of `deploy/RELATIVE`.
pub(crate) fn deploy_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` (from `deploy/FILE`) with `from` replaced by `to`; `from` must occur exactly once, so
/// a test cannot silently drift from the deployed file or change more than it meant to.
pub(crate) fn replace_exactly_once(text: &str, file: &str, from: &str, to: &str) -> String {
    let count = text.matches(from).count();
    assert_eq!(
        count, 1,
        "deploy/{file} must contain `{from}` exactly once (found {count} times)"
    );
    text.replacen(from, to, 1)
}

/// `name` on the `PATH`, else in `extra` directories.
pub(crate) fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(extra.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// What `python3 -c CODE` prints (trimmed), if it ran.
pub(crate) fn python_says(code: &str) -> Option<String> {
    let output = Command::new("python3").args(["-c", code]).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl EdgeProxy {
    /// Starts `kind` with the deployed configuration pointed at `verifier_port` (for
    /// [`ProxyKind::EnvoyGrpc`], the verifier's gRPC port) and `upstream_port`, and waits until a request through it reaches the verifier (an
    /// unauthenticated `/api/` request answered 401).
    pub(crate) async fn start(kind: ProxyKind, verifier_port: u16, upstream_port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("edgetoken-{kind}-"))
            .tempdir()
            .expect("temp dir for the proxy");
        let ports = Ports {
            edge: free_port(),
            verifier: verifier_port,
            upstream: upstream_port,
        };
        let mut command = match kind {
            ProxyKind::Envoy => super::envoy::command(dir.path(), ports),
            ProxyKind::EnvoyGrpc => super::envoy::command_grpc(dir.path(), ports),
            ProxyKind::Traefik => super::traefik::command(dir.path(), ports),
            ProxyKind::Caddy => super::caddy::command(dir.path(), ports),
        };
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("proxy log file");
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {kind}: {e}"));
        let mut proxy = Self {
            kind,
            dir,
            child: Some(child),
            port: ports.edge,
        };
        proxy.wait_ready().await;
        proxy
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let url = self.url("/api/ready/probe");
        let ready = eventually(
            format!("{} to pass /api/ to the verifier", self.kind),
            READY_TIMEOUT,
        )
        .every(Duration::from_millis(50))
        .try_until(async || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{} exited with {status}; log:\n{}", self.kind, self.log());
            }
            let response = client.get(&url).send().await.ok()?;
            (response.status() == reqwest::StatusCode::UNAUTHORIZED).then_some(())
        })
        .await;
        if let Err(timed_out) = ready {
            panic!("{timed_out}; log:\n{}", self.log());
        }
    }

    /// Everything the proxy logged so far (for failure messages).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for EdgeProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
