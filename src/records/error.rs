//! Why a token record operation failed (SPEC §4: minting refuses to hand out a token whose
//! record was not stored; listing and revoking by id need the records).
//!
//! The HTTP layer answers [`RecordError::is_unavailable`] failures with 503, like a revocation
//! store that cannot be reached; nothing here picks a status.

use std::time::Duration;

use crate::redis_conn::OpenError;

/// Why a token record operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Redis refused, failed or dropped the connection.
    #[error("token records: Redis failed while trying to {operation}")]
    Redis {
        /// What we were doing.
        operation: &'static str,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("token records: Redis did not answer within {timeout:?} while trying to {operation}")]
    Timeout {
        /// What we were doing.
        operation: &'static str,
        /// The configured command timeout.
        timeout: Duration,
    },
    /// A record could not be written as JSON, or what Redis holds is not a record this
    /// version understands.
    #[error("token records: could not {operation}")]
    Encoding {
        /// What we were doing.
        operation: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The Redis URL does not parse.
    #[error("invalid token records setting `redis_url`")]
    RedisUrl(#[source] redis::RedisError),
}

impl RecordError {
    /// Whether the store cannot serve records now (unreachable, slow, or holding what this
    /// version cannot read), which the HTTP layer answers with 503, as opposed to bad
    /// settings.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Redis { .. } | Self::Timeout { .. } | Self::Encoding { .. }
        )
    }

    /// `operation` found no connection: its open failed, or took longer than `timeout`.
    pub(crate) fn connecting(operation: &'static str, error: OpenError, timeout: Duration) -> Self {
        match error {
            OpenError::Timeout => Self::Timeout { operation, timeout },
            OpenError::Redis(source) => Self::Redis { operation, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_slow_or_unreadable_store_is_unavailable() {
        let timeout = RecordError::Timeout {
            operation: "read a token record",
            timeout: Duration::from_millis(50),
        };
        let encoding = RecordError::Encoding {
            operation: "decode a token record",
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert!(timeout.is_unavailable());
        assert!(encoding.is_unavailable());
    }

    #[test]
    fn unparsable_url_is_not_unavailable() {
        let source = redis::Client::open("not a url").unwrap_err();
        assert!(!RecordError::RedisUrl(source).is_unavailable());
    }
}
