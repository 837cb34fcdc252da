//! KIP-966 in a three-broker cluster in this process (issue 13): a leader
//! whose ISR is below min.insync.replicas holds its high watermark (the
//! replicas that left are eligible leaders only because they hold
//! everything below it), and a graceful stop leaves the broker's
//! clean-stop marker, which the next start consumes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use spate_flatbuf::proto::*;
use spate_net::BrokerHandle;

const TOPIC: &str = "held";

/// A fresh data directory for `node`.
fn broker_config(name: &str, node: i32, quorum: &str) -> spate_net::BrokerConfig {
    let _ = data_dir(&format!("{name}-{node}"));
    broker_config_reused(name, node, quorum)
}

/// Three brokers, each a controller voter, started at once (each waits for
/// a quorum to register it).
fn start_cluster(name: &str, quorum: &str) -> Vec<Option<BrokerHandle>> {
    let starting: Vec<_> = (1..=3)
        .map(|node| {
            let config = broker_config(name, node, quorum);
            std::thread::spawn(move || spate_net::start(config).expect("broker starts"))
        })
        .collect();
    starting.into_iter().map(|t| Some(t.join().expect("started"))).collect()
}

/// (leader, isr) of partition 0 of `TOPIC`, as `conn`'s broker sees it.
fn partition(conn: &mut Conn) -> Option<(i32, Vec<i32>)> {
    let frame = conn.call(Body::MetadataRequest, |b| {
        let name = b.create_string(TOPIC);
        let topics = b.create_vector(&[name]);
        MetadataRequest::create(b, &MetadataRequestArgs { topics: Some(topics) }).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_metadata_response().expect("metadata response");
    let found = response.topics().into_iter().flatten().find(|t| t.name() == Some(TOPIC))?;
    let p = found.partitions().into_iter().flatten().find(|p| p.partition() == 0)?;
    Some((p.leader(), p.isr().map(|r| r.iter().collect()).unwrap_or_default()))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Before issue 13's KIP-966 change the leader moved the high watermark
/// with the ISR below the minimum: this test saw the acks=1 batch in the
/// fetch below (high watermark 20, not 10).
#[test]
fn a_leader_holds_the_high_watermark_while_its_isr_is_below_min_insync_replicas() {
    let quorum: Vec<String> = (1..=3).map(|node| format!("{node}@127.0.0.1:{}", free_port())).collect();
    let quorum = quorum.join(",");
    let mut brokers = start_cluster("elr-hw", &quorum);
    let ports: Vec<u16> = brokers.iter().map(|b| b.as_ref().expect("running").addr().port()).collect();
    let mut conn = Conn::connect(ports[0]);
    assert_eq!(conn.create_topic_rf(TOPIC, 1, 3, &[("min.insync.replicas", "3")]), ErrorCode::None);
    wait_for("a leader and a full ISR", || partition(&mut conn).is_some_and(|(l, isr)| l > 0 && isr.len() == 3));
    let (leader, _) = partition(&mut conn).expect("partition");
    let mut at_leader = Conn::connect(ports[(leader - 1) as usize]);
    // The first may find the partition not open yet on the leader, or
    // the topic not yet in its metadata (broker 1 answered above).
    let mut produced = (ErrorCode::NotReady, -1);
    wait_for("the leader takes a write", || {
        produced = at_leader.produce(TOPIC, 0, &batch(10), -1);
        !matches!(produced.0, ErrorCode::NotReady | ErrorCode::UnknownTopicOrPartition)
    });
    assert_eq!(produced, (ErrorCode::None, 0));
    assert_eq!(at_leader.fetch(TOPIC, 0, 0, 0).1, 10);

    // A follower stops; the ISR shrinks to two, below the minimum of 3.
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    stop(brokers[(follower - 1) as usize].take().expect("running"));
    let follower_dir = data_dir_path("elr-hw", follower);
    assert!(follower_dir.join("clean-stop").exists(), "a graceful stop leaves the clean-stop marker");
    wait_for("the ISR to shrink", || partition(&mut at_leader).is_some_and(|(_, isr)| isr.len() == 2));

    // acks=1 is acknowledged by the leader alone, but not exposed: the
    // other in-sync follower fetches it, and the high watermark stays.
    let (error, offset) = at_leader.produce(TOPIC, 0, &batch(10), 1);
    assert_eq!((error, offset), (ErrorCode::None, 10));
    // A long poll from the high watermark: it would return the batch as
    // soon as the high watermark passed it.
    let (error, high_watermark, records) = at_leader.fetch(TOPIC, 0, 10, 2_000);
    assert_eq!((error, high_watermark, records.len()), (ErrorCode::None, 10, 0));
    // acks=all is refused before the append.
    assert_eq!(at_leader.produce(TOPIC, 0, &batch(1), -1).0, ErrorCode::NotEnoughReplicas);

    // The follower returns (consuming its marker) and catches up: with the
    // ISR at the minimum again, the high watermark moves past the batch.
    let back = spate_net::start(broker_config_reused("elr-hw", follower, &quorum)).expect("restart");
    assert!(!follower_dir.join("clean-stop").exists(), "the marker is consumed at start");
    brokers[(follower - 1) as usize] = Some(back);
    wait_for("the high watermark to pass the acks=1 batch", || at_leader.fetch(TOPIC, 0, 10, 500).1 == 20);
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}

fn data_dir_path(name: &str, node: i32) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("net-tests").join(format!("{name}-{node}"))
}

/// The same broker's config without wiping its data directory.
fn broker_config_reused(name: &str, node: i32, quorum: &str) -> spate_net::BrokerConfig {
    let mut config = config(&data_dir_path(name, node), 1);
    config.node_id = node;
    config.controller_quorum = quorum.to_string();
    config.broker_session_timeout_ms = 1500;
    config.broker_heartbeat_interval_ms = 150;
    config.replica_lag_time_max_ms = 1500;
    config.group_offsets_partitions = 1;
    config
}
