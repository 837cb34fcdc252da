//! Kafka Fetch answers whose partitions come topic after topic
//! interleaved: every partition's records must be its own batches.

mod common;

use bytes::Bytes;
use common::kafka::{KafkaConn, name};
use common::*;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};

fn one_batch(value: &str) -> Vec<u8> {
    let mut builder = spate_format::batch::BatchBuilder::new(1);
    builder.push(1, None, Some(value.as_bytes()), &[]);
    builder.build().to_vec()
}

/// A fetch naming topic "a" twice around "b" (as a fetch session's
/// partitions can come) is answered under each topic once, and each
/// partition's records are the batch produced to it. The broker used to
/// number the records markers in request order and splice them in answer
/// order: one marker stayed in the answer as if it were records, and Kafka
/// clients (Kafka Streams) failed reading it as a batch.
#[test]
fn partitions_of_topics_interleaved_each_get_their_own_records() {
    let dir = data_dir("kafka_fetch_interleaved");
    let broker = start(&dir, 2);
    let mut conn = KafkaConn::to(&broker);
    assert_eq!(conn.create_topic("a", 2, 1), 0);
    assert_eq!(conn.create_topic("b", 1, 1), 0);
    for (topic, partition) in [("a", 0), ("a", 1), ("b", 0)] {
        let (error, _) = conn.produce(topic, partition, one_batch(&format!("{topic}-{partition}")));
        assert_eq!(error, 0, "produce to {topic}/{partition}");
    }
    let fetch_topic = |topic: &str, partition: i32| {
        FetchTopic::default().with_topic(name(topic)).with_partitions(vec![
            FetchPartition::default().with_partition(partition).with_fetch_offset(0).with_partition_max_bytes(64 << 10),
        ])
    };
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        // Room for every partition's 64 KiB.
        .with_max_bytes(1 << 20)
        .with_topics(vec![fetch_topic("a", 0), fetch_topic("b", 0), fetch_topic("a", 1)]);
    let response = conn.call(11, &request);
    assert_eq!(response.error_code, 0);
    let mut seen = Vec::new();
    for topic in &response.responses {
        for partition in &topic.partitions {
            assert_eq!(partition.error_code, 0);
            let records: Bytes = partition.records.clone().expect("records");
            let info = spate_format::batch::validate_stored(&records, records.len())
                .unwrap_or_else(|err| panic!("{}/{}: not a batch: {err}", topic.topic.0, partition.partition_index));
            assert_eq!(info.batch_bytes, records.len(), "exactly one batch");
            let values: Vec<String> = spate_format::batch::records(&records)
                .expect("records")
                .map(|record| String::from_utf8_lossy(record.expect("record").value.unwrap_or_default()).into_owned())
                .collect();
            seen.push((topic.topic.0.to_string(), partition.partition_index, values));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a".to_string(), 0, vec!["a-0".to_string()]),
            ("a".to_string(), 1, vec!["a-1".to_string()]),
            ("b".to_string(), 0, vec!["b-0".to_string()]),
        ]
    );
    drop(conn);
    stop(broker);
}
