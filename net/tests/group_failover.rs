//! Consumer group coordinators in a three-broker cluster in this process
//! (issue 6): `__consumer_offsets` gets three replicas and min.insync.replicas
//! 2; only the leader of a group's partition coordinates it (followers
//! answer NotLeaderOrFollower); and when that leader stops, the replica the
//! controller elects next loads the partition's groups from its log and
//! serves the committed offsets, and takes new commits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use spate_flatbuf::proto::*;
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, group_partition};
use spate_net::BrokerHandle;

const OFFSETS_PARTITIONS: u32 = 4;

/// Three brokers, each a controller voter, started at once (each waits for
/// a quorum to register it).
fn start_cluster(name: &str) -> Vec<Option<BrokerHandle>> {
    let quorum: Vec<String> = (1..=3).map(|node| format!("{node}@127.0.0.1:{}", free_port())).collect();
    let quorum = quorum.join(",");
    let starting: Vec<_> = (1..=3)
        .map(|node| {
            let mut config = config(&data_dir(&format!("{name}-{node}")), 1);
            config.node_id = node;
            config.controller_quorum = quorum.clone();
            config.broker_session_timeout_ms = 1500;
            config.broker_heartbeat_interval_ms = 150;
            config.replica_lag_time_max_ms = 1500;
            config.group_offsets_partitions = OFFSETS_PARTITIONS;
            std::thread::spawn(move || spate_net::start(config).expect("broker starts"))
        })
        .collect();
    starting.into_iter().map(|t| Some(t.join().expect("started"))).collect()
}

/// (leader, replicas, isr) of each partition of `topic`, as `conn`'s
/// broker sees it; empty if it has no such topic.
fn partitions(conn: &mut Conn, topic: &str) -> Vec<(i32, Vec<i32>, Vec<i32>)> {
    let frame = conn.call(Body::MetadataRequest, |b| {
        let name = b.create_string(topic);
        let topics = b.create_vector(&[name]);
        MetadataRequest::create(b, &MetadataRequestArgs { topics: Some(topics) }).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_metadata_response().expect("metadata response");
    let Some(found) = response.topics().into_iter().flatten().find(|t| t.name() == Some(topic)) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, i32, Vec<i32>, Vec<i32>)> = found
        .partitions()
        .into_iter()
        .flatten()
        .map(|p| {
            let replicas = p.replicas().map(|r| r.iter().collect()).unwrap_or_default();
            let isr = p.isr().map(|r| r.iter().collect()).unwrap_or_default();
            (p.partition(), p.leader(), replicas, isr)
        })
        .collect();
    out.sort_by_key(|p| p.0);
    out.into_iter().map(|(_, leader, replicas, isr)| (leader, replicas, isr)).collect()
}

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

/// (error, committed offset of `topic`/0 or -1).
fn committed(conn: &mut Conn, group: &str, topic: &str) -> (ErrorCode, i64) {
    let frame = conn.call(Body::OffsetFetchRequest, |b| {
        let group = b.create_string(group);
        OffsetFetchRequest::create(b, &OffsetFetchRequestArgs { group_id: Some(group), topics: None }).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_offset_fetch_response().expect("fetch response");
    let found = response.topics().into_iter().flatten().find(|t| t.name() == Some(topic));
    let offset = found.and_then(|t| t.partitions().and_then(|p| p.iter().next().map(|p| p.offset()))).unwrap_or(-1);
    (response.error(), offset)
}

fn join(conn: &mut Conn, group: &str, topic: &str) -> (ErrorCode, String, i32) {
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
    (response.error(), response.member_id().unwrap_or_default().to_string(), response.member_epoch())
}

/// Retries `attempt` while it answers NotReady (a coordinator loading its
/// partition) or the group's partition is between leaders.
fn until_served<T>(mut attempt: impl FnMut() -> (ErrorCode, T)) -> (ErrorCode, T) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (error, value) = attempt();
        let passing = matches!(error, ErrorCode::NotReady | ErrorCode::LeaderNotAvailable | ErrorCode::RequestTimedOut);
        if !passing || Instant::now() > deadline {
            return (error, value);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn committed_offsets_survive_the_coordinators_failover_to_another_replica() {
    let mut brokers = start_cluster("group-failover");
    let ports: Vec<u16> = brokers.iter().map(|b| b.as_ref().expect("running").addr().port()).collect();
    let mut conn = Conn::connect(ports[0]);
    // The offsets topic: three replicas per partition, each with a leader
    // and a full ISR, and min.insync.replicas 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = partitions(&mut conn, CONSUMER_OFFSETS_TOPIC);
        let ready = offsets.len() == OFFSETS_PARTITIONS as usize
            && offsets.iter().all(|(leader, replicas, isr)| *leader > 0 && replicas.len() == 3 && isr.len() == 3);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "{CONSUMER_OFFSETS_TOPIC} not fully replicated: {offsets:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(conn.create_topic("t", 1, &[]), ErrorCode::None);

    let group = "failover";
    let partition = group_partition(group, OFFSETS_PARTITIONS) as usize;
    let (leader, replicas, _) = partitions(&mut conn, CONSUMER_OFFSETS_TOPIC)[partition].clone();
    let mut coordinator = Conn::connect(ports[(leader - 1) as usize]);
    // The topic was created through broker 1; the coordinator knows it once
    // it has followed the metadata log that far (a commit before then is
    // refused UnknownTopicOrPartition, which failed this test on a loaded
    // machine).
    let deadline = Instant::now() + Duration::from_secs(20);
    while partitions(&mut coordinator, "t").is_empty() {
        assert!(Instant::now() < deadline, "the coordinator never learned of topic t");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Followers do not coordinate: the client looks again.
    let follower = *replicas.iter().find(|node| **node != leader).expect("a follower");
    let mut at_follower = Conn::connect(ports[(follower - 1) as usize]);
    assert_eq!(committed(&mut at_follower, group, "t").0, ErrorCode::NotLeaderOrFollower);
    assert_eq!(commit(&mut at_follower, group, "", -1, "t", 1), ErrorCode::NotLeaderOrFollower);

    // Acknowledged commits are on the in-sync replicas.
    let (error, _) = until_served(|| (commit(&mut coordinator, group, "", -1, "t", 42), ()));
    assert_eq!(error, ErrorCode::None);
    let (error, member, epoch) = join(&mut coordinator, group, "t");
    assert_eq!(error, ErrorCode::None);
    assert_eq!(commit(&mut coordinator, group, &member, epoch, "t", 57), ErrorCode::None);
    assert_eq!(committed(&mut coordinator, group, "t"), (ErrorCode::None, 57));

    // The coordinator's broker stops; once its session ends the controller
    // elects another in-sync replica, which loads the group from its log.
    let stopped = brokers[(leader - 1) as usize].take().expect("running");
    stop(stopped);
    let survivor = ports[(follower - 1) as usize];
    let mut conn = Conn::connect(survivor);
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_leader = loop {
        let (now, _, isr) = partitions(&mut conn, CONSUMER_OFFSETS_TOPIC)[partition].clone();
        if now > 0 && now != leader {
            assert!(!isr.contains(&leader), "the stopped broker left the ISR: {isr:?}");
            break now;
        }
        assert!(Instant::now() < deadline, "no new leader for {CONSUMER_OFFSETS_TOPIC}/{partition}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut coordinator = Conn::connect(ports[(new_leader - 1) as usize]);
    let (error, offset) = until_served(|| committed(&mut coordinator, group, "t"));
    assert_eq!((error, offset), (ErrorCode::None, 57), "the committed offset survived the failover");
    // Members are soft state: the old member must join again.
    assert_eq!(commit(&mut coordinator, group, &member, epoch, "t", 60), ErrorCode::UnknownMemberId);
    // Two in-sync replicas left, min.insync.replicas 2: commits go on.
    let (error, member, new_epoch) = join(&mut coordinator, group, "t");
    assert_eq!(error, ErrorCode::None);
    assert!(new_epoch > epoch, "the group epoch goes on from the one loaded: {new_epoch} after {epoch}");
    let epoch = new_epoch;
    assert_eq!(commit(&mut coordinator, group, &member, epoch, "t", 61), ErrorCode::None);
    assert_eq!(committed(&mut coordinator, group, "t"), (ErrorCode::None, 61));
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}
