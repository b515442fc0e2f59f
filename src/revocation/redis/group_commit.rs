//! Group commit: the replicated writes of concurrent revokes share one `WAIT`.
//!
//! `WAIT` blocks the connection it runs on until the replicas confirm or its timeout passes,
//! and the store's connection is multiplexed: every revoke's commands go down the same socket
//! and Redis runs them in order. With one write-and-`WAIT` pipeline per revoke, replicas that
//! do not confirm (one still syncing after a failover, one stopped) made each pipeline hold the
//! connection for the whole `wait_timeout`; revokes arriving at 50 per second queued their
//! waits inside Redis, beyond the reach of a revoke that gave up, so later revokes timed out
//! and the queue outlived the lag. With replicas that confirm, the waits still ran one after
//! the other.
//!
//! Here one batch is in flight per connection: its writes and a single `WAIT`, which counts
//! the replicas that have every write of the connection so far, so all of the batch's. Revokes
//! that arrive meanwhile wait in this process and go together in the next batch. A revoke
//! then waits for at most two batches, each bounded by its pipeline's timeout, however slow the
//! replicas; and the batches run in a task of their own, so a revoke that gives up stops
//! neither its write nor anyone else's.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tracing::Instrument as _;

/// Sends one batch: its jobs' results in order, or one error for all of them.
pub(super) type Runner<J, R, E> =
    Box<dyn Fn(Vec<J>) -> BoxFuture<'static, Result<Vec<R>, E>> + Send + Sync>;

/// The batches of one connection; see the module doc.
pub(super) struct GroupCommit<J, R, E> {
    state: Mutex<State<J, R, E>>,
    run: Runner<J, R, E>,
    max_batch: usize,
    /// What a caller gets when its batch ended without an answer (the runner panicked).
    lost: fn() -> E,
}

struct State<J, R, E> {
    queue: Vec<(J, oneshot::Sender<Result<R, E>>)>,
    /// Whether the task that sends batches is running.
    running: bool,
}

impl<J, R, E> GroupCommit<J, R, E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<J, R, E>> {
        // Every critical section is a few assignments that cannot panic halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<J, R, E> std::fmt::Debug for GroupCommit<J, R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("GroupCommit")
            .field("queued", &state.queue.len())
            .field("running", &state.running)
            .finish_non_exhaustive()
    }
}

impl<J, R, E> GroupCommit<J, R, E>
where
    J: Send + 'static,
    R: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Batches of at most `max_batch` jobs, each sent by `run`.
    pub(super) fn new(run: Runner<J, R, E>, max_batch: usize, lost: fn() -> E) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: Vec::new(),
                running: false,
            }),
            run,
            max_batch: max_batch.max(1),
            lost,
        })
    }

    /// Queues `job` for the next batch and waits for its result. Must be called inside a Tokio
    /// runtime (the batches run in a task of their own).
    ///
    /// # Errors
    /// The batch's error, or `lost()` if the batch ended without an answer.
    pub(super) async fn submit(self: &Arc<Self>, job: J) -> Result<R, E> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.queue.push((job, answer));
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.send_batches().await }.in_current_span());
        }
        answered.await.unwrap_or_else(|_dropped| Err((self.lost)()))
    }

    /// Sends batches until the queue is empty.
    async fn send_batches(self: Arc<Self>) {
        // However this task ends (a panic in `run`, the runtime shutting down), the next
        // submit starts another, and the jobs still queued are answered `lost()`.
        let mut running = Running {
            commits: &self,
            ended: false,
        };
        loop {
            let batch: Vec<_> = {
                let mut state = self.lock();
                if state.queue.is_empty() {
                    // From here a submit starts another task, which the guard must leave be.
                    state.running = false;
                    running.ended = true;
                    return;
                }
                let n = state.queue.len().min(self.max_batch);
                state.queue.drain(..n).collect()
            };
            let (jobs, answers): (Vec<J>, Vec<_>) = batch.into_iter().unzip();
            match (self.run)(jobs).await {
                Ok(results) => {
                    // A runner that answered fewer results than jobs leaves the rest `lost()`.
                    for (answer, result) in answers.into_iter().zip(results) {
                        let _gave_up = answer.send(Ok(result));
                    }
                }
                Err(error) => {
                    for answer in answers {
                        let _gave_up = answer.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

/// Marks the batch task stopped, dropping what is still queued, when the task ends without
/// emptying the queue.
struct Running<'a, J, R, E> {
    commits: &'a GroupCommit<J, R, E>,
    /// Set when the task ended normally: nothing to undo.
    ended: bool,
}

impl<J, R, E> Drop for Running<'_, J, R, E> {
    fn drop(&mut self) {
        if !self.ended {
            let mut state = self.commits.lock();
            state.running = false;
            state.queue.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures_util::FutureExt as _;

    use super::*;

    type Commits = Arc<GroupCommit<u32, u32, String>>;

    fn lost() -> String {
        "lost".to_owned()
    }

    /// Batches that take `delay` and answer each job doubled; records each batch's jobs.
    fn doubling(delay: Duration) -> (Commits, Arc<Mutex<Vec<Vec<u32>>>>) {
        let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = Arc::clone(&batches);
        let run: Runner<u32, u32, String> = Box::new(move |jobs| {
            seen.lock().unwrap().push(jobs.clone());
            async move {
                tokio::time::sleep(delay).await;
                Ok(jobs.iter().map(|j| j * 2).collect())
            }
            .boxed()
        });
        (GroupCommit::new(run, 3, lost), batches)
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_that_arrive_during_a_batch_go_together_in_the_next() {
        let (commits, batches) = doubling(Duration::from_millis(500));
        let mut callers = Vec::new();
        for job in 1..=5 {
            let commits = Arc::clone(&commits);
            callers.push(tokio::spawn(async move { commits.submit(job).await }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut results = Vec::new();
        for caller in callers {
            results.push(caller.await.unwrap());
        }
        assert_eq!(results, [Ok(2), Ok(4), Ok(6), Ok(8), Ok(10)]);
        // One batch at a time: [1], then those that came meanwhile, at most three a batch.
        assert_eq!(*batches.lock().unwrap(), [vec![1], vec![2, 3, 4], vec![5]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_stops_neither_its_job_nor_the_others() {
        let (commits, batches) = doubling(Duration::from_millis(500));
        let gave_up = tokio::time::timeout(Duration::from_millis(100), commits.submit(1)).await;
        assert!(gave_up.is_err());
        assert_eq!(commits.submit(2).await, Ok(4));
        assert_eq!(*batches.lock().unwrap(), [vec![1], vec![2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_fails_fails_each_of_its_jobs_and_the_next_batch_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let run: Runner<u32, u32, String> = Box::new(move |jobs| {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if call == 0 {
                    Err("connection lost".to_owned())
                } else {
                    Ok(jobs)
                }
            }
            .boxed()
        });
        let commits = GroupCommit::new(run, 10, lost);
        let first = tokio::spawn({
            let commits = Arc::clone(&commits);
            async move { commits.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(commits.submit(2).await, Ok(2));
        assert_eq!(first.await.unwrap(), Err("connection lost".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_that_panics_answers_lost_and_the_next_submit_starts_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let run: Runner<u32, u32, String> = Box::new(move |jobs| {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(call > 0, "the first batch's runner panics");
                Ok(jobs)
            }
            .boxed()
        });
        let commits = GroupCommit::new(run, 10, lost);
        assert_eq!(commits.submit(1).await, Err(lost()));
        assert_eq!(commits.submit(2).await, Ok(2));
    }
}
