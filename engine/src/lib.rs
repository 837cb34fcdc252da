//! Spate's storage engine: Kafka RecordBatch v2 batches in O_DIRECT segment
//! files, with group commit, a tail cache and crash recovery.
//!
//! The engine knows nothing of sockets, flatbuffers or replication; see
//! ARCHITECTURE.md at the repository root.

pub mod cache;
pub mod checkpoint;
pub mod error;
pub mod index;
pub mod io;
pub mod limits;
pub mod log;
mod log_start;
pub mod producer_state;
mod recovery;
mod recovery_point;
mod segment;
pub mod txn;

pub use spate_format::{batch, varint};

pub use cache::TailCache;
pub use error::LogError;
pub use log::{
    AppendInfo, AppendTicket, CleanOutcome, CleanupPolicy, Clock, Durability, LogConfig, OffsetAbove, PartitionLog,
    ReadBound, ReadOutput,
};
pub use txn::{AbortedTxn, TxnMarker};
