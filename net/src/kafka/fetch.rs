//! Fetch, ListOffsets and OffsetForLeaderEpoch for Kafka consumers.
//!
//! Fetch sessions (KIP-227): Spate keeps none, and says so the way the
//! protocol allows: a request that asks for a new session (epoch 0) gets
//! session id 0, which clients read as "no session, send full fetches";
//! a request naming a session Spate never gave gets
//! FETCH_SESSION_ID_NOT_FOUND, and the client starts over.

use crate::security::quota::QuotaKind;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::kafka_code;
use super::fetch_session::{self, Plan, Sent};
use super::response::{Splice, encode, marker, vectored};
use super::{Ctx, Session, decode, respond};
use crate::budget::Charge;
use crate::catalog::kafka_topic_id;
use crate::fetch_plan::{self, FetchBudget, ReadPart};
use crate::limits::{FETCH_WAIT_MS_MAX, PARTITIONS_PER_REQUEST_MAX};
use crate::shard::{EpochEndResult, OffsetResult, ShardOp};
use crate::wire::{Reply, Response};

/// Fetch v13+ names topics by id.
const FETCH_TOPIC_IDS_VERSION: i16 = 13;

/// One partition of the request: where it goes in the answer, and its read.
struct Part {
    topic_index: usize,
    partition: i32,
    read: ReadPart,
    /// The principal may not Read the topic (nothing is read).
    denied: bool,
}

pub(crate) fn fetch(ctx: Ctx, body: Bytes, charge: &Charge, session: Rc<Session>) -> Reply {
    let request_bytes = 4 + body.len();
    let request: FetchRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    // Kafka clients never fetch as replicas; only native, authenticated
    // broker connections may (issue 14).
    let replica_id = if ctx.version >= 15 { request.replica_state.replica_id.0 } else { request.replica_id.0 };
    if replica_id >= 0 {
        let response =
            FetchResponse::default().with_error_code(K::ClusterAuthorizationFailed.code()).with_session_id(0);
        return Reply::Now(respond(&ctx, &response));
    }
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        tracing::warn!(shard = ctx.shard.id, partitions, "closing a Kafka connection: Fetch over the partition cap");
        return Reply::Now(Response::Close(None));
    }
    let by_id = ctx.version >= FETCH_TOPIC_IDS_VERSION;
    // Sessions came with v7; before, every fetch is full.
    let plan = if ctx.version >= 7 {
        fetch_session::plan(&mut session.fetch.borrow_mut(), &request, by_id, PARTITIONS_PER_REQUEST_MAX)
    } else {
        fetch_session::full(&request, by_id)
    };
    let (session_id, incremental, wanted) = match plan {
        Plan::Full { session_id, wanted } => {
            if session_id != 0 {
                tracing::debug!(shard = ctx.shard.id, session_id, partitions = wanted.len(), "fetch session created");
            }
            (session_id, false, wanted)
        }
        Plan::Incremental { wanted } => (session.fetch.borrow().as_ref().map_or(0, |s| s.id), true, wanted),
        Plan::Refused(code) => return Reply::Now(respond(&ctx, &FetchResponse::default().with_error_code(code))),
    };
    // v0-2 had no request-wide limit.
    let asked = if request.max_bytes > 0 { request.max_bytes as usize } else { usize::MAX };
    let request_bytes_max = fetch_plan::answer_bytes_max(&ctx.shard, charge, asked, request_bytes);
    let charge = charge.clone();
    let max_wait = Duration::from_millis((request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
    let min_bytes = request.min_bytes.max(0) as usize;
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut budget = FetchBudget::new(request_bytes_max);
    // Topics in the order their partitions come, each once.
    // Kafka's isolation.level: 1 is read_committed.
    let read_committed = request.isolation_level == 1;
    let mut topics: Vec<(Option<String>, uuid::Uuid)> = Vec::new();
    let mut topic_index_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut parts = Vec::with_capacity(wanted.len());
    for w in &wanted {
        let name =
            if by_id { catalog.by_kafka_id.get(&w.key.topic_id.as_u128()).cloned() } else { Some(w.key.topic.clone()) };
        let denied = name.as_ref().is_some_and(|n| !ctx.allowed(AclOperation::Read, AclResourceType::Topic, n));
        let meta = if denied { None } else { name.as_ref().and_then(|n| catalog.topics.get(n).cloned()) };
        let topic_index = *topic_index_of.entry(w.key.topic.clone()).or_insert_with(|| {
            let id = meta.as_ref().map_or(w.key.topic_id, |m| uuid::Uuid::from_u128(kafka_topic_id(&m.topic_id)));
            topics.push((if by_id { None } else { name.clone() }, id));
            topics.len() - 1
        });
        let target = meta
            .as_ref()
            .and_then(|m| u32::try_from(w.key.partition).ok().filter(|&p| p < m.partitions).map(|p| (m.clone(), p)));
        let bytes_max = if target.is_some() { budget.take(w.partition_max_bytes) } else { 0 };
        parts.push(Part {
            topic_index,
            denied,
            partition: w.key.partition,
            read: ReadPart {
                target,
                offset: w.fetch_offset,
                bytes_max,
                current_leader_epoch: if ctx.version >= 9 { w.current_leader_epoch } else { -1 },
                replica_durable_offset: -1,
                read_committed,
            },
        });
    }
    let unknown_topic = if by_id { K::UnknownTopicId.code() } else { K::UnknownTopicOrPartition.code() };
    let reads: Vec<ReadPart> = parts.iter().map(|p| p.read.clone()).collect();
    let first = fetch_plan::start(&ctx.shard, &reads, -1);
    let poll = fetch_plan::Poll { replica_id: -1, min_bytes, max_wait, request_bytes, charge };
    Reply::Later(Box::pin(async move {
        let results = fetch_plan::finish(&ctx.shard, &reads, first, &poll).await;
        // Build the response with a marker in place of each partition's
        // records, then splice the batches in (no copy of record bytes).
        let mut responses: Vec<FetchableTopicResponse> = topics
            .iter()
            .map(|(name, id)| {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(name.clone().unwrap_or_default())))
                    .with_topic_id(*id)
            })
            .collect();
        // Each topic's partitions, each with the batches that replace its
        // records. The markers are numbered below, in the order the answer
        // encodes them (topic by topic), which `vectored` needs: the
        // partitions may come topic after topic interleaved (a request
        // naming a topic twice, a fetch session's order), and the answer
        // groups them under their topic. (Numbered in request order, a
        // marker was searched for past where it stood, left unspliced, and
        // read by the client as a batch: Kafka Streams died of it.)
        let mut grouped: Vec<Vec<(PartitionData, Vec<Bytes>)>> = (0..responses.len()).map(|_| Vec::new()).collect();
        let mut payload_bytes = 0usize;
        for ((part, result), w) in parts.iter().zip(results).zip(&wanted) {
            let batches = fetch_plan::within_limit(result.batches, &mut payload_bytes, request_bytes_max);
            let error = match (&part.read.target, result.error) {
                (None, _) if part.denied => K::TopicAuthorizationFailed.code(),
                (None, _) => unknown_topic,
                (_, error) => kafka_code(error),
            };
            // A session remembers what each partition was told; an
            // incremental answer leaves out the partitions with nothing new.
            if session_id != 0 {
                let now =
                    Sent { high_watermark: result.high_watermark, log_start_offset: result.log_start_offset, error };
                let included = fetch_session::include(&mut session.fetch.borrow_mut(), w, now, !batches.is_empty());
                if incremental && !included {
                    continue;
                }
            }
            let data = PartitionData::default()
                .with_partition_index(part.partition)
                .with_error_code(error)
                .with_high_watermark(result.high_watermark)
                .with_last_stable_offset(result.last_stable_offset)
                .with_log_start_offset(result.log_start_offset)
                .with_aborted_transactions(read_committed.then(|| aborted_transactions(&result.aborted)))
                .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1));
            if !batches.is_empty()
                && let Some((topic, _)) = &part.read.target
            {
                ctx.shard.metrics.fetched(&topic.name, batches.iter().map(Bytes::len).sum());
            }
            grouped[part.topic_index].push((data, batches));
        }
        let mut splices = Vec::new();
        for (response, partitions) in responses.iter_mut().zip(grouped) {
            for (data, batches) in partitions {
                let data = if batches.is_empty() {
                    data.with_records(Some(Bytes::new()))
                } else {
                    let m = marker(splices.len() as u32);
                    splices.push(Splice { marker: m.clone(), batches });
                    data.with_records(Some(m))
                };
                response.partitions.push(data);
            }
        }
        // An incremental answer names only the topics it has partitions of.
        if incremental {
            responses.retain(|t| !t.partitions.is_empty());
        }
        // Kafka counts a fetch answer's size against consumer_byte_rate.
        let record_bytes: usize = splices.iter().flat_map(|s| s.batches.iter()).map(Bytes::len).sum();
        let throttle_ms = ctx.throttle(QuotaKind::Fetch, record_bytes);
        let response = FetchResponse::default()
            .with_session_id(session_id)
            .with_responses(responses)
            .with_throttle_time_ms(throttle_ms);
        let frame = match encode(&ctx, &response) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::error!("cannot encode a Kafka fetch response: {err:#}");
                return Response::Close(None);
            }
        };
        let flexible = ctx.version >= 12;
        vectored(frame, splices, flexible)
    }))
}

pub(crate) fn list_offsets(ctx: Ctx, body: Bytes) -> Reply {
    let request: ListOffsetsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let catalog = ctx.shard.shared.catalog.load_full();
    let read_committed = request.isolation_level == 1;
    let mut waits = Vec::with_capacity(partitions);
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let denied = !ctx.allowed(AclOperation::Describe, AclResourceType::Topic, topic.name.0.as_str());
        let meta = catalog.topics.get(topic.name.0.as_str()).cloned();
        for part in &topic.partitions {
            let target =
                meta.as_ref().and_then(|m| u32::try_from(part.partition_index).ok().filter(|&p| p < m.partitions));
            let wait = match (&meta, target) {
                _ if denied => Err(K::TopicAuthorizationFailed.code()),
                (Some(meta), Some(partition)) if part.timestamp >= crate::shard::OFFSET_MAX_TIMESTAMP => {
                    let (reply, wait) = oneshot::channel();
                    let owner = ctx.shard.shared.owner(&meta.name, partition);
                    ctx.shard.submit(
                        owner,
                        ShardOp::ListOffset {
                            topic: meta.clone(),
                            partition,
                            timestamp: part.timestamp,
                            read_committed,
                            reply,
                        },
                    );
                    Ok(wait)
                }
                // -4 (earliest local) and -5 (latest tiered): tiered
                // storage, which Spate does not have.
                (Some(_), Some(_)) => Err(K::UnsupportedVersion.code()),
                _ => Err(K::UnknownTopicOrPartition.code()),
            };
            waits.push((topic_index, part.partition_index, wait));
        }
    }
    let names: Vec<String> = request.topics.iter().map(|t| t.name.0.to_string()).collect();
    Reply::Later(Box::pin(async move {
        let mut topics: Vec<ListOffsetsTopicResponse> = names
            .into_iter()
            .map(|n| ListOffsetsTopicResponse::default().with_name(TopicName(StrBytes::from_string(n))))
            .collect();
        for (topic_index, partition, wait) in waits {
            let (error, offset, found_timestamp) = match wait {
                Ok(wait) => {
                    let result = wait.await.unwrap_or(OffsetResult {
                        error: ErrorCode::BrokerShuttingDown,
                        offset: -1,
                        timestamp: -1,
                    });
                    (kafka_code(result.error), result.offset, result.timestamp)
                }
                Err(code) => (code, -1, -1),
            };
            // The found record's timestamp; -1 for earliest and latest, and
            // for "no record at or after this timestamp", as Kafka answers.
            let answered_timestamp = if offset >= 0 { found_timestamp } else { -1 };
            topics[topic_index].partitions.push(
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition)
                    .with_error_code(error)
                    .with_timestamp(answered_timestamp)
                    .with_offset(offset)
                    .with_leader_epoch(-1),
            );
        }
        respond(&ctx, &ListOffsetsResponse::default().with_topics(topics))
    }))
}

pub(crate) fn offset_for_leader_epoch(ctx: Ctx, body: Bytes) -> Reply {
    let request: OffsetForLeaderEpochRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut waits = Vec::with_capacity(partitions);
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let denied = !ctx.allowed(AclOperation::Describe, AclResourceType::Topic, topic.topic.0.as_str());
        let meta = catalog.topics.get(topic.topic.0.as_str()).cloned();
        for part in &topic.partitions {
            let target = meta.as_ref().and_then(|m| u32::try_from(part.partition).ok().filter(|&p| p < m.partitions));
            let wait = match (&meta, target) {
                _ if denied => Err(K::TopicAuthorizationFailed.code()),
                (Some(meta), Some(partition)) => {
                    let (reply, wait) = oneshot::channel();
                    let owner = ctx.shard.shared.owner(&meta.name, partition);
                    ctx.shard.submit(
                        owner,
                        ShardOp::EpochEndOffset {
                            topic: meta.clone(),
                            partition,
                            current_leader_epoch: part.current_leader_epoch,
                            leader_epoch: part.leader_epoch,
                            reply,
                        },
                    );
                    Ok(wait)
                }
                _ => Err(K::UnknownTopicOrPartition.code()),
            };
            waits.push((topic_index, part.partition, wait));
        }
    }
    let names: Vec<String> = request.topics.iter().map(|t| t.topic.0.to_string()).collect();
    Reply::Later(Box::pin(async move {
        let mut topics: Vec<OffsetForLeaderTopicResult> = names
            .into_iter()
            .map(|n| OffsetForLeaderTopicResult::default().with_topic(TopicName(StrBytes::from_string(n))))
            .collect();
        for (topic_index, partition, wait) in waits {
            let (error, result) = match wait {
                Ok(wait) => {
                    let result = wait.await.unwrap_or(EpochEndResult {
                        error: ErrorCode::BrokerShuttingDown,
                        leader_epoch: -1,
                        end_offset: -1,
                    });
                    (kafka_code(result.error), result)
                }
                Err(code) => (code, EpochEndResult { error: ErrorCode::Unknown, leader_epoch: -1, end_offset: -1 }),
            };
            topics[topic_index].partitions.push(
                EpochEndOffset::default()
                    .with_partition(partition)
                    .with_error_code(error)
                    .with_leader_epoch(result.leader_epoch)
                    .with_end_offset(result.end_offset),
            );
        }
        respond(&ctx, &OffsetForLeaderEpochResponse::default().with_topics(topics))
    }))
}

/// A read's aborted transactions as Kafka's fetch answer lists them: the
/// consumer drops each producer's batches from its first offset until the
/// abort marker.
fn aborted_transactions(aborted: &[spate_engine::AbortedTxn]) -> Vec<AbortedTransaction> {
    aborted
        .iter()
        .map(|txn| {
            AbortedTransaction::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(txn.producer_id))
                .with_first_offset(txn.first_offset)
        })
        .collect()
}
