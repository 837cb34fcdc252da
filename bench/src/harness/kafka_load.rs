//! The load generator's Kafka path: the same workloads as `load.rs`, spoken
//! in Kafka's protocol (the `kafka-protocol` codecs the broker uses) to a
//! Kafka listener, Spate's or Apache Kafka's. Producers send the same
//! pre-built RecordBatch v2 batches in Produce v9 requests, one TCP
//! connection each with `in_flight` requests pipelined (responses come back
//! in request order on a connection, matched by correlation id); consumers
//! send sessionless Fetch v12 requests (session id 0, epoch -1), one
//! connection each. Every connection goes to an `Endpoint`: a listener's
//! address and, for an SSL listener, the TLS client that speaks to it
//! (`tls.rs`); the requests are the same bytes either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use super::load::{self, Counters, LATENCY_MAX_US, histogram};
use super::tls::{KafkaReadHalf, KafkaStream, KafkaWriteHalf};
use spate_format::batch::Compression;

/// Produce v9 is the first flexible version, and every version up to
/// Spate's highest (11) encodes the same fields; Apache Kafka 4.4 serves
/// 3..=13. One fixed version keeps both targets on the same bytes.
pub const PRODUCE_VERSION: i16 = 9;
/// Fetch v12 is the first flexible version and the last that names topics
/// rather than giving their ids (v13+), so no Metadata round trip is needed
/// to learn an id; Spate serves 4..=16, Apache Kafka 4.4 4..=17.
pub const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 7;

/// The largest response frame read. A fetch asks for at most
/// `FETCH_BYTES_MAX` but a broker returns at least one whole batch, and
/// Apache Kafka's topics here take batches up to `BATCH_BYTES_MAX`; the cap
/// keeps a broken length prefix from allocating gigabytes.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Bytes a consumer's fetch asks for, as the native consumer's
/// `fetch_bytes_max`.
pub const FETCH_BYTES_MAX: i32 = 4 << 20;
/// How long a fetch waits at the log end for data, as the native
/// consumer's.
const FETCH_WAIT_MS: i32 = 100;
/// A produce request's timeout, as the native producer's.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// Apache Kafka refuses batches above its `max.message.bytes` (1 MiB and
/// 12 bytes by default) and the standard batch (1000 x 1 KiB records) is
/// ~1.03 MB, so its bench topics take up to this much.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// How long a new topic may take to have a leader for every partition.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffer for reading responses: many small produce responses per read.
pub(super) const READ_BUFFER_BYTES: usize = 64 << 10;

/// What can go wrong talking Kafka to a broker: its bytes come from outside,
/// so each way they can be wrong has a name.
#[derive(Debug, thiserror::Error)]
pub enum KafkaLoadError {
    #[error("connection to {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr}: {source}")]
    Handshake { addr: String, source: std::io::Error },
    #[error("encoding a {api:?} request: {reason}")]
    Encode { api: ApiKey, reason: String },
    #[error("decoding a {api:?} response: {reason}")]
    Decode { api: ApiKey, reason: String },
    #[error("a response frame of {bytes} bytes (at most {RESPONSE_BYTES_MAX})")]
    FrameTooLarge { bytes: i64 },
    #[error("response with correlation id {got}, expected {expected} (responses come in request order)")]
    Correlation { expected: i32, got: i32 },
    #[error("{api:?} response without partition {partition} of {topic}")]
    Missing { api: ApiKey, topic: String, partition: i32 },
    #[error("{api:?} {topic}/{partition}: error {code} ({name}){message}")]
    Broker { api: ApiKey, topic: String, partition: i32, code: i16, name: String, message: String },
}

impl KafkaLoadError {
    pub(super) fn broker(api: ApiKey, topic: &str, partition: i32, code: i16, message: Option<&StrBytes>) -> Self {
        let name = ResponseError::try_from_code(code).map_or_else(|| "none".to_string(), |e| format!("{e:?}"));
        let message = message.map_or(String::new(), |m| format!(": {}", m.as_str()));
        KafkaLoadError::Broker { api, topic: topic.to_string(), partition, code, name, message }
    }
}

pub(super) type Result<T> = std::result::Result<T, KafkaLoadError>;

pub(super) fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Encodes a request body once; requests that repeat (every produce of the
/// same batch) reuse it, and only the header changes per request.
pub fn encode_body<R: Encodable>(api: ApiKey, request: &R, version: i16) -> Result<Bytes> {
    let mut body = BytesMut::new();
    request.encode(&mut body, version).map_err(|e| KafkaLoadError::Encode { api, reason: e.to_string() })?;
    Ok(body.freeze())
}

/// The frame's length prefix and request header for a body of
/// `body_bytes`: what goes on the wire before the body.
pub fn encode_prefix(api: ApiKey, version: i16, correlation_id: i32, body_bytes: usize) -> Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("spate-bench")));
    let header_version = api.request_header_version(version);
    let encode_error = |e: anyhow::Error| KafkaLoadError::Encode { api, reason: e.to_string() };
    let header_bytes = header.compute_size(header_version).map_err(encode_error)?;
    let frame_bytes = i32::try_from(header_bytes + body_bytes)
        .map_err(|_| KafkaLoadError::Encode { api, reason: format!("{body_bytes} bytes do not fit a frame") })?;
    let mut prefix = BytesMut::with_capacity(4 + header_bytes);
    prefix.extend_from_slice(&frame_bytes.to_be_bytes());
    header.encode(&mut prefix, header_version).map_err(encode_error)?;
    Ok(prefix)
}

/// A Produce v9 body: `batch` (whole RecordBatch v2 bytes, sent as they
/// are) to one partition; a transactional producer's names its
/// transactional id (Kafka refuses transactional batches without one).
pub fn produce_body(
    topic: &str,
    partition: i32,
    acks: i16,
    batch: Bytes,
    transactional_id: Option<&str>,
) -> Result<Bytes> {
    let transactional_id = transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string())));
    let request = ProduceRequest::default()
        .with_transactional_id(transactional_id)
        .with_acks(acks)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
        .with_topic_data(vec![TopicProduceData::default().with_name(topic_name(topic)).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(batch)),
        ])]);
    encode_body(ApiKey::Produce, &request, PRODUCE_VERSION)
}

/// A sessionless Fetch v12 body for one partition from `offset`, at
/// `isolation_level` (0 read_uncommitted, 1 read_committed).
pub fn fetch_body(
    topic: &str,
    partition: i32,
    offset: i64,
    bytes_max: i32,
    wait_ms: i32,
    isolation_level: i8,
) -> Result<Bytes> {
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(bytes_max)
        .with_isolation_level(isolation_level)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default().with_topic(topic_name(topic)).with_partitions(vec![
                FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(bytes_max),
            ])]);
    encode_body(ApiKey::Fetch, &request, FETCH_VERSION)
}

/// Splits a response frame (without its length prefix) into its header's
/// correlation id and the body.
pub(super) fn response_body(api: ApiKey, version: i16, mut frame: Bytes) -> Result<(i32, Bytes)> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| KafkaLoadError::Decode { api, reason: e.to_string() })?;
    Ok((header.correlation_id, frame))
}

pub(super) fn decode<R: Decodable>(api: ApiKey, version: i16, mut body: Bytes) -> Result<R> {
    let decoded = R::decode(&mut body, version).map_err(|e| KafkaLoadError::Decode { api, reason: e.to_string() })?;
    if body.has_remaining() {
        return Err(KafkaLoadError::Decode { api, reason: format!("{} bytes after the response", body.remaining()) });
    }
    Ok(decoded)
}

/// Checks a produce response for one partition; returns the base offset
/// the broker gave the batch.
pub fn parse_produce(body: Bytes, topic: &str, partition: i32) -> Result<i64> {
    let response: ProduceResponse = decode(ApiKey::Produce, PRODUCE_VERSION, body)?;
    let found = response
        .responses
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| &t.partition_responses)
        .find(|p| p.index == partition)
        .ok_or_else(|| KafkaLoadError::Missing { api: ApiKey::Produce, topic: topic.into(), partition })?;
    if found.error_code != 0 {
        return Err(KafkaLoadError::broker(
            ApiKey::Produce,
            topic,
            partition,
            found.error_code,
            found.error_message.as_ref(),
        ));
    }
    Ok(found.base_offset)
}

/// Checks a fetch response for one partition (the top-level error too);
/// returns the records fetched.
pub fn parse_fetch(body: Bytes, topic: &str, partition: i32) -> Result<Bytes> {
    let response: FetchResponse = decode(ApiKey::Fetch, FETCH_VERSION, body)?;
    if response.error_code != 0 {
        return Err(KafkaLoadError::broker(ApiKey::Fetch, topic, partition, response.error_code, None));
    }
    let found = response
        .responses
        .into_iter()
        .filter(|t| t.topic.0.as_str() == topic)
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| KafkaLoadError::Missing { api: ApiKey::Fetch, topic: topic.into(), partition })?;
    if found.error_code != 0 {
        return Err(KafkaLoadError::broker(ApiKey::Fetch, topic, partition, found.error_code, None));
    }
    Ok(found.records.unwrap_or_default())
}

/// Reads one response frame (its length prefix first, capped).
pub(super) async fn read_frame<R: tokio::io::AsyncRead + Unpin>(reader: &mut R, addr: &str) -> Result<Bytes> {
    read_frame_into(reader, addr, BytesMut::new()).await
}

/// `read_frame` into `frame`'s memory if it is large enough (a consumer
/// hands back the last response's buffer), else into a new one.
async fn read_frame_into<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    addr: &str,
    mut frame: BytesMut,
) -> Result<Bytes> {
    let io = |source| KafkaLoadError::Io { addr: addr.to_string(), source };
    let frame_bytes = reader.read_i32().await.map_err(io)?;
    let frame_bytes = usize::try_from(frame_bytes)
        .ok()
        .filter(|&n| n <= RESPONSE_BYTES_MAX)
        .ok_or(KafkaLoadError::FrameTooLarge { bytes: i64::from(frame_bytes) })?;
    // Read into spare capacity: zeroing a 4 MiB fetch response first
    // would cost the consumer a pass over every byte it reads.
    frame.clear();
    frame.reserve(frame_bytes);
    while frame.len() < frame_bytes {
        let missing = frame_bytes - frame.len();
        let mut rest = (&mut frame).limit(missing);
        if reader.read_buf(&mut rest).await.map_err(io)? == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(frame.freeze())
}

/// Where the load generator connects: a Kafka listener's address, and
/// for an SSL listener the TLS client (trusting the run's CA).
#[derive(Clone)]
pub struct Endpoint {
    pub addr: String,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.addr, if self.tls.is_some() { " (TLS)" } else { "" })
    }
}

impl Endpoint {
    pub fn plain(addr: impl Into<String>) -> Self {
        Endpoint { addr: addr.into(), tls: None }
    }

    /// Connects (Nagle off) and, for TLS, completes the handshake.
    pub(super) async fn connect(&self) -> Result<KafkaStream> {
        let addr = &self.addr;
        let stream =
            TcpStream::connect(addr).await.map_err(|source| KafkaLoadError::Io { addr: addr.clone(), source })?;
        stream.set_nodelay(true).map_err(|source| KafkaLoadError::Io { addr: addr.clone(), source })?;
        let Some(tls) = &self.tls else { return Ok(KafkaStream::Plain(stream)) };
        let handshake = |source| KafkaLoadError::Handshake { addr: addr.clone(), source };
        let name = super::tls::server_name(addr).map_err(handshake)?;
        let stream = tls.connect(name, stream).await.map_err(handshake)?;
        Ok(KafkaStream::Tls(Box::new(stream)))
    }

    /// What a TLS connection to this endpoint negotiates ("TLSv1_3
    /// TLS13_AES_256_GCM_SHA384"), for the report; None for plaintext.
    pub async fn tls_session(&self) -> Result<Option<String>> {
        if self.tls.is_none() {
            return Ok(None);
        }
        match self.connect().await? {
            KafkaStream::Plain(_) => Ok(None),
            KafkaStream::Tls(stream) => Ok(Some(super::tls::describe(&stream))),
        }
    }
}

/// One connection for setup requests (create, metadata), one at a time.
struct Conn {
    stream: KafkaStream,
    addr: String,
    correlation_id: i32,
}

impl Conn {
    async fn open(endpoint: &Endpoint) -> Result<Self> {
        Ok(Conn { stream: endpoint.connect().await?, addr: endpoint.addr.clone(), correlation_id: 0 })
    }

    async fn call(&mut self, api: ApiKey, version: i16, body: Bytes) -> Result<Bytes> {
        self.correlation_id += 1;
        let mut frame = encode_prefix(api, version, self.correlation_id, body.len())?;
        frame.extend_from_slice(&body);
        let io = |source| KafkaLoadError::Io { addr: self.addr.clone(), source };
        self.stream.write_all(&frame).await.map_err(io)?;
        // TLS holds what it encrypted until flushed (plaintext: a no-op).
        self.stream.flush().await.map_err(io)?;
        let response = read_frame(&mut self.stream, &self.addr).await?;
        let (got, body) = response_body(api, version, response)?;
        if got != self.correlation_id {
            return Err(KafkaLoadError::Correlation { expected: self.correlation_id, got });
        }
        Ok(body)
    }
}

/// Creates `topic` with Kafka's CreateTopics (for Apache Kafka, where the
/// native admin cannot), then waits until every partition has a leader.
pub async fn create_topic(
    endpoint: &Endpoint,
    topic: &str,
    partitions: i32,
    configs: &[(String, String)],
) -> Result<()> {
    let mut conn = Conn::open(endpoint).await?;
    let configs = configs
        .iter()
        .map(|(name, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(name.clone()))
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
        CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(configs),
    ]);
    let body = encode_body(ApiKey::CreateTopics, &request, CREATE_TOPICS_VERSION)?;
    let response = conn.call(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, body).await?;
    let response: CreateTopicsResponse = decode(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, response)?;
    for result in &response.topics {
        if result.error_code != 0 {
            return Err(KafkaLoadError::broker(
                ApiKey::CreateTopics,
                topic,
                -1,
                result.error_code,
                result.error_message.as_ref(),
            ));
        }
    }
    wait_for_leaders_on(&mut conn, topic, partitions).await
}

/// Waits until Metadata on the Kafka listener at `addr` gives every
/// partition of `topic` a leader (a new topic's may take a moment).
pub async fn wait_for_leaders(endpoint: &Endpoint, topic: &str, partitions: i32) -> Result<()> {
    let mut conn = Conn::open(endpoint).await?;
    wait_for_leaders_on(&mut conn, topic, partitions).await
}

async fn wait_for_leaders_on(conn: &mut Conn, topic: &str, partitions: i32) -> Result<()> {
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]))
        .with_allow_auto_topic_creation(false);
    let body = encode_body(ApiKey::Metadata, &request, METADATA_VERSION)?;
    loop {
        let response = conn.call(ApiKey::Metadata, METADATA_VERSION, body.clone()).await?;
        let response: MetadataResponse = decode(ApiKey::Metadata, METADATA_VERSION, response)?;
        let found = response.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
        let leaders = found.is_some_and(|t| {
            t.error_code == 0
                && t.partitions.len() == partitions as usize
                && t.partitions.iter().all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
        });
        // Apache Kafka names a leader in Metadata a moment before its
        // partition takes writes (a produce then fails with
        // NotLeaderOrFollower): a fetch from each partition must succeed too.
        if leaders && serves_fetches(conn, topic, partitions).await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let code = found.map_or(3, |t| t.error_code);
            return Err(KafkaLoadError::broker(ApiKey::Metadata, topic, -1, code, None));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every partition of `topic` answers a fetch from offset 0
/// without an error.
async fn serves_fetches(conn: &mut Conn, topic: &str, partitions: i32) -> Result<bool> {
    for partition in 0..partitions {
        let body = fetch_body(topic, partition, 0, 1, 0, 0)?;
        let response = conn.call(ApiKey::Fetch, FETCH_VERSION, body).await?;
        if parse_fetch(response, topic, partition).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One producer's connection: what it sends and how.
#[derive(Debug, Clone)]
pub struct ProducerLane {
    pub endpoint: Endpoint,
    pub topic: String,
    pub partition: i32,
    pub acks: i16,
    pub in_flight: usize,
    pub records: usize,
    /// The batch as sent (compressed if the workload's codec says so).
    pub template: Bytes,
    /// Uncompressed, for stamping per send (end to end).
    pub plain: Bytes,
    pub codec: Compression,
    pub stamp: bool,
    /// Time between this producer's sends under a target rate; None: as
    /// fast as acknowledged.
    pub interval: Option<Duration>,
    /// Offset of the first slot, to spread producers over one interval.
    pub start_delay: Duration,
    /// Stop after this many batches (filling a topic); None: at `stop`.
    pub batches_max: Option<u64>,
}

/// A request sent and not yet answered.
struct Sent {
    correlation_id: i32,
    intended: Instant,
    bytes: usize,
}

/// What one producer's connection did.
pub struct LaneResult {
    pub latency: Histogram<u64>,
    /// The log end after this producer's last acknowledged batch (base
    /// offset plus records), -1 if none was.
    pub end_offset: i64,
}

/// Runs one producer: a writer sends requests (at most `in_flight`
/// unanswered, each at its slot under a target rate) and a reader takes
/// the responses in order. Latency counts from the slot, so a stall counts
/// against every request it delays. A broker error is counted and the
/// producer goes on; a broken connection ends the workload.
pub async fn produce_lane(
    lane: ProducerLane,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<LaneResult> {
    let stream = lane.endpoint.connect().await?;
    let (read, write) = stream.into_split();
    let permits = Arc::new(Semaphore::new(lane.in_flight));
    let (sent_tx, sent_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_acks(lane.clone(), read, sent_rx, permits.clone(), counters, measuring));
    let written = write_requests(&lane, write, sent_tx, &permits, &stop).await;
    let read = reader.await.context("producer reader task")?;
    // The reader's error explains a writer's broken pipe, so it goes first.
    let result = read?;
    written?;
    Ok(result)
}

async fn write_requests(
    lane: &ProducerLane,
    mut write: KafkaWriteHalf,
    sent: mpsc::UnboundedSender<Sent>,
    permits: &Semaphore,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let body = produce_body(&lane.topic, lane.partition, lane.acks, lane.template.clone(), None)?;
    let start = Instant::now() + lane.start_delay;
    let mut correlation_id = 0i32;
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) && lane.batches_max.is_none_or(|max| count < max) {
        let intended = match lane.interval {
            Some(interval) => {
                let at = start + interval * u32::try_from(count).unwrap_or(u32::MAX);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        // Closed when the reader stops (a broken connection): stop too.
        let Ok(permit) = permits.acquire().await else { break };
        permit.forget();
        let (body, bytes) = if lane.stamp {
            let lag = Instant::now().saturating_duration_since(intended).as_nanos() as u64;
            let batch =
                load::compress_batch(&load::restamp(&lane.plain, load::now_ns().saturating_sub(lag)), lane.codec);
            let bytes = batch.len();
            (produce_body(&lane.topic, lane.partition, lane.acks, batch, None)?, bytes)
        } else {
            (body.clone(), lane.template.len())
        };
        correlation_id = correlation_id.wrapping_add(1);
        let mut prefix = encode_prefix(ApiKey::Produce, PRODUCE_VERSION, correlation_id, body.len())?;
        if sent.send(Sent { correlation_id, intended, bytes }).is_err() {
            break;
        }
        // The body goes out as it is (header and body in one vectored
        // write), not copied behind the header per request.
        let mut frame = (&mut prefix).chain(body);
        write
            .write_all_buf(&mut frame)
            .await
            .with_context(|| format!("sending a produce to {}", lane.endpoint.addr))?;
        // TLS keeps the last records it encrypted until flushed, and the
        // writer may next wait for a permit that only the broker's answer
        // to this request gives back (plaintext: a no-op).
        write.flush().await.with_context(|| format!("sending a produce to {}", lane.endpoint.addr))?;
        count += 1;
    }
    Ok(())
}

async fn read_acks(
    lane: ProducerLane,
    read: KafkaReadHalf,
    mut sent: mpsc::UnboundedReceiver<Sent>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
) -> anyhow::Result<LaneResult> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    let mut result = LaneResult { latency: histogram(), end_offset: -1 };
    let outcome = async {
        while let Some(request) = sent.recv().await {
            let frame = read_frame(&mut reader, &lane.endpoint.addr).await?;
            let (got, body) = response_body(ApiKey::Produce, PRODUCE_VERSION, frame)?;
            if got != request.correlation_id {
                return Err(KafkaLoadError::Correlation { expected: request.correlation_id, got });
            }
            permits.add_permits(1);
            match parse_produce(body, &lane.topic, lane.partition) {
                Ok(base_offset) => {
                    result.end_offset = result.end_offset.max(base_offset + lane.records as i64);
                    if measuring.load(Ordering::Relaxed) {
                        counters.add(request.bytes, lane.records);
                        let us = request.intended.elapsed().as_micros() as u64;
                        let _ = result.latency.record(us.clamp(1, LATENCY_MAX_US));
                    }
                }
                Err(err) => counters.error(&err),
            }
        }
        Ok(())
    }
    .await;
    // Wakes a writer waiting for a permit, so it stops too.
    permits.close();
    outcome.with_context(|| format!("producer on {}/{}", lane.topic, lane.partition))?;
    Ok(result)
}

/// One consumer's connection and its partitions.
#[derive(Debug, Clone)]
pub struct ConsumerLane {
    pub endpoint: Endpoint,
    pub topic: String,
    pub partitions: Vec<i32>,
    pub start_offsets: Vec<i64>,
    /// Stop each partition here (None: follow until `stop`).
    pub end_offsets: Option<Vec<i64>>,
    pub end_to_end: bool,
    /// Fetch's isolation_level.
    pub isolation_level: i8,
}

/// Runs one consumer as the native one runs: a fetch of one partition at a
/// time, its partitions in turn, until each reaches its end offset (or
/// `stop`). Latency is the fetch's round trip, or from each batch's stamp
/// to its arrival (end to end).
pub async fn consume_lane(
    lane: ConsumerLane,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut stream = lane.endpoint.connect().await?;
    let mut latency = histogram();
    let mut offsets = lane.start_offsets.clone();
    let mut correlation_id = 0i32;
    // The last response's memory, read into again: a new 4 MiB buffer per
    // fetch cost the consumer a page fault and a kernel zeroing per page
    // (a quarter of its time over TLS, where it is CPU-bound).
    let mut spare = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        let mut all_done = true;
        for (i, &partition) in lane.partitions.iter().enumerate() {
            if lane.end_offsets.as_ref().is_some_and(|ends| offsets[i] >= ends[i]) {
                continue;
            }
            all_done = false;
            correlation_id = correlation_id.wrapping_add(1);
            let body =
                fetch_body(&lane.topic, partition, offsets[i], FETCH_BYTES_MAX, FETCH_WAIT_MS, lane.isolation_level)?;
            let mut frame = encode_prefix(ApiKey::Fetch, FETCH_VERSION, correlation_id, body.len())?;
            frame.extend_from_slice(&body);
            let sent = Instant::now();
            let sending = || format!("sending a fetch to {}", lane.endpoint.addr);
            stream.write_all(&frame).await.with_context(sending)?;
            stream.flush().await.with_context(sending)?;
            let response = read_frame_into(&mut stream, &lane.endpoint.addr, std::mem::take(&mut spare)).await?;
            let (got, body) = response_body(ApiKey::Fetch, FETCH_VERSION, response.clone())?;
            if got != correlation_id {
                return Err(KafkaLoadError::Correlation { expected: correlation_id, got }.into());
            }
            let fetched = match parse_fetch(body, &lane.topic, partition) {
                Ok(fetched) => fetched,
                Err(err) => {
                    counters.error(&err);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let now_measuring = measuring.load(Ordering::Relaxed);
            let stamps = lane.end_to_end && now_measuring;
            let (bytes, records) = load::take_batches(&fetched, &mut offsets[i], stamps, &mut latency);
            drop(fetched);
            // Every view of the frame is gone now, so it is ours again.
            spare = response.try_into_mut().unwrap_or_default();
            if now_measuring {
                counters.add(bytes, records);
                if !lane.end_to_end && bytes > 0 {
                    let _ = latency.record((sent.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US));
                }
            }
        }
        if all_done {
            break;
        }
    }
    Ok(latency)
}

/// Kafka's acks for the workload's.
pub fn acks(acks: spate_client::Acks) -> i16 {
    match acks {
        spate_client::Acks::All => -1,
        spate_client::Acks::Leader => 1,
        spate_client::Acks::None => 0,
    }
}

/// `load::produce` over Kafka's protocol: one connection per producer,
/// producer `p` on partition `p % partitions`, `in_flight` requests
/// pipelined on each (the native path runs `in_flight` senders per
/// producer instead, over its client's connection).
pub async fn produce(
    endpoint: Endpoint,
    load: load::ProduceLoad,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let plain = load::build_batch_for(load.batch_records, load.message_bytes, 0, load.compression);
    let template = load::compress_batch(&plain, load.compression);
    let interval =
        load.rate_bytes_s.map(|rate| Duration::from_secs_f64(template.len() as f64 * load.producers as f64 / rate));
    let mut tasks = Vec::new();
    for producer in 0..load.producers {
        let lane = ProducerLane {
            endpoint: endpoint.clone(),
            topic: load.topic.clone(),
            partition: (producer % load.partitions) as i32,
            acks: acks(load.acks),
            in_flight: load.in_flight,
            records: load.batch_records,
            template: template.clone(),
            plain: plain.clone(),
            codec: load.compression,
            stamp: load.stamp,
            interval,
            start_delay: interval.map_or(Duration::ZERO, |i| i.mul_f64(producer as f64 / load.producers as f64)),
            batches_max: None,
        };
        tasks.push(tokio::spawn(produce_lane(lane, counters.clone(), measuring.clone(), stop.clone())));
    }
    let mut merged = histogram();
    for task in tasks {
        merged.add(task.await.context("producer task")??.latency).context("merging histograms")?;
    }
    Ok(merged)
}

/// `load::consume` over Kafka's protocol: consumer `c` reads the
/// partitions `p` with `p % consumers == c`, on a connection of its own.
pub async fn consume(
    endpoint: Endpoint,
    load: load::ConsumeLoad,
    counters: Arc<Counters>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut tasks = Vec::new();
    for consumer in 0..load.consumers {
        let partitions: Vec<usize> = (0..load.partitions).filter(|p| p % load.consumers == consumer).collect();
        let lane = ConsumerLane {
            endpoint: endpoint.clone(),
            topic: load.topic.clone(),
            partitions: partitions.iter().map(|&p| p as i32).collect(),
            start_offsets: partitions.iter().map(|&p| load.start_offsets[p]).collect(),
            end_offsets: load.end_offsets.as_ref().map(|ends| partitions.iter().map(|&p| ends[p]).collect()),
            end_to_end: load.end_to_end,
            isolation_level: load.isolation_level,
        };
        tasks.push(tokio::spawn(consume_lane(lane, counters.clone(), measuring.clone(), stop.clone())));
    }
    let mut merged = histogram();
    for task in tasks {
        merged.add(task.await.context("consumer task")??).context("merging histograms")?;
    }
    Ok(merged)
}

/// Writes `batches` copies of `template` over the partitions (acks 1, one
/// connection per partition, `in_flight` pipelined) and returns each
/// partition's log end, from the produce responses' base offsets.
pub async fn fill(
    endpoint: &Endpoint,
    topic: &str,
    partitions: usize,
    in_flight: usize,
    template: Bytes,
    records: usize,
    batches: usize,
) -> anyhow::Result<Vec<i64>> {
    let (counters, measuring, stop) =
        (Arc::new(Counters::default()), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut tasks = Vec::new();
    for partition in 0..partitions {
        let count = batches / partitions + usize::from(partition < batches % partitions);
        let lane = ProducerLane {
            endpoint: endpoint.clone(),
            topic: topic.to_string(),
            partition: partition as i32,
            acks: 1,
            in_flight,
            records,
            template: template.clone(),
            plain: template.clone(),
            codec: Compression::None,
            stamp: false,
            interval: None,
            start_delay: Duration::ZERO,
            batches_max: Some(count as u64),
        };
        tasks.push(tokio::spawn(produce_lane(lane, counters.clone(), measuring.clone(), stop.clone())));
    }
    let mut ends = Vec::new();
    for task in tasks {
        ends.push(task.await.context("fill task")??.end_offset);
    }
    if let Some(error) = counters.first_error.lock().ok().and_then(|e| e.clone()) {
        anyhow::bail!(
            "filling {topic}: {} produce(s) failed; the first: {error}",
            counters.errors.load(Ordering::Relaxed)
        );
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    fn encode<R: Encodable>(response: &R, version: i16) -> Bytes {
        let mut body = BytesMut::new();
        response.encode(&mut body, version).expect("encodes");
        body.freeze()
    }

    /// A produce request as a broker reads it: the frame's length covers
    /// header and body, the header names Produce v9 and the correlation id,
    /// and the batch arrives byte for byte as the native path sends it.
    #[test]
    fn a_produce_request_carries_the_prebuilt_batch_unchanged() {
        let batch = load::build_batch(10, 100, 42);
        let body = produce_body("bench-t", 1, -1, batch.clone(), None).expect("body");
        let prefix = encode_prefix(ApiKey::Produce, PRODUCE_VERSION, 7, body.len()).expect("prefix");
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&prefix);
        frame.extend_from_slice(&body);
        let mut frame = frame.freeze();
        let length = frame.get_i32() as usize;
        assert_eq!(length, frame.len());
        let header = decode_request_header_from_buffer(&mut frame).expect("header");
        assert_eq!((header.request_api_key, header.request_api_version), (ApiKey::Produce as i16, 9));
        assert_eq!(header.correlation_id, 7);
        let request = ProduceRequest::decode(&mut frame, PRODUCE_VERSION).expect("request");
        assert_eq!((request.acks, request.timeout_ms), (-1, PRODUCE_TIMEOUT_MS));
        let topic = &request.topic_data[0];
        assert_eq!(topic.name.0.as_str(), "bench-t");
        assert_eq!(topic.partition_data[0].index, 1);
        assert_eq!(topic.partition_data[0].records.as_ref(), Some(&batch));
        assert!(!frame.has_remaining());
    }

    /// A sessionless fetch: session 0, epoch -1 (no KIP-227 session), a
    /// consumer's replica id, one partition from the offset asked.
    #[test]
    fn a_fetch_request_is_sessionless_for_one_partition() {
        let mut body = fetch_body("bench-t", 3, 12_345, FETCH_BYTES_MAX, 100, 1).expect("body");
        let request = FetchRequest::decode(&mut body, FETCH_VERSION).expect("request");
        assert_eq!((request.session_id, request.session_epoch, request.replica_id.0), (0, -1, -1));
        assert_eq!((request.max_wait_ms, request.min_bytes, request.max_bytes), (100, 1, FETCH_BYTES_MAX));
        assert_eq!(request.isolation_level, 1, "read_committed as asked");
        let partition = &request.topics[0].partitions[0];
        assert_eq!(request.topics[0].topic.0.as_str(), "bench-t");
        assert_eq!((partition.partition, partition.fetch_offset), (3, 12_345));
        assert_eq!(partition.partition_max_bytes, FETCH_BYTES_MAX);
    }

    fn produce_response(partition: i32, error_code: i16, base_offset: i64) -> Bytes {
        let response = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_name(topic_name("bench-t")).with_partition_responses(vec![
                PartitionProduceResponse::default()
                    .with_index(partition)
                    .with_error_code(error_code)
                    .with_base_offset(base_offset),
            ]),
        ]);
        encode(&response, PRODUCE_VERSION)
    }

    #[test]
    fn a_produce_response_gives_the_base_offset_or_the_named_error() {
        assert_eq!(parse_produce(produce_response(1, 0, 5000), "bench-t", 1).expect("acked"), 5000);
        let err = parse_produce(produce_response(1, 10, -1), "bench-t", 1).expect_err("error 10");
        assert!(err.to_string().contains("MessageTooLarge"), "{err}");
        let missing = parse_produce(produce_response(0, 0, 0), "bench-t", 1).expect_err("another partition");
        assert!(matches!(missing, KafkaLoadError::Missing { partition: 1, .. }), "{missing}");
        let mut cut = produce_response(1, 0, 5000);
        cut.truncate(cut.len() - 3);
        assert!(matches!(parse_produce(cut, "bench-t", 1), Err(KafkaLoadError::Decode { .. })));
    }

    fn fetch_response(top_error: i16, error_code: i16, records: Option<Bytes>) -> Bytes {
        let response = FetchResponse::default().with_error_code(top_error).with_responses(vec![
            FetchableTopicResponse::default().with_topic(topic_name("bench-t")).with_partitions(vec![
                PartitionData::default()
                    .with_partition_index(0)
                    .with_error_code(error_code)
                    .with_high_watermark(2000)
                    .with_records(records),
            ]),
        ]);
        encode(&response, FETCH_VERSION)
    }

    /// The fetched records are taken whole batch by batch; a partial last
    /// batch (Apache Kafka cuts at the byte limit) is left for the next
    /// fetch, and the offset moves past what was taken.
    #[test]
    fn a_fetch_response_gives_whole_batches_and_errors_by_name() {
        let mut first = BytesMut::from(&load::build_batch(10, 100, 1)[..]);
        first[0..8].copy_from_slice(&100i64.to_be_bytes());
        let mut second = BytesMut::from(&load::build_batch(10, 100, 2)[..]);
        second[0..8].copy_from_slice(&110i64.to_be_bytes());
        let whole = first.len();
        let mut records = first;
        records.extend_from_slice(&second[..second.len() / 2]);
        let fetched = parse_fetch(fetch_response(0, 0, Some(records.freeze())), "bench-t", 0).expect("fetched");
        let mut offset = 100;
        let (bytes, count) = load::take_batches(&fetched, &mut offset, false, &mut histogram());
        assert_eq!((bytes, count, offset), (whole, 10, 110));
        let empty = parse_fetch(fetch_response(0, 0, None), "bench-t", 0).expect("empty");
        assert!(empty.is_empty());
        let err = parse_fetch(fetch_response(0, 1, None), "bench-t", 0).expect_err("error 1");
        assert!(err.to_string().contains("OffsetOutOfRange"), "{err}");
        let err = parse_fetch(fetch_response(58, 0, None), "bench-t", 0).expect_err("top-level error");
        assert!(matches!(err, KafkaLoadError::Broker { code: 58, .. }), "{err}");
    }

    /// A response's header is split off and its correlation id returned;
    /// a length prefix past the cap is refused before allocating.
    #[tokio::test]
    async fn response_frames_are_capped_and_their_correlation_id_read() {
        let body = produce_response(0, 0, 1);
        let mut frame = BytesMut::new();
        let header = ResponseHeader::default().with_correlation_id(99);
        let header_version = ApiKey::Produce.response_header_version(PRODUCE_VERSION);
        header.encode(&mut frame, header_version).expect("header");
        frame.extend_from_slice(&body);
        let (got, rest) = response_body(ApiKey::Produce, PRODUCE_VERSION, frame.freeze()).expect("split");
        assert_eq!((got, rest), (99, body));
        let huge = ((RESPONSE_BYTES_MAX + 1) as i32).to_be_bytes();
        let err = read_frame(&mut &huge[..], "test").await.expect_err("over the cap");
        assert!(matches!(err, KafkaLoadError::FrameTooLarge { .. }), "{err}");
        // A frame arriving in pieces is read whole; one cut short fails.
        let (first, second) = ([0u8, 0, 0, 5, 1, 2], [3u8, 4, 5]);
        let whole = read_frame(&mut AsyncReadExt::chain(&first[..], &second[..]), "test").await.expect("whole");
        assert_eq!(&whole[..], &[1, 2, 3, 4, 5]);
        let cut = read_frame(&mut &first[..], "test").await.expect_err("cut short");
        assert!(matches!(cut, KafkaLoadError::Io { .. }), "{cut}");
        // A consumer's next response goes into the last one's memory once
        // every view of it is dropped (no new allocation per fetch).
        let first = read_frame_into(&mut &[0u8, 0, 0, 3, 7, 8, 9][..], "test", BytesMut::new()).await.expect("first");
        let memory = first.as_ptr();
        let spare = first.try_into_mut().expect("no other view");
        let second = read_frame_into(&mut &[0u8, 0, 0, 2, 5, 6][..], "test", spare).await.expect("second");
        assert_eq!((&second[..], second.as_ptr()), (&[5u8, 6][..], memory));
        let negative = (-1i32).to_be_bytes();
        assert!(matches!(read_frame(&mut &negative[..], "test").await, Err(KafkaLoadError::FrameTooLarge { .. })));
    }
}
