//! A private nginx per test: the repository's `deploy/nginx/*.conf` with only the addresses
//! changed, own free ports, own temp prefix (pid, logs, temp paths), `daemon off;
//! master_process off;`, killed on drop. A missing nginx fails the test with a message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::eventually::eventually;
use super::process::free_port;

/// How long nginx gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// An nginx running the edge (`deploy/nginx/edge.conf`) and the echo upstream
/// (`deploy/nginx/upstream.conf`) on free loopback ports.
#[derive(Debug)]
pub(crate) struct Nginx {
    dir: TempDir,
    child: Option<Child>,
    /// The edge's port.
    pub(crate) port: u16,
}

fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!(
        "nginx is not installed (looked in /usr/sbin, /usr/local/sbin, /usr/bin); the \
         forward-auth tests need a real nginx: apt-get install nginx (.ci/run does)"
    );
}

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/nginx")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with `from` replaced, which must occur: a test must not silently drift from the
/// deployed file.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "deploy/nginx config no longer contains `{from}`"
    );
    text.replacen(from, to, 1)
}

impl Nginx {
    /// Starts the edge in front of the verifier at `verifier_port`.
    pub(crate) fn start_edge(verifier_port: u16) -> Self {
        Self::start_edge_to(&format!("127.0.0.1:{verifier_port}"))
    }

    /// Starts the edge in front of the verifier listening on the Unix socket `socket`.
    pub(crate) fn start_edge_to_unix_socket(socket: &Path) -> Self {
        Self::start_edge_to(&format!("unix:{}", socket.display()))
    }

    /// Starts the edge with `verifier` (an nginx `server` address) as its only verifier.
    fn start_edge_to(verifier: &str) -> Self {
        let edge_port = free_port();
        let upstream_port = free_port();
        let edge = repo_file("edge.conf");
        let edge = replace_once(
            &edge,
            "server verifier-1:8080;\n    server verifier-2:8080;",
            &format!("server {verifier};"),
        );
        let edge = replace_once(
            &edge,
            "server upstream:8080;",
            &format!("server 127.0.0.1:{upstream_port};"),
        );
        let edge = replace_once(
            &edge,
            "listen 80;",
            &format!("listen 127.0.0.1:{edge_port};"),
        );
        let upstream = replace_once(
            &repo_file("upstream.conf"),
            "listen 8080;",
            &format!("listen 127.0.0.1:{upstream_port};"),
        );
        Self::start(edge_port, &format!("{edge}\n{upstream}"))
    }

    fn start(port: u16, servers: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgetoken-nginx-")
            .tempdir()
            .expect("temp dir for nginx");
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{servers}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Self {
            dir,
            child: Some(child),
            port,
        };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        let listening = eventually("nginx to listen on its port", READY_TIMEOUT)
            .every(Duration::from_millis(10))
            .try_until_blocking(|| {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "nginx exited with {status}; error log:\n{}",
                        self.error_log()
                    );
                }
                std::net::TcpStream::connect(("127.0.0.1", self.port))
                    .ok()
                    .map(drop)
            });
        if let Err(timed_out) = listening {
            panic!("{timed_out}; error log:\n{}", self.error_log());
        }
    }

    /// nginx's error log so far (for failure messages).
    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
