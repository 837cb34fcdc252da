//! Fetch: read each partition at once, long-poll if there is too little,
//! and answer with the batches as the payload (vectored, no copy).

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, WIPOffset};
use spate_flatbuf::proto::*;

use super::{Session, clamp_ms, partition_of, topic_of};
use crate::budget::Charge;
use crate::fetch_plan::{self, FetchBudget, ReadPart};
use crate::limits::FETCH_WAIT_MS_MAX;
use crate::shard::{ReadResult, Shard};
use crate::wire::{Reply, Response, envelope, envelope_frame, error_frame, invalid};

/// One partition of the request: where it goes in the answer, and its read.
struct FetchPart {
    topic_index: usize,
    partition: i32,
    read: ReadPart,
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
    let request_charge_bytes = frame.envelope.len() + frame.payload.len();
    let request_bytes_max =
        fetch_plan::answer_bytes_max(shard, charge, request.max_bytes().max(1) as usize, request_charge_bytes);
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
    // Kafka's isolation.level; a replica reads everything.
    let read_committed = request.isolation_level() == 1 && replica_id < 0;
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
                read: ReadPart {
                    target,
                    offset: part.offset(),
                    bytes_max,
                    current_leader_epoch: part.current_leader_epoch(),
                    replica_durable_offset: part.replica_durable_offset(),
                    read_committed,
                },
            });
        }
    }
    let reads: Vec<ReadPart> = parts.iter().map(|p| p.read.clone()).collect();
    let first = fetch_plan::start(shard, &reads, replica_id);
    let poll = fetch_plan::Poll { replica_id, min_bytes, max_wait, request_bytes: request_charge_bytes, charge };
    let shard = shard.clone();
    let charged = (session.broker.get() < 0)
        .then(|| (session.throttle.clone(), session.principal.borrow().clone(), session.client_id.borrow().clone()));
    Reply::Later(Box::pin(async move {
        let results = fetch_plan::finish(&shard, &reads, first, &poll).await;
        if let Some((throttle, principal, client_id)) = charged {
            let bytes: usize = results.iter().flat_map(|result| &result.batches).map(bytes::Bytes::len).sum();
            throttle.charge(&shard, (&principal, &client_id), crate::security::quota::QuotaKind::Fetch, bytes as u64);
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
        payload.extend(fetch_plan::within_limit(result.batches, &mut payload_bytes, request_bytes_max));
        if payload_bytes > records_offset {
            shard.metrics.fetched(&topic_names[part.topic_index], payload_bytes - records_offset);
        }
        let aborted_transactions = (!result.aborted.is_empty()).then(|| {
            let entries: Vec<_> = result
                .aborted
                .iter()
                .map(|txn| {
                    AbortedTransaction::create(
                        &mut builder,
                        &AbortedTransactionArgs { producer_id: txn.producer_id, first_offset: txn.first_offset },
                    )
                })
                .collect();
            builder.create_vector(&entries)
        });
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
                last_stable_offset: result.last_stable_offset,
                aborted_transactions,
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
