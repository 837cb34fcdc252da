//! The broker over its native protocol: produce, fetch (with long polling),
//! offsets, topics, restarts, and routing across shards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use spate_flatbuf::proto::*;
use spate_format::batch;

fn count_records(records: &[u8]) -> usize {
    batch::split_batches(records)
        .map(|span| batch::peek_header(span.expect("whole batch").bytes).expect("header").records_count.get() as usize)
        .sum()
}

#[test]
fn produce_then_fetch_returns_the_records_with_their_offsets() {
    let dir = data_dir("produce_fetch");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("orders", 4, &[]), ErrorCode::None);
    for partition in 0..4 {
        assert_eq!(conn.produce("orders", partition, &batch(10), -1), (ErrorCode::None, 0));
        assert_eq!(conn.produce("orders", partition, &batch(5), 1), (ErrorCode::None, 10));
        let (error, high_watermark, records) = conn.fetch("orders", partition, 0, 0);
        assert_eq!(error, ErrorCode::None);
        assert_eq!(high_watermark, 15);
        assert_eq!(count_records(&records), 15);
        let first = batch::peek_header(&records).expect("header");
        assert_eq!(first.base_offset.get(), 0);
        // A fetch in the middle of a batch returns that whole batch.
        let (_, _, from_12) = conn.fetch("orders", partition, 12, 0);
        assert_eq!(batch::peek_header(&from_12).expect("header").base_offset.get(), 10);
    }
    assert_eq!(conn.list_offset("orders", 1, spate_flatbuf::OFFSET_EARLIEST), (ErrorCode::None, 0));
    assert_eq!(conn.list_offset("orders", 1, spate_flatbuf::OFFSET_LATEST), (ErrorCode::None, 15));
    assert_eq!(conn.list_offset("orders", 1, 1_700_000_000_003), (ErrorCode::None, 3));
    assert_eq!(conn.list_offset("orders", 1, 1_800_000_000_000), (ErrorCode::None, -1));
    stop(broker);
}

#[test]
fn a_fetch_at_the_end_waits_for_data_then_returns_it() {
    let dir = data_dir("long_poll");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    assert_eq!(conn.create_topic("t", 2, &[]), ErrorCode::None);
    // Nothing there: the fetch waits its whole max_wait.
    let started = Instant::now();
    let (error, _, records) = conn.fetch("t", 1, 0, 300);
    assert_eq!(error, ErrorCode::None);
    assert!(records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "returned after {:?}", started.elapsed());
    // A produce while it waits wakes it long before max_wait.
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut conn = Conn::connect(port);
        conn.produce("t", 1, &batch(3), 1)
    });
    let started = Instant::now();
    let (error, _, records) = conn.fetch("t", 1, 0, 10_000);
    assert_eq!(error, ErrorCode::None);
    assert_eq!(count_records(&records), 3);
    assert!(started.elapsed() < Duration::from_secs(5), "woke after {:?}", started.elapsed());
    assert_eq!(producer.join().expect("producer"), (ErrorCode::None, 0));
    stop(broker);
}

#[test]
fn topics_and_records_survive_a_restart_with_offsets_unchanged() {
    let dir = data_dir("restart");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("kept", 3, &[("retention.ms", "-1")]), ErrorCode::None);
    for partition in 0..3 {
        for _ in 0..=partition {
            conn.produce("kept", partition, &batch(4), -1);
        }
    }
    drop(conn);
    stop(broker);
    // A different shard count moves partitions to other shards; the data
    // follows.
    let broker = start(&dir, 3);
    let mut conn = Conn::connect(broker.addr().port());
    for partition in 0..3 {
        let (error, high_watermark, records) = conn.fetch("kept", partition, 0, 0);
        assert_eq!(error, ErrorCode::None);
        assert_eq!(high_watermark, 4 * (partition as i64 + 1));
        assert_eq!(count_records(&records), 4 * (partition as usize + 1));
    }
    assert_eq!(conn.create_topic("kept", 1, &[]), ErrorCode::TopicAlreadyExists);
    assert_eq!(conn.produce("kept", 2, &batch(1), -1), (ErrorCode::None, 12));
    stop(broker);
}

#[test]
fn shard_ports_and_the_main_port_serve_the_same_partitions() {
    let dir = data_dir("routing");
    let broker = start(&dir, 2);
    let ports = broker.shard_ports();
    assert_eq!(ports.len(), 2);
    let mut main = Conn::connect(broker.addr().port());
    assert_eq!(main.create_topic("r", 4, &[]), ErrorCode::None);
    // Every partition through every shard's own port: the owner serves it
    // directly, the other forwards it; offsets interleave as one log.
    let mut expected = [0i64; 4];
    for round in 0..3 {
        for &port in &ports {
            let mut conn = Conn::connect(port);
            for partition in 0..4 {
                let (error, base) = conn.produce("r", partition, &batch(2), -1);
                assert_eq!(error, ErrorCode::None, "round {round} port {port} partition {partition}");
                assert_eq!(base, expected[partition as usize]);
                expected[partition as usize] += 2;
            }
        }
    }
    for &port in &ports {
        let mut conn = Conn::connect(port);
        for partition in 0..4 {
            let (_, high_watermark, records) = conn.fetch("r", partition, 0, 0);
            assert_eq!(high_watermark, 12);
            assert_eq!(count_records(&records), 12);
        }
    }
    stop(broker);
}

#[test]
fn deleted_topics_are_gone_and_their_names_reusable() {
    let dir = data_dir("delete");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("gone", 2, &[]), ErrorCode::None);
    conn.produce("gone", 0, &batch(5), -1);
    let frame = conn.call(Body::DeleteTopicsRequest, |b| {
        let name = b.create_string("gone");
        let names = b.create_vector(&[name]);
        DeleteTopicsRequest::create(b, &DeleteTopicsRequestArgs { names: Some(names), timeout_ms: 10_000 })
            .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let result = envelope.body_as_delete_topics_response().expect("delete").results().expect("results").get(0);
    assert_eq!(result.error(), ErrorCode::None);
    assert_eq!(conn.produce("gone", 0, &batch(1), -1).0, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(conn.create_topic("gone", 1, &[]), ErrorCode::None);
    assert_eq!(conn.fetch("gone", 0, 0, 0).1, 0, "a new topic of the same name starts empty");
    stop(broker);
    // Besides the broker's own __consumer_offsets.
    let topic_dirs = std::fs::read_dir(dir.join("topics"))
        .expect("topics dir")
        .filter(|entry| entry.as_ref().is_ok_and(|e| !e.file_name().to_string_lossy().starts_with("__")))
        .count();
    assert_eq!(topic_dirs, 1, "the deleted topic's files are removed");
}

#[test]
fn many_requests_in_flight_on_one_connection_are_answered_in_order() {
    let dir = data_dir("pipelining");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("p", 2, &[]), ErrorCode::None);
    let mut sent = Vec::new();
    for i in 0..200 {
        let partition = i % 2;
        let records = batch(1);
        let bytes = conn.encode(Body::ProduceRequest, |b| {
            let name = b.create_string("p");
            let records = b.create_vector(&records);
            let part = ProducePartition::create(b, &ProducePartitionArgs { partition, records: Some(records) });
            let parts = b.create_vector(&[part]);
            let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            ProduceRequest::create(
                b,
                &ProduceRequestArgs { acks: -1, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
            )
            .as_union_value()
        });
        sent.extend_from_slice(&bytes);
    }
    conn.send_raw(&sent);
    let mut next_offset = [0i64; 2];
    for i in 0..200u64 {
        let frame = conn.recv().expect("response");
        let envelope = frame.read().expect("verified");
        assert_eq!(envelope.request_id(), i + 2, "responses keep request order (request 1 created the topic)");
        let response = envelope.body_as_produce_response().expect("produce response");
        let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
        assert_eq!(part.error(), ErrorCode::None);
        let p = part.partition() as usize;
        assert_eq!(part.base_offset(), next_offset[p], "appends keep request order");
        next_offset[p] += 1;
    }
    stop(broker);
}

#[test]
fn acks_zero_gets_no_response_but_is_appended() {
    let dir = data_dir("acks0");
    let broker = start(&dir, 1);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("z", 1, &[]), ErrorCode::None);
    let records = batch(7);
    let bytes = conn.encode(Body::ProduceRequest, |b| {
        let name = b.create_string("z");
        let records = b.create_vector(&records);
        let part = ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) });
        let parts = b.create_vector(&[part]);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks: 0, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    });
    conn.send_raw(&bytes);
    // The next response on the connection is for the next request.
    let (error, high_watermark, _) = conn.fetch("z", 0, 0, 2_000);
    assert_eq!(error, ErrorCode::None);
    assert_eq!(high_watermark, 7);
    stop(broker);
}

#[test]
fn metrics_count_bytes_records_requests_and_log_sizes() {
    use std::io::{Read, Write};
    let dir = data_dir("metrics");
    let mut config = config(&dir, 2);
    config.metrics_listen = "127.0.0.1:0".into();
    let broker = spate_net::start(config).expect("broker starts");
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("m", 2, &[]), ErrorCode::None);
    let records = batch(10);
    conn.produce("m", 0, &records, -1);
    conn.produce("m", 1, &records, -1);
    let scrape = || {
        let mut http = std::net::TcpStream::connect(("127.0.0.1", broker.metrics_port().expect("metrics on")))
            .expect("connect metrics");
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut text = String::new();
        http.read_to_string(&mut text).expect("response");
        text
    };
    let text = scrape();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains("topic=\"m\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(sum("spate_records_in_total"), 20);
    assert_eq!(sum("spate_bytes_in_total"), 2 * records.len() as u64);
    assert!(sum("spate_log_size_bytes") >= 2 * records.len() as u64);
    assert!(text.contains("spate_request_latency_seconds_count{shard="), "{text}");
    assert!(text.contains("api=\"produce\""), "{text}");
    stop(broker);
}

#[test]
fn a_waiting_fetch_ends_promptly_when_its_topic_is_deleted() {
    let dir = data_dir("fetch_delete");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    assert_eq!(conn.create_topic("brief", 1, &[]), ErrorCode::None);
    let waiting = std::thread::spawn(move || {
        let mut conn = Conn::connect(port);
        let started = Instant::now();
        let result = conn.fetch("brief", 0, 0, 20_000);
        (result, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let frame = conn.call(Body::DeleteTopicsRequest, |b| {
        let name = b.create_string("brief");
        let names = b.create_vector(&[name]);
        DeleteTopicsRequest::create(b, &DeleteTopicsRequestArgs { names: Some(names), timeout_ms: 10_000 })
            .as_union_value()
    });
    assert!(frame.read().expect("verified").body_as_delete_topics_response().is_some());
    let ((_, _, records), waited) = waiting.join().expect("fetcher");
    assert!(records.is_empty());
    assert!(waited < Duration::from_secs(10), "the fetch waited {waited:?} on a deleted topic");
    // And the broker still stops cleanly.
    stop(broker);
}
