//! Requests in, responses out. `dispatch` runs a request's synchronous
//! part at once (so a connection's appends keep their order, across cores
//! too) and returns what is left as a future; the connection writes the
//! responses in request order.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, frame_header};

use crate::admin::{ADMIN_SHARD, AdminOp, AlterSpec, CreateSpec};
use crate::budget::Charge;
use crate::catalog::TopicMeta;
use crate::group;
use crate::limits::{
    FETCH_PARTITION_BYTES_MIN, FETCH_WAIT_MS_MAX, PRODUCE_SLICE_FRACTION_MIN, READ_CHUNK_BYTES, REQUEST_TIMEOUT_MS_MAX,
};
use crate::shard::{
    AppendResult, EpochEndResult, OffsetResult, Outcome, PartitionStats, ReadResult, Shard, ShardOp, config_map,
};
use crate::topic_config;

/// A response as the connection writes it.
#[derive(Debug)]
pub(crate) enum Response {
    /// Produce with acks=0: nothing goes back.
    None,
    Frame(Bytes),
    /// A frame whose payload is written from these buffers (vectored, no
    /// copy): the fetch path.
    Vectored {
        head: Bytes,
        payload: Vec<Bytes>,
    },
    /// Write this (if anything), then close: the stream is unusable.
    Close(Option<Bytes>),
}

impl Response {
    /// The bytes the response holds until it is written.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Response::None | Response::Close(None) => 0,
            Response::Frame(frame) | Response::Close(Some(frame)) => frame.len(),
            Response::Vectored { head, payload } => head.len() + payload.iter().map(Bytes::len).sum::<usize>(),
        }
    }
}

pub(crate) type Later = Pin<Box<dyn Future<Output = Response>>>;

pub(crate) enum Reply {
    Now(Response),
    Later(Later),
}

pub(crate) fn envelope_frame(
    mut builder: FlatBufferBuilder<'_>,
    request_id: u64,
    body_type: Body,
    body: WIPOffset<UnionWIPOffset>,
    payload_bytes: usize,
) -> Bytes {
    let envelope = Envelope::create(
        &mut builder,
        &EnvelopeArgs { request_id, version: PROTOCOL_VERSION_MAX, body_type, body: Some(body) },
    );
    builder.finish(envelope, None);
    let data = builder.finished_data();
    let mut out = BytesMut::with_capacity(spate_flatbuf::FRAME_HEADER_BYTES + data.len());
    out.extend_from_slice(&frame_header(data.len(), payload_bytes));
    out.extend_from_slice(data);
    out.freeze()
}

/// An ErrorResponse frame.
pub(crate) fn error_frame(request_id: u64, error: ErrorCode, message: &str) -> Bytes {
    let mut builder = FlatBufferBuilder::new();
    let message = builder.create_string(&crate::caps::bounded_message(message.to_string()));
    let body = ErrorResponse::create(&mut builder, &ErrorResponseArgs { error, message: Some(message) });
    envelope_frame(builder, request_id, Body::ErrorResponse, body.as_union_value(), 0)
}

pub(crate) fn invalid(request_id: u64, message: &str) -> Reply {
    Reply::Now(Response::Frame(error_frame(request_id, ErrorCode::InvalidRequest, message)))
}

/// What a connection has established about its peer, for the requests
/// that follow on it.
#[derive(Debug)]
pub(crate) struct Session {
    /// The broker this connection proved it is (a valid `broker_auth` in
    /// its handshake), -1 for a client: only that broker may fetch as a
    /// replica on it.
    broker: std::cell::Cell<i32>,
}

impl Session {
    pub fn new() -> Session {
        Session { broker: std::cell::Cell::new(-1) }
    }
}

/// Entry point for one verified frame. `charge` holds the request's bytes
/// in the connection's and shard's budgets (a fetch sizes its answer to the
/// room they have and charges it there).
pub(crate) fn dispatch(shard: &Rc<Shard>, session: &Session, frame: Frame, charge: &Charge) -> (Reply, &'static str) {
    let (request_id, version, body_type) = match frame.read() {
        Ok(envelope) => (envelope.request_id(), envelope.version(), envelope.body_type()),
        Err(err) => return (invalid(0, &format!("envelope fails verification: {err}")), "error"),
    };
    let api = spate_flatbuf::api_name(body_type);
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
        let message =
            format!("protocol version {version}; this broker speaks {PROTOCOL_VERSION_MIN}-{PROTOCOL_VERSION_MAX}");
        return (Reply::Now(Response::Frame(error_frame(request_id, ErrorCode::UnsupportedVersion, &message))), api);
    }
    // Caps first: nothing of a request that breaks one is copied or
    // answered entry by entry.
    if let Some(refusal) = envelope(&frame).and_then(|e| crate::caps::check(&e).err()) {
        let response = error_frame(request_id, refusal.error, &refusal.message);
        // A producer with acks=0 reads no answers: as Kafka does, close the
        // connection so it learns that something went wrong.
        let acks_zero = envelope(&frame).and_then(|e| e.body_as_produce_request()).is_some_and(|r| r.acks() == 0);
        let response = if acks_zero { Response::Close(Some(response)) } else { Response::Frame(response) };
        return (Reply::Now(response), api);
    }
    let reply = match body_type {
        Body::ProduceRequest => produce(shard, frame, request_id),
        Body::FetchRequest => fetch(shard, session, &frame, request_id, charge),
        Body::HandshakeRequest => handshake(shard, session, &frame, request_id),
        Body::MetadataRequest => metadata(shard, &frame, request_id),
        Body::CreateTopicsRequest => create_topics(shard, &frame, request_id),
        Body::DeleteTopicsRequest => delete_topics(shard, &frame, request_id),
        Body::DescribeTopicsRequest => describe_topics(shard, &frame, request_id),
        Body::AlterConfigsRequest => alter_configs(shard, &frame, request_id),
        Body::ListOffsetsRequest => list_offsets(shard, &frame, request_id),
        Body::ConsumerGroupHeartbeatRequest => group::api::heartbeat(shard, &frame, request_id),
        Body::OffsetCommitRequest => group::api::offset_commit(shard, &frame, request_id),
        Body::OffsetFetchRequest => group::api::offset_fetch(shard, &frame, request_id),
        Body::ListGroupsRequest => group::api::list_groups(shard, request_id),
        Body::DescribeGroupsRequest => group::api::describe_groups(shard, &frame, request_id),
        Body::DeleteGroupsRequest => group::api::delete_groups(shard, &frame, request_id),
        Body::InitProducerIdRequest => init_producer_id(shard, request_id),
        Body::OffsetForLeaderEpochRequest => offset_for_leader_epoch(shard, &frame, request_id),
        other => {
            invalid(request_id, &format!("{} is not a request this broker serves", spate_flatbuf::api_name(other)))
        }
    };
    (reply, api)
}

/// The verified envelope (decode verified it; nothing has changed it).
pub(crate) fn envelope(frame: &Frame) -> Option<Envelope<'_>> {
    frame.read().ok()
}

fn clamp_ms(ms: i32, max_ms: u64) -> Duration {
    Duration::from_millis((ms.max(0) as u64).min(max_ms))
}

fn topic_of(shard: &Shard, name: &str) -> Option<Arc<TopicMeta>> {
    shard.shared.catalog.load().topics.get(name).cloned()
}

/// A partition index from the wire, if the topic has it.
fn partition_of(topic: &TopicMeta, partition: i32) -> Option<u32> {
    u32::try_from(partition).ok().filter(|&p| p < topic.partitions)
}

// ---- Handshake ----

fn handshake(shard: &Rc<Shard>, session: &Session, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_handshake_request()) else {
        return invalid(request_id, "handshake body missing");
    };
    let low = request.version_min().max(PROTOCOL_VERSION_MIN);
    let high = request.version_max().min(PROTOCOL_VERSION_MAX);
    let (mut error, version) = if low <= high { (ErrorCode::None, high) } else { (ErrorCode::UnsupportedVersion, 0) };
    if let Some(proof) = request.broker_auth() {
        let secret = shard.shared.catalog.load().cluster_secret.clone();
        let now_ms = crate::broker_auth::unix_now_ms();
        let verified = shard.replay_guard.borrow_mut().verify(
            secret.as_deref(),
            proof.bytes(),
            shard.shared.config.node_id,
            shard.id as u16,
            now_ms,
        );
        match verified {
            Ok(node_id) => session.broker.set(node_id),
            Err(err) => {
                tracing::warn!(shard = shard.id, "refused a broker handshake: {err}");
                error = ErrorCode::ClusterAuthorizationFailed;
            }
        }
    }
    let mut builder = FlatBufferBuilder::new();
    let body = HandshakeResponse::create(
        &mut builder,
        &HandshakeResponseArgs {
            error,
            version,
            node_id: shard.shared.config.node_id,
            shard: shard.id as u16,
            shard_count: shard.shared.shard_count as u16,
            frame_bytes_max: shard.shared.config.frame_bytes_max as u32,
        },
    );
    Reply::Now(Response::Frame(envelope_frame(builder, request_id, Body::HandshakeResponse, body.as_union_value(), 0)))
}

// ---- Metadata ----

fn metadata(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_metadata_request()) else {
        return invalid(request_id, "metadata body missing");
    };
    let catalog = shard.shared.catalog.load();
    let mut builder = FlatBufferBuilder::new();
    let names: Vec<String> = match request.topics() {
        Some(topics) => topics.iter().map(str::to_string).collect(),
        None => {
            let mut all: Vec<String> = catalog.topics.keys().cloned().collect();
            all.sort();
            all
        }
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in &names {
        let name_offset = builder.create_string(name);
        let Some(topic) = catalog.topics.get(name) else {
            topics.push(TopicMetadata::create(
                &mut builder,
                &TopicMetadataArgs {
                    name: Some(name_offset),
                    error: ErrorCode::UnknownTopicOrPartition,
                    partitions: None,
                },
            ));
            continue;
        };
        let mut partitions = Vec::with_capacity(topic.partitions as usize);
        for partition in 0..topic.partitions {
            let assignment = topic.assignment(partition);
            let replicas = builder.create_vector(&assignment.replicas);
            let isr = builder.create_vector(&assignment.isr);
            // The leader's shard that owns the partition (its shard count
            // may differ from this broker's).
            let leader_shards = catalog.brokers.get(&assignment.leader).map_or(0, |b| b.shard_ports.len());
            let leader_shard =
                if leader_shards == 0 { 0 } else { crate::catalog::owner_shard(&topic.name, partition, leader_shards) };
            let error = if assignment.leader < 0 { ErrorCode::LeaderNotAvailable } else { ErrorCode::None };
            partitions.push(PartitionMetadata::create(
                &mut builder,
                &PartitionMetadataArgs {
                    partition: partition as i32,
                    error,
                    leader: assignment.leader,
                    leader_epoch: assignment.leader_epoch,
                    shard: leader_shard as u16,
                    replicas: Some(replicas),
                    isr: Some(isr),
                },
            ));
        }
        let partitions = builder.create_vector(&partitions);
        topics.push(TopicMetadata::create(
            &mut builder,
            &TopicMetadataArgs { name: Some(name_offset), error: ErrorCode::None, partitions: Some(partitions) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let brokers: Vec<_> = catalog
        .brokers
        .values()
        .map(|broker| {
            let host = builder.create_string(&broker.host);
            let shard_ports = builder.create_vector(&broker.shard_ports);
            BrokerInfo::create(
                &mut builder,
                &BrokerInfoArgs {
                    node_id: broker.node_id,
                    host: Some(host),
                    port: broker.port,
                    shard_ports: Some(shard_ports),
                    fenced: broker.fenced,
                    controller_port: broker.controller_port,
                },
            )
        })
        .collect();
    let brokers = builder.create_vector(&brokers);
    let controller_id = catalog.controller_id;
    let body = MetadataResponse::create(
        &mut builder,
        &MetadataResponseArgs { brokers: Some(brokers), controller_id, topics: Some(topics) },
    );
    Reply::Now(Response::Frame(envelope_frame(builder, request_id, Body::MetadataResponse, body.as_union_value(), 0)))
}

// ---- CreateTopics / DeleteTopics ----

/// Which admin API a list of topic results answers.
#[derive(Debug, Clone, Copy)]
enum AdminApi {
    Create,
    Delete,
    Alter,
}

fn topic_results_frame(request_id: u64, results: &[(String, Outcome)], api: AdminApi) -> Bytes {
    let mut builder = FlatBufferBuilder::new();
    let mut offsets = Vec::with_capacity(results.len());
    for (name, outcome) in results {
        let name = builder.create_string(name);
        let message = outcome.message.as_deref().map(|m| builder.create_string(m));
        offsets.push(TopicResult::create(
            &mut builder,
            &TopicResultArgs { name: Some(name), error: outcome.error, message },
        ));
    }
    let results = builder.create_vector(&offsets);
    match api {
        AdminApi::Create => {
            let body = CreateTopicsResponse::create(&mut builder, &CreateTopicsResponseArgs { results: Some(results) });
            envelope_frame(builder, request_id, Body::CreateTopicsResponse, body.as_union_value(), 0)
        }
        AdminApi::Delete => {
            let body = DeleteTopicsResponse::create(&mut builder, &DeleteTopicsResponseArgs { results: Some(results) });
            envelope_frame(builder, request_id, Body::DeleteTopicsResponse, body.as_union_value(), 0)
        }
        AdminApi::Alter => {
            let body = AlterConfigsResponse::create(&mut builder, &AlterConfigsResponseArgs { results: Some(results) });
            envelope_frame(builder, request_id, Body::AlterConfigsResponse, body.as_union_value(), 0)
        }
    }
}

fn admin_reply(
    shard: &Rc<Shard>,
    request_id: u64,
    timeout: Duration,
    api: AdminApi,
    make: impl FnOnce(oneshot::Sender<Vec<(String, Outcome)>>) -> AdminOp,
    names: Vec<String>,
) -> Reply {
    let (reply, wait) = oneshot::channel();
    shard.submit(ADMIN_SHARD, ShardOp::Admin(make(reply)));
    Reply::Later(Box::pin(async move {
        let results = futures::select! {
            results = futures::FutureExt::fuse(wait) => results.unwrap_or_else(|_| {
                names.iter().map(|n| (n.clone(), Outcome::err(ErrorCode::BrokerShuttingDown, "admin shard stopped"))).collect()
            }),
            () = futures::FutureExt::fuse(crate::deadline::Deadline::after(timeout)) => names
                .iter()
                .map(|n| (n.clone(), Outcome::err(ErrorCode::RequestTimedOut, "not finished in time; it may still complete")))
                .collect(),
        };
        Response::Frame(topic_results_frame(request_id, &results, api))
    }))
}

fn create_topics(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_create_topics_request()) else {
        return invalid(request_id, "create topics body missing");
    };
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default().to_string();
        names.push(name.clone());
        let entries: Vec<(String, String)> = topic
            .configs()
            .iter()
            .flatten()
            .map(|c| (c.key().unwrap_or_default().to_string(), c.value().unwrap_or_default().to_string()))
            .collect();
        specs.push(match config_map(&entries) {
            Ok(configs) => Ok(CreateSpec {
                name,
                partitions: topic.partitions(),
                replication_factor: topic.replication_factor(),
                configs,
            }),
            Err(message) => Err((name, Outcome::err(ErrorCode::InvalidConfig, message))),
        });
    }
    let validate_only = request.validate_only();
    let timeout = clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX);
    admin_reply(
        shard,
        request_id,
        timeout,
        AdminApi::Create,
        |reply| AdminOp::Create { topics: specs, validate_only, reply },
        names,
    )
}

fn delete_topics(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_delete_topics_request()) else {
        return invalid(request_id, "delete topics body missing");
    };
    let names: Vec<String> = request.names().iter().flatten().map(str::to_string).collect();
    let timeout = clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX);
    let op_names = names.clone();
    admin_reply(shard, request_id, timeout, AdminApi::Delete, |reply| AdminOp::Delete { names: op_names, reply }, names)
}

// ---- AlterConfigs ----

fn alter_configs(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_alter_configs_request()) else {
        return invalid(request_id, "alter configs body missing");
    };
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default().to_string();
        names.push(name.clone());
        let set = topic
            .set()
            .iter()
            .flatten()
            .map(|c| (c.key().unwrap_or_default().to_string(), c.value().unwrap_or_default().to_string()))
            .collect();
        let delete = topic.delete().iter().flatten().map(str::to_string).collect();
        specs.push(AlterSpec { name, set, delete });
    }
    let validate_only = request.validate_only();
    let timeout = clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX);
    admin_reply(
        shard,
        request_id,
        timeout,
        AdminApi::Alter,
        |reply| AdminOp::Alter { topics: specs, validate_only, reply },
        names,
    )
}

// ---- DescribeTopics ----

fn describe_topics(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_describe_topics_request()) else {
        return invalid(request_id, "describe topics body missing");
    };
    let catalog = shard.shared.catalog.load_full();
    let names: Vec<String> = match request.names() {
        Some(names) => names.iter().map(str::to_string).collect(),
        None => {
            let mut all: Vec<String> = catalog.topics.keys().cloned().collect();
            all.sort();
            all
        }
    };
    let mut waits = Vec::new();
    for name in &names {
        let Some(topic) = catalog.topics.get(name).cloned() else {
            waits.push((name.clone(), None, Vec::new()));
            continue;
        };
        let mut parts = Vec::new();
        for partition in 0..topic.partitions {
            let (reply, wait) = oneshot::channel();
            shard.submit(
                shard.shared.owner(&topic.name, partition),
                ShardOp::Stats { topic: topic.clone(), partition, reply },
            );
            parts.push(wait);
        }
        waits.push((name.clone(), Some(topic), parts));
    }
    let node_id = shard.shared.config.node_id;
    let shared = shard.shared.clone();
    Reply::Later(Box::pin(async move {
        let mut builder = FlatBufferBuilder::new();
        let mut topics = Vec::new();
        for (name, topic, parts) in waits {
            let name_offset = builder.create_string(&name);
            let Some(topic) = topic else {
                topics.push(TopicDescription::create(
                    &mut builder,
                    &TopicDescriptionArgs {
                        name: Some(name_offset),
                        error: ErrorCode::UnknownTopicOrPartition,
                        ..Default::default()
                    },
                ));
                continue;
            };
            let mut partitions = Vec::new();
            for (partition, wait) in parts.into_iter().enumerate() {
                let mut stats =
                    wait.await.unwrap_or(PartitionStats { error: ErrorCode::BrokerShuttingDown, ..Default::default() });
                let assignment = topic.assignment(partition as u32);
                if stats.error == ErrorCode::UnknownTopicOrPartition && !assignment.replicas.contains(&node_id) {
                    // Not hosted here: the assignment is all this broker
                    // knows (its leader has the offsets).
                    stats = PartitionStats {
                        error: ErrorCode::None,
                        log_start_offset: -1,
                        high_watermark: -1,
                        log_end_offset: -1,
                        ..Default::default()
                    };
                }
                let replicas = builder.create_vector(&assignment.replicas);
                let isr = builder.create_vector(&assignment.isr);
                partitions.push(PartitionDescription::create(
                    &mut builder,
                    &PartitionDescriptionArgs {
                        partition: partition as i32,
                        error: stats.error,
                        leader: assignment.leader,
                        shard: shared.owner(&topic.name, partition as u32) as u16,
                        replicas: Some(replicas),
                        isr: Some(isr),
                        log_start_offset: stats.log_start_offset,
                        high_watermark: stats.high_watermark,
                        log_end_offset: stats.log_end_offset,
                        size_bytes: stats.size_bytes,
                        segment_count: stats.segment_count,
                        leader_epoch: assignment.leader_epoch,
                        partition_epoch: assignment.partition_epoch,
                    },
                ));
            }
            let partitions = builder.create_vector(&partitions);
            let effective = match shared.log_config(&topic) {
                Ok(config) => topic_config::effective(&config, &topic.configs),
                Err(_) => Vec::new(),
            };
            let mut configs = Vec::new();
            for (key, value) in effective {
                let is_set = topic.configs.contains_key(key);
                let key = builder.create_string(key);
                let value = builder.create_string(&value);
                configs.push(ConfigEntry::create(
                    &mut builder,
                    &ConfigEntryArgs { key: Some(key), value: Some(value), is_set },
                ));
            }
            let configs = builder.create_vector(&configs);
            let topic_id = builder.create_string(&topic.topic_id);
            topics.push(TopicDescription::create(
                &mut builder,
                &TopicDescriptionArgs {
                    name: Some(name_offset),
                    error: ErrorCode::None,
                    topic_id: Some(topic_id),
                    partitions: Some(partitions),
                    configs: Some(configs),
                },
            ));
        }
        let topics = builder.create_vector(&topics);
        let body = DescribeTopicsResponse::create(&mut builder, &DescribeTopicsResponseArgs { topics: Some(topics) });
        Response::Frame(envelope_frame(builder, request_id, Body::DescribeTopicsResponse, body.as_union_value(), 0))
    }))
}

// ---- Produce ----

/// One partition's part of a produce request, as read from the envelope.
struct ProducePart {
    topic_index: usize,
    partition: i32,
    /// Where its records lie in the envelope buffer.
    range: Option<Range<usize>>,
    refused: Option<Outcome>,
}

fn produce(shard: &Rc<Shard>, frame: Frame, request_id: u64) -> Reply {
    let mut topic_names: Vec<String> = Vec::new();
    let mut topics: Vec<Option<Arc<TopicMeta>>> = Vec::new();
    let mut parts: Vec<ProducePart> = Vec::new();
    let (acks, timeout) = {
        let Some(request) = envelope(&frame).and_then(|e| e.body_as_produce_request()) else {
            return invalid(request_id, "produce body missing");
        };
        let base = frame.envelope.as_ptr() as usize;
        for (topic_index, topic) in request.topics().iter().flatten().enumerate() {
            let name = topic.name().unwrap_or_default();
            let meta = topic_of(shard, name);
            topic_names.push(name.to_string());
            for part in topic.partitions().iter().flatten() {
                let refused = match &meta {
                    // The topic's name is in the answer once, beside its
                    // entries; the messages do not repeat it.
                    None => Some(Outcome::err(ErrorCode::UnknownTopicOrPartition, "no such topic")),
                    Some(_) if spate_flatbuf::is_internal_topic(name) => {
                        Some(Outcome::err(ErrorCode::InternalTopic, "the topic is written by the broker only"))
                    }
                    Some(meta) if partition_of(meta, part.partition()).is_none() => Some(Outcome::err(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("the topic has no partition {}", part.partition()),
                    )),
                    _ => None,
                };
                // Verification put the vector inside the envelope; checked
                // arithmetic keeps a mistake there from becoming a bad slice.
                let range = part.records().and_then(|records| {
                    let start = (records.bytes().as_ptr() as usize).checked_sub(base)?;
                    Some(start..start.checked_add(records.bytes().len())?)
                });
                let refused = refused.or_else(|| match &range {
                    Some(range) if !range.is_empty() => None,
                    _ => Some(Outcome::err(ErrorCode::InvalidRequest, "no records")),
                });
                parts.push(ProducePart { topic_index, partition: part.partition(), range, refused });
            }
            topics.push(meta);
        }
        (request.acks(), clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX))
    };
    if !matches!(acks, -1..=1) {
        for part in &mut parts {
            part.refused = Some(Outcome::err(ErrorCode::InvalidRequiredAcks, format!("acks {acks}")));
        }
    }
    // Slice each partition's records out of the receive buffer, in buffer
    // order. A flatbuffer may legally point two partitions at one vector;
    // overlapping slices cannot be split apart, so such a request is refused.
    let mut order: Vec<usize> = (0..parts.len()).filter(|&i| parts[i].refused.is_none()).collect();
    order.sort_by_key(|&i| parts[i].range.as_ref().map_or(0, |r| r.start));
    let mut records: Vec<Option<BytesMut>> = (0..parts.len()).map(|_| None).collect();
    let frame_bytes = frame.envelope.len() + frame.payload.len();
    let mut rest = frame.envelope;
    let mut consumed = 0usize;
    for &i in &order {
        let Some(range) = parts[i].range.clone() else { continue };
        if range.start < consumed || range.end > consumed + rest.len() {
            return invalid(request_id, "partitions' records overlap or lie outside the frame");
        }
        let _skipped = rest.split_to(range.start - consumed);
        records[i] = Some(rest.split_to(range.len()));
        consumed = range.end;
    }
    let mut waits: Vec<Result<oneshot::Receiver<AppendResult>, Outcome>> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if let Some(refused) = &part.refused {
            waits.push(Err(refused.clone()));
            continue;
        }
        let topic = topics[part.topic_index].clone().expect("refused unless the topic exists");
        let mut sliced = records[i].take().expect("sliced above");
        // The tail cache keeps what it holds alive and counts only the
        // batch: a small batch (or one much smaller than its frame) is
        // copied so it does not pin the receive buffer around it.
        if sliced.len() < READ_CHUNK_BYTES || sliced.len() * PRODUCE_SLICE_FRACTION_MIN < frame_bytes {
            sliced = BytesMut::from(&sliced[..]);
        }
        let batches = match split_into_batches(sliced) {
            Ok(batches) => batches,
            Err(outcome) => {
                waits.push(Err(outcome));
                continue;
            }
        };
        let partition = part.partition as u32;
        let (reply, wait) = oneshot::channel();
        let owner = shard.shared.owner(&topic.name, partition);
        shard.submit(owner, ShardOp::Produce { topic, partition, batches, acks, timeout, reply });
        waits.push(Ok(wait));
    }
    if acks == 0 {
        // Nothing goes back, but the request stays in flight (and in the
        // byte budgets) until its appends are done: an acks=0 flood is held
        // back like any other, rather than queueing in the logs unbounded.
        return Reply::Later(Box::pin(async move {
            for wait in waits.into_iter().flatten() {
                let _ = wait.await;
            }
            Response::None
        }));
    }
    let partitions: Vec<(usize, i32)> = parts.iter().map(|p| (p.topic_index, p.partition)).collect();
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(waits.len());
        for wait in waits {
            results.push(match wait {
                Ok(wait) => wait.await.unwrap_or(AppendResult {
                    outcome: Outcome::err(ErrorCode::BrokerShuttingDown, "the partition's shard stopped"),
                    base_offset: -1,
                    log_start_offset: -1,
                }),
                Err(outcome) => AppendResult { outcome, base_offset: -1, log_start_offset: -1 },
            });
        }
        Response::Frame(produce_response(request_id, &topic_names, &partitions, &results))
    }))
}

/// Splits a partition's records into whole batches without copying.
pub(crate) fn split_into_batches(mut records: BytesMut) -> Result<Vec<BytesMut>, Outcome> {
    let mut lengths = Vec::new();
    for span in spate_format::batch::split_batches(&records) {
        match span {
            Ok(span) => lengths.push(span.range.len()),
            Err(err) => return Err(Outcome::err(ErrorCode::CorruptMessage, err.to_string())),
        }
    }
    let batches: Vec<BytesMut> = lengths.into_iter().map(|len| records.split_to(len)).collect();
    assert!(records.is_empty(), "split_batches covers the buffer or fails");
    Ok(batches)
}

fn produce_response(
    request_id: u64,
    topic_names: &[String],
    partitions: &[(usize, i32)],
    results: &[AppendResult],
) -> Bytes {
    let mut builder = FlatBufferBuilder::new();
    let mut by_topic: BTreeMap<usize, Vec<WIPOffset<ProducePartitionResponse>>> = BTreeMap::new();
    for ((topic_index, partition), result) in partitions.iter().zip(results) {
        let message = result.outcome.message.as_deref().map(|m| builder.create_string(m));
        let offset = ProducePartitionResponse::create(
            &mut builder,
            &ProducePartitionResponseArgs {
                partition: *partition,
                error: result.outcome.error,
                base_offset: result.base_offset,
                log_start_offset: result.log_start_offset,
                message,
            },
        );
        by_topic.entry(*topic_index).or_default().push(offset);
    }
    let mut topics = Vec::new();
    for (topic_index, name) in topic_names.iter().enumerate() {
        let name = builder.create_string(name);
        let parts = by_topic.remove(&topic_index).unwrap_or_default();
        let parts = builder.create_vector(&parts);
        topics.push(ProduceTopicResponse::create(
            &mut builder,
            &ProduceTopicResponseArgs { name: Some(name), partitions: Some(parts) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let body = ProduceResponse::create(&mut builder, &ProduceResponseArgs { topics: Some(topics) });
    envelope_frame(builder, request_id, Body::ProduceResponse, body.as_union_value(), 0)
}

// ---- InitProducerId ----

/// A new producer id from the admin shard, with epoch 0.
fn init_producer_id(shard: &Rc<Shard>, request_id: u64) -> Reply {
    let (reply, wait) = oneshot::channel();
    shard.submit(ADMIN_SHARD, ShardOp::InitProducerId { reply });
    Reply::Later(Box::pin(async move {
        let result = wait.await.unwrap_or_else(|_| Err("the admin shard stopped".to_string()));
        let mut builder = FlatBufferBuilder::new();
        let args = match &result {
            Ok(producer_id) => InitProducerIdResponseArgs {
                error: ErrorCode::None,
                producer_id: *producer_id,
                producer_epoch: 0,
                message: None,
            },
            Err(message) => {
                tracing::error!(error = %message, "cannot allocate a producer id");
                InitProducerIdResponseArgs {
                    error: ErrorCode::ProducerIdsUnavailable,
                    producer_id: -1,
                    producer_epoch: -1,
                    message: Some(builder.create_string(message)),
                }
            }
        };
        let body = InitProducerIdResponse::create(&mut builder, &args);
        Response::Frame(envelope_frame(builder, request_id, Body::InitProducerIdResponse, body.as_union_value(), 0))
    }))
}

// ---- Fetch ----

#[derive(Clone)]
struct FetchPart {
    topic_index: usize,
    partition: i32,
    /// None: unknown topic or partition.
    target: Option<(Arc<TopicMeta>, u32)>,
    offset: i64,
    bytes_max: usize,
    current_leader_epoch: i32,
    /// Replica fetches: what the follower has made durable (-1: unknown).
    replica_durable_offset: i64,
}

/// A partition's read as submitted to its owner.
enum Submitted {
    /// No such topic or partition.
    Unknown,
    /// Left out: the request's byte budget went to earlier partitions.
    OverBudget,
    Waiting(oneshot::Receiver<ReadResult>),
}

fn submit_fetch(shard: &Rc<Shard>, part: &FetchPart, wait_until: Option<Instant>, replica_id: i32) -> Submitted {
    let Some((topic, partition)) = part.target.clone() else { return Submitted::Unknown };
    if part.bytes_max == 0 {
        return Submitted::OverBudget;
    }
    let (reply, wait) = oneshot::channel();
    let owner = shard.shared.owner(&topic.name, partition);
    shard.submit(
        owner,
        ShardOp::Fetch {
            topic,
            partition,
            offset: part.offset,
            bytes_max: part.bytes_max,
            wait_until,
            replica_id,
            current_leader_epoch: part.current_leader_epoch,
            replica_durable_offset: part.replica_durable_offset,
            reply,
        },
    );
    Submitted::Waiting(wait)
}

async fn collect(submitted: Submitted) -> ReadResult {
    match submitted {
        Submitted::Unknown => ReadResult { error: ErrorCode::UnknownTopicOrPartition, ..unknown_read() },
        Submitted::OverBudget => unknown_read(),
        Submitted::Waiting(wait) => {
            wait.await.unwrap_or(ReadResult { error: ErrorCode::BrokerShuttingDown, ..unknown_read() })
        }
    }
}

fn unknown_read() -> ReadResult {
    ReadResult { high_watermark: -1, log_start_offset: -1, log_end_offset: -1, ..Default::default() }
}

/// A fetch request's byte budget as it is handed to its partitions.
#[derive(Debug)]
pub(crate) struct FetchBudget {
    left_bytes: usize,
}

impl FetchBudget {
    pub(crate) fn new(request_bytes_max: usize) -> Self {
        FetchBudget { left_bytes: request_bytes_max }
    }

    /// The bytes the next partition may read (0: none, it is left out).
    /// It may read what it asks for, within what is left, but uses up at
    /// least `FETCH_PARTITION_BYTES_MIN` of the budget.
    pub(crate) fn take(&mut self, partition_bytes_max: i32) -> usize {
        let bytes_max = (partition_bytes_max.max(1) as usize).min(self.left_bytes);
        let used = bytes_max.max(FETCH_PARTITION_BYTES_MIN).min(self.left_bytes);
        self.left_bytes -= used;
        bytes_max
    }
}

fn fetch(shard: &Rc<Shard>, session: &Session, frame: &Frame, request_id: u64, charge: &Charge) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_fetch_request()) else {
        return invalid(request_id, "fetch body missing");
    };
    // A replica fetch moves the leader's high watermark and ISR: only the
    // broker it names, proved on this connection, may send one (issue 14).
    let replica_id = request.replica_id().max(-1);
    if replica_id >= 0 && replica_id != session.broker.get() {
        tracing::warn!(
            shard = shard.id,
            replica_id,
            "refused a replica fetch from a connection that did not prove it is that broker"
        );
        let message = format!("fetching as replica {replica_id} needs a broker's proof on this connection");
        return Reply::Now(Response::Frame(error_frame(request_id, ErrorCode::ClusterAuthorizationFailed, &message)));
    }
    // The response must fit the frames clients accept; leave room for its
    // envelope. It must also fit the room left in the connection's and the
    // shard's byte budgets, where it is charged now: a smaller answer, not
    // a wait, so a full budget slows a consumer down instead of stopping it
    // (at least one minimum partition slice is always read).
    let frame_room = shard.shared.config.frame_bytes_max.saturating_sub(1 << 20).max(1);
    let budget_room = charge.budgets().room_bytes().max(FETCH_PARTITION_BYTES_MIN);
    let request_bytes_max = (request.max_bytes().max(1) as usize).min(frame_room).min(budget_room);
    let request_charge_bytes = frame.envelope.len() + frame.payload.len();
    charge.resize(request_charge_bytes + request_bytes_max);
    let charge = charge.clone();
    let max_wait = clamp_ms(request.max_wait_ms(), FETCH_WAIT_MS_MAX);
    let min_bytes = request.min_bytes().max(0) as usize;
    let mut topic_names = Vec::new();
    let mut parts = Vec::new();
    // The request's byte budget goes to partitions in order; those past it
    // are not read at all. Each read returns at least one batch, so each
    // partition read takes at least a minimum slice of the budget: without
    // it, thousands of entries asking for 1 byte each would start thousands
    // of disk reads within any budget.
    let mut budget = FetchBudget::new(request_bytes_max);
    for (topic_index, topic) in request.topics().iter().flatten().enumerate() {
        let name = topic.name().unwrap_or_default();
        let meta = topic_of(shard, name);
        topic_names.push(name.to_string());
        for part in topic.partitions().iter().flatten() {
            let target = meta.as_ref().and_then(|m| partition_of(m, part.partition()).map(|p| (m.clone(), p)));
            let bytes_max = if target.is_some() { budget.take(part.max_bytes()) } else { 0 };
            parts.push(FetchPart {
                topic_index,
                partition: part.partition(),
                target,
                offset: part.offset(),
                bytes_max,
                current_leader_epoch: part.current_leader_epoch(),
                replica_durable_offset: part.replica_durable_offset(),
            });
        }
    }
    let started = Instant::now();
    let first: Vec<_> = parts.iter().map(|part| submit_fetch(shard, part, None, replica_id)).collect();
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(first.len());
        for wait in first {
            results.push(collect(wait).await);
        }
        let bytes: usize = results.iter().map(ReadResult::bytes).sum();
        let any_error = results.iter().any(|r| r.error != ErrorCode::None);
        if bytes < min_bytes.max(1) && !max_wait.is_zero() && !any_error {
            // Long poll: wait on every partition; answer when the first has
            // data or the wait ends (dropping the others cancels them).
            // While it waits the request holds only what it has read, so
            // idle consumers do not fill the budgets; the partition that
            // answers reads within its share of the request as before
            // (new data at the log's tail, mostly shared with the tail
            // cache), charged once the answer is built.
            charge.resize(request_charge_bytes + bytes);
            let deadline = started + max_wait;
            let waits: Vec<_> = parts
                .iter()
                .enumerate()
                .filter_map(|(i, part)| match submit_fetch(&shard, part, Some(deadline), replica_id) {
                    wait @ Submitted::Waiting(_) => Some(Box::pin(async move { (i, collect(wait).await) })),
                    Submitted::Unknown | Submitted::OverBudget => None,
                })
                .collect();
            if !waits.is_empty() {
                let ((i, result), _, _) = futures::future::select_all(waits).await;
                results[i] = result;
            }
        }
        fetch_response(&shard, request_id, &topic_names, &parts, results, request_bytes_max)
    }))
}

fn fetch_response(
    shard: &Shard,
    request_id: u64,
    topic_names: &[String],
    parts: &[FetchPart],
    results: Vec<ReadResult>,
    request_bytes_max: usize,
) -> Response {
    let mut builder = FlatBufferBuilder::new();
    let mut payload: Vec<Bytes> = Vec::new();
    let mut payload_bytes = 0usize;
    let mut by_topic: BTreeMap<usize, Vec<WIPOffset<FetchPartitionResponse>>> = BTreeMap::new();
    for (part, result) in parts.iter().zip(results) {
        let records_offset = payload_bytes;
        for batch in result.batches {
            // At least one batch always goes, so a consumer can pass a batch
            // larger than its limits; after that, stay within the request.
            if payload_bytes > 0 && payload_bytes + batch.len() > request_bytes_max {
                break;
            }
            payload_bytes += batch.len();
            payload.push(batch);
        }
        if payload_bytes > records_offset {
            shard.metrics.fetched(&topic_names[part.topic_index], payload_bytes - records_offset);
        }
        let offset = FetchPartitionResponse::create(
            &mut builder,
            &FetchPartitionResponseArgs {
                partition: part.partition,
                error: result.error,
                high_watermark: result.high_watermark,
                log_start_offset: result.log_start_offset,
                log_end_offset: result.log_end_offset,
                records_offset: records_offset as u32,
                records_bytes: (payload_bytes - records_offset) as u32,
            },
        );
        by_topic.entry(part.topic_index).or_default().push(offset);
    }
    let mut topics = Vec::new();
    for (topic_index, name) in topic_names.iter().enumerate() {
        let name = builder.create_string(name);
        let parts = by_topic.remove(&topic_index).unwrap_or_default();
        let parts = builder.create_vector(&parts);
        topics.push(FetchTopicResponse::create(
            &mut builder,
            &FetchTopicResponseArgs { name: Some(name), partitions: Some(parts) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let body = FetchResponse::create(&mut builder, &FetchResponseArgs { topics: Some(topics) });
    let head = envelope_frame(builder, request_id, Body::FetchResponse, body.as_union_value(), payload_bytes);
    Response::Vectored { head, payload }
}

// ---- ListOffsets ----

fn list_offsets(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_list_offsets_request()) else {
        return invalid(request_id, "list offsets body missing");
    };
    let mut topic_names = Vec::new();
    let mut waits = Vec::new();
    for (topic_index, topic) in request.topics().iter().flatten().enumerate() {
        let name = topic.name().unwrap_or_default();
        let meta = topic_of(shard, name);
        topic_names.push(name.to_string());
        for part in topic.partitions().iter().flatten() {
            let target = meta.as_ref().and_then(|m| partition_of(m, part.partition()).map(|p| (m.clone(), p)));
            let wait = target.map(|(topic, partition)| {
                let (reply, wait) = oneshot::channel();
                let owner = shard.shared.owner(&topic.name, partition);
                shard.submit(owner, ShardOp::ListOffset { topic, partition, timestamp: part.timestamp(), reply });
                wait
            });
            waits.push((topic_index, part.partition(), part.timestamp(), wait));
        }
    }
    Reply::Later(Box::pin(async move {
        let mut builder = FlatBufferBuilder::new();
        let mut by_topic: BTreeMap<usize, Vec<WIPOffset<ListOffsetsPartitionResponse>>> = BTreeMap::new();
        for (topic_index, partition, timestamp, wait) in waits {
            let result = match wait {
                None => OffsetResult { error: ErrorCode::UnknownTopicOrPartition, offset: -1 },
                Some(wait) => wait.await.unwrap_or(OffsetResult { error: ErrorCode::BrokerShuttingDown, offset: -1 }),
            };
            let offset = ListOffsetsPartitionResponse::create(
                &mut builder,
                &ListOffsetsPartitionResponseArgs {
                    partition,
                    error: result.error,
                    offset: result.offset,
                    timestamp: if timestamp >= 0 { timestamp } else { -1 },
                },
            );
            by_topic.entry(topic_index).or_default().push(offset);
        }
        let mut topics = Vec::new();
        for (topic_index, name) in topic_names.iter().enumerate() {
            let name = builder.create_string(name);
            let parts = by_topic.remove(&topic_index).unwrap_or_default();
            let parts = builder.create_vector(&parts);
            topics.push(ListOffsetsTopicResponse::create(
                &mut builder,
                &ListOffsetsTopicResponseArgs { name: Some(name), partitions: Some(parts) },
            ));
        }
        let topics = builder.create_vector(&topics);
        let body = ListOffsetsResponse::create(&mut builder, &ListOffsetsResponseArgs { topics: Some(topics) });
        Response::Frame(envelope_frame(builder, request_id, Body::ListOffsetsResponse, body.as_union_value(), 0))
    }))
}

// ---- OffsetForLeaderEpoch ----

fn offset_for_leader_epoch(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_offset_for_leader_epoch_request()) else {
        return invalid(request_id, "offset for leader epoch body missing");
    };
    let mut waits = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default().to_string();
        let meta = topic_of(shard, &name);
        let mut parts = Vec::new();
        for part in topic.partitions().iter().flatten() {
            let target = meta.as_ref().and_then(|m| partition_of(m, part.partition()).map(|p| (m.clone(), p)));
            let wait = target.map(|(topic, partition)| {
                let (reply, wait) = oneshot::channel();
                let owner = shard.shared.owner(&topic.name, partition);
                shard.submit(
                    owner,
                    ShardOp::EpochEndOffset {
                        topic,
                        partition,
                        current_leader_epoch: part.current_leader_epoch(),
                        leader_epoch: part.leader_epoch(),
                        reply,
                    },
                );
                wait
            });
            parts.push((part.partition(), wait));
        }
        waits.push((name, parts));
    }
    Reply::Later(Box::pin(async move {
        let mut builder = FlatBufferBuilder::new();
        let mut topics = Vec::new();
        for (name, parts) in waits {
            let mut results = Vec::new();
            for (partition, wait) in parts {
                let result = match wait {
                    None => {
                        EpochEndResult { error: ErrorCode::UnknownTopicOrPartition, leader_epoch: -1, end_offset: -1 }
                    }
                    Some(wait) => wait.await.unwrap_or(EpochEndResult {
                        error: ErrorCode::BrokerShuttingDown,
                        leader_epoch: -1,
                        end_offset: -1,
                    }),
                };
                results.push(EpochEndOffset::create(
                    &mut builder,
                    &EpochEndOffsetArgs {
                        partition,
                        error: result.error,
                        leader_epoch: result.leader_epoch,
                        end_offset: result.end_offset,
                    },
                ));
            }
            let results = builder.create_vector(&results);
            let name = builder.create_string(&name);
            topics.push(OffsetForLeaderEpochTopicResponse::create(
                &mut builder,
                &OffsetForLeaderEpochTopicResponseArgs { name: Some(name), partitions: Some(results) },
            ));
        }
        let topics = builder.create_vector(&topics);
        let body = OffsetForLeaderEpochResponse::create(
            &mut builder,
            &OffsetForLeaderEpochResponseArgs { topics: Some(topics) },
        );
        Response::Frame(envelope_frame(
            builder,
            request_id,
            Body::OffsetForLeaderEpochResponse,
            body.as_union_value(),
            0,
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 14: before the minimum slice, 10,000 entries asking for one byte
    // each all fit a 64 MiB budget, and each started a read returning at
    // least one batch.
    #[test]
    fn tiny_partition_budgets_use_up_a_minimum_slice_of_the_request() {
        let request_bytes_max = 64 << 20;
        let mut budget = FetchBudget::new(request_bytes_max);
        let reads = (0..10_000).filter(|_| budget.take(1) > 0).count();
        assert_eq!(reads, request_bytes_max / FETCH_PARTITION_BYTES_MIN);
        // A partition asking for more than the minimum gets what it asks.
        let mut budget = FetchBudget::new(request_bytes_max);
        assert_eq!(budget.take(1 << 20), 1 << 20);
        assert_eq!(budget.take(1), 1, "within what is left, a small ask is served as asked");
        // The last partition gets what is left, however little.
        let mut budget = FetchBudget::new(FETCH_PARTITION_BYTES_MIN + 10);
        assert_eq!(budget.take(i32::MAX), FETCH_PARTITION_BYTES_MIN + 10);
        assert_eq!(budget.take(1), 0);
    }
}
