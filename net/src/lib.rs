//! Spate's broker: one pinned glommio executor (shard) per core, each
//! owning a set of partitions and accepting connections on the shared main
//! port and on a port of its own; requests for partitions a shard does not
//! own cross to the owner through its mailbox. See ARCHITECTURE.md.

mod admin;
mod broker_auth;
mod budget;
mod caps;
pub mod catalog;
mod clean_stop;
pub mod config;
mod deadline;
mod fetch_plan;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod kafka;
pub mod limits;
mod metadata;
mod metrics;
mod metrics_http;
mod native;
mod producer_ids;
mod replica;
pub mod security;
mod server;
mod shard;
mod throttle;
pub mod topic_config;
mod txn;
mod wire;

pub use config::{BrokerConfig, ConfigError, KafkaProperties, parse_durability};
pub use server::{BrokerHandle, ServeError, run, start};
