//! Idempotent and transactional producers over Kafka's protocol (issue
//! 17's benchmark): the same pre-built batches as `kafka_load.rs`'s
//! producers, but each stamped, as a client stamps it, with the producer id
//! and epoch that InitProducerId gave and the partition's next sequence
//! number (and for a transaction the transactional attribute bit), its CRC
//! computed again.
//!
//! A transactional producer is one connection with its own
//! transactional.id: FindCoordinator (key type 1), InitProducerId with that
//! id, then per transaction produce requests pipelined (`in_flight`) until
//! `commit_interval` has passed since the transaction began, every produce
//! response awaited, and EndTxn (commit). Those are the steps a client
//! takes (Kafka's TransactionManager, librdkafka's txnmgr). With
//! transactions v2 (KIP-890 part 2, Java's client 4.0+) the produces are
//! Produce v12, whose leader adds the partition to the transaction, and
//! EndTxn v5 answers the next epoch, under which the next transaction's
//! batches are numbered from 0. With transactions v1 (librdkafka) each
//! transaction begins with AddPartitionsToTxn for its partition, and
//! EndTxn v3 keeps the epoch, so sequence numbers run on across
//! transactions. An idempotent producer does
//! the same without the transaction: InitProducerId without an id, then
//! produce requests pipelined until told to stop. Both run in one task per
//! connection, so the only difference between them is the transaction.
//!
//! With one broker the coordinator is the broker the connection goes to;
//! FindCoordinator is asked anyway, as a client asks, and an answer naming
//! another port is refused (a cluster would need a connection to it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse, ProducerId,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use spate_format::batch::{self, BatchHeader};
use tokio::io::{AsyncWriteExt, BufReader};

use super::kafka_load::{
    self, Endpoint, KafkaLoadError, PRODUCE_VERSION, Result, decode, encode_body, encode_prefix, parse_produce,
    read_frame, response_body,
};
use super::load::{Counters, LATENCY_MAX_US, histogram};
use super::tls::KafkaStream;

/// FindCoordinator v4 is the first that takes a list of keys (KIP-699);
/// Spate serves 0..=6, Apache Kafka 4.4 serves 4..=6.
pub const FIND_COORDINATOR_VERSION: i16 = 4;
/// InitProducerId v4 is flexible and answers PRODUCER_FENCED (KIP-588);
/// Spate and Apache Kafka 4.4 serve 0..=5.
pub const INIT_PRODUCER_ID_VERSION: i16 = 4;
/// AddPartitionsToTxn v3 and EndTxn v3 are the last versions of
/// transactions v1 (v4+ of the first is for brokers).
pub const ADD_PARTITIONS_TO_TXN_VERSION: i16 = 3;
pub const END_TXN_VERSION: i16 = 3;
/// Transactions v2 (KIP-890 part 2): Produce v12 (the same fields as v9)
/// and EndTxn v5, whose answer carries the next epoch.
pub const TXN_V2_PRODUCE_VERSION: i16 = 12;
pub const TXN_V2_END_TXN_VERSION: i16 = 5;
/// What the Java client (4.0+) uses against a broker that finalizes
/// transaction.version 2, as Spate and Apache Kafka 4 do.
pub const TRANSACTION_VERSION_DEFAULT: u8 = 2;
/// Kafka's key type for a transactional id in FindCoordinator.
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Kafka's default `transaction.timeout.ms`: far above any commit
/// interval a workload may ask for (`COMMIT_INTERVAL_MS_MAX`).
const TRANSACTION_TIMEOUT_MS: i32 = 60_000;
/// The longest commit interval a workload may ask for: well inside the
/// transaction timeout, so no transaction is aborted under the load.
pub const COMMIT_INTERVAL_MS_MAX: u64 = 10_000;
/// The default wait before asking again after a retriable answer (the
/// coordinator loading, or CONCURRENT_TRANSACTIONS while the last
/// transaction's markers are written): Java's TransactionManager waits
/// 20 ms before it retries an AddPartitionsToTxn refused with
/// CONCURRENT_TRANSACTIONS, rather than its 100 ms `retry.backoff.ms`.
pub const RETRY_BACKOFF_MS_DEFAULT: u64 = 20;
/// The longest retry backoff a workload may ask for (librdkafka's
/// `retry.backoff.max.ms` default).
pub const RETRY_BACKOFF_MS_MAX: u64 = 1000;
/// How long one control request may keep getting retriable answers (the
/// coordinator of a just-started broker loads `__transaction_state` first).
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Kafka's `DefaultRecordBatch.incrementSequence`: a partition's next
/// sequence number after a batch of `records` starting at `sequence`;
/// sequence numbers wrap from `i32::MAX` to 0.
pub fn next_sequence(sequence: i32, records: i32) -> i32 {
    debug_assert!(sequence >= 0 && records > 0);
    if sequence > i32::MAX - records { records - (i32::MAX - sequence) - 1 } else { sequence + records }
}

/// Where the producer fields sit in a batch's header, chained from the
/// header's layout rather than written as numbers.
const ATTRIBUTES_AT: usize = std::mem::offset_of!(BatchHeader, attributes);
const PRODUCER_ID_AT: usize = std::mem::offset_of!(BatchHeader, producer_id);
const PRODUCER_EPOCH_AT: usize = std::mem::offset_of!(BatchHeader, producer_epoch);
const BASE_SEQUENCE_AT: usize = std::mem::offset_of!(BatchHeader, base_sequence);

/// The producer identity stamped into every batch of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub transactional: bool,
}

/// Stamps `batch` (a whole RecordBatch v2) with the producer's identity and
/// `base_sequence`, sets or clears the transactional bit, and writes its
/// CRC again (it covers all of these).
pub fn stamp_batch(batch: &mut [u8], producer: ProducerIdentity, base_sequence: i32) -> Result<()> {
    let invalid = |reason: String| KafkaLoadError::Encode { api: ApiKey::Produce, reason };
    let header = batch::peek_header(batch).map_err(|e| invalid(e.to_string()))?;
    let records = header.records_count.get();
    if records <= 0 {
        return Err(invalid(format!("a batch of {records} records")));
    }
    let attributes = batch::Attributes(header.attributes.get());
    if attributes.is_control() {
        return Err(invalid("a control batch is the coordinator's to write".into()));
    }
    const TRANSACTIONAL_BIT: i16 = 1 << 4;
    let flags =
        if producer.transactional { attributes.0 | TRANSACTIONAL_BIT } else { attributes.0 & !TRANSACTIONAL_BIT };
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&flags.to_be_bytes());
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
    batch::write_crc(batch).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// One partition's batches as one producer sends them: each stamped with
/// the next sequence number, which runs on across transactions while the
/// epoch stays (transactions v1).
#[derive(Debug)]
pub struct Sequencer {
    pub producer: ProducerIdentity,
    pub next_sequence: i32,
    records: i32,
}

impl Sequencer {
    /// For batches of `records` records, from sequence 0 (a new producer
    /// id or epoch starts there).
    pub fn new(producer: ProducerIdentity, records: usize) -> Result<Self> {
        let records = i32::try_from(records)
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| KafkaLoadError::Encode { api: ApiKey::Produce, reason: format!("{records} records") })?;
        Ok(Sequencer { producer, next_sequence: 0, records })
    }

    /// Stamps `batch` as the next one and moves the sequence past it.
    pub fn stamp_next(&mut self, batch: &mut [u8]) -> Result<i32> {
        let base_sequence = self.next_sequence;
        stamp_batch(batch, self.producer, base_sequence)?;
        self.next_sequence = next_sequence(base_sequence, self.records);
        Ok(base_sequence)
    }
}

fn txn_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_string()))
}

/// FindCoordinator v4 for one transactional id.
pub fn find_coordinator_body(transactional_id: &str) -> Result<Bytes> {
    let request = FindCoordinatorRequest::default()
        .with_key_type(KEY_TYPE_TRANSACTION)
        .with_coordinator_keys(vec![StrBytes::from_string(transactional_id.to_string())]);
    encode_body(ApiKey::FindCoordinator, &request, FIND_COORDINATOR_VERSION)
}

/// InitProducerId v4: with a transactional id for a transactional
/// producer, without one for an idempotent producer.
pub fn init_producer_id_body(transactional_id: Option<&str>) -> Result<Bytes> {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(transactional_id.map(txn_id))
        .with_transaction_timeout_ms(if transactional_id.is_some() { TRANSACTION_TIMEOUT_MS } else { -1 })
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    encode_body(ApiKey::InitProducerId, &request, INIT_PRODUCER_ID_VERSION)
}

/// AddPartitionsToTxn v3: one partition of one topic into the transaction.
pub fn add_partitions_body(
    transactional_id: &str,
    producer: ProducerIdentity,
    topic: &str,
    partition: i32,
) -> Result<Bytes> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id(transactional_id))
        .with_v3_and_below_producer_id(ProducerId(producer.producer_id))
        .with_v3_and_below_producer_epoch(producer.producer_epoch)
        .with_v3_and_below_topics(vec![
            AddPartitionsToTxnTopic::default()
                .with_name(kafka_load::topic_name(topic))
                .with_partitions(vec![partition]),
        ]);
    encode_body(ApiKey::AddPartitionsToTxn, &request, ADD_PARTITIONS_TO_TXN_VERSION)
}

/// EndTxn at `version` (v3: transactions v1, v5: v2): commit (or abort)
/// the producer's transaction.
pub fn end_txn_body(transactional_id: &str, producer: ProducerIdentity, commit: bool, version: i16) -> Result<Bytes> {
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id(transactional_id))
        .with_producer_id(ProducerId(producer.producer_id))
        .with_producer_epoch(producer.producer_epoch)
        .with_committed(commit);
    encode_body(ApiKey::EndTxn, &request, version)
}

/// Whether a control request refused with `code` may be asked again as it
/// is: the coordinator is loading, not there yet, or busy with the
/// transaction's last state change (its markers).
pub fn retriable(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::CoordinatorLoadInProgress
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::NotCoordinator
                | ResponseError::ConcurrentTransactions
        )
    )
}

fn refused(api: ApiKey, key: &str, code: i16, message: Option<&StrBytes>) -> KafkaLoadError {
    KafkaLoadError::broker(api, key, -1, code, message)
}

/// The coordinator's port for `key`.
pub fn parse_find_coordinator(body: Bytes, key: &str) -> Result<i32> {
    let response: FindCoordinatorResponse = decode(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, body)?;
    let found = response.coordinators.iter().find(|c| c.key.as_str() == key).ok_or_else(|| {
        KafkaLoadError::Missing { api: ApiKey::FindCoordinator, topic: key.to_string(), partition: -1 }
    })?;
    if found.error_code != 0 {
        return Err(refused(ApiKey::FindCoordinator, key, found.error_code, found.error_message.as_ref()));
    }
    Ok(found.port)
}

/// The producer id and epoch InitProducerId gave.
pub fn parse_init_producer_id(body: Bytes, key: &str) -> Result<(i64, i16)> {
    let response: InitProducerIdResponse = decode(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, body)?;
    if response.error_code != 0 {
        return Err(refused(ApiKey::InitProducerId, key, response.error_code, None));
    }
    Ok((response.producer_id.0, response.producer_epoch))
}

/// Checks that every partition asked for was added.
pub fn parse_add_partitions(body: Bytes, key: &str) -> Result<()> {
    let response: AddPartitionsToTxnResponse = decode(ApiKey::AddPartitionsToTxn, ADD_PARTITIONS_TO_TXN_VERSION, body)?;
    if response.error_code != 0 {
        return Err(refused(ApiKey::AddPartitionsToTxn, key, response.error_code, None));
    }
    let results = response.results_by_topic_v3_and_below.iter().flat_map(|t| &t.results_by_partition);
    let mut answered = 0;
    for result in results {
        answered += 1;
        if result.partition_error_code != 0 {
            return Err(refused(ApiKey::AddPartitionsToTxn, key, result.partition_error_code, None));
        }
    }
    if answered == 0 {
        return Err(KafkaLoadError::Missing { api: ApiKey::AddPartitionsToTxn, topic: key.to_string(), partition: -1 });
    }
    Ok(())
}

/// EndTxn's answer at `version`: the producer id and epoch to go on with
/// (v5; -1 and -1 before, where the epoch stays).
pub fn parse_end_txn(body: Bytes, key: &str, version: i16) -> Result<(i64, i16)> {
    let response: EndTxnResponse = decode(ApiKey::EndTxn, version, body)?;
    if response.error_code != 0 {
        return Err(refused(ApiKey::EndTxn, key, response.error_code, None));
    }
    Ok((response.producer_id.0, response.producer_epoch))
}

/// One idempotent or transactional producer's connection.
#[derive(Debug, Clone)]
pub struct SequencedLane {
    pub endpoint: Endpoint,
    pub topic: String,
    pub partition: i32,
    pub acks: i16,
    pub in_flight: usize,
    pub records: usize,
    /// The batch as built (uncompressed or compressed); each send stamps
    /// a copy of it.
    pub template: Bytes,
    /// A transactional producer's transactional.id; None: idempotent.
    pub transactional_id: Option<String>,
    /// A transaction's length: no new produce after this much time since
    /// its AddPartitionsToTxn was answered.
    pub commit_interval: Duration,
    /// Stop after this many batches (filling a topic); None: at `stop`.
    pub batches_max: Option<u64>,
    /// The wait before asking a control request again after a retriable
    /// answer.
    pub retry_backoff: Duration,
    /// Transactions v1 or v2 (see the module's comment).
    pub transaction_version: u8,
}

/// What one idempotent or transactional producer did.
pub struct SequencedResult {
    /// Per produce request, from its send to its acknowledgment.
    pub latency: Histogram<u64>,
    /// Per EndTxn (transactional only), from its send to its answer.
    pub end_txn_latency: Histogram<u64>,
    /// Transactions committed while measuring.
    pub transactions: u64,
    /// Control requests asked again after a retriable answer, while
    /// measuring, and the time spent waiting before asking again.
    pub retries: u64,
    pub retry_wait: Duration,
    /// The log end after the last acknowledged batch (-1: none was).
    pub end_offset: i64,
}

/// A produce request sent and not yet answered.
struct Pending {
    correlation_id: i32,
    sent: Instant,
    bytes: usize,
}

/// The connection and what travels on it: one request at a time for
/// control requests, produce requests pipelined.
struct Session {
    stream: BufReader<KafkaStream>,
    addr: String,
    correlation_id: i32,
}

impl Session {
    fn next_correlation_id(&mut self) -> i32 {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        self.correlation_id
    }

    async fn send(&mut self, api: ApiKey, version: i16, parts: [&[u8]; 3]) -> Result<i32> {
        let correlation_id = self.next_correlation_id();
        let body_bytes = parts.iter().map(|p| p.len()).sum();
        let mut prefix = encode_prefix(api, version, correlation_id, body_bytes)?;
        // Header and body go out in one vectored write, the body's parts
        // as they are (the batch is not copied behind the header).
        let mut frame = (&mut prefix).chain(parts[0]).chain(parts[1]).chain(parts[2]);
        let io = |source| KafkaLoadError::Io { addr: self.addr.clone(), source };
        self.stream.write_all_buf(&mut frame).await.map_err(io)?;
        // TLS holds what it encrypted until flushed (plaintext: a no-op).
        self.stream.flush().await.map_err(io)?;
        Ok(correlation_id)
    }

    async fn receive(&mut self, api: ApiKey, version: i16, expected: i32) -> Result<Bytes> {
        let frame = read_frame(&mut self.stream, &self.addr).await?;
        let (got, body) = response_body(api, version, frame)?;
        if got != expected {
            return Err(KafkaLoadError::Correlation { expected, got });
        }
        Ok(body)
    }

    async fn call(&mut self, api: ApiKey, version: i16, body: &Bytes) -> Result<Bytes> {
        let correlation_id = self.send(api, version, [body, &[], &[]]).await?;
        self.receive(api, version, correlation_id).await
    }

    /// `call` until `parse` accepts the answer or refuses it with a
    /// non-retriable code; counts the retries into `retries`.
    async fn call_retrying<T>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Bytes,
        (backoff, retries): (Duration, &mut (u64, Duration)),
        parse: impl Fn(Bytes) -> Result<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + RETRY_TIMEOUT;
        loop {
            match parse(self.call(api, version, body).await?) {
                Err(KafkaLoadError::Broker { code, .. }) if retriable(code) && Instant::now() < deadline => {
                    let waited = Instant::now();
                    tokio::time::sleep(backoff).await;
                    retries.0 += 1;
                    retries.1 += waited.elapsed();
                }
                other => return other,
            }
        }
    }
}

/// Where a produce body's records sit: the body is encoded once around the
/// template, and each send puts the stamped batch between its head and
/// tail (Produce v9 ends with tagged fields after the records).
fn split_around(body: &Bytes, template: &[u8]) -> Result<(Bytes, Bytes)> {
    let n = template.len();
    (0..=16usize)
        .filter_map(|tail| body.len().checked_sub(n + tail).map(|start| (start, tail)))
        .find(|&(start, _)| &body[start..start + n] == template)
        .map(|(start, _)| (body.slice(..start), body.slice(start + n..)))
        .ok_or_else(|| KafkaLoadError::Encode {
            api: ApiKey::Produce,
            reason: "the records are not at the end of the produce body".into(),
        })
}

/// A lane's produce body around its template: a transactional producer's
/// names its transactional id, which Kafka requires of a produce that
/// carries transactional batches (it answers
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED without one).
fn lane_produce_body(lane: &SequencedLane) -> Result<Bytes> {
    let id = lane.transactional_id.as_deref();
    kafka_load::produce_body(&lane.topic, lane.partition, lane.acks, lane.template.clone(), id)
}

/// Runs one idempotent or transactional producer until `stop` (or
/// `batches_max`): see the module's comment for the steps.
pub async fn sequenced_lane(
    lane: SequencedLane,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SequencedResult> {
    let stream = lane.endpoint.connect().await?;
    let mut session = Session {
        stream: BufReader::with_capacity(kafka_load::READ_BUFFER_BYTES, stream),
        addr: lane.endpoint.addr.clone(),
        correlation_id: 0,
    };
    let name = format!("producer on {}/{}", lane.topic, lane.partition);
    let mut result = SequencedResult {
        latency: histogram(),
        end_txn_latency: histogram(),
        transactions: 0,
        retries: 0,
        retry_wait: Duration::ZERO,
        end_offset: -1,
    };
    let mut setup_retries = (0, Duration::ZERO);
    let producer = init(&lane, &mut session, &mut setup_retries).await.with_context(|| name.clone())?;
    let mut sequencer = Sequencer::new(producer, lane.records)?;
    let v2 = lane.transactional_id.is_some() && lane.transaction_version >= 2;
    let (produce_version, end_txn_version) =
        if v2 { (TXN_V2_PRODUCE_VERSION, TXN_V2_END_TXN_VERSION) } else { (PRODUCE_VERSION, END_TXN_VERSION) };
    let body = lane_produce_body(&lane)?;
    let (head, tail) = split_around(&body, &lane.template)?;
    // One batch buffer, stamped in place per send: a send completes its
    // write before the next stamps it again.
    let mut batch = BytesMut::from(&lane.template[..]);
    let mut sent_count = 0u64;
    let more = |sent: u64| !stop.load(Ordering::Relaxed) && lane.batches_max.is_none_or(|max| sent < max);
    while more(sent_count) {
        let mut retries = (0, Duration::ZERO);
        if let Some(id) = lane.transactional_id.as_ref().filter(|_| !v2) {
            let body = add_partitions_body(id, sequencer.producer, &lane.topic, lane.partition)?;
            let add = ApiKey::AddPartitionsToTxn;
            let parse = |body| parse_add_partitions(body, id);
            let retrying = (lane.retry_backoff, &mut retries);
            session.call_retrying(add, ADD_PARTITIONS_TO_TXN_VERSION, &body, retrying, parse).await?;
        }
        let began = Instant::now();
        let commit_due = |now: Instant| lane.transactional_id.is_some() && now >= began + lane.commit_interval;
        let mut pending: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
        loop {
            while pending.len() < lane.in_flight && more(sent_count) && !commit_due(Instant::now()) {
                sequencer.stamp_next(&mut batch)?;
                let sent = Instant::now();
                let correlation_id =
                    session.send(ApiKey::Produce, produce_version, [&head[..], &batch[..], &tail[..]]).await?;
                pending.push_back(Pending { correlation_id, sent, bytes: batch.len() });
                sent_count += 1;
            }
            // A transaction ends only once every produce in it is answered,
            // as a client's commit waits for its sends.
            let Some(request) = pending.pop_front() else { break };
            let body = session.receive(ApiKey::Produce, produce_version, request.correlation_id).await?;
            // A refused batch leaves the sequence numbers behind it out
            // of order: the producer cannot go on, so the workload stops.
            let base_offset = parse_produce(body, &lane.topic, lane.partition).with_context(|| name.clone())?;
            result.end_offset = result.end_offset.max(base_offset + lane.records as i64);
            if measuring.load(Ordering::Relaxed) {
                counters.add(request.bytes, lane.records);
                let us = request.sent.elapsed().as_micros() as u64;
                let _ = result.latency.record(us.clamp(1, LATENCY_MAX_US));
            }
        }
        if let Some(id) = &lane.transactional_id {
            let body = end_txn_body(id, sequencer.producer, true, end_txn_version)?;
            let sent = Instant::now();
            let parse = |body| parse_end_txn(body, id, end_txn_version);
            let retrying = (lane.retry_backoff, &mut retries);
            let next = session.call_retrying(ApiKey::EndTxn, end_txn_version, &body, retrying, parse).await?;
            if v2 {
                // Every transaction ends under a new epoch (or producer
                // id): the next one numbers its batches from 0 under it.
                let (producer_id, producer_epoch) = next;
                let producer = ProducerIdentity { producer_id, producer_epoch, transactional: true };
                sequencer = Sequencer::new(producer, lane.records)?;
            }
            if measuring.load(Ordering::Relaxed) {
                let us = sent.elapsed().as_micros() as u64;
                let _ = result.end_txn_latency.record(us.clamp(1, LATENCY_MAX_US));
                result.transactions += 1;
            }
        }
        if measuring.load(Ordering::Relaxed) {
            result.retries += retries.0;
            result.retry_wait += retries.1;
        }
    }
    Ok(result)
}

/// FindCoordinator (transactional) and InitProducerId: the identity every
/// batch of the connection carries.
async fn init(lane: &SequencedLane, session: &mut Session, retries: &mut (u64, Duration)) -> Result<ProducerIdentity> {
    let key = lane.transactional_id.as_deref().unwrap_or("(idempotent)");
    if let Some(id) = &lane.transactional_id {
        let body = find_coordinator_body(id)?;
        let parse = |body| parse_find_coordinator(body, id);
        let port = session
            .call_retrying(
                ApiKey::FindCoordinator,
                FIND_COORDINATOR_VERSION,
                &body,
                (lane.retry_backoff, retries),
                parse,
            )
            .await?;
        if !lane.endpoint.addr.ends_with(&format!(":{port}")) {
            return Err(KafkaLoadError::Encode {
                api: ApiKey::FindCoordinator,
                reason: format!("the coordinator of {id} listens on port {port}, not at {}", lane.endpoint.addr),
            });
        }
    }
    let body = init_producer_id_body(lane.transactional_id.as_deref())?;
    let parse = |body| parse_init_producer_id(body, key);
    let (producer_id, producer_epoch) = session
        .call_retrying(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, &body, (lane.retry_backoff, retries), parse)
        .await?;
    Ok(ProducerIdentity { producer_id, producer_epoch, transactional: lane.transactional_id.is_some() })
}

/// Every producer's results together.
pub struct SequencedOutcome {
    pub latency: Histogram<u64>,
    pub end_txn_latency: Histogram<u64>,
    pub transactions: u64,
    pub retries: u64,
    pub retry_wait: Duration,
    pub end_offsets: Vec<i64>,
}

/// Runs `lanes` together and merges what they measured.
pub async fn run_lanes(
    lanes: Vec<SequencedLane>,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SequencedOutcome> {
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| tokio::spawn(sequenced_lane(lane, counters.clone(), measuring.clone(), stop.clone())))
        .collect();
    let mut outcome = SequencedOutcome {
        latency: histogram(),
        end_txn_latency: histogram(),
        transactions: 0,
        retries: 0,
        retry_wait: Duration::ZERO,
        end_offsets: Vec::new(),
    };
    for task in tasks {
        let lane = task.await.context("producer task")??;
        outcome.latency.add(lane.latency).context("merging histograms")?;
        outcome.end_txn_latency.add(lane.end_txn_latency).context("merging histograms")?;
        outcome.transactions += lane.transactions;
        outcome.retries += lane.retries;
        outcome.retry_wait += lane.retry_wait;
        outcome.end_offsets.push(lane.end_offset);
    }
    Ok(outcome)
}

/// A transactional id per producer connection, unique to the workload's
/// topic (a broker keeps an id's state after the workload).
pub fn transactional_id(topic: &str, producer: usize) -> String {
    format!("{topic}-txn-{producer}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::load;
    use kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
    };
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::{BrokerId, ProduceRequest};
    use kafka_protocol::protocol::{Decodable, Encodable};

    fn encode<R: Encodable>(message: &R, version: i16) -> Bytes {
        let mut body = BytesMut::new();
        message.encode(&mut body, version).expect("encodes");
        body.freeze()
    }

    const PRODUCER: ProducerIdentity = ProducerIdentity { producer_id: 4242, producer_epoch: 3, transactional: true };

    /// Kafka's wrap: the sequence after i32::MAX is 0, and a batch that
    /// crosses it continues from 0 by what is left.
    #[test]
    fn sequence_numbers_advance_by_the_records_and_wrap_as_kafkas() {
        assert_eq!(next_sequence(0, 1000), 1000);
        assert_eq!(next_sequence(i32::MAX - 1000, 1000), i32::MAX);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 5, 10), 4);
    }

    /// A stamped batch is a valid batch a broker takes: the producer id,
    /// epoch and sequence sit where Kafka reads them, the transactional bit
    /// is set (or cleared for an idempotent producer), the CRC is right.
    #[test]
    fn a_stamped_batch_carries_the_producer_and_a_valid_crc() {
        let mut bytes = BytesMut::from(&load::build_batch(10, 100, 7)[..]);
        stamp_batch(&mut bytes, PRODUCER, 500).expect("stamped");
        let info = batch::validate_produce(&bytes, usize::MAX).expect("valid, its CRC right");
        assert_eq!((info.producer_id, info.producer_epoch, info.base_sequence), (4242, 3, 500));
        let attributes = batch::Attributes(info.attributes);
        assert!(attributes.is_transactional() && !attributes.is_control());
        let idempotent = ProducerIdentity { transactional: false, ..PRODUCER };
        stamp_batch(&mut bytes, idempotent, 510).expect("stamped again");
        let info = batch::validate_produce(&bytes, usize::MAX).expect("valid again");
        assert!(!batch::Attributes(info.attributes).is_transactional());
        assert_eq!(info.base_sequence, 510);
        let mut short = BytesMut::from(&bytes[..20]);
        assert!(stamp_batch(&mut short, PRODUCER, 0).is_err(), "a cut header is refused, not indexed past");
    }

    /// Transactions v1: one epoch for the connection's life, so the
    /// sequence numbers of a partition run on from one transaction to the
    /// next (a broker refuses a restart at 0 under the same epoch as out
    /// of order), each batch `records` past the last.
    #[test]
    fn sequence_numbers_run_on_across_transactions() {
        let mut sequencer = Sequencer::new(PRODUCER, 10).expect("sequencer");
        let mut bytes = BytesMut::from(&load::build_batch(10, 100, 7)[..]);
        let mut seen = Vec::new();
        for _transaction in 0..3 {
            for _batch in 0..2 {
                seen.push(sequencer.stamp_next(&mut bytes).expect("stamped"));
                let info = batch::validate_produce(&bytes, usize::MAX).expect("valid");
                assert_eq!((info.base_sequence, info.producer_epoch), (*seen.last().expect("one"), 3));
            }
        }
        assert_eq!(seen, vec![0, 10, 20, 30, 40, 50]);
        assert!(Sequencer::new(PRODUCER, 0).is_err());
    }

    /// The control requests carry what the coordinator checks: the id, the
    /// key type 1, the producer id and epoch, the partition, commit.
    #[test]
    fn control_requests_carry_the_transactional_id_and_producer() {
        let mut body = find_coordinator_body("t-1").expect("body");
        let request = FindCoordinatorRequest::decode(&mut body, FIND_COORDINATOR_VERSION).expect("decodes");
        assert_eq!((request.key_type, request.coordinator_keys.len()), (1, 1));
        assert_eq!(request.coordinator_keys[0].as_str(), "t-1");

        let mut body = init_producer_id_body(Some("t-1")).expect("body");
        let request = InitProducerIdRequest::decode(&mut body, INIT_PRODUCER_ID_VERSION).expect("decodes");
        assert_eq!(request.transactional_id.as_ref().map(|t| t.0.as_str()), Some("t-1"));
        assert_eq!((request.transaction_timeout_ms, request.producer_id.0), (TRANSACTION_TIMEOUT_MS, -1));
        let mut body = init_producer_id_body(None).expect("body");
        let request = InitProducerIdRequest::decode(&mut body, INIT_PRODUCER_ID_VERSION).expect("decodes");
        assert!(request.transactional_id.is_none(), "idempotent: no transactional id");

        let mut body = add_partitions_body("t-1", PRODUCER, "bench-t", 1).expect("body");
        let request = AddPartitionsToTxnRequest::decode(&mut body, ADD_PARTITIONS_TO_TXN_VERSION).expect("decodes");
        assert_eq!(request.v3_and_below_transactional_id.0.as_str(), "t-1");
        assert_eq!((request.v3_and_below_producer_id.0, request.v3_and_below_producer_epoch), (4242, 3));
        let topic = &request.v3_and_below_topics[0];
        assert_eq!((topic.name.0.as_str(), topic.partitions.as_slice()), ("bench-t", &[1][..]));

        for version in [END_TXN_VERSION, TXN_V2_END_TXN_VERSION] {
            let mut body = end_txn_body("t-1", PRODUCER, true, version).expect("body");
            let request = EndTxnRequest::decode(&mut body, version).expect("decodes");
            assert_eq!(request.transactional_id.0.as_str(), "t-1");
            assert_eq!((request.producer_id.0, request.producer_epoch, request.committed), (4242, 3, true));
        }
    }

    /// The produce body is encoded once; a send puts the stamped batch
    /// between its head and tail, which must give the same bytes as
    /// encoding the request around that batch. A transactional producer's
    /// request names its transactional id: the first version sent none,
    /// which Spate took and Apache Kafka refused (the first produce of the
    /// transactional workload failed with
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED).
    #[test]
    fn a_produce_body_around_a_stamped_batch_is_the_encoded_request() {
        let template = load::build_batch(10, 100, 7);
        let lane = SequencedLane {
            endpoint: Endpoint::plain("127.0.0.1:9092"),
            topic: "bench-t".into(),
            partition: 0,
            acks: -1,
            in_flight: 2,
            records: 10,
            template: template.clone(),
            transactional_id: Some("t-1".into()),
            commit_interval: Duration::from_millis(100),
            batches_max: None,
            retry_backoff: Duration::from_millis(20),
            transaction_version: 2,
        };
        let body = lane_produce_body(&lane).expect("body");
        let (head, tail) = split_around(&body, &template).expect("found");
        let mut stamped = BytesMut::from(&template[..]);
        stamp_batch(&mut stamped, PRODUCER, 20).expect("stamped");
        let mut sent = BytesMut::new();
        for part in [&head[..], &stamped[..], &tail[..]] {
            sent.extend_from_slice(part);
        }
        let stamped = stamped.freeze();
        let expected = kafka_load::produce_body("bench-t", 0, -1, stamped.clone(), Some("t-1")).expect("body");
        assert_eq!(sent.freeze(), expected);
        // Transactions v2 send the same bytes as Produce v12: its fields
        // are v9's.
        for version in [PRODUCE_VERSION, TXN_V2_PRODUCE_VERSION] {
            let mut body = expected.clone();
            let request = ProduceRequest::decode(&mut body, version).expect("decodes");
            assert_eq!(request.transactional_id.as_ref().map(|id| id.0.as_str()), Some("t-1"));
            assert_eq!(request.topic_data[0].partition_data[0].records.as_ref(), Some(&stamped));
            let mut again = BytesMut::new();
            request.encode(&mut again, version).expect("encodes");
            assert_eq!(again.freeze(), expected, "v{version} encodes as v{PRODUCE_VERSION}");
        }
        let idempotent = SequencedLane { transactional_id: None, ..lane };
        let mut body = lane_produce_body(&idempotent).expect("body");
        let request = ProduceRequest::decode(&mut body, PRODUCE_VERSION).expect("decodes");
        assert!(request.transactional_id.is_none(), "an idempotent producer has no transactional id");
    }

    /// Answers: a coordinator's port, a producer id, every partition
    /// added, a commit; refusals by name, the retriable ones told apart.
    #[test]
    fn control_responses_give_their_result_or_a_named_error() {
        let coordinator = |code: i16| {
            let response = FindCoordinatorResponse::default().with_coordinators(vec![
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("t-1"))
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("127.0.0.1"))
                    .with_port(9092)
                    .with_error_code(code),
            ]);
            encode(&response, FIND_COORDINATOR_VERSION)
        };
        assert_eq!(parse_find_coordinator(coordinator(0), "t-1").expect("found"), 9092);
        let loading = parse_find_coordinator(coordinator(14), "t-1").expect_err("loading");
        assert!(matches!(loading, KafkaLoadError::Broker { code: 14, .. }) && retriable(14), "{loading}");
        assert!(parse_find_coordinator(coordinator(0), "t-2").is_err(), "another key's answer");

        let init = InitProducerIdResponse::default().with_producer_id(ProducerId(7)).with_producer_epoch(2);
        assert_eq!(parse_init_producer_id(encode(&init, INIT_PRODUCER_ID_VERSION), "t-1").expect("id"), (7, 2));
        let fenced = InitProducerIdResponse::default().with_error_code(90);
        let err = parse_init_producer_id(encode(&fenced, INIT_PRODUCER_ID_VERSION), "t-1").expect_err("fenced");
        assert!(err.to_string().contains("ProducerFenced") && !retriable(90), "{err}");

        let added = |code: i16| {
            let response = AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(vec![
                AddPartitionsToTxnTopicResult::default()
                    .with_name(kafka_load::topic_name("bench-t"))
                    .with_results_by_partition(vec![
                        AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(1)
                            .with_partition_error_code(code),
                    ]),
            ]);
            encode(&response, ADD_PARTITIONS_TO_TXN_VERSION)
        };
        parse_add_partitions(added(0), "t-1").expect("added");
        let busy = parse_add_partitions(added(51), "t-1").expect_err("concurrent");
        assert!(busy.to_string().contains("ConcurrentTransactions") && retriable(51), "{busy}");
        let empty = encode(&AddPartitionsToTxnResponse::default(), ADD_PARTITIONS_TO_TXN_VERSION);
        assert!(parse_add_partitions(empty, "t-1").is_err(), "no partition answered");

        parse_end_txn(encode(&EndTxnResponse::default(), END_TXN_VERSION), "t-1", END_TXN_VERSION).expect("committed");
        let next = EndTxnResponse::default().with_producer_id(ProducerId(7)).with_producer_epoch(3);
        let v2 = TXN_V2_END_TXN_VERSION;
        assert_eq!(parse_end_txn(encode(&next, v2), "t-1", v2).expect("committed"), (7, 3), "v5 names the next epoch");
        let invalid = EndTxnResponse::default().with_error_code(48);
        let err = parse_end_txn(encode(&invalid, END_TXN_VERSION), "t-1", END_TXN_VERSION).expect_err("invalid state");
        assert!(err.to_string().contains("InvalidTxnState") && !retriable(48), "{err}");
    }
}
