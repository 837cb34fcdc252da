//! A broker in this process on free ports, and a blocking raw-protocol
//! connection that speaks frames (so tests can also send bad ones).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, FrameDecoder, encode_frame};
use spate_format::batch::BatchBuilder;
use spate_net::{BrokerConfig, BrokerHandle};

pub mod kafka;
pub mod ports;

/// A port for a broker's controller (or another listener a test must know
/// before the broker starts): reserved to this test process, outside the
/// kernel's ephemeral range (`ports.rs`). Binding 127.0.0.1:0 and closing
/// gave a port that another test's client connection could take as its
/// local port before the broker bound it.
pub fn free_port() -> u16 {
    ports::free_port_below_ephemeral()
}

/// The test's data directory, emptied of an earlier run's files. Left on
/// disk after the test: brokers here run in the test's process, often
/// started by helpers that return them, where a guard removing the
/// directory (`test_dir.rs`, for the real-process tests of cli/) would
/// drop before the broker stops.
pub fn data_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("net-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn config(dir: &std::path::Path, shards: usize) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        port: 0,
        shards,
        pin_cores: false,
        metrics_listen: String::new(),
        // A free port of its own: tests run side by side.
        listeners: "PLAINTEXT://127.0.0.1:0".into(),
        io_memory_bytes: 4 << 20,
        tail_cache_bytes: 8 << 20,
        frame_bytes_max: 4 << 20,
        ..BrokerConfig::default()
    }
}

pub fn start(dir: &std::path::Path, shards: usize) -> BrokerHandle {
    spate_net::start(config(dir, shards)).expect("broker starts")
}

pub fn stop(broker: BrokerHandle) {
    broker.shutdown();
    broker.wait().expect("clean stop");
}

pub struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    next_id: u64,
}

impl Conn {
    pub fn connect(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Conn { stream, buf: BytesMut::new(), decoder: FrameDecoder::new(64 << 20), next_id: 1 }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next frame, or None when the broker closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(err) => panic!("broker sent a bad frame: {err}"),
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(err) => panic!("read: {err}"),
            }
        }
    }

    /// Sends a request built by `body` and returns the response frame.
    pub fn call(
        &mut self,
        body_type: Body,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> Frame {
        let bytes = self.encode(body_type, body);
        self.send_raw(&bytes);
        self.recv().expect("a response")
    }

    pub fn encode(
        &mut self,
        body_type: Body,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> Bytes {
        let mut builder = FlatBufferBuilder::new();
        let body = body(&mut builder);
        let request_id = self.next_id;
        self.next_id += 1;
        let envelope =
            Envelope::create(&mut builder, &EnvelopeArgs { request_id, version: 1, body_type, body: Some(body) });
        builder.finish(envelope, None);
        encode_frame(&builder, &[])
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) -> ErrorCode {
        self.create_topic_rf(name, partitions, 1, configs)
    }

    pub fn create_topic_rf(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> ErrorCode {
        let frame = self.call(Body::CreateTopicsRequest, |b| {
            let name = b.create_string(name);
            let configs: Vec<_> = configs
                .iter()
                .map(|(k, v)| {
                    let (key, value) = (b.create_string(k), b.create_string(v));
                    ConfigEntry::create(b, &ConfigEntryArgs { key: Some(key), value: Some(value), is_set: true })
                })
                .collect();
            let configs = b.create_vector(&configs);
            let topic = CreatableTopic::create(
                b,
                &CreatableTopicArgs { name: Some(name), partitions, replication_factor, configs: Some(configs) },
            );
            let topics = b.create_vector(&[topic]);
            CreateTopicsRequest::create(b, &CreateTopicsRequestArgs { topics: Some(topics), ..Default::default() })
                .as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_create_topics_response().expect("create response");
        response.results().expect("results").get(0).error()
    }

    /// Produces `records` (raw batch bytes) to one partition; returns
    /// (error, base offset).
    pub fn produce(&mut self, topic: &str, partition: i32, records: &[u8], acks: i16) -> (ErrorCode, i64) {
        let frame = self.call(Body::ProduceRequest, |b| {
            let name = b.create_string(topic);
            let records = b.create_vector(records);
            let part = ProducePartition::create(b, &ProducePartitionArgs { partition, records: Some(records) });
            let parts = b.create_vector(&[part]);
            let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            ProduceRequest::create(
                b,
                &ProduceRequestArgs { acks, timeout_ms: 10_000, topics: Some(topics), ..Default::default() },
            )
            .as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_produce_response().expect("produce response");
        let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
        (part.error(), part.base_offset())
    }

    /// Fetches one partition; returns (error, high watermark, record bytes).
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> (ErrorCode, i64, Bytes) {
        let frame = self.call(Body::FetchRequest, |b| {
            let name = b.create_string(topic);
            let part = FetchPartition::create(
                b,
                &FetchPartitionArgs { partition, offset, max_bytes: 1 << 20, ..Default::default() },
            );
            let parts = b.create_vector(&[part]);
            let topic = FetchTopic::create(b, &FetchTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            FetchRequest::create(
                b,
                &FetchRequestArgs {
                    max_wait_ms,
                    min_bytes: 1,
                    max_bytes: 4 << 20,
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_fetch_response().expect("fetch response");
        let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
        let start = part.records_offset() as usize;
        let records = Bytes::copy_from_slice(&frame.payload[start..start + part.records_bytes() as usize]);
        (part.error(), part.high_watermark(), records)
    }

    /// ListOffsets for one partition (-2 earliest, -1 latest, or a time).
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (ErrorCode, i64) {
        let frame = self.call(Body::ListOffsetsRequest, |b| {
            let name = b.create_string(topic);
            let part = ListOffsetsPartition::create(b, &ListOffsetsPartitionArgs { partition, timestamp });
            let parts = b.create_vector(&[part]);
            let topic =
                ListOffsetsTopic::create(b, &ListOffsetsTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            ListOffsetsRequest::create(b, &ListOffsetsRequestArgs { topics: Some(topics), ..Default::default() })
                .as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let response = envelope.body_as_list_offsets_response().expect("list offsets response");
        let part = response.topics().expect("topics").get(0).partitions().expect("partitions").get(0);
        (part.error(), part.offset())
    }
}

/// A batch of `count` records "v<i>".
pub fn batch(count: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for i in 0..count {
        builder.push(1_700_000_000_000 + i as i64, None, Some(format!("v{i}").as_bytes()), &[]);
    }
    builder.build().to_vec()
}

pub fn error_response(frame: &Frame) -> Option<(ErrorCode, String)> {
    let envelope = frame.read().ok()?;
    let error = envelope.body_as_error_response()?;
    Some((error.error(), error.message().unwrap_or_default().to_string()))
}

/// A batch of `count` records of `value_bytes` each.
pub fn big_batch(count: usize, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for i in 0..count {
        builder.push(1_700_000_000_000 + i as i64, None, Some(&vec![b'x'; value_bytes]), &[]);
    }
    builder.build().to_vec()
}

/// A fetch request of one partition from `offset`, encoded.
pub fn fetch_request(conn: &mut Conn, topic: &str, partition: i32, offset: i64, max_bytes: i32) -> Bytes {
    conn.encode(Body::FetchRequest, |b| {
        let name = b.create_string(topic);
        let part =
            FetchPartition::create(b, &FetchPartitionArgs { partition, offset, max_bytes, ..Default::default() });
        let parts = b.create_vector(&[part]);
        let topic = FetchTopic::create(b, &FetchTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = b.create_vector(&[topic]);
        FetchRequest::create(
            b,
            &FetchRequestArgs { max_wait_ms: 0, min_bytes: 1, max_bytes, topics: Some(topics), ..Default::default() },
        )
        .as_union_value()
    })
}

/// The sum over shards of a metric without labels other than `shard`.
pub fn metric(metrics_port: u16, name: &str) -> u64 {
    let mut http = TcpStream::connect(("127.0.0.1", metrics_port)).expect("connect metrics");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut text = String::new();
    http.read_to_string(&mut text).expect("response");
    text.lines()
        .filter(|line| line.split('{').next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `condition` every 20 ms until it holds, for at most 20 s.
pub fn await_condition(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
