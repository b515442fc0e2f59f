//! A TCP proxy that delays every chunk it forwards, in both directions, for Redis latency
//! faults (THREATS §4 F7; what toxiproxy's `latency` toxic does).
//!
//! Each chunk read from one side is written to the other `base ± jitter` after it arrived, but
//! never before the chunk ahead of it: order is preserved, as TCP must. The delay can be changed
//! while connections are open (zero forwards at once), so a test measures its baseline and its
//! fault through the same path. The proxy counts the connections it accepted: a client that
//! reconnects shows up there whatever it reports about itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The delay applied to each chunk, in milliseconds.
#[derive(Debug, Default)]
struct Delay {
    base_ms: AtomicU64,
    jitter_ms: AtomicU64,
}

impl Delay {
    /// `base ± jitter`, uniformly.
    fn sample(&self) -> Duration {
        let base = self.base_ms.load(Ordering::Relaxed);
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        if jitter == 0 {
            return Duration::from_millis(base);
        }
        let offset = OsRng.next_u64() % (2 * jitter + 1);
        Duration::from_millis((base + offset).saturating_sub(jitter))
    }
}

/// A delaying proxy on `127.0.0.1:0` in front of one upstream address; stops on drop.
#[derive(Debug)]
pub(crate) struct DelayProxy {
    addr: SocketAddr,
    delay: Arc<Delay>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Starts forwarding to the Redis at `redis_url` (`redis://127.0.0.1:PORT/`, as the test
    /// servers name themselves) with no delay.
    pub(crate) async fn in_front_of(redis_url: &str) -> Self {
        let upstream = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("a test Redis URL names host:port");
        Self::start(upstream).await
    }

    /// Starts forwarding to `upstream` with no delay.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the delay proxy");
        let addr = listener.local_addr().expect("proxy address");
        let delay = Arc::new(Delay::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let task = {
            let (delay, accepted) = (Arc::clone(&delay), Arc::clone(&accepted));
            tokio::spawn(async move {
                // Dropped with the accept task: every connection ends with the proxy.
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let delay = Arc::clone(&delay);
                    connections.spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pump(client_read, server_write, Arc::clone(&delay)),
                            pump(server_read, client_write, delay),
                        );
                    });
                    // Reap finished connections so the set stays small.
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        Self {
            addr,
            delay,
            accepted,
            task,
        }
    }

    /// Delays every chunk from now on by `base ± jitter`.
    pub(crate) fn set_delay(&self, base: Duration, jitter: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).expect("delay in ms fits u64");
        self.delay.base_ms.store(ms(base), Ordering::Relaxed);
        self.delay.jitter_ms.store(ms(jitter), Ordering::Relaxed);
    }

    /// `redis://127.0.0.1:PORT/`: the proxy as a Redis URL.
    pub(crate) fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// The proxy's port on loopback.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted since the start.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards `from` to `to`, each chunk at its own deadline and never ahead of the one before.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<Delay>) {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buffer = vec![0_u8; 16 * 1024];
        let mut last = Instant::now();
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let at = (Instant::now() + delay.sample()).max(last);
            last = at;
            if chunks.send((at, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
        // Dropping the sender lets the writer drain what is queued, then shut down.
    };
    tokio::join!(reader, writer);
}
