//! The transaction coordinator in a three-broker cluster in this process
//! (issue 17): markers reach partitions led by other brokers (a native
//! Produce of the control batch from a broker-authenticated connection);
//! while a transaction is prepared and a marker cannot be written, every
//! request on it gets CONCURRENT_TRANSACTIONS; and when the coordinator's
//! broker stops, the replica elected next finds the PrepareCommit in its
//! log and completes the commit.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::kafka::{KafkaConn, name};
use common::*;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_net::BrokerHandle;

const TXN_PARTITIONS: u32 = 4;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Three brokers, each a controller voter, started at once.
fn start_cluster(name: &str) -> Vec<Option<BrokerHandle>> {
    let quorum: Vec<String> = (1..=3).map(|node| format!("{node}@127.0.0.1:{}", free_port())).collect();
    let quorum = quorum.join(",");
    let starting: Vec<_> = (1..=3)
        .map(|node| {
            let mut config = config(&data_dir(&format!("{name}-{node}")), 1);
            config.node_id = node;
            config.controller_quorum = quorum.clone();
            config.broker_session_timeout_ms = 1500;
            config.broker_heartbeat_interval_ms = 150;
            config.replica_lag_time_max_ms = 1500;
            config.group_offsets_partitions = 2;
            config.transaction_state_partitions = TXN_PARTITIONS;
            std::thread::spawn(move || spate_net::start(config).expect("broker starts"))
        })
        .collect();
    starting.into_iter().map(|t| Some(t.join().expect("started"))).collect()
}

/// (leader, replicas, isr) of each partition of `topic` as `conn`'s
/// broker sees it.
fn partitions(conn: &mut KafkaConn, topic: &str) -> Vec<(i32, usize, usize)> {
    let found = conn.metadata(topic);
    let mut out: Vec<(i32, i32, usize, usize)> = found
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0, p.replica_nodes.len(), p.isr_nodes.len()))
        .collect();
    out.sort_by_key(|p| p.0);
    out.into_iter().map(|(_, leader, replicas, isr)| (leader, replicas, isr)).collect()
}

fn await_partitions(conn: &mut KafkaConn, topic: &str, count: usize, replicas: usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let found = partitions(conn, topic);
        if found.len() == count
            && found.iter().all(|(leader, r, isr)| *leader > 0 && *r == replicas && *isr == replicas)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} not fully replicated: {found:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create(conn: &mut KafkaConn, topic: &str, partitions: i32, replication_factor: i16, configs: &[(&str, &str)]) {
    let configs = configs
        .iter()
        .map(|(key, value)| CreatableTopicConfig::default().with_name(text(key)).with_value(Some(text(value))))
        .collect();
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
        CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(configs),
    ]);
    assert_eq!(conn.call(7, &request).topics[0].error_code, 0, "create {topic}");
}

fn find_coordinator(conn: &mut KafkaConn, id: &str) -> (i16, i32) {
    let request = FindCoordinatorRequest::default().with_key_type(1).with_coordinator_keys(vec![text(id)]);
    let response = conn.call(4, &request);
    (response.coordinators[0].error_code, response.coordinators[0].node_id.0)
}

fn init_once(conn: &mut KafkaConn, id: &str) -> (i16, i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(text(id))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let response = conn.call(4, &request);
    (response.error_code, response.producer_id.0, response.producer_epoch)
}

fn add_partitions(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, tps: &[(&str, i32)]) -> Vec<i16> {
    let topics = tps
        .iter()
        .map(|(topic, partition)| {
            AddPartitionsToTxnTopic::default().with_name(name(topic)).with_partitions(vec![*partition])
        })
        .collect();
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(text(id)))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(topics);
    let response = conn.call(3, &request);
    response
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
        .collect()
}

fn end_txn(conn: &mut KafkaConn, id: &str, pid: i64, epoch: i16, commit: bool) -> i16 {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(text(id)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    conn.call(3, &request).error_code
}

/// (code, state) of `id` from DescribeTransactions.
fn state_of(conn: &mut KafkaConn, id: &str) -> (i16, String) {
    let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(text(id))]);
    let described = conn.call(0, &request).transaction_states.remove(0);
    (described.error_code, described.transaction_state.to_string())
}

/// The commit flags of the control batches of `topic`/`partition`, read
/// from its leader (native Fetch).
fn markers(broker: &BrokerHandle, topic: &str, partition: i32) -> Vec<bool> {
    let mut conn = Conn::connect(broker.addr().port());
    let (_, _, bytes) = conn.fetch(topic, partition, 0, 0);
    control_batches(&bytes)
}

fn control_batches(bytes: &Bytes) -> Vec<bool> {
    let mut out = Vec::new();
    for span in spate_format::batch::split_batches(bytes) {
        let batch = &bytes[span.expect("whole batches").range];
        let header = spate_format::batch::peek_header(batch).expect("a header");
        if header.attributes().is_control() {
            out.push(spate_format::batch::parse_control_batch(batch).expect("a control record").commit);
        }
    }
    out
}

/// A transactional batch of one record, as a transactional producer
/// sends it.
fn txn_batch(pid: i64, epoch: i16, sequence: i32) -> Vec<u8> {
    let mut builder = spate_format::batch::BatchBuilder::new(1).producer(pid, epoch, sequence).transactional();
    builder.push(1, None, Some(b"in a transaction"), &[]);
    builder.build().to_vec()
}

fn running(brokers: &[Option<BrokerHandle>], node: i32) -> &BrokerHandle {
    brokers[(node - 1) as usize].as_ref().expect("running")
}

#[test]
fn a_prepared_commit_blocks_the_transaction_until_a_new_coordinator_completes_it() {
    let mut brokers = start_cluster("txn-failover");
    let mut kafka = KafkaConn::to(running(&brokers, 1));
    await_partitions(&mut kafka, "__transaction_state", TXN_PARTITIONS as usize, 3);
    // "t" replicates; "stuck" has one replica and needs two in sync, so no
    // marker can be written to it (NOT_ENOUGH_REPLICAS) until that changes.
    create(&mut kafka, "t", 3, 3, &[]);
    create(&mut kafka, "stuck", 3, 1, &[("min.insync.replicas", "2")]);
    await_partitions(&mut kafka, "t", 3, 3);

    let (code, coordinator) = find_coordinator(&mut kafka, "app");
    assert_eq!(code, 0);
    // A partition of "stuck" that lives on another broker than the
    // coordinator, so that it stays when the coordinator stops.
    let stuck = partitions(&mut kafka, "stuck")
        .iter()
        .position(|(leader, _, _)| *leader != coordinator)
        .expect("one of three partitions is elsewhere") as i32;
    let mut at_coordinator = KafkaConn::to(running(&brokers, coordinator));
    let deadline = Instant::now() + Duration::from_secs(20);
    let (pid, epoch) = loop {
        let (code, pid, epoch) = init_once(&mut at_coordinator, "app");
        if code == 0 {
            break (pid, epoch);
        }
        assert!(Instant::now() < deadline, "InitProducerId: {code}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let tps = [("t", 0), ("t", 1), ("t", 2), ("stuck", stuck)];
    let deadline = Instant::now() + Duration::from_secs(20);
    while add_partitions(&mut at_coordinator, "app", pid, epoch, &tps) != [0, 0, 0, 0] {
        // The coordinator learns of the new topics from the metadata log.
        assert!(Instant::now() < deadline, "AddPartitionsToTxn never succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(end_txn(&mut at_coordinator, "app", pid, epoch, true), 0, "PrepareCommit is persisted");

    // The markers of "t" land, on whichever broker leads each partition
    // (two of them elsewhere than the coordinator); "stuck"'s cannot.
    let t_leaders: Vec<i32> = partitions(&mut kafka, "t").iter().map(|(leader, _, _)| *leader).collect();
    assert!(t_leaders.iter().any(|leader| *leader != coordinator), "some markers go to another broker: {t_leaders:?}");
    await_condition("commit markers on every partition of t", || {
        (0..3).all(|p| markers(running(&brokers, t_leaders[p]), "t", p as i32) == [true])
    });
    assert_eq!(state_of(&mut at_coordinator, "app"), (0, "PrepareCommit".to_string()));
    let busy = K::ConcurrentTransactions.code();
    assert_eq!(end_txn(&mut at_coordinator, "app", pid, epoch, true), busy, "a retried commit waits");
    assert_eq!(add_partitions(&mut at_coordinator, "app", pid, epoch, &[("t", 0)]), [busy]);
    assert_eq!(init_once(&mut at_coordinator, "app").0, busy);

    // The coordinator stops; another replica of its partition takes over,
    // and completes the commit once "stuck" can take its marker.
    stop(brokers[(coordinator - 1) as usize].take().expect("running"));
    let survivor = if coordinator == 1 { 2 } else { 1 };
    let mut kafka = KafkaConn::to(running(&brokers, survivor));
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default().with_resource_type(2).with_resource_name(text("stuck")).with_configs(vec![
            AlterableConfig::default()
                .with_name(text("min.insync.replicas"))
                .with_config_operation(0)
                .with_value(Some(text("1"))),
        ]),
    ]);
    assert_eq!(kafka.call(1, &request).responses[0].error_code, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    let new_coordinator = loop {
        let (code, node) = find_coordinator(&mut kafka, "app");
        if code == 0 && node != coordinator {
            let mut at_new = KafkaConn::to(running(&brokers, node));
            if state_of(&mut at_new, "app") == (0, "CompleteCommit".to_string()) {
                break node;
            }
        }
        assert!(Instant::now() < deadline, "the new coordinator did not complete the commit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stuck_leader = partitions(&mut kafka, "stuck")[stuck as usize].0;
    assert_eq!(
        markers(running(&brokers, stuck_leader), "stuck", stuck),
        [true],
        "the marker the old one could not write"
    );

    // The producer goes on with the new coordinator: its next transaction
    // aborts, its markers on connections kept from the last ones.
    let mut at_new = KafkaConn::to(running(&brokers, new_coordinator));
    let (code, pid, epoch) = init_once(&mut at_new, "app");
    assert_eq!(code, 0);
    let tps = [("t", 0), ("t", 1), ("t", 2), ("stuck", stuck)];
    assert_eq!(add_partitions(&mut at_new, "app", pid, epoch, &tps), [0, 0, 0, 0]);
    // KIP-890 part 1 across brokers: a partition of t led elsewhere than
    // the coordinator asks it (a verify-only AddPartitionsToTxn between
    // brokers) before it takes the transaction's first batch.
    let t_leaders: Vec<i32> = partitions(&mut kafka, "t").iter().map(|(leader, _, _)| *leader).collect();
    let remote = t_leaders.iter().position(|leader| *leader != new_coordinator).expect("a partition elsewhere");
    let mut at_leader = KafkaConn::to(running(&brokers, t_leaders[remote]));
    let first = at_leader.produce_as(Some("app"), "t", remote as i32, txn_batch(pid, epoch, 0));
    assert_eq!(first.0, 0, "a partition in the transaction takes its batch");
    assert_eq!(end_txn(&mut at_new, "app", pid, epoch, false), 0);
    await_condition("the second transaction aborted", || {
        state_of(&mut at_new, "app") == (0, "CompleteAbort".to_string())
    });
    assert_eq!(markers(running(&brokers, stuck_leader), "stuck", stuck), [true, false]);
    // A batch of the aborted transaction arriving late is refused: taken,
    // it would hold t's last stable offset for good.
    let late = at_leader.produce_as(Some("app"), "t", remote as i32, txn_batch(pid, epoch, 1));
    assert_eq!(late.0, K::InvalidTxnState.code());
    let marks = markers(running(&brokers, t_leaders[remote]), "t", remote as i32);
    assert_eq!(marks.last(), Some(&false), "the abort marker is the partition's last batch: {marks:?}");
    let end = at_leader.list_offset("t", remote as i32, -1);
    assert_eq!(at_leader.list_offset_isolated("t", remote as i32, -1, 1), end, "no transaction holds t's LSO");
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}

/// (code, node) of the coordinator of a group (FindCoordinator key type 0).
fn group_coordinator(conn: &mut KafkaConn, group: &str) -> (i16, i32) {
    let request = FindCoordinatorRequest::default().with_key_type(0).with_coordinator_keys(vec![text(group)]);
    let response = conn.call(4, &request);
    (response.coordinators[0].error_code, response.coordinators[0].node_id.0)
}

/// KIP-890 part 2 across brokers: a transactions-v2 client's Produce v12
/// to a partition led elsewhere than its transaction's coordinator has
/// that leader add the partition (a native AddPartitionsToTxn between
/// brokers), and its TxnOffsetCommit v5 has the group's coordinator on a
/// third broker add the group's offsets partition; EndTxn v5 ends it all
/// under the next epoch.
#[test]
fn transactions_v2_partitions_and_offsets_join_through_other_brokers() {
    let brokers = start_cluster("txn-v2-cluster");
    let mut kafka = KafkaConn::to(running(&brokers, 1));
    await_partitions(&mut kafka, "__transaction_state", TXN_PARTITIONS as usize, 3);
    await_partitions(&mut kafka, "__consumer_offsets", 2, 3);
    create(&mut kafka, "t", 3, 3, &[]);
    await_partitions(&mut kafka, "t", 3, 3);
    let (code, coordinator) = find_coordinator(&mut kafka, "app");
    assert_eq!(code, 0);
    let mut at_coordinator = KafkaConn::to(running(&brokers, coordinator));
    let (pid, epoch) = loop {
        let (code, pid, epoch) = init_once(&mut at_coordinator, "app");
        if code == 0 {
            break (pid, epoch);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let t_leaders: Vec<i32> = partitions(&mut kafka, "t").iter().map(|(leader, _, _)| *leader).collect();
    let remote = t_leaders.iter().position(|leader| *leader != coordinator).expect("a partition elsewhere");
    let mut at_leader = KafkaConn::to(running(&brokers, t_leaders[remote]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let answer = at_leader.produce_at(12, Some("app"), "t", remote as i32, txn_batch(pid, epoch, 0));
        // The leader learns of the new topic and the coordinator's
        // leadership from the metadata log: until then a client retries
        // (nothing was appended).
        let retriable = [
            K::NotEnoughReplicas.code(),
            K::NotLeaderOrFollower.code(),
            K::UnknownTopicOrPartition.code(),
            K::LeaderNotAvailable.code(),
        ];
        if !retriable.contains(&answer.0) || Instant::now() >= deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first, (0, 0), "the leader added t/{remote} to the transaction");
    let (_, described) = state_of(&mut at_coordinator, "app");
    assert_eq!(described, "Ongoing");

    // A group whose coordinator is not the transaction's.
    let group = (0..64)
        .map(|n| format!("g{n}"))
        .find(|group| group_coordinator(&mut kafka, group).1 != coordinator)
        .expect("two offsets partitions on three brokers: one elsewhere");
    let (_, group_node) = group_coordinator(&mut kafka, &group);
    let mut at_group = KafkaConn::to(running(&brokers, group_node));
    {
        use kafka_protocol::messages::txn_offset_commit_request::{
            TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
        };
        let request = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(text("app")))
            .with_group_id(GroupId(text(&group)))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_generation_id(-1)
            .with_member_id(text(""))
            .with_topics(vec![TxnOffsetCommitRequestTopic::default().with_name(name("t")).with_partitions(vec![
                TxnOffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(1),
            ])]);
        let code = at_group.call(5, &request).topics[0].partitions[0].error_code;
        assert_eq!(code, 0, "the group's coordinator added its offsets partition");
    }
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(text("app")))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(true);
    let ended = at_coordinator.call(5, &request);
    assert_eq!((ended.error_code, ended.producer_id.0, ended.producer_epoch), (0, pid, epoch + 1));
    await_condition("the commit marker on the remote partition", || {
        markers(running(&brokers, t_leaders[remote]), "t", remote as i32) == [true]
    });
    await_condition("the group's offset committed", || {
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(text(&group)))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default().with_name(name("t")).with_partition_indexes(vec![0]),
            ]))
            .with_require_stable(true);
        let response = at_group.call(7, &request);
        response.error_code == 0 && response.topics[0].partitions[0].committed_offset == 1
    });
    // A late batch of the committed transaction: fenced by the marker's
    // epoch at the partition.
    let late = at_leader.produce_at(12, Some("app"), "t", remote as i32, txn_batch(pid, epoch, 1));
    assert_eq!(late.0, K::InvalidProducerEpoch.code());
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}
