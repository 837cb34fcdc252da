//! Fetch: read each partition at once, long-poll if there is too little,
//! and answer with the batches as the payload (vectored, no copy).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, WIPOffset};
use spate_flatbuf::proto::*;

use super::{Session, clamp_ms, partition_of, topic_of};
use crate::budget::Charge;
use crate::catalog::TopicMeta;
use crate::fetch_budget::FetchBudget;
use crate::limits::{FETCH_PARTITION_BYTES_MIN, FETCH_WAIT_MS_MAX};
use crate::shard::{ReadResult, Shard, ShardOp};
use crate::wire::{Reply, Response, envelope, envelope_frame, error_frame, invalid};

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

pub(super) fn fetch(shard: &Rc<Shard>, session: &Session, frame: &Frame, request_id: u64, charge: &Charge) -> Reply {
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
