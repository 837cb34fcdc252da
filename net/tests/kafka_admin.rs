//! Kafka's admin APIs (CreatePartitions, DeleteRecords, DescribeLogDirs,
//! ElectLeaders, DescribeProducers, OffsetDelete) through the Kafka port of
//! an in-process broker, encoded and decoded with the kafka-protocol
//! crate's codecs as a Kafka client would.

mod common;

use common::kafka::{KafkaConn, name};
use common::*;
use kafka_protocol::ResponseError as K;

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
