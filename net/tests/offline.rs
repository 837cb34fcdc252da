//! A partition whose log cannot be opened is offline on its broker, and a
//! client is told where the damage is (issue 13: "RF=1 refuses with a
//! clear error naming the file and offset").

mod common;

use common::*;
use spate_flatbuf::proto::*;

#[test]
fn a_produce_to_a_damaged_partition_names_the_file_and_position() {
    let dir = data_dir("offline_named");
    let broker = start(&dir, 1);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    assert_eq!(conn.create_topic("damaged", 1, &[]), ErrorCode::None);
    for _ in 0..4 {
        assert_eq!(conn.produce("damaged", 0, &batch(50), 1).0, ErrorCode::None);
    }
    drop(conn);
    stop(broker);
    // A clean close, then one flipped byte in the middle of the segment:
    // the open after a clean close checks the whole active segment.
    let segment = std::fs::read_dir(dir.join("topics"))
        .expect("topics")
        .flatten()
        .map(|entry| entry.path().join("0"))
        .flat_map(|partition| std::fs::read_dir(partition).expect("partition").flatten().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "log"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write segment");

    let broker = start(&dir, 1);
    let mut conn = Conn::connect(broker.addr().port());
    let frame = conn.call(Body::ProduceRequest, |b| {
        let name = b.create_string("damaged");
        let records = b.create_vector(&batch(1));
        let part = ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) });
        let parts = b.create_vector(&[part]);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks: 1, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_produce_response().expect("produce response");
    let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
    assert_eq!(part.error(), ErrorCode::StorageError);
    let message = part.message().unwrap_or_default();
    let file = segment.file_name().expect("name").to_string_lossy().into_owned();
    assert!(message.contains(&file) && message.contains("corrupt"), "names the file and the damage: {message}");
    drop(conn);
    stop(broker);
}
