//! The group APIs on the wire: read a request, send it to the group's
//! coordinator (`ShardOp::Group`; run in place if that is us), build the
//! answer. DescribeGroups also asks each partition's owner for its high
//! watermark (the ListOffsets path) to report lag.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};
use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, OFFSET_LATEST, validate_group_id};

use crate::group::{Assignor, GroupOp, GroupView, HeartbeatIn, Tp, heartbeat_interval, route};
use crate::shard::{OffsetResult, Outcome, Shard, ShardOp};
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

type TpsVector<'a> = Vector<'a, ForwardsUOffset<TopicPartitions<'a>>>;

fn tps(vector: Option<TpsVector<'_>>) -> BTreeSet<Tp> {
    let mut out = BTreeSet::new();
    for entry in vector.iter().flatten() {
        let topic = entry.topic().unwrap_or_default();
        for partition in entry.partitions().iter().flatten() {
            out.insert((topic.to_string(), partition));
        }
    }
    out
}

fn create_tps<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    set: &BTreeSet<Tp>,
) -> WIPOffset<Vector<'a, ForwardsUOffset<TopicPartitions<'a>>>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in set {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let entries: Vec<_> = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let topic = builder.create_string(topic);
            let partitions = builder.create_vector(&partitions);
            TopicPartitions::create(builder, &TopicPartitionsArgs { topic: Some(topic), partitions: Some(partitions) })
        })
        .collect();
    builder.create_vector(&entries)
}

fn stopped() -> Outcome {
    Outcome::err(ErrorCode::BrokerShuttingDown, "the coordinator's shard stopped")
}

fn no_coordinator() -> Outcome {
    Outcome::err(ErrorCode::NotReady, "no group coordinator: __consumer_offsets is missing")
}

// ---- ConsumerGroupHeartbeat ----

pub(crate) fn heartbeat(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_consumer_group_heartbeat_request()) else {
        return invalid(request_id, "heartbeat body missing");
    };
    let group_id = request.group_id().unwrap_or_default().to_string();
    let config = &shard.shared.config;
    let session_ms = (request.session_timeout_ms().max(0) as u64)
        .clamp(config.group_session_timeout_ms_min, config.group_session_timeout_ms_max);
    let session_timeout = Duration::from_millis(session_ms);
    let assignor = match request.assignor().filter(|name| !name.is_empty()) {
        None => None,
        Some(name) => match Assignor::parse(name) {
            Some(assignor) => Some(assignor),
            None => {
                let message = format!("assignor {name:?}: expected range, roundrobin or sticky");
                return heartbeat_error(request_id, Outcome::err(ErrorCode::InvalidGroupId, message));
            }
        },
    };
    if let Err(message) = validate_group_id(&group_id) {
        return heartbeat_error(request_id, Outcome::err(ErrorCode::InvalidGroupId, message));
    }
    let parsed = HeartbeatIn {
        member_id: request.member_id().unwrap_or_default().to_string(),
        member_epoch: request.member_epoch(),
        subscribed: request.subscribed_topics().iter().flatten().map(str::to_string).collect(),
        assignor,
        session_timeout,
        owned: tps(request.owned_partitions()),
        client_id: request.client_id().unwrap_or_default().to_string(),
        client_member_id: None,
    };
    let (reply, wait) = oneshot::channel();
    if !route(shard, &group_id, GroupOp::Heartbeat { group_id: group_id.clone(), request: parsed, reply }) {
        return heartbeat_error(request_id, no_coordinator());
    }
    let interval_ms = heartbeat_interval(session_timeout).as_millis() as i32;
    Reply::Later(Box::pin(async move {
        let mut builder = FlatBufferBuilder::new();
        let args = match wait.await.unwrap_or_else(|_| Err(stopped())) {
            Err(outcome) => {
                return Response::Frame(heartbeat_frame(request_id, outcome));
            }
            Ok(out) => {
                let member_id = builder.create_string(&out.member_id);
                let assignment = create_tps(&mut builder, &out.assignment);
                ConsumerGroupHeartbeatResponseArgs {
                    error: ErrorCode::None,
                    message: None,
                    member_id: Some(member_id),
                    member_epoch: out.member_epoch,
                    heartbeat_interval_ms: interval_ms,
                    assignment: Some(assignment),
                }
            }
        };
        let body = ConsumerGroupHeartbeatResponse::create(&mut builder, &args);
        Response::Frame(envelope_frame(
            builder,
            request_id,
            Body::ConsumerGroupHeartbeatResponse,
            body.as_union_value(),
            0,
        ))
    }))
}

fn heartbeat_frame(request_id: u64, outcome: Outcome) -> bytes::Bytes {
    let mut builder = FlatBufferBuilder::new();
    let message = outcome.message.as_deref().map(|m| builder.create_string(m));
    let body = ConsumerGroupHeartbeatResponse::create(
        &mut builder,
        &ConsumerGroupHeartbeatResponseArgs { error: outcome.error, message, ..Default::default() },
    );
    envelope_frame(builder, request_id, Body::ConsumerGroupHeartbeatResponse, body.as_union_value(), 0)
}

fn heartbeat_error(request_id: u64, outcome: Outcome) -> Reply {
    Reply::Now(Response::Frame(heartbeat_frame(request_id, outcome)))
}

// ---- OffsetCommit ----

fn commit_frame(request_id: u64, outcome: &Outcome) -> bytes::Bytes {
    let mut builder = FlatBufferBuilder::new();
    let message = outcome.message.as_deref().map(|m| builder.create_string(m));
    let body = OffsetCommitResponse::create(&mut builder, &OffsetCommitResponseArgs { error: outcome.error, message });
    envelope_frame(builder, request_id, Body::OffsetCommitResponse, body.as_union_value(), 0)
}

pub(crate) fn offset_commit(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_offset_commit_request()) else {
        return invalid(request_id, "offset commit body missing");
    };
    let group_id = request.group_id().unwrap_or_default().to_string();
    if let Err(message) = validate_group_id(&group_id) {
        return Reply::Now(Response::Frame(commit_frame(
            request_id,
            &Outcome::err(ErrorCode::InvalidGroupId, message),
        )));
    }
    let mut offsets = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default();
        for part in topic.partitions().iter().flatten() {
            offsets.push(((name.to_string(), part.partition()), part.offset()));
        }
    }
    let (reply, wait) = oneshot::channel();
    let op = GroupOp::Commit {
        group_id: group_id.clone(),
        member_id: request.member_id().unwrap_or_default().to_string(),
        group_instance_id: None,
        member_epoch: request.member_epoch(),
        offsets,
        reply: crate::group::CommitReply::Native(reply),
    };
    if !route(shard, &group_id, op) {
        return Reply::Now(Response::Frame(commit_frame(request_id, &no_coordinator())));
    }
    Reply::Later(Box::pin(async move {
        let outcome = wait.await.unwrap_or_else(|_| stopped());
        Response::Frame(commit_frame(request_id, &outcome))
    }))
}

// ---- OffsetFetch ----

pub(crate) fn offset_fetch(shard: &Rc<Shard>, session: &super::Session, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_offset_fetch_request()) else {
        return invalid(request_id, "offset fetch body missing");
    };
    let group_id = request.group_id().unwrap_or_default().to_string();
    let wanted: Option<Vec<Tp>> = request.topics().map(|topics| tps(Some(topics)).into_iter().collect());
    let error_frame = |error: ErrorCode| {
        let mut builder = FlatBufferBuilder::new();
        let body = OffsetFetchResponse::create(&mut builder, &OffsetFetchResponseArgs { error, topics: None });
        Reply::Now(Response::Frame(envelope_frame(
            builder,
            request_id,
            Body::OffsetFetchResponse,
            body.as_union_value(),
            0,
        )))
    };
    if validate_group_id(&group_id).is_err() {
        return error_frame(ErrorCode::InvalidGroupId);
    }
    let (reply, wait) = oneshot::channel();
    if !route(shard, &group_id, GroupOp::Fetch { group_id: group_id.clone(), partitions: wanted.clone(), reply }) {
        return error_frame(ErrorCode::NotReady);
    }
    // Kafka: the offsets of all of a group's topics leave out the topics
    // the principal may not Describe (named topics were checked whole,
    // before: `authz.rs`).
    let asker = wanted.is_none().then(|| session.asker());
    let filter_shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let (error, mut found) = match wait.await {
            Ok(Ok(found)) => (ErrorCode::None, found.offsets),
            Ok(Err(outcome)) => (outcome.error, Vec::new()),
            Err(_) => (ErrorCode::BrokerShuttingDown, Vec::new()),
        };
        if let Some(asker) = asker {
            use spate_replication::acl::{AclOperation, AclResourceType};
            found.retain(|((topic, _), _)| {
                asker.may(&filter_shard, AclOperation::Describe, (AclResourceType::Topic, topic))
            });
        }
        let mut by_topic: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        // Every partition asked for is answered; -1 where none is committed.
        let wanted = if error == ErrorCode::None { wanted } else { None };
        for (topic, partition) in wanted.into_iter().flatten() {
            by_topic.entry(topic).or_default().insert(partition, -1);
        }
        for ((topic, partition), offset) in found {
            by_topic.entry(topic).or_default().insert(partition, offset);
        }
        let mut builder = FlatBufferBuilder::new();
        let topics: Vec<_> = by_topic
            .into_iter()
            .map(|(name, partitions)| {
                let partitions: Vec<_> = partitions
                    .into_iter()
                    .map(|(partition, offset)| {
                        OffsetFetchPartition::create(&mut builder, &OffsetFetchPartitionArgs { partition, offset })
                    })
                    .collect();
                let partitions = builder.create_vector(&partitions);
                let name = builder.create_string(&name);
                OffsetFetchTopic::create(
                    &mut builder,
                    &OffsetFetchTopicArgs { name: Some(name), partitions: Some(partitions) },
                )
            })
            .collect();
        let topics = builder.create_vector(&topics);
        let body = OffsetFetchResponse::create(&mut builder, &OffsetFetchResponseArgs { error, topics: Some(topics) });
        Response::Frame(envelope_frame(builder, request_id, Body::OffsetFetchResponse, body.as_union_value(), 0))
    }))
}

// ---- ListGroups ----

pub(crate) fn list_groups(shard: &Rc<Shard>, session: &super::Session, request_id: u64) -> Reply {
    // Kafka: all groups with Describe on the cluster, else those the
    // principal may Describe (decided here, before the answer is awaited).
    use spate_replication::acl::{AclOperation, AclResourceType, CLUSTER_RESOURCE_NAME};
    let on_cluster = (AclResourceType::Cluster, CLUSTER_RESOURCE_NAME);
    let asker = (!super::authz::may(shard, session, AclOperation::Describe, on_cluster)).then(|| session.asker());
    let filter_shard = shard.clone();
    let waits: Vec<_> = (0..shard.shared.shard_count)
        .map(|owner| {
            let (reply, wait) = oneshot::channel();
            shard.submit(owner, ShardOp::Group(GroupOp::List { reply }));
            wait
        })
        .collect();
    Reply::Later(Box::pin(async move {
        let mut all: Vec<crate::group::GroupListing> = Vec::new();
        for wait in waits {
            all.extend(wait.await.unwrap_or_default());
        }
        if let Some(asker) = asker {
            all.retain(|listing| {
                asker.may(&filter_shard, AclOperation::Describe, (AclResourceType::Group, &listing.group_id))
            });
        }
        all.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        let mut builder = FlatBufferBuilder::new();
        let groups: Vec<_> = all
            .iter()
            .map(|listing| {
                let group_id = builder.create_string(&listing.group_id);
                let state = builder.create_string(listing.state);
                GroupListing::create(
                    &mut builder,
                    &GroupListingArgs { group_id: Some(group_id), state: Some(state), members: listing.members as i32 },
                )
            })
            .collect();
        let groups = builder.create_vector(&groups);
        let body = ListGroupsResponse::create(&mut builder, &ListGroupsResponseArgs { groups: Some(groups) });
        Response::Frame(envelope_frame(builder, request_id, Body::ListGroupsResponse, body.as_union_value(), 0))
    }))
}

// ---- DescribeGroups ----

pub(crate) fn describe_groups(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_describe_groups_request()) else {
        return invalid(request_id, "describe groups body missing");
    };
    let mut waits = Vec::new();
    for group_id in request.groups().iter().flatten() {
        let (reply, wait) = oneshot::channel();
        let routed = validate_group_id(group_id).is_ok()
            && route(shard, group_id, GroupOp::Describe { group_id: group_id.to_string(), reply });
        waits.push((group_id.to_string(), routed.then_some(wait)));
    }
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let mut described = Vec::new();
        for (group_id, wait) in waits {
            let view = match wait {
                None => Err(Outcome::err(ErrorCode::InvalidGroupId, "invalid group id")),
                Some(wait) => wait.await.unwrap_or_else(|_| Err(stopped())),
            };
            let ends = match &view {
                Ok(view) => high_watermarks(&shard, &partitions_of(view)).await,
                Err(_) => BTreeMap::new(),
            };
            described.push((group_id, view, ends));
        }
        let mut builder = FlatBufferBuilder::new();
        let groups: Vec<_> =
            described.iter().map(|(id, view, ends)| group_description(&mut builder, id, view, ends)).collect();
        let groups = builder.create_vector(&groups);
        let body = DescribeGroupsResponse::create(&mut builder, &DescribeGroupsResponseArgs { groups: Some(groups) });
        Response::Frame(envelope_frame(builder, request_id, Body::DescribeGroupsResponse, body.as_union_value(), 0))
    }))
}

/// Every partition the group has committed to or assigned.
fn partitions_of(view: &GroupView) -> BTreeSet<Tp> {
    let mut all: BTreeSet<Tp> = view.offsets.keys().cloned().collect();
    for member in &view.members {
        all.extend(member.assigned.iter().cloned());
        all.extend(member.target.iter().cloned());
    }
    all
}

/// Each partition's high watermark, from its owner; -1 where unknown.
async fn high_watermarks(shard: &Rc<Shard>, partitions: &BTreeSet<Tp>) -> BTreeMap<Tp, i64> {
    let catalog = shard.shared.catalog.load_full();
    let mut waits = Vec::new();
    for tp in partitions {
        let Some(topic) = catalog.topics.get(&tp.0).cloned() else { continue };
        let Ok(partition) = u32::try_from(tp.1) else { continue };
        if partition >= topic.partitions {
            continue;
        }
        let (reply, wait) = oneshot::channel();
        let owner = shard.shared.owner(&topic.name, partition);
        shard.submit(
            owner,
            ShardOp::ListOffset { topic, partition, timestamp: OFFSET_LATEST, read_committed: false, reply },
        );
        waits.push((tp.clone(), wait));
    }
    let mut ends = BTreeMap::new();
    for (tp, wait) in waits {
        let result =
            wait.await.unwrap_or(OffsetResult { error: ErrorCode::BrokerShuttingDown, offset: -1, timestamp: -1 });
        if result.error == ErrorCode::None {
            ends.insert(tp, result.offset);
        }
    }
    ends
}

fn group_description<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    group_id: &str,
    view: &Result<GroupView, Outcome>,
    ends: &BTreeMap<Tp, i64>,
) -> WIPOffset<GroupDescription<'a>> {
    let id = builder.create_string(group_id);
    let view = match view {
        Err(outcome) => {
            return GroupDescription::create(
                builder,
                &GroupDescriptionArgs { group_id: Some(id), error: outcome.error, ..Default::default() },
            );
        }
        Ok(view) => view,
    };
    let members: Vec<_> = view
        .members
        .iter()
        .map(|member| {
            let member_id = builder.create_string(&member.member_id);
            let client_id = builder.create_string(&member.client_id);
            let subscribed: Vec<_> = member.subscribed.iter().map(|t| builder.create_string(t)).collect();
            let subscribed = builder.create_vector(&subscribed);
            let assignment = create_tps(builder, &member.assigned);
            let target = create_tps(builder, &member.target);
            MemberDescription::create(
                builder,
                &MemberDescriptionArgs {
                    member_id: Some(member_id),
                    client_id: Some(client_id),
                    member_epoch: member.epoch,
                    subscribed_topics: Some(subscribed),
                    assignment: Some(assignment),
                    target: Some(target),
                },
            )
        })
        .collect();
    let members = builder.create_vector(&members);
    let offsets: Vec<_> = partitions_of(view)
        .into_iter()
        .map(|tp| {
            let committed = view.offsets.get(&tp).copied().unwrap_or(-1);
            let end = ends.get(&tp).copied().unwrap_or(-1);
            let lag = if committed >= 0 && end >= 0 { (end - committed).max(0) } else { -1 };
            let owner = view.members.iter().find(|m| m.assigned.contains(&tp)).map(|m| m.member_id.clone());
            let topic = builder.create_string(&tp.0);
            let member_id = owner.map(|id| builder.create_string(&id));
            GroupPartitionOffset::create(
                builder,
                &GroupPartitionOffsetArgs {
                    topic: Some(topic),
                    partition: tp.1,
                    committed_offset: committed,
                    log_end_offset: end,
                    lag,
                    member_id,
                },
            )
        })
        .collect();
    let offsets = builder.create_vector(&offsets);
    let state = builder.create_string(view.state);
    let assignor = builder.create_string(view.assignor);
    GroupDescription::create(
        builder,
        &GroupDescriptionArgs {
            group_id: Some(id),
            error: ErrorCode::None,
            state: Some(state),
            group_epoch: view.epoch,
            assignor: Some(assignor),
            members: Some(members),
            offsets: Some(offsets),
        },
    )
}

// ---- DeleteGroups ----

pub(crate) fn delete_groups(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_delete_groups_request()) else {
        return invalid(request_id, "delete groups body missing");
    };
    let mut waits = Vec::new();
    for group_id in request.groups().iter().flatten() {
        let (reply, wait) = oneshot::channel();
        let routed = validate_group_id(group_id).is_ok()
            && route(shard, group_id, GroupOp::Delete { group_id: group_id.to_string(), reply });
        waits.push((group_id.to_string(), routed.then_some(wait)));
    }
    Reply::Later(Box::pin(async move {
        let mut results = Vec::new();
        for (group_id, wait) in waits {
            let outcome = match wait {
                None => Outcome::err(ErrorCode::InvalidGroupId, "invalid group id"),
                Some(wait) => wait.await.unwrap_or_else(|_| stopped()),
            };
            results.push((group_id, outcome));
        }
        let mut builder = FlatBufferBuilder::new();
        let results: Vec<_> = results
            .iter()
            .map(|(group_id, outcome)| {
                let group_id = builder.create_string(group_id);
                let message = outcome.message.as_deref().map(|m| builder.create_string(m));
                GroupResult::create(
                    &mut builder,
                    &GroupResultArgs { group_id: Some(group_id), error: outcome.error, message },
                )
            })
            .collect();
        let results = builder.create_vector(&results);
        let body = DeleteGroupsResponse::create(&mut builder, &DeleteGroupsResponseArgs { results: Some(results) });
        Response::Frame(envelope_frame(builder, request_id, Body::DeleteGroupsResponse, body.as_union_value(), 0))
    }))
}
