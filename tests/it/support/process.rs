//! The real `edgetoken` binary as a child process, its output captured to files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::fs::read_to_string(&process.stdout).unwrap_or_default();
            if let Some(address) = out
                .lines()
                .find_map(|line| line.split(" on http://").nth(1))
            {
                process.base = format!("http://{}", address.trim());
                return process;
            }
            if let Some(status) = process.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "edgetoken exited with {status} before serving:\n{}\n{}",
                    out,
                    std::fs::read_to_string(&process.stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no banner in 20 s:\n{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
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
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
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
