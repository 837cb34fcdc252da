//! Compression and topic configs end to end, against a real broker
//! process: each codec through the client's producer and consumer and
//! through `spate produce --compression`, and `spate topic alter-config`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use spate_client::{
    Acks, Client, ClientConfig, Compression, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};
use spate_format::batch;

const RECORDS: usize = 2_000;

fn client_config(broker: &Broker) -> ClientConfig {
    ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() }
}

/// Every stored batch of partition 0, as the broker serves it.
async fn stored_batches(client: &Client, topic: &str) -> Vec<bytes::Bytes> {
    let tp = TopicPartition { topic: topic.to_string(), partition: 0 };
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = client.fetch_batches(&tp, offset, 1 << 20, Duration::ZERO).await.expect("fetch");
        if fetched.records.is_empty() {
            return batches;
        }
        for span in batch::split_batches(&fetched.records) {
            let span = span.expect("whole batches");
            let info = batch::validate_stored(span.bytes, usize::MAX).expect("valid Kafka batch");
            offset = info.last_offset() + 1;
            batches.push(fetched.records.slice(span.range));
        }
    }
}

/// Reads partition 0 from the beginning until `expected` values came.
async fn consume_values(client: &Client, topic: &str, expected: usize) -> Vec<String> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let tp = TopicPartition { topic: topic.to_string(), partition: 0 };
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while values.len() < expected {
        assert!(Instant::now() < deadline, "only {} of {expected} records arrived", values.len());
        for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            values.push(String::from_utf8(record.value.expect("value").to_vec()).expect("utf-8"));
        }
    }
    values
}

#[test]
fn each_codec_round_trips_through_the_client_and_is_stored_compressed_as_sent() {
    let dir = data_dir("compression_client");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    runtime.block_on(async {
        let client = Client::connect(client_config(&broker)).await.expect("connect");
        let admin = spate_client::Admin::new(client.clone());
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let topic = format!("codec-{}", codec.name());
            admin.create_topic(&topic, 1, 1, &[]).await.expect("create");
            let config = ProducerConfig { acks: Acks::All, compression: codec, linger_ms: 20, ..Default::default() };
            let producer = Producer::new(client.clone(), config).expect("producer");
            let mut deliveries = Vec::new();
            for i in 0..RECORDS {
                let record = ProducerRecord::new(&topic, format!("{{\"event\":\"click\",\"user\":{i}}}"))
                    .with_key(format!("user-{i}"))
                    .with_partition(0);
                deliveries.push(producer.send(record).await.expect("enqueue"));
            }
            for (i, delivery) in deliveries.into_iter().enumerate() {
                assert_eq!(delivery.await.expect("acknowledged").offset, i as i64, "{codec:?}");
            }
            producer.close().await.expect("close");
            let values = consume_values(&client, &topic, RECORDS).await;
            let expected: Vec<String> = (0..RECORDS).map(|i| format!("{{\"event\":\"click\",\"user\":{i}}}")).collect();
            assert_eq!(values, expected, "{codec:?}: every record once, in order");
            let batches = stored_batches(&client, &topic).await;
            assert!(!batches.is_empty());
            let stored_bytes: usize = batches.iter().map(bytes::Bytes::len).sum();
            for stored in &batches {
                let info = batch::validate_stored(stored, usize::MAX).expect("valid");
                assert_eq!(info.compression(), codec, "stored as the producer compressed it");
            }
            if codec != Compression::None {
                let plain: usize = batches
                    .iter()
                    .map(|b| batch::decompressed_records(b, usize::MAX).expect("readable").bytes().len())
                    .sum();
                assert!(stored_bytes * 2 < plain, "{codec:?}: {stored_bytes} bytes stored for {plain}");
            }
        }
    });
    broker.stop();
}

#[test]
fn spate_produce_compression_and_topic_alter_config() {
    let dir = data_dir("compression_cli");
    let broker = Broker::start(&dir, 1);
    let brokers = broker.addr();
    let run_with = |args: &[&str], stdin: Option<&[u8]>| {
        let mut all = vec!["--brokers", brokers.as_str(), "--timeout-ms", "5000"];
        all.extend_from_slice(args);
        cli(&all, stdin)
    };
    let run = |args: &[&str]| run_with(args, None);
    let (ok, _, err) = run(&["topic", "create", "logs", "--config", "retention.ms=60000"]);
    assert!(ok, "{err}");
    let input: String = (0..500).map(|i| format!("line number {i} of the log\n")).collect();
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let (ok, _, err) = run_with(&["produce", "logs", "--compression", codec], Some(input.as_bytes()));
        assert!(ok, "{codec}: {err}");
    }
    let (ok, out, err) = run(&["consume", "logs", "--from-beginning", "--count", "2000"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2000);
    assert_eq!(lines[1999], "line number 499 of the log");
    let (ok, _, err) = run(&["produce", "logs", "--compression", "brotli"]);
    assert!(!ok && err.contains("compression"), "{err}");

    let (ok, _, err) = run(&[
        "topic",
        "alter-config",
        "logs",
        "--set",
        "message.timestamp.type=LogAppendTime",
        "--set",
        "retention.bytes=1048576",
        "--delete",
        "retention.ms",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["topic", "describe", "logs"]);
    assert!(ok, "{out}");
    let line = |key: &str| out.lines().find(|line| line.starts_with(key)).unwrap_or_default().to_string();
    assert!(line("message.timestamp.type").contains("LogAppendTime"), "{out}");
    assert!(line("message.timestamp.type").contains("set"), "{out}");
    assert!(line("retention.bytes").contains("1048576"), "{out}");
    assert!(line("retention.ms").contains("default"), "{out}");
    let (ok, _, err) = run(&["topic", "alter-config", "logs", "--set", "cleanup.policy=purge"]);
    assert!(!ok && err.starts_with("error:") && err.trim().lines().count() == 1, "{err}");
    let (ok, _, err) = run(&["topic", "alter-config", "logs"]);
    assert!(!ok && err.contains("nothing to change"), "{err}");
    broker.stop();
}
