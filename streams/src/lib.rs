//! Spate Streams: a stream-processing library over spate-client, in the shape of Kafka Streams.
//!
//! Build a topology with the DSL ([`StreamsBuilder`]) or the Processor API
//! ([`Topology`], [`Processor`]), test it with [`TopologyTestDriver`], run
//! it against a broker with [`KafkaStreams`]. See README.md.

mod cache;
mod checkpoint;
mod config;
mod dsl;
mod error;
pub mod limits;
mod persistent;
mod processor;
mod runtime;
mod segmented;
mod serde;
mod store;
mod task;
mod test_driver;
mod topology;
mod window;

pub use crate::checkpoint::CheckpointError;
pub use crate::config::{DeserializationExceptionHandler, ProcessingGuarantee, StreamsConfig};
pub use crate::dsl::{
    BranchedKStream, Consumed, GlobalKTable, Grouped, KGroupedStream, KStream, KTable, Materialized, Produced,
    Repartitioned, SessionWindowedKStream, StoreType, StreamJoined, StreamsBuilder, Suppressed, TimeWindowedKStream,
    WindowedBy,
};
pub use crate::error::StreamsError;
pub use crate::processor::{Data, OutRecord, Processor, ProcessorContext, PunctuationId, PunctuationType, Record};
pub use crate::runtime::{KafkaStreams, State};
pub use crate::serde::{
    BytesSerde, I32Serde, I64Serde, JsonSerde, ListSerde, Nullable, Serde, SerdeError, SerdeRef, Serdes, StringSerde,
    U64Serde,
};
pub use crate::store::{
    KeyValueStore, KeyValueStoreSupplier, SessionStore, SessionStoreSupplier, StateStore, StoreBuilder, Stores,
    WindowStore, WindowStoreSupplier, changelog_topic,
};
pub use crate::test_driver::{TestInputTopic, TestOutputTopic, TestRecord, TopologyTestDriver};
pub use crate::topology::{SourceRecord, TimestampExtractor, Topology, TopologyDescription};
pub use crate::window::{
    JoinWindows, SessionWindows, SlidingWindows, TimeWindowedSerde, TimeWindows, Window, Windowed,
};
