//! Kafka's OffsetDelete: a group's committed offsets of some partitions go,
//! on the group's coordinator (`group/offset_delete.rs`), except those of
//! topics the group's members are subscribed to.

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::group_code;
use super::{Ctx, decode, respond};
use crate::group::{GroupOp, OffsetDeleted, Tp, coordinator};
use crate::limits::PARTITIONS_PER_REQUEST_MAX;
use crate::shard::{Outcome, ShardOp};
use crate::wire::{Reply, Response};

pub(crate) fn offset_delete(ctx: Ctx, body: Bytes) -> Reply {
    let request: OffsetDeleteRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let group_id = request.group_id.0.to_string();
    // Delete on the group, then Read on each topic (Kafka's rule).
    if !ctx.allowed(AclOperation::Delete, AclResourceType::Group, &group_id) {
        let response = OffsetDeleteResponse::default().with_error_code(K::GroupAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
    }
    let denied: std::collections::HashSet<String> = request
        .topics
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|name| !ctx.allowed(AclOperation::Read, AclResourceType::Topic, name))
        .collect();
    let catalog = ctx.shard.shared.catalog.load_full();
    // Topics the cluster does not have are answered here, as Kafka does.
    let known = move |name: &str| catalog.topics.contains_key(name);
    let asked: Vec<Tp> = request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    let wanted: Vec<Tp> = asked.iter().filter(|(topic, _)| known(topic) && !denied.contains(topic)).cloned().collect();
    let (reply, wait) = oneshot::channel();
    let routed = match coordinator(&ctx.shard, &group_id) {
        Some(owner) => {
            let op = GroupOp::DeleteOffsets { group_id, partitions: wanted, reply };
            ctx.shard.submit(owner, ShardOp::Group(op));
            true
        }
        None => false,
    };
    Reply::Later(Box::pin(async move {
        let answered = if routed {
            wait.await
                .unwrap_or_else(|_| Err(Outcome::err(ErrorCode::BrokerShuttingDown, "the coordinator's shard stopped")))
        } else {
            Err(Outcome::err(ErrorCode::NotReady, "no group coordinator yet"))
        };
        let answers = match answered {
            Err(outcome) => {
                let response = OffsetDeleteResponse::default().with_error_code(group_code(outcome.error));
                return respond(&ctx, &response);
            }
            Ok(answers) => answers,
        };
        let mut answers = answers.into_iter();
        let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
        for (topic, partition) in asked {
            let code = if denied.contains(&topic) {
                K::TopicAuthorizationFailed.code()
            } else if !known(&topic) {
                K::UnknownTopicOrPartition.code()
            } else {
                match answers.next().map(|(_, answer)| answer) {
                    Some(OffsetDeleted::Deleted) => 0,
                    Some(OffsetDeleted::SubscribedToTopic) => K::GroupSubscribedToTopic.code(),
                    None => K::UnknownServerError.code(),
                }
            };
            let answer = OffsetDeleteResponsePartition::default().with_partition_index(partition).with_error_code(code);
            match topics.last_mut() {
                Some(last) if last.name.0.as_str() == topic => last.partitions.push(answer),
                _ => topics.push(
                    OffsetDeleteResponseTopic::default()
                        .with_name(kafka_protocol::messages::TopicName(
                            kafka_protocol::protocol::StrBytes::from_string(topic),
                        ))
                        .with_partitions(vec![answer]),
                ),
            }
        }
        respond(&ctx, &OffsetDeleteResponse::default().with_topics(topics))
    }))
}
