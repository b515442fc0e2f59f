//! The server loop: HTTP/1.1 connections within bounds (THREATS #56).
//!
//! `axum::serve` keeps a connection for as long as the client likes: an idle keep-alive
//! socket, or one that sends half a request head and stops (slowloris), stays open forever,
//! and enough of them exhaust the process's file descriptors, after which nothing is accepted
//! at all (not even `/healthz`). This loop bounds all three:
//!
//! - **Header-read timeout**: a request head must arrive whole within
//!   [`ServerLimits::header_read_timeout`] of its first byte, and a new connection must
//!   complete its first head within the same time of opening.
//! - **Idle timeout**: a keep-alive connection with no request for
//!   [`ServerLimits::idle_timeout`] is closed.
//! - **Connection limit**: at most [`ServerLimits::max_connections`] at once (lowered at start
//!   to fit the descriptor limit). At the limit, and when `accept` fails for want of
//!   descriptors, the oldest connections with no request in flight are closed to make room,
//!   so a flood of idle or half-sent connections cannot lock real clients out.
//!
//! A connection with a request in flight is never closed by these rules. The bookkeeping on
//! the request path is two uncontended atomic increments on the connection's own counters and
//! one store; the timers run per connection, not per request.
//!
//! Forward-auth, the request a proxy sends for every request it passes, is answered here
//! without the router when the [`App`] carries the verifier (see
//! `verifier::forward_auth_answer`); everything else goes through the router.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tower::ServiceExt as _;
use tower::util::Oneshot;

use super::AppState;
use crate::proxies::Peer;

/// Descriptors kept free for everything that is not a client connection (Redis, key files,
/// the JWKS fetch, logs).
const RESERVED_DESCRIPTORS: u64 = 64;
/// How long the accept loop pauses after an `accept` error before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// Connections closed at once to free descriptors when `accept` runs out of them.
const EVICT_ON_EXHAUSTION: usize = 8;

/// How long connections may stay open, and how many at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A request head must arrive whole within this time of its first byte (and a new
    /// connection's first head within this time of opening).
    pub header_read_timeout: Duration,
    /// A keep-alive connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; see [`ServerLimits::fitted_to_descriptors`].
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            max_connections: 4096,
        }
    }
}

impl ServerLimits {
    /// The limits `[server]` configures.
    pub fn from_settings(server: &crate::settings::ServerSettings) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections,
        }
    }

    /// These limits with `max_connections` lowered, when needed, to leave
    /// `RESERVED_DESCRIPTORS` (64) free under the process's soft descriptor limit (read from
    /// `/proc/self/limits`; unchanged where that cannot be read).
    #[must_use]
    pub fn fitted_to_descriptors(self) -> Self {
        let Some(soft) = soft_descriptor_limit() else {
            return self;
        };
        let room = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(16))
            .unwrap_or(usize::MAX);
        if room < self.max_connections {
            tracing::warn!(
                configured = self.max_connections,
                descriptor_limit = soft,
                max_connections = room,
                "server.max_connections lowered to fit the open-file limit (raise `ulimit -n`)"
            );
        }
        Self {
            max_connections: self.max_connections.min(room),
            ..self
        }
    }

    /// How often each connection's timers are checked: a quarter of the shorter timeout,
    /// between 50 ms and 1 s.
    fn tick(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// The soft `Max open files` limit of this process, on Linux.
fn soft_descriptor_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What [`serve`] answers: a router, and the services whose forward-auth the server loop
/// answers itself.
#[derive(Debug, Clone)]
pub struct App {
    router: Router,
    forward_auth: Option<AppState>,
}

impl App {
    /// `router`, with forward-auth (`/v1/verify` and its Envoy form) answered directly from
    /// `forward_auth`'s verifier when given and its role includes the verifier (otherwise
    /// the router answers those paths too). The router should route them to the same
    /// services' forward-auth, as [`super::router`] does: the answer is the same either way.
    pub fn new(router: Router, forward_auth: Option<AppState>) -> Self {
        Self {
            router,
            forward_auth: forward_auth.filter(|state| state.role.has_verifier()),
        }
    }
}

impl From<Router> for App {
    fn from(router: Router) -> Self {
        Self::new(router, None)
    }
}

/// Where [`serve`] accepts connections: a TCP socket, or a Unix socket for a proxy on the
/// same host (`server.listen = "unix:PATH"`), where the socket file's permissions decide who
/// may connect (see [`super::unix_socket`]).
#[derive(Debug)]
pub enum Listener {
    /// TCP: each connection's peer is its address.
    Tcp(TcpListener),
    /// A Unix socket: each connection's peer is [`Peer::Unix`].
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

impl From<UnixListener> for Listener {
    fn from(listener: UnixListener) -> Self {
        Self::Unix(listener)
    }
}

/// A connection just accepted.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Self::Tcp(listener) => listener
                .accept()
                .await
                .map(|(stream, address)| Accepted::Tcp(stream, address)),
            Self::Unix(listener) => listener
                .accept()
                .await
                .map(|(stream, _)| Accepted::Unix(stream)),
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then lets the
/// requests in flight finish.
///
/// # Errors
///
/// None today: accept errors are logged and retried (so running out of descriptors never
/// stops the server). The `Result` keeps room for listener failures that are fatal.
pub async fn serve(
    listener: impl Into<Listener>,
    app: impl Into<App>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = listener.into();
    let app = app.into();
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_warning: Option<Instant> = None;
    loop {
        while connections.try_join_next().is_some() {}
        if registry.len() >= limits.max_connections && registry.evict_idle(1) == 0 {
            // Every connection is busy: wait for one to finish rather than accept.
            tokio::select! {
                () = &mut shutdown => break,
                _ = connections.join_next() => continue,
            }
        }
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => {
                let connection = registry.open();
                let app = app.clone();
                let stop = stop_rx.clone();
                let registry = Arc::clone(&registry);
                connections.spawn(async move {
                    match accepted {
                        Accepted::Tcp(stream, address) => {
                            let peer = Origin::Tcp(address);
                            drive(stream, peer, app, &connection, limits, stop).await;
                        }
                        Accepted::Unix(stream) => {
                            drive(stream, Origin::Unix, app, &connection, limits, stop).await;
                        }
                    }
                    registry.close(&connection);
                });
            }
            Err(error) => {
                if is_descriptor_exhaustion(&error) {
                    registry.evict_idle(EVICT_ON_EXHAUSTION);
                }
                // At most one line a second: a flood of failures must not flood the log.
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(%error, "accept failed; retrying");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_descriptor_exhaustion(error: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): the process or the system is out of file descriptors.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// Where a connection comes from, as handlers are told it.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Tcp(SocketAddr),
    Unix,
}

impl Origin {
    fn peer(self) -> Peer {
        match self {
            Self::Tcp(address) => Peer::Ip(address.ip()),
            Self::Unix => Peer::Unix,
        }
    }
}

/// Serves one connection until it ends, times out, is evicted, or the server stops.
async fn drive<S>(
    stream: S,
    origin: Origin,
    app: App,
    connection: &Arc<Connection>,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = origin.peer();
    let io = TokioIo::new(Metered {
        inner: stream,
        connection: Arc::clone(connection),
    });
    let service = Tracked {
        app,
        connection: Arc::clone(connection),
        origin,
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut ticks = tokio::time::interval(limits.tick());
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut watchdog = Watchdog::new(limits);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::trace!(%error, "connection ended with an error");
                }
                return;
            }
            _ = ticks.tick() => {
                if watchdog.is_expired(connection, limits.tick()) {
                    tracing::debug!(%peer, "connection closed: header-read or idle timeout");
                    return;
                }
            }
            () = connection.evicted.notified() => {
                if connection.is_idle() {
                    tracing::debug!(%peer, "idle connection closed to make room");
                    return;
                }
                connection.evicting.store(false, Ordering::Relaxed);
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One open connection's counters, shared by its task, its I/O and its service.
#[derive(Debug)]
struct Connection {
    id: u64,
    opened: Instant,
    /// Requests whose head was read.
    started: AtomicU64,
    /// Requests answered (or abandoned).
    finished: AtomicU64,
    /// Bytes of a request head arrived while no request was in flight.
    head_pending: AtomicBool,
    /// Told to close, if still idle, to make room.
    evicted: tokio::sync::Notify,
    /// Already told, so one eviction is not spent twice on the same connection.
    evicting: AtomicBool,
}

impl Connection {
    fn is_idle(&self) -> bool {
        self.started.load(Ordering::Relaxed) == self.finished.load(Ordering::Relaxed)
    }
}

/// The open connections, for counting and eviction. Locked on open, close and eviction
/// only, never per request.
#[derive(Debug, Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn open(&self) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            opened: Instant::now(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            evicted: tokio::sync::Notify::new(),
            evicting: AtomicBool::new(false),
        });
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(connection.id, Arc::clone(&connection));
        connection
    }

    fn close(&self, connection: &Connection) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&connection.id);
    }

    /// Tells up to `count` of the oldest connections with no request in flight to close;
    /// returns how many were told. They leave the registry when their task ends.
    fn evict_idle(&self, count: usize) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut idle: Vec<&Arc<Connection>> = open
            .values()
            .filter(|c| c.is_idle() && !c.evicting.load(Ordering::Relaxed))
            .collect();
        idle.sort_unstable_by_key(|c| c.opened);
        for connection in idle.iter().take(count) {
            connection.evicting.store(true, Ordering::Relaxed);
            connection.evicted.notify_one();
        }
        idle.len().min(count)
    }
}

/// Per-connection timers, advanced by the connection's own task on each tick.
#[derive(Debug)]
struct Watchdog {
    limits: ServerLimits,
    seen_started: u64,
    idle_for: Duration,
    head_for: Duration,
}

impl Watchdog {
    fn new(limits: ServerLimits) -> Self {
        Self {
            limits,
            seen_started: 0,
            idle_for: Duration::ZERO,
            head_for: Duration::ZERO,
        }
    }

    /// Whether the connection has been idle, or sending a head, for too long. A connection
    /// with a request in flight never expires.
    fn is_expired(&mut self, connection: &Connection, tick: Duration) -> bool {
        let started = connection.started.load(Ordering::Relaxed);
        if started != connection.finished.load(Ordering::Relaxed) || started != self.seen_started {
            self.seen_started = started;
            self.idle_for = Duration::ZERO;
            self.head_for = Duration::ZERO;
            return false;
        }
        self.idle_for += tick;
        if connection.head_pending.load(Ordering::Relaxed) {
            self.head_for += tick;
        }
        // Until its first request, a connection is held to the header timeout: connecting
        // and sending nothing is the cheapest way to hold a descriptor.
        let idle_limit = if started == 0 {
            self.limits.header_read_timeout
        } else {
            self.limits.idle_timeout
        };
        self.head_for >= self.limits.header_read_timeout || self.idle_for >= idle_limit
    }
}

/// The socket, noting when bytes of a new request head arrive.
#[derive(Debug)]
struct Metered<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.connection.is_idle() {
            self.connection.head_pending.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The app as hyper's service for one connection: counts requests in flight and gives
/// handlers the peer: its address (`ConnectInfo`) as `axum::serve` does, or [`Peer::Unix`].
#[derive(Debug, Clone)]
struct Tracked {
    app: App,
    connection: Arc<Connection>,
    origin: Origin,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = InFlight;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.connection.head_pending.store(false, Ordering::Relaxed);
        self.connection.started.fetch_add(1, Ordering::Relaxed);
        let finished = Finished(Arc::clone(&self.connection));
        if let Some(state) = &self.app.forward_auth
            && super::verifier::is_forward_auth_path(request.uri().path())
        {
            // Answered now: the decision never waits (SPEC §9), and forward-auth reads no body.
            let (parts, _body) = request.into_parts();
            let response = super::verifier::forward_auth_answer(state, &parts, self.origin.peer());
            return InFlight {
                answer: Answer::Ready(std::future::ready(Ok(response))),
                _finished: finished,
            };
        }
        let mut request = request.map(Body::new);
        let extensions = request.extensions_mut();
        match self.origin {
            Origin::Tcp(address) => {
                extensions.insert(ConnectInfo(address));
            }
            Origin::Unix => {
                extensions.insert(Peer::Unix);
            }
        }
        InFlight {
            answer: Answer::Routed(self.app.router.clone().oneshot(request)),
            _finished: finished,
        }
    }
}

/// A request being answered; dropping it (answered or abandoned) counts it finished.
struct InFlight {
    answer: Answer,
    _finished: Finished,
}

/// Where a request's answer comes from.
enum Answer {
    /// Already decided (forward-auth).
    Ready(std::future::Ready<Result<Response, Infallible>>),
    /// The router's.
    Routed(Oneshot<Router, axum::extract::Request>),
}

impl Future for InFlight {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.answer {
            Answer::Ready(ready) => Pin::new(ready).poll(cx),
            Answer::Routed(routed) => Pin::new(routed).poll(cx),
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Finished(Arc<Connection>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        Connection {
            id: 0,
            opened: Instant::now(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            evicted: tokio::sync::Notify::new(),
            evicting: AtomicBool::new(false),
        }
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(4),
            max_connections: 8,
        }
    }

    #[test]
    fn a_silent_new_connection_expires_at_the_header_timeout() {
        let (c, mut w) = (connection(), Watchdog::new(limits()));
        assert!(!w.is_expired(&c, Duration::from_secs(1)));
        assert!(w.is_expired(&c, Duration::from_secs(1)));
    }

    #[test]
    fn a_keep_alive_connection_expires_at_the_idle_timeout() {
        let (c, mut w) = (connection(), Watchdog::new(limits()));
        c.started.store(1, Ordering::Relaxed);
        c.finished.store(1, Ordering::Relaxed);
        assert!(
            !w.is_expired(&c, Duration::from_secs(1)),
            "a request was seen"
        );
        for _ in 0..3 {
            assert!(!w.is_expired(&c, Duration::from_secs(1)));
        }
        assert!(w.is_expired(&c, Duration::from_secs(1)));
    }

    #[test]
    fn a_half_sent_head_expires_at_the_header_timeout() {
        let (c, mut w) = (connection(), Watchdog::new(limits()));
        c.started.store(1, Ordering::Relaxed);
        c.finished.store(1, Ordering::Relaxed);
        assert!(!w.is_expired(&c, Duration::from_secs(1)));
        c.head_pending.store(true, Ordering::Relaxed);
        assert!(!w.is_expired(&c, Duration::from_secs(1)));
        assert!(w.is_expired(&c, Duration::from_secs(1)));
    }

    #[test]
    fn a_request_in_flight_never_expires() {
        let (c, mut w) = (connection(), Watchdog::new(limits()));
        c.started.store(1, Ordering::Relaxed);
        for _ in 0..100 {
            assert!(!w.is_expired(&c, Duration::from_secs(1)));
        }
    }

    #[test]
    fn eviction_picks_the_oldest_idle_connections_only() {
        let registry = Registry::default();
        let busy = registry.open();
        busy.started.store(1, Ordering::Relaxed);
        let _idle = registry.open();
        assert_eq!(registry.evict_idle(5), 1);
        assert_eq!(
            registry.len(),
            2,
            "evicted connections leave when their task ends"
        );
    }

    #[test]
    fn the_descriptor_limit_caps_connections() {
        let fitted = ServerLimits {
            max_connections: usize::MAX,
            ..limits()
        }
        .fitted_to_descriptors();
        if let Some(soft) = soft_descriptor_limit() {
            assert!(u64::try_from(fitted.max_connections).unwrap() < soft.max(80));
        }
    }
}
