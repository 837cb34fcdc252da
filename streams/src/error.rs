//! What can go wrong in a topology or its runtime.

use crate::serde::SerdeError;

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// A source record's key or value could not be read.
    #[error("cannot deserialize record {topic}-{partition}@{offset}: {source}")]
    Deserialization { topic: String, partition: i32, offset: i64, source: SerdeError },
    /// A key or value could not be written (to a topic or a store).
    #[error("cannot serialize for {target}: {source}")]
    Serialization { target: String, source: SerdeError },
    /// The topology is not well formed (a name used twice, a parent that
    /// does not exist, a record type a node does not take).
    #[error("topology: {0}")]
    Topology(String),
    /// A processor asked for a store it is not connected to, or of another type.
    #[error("state store {name:?}: {reason}")]
    Store { name: String, reason: String },
    /// A task's checkpoint could not be written (reading a bad one is not
    /// an error: the stores it covers are wiped and restored instead).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Client(#[from] spate_client::ClientError),
    /// The application was closed, or failed earlier.
    #[error("streams application is not running: {0}")]
    NotRunning(String),
}
