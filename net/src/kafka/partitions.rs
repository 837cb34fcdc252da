//! Kafka's admin APIs on partitions: DeleteRecords (the log start of each
//! partition moves forward on its leader; followers follow as they fetch)
//! and DescribeLogDirs (this broker's one log directory, the data
//! directory, with the size of each partition it hosts).

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;

use super::codes::kafka_code;
use super::{Ctx, decode, respond};
use crate::limits::PARTITIONS_PER_REQUEST_MAX;
use crate::shard::{OffsetResult, PartitionStats, ShardOp};
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

/// DescribeLogDirs: Spate has one log directory per broker, its data
/// directory. Each partition this broker hosts (a replica here, open and
/// readable) is listed with its size on disk and Kafka's offset lag
/// (high watermark minus log end, at least 0: 0 on a leader); the file
/// system's total and usable bytes come from statvfs. Asked topics or
/// partitions not hosted here are left out, as Kafka does.
pub(crate) fn describe_log_dirs(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeLogDirsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let wanted: Option<Vec<(String, Vec<i32>)>> = request
        .topics
        .as_ref()
        .map(|topics| topics.iter().map(|t| (t.topic.0.to_string(), t.partitions.clone())).collect());
    if wanted.as_ref().is_some_and(|w| w.iter().map(|(_, p)| p.len()).sum::<usize>() > PARTITIONS_PER_REQUEST_MAX) {
        return Reply::Now(Response::Close(None));
    }
    let catalog = ctx.shard.shared.catalog.load_full();
    let node_id = ctx.shard.shared.config.node_id;
    let mut waits = Vec::new();
    let mut topics: Vec<_> = catalog.topics.values().cloned().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        let asked: Option<&Vec<i32>> = match &wanted {
            None => None,
            Some(wanted) => match wanted.iter().find(|(name, _)| *name == topic.name) {
                Some((_, partitions)) => Some(partitions),
                None => continue,
            },
        };
        for partition in 0..topic.partitions {
            if asked.is_some_and(|asked| !asked.contains(&(partition as i32)))
                || !topic.assignment(partition).replicas.contains(&node_id)
            {
                continue;
            }
            let (reply, wait) = oneshot::channel();
            let owner = ctx.shard.shared.owner(&topic.name, partition);
            ctx.shard.submit(owner, ShardOp::Stats { topic: topic.clone(), partition, reply });
            waits.push((topic.name.clone(), partition as i32, wait));
        }
    }
    let data_dir = ctx.shard.shared.config.data_dir.clone();
    Reply::Later(Box::pin(async move {
        let mut results: Vec<DescribeLogDirsTopic> = Vec::new();
        for (name, partition, wait) in waits {
            let stats = wait
                .await
                .unwrap_or_else(|_| PartitionStats { error: ErrorCode::BrokerShuttingDown, ..Default::default() });
            if stats.error != ErrorCode::None {
                continue;
            }
            let described = DescribeLogDirsPartition::default()
                .with_partition_index(partition)
                .with_partition_size(stats.size_bytes as i64)
                .with_offset_lag((stats.high_watermark - stats.log_end_offset).max(0))
                .with_is_future_key(false);
            match results.last_mut() {
                Some(topic) if topic.name.0.as_str() == name => topic.partitions.push(described),
                _ => results.push(
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(vec![described]),
                ),
            }
        }
        let log_dir = std::path::absolute(&data_dir).unwrap_or(data_dir.clone());
        // statvfs is a blocking system call: off the shard's thread.
        let space = glommio::executor().spawn_blocking(move || nix::sys::statvfs::statvfs(&data_dir)).await;
        let mut result = DescribeLogDirsResult::default()
            .with_log_dir(StrBytes::from_string(log_dir.display().to_string()))
            .with_topics(results);
        match space {
            Ok(space) => {
                let fragment_bytes = space.fragment_size() as i64;
                result = result
                    .with_total_bytes((space.blocks() as i64).saturating_mul(fragment_bytes))
                    .with_usable_bytes((space.blocks_available() as i64).saturating_mul(fragment_bytes));
            }
            Err(err) => {
                // Kafka's -1: unknown. The partitions are still listed.
                tracing::warn!(dir = %log_dir.display(), "statvfs of the data directory failed: {err}");
                result = result.with_total_bytes(-1).with_usable_bytes(-1);
            }
        }
        respond(&ctx, &DescribeLogDirsResponse::default().with_results(vec![result]))
    }))
}
