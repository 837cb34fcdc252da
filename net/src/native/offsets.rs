//! ListOffsets and OffsetForLeaderEpoch: offsets asked of each partition's
//! owner.

use std::collections::BTreeMap;
use std::rc::Rc;

use futures::channel::oneshot;
use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, WIPOffset};
use spate_flatbuf::proto::*;

use super::{partition_of, topic_of};
use crate::shard::{EpochEndResult, OffsetResult, Shard, ShardOp};
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

pub(super) fn list_offsets(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_list_offsets_request()) else {
        return invalid(request_id, "list offsets body missing");
    };
    let read_committed = request.isolation_level() == 1;
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
                shard.submit(
                    owner,
                    ShardOp::ListOffset { topic, partition, timestamp: part.timestamp(), read_committed, reply },
                );
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
                None => OffsetResult { error: ErrorCode::UnknownTopicOrPartition, offset: -1, timestamp: -1 },
                Some(wait) => wait.await.unwrap_or(OffsetResult {
                    error: ErrorCode::BrokerShuttingDown,
                    offset: -1,
                    timestamp: -1,
                }),
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

pub(super) fn offset_for_leader_epoch(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
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
