//! Kafka's consumer group protocol (KIP-848): ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe, on the coordinator's server-side assignment —
//! the same state machine native consumers use (`group/state.rs`).
//!
//! Kafka's heartbeat sends a field only when it changed (null: as last
//! sent), so the connection remembers what each member sent last
//! (`Remembered`). Topics are named by id on this API.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member, TopicPartitions as DescribedTopicPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, GroupId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::group_code;
use super::{Ctx, decode, respond};
use crate::catalog::{Catalog, kafka_topic_id};
use crate::group::{Assignor, GroupOp, HeartbeatIn, Tp, heartbeat_interval, route};
use crate::limits::{GROUPS_PER_REQUEST_MAX, NAME_BYTES_MAX};
use crate::shard::Outcome;
use crate::wire::Reply;

/// Members one connection remembers (a client runs one consumer per
/// connection to its coordinator, rarely a few).
const REMEMBERED_MEMBERS_MAX: usize = 64;

/// What a member last sent of the fields Kafka sends only on change.
#[derive(Debug, Clone, Default)]
struct Sent {
    subscribed: BTreeSet<String>,
    owned: BTreeSet<Tp>,
    assignor: Option<Assignor>,
}

/// Per connection: (group, member id) to what that member last sent.
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    members: RefCell<HashMap<(String, String), Sent>>,
}

fn tps_from_ids(
    catalog: &Catalog,
    topics: &[kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions],
) -> BTreeSet<Tp> {
    let mut out = BTreeSet::new();
    for topic in topics {
        if let Some(name) = catalog.by_kafka_id.get(&topic.topic_id.as_u128()) {
            for p in &topic.partitions {
                out.insert((name.clone(), *p));
            }
        }
    }
    out
}

fn by_topic(tps: &BTreeSet<Tp>) -> BTreeMap<&str, Vec<i32>> {
    let mut out: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in tps {
        out.entry(topic.as_str()).or_default().push(*partition);
    }
    out
}

fn topic_uuid(catalog: &Catalog, name: &str) -> uuid::Uuid {
    catalog.topics.get(name).map_or(uuid::Uuid::nil(), |t| uuid::Uuid::from_u128(kafka_topic_id(&t.topic_id)))
}

pub(crate) fn heartbeat(ctx: Ctx, body: Bytes, remembered: Rc<Remembered>) -> Reply {
    let request: ConsumerGroupHeartbeatRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let group_id = request.group_id.0.to_string();
    let error = |code: i16, message: &str| {
        Reply::Now(respond(
            &ctx,
            &ConsumerGroupHeartbeatResponse::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message.to_string())))
                .with_member_epoch(-1),
        ))
    };
    if group_id.is_empty() || group_id.len() > NAME_BYTES_MAX {
        return error(K::InvalidGroupId.code(), "group ids are 1 to 249 bytes");
    }
    if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &group_id) {
        return error(K::GroupAuthorizationFailed.code(), "Read on the group is not allowed");
    }
    // Kafka 4: every topic subscribed to needs Describe.
    let subscribed = request.subscribed_topic_names.iter().flatten();
    if let Some(topic) =
        subscribed.into_iter().find(|t| !ctx.allowed(AclOperation::Describe, AclResourceType::Topic, &t.0))
    {
        return error(
            K::TopicAuthorizationFailed.code(),
            &format!("Describe on topic {:?} is not allowed", topic.0.as_str()),
        );
    }
    if request.subscribed_topic_regex.is_some() {
        return error(K::InvalidRequest.code(), "subscriptions by regular expression are not supported yet");
    }
    let assignor = match request.server_assignor.as_ref().map(|a| a.as_str()) {
        None | Some("") => None,
        Some(name) => match Assignor::parse(name) {
            Some(assignor) => Some(assignor),
            None => return error(K::UnsupportedAssignor.code(), "server assignors: uniform, range"),
        },
    };
    let catalog = ctx.shard.shared.catalog.load_full();
    let member_id = request.member_id.to_string();
    // Fields left null keep what the member sent last (Kafka's rule).
    let key = (group_id.clone(), member_id.clone());
    let mut sent = if request.member_epoch == 0 {
        Sent::default()
    } else {
        remembered.members.borrow().get(&key).cloned().unwrap_or_default()
    };
    if let Some(topics) = &request.subscribed_topic_names {
        sent.subscribed = topics.iter().map(|t| t.0.to_string()).collect();
    }
    if let Some(owned) = &request.topic_partitions {
        sent.owned = tps_from_ids(&catalog, owned);
    }
    if assignor.is_some() {
        sent.assignor = assignor;
    }
    let config = &ctx.shard.shared.config;
    let session_timeout = Duration::from_millis(
        config
            .group_consumer_session_timeout_ms
            .clamp(config.group_session_timeout_ms_min, config.group_session_timeout_ms_max),
    );
    // v1 (KIP-1082): the client chose its member id and joins with it.
    let client_member_id =
        (ctx.version >= 1 && request.member_epoch == 0 && !member_id.is_empty()).then(|| member_id.clone());
    let parsed = HeartbeatIn {
        member_id: if client_member_id.is_some() { String::new() } else { member_id.clone() },
        member_epoch: request.member_epoch,
        subscribed: sent.subscribed.clone(),
        assignor: sent.assignor,
        session_timeout,
        owned: sent.owned.clone(),
        client_id: ctx.client_id.clone(),
        client_member_id,
    };
    // -2: a static member leaving (it may come back); served as a leave.
    let parsed = if parsed.member_epoch == -2 { HeartbeatIn { member_epoch: -1, ..parsed } } else { parsed };
    let (reply, wait) = oneshot::channel();
    if !route(&ctx.shard, &group_id, GroupOp::Heartbeat { group_id: group_id.clone(), request: parsed, reply }) {
        return error(K::CoordinatorNotAvailable.code(), "no group coordinator yet");
    }
    let interval_ms = heartbeat_interval(session_timeout).as_millis() as i32;
    Reply::Later(Box::pin(async move {
        let result = wait
            .await
            .unwrap_or_else(|_| Err(Outcome::err(ErrorCode::BrokerShuttingDown, "the coordinator's shard stopped")));
        let response = match result {
            Err(outcome) => {
                remembered.members.borrow_mut().remove(&key);
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(group_code(outcome.error))
                    .with_error_message(outcome.message.map(StrBytes::from_string))
                    .with_member_epoch(-1)
            }
            Ok(out) => {
                let mut members = remembered.members.borrow_mut();
                members.remove(&key);
                if out.member_epoch >= 0 {
                    if members.len() >= REMEMBERED_MEMBERS_MAX {
                        members.clear();
                    }
                    members.insert((group_id, out.member_id.clone()), sent);
                }
                let catalog = ctx.shard.shared.catalog.load_full();
                let topic_partitions = by_topic(&out.assignment)
                    .into_iter()
                    .map(|(topic, partitions)| {
                        TopicPartitions::default()
                            .with_topic_id(topic_uuid(&catalog, topic))
                            .with_partitions(partitions)
                    })
                    .collect();
                ConsumerGroupHeartbeatResponse::default()
                    .with_member_id(Some(StrBytes::from_string(out.member_id)))
                    .with_member_epoch(out.member_epoch)
                    .with_heartbeat_interval_ms(interval_ms)
                    .with_assignment(
                        (out.member_epoch >= 0).then(|| Assignment::default().with_topic_partitions(topic_partitions)),
                    )
            }
        };
        respond(&ctx, &response)
    }))
}

fn described_assignment(catalog: &Catalog, tps: &BTreeSet<Tp>) -> DescribedAssignment {
    DescribedAssignment::default().with_topic_partitions(
        by_topic(tps)
            .into_iter()
            .map(|(topic, partitions)| {
                DescribedTopicPartitions::default()
                    .with_topic_id(topic_uuid(catalog, topic))
                    .with_topic_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

pub(crate) fn describe(ctx: Ctx, body: Bytes) -> Reply {
    let request: ConsumerGroupDescribeRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let waits: Vec<_> = request
        .group_ids
        .iter()
        .take(GROUPS_PER_REQUEST_MAX)
        .map(|g| {
            let group_id = g.0.to_string();
            // A group the principal may not Describe is never asked for.
            if !ctx.allowed(AclOperation::Describe, AclResourceType::Group, &group_id) {
                return (group_id, None);
            }
            let (reply, wait) = oneshot::channel();
            let routed = route(&ctx.shard, &group_id, GroupOp::Describe { group_id: group_id.clone(), reply });
            (group_id, Some((routed, wait)))
        })
        .collect();
    Reply::Later(Box::pin(async move {
        let catalog = ctx.shard.shared.catalog.load_full();
        let mut groups = Vec::with_capacity(waits.len());
        for (group_id, asked) in waits {
            let entry = DescribedGroup::default().with_group_id(GroupId(StrBytes::from_string(group_id)));
            let Some((routed, wait)) = asked else {
                groups.push(entry.with_error_code(K::GroupAuthorizationFailed.code()));
                continue;
            };
            let result = if routed {
                wait.await.unwrap_or_else(|_| Err(Outcome::err(ErrorCode::BrokerShuttingDown, "stopped")))
            } else {
                Err(Outcome::err(ErrorCode::NotReady, "no coordinator"))
            };
            groups.push(match result {
                Ok(view) if view.classic => entry
                    .with_error_code(K::GroupIdNotFound.code())
                    .with_error_message(Some(StrBytes::from_static_str("a classic group, not a consumer group"))),
                Ok(view) => entry
                    .with_group_state(StrBytes::from_static_str(super::groups::kafka_state(view.state)))
                    .with_group_epoch(view.epoch)
                    .with_assignment_epoch(view.epoch)
                    .with_assignor_name(StrBytes::from_static_str(view.assignor))
                    .with_members(
                        view.members
                            .into_iter()
                            .map(|m| {
                                Member::default()
                                    .with_member_id(StrBytes::from_string(m.member_id))
                                    .with_member_epoch(m.epoch)
                                    .with_client_id(StrBytes::from_string(m.client_id))
                                    .with_client_host(StrBytes::from_static_str(""))
                                    .with_subscribed_topic_names(
                                        m.subscribed.into_iter().map(|t| TopicName(StrBytes::from_string(t))).collect(),
                                    )
                                    .with_assignment(described_assignment(&catalog, &m.assigned))
                                    .with_target_assignment(described_assignment(&catalog, &m.target))
                            })
                            .collect(),
                    ),
                Err(outcome) => entry.with_error_code(group_code(outcome.error)),
            });
        }
        respond(&ctx, &ConsumerGroupDescribeResponse::default().with_groups(groups))
    }))
}
