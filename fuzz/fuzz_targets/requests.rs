//! Every native request handler, against one broker started in this
//! process (once per fuzz process, on a data directory under fuzz/target/,
//! which is on the real disk: O_DIRECT). Each input becomes one frame sent
//! over a loopback connection: the first byte picks a request type whose
//! table the rest fills through the generated builders (names from a
//! small set, so that what the inputs create stays bounded), or, from
//! 0xf0 on, the rest is sent as a raw envelope or as raw connection bytes.
//! A Metadata request follows on the same connection (or on a new one if
//! the broker closed it) and must be answered: the broker must never panic
//! (a panic in any thread aborts the process, which the fuzzer reports) and
//! must keep serving. Run with `-rss_limit_mb=2048` so that memory that
//! grows without bound fails too, and `-detect_leaks=0`: the broker lives
//! until the process ends, and LeakSanitizer once took a shard's pending
//! timer (its failed-log check) for a leak.
#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spate_engine::batch::BatchBuilder;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};
use spate_flatbuf::proto::*;
use spate_flatbuf::{FrameDecoder, encode_frame, frame_header};
use spate_net::{BrokerConfig, BrokerHandle};

/// How long the broker may take to answer the Metadata request after an
/// input (generous: a loaded machine, a produce waiting for its sync, a
/// long poll of up to 255 ms before it in the same connection).
const ANSWER_TIMEOUT_MS: u64 = 30_000;

/// Topic names the builders use: bounded, so that inputs that create
/// topics cannot make the broker's state grow without end.
const TOPICS: [&str; 4] = ["t0", "t1", "t2", "__consumer_offsets"];
const CONFIG_KEYS: [&str; 12] = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "cleanup.policy",
    "delete.retention.ms",
    "min.insync.replicas",
    "max.message.bytes",
    "message.timestamp.type",
    "unclean.leader.election.enable",
    "flush.ms",
    "no.such.key",
];

fn broker() -> SocketAddr {
    static BROKER: OnceLock<(BrokerHandle, SocketAddr)> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(format!("requests-broker-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            remove_dead_brokers_dirs(dir.parent().expect("a parent"));
            let config = BrokerConfig {
                data_dir: dir,
                port: 0,
                shards: 2,
                pin_cores: false,
                metrics_listen: String::new(),
                io_memory_bytes: 4 << 20,
                tail_cache_bytes: 8 << 20,
                frame_bytes_max: 4 << 20,
                ..BrokerConfig::default()
            };
            let handle = spate_net::start(config).expect("the broker starts");
            let addr = handle.addr();
            // Two topics from the start, so that produce, fetch and the
            // offset APIs reach partitions without the fuzzer first
            // finding a CreateTopics that succeeds.
            let create = frame(1, 1, |b| {
                let topics: Vec<_> = [("t0", 2, "delete"), ("t1", 1, "compact")]
                    .into_iter()
                    .map(|(name, partitions, policy)| {
                        let name = b.create_string(name);
                        let (key, value) = (b.create_string("cleanup.policy"), b.create_string(policy));
                        let entry = ConfigEntry::create(
                            b,
                            &ConfigEntryArgs { key: Some(key), value: Some(value), is_set: true },
                        );
                        let configs = b.create_vector(&[entry]);
                        let args = CreatableTopicArgs {
                            name: Some(name),
                            partitions,
                            replication_factor: 1,
                            configs: Some(configs),
                        };
                        CreatableTopic::create(b, &args)
                    })
                    .collect();
                let topics = b.create_vector(&topics);
                let args = CreateTopicsRequestArgs { topics: Some(topics), ..Default::default() };
                (Body::CreateTopicsRequest, CreateTopicsRequest::create(b, &args).as_union_value())
            });
            let mut stream = connect(addr);
            stream.write_all(&create).expect("a request");
            stream.write_all(&metadata_request()).expect("a request");
            assert!(await_metadata(&mut stream), "the broker answers");
            (handle, addr)
        })
        .1
}

/// Data directories of earlier fuzz processes that have ended (each
/// process has its own, so that parallel jobs do not share one).
fn remove_dead_brokers_dirs(parent: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("requests-broker-")) else { continue };
        if !PathBuf::from("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The input, read field by field; past its end every field is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn bytes(&mut self) -> &[u8] {
        let len = usize::from(self.u8()).min(self.0.len());
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        head
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes([self.u8(), self.u8()])
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn i64(&mut self) -> i64 {
        (i64::from(self.i32()) << 32) | i64::from(self.i32() as u32)
    }
    /// A small number, mostly: counts and partitions.
    fn small(&mut self) -> i32 {
        match self.u8() {
            b @ 0..=250 => i32::from(b % 4),
            _ => self.i32(),
        }
    }
    fn count(&mut self) -> usize {
        usize::from(self.u8() % 4)
    }
    /// A topic name: mostly one of TOPICS, else any bytes.
    fn topic(&mut self) -> String {
        match self.u8() {
            b @ 0..=239 => TOPICS[usize::from(b) % TOPICS.len()].to_string(),
            _ => String::from_utf8_lossy(self.bytes()).into_owned(),
        }
    }
    /// A name that creates something (a topic): only from TOPICS.
    fn created_topic(&mut self) -> &'static str {
        TOPICS[usize::from(self.u8()) % TOPICS.len()]
    }
    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

type Fbb = FlatBufferBuilder<'static>;

type Strings = Vector<'static, ForwardsUOffset<&'static str>>;

fn strings(b: &mut Fbb, names: &[String]) -> WIPOffset<Strings> {
    let names: Vec<_> = names.iter().map(|n| b.create_string(n)).collect();
    b.create_vector(&names)
}

fn config_entries(b: &mut Fbb, input: &mut Input<'_>) -> Vec<WIPOffset<ConfigEntry<'static>>> {
    (0..input.count())
        .map(|_| {
            let key = CONFIG_KEYS[usize::from(input.u8()) % CONFIG_KEYS.len()];
            let value = input.text();
            let (key, value) = (b.create_string(key), b.create_string(&value));
            ConfigEntry::create(b, &ConfigEntryArgs { key: Some(key), value: Some(value), is_set: input.u8() & 1 == 0 })
        })
        .collect()
}

/// A batch for a produce: well formed from the input's fields, or raw.
fn records(input: &mut Input<'_>) -> Vec<u8> {
    if input.u8() & 1 == 1 {
        return input.bytes().to_vec();
    }
    let mut builder = BatchBuilder::new(input.i64());
    let producer = input.u8();
    if producer & 1 == 1 {
        builder = builder.producer(input.i64(), input.i16(), input.i32());
    }
    for _ in 0..=input.count() {
        let key = input.bytes().to_vec();
        let value = input.bytes().to_vec();
        builder.push(input.i64(), Some(&key), Some(&value), &[]);
    }
    builder.build().to_vec()
}

/// The request the input describes: (body type, body).
fn request(b: &mut Fbb, kind: u8, input: &mut Input<'_>) -> (Body, WIPOffset<UnionWIPOffset>) {
    match kind % 22 {
        0 => {
            let client_id = b.create_string(&input.text());
            let auth = (input.u8() & 1 == 1).then(|| {
                let bytes = input.bytes().to_vec();
                b.create_vector(&bytes)
            });
            let args = HandshakeRequestArgs {
                client_id: Some(client_id),
                version_min: input.i16() as u16,
                version_max: input.i16() as u16,
                broker_auth: auth,
            };
            (Body::HandshakeRequest, HandshakeRequest::create(b, &args).as_union_value())
        }
        1 => {
            let names: Vec<String> = (0..input.count()).map(|_| input.topic()).collect();
            let topics = (input.u8() & 1 == 0).then(|| strings(b, &names));
            (Body::MetadataRequest, MetadataRequest::create(b, &MetadataRequestArgs { topics }).as_union_value())
        }
        2 => {
            let topics: Vec<_> = (0..input.count().max(1))
                .map(|_| {
                    let name = b.create_string(input.created_topic());
                    let configs = config_entries(b, input);
                    let configs = b.create_vector(&configs);
                    let args = CreatableTopicArgs {
                        name: Some(name),
                        partitions: input.small() + 1,
                        replication_factor: match input.u8() {
                            0..=250 => 1,
                            _ => input.i16(),
                        },
                        configs: Some(configs),
                    };
                    CreatableTopic::create(b, &args)
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = CreateTopicsRequestArgs {
                topics: Some(topics),
                timeout_ms: i32::from(input.u8()) * 100,
                validate_only: input.u8() & 1 == 1,
            };
            (Body::CreateTopicsRequest, CreateTopicsRequest::create(b, &args).as_union_value())
        }
        3 => {
            let names: Vec<String> = (0..input.count()).map(|_| input.topic()).collect();
            let names = strings(b, &names);
            let args = DeleteTopicsRequestArgs { names: Some(names), timeout_ms: i32::from(input.u8()) * 100 };
            (Body::DeleteTopicsRequest, DeleteTopicsRequest::create(b, &args).as_union_value())
        }
        4 => {
            let names: Vec<String> = (0..input.count()).map(|_| input.topic()).collect();
            let names = strings(b, &names);
            let args = DescribeTopicsRequestArgs { names: Some(names) };
            (Body::DescribeTopicsRequest, DescribeTopicsRequest::create(b, &args).as_union_value())
        }
        5 => {
            let topics: Vec<_> = (0..input.count())
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let set = config_entries(b, input);
                    let set = b.create_vector(&set);
                    let delete: Vec<String> = (0..input.count())
                        .map(|_| CONFIG_KEYS[usize::from(input.u8()) % CONFIG_KEYS.len()].to_string())
                        .collect();
                    let delete = strings(b, &delete);
                    AlterableTopic::create(
                        b,
                        &AlterableTopicArgs { name: Some(name), set: Some(set), delete: Some(delete) },
                    )
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = AlterConfigsRequestArgs {
                topics: Some(topics),
                timeout_ms: i32::from(input.u8()) * 100,
                validate_only: input.u8() & 1 == 1,
            };
            (Body::AlterConfigsRequest, AlterConfigsRequest::create(b, &args).as_union_value())
        }
        6 => {
            let topics: Vec<_> = (0..input.count().max(1))
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let partitions: Vec<_> = (0..input.count().max(1))
                        .map(|_| {
                            let partition = input.small();
                            let records = records(input);
                            let records = b.create_vector(&records);
                            ProducePartition::create(b, &ProducePartitionArgs { partition, records: Some(records) })
                        })
                        .collect();
                    let partitions = b.create_vector(&partitions);
                    ProduceTopic::create(b, &ProduceTopicArgs { name: Some(name), partitions: Some(partitions) })
                })
                .collect();
            let topics = b.create_vector(&topics);
            let acks = match input.u8() % 4 {
                0 => -1,
                1 => 0,
                2 => 1,
                _ => input.i16(),
            };
            // Sometimes a transactional producer's request (its batches
            // may be transactional: the id is what lets them in).
            let transactional_id = (input.u8() & 3 == 0).then(|| b.create_string(&input.text()));
            let args = ProduceRequestArgs {
                acks,
                timeout_ms: i32::from(input.u8()) * 100,
                topics: Some(topics),
                transactional_id,
                transactions_v2: input.u8() & 1 == 0,
            };
            (Body::ProduceRequest, ProduceRequest::create(b, &args).as_union_value())
        }
        7 => {
            let topics: Vec<_> = (0..input.count().max(1))
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let partitions: Vec<_> = (0..input.count().max(1))
                        .map(|_| {
                            let args = FetchPartitionArgs {
                                partition: input.small(),
                                offset: i64::from(input.small()),
                                max_bytes: input.i32(),
                                current_leader_epoch: input.small() - 1,
                                replica_durable_offset: i64::from(input.small()) - 1,
                            };
                            FetchPartition::create(b, &args)
                        })
                        .collect();
                    let partitions = b.create_vector(&partitions);
                    FetchTopic::create(b, &FetchTopicArgs { name: Some(name), partitions: Some(partitions) })
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = FetchRequestArgs {
                // At most 255 ms: a long poll delays the Metadata check.
                max_wait_ms: i32::from(input.u8()),
                min_bytes: input.i32(),
                max_bytes: input.i32(),
                topics: Some(topics),
                replica_id: input.small() - 1,
                isolation_level: (input.u8() % 2) as i8,
            };
            (Body::FetchRequest, FetchRequest::create(b, &args).as_union_value())
        }
        8 => {
            let topics: Vec<_> = (0..input.count().max(1))
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let partitions: Vec<_> = (0..input.count().max(1))
                        .map(|_| {
                            let args = ListOffsetsPartitionArgs { partition: input.small(), timestamp: input.i64() };
                            ListOffsetsPartition::create(b, &args)
                        })
                        .collect();
                    let partitions = b.create_vector(&partitions);
                    ListOffsetsTopic::create(
                        b,
                        &ListOffsetsTopicArgs { name: Some(name), partitions: Some(partitions) },
                    )
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = ListOffsetsRequestArgs { topics: Some(topics), isolation_level: (input.u8() % 2) as i8 };
            (Body::ListOffsetsRequest, ListOffsetsRequest::create(b, &args).as_union_value())
        }
        9 => {
            let group_id = b.create_string(&input.text());
            let member_id = b.create_string(&input.text());
            let subscribed: Vec<String> = (0..input.count()).map(|_| input.topic()).collect();
            let subscribed = strings(b, &subscribed);
            let assignor = b.create_string(&input.text());
            let owned: Vec<_> = (0..input.count())
                .map(|_| {
                    let topic = b.create_string(&input.topic());
                    let partitions: Vec<i32> = (0..input.count()).map(|_| input.small()).collect();
                    let partitions = b.create_vector(&partitions);
                    TopicPartitions::create(
                        b,
                        &TopicPartitionsArgs { topic: Some(topic), partitions: Some(partitions) },
                    )
                })
                .collect();
            let owned = b.create_vector(&owned);
            let client_id = b.create_string(&input.text());
            let args = ConsumerGroupHeartbeatRequestArgs {
                group_id: Some(group_id),
                member_id: Some(member_id),
                member_epoch: input.small() - 1,
                subscribed_topics: Some(subscribed),
                assignor: Some(assignor),
                session_timeout_ms: input.i32(),
                owned_partitions: Some(owned),
                client_id: Some(client_id),
            };
            (Body::ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatRequest::create(b, &args).as_union_value())
        }
        10 => {
            let group_id = b.create_string(&input.text());
            let member_id = b.create_string(&input.text());
            let topics: Vec<_> = (0..input.count())
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let partitions: Vec<_> = (0..input.count())
                        .map(|_| {
                            let args = OffsetCommitPartitionArgs { partition: input.small(), offset: input.i64() };
                            OffsetCommitPartition::create(b, &args)
                        })
                        .collect();
                    let partitions = b.create_vector(&partitions);
                    OffsetCommitTopic::create(
                        b,
                        &OffsetCommitTopicArgs { name: Some(name), partitions: Some(partitions) },
                    )
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = OffsetCommitRequestArgs {
                group_id: Some(group_id),
                member_id: Some(member_id),
                member_epoch: input.small() - 1,
                topics: Some(topics),
            };
            (Body::OffsetCommitRequest, OffsetCommitRequest::create(b, &args).as_union_value())
        }
        11 => {
            let group_id = b.create_string(&input.text());
            let topics: Vec<_> = (0..input.count())
                .map(|_| {
                    let topic = b.create_string(&input.topic());
                    let partitions: Vec<i32> = (0..input.count()).map(|_| input.small()).collect();
                    let partitions = b.create_vector(&partitions);
                    TopicPartitions::create(
                        b,
                        &TopicPartitionsArgs { topic: Some(topic), partitions: Some(partitions) },
                    )
                })
                .collect();
            let topics = (input.u8() & 1 == 0).then(|| b.create_vector(&topics));
            let args = OffsetFetchRequestArgs { group_id: Some(group_id), topics };
            (Body::OffsetFetchRequest, OffsetFetchRequest::create(b, &args).as_union_value())
        }
        12 => (Body::ListGroupsRequest, ListGroupsRequest::create(b, &ListGroupsRequestArgs {}).as_union_value()),
        13 => {
            let groups: Vec<String> = (0..input.count()).map(|_| input.text()).collect();
            let groups = strings(b, &groups);
            let args = DescribeGroupsRequestArgs { groups: Some(groups) };
            (Body::DescribeGroupsRequest, DescribeGroupsRequest::create(b, &args).as_union_value())
        }
        14 => {
            let groups: Vec<String> = (0..input.count()).map(|_| input.text()).collect();
            let groups = strings(b, &groups);
            let args = DeleteGroupsRequestArgs { groups: Some(groups) };
            (Body::DeleteGroupsRequest, DeleteGroupsRequest::create(b, &args).as_union_value())
        }
        15 => {
            // Idempotent, or a transactional id's (the coordinator path).
            let transactional_id = (input.u8() & 1 == 0).then(|| b.create_string(&input.text()));
            let args = InitProducerIdRequestArgs { transactional_id, transaction_timeout_ms: input.i32() };
            (Body::InitProducerIdRequest, InitProducerIdRequest::create(b, &args).as_union_value())
        }
        // The transaction APIs (issue 17), with ids, epochs and partitions
        // from the input: refused or answered, never a panic.
        17 => {
            let transactional_id = b.create_string(&input.text());
            let topics: Vec<_> = (0..input.count())
                .map(|_| {
                    let topic = b.create_string(&input.topic());
                    let partitions: Vec<i32> = (0..input.count()).map(|_| input.small() - 1).collect();
                    let partitions = b.create_vector(&partitions);
                    TopicPartitions::create(b, &TopicPartitionsArgs { topic: Some(topic), partitions: Some(partitions) })
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = AddPartitionsToTxnRequestArgs {
                transactional_id: Some(transactional_id),
                producer_id: input.i64(),
                producer_epoch: input.i16(),
                topics: Some(topics),
                // A client's claim to be a broker's verification is refused.
                verify_only: input.u8() % 2 == 1,
            };
            (Body::AddPartitionsToTxnRequest, AddPartitionsToTxnRequest::create(b, &args).as_union_value())
        }
        18 => {
            let transactional_id = b.create_string(&input.text());
            let group_id = b.create_string(&input.text());
            let args = AddOffsetsToTxnRequestArgs {
                transactional_id: Some(transactional_id),
                producer_id: input.i64(),
                producer_epoch: input.i16(),
                group_id: Some(group_id),
            };
            (Body::AddOffsetsToTxnRequest, AddOffsetsToTxnRequest::create(b, &args).as_union_value())
        }
        19 => {
            let transactional_id = b.create_string(&input.text());
            let group_id = b.create_string(&input.text());
            let member_id = b.create_string(&input.text());
            let topics: Vec<_> = (0..input.count())
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let partitions: Vec<_> = (0..input.count())
                        .map(|_| {
                            let args = OffsetCommitPartitionArgs { partition: input.small(), offset: input.i64() };
                            OffsetCommitPartition::create(b, &args)
                        })
                        .collect();
                    let partitions = b.create_vector(&partitions);
                    OffsetCommitTopic::create(b, &OffsetCommitTopicArgs { name: Some(name), partitions: Some(partitions) })
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = TxnOffsetCommitRequestArgs {
                transactional_id: Some(transactional_id),
                group_id: Some(group_id),
                producer_id: input.i64(),
                producer_epoch: input.i16(),
                member_id: Some(member_id),
                member_epoch: input.small() - 1,
                topics: Some(topics),
                transactions_v2: input.u8() & 1 == 0,
            };
            (Body::TxnOffsetCommitRequest, TxnOffsetCommitRequest::create(b, &args).as_union_value())
        }
        20 => {
            let transactional_id = b.create_string(&input.text());
            let args = EndTxnRequestArgs {
                transactional_id: Some(transactional_id),
                producer_id: input.i64(),
                producer_epoch: input.i16(),
                commit: input.u8() & 1 == 0,
                transactions_v2: input.u8() & 1 == 0,
            };
            (Body::EndTxnRequest, EndTxnRequest::create(b, &args).as_union_value())
        }
        _ => {
            let topics: Vec<_> = (0..input.count().max(1))
                .map(|_| {
                    let name = b.create_string(&input.topic());
                    let partitions: Vec<_> = (0..input.count().max(1))
                        .map(|_| {
                            let args = OffsetForLeaderEpochPartitionArgs {
                                partition: input.small(),
                                current_leader_epoch: input.small() - 1,
                                leader_epoch: input.small() - 1,
                            };
                            OffsetForLeaderEpochPartition::create(b, &args)
                        })
                        .collect();
                    let partitions = b.create_vector(&partitions);
                    OffsetForLeaderEpochTopic::create(
                        b,
                        &OffsetForLeaderEpochTopicArgs { name: Some(name), partitions: Some(partitions) },
                    )
                })
                .collect();
            let topics = b.create_vector(&topics);
            let args = OffsetForLeaderEpochRequestArgs { topics: Some(topics), replica_id: input.small() - 1 };
            (Body::OffsetForLeaderEpochRequest, OffsetForLeaderEpochRequest::create(b, &args).as_union_value())
        }
    }
}

fn frame(request_id: u64, version: u16, body: impl FnOnce(&mut Fbb) -> (Body, WIPOffset<UnionWIPOffset>)) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let (body_type, body) = body(&mut b);
    let envelope = Envelope::create(&mut b, &EnvelopeArgs { request_id, version, body_type, body: Some(body) });
    b.finish(envelope, None);
    encode_frame(&b, &[]).to_vec()
}

const METADATA_REQUEST_ID: u64 = u64::MAX;

/// Reads frames until the Metadata answer (true) or the close (false);
/// at the read timeout, (the frames read before, the bytes read since).
fn try_await_metadata(stream: &mut TcpStream) -> Result<bool, (usize, usize)> {
    let decoder = FrameDecoder::new(64 << 20);
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut frames = 0;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let envelope = frame.read().expect("the broker sends verifiable envelopes");
                if envelope.request_id() == METADATA_REQUEST_ID && envelope.body_type() == Body::MetadataResponse {
                    return Ok(true);
                }
                frames += 1;
                continue;
            }
            Ok(None) => {}
            Err(err) => panic!("the broker sent a bad frame: {err}"),
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock || err.kind() == std::io::ErrorKind::TimedOut => {
                return Err((frames, buf.len()));
            }
            // A reset is a close (the broker refused what it read).
            Err(_) => return Ok(false),
        }
    }
}

/// As `try_await_metadata`; a timeout fails the input, saying whether
/// the whole broker is stuck or only this connection.
fn await_metadata(stream: &mut TcpStream) -> bool {
    match try_await_metadata(stream) {
        Ok(answered) => answered,
        Err((frames, pending_bytes)) => {
            let mut other = connect(stream.peer_addr().expect("an address"));
            let other_answered =
                other.write_all(&metadata_request()).is_ok() && try_await_metadata(&mut other) == Ok(true);
            panic!(
                "the broker did not answer Metadata within {ANSWER_TIMEOUT_MS} ms on this connection \
                 ({frames} responses before it, {pending_bytes} bytes of one pending); a new connection was {}answered",
                if other_answered { "" } else { "not " }
            )
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("the broker accepts connections");
    stream.set_read_timeout(Some(Duration::from_millis(ANSWER_TIMEOUT_MS))).expect("a read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

fn metadata_request() -> Vec<u8> {
    frame(METADATA_REQUEST_ID, 1, |b| {
        (Body::MetadataRequest, MetadataRequest::create(b, &MetadataRequestArgs { topics: None }).as_union_value())
    })
}

fuzz_target!(|data: &[u8]| {
    let addr = broker();
    let Some((&kind, rest)) = data.split_first() else { return };
    let bytes = match kind {
        // The rest as an envelope, the frame header right.
        0xf0..=0xf7 => {
            let mut bytes = frame_header(rest.len(), 0).to_vec();
            bytes.extend_from_slice(rest);
            bytes
        }
        // The rest as whatever a connection sends.
        0xf8..=0xff => rest.to_vec(),
        _ => {
            let mut input = Input(rest);
            // Mostly the version the broker speaks.
            let version = if kind & 0x80 == 0 { 1 } else { input.i16() as u16 };
            frame(1, version, |b| request(b, kind, &mut input))
        }
    };
    let mut stream = connect(addr);
    if kind >= 0xf8 {
        // Raw bytes may end inside a frame, which would swallow the
        // Metadata request: the check runs on a new connection.
        let _ = stream.write_all(&bytes);
        drop(stream);
        let mut stream = connect(addr);
        stream.write_all(&metadata_request()).expect("a new connection takes a request");
        assert!(await_metadata(&mut stream), "the broker closed a new connection on a Metadata request");
        return;
    }
    // A write may fail once the broker has closed the connection on what
    // it read so far: then the check runs on a new connection.
    let sent = stream.write_all(&bytes).and_then(|()| stream.write_all(&metadata_request())).is_ok();
    if sent && await_metadata(&mut stream) {
        return;
    }
    let mut stream = connect(addr);
    stream.write_all(&metadata_request()).expect("a new connection takes a request");
    assert!(await_metadata(&mut stream), "the broker closed a new connection on a Metadata request");
});
