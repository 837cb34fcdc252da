//! What can go wrong in Connect, as types a caller can act on: Kafka
//! Connect's ConfigException, DataException, NotFoundException and
//! AlreadyExistsException become variants here.

use spate_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A worker or connector configuration is missing a key, has a value
    /// of the wrong type, or names something that does not exist.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A YAML pipeline (or worker) file that does not map onto Kafka's
    /// keys.
    #[error("{path}: {error}")]
    PipelineFile {
        path: String,
        #[source]
        error: crate::yaml::YamlError,
    },
    /// A record that a converter cannot convert (Kafka's DataException).
    #[error("data conversion failed: {0}")]
    Data(String),
    /// A file the worker or a connector reads or writes.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The cluster refused or did not answer.
    #[error("cluster: {0}")]
    Client(#[from] ClientError),
    /// No connector (or task) of that name.
    #[error("{0}")]
    NotFound(String),
    /// A connector of that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// An HTTP server refused a batch with a 4xx other than 429 (sending
    /// it again would not help).
    #[error("{url} rejected a request of {records} records with HTTP {status}: {body}")]
    HttpRejected { url: String, status: u16, records: usize, body: String },
    /// An HTTP server did not accept a request after every retry.
    #[error("{url} did not accept a request after {attempts} attempts; last: {last}")]
    HttpUnavailable { url: String, attempts: u32, last: String },
    /// A task or connector failed for a reason of its own.
    #[error("{0}")]
    Task(String),
}

impl ConnectError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ConnectError {
        ConnectError::Io { context: context.into(), source }
    }
}

pub type Result<T, E = ConnectError> = std::result::Result<T, E>;
