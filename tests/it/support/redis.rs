//! A private `redis-server` per test: own free port, own temp data dir, killed on drop.
//!
//! Fault tests need a server they may kill (`kill -9`), restart with or without its data, pause
//! or reconfigure, so each test owns one; nothing uses the shared Redis on 6379. For tests that
//! inject no faults, [`TestRedis::shared_or_own`] honours `REDIS_URL`. A missing
//! `redis-server` fails the test with a message; it never skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::eventually::eventually;

/// How long a fresh server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a port nobody grabs between our probe and redis' bind.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` child process owned by one test.
#[derive(Debug)]
pub(crate) struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// A copy of the data dir taken by [`RedisServer::save_data`].
    saved: Option<TempDir>,
}

/// Either this test's own server or the externally provided `REDIS_URL`.
#[derive(Debug)]
pub(crate) enum TestRedis {
    /// A server this test started.
    Own(RedisServer),
    /// `REDIS_URL`, and the key prefixes the test used there, deleted on drop.
    External(String, std::sync::Mutex<Vec<String>>),
}

impl TestRedis {
    /// `REDIS_URL` when set (tests isolate by key prefix), else a private server.
    pub(crate) fn shared_or_own() -> Self {
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => Self::External(url, std::sync::Mutex::default()),
            _ => Self::Own(RedisServer::start()),
        }
    }

    /// The URL to connect to.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Own(server) => server.url(),
            Self::External(url, _) => url.clone(),
        }
    }

    /// Records that the test writes keys tagged `{prefix}`, so a shared Redis is left clean.
    pub(crate) fn track_prefix(&self, prefix: &str) {
        if let Self::External(_, prefixes) = self {
            prefixes
                .lock()
                .expect("prefix list")
                .push(prefix.to_owned());
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let Self::External(url, prefixes) = self else {
            return;
        };
        let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let prefixes = std::mem::take(prefixes.get_mut().expect("prefix list"));
        for prefix in prefixes {
            let pattern = format!("{{{prefix}}}:*");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("DEL").arg(&keys).exec(&mut conn);
            }
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local addr").port()
    // The listener is dropped here, releasing the port for redis-server.
}

impl RedisServer {
    /// Starts a server with AOF persistence (`appendfsync always`) on a free port.
    pub(crate) fn start() -> Self {
        let mut server = Self::reserve();
        for attempt in 1..=PORT_ATTEMPTS {
            match server.spawn() {
                Ok(()) => return server,
                Err(err) if attempt < PORT_ATTEMPTS => {
                    eprintln!(
                        "redis-server on port {} failed ({err}); retrying",
                        server.port
                    );
                    server.port = free_port();
                }
                Err(err) => panic!("redis-server did not start: {err}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Picks a port and a data dir without starting anything: for tests that begin with Redis
    /// down (F9). Call [`RedisServer::restart`] to start it.
    pub(crate) fn reserve() -> Self {
        Self {
            port: free_port(),
            dir: tempfile::Builder::new()
                .prefix("edgetoken-redis-")
                .tempdir()
                .expect("create a temp dir for redis-server"),
            child: None,
            saved: None,
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A synchronous admin connection, for fault injection and inspection.
    pub(crate) fn admin(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .expect("admin connection to the test redis-server")
    }

    /// `kill -9`: no shutdown, no final save.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the (killed or never started) server again on the same port with its data.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn().expect("restart redis-server on its port");
    }

    /// Starts the server again on the same port with its data dir wiped: an empty restart.
    pub(crate) fn restart_empty(&mut self) {
        self.kill();
        self.wipe_data();
        self.spawn().expect("restart redis-server empty");
    }

    /// Copies the persisted data (the AOF, fsynced on every write) aside, to restore later.
    pub(crate) fn save_data(&mut self) {
        let saved = tempfile::tempdir().expect("temp dir for saved redis data");
        copy_data(self.dir.path(), saved.path());
        self.saved = Some(saved);
    }

    /// `kill -9`, then starts again from the data saved by [`RedisServer::save_data`]: a
    /// restart that lost every write made since, like AOF `everysec` losing its last second or
    /// a failover to a lagging replica.
    pub(crate) fn restart_with_saved_data(&mut self) {
        self.kill();
        self.wipe_data();
        let saved = self.saved.take().expect("save_data first");
        copy_data(saved.path(), self.dir.path());
        self.spawn().expect("restart redis-server from saved data");
    }

    fn wipe_data(&self) {
        for entry in std::fs::read_dir(self.dir.path()).expect("read redis data dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "log") {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove AOF dir");
            } else {
                std::fs::remove_file(&path).expect("remove data file");
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--maxmemory-policy", "noeviction"])
            .args(["--enable-debug-command", "local"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| {
                if err.kind() == std::io::ErrorKind::NotFound {
                    "`redis-server` is not installed or not on PATH; the integration tests need \
                     a real Redis (apt-get install redis-server)"
                        .to_owned()
                } else {
                    format!("spawning redis-server: {err}")
                }
            });
        let child = match child {
            Ok(child) => child,
            // Not a port collision: retrying cannot help.
            Err(message) => panic!("{message}"),
        };
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until this server's own process answers on its port (another test's server
    /// that took the port answers too), the process exits, or the timeout passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        let pid = self.child.as_ref().map(Child::id);
        // `Some(Err(..))`: the server exited, and waiting longer cannot help.
        eventually("redis-server to answer PING", READY_TIMEOUT)
            .every(Duration::from_millis(10))
            .try_until_blocking(|| {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    self.child = None;
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    return Some(Err(format!(
                        "redis-server exited with {status}; log:\n{log}"
                    )));
                }
                (pid.is_some() && answering_process(&client) == pid).then_some(Ok(()))
            })
            .unwrap_or_else(|timed_out| Err(timed_out.to_string()))
    }
}

/// The process id of the server answering at `client`'s address (`process_id` in `INFO
/// server`); `None` while nothing answers.
pub(crate) fn answering_process(client: &redis::Client) -> Option<u32> {
    let info = client
        .get_connection_with_timeout(Duration::from_millis(200))
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()?;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.parse::<u32>().ok())
}

/// Copies the data files of `from` (not the log) into `to`, recursively.
fn copy_data(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read data dir") {
        let path = entry.expect("dir entry").path();
        let target = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            std::fs::create_dir_all(&target).expect("create data subdir");
            copy_data(&path, &target);
        } else if path.extension().is_none_or(|e| e != "log") {
            std::fs::copy(&path, &target).expect("copy data file");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
