//! The engine's typed errors. Every error a caller can act on has its own
//! variant; I/O errors are shared (`Arc`) because one failed write or fsync
//! fails every append waiting on it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;
use crate::producer_state::SequenceError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),

    #[error("I/O error during {op} on {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: Arc<std::io::Error> },

    /// An earlier write or fdatasync failed. The kernel may have dropped the
    /// dirty pages and a retried fsync could report success over lost data,
    /// so the log refuses every further append until it is reopened.
    #[error("log {dir} stopped accepting writes after an I/O error: {cause}")]
    Failed { dir: PathBuf, cause: Box<LogError> },

    /// Stored bytes fail validation somewhere other than a torn tail. They
    /// are never served and never truncated away silently.
    #[error("corruption in {path} at byte {position}: {reason}")]
    Corruption { path: PathBuf, position: u64, reason: String },

    #[error("offset {requested} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange { requested: i64, log_start_offset: i64, log_end_offset: i64 },

    #[error("invalid log configuration: {0}")]
    InvalidConfig(&'static str),

    /// The log is being truncated (replication repairing divergence); the
    /// append may be retried once that finishes.
    #[error("log is being truncated; retry the append")]
    Truncating,

    /// A follower was given a batch that starts below its log end: the
    /// leader and this replica disagree on where the log ends (truncate by
    /// leader epoch first).
    #[error("replicated batch at offset {base_offset} starts below the log end {log_end_offset}")]
    ReplicaOffset { base_offset: i64, log_end_offset: i64 },

    /// Too many bytes are waiting for the disk; retry after a moment.
    #[error("{pending_bytes} bytes wait for the disk, over the {limit} limit; retry the append")]
    Backpressure { pending_bytes: usize, limit: usize },

    #[error("log is closed")]
    Closed,

    /// A transaction marker from an epoch older than the producer's
    /// (Kafka's INVALID_PRODUCER_EPOCH): a deposed coordinator or a fenced
    /// producer's transaction; nothing was appended.
    #[error("marker for producer {producer_id} epoch {epoch} is fenced: the partition has seen epoch {current_epoch}")]
    InvalidProducerEpoch { producer_id: i64, epoch: i16, current_epoch: i16 },

    /// The idempotent producer's sequence rules refuse the batch (a gap, a
    /// fenced epoch); nothing of it was appended.
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LogError::Io { op, path: path.into(), source: Arc::new(source) }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, position: u64, reason: impl Into<String>) -> Self {
        LogError::Corruption { path: path.into(), position, reason: reason.into() }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
