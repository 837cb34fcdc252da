//! Bad input from the network: each gets a typed error or a clean close,
//! the broker keeps serving everyone else, and no log is touched.

mod common;

use std::io::Write;

use common::*;
use spate_flatbuf::proto::*;

/// After whatever a test did, a fresh connection still works and the
/// topic holds exactly `records` records.
fn still_serving(port: u16, topic: &str, records: i64) {
    let mut conn = Conn::connect(port);
    assert_eq!(conn.list_offset(topic, 0, spate_flatbuf::OFFSET_LATEST), (ErrorCode::None, records));
}

#[test]
fn an_oversized_frame_is_refused_before_allocation_and_the_connection_closed() {
    let dir = data_dir("oversized");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    // Claims 2 GiB; the broker's cap is 4 MiB. It must answer from the
    // length alone, not wait for (or allocate) 2 GiB.
    conn.send_raw(&0x8000_0000u32.to_be_bytes());
    conn.send_raw(&[0u8; 64]);
    let frame = conn.recv().expect("an error response before the close");
    let (code, message) = error_response(&frame).expect("an ErrorResponse");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("limit"), "{message}");
    assert!(conn.recv().is_none(), "then the connection closes");
    still_serving(port, "t", 0);
    stop(broker);
}

#[test]
fn a_frame_cut_short_by_a_closed_connection_changes_nothing() {
    let dir = data_dir("truncated");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    let records = batch(3);
    let bytes = conn.encode(Body::ProduceRequest, |b| {
        let name = b.create_string("t");
        let records = b.create_vector(&records);
        let part = ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) });
        let parts = b.create_vector(&[part]);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks: -1, timeout_ms: 1000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    });
    conn.stream.write_all(&bytes[..bytes.len() - 10]).expect("write");
    drop(conn);
    still_serving(port, "t", 0);
    stop(broker);
}

#[test]
fn garbage_that_fails_verification_gets_an_error_and_a_close() {
    let dir = data_dir("garbage");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(4u32 + 100).to_be_bytes());
    frame.extend_from_slice(&100u32.to_be_bytes());
    frame.extend_from_slice(&[0xEE; 100]);
    conn.send_raw(&frame);
    let response = conn.recv().expect("an error response");
    let (code, message) = error_response(&response).expect("an ErrorResponse");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("verification"), "{message}");
    assert!(conn.recv().is_none());
    still_serving(port, "t", 0);
    stop(broker);
}

#[test]
fn a_batch_with_a_bad_crc_is_refused_and_nothing_is_appended() {
    let dir = data_dir("bad_crc");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    let mut records = batch(3);
    let last = records.len() - 1;
    records[last] ^= 0x01;
    assert_eq!(conn.produce("t", 0, &records, -1).0, ErrorCode::CorruptMessage);
    // Two batches, the second bad: neither is appended.
    let mut two = batch(2);
    two.extend_from_slice(&records);
    assert_eq!(conn.produce("t", 0, &two, -1).0, ErrorCode::CorruptMessage);
    // Bytes that do not even split into batches.
    assert_eq!(conn.produce("t", 0, &[1, 2, 3], -1).0, ErrorCode::CorruptMessage);
    // The connection stays usable.
    assert_eq!(conn.produce("t", 0, &batch(1), -1), (ErrorCode::None, 0));
    still_serving(port, "t", 1);
    stop(broker);
}

#[test]
fn a_decompression_bomb_is_refused_as_too_large_and_nothing_is_appended() {
    use spate_format::batch::{BatchBuilder, Compression};
    use spate_format::limits::DECOMPRESSED_BYTES_MAX;
    let dir = data_dir("bomb");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    // A few kilobytes of zstd whose one record decompresses past 64 MiB.
    let mut builder = BatchBuilder::new(0).compression(Compression::Zstd);
    builder.push(0, None, Some(&vec![7u8; DECOMPRESSED_BYTES_MAX + 1]), &[]);
    let bomb = builder.build();
    assert!(bomb.len() < 64 * 1024, "{} bytes on the wire", bomb.len());
    assert_eq!(conn.produce("t", 0, &bomb, -1).0, ErrorCode::MessageTooLarge);
    // Behind a good batch in the same request: neither is appended.
    let mut two = batch(2);
    two.extend_from_slice(&bomb);
    assert_eq!(conn.produce("t", 0, &two, -1).0, ErrorCode::MessageTooLarge);
    // A block that is not zstd at all, under a valid CRC, is corrupt.
    let mut garbage = BatchBuilder::new(0).compression(Compression::Zstd);
    garbage.push(0, None, Some(b"fine"), &[]);
    let mut garbage = garbage.build();
    let end = garbage.len();
    garbage[spate_format::batch::BATCH_HEADER_BYTES..end].fill(0x42);
    spate_format::batch::write_crc(&mut garbage).expect("whole batch");
    assert_eq!(conn.produce("t", 0, &garbage, -1).0, ErrorCode::CorruptMessage);
    still_serving(port, "t", 0);
    // A real compressed batch is stored and served byte for byte as sent.
    let mut good = BatchBuilder::new(0).compression(Compression::Zstd);
    good.push(0, None, Some(&[7u8; 10_000]), &[]);
    let good = good.build();
    assert_eq!(conn.produce("t", 0, &good, -1), (ErrorCode::None, 0));
    let (error, _, fetched) = conn.fetch("t", 0, 0, 0);
    assert_eq!(error, ErrorCode::None);
    assert_eq!(&fetched[16..], &good[16..], "as sent, but for the base offset and leader epoch");
    still_serving(port, "t", 1);
    stop(broker);
}

#[test]
fn unknown_topics_and_partitions_get_typed_errors() {
    let dir = data_dir("unknown");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    conn.create_topic("t", 2, &[]);
    assert_eq!(conn.produce("nope", 0, &batch(1), -1).0, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(conn.produce("t", 2, &batch(1), -1).0, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(conn.produce("t", -1, &batch(1), -1).0, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(conn.fetch("nope", 0, 0, 0).0, ErrorCode::UnknownTopicOrPartition);
    assert_eq!(conn.fetch("t", 0, 99, 0).0, ErrorCode::OffsetOutOfRange);
    assert_eq!(conn.list_offset("t", 7, -1).0, ErrorCode::UnknownTopicOrPartition);
    stop(broker);
}

#[test]
fn invalid_names_counts_configs_and_acks_are_refused() {
    let dir = data_dir("invalid");
    let broker = start(&dir, 2);
    let mut conn = Conn::connect(broker.addr().port());
    assert_eq!(conn.create_topic("a/b", 1, &[]), ErrorCode::InvalidTopic);
    assert_eq!(conn.create_topic("..", 1, &[]), ErrorCode::InvalidTopic);
    assert_eq!(conn.create_topic(&"x".repeat(300), 1, &[]), ErrorCode::InvalidTopic);
    assert_eq!(conn.create_topic("t", 0, &[]), ErrorCode::InvalidPartitions);
    assert_eq!(conn.create_topic("t", 2_000_000_000, &[]), ErrorCode::InvalidPartitions);
    assert_eq!(conn.create_topic("t", 1, &[("retention.ms", "soon")]), ErrorCode::InvalidConfig);
    assert_eq!(conn.create_topic("t", 1, &[("no.such.config", "1")]), ErrorCode::InvalidConfig);
    assert_eq!(conn.create_topic("t", 1, &[("segment.bytes", "12")]), ErrorCode::InvalidConfig);
    assert_eq!(conn.create_topic("t", 1, &[]), ErrorCode::None);
    assert_eq!(conn.produce("t", 0, &batch(1), 7).0, ErrorCode::InvalidRequiredAcks);
    // Absurd fetch sizes and waits are clamped, not obeyed or refused.
    conn.produce("t", 0, &batch(2), 1);
    let (error, high_watermark, _) = conn.fetch("t", 0, 0, i32::MAX);
    assert_eq!((error, high_watermark), (ErrorCode::None, 2));
    stop(broker);
    // Besides the broker's own __consumer_offsets.
    let names: Vec<_> = std::fs::read_dir(dir.join("topics"))
        .expect("topics")
        .filter(|entry| entry.as_ref().is_ok_and(|e| !e.file_name().to_string_lossy().starts_with("__")))
        .collect();
    assert_eq!(names.len(), 1, "refused topics leave no files");
}

#[test]
fn a_batch_over_max_message_bytes_is_too_large() {
    let dir = data_dir("too_large");
    let broker = start(&dir, 1);
    let mut conn = Conn::connect(broker.addr().port());
    conn.create_topic("small", 1, &[("max.message.bytes", "200")]);
    assert_eq!(conn.produce("small", 0, &batch(100), -1).0, ErrorCode::MessageTooLarge);
    assert_eq!(conn.produce("small", 0, &batch(1), -1), (ErrorCode::None, 0));
    stop(broker);
}

#[test]
fn partitions_pointing_at_one_shared_vector_are_refused() {
    let dir = data_dir("shared_vector");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 2, &[]);
    // A valid flatbuffer may share one vector between two tables; the
    // broker cannot slice one buffer twice without copying, so it refuses.
    let records = batch(1);
    let frame = conn.call(Body::ProduceRequest, |b| {
        let name = b.create_string("t");
        let records = b.create_vector(&records);
        let p0 = ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) });
        let p1 = ProducePartition::create(b, &ProducePartitionArgs { partition: 1, records: Some(records) });
        let parts = b.create_vector(&[p0, p1]);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks: -1, timeout_ms: 1000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    });
    let (code, _) = error_response(&frame).expect("an ErrorResponse");
    assert_eq!(code, ErrorCode::InvalidRequest);
    still_serving(port, "t", 0);
    stop(broker);
}

#[test]
fn a_response_type_sent_as_a_request_and_a_future_version_are_refused() {
    let dir = data_dir("wrong_body");
    let broker = start(&dir, 1);
    let mut conn = Conn::connect(broker.addr().port());
    let frame = conn.call(Body::MetadataResponse, |b| {
        MetadataResponse::create(b, &MetadataResponseArgs::default()).as_union_value()
    });
    assert_eq!(error_response(&frame).expect("error").0, ErrorCode::InvalidRequest);
    let mut builder = spate_flatbuf::flatbuffers::FlatBufferBuilder::new();
    let body = MetadataRequest::create(&mut builder, &MetadataRequestArgs::default());
    let envelope = Envelope::create(
        &mut builder,
        &EnvelopeArgs {
            request_id: 9,
            version: 99,
            body_type: Body::MetadataRequest,
            body: Some(body.as_union_value()),
        },
    );
    builder.finish(envelope, None);
    conn.send_raw(&spate_flatbuf::encode_frame(&builder, &[]));
    let frame = conn.recv().expect("response");
    assert_eq!(error_response(&frame).expect("error").0, ErrorCode::UnsupportedVersion);
    // Still the same connection, still serving.
    let frame = conn
        .call(Body::MetadataRequest, |b| MetadataRequest::create(b, &MetadataRequestArgs::default()).as_union_value());
    assert!(frame.read().expect("verified").body_as_metadata_response().is_some());
    stop(broker);
}

// A fetch over many partitions asking for a few bytes each: each read
// returns at least one batch, so each uses up at least a minimum slice of
// the request's budget. On the code before, all 100 partitions were read
// (the request's budget covered 100 small asks).
#[test]
fn a_fetch_over_many_partitions_with_tiny_budgets_reads_only_a_few() {
    use spate_net::limits::FETCH_PARTITION_BYTES_MIN;
    let dir = data_dir("fetch_budget");
    let broker = start(&dir, 1);
    let mut conn = Conn::connect(broker.addr().port());
    conn.create_topic("t", 100, &[]);
    let request = conn.encode(Body::ProduceRequest, |b| {
        let name = b.create_string("t");
        let parts: Vec<_> = (0..100)
            .map(|partition| {
                let records = b.create_vector(&batch(50));
                ProducePartition::create(b, &ProducePartitionArgs { partition, records: Some(records) })
            })
            .collect();
        let parts = b.create_vector(&parts);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks: -1, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    });
    conn.send_raw(&request);
    let produced = conn.recv().expect("a produce response");
    assert!(error_response(&produced).is_none());
    let frame = conn.call(Body::FetchRequest, |b| {
        let name = b.create_string("t");
        let parts: Vec<_> = (0..100)
            .map(|partition| {
                FetchPartition::create(
                    b,
                    &FetchPartitionArgs { partition, offset: 0, max_bytes: 1, ..Default::default() },
                )
            })
            .collect();
        let parts = b.create_vector(&parts);
        let topic = FetchTopic::create(b, &FetchTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        FetchRequest::create(
            b,
            &FetchRequestArgs {
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 2 * FETCH_PARTITION_BYTES_MIN as i32,
                topics: Some(topics),
                ..Default::default()
            },
        )
        .as_union_value()
    });
    let envelope = frame.read().expect("verified");
    let response = envelope.body_as_fetch_response().expect("fetch response");
    let parts: Vec<_> = response.topics().expect("topics").get(0).partitions().expect("partitions").iter().collect();
    assert_eq!(parts.len(), 100, "every entry is answered");
    assert!(parts.iter().all(|p| p.error() == ErrorCode::None));
    let with_records = parts.iter().filter(|p| p.records_bytes() > 0).count();
    assert_eq!(with_records, 2, "only two minimum slices fit the request's budget");
    stop(broker);
}

#[test]
fn idle_connections_are_closed_and_connections_past_the_limit_refused() {
    use std::io::Read;
    let dir = data_dir("conn_limits");
    let mut config = config(&dir, 1);
    config.connections_per_shard_max = 2;
    config.connection_idle_timeout_ms = 500;
    let broker = spate_net::start(config).expect("broker starts");
    let port = broker.addr().port();
    let mut first = Conn::connect(port);
    first.create_topic("t", 1, &[]);
    // The idle clock starts at the broker's last read of this connection,
    // just before this answer came back: time from here, not from the
    // read below, which a loaded machine may reach late.
    let last_used = std::time::Instant::now();
    let _second = Conn::connect(port);
    std::thread::sleep(std::time::Duration::from_millis(100));
    // The third is accepted and closed at once.
    let mut third = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    third.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(third.read(&mut byte).expect("a clean close"), 0, "over the limit: closed");
    // An idle connection is closed after the idle timeout...
    let mut idle = first.stream.try_clone().expect("clone");
    idle.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    assert_eq!(idle.read(&mut byte).expect("a clean close"), 0, "idle: closed");
    assert!(last_used.elapsed() >= std::time::Duration::from_millis(400), "closed after {:?}", last_used.elapsed());
    // ...which frees room for a new one that works.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let mut fresh = Conn::connect(port);
    assert_eq!(fresh.list_offset("t", 0, -1), (ErrorCode::None, 0));
    stop(broker);
}

/// A produce request for partitions `0..partitions` of `topic`, each with
/// `records` (no copy of a name per entry: flatbuffers shares one string).
fn produce_to_many(conn: &mut Conn, topic: &str, partitions: &[i32], records: &[u8], acks: i16) -> bytes::Bytes {
    conn.encode(Body::ProduceRequest, |b| {
        let name = b.create_string(topic);
        let records = b.create_vector(records);
        let parts: Vec<_> = partitions
            .iter()
            .map(|&partition| ProducePartition::create(b, &ProducePartitionArgs { partition, records: Some(records) }))
            .collect();
        let parts = b.create_vector(&parts);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    })
}

/// The frame's whole size on the wire.
fn frame_bytes(frame: &spate_flatbuf::Frame) -> usize {
    8 + frame.envelope.len() + frame.payload.len()
}

// Issue 14's hand reproduction: a 100 KB topic name with 100 partition
// entries came back as a 10.1 MB answer, the name copied into every
// entry's message. On the code before the caps this answer was a
// ProduceResponse of over 10 MB.
#[test]
fn a_huge_topic_name_repeated_per_partition_gets_one_small_answer() {
    let dir = data_dir("huge_name");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    let name = "n".repeat(100 * 1024);
    // Each entry points at the same records (a legal flatbuffer); the
    // name check must come before the overlap check.
    let request = produce_to_many(&mut conn, &name, &(0..100).collect::<Vec<_>>(), &batch(1), -1);
    conn.send_raw(&request);
    let frame = conn.recv().expect("an answer");
    assert!(frame_bytes(&frame) < 1024, "a {} byte answer", frame_bytes(&frame));
    let (code, message) = error_response(&frame).expect("one ErrorResponse for the whole request");
    assert_eq!(code, ErrorCode::InvalidTopic);
    assert!(message.contains("249"), "{message}");
    // The same name in a fetch, a metadata request and a list offsets.
    let frame = conn.call(Body::MetadataRequest, |b| {
        let names: Vec<_> = (0..10).map(|_| b.create_string(&name)).collect();
        let names = b.create_vector(&names);
        MetadataRequest::create(b, &MetadataRequestArgs { topics: Some(names) }).as_union_value()
    });
    assert!(frame_bytes(&frame) < 1024, "a {} byte answer", frame_bytes(&frame));
    assert_eq!(error_response(&frame).map(|e| e.0), Some(ErrorCode::InvalidTopic));
    let frame = conn.call(Body::FetchRequest, |b| {
        let name = b.create_string(&name);
        let parts: Vec<_> = (0..100)
            .map(|partition| FetchPartition::create(b, &FetchPartitionArgs { partition, ..Default::default() }))
            .collect();
        let parts = b.create_vector(&parts);
        let topic = FetchTopic::create(b, &FetchTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        FetchRequest::create(b, &FetchRequestArgs { topics: Some(topics), ..Default::default() }).as_union_value()
    });
    assert!(frame_bytes(&frame) < 1024, "a {} byte answer", frame_bytes(&frame));
    assert_eq!(error_response(&frame).map(|e| e.0), Some(ErrorCode::InvalidTopic));
    // A group id, a member id and a client id: the same cap, one answer.
    let frame = conn.call(Body::OffsetCommitRequest, |b| {
        let group = b.create_string("g");
        let member = b.create_string(&name);
        OffsetCommitRequest::create(
            b,
            &OffsetCommitRequestArgs { group_id: Some(group), member_id: Some(member), ..Default::default() },
        )
        .as_union_value()
    });
    assert!(frame_bytes(&frame) < 1024, "a {} byte answer", frame_bytes(&frame));
    assert_eq!(error_response(&frame).map(|e| e.0), Some(ErrorCode::InvalidRequest));
    let frame = conn.call(Body::HandshakeRequest, |b| {
        let client_id = b.create_string(&name);
        HandshakeRequest::create(b, &HandshakeRequestArgs { client_id: Some(client_id), ..Default::default() })
            .as_union_value()
    });
    assert_eq!(error_response(&frame).map(|e| e.0), Some(ErrorCode::InvalidRequest));
    // A producer with acks=0 reads no answers: it gets the refusal and a
    // close, so that it learns something went wrong.
    let mut fire_and_forget = Conn::connect(port);
    let request = produce_to_many(&mut fire_and_forget, &name, &[0], &batch(1), 0);
    fire_and_forget.send_raw(&request);
    let frame = fire_and_forget.recv().expect("the refusal");
    assert_eq!(error_response(&frame).map(|e| e.0), Some(ErrorCode::InvalidTopic));
    assert!(fire_and_forget.recv().is_none(), "then a close");
    still_serving(port, "t", 0);
    stop(broker);
}

// On the code before, both entries were appended (two records) and the
// repeated names were each answered in full.
#[test]
fn repeated_entries_are_refused_and_nothing_is_appended() {
    let dir = data_dir("repeated_entries");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 2, &[]);
    // Partition 0 twice, from two separate record vectors.
    let request = conn.encode(Body::ProduceRequest, |b| {
        let name = b.create_string("t");
        let parts: Vec<_> = (0..2)
            .map(|_| {
                let records = b.create_vector(&batch(1));
                ProducePartition::create(b, &ProducePartitionArgs { partition: 0, records: Some(records) })
            })
            .collect();
        let parts = b.create_vector(&parts);
        let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ProduceRequest::create(
            b,
            &ProduceRequestArgs { acks: -1, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    });
    conn.send_raw(&request);
    let frame = conn.recv().expect("an answer");
    let (code, message) = error_response(&frame).expect("an ErrorResponse");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("twice"), "{message}");
    // One topic name many times in a metadata request.
    let frame = conn.call(Body::MetadataRequest, |b| {
        let names: Vec<_> = (0..1000).map(|_| b.create_string("t")).collect();
        let names = b.create_vector(&names);
        MetadataRequest::create(b, &MetadataRequestArgs { topics: Some(names) }).as_union_value()
    });
    assert_eq!(error_response(&frame).map(|e| e.0), Some(ErrorCode::InvalidRequest));
    // Nothing was appended; the connection is still usable.
    assert_eq!(conn.produce("t", 0, &batch(1), -1), (ErrorCode::None, 0));
    still_serving(port, "t", 1);
    stop(broker);
}

// On the code before, a ListOffsets of any length was answered entry by
// entry (each a cross-shard op).
#[test]
fn a_request_over_the_partition_entry_cap_is_refused_whole() {
    use spate_net::limits::PARTITIONS_PER_REQUEST_MAX;
    let dir = data_dir("entry_cap");
    let broker = start(&dir, 2);
    let port = broker.addr().port();
    let mut conn = Conn::connect(port);
    conn.create_topic("t", 1, &[]);
    let frame = conn.call(Body::ListOffsetsRequest, |b| {
        let name = b.create_string("t");
        let parts: Vec<_> = (0..=PARTITIONS_PER_REQUEST_MAX as i32)
            .map(|partition| ListOffsetsPartition::create(b, &ListOffsetsPartitionArgs { partition, timestamp: -1 }))
            .collect();
        let parts = b.create_vector(&parts);
        let topic = ListOffsetsTopic::create(b, &ListOffsetsTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        ListOffsetsRequest::create(b, &ListOffsetsRequestArgs { topics: Some(topics), ..Default::default() })
            .as_union_value()
    });
    let (code, message) = error_response(&frame).expect("an ErrorResponse");
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("partition entries"), "{message}");
    still_serving(port, "t", 0);
    stop(broker);
}

/// Whether the broker closed `stream` without answering: a request sent on
/// it gets EOF or a reset back.
fn closed_by_broker(mut stream: std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    // ApiVersions v0 (a Kafka request; the native listener closes on it
    // too, but only once read): written, then read for an answer.
    let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0];
    let _ = stream.write_all(&request);
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn one_address_holds_at_most_max_connections_per_ip_across_listeners_and_shards() {
    let dir = data_dir("per-ip-limit");
    let mut config = config(&dir, 2);
    config.max_connections_per_ip = 3;
    config.metrics_listen = "127.0.0.1:0".into();
    let broker = spate_net::start(config).expect("broker starts");
    let port = broker.addr().port();
    let kafka_addr = broker.kafka_addr().expect("a Kafka listener");
    let api_versions = kafka_protocol::messages::ApiVersionsRequest::default();
    // Three from 127.0.0.1: two native (over the shards), one Kafka.
    let mut native = [Conn::connect(port), Conn::connect(port)];
    for conn in &mut native {
        let _ = conn.create_topic("t", 1, &[]);
    }
    let mut kafka = common::kafka::KafkaConn::connect(kafka_addr);
    assert!(kafka.try_call(3, &api_versions).is_some());
    // The fourth is closed on accept, on either listener.
    assert!(closed_by_broker(std::net::TcpStream::connect(kafka_addr).expect("connect")));
    assert!(closed_by_broker(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect")));
    let metrics_port = broker.metrics_port().expect("metrics");
    assert_eq!(metric(metrics_port, "spate_connections_refused_per_ip_total"), 2);
    assert!(kafka.try_call(3, &api_versions).is_some(), "the three admitted are served on");
    // A closed connection gives its place back.
    drop(native);
    await_condition("a new connection is admitted", || {
        let mut again = common::kafka::KafkaConn::connect(kafka_addr);
        again.try_call(3, &api_versions).is_some()
    });
    stop(broker);
}

#[test]
fn new_connections_past_max_connection_creation_rate_wait_their_turn() {
    let dir = data_dir("creation-rate");
    let mut config = config(&dir, 2);
    config.max_connection_creation_rate = 10;
    config.metrics_listen = "127.0.0.1:0".into();
    let broker = spate_net::start(config).expect("broker starts");
    let kafka_addr = broker.kafka_addr().expect("a Kafka listener");
    let api_versions = kafka_protocol::messages::ApiVersionsRequest::default();
    // 25 connections one after another, each served once: a second's worth
    // (10) at once, the other 15 at 10 a second, whichever shard takes them.
    let started = std::time::Instant::now();
    for _ in 0..25 {
        let mut conn = common::kafka::KafkaConn::connect(kafka_addr);
        assert!(conn.try_call(3, &api_versions).is_some(), "served, later");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= std::time::Duration::from_millis(1_300), "25 connections in {elapsed:?}");
    let metrics_port = broker.metrics_port().expect("metrics");
    assert!(metric(metrics_port, "spate_connection_accept_throttle_ms_total") >= 1_000);
    stop(broker);
}

#[test]
fn an_address_over_its_connection_creation_rate_quota_is_refused() {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
    use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
    use kafka_protocol::protocol::StrBytes;
    let dir = data_dir("ip-creation-quota");
    let mut config = config(&dir, 2);
    config.metrics_listen = "127.0.0.1:0".into();
    let broker = spate_net::start(config).expect("broker starts");
    let kafka_addr = broker.kafka_addr().expect("a Kafka listener");
    let mut admin = common::kafka::KafkaConn::connect(kafka_addr);
    // kafka-configs --alter --entity-type ips --entity-name 127.0.0.1
    //   --add-config connection_creation_rate=2 (KIP-612)
    let ip_entity = |name: Option<&'static str>| {
        vec![
            EntityData::default()
                .with_entity_type(StrBytes::from_static_str("ip"))
                .with_entity_name(name.map(StrBytes::from_static_str)),
        ]
    };
    let set_rate = |name, rate: f64| {
        AlterClientQuotasRequest::default().with_entries(vec![
            EntryData::default().with_entity(ip_entity(name)).with_ops(vec![
                OpData::default().with_key(StrBytes::from_static_str("connection_creation_rate")).with_value(rate),
            ]),
        ])
    };
    assert_eq!(admin.call(1, &set_rate(Some("127.0.0.1"), 2.0)).entries[0].error_code, 0);
    assert_eq!(admin.call(1, &set_rate(None, 1000.0)).entries[0].error_code, 0, "the default ip entity");
    let not_an_ip = admin.call(1, &set_rate(Some("host.example"), 2.0));
    assert_eq!(not_an_ip.entries[0].error_code, kafka_protocol::ResponseError::InvalidRequest.code());
    let describe = DescribeClientQuotasRequest::default().with_components(vec![
        ComponentData::default().with_entity_type(StrBytes::from_static_str("ip")).with_match_type(2),
    ]);
    let described = admin.call(1, &describe).entries.unwrap_or_default();
    assert_eq!(described.len(), 2, "{described:?}");

    // Connections from 127.0.0.1 faster than 2 a second: once the quota
    // reached every shard, some are closed on accept.
    let api_versions = kafka_protocol::messages::ApiVersionsRequest::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut refused = 0;
    while refused < 3 {
        let mut conn = common::kafka::KafkaConn::connect(kafka_addr);
        if conn.try_call(3, &api_versions).is_none() {
            refused += 1;
        }
        assert!(std::time::Instant::now() < deadline, "no connection was refused");
    }
    let metrics_port = broker.metrics_port().expect("metrics");
    assert!(metric(metrics_port, "spate_connections_refused_ip_rate_total") >= 3);
    assert!(admin.try_call(3, &api_versions).is_some(), "an open connection is not touched");
    // Slower than the rate, they are served again.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert!(common::kafka::KafkaConn::connect(kafka_addr).try_call(3, &api_versions).is_some());
    stop(broker);
}

/// Quotas hold on the native port too: a native producer over its
/// producer_byte_rate (here the default client-id quota, which covers
/// every client id) is kept quiet, so its next request waits. Before,
/// native clients were never charged: one could take the broker's whole
/// disk and network while Kafka clients were held to their quotas.
#[test]
fn a_native_producer_over_its_byte_rate_is_kept_quiet() {
    use kafka_protocol::messages::AlterClientQuotasRequest;
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    use kafka_protocol::protocol::StrBytes;
    let dir = data_dir("native-produce-quota");
    let mut config = config(&dir, 1);
    config.metrics_listen = "127.0.0.1:0".into();
    let broker = spate_net::start(config).expect("broker starts");
    let mut admin = common::kafka::KafkaConn::to(&broker);
    let quota = AlterClientQuotasRequest::default().with_entries(vec![
        EntryData::default()
            .with_entity(vec![EntityData::default().with_entity_type(StrBytes::from_static_str("client-id"))])
            .with_ops(vec![
                OpData::default().with_key(StrBytes::from_static_str("producer_byte_rate")).with_value(40_000.0),
            ]),
    ]);
    assert_eq!(admin.call(1, &quota).entries[0].error_code, 0);
    let mut native = Conn::connect(broker.addr().port());
    assert_eq!(native.create_topic("q", 1, &[]), ErrorCode::None);
    // 100 KB a request against 40 KB/s over the 11 s quota window: within a
    // few requests the producer is over, and the request after waits.
    let mut waited = std::time::Duration::ZERO;
    for _ in 0..20 {
        assert_eq!(native.produce("q", 0, &big_batch(100, 1000), -1).0, ErrorCode::None);
        let asked = std::time::Instant::now();
        native.list_offset("q", 0, -1);
        waited = asked.elapsed();
        if waited >= std::time::Duration::from_millis(500) {
            break;
        }
    }
    assert!(waited >= std::time::Duration::from_millis(500), "never kept quiet (last wait {waited:?})");
    let metrics_port = broker.metrics_port().expect("metrics");
    assert!(metric(metrics_port, "spate_produce_throttle_ms_total") >= 500);
    stop(broker);
}
