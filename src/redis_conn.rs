//! One lazily opened, self-healing Redis connection for stores that send plain commands
//! (token records, page sessions, usage).
//!
//! Opening never happens at start: a store built while Redis is down must not stop the
//! service, only fail its own calls (503) until Redis answers. The first call opens a
//! `ConnectionManager` within the timeout and keeps it; the manager reconnects by itself
//! after a dropped connection, and a failed open is retried by the next call. Calls that
//! arrive during an open wait for that one, and a call dropped meanwhile does not cancel it
//! ([`slot::ConnectionSlot`]).
//!
//! Failover: the connection goes to the primary its [`RedisTarget`] names. Each call asks the
//! target (which answers from its cache until told the primary is lost), and a primary at
//! another address replaces the connection. Callers pass each command's result through
//! [`LazyConnection::checked`], which reports a lost primary.

pub(crate) mod slot;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use self::slot::ConnectionSlot;
use crate::redis_target::{RedisTarget, is_lost_primary_error};

/// Why the connection could not be opened. `Clone`, so that every caller waiting on one open
/// gets its error.
#[derive(Debug, Clone)]
pub(crate) enum OpenError {
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis refused or the connection failed, or no primary could be found.
    Redis(redis::RedisError),
}

/// A connection handed out by [`LazyConnection::get`], with where it goes and which open it
/// came from: report a failed command on it with [`LazyConnection::checked`].
pub(crate) type Lease = slot::Opened<ConnectionManager>;

/// A Redis connection opened on first use.
pub(crate) struct LazyConnection {
    target: RedisTarget,
    timeout: Duration,
    /// The open connection and the primary address it goes to; one open at a time, which no
    /// caller's cancellation stops ([`ConnectionSlot`]).
    slot: ConnectionSlot<ConnectionManager, OpenError>,
}

impl std::fmt::Debug for LazyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The target holds the URL, which may hold a password.
        f.debug_struct("LazyConnection")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LazyConnection {
    /// A connection to `target`'s primary, each command and the open bounded by `timeout`.
    pub(crate) fn new(target: RedisTarget, timeout: Duration) -> Self {
        Self {
            target,
            timeout,
            slot: ConnectionSlot::default(),
        }
    }

    /// Another lazy connection to the same target, sharing no connection with this one.
    pub(crate) fn fresh(&self) -> Self {
        Self::new(self.target.clone(), self.timeout)
    }

    /// The connection, opened now if there is none or the primary moved.
    pub(crate) async fn get(&self) -> Result<Lease, OpenError> {
        let primary = self.target.primary().await.map_err(OpenError::Redis)?;
        let address = Arc::clone(&primary.address);
        let (target, timeout) = (self.target.clone(), self.timeout);
        let open = move || async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            let opened = tokio::time::timeout(
                timeout,
                ConnectionManager::new_with_config(primary.client, config),
            )
            .await;
            opened
                .map_err(|_elapsed| OpenError::Timeout)
                .and_then(|opened| opened.map_err(OpenError::Redis))
                .inspect_err(|_| target.forget(&primary.address))
        };
        self.slot
            .get(&address, open, || {
                OpenError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the connection open ended without an answer",
                )))
            })
            .await
    }

    /// `result` of a command on `lease`, after reporting a lost primary
    /// ([`is_lost_primary_error`]) if it shows one.
    pub(crate) fn checked<T>(
        &self,
        lease: &Lease,
        result: redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        if let Err(err) = &result
            && is_lost_primary_error(err)
        {
            self.lost(lease);
        }
        result
    }

    /// Reports a command on `lease` that found the connection lost (or the cluster slot
    /// moved): under Sentinel or Cluster the next call asks where the primary is and opens a
    /// new connection (a plain URL's manager reconnects by itself). A failure reported late,
    /// on a connection already replaced, leaves the new one and its primary alone.
    pub(crate) fn lost(&self, lease: &Lease) {
        if self.target.follows_failover() {
            self.target.forget(&lease.address);
            self.slot.forget(lease.id);
        }
    }
}
