//! Consumer groups on three broker processes (issue 6): `__consumer_offsets`
//! replicates like any topic, so when the broker leading a group's
//! partition of it is killed with kill -9, another replica becomes the
//! group's coordinator with every acknowledged commit; a member keeps
//! consuming across the failover (re-delivering only what it had not
//! committed yet), and a later member of the group resumes exactly at the
//! committed offsets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use spate_client::*;

const TOPIC: &str = "events";
const PARTITIONS: i32 = 3;
const GROUP: &str = "survivors";
fn client_config(bootstrap: Vec<String>) -> ClientConfig {
    ClientConfig { bootstrap, request_timeout_ms: 20_000, ..Default::default() }
}

async fn partitions_of(client: &Client, topic: &str) -> Vec<PartitionInfo> {
    let Ok(metadata) = client.metadata(Some(&[topic.to_string()])).await else { return Vec::new() };
    let mut partitions: Vec<PartitionInfo> =
        metadata.topics.into_iter().filter(|t| t.name == topic).flat_map(|t| t.partitions).collect();
    partitions.sort_by_key(|p| p.partition);
    partitions
}

/// Waits until every partition of `topic` has a leader and three in-sync
/// replicas.
async fn wait_fully_replicated(client: &Client, topic: &str, timeout: Duration) -> Vec<PartitionInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let partitions = partitions_of(client, topic).await;
        if !partitions.is_empty()
            && partitions.iter().all(|p| p.leader > 0 && p.replicas.len() == 3 && p.isr.len() == 3)
        {
            return partitions;
        }
        assert!(Instant::now() < deadline, "{topic} is not fully replicated: {partitions:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The group's partition of `__consumer_offsets`: (partition, its state).
async fn coordinator_partition(client: &Client) -> PartitionInfo {
    let partitions = partitions_of(client, CONSUMER_OFFSETS_TOPIC).await;
    let index = spate_flatbuf::group_partition(GROUP, partitions.len() as u32) as usize;
    partitions[index].clone()
}

/// An acks=all producer writing numbered values until stopped, recording
/// what the cluster acknowledged.
struct Production {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Production {
    fn start(runtime: &tokio::runtime::Runtime, bootstrap: Vec<String>, prefix: &'static str) -> Production {
        let (acked, stop) = (Arc::<Mutex<Vec<String>>>::default(), Arc::new(AtomicBool::new(false)));
        let (acked_w, stop_w) = (acked.clone(), stop.clone());
        let task = runtime.spawn(async move {
            let client = Client::connect(client_config(bootstrap)).await.expect("connect");
            let config = ProducerConfig { acks: Acks::All, delivery_timeout_ms: 30_000, ..Default::default() };
            let producer = Producer::new(client, config).expect("producer");
            let mut i = 0usize;
            while !stop_w.load(Ordering::Relaxed) {
                let value = format!("{prefix}-{i}");
                let record = ProducerRecord::new(TOPIC, value.clone()).with_key(value.clone());
                let Ok(delivery) = producer.send(record).await else { break };
                let acked = acked_w.clone();
                tokio::spawn(async move {
                    if delivery.await.is_ok() {
                        acked.lock().unwrap().push(value);
                    }
                });
                i += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            let _ = producer.flush().await;
        });
        Production { acked, stop, task }
    }

    fn finish(self, runtime: &tokio::runtime::Runtime) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(40), self.task).await;
        });
        // Deliveries still in flight land in their own tasks.
        std::thread::sleep(Duration::from_millis(200));
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// A group member polling (and auto-committing every 100 ms) in a task:
/// every record it is handed, as (partition, offset, value). A failing
/// poll fails the task: the member must ride out the failover.
struct Member {
    seen: Arc<Mutex<Vec<(i32, i64, String)>>>,
    failure: Arc<Mutex<Option<ClientError>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
}

impl Member {
    fn start(runtime: &tokio::runtime::Runtime, bootstrap: Vec<String>) -> Member {
        let (seen, stop) = (Arc::<Mutex<Vec<(i32, i64, String)>>>::default(), Arc::new(AtomicBool::new(false)));
        let failure = Arc::<Mutex<Option<ClientError>>>::default();
        let (seen_w, stop_w, failure_w) = (seen.clone(), stop.clone(), failure.clone());
        let run = async move {
            let client = Client::connect(client_config(bootstrap)).await?;
            let config = GroupConfig {
                group_id: GROUP.to_string(),
                session_timeout_ms: 3_000,
                auto_commit: true,
                auto_commit_interval_ms: 100,
                auto_offset_reset: AutoOffsetReset::Earliest,
                ..Default::default()
            };
            let mut consumer = GroupConsumer::new(client, config)?;
            consumer.subscribe(&[TOPIC.to_string()]).await?;
            while !stop_w.load(Ordering::Relaxed) {
                for record in consumer.poll(Duration::from_millis(100)).await? {
                    let value = String::from_utf8_lossy(&record.value.unwrap_or_default()).into_owned();
                    seen_w.lock().unwrap().push((record.partition, record.offset, value));
                }
            }
            // Commits the positions after everything handed out, and leaves.
            consumer.close().await
        };
        let task = runtime.spawn(async move {
            let result = run.await;
            if let Err(error) = &result {
                *failure_w.lock().unwrap() = Some(error.clone());
            }
            result
        });
        Member { seen, failure, stop, task }
    }

    fn seen(&self) -> Vec<(i32, i64, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[(i32, i64, String)]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen()) {
            if self.task.is_finished() {
                panic!("the member stopped while waiting until {what}: {:?}", self.failure.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn close(self, runtime: &tokio::runtime::Runtime) -> Vec<(i32, i64, String)> {
        self.stop.store(true, Ordering::Relaxed);
        runtime.block_on(self.task).expect("member task").expect("the member polled and closed without an error");
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The group's committed offsets per partition of `TOPIC`, as the
/// coordinator describes them (retried while it moves or loads).
fn committed(runtime: &tokio::runtime::Runtime, admin: &GroupAdmin) -> BTreeMap<i32, i64> {
    let described = runtime.block_on(admin.describe_group(GROUP)).expect("the group is described");
    described
        .offsets
        .iter()
        .filter(|o| o.tp.topic == TOPIC)
        .filter_map(|o| o.committed_offset.map(|offset| (o.tp.partition, offset)))
        .collect()
}

#[test]
fn committed_offsets_survive_kill9_of_the_coordinator_and_members_consume_on() {
    let mut cluster = Cluster::start("groups-failover");
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(cluster.bootstrap()))).expect("connect");
    runtime.block_on(async {
        let offsets = wait_fully_replicated(&client, CONSUMER_OFFSETS_TOPIC, Duration::from_secs(40)).await;
        assert!(offsets.len() > 1, "{CONSUMER_OFFSETS_TOPIC}: {offsets:?}");
        Admin::new(client.clone())
            .create_topic(TOPIC, PARTITIONS, 3, &[("min.insync.replicas".into(), "2".into())])
            .await
            .expect("create");
        wait_fully_replicated(&client, TOPIC, Duration::from_secs(20)).await;
    });
    let admin = GroupAdmin::new(client.clone());
    let production = Production::start(&runtime, cluster.bootstrap(), "first");
    let member = Member::start(&runtime, cluster.bootstrap());
    member.wait_for("the member has consumed 300 records", Duration::from_secs(30), |seen| seen.len() >= 300);
    // Acknowledged commits so far: a lower bound of what must survive.
    let before = committed(&runtime, &admin);
    assert_eq!(before.len(), PARTITIONS as usize, "every partition has a commit: {before:?}");

    // kill -9 the coordinator's broker: another in-sync replica of the
    // group's partition takes over and loads the group from its log.
    let coordinator = runtime.block_on(coordinator_partition(&client));
    cluster.kill9(coordinator.leader);
    let seen_at_kill = member.seen().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = loop {
        let now = runtime.block_on(coordinator_partition(&client));
        if now.leader > 0 && now.leader != coordinator.leader {
            break now;
        }
        assert!(Instant::now() < deadline, "no new leader for the group's partition: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(next.leader_epoch > coordinator.leader_epoch);
    let after = committed(&runtime, &admin);
    for (partition, offset) in &before {
        assert!(
            after.get(partition).is_some_and(|now| now >= offset),
            "partition {partition}: committed {offset} before the failover, {:?} after",
            after.get(partition)
        );
    }
    // The member consumes on, through the new coordinator.
    member.wait_for("the member consumes after the failover", Duration::from_secs(30), |seen| {
        seen.len() >= seen_at_kill + 300
    });
    let acked = production.finish(&runtime);
    member.wait_for("the member has every acknowledged record", Duration::from_secs(30), |seen| {
        let values: HashSet<&str> = seen.iter().map(|(_, _, v)| v.as_str()).collect();
        acked.iter().all(|v| values.contains(v.as_str()))
    });
    // The killed broker comes back, as a follower of the group's partition.
    cluster.restart(coordinator.leader);
    let seen = member.close(&runtime);
    // At least once: re-delivered only at or above what was committed
    // before the failover (the member rejoined and resumed from the
    // coordinator's committed offsets).
    let mut delivered: HashSet<(i32, i64)> = HashSet::new();
    let mut redelivered = 0usize;
    for (partition, offset, _) in &seen {
        if !delivered.insert((*partition, *offset)) {
            redelivered += 1;
            assert!(
                *offset >= before[partition],
                "{partition}/{offset} re-delivered below the offset committed before the failover ({})",
                before[partition]
            );
        }
    }

    eprintln!(
        "coordinator {} (epoch {}) killed, then {} (epoch {}); committed before {before:?}, after {after:?}; \
         {} records consumed, {redelivered} re-delivered",
        coordinator.leader,
        coordinator.leader_epoch,
        next.leader,
        next.leader_epoch,
        seen.len()
    );

    // A new member resumes exactly where the group's commits say.
    let last = committed(&runtime, &admin);
    let ends: BTreeMap<i32, i64> = runtime.block_on(async {
        let consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        let tps: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(TOPIC, p)).collect();
        consumer
            .end_offsets(&tps)
            .await
            .expect("end offsets")
            .into_iter()
            .map(|(tp, end)| (tp.partition, end))
            .collect()
    });
    assert_eq!(last, ends, "the closed member committed everything it consumed");
    let production = Production::start(&runtime, cluster.bootstrap(), "second");
    let member = Member::start(&runtime, cluster.bootstrap());
    member.wait_for("the new member consumes", Duration::from_secs(30), |seen| seen.len() >= 100);
    let acked = production.finish(&runtime);
    member.wait_for("the new member has every new record", Duration::from_secs(30), |seen| seen.len() >= acked.len());
    let seen = member.close(&runtime);
    for (partition, offset, value) in &seen {
        assert!(*offset >= last[partition], "{partition}/{offset} ({value}) is below the committed offset");
        assert!(value.starts_with("second-"), "{partition}/{offset}: {value} was consumed and committed before");
    }
    let values: HashSet<&str> = seen.iter().map(|(_, _, v)| v.as_str()).collect();
    assert!(acked.iter().all(|v| values.contains(v.as_str())), "every new record consumed");
}

/// An OffsetFetch of the group sent straight to one broker over the raw
/// protocol (a client would follow the metadata elsewhere): its error.
fn offset_fetch_error_at(addr: &str) -> ErrorCode {
    use spate_flatbuf::flatbuffers::FlatBufferBuilder;
    use spate_flatbuf::proto::{Body, Envelope, EnvelopeArgs, OffsetFetchRequest, OffsetFetchRequestArgs};
    use std::io::{Read, Write};
    let mut builder = FlatBufferBuilder::new();
    let group = builder.create_string(GROUP);
    let body =
        OffsetFetchRequest::create(&mut builder, &OffsetFetchRequestArgs { group_id: Some(group), topics: None });
    let envelope = Envelope::create(
        &mut builder,
        &EnvelopeArgs {
            request_id: 1,
            version: 1,
            body_type: Body::OffsetFetchRequest,
            body: Some(body.as_union_value()),
        },
    );
    builder.finish(envelope, None);
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&spate_flatbuf::encode_frame(&builder, &[])).unwrap();
    let decoder = spate_flatbuf::FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(frame) = decoder.decode(&mut buf).expect("a good frame") {
            let envelope = frame.read().expect("verified");
            return envelope.body_as_offset_fetch_response().expect("an offset fetch response").error();
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "the broker closed the connection");
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// A coordinator that pauses (SIGSTOP: no heartbeats, no answers) is
/// replaced; when it resumes and learns that it no longer leads the
/// group's partition it drops the group, answering NotLeaderOrFollower
/// instead of its stale state, while the group goes on at the new
/// coordinator with every acknowledged commit.
#[test]
fn a_paused_coordinator_is_replaced_and_drops_the_group_when_it_resumes() {
    let cluster = Cluster::start("groups-pause");
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(cluster.bootstrap()))).expect("connect");
    runtime.block_on(async {
        wait_fully_replicated(&client, CONSUMER_OFFSETS_TOPIC, Duration::from_secs(40)).await;
        Admin::new(client.clone())
            .create_topic(TOPIC, PARTITIONS, 3, &[("min.insync.replicas".into(), "2".into())])
            .await
            .expect("create");
        wait_fully_replicated(&client, TOPIC, Duration::from_secs(20)).await;
    });
    let admin = GroupAdmin::new(client.clone());
    let production = Production::start(&runtime, cluster.bootstrap(), "first");
    let member = Member::start(&runtime, cluster.bootstrap());
    member.wait_for("the member has consumed 300 records", Duration::from_secs(30), |seen| seen.len() >= 300);
    let before = committed(&runtime, &admin);

    let coordinator = runtime.block_on(coordinator_partition(&client));
    let paused = &cluster.brokers[(coordinator.leader - 1) as usize];
    let (pid, paused_addr) = (paused.child.id().to_string(), paused.addr());
    let signal = |name: &str| {
        let status = std::process::Command::new("kill").arg(format!("-{name}")).arg(&pid).status().unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    };
    assert_eq!(offset_fetch_error_at(&paused_addr), ErrorCode::None, "the coordinator serves the group");
    signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = runtime.block_on(coordinator_partition(&client));
        if now.leader > 0 && now.leader != coordinator.leader {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader while {} is paused", coordinator.leader);
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen_at_pause = member.seen().len();
    signal("CONT");
    // Once it has caught up with the metadata, the old coordinator refuses.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let error = offset_fetch_error_at(&paused_addr);
        if error == ErrorCode::NotLeaderOrFollower {
            break;
        }
        assert!(Instant::now() < deadline, "the resumed broker still answers for the group: {error:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = committed(&runtime, &admin);
    for (partition, offset) in &before {
        assert!(
            after.get(partition).is_some_and(|now| now >= offset),
            "partition {partition}: {before:?} -> {after:?}"
        );
    }
    member.wait_for("the member consumes after the failover", Duration::from_secs(30), |seen| {
        seen.len() >= seen_at_pause + 300
    });
    let acked = production.finish(&runtime);
    member.wait_for("the member has every acknowledged record", Duration::from_secs(30), |seen| {
        let values: HashSet<&str> = seen.iter().map(|(_, _, v)| v.as_str()).collect();
        acked.iter().all(|v| values.contains(v.as_str()))
    });
    member.close(&runtime);
}
