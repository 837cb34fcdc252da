//! spate-client's transactional producer and read_committed consumers on
//! a real `spate serve` (issue 17): commits are seen once, aborts never by
//! read_committed consumers; a newer instance of a transactional id fences
//! the older one and aborts what it left open; consume-transform-produce
//! commits the group's offsets with its output, or neither.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use spate_client::{
    Acks, Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ConsumerGroupMetadata, ConsumerRecord,
    ErrorCode, GroupAdmin, GroupConfig, GroupConsumer, IsolationLevel, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};

const PARTITIONS: i32 = 3;

fn client_config(broker: &Broker) -> ClientConfig {
    ClientConfig { bootstrap: vec![broker.addr()], request_timeout_ms: 15_000, ..Default::default() }
}

fn transactional(client: &Client, id: &str) -> Producer {
    let config = ProducerConfig { acks: Acks::All, transactional_id: Some(id.to_string()), ..Default::default() };
    Producer::new(client.clone(), config).expect("producer")
}

/// The producer epoch `spate txn describe` shows for `id` once its last
/// transaction completed.
fn described_epoch(broker: &Broker, id: &str) -> i32 {
    let bootstrap = broker.kafka_addr();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) =
            cli(&["txn", "describe", "--bootstrap-server", &bootstrap, "--transactional-id", id], None);
        assert!(ok, "{err}");
        // PRODUCER-EPOCH and STATE, under the header.
        let row: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        if row.len() > 4 && !row[4].starts_with("Prepare") && row[4] != "Ongoing" {
            return row[3].parse().expect("an epoch");
        }
        assert!(Instant::now() < deadline, "{id} never completed: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value_of(record: &ConsumerRecord) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
}

/// Reads every partition of `topic` from the beginning until `expected`
/// records came (then a little longer, for any beyond them) or 30 s.
async fn read_all(client: &Client, topic: &str, isolation_level: IsolationLevel, expected: usize) -> Vec<String> {
    read_for(client, topic, isolation_level, expected, Duration::from_secs(30)).await
}

async fn read_for(
    client: &Client,
    topic: &str,
    isolation_level: IsolationLevel,
    expected: usize,
    wait: Duration,
) -> Vec<String> {
    let config = ConsumerConfig { isolation_level, ..Default::default() };
    let mut consumer = Consumer::new(client.clone(), config).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(topic, p)).collect();
    consumer.assign(partitions.clone());
    for tp in &partitions {
        consumer.seek(tp, SeekTo::Earliest).await.expect("seek");
    }
    let mut values = Vec::new();
    let deadline = Instant::now() + wait;
    while values.len() < expected && Instant::now() < deadline {
        values.extend(consumer.poll(Duration::from_millis(300)).await.expect("poll").iter().map(value_of));
    }
    // Anything beyond what was expected would show up now.
    values.extend(consumer.poll(Duration::from_millis(700)).await.expect("poll").iter().map(value_of));
    values
}

/// The sum over `topic`'s partitions of the latest offset as a consumer
/// of `isolation_level` sees it.
async fn end_offsets_sum(client: &Client, topic: &str, isolation_level: IsolationLevel) -> i64 {
    let config = ConsumerConfig { isolation_level, ..Default::default() };
    let consumer = Consumer::new(client.clone(), config).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(topic, p)).collect();
    consumer.end_offsets(&partitions).await.expect("end offsets").iter().map(|(_, offset)| offset).sum()
}

async fn send_all(producer: &Producer, topic: &str, prefix: &str, count: usize) {
    for i in 0..count {
        let record = ProducerRecord::new(topic, format!("{prefix}-{i}")).with_key(format!("k{i}"));
        // Delivery is checked by the commit (it fails if a batch failed).
        drop(producer.send(record).await.expect("queued"));
    }
}

#[test]
fn read_committed_consumers_see_committed_transactions_once_and_aborted_ones_never() {
    let dir = data_dir("native_txn_commit_abort");
    let broker = Broker::start(&dir, 2);
    runtime().block_on(async {
        let client = Client::connect(client_config(&broker)).await.expect("connect");
        Admin::new(client.clone()).create_topic("txn-out", PARTITIONS, 1, &[]).await.expect("create");
        let producer = transactional(&client, "native-tx-1");
        // Out of order: refused with what to do, nothing sent.
        let early = producer.send(ProducerRecord::new("txn-out", "early")).await;
        assert!(matches!(early, Err(ClientError::TransactionState(_))), "{early:?}");
        producer.init_transactions().await.expect("init");
        let first_epoch = described_epoch(&broker, "native-tx-1");

        producer.begin_transaction().await.expect("begin");
        send_all(&producer, "txn-out", "committed", 100).await;
        producer.commit_transaction().await.expect("commit");

        producer.begin_transaction().await.expect("begin");
        send_all(&producer, "txn-out", "aborted", 50).await;
        producer.flush().await.expect("flush");
        producer.abort_transaction().await.expect("abort");

        producer.begin_transaction().await.expect("begin");
        send_all(&producer, "txn-out", "later", 20).await;
        producer.commit_transaction().await.expect("commit");

        // Transactions v2 (KIP-890 part 2): each ended under a new epoch.
        assert_eq!(described_epoch(&broker, "native-tx-1"), first_epoch + 3, "one epoch per transaction");

        let committed = read_all(&client, "txn-out", IsolationLevel::ReadCommitted, 120).await;
        let distinct: BTreeSet<&String> = committed.iter().collect();
        assert_eq!(committed.len(), 120, "each committed record once");
        assert_eq!(distinct.len(), 120);
        assert!(committed.iter().all(|v| !v.starts_with("aborted")), "no aborted record is read_committed");
        // read_uncommitted reads the aborted transaction's records too
        // (Kafka's semantics), and never a marker.
        let everything = read_all(&client, "txn-out", IsolationLevel::ReadUncommitted, 170).await;
        assert_eq!(everything.len(), 170);
        producer.close().await.expect("close");
    });
    broker.stop();
}

#[test]
fn a_new_instance_fences_the_old_one_and_aborts_what_it_left_open() {
    let dir = data_dir("native_txn_fencing");
    let broker = Broker::start(&dir, 2);
    runtime().block_on(async {
        let client = Client::connect(client_config(&broker)).await.expect("connect");
        Admin::new(client.clone()).create_topic("fenced-out", PARTITIONS, 1, &[]).await.expect("create");
        let zombie = transactional(&client, "native-tx-fence");
        zombie.init_transactions().await.expect("init");
        zombie.begin_transaction().await.expect("begin");
        send_all(&zombie, "fenced-out", "zombie", 30).await;
        // Written to the partitions, transaction left open (the
        // application "hangs"): read_committed readers are held at it.
        zombie.flush().await.expect("flush");
        let held = read_for(&client, "fenced-out", IsolationLevel::ReadCommitted, 1, Duration::from_secs(2)).await;
        assert!(held.is_empty(), "an open transaction is invisible to read_committed: {held:?}");
        // ListOffsets latest: the last stable offset for read_committed
        // (before the open transaction), the high watermark otherwise.
        assert_eq!(end_offsets_sum(&client, "fenced-out", IsolationLevel::ReadCommitted).await, 0);
        assert_eq!(end_offsets_sum(&client, "fenced-out", IsolationLevel::ReadUncommitted).await, 30);

        // Its replacement starts: the open transaction is aborted.
        let successor = transactional(&client, "native-tx-fence");
        successor.init_transactions().await.expect("init fences the zombie");
        successor.begin_transaction().await.expect("begin");
        send_all(&successor, "fenced-out", "successor", 10).await;
        successor.commit_transaction().await.expect("commit");

        // The zombie wakes up: it may not commit, add or send any more.
        let late = zombie.commit_transaction().await.expect_err("a fenced producer cannot commit");
        assert_eq!(late.code(), Some(ErrorCode::ProducerFenced), "{late}");
        let after = zombie.begin_transaction().await.expect_err("fenced for good");
        assert_eq!(after.code(), Some(ErrorCode::ProducerFenced), "{after}");

        let committed = read_all(&client, "fenced-out", IsolationLevel::ReadCommitted, 10).await;
        assert_eq!(committed.len(), 10, "{committed:?}");
        assert!(committed.iter().all(|v| v.starts_with("successor")), "{committed:?}");
        successor.close().await.expect("close");
    });
    broker.stop();
}

#[test]
fn consume_transform_produce_commits_the_offsets_with_the_output_or_neither() {
    let dir = data_dir("native_txn_ctp");
    let broker = Broker::start(&dir, 2);
    runtime().block_on(async {
        let client = Client::connect(client_config(&broker)).await.expect("connect");
        let admin = Admin::new(client.clone());
        admin.create_topic("ctp-in", PARTITIONS, 1, &[]).await.expect("create");
        admin.create_topic("ctp-out", PARTITIONS, 1, &[]).await.expect("create");
        let plain = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
        send_all(&plain, "ctp-in", "in", 60).await;
        plain.flush().await.expect("flush");

        let group_config = GroupConfig {
            group_id: "ctp-app".into(),
            auto_commit: false,
            auto_offset_reset: spate_client::AutoOffsetReset::Earliest,
            consumer: ConsumerConfig { isolation_level: IsolationLevel::ReadCommitted, ..Default::default() },
            ..Default::default()
        };
        let mut consumer = GroupConsumer::new(client.clone(), group_config).expect("group consumer");
        consumer.subscribe(&["ctp-in".to_string()]).await.expect("subscribe");
        let producer = transactional(&client, "native-tx-ctp");
        producer.init_transactions().await.expect("init");

        // The first transaction aborts: its output is never read_committed
        // and its offsets never count.
        let mut inputs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while inputs.len() < 60 && Instant::now() < deadline {
            inputs.extend(consumer.poll(Duration::from_millis(300)).await.expect("poll"));
        }
        assert_eq!(inputs.len(), 60, "every input record");
        let positions: BTreeMap<TopicPartition, i64> = inputs.iter().fold(BTreeMap::new(), |mut next, record| {
            let tp = TopicPartition::new(record.topic.clone(), record.partition);
            let offset = next.entry(tp).or_insert(0);
            *offset = (*offset).max(record.offset + 1);
            next
        });
        producer.begin_transaction().await.expect("begin");
        for record in &inputs {
            let out = ProducerRecord::new("ctp-out", format!("aborted-{}", value_of(record)));
            drop(producer.send(out).await.expect("queued"));
        }
        let group = consumer.group_metadata().await;
        assert!(!group.member_id.is_empty() && group.member_epoch > 0, "{group:?}");
        producer.send_offsets_to_transaction(&positions, &group).await.expect("offsets");
        producer.abort_transaction().await.expect("abort");
        let groups = GroupAdmin::new(client.clone());
        let committed = groups.committed_offsets("ctp-app", None).await.expect("offsets");
        assert!(committed.values().all(|&offset| offset < 0) || committed.is_empty(), "{committed:?}");

        // The same work again, committed: output and offsets together.
        producer.begin_transaction().await.expect("begin");
        for record in &inputs {
            let out = ProducerRecord::new("ctp-out", format!("out-{}", value_of(record)));
            drop(producer.send(out).await.expect("queued"));
        }
        producer.send_offsets_to_transaction(&positions, &group).await.expect("offsets");
        producer.commit_transaction().await.expect("commit");
        // EndTxn answers once the commit is decided; the offsets count once
        // the coordinator's marker reaches __consumer_offsets (Kafka's
        // OffsetFetch says UNSTABLE_OFFSET_COMMIT until then).
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut committed = BTreeMap::new();
        while committed != positions && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            committed = groups.committed_offsets("ctp-app", None).await.expect("offsets");
        }
        assert_eq!(committed, positions, "the group's offsets commit with the transaction");

        // Offsets from outside the group's membership with a stale member
        // epoch are refused: a member fenced from the group cannot commit.
        producer.begin_transaction().await.expect("begin");
        let stale = ConsumerGroupMetadata { member_epoch: group.member_epoch + 100, ..group.clone() };
        let refused = producer.send_offsets_to_transaction(&positions, &stale).await;
        assert!(refused.is_err(), "a stale member epoch must be refused: {refused:?}");
        producer.abort_transaction().await.expect("abort");

        let output = read_all(&client, "ctp-out", IsolationLevel::ReadCommitted, 60).await;
        assert_eq!(output.len(), 60, "each input's output exactly once");
        assert!(output.iter().all(|v| v.starts_with("out-")), "nothing of the aborted attempt");
        producer.close().await.expect("close");
        consumer.close().await.expect("close");
    });
    broker.stop();
}
