//! edgetoken services for the tests: the binary as a user runs it ([`ServeProcess`], output
//! captured to files), in-process on a real socket ([`Served`]) or as real
//! processes of the built binary ([`EdgetokenProcess`]), each with its own port and, for
//! processes, its own config file in a temp dir. Everything is stopped on drop, even when the
//! test panics.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edgetoken::clock::SystemClock;
use edgetoken::config::Role;
use edgetoken::http::Services;
use edgetoken::http::boot::{self, Started};
use edgetoken::revocation::RevocationEngine;
use edgetoken::settings::Settings;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::eventually::eventually;

/// How long a service gets to report ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A service started in this process, serving on a real loopback socket.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) services: Arc<Services>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _revocation: RevocationEngine,
}

impl Served {
    /// Starts `role` from `config` on `127.0.0.1:0`.
    pub(crate) async fn start(config: Settings, role: Role) -> Self {
        Self::start_with_clock(config, role, Arc::new(SystemClock)).await
    }

    /// As [`Served::start`], with its own clock.
    pub(crate) async fn start_with_clock(
        config: Settings,
        role: Role,
        clock: Arc<dyn edgetoken::Clock>,
    ) -> Self {
        let Started {
            services,
            revocation,
            ..
        } = boot::start(config, role, false, clock)
            .await
            .expect("start the service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = edgetoken::http::app(Arc::clone(&services));
        let limits = edgetoken::http::ServerLimits::from_settings(&services.settings.server);
        let task = tokio::spawn(async move {
            let _ = edgetoken::http::serve(listener, app, limits, async {
                let _ = rx.await;
            })
            .await;
        });
        let served = Self {
            addr,
            services,
            shutdown: Some(tx),
            task,
            _revocation: revocation,
        };
        wait_ready(&served.url(""), || None).await;
        served
    }

    /// `http://ADDR` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Polls `/readyz` until it answers 200; panics with `diagnose()` after [`READY_TIMEOUT`].
pub(crate) async fn wait_ready(base: &str, diagnose: impl Fn() -> Option<String>) {
    let client = reqwest::Client::new();
    eventually(format!("{base}/readyz to answer 200"), READY_TIMEOUT)
        .until(async || {
            if let Ok(response) = client.get(format!("{base}/readyz")).send().await
                && response.status() == 200
            {
                return Some(());
            }
            if let Some(problem) = diagnose() {
                panic!("{base} will not get ready: {problem}");
            }
            None
        })
        .await;
}

/// A real `edgetoken serve` process with its own config file, port and log files.
#[derive(Debug)]
pub(crate) struct EdgetokenProcess {
    child: Option<Child>,
    dir: TempDir,
    /// Its port; 0 on a Unix socket.
    pub(crate) port: u16,
}

impl EdgetokenProcess {
    /// Writes `config` plus `[server] listen` on a free port to a temp dir and runs
    /// `edgetoken serve --config FILE --role ROLE`, waiting for `/readyz`.
    pub(crate) async fn start(config: &str, role: &str) -> Self {
        Self::start_logging(config, role, "warn").await
    }

    /// As [`EdgetokenProcess::start`], logging what `filter` (`RUST_LOG`) lets through.
    pub(crate) async fn start_logging(config: &str, role: &str, filter: &str) -> Self {
        let port = free_port();
        let mut process = Self::spawn(config, &format!("127.0.0.1:{port}"), role, filter);
        process.port = port;
        let url = process.url("");
        let diagnose = process.exit_diagnosis();
        wait_ready(&url, diagnose).await;
        process
    }

    /// As [`EdgetokenProcess::start`], listening on a Unix socket at `socket`
    /// (`listen = "unix:SOCKET"`) rather than a port, waiting for `/readyz` over it.
    pub(crate) async fn start_on_unix_socket(config: &str, role: &str, socket: &Path) -> Self {
        let listen = format!("unix:{}", socket.display());
        let mut process = Self::spawn(config, &listen, role, "warn");
        {
            let diagnose = process.exit_diagnosis();
            eventually(format!("{listen} /readyz to answer 200"), READY_TIMEOUT)
                .until(async || {
                    if unix_get(socket, "/readyz")
                        .is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
                    {
                        return Some(());
                    }
                    if let Some(problem) = diagnose() {
                        panic!("{listen} will not get ready: {problem}");
                    }
                    None
                })
                .await;
        }
        process
    }

    /// Writes `config` plus `[server] listen = LISTEN` to a temp dir and runs
    /// `edgetoken serve --config FILE --role ROLE`, without waiting.
    fn spawn(config: &str, listen: &str, role: &str, filter: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("edgetoken-proc-")
            .tempdir()
            .expect("temp dir");
        let file = write_config(dir.path(), config, listen);
        let log =
            |name: &str| std::fs::File::create(dir.path().join(name)).expect("create log file");
        // The config file is the whole configuration: no inherited `EDGETOKEN_*` override
        // (a test's own knobs, such as `EDGETOKEN_F14_SECS`, would be refused as unknown).
        let child = edgetoken(dir.path())
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .args(["--role", role])
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("spawn edgetoken");
        Self {
            child: Some(child),
            dir,
            port: 0,
        }
    }

    /// What to say when the process exits before it is ready: its status and standard error.
    fn exit_diagnosis(&mut self) -> impl Fn() -> Option<String> + use<'_> {
        let stderr = self.dir.path().join("stderr.log");
        let exited = std::sync::Mutex::new(self.child.as_mut().expect("child"));
        move || {
            let mut child = exited.lock().expect("lock");
            match child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "exited with {status}; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )),
                _ => None,
            }
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`) to the process, as `kill -SIGNAL`.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running").to_string();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Whether every thread of the process is stopped (`kill -STOP` took effect): state `T` in
    /// `/proc/PID/stat`.
    pub(crate) fn is_stopped(&self) -> bool {
        let pid = self.pid().expect("running");
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.filter_map(Result::ok).all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.chars().next())
                })
                == Some('T')
        })
    }

    /// SIGKILL, then reap: the process gets no chance to clean up.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then await the exit (a clean shutdown).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let exited = eventually("edgetoken to exit on SIGTERM", Duration::from_secs(10))
                .try_until_blocking(|| child.try_wait().unwrap());
            if exited.is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// A `kB` field (`VmRSS`, `VmHWM`) or a count (`Threads`) of `/proc/PID/status`.
    pub(crate) fn proc_status(&self, field: &str) -> u64 {
        let pid = self.pid().expect("running");
        proc_status(pid, field)
    }

    /// Whether the process is still running (it did not crash or exit).
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process's standard error so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The temp dir holding the config and logs.
    pub(crate) fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for EdgetokenProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process still dies of SIGKILL; CONT first only so nothing lingers.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `GET path` over the Unix socket at `socket` and returns the whole answer (status
/// line, headers and body). A test client: reqwest speaks no Unix sockets.
pub(crate) fn unix_get(socket: &Path, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: verifier\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// A running `edgetoken serve`, killed on drop.
#[derive(Debug)]
pub(crate) struct ServeProcess {
    child: Option<Child>,
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
    /// `http://127.0.0.1:PORT` from the banner.
    pub(crate) base: String,
}

/// `edgetoken` with a clean environment: no inherited `EDGETOKEN_*` or `RUST_LOG`.
pub(crate) fn edgetoken(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgetoken"));
    command.current_dir(cwd);
    for (name, _) in std::env::vars() {
        if name.starts_with("EDGETOKEN_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

impl ServeProcess {
    /// Starts `command` (an `edgetoken serve ...` built with [`edgetoken`]) with output going
    /// to files in `dir`, and waits for the banner's address.
    pub(crate) fn start(mut command: Command, dir: &Path) -> Self {
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the edgetoken binary");
        let mut process = Self {
            child: Some(child),
            stdout,
            stderr,
            base: String::new(),
        };
        let banner = eventually(
            "edgetoken's banner with its address",
            Duration::from_secs(20),
        )
        .try_until_blocking(|| {
            let out = std::fs::read_to_string(&process.stdout).unwrap_or_default();
            if let Some(address) = out
                .lines()
                .find_map(|line| line.split(" on http://").nth(1))
            {
                return Some(format!("http://{}", address.trim()));
            }
            if let Some(status) = process.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "edgetoken exited with {status} before serving:\n{}\n{}",
                    out,
                    std::fs::read_to_string(&process.stderr).unwrap_or_default()
                );
            }
            None
        });
        match banner {
            Ok(base) => {
                process.base = base;
                process
            }
            Err(timed_out) => panic!("{timed_out}:\n{}", process.output()),
        }
    }

    /// The resident memory of the process now, in KiB (`VmRSS`).
    pub(crate) fn rss_kib(&self) -> u64 {
        proc_status(self.child.as_ref().expect("running").id(), "VmRSS")
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub(crate) fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let exited = eventually("edgetoken to exit on SIGTERM", Duration::from_secs(10))
                .try_until_blocking(|| child.try_wait().unwrap());
            if exited.is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The number in field `field` of `/proc/PID/status` (kB for the `Vm*` fields).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The first word a successful command printed (a key id, for `keygen` and `keys ...`);
/// panics with the whole output if the command failed.
pub(crate) fn first_word(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("the command printed something")
        .to_owned()
}

/// Runs `edgetoken ARGS...` in `cwd` (clean environment) with `stdin` on its standard input,
/// and returns its output.
pub(crate) fn run_cli(cwd: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = edgetoken(cwd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the edgetoken binary");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("edgetoken output")
}

/// Every thread's stack of process `pid`, from `gdb -p PID -batch` (installed by `.ci/run`), or
/// why there are none: for a failure that looks like a hang, what each thread was doing at
/// that moment. Blocks for the second or so gdb takes.
pub(crate) fn thread_stacks(pid: u32) -> String {
    match Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(err) => format!("no stacks: running gdb failed ({err})"),
    }
}

/// Writes `config` plus `[server] listen = LISTEN` to `DIR/edgetoken.toml`, and returns its
/// path. A `config` with a `[server]` table of its own gets the listen address in that table.
pub(crate) fn write_config(dir: &Path, config: &str, listen: &str) -> PathBuf {
    let file = dir.join("edgetoken.toml");
    let listen = format!("[server]\nlisten = \"{listen}\"\n");
    let text = if config.contains("[server]\n") {
        config.replacen("[server]\n", &listen, 1)
    } else {
        format!("{config}\n{listen}")
    };
    std::fs::write(&file, text).expect("write config");
    file
}
