//! Produce and InitProducerId (a transactional producer's is `txn.rs`).
//!
//! A produce request's record batches are appended from the receive
//! buffer, as on the native path: the request is decoded from a view that
//! notes where each large byte field lies (`RangeBuf`) instead of copying
//! it, and those ranges are split off the request's own buffer. Small
//! batches are copied, as the native path does, so they do not pin a large
//! receive buffer in the tail cache.

use crate::security::quota::QuotaKind;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::{Decodable, StrBytes};
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::kafka_code;
use super::{Ctx, decode, respond};
use crate::admin::ADMIN_SHARD;
use crate::limits::{PARTITIONS_PER_REQUEST_MAX, PRODUCE_SLICE_FRACTION_MIN, READ_CHUNK_BYTES, REQUEST_TIMEOUT_MS_MAX};
use crate::shard::{AppendResult, Outcome, ProduceOp, ShardOp};
use crate::wire::{Reply, Response};

/// What a large byte field decodes to: one byte no valid record set or
/// name can be, so that a field that was not records (a huge name) cannot
/// pass as records (the counts are checked too).
static LARGE_FIELD: &[u8] = b"\0";

/// A decoding view of a request that copies small byte fields and notes
/// the place of large ones (`large`), returning `LARGE_FIELD` for them.
pub(crate) struct RangeBuf<'a> {
    data: &'a [u8],
    pos: usize,
    pub large: Vec<Range<usize>>,
}

impl<'a> RangeBuf<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        RangeBuf { data, pos: 0, large: Vec::new() }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }
}

impl Buf for RangeBuf<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn chunk(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.data.len());
    }
}

impl ByteBuf for RangeBuf<'_> {
    fn peek_bytes(&mut self, r: Range<usize>) -> Bytes {
        let start = (self.pos + r.start).min(self.data.len());
        let end = (self.pos + r.end).min(self.data.len()).max(start);
        Bytes::copy_from_slice(&self.data[start..end])
    }

    fn get_bytes(&mut self, size: usize) -> Bytes {
        let end = (self.pos + size).min(self.data.len());
        let range = self.pos..end;
        self.pos = end;
        if range.len() >= READ_CHUNK_BYTES {
            self.large.push(range);
            Bytes::from_static(LARGE_FIELD)
        } else {
            Bytes::copy_from_slice(&self.data[range])
        }
    }
}

/// One partition's part of the request.
struct Part {
    topic_index: usize,
    partition: i32,
    records: Option<BytesMut>,
    refused: Option<Outcome>,
    /// Kafka's authorization error for it (0: authorized).
    denied: i16,
}

/// Whether any batch in a partition's records carries the transactional
/// attribute (a malformed set answers false: the append refuses it).
fn holds_transactional_batch(records: &[u8]) -> bool {
    spate_format::batch::split_batches(records).any(|span| {
        span.ok()
            .and_then(|span| records.get(span.range))
            .and_then(|batch| spate_format::batch::peek_header(batch).ok())
            .is_some_and(|header| header.attributes().is_transactional())
    })
}

pub(crate) fn produce(ctx: Ctx, mut body: BytesMut) -> Reply {
    let frame_bytes = body.len();
    let (request, large) = {
        let mut view = RangeBuf::new(&body);
        match ProduceRequest::decode(&mut view, ctx.version) {
            Ok(request) => (request, view.large),
            Err(err) => {
                tracing::debug!(shard = ctx.shard.id, "closing a Kafka connection: bad Produce: {err:#}");
                return Reply::Now(Response::Close(None));
            }
        }
    };
    let partitions: usize = request.topic_data.iter().map(|t| t.partition_data.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        tracing::warn!(shard = ctx.shard.id, partitions, "closing a Kafka connection: Produce over the partition cap");
        return Reply::Now(Response::Close(None));
    }
    // Kafka counts a produce request's size against producer_byte_rate.
    let throttle_ms = ctx.throttle(QuotaKind::Produce, frame_bytes);
    let acks = request.acks;
    let timeout = std::time::Duration::from_millis((request.timeout_ms.max(0) as u64).min(REQUEST_TIMEOUT_MS_MAX));
    // Split the large record sets off the buffer, in buffer order.
    let mut large_records: Vec<BytesMut> = Vec::with_capacity(large.len());
    let mut consumed = 0;
    for range in &large {
        if range.start < consumed {
            return Reply::Now(Response::Close(None));
        }
        body.advance(range.start - consumed);
        let mut sliced = body.split_to(range.len());
        if sliced.len() * PRODUCE_SLICE_FRACTION_MIN < frame_bytes {
            sliced = BytesMut::from(&sliced[..]);
        }
        large_records.push(sliced);
        consumed = range.end;
    }
    let mut large_records = large_records.into_iter();
    // Kafka: a request with a transactional id needs Write on it, or
    // nothing is written.
    let transactional_denied = request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !ctx.allowed(AclOperation::Write, AclResourceType::TransactionalId, id));
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut topic_names = Vec::with_capacity(request.topic_data.len());
    let mut parts = Vec::with_capacity(partitions);
    for (topic_index, topic) in request.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        let meta = catalog.topics.get(&name).cloned();
        // Checked before the topic is looked up, as Kafka does: a client
        // may not learn whether a topic it may not write exists.
        let denied = if transactional_denied {
            K::TransactionalIdAuthorizationFailed.code()
        } else if !ctx.allowed(AclOperation::Write, AclResourceType::Topic, &name) {
            K::TopicAuthorizationFailed.code()
        } else {
            0
        };
        for data in topic.partition_data {
            let records = match data.records {
                Some(bytes) if bytes.as_ptr() == LARGE_FIELD.as_ptr() => large_records.next(),
                Some(bytes) if !bytes.is_empty() => Some(BytesMut::from(bytes)),
                _ => None,
            };
            // Kafka: transactional records need a transactional id, on
            // which the sender has Write; without one they are refused.
            let denied = if denied == 0
                && request.transactional_id.is_none()
                && records.as_deref().is_some_and(holds_transactional_batch)
            {
                K::TransactionalIdAuthorizationFailed.code()
            } else {
                denied
            };
            let refused = match &meta {
                _ if denied != 0 => Some(Outcome::err(ErrorCode::Unknown, "not authorized")),
                None => Some(Outcome::err(ErrorCode::UnknownTopicOrPartition, "no such topic")),
                Some(_) if spate_flatbuf::is_internal_topic(&name) => {
                    Some(Outcome::err(ErrorCode::InternalTopic, "the topic is written by the broker only"))
                }
                Some(meta) if data.index < 0 || data.index as u32 >= meta.partitions => {
                    Some(Outcome::err(ErrorCode::UnknownTopicOrPartition, "no such partition"))
                }
                _ if records.is_none() => Some(Outcome::err(ErrorCode::CorruptMessage, "no records")),
                _ if !matches!(acks, -1..=1) => Some(Outcome::err(ErrorCode::InvalidRequiredAcks, "acks")),
                _ => None,
            };
            parts.push(Part { topic_index, partition: data.index, records, refused, denied });
        }
        topic_names.push((name, meta));
    }
    if large_records.next().is_some() {
        // A large field that was not a partition's records (a huge name):
        // the request is not one a client builds.
        tracing::warn!(shard = ctx.shard.id, "closing a Kafka connection: a Produce with an oversized field");
        return Reply::Now(Response::Close(None));
    }
    // The owner asks its coordinator about a producer's first batch of a
    // transaction on a partition (KIP-890 part 1), or from v12 (a
    // transactions-v2 client, part 2) tells it to add the partition.
    let transactional_id: Option<Arc<str>> = request.transactional_id.as_ref().map(|id| Arc::from(&*id.0));
    let transactions_v2 = ctx.version >= 12;
    let mut waits: Vec<Result<oneshot::Receiver<AppendResult>, Outcome>> = Vec::with_capacity(parts.len());
    for part in &mut parts {
        if let Some(refused) = part.refused.take() {
            waits.push(Err(refused));
            continue;
        }
        let Some(topic) = topic_names[part.topic_index].1.clone() else {
            waits.push(Err(Outcome::err(ErrorCode::UnknownTopicOrPartition, "no such topic")));
            continue;
        };
        let Some(records) = part.records.take() else {
            waits.push(Err(Outcome::err(ErrorCode::CorruptMessage, "no records")));
            continue;
        };
        let batches = match crate::shard::split_into_batches(records) {
            Ok(batches) => batches,
            Err(outcome) => {
                waits.push(Err(outcome));
                continue;
            }
        };
        if let Err(refusal) =
            crate::producer_ids::check_owner(catalog.cluster_secret.as_deref(), &ctx.principal, &batches)
        {
            waits.push(Err(Outcome::err(ErrorCode::ClusterAuthorizationFailed, refusal)));
            continue;
        }
        let partition = part.partition as u32;
        let (reply, wait) = oneshot::channel();
        let owner = ctx.shard.shared.owner(&topic.name, partition);
        let transactional_id = transactional_id.clone();
        let op = ProduceOp { topic, partition, batches, acks, timeout, transactional_id, transactions_v2, reply };
        ctx.shard.submit(owner, ShardOp::Produce(op));
        waits.push(Ok(wait));
    }
    if acks == 0 {
        // No answer, but the request stays in the budgets until its appends
        // are done (as on the native path).
        return Reply::Later(Box::pin(async move {
            for wait in waits.into_iter().flatten() {
                let _ = wait.await;
            }
            Response::None
        }));
    }
    Reply::Later(Box::pin(async move {
        let mut responses: Vec<TopicProduceResponse> = topic_names
            .iter()
            .map(|(name, _)| {
                TopicProduceResponse::default()
                    .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(name.clone())))
            })
            .collect();
        for (part, wait) in parts.iter().zip(waits) {
            let result = match wait {
                Ok(wait) => wait.await.unwrap_or(AppendResult {
                    outcome: Outcome::err(ErrorCode::BrokerShuttingDown, "the partition's shard stopped"),
                    base_offset: -1,
                    log_start_offset: -1,
                }),
                Err(outcome) => AppendResult { outcome, base_offset: -1, log_start_offset: -1 },
            };
            let entry = PartitionProduceResponse::default()
                .with_index(part.partition)
                .with_error_code(if part.denied != 0 { part.denied } else { kafka_code(result.outcome.error) })
                .with_base_offset(result.base_offset)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(result.log_start_offset)
                .with_error_message(result.outcome.message.map(StrBytes::from_string));
            responses[part.topic_index].partition_responses.push(entry);
        }
        respond(&ctx, &ProduceResponse::default().with_responses(responses).with_throttle_time_ms(throttle_ms))
    }))
}

pub(crate) fn init_producer_id(ctx: Ctx, body: Bytes) -> Reply {
    let request: InitProducerIdRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if let Some(txn_id) = request.transactional_id.as_ref().map(|id| id.0.to_string()) {
        return super::txn::init_producer_id(ctx, request, txn_id);
    }
    // Kafka 2.8+ (KIP-679): an idempotent producer needs IdempotentWrite
    // on the cluster, or Write on some topic.
    if !ctx.may_on_cluster(AclOperation::IdempotentWrite)
        && !ctx.allowed_on_any(AclOperation::Write, AclResourceType::Topic)
    {
        let response = InitProducerIdResponse::default()
            .with_error_code(K::ClusterAuthorizationFailed.code())
            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
            .with_producer_epoch(-1);
        return Reply::Now(respond(&ctx, &response));
    }
    let (reply, wait) = oneshot::channel();
    ctx.shard.submit(ADMIN_SHARD, ShardOp::InitProducerId { principal: (*ctx.principal).clone(), reply });
    Reply::Later(Box::pin(async move {
        let response = match wait.await.unwrap_or_else(|_| Err("the admin shard stopped".to_string())) {
            Ok(producer_id) => InitProducerIdResponse::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(producer_id))
                .with_producer_epoch(0),
            Err(message) => {
                tracing::error!(error = %message, "cannot allocate a producer id");
                InitProducerIdResponse::default()
                    .with_error_code(kafka_code(ErrorCode::ProducerIdsUnavailable))
                    .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                    .with_producer_epoch(-1)
            }
        };
        respond(&ctx, &response)
    }))
}
