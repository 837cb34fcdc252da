//! Kafka's admin APIs on partitions: DeleteRecords (the log start of each
//! partition moves forward on its leader; followers follow as they fetch).

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use spate_flatbuf::proto::ErrorCode;

use super::codes::kafka_code;
use super::{Ctx, decode, respond};
use crate::limits::PARTITIONS_PER_REQUEST_MAX;
use crate::shard::{OffsetResult, ShardOp};
use crate::wire::{Reply, Response};

/// DeleteRecords: each partition's leader moves its log start to the
/// offset asked for (-1: its high watermark) and answers with the new
/// start as the low watermark. Kafka waits until every replica has moved
/// its start; Spate answers once the leader has (durably), and followers
/// move theirs at their next fetch, so a follower elected in between may
/// still hold records below it until then.
pub(crate) fn delete_records(ctx: Ctx, body: Bytes) -> Reply {
    let request: DeleteRecordsRequest = match decode(&ctx, body) {
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
        let meta = catalog.topics.get(topic.name.0.as_str()).cloned();
        for part in &topic.partitions {
            let target =
                meta.as_ref().and_then(|m| u32::try_from(part.partition_index).ok().filter(|&p| p < m.partitions));
            let wait = match (&meta, target) {
                // The group coordinator replays its topic from the log
                // start: deleting its records would lose commits.
                (Some(meta), Some(_)) if spate_flatbuf::is_internal_topic(&meta.name) => {
                    Err(K::InvalidTopicException.code())
                }
                (Some(_), Some(_)) if part.offset < -1 => Err(K::OffsetOutOfRange.code()),
                (Some(meta), Some(partition)) => {
                    let (reply, wait) = oneshot::channel();
                    let owner = ctx.shard.shared.owner(&meta.name, partition);
                    ctx.shard.submit(
                        owner,
                        ShardOp::DeleteRecords { topic: meta.clone(), partition, offset: part.offset, reply },
                    );
                    Ok(wait)
                }
                _ => Err(K::UnknownTopicOrPartition.code()),
            };
            waits.push((topic_index, part.partition_index, wait));
        }
    }
    let mut topics: Vec<DeleteRecordsTopicResult> =
        request.topics.iter().map(|t| DeleteRecordsTopicResult::default().with_name(t.name.clone())).collect();
    Reply::Later(Box::pin(async move {
        for (topic_index, partition, wait) in waits {
            let (error_code, low_watermark) = match wait {
                Ok(wait) => {
                    let result =
                        wait.await.unwrap_or(OffsetResult { error: ErrorCode::BrokerShuttingDown, offset: -1 });
                    (kafka_code(result.error), result.offset)
                }
                Err(code) => (code, -1),
            };
            topics[topic_index].partitions.push(
                DeleteRecordsPartitionResult::default()
                    .with_partition_index(partition)
                    .with_low_watermark(low_watermark)
                    .with_error_code(error_code),
            );
        }
        respond(&ctx, &DeleteRecordsResponse::default().with_topics(topics))
    }))
}
