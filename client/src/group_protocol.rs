//! The consumer group APIs' requests and responses (schema: "Consumer
//! groups" in flatbuf/schema/spate.fbs), with no I/O, and how a client
//! finds a group's coordinator: the owner of the group's partition of
//! `__consumer_offsets`, computed from metadata as the broker computes it.

use std::collections::{BTreeMap, BTreeSet};

use spate_flatbuf::flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};
use spate_flatbuf::proto::{self, Body, ErrorCode};
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, Frame, TRANSACTION_STATE_TOPIC, group_partition};

use crate::client::Client;
use crate::error::ClientError;
use crate::metadata::{TopicPartition, error_of};
use crate::protocol::{OutFrame, Stamp, body, envelope, finish, strings};

type TpsVector<'a> = Vector<'a, ForwardsUOffset<proto::TopicPartitions<'a>>>;

/// Partitions grouped by topic, as the group and transaction APIs carry them.
pub(crate) fn create_tps<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    set: &BTreeSet<TopicPartition>,
) -> WIPOffset<TpsVector<'a>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in set {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let entries: Vec<_> = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            let topic = builder.create_string(topic);
            let partitions = builder.create_vector(&partitions);
            proto::TopicPartitions::create(
                builder,
                &proto::TopicPartitionsArgs { topic: Some(topic), partitions: Some(partitions) },
            )
        })
        .collect();
    builder.create_vector(&entries)
}

fn read_tps(vector: Option<TpsVector<'_>>) -> BTreeSet<TopicPartition> {
    let mut out = BTreeSet::new();
    for entry in vector.iter().flatten() {
        let topic = entry.topic().unwrap_or_default();
        for partition in entry.partitions().iter().flatten() {
            out.insert(TopicPartition::new(topic, partition));
        }
    }
    out
}

/// Offsets to commit, as OffsetCommit and TxnOffsetCommit carry them.
pub(crate) fn create_offsets<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> WIPOffset<Vector<'a, ForwardsUOffset<proto::OffsetCommitTopic<'a>>>> {
    let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for (tp, offset) in offsets {
        by_topic.entry(&tp.topic).or_default().push((tp.partition, *offset));
    }
    let topics: Vec<_> = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            let partitions: Vec<_> = partitions
                .into_iter()
                .map(|(partition, offset)| {
                    proto::OffsetCommitPartition::create(
                        builder,
                        &proto::OffsetCommitPartitionArgs { partition, offset },
                    )
                })
                .collect();
            let partitions = builder.create_vector(&partitions);
            let name = builder.create_string(name);
            proto::OffsetCommitTopic::create(
                builder,
                &proto::OffsetCommitTopicArgs { name: Some(name), partitions: Some(partitions) },
            )
        })
        .collect();
    builder.create_vector(&topics)
}

/// A coordinator's internal topic and the key it is chosen by: groups by
/// their partition of `__consumer_offsets`, transactional ids by theirs of
/// `__transaction_state` (the same hash, as in Kafka).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Coordinator<'a> {
    Group(&'a str),
    Transaction(&'a str),
}

impl Coordinator<'_> {
    fn topic_and_key(&self) -> (&'static str, &str) {
        match self {
            Coordinator::Group(group_id) => (CONSUMER_OFFSETS_TOPIC, group_id),
            Coordinator::Transaction(txn_id) => (TRANSACTION_STATE_TOPIC, txn_id),
        }
    }
}

/// The address of the shard that is `coordinator`: the leader of the key's
/// partition of the coordinator's internal topic.
pub(crate) async fn coordinator_address_of(
    client: &Client,
    coordinator: Coordinator<'_>,
) -> Result<String, ClientError> {
    let (topic, key) = coordinator.topic_and_key();
    let count = client.partition_count(topic).await?;
    let count = u32::try_from(count)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| ClientError::Protocol(format!("{topic} reports {count} partitions")))?;
    let partition = group_partition(key, count) as i32;
    client.partition_address(&TopicPartition::new(topic, partition)).await
}

/// A heartbeat as the member sends it.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatRequest<'a> {
    pub group_id: &'a str,
    pub member_id: &'a str,
    pub member_epoch: i32,
    pub topics: &'a [String],
    pub assignor: &'a str,
    pub session_timeout_ms: i32,
    pub owned: &'a BTreeSet<TopicPartition>,
    pub client_id: &'a str,
}

pub(crate) fn heartbeat(stamp: Stamp, request: &HeartbeatRequest<'_>) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let group_id = builder.create_string(request.group_id);
    let member_id = builder.create_string(request.member_id);
    let topics = strings(&mut builder, request.topics);
    let assignor = builder.create_string(request.assignor);
    let owned = create_tps(&mut builder, request.owned);
    let client_id = builder.create_string(request.client_id);
    let body = proto::ConsumerGroupHeartbeatRequest::create(
        &mut builder,
        &proto::ConsumerGroupHeartbeatRequestArgs {
            group_id: Some(group_id),
            member_id: Some(member_id),
            member_epoch: request.member_epoch,
            subscribed_topics: Some(topics),
            assignor: Some(assignor),
            session_timeout_ms: request.session_timeout_ms,
            owned_partitions: Some(owned),
            client_id: Some(client_id),
        },
    );
    finish(builder, stamp, Body::ConsumerGroupHeartbeatRequest, body.as_union_value())
}

/// What the coordinator told a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAssignment {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The partitions the member may own now.
    pub assignment: BTreeSet<TopicPartition>,
}

pub(crate) fn decode_heartbeat(frame: &Frame) -> Result<MemberAssignment, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(
        &envelope,
        Body::ConsumerGroupHeartbeatResponse,
        proto::Envelope::body_as_consumer_group_heartbeat_response,
    )?;
    if response.error() != ErrorCode::None {
        return Err(ClientError::server(response.error(), response.message()));
    }
    Ok(MemberAssignment {
        member_id: response.member_id().unwrap_or_default().to_string(),
        member_epoch: response.member_epoch(),
        heartbeat_interval_ms: response.heartbeat_interval_ms(),
        assignment: read_tps(response.assignment()),
    })
}

pub(crate) fn offset_commit(
    stamp: Stamp,
    group_id: &str,
    member_id: &str,
    member_epoch: i32,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let topics = create_offsets(&mut builder, offsets);
    let group_id = builder.create_string(group_id);
    let member_id = builder.create_string(member_id);
    let body = proto::OffsetCommitRequest::create(
        &mut builder,
        &proto::OffsetCommitRequestArgs {
            group_id: Some(group_id),
            member_id: Some(member_id),
            member_epoch,
            topics: Some(topics),
        },
    );
    finish(builder, stamp, Body::OffsetCommitRequest, body.as_union_value())
}

pub(crate) fn decode_offset_commit(frame: &Frame) -> Result<(), ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::OffsetCommitResponse, proto::Envelope::body_as_offset_commit_response)?;
    match response.error() {
        ErrorCode::None => Ok(()),
        code => Err(ClientError::server(code, response.message())),
    }
}

pub(crate) fn offset_fetch(stamp: Stamp, group_id: &str, partitions: Option<&BTreeSet<TopicPartition>>) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let topics = partitions.map(|set| create_tps(&mut builder, set));
    let group_id = builder.create_string(group_id);
    let body = proto::OffsetFetchRequest::create(
        &mut builder,
        &proto::OffsetFetchRequestArgs { group_id: Some(group_id), topics },
    );
    finish(builder, stamp, Body::OffsetFetchRequest, body.as_union_value())
}

/// Committed offsets; partitions with none are left out.
pub(crate) fn decode_offset_fetch(frame: &Frame) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::OffsetFetchResponse, proto::Envelope::body_as_offset_fetch_response)?;
    if response.error() != ErrorCode::None {
        return Err(ClientError::server(response.error(), None));
    }
    let mut out = BTreeMap::new();
    for topic in response.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default();
        for part in topic.partitions().iter().flatten() {
            if part.offset() >= 0 {
                out.insert(TopicPartition::new(name, part.partition()), part.offset());
            }
        }
    }
    Ok(out)
}

pub(crate) fn list_groups(stamp: Stamp) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let body = proto::ListGroupsRequest::create(&mut builder, &proto::ListGroupsRequestArgs {});
    finish(builder, stamp, Body::ListGroupsRequest, body.as_union_value())
}

/// A group as ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// Empty, Reconciling or Stable.
    pub state: String,
    pub members: i32,
}

pub(crate) fn decode_list_groups(frame: &Frame) -> Result<Vec<GroupListing>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::ListGroupsResponse, proto::Envelope::body_as_list_groups_response)?;
    Ok(response
        .groups()
        .iter()
        .flatten()
        .map(|g| GroupListing {
            group_id: g.group_id().unwrap_or_default().to_string(),
            state: g.state().unwrap_or_default().to_string(),
            members: g.members(),
        })
        .collect())
}

pub(crate) fn describe_groups(stamp: Stamp, groups: &[String]) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let groups = strings(&mut builder, groups);
    let body =
        proto::DescribeGroupsRequest::create(&mut builder, &proto::DescribeGroupsRequestArgs { groups: Some(groups) });
    finish(builder, stamp, Body::DescribeGroupsRequest, body.as_union_value())
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub member_epoch: i32,
    pub subscribed_topics: Vec<String>,
    /// What the member may own now.
    pub assignment: BTreeSet<TopicPartition>,
    /// Where it is headed at the group epoch.
    pub target: BTreeSet<TopicPartition>,
}

/// One partition's committed offset, end and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionOffset {
    pub tp: TopicPartition,
    pub committed_offset: Option<i64>,
    /// The high watermark.
    pub log_end_offset: Option<i64>,
    pub lag: Option<i64>,
    /// The member assigned the partition, if any.
    pub member_id: Option<String>,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub error: Option<ErrorCode>,
    pub state: String,
    pub group_epoch: i32,
    pub assignor: String,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<GroupPartitionOffset>,
}

fn known(value: i64) -> Option<i64> {
    (value >= 0).then_some(value)
}

pub(crate) fn decode_describe_groups(frame: &Frame) -> Result<Vec<GroupDescription>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::DescribeGroupsResponse, proto::Envelope::body_as_describe_groups_response)?;
    Ok(response
        .groups()
        .iter()
        .flatten()
        .map(|g| GroupDescription {
            group_id: g.group_id().unwrap_or_default().to_string(),
            error: error_of(g.error()),
            state: g.state().unwrap_or_default().to_string(),
            group_epoch: g.group_epoch(),
            assignor: g.assignor().unwrap_or_default().to_string(),
            members: g
                .members()
                .iter()
                .flatten()
                .map(|m| GroupMember {
                    member_id: m.member_id().unwrap_or_default().to_string(),
                    client_id: m.client_id().unwrap_or_default().to_string(),
                    member_epoch: m.member_epoch(),
                    subscribed_topics: m.subscribed_topics().iter().flatten().map(str::to_string).collect(),
                    assignment: read_tps(m.assignment()),
                    target: read_tps(m.target()),
                })
                .collect(),
            offsets: g
                .offsets()
                .iter()
                .flatten()
                .map(|o| GroupPartitionOffset {
                    tp: TopicPartition::new(o.topic().unwrap_or_default(), o.partition()),
                    committed_offset: known(o.committed_offset()),
                    log_end_offset: known(o.log_end_offset()),
                    lag: known(o.lag()),
                    member_id: o.member_id().map(str::to_string),
                })
                .collect(),
        })
        .collect())
}

pub(crate) fn delete_groups(stamp: Stamp, groups: &[String]) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let groups = strings(&mut builder, groups);
    let body =
        proto::DeleteGroupsRequest::create(&mut builder, &proto::DeleteGroupsRequestArgs { groups: Some(groups) });
    finish(builder, stamp, Body::DeleteGroupsRequest, body.as_union_value())
}

/// A group's id, error and message.
pub(crate) type GroupOutcome = (String, Option<ErrorCode>, Option<String>);

/// Each group's outcome.
pub(crate) fn decode_delete_groups(frame: &Frame) -> Result<Vec<GroupOutcome>, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::DeleteGroupsResponse, proto::Envelope::body_as_delete_groups_response)?;
    Ok(response
        .results()
        .iter()
        .flatten()
        .map(|r| (r.group_id().unwrap_or_default().to_string(), error_of(r.error()), r.message().map(str::to_string)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Stamp;

    fn frame_of(out: &OutFrame) -> Frame {
        let mut bytes = bytes::BytesMut::new();
        bytes.extend_from_slice(&out.header);
        bytes.extend_from_slice(&out.envelope);
        spate_flatbuf::FrameDecoder::new(1 << 20).decode(&mut bytes).expect("valid").expect("whole")
    }

    #[test]
    fn heartbeats_carry_owned_partitions_grouped_by_topic() {
        let owned =
            BTreeSet::from([TopicPartition::new("a", 1), TopicPartition::new("a", 0), TopicPartition::new("b", 2)]);
        let request = HeartbeatRequest {
            group_id: "g",
            member_id: "m",
            member_epoch: 3,
            topics: &["a".to_string(), "b".to_string()],
            assignor: "sticky",
            session_timeout_ms: 1000,
            owned: &owned,
            client_id: "c",
        };
        let frame = frame_of(&heartbeat(Stamp { request_id: 1, version: 1 }, &request));
        let envelope = frame.read().expect("verified");
        let parsed = envelope.body_as_consumer_group_heartbeat_request().expect("heartbeat");
        assert_eq!(read_tps(parsed.owned_partitions()), owned);
        assert_eq!((parsed.group_id(), parsed.member_epoch(), parsed.session_timeout_ms()), (Some("g"), 3, 1000));
    }
}
