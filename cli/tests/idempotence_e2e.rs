//! The idempotent producer against a real broker behind a fault proxy that
//! loses produce responses (it cuts the connection instead of forwarding
//! them, after the broker appended): the producer retries, and the log
//! holds every record once, in order, at the offsets the producer was
//! told; also when the broker is killed and restarted between the append
//! and the lost response.
//!
//! The broker advertises 127.0.0.2 and listens on 127.0.0.1; the proxy
//! listens on 127.0.0.2 at the broker's port, so metadata sends the client
//! through it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use spate_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};
use spate_flatbuf::proto::{self, Body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ADVERTISED: [&str; 2] = ["--advertised-host", "127.0.0.2"];
const PARTITIONS: i32 = 2;

/// What the proxy does to the broker's produce responses.
#[derive(Default)]
struct Faults {
    /// Cut the connection instead of forwarding every n-th (0: never).
    cut_every: usize,
    /// Hold the n-th (1-based), report its base offset, and cut the
    /// connection once released.
    hold_at: Option<usize>,
    held: Mutex<Option<mpsc::Sender<i64>>>,
    release: tokio::sync::Notify,
    produce_responses: AtomicUsize,
    cuts: AtomicUsize,
}

/// The first partition's base offset, if `frame` (after its length) is a
/// produce response.
fn produce_base_offset(frame: &[u8]) -> Option<i64> {
    let envelope_bytes = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let envelope = proto::root_as_envelope(frame.get(4..4 + envelope_bytes)?).ok()?;
    if envelope.body_type() != Body::ProduceResponse {
        return None;
    }
    let response = envelope.body_as_produce_response()?;
    let partition = response.topics()?.iter().next()?.partitions()?.iter().next()?;
    Some(partition.base_offset())
}

async fn start_proxy(broker_port: u16, faults: Arc<Faults>) -> String {
    let address = format!("127.0.0.2:{broker_port}");
    let listener = TcpListener::bind(&address).await.expect("proxy bind");
    let upstream = format!("127.0.0.1:{broker_port}");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(proxy_connection(client, upstream.clone(), faults.clone()));
        }
    });
    address
}

/// Requests go through as they come; responses frame by frame, each
/// produce response judged by `faults`.
async fn proxy_connection(client: TcpStream, upstream: String, faults: Arc<Faults>) {
    let Ok(broker) = TcpStream::connect(&upstream).await else { return };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
    });
    loop {
        let mut length = [0u8; 4];
        if broker_read.read_exact(&mut length).await.is_err() {
            break;
        }
        let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
        if broker_read.read_exact(&mut frame).await.is_err() {
            break;
        }
        if let Some(base_offset) = produce_base_offset(&frame) {
            let count = faults.produce_responses.fetch_add(1, Ordering::SeqCst) + 1;
            if faults.hold_at == Some(count) {
                if let Some(held) = faults.held.lock().expect("lock").take() {
                    let _ = held.send(base_offset);
                }
                faults.release.notified().await;
                faults.cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if faults.cut_every > 0 && count.is_multiple_of(faults.cut_every) {
                faults.cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if client_write.write_all(&length).await.is_err() || client_write.write_all(&frame).await.is_err() {
            break;
        }
    }
    requests.abort();
}

fn client_config(address: String) -> ClientConfig {
    ClientConfig { bootstrap: vec![address], shard_aware: false, request_timeout_ms: 5_000, ..Default::default() }
}

/// Sends `count` records, record i to partition i % PARTITIONS, and returns
/// each one's acknowledged offset.
async fn produce(client: &Client, topic: &str, count: usize) -> Vec<i64> {
    let config = ProducerConfig { linger_ms: 1, batch_bytes_max: 2048, retry_backoff_ms: 20, ..Default::default() };
    assert!(config.enable_idempotence, "idempotence is on by default");
    let producer = Producer::new(client.clone(), config).expect("producer");
    let mut deliveries = Vec::with_capacity(count);
    for i in 0..count {
        let record = ProducerRecord::new(topic, format!("v{i}")).with_partition(i as i32 % PARTITIONS);
        deliveries.push(producer.send(record).await.expect("enqueue"));
    }
    let mut offsets = Vec::with_capacity(count);
    for delivery in deliveries {
        offsets.push(delivery.await.expect("delivered despite lost responses").offset);
    }
    producer.close().await.expect("close");
    offsets
}

async fn consume_all(client: &Client, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(topic, p)).collect();
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
    records.extend(consumer.poll(Duration::from_millis(300)).await.expect("poll"));
    records
}

/// Every record once (no duplicates), each partition's offsets contiguous
/// from 0 (no gaps), values in send order, at the offsets acknowledged.
fn check_exactly_once(records: &[ConsumerRecord], acked: &[i64]) {
    assert_eq!(records.len(), acked.len(), "every record exactly once");
    let mut by_partition: BTreeMap<i32, Vec<&ConsumerRecord>> = BTreeMap::new();
    for record in records {
        by_partition.entry(record.partition).or_default().push(record);
    }
    for (partition, records) in by_partition {
        for (at, record) in records.iter().enumerate() {
            assert_eq!(record.offset, at as i64, "partition {partition}: no gaps");
            let index = at * PARTITIONS as usize + partition as usize;
            let value = record.value.as_deref().expect("value");
            assert_eq!(value, format!("v{index}").as_bytes(), "partition {partition} offset {at}: order kept");
            assert_eq!(acked[index], record.offset, "record {index} is where its ack said");
        }
    }
}

#[test]
fn retries_after_lost_responses_leave_no_duplicates_and_no_gaps() {
    let dir = data_dir("idempotence-lost-responses");
    let broker = Broker::start_with(&dir, 1, 0, &ADVERTISED);
    runtime().block_on(async {
        let faults = Arc::new(Faults { cut_every: 3, ..Faults::default() });
        let address = start_proxy(broker.port, faults.clone()).await;
        let client = Client::connect(client_config(address)).await.expect("connect");
        Admin::new(client.clone()).create_topic("lossy", PARTITIONS, 1, &[]).await.expect("create");
        let count = 4000;
        let acked = produce(&client, "lossy", count).await;
        let cuts = faults.cuts.load(Ordering::SeqCst);
        assert!(cuts >= 5, "the proxy lost only {cuts} responses");
        check_exactly_once(&consume_all(&client, "lossy", count).await, &acked);
    });
    broker.stop();
}

#[test]
fn a_retry_after_the_broker_restarted_gets_the_original_offset() {
    let dir = data_dir("idempotence-restart");
    let mut broker = Broker::start_with(&dir, 1, 0, &ADVERTISED);
    let port = broker.port;
    let runtime = runtime();
    let (held_tx, held_rx) = mpsc::channel();
    let faults = Arc::new(Faults { hold_at: Some(5), held: Mutex::new(Some(held_tx)), ..Faults::default() });
    let count = 3000;
    let (client, producing) = runtime.block_on(async {
        let address = start_proxy(port, faults.clone()).await;
        let client = Client::connect(client_config(address)).await.expect("connect");
        Admin::new(client.clone()).create_topic("restarted", PARTITIONS, 1, &[]).await.expect("create");
        let producer_client = client.clone();
        let producing = tokio::spawn(async move { produce(&producer_client, "restarted", count).await });
        (client, producing)
    });
    // The fifth produce response: appended, durable, and not yet seen by
    // the producer. Kill the broker there and start it again.
    let held_base_offset = held_rx.recv_timeout(Duration::from_secs(60)).expect("a held response");
    assert!(held_base_offset >= 0);
    broker.kill9_and_restart_on(port, &ADVERTISED);
    faults.release.notify_one();
    runtime.block_on(async {
        let acked = producing.await.expect("producer task");
        assert!(acked.contains(&held_base_offset), "the held batch's offset was acknowledged");
        check_exactly_once(&consume_all(&client, "restarted", count).await, &acked);
    });
    broker.stop();
}
