//! Hostile clients against a `spate serve` process under a memory limit
//! (issue 14): huge names repeated per partition, thousands of repeated
//! entries, 1-byte fetches over hundreds of partitions, clients that send
//! and never read, acks=0 floods to a partition that fsyncs every batch.
//! Meanwhile a well-behaved client produces and consumes; the broker must
//! stay up, keep answering it, and its peak RSS stay under a stated bound.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, FrameDecoder, encode_frame};
use spate_format::batch::BatchBuilder;

/// The broker's peak resident memory must stay under this. What it may
/// hold: two shards' tail caches (8 MiB each) and DMA memory (16 MiB
/// each), their byte budgets for requests in flight (64 MiB each), the
/// controller, runtime and binary (about 60 MiB), and allocator slack.
/// Measured here: 113 MiB (67 MiB before the flood). On the code before
/// the caps and budgets the same flood took the broker past 1 GiB of
/// anonymous memory, and the cgroup's OOM killer ended it.
const RSS_BYTES_MAX: u64 = 400 << 20;
/// The memory cgroup's hard limit: the broker is killed past it.
const CGROUP_LIMIT_BYTES: u64 = 1 << 30;

const CONFIG: &str = "\
connection_bytes_in_flight_max = 8388608
shard_bytes_in_flight_max = 67108864
connection_write_timeout_ms = 2000
tail_cache_bytes = 8388608
io_memory_bytes = 16777216
durability = \"never\"
";

/// A blocking raw-protocol connection (so it can send what no client
/// library would).
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    next_id: u64,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        Raw { stream, buf: BytesMut::new(), decoder: FrameDecoder::new(128 << 20), next_id: 1 }
    }

    fn encode(
        &mut self,
        body_type: Body,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> bytes::Bytes {
        let mut builder = FlatBufferBuilder::new();
        let body = body(&mut builder);
        let request_id = self.next_id;
        self.next_id += 1;
        let envelope =
            Envelope::create(&mut builder, &EnvelopeArgs { request_id, version: 1, body_type, body: Some(body) });
        builder.finish(envelope, None);
        encode_frame(&builder, &[])
    }

    /// Writes a request; false if the broker closed the connection.
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).expect("the broker sends whole frames") {
                return Some(frame);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn call(
        &mut self,
        body_type: Body,
        body: impl FnOnce(&mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset>,
    ) -> Frame {
        let bytes = self.encode(body_type, body);
        assert!(self.send(&bytes), "the broker closed a well-behaved connection");
        self.recv().expect("an answer")
    }

    fn create_topic(&mut self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
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
                &CreatableTopicArgs { name: Some(name), partitions, replication_factor: 1, configs: Some(configs) },
            );
            let topics = b.create_vector(&[topic]);
            CreateTopicsRequest::create(b, &CreateTopicsRequestArgs { topics: Some(topics), ..Default::default() })
                .as_union_value()
        });
        let envelope = frame.read().expect("verified");
        let error = envelope.body_as_create_topics_response().expect("create response").results().expect("r").get(0);
        assert_eq!(error.error(), ErrorCode::None);
    }

    /// A produce of `records` to each of `partitions` (one shared vector
    /// when `shared`, which the broker refuses only after the name caps).
    fn produce_request(&mut self, topic: &str, partitions: &[i32], records: &[u8], acks: i16) -> bytes::Bytes {
        self.encode(Body::ProduceRequest, |b| {
            let name = b.create_string(topic);
            let records = b.create_vector(records);
            let parts: Vec<_> = partitions
                .iter()
                .map(|&partition| {
                    ProducePartition::create(b, &ProducePartitionArgs { partition, records: Some(records) })
                })
                .collect();
            let parts = b.create_vector(&parts);
            let topic = ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
            let topics = b.create_vector(&[topic]);
            ProduceRequest::create(
                b,
                &ProduceRequestArgs { acks, timeout_ms: 30_000, topics: Some(topics), ..Default::default() },
            )
            .as_union_value()
        })
    }

    /// A fetch of `partitions` of `topic` from `offset`, each asking for
    /// `partition_bytes_max`.
    fn fetch_request(
        &mut self,
        topic: &str,
        partitions: &[i32],
        offset: i64,
        partition_bytes_max: i32,
        request_bytes_max: i32,
    ) -> bytes::Bytes {
        self.encode(Body::FetchRequest, |b| {
            let name = b.create_string(topic);
            let parts: Vec<_> = partitions
                .iter()
                .map(|&partition| {
                    FetchPartition::create(
                        b,
                        &FetchPartitionArgs { partition, offset, max_bytes: partition_bytes_max, ..Default::default() },
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
                    max_bytes: request_bytes_max,
                    topics: Some(topics),
                    ..Default::default()
                },
            )
            .as_union_value()
        })
    }
}

fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for i in 0..records {
        builder.push(1_700_000_000_000 + i as i64, None, Some(&vec![b'v'; value_bytes]), &[]);
    }
    builder.build().to_vec()
}

fn error_response(frame: &Frame) -> Option<ErrorCode> {
    Some(frame.read().ok()?.body_as_error_response()?.error())
}

/// A v1 memory cgroup (or v2's memory.max) holding the broker; None, and
/// the reason printed, where the machine has neither (the RSS bound is
/// still checked).
struct MemoryLimit {
    dir: PathBuf,
}

impl MemoryLimit {
    fn new(limit_bytes: u64, pid: u32) -> Option<MemoryLimit> {
        let name = format!("spate-hostile-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let attempt = if v1.join("memory.limit_in_bytes").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join("memory.limit_in_bytes"), limit_bytes.to_string()))
                .map(|()| dir)
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            let dir = v2.join(&name);
            std::fs::write(v2.join("cgroup.subtree_control"), "+memory")
                .and_then(|()| std::fs::create_dir_all(&dir))
                .and_then(|()| std::fs::write(dir.join("memory.max"), limit_bytes.to_string()))
                .map(|()| dir)
        };
        let limit = attempt.and_then(|dir| match std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => Ok(dir),
            Err(err) => {
                let _ = std::fs::remove_dir(&dir);
                Err(err)
            }
        });
        match limit {
            Ok(dir) => Some(MemoryLimit { dir }),
            Err(err) => {
                eprintln!("no memory cgroup on this machine; running without a hard limit: {err}");
                None
            }
        }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        // Only an empty cgroup can go; the broker has exited by now.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the broker is running");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// Each hostile client, bounded in requests; each runs on its own thread.
fn hostile_clients(port: u16) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    // Huge names repeated per partition: one small refusal each.
    for _ in 0..2 {
        threads.push(std::thread::spawn(move || {
            let mut raw = Raw::connect(port);
            let name = "n".repeat(200 * 1024);
            for _ in 0..40 {
                let request = raw.produce_request(&name, &(0..1000).collect::<Vec<_>>(), &batch(1, 10), -1);
                assert!(raw.send(&request));
                let frame = raw.recv().expect("an answer");
                assert_eq!(error_response(&frame), Some(ErrorCode::InvalidTopic));
                assert!(frame.envelope.len() < 1024);
            }
        }));
    }
    // Thousands of repeated entries, and a request past the entry cap.
    threads.push(std::thread::spawn(move || {
        let mut raw = Raw::connect(port);
        for _ in 0..40 {
            let request = raw.fetch_request("data", &[0; 10_000], 0, 1 << 20, 64 << 20);
            assert!(raw.send(&request));
            assert_eq!(error_response(&raw.recv().expect("an answer")), Some(ErrorCode::InvalidRequest));
            let request = raw.fetch_request("wide", &(0..20_000).collect::<Vec<_>>(), 0, 1, 64 << 20);
            assert!(raw.send(&request));
            assert_eq!(error_response(&raw.recv().expect("an answer")), Some(ErrorCode::InvalidRequest));
        }
    }));
    // 1-byte fetches over every partition of a wide topic.
    for _ in 0..2 {
        threads.push(std::thread::spawn(move || {
            let mut raw = Raw::connect(port);
            let partitions: Vec<i32> = (0..256).collect();
            for _ in 0..100 {
                let request = raw.fetch_request("wide", &partitions, 0, 1, 64 << 20);
                assert!(raw.send(&request));
                assert!(error_response(&raw.recv().expect("an answer")).is_none());
            }
        }));
    }
    // Clients that send and never read: large fetches from the start of a
    // log bigger than the tail cache (disk reads: memory of their own).
    for _ in 0..3 {
        threads.push(std::thread::spawn(move || {
            let mut raw = Raw::connect(port);
            raw.stream.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
            for _ in 0..200 {
                let request = raw.fetch_request("data", &[0], 0, 16 << 20, 16 << 20);
                // The broker stops reading (backpressure), then closes the
                // connection (write timeout): either ends the flood.
                if !raw.send(&request) {
                    break;
                }
            }
        }));
    }
    // acks=0 floods to a partition that fsyncs every batch.
    for _ in 0..2 {
        threads.push(std::thread::spawn(move || {
            let mut raw = Raw::connect(port);
            let records = batch(4, 200 * 1024);
            for _ in 0..150 {
                let request = raw.produce_request("slow", &[0], &records, 0);
                assert!(raw.send(&request), "acks=0 produce is never refused here");
            }
        }));
    }
    threads
}

#[test]
fn hostile_clients_leave_the_broker_up_serving_others_and_within_its_memory_bound() {
    let dir = data_dir("hostile");
    let config = dir.join("broker.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let data = dir.join("data");
    let mut broker = Broker::start_with(&data, 2, 0, &["--config", config.to_str().expect("utf-8")]);
    let pid = broker.child.id();
    let limit = MemoryLimit::new(CGROUP_LIMIT_BYTES, pid);
    let port = broker.port;

    let mut good = Raw::connect(port);
    good.create_topic("good", 1, &[]);
    good.create_topic("data", 1, &[]);
    good.create_topic("wide", 256, &[]);
    good.create_topic("slow", 1, &[("flush.ms", "0")]);
    // 24 MiB in "data", three times the tail cache.
    for _ in 0..30 {
        let request = good.produce_request("data", &[0], &batch(4, 200 * 1024), -1);
        assert!(good.send(&request));
        assert!(error_response(&good.recv().expect("an answer")).is_none());
    }
    let request = good.produce_request("wide", &[0], &batch(1, 10), -1);
    assert!(good.send(&request));
    good.recv().expect("an answer");
    let rss_before_bytes = peak_rss_bytes(pid);

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        let threads = hostile_clients(port);
        std::thread::spawn(move || {
            for thread in threads {
                thread.join().expect("a hostile client's checks");
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // The well-behaved client produces and consumes throughout.
    let mut served = 0i64;
    while !done.load(Ordering::SeqCst) || served < 10 {
        let request = good.produce_request("good", &[0], &batch(1, 100), -1);
        assert!(good.send(&request), "the broker closed the good client");
        let frame = good.recv().expect("the good client's produce is answered");
        let envelope = frame.read().expect("verified");
        let part = envelope.body_as_produce_response().expect("produce").topics().expect("t").get(0);
        let part = part.partitions().expect("p").get(0);
        assert_eq!((part.error(), part.base_offset()), (ErrorCode::None, served));
        let request = good.fetch_request("good", &[0], served, 1 << 20, 1 << 20);
        assert!(good.send(&request));
        let frame = good.recv().expect("the good client's fetch is answered");
        let envelope = frame.read().expect("verified");
        let part = envelope.body_as_fetch_response().expect("fetch").topics().expect("t").get(0);
        let part = part.partitions().expect("p").get(0);
        assert_eq!(part.error(), ErrorCode::None);
        assert!(part.records_bytes() > 0, "the record just produced is read back");
        served += 1;
    }
    watcher.join().expect("hostile clients");
    let peak = peak_rss_bytes(pid);
    eprintln!(
        "hostile flood: broker peak RSS {} MiB (before the flood {} MiB; bound {} MiB), {served} good round trips",
        peak >> 20,
        rss_before_bytes >> 20,
        RSS_BYTES_MAX >> 20,
    );
    assert!(broker.child.try_wait().expect("wait").is_none(), "the broker is still up");
    assert!(peak < RSS_BYTES_MAX, "peak RSS {} MiB", peak >> 20);
    broker.stop();
    drop(limit);
    let _ = std::fs::remove_dir_all(&dir);
}
