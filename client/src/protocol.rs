//! Requests to frames and response frames to owned values, with no I/O, so
//! that every encoder and decoder can be tested on its own.
//!
//! Decoders copy what they read out of the flatbuffer (names, numbers) so
//! that nothing borrows the receive buffer after they return; record bytes
//! are the exception: a fetch keeps the payload as `Bytes` and records are
//! slices of it.

use std::collections::BTreeMap;

use bytes::Bytes;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::{self, Body, ErrorCode};
use spate_flatbuf::{FRAME_HEADER_BYTES, Frame, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, api_name, frame_header};

use crate::error::ClientError;
use crate::metadata::{
    BrokerInfo, ClusterMetadata, ConfigEntry, PartitionDescription, PartitionInfo, TopicDescription, TopicInfo,
    TopicPartition, error_of,
};

/// What the envelope of every request carries besides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub request_id: u64,
    pub version: u16,
}

/// A request ready for the socket: the 8 length bytes and the envelope.
/// Kept apart so the envelope is the builder's own buffer, not a copy.
#[derive(Debug, Clone)]
pub(crate) struct OutFrame {
    pub header: [u8; FRAME_HEADER_BYTES],
    pub envelope: Bytes,
}

impl OutFrame {
    /// Bytes after the frame's length field, as the receiver counts them.
    pub(crate) fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES - 4 + self.envelope.len()
    }
}

pub(crate) fn finish(
    mut builder: FlatBufferBuilder<'_>,
    stamp: Stamp,
    body_type: Body,
    body: WIPOffset<UnionWIPOffset>,
) -> OutFrame {
    let envelope = proto::Envelope::create(
        &mut builder,
        &proto::EnvelopeArgs { request_id: stamp.request_id, version: stamp.version, body_type, body: Some(body) },
    );
    builder.finish(envelope, None);
    let (buffer, head) = builder.collapse();
    let envelope = Bytes::from(buffer).slice(head..);
    OutFrame { header: frame_header(envelope.len(), 0), envelope }
}

pub(crate) fn strings<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    names: &[String],
) -> WIPOffset<spate_flatbuf::flatbuffers::Vector<'a, spate_flatbuf::flatbuffers::ForwardsUOffset<&'a str>>> {
    let offsets: Vec<_> = names.iter().map(|name| builder.create_string(name)).collect();
    builder.create_vector(&offsets)
}

pub(crate) fn handshake(stamp: Stamp, client_id: &str) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let client_id = builder.create_string(client_id);
    let body = proto::HandshakeRequest::create(
        &mut builder,
        &proto::HandshakeRequestArgs {
            broker_auth: None,
            client_id: Some(client_id),
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
        },
    );
    finish(builder, stamp, Body::HandshakeRequest, body.as_union_value())
}

/// One SASL token; the first of an exchange names the mechanism.
pub(crate) fn sasl_authenticate(stamp: Stamp, mechanism: Option<&str>, token: &[u8]) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let mechanism = mechanism.map(|name| builder.create_string(name));
    let auth_bytes = builder.create_vector(token);
    let body = proto::SaslAuthenticateRequest::create(
        &mut builder,
        &proto::SaslAuthenticateRequestArgs { mechanism, auth_bytes: Some(auth_bytes) },
    );
    finish(builder, stamp, Body::SaslAuthenticateRequest, body.as_union_value())
}

/// The broker's token, and whether the exchange has succeeded.
pub(crate) fn decode_sasl_authenticate(frame: &Frame) -> Result<(Vec<u8>, bool), ClientError> {
    let envelope = envelope(frame)?;
    let response =
        body(&envelope, Body::SaslAuthenticateResponse, proto::Envelope::body_as_sasl_authenticate_response)?;
    if response.error() != ErrorCode::None {
        return Err(ClientError::server(response.error(), response.message()));
    }
    let token = response.auth_bytes().map(|bytes| bytes.bytes().to_vec()).unwrap_or_default();
    Ok((token, response.complete()))
}

pub(crate) fn metadata(stamp: Stamp, topics: Option<&[String]>) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let topics = topics.map(|names| strings(&mut builder, names));
    let body = proto::MetadataRequest::create(&mut builder, &proto::MetadataRequestArgs { topics });
    finish(builder, stamp, Body::MetadataRequest, body.as_union_value())
}

/// A topic to create.
#[derive(Debug, Clone)]
pub(crate) struct NewTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: &'a [(String, String)],
}

pub(crate) fn create_topics(stamp: Stamp, topic: &NewTopic<'_>, timeout_ms: i32) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let configs: Vec<_> = topic
        .configs
        .iter()
        .map(|(key, value)| {
            let key = builder.create_string(key);
            let value = builder.create_string(value);
            proto::ConfigEntry::create(
                &mut builder,
                &proto::ConfigEntryArgs { key: Some(key), value: Some(value), is_set: true },
            )
        })
        .collect();
    let configs = builder.create_vector(&configs);
    let name = builder.create_string(topic.name);
    let creatable = proto::CreatableTopic::create(
        &mut builder,
        &proto::CreatableTopicArgs {
            name: Some(name),
            partitions: topic.partitions,
            replication_factor: topic.replication_factor,
            configs: Some(configs),
        },
    );
    let topics = builder.create_vector(&[creatable]);
    let body = proto::CreateTopicsRequest::create(
        &mut builder,
        &proto::CreateTopicsRequestArgs { topics: Some(topics), timeout_ms, validate_only: false },
    );
    finish(builder, stamp, Body::CreateTopicsRequest, body.as_union_value())
}

pub(crate) fn delete_topics(stamp: Stamp, names: &[String], timeout_ms: i32) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let names = strings(&mut builder, names);
    let body = proto::DeleteTopicsRequest::create(
        &mut builder,
        &proto::DeleteTopicsRequestArgs { names: Some(names), timeout_ms },
    );
    finish(builder, stamp, Body::DeleteTopicsRequest, body.as_union_value())
}

/// One topic's config change: keys to set, keys to delete.
pub(crate) fn alter_configs(
    stamp: Stamp,
    topic: &str,
    set: &[(String, String)],
    delete: &[String],
    timeout_ms: i32,
) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let set: Vec<_> = set
        .iter()
        .map(|(key, value)| {
            let key = builder.create_string(key);
            let value = builder.create_string(value);
            proto::ConfigEntry::create(
                &mut builder,
                &proto::ConfigEntryArgs { key: Some(key), value: Some(value), is_set: true },
            )
        })
        .collect();
    let set = builder.create_vector(&set);
    let delete = strings(&mut builder, delete);
    let name = builder.create_string(topic);
    let alterable = proto::AlterableTopic::create(
        &mut builder,
        &proto::AlterableTopicArgs { name: Some(name), set: Some(set), delete: Some(delete) },
    );
    let topics = builder.create_vector(&[alterable]);
    let body = proto::AlterConfigsRequest::create(
        &mut builder,
        &proto::AlterConfigsRequestArgs { topics: Some(topics), timeout_ms, validate_only: false },
    );
    finish(builder, stamp, Body::AlterConfigsRequest, body.as_union_value())
}

pub(crate) fn describe_topics(stamp: Stamp, names: Option<&[String]>) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let names = names.map(|names| strings(&mut builder, names));
    let body = proto::DescribeTopicsRequest::create(&mut builder, &proto::DescribeTopicsRequestArgs { names });
    finish(builder, stamp, Body::DescribeTopicsRequest, body.as_union_value())
}

pub(crate) fn init_producer_id(stamp: Stamp) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let body = proto::InitProducerIdRequest::create(&mut builder, &proto::InitProducerIdRequestArgs::default());
    finish(builder, stamp, Body::InitProducerIdRequest, body.as_union_value())
}

/// The producer id and epoch, or the broker's error.
pub(crate) fn decode_init_producer_id(frame: &Frame) -> Result<(i64, i16), ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::InitProducerIdResponse, proto::Envelope::body_as_init_producer_id_response)?;
    if let Some(code) = error_of(response.error()) {
        return Err(ClientError::server(code, response.message()));
    }
    if response.producer_id() < 0 || response.producer_epoch() < 0 {
        return Err(ClientError::Protocol("InitProducerId answered without a producer id".into()));
    }
    Ok((response.producer_id(), response.producer_epoch()))
}

/// One partition's batches in a produce request.
#[derive(Debug, Clone)]
pub(crate) struct ProduceEntry<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub records: &'a [u8],
}

/// `transactional_id`: a transactional producer's (its batches are
/// transactional, and the broker needs the id to accept them).
pub(crate) fn produce(
    stamp: Stamp,
    acks: i16,
    timeout_ms: i32,
    transactional_id: Option<&str>,
    entries: &[ProduceEntry<'_>],
) -> OutFrame {
    let records_bytes: usize = entries.iter().map(|entry| entry.records.len()).sum();
    let mut builder = FlatBufferBuilder::with_capacity(records_bytes + 1024);
    let mut by_topic: BTreeMap<&str, Vec<&ProduceEntry<'_>>> = BTreeMap::new();
    for entry in entries {
        by_topic.entry(entry.topic).or_default().push(entry);
    }
    let mut topics = Vec::with_capacity(by_topic.len());
    for (topic, entries) in by_topic {
        let partitions: Vec<_> = entries
            .iter()
            .map(|entry| {
                let records = builder.create_vector(entry.records);
                proto::ProducePartition::create(
                    &mut builder,
                    &proto::ProducePartitionArgs { partition: entry.partition, records: Some(records) },
                )
            })
            .collect();
        let partitions = builder.create_vector(&partitions);
        let name = builder.create_string(topic);
        topics.push(proto::ProduceTopic::create(
            &mut builder,
            &proto::ProduceTopicArgs { name: Some(name), partitions: Some(partitions) },
        ));
    }
    let topics = builder.create_vector(&topics);
    // A transactional producer adds no partition itself (transactions v2,
    // KIP-890 part 2): each leader adds its partition.
    let transactions_v2 = transactional_id.is_some();
    let transactional_id = transactional_id.map(|id| builder.create_string(id));
    let body = proto::ProduceRequest::create(
        &mut builder,
        &proto::ProduceRequestArgs { acks, timeout_ms, topics: Some(topics), transactional_id, transactions_v2 },
    );
    finish(builder, stamp, Body::ProduceRequest, body.as_union_value())
}

/// The limits of one fetch request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchLimits {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    /// Kafka's isolation.level=read_committed.
    pub read_committed: bool,
}

/// One partition to fetch from `offset`.
#[derive(Debug, Clone)]
pub(crate) struct FetchEntry {
    pub tp: TopicPartition,
    pub offset: i64,
    pub max_bytes: i32,
    /// The leader epoch the metadata gave (-1 skips the broker's check): a
    /// broker with a newer epoch answers FencedLeaderEpoch instead of
    /// serving what a deposed leader holds.
    pub current_leader_epoch: i32,
}

pub(crate) fn fetch(stamp: Stamp, limits: FetchLimits, entries: &[FetchEntry]) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let mut by_topic: BTreeMap<&str, Vec<&FetchEntry>> = BTreeMap::new();
    for entry in entries {
        by_topic.entry(entry.tp.topic.as_str()).or_default().push(entry);
    }
    let mut topics = Vec::with_capacity(by_topic.len());
    for (topic, entries) in by_topic {
        let partitions: Vec<_> = entries
            .iter()
            .map(|entry| {
                proto::FetchPartition::create(
                    &mut builder,
                    &proto::FetchPartitionArgs {
                        partition: entry.tp.partition,
                        offset: entry.offset,
                        max_bytes: entry.max_bytes,
                        current_leader_epoch: entry.current_leader_epoch,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let partitions = builder.create_vector(&partitions);
        let name = builder.create_string(topic);
        topics.push(proto::FetchTopic::create(
            &mut builder,
            &proto::FetchTopicArgs { name: Some(name), partitions: Some(partitions) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let body = proto::FetchRequest::create(
        &mut builder,
        &proto::FetchRequestArgs {
            max_wait_ms: limits.max_wait_ms,
            min_bytes: limits.min_bytes,
            max_bytes: limits.max_bytes,
            topics: Some(topics),
            replica_id: -1,
            isolation_level: i8::from(limits.read_committed),
        },
    );
    finish(builder, stamp, Body::FetchRequest, body.as_union_value())
}

/// `timestamp` is -2 (earliest), -1 (latest: the last stable offset when
/// `read_committed`, else the high watermark) or a time in ms.
pub(crate) fn list_offsets(stamp: Stamp, entries: &[(TopicPartition, i64)], read_committed: bool) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for (tp, timestamp) in entries {
        by_topic.entry(tp.topic.as_str()).or_default().push((tp.partition, *timestamp));
    }
    let mut topics = Vec::with_capacity(by_topic.len());
    for (topic, partitions) in by_topic {
        let partitions: Vec<_> = partitions
            .iter()
            .map(|&(partition, timestamp)| {
                proto::ListOffsetsPartition::create(
                    &mut builder,
                    &proto::ListOffsetsPartitionArgs { partition, timestamp },
                )
            })
            .collect();
        let partitions = builder.create_vector(&partitions);
        let name = builder.create_string(topic);
        topics.push(proto::ListOffsetsTopic::create(
            &mut builder,
            &proto::ListOffsetsTopicArgs { name: Some(name), partitions: Some(partitions) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let body = proto::ListOffsetsRequest::create(
        &mut builder,
        &proto::ListOffsetsRequestArgs { topics: Some(topics), isolation_level: i8::from(read_committed) },
    );
    finish(builder, stamp, Body::ListOffsetsRequest, body.as_union_value())
}

// ---- Decoding ----

pub(crate) fn envelope(frame: &Frame) -> Result<proto::Envelope<'_>, ClientError> {
    frame.read().map_err(|error| ClientError::Protocol(format!("unreadable response: {error}")))
}

/// The body of the expected type, or the broker's `ErrorResponse` as a
/// `Server` error, or a protocol error naming what came instead.
pub(crate) fn body<'a, T>(
    envelope: &proto::Envelope<'a>,
    expected: Body,
    get: impl FnOnce(&proto::Envelope<'a>) -> Option<T>,
) -> Result<T, ClientError> {
    if let Some(error) = envelope.body_as_error_response() {
        return Err(ClientError::server(code_or_unknown(error.error()), error.message()));
    }
    get(envelope).ok_or_else(|| {
        ClientError::Protocol(format!(
            "expected a {} response, got {} (body type {})",
            api_name(expected),
            api_name(envelope.body_type()),
            envelope.body_type().0
        ))
    })
}

/// The broker's `ErrorResponse` in a frame as an error; anything else in
/// its place is a protocol error.
pub(crate) fn decode_error(frame: &Frame) -> ClientError {
    let envelope = match envelope(frame) {
        Ok(envelope) => envelope,
        Err(error) => return error,
    };
    match envelope.body_as_error_response() {
        Some(error) => ClientError::server(code_or_unknown(error.error()), error.message()),
        None => ClientError::Protocol(format!(
            "the broker answered request 0, which was never sent, with a {} body",
            api_name(envelope.body_type())
        )),
    }
}

/// An error answer without a code is still an error.
fn code_or_unknown(code: ErrorCode) -> ErrorCode {
    if code == ErrorCode::None { ErrorCode::Unknown } else { code }
}

/// The request id a response answers.
pub(crate) fn request_id(frame: &Frame) -> Result<u64, ClientError> {
    Ok(envelope(frame)?.request_id())
}

/// What the broker said in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandshakeInfo {
    pub version: u16,
    pub node_id: i32,
    pub shard: u16,
    pub shard_count: u16,
    /// The largest frame the broker accepts.
    pub frame_bytes_max: usize,
}

pub(crate) fn decode_handshake(frame: &Frame) -> Result<HandshakeInfo, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::HandshakeResponse, proto::Envelope::body_as_handshake_response)?;
    if response.error() != ErrorCode::None {
        return Err(ClientError::server(response.error(), None));
    }
    let version = response.version();
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
        return Err(ClientError::Protocol(format!(
            "the broker chose protocol version {version}; this client speaks {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION_MAX}"
        )));
    }
    Ok(HandshakeInfo {
        version,
        node_id: response.node_id(),
        shard: response.shard(),
        shard_count: response.shard_count(),
        frame_bytes_max: usize::try_from(response.frame_bytes_max()).unwrap_or(usize::MAX),
    })
}

fn ints(vector: Option<spate_flatbuf::flatbuffers::Vector<'_, i32>>) -> Vec<i32> {
    vector.map(|v| v.iter().collect()).unwrap_or_default()
}

pub(crate) fn decode_metadata(frame: &Frame) -> Result<ClusterMetadata, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::MetadataResponse, proto::Envelope::body_as_metadata_response)?;
    let brokers = response
        .brokers()
        .map(|brokers| {
            brokers
                .iter()
                .map(|broker| BrokerInfo {
                    node_id: broker.node_id(),
                    host: broker.host().unwrap_or_default().to_string(),
                    port: broker.port(),
                    shard_ports: broker.shard_ports().map(|ports| ports.iter().collect()).unwrap_or_default(),
                    fenced: broker.fenced(),
                    controller_port: broker.controller_port(),
                })
                .collect()
        })
        .unwrap_or_default();
    let topics = response
        .topics()
        .map(|topics| {
            topics
                .iter()
                .map(|topic| TopicInfo {
                    name: topic.name().unwrap_or_default().to_string(),
                    error: error_of(topic.error()),
                    partitions: topic
                        .partitions()
                        .map(|partitions| {
                            partitions
                                .iter()
                                .map(|p| PartitionInfo {
                                    partition: p.partition(),
                                    leader: p.leader(),
                                    leader_epoch: p.leader_epoch(),
                                    shard: p.shard(),
                                    replicas: ints(p.replicas()),
                                    isr: ints(p.isr()),
                                    error: error_of(p.error()),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ClusterMetadata { brokers, controller_id: response.controller_id(), topics })
}

/// The outcome for one topic of CreateTopics or DeleteTopics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicResult {
    pub name: String,
    pub error: Option<ErrorCode>,
    pub message: Option<String>,
}

fn topic_results(
    results: Option<
        spate_flatbuf::flatbuffers::Vector<'_, spate_flatbuf::flatbuffers::ForwardsUOffset<proto::TopicResult<'_>>>,
    >,
) -> Vec<TopicResult> {
    results
        .map(|results| {
            results
                .iter()
                .map(|result| TopicResult {
                    name: result.name().unwrap_or_default().to_string(),
                    error: error_of(result.error()),
                    message: result.message().map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn decode_create_topics(frame: &Frame) -> Result<Vec<TopicResult>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::CreateTopicsResponse, proto::Envelope::body_as_create_topics_response)?;
    Ok(topic_results(response.results()))
}

pub(crate) fn decode_delete_topics(frame: &Frame) -> Result<Vec<TopicResult>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::DeleteTopicsResponse, proto::Envelope::body_as_delete_topics_response)?;
    Ok(topic_results(response.results()))
}

pub(crate) fn decode_alter_configs(frame: &Frame) -> Result<Vec<TopicResult>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::AlterConfigsResponse, proto::Envelope::body_as_alter_configs_response)?;
    Ok(topic_results(response.results()))
}

pub(crate) fn decode_describe_topics(frame: &Frame) -> Result<Vec<TopicDescription>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::DescribeTopicsResponse, proto::Envelope::body_as_describe_topics_response)?;
    let Some(topics) = response.topics() else { return Ok(Vec::new()) };
    Ok(topics.iter().map(|topic| describe_topic(&topic)).collect())
}

fn describe_topic(topic: &proto::TopicDescription<'_>) -> TopicDescription {
    let partitions = topic
        .partitions()
        .map(|partitions| {
            partitions
                .iter()
                .map(|p| PartitionDescription {
                    partition: p.partition(),
                    error: error_of(p.error()),
                    leader: p.leader(),
                    shard: p.shard(),
                    replicas: ints(p.replicas()),
                    isr: ints(p.isr()),
                    log_start_offset: p.log_start_offset(),
                    high_watermark: p.high_watermark(),
                    log_end_offset: p.log_end_offset(),
                    size_bytes: p.size_bytes(),
                    segment_count: p.segment_count(),
                    leader_epoch: p.leader_epoch(),
                    partition_epoch: p.partition_epoch(),
                })
                .collect()
        })
        .unwrap_or_default();
    let configs = topic
        .configs()
        .map(|configs| {
            configs
                .iter()
                .map(|entry| ConfigEntry {
                    key: entry.key().unwrap_or_default().to_string(),
                    value: entry.value().unwrap_or_default().to_string(),
                    is_set: entry.is_set(),
                })
                .collect()
        })
        .unwrap_or_default();
    TopicDescription {
        name: topic.name().unwrap_or_default().to_string(),
        error: error_of(topic.error()),
        topic_id: topic.topic_id().map(str::to_string),
        partitions,
        configs,
    }
}

/// The outcome of one partition of a produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducedPartition {
    pub tp: TopicPartition,
    pub error: Option<ErrorCode>,
    pub base_offset: i64,
    pub message: Option<String>,
}

pub(crate) fn decode_produce(frame: &Frame) -> Result<Vec<ProducedPartition>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::ProduceResponse, proto::Envelope::body_as_produce_response)?;
    let mut out = Vec::new();
    for topic in response.topics().into_iter().flatten() {
        let name = topic.name().unwrap_or_default();
        for p in topic.partitions().into_iter().flatten() {
            out.push(ProducedPartition {
                tp: TopicPartition::new(name, p.partition()),
                error: error_of(p.error()),
                base_offset: p.base_offset(),
                message: p.message().map(str::to_string),
            });
        }
    }
    Ok(out)
}

/// One partition of a fetch response; its records are
/// `payload[records_offset..records_offset + records_bytes]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchedPartition {
    pub tp: TopicPartition,
    pub error: Option<ErrorCode>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub records_offset: u32,
    pub records_bytes: u32,
    /// read_committed: the transactions aborted with data in the records,
    /// as (producer id, first offset).
    pub aborted: Vec<(i64, i64)>,
}

/// A fetch response: the partitions and the payload their records are in.
#[derive(Debug, Clone)]
pub(crate) struct FetchResponse {
    pub partitions: Vec<FetchedPartition>,
    pub payload: Bytes,
}

pub(crate) fn decode_fetch(frame: Frame) -> Result<FetchResponse, ClientError> {
    let mut partitions = Vec::new();
    {
        let envelope = envelope(&frame)?;
        let response = body(&envelope, Body::FetchResponse, proto::Envelope::body_as_fetch_response)?;
        for topic in response.topics().into_iter().flatten() {
            let name = topic.name().unwrap_or_default();
            for p in topic.partitions().into_iter().flatten() {
                partitions.push(FetchedPartition {
                    tp: TopicPartition::new(name, p.partition()),
                    error: error_of(p.error()),
                    high_watermark: p.high_watermark(),
                    log_start_offset: p.log_start_offset(),
                    log_end_offset: p.log_end_offset(),
                    records_offset: p.records_offset(),
                    records_bytes: p.records_bytes(),
                    aborted: p
                        .aborted_transactions()
                        .into_iter()
                        .flatten()
                        .map(|txn| (txn.producer_id(), txn.first_offset()))
                        .collect(),
                });
            }
        }
    }
    Ok(FetchResponse { partitions, payload: frame.payload.freeze() })
}

/// One partition's answer to ListOffsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedOffset {
    pub tp: TopicPartition,
    pub error: Option<ErrorCode>,
    pub offset: i64,
    pub timestamp: i64,
}

pub(crate) fn decode_list_offsets(frame: &Frame) -> Result<Vec<ListedOffset>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::ListOffsetsResponse, proto::Envelope::body_as_list_offsets_response)?;
    let mut out = Vec::new();
    for topic in response.topics().into_iter().flatten() {
        let name = topic.name().unwrap_or_default();
        for p in topic.partitions().into_iter().flatten() {
            out.push(ListedOffset {
                tp: TopicPartition::new(name, p.partition()),
                error: error_of(p.error()),
                offset: p.offset(),
                timestamp: p.timestamp(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::BytesMut;
    use spate_flatbuf::FrameDecoder;

    use super::*;

    /// Decodes an encoded request the way a broker would, to check encoders.
    pub(crate) fn as_received(frame: &OutFrame) -> Frame {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame.header);
        buf.extend_from_slice(&frame.envelope);
        FrameDecoder::new(1 << 26).decode(&mut buf).ok().flatten().expect("one whole, valid frame")
    }

    /// A response frame with `body` built by the closure.
    pub(crate) fn response(
        request_id: u64,
        payload: &[u8],
        build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> (Body, WIPOffset<UnionWIPOffset>),
    ) -> Frame {
        let mut builder = FlatBufferBuilder::new();
        let (body_type, body) = build(&mut builder);
        let envelope = proto::Envelope::create(
            &mut builder,
            &proto::EnvelopeArgs { request_id, version: 1, body_type, body: Some(body) },
        );
        builder.finish(envelope, None);
        let mut buf = BytesMut::from(&spate_flatbuf::encode_frame(&builder, payload)[..]);
        FrameDecoder::new(1 << 26).decode(&mut buf).ok().flatten().expect("one whole, valid frame")
    }

    #[test]
    fn produce_requests_group_partitions_by_topic_and_carry_records_verbatim() {
        let entries = [
            ProduceEntry { topic: "b", partition: 0, records: b"first" },
            ProduceEntry { topic: "a", partition: 2, records: b"second" },
            ProduceEntry { topic: "b", partition: 1, records: b"third" },
        ];
        let out = produce(Stamp { request_id: 42, version: 1 }, -1, 3000, Some("app-1"), &entries);
        let frame = as_received(&out);
        let envelope = frame.read().expect("verified");
        assert_eq!(envelope.request_id(), 42);
        let request = envelope.body_as_produce_request().expect("produce body");
        assert_eq!(request.acks(), -1);
        assert_eq!(request.timeout_ms(), 3000);
        assert_eq!(request.transactional_id(), Some("app-1"), "the broker needs it for transactional batches");
        let mut seen = Vec::new();
        for topic in request.topics().into_iter().flatten() {
            for p in topic.partitions().into_iter().flatten() {
                let records = p.records().map(|r| r.bytes().to_vec()).unwrap_or_default();
                seen.push((topic.name().unwrap_or_default().to_string(), p.partition(), records));
            }
        }
        assert_eq!(
            seen,
            vec![
                ("a".to_string(), 2, b"second".to_vec()),
                ("b".to_string(), 0, b"first".to_vec()),
                ("b".to_string(), 1, b"third".to_vec()),
            ]
        );
    }

    #[test]
    fn an_error_response_becomes_a_server_error_and_a_wrong_body_a_protocol_error() {
        let frame = response(3, b"", |builder| {
            let message = builder.create_string("no such API");
            let body = proto::ErrorResponse::create(
                builder,
                &proto::ErrorResponseArgs { error: ErrorCode::InvalidRequest, message: Some(message) },
            );
            (Body::ErrorResponse, body.as_union_value())
        });
        assert!(matches!(
            decode_metadata(&frame),
            Err(ClientError::Server { code: ErrorCode::InvalidRequest, message: Some(m) }) if m == "no such API"
        ));
        let frame = response(3, b"", |builder| {
            let body = proto::ProduceResponse::create(builder, &proto::ProduceResponseArgs { topics: None });
            (Body::ProduceResponse, body.as_union_value())
        });
        assert!(matches!(decode_metadata(&frame), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn a_handshake_with_a_version_we_do_not_speak_is_refused() {
        let handshake = |version: u16, error: ErrorCode| {
            response(1, b"", |builder| {
                let body = proto::HandshakeResponse::create(
                    builder,
                    &proto::HandshakeResponseArgs {
                        error,
                        version,
                        node_id: 7,
                        shard: 1,
                        shard_count: 2,
                        frame_bytes_max: 1 << 20,
                    },
                );
                (Body::HandshakeResponse, body.as_union_value())
            })
        };
        let info = decode_handshake(&handshake(1, ErrorCode::None)).expect("version 1 is ours");
        assert_eq!((info.node_id, info.shard, info.shard_count, info.frame_bytes_max), (7, 1, 2, 1 << 20));
        assert!(matches!(decode_handshake(&handshake(2, ErrorCode::None)), Err(ClientError::Protocol(_))));
        assert!(matches!(
            decode_handshake(&handshake(1, ErrorCode::UnsupportedVersion)),
            Err(ClientError::Server { code: ErrorCode::UnsupportedVersion, .. })
        ));
    }
}
