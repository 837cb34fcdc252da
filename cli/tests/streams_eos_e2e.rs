//! Spate Streams exactly-once (`processing.guarantee=exactly_once_v2`,
//! issue 18) on a real `spate serve`: the wordcount example runs in two
//! processes, one is killed with kill -9 mid-stream (its transaction left
//! open), and the counts a read_committed reader sees end exactly at the
//! input's: nothing counted twice, nothing lost. At least once, the same
//! kill counts hundreds of words twice (`streams_e2e.rs`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use spate_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, GroupAdmin, IsolationLevel, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};

const PARTITIONS: i32 = 4;
const LINES: usize = 3_000;
/// The first lines, before the kill; the rest trickle in around it.
const LINES_BEFORE: usize = 300;
/// Short, so that the killed instance's partitions move within seconds.
const SESSION_TIMEOUT_MS: u64 = 2_000;

/// The wordcount example's binary, built by this test (cargo's own lock
/// keeps a concurrent build of it safe; it is quick when up to date).
fn wordcount_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "spate-streams", "--example", "wordcount"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the wordcount example failed");
    profile_dir.join("examples").join("wordcount")
}

/// A wordcount process, killed (kill -9) when dropped.
struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_exactly_once(binary: &Path, broker: &Broker, state_dir: &Path) -> Instance {
    let child = Command::new(binary)
        .env("SPATE_BROKERS", broker.addr())
        .env("PROCESSING_GUARANTEE", "exactly_once_v2")
        .env("COMMIT_INTERVAL_MS", "200")
        .env("SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string())
        .env("STATE_DIR", state_dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the wordcount example");
    Instance(child)
}

fn line(index: usize) -> String {
    format!("w{} W{} w{} w{}", index % 7, index % 11, index % 13, index % 3)
}

/// Produces `lines` in chunks of `chunk`, `pause` apart, so that input
/// keeps arriving (and being processed, uncommitted) around a kill.
async fn produce_lines(client: &Client, lines: std::ops::Range<usize>, chunk: usize, pause: Duration) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for index in lines {
        deliveries.push(producer.send(ProducerRecord::new("text-input", line(index))).await.expect("send"));
        if (index + 1) % chunk == 0 {
            producer.flush().await.expect("flush");
            tokio::time::sleep(pause).await;
        }
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("close");
}

/// The last committed count per word in `word-counts`, read
/// read_committed for at most `wait` (an open transaction holds the reader
/// at its start).
async fn committed_counts(client: &Client, wait: Duration) -> BTreeMap<String, i64> {
    let config = ConsumerConfig { isolation_level: IsolationLevel::ReadCommitted, ..Default::default() };
    let mut consumer = Consumer::new(client.clone(), config).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new("word-counts", p)).collect();
    let ends = consumer.end_offsets(&partitions).await.expect("end offsets");
    let deadline = Instant::now() + wait;
    let mut counts = BTreeMap::new();
    for (tp, end) in ends {
        consumer.assign(vec![tp.clone()]);
        let mut position = consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
        while position < end && Instant::now() < deadline {
            for record in consumer.poll(Duration::from_millis(200)).await.expect("poll") {
                let word = String::from_utf8(record.key.expect("a key").to_vec()).expect("a UTF-8 word");
                let bytes: [u8; 8] = record.value.as_deref().expect("a count").try_into().expect("8 bytes");
                counts.insert(word, i64::from_be_bytes(bytes));
            }
            position = consumer.position(&tp).unwrap_or(end);
        }
    }
    counts
}

#[test]
fn exactly_once_wordcount_with_one_of_two_instances_killed_with_kill_9_counts_every_word_exactly() {
    let binary = wordcount_binary();
    let dir = data_dir("streams_eos_wordcount");
    let broker = Broker::start(&dir, 1);
    let runtime = runtime();
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let admin = Admin::new(client.clone());
    for topic in ["text-input", "word-counts"] {
        runtime.block_on(admin.create_topic(topic, PARTITIONS, 1, &[])).expect("create topic");
    }
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for index in 0..LINES {
        for word in line(index).to_lowercase().split_whitespace() {
            *expected.entry(word.to_string()).or_default() += 1;
        }
    }

    let state = data_dir("streams_eos_wordcount_state");
    let mut doomed = spawn_exactly_once(&binary, &broker, &state.join("doomed"));
    let mut survivor = spawn_exactly_once(&binary, &broker, &state.join("survivor"));
    let groups = GroupAdmin::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let group = runtime.block_on(groups.describe_group("streams-wordcount")).ok();
        let busy = group.is_some_and(|g| g.members.len() == 2 && g.members.iter().all(|m| !m.assignment.is_empty()));
        if busy {
            break;
        }
        assert!(Instant::now() < deadline, "the two instances did not both get partitions");
        std::thread::sleep(Duration::from_millis(100));
    }

    runtime.block_on(produce_lines(&client, 0..LINES_BEFORE, LINES_BEFORE, Duration::ZERO));
    let deadline = Instant::now() + Duration::from_secs(15);
    while runtime.block_on(committed_counts(&client, Duration::from_secs(2))).is_empty() {
        assert!(Instant::now() < deadline, "no committed counts came out before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The rest trickles in over ~3 s; the kill lands in the middle of it,
    // with the doomed instance's latest work processed but not committed
    // (at least once, that work is counted again by the survivor).
    let trickle = {
        let client = client.clone();
        runtime.spawn(async move { produce_lines(&client, LINES_BEFORE..LINES, 20, Duration::from_millis(20)).await })
    };
    std::thread::sleep(Duration::from_millis(1_200));
    doomed.0.kill().expect("kill -9 one instance");
    let _ = doomed.0.wait();
    runtime.block_on(trickle).expect("the input is produced");

    // The survivor takes the partitions (session timeout), waits for the
    // dead instance's transaction to be aborted (transaction timeout,
    // 10 s), rebuilds the counts from the committed changelog and reads
    // the input from the committed offsets.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = runtime.block_on(committed_counts(&client, Duration::from_secs(3)));
        let over: Vec<String> = counts
            .iter()
            .filter(|(word, count)| **count > expected.get(*word).copied().unwrap_or(0))
            .map(|(word, count)| format!("{word}: {count} > {}", expected.get(word).copied().unwrap_or(0)))
            .collect();
        assert!(over.is_empty(), "a word counted more than once under exactly-once: {over:?}");
        if counts == expected {
            break;
        }
        assert!(Instant::now() < deadline, "counts never reached the input's: {counts:?} vs {expected:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(survivor.0.try_wait().expect("try_wait").is_none(), "the surviving instance exited");
    drop(survivor);
    broker.stop();
}
