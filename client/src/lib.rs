//! An async client for Spate's native protocol, for tokio applications.
//!
//! - [`Client`] holds the connections (one per broker port, many requests
//!   in flight on each) and the cluster metadata; it is cheap to clone.
//! - [`Admin`] creates, deletes, lists and describes topics.
//! - [`Producer`] batches records per partition and sends them in the
//!   background; each `send` returns a [`DeliveryFuture`].
//! - [`Consumer`] reads assigned partitions from positions it is told to
//!   seek to.
//!
//! Requests for a partition go to the core that owns it when
//! `ClientConfig::shard_aware` is set (design decision 6). Batches are
//! Kafka's RecordBatch v2 (`spate-format`), keys are partitioned with
//! Kafka's murmur2, so keyed data lands where a Kafka client would put it.

mod admin;
mod client;
mod config;
mod conn;
mod consumer;
mod error;
mod fetch;
mod group;
mod group_protocol;
pub mod limits;
mod metadata;
mod murmur2;
mod partitioner;
mod producer;
mod protocol;
mod raw;
pub mod scram;
pub mod security;
mod txn_protocol;

pub use admin::Admin;
pub use client::Client;
pub use config::{ClientConfig, ClientTls, SaslConfig, SaslMechanism};
pub use consumer::{AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, SeekTo};
pub use error::ClientError;
pub use group::{GroupAdmin, GroupAssignor, GroupConfig, GroupConsumer, PartitionsCallback};
pub use group_protocol::{GroupDescription, GroupListing, GroupMember, GroupPartitionOffset, MemberAssignment};
pub use metadata::{
    BrokerInfo, ClusterMetadata, ConfigEntry, PartitionDescription, PartitionInfo, TopicDescription, TopicInfo,
    TopicPartition,
};
pub use murmur2::{murmur2, partition_for_key, to_positive};
pub use partitioner::Partitioner;
pub use producer::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use raw::FetchedBatches;
/// The TLS library `ClientTls` takes a configuration of.
pub use rustls;
pub use spate_flatbuf::proto::ErrorCode;
pub use spate_flatbuf::{
    CONSUMER_OFFSETS_TOPIC, OFFSET_EARLIEST, OFFSET_LATEST, TRANSACTION_STATE_TOPIC, TopicNameError, validate_group_id,
    validate_topic_name,
};
pub use spate_format::batch::Compression;
pub use txn_protocol::ConsumerGroupMetadata;

/// Locks a std mutex, ignoring poisoning: the data behind each of this
/// crate's mutexes stays consistent between statements, and a panic in
/// one task must not take every other task down with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
