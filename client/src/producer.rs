//! `Producer`: records in, batches out, in the background.
//!
//! `send` picks the record's partition, adds it to that partition's open
//! batch in the accumulator and returns a `DeliveryFuture` at once. A
//! sender task drains batches that are full, have lingered `linger_ms`, or
//! were flushed; groups them by destination (the leader's port for the
//! owning core) into produce requests of at most `request_bytes_max`; and
//! sends each request from a task of its own, so that destinations do not
//! wait for each other. Responses deliver, retry or fail the batches.
//!
//! Memory is bounded by `buffer_bytes_max`: `send` waits for room when the
//! records not yet acknowledged take that much.

mod accumulator;
mod transaction;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spate_format::batch::{BATCH_HEADER_BYTES, Compression};
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

pub(crate) use self::accumulator::ProducerIdentity;
use self::accumulator::{Accumulator, AccumulatorConfig, ProducerBatch, RecordParts};
use crate::client::Client;
use crate::error::ClientError;
use crate::limits::{PRODUCE_PARTITION_OVERHEAD_BYTES, PRODUCE_REQUEST_OVERHEAD_BYTES};
use crate::lock;
use crate::metadata::TopicPartition;
use crate::partitioner::{Partitioner, PartitionerState};
use crate::protocol::{self, ProduceEntry, ProducedPartition};

/// When the broker acknowledges a produce request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: no response at all; offsets are reported as -1 and a lost
    /// record goes unnoticed.
    None,
    /// acks=1: after the leader's append under the topic's durability policy.
    Leader,
    /// acks=-1: after every in-sync replica has the records.
    #[default]
    All,
}

impl Acks {
    /// The protocol's value.
    pub fn as_i16(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// How long a batch that is not full waits for more records.
    pub linger_ms: u64,
    /// A batch is closed when it reaches this size. A single record larger
    /// than this travels alone in a batch of its own.
    pub batch_bytes_max: usize,
    /// The largest produce request; also bounds the largest record.
    pub request_bytes_max: usize,
    /// Bytes of records sent but not yet acknowledged; `send` waits past this.
    pub buffer_bytes_max: usize,
    /// Retries of a batch after retriable errors, within `delivery_timeout_ms`.
    pub retries: u32,
    pub retry_backoff_ms: u64,
    /// How long `send` may take to deliver a record, retries included,
    /// before its future fails with `Timeout`.
    pub delivery_timeout_ms: u64,
    pub partitioner: Partitioner,
    /// The codec each batch's records are compressed with (Kafka's
    /// compression.type): none, gzip, snappy, lz4 or zstd. `batch_bytes_max`
    /// counts records before compression.
    pub compression: Compression,
    /// The idempotent producer (Kafka's enable.idempotence, on by default
    /// as in Kafka 3.x): the broker gives the producer an id, batches carry
    /// it with a sequence number per partition, and a retried batch the
    /// broker already has is acknowledged with its original offsets instead
    /// of being appended again. Applies with `Acks::All` only (Kafka
    /// requires acks=all); with other acks it is off.
    pub enable_idempotence: bool,
    /// Kafka's transactional.id: makes this a transactional producer
    /// (`init_transactions`, then `begin_transaction` .. `send` ..
    /// `commit_transaction` or `abort_transaction`). The id survives
    /// restarts: a new producer with the same id fences the old one and
    /// ends what it left open. Requires idempotence and `Acks::All`.
    pub transactional_id: Option<String>,
    /// Kafka's transaction.timeout.ms: the coordinator aborts a
    /// transaction open longer than this.
    pub transaction_timeout_ms: i32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes_max: 1024 * 1024,
            request_bytes_max: 4 * 1024 * 1024,
            buffer_bytes_max: 64 * 1024 * 1024,
            retries: u32::MAX,
            retry_backoff_ms: 100,
            delivery_timeout_ms: 120_000,
            partitioner: Partitioner::Default,
            compression: Compression::None,
            enable_idempotence: true,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        }
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let invalid = |why: String| Err(ClientError::InvalidConfig(why));
        if self.batch_bytes_max < BATCH_HEADER_BYTES * 2 {
            return invalid(format!("batch_bytes_max {} is too small for a batch", self.batch_bytes_max));
        }
        if self.request_bytes_max < self.batch_bytes_max + PRODUCE_REQUEST_OVERHEAD_BYTES {
            return invalid(format!(
                "request_bytes_max {} cannot hold a batch of batch_bytes_max {}",
                self.request_bytes_max, self.batch_bytes_max
            ));
        }
        let buffer_bytes_limit = usize::try_from(u32::MAX).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        if self.buffer_bytes_max < self.request_bytes_max || self.buffer_bytes_max > buffer_bytes_limit {
            return invalid(format!(
                "buffer_bytes_max {} must be between request_bytes_max {} and {buffer_bytes_limit}",
                self.buffer_bytes_max, self.request_bytes_max
            ));
        }
        if self.delivery_timeout_ms == 0 {
            return invalid("delivery_timeout_ms must be positive".into());
        }
        if let Some(id) = &self.transactional_id {
            if id.is_empty() || id.len() > crate::limits::TRANSACTIONAL_ID_BYTES_MAX {
                return invalid(format!(
                    "transactional_id must be 1 to {} bytes",
                    crate::limits::TRANSACTIONAL_ID_BYTES_MAX
                ));
            }
            if !self.enable_idempotence || self.acks != Acks::All {
                return invalid("a transactional producer needs enable_idempotence and acks=all (as Kafka)".into());
            }
            if self.transaction_timeout_ms <= 0 {
                return invalid("transaction_timeout_ms must be positive".into());
            }
        }
        Ok(())
    }

    /// The largest record `send` accepts: one that fits a request alone.
    fn record_bytes_max(&self) -> usize {
        self.request_bytes_max - PRODUCE_REQUEST_OVERHEAD_BYTES - PRODUCE_PARTITION_OVERHEAD_BYTES - BATCH_HEADER_BYTES
    }
}

/// A record to send. Without a partition, the partitioner picks one; without
/// a timestamp, the time of `send` is used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord { topic: topic.into(), value: Some(value.into()), ..ProducerRecord::default() }
    }

    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    #[must_use]
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: i32,
    /// The record's offset; -1 with acks=0, which tells nothing back.
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// Resolves when the record is acknowledged, or has failed for good.
#[derive(Debug)]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The sender side only disappears if the producer's task died.
        Pin::new(&mut self.receiver).poll(cx).map(|result| result.unwrap_or(Err(ClientError::Closed)))
    }
}

/// An upper bound of a record's encoded size in a batch: every varint at
/// its widest (5 bytes, 10 for the timestamp delta) plus the bytes.
fn record_bytes_upper_bound(record: &ProducerRecord) -> usize {
    const LENGTH_AND_FIELDS_BYTES: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
    const HEADER_LENGTHS_BYTES: usize = 5 + 5;
    let key_bytes = record.key.as_ref().map_or(0, Bytes::len);
    let value_bytes = record.value.as_ref().map_or(0, Bytes::len);
    let headers_bytes: usize =
        record.headers.iter().map(|(key, value)| HEADER_LENGTHS_BYTES + key.len() + value.len()).sum();
    LENGTH_AND_FIELDS_BYTES + key_bytes + value_bytes + headers_bytes
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

struct State {
    accumulator: Accumulator,
    partitioner: PartitionerState,
}

struct Shared {
    config: ProducerConfig,
    client: Client,
    state: Mutex<State>,
    /// Wakes the sender: a batch started or closed, a response arrived, a
    /// flush or close began.
    wake: Notify,
    /// One permit per buffered byte.
    buffer: Semaphore,
    /// The accumulator's low watermark after every change, for flush.
    low_watermark: watch::Sender<u64>,
    /// A transactional producer's transaction state.
    txn: Option<transaction::TxnShared>,
}

impl Shared {
    fn publish_low_watermark(&self) {
        let low = lock(&self.state).accumulator.low_watermark();
        self.low_watermark.send_replace(low);
    }
}

/// Sends records in batches. `send` takes `&self`: share a producer
/// between tasks with an `Arc`. Dropping it sends what is buffered in the
/// background; `close` waits for that.
pub struct Producer {
    shared: Arc<Shared>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        lock(&self.shared.state).accumulator.close();
        self.shared.wake.notify_one();
    }
}

impl Producer {
    /// Starts the producer's sender task; call inside a tokio runtime.
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ClientError::InvalidConfig("Producer::new must be called inside a tokio runtime".into()))?;
        let accumulator = Accumulator::new(AccumulatorConfig {
            batch_bytes_max: config.batch_bytes_max,
            linger: Duration::from_millis(config.linger_ms),
            delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            retries: config.retries,
            retry_backoff: Duration::from_millis(config.retry_backoff_ms),
            compression: config.compression,
        });
        let mut accumulator = accumulator;
        if config.enable_idempotence && config.acks == Acks::All {
            accumulator.set_idempotent();
        }
        let txn = config.transactional_id.clone().map(transaction::TxnShared::new);
        if txn.is_some() {
            accumulator.set_transactional();
        }
        let shared = Arc::new(Shared {
            txn,
            buffer: Semaphore::new(config.buffer_bytes_max),
            config,
            client,
            state: Mutex::new(State { accumulator, partitioner: PartitionerState::new() }),
            wake: Notify::new(),
            low_watermark: watch::Sender::new(0),
        });
        let sender = runtime.spawn(run_sender(shared.clone()));
        Ok(Producer { shared, sender: Mutex::new(Some(sender)) })
    }

    /// Queues a record. Waits only for metadata (to pick a partition) and
    /// for buffer room; the returned future tells when it is delivered.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        match &self.shared.txn {
            Some(txn) => transaction::send(self, txn, record).await,
            None => self.send_now(record).await,
        }
    }

    /// `send` with the record's partition known to be in the transaction,
    /// or for a producer that is not transactional.
    async fn send_now(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let record_bytes = record_bytes_upper_bound(&record);
        let record_bytes_max = self.shared.config.record_bytes_max();
        if record_bytes > record_bytes_max {
            return Err(ClientError::RecordTooLarge { bytes: record_bytes, bytes_max: record_bytes_max });
        }
        if lock(&self.shared.state).accumulator.is_closing() {
            return Err(ClientError::Closed);
        }
        let partition_count = self.shared.client.partition_count(&record.topic).await?;
        if let Some(partition) = record.partition
            && !(0..partition_count).contains(&partition)
        {
            return Err(ClientError::UnknownPartition { topic: record.topic, partition });
        }
        // record_bytes <= record_bytes_max < buffer_bytes_max <= u32::MAX.
        let permits = u32::try_from(record_bytes)
            .map_err(|_| ClientError::RecordTooLarge { bytes: record_bytes, bytes_max: record_bytes_max })?;
        self.shared.buffer.acquire_many(permits).await.map_err(|_| ClientError::Closed)?.forget();
        let (delivery, receiver) = oneshot::channel();
        if let Err(error) = self.append(&record, record_bytes, partition_count, delivery) {
            self.shared.buffer.add_permits(record_bytes);
            return Err(error);
        }
        Ok(DeliveryFuture { receiver })
    }

    fn append(
        &self,
        record: &ProducerRecord,
        record_bytes: usize,
        partition_count: i32,
        delivery: accumulator::Delivery,
    ) -> Result<(), ClientError> {
        let headers: Vec<(&[u8], Option<&[u8]>)> =
            record.headers.iter().map(|(key, value)| (key.as_bytes(), Some(&value[..]))).collect();
        let parts = RecordParts {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            headers: &headers,
            bytes: record_bytes,
        };
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        if state.accumulator.is_closing() {
            return Err(ClientError::Closed);
        }
        let topic = record.topic.as_str();
        let partition = match record.partition {
            Some(partition) => partition,
            None => {
                let accumulator = &state.accumulator;
                let has_room = |partition| accumulator.has_room(&TopicPartition::new(topic, partition), record_bytes);
                state.partitioner.partition(self.shared.config.partitioner, topic, parts.key, partition_count, has_room)
            }
        };
        let changed = state.accumulator.append(TopicPartition::new(topic, partition), &parts, delivery, Instant::now());
        drop(guard);
        if changed {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Sends every buffered record now and waits until all records sent
    /// before this call are delivered or failed (their futures say which).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let target = lock(&self.shared.state).accumulator.flush();
        self.shared.wake.notify_one();
        let mut low_watermark = self.shared.low_watermark.subscribe();
        low_watermark.wait_for(|&low| low >= target).await.map_err(|_| ClientError::Closed)?;
        Ok(())
    }

    /// Refuses further sends, delivers what is buffered and stops the
    /// sender task.
    pub async fn close(&self) -> Result<(), ClientError> {
        lock(&self.shared.state).accumulator.close();
        self.flush().await?;
        let sender = lock(&self.sender).take();
        if let Some(sender) = sender {
            sender
                .await
                .map_err(|error| ClientError::Protocol(format!("the producer's sender task failed: {error}")))?;
        }
        Ok(())
    }
}

/// The sender task: drains ready batches and sends them until the
/// producer is closed and everything is delivered.
async fn run_sender(shared: Arc<Shared>) {
    loop {
        let (drained, finished) = {
            let mut state = lock(&shared.state);
            let drained = state.accumulator.drain(Instant::now());
            let finished = state.accumulator.is_closing() && state.accumulator.is_empty();
            (drained, finished)
        };
        if drained.released_bytes > 0 {
            shared.buffer.add_permits(drained.released_bytes);
            shared.publish_low_watermark();
        }
        if finished {
            shared.publish_low_watermark();
            return;
        }
        // A transactional producer's id comes from `init_transactions`
        // (and again after an abort), never from here.
        if drained.ready.is_empty() && shared.txn.is_none() && lock(&shared.state).accumulator.needs_producer_id() {
            init_producer_id(&shared).await;
            continue;
        }
        if !drained.ready.is_empty() {
            dispatch(&shared, drained.ready).await;
            // Routing may have completed batches (unknown topic); look again.
            continue;
        }
        let sleep = async {
            match drained.next_wakeup {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// Asks a broker for a producer id (InitProducerId); waits the retry
/// backoff after a failure, so the loop asks again (batches that wait past
/// their delivery timeout fail meanwhile).
async fn init_producer_id(shared: &Arc<Shared>) {
    let answer = shared.client.request_any(protocol::init_producer_id).await;
    match answer.and_then(|frame| protocol::decode_init_producer_id(&frame)) {
        Ok((id, epoch)) => {
            tracing::debug!(producer_id = id, epoch, "idempotent producer id");
            lock(&shared.state).accumulator.set_producer(ProducerIdentity { id, epoch });
        }
        Err(error) => {
            tracing::warn!(%error, "no producer id yet; retrying");
            tokio::time::sleep(Duration::from_millis(shared.config.retry_backoff_ms)).await;
        }
    }
}

/// Routes ready batches, groups them by destination into requests, and
/// sends each request from a task of its own.
async fn dispatch(shared: &Arc<Shared>, batches: Vec<ProducerBatch>) {
    let mut by_address: Vec<(String, Vec<ProducerBatch>)> = Vec::new();
    for batch in batches {
        match shared.client.partition_address(&batch.tp).await {
            Ok(address) => match by_address.iter_mut().find(|(known, _)| *known == address) {
                Some((_, batches)) => batches.push(batch),
                None => by_address.push((address, vec![batch])),
            },
            Err(error) => complete(shared, vec![(batch, Err(error))]),
        }
    }
    let request_bytes_max = shared.config.request_bytes_max - PRODUCE_REQUEST_OVERHEAD_BYTES;
    for (address, batches) in by_address {
        let mut request = Vec::new();
        let mut request_bytes = 0;
        for batch in batches {
            let batch_bytes = batch.bytes().len() + PRODUCE_PARTITION_OVERHEAD_BYTES;
            if !request.is_empty() && request_bytes + batch_bytes > request_bytes_max {
                tokio::spawn(send_request(shared.clone(), address.clone(), std::mem::take(&mut request)));
                request_bytes = 0;
            }
            request_bytes += batch_bytes;
            request.push(batch);
        }
        if !request.is_empty() {
            tokio::spawn(send_request(shared.clone(), address, request));
        }
    }
}

/// Sends one produce request and records each batch's outcome.
async fn send_request(shared: Arc<Shared>, address: String, batches: Vec<ProducerBatch>) {
    let client = &shared.client;
    let acks = shared.config.acks;
    let broker_timeout_ms = i32::try_from(client.config().request_timeout_ms).unwrap_or(i32::MAX);
    let entries: Vec<ProduceEntry<'_>> = batches
        .iter()
        .map(|batch| ProduceEntry { topic: &batch.tp.topic, partition: batch.tp.partition, records: batch.bytes() })
        .collect();
    let transactional_id = shared.txn.as_ref().map(|txn| txn.id.as_str());
    let build = |stamp| protocol::produce(stamp, acks.as_i16(), broker_timeout_ms, transactional_id, &entries);
    let outcomes: Vec<Result<i64, ClientError>> = if acks == Acks::None {
        let sent = client.send_only(&address, build).await;
        batches.iter().map(|_| sent.clone().map(|()| -1)).collect()
    } else {
        let answer = client
            .request(&address, client.request_timeout(), build)
            .await
            .and_then(|frame| protocol::decode_produce(&frame));
        match answer {
            Ok(results) => batches.iter().map(|batch| outcome_for(&batch.tp, &results)).collect(),
            Err(error) => batches.iter().map(|_| Err(error.clone())).collect(),
        }
    };
    drop(entries);
    if outcomes.iter().any(|outcome| outcome.as_ref().is_err_and(ClientError::invalidates_metadata)) {
        client.invalidate_metadata();
    }
    complete(&shared, batches.into_iter().zip(outcomes).collect());
}

/// The base offset the broker gave a partition, or its error.
fn outcome_for(tp: &TopicPartition, results: &[ProducedPartition]) -> Result<i64, ClientError> {
    let result = results
        .iter()
        .find(|result| &result.tp == tp)
        .ok_or_else(|| ClientError::Protocol(format!("the produce response does not mention {tp}")))?;
    if let Some(code) = result.error {
        return Err(ClientError::Server { code, message: result.message.clone() });
    }
    if result.base_offset < 0 {
        return Err(ClientError::Protocol(format!("the broker acknowledged {tp} without an offset")));
    }
    Ok(result.base_offset)
}

fn complete(shared: &Shared, outcomes: Vec<(ProducerBatch, Result<i64, ClientError>)>) {
    let now = Instant::now();
    let released: usize = {
        let mut state = lock(&shared.state);
        outcomes.into_iter().map(|(batch, outcome)| state.accumulator.complete(batch, outcome, now)).sum()
    };
    shared.buffer.add_permits(released);
    shared.publish_low_watermark();
    shared.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_bound_covers_the_encoded_record() {
        let record = ProducerRecord {
            topic: "t".into(),
            partition: None,
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from(vec![7u8; 300])),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            timestamp_ms: Some(i64::MAX),
        };
        let mut builder = spate_format::batch::BatchBuilder::new(0);
        let headers: [(&[u8], Option<&[u8]>); 1] = [(b"h", Some(b"v"))];
        builder.push(i64::MAX, Some(b"key"), Some(&[7u8; 300]), &headers);
        let encoded = builder.encoded_bytes() - BATCH_HEADER_BYTES;
        let bound = record_bytes_upper_bound(&record);
        assert!(encoded <= bound, "encoded {encoded} over bound {bound}");
        assert!(bound - encoded < 40, "the bound is not wildly loose");
    }

    #[test]
    fn configs_that_cannot_work_are_refused() {
        assert!(ProducerConfig::default().validate().is_ok());
        let tiny_requests = ProducerConfig { request_bytes_max: 1024, ..ProducerConfig::default() };
        assert!(matches!(tiny_requests.validate(), Err(ClientError::InvalidConfig(_))));
        let tiny_buffer = ProducerConfig { buffer_bytes_max: 1024, ..ProducerConfig::default() };
        assert!(matches!(tiny_buffer.validate(), Err(ClientError::InvalidConfig(_))));
        let tiny_batches = ProducerConfig { batch_bytes_max: 10, ..ProducerConfig::default() };
        assert!(matches!(tiny_batches.validate(), Err(ClientError::InvalidConfig(_))));
    }

    #[test]
    fn a_partition_missing_from_the_response_or_without_offset_is_a_protocol_error() {
        let results = vec![
            ProducedPartition { tp: TopicPartition::new("t", 0), error: None, base_offset: 42, message: None },
            ProducedPartition { tp: TopicPartition::new("t", 1), error: None, base_offset: -1, message: None },
            ProducedPartition {
                tp: TopicPartition::new("t", 2),
                error: Some(spate_flatbuf::proto::ErrorCode::MessageTooLarge),
                base_offset: -1,
                message: Some("too big".into()),
            },
        ];
        assert_eq!(outcome_for(&TopicPartition::new("t", 0), &results).ok(), Some(42));
        assert!(matches!(outcome_for(&TopicPartition::new("t", 1), &results), Err(ClientError::Protocol(_))));
        assert!(matches!(outcome_for(&TopicPartition::new("t", 2), &results), Err(ClientError::Server { .. })));
        assert!(matches!(outcome_for(&TopicPartition::new("t", 3), &results), Err(ClientError::Protocol(_))));
    }
}
