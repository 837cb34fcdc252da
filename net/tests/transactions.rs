//! The transaction coordinator through Kafka's APIs (issue 17), on
//! brokers in this process: a transaction commits and aborts (a marker on
//! each of its partitions, the coordinator's state CompleteCommit or
//! CompleteAbort); a second InitProducerId fences the first producer (the
//! codes Kafka answers each version); a transaction past its timeout is
//! aborted; requests while a transaction is prepared get
//! CONCURRENT_TRANSACTIONS; and a coordinator that takes over a prepared
//! transaction finishes it.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka::{KafkaConn, name};
use common::*;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::describe_transactions_response::TransactionState;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_net::BrokerHandle;

const TXN_PARTITIONS: u32 = 4;

fn txn_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_string()))
}

/// Codes a client retries on (the coordinator is loading, moving or
/// busy finishing the previous transaction).
fn retriable(code: i16) -> bool {
    [
        K::CoordinatorLoadInProgress.code(),
        K::CoordinatorNotAvailable.code(),
        K::NotCoordinator.code(),
        K::ConcurrentTransactions.code(),
    ]
    .contains(&code)
}

/// The broker coordinating `id` (FindCoordinator v4, key type 1).
fn find_coordinator(conn: &mut KafkaConn, id: &str) -> (i16, i32) {
    let request = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_coordinator_keys(vec![StrBytes::from_string(id.to_string())]);
    let response = conn.call(4, &request);
    (response.coordinators[0].error_code, response.coordinators[0].node_id.0)
}

/// InitProducerId at `version`: (code, producer id, epoch).
fn init_once(conn: &mut KafkaConn, id: &str, timeout_ms: i32, version: i16) -> (i16, i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(txn_id(id)))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = conn.call(version, &request);
    (response.error_code, response.producer_id.0, response.producer_epoch)
}

/// InitProducerId retried as a client retries it.
fn init(conn: &mut KafkaConn, id: &str, timeout_ms: i32) -> (i64, i16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, producer_id, epoch) = init_once(conn, id, timeout_ms, 4);
        if code == 0 {
            return (producer_id, epoch);
        }
        assert!(retriable(code) && Instant::now() < deadline, "InitProducerId: {code}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// AddPartitionsToTxn at `version`: each partition's code.
fn add_partitions(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, tps: &[(&str, i32)], version: i16) -> Vec<i16> {
    let topics = tps
        .iter()
        .map(|(topic, partition)| {
            AddPartitionsToTxnTopic::default().with_name(name(topic)).with_partitions(vec![*partition])
        })
        .collect();
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id(id))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(topics);
    let response = conn.call(version, &request);
    response
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
        .collect()
}

fn add_offsets(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, group: &str) -> i16 {
    let request = AddOffsetsToTxnRequest::default()
        .with_transactional_id(txn_id(id))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())));
    conn.call(3, &request).error_code
}

fn end_txn(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, commit: bool, version: i16) -> i16 {
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id(id))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    conn.call(version, &request).error_code
}

fn describe(conn: &mut KafkaConn, id: &str) -> TransactionState {
    let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id(id)]);
    conn.call(0, &request).transaction_states.remove(0)
}

/// Waits until `id`'s state is `state` (a coordinator completes a
/// transaction after it answers EndTxn).
fn await_state(conn: &mut KafkaConn, id: &str, state: &str) -> TransactionState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = describe(conn, id);
        if described.error_code == 0 && described.transaction_state.as_str() == state {
            return described;
        }
        assert!(Instant::now() < deadline, "{id} never reached {state}: {described:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A transactional batch of one record (attributes bit 4), as a
/// transactional producer sends it.
fn txn_batch(pid: i64, epoch: i16, sequence: i32) -> Vec<u8> {
    let mut builder = spate_format::batch::BatchBuilder::new(1).producer(pid, epoch, sequence).transactional();
    builder.push(1, None, Some(b"in a transaction"), &[]);
    builder.build().to_vec()
}

/// The control batches of a partition, oldest first: (commit, producer id).
fn markers(conn: &mut Conn, topic: &str, partition: i32) -> Vec<(bool, i64)> {
    let (error, _, bytes) = conn.fetch(topic, partition, 0, 0);
    assert_eq!(error, ErrorCode::None, "fetch {topic}/{partition}");
    control_batches(&bytes)
}

fn control_batches(bytes: &Bytes) -> Vec<(bool, i64)> {
    let mut out = Vec::new();
    for span in spate_format::batch::split_batches(bytes) {
        let batch = &bytes[span.expect("whole batches").range];
        let header = spate_format::batch::peek_header(batch).expect("a header");
        if header.attributes().is_control() {
            let control = spate_format::batch::parse_control_batch(batch).expect("a control record");
            out.push((control.commit, header.producer_id.get()));
        }
    }
    out
}

fn one_broker(name: &str, configure: impl FnOnce(&mut spate_net::config::BrokerConfig)) -> BrokerHandle {
    start_at(&data_dir(name), configure)
}

fn start_at(dir: &std::path::Path, configure: impl FnOnce(&mut spate_net::config::BrokerConfig)) -> BrokerHandle {
    let mut config = config(dir, 2);
    config.transaction_state_partitions = TXN_PARTITIONS;
    configure(&mut config);
    spate_net::start(config).expect("broker starts")
}

#[test]
fn a_transaction_commits_then_one_aborts_with_a_marker_on_each_partition() {
    let dir = data_dir("txn-commit-abort");
    let broker = start_at(&dir, |_| {});
    let mut kafka = KafkaConn::to(&broker);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(kafka.create_topic("t", 2, 1), 0);
    assert_eq!(find_coordinator(&mut kafka, "app"), (0, 1), "this broker coordinates every id");
    let (pid, epoch) = init(&mut kafka, "app", 60_000);
    assert_eq!(epoch, 0, "a new transactional id starts at epoch 0");

    assert_eq!(add_partitions(&mut kafka, "app", pid, epoch, &[("t", 0), ("t", 1)], 3), [0, 0]);
    assert_eq!(add_offsets(&mut kafka, "app", pid, epoch, "readers"), 0);
    // A transactional batch needs its transactional id in the request.
    let code = kafka.produce("t", 0, txn_batch(pid, epoch, 0)).0;
    assert_eq!(code, K::TransactionalIdAuthorizationFailed.code(), "no transactional id");
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 0)).0, 0);
    assert_eq!(kafka.produce_as(Some("app"), "t", 1, txn_batch(pid, epoch, 0)).0, 0);
    let ongoing = describe(&mut kafka, "app");
    assert_eq!(ongoing.transaction_state.as_str(), "Ongoing");
    let topics: Vec<&str> = ongoing.topics.iter().map(|t| t.topic.0.as_str()).collect();
    assert_eq!(topics, ["__consumer_offsets", "t"], "AddOffsetsToTxn adds the group's offsets partition");

    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, true, 3), 0);
    let done = await_state(&mut kafka, "app", "CompleteCommit");
    assert!(done.topics.is_empty(), "a complete transaction has no partitions");
    for partition in [0, 1] {
        assert_eq!(markers(&mut conn, "t", partition), [(true, pid)], "t/{partition} has a commit marker");
    }
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, true, 3), 0, "a retried commit succeeds");
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, false, 3), K::InvalidTxnState.code());

    assert_eq!(add_partitions(&mut kafka, "app", pid, epoch, &[("t", 1)], 3), [0]);
    assert_eq!(kafka.produce_as(Some("app"), "t", 1, txn_batch(pid, epoch, 1)).0, 0);
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, false, 3), 0);
    await_state(&mut kafka, "app", "CompleteAbort");
    assert_eq!(markers(&mut conn, "t", 1), [(true, pid), (false, pid)], "t/1 has an abort marker after the commit");
    assert_eq!(markers(&mut conn, "t", 0), [(true, pid)], "t/0 was not in the second transaction");

    let listed = kafka.call(1, &ListTransactionsRequest::default().with_duration_filter(-1));
    let states: Vec<(&str, &str)> = listed
        .transaction_states
        .iter()
        .map(|t| (t.transactional_id.0.as_str(), t.transaction_state.as_str()))
        .collect();
    assert_eq!(states, [("app", "CompleteAbort")]);
    let filtered = ListTransactionsRequest::default()
        .with_state_filters(vec![StrBytes::from_static_str("Ongoing"), StrBytes::from_static_str("Bogus")]);
    let listed = kafka.call(0, &filtered);
    assert!(listed.transaction_states.is_empty(), "no Ongoing transaction");
    assert_eq!(listed.unknown_state_filters, [StrBytes::from_static_str("Bogus")]);
    assert_eq!(describe(&mut kafka, "nobody").error_code, K::TransactionalIdNotFound.code());
    drop((kafka, conn));
    stop(broker);

    // The state is replayed from __transaction_state at the next start,
    // and the commit marker in __consumer_offsets does not stop the
    // groups' replay (it failed the start before groups skipped markers).
    let broker = start_at(&dir, |_| {});
    let mut kafka = KafkaConn::to(&broker);
    let reloaded = await_state(&mut kafka, "app", "CompleteAbort");
    assert_eq!((reloaded.producer_id.0, reloaded.producer_epoch), (pid, epoch));
    let (again, next) = init(&mut kafka, "app", 60_000);
    assert_eq!((again, next), (pid, epoch + 1), "the epoch goes on from the one replayed");
    stop(broker);
}

#[test]
fn the_next_transactions_first_add_partitions_waits_for_the_previous_commit_to_complete() {
    let broker = one_broker("txn-add-parks", |_| {});
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let (pid, epoch) = init(&mut kafka, "app", 60_000);
    // A producer starts its next transaction as soon as EndTxn is
    // answered, while the coordinator still writes the markers and
    // CompleteCommit: the AddPartitionsToTxn waits for that (a few
    // milliseconds) rather than sending the client into its backoff with
    // CONCURRENT_TRANSACTIONS.
    for sequence in 0..20 {
        assert_eq!(add_partitions(&mut kafka, "app", pid, epoch, &[("t", 0)], 3), [0], "transaction {sequence}");
        assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, sequence)).0, 0);
        assert_eq!(end_txn(&mut kafka, "app", pid, epoch, true, 3), 0);
    }
    await_state(&mut kafka, "app", "CompleteCommit");
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(markers(&mut conn, "t", 0).len(), 20, "every transaction committed");
    drop((kafka, conn));
    stop(broker);
}

#[test]
fn a_second_init_producer_id_fences_the_first_producer_with_each_versions_code() {
    let broker = one_broker("txn-fencing", |config| config.transaction_max_timeout_ms = 120_000);
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    assert_eq!(init_once(&mut kafka, "zombie", 120_001, 4).0, K::InvalidTransactionTimeout.code());
    let (pid, old) = init(&mut kafka, "zombie", 60_000);
    let (again, new) = init(&mut kafka, "zombie", 60_000);
    assert_eq!((again, new), (pid, old + 1), "the same producer id at the next epoch");

    // Kafka answers INVALID_PRODUCER_EPOCH before PRODUCER_FENCED existed.
    assert_eq!(add_partitions(&mut kafka, "zombie", pid, old, &[("t", 0)], 1), [K::InvalidProducerEpoch.code()]);
    assert_eq!(add_partitions(&mut kafka, "zombie", pid, old, &[("t", 0)], 2), [K::ProducerFenced.code()]);
    assert_eq!(end_txn(&mut kafka, "zombie", pid, old, true, 1), K::InvalidProducerEpoch.code());
    assert_eq!(end_txn(&mut kafka, "zombie", pid, old, true, 3), K::ProducerFenced.code());
    assert_eq!(
        add_partitions(&mut kafka, "zombie", pid + 1, new, &[("t", 0)], 3),
        [K::InvalidProducerIdMapping.code()]
    );
    // Answered by topic name: "nope" before "t".
    assert_eq!(
        add_partitions(&mut kafka, "zombie", pid, new, &[("t", 0), ("nope", 0)], 3),
        [K::UnknownTopicOrPartition.code(), K::OperationNotAttempted.code()]
    );

    // Internal topics get markers only through AddOffsetsToTxn.
    assert_eq!(
        add_partitions(&mut kafka, "zombie", pid, new, &[("__transaction_state", 0)], 3),
        [K::InvalidTopicException.code()]
    );

    // An init while a transaction is open aborts it under a bumped epoch
    // (the client retries on CONCURRENT_TRANSACTIONS), then bumps again.
    assert_eq!(add_partitions(&mut kafka, "zombie", pid, new, &[("t", 0)], 3), [0]);
    assert_eq!(init_once(&mut kafka, "zombie", 60_000, 4).0, K::ConcurrentTransactions.code());
    let (_, newest) = init(&mut kafka, "zombie", 60_000);
    assert_eq!(newest, new + 2, "one bump for the abort, one for the new producer");
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(markers(&mut conn, "t", 0), [(false, pid)], "the fenced transaction was aborted");
    assert_eq!(end_txn(&mut kafka, "zombie", pid, newest, true, 3), K::InvalidTxnState.code(), "nothing is open");
    stop(broker);
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let broker = one_broker("txn-timeout", |config| config.transaction_abort_check_interval_ms = 50);
    let mut kafka = KafkaConn::to(&broker);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let (pid, epoch) = init(&mut kafka, "slow", 300);
    assert_eq!(add_partitions(&mut kafka, "slow", pid, epoch, &[("t", 0)], 3), [0]);
    assert_eq!(kafka.produce_as(Some("slow"), "t", 0, txn_batch(pid, epoch, 0)).0, 0);
    assert_eq!(kafka.list_offset_isolated("t", 0, -1, 1), (0, 0), "the open transaction holds the LSO at 0");
    let aborted = await_state(&mut kafka, "slow", "CompleteAbort");
    // The abort marker (offset 1) unblocks read_committed readers.
    assert_eq!(kafka.list_offset_isolated("t", 0, -1, 1), (0, 2), "the LSO moved past the abort marker");
    assert_eq!(aborted.producer_epoch, epoch + 1, "the abort bumped the epoch");
    assert_eq!(markers(&mut conn, "t", 0), [(false, pid)]);
    assert_eq!(end_txn(&mut kafka, "slow", pid, epoch, true, 3), K::ProducerFenced.code());
    stop(broker);
}

/// Only brokers write markers: a client's control batch is refused on
/// either protocol, and nothing of it is appended.
#[test]
fn an_idle_transactional_id_expires_and_stays_forgotten_after_a_restart() {
    let dir = data_dir("txn-expiration");
    let configure = |config: &mut spate_net::config::BrokerConfig| {
        config.transaction_abort_check_interval_ms = 50;
        config.transactional_id_expiration_ms = 1_000;
    };
    let broker = start_at(&dir, configure);
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let (idle_pid, epoch) = init(&mut kafka, "idle", 60_000);
    assert_eq!(add_partitions(&mut kafka, "idle", idle_pid, epoch, &[("t", 0)], 3), [0]);
    assert_eq!(end_txn(&mut kafka, "idle", idle_pid, epoch, true, 3), 0);
    let (busy_pid, busy_epoch) = init(&mut kafka, "busy", 60_000);
    assert_eq!(add_partitions(&mut kafka, "busy", busy_pid, busy_epoch, &[("t", 0)], 3), [0]);

    // Kafka's transactional.id.expiration.ms: an id with no transaction in
    // progress is forgotten once idle that long; one with a transaction
    // open is kept.
    let not_found = K::TransactionalIdNotFound.code();
    let deadline = Instant::now() + Duration::from_secs(30);
    while describe(&mut kafka, "idle").error_code != not_found {
        assert!(Instant::now() < deadline, "the idle id never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(describe(&mut kafka, "busy").transaction_state.as_str(), "Ongoing", "an open transaction stays");
    drop(kafka);
    stop(broker);

    // Its tombstone is replayed: still gone after a restart, and the
    // producer that comes back starts over with a new producer id.
    let broker = start_at(&dir, configure);
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(await_state(&mut kafka, "busy", "Ongoing").producer_id.0, busy_pid);
    assert_eq!(describe(&mut kafka, "idle").error_code, not_found);
    let (again, epoch) = init(&mut kafka, "idle", 60_000);
    assert_ne!(again, idle_pid, "a new producer id");
    assert_eq!(epoch, 0);
    stop(broker);
}

#[test]
fn a_plain_batch_from_a_producer_with_its_transaction_open_is_refused() {
    let broker = one_broker("txn-plain-inside", |_| {});
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let (pid, epoch) = init(&mut kafka, "app", 60_000);
    assert_eq!(add_partitions(&mut kafka, "app", pid, epoch, &[("t", 0)], 3), [0]);
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 0)), (0, 0));
    // The same producer's next batch without the transactional bit: it
    // would be read as committed ahead of its transaction. Kafka refuses it.
    let mut plain = spate_format::batch::BatchBuilder::new(1).producer(pid, epoch, 1);
    plain.push(1, None, Some(b"outside"), &[]);
    let refused = kafka.produce_as(Some("app"), "t", 0, plain.build().to_vec()).0;
    assert_eq!(refused, K::InvalidTxnState.code());
    assert_eq!(kafka.list_offset("t", 0, -1), (0, 1), "nothing appended");
    // Inside the transaction the sequence goes on where it was.
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 1)), (0, 1));
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, true, 3), 0);
    stop(broker);
}

/// KIP-890 part 1: the partition leader asks the coordinator before it
/// takes a producer's first transactional batch of a transaction. Without
/// it each batch refused below was appended: a transaction no coordinator
/// knows, whose partition's last stable offset stayed below the high
/// watermark for good (read_committed consumers stuck there).
#[test]
fn a_transactional_batch_outside_the_producers_ongoing_transaction_is_refused() {
    let broker = one_broker("txn-verify", |_| {});
    let mut kafka = KafkaConn::to(&broker);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(kafka.create_topic("t", 2, 1), 0);
    let (pid, epoch) = init(&mut kafka, "app", 60_000);
    let invalid_txn_state = K::InvalidTxnState.code();
    // No transaction yet.
    assert_eq!(kafka.produce_as(Some("app"), "t", 1, txn_batch(pid, epoch, 0)).0, invalid_txn_state);
    assert_eq!(add_partitions(&mut kafka, "app", pid, epoch, &[("t", 0)], 3), [0]);
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 0)), (0, 0));
    // A partition the transaction does not hold.
    assert_eq!(kafka.produce_as(Some("app"), "t", 1, txn_batch(pid, epoch, 0)).0, invalid_txn_state);
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, false, 3), 0);
    await_state(&mut kafka, "app", "CompleteAbort");
    // A batch that arrives after its transaction was aborted (a retry
    // delayed past the abort).
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 1)).0, invalid_txn_state);
    for (partition, end) in [(0, 2), (1, 0)] {
        assert_eq!(kafka.list_offset("t", partition, -1), (0, end), "t/{partition}: nothing appended");
        let stable = kafka.list_offset_isolated("t", partition, -1, 1);
        assert_eq!(stable, (0, end), "t/{partition}: no transaction holds the last stable offset");
    }
    assert_eq!(markers(&mut conn, "t", 0), [(false, pid)]);

    // A fenced producer's batch: the partition has its epoch (no batch of
    // the newer one there yet), only the coordinator knows it is fenced.
    let (same, newer) = init(&mut kafka, "app", 60_000);
    assert_eq!((same, newer), (pid, epoch + 1));
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 2)).0, K::InvalidProducerEpoch.code());
    // The new producer goes on, its batches verified once per transaction.
    assert_eq!(add_partitions(&mut kafka, "app", pid, newer, &[("t", 0), ("t", 1)], 3), [0, 0]);
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, newer, 0)), (0, 2));
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, newer, 1)), (0, 3));
    assert_eq!(kafka.produce_as(Some("app"), "t", 1, txn_batch(pid, newer, 0)), (0, 0));
    assert_eq!(end_txn(&mut kafka, "app", pid, newer, true, 3), 0);
    await_state(&mut kafka, "app", "CompleteCommit");
    assert_eq!(markers(&mut conn, "t", 0), [(false, pid), (true, pid)]);
    assert_eq!(kafka.list_offset_isolated("t", 0, -1, 1), (0, 5), "committed: stable up to its marker");
    drop((kafka, conn));
    stop(broker);
}

/// EndTxn v5 (transactions v2): (code, producer id, epoch) the producer
/// goes on with.
fn end_txn_v5(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, commit: bool) -> (i16, i64, i16) {
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id(id))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let response = conn.call(5, &request);
    (response.error_code, response.producer_id.0, response.producer_epoch)
}

/// A Produce v12 as a transactions-v2 client sends it, retried on the
/// codes it retries (the coordinator still completing the previous
/// transaction).
fn produce_v12(conn: &mut KafkaConn, id: &str, topic: &str, partition: i32, batch: Vec<u8>) -> (i16, i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = conn.produce_at(12, Some(id), topic, partition, batch.clone());
        if answer.0 != K::NotEnoughReplicas.code() || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// KIP-890 part 2 as the Java client (4.0+) uses it: the broker
/// advertises transaction.version 2; the client adds no partition (its
/// Produce v12 does, and its TxnOffsetCommit v5 the group's) and every
/// EndTxn v5 answers the next epoch, under which the markers are written,
/// so a late batch of an ended transaction is fenced by its epoch.
#[test]
fn transactions_v2_add_partitions_by_producing_and_end_under_the_next_epoch() {
    let broker = one_broker("txn-v2", |_| {});
    let mut kafka = KafkaConn::to(&broker);
    let mut conn = Conn::connect(broker.addr().port());
    let versions = kafka.call(3, &ApiVersionsRequest::default());
    let feature = versions.finalized_features.iter().find(|f| f.name.as_str() == "transaction.version");
    assert_eq!(feature.map(|f| f.max_version_level), Some(2), "transactions v2 finalized");
    assert!(versions.finalized_features_epoch >= 0);
    assert_eq!(kafka.create_topic("t", 2, 1), 0);
    assert_eq!(kafka.create_topic("u", 1, 1), 0);
    let (pid, epoch) = init(&mut kafka, "app", 60_000);

    // No AddPartitionsToTxn: the produces add their partitions.
    assert_eq!(produce_v12(&mut kafka, "app", "t", 0, txn_batch(pid, epoch, 0)), (0, 0));
    assert_eq!(produce_v12(&mut kafka, "app", "t", 0, txn_batch(pid, epoch, 1)), (0, 1));
    assert_eq!(produce_v12(&mut kafka, "app", "t", 1, txn_batch(pid, epoch, 0)), (0, 0));
    let ongoing = describe(&mut kafka, "app");
    assert_eq!((ongoing.transaction_state.as_str(), ongoing.topics.len()), ("Ongoing", 1));
    assert_eq!(ongoing.topics[0].partitions, [0, 1]);
    // No AddOffsetsToTxn either: TxnOffsetCommit v5 adds the group's
    // offsets partition.
    assert_eq!(txn_offset_commit_at(&mut kafka, 5, "app", pid, epoch, "g", 2), 0);

    let (code, same_pid, next) = end_txn_v5(&mut kafka, "app", pid, epoch, true);
    assert_eq!((code, same_pid, next), (0, pid, epoch + 1), "the commit answers the next epoch");
    // The next transaction starts at once, while the coordinator may
    // still be writing the markers of the first.
    assert_eq!(produce_v12(&mut kafka, "app", "t", 0, txn_batch(pid, next, 0)).0, 0);
    await_committed(&mut kafka, "g", 2);
    for partition in [0, 1] {
        let found = markers(&mut conn, "t", partition);
        assert_eq!(found[0], (true, pid), "t/{partition} has the commit marker");
    }

    // Late batches of the committed transaction: on a partition with its
    // marker the bumped epoch fences it; on one it never touched the
    // coordinator does.
    let fenced = K::InvalidProducerEpoch.code();
    assert_eq!(kafka.produce_at(12, Some("app"), "t", 1, txn_batch(pid, epoch, 1)).0, fenced);
    assert_eq!(kafka.produce_at(12, Some("app"), "u", 0, txn_batch(pid, epoch, 0)).0, fenced);
    assert_eq!(kafka.list_offset("u", 0, -1), (0, 0), "nothing appended to u/0");

    // The second transaction aborts; its answer is the epoch after.
    let (code, _, after) = end_txn_v5(&mut kafka, "app", pid, next, false);
    assert_eq!((code, after), (0, next + 1));
    await_state(&mut kafka, "app", "CompleteAbort");
    // A retried EndTxn (its answer lost) names the epoch before the bump:
    // the same answer again.
    assert_eq!(end_txn_v5(&mut kafka, "app", pid, next, false), (0, pid, next + 1), "a retried abort");
    assert_eq!(end_txn_v5(&mut kafka, "app", pid, next, true).0, K::ProducerFenced.code(), "not the same end");
    // An abort with nothing added still moves the epoch on (a v2 client's
    // transaction whose first produce never reached the coordinator).
    assert_eq!(end_txn_v5(&mut kafka, "app", pid, next + 1, false), (0, pid, next + 2));
    await_state(&mut kafka, "app", "CompleteAbort");
    for partition in [0, 1] {
        let end = kafka.list_offset("t", partition, -1);
        assert_eq!(kafka.list_offset_isolated("t", partition, -1, 1), end, "t/{partition}: nothing holds the LSO");
    }
    // A v1 client's EndTxn (v3) keeps its epoch, as before.
    assert_eq!(add_partitions(&mut kafka, "app", pid, next + 2, &[("t", 1)], 3), [0]);
    assert_eq!(end_txn(&mut kafka, "app", pid, next + 2, true, 3), 0);
    assert_eq!(await_state(&mut kafka, "app", "CompleteCommit").producer_epoch, next + 2);
    drop((kafka, conn));
    stop(broker);
}

/// With transaction.partition.verification.enable=false (a cluster whose
/// brokers do not all answer the question yet) the leader takes the batch
/// as before KIP-890.
#[test]
fn without_verification_a_batch_outside_the_transaction_is_taken() {
    let broker = one_broker("txn-verify-off", |config| config.transaction_partition_verification_enable = false);
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let (pid, epoch) = init(&mut kafka, "app", 60_000);
    assert_eq!(kafka.produce_as(Some("app"), "t", 0, txn_batch(pid, epoch, 0)), (0, 0));
    assert_eq!(kafka.list_offset_isolated("t", 0, -1, 1), (0, 0), "an unknown transaction holds the LSO");
    drop(kafka);
    stop(broker);
}

#[test]
fn a_clients_control_batch_is_refused() {
    let broker = one_broker("txn-client-control", |_| {});
    let mut kafka = KafkaConn::to(&broker);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let control = spate_format::batch::ControlRecord { commit: true, coordinator_epoch: 0 };
    let batch = spate_format::batch::build_control_batch(7, 0, control, 1).to_vec();
    assert_ne!(conn.produce("t", 0, &batch, -1).0, ErrorCode::None, "native");
    // Nor a transactional data batch without the producer's transactional
    // id on the request (Kafka's rule: the id is what ACLs and the
    // coordinator know the transaction by).
    let (code, _) = conn.produce("t", 0, &txn_batch(7, 0, 0), -1);
    assert_eq!(code, ErrorCode::TransactionalIdAuthorizationFailed, "native transactional batch without its id");
    assert_ne!(kafka.produce("t", 0, batch).0, 0, "Kafka");
    assert_eq!(conn.list_offset("t", 0, -1), (ErrorCode::None, 0), "nothing appended");
    stop(broker);
}

/// TxnOffsetCommit at v3 for `group`'s offset of t/0: the partition's code.
fn txn_offset_commit(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, group: &str, offset: i64) -> i16 {
    txn_offset_commit_at(conn, 3, id, pid, epoch, group, offset)
}

/// `txn_offset_commit` at `version`.
fn txn_offset_commit_at(
    conn: &mut KafkaConn,
    version: i16,
    id: &str,
    pid: i64,
    epoch: i16,
    group: &str,
    offset: i64,
) -> i16 {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let request = TxnOffsetCommitRequest::default()
        .with_transactional_id(txn_id(id))
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(vec![TxnOffsetCommitRequestTopic::default().with_name(name("t")).with_partitions(vec![
            TxnOffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(offset),
        ])]);
    conn.call(version, &request).topics[0].partitions[0].error_code
}

/// OffsetFetch v7 of `group`'s offset of t/0: (partition code, offset).
fn committed(conn: &mut KafkaConn, group: &str, require_stable: bool) -> (i16, i64) {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default().with_name(name("t")).with_partition_indexes(vec![0]),
        ]))
        .with_require_stable(require_stable);
    let response = conn.call(7, &request);
    assert_eq!(response.error_code, 0, "OffsetFetch");
    let partition = &response.topics[0].partitions[0];
    (partition.error_code, partition.committed_offset)
}

/// Waits until `group`'s committed offset of t/0 is `offset` (the
/// coordinator writes markers after it answers EndTxn).
fn await_committed(conn: &mut KafkaConn, group: &str, offset: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = committed(conn, group, true);
        if found == (0, offset) {
            return;
        }
        assert!(Instant::now() < deadline, "{group}'s offset never became {offset}: {found:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The consumer half of exactly-once: offsets committed in a transaction
/// are invisible (and unstable to a reader that asks for stable offsets,
/// KIP-447) until the transaction commits, never visible if it aborts, a
/// zombie's commit is refused, and a coordinator that starts again holds
/// an open transaction's offsets pending until its marker.
#[test]
fn offsets_committed_in_a_transaction_count_only_once_it_commits() {
    let dir = data_dir("txn-offsets");
    let broker = start_at(&dir, |_| {});
    let mut kafka = KafkaConn::to(&broker);
    assert_eq!(kafka.create_topic("t", 1, 1), 0);
    let (pid, epoch) = init(&mut kafka, "app", 60_000);

    assert_eq!(add_offsets(&mut kafka, "app", pid, epoch, "readers"), 0);
    assert_eq!(txn_offset_commit(&mut kafka, "app", pid, epoch, "readers", 5), 0);
    assert_eq!(committed(&mut kafka, "readers", false), (0, -1), "pending: not committed yet");
    assert_eq!(committed(&mut kafka, "readers", true).0, K::UnstableOffsetCommit.code(), "KIP-447");
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, true, 3), 0);
    await_committed(&mut kafka, "readers", 5);

    assert_eq!(add_offsets(&mut kafka, "app", pid, epoch, "readers"), 0);
    assert_eq!(txn_offset_commit(&mut kafka, "app", pid, epoch, "readers", 9), 0);
    assert_eq!(end_txn(&mut kafka, "app", pid, epoch, false, 3), 0);
    await_state(&mut kafka, "app", "CompleteAbort");
    await_committed(&mut kafka, "readers", 5);

    // A successor fences the producer: its offsets are refused.
    let (same, next) = init(&mut kafka, "app", 60_000);
    assert_eq!((same, next), (pid, epoch + 1));
    assert_eq!(add_offsets(&mut kafka, "app", pid, next, "readers"), 0);
    assert_eq!(txn_offset_commit(&mut kafka, "app", pid, next, "readers", 7), 0);
    assert_eq!(
        txn_offset_commit(&mut kafka, "app", pid, epoch, "readers", 8),
        K::InvalidProducerEpoch.code(),
        "the fenced epoch's commit"
    );
    drop(kafka);
    stop(broker);

    // The open transaction's offset is replayed as pending, and takes
    // effect at its commit.
    let broker = start_at(&dir, |_| {});
    let mut kafka = KafkaConn::to(&broker);
    await_state(&mut kafka, "app", "Ongoing");
    assert_eq!(committed(&mut kafka, "readers", true).0, K::UnstableOffsetCommit.code(), "still pending");
    assert_eq!(committed(&mut kafka, "readers", false), (0, 5));
    assert_eq!(end_txn(&mut kafka, "app", pid, next, true, 3), 0);
    await_committed(&mut kafka, "readers", 7);
    stop(broker);
}
