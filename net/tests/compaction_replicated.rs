//! A compacted topic replicated on a cluster of three brokers in this
//! process (issue 13): a follower that starts over on an empty disk copies
//! its leader's compacted log (gaps between batches), is restarted, and is
//! then elected leader; it must open, serve and take writes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use spate_flatbuf::proto::*;
use spate_format::batch::{self, BatchBuilder};
use spate_net::{BrokerConfig, BrokerHandle};

/// (offset, key, value) of one record fetched.
type Rec = (i64, Vec<u8>, Vec<u8>);

/// Three brokers, each a controller voter with a fast cleaner, started at
/// once (each waits for a quorum to register it); their configs, for
/// restarts.
fn start_cluster(name: &str) -> (Vec<BrokerConfig>, Vec<Option<BrokerHandle>>) {
    let quorum: Vec<String> = (1..=3).map(|node| format!("{node}@127.0.0.1:{}", free_port())).collect();
    let quorum = quorum.join(",");
    let configs: Vec<BrokerConfig> = (1..=3)
        .map(|node| BrokerConfig {
            node_id: node,
            controller_quorum: quorum.clone(),
            broker_session_timeout_ms: 1500,
            broker_heartbeat_interval_ms: 150,
            replica_lag_time_max_ms: 1500,
            cleaner_check_interval_ms: 50,
            ..config(&data_dir(&format!("{name}-{node}")), 1)
        })
        .collect();
    let starting: Vec<_> = configs
        .iter()
        .cloned()
        .map(|config| std::thread::spawn(move || spate_net::start(config).expect("broker starts")))
        .collect();
    (configs, starting.into_iter().map(|t| Some(t.join().expect("started"))).collect())
}

/// (leader, replicas, isr) of partition 0 of `topic` as `conn`'s broker
/// sees it, if it knows the topic.
fn partition_zero(conn: &mut Conn, topic: &str) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let frame = conn.call(Body::MetadataRequest, |b| {
        let name = b.create_string(topic);
        let topics = b.create_vector(&[name]);
        MetadataRequest::create(b, &MetadataRequestArgs { topics: Some(topics) }).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_metadata_response().expect("metadata response");
    let found = response.topics().into_iter().flatten().find(|t| t.name() == Some(topic))?;
    let p = found.partitions().into_iter().flatten().find(|p| p.partition() == 0)?;
    let mut isr: Vec<i32> = p.isr().map(|r| r.iter().collect()).unwrap_or_default();
    isr.sort_unstable();
    Some((p.leader(), p.replicas().map(|r| r.iter().collect()).unwrap_or_default(), isr))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every record from offset 0 as (offset, key, value), following batches
/// by their last offsets (compaction leaves gaps); `None` on an error.
fn fetch_all(conn: &mut Conn, topic: &str) -> Option<Vec<Rec>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (error, high_watermark, bytes) = conn.fetch(topic, 0, offset, 0);
        if error != ErrorCode::None {
            return None;
        }
        if offset >= high_watermark {
            return Some(out);
        }
        for span in batch::split_batches(&bytes) {
            let span = span.expect("whole batches");
            let info = batch::validate_stored(span.bytes, usize::MAX).expect("valid");
            for record in batch::records(span.bytes).expect("uncompressed") {
                let record = record.expect("record");
                let record_offset = record.offset(info.base_offset);
                if record_offset >= offset {
                    let key = record.key.expect("keyed").to_vec();
                    out.push((record_offset, key, record.value.unwrap_or_default().to_vec()));
                }
            }
            offset = info.last_offset() + 1;
        }
    }
}

fn keyed(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    builder.push(0, Some(key), Some(value), &[]);
    builder.build().to_vec()
}

/// The latest record per key: (offset, value).
fn latest_per_key(records: &[Rec]) -> BTreeMap<Vec<u8>, (i64, Vec<u8>)> {
    records.iter().map(|(offset, key, value)| (key.clone(), (*offset, value.clone()))).collect()
}

/// Before the engine fix the follower's broker did not even restart: its
/// copy of the partition failed to open ("corruption ... batch at offset
/// 382 where 0 was expected"), a gap its compaction checkpoint did not
/// cover.
#[test]
fn a_follower_refilled_from_a_compacted_leader_reopens_and_leads() {
    let (configs, mut brokers) = start_cluster("compacted-replica");
    let port = |brokers: &[Option<BrokerHandle>], node: i32| {
        brokers[(node - 1) as usize].as_ref().expect("running").addr().port()
    };
    let mut conn = Conn::connect(port(&brokers, 1));
    let configs_table = [("cleanup.policy", "compact"), ("segment.bytes", "4096"), ("delete.retention.ms", "60000")];
    wait_until("the topic is created", || conn.create_topic_rf("table", 1, 2, &configs_table) == ErrorCode::None);
    let mut placement = None;
    wait_until("both replicas are in sync", || {
        placement = partition_zero(&mut conn, "table");
        placement.as_ref().is_some_and(|(leader, _, isr)| *leader > 0 && isr.len() == 2)
    });
    let (leader, replicas, _) = placement.expect("placed");
    let follower = *replicas.iter().find(|node| **node != leader).expect("a follower");
    let mut at_leader = Conn::connect(port(&brokers, leader));
    let mut latest = BTreeMap::new();
    for i in 0..400u32 {
        let key = format!("key-{}", i % 10).into_bytes();
        let value = format!("value-{i}-{}", "x".repeat(200)).into_bytes();
        let mut produced = (ErrorCode::NotReady, -1);
        // The first may find the partition not open yet on the leader, or
        // the topic not yet in its metadata: a new partition's ISR is all
        // its replicas at once, so "in sync" above can be seen on broker 1
        // before the leader has applied the topic.
        wait_until("the leader takes a write", || {
            produced = at_leader.produce("table", 0, &keyed(&key, &value), -1);
            !matches!(produced.0, ErrorCode::NotReady | ErrorCode::UnknownTopicOrPartition)
        });
        assert_eq!(produced, (ErrorCode::None, i64::from(i)));
        latest.insert(key, (produced.1, value));
    }
    wait_until("the leader compacted its sealed segments", || {
        fetch_all(&mut at_leader, "table").is_some_and(|records| records.len() < 60)
    });

    // The follower starts over on an empty disk and copies the compacted
    // log, gaps and all.
    let follower_config = configs[(follower - 1) as usize].clone();
    stop(brokers[(follower - 1) as usize].take().expect("running"));
    wait_until("the stopped follower leaves the ISR", || {
        partition_zero(&mut at_leader, "table").is_some_and(|(_, _, isr)| isr == vec![leader])
    });
    let topics = follower_config.data_dir.join("topics");
    for entry in std::fs::read_dir(&topics).expect("topics dir") {
        let path = entry.expect("entry").path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("table.")) {
            std::fs::remove_dir_all(&path).expect("wipe the follower's copy");
        }
    }
    brokers[(follower - 1) as usize] = Some(spate_net::start(follower_config.clone()).expect("restarts"));
    wait_until("the refilled follower rejoins the ISR", || {
        partition_zero(&mut at_leader, "table").is_some_and(|(_, _, isr)| isr.len() == 2)
    });
    // Restarted: it must reopen its copy.
    stop(brokers[(follower - 1) as usize].take().expect("running"));
    wait_until("the stopped follower leaves the ISR again", || {
        partition_zero(&mut at_leader, "table").is_some_and(|(_, _, isr)| isr == vec![leader])
    });
    brokers[(follower - 1) as usize] = Some(spate_net::start(follower_config).expect("restarts"));
    wait_until("the reopened follower rejoins the ISR", || {
        partition_zero(&mut at_leader, "table").is_some_and(|(_, _, isr)| isr.len() == 2)
    });

    // The leader stops: the follower is elected and serves every key's
    // latest record at its offset, and takes new writes.
    drop(at_leader);
    stop(brokers[(leader - 1) as usize].take().expect("running"));
    let mut at_follower = Conn::connect(port(&brokers, follower));
    wait_until("the follower leads", || {
        partition_zero(&mut at_follower, "table").is_some_and(|(now, _, _)| now == follower)
    });
    let mut served = None;
    wait_until("the new leader serves the topic", || {
        served = fetch_all(&mut at_follower, "table");
        served.is_some()
    });
    let served = served.expect("served");
    assert!(served.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
    assert_eq!(latest_per_key(&served), latest, "every key's latest record, at its offset");
    let mut produced = (ErrorCode::NotReady, -1);
    wait_until("the new leader takes a write", || {
        produced = at_follower.produce("table", 0, &keyed(b"key-new", b"after"), 1);
        produced.0 == ErrorCode::None
    });
    assert_eq!(produced.1, 400, "it appends after the last offset");
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}
