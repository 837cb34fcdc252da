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
use crate::wire::{Reply, Response};

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
    let (reply, wait) = oneshot::channel();
    let routed = !offsets.is_empty()
        && route(
            &ctx.shard,
            &group_id,
            GroupOp::TxnCommit(TxnCommit {
                group_id: group_id.clone(),
                member_id: request.member_id.to_string(),
                group_instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
                generation_id: request.generation_id,
                producer_id: request.producer_id.0,
                producer_epoch: request.producer_epoch,
                offsets,
                reply,
            }),
        );
    Reply::Later(Box::pin(async move {
        let code = if routed {
            // A stopped coordinator shard: the client looks it up again.
            wait.await.unwrap_or(K::CoordinatorNotAvailable.code())
        } else {
            K::CoordinatorNotAvailable.code()
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
