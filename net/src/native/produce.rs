//! Produce: slice each partition's batches out of the request without
//! copying and send them to their owners.

use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, WIPOffset};
use spate_flatbuf::proto::*;

use super::{clamp_ms, partition_of, topic_of};
use crate::catalog::TopicMeta;
use crate::limits::{PRODUCE_SLICE_FRACTION_MIN, READ_CHUNK_BYTES, REQUEST_TIMEOUT_MS_MAX};
use crate::shard::{AppendResult, Outcome, ProduceOp, Shard, ShardOp, split_into_batches};
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

/// One partition's part of a produce request, as read from the envelope.
struct ProducePart {
    topic_index: usize,
    partition: i32,
    /// Where its records lie in the envelope buffer.
    range: Option<Range<usize>>,
    refused: Option<Outcome>,
}

pub(super) fn produce(shard: &Rc<Shard>, session: &super::Session, frame: Frame, request_id: u64) -> Reply {
    // A connection proven to be a broker's may send transaction markers
    // (control batches), to internal topics too (`txn/markers.rs`).
    let from_broker = session.broker.get() >= 0;
    let mut topic_names: Vec<String> = Vec::new();
    let mut topics: Vec<Option<Arc<TopicMeta>>> = Vec::new();
    let mut parts: Vec<ProducePart> = Vec::new();
    let (acks, timeout, transactional_id, transactions_v2) = {
        let Some(request) = envelope(&frame).and_then(|e| e.body_as_produce_request()) else {
            return invalid(request_id, "produce body missing");
        };
        let transactional_id: Option<Arc<str>> = request.transactional_id().filter(|id| !id.is_empty()).map(Arc::from);
        // Transactions v2 (KIP-890 part 2): the leader adds the partition.
        let transactions_v2 = request.transactions_v2();
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
                    Some(_) if spate_flatbuf::is_internal_topic(name) && !from_broker => {
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
        (request.acks(), clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX), transactional_id, transactions_v2)
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
    session.charge(shard, crate::security::quota::QuotaKind::Produce, frame_bytes);
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
        let owner = shard.shared.owner(&topic.name, partition);
        if from_broker {
            // Markers only: a broker never produces anything else here.
            let (reply, wait) = oneshot::channel();
            match (batches.len(), batches.first().and_then(|batch| crate::txn::marker_from_batch(batch))) {
                (1, Some(Ok(marker))) => {
                    shard.submit(owner, ShardOp::WriteMarker { topic, partition, marker, reply: reply_outcome(reply) });
                    waits.push(Ok(wait));
                }
                (_, Some(Err(message))) => waits.push(Err(Outcome::err(ErrorCode::CorruptMessage, message))),
                _ => {
                    waits.push(Err(Outcome::err(ErrorCode::InvalidRequest, "a broker sends one marker per partition")))
                }
            }
            continue;
        }
        // Kafka: transactional batches need the producer's transactional
        // id on the request (the principal's Write on it is checked in
        // `authz.rs`); without one they are refused, nothing appended.
        if transactional_id.is_none()
            && batches.iter().any(|batch| {
                spate_format::batch::peek_header(batch).is_ok_and(|header| header.attributes().is_transactional())
            })
        {
            waits.push(Err(Outcome::err(
                ErrorCode::TransactionalIdAuthorizationFailed,
                "transactional batches need the producer's transactional_id on the produce request",
            )));
            continue;
        }
        let secret = shard.shared.catalog.load().cluster_secret.clone();
        // The id must have been given to this connection's principal
        // (ANONYMOUS unless it authenticated).
        if let Err(refusal) = crate::producer_ids::check_owner(secret.as_deref(), &session.principal.borrow(), &batches)
        {
            waits.push(Err(Outcome::err(ErrorCode::ClusterAuthorizationFailed, refusal)));
            continue;
        }
        let (reply, wait) = oneshot::channel();
        let transactional_id = transactional_id.clone();
        let op = ProduceOp { topic, partition, batches, acks, timeout, transactional_id, transactions_v2, reply };
        shard.submit(owner, ShardOp::Produce(op));
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

/// A marker's answer (an outcome) as a produce's.
fn reply_outcome(reply: oneshot::Sender<AppendResult>) -> oneshot::Sender<Outcome> {
    let (tx, rx) = oneshot::channel::<Outcome>();
    glommio::spawn_local(async move {
        let outcome =
            rx.await.unwrap_or_else(|_| Outcome::err(ErrorCode::BrokerShuttingDown, "the partition's shard stopped"));
        let _ = reply.send(AppendResult { outcome, base_offset: -1, log_start_offset: -1 });
    })
    .detach();
    tx
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
