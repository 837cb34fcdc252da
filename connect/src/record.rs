//! Records as connectors see them: Kafka Connect's ConnectRecord, with a
//! source partition and offset for sources and a Kafka offset for sinks.

use bytes::Bytes;

use crate::data::SchemaAndValue;

/// Where a source record came from in its system (a file's name, a
/// table), as Kafka's `Map<String, ?>` source partition.
pub type SourcePartition = serde_json::Map<String, serde_json::Value>;
/// How far a source has read in that partition (a file position, a row
/// id), as Kafka's source offset.
pub type SourceOffset = serde_json::Map<String, serde_json::Value>;

/// A record header; the value passes through as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// Kafka Connect's ConnectRecord.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRecord {
    pub topic: String,
    /// None: the producer's partitioner chooses (by key, else sticky).
    pub kafka_partition: Option<i32>,
    pub key: SchemaAndValue,
    pub value: SchemaAndValue,
    /// Milliseconds since the epoch; None: the time it is sent.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<Header>,
}

impl ConnectRecord {
    pub fn new(topic: impl Into<String>, key: SchemaAndValue, value: SchemaAndValue) -> ConnectRecord {
        ConnectRecord {
            topic: topic.into(),
            kafka_partition: None,
            key,
            value,
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }
}

/// A record a source task polled, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// None for a source that cannot resume (stdin): no offset is stored.
    pub source_partition: Option<SourcePartition>,
    pub source_offset: Option<SourceOffset>,
    pub record: ConnectRecord,
}

/// A record a sink task is given, read from `topic`/`kafka_partition` at
/// `kafka_offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    pub record: ConnectRecord,
    pub kafka_offset: i64,
}
