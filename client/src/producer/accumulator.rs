//! The producer's per-partition queues of batches, with no I/O and no
//! clock of its own (every call takes `now`), so that batching, linger,
//! retries and expiry are tested directly.
//!
//! Ordering: a partition has at most one batch in flight. The next batch
//! of that partition is drained only after the first one's outcome is
//! known, and a batch that will be retried goes back to the head of its
//! queue, so records reach the log in the order they were sent.
//!
//! Idempotence: a batch gets its producer id, epoch and base sequence when
//! it is first drained (its partition's next sequence, which then moves
//! past its records), and keeps them, bytes unchanged, through every retry,
//! so the broker can drop a retried duplicate. Kafka allows up to five
//! batches in flight per partition with idempotence; one keeps this simple.
//! A sequenced batch that fails for good (an error that is not retried, or
//! its delivery timeout) is never resent; as the broker may or may not have
//! it, its partition's sequence cannot continue, so the producer drops its
//! identity and sends nothing new until it has a fresh producer id, from
//! which every partition counts from 0 (where Kafka 3.x bumps the epoch,
//! KIP-360). Batches already sequenced keep their old identity.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use std::mem::offset_of;

use bytes::{Bytes, BytesMut};
use spate_format::batch::{self, BatchBuilder, BatchHeader, Compression};
use tokio::sync::oneshot;

use crate::error::ClientError;
use crate::metadata::TopicPartition;
use crate::producer::RecordMetadata;

pub(crate) type Delivery = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// What the accumulator needs of a record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordParts<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// An upper bound of the record's encoded size, also what it holds of
    /// the producer's buffer.
    pub bytes: usize,
}

#[derive(Debug)]
struct Pending {
    delivery: Delivery,
    timestamp_ms: i64,
}

/// The limits and timings the accumulator applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccumulatorConfig {
    pub batch_bytes_max: usize,
    pub linger: Duration,
    pub delivery_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Each batch's records are compressed with this codec when it closes.
    pub compression: Compression,
}

/// One batch of one partition: open (records may join) until it is full
/// or drained, then closed with its bytes built.
#[derive(Debug)]
pub(crate) struct ProducerBatch {
    pub tp: TopicPartition,
    builder: Option<BatchBuilder>,
    bytes: Bytes,
    records: Vec<Pending>,
    /// The sequence number of its first record; flush uses it.
    first_seq: u64,
    created: Instant,
    /// When its records fail with `Timeout` if still undelivered.
    deadline: Instant,
    /// Bytes of the producer's buffer its records hold.
    buffered_bytes: usize,
    attempts: u32,
    retry_at: Option<Instant>,
    /// Carries a producer id and sequence (idempotence), fixed at its first
    /// drain.
    sequenced: bool,
}

impl ProducerBatch {
    fn new(tp: TopicPartition, first_seq: u64, base_timestamp_ms: i64, now: Instant, deadline: Instant) -> Self {
        ProducerBatch {
            tp,
            builder: Some(BatchBuilder::new(base_timestamp_ms)),
            bytes: Bytes::new(),
            records: Vec::new(),
            first_seq,
            created: now,
            deadline,
            buffered_bytes: 0,
            attempts: 0,
            retry_at: None,
            sequenced: false,
        }
    }

    fn is_open(&self) -> bool {
        self.builder.is_some()
    }

    fn encoded_bytes(&self) -> usize {
        self.builder.as_ref().map_or(self.bytes.len(), BatchBuilder::encoded_bytes)
    }

    fn push(&mut self, record: &RecordParts<'_>, delivery: Delivery) {
        debug_assert!(self.is_open());
        if let Some(builder) = self.builder.as_mut() {
            builder.push(record.timestamp_ms, record.key, record.value, record.headers);
            self.records.push(Pending { delivery, timestamp_ms: record.timestamp_ms });
            self.buffered_bytes += record.bytes;
        }
    }

    fn close(&mut self) {
        if let Some(builder) = self.builder.take() {
            self.bytes = builder.build().freeze();
        }
    }

    /// The finished batch; empty until the batch is closed (draining closes it).
    pub(crate) fn bytes(&self) -> &Bytes {
        debug_assert!(!self.is_open());
        &self.bytes
    }

    /// Writes the idempotent producer's fields into the built batch and
    /// reseals its CRC (they lie inside it). The bytes are not shared yet,
    /// so this normally reuses their buffer.
    fn stamp_producer(&mut self, producer: ProducerIdentity, base_sequence: i32) {
        let bytes = std::mem::take(&mut self.bytes);
        let mut bytes = bytes.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let fields = [
            (offset_of!(BatchHeader, producer_id), &producer.id.to_be_bytes()[..]),
            (offset_of!(BatchHeader, producer_epoch), &producer.epoch.to_be_bytes()[..]),
            (offset_of!(BatchHeader, base_sequence), &base_sequence.to_be_bytes()[..]),
        ];
        for (at, value) in fields {
            bytes[at..at + value.len()].copy_from_slice(value);
        }
        // The batch was built whole just before; its header is there.
        let _crc = batch::write_crc(&mut bytes);
        self.bytes = bytes.freeze();
        self.sequenced = true;
    }

    #[cfg(test)]
    pub(crate) fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Tells every record its offset (base + index; -1 throughout for acks=0).
    fn deliver(self, base_offset: i64) {
        for (index, pending) in self.records.into_iter().enumerate() {
            let offset = if base_offset < 0 { -1 } else { base_offset + i64::try_from(index).unwrap_or(i64::MAX) };
            let metadata = RecordMetadata {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                offset,
                timestamp_ms: pending.timestamp_ms,
            };
            // The sender may have dropped its future; nothing to tell then.
            let _ = pending.delivery.send(Ok(metadata));
        }
    }

    fn fail(self, error: &ClientError) {
        for pending in self.records {
            let _ = pending.delivery.send(Err(error.clone()));
        }
    }
}

/// The broker-given identity of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerIdentity {
    pub id: i64,
    pub epoch: i16,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    batches: VecDeque<ProducerBatch>,
    in_flight: bool,
}

/// What a drain found.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Batches to send now, at most one per partition.
    pub ready: Vec<ProducerBatch>,
    /// When the next batch becomes ready or expires, if one waits.
    pub next_wakeup: Option<Instant>,
    /// Buffer bytes freed by batches that expired.
    pub released_bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Accumulator {
    config: AccumulatorConfig,
    queues: BTreeMap<TopicPartition, PartitionQueue>,
    next_seq: u64,
    /// The first sequence number of every batch not yet completed.
    incomplete: BTreeSet<u64>,
    /// Batches starting below this are sent without waiting for linger.
    flush_target: u64,
    closing: bool,
    /// Batches carry producer ids and sequences.
    idempotent: bool,
    /// None until InitProducerId answers, and again after a sequenced batch
    /// failed for good.
    producer: Option<ProducerIdentity>,
    /// The next base sequence per partition under `producer`.
    sequences: BTreeMap<TopicPartition, i32>,
    /// Batches are transactional (a transactional producer's).
    transactional: bool,
    /// Batches that failed for good (expired or refused), ever: a
    /// transaction with a failed batch must not commit.
    failed_batches: u64,
}

impl Accumulator {
    pub(crate) fn new(config: AccumulatorConfig) -> Self {
        Accumulator {
            config,
            queues: BTreeMap::new(),
            next_seq: 0,
            incomplete: BTreeSet::new(),
            flush_target: 0,
            closing: false,
            idempotent: false,
            producer: None,
            sequences: BTreeMap::new(),
            transactional: false,
            failed_batches: 0,
        }
    }

    /// Makes batches transactional (before the first append); implies
    /// idempotence, as in Kafka.
    pub(crate) fn set_transactional(&mut self) {
        self.idempotent = true;
        self.transactional = true;
    }

    /// How many batches have failed for good so far.
    pub(crate) fn failed_batches(&self) -> u64 {
        self.failed_batches
    }

    /// Whether the producer's identity is gone (a sequenced batch failed
    /// for good) and new batches wait for a new one.
    pub(crate) fn lost_identity(&self) -> bool {
        self.producer.is_none()
    }

    /// Turns idempotence on (before the first append).
    pub(crate) fn set_idempotent(&mut self) {
        self.idempotent = true;
    }

    /// Whether the sender must get a producer id before anything drains.
    pub(crate) fn needs_producer_id(&self) -> bool {
        self.idempotent && self.producer.is_none() && self.queues.values().any(|queue| !queue.batches.is_empty())
    }

    /// A fresh identity: every partition counts from sequence 0.
    pub(crate) fn set_producer(&mut self, producer: ProducerIdentity) {
        self.producer = Some(producer);
        self.sequences.clear();
    }

    /// A sequenced batch failed for good: new batches wait for a new id.
    fn drop_identity(&mut self, batch: &ProducerBatch) {
        if batch.sequenced && self.producer.is_some() {
            tracing::warn!(tp = %batch.tp, "a sequenced batch failed; the producer takes a new producer id");
            self.producer = None;
            self.sequences.clear();
        }
    }

    /// Whether the partition's open batch can take `record_bytes` more.
    pub(crate) fn has_room(&self, tp: &TopicPartition, record_bytes: usize) -> bool {
        let last = self.queues.get(tp).and_then(|queue| queue.batches.back());
        last.is_some_and(|batch| batch.is_open() && batch.encoded_bytes() + record_bytes <= self.config.batch_bytes_max)
    }

    /// Adds a record to its partition's open batch, closing that batch and
    /// starting another when the record would not fit. Returns true when
    /// the sender should look again: a batch was started (its linger timer
    /// begins) or closed (it is ready).
    pub(crate) fn append(
        &mut self,
        tp: TopicPartition,
        record: &RecordParts<'_>,
        delivery: Delivery,
        now: Instant,
    ) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch_bytes_max = self.config.batch_bytes_max;
        let fits = self.has_room(&tp, record.bytes);
        let queue = self.queues.entry(tp.clone()).or_default();
        let mut changed = false;
        if !fits {
            if let Some(last) = queue.batches.back_mut() {
                last.close();
            }
            let deadline = now + self.config.delivery_timeout;
            let mut batch = ProducerBatch::new(tp, seq, record.timestamp_ms, now, deadline);
            let transactional = self.transactional;
            batch.builder = batch.builder.take().map(|builder| {
                let builder = builder.compression(self.config.compression);
                if transactional { builder.transactional() } else { builder }
            });
            queue.batches.push_back(batch);
            self.incomplete.insert(seq);
            changed = true;
        }
        let Some(batch) = queue.batches.back_mut() else { return changed };
        batch.push(record, delivery);
        if batch.encoded_bytes() >= batch_bytes_max {
            batch.close();
            changed = true;
        }
        changed
    }

    /// When the head batch of a queue may be sent.
    fn ready_at(&self, batch: &ProducerBatch) -> Instant {
        if let Some(retry_at) = batch.retry_at {
            return retry_at;
        }
        if !batch.is_open() || self.closing || batch.first_seq < self.flush_target {
            return batch.created;
        }
        batch.created + self.config.linger
    }

    /// Fails batches past their delivery deadline and takes every ready
    /// head batch of a partition with nothing in flight.
    pub(crate) fn drain(&mut self, now: Instant) -> Drained {
        let mut drained = Drained::default();
        let mut ready_times = Vec::new();
        for queue in self.queues.values_mut() {
            let (expired, kept): (VecDeque<_>, VecDeque<_>) =
                queue.batches.drain(..).partition(|batch| batch.deadline <= now);
            queue.batches = kept;
            for batch in expired {
                drained.released_bytes += batch.buffered_bytes;
                self.incomplete.remove(&batch.first_seq);
                if batch.sequenced && self.producer.is_some() {
                    tracing::warn!(tp = %batch.tp, "a sequenced batch expired; the producer takes a new producer id");
                    self.producer = None;
                    self.sequences.clear();
                }
                self.failed_batches += 1;
                batch.fail(&ClientError::Timeout);
            }
            for batch in &queue.batches {
                drained.next_wakeup = earliest(drained.next_wakeup, batch.deadline);
            }
        }
        for (tp, queue) in &self.queues {
            if let Some(head) = queue.batches.front()
                && !queue.in_flight
            {
                ready_times.push((tp.clone(), self.ready_at(head)));
            }
        }
        let waits_for_identity = self.idempotent && self.producer.is_none();
        for (tp, ready_at) in ready_times {
            if ready_at > now {
                drained.next_wakeup = earliest(drained.next_wakeup, ready_at);
                continue;
            }
            let head_sequenced =
                self.queues.get(&tp).and_then(|queue| queue.batches.front()).is_some_and(|b| b.sequenced);
            if waits_for_identity && !head_sequenced {
                continue;
            }
            if let Some(queue) = self.queues.get_mut(&tp)
                && let Some(mut batch) = queue.batches.pop_front()
            {
                batch.close();
                if self.idempotent
                    && !batch.sequenced
                    && let Some(producer) = self.producer
                {
                    let next = self.sequences.entry(tp.clone()).or_insert(0);
                    let count = i32::try_from(batch.records.len()).unwrap_or(i32::MAX);
                    batch.stamp_producer(producer, *next);
                    *next = increment_sequence(*next, count);
                }
                batch.attempts = batch.attempts.saturating_add(1);
                queue.in_flight = true;
                drained.ready.push(batch);
            }
        }
        self.queues.retain(|_, queue| queue.in_flight || !queue.batches.is_empty());
        drained
    }

    /// Records the outcome of a drained batch: delivers it, puts it back at
    /// the head of its queue for a retry, or fails it. Returns the buffer
    /// bytes freed.
    pub(crate) fn complete(&mut self, batch: ProducerBatch, outcome: Result<i64, ClientError>, now: Instant) -> usize {
        let queue = self.queues.entry(batch.tp.clone()).or_default();
        debug_assert!(queue.in_flight);
        queue.in_flight = false;
        match outcome {
            Ok(base_offset) => {
                let released = batch.buffered_bytes;
                self.incomplete.remove(&batch.first_seq);
                batch.deliver(base_offset);
                released
            }
            Err(error) if error.is_retriable() && batch.attempts <= self.config.retries && now < batch.deadline => {
                tracing::debug!(tp = %batch.tp, attempts = batch.attempts, %error, "retrying produce");
                let mut batch = batch;
                batch.retry_at = Some(now + self.config.retry_backoff);
                queue.batches.push_front(batch);
                0
            }
            Err(error) => {
                let error = if error.is_retriable() && now >= batch.deadline { ClientError::Timeout } else { error };
                self.drop_identity(&batch);
                self.failed_batches += 1;
                let released = batch.buffered_bytes;
                self.incomplete.remove(&batch.first_seq);
                batch.fail(&error);
                released
            }
        }
    }

    /// Makes every batch holding a record sent so far ready at once, and
    /// returns the sequence number `low_watermark` must reach for all of
    /// them to be complete.
    pub(crate) fn flush(&mut self) -> u64 {
        self.flush_target = self.next_seq;
        self.next_seq
    }

    /// Every record below this sequence number is delivered or failed.
    pub(crate) fn low_watermark(&self) -> u64 {
        self.incomplete.first().copied().unwrap_or(self.next_seq)
    }

    /// From now on nothing lingers; the sender stops once all is done.
    pub(crate) fn close(&mut self) {
        self.closing = true;
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Nothing queued and nothing in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.queues.values().all(|queue| !queue.in_flight && queue.batches.is_empty())
    }
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: wraps after i32::MAX.
fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment { increment - (i32::MAX - sequence) - 1 } else { sequence + increment }
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |current| current.min(candidate)))
}

#[cfg(test)]
mod tests {
    use spate_flatbuf::proto::ErrorCode;
    use spate_format::batch;

    use super::*;

    type Receiver = oneshot::Receiver<Result<RecordMetadata, ClientError>>;

    const MS: Duration = Duration::from_millis(1);

    fn config(batch_bytes_max: usize) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_bytes_max,
            linger: 5 * MS,
            delivery_timeout: 1000 * MS,
            retries: 3,
            retry_backoff: 100 * MS,
            compression: Compression::None,
        }
    }

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("t", partition)
    }

    /// Appends a record whose value is `value` and returns its receiver.
    fn append(accumulator: &mut Accumulator, partition: i32, value: &str, now: Instant) -> Receiver {
        let (delivery, receiver) = oneshot::channel();
        let record = RecordParts {
            timestamp_ms: 1,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
            bytes: 20 + value.len(),
        };
        accumulator.append(tp(partition), &record, delivery, now);
        receiver
    }

    fn offset(receiver: &mut Receiver) -> Option<i64> {
        match receiver.try_recv() {
            Ok(Ok(metadata)) => Some(metadata.offset),
            _ => None,
        }
    }

    fn values(batch: &ProducerBatch) -> Vec<String> {
        batch::records(batch.bytes())
            .expect("a whole batch")
            .map(|record| String::from_utf8_lossy(record.expect("valid").value.unwrap_or_default()).into_owned())
            .collect()
    }

    #[test]
    fn a_batch_closes_at_batch_bytes_max_and_records_keep_their_order() {
        let now = Instant::now();
        let batch_bytes_max = 200;
        let mut accumulator = Accumulator::new(config(batch_bytes_max));
        let mut receivers: Vec<Receiver> =
            (0..20).map(|i| append(&mut accumulator, 0, &format!("value-{i:02}"), now)).collect();
        let mut sent = Vec::new();
        let mut base_offset = 100;
        // One batch in flight per partition: drain, complete, drain again.
        loop {
            let drained = accumulator.drain(now + 10 * MS);
            assert!(drained.ready.len() <= 1);
            let Some(batch) = drained.ready.into_iter().next() else { break };
            assert!(batch.bytes().len() <= batch_bytes_max, "batch of {} bytes", batch.bytes().len());
            assert!(batch::validate_produce(batch.bytes(), batch_bytes_max).is_ok());
            sent.extend(values(&batch));
            let count = i64::try_from(batch.record_count()).expect("small");
            accumulator.complete(batch, Ok(base_offset), now + 10 * MS);
            base_offset += count;
        }
        let expected: Vec<String> = (0..20).map(|i| format!("value-{i:02}")).collect();
        assert_eq!(sent, expected);
        let offsets: Vec<Option<i64>> = receivers.iter_mut().map(offset).collect();
        assert_eq!(offsets, (100..120).map(Some).collect::<Vec<_>>());
        assert!(accumulator.is_empty());
        assert_eq!(accumulator.low_watermark(), 20);
    }

    #[test]
    fn an_open_batch_waits_for_linger_unless_flushed() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(1 << 20));
        let _first = append(&mut accumulator, 0, "a", now);
        let drained = accumulator.drain(now + MS);
        assert!(drained.ready.is_empty());
        assert_eq!(drained.next_wakeup, Some(now + 5 * MS));
        assert_eq!(accumulator.drain(now + 5 * MS).ready.len(), 1);

        let _second = append(&mut accumulator, 1, "b", now);
        let target = accumulator.flush();
        assert_eq!(accumulator.drain(now).ready.len(), 1, "flush skips linger");
        assert!(accumulator.low_watermark() < target, "not complete until acknowledged");
    }

    #[test]
    fn only_one_batch_per_partition_is_in_flight() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(100));
        let _receivers: Vec<Receiver> =
            (0..10).map(|i| append(&mut accumulator, 0, &format!("{i:040}"), now)).collect();
        let _other = append(&mut accumulator, 1, "x", now);
        let first = accumulator.drain(now + 10 * MS);
        assert_eq!(first.ready.len(), 2, "one per partition");
        assert!(accumulator.drain(now + 10 * MS).ready.is_empty(), "partition 0 has one in flight");
        let mut batches = first.ready.into_iter();
        let batch = batches.next().expect("partition 0");
        assert_eq!(batch.tp, tp(0));
        accumulator.complete(batch, Ok(0), now + 10 * MS);
        assert_eq!(accumulator.drain(now + 10 * MS).ready.len(), 1, "the next batch of partition 0");
    }

    #[test]
    fn a_retried_batch_goes_before_later_batches_after_the_backoff() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(100));
        let mut receivers: Vec<Receiver> =
            (0..6).map(|i| append(&mut accumulator, 0, &format!("{i:040}"), now)).collect();
        let batch = accumulator.drain(now).ready.pop().expect("a full batch is ready");
        let first_values = values(&batch);
        let not_leader = ClientError::server(ErrorCode::NotLeaderOrFollower, None);
        assert_eq!(accumulator.complete(batch, Err(not_leader), now), 0, "a retried batch keeps its buffer");
        let drained = accumulator.drain(now + 50 * MS);
        assert!(drained.ready.is_empty(), "nothing overtakes the batch waiting out its backoff");
        assert_eq!(drained.next_wakeup, Some(now + 100 * MS));
        let retried = accumulator.drain(now + 100 * MS).ready.pop().expect("retried");
        assert_eq!(values(&retried), first_values);
        let count = retried.record_count();
        accumulator.complete(retried, Ok(7), now + 100 * MS);
        for (index, receiver) in receivers.iter_mut().take(count).enumerate() {
            assert_eq!(offset(receiver), Some(7 + i64::try_from(index).expect("small")));
        }
    }

    #[test]
    fn a_fatal_error_fails_every_record_of_the_batch() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(1 << 20));
        let mut receivers = [append(&mut accumulator, 0, "a", now), append(&mut accumulator, 0, "b", now)];
        let batch = accumulator.drain(now + 5 * MS).ready.pop().expect("ready after linger");
        let released = accumulator.complete(batch, Err(ClientError::server(ErrorCode::CorruptMessage, None)), now);
        assert_eq!(released, 2 * 21);
        for receiver in &mut receivers {
            assert!(matches!(
                receiver.try_recv(),
                Ok(Err(ClientError::Server { code: ErrorCode::CorruptMessage, .. }))
            ));
        }
        assert!(accumulator.is_empty());
    }

    #[test]
    fn undelivered_records_time_out_at_the_delivery_deadline() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(1 << 20));
        let mut waiting = append(&mut accumulator, 0, "a", now);
        let batch = accumulator.drain(now + 5 * MS).ready.pop().expect("ready");
        // Retriable, but the deadline has passed: Timeout.
        accumulator.complete(batch, Err(ClientError::Timeout), now + 1000 * MS);
        assert!(matches!(waiting.try_recv(), Ok(Err(ClientError::Timeout))));

        let mut queued = append(&mut accumulator, 1, "b", now);
        let mut in_flight_partition = accumulator.drain(now + 5 * MS);
        let batch = in_flight_partition.ready.pop().expect("ready");
        accumulator.complete(batch, Err(ClientError::Timeout), now + 10 * MS);
        let drained = accumulator.drain(now + 1000 * MS);
        assert!(drained.ready.is_empty());
        assert_eq!(drained.released_bytes, 21);
        assert!(matches!(queued.try_recv(), Ok(Err(ClientError::Timeout))));
        assert!(accumulator.is_empty());
    }

    fn producer_fields(batch: &ProducerBatch) -> (i64, i16, i32) {
        let info = batch::validate_produce(batch.bytes(), 1 << 20).expect("a valid batch, CRC included");
        (info.producer_id, info.producer_epoch, info.base_sequence)
    }

    #[test]
    fn idempotent_batches_are_sequenced_at_first_drain_and_keep_it_through_retries() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(100));
        accumulator.set_idempotent();
        let _receivers: Vec<Receiver> = (0..6).map(|i| append(&mut accumulator, 0, &format!("{i:040}"), now)).collect();
        assert!(accumulator.needs_producer_id());
        assert!(accumulator.drain(now + 10 * MS).ready.is_empty(), "nothing goes out without a producer id");
        accumulator.set_producer(ProducerIdentity { id: 42, epoch: 0 });
        let first = accumulator.drain(now + 10 * MS).ready.pop().expect("ready");
        assert_eq!(producer_fields(&first), (42, 0, 0));
        let count = i32::try_from(first.record_count()).expect("small");
        let bytes = first.bytes().clone();
        let timeout = ClientError::Timeout;
        accumulator.complete(first, Err(timeout), now + 10 * MS);
        let retried = accumulator.drain(now + 200 * MS).ready.pop().expect("retried");
        assert_eq!(retried.bytes(), &bytes, "a retry sends the same bytes, sequence included");
        accumulator.complete(retried, Ok(0), now + 200 * MS);
        let second = accumulator.drain(now + 200 * MS).ready.pop().expect("next");
        assert_eq!(producer_fields(&second), (42, 0, count));

        // A sequenced batch failing for good: the next waits for a new id
        // and starts again at 0.
        let gap = ClientError::server(ErrorCode::OutOfOrderSequence, None);
        accumulator.complete(second, Err(gap), now + 200 * MS);
        assert!(accumulator.needs_producer_id());
        assert!(accumulator.drain(now + 300 * MS).ready.is_empty());
        accumulator.set_producer(ProducerIdentity { id: 43, epoch: 0 });
        let third = accumulator.drain(now + 300 * MS).ready.pop().expect("after the new id");
        assert_eq!(producer_fields(&third), (43, 0, 0));
    }

    #[test]
    fn the_sticky_check_sees_room_only_in_an_open_batch() {
        let now = Instant::now();
        let mut accumulator = Accumulator::new(config(100));
        assert!(!accumulator.has_room(&tp(0), 10));
        let _receiver = append(&mut accumulator, 0, "a", now);
        assert!(accumulator.has_room(&tp(0), 10));
        assert!(!accumulator.has_room(&tp(0), 100));
        let _ = accumulator.drain(now + 5 * MS);
        assert!(!accumulator.has_room(&tp(0), 10), "a drained batch is closed");
    }
}
