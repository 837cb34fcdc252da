//! Spate's cluster metadata controller: a Raft-replicated metadata log.
//!
//! Broker registrations and liveness, topics, replica assignments, leaders,
//! ISRs and their epochs are records in a log replicated by raft-rs, as
//! Kafka's KRaft does. Every broker runs a controller node (combined mode);
//! the Raft leader is the active controller and decides, the others apply.
//! See README.md.

pub mod acl;
pub mod controller;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
mod log_store;
pub mod metadata;
mod quorum;
mod raft_log;
mod storage;
mod transport;

pub use controller::{
    BrokerEndpoints, BrokerRestart, ControllerError, ControllerRequest, ControllerResponse, IP_QUOTA_KEY,
};
pub use metadata::{
    BrokerImage, KafkaEndpoint, MetadataImage, MetadataRecord, PartitionImage, QuotaEntityPart, ScramCredential,
    ScramMechanism, TopicImage,
};
pub use quorum::{Controller, QuorumConfig, QuorumError, QuorumStatus, read_image};
pub use transport::TransportTls;
