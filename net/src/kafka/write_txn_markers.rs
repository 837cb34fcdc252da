//! Kafka's WriteTxnMarkers from an operator: what Kafka's
//! `kafka-transactions abort` (Admin.abortTransaction) sends a partition's
//! leader to end a hanging transaction, one that its coordinator no longer
//! knows and that holds the partition's last stable offset back for good.
//! Spate's coordinators send their own markers broker to broker over the
//! native protocol (`txn/markers.rs`); this is the operator's door, and
//! needs ClusterAction on the cluster, as in Kafka. Writing a marker for
//! a transaction its coordinator still runs breaks its atomicity: the
//! operator finds hanging ones first (`kafka-transactions find-hanging`).

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::AclOperation;

use super::codes::kafka_code;
use super::{Ctx, decode, respond};
use crate::limits::PARTITIONS_PER_REQUEST_MAX;
use crate::shard::ShardOp;
use crate::wire::{Reply, Response};

/// A partition's code now, or its marker's write to await.
type Pending = Result<oneshot::Receiver<crate::shard::Outcome>, i16>;
/// A topic's partitions, each with what it is waiting for.
type TopicPlan = (String, Vec<(i32, Pending)>);

pub(crate) fn write_txn_markers(ctx: Ctx, body: Bytes) -> Reply {
    let request: WriteTxnMarkersRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize =
        request.markers.iter().flat_map(|m| m.topics.iter()).map(|t| t.partition_indexes.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let allowed = ctx.allowed_on_cluster(AclOperation::ClusterAction);
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut plan: Vec<(i64, Vec<TopicPlan>)> = Vec::with_capacity(request.markers.len());
    for marker in &request.markers {
        let txn_marker = spate_engine::TxnMarker {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            commit: marker.transaction_result,
            coordinator_epoch: marker.coordinator_epoch,
        };
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in &marker.topics {
            let name = topic.name.0.to_string();
            let meta = catalog.topics.get(&name).cloned();
            let entries = topic
                .partition_indexes
                .iter()
                .map(|&index| {
                    let target = meta.as_ref().and_then(|m| u32::try_from(index).ok().filter(|&p| p < m.partitions));
                    let pending = match (&meta, target) {
                        _ if !allowed => Err(K::ClusterAuthorizationFailed.code()),
                        _ if txn_marker.producer_id < 0 || txn_marker.producer_epoch < 0 => {
                            Err(K::InvalidProducerIdMapping.code())
                        }
                        (Some(meta), Some(partition)) => {
                            let (reply, wait) = oneshot::channel();
                            let owner = ctx.shard.shared.owner(&meta.name, partition);
                            let op = ShardOp::WriteMarker { topic: meta.clone(), partition, marker: txn_marker, reply };
                            ctx.shard.submit(owner, op);
                            Ok(wait)
                        }
                        _ => Err(K::UnknownTopicOrPartition.code()),
                    };
                    (index, pending)
                })
                .collect();
            topics.push((name, entries));
        }
        plan.push((marker.producer_id.0, topics));
    }
    Reply::Later(Box::pin(async move {
        let mut markers = Vec::with_capacity(plan.len());
        for (producer_id, topics) in plan {
            let mut results = Vec::with_capacity(topics.len());
            for (name, entries) in topics {
                let mut partitions = Vec::with_capacity(entries.len());
                for (index, pending) in entries {
                    let code = match pending {
                        Err(code) => code,
                        Ok(wait) => wait.await.map_or(K::NotLeaderOrFollower.code(), |outcome| match outcome.error {
                            ErrorCode::None => 0,
                            error => kafka_code(error),
                        }),
                    };
                    partitions.push(
                        WritableTxnMarkerPartitionResult::default().with_partition_index(index).with_error_code(code),
                    );
                }
                results.push(
                    WritableTxnMarkerTopicResult::default()
                        .with_name(kafka_protocol::messages::TopicName(name.into()))
                        .with_partitions(partitions),
                );
            }
            markers.push(
                WritableTxnMarkerResult::default()
                    .with_producer_id(kafka_protocol::messages::ProducerId(producer_id))
                    .with_topics(results),
            );
        }
        respond(&ctx, &WriteTxnMarkersResponse::default().with_markers(markers))
    }))
}
