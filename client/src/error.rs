//! One error type for everything the client does. Each variant is something
//! a caller can act on: retry, fix the configuration, seek, or give up.

use std::sync::Arc;

use spate_flatbuf::proto::ErrorCode;
use spate_format::batch::BatchError;

/// Why a client call failed.
///
/// `Clone` because one failure (a produce request, a broken connection) is
/// reported to every record or request that shared it; I/O errors are kept
/// behind an `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or was closed by the broker.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The broker sent something this client cannot read or did not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker refused the request with an error code.
    #[error("{}", server_text(.code, .message))]
    Server { code: ErrorCode, message: Option<String> },
    /// No answer within the request timeout, or a record was not delivered
    /// within the delivery timeout.
    #[error("timed out")]
    Timeout,
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },
    /// A fetch asked for an offset outside the partition's log, and the
    /// consumer has no `auto_offset_reset` policy.
    #[error("offset {offset} is out of range for {topic}/{partition}")]
    OffsetOutOfRange { topic: String, partition: i32, offset: i64 },
    /// The consumer has no position for an assigned partition.
    #[error("no position for {topic}/{partition}: seek first or set auto_offset_reset")]
    NoPosition { topic: String, partition: i32 },
    /// The consumer was asked about a partition it was not assigned.
    #[error("{topic}/{partition} is not assigned to this consumer")]
    NotAssigned { topic: String, partition: i32 },
    /// A single record is larger than the producer may ever send.
    #[error("the record takes up to {bytes} bytes, over the {bytes_max}-byte limit")]
    RecordTooLarge { bytes: usize, bytes_max: usize },
    /// A request is larger than the broker accepts (its handshake says how large).
    #[error("the request is {bytes} bytes, over the broker's {bytes_max}-byte frame limit")]
    RequestTooLarge { bytes: usize, bytes_max: usize },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// A transactional producer's call out of order (a send before
    /// `begin_transaction`, a commit with no transaction open, a producer
    /// that is not transactional).
    #[error("transaction state: {0}")]
    TransactionState(String),
    /// A record of the transaction failed for good, so the transaction
    /// cannot commit: abort it (Kafka's TransactionAbortableException).
    #[error("the transaction must be aborted: {0}")]
    TransactionAbortable(String),
    /// A fetched batch failed validation (CRC, framing) or cannot be read.
    #[error("bad record batch: {0}")]
    Batch(#[from] BatchError),
}

fn server_text(code: &ErrorCode, message: &Option<String>) -> String {
    let text = spate_flatbuf::error_text(*code);
    match message {
        Some(message) if !message.is_empty() => format!("broker error {code:?} ({text}): {message}"),
        _ => format!("broker error {code:?} ({text})"),
    }
}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        ClientError::Io(Arc::new(error))
    }
}

impl ClientError {
    /// Whether the same request may succeed if sent again later (after a
    /// metadata refresh, a reconnect or a backoff).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Timeout => true,
            ClientError::Server { code, .. } => code_is_retriable(*code),
            _ => false,
        }
    }

    /// The broker's error code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the cached metadata may be what sent the request to the
    /// wrong place, so that it should be refreshed before a retry.
    pub(crate) fn invalidates_metadata(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Timeout => true,
            ClientError::Server { code, .. } => code_invalidates_metadata(*code),
            _ => false,
        }
    }

    pub(crate) fn server(code: ErrorCode, message: Option<&str>) -> Self {
        ClientError::Server { code, message: message.map(str::to_string) }
    }
}

/// Codes that describe a passing state of the cluster rather than a bad
/// request. `UnknownTopicOrPartition` is among them, as in Kafka, because
/// metadata lags right after a topic is created; `StorageError` too, because
/// leadership moves away from a failed log in a replicated cluster.
///
/// The replication codes: a leader that moved (`NotLeaderOrFollower`), a
/// partition between leaders (`LeaderNotAvailable`), leader epochs that
/// disagree (`FencedLeaderEpoch`, `UnknownLeaderEpoch`), a controller
/// quorum without a leader (`NotController`), and an in-sync replica set
/// too small for acks=all (`NotEnoughReplicas`: nothing was appended).
/// `NotEnoughReplicasAfterAppend` is retriable too, as in Kafka: the batch
/// was appended but may not survive a failover. An idempotent producer's
/// retry carries the same producer id, epoch and sequence, so the broker
/// answers it with the original offsets; without idempotence the retry may
/// append the records a second time.
pub(crate) fn code_is_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeaderOrFollower
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::RequestTimedOut
            | ErrorCode::Throttled
            | ErrorCode::BrokerShuttingDown
            | ErrorCode::NotReady
            | ErrorCode::StorageError
            | ErrorCode::ProducerIdsUnavailable
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotController
            | ErrorCode::ConcurrentTransactions
    )
}

/// Codes after which the partition may have a new leader, leader epoch or
/// shard (or the controller moved), so that metadata is refreshed before
/// the retry. Not the `NotEnoughReplicas` pair: the leader is right, its
/// followers are behind.
pub(crate) fn code_invalidates_metadata(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeaderOrFollower
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::BrokerShuttingDown
            | ErrorCode::StorageError
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotController
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_errors_are_the_transient_ones() {
        assert!(ClientError::Timeout.is_retriable());
        assert!(ClientError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).is_retriable());
        assert!(ClientError::server(ErrorCode::NotLeaderOrFollower, None).is_retriable());
        assert!(!ClientError::server(ErrorCode::CorruptMessage, None).is_retriable());
        assert!(!ClientError::server(ErrorCode::TopicAlreadyExists, None).is_retriable());
        assert!(!ClientError::Protocol("bad".into()).is_retriable());
        assert!(!ClientError::Closed.is_retriable());
    }

    #[test]
    fn replication_errors_are_retriable_and_those_of_a_moved_leader_refresh_metadata() {
        for code in [
            ErrorCode::NotLeaderOrFollower,
            ErrorCode::LeaderNotAvailable,
            ErrorCode::FencedLeaderEpoch,
            ErrorCode::UnknownLeaderEpoch,
            ErrorCode::NotController,
            ErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(code_is_retriable(code), "{code:?}");
            assert!(code_invalidates_metadata(code), "{code:?}");
        }
        for code in [ErrorCode::NotEnoughReplicas, ErrorCode::NotEnoughReplicasAfterAppend] {
            assert!(code_is_retriable(code), "{code:?}");
            assert!(!code_invalidates_metadata(code), "{code:?}: the leader has not moved");
        }
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let error = ClientError::from(std::io::Error::from(kind));
            assert!(error.is_retriable() && error.invalidates_metadata(), "{kind:?}");
        }
        for code in [ErrorCode::OutOfOrderSequence, ErrorCode::InvalidProducerEpoch, ErrorCode::CorruptMessage] {
            assert!(!code_is_retriable(code), "{code:?}");
        }
    }

    #[test]
    fn server_errors_read_as_one_line_with_code_and_message() {
        let error = ClientError::server(ErrorCode::TopicAlreadyExists, Some("orders exists"));
        assert_eq!(error.to_string(), "broker error TopicAlreadyExists (topic already exists): orders exists");
        let bare = ClientError::server(ErrorCode::InvalidTopic, None);
        assert_eq!(bare.to_string(), "broker error InvalidTopic (invalid topic name)");
    }
}
