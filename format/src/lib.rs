//! Kafka's RecordBatch v2, byte for byte: the format of a batch on the
//! wire, on disk and in the client (design decision 2). A crate of its own
//! so that the client builds and reads batches without the storage engine.

pub mod batch;
pub mod compression;
pub mod limits;
pub mod varint;
