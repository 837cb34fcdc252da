//! Kafka's TxnOffsetCommit: a transactional producer commits a consumer
//! group's offsets inside its transaction (`group/txn_offsets.rs` holds
//! them pending until the transaction's marker).

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::protocol::StrBytes;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::groups::sort_commit;
use super::{Ctx, decode, respond};
use crate::group::txn_offsets::TxnCommit;
use crate::group::{GroupOp, route};
use crate::limits::PARTITIONS_PER_REQUEST_MAX;
use crate::txn::{TxnError, add_offsets_partition};
use crate::wire::{Reply, Response};

/// A v5 commit's answer when its offsets partition could not join the
/// transaction. The coordinator's passing states are codes the Java
/// client retries with the same group coordinator.
fn join_code(err: TxnError) -> i16 {
    match err {
        TxnError::ProducerFenced => K::ProducerFenced.code(),
        TxnError::InvalidProducerIdMapping => K::InvalidProducerIdMapping.code(),
        TxnError::InvalidTxnState | TxnError::TooManyPartitions => K::InvalidTxnState.code(),
        TxnError::ConcurrentTransactions => K::ConcurrentTransactions.code(),
        TxnError::NotCoordinator
        | TxnError::CoordinatorLoadInProgress
        | TxnError::CoordinatorNotAvailable
        | TxnError::ProducerIdsUnavailable
        | TxnError::InvalidTransactionTimeout => K::CoordinatorLoadInProgress.code(),
    }
}

pub(crate) fn txn_offset_commit(ctx: Ctx, body: Bytes) -> Reply {
    let request: TxnOffsetCommitRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let group_id = request.group_id.0.to_string();
    // Kafka's order: Write on the transactional id, Read on the group,
    // then Read on each topic.
    let refusal = if !ctx.allowed(AclOperation::Write, AclResourceType::TransactionalId, &request.transactional_id.0) {
        Some(K::TransactionalIdAuthorizationFailed.code())
    } else if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &group_id) {
        Some(K::GroupAuthorizationFailed.code())
    } else {
        None
    };
    let topics = request
        .topics
        .iter()
        .map(|t| (t.name.0.as_str(), t.partitions.iter().map(|p| (p.partition_index, p.committed_offset)).collect()));
    let (offsets, answers) = sort_commit(&ctx, refusal, topics);
    let (producer_id, producer_epoch) = (request.producer_id.0, request.producer_epoch);
    let (reply, wait) = oneshot::channel();
    let commit = TxnCommit {
        group_id: group_id.clone(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation_id: request.generation_id,
        producer_id,
        producer_epoch,
        offsets,
        reply,
    };
    // v5 is transactions v2 (KIP-890 part 2): the client sent no
    // AddOffsetsToTxn, so the group's offsets partition joins the
    // transaction here, before the offsets are written to it.
    let join = (ctx.version >= 5 && !commit.offsets.is_empty()).then(|| request.transactional_id.0.to_string());
    Reply::Later(Box::pin(async move {
        let joined = match join {
            None => Ok(()),
            Some(txn_id) => add_offsets_partition(&ctx.shard, &txn_id, &group_id, producer_id, producer_epoch)
                .await
                .map_err(join_code),
        };
        let code = match joined {
            Err(code) => code,
            Ok(()) => {
                let routed = !commit.offsets.is_empty() && route(&ctx.shard, &group_id, GroupOp::TxnCommit(commit));
                if routed {
                    // A stopped coordinator shard: the client looks it up again.
                    wait.await.unwrap_or(K::CoordinatorNotAvailable.code())
                } else {
                    K::CoordinatorNotAvailable.code()
                }
            }
        };
        let topics = answers
            .into_iter()
            .map(|(name, entries)| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(
                        entries
                            .into_iter()
                            .map(|(p, own)| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(own.unwrap_or(code))
                            })
                            .collect(),
                    )
            })
            .collect();
        respond(&ctx, &TxnOffsetCommitResponse::default().with_topics(topics))
    }))
}
