//! The async runtime a serving process runs on (`server.worker_threads`).
//!
//! With more than one thread, tokio's multi-thread runtime, one worker per thread. With
//! exactly one (a sidecar pinned to one core, a container with a one-CPU quota, or
//! `server.worker_threads = 1`), tokio's current-thread runtime instead: every task runs on
//! the thread that started the server. A multi-thread runtime with one worker still keeps
//! the work-stealing machinery and runs the server's own future on a second thread; behind
//! Envoy's gRPC `ext_authz` it made 1.3 system calls per check where the current-thread
//! runtime makes 0.4, and the verifier's CPU per check fell by a fifth: it wrote each answer
//! on its own, where the current-thread runtime sends about eleven in one `writev`
//! (docs/proxies-bench.md, "One thread, one runtime"). Blocking work (password hashing, key
//! files) goes to tokio's blocking pool either way, so it never holds that one thread.

use std::num::NonZeroUsize;

/// The environment variable tokio itself reads for its worker count; honoured when
/// `server.worker_threads` is 0 (automatic) so that deployments which already set it keep
/// their count.
pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// How many threads run requests: the setting when it is not automatic, else
/// `TOKIO_WORKER_THREADS` when set, else the CPUs this process may run on (its affinity and
/// cgroup quota, as [`std::thread::available_parallelism`] reads them; 1 if unknown).
///
/// # Errors
///
/// `TOKIO_WORKER_THREADS` is set to something other than a whole number above 0 (tokio
/// itself would panic on it).
pub fn worker_threads(setting: Option<NonZeroUsize>) -> Result<NonZeroUsize, String> {
    if let Some(threads) = setting {
        return Ok(threads);
    }
    match std::env::var(TOKIO_WORKER_THREADS) {
        Ok(value) => value.trim().parse::<NonZeroUsize>().map_err(|_| {
            format!("{TOKIO_WORKER_THREADS}={value:?}: must be a whole number above 0")
        }),
        Err(_) => Ok(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)),
    }
}

/// Builds the runtime for `threads` request threads: current-thread for one, multi-thread
/// with that many workers otherwise. I/O and timers are enabled in both.
///
/// # Errors
///
/// The operating system refused the runtime's threads or its event queue.
pub fn build(threads: NonZeroUsize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == NonZeroUsize::MIN {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.get());
        builder
    };
    builder.enable_all().build()
}

/// Which runtime `runtime` is, read from the runtime itself (so it can never disagree with
/// [`build`]): `current-thread` or `multi-thread`, for the start-up line.
pub fn flavor(runtime: &tokio::runtime::Runtime) -> &'static str {
    match runtime.handle().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current-thread",
        _ => "multi-thread",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn a_set_count_is_taken_as_it_is() {
        assert_eq!(worker_threads(Some(threads(3))), Ok(threads(3)));
    }

    #[test]
    fn one_thread_gets_the_current_thread_runtime_and_more_the_multi_thread_one() {
        use tokio::runtime::RuntimeFlavor;
        let one = build(threads(1)).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(&one), "current-thread");
        assert_eq!(one.block_on(async { 7 }), 7);
        let two = build(threads(2)).unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(&two), "multi-thread");
        assert_eq!(two.metrics().num_workers(), 2);
        // Timers and I/O are enabled in both.
        for runtime in [one, two] {
            runtime.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            });
        }
    }
}
