//! Consumer group APIs over raw frames, on an in-process broker: the
//! internal topic is the broker's, commits are fenced, and committed
//! offsets survive a restart. The client and CLI tests (cli/tests) cover
//! membership and assignment end to end.

mod common;

use common::*;
use spate_flatbuf::proto::*;

fn commit(conn: &mut Conn, group: &str, member: &str, epoch: i32, topic: &str, offset: i64) -> ErrorCode {
    let frame = conn.call(Body::OffsetCommitRequest, |b| {
        let (group, member, name) = (b.create_string(group), b.create_string(member), b.create_string(topic));
        let part = OffsetCommitPartition::create(b, &OffsetCommitPartitionArgs { partition: 0, offset });
        let partitions = b.create_vector(&[part]);
        let topic =
            OffsetCommitTopic::create(b, &OffsetCommitTopicArgs { name: Some(name), partitions: Some(partitions) });
        let topics = b.create_vector(&[topic]);
        OffsetCommitRequest::create(
            b,
            &OffsetCommitRequestArgs {
                group_id: Some(group),
                member_id: Some(member),
                member_epoch: epoch,
                topics: Some(topics),
            },
        )
        .as_union_value()
    });
    frame.read().expect("verified").body_as_offset_commit_response().expect("commit response").error()
}

fn committed(conn: &mut Conn, group: &str, topic: &str) -> i64 {
    let frame = conn.call(Body::OffsetFetchRequest, |b| {
        let group = b.create_string(group);
        OffsetFetchRequest::create(b, &OffsetFetchRequestArgs { group_id: Some(group), topics: None }).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_offset_fetch_response().expect("fetch response");
    let found = response.topics().into_iter().flatten().find(|t| t.name() == Some(topic));
    found.and_then(|t| t.partitions().and_then(|p| p.iter().next().map(|p| p.offset()))).unwrap_or(-1)
}

/// Joins (epoch 0) and returns (member id, epoch).
fn join(conn: &mut Conn, group: &str, topic: &str) -> (String, i32) {
    let frame = conn.call(Body::ConsumerGroupHeartbeatRequest, |b| {
        let (group, topic) = (b.create_string(group), b.create_string(topic));
        let topics = b.create_vector(&[topic]);
        ConsumerGroupHeartbeatRequest::create(
            b,
            &ConsumerGroupHeartbeatRequestArgs {
                group_id: Some(group),
                member_epoch: 0,
                subscribed_topics: Some(topics),
                session_timeout_ms: 60_000,
                ..Default::default()
            },
        )
        .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_consumer_group_heartbeat_response().expect("heartbeat response");
    assert_eq!(response.error(), ErrorCode::None);
    (response.member_id().expect("member id").to_string(), response.member_epoch())
}

#[test]
fn users_may_not_produce_to_create_or_delete_the_internal_topic() {
    let dir = data_dir("groups_internal");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.produce("__consumer_offsets", 0, &batch(1), -1).0, ErrorCode::InternalTopic);
    assert_eq!(conn.create_topic("__mine", 1, &[]), ErrorCode::InternalTopic);
    let frame = conn.call(Body::DeleteTopicsRequest, |b| {
        let name = b.create_string("__consumer_offsets");
        let names = b.create_vector(&[name]);
        DeleteTopicsRequest::create(b, &DeleteTopicsRequestArgs { names: Some(names), timeout_ms: 10_000 })
            .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let result = envelope.body_as_delete_topics_response().expect("delete").results().expect("results").get(0);
    assert_eq!(result.error(), ErrorCode::InternalTopic);
    stop(broker);
}

#[test]
fn commits_are_fenced_by_member_and_epoch_and_survive_a_restart() {
    let dir = data_dir("groups_commits");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("t", 1, &[]), ErrorCode::None);
    // No members: an administrative commit (reset-offsets) is allowed.
    assert_eq!(commit(&mut conn, "g", "", -1, "t", 3), ErrorCode::None);
    assert_eq!(commit(&mut conn, "g", "", -1, "nope", 3), ErrorCode::UnknownTopicOrPartition);
    let (member, epoch) = join(&mut conn, "g", "t");
    assert_eq!(commit(&mut conn, "g", "", -1, "t", 0), ErrorCode::NonEmptyGroup);
    assert_eq!(commit(&mut conn, "g", "someone-else", epoch, "t", 0), ErrorCode::UnknownMemberId);
    assert_eq!(commit(&mut conn, "g", &member, epoch + 7, "t", 0), ErrorCode::FencedMemberEpoch);
    assert_eq!(committed(&mut conn, "g", "t"), 3, "refused commits change nothing");
    assert_eq!(commit(&mut conn, "g", &member, epoch, "t", 5), ErrorCode::None);
    assert_eq!(committed(&mut conn, "g", "t"), 5);
    stop(broker);
    let broker = start(&dir, 3);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(committed(&mut conn, "g", "t"), 5, "replayed at start, whatever the shard count");
    assert_eq!(commit(&mut conn, "g", &member, epoch, "t", 9), ErrorCode::UnknownMemberId, "members are soft state");
    stop(broker);
}

#[test]
fn heartbeats_for_groups_nobody_joined_create_nothing() {
    let dir = data_dir("groups_unjoined");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    for i in 0..50 {
        let frame = conn.call(Body::ConsumerGroupHeartbeatRequest, |b| {
            let (group, member) = (b.create_string(&format!("ghost-{i}")), b.create_string("nobody"));
            ConsumerGroupHeartbeatRequest::create(
                b,
                &ConsumerGroupHeartbeatRequestArgs {
                    group_id: Some(group),
                    member_id: Some(member),
                    member_epoch: 3,
                    session_timeout_ms: 60_000,
                    ..Default::default()
                },
            )
            .as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_consumer_group_heartbeat_response().expect("heartbeat response");
        assert_eq!(response.error(), ErrorCode::UnknownMemberId);
    }
    let frame = conn.call(Body::ListGroupsRequest, |b| {
        ListGroupsRequest::create(b, &ListGroupsRequestArgs::default()).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let listed = envelope.body_as_list_groups_response().expect("list response");
    assert_eq!(listed.groups().map_or(0, |g| g.len()), 0, "no group exists until someone joins");
    stop(broker);
}

/// Joins with a session timeout of `session_timeout_ms`; returns the member
/// id.
fn join_for(conn: &mut Conn, group: &str, topic: &str, session_timeout_ms: i32) -> String {
    let frame = conn.call(Body::ConsumerGroupHeartbeatRequest, |b| {
        let (group, topic) = (b.create_string(group), b.create_string(topic));
        let topics = b.create_vector(&[topic]);
        ConsumerGroupHeartbeatRequest::create(
            b,
            &ConsumerGroupHeartbeatRequestArgs {
                group_id: Some(group),
                member_epoch: 0,
                subscribed_topics: Some(topics),
                session_timeout_ms,
                ..Default::default()
            },
        )
        .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_consumer_group_heartbeat_response().expect("heartbeat response");
    assert_eq!(response.error(), ErrorCode::None);
    response.member_id().expect("member id").to_string()
}

fn leave(conn: &mut Conn, group: &str, member: &str) {
    let frame = conn.call(Body::ConsumerGroupHeartbeatRequest, |b| {
        let (group, member) = (b.create_string(group), b.create_string(member));
        ConsumerGroupHeartbeatRequest::create(
            b,
            &ConsumerGroupHeartbeatRequestArgs {
                group_id: Some(group),
                member_id: Some(member),
                member_epoch: -1,
                session_timeout_ms: 60_000,
                ..Default::default()
            },
        )
        .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_consumer_group_heartbeat_response().expect("heartbeat response");
    assert_eq!(response.error(), ErrorCode::None);
}

/// Members are soft state: a coordinator that takes a group over (here a
/// restart; a failover alike) knows none until they rejoin. Before, a
/// commit from outside the group (no member id, epoch -1) was accepted in
/// that window, while the live members were about to rejoin and go on from
/// their own positions: this test failed at its first commit. Now the
/// group's record says how many members it had and their longest session
/// timeout, and outsiders are refused until that has passed; a group whose
/// members had left takes them at once (reset-offsets keeps working).
#[test]
fn commits_from_outside_are_refused_after_a_coordinator_move_while_the_members_may_rejoin() {
    let dir = data_dir("groups_outside_after_move");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("t", 1, &[]), ErrorCode::None);
    join_for(&mut conn, "live", "t", 60_000);
    // A member with a short session, never heard from again.
    join_for(&mut conn, "brief", "t", 500);
    let gone = join_for(&mut conn, "left", "t", 60_000);
    leave(&mut conn, "left", &gone);
    stop(broker);

    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(commit(&mut conn, "live", "", -1, "t", 7), ErrorCode::NonEmptyGroup, "its members may rejoin");
    assert_eq!(committed(&mut conn, "live", "t"), -1, "the refused commit changed nothing");
    assert_eq!(commit(&mut conn, "left", "", -1, "t", 7), ErrorCode::None, "an empty group takes it");
    assert_eq!(committed(&mut conn, "left", "t"), 7);
    // Once the members' session has passed without them, the group is
    // empty: the outside commit goes through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while commit(&mut conn, "brief", "", -1, "t", 8) != ErrorCode::None {
        assert!(std::time::Instant::now() < deadline, "the group stayed closed past its members' session");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(committed(&mut conn, "brief", "t"), 8);
    stop(broker);
}
