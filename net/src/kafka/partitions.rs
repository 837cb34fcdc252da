//! Kafka's admin APIs on partitions: DeleteRecords (the log start of each
//! partition moves forward on its leader; followers follow as they fetch)
//! and DescribeLogDirs (this broker's one log directory, the data
//! directory, with the size of each partition it hosts), ElectLeaders
//! (through the controller) and DescribeProducers (the idempotent
//! producers' state each leader keeps).

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_producers_response::{PartitionResponse, ProducerState, TopicResponse};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    DescribeProducersRequest, DescribeProducersResponse, ElectLeadersRequest, ElectLeadersResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::{election_code, kafka_code};
use super::{Ctx, decode, respond};
use crate::admin::{ADMIN_SHARD, AdminOp};
use crate::limits::{PARTITIONS_PER_REQUEST_MAX, REQUEST_TIMEOUT_MS_MAX};
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
        let denied = !ctx.allowed(AclOperation::Delete, AclResourceType::Topic, topic.name.0.as_str());
        let meta = catalog.topics.get(topic.name.0.as_str()).cloned();
        for part in &topic.partitions {
            let target =
                meta.as_ref().and_then(|m| u32::try_from(part.partition_index).ok().filter(|&p| p < m.partitions));
            let wait = match (&meta, target) {
                _ if denied => Err(K::TopicAuthorizationFailed.code()),
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
                    let result = wait.await.unwrap_or(OffsetResult {
                        error: ErrorCode::BrokerShuttingDown,
                        offset: -1,
                        timestamp: -1,
                    });
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
    // Describe on the cluster (Kafka's rule); before v3 the answer has no
    // error field, and a denied client gets no directories.
    if !ctx.allowed_on_cluster(AclOperation::Describe) {
        let response = DescribeLogDirsResponse::default().with_error_code(K::ClusterAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
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

/// Kafka's election types (KIP-460).
const ELECTION_PREFERRED: i8 = 0;
const ELECTION_UNCLEAN: i8 = 1;

/// ElectLeaders: preferred (type 0; v0 knows no other) or unclean
/// (type 1) election of each partition asked for, through the controller
/// on the admin shard, one partition at a time. A null list asks for every
/// partition, and then, as Kafka does, partitions that needed no election
/// are left out of the answer. Partitions not done within the timeout are
/// answered REQUEST_TIMED_OUT (they may still be elected).
pub(crate) fn elect_leaders(ctx: Ctx, body: Bytes) -> Reply {
    let request: ElectLeadersRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let election_type = if ctx.version == 0 { ELECTION_PREFERRED } else { request.election_type };
    let catalog = ctx.shard.shared.catalog.load_full();
    let all = request.topic_partitions.is_none();
    let asked: Vec<(String, i32)> = match &request.topic_partitions {
        Some(topics) => topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p))).collect(),
        None => {
            let mut every: Vec<(String, i32)> =
                catalog.topics.values().flat_map(|t| (0..t.partitions as i32).map(|p| (t.name.clone(), p))).collect();
            every.sort();
            every
        }
    };
    // A list is the client's and capped; every partition of the cluster
    // (a null list) is bounded by the cluster's own limits.
    if !all && asked.len() > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    // Alter on the cluster (Kafka's rule); a denied request for every
    // partition learns none of them.
    let cluster_denied = !ctx.allowed_on_cluster(AclOperation::Alter);
    if cluster_denied && all {
        let response = ElectLeadersResponse::default().with_error_code(K::ClusterAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
    }
    let refused = match election_type {
        _ if cluster_denied => Some(K::ClusterAuthorizationFailed.code()),
        ELECTION_PREFERRED | ELECTION_UNCLEAN => None,
        _ => Some(K::InvalidRequest.code()),
    };
    // Partitions the catalog does not know are answered here; the rest go
    // to the controller.
    let known = move |(name, partition): &(String, i32)| {
        catalog.topics.get(name).is_some_and(|t| u32::try_from(*partition).is_ok_and(|p| p < t.partitions))
    };
    let elect: Vec<(String, u32)> = if refused.is_some() {
        Vec::new()
    } else {
        asked.iter().filter(|a| known(a)).map(|(name, partition)| (name.clone(), *partition as u32)).collect()
    };
    let (reply, wait) = oneshot::channel();
    if !elect.is_empty() {
        let unclean = election_type == ELECTION_UNCLEAN;
        ctx.shard
            .submit(ADMIN_SHARD, ShardOp::Admin(AdminOp::ElectLeaders { partitions: elect.clone(), unclean, reply }));
    } else {
        let _ = reply.send(Vec::new());
    }
    let timeout = std::time::Duration::from_millis((request.timeout_ms.max(0) as u64).clamp(1, REQUEST_TIMEOUT_MS_MAX));
    Reply::Later(Box::pin(async move {
        let elected: Vec<i16> = futures::select! {
            results = futures::FutureExt::fuse(wait) => match results {
                Ok(results) => results.iter().map(election_code).collect(),
                Err(_) => vec![K::NotLeaderOrFollower.code(); elect.len()],
            },
            () = futures::FutureExt::fuse(crate::deadline::Deadline::after(timeout)) => {
                vec![K::RequestTimedOut.code(); elect.len()]
            }
        };
        let mut elected = elect.iter().zip(elected);
        let mut results: Vec<ReplicaElectionResult> = Vec::new();
        for (name, partition) in &asked {
            let code = match refused {
                Some(code) => code,
                None if !known(&(name.clone(), *partition)) => K::UnknownTopicOrPartition.code(),
                None => elected.next().map_or(K::UnknownServerError.code(), |(_, code)| code),
            };
            if all && code == K::ElectionNotNeeded.code() {
                continue;
            }
            let result = PartitionResult::default().with_partition_id(*partition).with_error_code(code);
            match results.last_mut() {
                Some(topic) if topic.topic.0.as_str() == name => topic.partition_result.push(result),
                _ => results.push(
                    ReplicaElectionResult::default()
                        .with_topic(TopicName(StrBytes::from_string(name.clone())))
                        .with_partition_result(vec![result]),
                ),
            }
        }
        let error = if cluster_denied { K::ClusterAuthorizationFailed.code() } else { 0 };
        respond(&ctx, &ElectLeadersResponse::default().with_error_code(error).with_replica_election_results(results))
    }))
}

/// DescribeProducers (KIP-664): per partition, on its leader, each
/// idempotent producer's id, epoch and last sequence, from the state the
/// log keeps for the sequence rules (`engine/src/producer_state.rs`).
/// Spate has no transactions yet: coordinator epoch and current
/// transaction start offset are -1. The state keeps no timestamps, so the
/// last timestamp is -1 (Kafka's "none") too.
pub(crate) fn describe_producers(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeProducersRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize = request.topics.iter().map(|t| t.partition_indexes.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut waits = Vec::with_capacity(partitions);
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let denied = !ctx.allowed(AclOperation::Read, AclResourceType::Topic, topic.name.0.as_str());
        let meta = catalog.topics.get(topic.name.0.as_str()).cloned();
        for &index in &topic.partition_indexes {
            let target = meta.as_ref().and_then(|m| u32::try_from(index).ok().filter(|&p| p < m.partitions));
            let wait = match (&meta, target) {
                _ if denied => Err(K::TopicAuthorizationFailed.code()),
                (Some(meta), Some(partition)) => {
                    let (reply, wait) = oneshot::channel();
                    let owner = ctx.shard.shared.owner(&meta.name, partition);
                    ctx.shard.submit(owner, ShardOp::DescribeProducers { topic: meta.clone(), partition, reply });
                    Ok(wait)
                }
                _ => Err(K::UnknownTopicOrPartition.code()),
            };
            waits.push((topic_index, index, wait));
        }
    }
    let mut topics: Vec<TopicResponse> =
        request.topics.iter().map(|t| TopicResponse::default().with_name(t.name.clone())).collect();
    Reply::Later(Box::pin(async move {
        for (topic_index, index, wait) in waits {
            let producers = match wait {
                Err(code) => Err(code),
                Ok(wait) => wait.await.unwrap_or(Err(ErrorCode::BrokerShuttingDown)).map_err(kafka_code),
            };
            let partition = PartitionResponse::default().with_partition_index(index);
            let partition = match producers {
                Err(code) => partition.with_error_code(code),
                Ok(producers) => partition.with_active_producers(
                    producers
                        .into_iter()
                        .map(|producer| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(producer.producer_id))
                                .with_producer_epoch(i32::from(producer.epoch))
                                .with_last_sequence(producer.last_sequence)
                                .with_last_timestamp(-1)
                                .with_coordinator_epoch(-1)
                                .with_current_txn_start_offset(producer.current_txn_start_offset)
                        })
                        .collect(),
                ),
            };
            topics[topic_index].partitions.push(partition);
        }
        respond(&ctx, &DescribeProducersResponse::default().with_topics(topics))
    }))
}
