//! Spate Connect: source and sink connectors and their workers over
//! spate-client, in the shape of Kafka Connect.
//!
//! - [`connector`]: the connector and task traits.
//! - [`converter`]: StringConverter, ByteArrayConverter, JsonConverter.
//! - [`file`]: FileStreamSource and FileStreamSink.
//! - [`http_sink`] and [`http_source`]: HttpSink (records to an HTTP URL)
//!   and HttpSource (a webhook receiver).
//! - [`postgres`] holds PostgresSink (records to tables: insert or
//!   upsert) and PostgresSource (incremental queries of tables).
//! - [`transforms`]: single message transforms and predicates.
//! - [`worker`]: the standalone worker (offsets in a local file),
//!   [`rest`], Kafka Connect's REST API on it, and [`standalone`], the
//!   `spate connect standalone` command.
//! - [`yaml`]: pipeline files in YAML, mapped onto Kafka's keys.

pub mod config;
pub mod connector;
pub mod converter;
pub mod data;
pub mod error;
pub mod exactly_once;
pub mod file;
pub mod http_sink;
pub mod http_source;
pub mod limits;
pub mod offsets;
pub mod pipeline;
pub mod plugins;
pub mod postgres;
pub mod props;
pub mod record;
pub mod rest;
pub mod standalone;
mod timestamp;
pub mod transforms;
pub mod worker;
pub mod yaml;

pub use error::{ConnectError, Result};
pub use props::Props;

/// The version the REST API and `connector-plugins` report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A fresh directory under the workspace's target/tmp for a unit test.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/connect-unit").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    #[allow(clippy::expect_used)]
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}
