//! `rediss://` against a real TLS `redis-server` (issue 11): a revocation from the command line
//! reaches Redis over TLS when the server's certificate chains to a trusted root, and is
//! refused (the command fails, nothing is written) when it does not.
//!
//! The CA and the server certificate are made with the `openssl` command for each run; the
//! edgetoken process trusts the CA through `SSL_CERT_FILE`, which rustls' system-store loader
//! reads. The test's own admin connection trusts the CA through the redis crate's
//! `TlsCertificates`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::eventually::eventually;
use crate::support::process::{edgetoken, free_port};

/// A `redis-server` serving TLS only, killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the TLS test needs the `openssl` command");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`server.pem`, `server.key`),
/// and another CA that signed nothing (`other-ca.pem`).
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=another CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=edgetoken test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
}

fn start_tls_redis(dir: &Path) -> TlsRedis {
    let port = free_port();
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &file("server.pem")])
        .args(["--tls-key-file", &file("server.key")])
        .args(["--tls-ca-cert-file", &file("ca.pem")])
        .args(["--tls-auth-clients", "no"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--dir", dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (built with TLS) is needed");
    let redis = TlsRedis { port, child };
    let client = admin_client(dir, port);
    eventually(
        "the TLS redis-server to answer PING",
        Duration::from_secs(10),
    )
    .until_blocking(|| {
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .ok()
    });
    redis
}

/// A client of the TLS server that trusts the test CA.
fn admin_client(dir: &Path, port: u16) -> redis::Client {
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(dir.join("ca.pem")).unwrap()),
        },
    )
    .unwrap()
}

/// `edgetoken revoke --tenant acme --all` over `rediss://`, trusting only the CA in `trust`.
fn revoke(dir: &Path, port: u16, trust: &Path) -> std::process::Output {
    let mut command = edgetoken(dir);
    command
        .args(["revoke", "--tenant", "acme", "--all"])
        .env(
            "EDGETOKEN_REVOCATION__REDIS_URL",
            format!("rediss://127.0.0.1:{port}/"),
        )
        .env("EDGETOKEN_REVOCATION__KEY_PREFIX", "tls-test")
        .env("EDGETOKEN_REVOCATION__COMMAND_TIMEOUT_MS", "3000")
        .env("SSL_CERT_FILE", trust)
        .env_remove("SSL_CERT_DIR");
    command.output().unwrap()
}

#[test]
fn a_rediss_url_revokes_over_tls_and_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let redis = start_tls_redis(dir.path());
    let mut admin = admin_client(dir.path(), redis.port)
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let written = |admin: &mut redis::Connection| -> bool {
        redis::cmd("ZSCORE")
            .arg("{tls-test}:ten")
            .arg("acme")
            .query::<Option<f64>>(admin)
            .unwrap()
            .is_some()
    };

    // A certificate no trusted root signed: the command fails and writes nothing.
    // (SSL_CERT_DIR is removed, so the system's directory of roots plays no part.)
    let untrusted = revoke(dir.path(), redis.port, &dir.path().join("other-ca.pem"));
    assert!(
        !untrusted.status.success(),
        "revoked over an untrusted TLS connection"
    );
    assert!(!written(&mut admin));

    // The CA trusted: the revocation is written over TLS.
    let trusted = revoke(dir.path(), redis.port, &dir.path().join("ca.pem"));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(written(&mut admin));
}
