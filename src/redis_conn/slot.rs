//! [`ConnectionSlot`]: the connection to the current primary, opened once however many callers
//! want it, and never lost to a caller that gives up.
//!
//! Why not a mutex held across the open: an HTTP handler is dropped when its client goes
//! away, and the open it was running under the lock went with it. Under a failover with
//! requests arriving faster than an open takes, the queue behind the lock grew until every
//! caller waited out its client's timeout there and was dropped just after it took the lock:
//! no open ever finished, and the issuer answered nothing until the load stopped (seen in CI
//! during a Redis Cluster slot migration). Here the open runs in a task of its own, every
//! caller that wants the same primary waits on that one open, and the task stores what it
//! opened whoever still waits.
//!
//! The slot also remembers which connection a failure was seen on ([`Opened::id`]): a
//! failure reported late by a command sent on an older connection does not throw away the
//! one opened since.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use tracing::Instrument as _;

/// One open connection (or anything opened per primary) and where it goes.
#[derive(Debug, Clone)]
pub(crate) struct Opened<T> {
    /// The primary's address, as the target named it.
    pub(crate) address: Arc<str>,
    /// Tells this open apart from every other of the slot, for [`ConnectionSlot::forget`].
    pub(crate) id: u64,
    /// What the open returned: the connection, with whatever was checked on it.
    pub(crate) value: T,
}

type Opening<T, E> = Shared<BoxFuture<'static, Result<Opened<T>, E>>>;

/// The connection to the current primary, or the open under way (see the module doc).
pub(crate) struct ConnectionSlot<T, E> {
    inner: Arc<Inner<T, E>>,
}

struct Inner<T, E> {
    /// Held only for a few assignments, never across an `.await`.
    state: Mutex<State<T, E>>,
    /// The id of the next open.
    next_id: AtomicU64,
}

struct State<T, E> {
    /// The connection callers get while it goes to the primary they ask for.
    open: Option<Opened<T>>,
    /// The open under way: the address it goes to, its id, and the future every caller for
    /// that address awaits.
    opening: Option<(Arc<str>, u64, Opening<T, E>)>,
}

impl<T, E> std::fmt::Debug for ConnectionSlot<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("ConnectionSlot")
            .field("open", &state.open.as_ref().map(|o| (&o.address, o.id)))
            .field("opening", &state.opening.as_ref().map(|o| (&o.0, o.1)))
            .finish()
    }
}

impl<T, E> Default for ConnectionSlot<T, E> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    open: None,
                    opening: None,
                }),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

impl<T, E> Inner<T, E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T, E>> {
        // Every critical section is a few assignments that cannot panic halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T, E> ConnectionSlot<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// The connection to the primary at `address`: the open one if it goes there; else the
    /// open under way to it; else a new one, `open()` run in a task of its own (a connection
    /// to another address is dropped). A caller dropped while it waits does not stop the
    /// open. A failed open is not kept: the next call tries again.
    ///
    /// `panicked` is the error its waiters get if `open()` panics (or its task is cancelled
    /// by the runtime shutting down); the next call tries again.
    ///
    /// # Errors
    /// What `open()` returned.
    pub(crate) async fn get<F>(
        &self,
        address: &Arc<str>,
        open: impl FnOnce() -> F,
        panicked: fn() -> E,
    ) -> Result<Opened<T>, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let opening = {
            let mut state = self.inner.lock();
            if let Some(opened) = &state.open
                && opened.address == *address
            {
                return Ok(opened.clone());
            }
            match &state.opening {
                Some((to, _, opening)) if to == address => opening.clone(),
                _ => {
                    // The primary moved: the old connection is of no use to anyone now.
                    state.open = None;
                    let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                    let opening = self.spawn(Arc::clone(address), id, open(), panicked);
                    state.opening = Some((Arc::clone(address), id, opening.clone()));
                    opening
                }
            }
        };
        opening.await
    }

    fn spawn<F>(&self, address: Arc<str>, id: u64, open: F, panicked: fn() -> E) -> Opening<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(
            async move {
                // However the task ends (a panic in `open`, the runtime shutting down), the
                // open under way is cleared, or every later caller would get its failure.
                let ended = EndOpening {
                    inner: Arc::clone(&inner),
                    id,
                };
                let opened = open.await.map(|value| Opened { address, id, value });
                if let Ok(opened) = &opened {
                    let mut state = inner.lock();
                    // Unless a caller has since started an open to another primary.
                    if state.opening.as_ref().is_some_and(|(_, at, _)| *at == id) {
                        state.open = Some(opened.clone());
                    }
                }
                drop(ended);
                opened
            }
            .in_current_span(),
        );
        task.map(move |joined| {
            joined.unwrap_or_else(|ended| {
                tracing::error!(error = %ended, "a connection open ended without an answer");
                Err(panicked())
            })
        })
        .boxed()
        .shared()
    }

    /// Drops the open connection if it is the one with `id` (a command on it found the
    /// primary lost); a newer connection stays.
    pub(crate) fn forget(&self, id: u64) {
        let mut state = self.inner.lock();
        if state.open.as_ref().is_some_and(|opened| opened.id == id) {
            state.open = None;
        }
    }

    /// The open connection, if any, without opening one.
    pub(crate) fn current(&self) -> Option<Opened<T>> {
        self.inner.lock().open.clone()
    }
}

/// Clears the slot's open under way, if it is still the one with `id`, when dropped.
struct EndOpening<T, E> {
    inner: Arc<Inner<T, E>>,
    id: u64,
}

impl<T, E> Drop for EndOpening<T, E> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state
            .opening
            .as_ref()
            .is_some_and(|(_, at, _)| *at == self.id)
        {
            state.opening = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    type Slot = ConnectionSlot<usize, String>;

    fn address(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    fn panicked() -> String {
        "open panicked".to_owned()
    }

    /// An open that takes `delay` and counts how often it ran.
    fn counted(
        opens: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<usize, String>> {
        let opens = Arc::clone(opens);
        move || {
            async move {
                tokio::time::sleep(delay).await;
                Ok(opens.fetch_add(1, Ordering::SeqCst) + 1)
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn callers_waiting_for_the_same_primary_share_one_open() {
        let slot = Slot::default();
        let opens = Arc::new(AtomicUsize::new(0));
        let a = address("10.0.0.1:6379");
        let delay = Duration::from_millis(50);
        let (first, second, third) = tokio::join!(
            slot.get(&a, counted(&opens, delay), panicked),
            slot.get(&a, counted(&opens, delay), panicked),
            slot.get(&a, counted(&opens, delay), panicked),
        );
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        let ids = [first.unwrap().id, second.unwrap().id, third.unwrap().id];
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        // And the next caller gets the stored connection without opening.
        slot.get(&a, counted(&opens, delay), panicked)
            .await
            .unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_does_not_cancel_the_open() {
        let slot = Slot::default();
        let opens = Arc::new(AtomicUsize::new(0));
        let a = address("10.0.0.1:6379");
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            slot.get(&a, counted(&opens, Duration::from_millis(100)), panicked),
        )
        .await;
        assert!(gave_up.is_err(), "the caller gave up before the open ended");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            slot.current().map(|opened| opened.value),
            Some(1),
            "the open finished and was kept with nobody waiting"
        );
        slot.get(&a, counted(&opens, Duration::ZERO), panicked)
            .await
            .unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 1, "and is used, not reopened");
    }

    #[tokio::test(start_paused = true)]
    async fn forget_drops_only_the_connection_the_failure_was_seen_on() {
        let slot = Slot::default();
        let opens = Arc::new(AtomicUsize::new(0));
        let a = address("10.0.0.1:6379");
        let old = slot
            .get(&a, counted(&opens, Duration::ZERO), panicked)
            .await
            .unwrap();
        slot.forget(old.id);
        assert!(slot.current().is_none());
        let new = slot
            .get(&a, counted(&opens, Duration::ZERO), panicked)
            .await
            .unwrap();
        assert_ne!(new.id, old.id);
        // A late failure of a command sent on the old connection.
        slot.forget(old.id);
        assert_eq!(slot.current().map(|opened| opened.id), Some(new.id));
    }

    #[tokio::test(start_paused = true)]
    async fn another_primary_replaces_the_connection_and_a_failed_open_is_retried() {
        let slot = Slot::default();
        let opens = Arc::new(AtomicUsize::new(0));
        let (a, b) = (address("10.0.0.1:6379"), address("10.0.0.2:6379"));
        slot.get(&a, counted(&opens, Duration::ZERO), panicked)
            .await
            .unwrap();
        let failed = slot
            .get(&b, || async { Err("refused".to_owned()) }.boxed(), panicked)
            .await;
        assert_eq!(failed.unwrap_err(), "refused");
        assert!(
            slot.current().is_none(),
            "the connection to the old primary is not used"
        );
        let opened = slot
            .get(&b, counted(&opens, Duration::ZERO), panicked)
            .await
            .unwrap();
        assert_eq!(opened.address, b);
        assert_eq!(slot.current().map(|o| o.address), Some(b));
    }

    #[test]
    fn an_open_cut_short_by_the_runtime_shutting_down_is_not_kept() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let slot = Slot::default();
        let a = address("10.0.0.1:6379");
        let first = runtime();
        first.block_on(async {
            let never = || std::future::pending::<Result<usize, String>>().boxed();
            let gave_up =
                tokio::time::timeout(Duration::from_millis(10), slot.get(&a, never, panicked))
                    .await;
            assert!(gave_up.is_err());
        });
        drop(first);
        let opens = Arc::new(AtomicUsize::new(0));
        let opened = runtime().block_on(slot.get(&a, counted(&opens, Duration::ZERO), panicked));
        assert_eq!(
            opened.map(|o| o.value),
            Ok(1),
            "a new open, not the dead one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_that_panics_answers_the_error_and_is_retried() {
        let slot = Slot::default();
        let a = address("10.0.0.1:6379");
        let failed = slot
            .get(&a, || async { panic!("bug in an open") }.boxed(), panicked)
            .await;
        assert_eq!(failed.unwrap_err(), "open panicked");
        let opens = Arc::new(AtomicUsize::new(0));
        slot.get(&a, counted(&opens, Duration::ZERO), panicked)
            .await
            .unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 1);
    }
}
