//! Batch-level calls for tools and benchmarks that build and read whole
//! RecordBatch v2 batches themselves: no accumulator, no per-record work,
//! no retries. Applications want [`crate::Producer`] and
//! [`crate::Consumer`].

use std::time::Duration;

use bytes::Bytes;

use crate::client::Client;
use crate::error::ClientError;
use crate::metadata::TopicPartition;
use crate::producer::Acks;
use crate::protocol::{self, FetchEntry, FetchLimits, ProduceEntry};

/// Whole batches read from one partition.
#[derive(Debug, Clone)]
pub struct FetchedBatches {
    /// Concatenated whole batches (possibly starting before the offset
    /// asked for: a batch is never split).
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

impl Client {
    /// The partition's address; a topic the metadata cache does not know
    /// yet (just created) is looked up once more.
    async fn raw_address(&self, tp: &TopicPartition) -> Result<String, ClientError> {
        match self.partition_address(tp).await {
            Err(ClientError::UnknownTopic(_)) => {
                self.metadata(None).await?;
                self.partition_address(tp).await
            }
            other => other,
        }
    }

    /// Appends `records` (one or more whole batches) to one partition and
    /// returns the first batch's base offset (-1 with `Acks::None`, which
    /// gets no answer).
    pub async fn produce_batches(
        &self,
        tp: &TopicPartition,
        records: &[u8],
        acks: Acks,
        timeout: Duration,
    ) -> Result<i64, ClientError> {
        let address = self.raw_address(tp).await?;
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let entries = [ProduceEntry { topic: &tp.topic, partition: tp.partition, records }];
        let build = |stamp| protocol::produce(stamp, acks.as_i16(), timeout_ms, None, &entries);
        if acks == Acks::None {
            self.send_only(&address, build).await?;
            return Ok(-1);
        }
        let frame = self.request(&address, timeout + self.request_timeout(), build).await?;
        let produced = protocol::decode_produce(&frame)?;
        let part = produced
            .into_iter()
            .find(|p| p.tp == *tp)
            .ok_or_else(|| ClientError::Protocol(format!("produce response lacks {tp}")))?;
        match part.error {
            None => Ok(part.base_offset),
            Some(code) => {
                let error = ClientError::Server { code, message: part.message };
                if error.invalidates_metadata() {
                    self.invalidate_metadata();
                }
                Err(error)
            }
        }
    }

    /// Reads whole batches from one partition at `offset`, waiting up to
    /// `max_wait` for at least one byte (long polling).
    pub async fn fetch_batches(
        &self,
        tp: &TopicPartition,
        offset: i64,
        bytes_max: usize,
        max_wait: Duration,
    ) -> Result<FetchedBatches, ClientError> {
        let address = self.raw_address(tp).await?;
        let bytes_max = i32::try_from(bytes_max).unwrap_or(i32::MAX);
        let limits = FetchLimits {
            max_wait_ms: i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX),
            min_bytes: 1,
            max_bytes: bytes_max,
            read_committed: false,
        };
        let entries = [FetchEntry { tp: tp.clone(), offset, max_bytes: bytes_max, current_leader_epoch: -1 }];
        let frame = self
            .request(&address, max_wait + self.request_timeout(), |stamp| protocol::fetch(stamp, limits, &entries))
            .await?;
        let response = protocol::decode_fetch(frame)?;
        let part = response
            .partitions
            .into_iter()
            .find(|p| p.tp == *tp)
            .ok_or_else(|| ClientError::Protocol(format!("fetch response lacks {tp}")))?;
        if let Some(code) = part.error {
            let error = ClientError::Server { code, message: None };
            if error.invalidates_metadata() {
                self.invalidate_metadata();
            }
            return Err(error);
        }
        let start = part.records_offset as usize;
        let end = start + part.records_bytes as usize;
        if end > response.payload.len() {
            return Err(ClientError::Protocol(format!("fetch records {start}..{end} lie past the payload")));
        }
        Ok(FetchedBatches {
            records: response.payload.slice(start..end),
            high_watermark: part.high_watermark,
            log_start_offset: part.log_start_offset,
            log_end_offset: part.log_end_offset,
        })
    }
}
