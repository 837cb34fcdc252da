//! Three brokers as real processes on loopback (issue 6): a replicated
//! partition survives kill -9 of its leader, again and again, without
//! losing a record any producer had acknowledged with acks=all, and every
//! replica that leads afterwards serves the same records at the same
//! offsets (a history check: lost, duplicated, inconsistent offsets).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use spate_client::*;

const TOPIC: &str = "replicated";
const FLAGS_TIMING: [&str; 6] = [
    "--broker-session-timeout-ms",
    "1500",
    "--broker-heartbeat-interval-ms",
    "150",
    "--replica-lag-time-max-ms",
    "1500",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    brokers: Vec<Broker>,
    flags: Vec<Vec<String>>,
}

impl Cluster {
    /// Three brokers, each a controller voter, started at once (each waits
    /// for a quorum to register).
    fn start(name: &str) -> Cluster {
        let controller_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let quorum: Vec<String> =
            controller_ports.iter().enumerate().map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1)).collect();
        let quorum = quorum.join(",");
        let flags: Vec<Vec<String>> = (1..=3)
            .map(|node| {
                let mut flags =
                    vec!["--node-id".to_string(), node.to_string(), "--controller-quorum".into(), quorum.clone()];
                flags.extend(FLAGS_TIMING.iter().map(|s| s.to_string()));
                flags
            })
            .collect();
        let starting: Vec<_> = (0..3)
            .map(|i| {
                let dir = data_dir(&format!("{name}-{}", i + 1));
                let flags = flags[i].clone();
                std::thread::spawn(move || {
                    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                    Broker::start_with(&dir, 1, 0, &flags)
                })
            })
            .collect();
        let brokers = starting.into_iter().map(|t| t.join().expect("broker started")).collect();
        Cluster { brokers, flags }
    }

    fn bootstrap(&self) -> Vec<String> {
        self.brokers.iter().map(Broker::addr).collect()
    }

    fn kill9_and_restart(&mut self, node: i32) {
        let index = (node - 1) as usize;
        let flags: Vec<&str> = self.flags[index].iter().map(String::as_str).collect();
        self.brokers[index].kill9_and_restart_on(0, &flags);
    }
}

fn client_config(bootstrap: Vec<String>) -> ClientConfig {
    ClientConfig { bootstrap, request_timeout_ms: 20_000, ..Default::default() }
}

async fn partition_state(client: &Client) -> Option<PartitionInfo> {
    let metadata = client.metadata(Some(&[TOPIC.to_string()])).await.ok()?;
    metadata.topics.into_iter().next()?.partitions.into_iter().next()
}

/// Waits until the partition has a leader and a full ISR.
async fn wait_for_full_isr(client: &Client, timeout: Duration) -> PartitionInfo {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(state) = partition_state(client).await
            && state.leader > 0
            && state.isr.len() == 3
        {
            return state;
        }
        assert!(Instant::now() < deadline, "the ISR did not fill up again: {:?}", partition_state(client).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of the partition, from its current leader, up to its high
/// watermark.
async fn drain(client: &Client) -> Vec<(i64, Bytes)> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let tp = TopicPartition { topic: TOPIC.into(), partition: 0 };
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
    let end = consumer.end_offsets(std::slice::from_ref(&tp)).await.expect("end offsets")[0].1;
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.position(&tp).unwrap_or(0) < end {
        assert!(Instant::now() < deadline, "drain stalled at {:?} of {end}", consumer.position(&tp));
        for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            records.push((record.offset, record.value.unwrap_or_default()));
        }
    }
    records
}

#[test]
fn acks_all_loses_nothing_acknowledged_when_the_leader_is_killed_again_and_again() {
    let mut cluster = Cluster::start("cluster-kill");
    let runtime = runtime();
    let client = runtime.block_on(async {
        let client = Client::connect(client_config(cluster.bootstrap())).await.expect("connect");
        Admin::new(client.clone())
            .create_topic(TOPIC, 1, 3, &[("min.insync.replicas".into(), "2".into())])
            .await
            .expect("create");
        wait_for_full_isr(&client, Duration::from_secs(20)).await;
        client
    });
    // An idempotent acks=all producer records what the cluster acknowledged.
    let acked: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (acked, stop, config) = (acked.clone(), stop.clone(), client_config(cluster.bootstrap()));
        runtime.spawn(async move {
            let client = Client::connect(config).await.expect("connect");
            let producer = Producer::new(
                client,
                ProducerConfig { acks: Acks::All, delivery_timeout_ms: 30_000, linger_ms: 2, ..Default::default() },
            )
            .expect("producer");
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let value = format!("value-{i}");
                let Ok(delivery) = producer.send(ProducerRecord::new(TOPIC, value.clone())).await else { break };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if let Ok(metadata) = delivery.await {
                        acked.lock().unwrap().push((metadata.offset, value));
                    }
                });
                i += 1;
                if i.is_multiple_of(16) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let _ = producer.flush().await;
        })
    };
    let mut leaders = Vec::new();
    for round in 0..3 {
        let before = acked.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(1500));
        let state = runtime.block_on(wait_for_full_isr(&client, Duration::from_secs(30)));
        assert!(acked.lock().unwrap().len() > before, "round {round}: the producer made progress");
        leaders.push((state.leader, state.leader_epoch));
        cluster.kill9_and_restart(state.leader);
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    runtime.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(40), producing).await;
    });
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() > 100, "acknowledged records to check ({})", acked.len());
    // A new leader each round, each with a larger epoch.
    assert!(leaders.windows(2).all(|pair| pair[1].1 > pair[0].1), "leader epochs grow: {leaders:?}");

    // Read from the current leader, then kill it and read from the next:
    // every replica that leads serves the same history.
    let mut histories = Vec::new();
    for _ in 0..2 {
        let state = runtime.block_on(wait_for_full_isr(&client, Duration::from_secs(30)));
        histories.push(runtime.block_on(drain(&client)));
        // Restarted at once, it is a new incarnation: the controller moves
        // leadership to another in-sync replica.
        cluster.kill9_and_restart(state.leader);
    }
    histories.push(runtime.block_on(async {
        wait_for_full_isr(&client, Duration::from_secs(30)).await;
        drain(&client).await
    }));

    let first = &histories[0];
    // Offsets are contiguous from 0 and no value appears twice (the
    // idempotent producer's retries across failovers were deduplicated).
    for (expected, (offset, _)) in first.iter().enumerate() {
        assert_eq!(*offset, expected as i64, "offsets are contiguous");
    }
    let distinct: HashSet<&Bytes> = first.iter().map(|(_, value)| value).collect();
    assert_eq!(distinct.len(), first.len(), "no record is duplicated");
    // Nothing acknowledged is lost or moved.
    let stored: BTreeMap<i64, &Bytes> = first.iter().map(|(offset, value)| (*offset, value)).collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(offset, value)| stored.get(offset).map(|v| v.as_ref()) != Some(value.as_bytes()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost or moved: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    // Every later leader agrees with the first below the shorter history.
    for (i, later) in histories.iter().enumerate().skip(1) {
        let common = first.len().min(later.len());
        assert!(later.len() >= acked.len().min(first.len()), "leader {i} has every acknowledged record");
        assert_eq!(&first[..common], &later[..common], "replica histories agree (leader {i})");
    }
}

#[test]
fn an_isr_below_min_insync_replicas_refuses_acks_all_and_appends_nothing() {
    let mut cluster = Cluster::start("cluster-min-isr");
    let runtime = runtime();
    runtime.block_on(async {
        let client = Client::connect(client_config(cluster.bootstrap())).await.expect("connect");
        Admin::new(client.clone())
            .create_topic(TOPIC, 1, 3, &[("min.insync.replicas".into(), "3".into())])
            .await
            .expect("create");
        let state = wait_for_full_isr(&client, Duration::from_secs(20)).await;
        let producer = |acks| {
            Producer::new(
                client.clone(),
                ProducerConfig { acks, delivery_timeout_ms: 3_000, linger_ms: 0, ..Default::default() },
            )
            .expect("producer")
        };
        let all = producer(Acks::All);
        all.send(ProducerRecord::new(TOPIC, "with a full ISR")).await.unwrap().await.expect("acknowledged");
        // A follower dies: the controller fences it and takes it out of the
        // ISR, which is then smaller than min.insync.replicas.
        let follower = *state.replicas.iter().find(|node| **node != state.leader).unwrap();
        let index = (follower - 1) as usize;
        cluster.brokers[index].child.kill().unwrap();
        let _ = cluster.brokers[index].child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        while partition_state(&client).await.is_none_or(|s| s.isr.len() == 3) {
            assert!(Instant::now() < deadline, "the ISR did not shrink");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tp = TopicPartition { topic: TOPIC.into(), partition: 0 };
        let consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        let end_before = consumer.end_offsets(std::slice::from_ref(&tp)).await.unwrap()[0].1;
        // The broker's answer itself, without the producer's retries.
        let mut batch = spate_format::batch::BatchBuilder::new(0);
        batch.push(0, None, Some(b"refused"), &[]);
        let batch = batch.build().freeze();
        let refused = client.produce_batches(&tp, &batch, Acks::All, Duration::from_secs(2)).await;
        let err = refused.expect_err("acks=all must not be acknowledged below min.insync.replicas");
        assert_eq!(err.code(), Some(ErrorCode::NotEnoughReplicas), "{err}");
        // A producer retries that until its delivery timeout, then fails.
        let retried = all.send(ProducerRecord::new(TOPIC, "refused too")).await.unwrap().await;
        assert!(retried.is_err(), "not acknowledged: {retried:?}");
        // acks=1 is still served by the leader alone.
        let one = producer(Acks::Leader);
        let meta = one.send(ProducerRecord::new(TOPIC, "acks=1")).await.unwrap().await.expect("acks=1 acknowledged");
        assert_eq!(meta.offset, end_before, "the refused record took no offset");
    });
}
