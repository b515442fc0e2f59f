//! One lazily opened, self-healing Redis connection for stores that send plain commands
//! (token records, page sessions).
//!
//! Opening never happens at start: a store built while Redis is down must not stop the
//! service, only fail its own calls (503) until Redis answers. The first call opens a
//! `ConnectionManager` within the timeout and keeps it; the manager reconnects by itself
//! after a dropped connection, and a failed open is retried by the next call.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

/// Why the connection could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis refused or the connection failed.
    Redis(redis::RedisError),
}

/// A Redis connection opened on first use.
pub(crate) struct LazyConnection {
    client: redis::Client,
    timeout: Duration,
    slot: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for LazyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the URL, which may hold a password.
        f.debug_struct("LazyConnection")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LazyConnection {
    /// A connection to `client`'s server, each command and the open bounded by `timeout`.
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            slot: Mutex::new(None),
        }
    }

    /// Another lazy connection to the same server, sharing nothing with this one.
    pub(crate) fn fresh(&self) -> Self {
        Self::new(self.client.clone(), self.timeout)
    }

    /// The connection, opened now if it is not yet.
    pub(crate) async fn get(&self) -> Result<ConnectionManager, OpenError> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_elapsed| OpenError::Timeout)?
        .map_err(OpenError::Redis)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}
