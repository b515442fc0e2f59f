//! One `WAIT` at a time on the store's connection, and a fast 503 while replicas lag.
//!
//! `WAIT` blocks the connection it runs on until the replicas confirm or its timeout passes.
//! The store's connection is multiplexed: every revoke's write-and-`WAIT` pipeline goes down
//! the same socket, and Redis runs them in order. With replicas that do not confirm (one
//! still syncing after a failover, one stopped), each pipeline then holds the connection for
//! the whole `wait_timeout`, so revokes arriving at 50 per second queue up inside Redis, each
//! behind every earlier one's wait. A revoke that gives up at its deadline does not leave that
//! queue (its commands are already sent), so every later revoke timed out too, and the
//! connection stayed blocked for the sum of all those waits.
//!
//! The gate keeps that queue in this process instead, where a revoke that gives up leaves it:
//! one pipeline with a `WAIT` is in flight per connection. While the last `WAIT` came back
//! short of `min_replicas_acked`, a revoke that would have to queue answers 503 at once, not
//! written; the one that finds the gate free checks whether the replicas confirm again. With
//! replicas that confirm, a pipeline takes one round trip and the queue stays short.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// The gate of one connection; see the module doc.
#[derive(Debug)]
pub(super) struct WaitGate {
    /// One permit: the pipeline with a `WAIT` in flight.
    in_flight: Semaphore,
    /// Whether the last `WAIT` came back with fewer replicas than wanted.
    lagging: AtomicBool,
}

/// Why a revoke is refused at the gate, without being written.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Lagging;

impl Default for WaitGate {
    fn default() -> Self {
        Self {
            in_flight: Semaphore::new(1),
            lagging: AtomicBool::new(false),
        }
    }
}

impl WaitGate {
    /// The right to send one write-and-`WAIT` pipeline; hold it until the answer (or until
    /// giving up). Waits its turn while replicas confirm; while they lag, refuses instead of
    /// waiting, and also refuses a revoke whose turn came after the one ahead found them
    /// lagging.
    pub(super) async fn enter(&self) -> Result<SemaphorePermit<'_>, Lagging> {
        if let Ok(permit) = self.in_flight.try_acquire() {
            return Ok(permit);
        }
        if self.is_lagging() {
            return Err(Lagging);
        }
        // The semaphore is never closed.
        let permit = self.in_flight.acquire().await.map_err(|_closed| Lagging)?;
        if self.is_lagging() {
            return Err(Lagging);
        }
        Ok(permit)
    }

    /// Records what a `WAIT` answered: `acked` of `wanted` replicas.
    pub(super) fn record(&self, acked: u64, wanted: u32) {
        self.lagging
            .store(acked < u64::from(wanted), Ordering::Release);
    }

    fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn pipelines_take_turns_while_replicas_confirm() {
        let gate = Arc::new(WaitGate::default());
        let first = gate.enter().await.unwrap();
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second waits for the first");
        gate.record(1, 1);
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn while_replicas_lag_only_the_free_gate_lets_a_revoke_through() {
        let gate = WaitGate::default();
        gate.record(0, 1);
        let probe = gate
            .enter()
            .await
            .expect("the gate is free: this one checks again");
        assert_eq!(
            gate.enter().await.err(),
            Some(Lagging),
            "no queueing while lagging"
        );
        gate.record(1, 1);
        drop(probe);
        assert!(gate.enter().await.is_ok(), "replicas confirm again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoke_queued_behind_one_that_found_replicas_lagging_is_refused() {
        let gate = Arc::new(WaitGate::default());
        let first = gate.enter().await.unwrap();
        let queued = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.enter().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        gate.record(0, 1);
        drop(first);
        assert_eq!(queued.await.unwrap(), Err(Lagging));
    }

    #[tokio::test]
    async fn a_revoke_that_gives_up_in_the_queue_leaves_it() {
        let gate = WaitGate::default();
        let first = gate.enter().await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(10), gate.enter()).await;
        assert!(gave_up.is_err(), "still queued");
        drop(first);
        assert!(
            gate.enter().await.is_ok(),
            "the one that gave up holds nothing"
        );
    }
}
