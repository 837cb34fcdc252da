//! Consumer groups on a real broker process, with real consumers: the
//! four assignment cases (asserted on the actual assignment), a member
//! killed with kill -9 (its partitions move after the session timeout,
//! nothing skipped), members killed in a loop while records are produced
//! (every record processed at least once), committed offsets and lag
//! across broker restarts, a fenced zombie's late commit, and a
//! `spate consume --group` stopped by a signal or a closed pipe.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use spate_client::{
    Acks, Admin, AutoOffsetReset, Client, ClientConfig, ClientError, ErrorCode, GroupAdmin, GroupAssignor, GroupConfig,
    GroupConsumer, GroupDescription, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};

/// Sessions short enough that a dead member is noticed in a second and a half.
const SESSION_MS: u64 = 1_500;

fn client_config(broker: &Broker) -> ClientConfig {
    ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 10_000, ..Default::default() }
}

/// Waits until `done` holds, failing with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn produce(client: &Client, topic: &str, values: impl Iterator<Item = String>) -> Vec<String> {
    let producer =
        Producer::new(client.clone(), ProducerConfig { acks: Acks::All, ..Default::default() }).expect("producer");
    let mut deliveries = Vec::new();
    for value in values {
        let record = ProducerRecord::new(topic, value.clone()).with_key(value.clone());
        deliveries.push((value, producer.send(record).await.expect("enqueue")));
    }
    let mut acked = Vec::new();
    for (value, delivery) in deliveries {
        delivery.await.expect("acknowledged");
        acked.push(value);
    }
    producer.close().await.expect("close");
    acked
}

fn describe(runtime: &tokio::runtime::Runtime, client: &Client, group: &str) -> Option<GroupDescription> {
    runtime.block_on(GroupAdmin::new(client.clone()).describe_group(group)).ok()
}

/// An in-process member polling in a task; its assignment is published.
struct Polling {
    assignment: Arc<Mutex<Vec<TopicPartition>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn polling_member(runtime: &tokio::runtime::Runtime, client: &Client, group: &str, assignor: GroupAssignor) -> Polling {
    let config = GroupConfig {
        group_id: group.to_string(),
        assignor,
        session_timeout_ms: SESSION_MS,
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..Default::default()
    };
    let (assignment, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
    let (published, stopping, client) = (assignment.clone(), stop.clone(), client.clone());
    let task = runtime.spawn(async move {
        let mut consumer = GroupConsumer::new(client, config).expect("consumer");
        consumer.subscribe(&["four".to_string()]).await.expect("subscribe");
        while !stopping.load(Ordering::Relaxed) {
            consumer.poll(Duration::from_millis(100)).await.expect("poll");
            *published.lock().expect("lock") = consumer.assignment();
        }
        consumer.close().await.expect("close");
    });
    Polling { assignment, stop, task }
}

#[test]
fn the_four_assignment_cases_hold_on_the_actual_assignment() {
    let dir = data_dir("group_cases");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("four", 4, 1, &[])).expect("create");
    let all: BTreeSet<TopicPartition> = (0..4).map(|p| TopicPartition::new("four", p)).collect();
    // (members, assignor, how many partitions each member must own, sorted)
    let cases = [
        (4, GroupAssignor::Range, vec![1, 1, 1, 1]),
        (3, GroupAssignor::RoundRobin, vec![1, 1, 2]),
        (1, GroupAssignor::Sticky, vec![4]),
        (6, GroupAssignor::Range, vec![0, 0, 1, 1, 1, 1]),
    ];
    for (case, (count, assignor, expected)) in cases.into_iter().enumerate() {
        let group = format!("case-{case}");
        let members: Vec<Polling> = (0..count).map(|_| polling_member(&runtime, &client, &group, assignor)).collect();
        let settled = || {
            let owned: Vec<Vec<TopicPartition>> =
                members.iter().map(|m| m.assignment.lock().expect("lock").clone()).collect();
            let mut counts: Vec<usize> = owned.iter().map(Vec::len).collect();
            counts.sort_unstable();
            let union: BTreeSet<TopicPartition> = owned.iter().flatten().cloned().collect();
            let total: usize = counts.iter().sum();
            counts == expected && union == all && total == all.len()
        };
        wait_until(
            &format!("case {case} ({count} members, {assignor:?}) is assigned"),
            Duration::from_secs(20),
            settled,
        );
        // The coordinator agrees: every partition to exactly one member, as
        // the members themselves see it.
        let described = describe(&runtime, &client, &group).expect("described");
        assert_eq!(described.members.len(), count);
        assert_eq!(described.assignor, assignor.name());
        let mut from_broker: Vec<usize> = described.members.iter().map(|m| m.assignment.len()).collect();
        from_broker.sort_unstable();
        assert_eq!(from_broker, expected, "case {case}: {described:?}");
        for member in &members {
            member.stop.store(true, Ordering::Relaxed);
        }
        for member in members {
            runtime.block_on(member.task).expect("member task");
        }
        let empty = describe(&runtime, &client, &group).expect("described");
        assert_eq!((empty.state.as_str(), empty.members.len()), ("Empty", 0), "closed members leave at once");
    }
    broker.stop();
}

/// A `spate consume --group` process whose printed values are collected.
struct MemberProcess {
    child: Child,
    values: Arc<Mutex<Vec<String>>>,
}

impl MemberProcess {
    fn start(broker: &Broker, topic: &str, group: &str) -> MemberProcess {
        let mut child = Command::new(SPATE)
            .args(["--brokers", &broker.addr(), "consume", topic, "--group", group, "--format", "json"])
            .args(["--offset", "earliest", "--commit-interval-ms", "50"])
            .args(["--session-timeout-ms", &SESSION_MS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn spate consume --group");
        let stdout = child.stdout.take().expect("stdout");
        let values: Arc<Mutex<Vec<String>>> = Arc::default();
        let collected = values.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
                let value = record["value"].as_str().expect("value").to_string();
                collected.lock().expect("lock").push(value);
            }
        });
        MemberProcess { child, values }
    }

    fn printed(&self) -> usize {
        self.values.lock().expect("lock").len()
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn processed(members: &[MemberProcess]) -> BTreeSet<String> {
    members.iter().flat_map(|m| m.values.lock().expect("lock").clone()).collect()
}

#[test]
fn a_member_killed_with_kill_9_hands_its_partitions_over_after_the_session_and_nothing_is_skipped() {
    let dir = data_dir("group_kill9");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("work", 4, 1, &[])).expect("create");
    let mut acked = runtime.block_on(produce(&client, "work", (0..2_000).map(|i| format!("v-{i}"))));
    let mut members =
        vec![MemberProcess::start(&broker, "work", "workers"), MemberProcess::start(&broker, "work", "workers")];
    wait_until("both members own two partitions", Duration::from_secs(20), || {
        describe(&runtime, &client, "workers").is_some_and(|g| {
            g.state == "Stable" && g.members.len() == 2 && g.members.iter().all(|m| m.assignment.len() == 2)
        })
    });
    wait_until("the first member processed records", Duration::from_secs(20), || members[0].printed() > 0);
    let killed_at = Instant::now();
    members[0].kill9();
    let group = describe(&runtime, &client, "workers").expect("described");
    assert_eq!(group.members.len(), 2, "a killed member stays until its session times out");
    wait_until("the survivor owns every partition", Duration::from_secs(20), || {
        describe(&runtime, &client, "workers")
            .is_some_and(|g| g.members.len() == 1 && g.members[0].assignment.len() == 4)
    });
    assert!(killed_at.elapsed() >= Duration::from_millis(SESSION_MS / 2), "moved only after the session timed out");
    acked.extend(runtime.block_on(produce(&client, "work", (2_000..4_000).map(|i| format!("v-{i}")))));
    let expected: BTreeSet<String> = acked.into_iter().collect();
    wait_until("every record is processed", Duration::from_secs(30), || processed(&members).is_superset(&expected));
    wait_until("the committed offsets reach the end (lag 0)", Duration::from_secs(20), || {
        describe(&runtime, &client, "workers")
            .is_some_and(|g| g.offsets.len() == 4 && g.offsets.iter().all(|o| o.lag == Some(0)))
    });
    broker.stop();
}

#[test]
fn members_killed_in_a_loop_while_records_are_produced_process_every_record_at_least_once() {
    let dir = data_dir("group_kill_loop");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("stream", 4, 1, &[])).expect("create");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let producer_task = {
        let (acked, producing, client) = (acked.clone(), producing.clone(), client.clone());
        runtime.spawn(async move {
            let mut next = 0usize;
            while producing.load(Ordering::Relaxed) {
                let values = (next..next + 50).map(|i| format!("s-{i}"));
                let delivered = produce(&client, "stream", values).await;
                acked.lock().expect("lock").extend(delivered);
                next += 50;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut retired: Vec<MemberProcess> = Vec::new();
    let mut live: Vec<MemberProcess> = (0..3).map(|_| MemberProcess::start(&broker, "stream", "loop")).collect();
    for round in 0..4 {
        // Kill a member that has been at work, then start a replacement.
        let victim = round % live.len();
        wait_until("the victim has processed records", Duration::from_secs(20), || live[victim].printed() > 0);
        live[victim].kill9();
        retired.push(live.remove(victim));
        live.push(MemberProcess::start(&broker, "stream", "loop"));
        let seen = processed(&live).len() + processed(&retired).len();
        wait_until("more records are processed", Duration::from_secs(20), || {
            processed(&live).len() + processed(&retired).len() > seen + 100
        });
    }
    producing.store(false, Ordering::Relaxed);
    runtime.block_on(producer_task).expect("producer");
    let expected: BTreeSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    assert!(expected.len() >= 500, "enough was produced ({})", expected.len());
    let everyone = |live: &[MemberProcess], retired: &[MemberProcess]| {
        let mut all = processed(live);
        all.extend(processed(retired));
        all
    };
    wait_until("every acknowledged record is processed", Duration::from_secs(30), || {
        everyone(&live, &retired).is_superset(&expected)
    });
    broker.stop();
}

fn committed_and_lag(group: &GroupDescription) -> BTreeMap<TopicPartition, (Option<i64>, Option<i64>)> {
    group.offsets.iter().map(|o| (o.tp.clone(), (o.committed_offset, o.lag))).collect()
}

#[test]
fn committed_offsets_and_lag_survive_broker_restarts_and_the_group_verbs_work() {
    let dir = data_dir("group_restart");
    let mut broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("kept", 2, 1, &[])).expect("create");
    runtime.block_on(produce(&client, "kept", (0..100).map(|i| format!("k-{i}"))));
    let config = GroupConfig {
        group_id: "keepers".into(),
        session_timeout_ms: SESSION_MS,
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..Default::default()
    };
    runtime.block_on(async {
        let mut consumer = GroupConsumer::new(client.clone(), config.clone()).expect("consumer");
        consumer.subscribe(&["kept".to_string()]).await.expect("subscribe");
        let mut read = 0;
        while read < 100 {
            read += consumer.poll(Duration::from_millis(200)).await.expect("poll").len();
        }
        consumer.commit_sync().await.expect("commit");
        consumer.close().await.expect("close");
    });
    runtime.block_on(produce(&client, "kept", (100..120).map(|i| format!("k-{i}"))));
    let before = describe(&runtime, &client, "keepers").expect("described");
    let committed: i64 = before.offsets.iter().filter_map(|o| o.committed_offset).sum();
    let lag: i64 = before.offsets.iter().filter_map(|o| o.lag).sum();
    assert_eq!((committed, lag), (100, 20), "{before:?}");
    // A clean restart, then kill -9 and a restart: the same offsets and lag.
    broker = broker.restart();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    let after = describe(&runtime, &client, "keepers").expect("described after a restart");
    assert_eq!(committed_and_lag(&after), committed_and_lag(&before));
    assert!(after.group_epoch >= before.group_epoch, "the group epoch is replayed");
    broker.kill9_and_restart();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    let after = describe(&runtime, &client, "keepers").expect("described after kill -9");
    assert_eq!(committed_and_lag(&after), committed_and_lag(&before));
    // A new member resumes where the group committed: exactly the 20 new.
    let resumed = runtime.block_on(async {
        let mut consumer = GroupConsumer::new(client.clone(), config).expect("consumer");
        consumer.subscribe(&["kept".to_string()]).await.expect("subscribe");
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while values.len() < 20 && Instant::now() < deadline {
            for record in consumer.poll(Duration::from_millis(200)).await.expect("poll") {
                values.push(String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned());
            }
        }
        consumer.close().await.expect("close");
        values
    });
    let expected: BTreeSet<String> = (100..120).map(|i| format!("k-{i}")).collect();
    assert_eq!(resumed.into_iter().collect::<BTreeSet<_>>(), expected);
    // The CLI verbs.
    let brokers = broker.addr();
    let (ok, out, err) = cli(&["--brokers", &brokers, "group", "list"], None);
    assert!(ok && out.contains("keepers") && out.contains("Empty"), "{out}{err}");
    let (ok, out, err) = cli(&["--brokers", &brokers, "group", "describe", "keepers"], None);
    assert!(ok && out.contains("LAG") && out.contains("kept"), "{out}{err}");
    let (ok, out, err) = cli(&["--brokers", &brokers, "group", "reset-offsets", "keepers", "--to-earliest"], None);
    assert!(ok, "{out}{err}");
    let reset = describe(&runtime, &client, "keepers").expect("described");
    assert!(reset.offsets.iter().all(|o| o.committed_offset == Some(0)), "{reset:?}");
    let (ok, _, err) = cli(&["--brokers", &brokers, "group", "delete", "keepers"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["--brokers", &brokers, "group", "describe", "keepers"], None);
    assert!(!ok && err.contains("GroupIdNotFound"), "{err}");
    let (ok, out, err) = cli(&["--brokers", &brokers, "topic", "delete", "__consumer_offsets"], None);
    assert!(!ok && out.contains("InternalTopic"), "{out}{err}");
    broker.stop();
}

/// Polls until 50 records came (or 20 s passed); returns how many.
async fn read_all(consumer: &mut GroupConsumer) -> usize {
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while read < 50 && Instant::now() < deadline {
        read += consumer.poll(Duration::from_millis(100)).await.expect("poll").len();
    }
    read
}

#[test]
fn a_fenced_zombies_late_commit_is_rejected() {
    let dir = data_dir("group_zombie");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("z", 2, 1, &[])).expect("create");
    runtime.block_on(produce(&client, "z", (0..50).map(|i| format!("z-{i}"))));
    let config = GroupConfig {
        group_id: "zombies".into(),
        session_timeout_ms: SESSION_MS,
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..Default::default()
    };
    let all: BTreeSet<TopicPartition> = (0..2).map(|p| TopicPartition::new("z", p)).collect();
    // The zombie-to-be owns everything, then stops heartbeating (dropped
    // without leaving, as if paused or cut off).
    let (zombie_id, zombie_epoch) = runtime.block_on(async {
        let mut zombie = GroupConsumer::new(client.clone(), config.clone()).expect("consumer");
        zombie.subscribe(&["z".to_string()]).await.expect("subscribe");
        let _ = read_all(&mut zombie).await;
        assert_eq!(zombie.assignment().into_iter().collect::<BTreeSet<_>>(), all);
        zombie.member().await
    });
    assert!(!zombie_id.is_empty());
    let (successor_id, successor_epoch) = runtime.block_on(async {
        let mut successor = GroupConsumer::new(client.clone(), config.clone()).expect("consumer");
        successor.subscribe(&["z".to_string()]).await.expect("subscribe");
        let read = read_all(&mut successor).await;
        assert_eq!(read, 50, "the successor got everything once the zombie's session ended");
        successor.commit_sync().await.expect("commit");
        let member = successor.member().await;
        std::mem::forget(successor); // keep it a member for the stale-epoch check
        member
    });
    let groups = GroupAdmin::new(client.clone());
    let late = BTreeMap::from([(TopicPartition::new("z", 0), 1)]);
    let refused = runtime.block_on(groups.commit_as("zombies", &zombie_id, zombie_epoch, &late));
    assert!(
        matches!(&refused, Err(ClientError::Server { code: ErrorCode::UnknownMemberId, .. })),
        "the zombie's commit is refused: {refused:?}"
    );
    assert!(successor_epoch >= 3, "joins and the expiry moved the epoch ({successor_epoch})");
    let stale = runtime.block_on(groups.commit_as("zombies", &successor_id, successor_epoch - 2, &late));
    assert!(
        matches!(&stale, Err(ClientError::Server { code: ErrorCode::FencedMemberEpoch, .. })),
        "a stale epoch is fenced: {stale:?}"
    );
    let committed = runtime.block_on(groups.committed_offsets("zombies", None)).expect("offsets");
    let total: i64 = committed.values().sum();
    assert_eq!(total, 50, "the successor's commits stand: {committed:?}");
    broker.stop();
}

/// The records a `spate consume --format json` wrote to `path`: per
/// partition, offset to value. Only whole lines count (the last one may be
/// half written while the consumer runs).
fn records_in(path: &std::path::Path) -> BTreeMap<i32, BTreeMap<i64, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut records: BTreeMap<i32, BTreeMap<i64, String>> = BTreeMap::new();
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    for line in whole.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let partition = record["partition"].as_i64().expect("partition") as i32;
        let offset = record["offset"].as_i64().expect("offset");
        let value = record["value"].as_str().expect("value").to_string();
        let earlier = records.entry(partition).or_default().insert(offset, value);
        assert!(earlier.is_none(), "offset {offset} of partition {partition} written twice");
    }
    records
}

fn record_count(records: &BTreeMap<i32, BTreeMap<i64, String>>) -> usize {
    records.values().map(BTreeMap::len).sum()
}

/// Sends `signal` (a `kill` name: TERM, INT) and waits up to 20 s for the
/// process to exit.
fn signal_and_wait(child: &mut Child, signal: &str) -> std::process::ExitStatus {
    let sent = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().expect("kill");
    assert!(sent.success());
    let mut status = None;
    wait_until(&format!("the consumer exits after SIG{signal}"), Duration::from_secs(20), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

/// Issue 13: `spate consume --group G --format json > out.json`, stopped
/// with SIGTERM or SIGINT, must have written every record whose offset
/// the group committed, commit everything it wrote, and leave. Before the
/// fix the signal killed it (no exit 0, no final commit, no leave), so a
/// second member waited for the session to time out and then printed
/// again what the file already held.
fn a_group_consumer_stopped_by_a_signal_commits_exactly_what_its_file_holds(signal: &str) {
    let dir = data_dir(&format!("group_signal_{signal}"));
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("piped", 2, 1, &[])).expect("create");
    let mut acked = runtime.block_on(produce(&client, "piped", (0..500).map(|i| format!("p-{i}"))));
    let out_path = dir.join("out.json");
    let out = std::fs::File::create(&out_path).expect("out.json");
    // A session far longer than the test: only leaving empties the group.
    let mut first = Command::new(SPATE)
        .args(["--brokers", &broker.addr(), "consume", "piped", "--group", "pipeline", "--format", "json"])
        .args(["--from-beginning", "--commit-interval-ms", "100", "--session-timeout-ms", "60000"])
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spate consume --group");
    let committed_total = |runtime: &tokio::runtime::Runtime| {
        describe(runtime, &client, "pipeline")
            .map_or(0, |g| g.offsets.iter().filter_map(|o| o.committed_offset).sum::<i64>())
    };
    wait_until("the group committed the first 500 records", Duration::from_secs(20), || {
        committed_total(&runtime) == 500
    });
    // More records, then the signal as soon as the file has them: some of
    // them, or all, are not committed yet.
    acked.extend(runtime.block_on(produce(&client, "piped", (500..800).map(|i| format!("p-{i}")))));
    wait_until("the file holds all 800 records", Duration::from_secs(20), || {
        record_count(&records_in(&out_path)) == 800
    });
    let status = signal_and_wait(&mut first, signal);
    assert_eq!(status.code(), Some(0), "SIG{signal} ends the consumer cleanly: {status}");
    let written = records_in(&out_path);
    let group = describe(&runtime, &client, "pipeline").expect("described");
    assert!(group.members.is_empty(), "the stopped member left the group at once: {group:?}");
    for tp in (0..2).map(|p| TopicPartition::new("piped", p)) {
        let committed = group.offsets.iter().find(|o| o.tp == tp).and_then(|o| o.committed_offset).unwrap_or(0);
        let in_file = written.get(&tp.partition).cloned().unwrap_or_default();
        // Every committed record is in the file, and everything in the file
        // is committed: the commit is exactly what was written.
        let expected: Vec<i64> = (0..committed).collect();
        assert_eq!(in_file.keys().copied().collect::<Vec<_>>(), expected, "{tp}: committed {committed}");
    }
    // A second member starts right after what the file holds: together
    // they hold every record once.
    acked.extend(runtime.block_on(produce(&client, "piped", (800..900).map(|i| format!("p-{i}")))));
    let second = MemberProcess::start(&broker, "piped", "pipeline");
    wait_until("the second member printed the 100 new records", Duration::from_secs(20), || second.printed() >= 100);
    let mut everything: Vec<String> = written.values().flat_map(|records| records.values().cloned()).collect();
    everything.extend(second.values.lock().expect("lock").iter().cloned());
    everything.sort();
    let mut expected = acked;
    expected.sort();
    assert_eq!(everything, expected, "the file and the second member hold every record, once");
    drop(second);
    broker.stop();
}

#[test]
fn a_group_consumer_stopped_by_sigterm_commits_exactly_what_its_file_holds_and_leaves() {
    a_group_consumer_stopped_by_a_signal_commits_exactly_what_its_file_holds("TERM");
}

#[test]
fn a_group_consumer_stopped_by_sigint_commits_exactly_what_its_file_holds_and_leaves() {
    a_group_consumer_stopped_by_a_signal_commits_exactly_what_its_file_holds("INT");
}

/// `spate consume --group G | head -n 1`: once the reader is gone the
/// consumer ends quietly (exit 0, nothing on stderr) and commits nothing
/// it wrote into the pipe, which may never have been read; it leaves the
/// group so the partitions move at once. Before the fix it stayed a
/// member until its session timed out.
#[test]
fn a_group_consumer_whose_pipe_closes_ends_quietly_commits_nothing_more_and_leaves() {
    let dir = data_dir("group_broken_pipe");
    let broker = Broker::start(&dir, 2);
    let runtime = runtime();
    let client = runtime.block_on(Client::connect(client_config(&broker))).expect("connect");
    runtime.block_on(Admin::new(client.clone()).create_topic("headed", 2, 1, &[])).expect("create");
    runtime.block_on(produce(&client, "headed", (0..200).map(|i| format!("h-{i}"))));
    // No periodic commit within the test: whatever is committed would be
    // the consumer's reaction to the closed pipe.
    let mut child = Command::new(SPATE)
        .args(["--brokers", &broker.addr(), "consume", "headed", "--group", "heads"])
        .args(["--from-beginning", "--commit-interval-ms", "3600000", "--session-timeout-ms", "60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spate consume --group");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the first record");
    assert!(line.starts_with("h-"), "{line:?}");
    drop(stdout);
    // Records that the consumer can only write into the closed pipe.
    runtime.block_on(produce(&client, "headed", (200..300).map(|i| format!("h-{i}"))));
    let mut status = None;
    wait_until("the consumer exits on the closed pipe", Duration::from_secs(20), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert_eq!(stderr, "", "a closed pipe ends it quietly");
    let group = describe(&runtime, &client, "heads").expect("described");
    assert!(group.members.is_empty(), "it left the group: {group:?}");
    assert!(group.offsets.iter().all(|o| o.committed_offset.is_none()), "nothing was committed: {group:?}");
    broker.stop();
}
