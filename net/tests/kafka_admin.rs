//! Kafka's admin APIs (CreatePartitions, DeleteRecords, DescribeLogDirs,
//! ElectLeaders, DescribeProducers, OffsetDelete) through the Kafka port of
//! an in-process broker, encoded and decoded with the kafka-protocol
//! crate's codecs as a Kafka client would.

mod common;

use common::kafka::{KafkaConn, name};
use common::*;
use kafka_protocol::ResponseError as K;
use spate_net::{BrokerConfig, BrokerHandle};

/// Three brokers in this process, each a controller voter, started at
/// once (each waits for a quorum to register it).
fn start_cluster(name: &str) -> (Vec<BrokerConfig>, Vec<Option<BrokerHandle>>) {
    let quorum: Vec<String> = (1..=3).map(|node| format!("{node}@127.0.0.1:{}", free_port())).collect();
    let quorum = quorum.join(",");
    let configs: Vec<BrokerConfig> = (1..=3)
        .map(|node| BrokerConfig {
            node_id: node,
            controller_quorum: quorum.clone(),
            broker_session_timeout_ms: 1500,
            broker_heartbeat_interval_ms: 150,
            replica_lag_time_max_ms: 1500,
            ..config(&data_dir(&format!("{name}-{node}")), 1)
        })
        .collect();
    let starting: Vec<_> = configs
        .iter()
        .cloned()
        .map(|config| std::thread::spawn(move || spate_net::start(config).expect("broker starts")))
        .collect();
    (configs, starting.into_iter().map(|t| Some(t.join().expect("started"))).collect())
}

fn kafka_to(brokers: &[Option<BrokerHandle>], node: i32) -> KafkaConn {
    KafkaConn::to(brokers[(node - 1) as usize].as_ref().expect("running"))
}

/// (error, low watermark) of one partition's DeleteRecords.
fn delete_records(conn: &mut KafkaConn, topic: &str, partition: i32, offset: i64) -> (i16, i64) {
    use kafka_protocol::messages::DeleteRecordsRequest;
    use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
    let request = DeleteRecordsRequest::default().with_timeout_ms(30_000).with_topics(vec![
        DeleteRecordsTopic::default().with_name(name(topic)).with_partitions(vec![
            DeleteRecordsPartition::default().with_partition_index(partition).with_offset(offset),
        ]),
    ]);
    let response = conn.call(2, &request);
    let part = &response.topics[0].partitions[0];
    assert_eq!(part.partition_index, partition);
    (part.error_code, part.low_watermark)
}

fn create_partitions(conn: &mut KafkaConn, topic: &str, count: i32, validate_only: bool) -> i16 {
    use kafka_protocol::messages::CreatePartitionsRequest;
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    let request =
        CreatePartitionsRequest::default().with_timeout_ms(30_000).with_validate_only(validate_only).with_topics(vec![
            CreatePartitionsTopic::default().with_name(name(topic)).with_count(count).with_assignments(None),
        ]);
    let response = conn.call(3, &request);
    assert_eq!(response.results.len(), 1);
    assert_eq!(response.results[0].name, name(topic));
    response.results[0].error_code
}

/// Before CreatePartitions was served, a Kafka client asking for it had its
/// connection closed and the topic could not grow.
#[test]
fn create_partitions_grows_a_topic_and_produce_reaches_the_new_partitions() {
    let dir = data_dir("kafka_create_partitions");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("grow", 2, 1), 0);
    assert_eq!(conn.produce("grow", 3, batch(1)).0, K::UnknownTopicOrPartition.code(), "no partition 3 yet");

    assert_eq!(create_partitions(&mut conn, "grow", 2, false), K::InvalidPartitions.code(), "equal count");
    assert_eq!(create_partitions(&mut conn, "grow", 1, false), K::InvalidPartitions.code(), "smaller count");
    assert_eq!(create_partitions(&mut conn, "nope", 4, false), K::UnknownTopicOrPartition.code());
    assert_eq!(create_partitions(&mut conn, "grow", 4, true), 0, "validate only");
    assert_eq!(conn.metadata("grow").partitions.len(), 2, "validate only changes nothing");

    assert_eq!(create_partitions(&mut conn, "grow", 4, false), 0);
    // The client refreshes its metadata and sees four partitions, each led.
    let topic = conn.metadata("grow");
    assert_eq!(topic.partitions.len(), 4);
    for p in &topic.partitions {
        assert_eq!(p.error_code, 0);
        assert_eq!(p.leader_id.0, 1, "led by the only broker");
    }
    for partition in 0..4 {
        assert_eq!(conn.produce("grow", partition, batch(2)), (0, 0), "partition {partition}");
        assert_eq!(conn.list_offset("grow", partition, -1), (0, 2));
    }

    // After a restart the new partitions open with their records.
    drop(conn);
    stop(broker);
    let broker = start(&dir, 3);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.metadata("grow").partitions.len(), 4);
    assert_eq!(conn.list_offset("grow", 3, -1), (0, 2));
    stop(broker);
}

/// Before DeleteRecords was served, a Kafka client asking for it had its
/// connection closed, and no record could be deleted short of retention.
#[test]
fn delete_records_moves_the_log_start_and_the_records_below_stay_unreadable_after_a_restart() {
    let dir = data_dir("kafka_delete_records");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("purge", 1, 1), 0);
    for _ in 0..4 {
        assert_eq!(conn.produce("purge", 0, batch(5)).0, 0);
    }
    assert_eq!(delete_records(&mut conn, "purge", 0, 21), (K::OffsetOutOfRange.code(), -1), "past the high watermark");
    assert_eq!(delete_records(&mut conn, "purge", 1, 3).0, K::UnknownTopicOrPartition.code());
    assert_eq!(delete_records(&mut conn, "nope", 0, 3).0, K::UnknownTopicOrPartition.code());
    assert_eq!(delete_records(&mut conn, "purge", 0, 7), (0, 7), "inside a batch");
    assert_eq!(conn.list_offset("purge", 0, -2), (0, 7), "earliest");
    assert_eq!(delete_records(&mut conn, "purge", 0, 2), (0, 7), "never backwards");
    let mut native = Conn::connect(broker.addr().port());
    assert_eq!(native.fetch("purge", 0, 6, 0).0, spate_flatbuf::proto::ErrorCode::OffsetOutOfRange);
    let (error, _, records) = native.fetch("purge", 0, 7, 0);
    assert_eq!(error, spate_flatbuf::proto::ErrorCode::None);
    assert!(!records.is_empty());
    drop(native);
    drop(conn);
    stop(broker);

    let broker = start(&dir, 1);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.list_offset("purge", 0, -2), (0, 7), "kept across a restart");
    assert_eq!(delete_records(&mut conn, "purge", 0, -1), (0, 20), "-1: up to the high watermark");
    assert_eq!(conn.list_offset("purge", 0, -2), (0, 20));
    stop(broker);
}

/// The follower moves its log start after the leader's: once the leader
/// stops and the follower leads, the deleted records stay deleted.
/// (Without the follower's step in `replica/fetcher.rs` the new leader
/// served them again from offset 0: checked.)
#[test]
fn records_deleted_on_the_leader_stay_deleted_after_the_follower_takes_over() {
    let (_, mut brokers) = start_cluster("kafka-delete-records");
    let mut conn = kafka_to(&brokers, 1);
    await_condition("the topic is created", || conn.create_topic("purge-rf", 1, 2) == 0);
    let mut placement = None;
    await_condition("both replicas are in sync", || {
        let topic = conn.metadata("purge-rf");
        placement = topic.partitions.first().map(|p| (p.leader_id.0, p.replica_nodes.clone(), p.isr_nodes.clone()));
        placement.as_ref().is_some_and(|(leader, _, isr)| *leader > 0 && isr.len() == 2)
    });
    let (leader, replicas, _) = placement.expect("placed");
    let follower = replicas.iter().map(|r| r.0).find(|&r| r != leader).expect("a follower");
    let mut at_leader = kafka_to(&brokers, leader);
    for i in 0..4 {
        let mut produced = (-1, -1);
        await_condition("the leader takes a write", || {
            produced = at_leader.produce("purge-rf", 0, batch(5));
            produced.0 != K::LeaderNotAvailable.code() && produced.0 != K::UnknownTopicOrPartition.code()
        });
        assert_eq!(produced, (0, i * 5));
    }
    assert_eq!(delete_records(&mut at_leader, "purge-rf", 0, 12), (0, 12));
    // The follower learns the start from its next fetch; give it one by
    // writing once more, and wait until it has that write.
    assert_eq!(at_leader.produce("purge-rf", 0, batch(1)), (0, 20));

    drop(at_leader);
    stop(brokers[(leader - 1) as usize].take().expect("running"));
    let mut at_follower = kafka_to(&brokers, follower);
    await_condition("the follower leads and serves", || {
        at_follower.metadata("purge-rf").partitions.first().is_some_and(|p| p.leader_id.0 == follower)
            && at_follower.list_offset("purge-rf", 0, -1) == (0, 21)
    });
    assert_eq!(at_follower.list_offset("purge-rf", 0, -2), (0, 12), "the deleted records stay deleted");
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}

/// A follower away while DeleteRecords moved its leader's log start into
/// a batch (10..=14, start 12) ends below that start: it resets to 12 and
/// is sent the batch from 10 whole. Before the fix its log refused that
/// batch on every fetch and it never caught up.
#[test]
fn a_follower_reset_to_a_log_start_inside_a_batch_catches_up_and_can_lead() {
    let (configs, mut brokers) = start_cluster("kafka-delete-records-away");
    let mut conn = kafka_to(&brokers, 1);
    await_condition("the topic is created", || conn.create_topic("purge-away", 1, 2) == 0);
    let mut placement = None;
    await_condition("both replicas are in sync", || {
        let topic = conn.metadata("purge-away");
        placement = topic.partitions.first().map(|p| (p.leader_id.0, p.replica_nodes.clone(), p.isr_nodes.clone()));
        placement.as_ref().is_some_and(|(leader, _, isr)| *leader > 0 && isr.len() == 2)
    });
    let (leader, replicas, _) = placement.expect("placed");
    let follower = replicas.iter().map(|r| r.0).find(|&r| r != leader).expect("a follower");
    let isr_of = |conn: &mut KafkaConn| conn.metadata("purge-away").partitions.first().map(|p| p.isr_nodes.len());
    let mut at_leader = kafka_to(&brokers, leader);
    stop(brokers[(follower - 1) as usize].take().expect("running"));
    await_condition("the stopped follower leaves the ISR", || isr_of(&mut at_leader) == Some(1));
    for i in 0..4 {
        let mut produced = (-1, -1);
        await_condition("the leader takes a write", || {
            produced = at_leader.produce("purge-away", 0, batch(5));
            produced.0 != K::LeaderNotAvailable.code() && produced.0 != K::UnknownTopicOrPartition.code()
        });
        assert_eq!(produced, (0, i * 5));
    }
    assert_eq!(delete_records(&mut at_leader, "purge-away", 0, 12), (0, 12));

    let follower_config = configs[(follower - 1) as usize].clone();
    brokers[(follower - 1) as usize] = Some(spate_net::start(follower_config).expect("restarts"));
    await_condition("the follower catches up and rejoins the ISR", || isr_of(&mut at_leader) == Some(2));
    drop(at_leader);
    stop(brokers[(leader - 1) as usize].take().expect("running"));
    let mut at_follower = kafka_to(&brokers, follower);
    await_condition("the follower leads and serves every record", || {
        at_follower.metadata("purge-away").partitions.first().is_some_and(|p| p.leader_id.0 == follower)
            && at_follower.list_offset("purge-away", 0, -1) == (0, 20)
    });
    assert_eq!(at_follower.list_offset("purge-away", 0, -2), (0, 12), "its log starts where the leader's did");
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}

fn describe_log_dirs(
    conn: &mut KafkaConn,
    topics: Option<Vec<(&str, Vec<i32>)>>,
) -> kafka_protocol::messages::DescribeLogDirsResponse {
    use kafka_protocol::messages::DescribeLogDirsRequest;
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    let topics = topics.map(|topics| {
        topics
            .into_iter()
            .map(|(topic, partitions)| {
                DescribableLogDirTopic::default().with_topic(name(topic)).with_partitions(partitions)
            })
            .collect()
    });
    conn.call(4, &DescribeLogDirsRequest::default().with_topics(topics))
}

/// Before DescribeLogDirs was served, a Kafka client asking for it had its
/// connection closed.
#[test]
fn describe_log_dirs_lists_each_hosted_partition_with_its_size_and_the_disk_space() {
    let dir = data_dir("kafka_describe_log_dirs");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("dirs-a", 2, 1), 0);
    assert_eq!(conn.create_topic("dirs-b", 1, 1), 0);
    assert_eq!(conn.produce("dirs-a", 1, batch(10)).0, 0);

    let response = describe_log_dirs(&mut conn, None);
    assert_eq!(response.results.len(), 1, "one log directory: the data directory");
    let result = &response.results[0];
    assert_eq!(result.error_code, 0);
    assert_eq!(std::path::Path::new(result.log_dir.as_str()), std::path::absolute(&dir).expect("absolute"));
    assert!(result.total_bytes > 0 && result.usable_bytes > 0 && result.usable_bytes <= result.total_bytes);
    let sizes = |result: &kafka_protocol::messages::describe_log_dirs_response::DescribeLogDirsResult| {
        let mut sizes: Vec<(String, i32, i64, i64)> = result
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index, p.partition_size, p.offset_lag))
            })
            .filter(|(name, ..)| name.starts_with("dirs-"))
            .collect();
        sizes.sort();
        sizes
    };
    let listed = sizes(result);
    assert_eq!(
        listed.iter().map(|(n, p, _, lag)| (n.as_str(), *p, *lag)).collect::<Vec<_>>(),
        vec![("dirs-a", 0, 0), ("dirs-a", 1, 0), ("dirs-b", 0, 0)]
    );
    assert_eq!(listed[0].2, 0, "an empty partition");
    assert!(listed[1].2 > 100, "the written batch counts: {listed:?}");

    let response = describe_log_dirs(&mut conn, Some(vec![("dirs-a", vec![1]), ("nope", vec![0])]));
    let listed = sizes(&response.results[0]);
    assert_eq!(listed.iter().map(|(n, p, ..)| (n.as_str(), *p)).collect::<Vec<_>>(), vec![("dirs-a", 1)]);
    stop(broker);
}

/// (topic, partition, error) of each answer of an ElectLeaders v2.
fn elect_leaders(
    conn: &mut KafkaConn,
    election_type: i8,
    partitions: Option<Vec<(&str, i32)>>,
) -> Vec<(String, i32, i16)> {
    use kafka_protocol::messages::ElectLeadersRequest;
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    let topic_partitions = partitions.map(|partitions| {
        partitions
            .into_iter()
            .map(|(topic, partition)| {
                TopicPartitions::default().with_topic(name(topic)).with_partitions(vec![partition])
            })
            .collect()
    });
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(topic_partitions)
        .with_timeout_ms(30_000);
    let response = conn.call(2, &request);
    response
        .replica_election_results
        .iter()
        .flat_map(|t| t.partition_result.iter().map(|p| (t.topic.0.to_string(), p.partition_id, p.error_code)))
        .collect()
}

/// (leader, preferred replica, ISR size) of partition 0.
fn leadership(conn: &mut KafkaConn, topic: &str) -> Option<(i32, i32, usize)> {
    let topic = conn.metadata(topic);
    let p = topic.partitions.first()?;
    Some((p.leader_id.0, p.replica_nodes.first()?.0, p.isr_nodes.len()))
}

/// Before ElectLeaders was served, a Kafka client asking for it had its
/// connection closed, and a preferred replica back from a restart never
/// led again until another failure.
#[test]
fn preferred_election_gives_the_leadership_back_to_the_first_replica_once_it_is_in_sync() {
    let (configs, mut brokers) = start_cluster("kafka-elect-leaders");
    let mut conn = kafka_to(&brokers, 1);
    await_condition("the topic is created", || conn.create_topic("elect", 1, 3) == 0);
    let mut seen = None;
    await_condition("every replica is in sync", || {
        seen = leadership(&mut conn, "elect");
        seen.is_some_and(|(leader, _, isr)| leader > 0 && isr == 3)
    });
    let (leader, preferred, _) = seen.expect("placed");
    assert_eq!(leader, preferred, "a new partition is led by its first replica");
    let not_needed = vec![("elect".to_string(), 0, K::ElectionNotNeeded.code())];
    assert_eq!(elect_leaders(&mut conn, 0, Some(vec![("elect", 0)])), not_needed);
    assert_eq!(elect_leaders(&mut conn, 1, Some(vec![("elect", 0)])), not_needed, "unclean: it has a leader");
    assert_eq!(
        elect_leaders(&mut conn, 0, Some(vec![("nope", 0)])),
        vec![("nope".to_string(), 0, K::UnknownTopicOrPartition.code())]
    );
    assert_eq!(
        elect_leaders(&mut conn, 2, Some(vec![("elect", 0)])),
        vec![("elect".to_string(), 0, K::InvalidRequest.code())],
        "no such election type"
    );
    assert!(
        elect_leaders(&mut conn, 0, None).iter().all(|(topic, ..)| topic != "elect"),
        "asked for every partition, those that need no election are left out"
    );

    // The preferred replica's broker restarts: another replica leads, and
    // keeps leading once the preferred one is back in sync.
    stop(brokers[(preferred - 1) as usize].take().expect("running"));
    let other = (1..=3).find(|&node| node != preferred).expect("another broker");
    let mut conn = kafka_to(&brokers, other);
    await_condition("another replica leads", || {
        leadership(&mut conn, "elect").is_some_and(|(leader, ..)| leader > 0 && leader != preferred)
    });
    brokers[(preferred - 1) as usize] =
        Some(spate_net::start(configs[(preferred - 1) as usize].clone()).expect("restarts"));
    await_condition("the preferred replica is back in sync", || {
        leadership(&mut conn, "elect").is_some_and(|(_, _, isr)| isr == 3)
    });
    assert_ne!(leadership(&mut conn, "elect").map(|(leader, ..)| leader), Some(preferred));
    assert_eq!(elect_leaders(&mut conn, 0, Some(vec![("elect", 0)])), vec![("elect".to_string(), 0, 0)]);
    await_condition("the preferred replica leads", || {
        leadership(&mut conn, "elect").is_some_and(|(leader, ..)| leader == preferred)
    });
    // It serves as the leader: a write goes through.
    let mut at_preferred = kafka_to(&brokers, preferred);
    await_condition("the preferred replica takes a write", || at_preferred.produce("elect", 0, batch(1)).0 == 0);
    drop(at_preferred);
    drop(conn);
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}

/// A batch of `count` records from an idempotent producer.
fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, count: usize) -> Vec<u8> {
    let mut builder =
        spate_format::batch::BatchBuilder::new(1_700_000_000_000).producer(producer_id, epoch, base_sequence);
    for i in 0..count {
        builder.push(1_700_000_000_000 + i as i64, None, Some(format!("v{i}").as_bytes()), &[]);
    }
    builder.build().to_vec()
}

/// Before DescribeProducers was served, a Kafka client asking for it had
/// its connection closed.
#[test]
fn describe_producers_lists_each_idempotent_producer_with_its_epoch_and_last_sequence() {
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    use kafka_protocol::messages::{DescribeProducersRequest, InitProducerIdRequest};
    let dir = data_dir("kafka_describe_producers");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("producers", 2, 1), 0);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let init = conn
            .call(4, &InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(60_000));
        assert_eq!(init.error_code, 0);
        ids.push((init.producer_id.0, init.producer_epoch));
    }
    let (first, second) = (ids[0], ids[1]);
    assert_eq!(conn.produce("producers", 0, idempotent_batch(first.0, first.1, 0, 3)).0, 0);
    assert_eq!(conn.produce("producers", 0, idempotent_batch(first.0, first.1, 3, 2)).0, 0);
    assert_eq!(conn.produce("producers", 0, idempotent_batch(second.0, second.1, 0, 1)).0, 0);
    assert_eq!(conn.produce("producers", 1, batch(1)).0, 0, "not idempotent");

    let request = DescribeProducersRequest::default().with_topics(vec![
        TopicRequest::default().with_name(name("producers")).with_partition_indexes(vec![0, 1, 2]),
        TopicRequest::default().with_name(name("nope")).with_partition_indexes(vec![0]),
    ]);
    let response = conn.call(0, &request);
    let partitions = &response.topics[0].partitions;
    assert_eq!(
        partitions.iter().map(|p| (p.partition_index, p.error_code)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 0), (2, K::UnknownTopicOrPartition.code())]
    );
    let mut producers: Vec<(i64, i32, i32, i64, i32, i64)> = partitions[0]
        .active_producers
        .iter()
        .map(|p| {
            (
                p.producer_id.0,
                p.producer_epoch,
                p.last_sequence,
                p.last_timestamp,
                p.coordinator_epoch,
                p.current_txn_start_offset,
            )
        })
        .collect();
    producers.sort();
    let mut expected =
        vec![(first.0, i32::from(first.1), 4, -1, -1, -1), (second.0, i32::from(second.1), 0, -1, -1, -1)];
    expected.sort();
    assert_eq!(producers, expected);
    assert!(partitions[1].active_producers.is_empty());
    assert_eq!(response.topics[1].partitions[0].error_code, K::UnknownTopicOrPartition.code());
    stop(broker);
}

fn group(id: &str) -> kafka_protocol::messages::GroupId {
    kafka_protocol::messages::GroupId(kafka_protocol::protocol::StrBytes::from_string(id.to_string()))
}

/// Commits `offsets` for `group_id` from outside the group (no member).
fn commit(conn: &mut KafkaConn, group_id: &str, offsets: &[(&str, i32, i64)]) {
    use kafka_protocol::messages::OffsetCommitRequest;
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    let topics = offsets
        .iter()
        .map(|(topic, partition, offset)| {
            OffsetCommitRequestTopic::default().with_name(name(topic)).with_partitions(vec![
                OffsetCommitRequestPartition::default().with_partition_index(*partition).with_committed_offset(*offset),
            ])
        })
        .collect();
    let request = OffsetCommitRequest::default()
        .with_group_id(group(group_id))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(topics);
    let response = conn.call(8, &request);
    for topic in &response.topics {
        assert!(topic.partitions.iter().all(|p| p.error_code == 0), "commit: {response:?}");
    }
}

/// The committed offset of each of `partitions` (-1: none).
fn committed(conn: &mut KafkaConn, group_id: &str, partitions: &[(&str, i32)]) -> Vec<i64> {
    use kafka_protocol::messages::OffsetFetchRequest;
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let topics = partitions
        .iter()
        .map(|(topic, partition)| {
            OffsetFetchRequestTopic::default().with_name(name(topic)).with_partition_indexes(vec![*partition])
        })
        .collect();
    let response =
        conn.call(7, &OffsetFetchRequest::default().with_group_id(group(group_id)).with_topics(Some(topics)));
    assert_eq!(response.error_code, 0);
    partitions
        .iter()
        .map(|(topic, partition)| {
            response
                .topics
                .iter()
                .filter(|t| t.name.0.as_str() == *topic)
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition_index == *partition)
                .map_or(-1, |p| p.committed_offset)
        })
        .collect()
}

/// (group error, [(topic, partition, error)]) of an OffsetDelete.
fn offset_delete(conn: &mut KafkaConn, group_id: &str, partitions: &[(&str, i32)]) -> (i16, Vec<(String, i32, i16)>) {
    use kafka_protocol::messages::OffsetDeleteRequest;
    use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    let topics = partitions
        .iter()
        .map(|(topic, partition)| {
            OffsetDeleteRequestTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![OffsetDeleteRequestPartition::default().with_partition_index(*partition)])
        })
        .collect();
    let response = conn.call(0, &OffsetDeleteRequest::default().with_group_id(group(group_id)).with_topics(topics));
    let answers = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), p.partition_index, p.error_code)))
        .collect();
    (response.error_code, answers)
}

/// Whether the coordinator of `group_id` answers (the internal topic is
/// created and loaded at start, shortly after the broker accepts).
fn coordinator_ready(broker: &BrokerHandle, group_id: &str) -> bool {
    use kafka_protocol::messages::OffsetFetchRequest;
    let mut probe = KafkaConn::to(broker);
    let response = probe.call(7, &OffsetFetchRequest::default().with_group_id(group(group_id)).with_topics(None));
    response.error_code == 0
}

/// A member joins `group_id` through the native protocol, subscribed to
/// `topic`.
fn join(conn: &mut Conn, group_id: &str, topic: &str) {
    use spate_flatbuf::proto::*;
    let frame = conn.call(Body::ConsumerGroupHeartbeatRequest, |b| {
        let (group, topic) = (b.create_string(group_id), b.create_string(topic));
        let topics = b.create_vector(&[topic]);
        ConsumerGroupHeartbeatRequest::create(
            b,
            &ConsumerGroupHeartbeatRequestArgs {
                group_id: Some(group),
                member_epoch: 0,
                subscribed_topics: Some(topics),
                session_timeout_ms: 60_000,
                ..Default::default()
            },
        )
        .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_consumer_group_heartbeat_response().expect("heartbeat response");
    assert_eq!(response.error(), spate_flatbuf::proto::ErrorCode::None);
}

/// Before OffsetDelete was served, a Kafka client asking for it had its
/// connection closed, and a group's offsets could only go all at once
/// (DeleteGroups) and only once it had no members.
#[test]
fn offset_delete_removes_committed_offsets_but_not_those_of_topics_the_members_consume() {
    let dir = data_dir("kafka_offset_delete");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("od-sub", 2, 1), 0);
    assert_eq!(conn.create_topic("od-other", 1, 1), 0);
    let mut native = Conn::connect(broker.addr().port());
    let offsets = [("od-sub", 0, 5), ("od-sub", 1, 6), ("od-other", 0, 7)];
    await_condition("the coordinator answers", || coordinator_ready(&broker, "od-group"));
    commit(&mut conn, "od-group", &offsets);
    let all = [("od-sub", 0), ("od-sub", 1), ("od-other", 0)];
    assert_eq!(committed(&mut conn, "od-group", &all), vec![5, 6, 7]);

    // Without members: deleted, one partition at a time.
    assert_eq!(
        offset_delete(&mut conn, "od-group", &[("od-sub", 0), ("od-nope", 0)]),
        (0, vec![("od-sub".to_string(), 0, 0), ("od-nope".to_string(), 0, K::UnknownTopicOrPartition.code())])
    );
    assert_eq!(committed(&mut conn, "od-group", &all), vec![-1, 6, 7]);
    assert_eq!(offset_delete(&mut conn, "od-unknown", &[("od-sub", 0)]).0, K::GroupIdNotFound.code());

    // A member consumes od-sub: its offsets stay, od-other's go.
    join(&mut native, "od-group", "od-sub");
    assert_eq!(
        offset_delete(&mut conn, "od-group", &[("od-sub", 1), ("od-other", 0)]),
        (0, vec![("od-sub".to_string(), 1, K::GroupSubscribedToTopic.code()), ("od-other".to_string(), 0, 0)])
    );
    assert_eq!(committed(&mut conn, "od-group", &all), vec![-1, 6, -1]);

    // The deletions are in the log: a restart replays them.
    drop(native);
    drop(conn);
    stop(broker);
    let broker = start(&dir, 1);
    let mut conn = KafkaConn::to(&broker);
    await_condition("the coordinator has loaded the group", || coordinator_ready(&broker, "od-group"));
    assert_eq!(committed(&mut conn, "od-group", &all), vec![-1, 6, -1]);
    stop(broker);
}

/// Every broker opens the partitions a CreatePartitions adds that it
/// hosts: each new partition's leader takes an acks=all write, which it
/// answers only once its follower (in the ISR from the start) has fetched
/// it.
#[test]
fn partitions_added_to_a_replicated_topic_are_opened_on_every_replica() {
    let (_, brokers) = start_cluster("kafka-create-partitions-rf");
    let mut conn = kafka_to(&brokers, 1);
    await_condition("the topic is created", || conn.create_topic("grow-rf", 1, 2) == 0);
    await_condition("partition 0 is in sync", || {
        conn.metadata("grow-rf").partitions.first().is_some_and(|p| p.leader_id.0 > 0 && p.isr_nodes.len() == 2)
    });
    assert_eq!(create_partitions(&mut conn, "grow-rf", 3, false), 0);
    let mut leaders = Vec::new();
    await_condition("every new partition is led and in sync", || {
        let topic = conn.metadata("grow-rf");
        leaders = topic.partitions.iter().map(|p| p.leader_id.0).collect();
        topic.partitions.len() == 3 && topic.partitions.iter().all(|p| p.leader_id.0 > 0 && p.isr_nodes.len() == 2)
    });
    let mut distinct = leaders.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "leaders spread over the three brokers: {leaders:?}");
    for (partition, leader) in leaders.into_iter().enumerate() {
        let mut at_leader = kafka_to(&brokers, leader);
        let mut produced = (-1, -1);
        await_condition("the leader takes a write", || {
            produced = at_leader.produce("grow-rf", partition as i32, batch(3));
            produced.0 != K::LeaderNotAvailable.code() && produced.0 != K::NotLeaderOrFollower.code()
        });
        assert_eq!(produced, (0, 0), "partition {partition}");
    }
    drop(conn);
    for broker in brokers.into_iter().flatten() {
        stop(broker);
    }
}

/// DescribeTopicPartitions pages by cursor: no answer holds more partitions
/// than asked, the cursor names the next one, and following the cursors
/// gives every partition of every topic once, in name order; an unknown
/// topic is answered with its error.
#[test]
fn describe_topic_partitions_pages_every_partition_once_by_cursor() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::{DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse};
    let dir = data_dir("kafka_describe_topic_partitions");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("paged-a", 3, 1), 0);
    assert_eq!(conn.create_topic("paged-b", 2, 1), 0);
    let topics = ["paged-b", "nope", "paged-a"].map(|t| TopicRequest::default().with_name(name(t))).to_vec();
    let mut cursor: Option<Cursor> = None;
    let mut seen: Vec<(String, i32)> = Vec::new();
    let mut unknown = 0;
    for _ in 0..10 {
        let request = DescribeTopicPartitionsRequest::default()
            .with_topics(topics.clone())
            .with_response_partition_limit(2)
            .with_cursor(cursor.take());
        let response: DescribeTopicPartitionsResponse = conn.call(0, &request);
        let in_answer: usize = response.topics.iter().map(|t| t.partitions.len()).sum();
        assert!(in_answer <= 2, "{in_answer} partitions in one answer, 2 asked");
        for topic in &response.topics {
            let topic_name = topic.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            if topic.error_code == K::UnknownTopicOrPartition.code() {
                unknown += 1;
                continue;
            }
            assert_eq!(topic.error_code, 0);
            for p in &topic.partitions {
                assert_eq!(p.leader_id.0, 1);
                assert_eq!(p.eligible_leader_replicas.as_deref(), Some(&[][..]), "no ELR on a healthy partition");
                seen.push((topic_name.clone(), p.partition_index));
            }
        }
        match response.next_cursor {
            Some(next) => {
                cursor =
                    Some(Cursor::default().with_topic_name(next.topic_name).with_partition_index(next.partition_index))
            }
            None => break,
        }
    }
    let expected: Vec<(String, i32)> = [("paged-a", 0), ("paged-a", 1), ("paged-a", 2), ("paged-b", 0), ("paged-b", 1)]
        .map(|(t, p)| (t.to_string(), p))
        .to_vec();
    assert_eq!(seen, expected);
    assert_eq!(unknown, 1, "the unknown topic is answered once, with its error");
    drop(conn);
    broker.shutdown();
    broker.wait().expect("clean stop");
}
