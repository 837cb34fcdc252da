//! Spate Streams at least once on a real broker (issue 18): the wordcount
//! example (`streams/examples/wordcount.rs`) runs as two processes in one
//! application; input is produced while one of them is killed with
//! kill -9. The survivor takes over its partitions (after the session
//! timeout), restores the counts from the changelog and processes what was
//! not committed; no final count may be short of the exact count. The
//! wordcount with persistent stores also restarts from its checkpoints:
//! after a clean close it reads no changelog record, after kill -9 only the
//! tail after the last commit. The windowed_clicks example's window
//! store persists too: a window's count survives a clean restart that
//! restores nothing (the store file is at its checkpoint) and goes on.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use spate_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, GroupAdmin, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};

const PARTITIONS: i32 = 4;
const LINES: usize = 600;
/// Short, so that the killed instance's partitions move within seconds.
const SESSION_TIMEOUT_MS: u64 = 2_000;

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        let mtime = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(mtime);
    }
    newest
}

/// The wordcount example's binary (see `example_binary`).
fn wordcount_binary() -> PathBuf {
    example_binary("wordcount")
}

/// An example's binary, next to this test's profile directory; built
/// first if it is missing or older than its sources (a workspace test
/// build has built it already).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let binary = profile_dir.join("examples").join(name);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = ["streams/src", "streams/examples", "client/src"].map(|dir| newest_mtime(&root.join(dir)));
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    if built.is_none_or(|built| sources.iter().any(|source| *source > built)) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-p", "spate-streams", "--example", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the {name} example failed");
    }
    binary
}

/// A wordcount process, killed (kill -9) when dropped, so that a failed
/// assertion leaves no process behind.
struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a wordcount process with its own `state.dir` (two instances on
/// one machine must not share one: a store file is locked by its owner).
/// With `log`, its output and info lines (restores) go to that file.
fn spawn_wordcount(binary: &Path, broker: &Broker, state_dir: &Path, log: Option<&Path>) -> Instance {
    spawn_wordcount_with(binary, broker, state_dir, log, &[])
}

/// As `spawn_wordcount`, with environment overrides (`COMMIT_INTERVAL_MS`,
/// `CACHE_MAX_BYTES`).
fn spawn_wordcount_with(
    binary: &Path,
    broker: &Broker,
    state_dir: &Path,
    log: Option<&Path>,
    overrides: &[(&str, &str)],
) -> Instance {
    let mut command = Command::new(binary);
    command
        .env("SPATE_BROKERS", broker.addr())
        .env("COMMIT_INTERVAL_MS", "200")
        .env("SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string())
        .env("STATE_DIR", state_dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null());
    match log {
        Some(log) => {
            // tracing's fmt subscriber writes to stdout.
            let file = std::fs::File::create(log).expect("create the log file");
            let copy = file.try_clone().expect("clone the log file");
            command.env("RUST_LOG", "warn,spate_streams=info").stdout(file).stderr(copy)
        }
        None => command.env("RUST_LOG", "warn").stderr(Stdio::inherit()),
    };
    command.envs(overrides.iter().copied());
    Instance(command.spawn().expect("start the wordcount example"))
}

fn line(index: usize) -> String {
    format!("w{} W{} w{} w{}", index % 7, index % 11, index % 13, index % 3)
}

async fn produce_lines(client: &Client, lines: std::ops::Range<usize>) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for index in lines {
        deliveries.push(producer.send(ProducerRecord::new("text-input", line(index))).await.expect("send"));
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    producer.close().await.expect("close");
}

/// The last count per word in `word-counts` (a word's updates are in one
/// partition, in order).
async fn last_counts(client: &Client) -> BTreeMap<String, i64> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new("word-counts", p)).collect();
    let ends = consumer.end_offsets(&partitions).await.expect("end offsets");
    let mut counts = BTreeMap::new();
    for (tp, end) in ends {
        // One partition at a time: a poll fetches every assigned partition.
        consumer.assign(vec![tp.clone()]);
        let mut position = consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
        while position < end {
            for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
                let word = String::from_utf8(record.key.expect("a key").to_vec()).expect("a UTF-8 word");
                let bytes: [u8; 8] = record.value.as_deref().expect("a count").try_into().expect("8 bytes");
                counts.insert(word, i64::from_be_bytes(bytes));
            }
            position = consumer.position(&tp).unwrap_or(end);
        }
    }
    counts
}

fn short_words(expected: &BTreeMap<String, i64>, counts: &BTreeMap<String, i64>) -> Vec<String> {
    expected
        .iter()
        .filter(|(word, count)| counts.get(*word).copied().unwrap_or(0) < **count)
        .map(|(word, count)| format!("{word}: {} < {count}", counts.get(word).copied().unwrap_or(0)))
        .collect()
}

#[test]
fn wordcount_in_two_processes_one_killed_with_kill_9_never_loses_a_count() {
    let binary = wordcount_binary();
    let dir = data_dir("streams_wordcount");
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

    let state = data_dir("streams_wordcount_state");
    let mut doomed = spawn_wordcount(&binary, &broker, &state.join("doomed"), None);
    let mut survivor = spawn_wordcount(&binary, &broker, &state.join("survivor"), None);
    // Both members own partitions before any input, so that the kill takes
    // work away from one that was doing it.
    let groups = GroupAdmin::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let group = runtime.block_on(groups.describe_group("streams-wordcount")).ok();
        let busy = group.is_some_and(|g| g.members.len() == 2 && g.members.iter().all(|m| !m.assignment.is_empty()));
        if busy {
            break;
        }
        assert!(Instant::now() < deadline, "the two instances did not both get partitions");
        std::thread::sleep(Duration::from_millis(100));
    }

    runtime.block_on(produce_lines(&client, 0..LINES / 2));
    // Some of it processed (outputs appear), some maybe not committed: kill.
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.block_on(last_counts(&client)).is_empty() {
        assert!(Instant::now() < deadline, "no counts came out before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    doomed.0.kill().expect("kill -9 one instance");
    let _ = doomed.0.wait();
    runtime.block_on(produce_lines(&client, LINES / 2..LINES));

    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let counts = runtime.block_on(last_counts(&client));
        let short = short_words(&expected, &counts);
        if short.is_empty() {
            let extra: i64 = counts.iter().map(|(word, count)| count - expected.get(word).copied().unwrap_or(0)).sum();
            eprintln!("every count reached ({} words; {extra} counted more than once)", expected.len());
            break;
        }
        assert!(Instant::now() < deadline, "counts short of the input: {short:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The survivor is still running: nothing stopped it.
    assert!(survivor.0.try_wait().expect("try_wait").is_none(), "the surviving instance exited");
}

const CHANGELOG: &str = "streams-wordcount-counts-store-changelog";

fn expected_counts(lines: std::ops::Range<usize>) -> BTreeMap<String, i64> {
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for index in lines {
        for word in line(index).to_lowercase().split_whitespace() {
            *expected.entry(word.to_string()).or_default() += 1;
        }
    }
    expected
}

/// Waits until every word's last count is at least `expected`'s; returns
/// the counts then.
fn wait_for_counts(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    expected: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counts = runtime.block_on(last_counts(client));
        let short = short_words(expected, &counts);
        if short.is_empty() {
            return counts;
        }
        assert!(Instant::now() < deadline, "counts short of the input: {short:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The restores a wordcount process logged: (partition, from offset,
/// records read), once it has logged one per changelog partition.
fn restores_logged(log: &Path) -> Vec<(i32, i64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let field = |line: &str, name: &str| -> Option<i64> {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        let restores: Vec<(i32, i64, u64)> = text
            .lines()
            .filter(|line| line.contains("store restored from its changelog"))
            .filter_map(|line| {
                let partition = i32::try_from(field(line, "partition")?).ok()?;
                let records = u64::try_from(field(line, "restored")?).ok()?;
                Some((partition, field(line, "from_offset")?, records))
            })
            .collect();
        if restores.len() >= PARTITIONS as usize {
            return restores;
        }
        assert!(Instant::now() < deadline, "no restore of every partition logged: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn changelog_ends(runtime: &tokio::runtime::Runtime, broker: &Broker) -> BTreeMap<i32, i64> {
    // A new client: the application made the changelog after the test's
    // client read its metadata.
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let consumer = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(CHANGELOG, p)).collect();
    let ends = runtime.block_on(consumer.end_offsets(&partitions)).expect("end offsets");
    ends.into_iter().map(|(tp, end)| (tp.partition, end)).collect()
}

#[test]
fn a_persistent_wordcount_restores_only_the_changelog_after_its_checkpoint_and_kill_9_loses_no_count() {
    let binary = wordcount_binary();
    let dir = data_dir("streams_wordcount_persistent");
    let state = data_dir("streams_wordcount_persistent_state");
    let broker = Broker::start(&dir, 1);
    let runtime = runtime();
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let admin = Admin::new(client.clone());
    for topic in ["text-input", "word-counts"] {
        runtime.block_on(admin.create_topic(topic, PARTITIONS, 1, &[])).expect("create topic");
    }

    // First run: counts exact, then a clean close (SIGINT), which commits
    // and writes every task's checkpoint at the changelog's end.
    let mut first = spawn_wordcount(&binary, &broker, &state, Some(&state.join("first.log")));
    runtime.block_on(produce_lines(&client, 0..200));
    let counts = wait_for_counts(&runtime, &client, &expected_counts(0..200));
    assert_eq!(counts, expected_counts(0..200), "no crash, so no count twice");
    let interrupted = Command::new("kill").args(["-INT", &first.0.id().to_string()]).status().expect("kill -INT");
    assert!(interrupted.success());
    let exit = first.0.wait().expect("wait for the first run");
    assert!(exit.success(), "a clean close exits 0: {exit:?}");
    let ends = changelog_ends(&runtime, &broker);
    let logged: i64 = ends.values().sum();
    assert!(logged > 0, "the counts were logged");
    // 200 lines of 4 words are 800 count updates, each forwarded; the
    // record cache writes a word's changelog once per commit at most.
    assert!(logged < 800, "the cache cut the changelog writes: {logged} of 800 updates logged");
    for (partition, end) in &ends {
        // The count is sub-topology 1 (after the repartition topic).
        let checkpoint = std::fs::read_to_string(state.join(format!("streams-wordcount/1_{partition}/.checkpoint")))
            .expect("a checkpoint after a clean close");
        assert_eq!(checkpoint, format!("0\n1\n{CHANGELOG} {partition} {end}\n"));
    }

    // Second run on the same state: restores nothing (the stores are on
    // disk up to the checkpoints), and counts on from where they were. No
    // cache, and commits 3 s apart: every count goes to the changelog as
    // it changes, so that a kill between two commits leaves a tail after
    // the checkpoint.
    let second_log = state.join("second.log");
    let overrides = [("COMMIT_INTERVAL_MS", "3000"), ("CACHE_MAX_BYTES", "0")];
    let mut second = spawn_wordcount_with(&binary, &broker, &state, Some(&second_log), &overrides);
    let restores = restores_logged(&second_log);
    for (partition, from_offset, records) in &restores {
        assert_eq!(Some(from_offset), ends.get(partition), "restore starts at the checkpoint");
        assert_eq!(*records, 0, "partition {partition}: nothing after the checkpoint to read");
    }
    runtime.block_on(produce_lines(&client, 200..400));
    let counts = wait_for_counts(&runtime, &client, &expected_counts(0..400));
    assert_eq!(counts, expected_counts(0..400), "the persisted counts went on, none lost or doubled");

    // Killed with kill -9 mid-stream, after a commit (its checkpoint
    // written again after the delete on open) and before the next one: the
    // next run restores from that checkpoint (a tail, not the whole
    // changelog) and no count is ever short.
    let checkpoint = state.join("streams-wordcount/1_0/.checkpoint");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !checkpoint.exists() {
        assert!(Instant::now() < deadline, "no commit wrote a checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.block_on(produce_lines(&client, 400..500));
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.block_on(last_counts(&client)) == counts {
        assert!(Instant::now() < deadline, "no new counts before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    second.0.kill().expect("kill -9");
    let _ = second.0.wait();
    let ends_at_kill = changelog_ends(&runtime, &broker);
    eprintln!("changelog ends: {ends:?} after a clean close, {ends_at_kill:?} at the kill");
    runtime.block_on(produce_lines(&client, 500..600));
    let third_log = state.join("third.log");
    let mut third = spawn_wordcount(&binary, &broker, &state, Some(&third_log));
    let restores = restores_logged(&third_log);
    let read: u64 = restores.iter().map(|(_, _, records)| records).sum();
    let logged: i64 = ends_at_kill.values().sum();
    eprintln!("after kill -9: {read} of {logged} changelog records restored");
    assert!(restores.iter().any(|(_, from_offset, _)| *from_offset > 0), "some restore started at a checkpoint");
    assert!(read > 0 && (read as i64) < logged, "only the tail was read: {read} of {logged}");
    wait_for_counts(&runtime, &client, &expected_counts(0..600));
    assert!(third.0.try_wait().expect("try_wait").is_none(), "the third run exited");
    // The disk is shared: a passing run leaves no broker data or stores.
    drop((third, broker));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
}

/// amounts (i64 values) -> scaled (x10), with the given handler.
fn scaling_app(
    broker: &Broker,
    application_id: &str,
    handler: &str,
    dead_letter_topic: &str,
) -> spate_streams::KafkaStreams {
    use spate_streams::{Consumed, KafkaStreams, Produced, Serdes, StreamsBuilder, StreamsConfig};
    let builder = StreamsBuilder::new();
    builder
        .stream("amounts", Consumed::with(Serdes::string(), Serdes::i64()))
        .map_values(|amount| amount * 10)
        .to(&format!("scaled-{application_id}"), Produced::with(Serdes::string(), Serdes::i64()));
    let config = StreamsConfig::from_properties(&[
        ("application.id", application_id),
        ("bootstrap.servers", &broker.addr()),
        ("commit.interval.ms", "100"),
        ("session.timeout.ms", "2000"),
        ("default.deserialization.exception.handler", handler),
        ("errors.dead.letter.queue.topic.name", dead_letter_topic),
    ])
    .expect("config");
    KafkaStreams::new(builder.build().expect("topology"), config).expect("app")
}

async fn values_of(client: &Client, topic: &str) -> Vec<i64> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let tp = TopicPartition::new(topic, 0);
    consumer.assign(vec![tp.clone()]);
    let end = consumer.end_offsets(std::slice::from_ref(&tp)).await.expect("end")[0].1;
    let mut position = consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
    let mut values = Vec::new();
    while position < end {
        for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
            let bytes: [u8; 8] = record.value.as_deref().expect("value").try_into().expect("8 bytes");
            values.push(i64::from_be_bytes(bytes));
        }
        position = consumer.position(&tp).unwrap_or(end);
    }
    values
}

#[test]
fn a_bad_record_stops_log_and_fail_before_its_offset_and_is_skipped_by_log_and_continue() {
    let dir = data_dir("streams_bad_record");
    let broker = Broker::start(&dir, 1);
    let runtime = runtime();
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let admin = Admin::new(client.clone());
    for topic in ["amounts", "scaled-fail", "scaled-continue", "amounts-dlq"] {
        runtime.block_on(admin.create_topic(topic, 1, 1, &[])).expect("create topic");
    }
    // Offsets 0 and 2 are 8-byte longs; offset 1 (3 bytes) is not.
    runtime.block_on(async {
        let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
        for value in [&1i64.to_be_bytes()[..], b"bad", &2i64.to_be_bytes()[..]] {
            let record = ProducerRecord::new("amounts", bytes::Bytes::copy_from_slice(value)).with_key("k");
            producer.send(record).await.expect("send").await.expect("acked");
        }
        producer.close().await.expect("close");
    });
    let amounts_0 = TopicPartition::new("amounts", 0);
    let groups = GroupAdmin::new(client.clone());

    // LogAndFail (the default): the application stops with the record's
    // error, nothing panics, and the committed offset stays at the bad
    // record, so that a restart meets it again.
    let mut failing = scaling_app(&broker, "fail", "LogAndFailExceptionHandler", "");
    let error = runtime.block_on(async {
        failing.start().await.expect("start");
        tokio::time::timeout(Duration::from_secs(20), failing.wait()).await.expect("stops within 20 s")
    });
    assert!(
        matches!(error, Err(spate_streams::StreamsError::Deserialization { offset: 1, .. })),
        "stopped with {error:?}"
    );
    let committed = runtime.block_on(groups.committed_offsets("fail", None)).expect("committed offsets");
    assert_eq!(committed.get(&amounts_0), Some(&1), "committed {committed:?}");
    assert_eq!(runtime.block_on(values_of(&client, "scaled-fail")), vec![10]);

    // LogAndContinue: skipped, the rest processed, everything committed.
    let mut continuing = scaling_app(&broker, "continue", "LogAndContinueExceptionHandler", "amounts-dlq");
    runtime.block_on(continuing.start()).expect("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    while runtime.block_on(values_of(&client, "scaled-continue")).len() < 2 {
        assert!(Instant::now() < deadline, "the good records were not all processed");
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime.block_on(continuing.close()).expect("a clean close");
    assert_eq!(runtime.block_on(values_of(&client, "scaled-continue")), vec![10, 20]);
    let committed = runtime.block_on(groups.committed_offsets("continue", None)).expect("committed offsets");
    assert_eq!(committed.get(&amounts_0), Some(&3), "committed {committed:?}");
    // The skipped record went to the dead letter topic, bytes unchanged,
    // with where it came from in its headers.
    let dead = runtime.block_on(async {
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        let tp = TopicPartition::new("amounts-dlq", 0);
        consumer.assign(vec![tp.clone()]);
        consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
        consumer.poll(Duration::from_secs(5)).await.expect("poll")
    });
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"bad"[..]));
    let header = |name: &str| dead[0].headers.iter().find(|(key, _)| key == name).and_then(|(_, value)| value.clone());
    assert_eq!(header("__streams.errors.topic").as_deref(), Some(&b"amounts"[..]));
    assert_eq!(header("__streams.errors.offset").as_deref(), Some(&b"1"[..]));
}

async fn produce_keyed(client: &Client, topic: &str, records: &[(&str, &str)]) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    for (key, value) in records {
        let record = ProducerRecord::new(topic, value.to_string()).with_key(key.to_string());
        producer.send(record).await.expect("send").await.expect("acked");
    }
    producer.close().await.expect("close");
}

async fn text_values_of(client: &Client, topic: &str, partitions: i32) -> Vec<String> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let mut values = Vec::new();
    for partition in 0..partitions {
        let tp = TopicPartition::new(topic, partition);
        consumer.assign(vec![tp.clone()]);
        let end = consumer.end_offsets(std::slice::from_ref(&tp)).await.expect("end")[0].1;
        let mut position = consumer.seek(&tp, SeekTo::Earliest).await.expect("seek");
        while position < end {
            for record in consumer.poll(Duration::from_millis(500)).await.expect("poll") {
                values.push(String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned());
            }
            position = consumer.position(&tp).unwrap_or(end);
        }
    }
    values.sort();
    values
}

#[test]
fn a_global_table_is_filled_before_processing_and_follows_its_topic_and_stores_answer_queries() {
    use spate_streams::{
        Consumed, Grouped, KafkaStreams, Materialized, Produced, Serdes, StreamsBuilder, StreamsConfig,
    };
    let dir = data_dir("streams_global_table");
    let broker = Broker::start(&dir, 1);
    let runtime = runtime();
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let admin = Admin::new(client.clone());
    // Three partitions of customers against two of orders: a global table
    // needs no co-partitioning.
    for (topic, partitions) in [("customers", 3), ("orders", 2), ("orders-by", 2)] {
        runtime.block_on(admin.create_topic(topic, partitions, 1, &[])).expect("create topic");
    }
    runtime.block_on(produce_keyed(&client, "customers", &[("c1", "Ada"), ("c2", "Grace"), ("c3", "Edsger")]));

    let builder = StreamsBuilder::new();
    let customers = builder.global_table(
        "customers",
        Consumed::with(Serdes::string(), Serdes::string()),
        Materialized::as_("customers-global"),
    );
    let orders = builder.stream("orders", Consumed::with(Serdes::string(), Serdes::string()));
    // Orders per customer, read back with an interactive query.
    orders
        .group_by(
            |_, order: &String| order.split(':').next().unwrap_or_default().to_string(),
            Grouped::with(Serdes::string(), Serdes::string()),
        )
        .count(Materialized::as_("orders-per-customer"));
    orders
        .join_global(
            &customers,
            |_, order: &String| order.split(':').next().unwrap_or_default().to_string(),
            |order: &String, name: &String| format!("{order} by {name}"),
        )
        .to("orders-by", Produced::with(Serdes::string(), Serdes::string()));
    let streams_config = StreamsConfig::from_properties(&[
        ("application.id", "global"),
        ("bootstrap.servers", &broker.addr()),
        ("commit.interval.ms", "100"),
    ])
    .expect("config");
    let mut app = KafkaStreams::new(builder.build().expect("topology"), streams_config).expect("app");
    runtime.block_on(app.start()).expect("start");
    // Bootstrapped before the first order: every customer is there.
    runtime.block_on(produce_keyed(&client, "orders", &[("o1", "c1:book"), ("o2", "c2:pen"), ("o3", "c3:ink")]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while runtime.block_on(text_values_of(&client, "orders-by", 2)).len() < 3 {
        assert!(Instant::now() < deadline, "the first orders were not joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A customer added while running is followed. The table follows its
    // topic asynchronously (as Kafka's global thread does): an order sent
    // before the update is seen is dropped, so it is sent again until one
    // is joined.
    runtime.block_on(produce_keyed(&client, "customers", &[("c4", "Barbara")]));
    let joined = |values: &[String]| values.iter().any(|value| value == "c4:cup by Barbara");
    let mut sent_at = Instant::now() - Duration::from_secs(1);
    while !joined(&runtime.block_on(text_values_of(&client, "orders-by", 2))) {
        assert!(Instant::now() < deadline, "the order of the new customer was never joined");
        if sent_at.elapsed() >= Duration::from_secs(1) {
            runtime.block_on(produce_keyed(&client, "orders", &[("o4", "c4:cup")]));
            sent_at = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Interactive queries: a task's store and the global table's.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = runtime.block_on(app.query_key_value::<String, i64>("orders-per-customer", "c1".into()));
        if counted.expect("query the count") == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the count of c1's orders never read 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let name = runtime.block_on(app.query_key_value::<String, String>("customers-global", "c4".into()));
    assert_eq!(name.expect("query the global table"), Some("Barbara".to_string()));
    let all = runtime.block_on(app.query_key_value_all::<String, String>("customers-global")).expect("all");
    assert_eq!(all.len(), 4);
    let unknown = runtime.block_on(app.query_key_value::<String, i64>("no-such-store", "c1".into()));
    assert!(unknown.is_err(), "a store not in the topology is an error, not an empty answer");
    runtime.block_on(app.close()).expect("a clean close");
    let mut values = runtime.block_on(text_values_of(&client, "orders-by", 2));
    values.dedup();
    assert_eq!(values, vec!["c1:book by Ada", "c2:pen by Grace", "c3:ink by Edsger", "c4:cup by Barbara"]);
}

/// Under exactly_once_v2 a global table reads its topic read_committed, as
/// Kafka Streams' global consumer does: a record of an aborted transaction
/// never reaches the table. Before, the global consumer read
/// read_uncommitted and the table held the aborted names.
#[test]
fn under_exactly_once_a_global_table_holds_nothing_of_an_aborted_transaction() {
    use spate_client::Acks;
    use spate_streams::{Consumed, KafkaStreams, Materialized, Produced, Serdes, StreamsBuilder, StreamsConfig};
    let dir = data_dir("streams_global_eos");
    let broker = Broker::start(&dir, 1);
    let runtime = runtime();
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let admin = Admin::new(client.clone());
    for topic in ["customers", "orders", "orders-by"] {
        runtime.block_on(admin.create_topic(topic, 1, 1, &[])).expect("create topic");
    }
    runtime.block_on(produce_keyed(&client, "customers", &[("c1", "Ada")]));
    runtime.block_on(async {
        let config = ProducerConfig { acks: Acks::All, transactional_id: Some("writer".into()), ..Default::default() };
        let producer = Producer::new(client.clone(), config).expect("producer");
        producer.init_transactions().await.expect("init");
        producer.begin_transaction().await.expect("begin");
        for (key, value) in [("c1", "Mallory"), ("c2", "Eve")] {
            let record = ProducerRecord::new("customers", value.to_string()).with_key(key.to_string());
            producer.send(record).await.expect("send");
        }
        producer.flush().await.expect("flush");
        producer.abort_transaction().await.expect("abort");
        producer.begin_transaction().await.expect("begin");
        let record = ProducerRecord::new("customers", "Grace".to_string()).with_key("c3".to_string());
        producer.send(record).await.expect("send");
        producer.commit_transaction().await.expect("commit");
    });

    let builder = StreamsBuilder::new();
    let customers = builder.global_table(
        "customers",
        Consumed::with(Serdes::string(), Serdes::string()),
        Materialized::as_("customers-global"),
    );
    builder
        .stream("orders", Consumed::with(Serdes::string(), Serdes::string()))
        .join_global(
            &customers,
            |_, customer: &String| customer.clone(),
            |order: &String, name: &String| format!("{order} by {name}"),
        )
        .to("orders-by", Produced::with(Serdes::string(), Serdes::string()));
    let streams_config = StreamsConfig::from_properties(&[
        ("application.id", "global-eos"),
        ("bootstrap.servers", &broker.addr()),
        ("processing.guarantee", "exactly_once_v2"),
        ("state.dir", dir.join("state").to_str().expect("utf-8")),
    ])
    .expect("config");
    let mut app = KafkaStreams::new(builder.build().expect("topology"), streams_config).expect("app");
    runtime.block_on(app.start()).expect("start");
    let name_of = |key: &str| {
        runtime.block_on(app.query_key_value::<String, String>("customers-global", key.into())).expect("query")
    };
    // Grace was committed after the aborted transaction: once she is in
    // the table, everything before her has been read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while name_of("c3").is_none() {
        assert!(Instant::now() < deadline, "the committed customer never reached the global table");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(name_of("c1"), Some("Ada".to_string()), "an aborted update is not applied");
    assert_eq!(name_of("c2"), None, "an aborted insert is not applied");
    runtime.block_on(app.close()).expect("a clean close");
}

/// The windowed_clicks example with its own state.dir, logging its
/// restores to `log`.
fn spawn_windowed_clicks(binary: &Path, broker: &Broker, state_dir: &Path, log: &Path) -> Instance {
    let file = std::fs::File::create(log).expect("create the log file");
    let copy = file.try_clone().expect("clone the log file");
    let child = Command::new(binary)
        .env("SPATE_BROKERS", broker.addr())
        .env("COMMIT_INTERVAL_MS", "200")
        .env("STATE_DIR", state_dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn,spate_streams=info")
        .stdout(file)
        .stderr(copy)
        .spawn()
        .expect("start the windowed_clicks example");
    Instance(child)
}

const CLICKS_PARTITIONS: i32 = 2;
const WINDOW_STORE_CHANGELOG: &str = "streams-windowed-clicks-clicks-per-window-changelog";

/// Clicks of `user` on `partition` at `times_ms`, acknowledged.
async fn produce_clicks(client: &Client, partition: i32, user: &str, times_ms: &[i64]) {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    for time_ms in times_ms {
        let record = ProducerRecord {
            topic: "clicks".into(),
            partition: Some(partition),
            key: Some(bytes::Bytes::from(user.to_string())),
            value: Some(bytes::Bytes::from_static(b"page")),
            headers: Vec::new(),
            timestamp_ms: Some(*time_ms),
        };
        producer.send(record).await.expect("send").await.expect("acknowledged");
    }
    producer.close().await.expect("close");
}

/// Waits until the application has committed every click produced.
fn wait_for_clicks_committed(runtime: &tokio::runtime::Runtime, client: &Client) {
    let consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..CLICKS_PARTITIONS).map(|p| TopicPartition::new("clicks", p)).collect();
    let ends: BTreeMap<TopicPartition, i64> =
        runtime.block_on(consumer.end_offsets(&partitions)).expect("end offsets").into_iter().collect();
    let groups = GroupAdmin::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let committed = runtime.block_on(groups.committed_offsets("streams-windowed-clicks", None)).unwrap_or_default();
        if ends.iter().all(|(tp, end)| committed.get(tp) == Some(end)) {
            return;
        }
        assert!(Instant::now() < deadline, "clicks not all committed: {committed:?} of {ends:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The window store's restores a run logged: (partition, from offset,
/// records read), once both partitions are logged.
fn window_store_restores(log: &Path) -> Vec<(i64, i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let field = |line: &str, name: &str| -> Option<i64> {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        let restores: Vec<(i64, i64, i64)> = text
            .lines()
            .filter(|line| {
                line.contains("store restored from its changelog") && line.contains("store=clicks-per-window ")
            })
            .filter_map(|line| Some((field(line, "partition")?, field(line, "from_offset")?, field(line, "restored")?)))
            .collect();
        if restores.len() >= CLICKS_PARTITIONS as usize {
            return restores;
        }
        assert!(Instant::now() < deadline, "no restore of the window store logged: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_persistent_window_count_survives_a_clean_restart_restoring_nothing_from_the_changelog() {
    let binary = example_binary("windowed_clicks");
    let dir = data_dir("streams_windowed_restart");
    let state = data_dir("streams_windowed_restart_state");
    let broker = Broker::start(&dir, 1);
    let runtime = runtime();
    let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
    let client = runtime.block_on(Client::connect(config)).expect("connect");
    let admin = Admin::new(client.clone());
    for topic in ["clicks", "clicks-per-minute"] {
        runtime.block_on(admin.create_topic(topic, CLICKS_PARTITIONS, 1, &[])).expect("create topic");
    }
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_millis();
    // Ten minutes ago, on a minute: the window [base, base + 1 min).
    let base_ms = (i64::try_from(now_ms).expect("ms") / 60_000 - 10) * 60_000;

    // First run: three clicks of ann and two of bo in the window, all
    // committed, then a clean close (SIGINT): the window store's file is
    // flushed and checkpointed at its changelog's end.
    let mut first = spawn_windowed_clicks(&binary, &broker, &state, &state.join("first.log"));
    runtime.block_on(produce_clicks(&client, 0, "ann", &[base_ms + 1_000, base_ms + 2_000, base_ms + 3_000]));
    runtime.block_on(produce_clicks(&client, 1, "bo", &[base_ms + 1_000, base_ms + 5_000]));
    wait_for_clicks_committed(&runtime, &client);
    let interrupted = Command::new("kill").args(["-INT", &first.0.id().to_string()]).status().expect("kill -INT");
    assert!(interrupted.success());
    let exit = first.0.wait().expect("wait for the first run");
    assert!(exit.success(), "a clean close exits 0: {exit:?}");
    for partition in 0..CLICKS_PARTITIONS {
        let path = state.join(format!("streams-windowed-clicks/0_{partition}/clicks-per-window/store.redb"));
        assert!(path.exists(), "the window store is on disk: {}", path.display());
    }

    // Second run: the window store restores from its checkpoint, reading
    // no changelog record; two more clicks of ann and one of bo count on
    // from the first run's counts.
    let _second = spawn_windowed_clicks(&binary, &broker, &state, &state.join("second.log"));
    let restores = window_store_restores(&state.join("second.log"));
    for (partition, from_offset, records) in &restores {
        assert_eq!(*records, 0, "partition {partition}: restored from its checkpoint, not the changelog: {restores:?}");
        assert!(*from_offset > 0, "partition {partition}: the checkpoint is past the counts: {restores:?}");
    }
    runtime.block_on(produce_clicks(&client, 0, "ann", &[base_ms + 30_000, base_ms + 40_000]));
    runtime.block_on(produce_clicks(&client, 1, "bo", &[base_ms + 50_000]));
    // A click far ahead on each partition closes the window (its end plus
    // the 10 s grace passed): the final counts come out.
    runtime.block_on(produce_clicks(&client, 0, "zz", &[base_ms + 300_000]));
    runtime.block_on(produce_clicks(&client, 1, "zz", &[base_ms + 300_000]));

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut finals: BTreeMap<String, i64> = BTreeMap::new();
    while finals.len() < 2 {
        assert!(Instant::now() < deadline, "no final counts: {finals:?}");
        std::thread::sleep(Duration::from_millis(200));
        let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
        for partition in 0..CLICKS_PARTITIONS {
            let tp = TopicPartition::new("clicks-per-minute", partition);
            consumer.assign(vec![tp.clone()]);
            runtime.block_on(consumer.seek(&tp, SeekTo::Earliest)).expect("seek");
            for record in runtime.block_on(consumer.poll(Duration::from_millis(300))).expect("poll") {
                let value: serde_json::Value = serde_json::from_slice(&record.value.expect("a value")).expect("JSON");
                assert_eq!(value["window_start_ms"], base_ms, "only the first window closed: {value}");
                finals.insert(
                    value["user"].as_str().expect("user").to_string(),
                    value["clicks"].as_i64().expect("clicks"),
                );
            }
        }
    }
    assert_eq!(finals, BTreeMap::from([("ann".to_string(), 5), ("bo".to_string(), 3)]));
    // The changelog was not read back: the counts came from the file.
    let ends = {
        // A new client: the application made the changelog after the
        // test's client read its metadata.
        let config = ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() };
        let client = runtime.block_on(Client::connect(config)).expect("connect");
        let consumer = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
        let partitions: Vec<TopicPartition> =
            (0..CLICKS_PARTITIONS).map(|p| TopicPartition::new(WINDOW_STORE_CHANGELOG, p)).collect();
        runtime.block_on(consumer.end_offsets(&partitions)).expect("end offsets")
    };
    assert!(ends.iter().all(|(_, end)| *end > 0), "the counts were logged: {ends:?}");
}
