//! Topic configs changed live with AlterConfigs: applied to the open logs
//! at once, kept in the catalog across a restart, refused whole when any
//! key or value is bad; DescribeTopics tells set values from defaults.

mod common;

use std::time::{Duration, Instant};

use common::*;
use spate_flatbuf::proto::*;

/// Alters one topic's configs; returns the topic's error code.
fn alter(conn: &mut Conn, topic: &str, set: &[(&str, &str)], delete: &[&str]) -> ErrorCode {
    let frame = conn.call(Body::AlterConfigsRequest, |b| {
        let name = b.create_string(topic);
        let set: Vec<_> = set
            .iter()
            .map(|(k, v)| {
                let (key, value) = (b.create_string(k), b.create_string(v));
                ConfigEntry::create(b, &ConfigEntryArgs { key: Some(key), value: Some(value), is_set: true })
            })
            .collect();
        let set = b.create_vector(&set);
        let delete: Vec<_> = delete.iter().map(|k| b.create_string(k)).collect();
        let delete = b.create_vector(&delete);
        let topic =
            AlterableTopic::create(b, &AlterableTopicArgs { name: Some(name), set: Some(set), delete: Some(delete) });
        let topics = b.create_vector(&[topic]);
        AlterConfigsRequest::create(b, &AlterConfigsRequestArgs { topics: Some(topics), ..Default::default() })
            .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_alter_configs_response().expect("alter configs response");
    response.results().expect("results").get(0).error()
}

/// The topic's configs as DescribeTopics shows them: (key, value, is_set).
fn described(conn: &mut Conn, topic: &str) -> Vec<(String, String, bool)> {
    let frame = conn.call(Body::DescribeTopicsRequest, |b| {
        let name = b.create_string(topic);
        let names = b.create_vector(&[name]);
        DescribeTopicsRequest::create(b, &DescribeTopicsRequestArgs { names: Some(names) }).as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_describe_topics_response().expect("describe response");
    let topic = response.topics().expect("topics").get(0);
    topic
        .configs()
        .expect("configs")
        .iter()
        .map(|c| (c.key().unwrap_or_default().to_string(), c.value().unwrap_or_default().to_string(), c.is_set()))
        .collect()
}

fn value_of(configs: &[(String, String, bool)], key: &str) -> (String, bool) {
    let (_, value, is_set) = configs.iter().find(|(k, _, _)| k == key).expect("every known key is described");
    (value.clone(), *is_set)
}

fn start_with_fast_retention(dir: &std::path::Path) -> spate_net::BrokerHandle {
    let config = spate_net::BrokerConfig { retention_check_interval_ms: 50, ..config(dir, 2) };
    spate_net::start(config).expect("broker starts")
}

/// A batch of one record with a value of `bytes` bytes.
fn sized(bytes: usize) -> Vec<u8> {
    let mut builder = spate_format::batch::BatchBuilder::new(1_700_000_000_000);
    builder.push(1_700_000_000_000, None, Some(&vec![b'x'; bytes]), &[]);
    builder.build().to_vec()
}

#[test]
fn retention_set_live_deletes_old_segments_and_survives_a_restart() {
    let dir = data_dir("alter_retention");
    let broker = start_with_fast_retention(&dir);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("t", 1, &[("segment.bytes", "16384"), ("retention.ms", "-1")]), ErrorCode::None);
    for _ in 0..60 {
        assert_eq!(conn.produce("t", 0, &sized(2000), -1).0, ErrorCode::None);
    }
    assert_eq!(conn.list_offset("t", 0, spate_flatbuf::OFFSET_EARLIEST), (ErrorCode::None, 0));
    assert_eq!(alter(&mut conn, "t", &[("retention.bytes", "20000")], &[]), ErrorCode::None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = loop {
        let (error, start) = conn.list_offset("t", 0, spate_flatbuf::OFFSET_EARLIEST);
        assert_eq!(error, ErrorCode::None);
        if start > 0 {
            break start;
        }
        assert!(Instant::now() < deadline, "retention never ran with the new config");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(start >= 40, "log start {start}: about 20 KB of 120 KB is kept");
    let configs = described(&mut conn, "t");
    assert_eq!(value_of(&configs, "retention.bytes"), ("20000".to_string(), true));
    assert_eq!(value_of(&configs, "segment.bytes"), ("16384".to_string(), true));
    assert_eq!(value_of(&configs, "cleanup.policy"), ("delete".to_string(), false));
    // Deleting a key returns it to its default.
    assert_eq!(
        alter(&mut conn, "t", &[("message.timestamp.type", "LogAppendTime")], &["segment.bytes"]),
        ErrorCode::None
    );
    stop(broker);

    let broker = start_with_fast_retention(&dir);
    let mut conn = Conn::connect(broker.addr().port());
    let configs = described(&mut conn, "t");
    assert_eq!(value_of(&configs, "retention.bytes"), ("20000".to_string(), true));
    assert_eq!(value_of(&configs, "message.timestamp.type"), ("LogAppendTime".to_string(), true));
    assert_eq!(value_of(&configs, "segment.bytes"), ((1u64 << 30).to_string(), false));
    assert_eq!(conn.list_offset("t", 0, spate_flatbuf::OFFSET_EARLIEST).1, start);
    stop(broker);
}

#[test]
fn log_append_time_set_live_stamps_the_next_batches() {
    let dir = data_dir("alter_timestamp_type");
    let broker = start_with_fast_retention(&dir);
    let mut conn = Conn::connect(broker.addr().port());
    conn.create_topic("t", 1, &[]);
    assert_eq!(conn.produce("t", 0, &batch(2), -1), (ErrorCode::None, 0));
    assert_eq!(alter(&mut conn, "t", &[("message.timestamp.type", "LogAppendTime")], &[]), ErrorCode::None);
    let before_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    assert_eq!(conn.produce("t", 0, &batch(2), -1), (ErrorCode::None, 2));
    let (error, _, bytes) = conn.fetch("t", 0, 0, 0);
    assert_eq!(error, ErrorCode::None);
    let batches: Vec<_> = spate_format::batch::split_batches(&bytes).map(|span| span.expect("whole").bytes).collect();
    assert_eq!(batches.len(), 2);
    let first = spate_format::batch::validate_stored(batches[0], usize::MAX).expect("valid");
    let second = spate_format::batch::validate_stored(batches[1], usize::MAX).expect("valid: CRC recomputed");
    use spate_format::batch::TimestampType;
    assert_eq!(first.attributes().timestamp_type(), TimestampType::CreateTime);
    assert_eq!(second.attributes().timestamp_type(), TimestampType::LogAppendTime);
    assert!(second.max_timestamp as u128 >= before_ms, "stamped with the broker's clock");
    stop(broker);
}

#[test]
fn unknown_keys_and_bad_values_are_refused_and_change_nothing() {
    let dir = data_dir("alter_refused");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    conn.create_topic("t", 2, &[("retention.ms", "1000")]);
    for (set, delete) in [
        (vec![("no.such.config", "1")], vec![]),
        (vec![("retention.ms", "soon")], vec![]),
        (vec![("cleanup.policy", "purge")], vec![]),
        (vec![("message.timestamp.type", "Now")], vec![]),
        (vec![("min.insync.replicas", "0")], vec![]),
        (vec![("unclean.leader.election.enable", "maybe")], vec![]),
        (vec![("max.message.bytes", "999999999")], vec![]),
        // One good key does not carry a bad one through.
        (vec![("retention.bytes", "100"), ("segment.bytes", "1")], vec![]),
        (vec![], vec!["no.such.config"]),
        (vec![("retention.ms", "5")], vec!["retention.ms"]),
    ] {
        assert_eq!(alter(&mut conn, "t", &set, &delete), ErrorCode::InvalidConfig, "{set:?} {delete:?}");
    }
    assert_eq!(alter(&mut conn, "nope", &[("retention.ms", "5")], &[]), ErrorCode::UnknownTopicOrPartition);
    assert_eq!(alter(&mut conn, "__consumer_offsets", &[("retention.ms", "5")], &[]), ErrorCode::InternalTopic);
    let configs = described(&mut conn, "t");
    assert_eq!(value_of(&configs, "retention.ms"), ("1000".to_string(), true));
    assert_eq!(value_of(&configs, "retention.bytes"), ("-1".to_string(), false));
    // Every key Kafka names is accepted at create time too.
    let all = [
        ("cleanup.policy", "compact,delete"),
        ("delete.retention.ms", "1000"),
        ("min.insync.replicas", "2"),
        ("message.timestamp.type", "CreateTime"),
        ("unclean.leader.election.enable", "false"),
        ("max.message.bytes", "1048588"),
        ("segment.ms", "60000"),
    ];
    assert_eq!(conn.create_topic("all", 1, &all), ErrorCode::None);
    let configs = described(&mut conn, "all");
    for (key, value) in all {
        assert_eq!(value_of(&configs, key), (value.to_string(), true), "{key}");
    }
    stop(broker);
}
