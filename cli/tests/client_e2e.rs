//! The client against real broker processes: keyed records end to end,
//! restarts, kill -9 under acks=all with durability `always`, and
//! shard-aware routing against cross-shard forwarding.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use spate_client::{
    Acks, Admin, Client, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition, partition_for_key,
};

const PARTITIONS: i32 = 8;

fn client_config(broker: &Broker, shard_aware: bool) -> ClientConfig {
    ClientConfig { bootstrap: vec![broker.addr()], shard_aware, request_timeout_ms: 10_000, ..Default::default() }
}

async fn produce_keyed(client: &Client, topic: &str, from: usize, count: usize) -> Vec<(i32, i64, String)> {
    let producer =
        Producer::new(client.clone(), ProducerConfig { acks: Acks::All, ..Default::default() }).expect("producer");
    let mut deliveries = Vec::with_capacity(count);
    for i in from..from + count {
        let record = ProducerRecord::new(topic, format!("value-{i}")).with_key(format!("key-{}", i % 1000));
        deliveries.push(producer.send(record).await.expect("enqueue"));
    }
    let mut acked = Vec::with_capacity(count);
    for (i, delivery) in (from..).zip(deliveries) {
        let metadata = delivery.await.expect("acknowledged");
        acked.push((metadata.partition, metadata.offset, format!("value-{i}")));
    }
    producer.close().await.expect("close");
    acked
}

/// Reads every partition from the beginning until `expected` records came.
async fn consume_all(client: &Client, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let partitions: Vec<TopicPartition> =
        (0..PARTITIONS).map(|partition| TopicPartition { topic: topic.to_string(), partition }).collect();
    consumer.assign(partitions.clone());
    for tp in &partitions {
        consumer.seek(tp, SeekTo::Earliest).await.expect("seek");
    }
    let mut records = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(60);
    while records.len() < expected {
        assert!(Instant::now() < deadline, "only {} of {expected} records arrived", records.len());
        records.extend(consumer.poll(Duration::from_millis(500)).await.expect("poll"));
    }
    // Nothing more than expected arrives.
    records.extend(consumer.poll(Duration::from_millis(200)).await.expect("poll"));
    records
}

/// Every record once, offsets contiguous per partition from 0, each key
/// in the partition Kafka's murmur2 picks, values in production order per
/// key.
fn check_keyed(records: &[ConsumerRecord], count: usize) {
    assert_eq!(records.len(), count, "every record exactly once");
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    let mut last_index_by_key: HashMap<Bytes, usize> = HashMap::new();
    let mut seen = vec![false; count];
    for record in records {
        let expected = next_offset.entry(record.partition).or_insert(0);
        assert_eq!(record.offset, *expected, "partition {} in order without gaps", record.partition);
        *expected += 1;
        let key = record.key.clone().expect("keyed");
        assert_eq!(record.partition, partition_for_key(&key, PARTITIONS), "same key, Kafka's partition");
        let value = std::str::from_utf8(record.value.as_deref().expect("value")).expect("utf-8");
        let index: usize = value.trim_start_matches("value-").parse().expect("index");
        assert!(!std::mem::replace(&mut seen[index], true), "value {index} seen twice");
        if let Some(previous) = last_index_by_key.insert(key, index) {
            assert!(previous < index, "a key's records keep their order");
        }
    }
}

#[test]
fn keyed_records_arrive_once_in_order_and_survive_a_restart_with_offsets_unchanged() {
    const COUNT: usize = 100_000;
    let dir = data_dir("client_keyed");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let (acked, first) = runtime.block_on(async {
        let client = Client::connect(client_config(&broker, true)).await.expect("connect");
        Admin::new(client.clone()).create_topic("events", PARTITIONS, 1, &[]).await.expect("create");
        let acked = produce_keyed(&client, "events", 0, COUNT).await;
        let records = consume_all(&client, "events", COUNT).await;
        (acked, records)
    });
    check_keyed(&first, COUNT);
    // What the producer was told matches what the consumer reads.
    let read: HashMap<(i32, i64), String> = first
        .iter()
        .map(|r| ((r.partition, r.offset), String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into()))
        .collect();
    for (partition, offset, value) in &acked {
        assert_eq!(read.get(&(*partition, *offset)), Some(value));
    }
    let broker = broker.restart();
    let second = runtime.block_on(async {
        let client = Client::connect(client_config(&broker, true)).await.expect("connect");
        consume_all(&client, "events", COUNT).await
    });
    let key = |r: &ConsumerRecord| (r.partition, r.offset, r.value.clone());
    let mut a: Vec<_> = first.iter().map(key).collect();
    let mut b: Vec<_> = second.iter().map(key).collect();
    a.sort();
    b.sort();
    assert!(a == b, "after a restart every record is there at the same offset");
    broker.stop();
}

#[test]
fn every_acknowledged_record_survives_kill_9_under_acks_all_and_durability_always() {
    let dir = data_dir("client_kill9");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::default();
    let producing = {
        let acked = acked.clone();
        let config = client_config(&broker, true);
        runtime.block_on(async {
            let client = Client::connect(config.clone()).await.expect("connect");
            Admin::new(client.clone()).create_topic("durable", PARTITIONS, 1, &[]).await.expect("create");
        });
        runtime.spawn(async move {
            let client = Client::connect(config).await.expect("connect");
            let producer = Producer::new(
                client,
                ProducerConfig { acks: Acks::All, delivery_timeout_ms: 2_000, linger_ms: 1, ..Default::default() },
            )
            .expect("producer");
            let mut i = 0usize;
            loop {
                let value = format!("value-{i}");
                let record = ProducerRecord::new("durable", value.clone()).with_key(format!("key-{}", i % 97));
                let Ok(delivery) = producer.send(record).await else { break };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if let Ok(metadata) = delivery.await {
                        acked.lock().expect("lock").push((metadata.partition, metadata.offset, value));
                    }
                });
                i += 1;
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Let acknowledged records pile up, then kill the broker mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().expect("lock").len() < 20_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.kill9();
    std::thread::sleep(Duration::from_millis(500));
    producing.abort();
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(acked.len() >= 1_000, "the producer got acknowledgements before the kill ({})", acked.len());
    let broker = Broker::start(&dir, 2);
    let records = runtime.block_on(async {
        let client = Client::connect(client_config(&broker, true)).await.expect("connect");
        let consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        let partitions: Vec<TopicPartition> =
            (0..PARTITIONS).map(|partition| TopicPartition { topic: "durable".into(), partition }).collect();
        let ends = consumer.end_offsets(&partitions).await.expect("end offsets");
        let total: i64 = ends.iter().map(|(_, end)| end).sum();
        consume_all(&client, "durable", total as usize).await
    });
    let stored: BTreeMap<(i32, i64), Option<Bytes>> =
        records.iter().map(|r| ((r.partition, r.offset), r.value.clone())).collect();
    let mut lost = 0;
    for (partition, offset, value) in &acked {
        if stored.get(&(*partition, *offset)) != Some(&Some(Bytes::from(value.clone()))) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "{lost} of {} acknowledged records are missing or changed after kill -9", acked.len());
    broker.stop();
}

#[test]
fn shard_aware_routing_and_cross_shard_forwarding_give_the_same_log() {
    let dir = data_dir("client_routing");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let (direct, forwarded) = runtime.block_on(async {
        let aware = Client::connect(client_config(&broker, true)).await.expect("connect");
        let plain = Client::connect(client_config(&broker, false)).await.expect("connect");
        Admin::new(aware.clone()).create_topic("routed", PARTITIONS, 1, &[]).await.expect("create");
        // Half the records each way: one log per partition either way.
        let mut acked = produce_keyed(&plain, "routed", 0, 5_000).await;
        acked.extend(produce_keyed(&aware, "routed", 5_000, 5_000).await);
        assert_eq!(acked.len(), 10_000);
        (consume_all(&aware, "routed", 10_000).await, consume_all(&plain, "routed", 10_000).await)
    });
    check_keyed(&direct, 10_000);
    let key = |r: &ConsumerRecord| (r.partition, r.offset, r.key.clone(), r.value.clone());
    let mut a: Vec<_> = direct.iter().map(key).collect();
    let mut b: Vec<_> = forwarded.iter().map(key).collect();
    a.sort();
    b.sort();
    assert!(a == b, "both routes read the same records at the same offsets");
    broker.stop();
}
