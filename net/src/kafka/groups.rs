//! Kafka's group APIs on Spate's one group coordinator (`group/`): the
//! same groups, offsets and `__consumer_offsets` records whichever
//! protocol a client speaks.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, group_partition};
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::group_code;
use super::{Ctx, decode, respond};
use crate::group::classic::{self, JoinIn, SyncIn};
use crate::group::{GroupOp, Tp, route};
use crate::limits::{GROUPS_PER_REQUEST_MAX, NAME_BYTES_MAX, PARTITIONS_PER_REQUEST_MAX};
use crate::shard::{Outcome, Shard};
use crate::wire::{Reply, Response};

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn group_name(id: &str) -> GroupId {
    GroupId(StrBytes::from_string(id.to_string()))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// The broker that coordinates `key`: the leader of its partition of
/// `topic` (`__consumer_offsets`, `__transaction_state`), with its Kafka
/// address; or an error code.
fn coordinator_of(shard: &Shard, listener: &str, topic: &str, key: &str) -> Result<(i32, String, i32), i16> {
    if key.is_empty() || key.len() > NAME_BYTES_MAX {
        return Err(if topic == CONSUMER_OFFSETS_TOPIC { K::InvalidGroupId.code() } else { K::InvalidRequest.code() });
    }
    let catalog = shard.shared.catalog.load();
    let Some(topic) = catalog.topics.get(topic) else {
        return Err(K::CoordinatorNotAvailable.code());
    };
    let leader = topic.assignment(group_partition(key, topic.partitions)).leader;
    match catalog.brokers.get(&leader) {
        Some(b) if !b.fenced => match b.kafka_endpoint(listener) {
            Some((host, port)) => Ok((b.node_id, host.to_string(), i32::from(port))),
            None => Err(K::CoordinatorNotAvailable.code()),
        },
        _ => Err(K::CoordinatorNotAvailable.code()),
    }
}

pub(crate) fn find_coordinator(ctx: Ctx, body: Bytes) -> Reply {
    let request: FindCoordinatorRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    // Kafka asks Describe on the group (or transactional id) first.
    let lookup = |key: &str| match request.key_type {
        KEY_TYPE_GROUP => {
            if !ctx.allowed(AclOperation::Describe, AclResourceType::Group, key) {
                return Err(K::GroupAuthorizationFailed.code());
            }
            coordinator_of(&ctx.shard, &ctx.session.listener, CONSUMER_OFFSETS_TOPIC, key)
        }
        KEY_TYPE_TRANSACTION => {
            if !ctx.allowed(AclOperation::Describe, AclResourceType::TransactionalId, key) {
                return Err(K::TransactionalIdAuthorizationFailed.code());
            }
            coordinator_of(&ctx.shard, &ctx.session.listener, crate::txn::TRANSACTION_STATE_TOPIC, key)
        }
        _ => Err(K::InvalidRequest.code()),
    };
    if ctx.version < 4 {
        let response = match lookup(request.key.as_str()) {
            Ok((node, host, port)) => FindCoordinatorResponse::default()
                .with_node_id(BrokerId(node))
                .with_host(StrBytes::from_string(host))
                .with_port(port),
            Err(code) => FindCoordinatorResponse::default()
                .with_error_code(code)
                .with_node_id(BrokerId(-1))
                .with_host(StrBytes::from_static_str(""))
                .with_port(-1),
        };
        return Reply::Now(respond(&ctx, &response));
    }
    let coordinators = request
        .coordinator_keys
        .iter()
        .take(GROUPS_PER_REQUEST_MAX)
        .map(|key| {
            let entry = Coordinator::default().with_key(key.clone());
            match lookup(key.as_str()) {
                Ok((node, host, port)) => {
                    entry.with_node_id(BrokerId(node)).with_host(StrBytes::from_string(host)).with_port(port)
                }
                Err(code) => entry.with_error_code(code).with_node_id(BrokerId(-1)).with_port(-1),
            }
        })
        .collect();
    Reply::Now(respond(&ctx, &FindCoordinatorResponse::default().with_coordinators(coordinators)))
}

fn stopped() -> Outcome {
    Outcome::err(ErrorCode::BrokerShuttingDown, "the coordinator's shard stopped")
}

fn no_coordinator() -> Outcome {
    Outcome::err(ErrorCode::NotReady, "no group coordinator yet")
}

/// Per topic of a commit: (partition, its own error if it is not
/// committed); the rest is committed as one and answered with its code.
pub(super) type CommitAnswers = Vec<(String, Vec<(i32, Option<i16>)>)>;

/// Sorts a commit's partitions (OffsetCommit, TxnOffsetCommit), given as
/// (topic, [(partition, offset)]): what to commit, and the answers. A
/// `refusal` (the group's or transactional id's authorization) answers
/// every partition; otherwise Read on each topic (Kafka's order), then
/// unknown topics and partitions are answered on their own.
pub(super) fn sort_commit<'a>(
    ctx: &Ctx,
    refusal: Option<i16>,
    topics: impl Iterator<Item = (&'a str, Vec<(i32, i64)>)>,
) -> (Vec<(Tp, i64)>, CommitAnswers) {
    let catalog = ctx.shard.shared.catalog.load_full();
    let known = |topic: &str, partition: i32| {
        catalog.topics.get(topic).is_some_and(|t| partition >= 0 && (partition as u32) < t.partitions)
    };
    let mut offsets: Vec<(Tp, i64)> = Vec::new();
    let mut answers: CommitAnswers = Vec::new();
    for (name, partitions) in topics {
        let topic_denied = refusal.is_none() && !ctx.allowed(AclOperation::Read, AclResourceType::Topic, name);
        let mut entries = Vec::with_capacity(partitions.len());
        for (partition, offset) in partitions {
            let own = if refusal.is_some() {
                refusal
            } else if topic_denied {
                Some(K::TopicAuthorizationFailed.code())
            } else if known(name, partition) {
                offsets.push(((name.to_string(), partition), offset));
                None
            } else {
                Some(K::UnknownTopicOrPartition.code())
            };
            entries.push((partition, own));
        }
        answers.push((name.to_string(), entries));
    }
    (offsets, answers)
}

pub(crate) fn offset_commit(ctx: Ctx, body: Bytes) -> Reply {
    let request: OffsetCommitRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let group_id = request.group_id.0.to_string();
    // Read on the group, then Read on each topic (Kafka's order).
    let group_denied = !ctx.allowed(AclOperation::Read, AclResourceType::Group, &group_id);
    let refusal = group_denied.then(|| K::GroupAuthorizationFailed.code());
    let topics = request
        .topics
        .iter()
        .map(|t| (t.name.0.as_str(), t.partitions.iter().map(|p| (p.partition_index, p.committed_offset)).collect()));
    let (offsets, answers) = sort_commit(&ctx, refusal, topics);
    let member_id = request.member_id.to_string();
    let instance_id = request.group_instance_id.as_ref().map(|i| i.to_string());
    let generation = request.generation_id_or_member_epoch;
    Reply::Later(Box::pin(async move {
        let code = if offsets.is_empty() {
            0
        } else {
            let results =
                classic::commit(&ctx.shard, &group_id, &member_id, instance_id.as_deref(), generation, offsets).await;
            results.first().map_or(0, |(_, code)| *code)
        };
        let topics = answers
            .into_iter()
            .map(|(name, entries)| {
                OffsetCommitResponseTopic::default().with_name(topic_name(&name)).with_partitions(
                    entries
                        .into_iter()
                        .map(|(p, own)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(own.unwrap_or(code))
                        })
                        .collect(),
                )
            })
            .collect();
        respond(&ctx, &OffsetCommitResponse::default().with_topics(topics))
    }))
}

/// Partitions asked for, by topic (None: all the group has).
type Asked = Option<Vec<(String, Vec<i32>)>>;

/// One group's committed offsets, as asked, as the principal may see
/// them: (group error, per topic its error and (partition, offset, its
/// own error)). Describe on the group is needed, and on each topic: a
/// topic asked for that the principal may not Describe is answered
/// denied, one it did not name is left out. With `require_stable`
/// (KIP-447), a partition a transaction still open has committed an
/// offset for is answered UNSTABLE_OFFSET_COMMIT, and the client asks again.
async fn fetch_group_authorized(
    ctx: &Ctx,
    group_id: &str,
    asked: Asked,
    require_stable: bool,
) -> (i16, Vec<(String, i16, Vec<(i32, i64, i16)>)>) {
    if !ctx.allowed(AclOperation::Describe, AclResourceType::Group, group_id) {
        return (K::GroupAuthorizationFailed.code(), Vec::new());
    }
    let named = asked.is_some();
    let (error, topics) = fetch_group(&ctx.shard, group_id, asked, require_stable).await;
    let topics = topics
        .into_iter()
        .filter_map(|(name, offsets)| {
            if ctx.may_see(AclOperation::Describe, AclResourceType::Topic, &name) {
                return Some((name, 0, offsets));
            }
            if !named {
                return None;
            }
            ctx.audit_denial(AclOperation::Describe, AclResourceType::Topic, &name);
            let offsets = offsets.into_iter().map(|(p, _, _)| (p, -1, 0)).collect();
            Some((name, K::TopicAuthorizationFailed.code(), offsets))
        })
        .collect();
    (error, topics)
}

/// Offsets by topic: (partition, offset, the partition's own error).
type TopicOffsets = Vec<(String, Vec<(i32, i64, i16)>)>;

/// One group's committed offsets, as asked: (error, offsets by topic).
async fn fetch_group(shard: &Rc<Shard>, group_id: &str, asked: Asked, require_stable: bool) -> (i16, TopicOffsets) {
    let partitions: Option<Vec<Tp>> =
        asked.as_ref().map(|topics| topics.iter().flat_map(|(t, ps)| ps.iter().map(|p| (t.clone(), *p))).collect());
    let (reply, wait) = oneshot::channel();
    let routed = route(shard, group_id, GroupOp::Fetch { group_id: group_id.to_string(), partitions, reply });
    let result = if routed { wait.await.unwrap_or_else(|_| Err(stopped())) } else { Err(no_coordinator()) };
    let fetched = match result {
        Ok(fetched) => fetched,
        Err(outcome) => return (group_code(outcome.error), Vec::new()),
    };
    let committed: BTreeMap<Tp, i64> = fetched.offsets.into_iter().collect();
    let unstable = |tp: &Tp| {
        if require_stable && fetched.unstable.contains(tp) { K::UnstableOffsetCommit.code() } else { 0 }
    };
    let topics = match asked {
        // Asked partitions without a commit answer -1 (Kafka's "none").
        Some(topics) => topics
            .into_iter()
            .map(|(t, ps)| {
                let offsets = ps
                    .iter()
                    .map(|p| {
                        let tp = (t.clone(), *p);
                        (*p, committed.get(&tp).copied().unwrap_or(-1), unstable(&tp))
                    })
                    .collect();
                (t, offsets)
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<(i32, i64, i16)>> = BTreeMap::new();
            for (tp, offset) in &committed {
                by_topic.entry(tp.0.clone()).or_default().push((tp.1, *offset, unstable(tp)));
            }
            by_topic.into_iter().collect()
        }
    };
    (0, topics)
}

pub(crate) fn offset_fetch(ctx: Ctx, body: Bytes) -> Reply {
    let request: OffsetFetchRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if ctx.version < 8 {
        let group_id = request.group_id.0.to_string();
        let asked = request
            .topics
            .map(|topics| topics.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
        let require_stable = request.require_stable;
        return Reply::Later(Box::pin(async move {
            let (error, topics) = fetch_group_authorized(&ctx, &group_id, asked, require_stable).await;
            let topics = topics
                .into_iter()
                .map(|(name, topic_error, offsets)| {
                    OffsetFetchResponseTopic::default().with_name(topic_name(&name)).with_partitions(
                        offsets
                            .into_iter()
                            .map(|(p, offset, own)| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(if topic_error != 0 { topic_error } else { own })
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                                    .with_metadata(Some(StrBytes::from_static_str("")))
                            })
                            .collect(),
                    )
                })
                .collect();
            respond(&ctx, &OffsetFetchResponse::default().with_error_code(error).with_topics(topics))
        }));
    }
    let groups: Vec<(String, Asked)> = request
        .groups
        .into_iter()
        .take(GROUPS_PER_REQUEST_MAX)
        .map(|g| {
            let asked = g
                .topics
                .map(|topics| topics.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
            (g.group_id.0.to_string(), asked)
        })
        .collect();
    let require_stable = request.require_stable;
    Reply::Later(Box::pin(async move {
        let mut answers = Vec::with_capacity(groups.len());
        for (group_id, asked) in groups {
            let (error, topics) = fetch_group_authorized(&ctx, &group_id, asked, require_stable).await;
            let topics = topics
                .into_iter()
                .map(|(name, topic_error, offsets)| {
                    OffsetFetchResponseTopics::default().with_name(topic_name(&name)).with_partitions(
                        offsets
                            .into_iter()
                            .map(|(p, offset, own)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_error_code(if topic_error != 0 { topic_error } else { own })
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                                    .with_metadata(Some(StrBytes::from_static_str("")))
                            })
                            .collect(),
                    )
                })
                .collect();
            answers.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(group_name(&group_id))
                    .with_error_code(error)
                    .with_topics(topics),
            );
        }
        respond(&ctx, &OffsetFetchResponse::default().with_groups(answers))
    }))
}

/// Kafka's names for group states.
pub(crate) fn kafka_state(state: &str) -> &'static str {
    match state {
        "Empty" | "empty" => "Empty",
        "Stable" | "stable" => "Stable",
        "PreparingRebalance" => "PreparingRebalance",
        "CompletingRebalance" => "CompletingRebalance",
        "Dead" | "dead" => "Dead",
        "Assigning" | "assigning" | "Reconciling" | "reconciling" => "Reconciling",
        _ => "Stable",
    }
}

pub(crate) fn list_groups(ctx: Ctx, body: Bytes) -> Reply {
    let request: ListGroupsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let all_visible = ctx.may_on_cluster(AclOperation::Describe);
    Reply::Later(Box::pin(async move {
        let groups = classic::list(&ctx.shard)
            .await
            .into_iter()
            .filter(|g| {
                request.states_filter.is_empty()
                    || request.states_filter.iter().any(|s| s.as_str().eq_ignore_ascii_case(&g.state))
            })
            .filter(|g| {
                request.types_filter.is_empty()
                    || request.types_filter.iter().any(|t| t.as_str().eq_ignore_ascii_case(g.group_type))
            })
            // Describe on the cluster shows every group; else each group
            // the principal may Describe (Kafka's rule).
            .filter(|g| all_visible || ctx.may_see(AclOperation::Describe, AclResourceType::Group, &g.group_id))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(group_name(&g.group_id))
                    .with_protocol_type(StrBytes::from_string(g.protocol_type))
                    .with_group_state(StrBytes::from_string(g.state))
                    .with_group_type(StrBytes::from_static_str(g.group_type))
            })
            .collect();
        respond(&ctx, &ListGroupsResponse::default().with_groups(groups))
    }))
}

pub(crate) fn describe_groups(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeGroupsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let ids: Vec<String> = request.groups.iter().take(GROUPS_PER_REQUEST_MAX).map(|g| g.0.to_string()).collect();
    Reply::Later(Box::pin(async move {
        let mut groups = Vec::with_capacity(ids.len());
        for group_id in ids {
            if !ctx.allowed(AclOperation::Describe, AclResourceType::Group, &group_id) {
                groups.push(
                    DescribedGroup::default()
                        .with_group_id(group_name(&group_id))
                        .with_error_code(K::GroupAuthorizationFailed.code()),
                );
                continue;
            }
            let described = classic::describe(&ctx.shard, &group_id).await;
            // Before v6 an unknown group is Dead without an error.
            let error = if described.error == classic::codes::GROUP_ID_NOT_FOUND && ctx.version < 6 {
                0
            } else {
                described.error
            };
            groups.push(
                DescribedGroup::default()
                    .with_group_id(group_name(&group_id))
                    .with_error_code(error)
                    .with_group_state(StrBytes::from_string(described.state))
                    .with_protocol_type(StrBytes::from_string(described.protocol_type))
                    .with_protocol_data(StrBytes::from_string(described.protocol_name))
                    .with_members(
                        described
                            .members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(StrBytes::from_string(m.member_id))
                                    .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                                    .with_client_id(StrBytes::from_string(m.client_id))
                                    .with_client_host(StrBytes::from_string(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            );
        }
        respond(&ctx, &DescribeGroupsResponse::default().with_groups(groups))
    }))
}

pub(crate) fn delete_groups(ctx: Ctx, body: Bytes) -> Reply {
    let request: DeleteGroupsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let waits: Vec<_> = request
        .groups_names
        .iter()
        .take(GROUPS_PER_REQUEST_MAX)
        .map(|g| {
            let group_id = g.0.to_string();
            if !ctx.allowed(AclOperation::Delete, AclResourceType::Group, &group_id) {
                return (group_id, None);
            }
            let (reply, wait) = oneshot::channel();
            let routed = route(&ctx.shard, &group_id, GroupOp::Delete { group_id: group_id.clone(), reply });
            (group_id, Some((routed, wait)))
        })
        .collect();
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(waits.len());
        for (group_id, wait) in waits {
            let code = match wait {
                None => K::GroupAuthorizationFailed.code(),
                Some((true, wait)) => group_code(wait.await.unwrap_or_else(|_| stopped()).error),
                Some((false, _)) => group_code(no_coordinator().error),
            };
            results.push(DeletableGroupResult::default().with_group_id(group_name(&group_id)).with_error_code(code));
        }
        respond(&ctx, &DeleteGroupsResponse::default().with_results(results))
    }))
}

fn opt(value: &Option<StrBytes>) -> Option<String> {
    value.as_ref().map(|v| v.to_string())
}

pub(crate) fn join_group(ctx: Ctx, body: Bytes) -> Reply {
    let request: JoinGroupRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &request.group_id.0) {
        let response = JoinGroupResponse::default()
            .with_error_code(K::GroupAuthorizationFailed.code())
            .with_generation_id(-1)
            .with_member_id(request.member_id.clone());
        return Reply::Now(respond(&ctx, &response));
    }
    let input = JoinIn {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: opt(&request.group_instance_id),
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
        session_timeout_ms: request.session_timeout_ms,
        // v0 had one timeout for both.
        rebalance_timeout_ms: if ctx.version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms },
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        // KIP-394: from v4 a new member first gets its id
        // (MEMBER_ID_REQUIRED), then joins with it.
        require_known_member_id: ctx.version >= 4,
        reason: opt(&request.reason),
    };
    Reply::Later(Box::pin(async move {
        let out = classic::join(&ctx.shard, input).await;
        let response = JoinGroupResponse::default()
            .with_error_code(out.error)
            .with_generation_id(out.generation_id)
            .with_protocol_type(out.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(out.protocol_name.map(StrBytes::from_string))
            .with_leader(StrBytes::from_string(out.leader))
            .with_skip_assignment(out.skip_assignment)
            .with_member_id(StrBytes::from_string(out.member_id))
            .with_members(
                out.members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id))
                            .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            );
        respond(&ctx, &response)
    }))
}

pub(crate) fn sync_group(ctx: Ctx, body: Bytes) -> Reply {
    let request: SyncGroupRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &request.group_id.0) {
        let response = SyncGroupResponse::default().with_error_code(K::GroupAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
    }
    let input = SyncIn {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: opt(&request.group_instance_id),
        generation_id: request.generation_id,
        protocol_type: opt(&request.protocol_type),
        protocol_name: opt(&request.protocol_name),
        assignments: request.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect(),
    };
    Reply::Later(Box::pin(async move {
        let out = classic::sync(&ctx.shard, input).await;
        let response = SyncGroupResponse::default()
            .with_error_code(out.error)
            .with_protocol_type(out.protocol_type.map(StrBytes::from_string))
            .with_protocol_name(out.protocol_name.map(StrBytes::from_string))
            .with_assignment(out.assignment);
        respond(&ctx, &response)
    }))
}

pub(crate) fn heartbeat(ctx: Ctx, body: Bytes) -> Reply {
    let request: HeartbeatRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &request.group_id.0) {
        let response = HeartbeatResponse::default().with_error_code(K::GroupAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
    }
    Reply::Later(Box::pin(async move {
        let code = classic::heartbeat(
            &ctx.shard,
            &request.group_id.0,
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id,
        )
        .await;
        respond(&ctx, &HeartbeatResponse::default().with_error_code(code))
    }))
}

pub(crate) fn leave_group(ctx: Ctx, body: Bytes) -> Reply {
    let request: LeaveGroupRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &request.group_id.0) {
        let response = LeaveGroupResponse::default().with_error_code(K::GroupAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
    }
    // v0-v2 name one member; v3+ a batch, with instance ids.
    let members: Vec<(String, Option<String>)> = if ctx.version < 3 {
        vec![(request.member_id.to_string(), None)]
    } else {
        request
            .members
            .iter()
            .take(crate::limits::MEMBERS_PER_GROUP_MAX)
            .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
            .collect()
    };
    let identities: Vec<(String, Option<String>)> = members.clone();
    Reply::Later(Box::pin(async move {
        let (error, codes) = classic::leave(&ctx.shard, &request.group_id.0, members).await;
        let response = if ctx.version < 3 {
            let own = codes.first().copied().unwrap_or(0);
            LeaveGroupResponse::default().with_error_code(if error == 0 { own } else { error })
        } else {
            LeaveGroupResponse::default().with_error_code(error).with_members(
                identities
                    .into_iter()
                    .zip(codes)
                    .map(|((member_id, instance_id), code)| {
                        MemberResponse::default()
                            .with_member_id(StrBytes::from_string(member_id))
                            .with_group_instance_id(instance_id.map(StrBytes::from_string))
                            .with_error_code(code)
                    })
                    .collect(),
            )
        };
        respond(&ctx, &response)
    }))
}
