//! The client against a small in-process broker that speaks the protocol
//! (handshake, metadata, create topics, produce, fetch, list offsets) over
//! real sockets on 127.0.0.1, with a main port and one port per core. It
//! stores batches in memory; it exists to test the client's wiring until
//! the real broker can stand in for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use spate_client::{
    Acks, Admin, AutoOffsetReset, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ConsumerRecord,
    Producer, ProducerConfig, ProducerRecord, SeekTo, TopicPartition, partition_for_key,
};
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::{self, Body, ErrorCode};
use spate_flatbuf::{Frame, FrameDecoder, encode_frame};
use spate_format::batch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SHARD_COUNT: usize = 2;

#[derive(Default)]
struct PartitionLog {
    /// (base offset, batch bytes), in offset order.
    batches: Vec<(i64, Bytes)>,
    end_offset: i64,
}

#[derive(Default)]
struct BrokerState {
    topics: BTreeMap<String, Vec<PartitionLog>>,
    /// The API of every request, by the port it arrived on.
    requests: HashMap<u16, Vec<&'static str>>,
}

#[derive(Clone)]
struct MockBroker {
    main_port: u16,
    shard_ports: Vec<u16>,
    state: Arc<Mutex<BrokerState>>,
}

impl MockBroker {
    async fn start() -> MockBroker {
        let state = Arc::new(Mutex::new(BrokerState::default()));
        let mut listeners = Vec::new();
        for _ in 0..=SHARD_COUNT {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback"));
        }
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect();
        let broker = MockBroker { main_port: ports[0], shard_ports: ports[1..].to_vec(), state };
        for (index, listener) in listeners.into_iter().enumerate() {
            let broker = broker.clone();
            let port = ports[index];
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(broker.clone().serve(stream, index.saturating_sub(1), port));
                }
            });
        }
        broker
    }

    fn config(&self) -> ClientConfig {
        ClientConfig {
            bootstrap: vec![format!("127.0.0.1:{}", self.main_port)],
            request_timeout_ms: 5_000,
            ..ClientConfig::default()
        }
    }

    fn requests_on(&self, port: u16, api: &str) -> usize {
        let state = self.state.lock().expect("not poisoned");
        state.requests.get(&port).map_or(0, |apis| apis.iter().filter(|a| **a == api).count())
    }

    async fn serve(self, mut stream: TcpStream, shard: usize, port: u16) {
        let decoder = FrameDecoder::new(1 << 26);
        let mut buf = BytesMut::new();
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                Err(_) => return,
            };
            let answer = self.answer(&frame, shard, port).await;
            if let Some(answer) = answer
                && stream.write_all(&answer).await.is_err()
            {
                return;
            }
        }
    }

    async fn answer(&self, frame: &Frame, shard: usize, port: u16) -> Option<Bytes> {
        let envelope = frame.read().expect("the client sends valid envelopes");
        let request_id = envelope.request_id();
        let api = spate_flatbuf::api_name(envelope.body_type());
        self.state.lock().expect("not poisoned").requests.entry(port).or_default().push(api);
        let mut builder = FlatBufferBuilder::new();
        let mut payload = Vec::new();
        let (body_type, body) = match envelope.body_type() {
            Body::HandshakeRequest => {
                let args = proto::HandshakeResponseArgs {
                    error: ErrorCode::None,
                    version: 1,
                    node_id: 1,
                    shard: u16::try_from(shard).expect("few shards"),
                    shard_count: SHARD_COUNT as u16,
                    frame_bytes_max: 1 << 26,
                };
                (Body::HandshakeResponse, proto::HandshakeResponse::create(&mut builder, &args).as_union_value())
            }
            Body::MetadataRequest => (Body::MetadataResponse, self.metadata(&mut builder)),
            Body::CreateTopicsRequest => {
                let request = envelope.body_as_create_topics_request().expect("body");
                let topic = request.topics().expect("topics").get(0);
                let name = topic.name().expect("name").to_string();
                let mut state = self.state.lock().expect("not poisoned");
                let error = if state.topics.contains_key(&name) {
                    ErrorCode::TopicAlreadyExists
                } else {
                    let partitions = usize::try_from(topic.partitions()).expect("positive");
                    state.topics.insert(name.clone(), (0..partitions).map(|_| PartitionLog::default()).collect());
                    ErrorCode::None
                };
                drop(state);
                let name = builder.create_string(&name);
                let result = proto::TopicResult::create(
                    &mut builder,
                    &proto::TopicResultArgs { name: Some(name), error, message: None },
                );
                let results = builder.create_vector(&[result]);
                let args = proto::CreateTopicsResponseArgs { results: Some(results) };
                (Body::CreateTopicsResponse, proto::CreateTopicsResponse::create(&mut builder, &args).as_union_value())
            }
            Body::ProduceRequest => {
                let request = envelope.body_as_produce_request().expect("body");
                let body = self.produce(&mut builder, &request);
                if request.acks() == 0 {
                    return None;
                }
                (Body::ProduceResponse, body)
            }
            Body::FetchRequest => {
                let request = envelope.body_as_fetch_request().expect("body");
                let mut body = self.fetch(&mut builder, &request, &mut payload);
                if payload.is_empty() && request.max_wait_ms() > 0 {
                    // Long poll, shortened: wait a little for records.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    builder = FlatBufferBuilder::new();
                    body = self.fetch(&mut builder, &request, &mut payload);
                }
                (Body::FetchResponse, body)
            }
            Body::ListOffsetsRequest => {
                let request = envelope.body_as_list_offsets_request().expect("body");
                (Body::ListOffsetsResponse, self.list_offsets(&mut builder, &request))
            }
            Body::InitProducerIdRequest => {
                let args =
                    proto::InitProducerIdResponseArgs { producer_id: 1, producer_epoch: 0, ..Default::default() };
                (
                    Body::InitProducerIdResponse,
                    proto::InitProducerIdResponse::create(&mut builder, &args).as_union_value(),
                )
            }
            other => panic!("the mock broker does not answer {other:?}"),
        };
        let envelope = proto::Envelope::create(
            &mut builder,
            &proto::EnvelopeArgs { request_id, version: 1, body_type, body: Some(body) },
        );
        builder.finish(envelope, None);
        Some(encode_frame(&builder, &payload))
    }

    fn metadata(&self, builder: &mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset> {
        let host = builder.create_string("127.0.0.1");
        let shard_ports = builder.create_vector(&self.shard_ports);
        let broker = proto::BrokerInfo::create(
            builder,
            &proto::BrokerInfoArgs {
                node_id: 1,
                host: Some(host),
                port: self.main_port,
                shard_ports: Some(shard_ports),
                ..Default::default()
            },
        );
        let brokers = builder.create_vector(&[broker]);
        let state = self.state.lock().expect("not poisoned");
        let mut topics = Vec::new();
        for (name, partitions) in &state.topics {
            let partitions: Vec<_> = (0..partitions.len())
                .map(|partition| {
                    let replicas = builder.create_vector(&[1]);
                    let isr = builder.create_vector(&[1]);
                    proto::PartitionMetadata::create(
                        builder,
                        &proto::PartitionMetadataArgs {
                            partition: i32::try_from(partition).expect("few"),
                            error: ErrorCode::None,
                            leader: 1,
                            leader_epoch: 0,
                            shard: u16::try_from(partition % SHARD_COUNT).expect("few"),
                            replicas: Some(replicas),
                            isr: Some(isr),
                        },
                    )
                })
                .collect();
            let partitions = builder.create_vector(&partitions);
            let name = builder.create_string(name);
            topics.push(proto::TopicMetadata::create(
                builder,
                &proto::TopicMetadataArgs { name: Some(name), error: ErrorCode::None, partitions: Some(partitions) },
            ));
        }
        let topics = builder.create_vector(&topics);
        let args = proto::MetadataResponseArgs { brokers: Some(brokers), controller_id: 1, topics: Some(topics) };
        proto::MetadataResponse::create(builder, &args).as_union_value()
    }

    fn produce(
        &self,
        builder: &mut FlatBufferBuilder<'static>,
        request: &proto::ProduceRequest<'_>,
    ) -> WIPOffset<UnionWIPOffset> {
        let mut state = self.state.lock().expect("not poisoned");
        let mut topics = Vec::new();
        for topic in request.topics().into_iter().flatten() {
            let name = topic.name().expect("name");
            let mut partitions = Vec::new();
            for p in topic.partitions().into_iter().flatten() {
                let log =
                    state.topics.get_mut(name).and_then(|logs| logs.get_mut(usize::try_from(p.partition()).ok()?));
                let (error, base_offset) = match log {
                    None => (ErrorCode::UnknownTopicOrPartition, -1),
                    Some(log) => {
                        let base_offset = log.end_offset;
                        let records = p.records().expect("records").bytes();
                        for span in batch::split_batches(records) {
                            let span = span.expect("whole batches");
                            let info = batch::validate_produce(span.bytes, 1 << 26).expect("valid batch");
                            let mut stored = BytesMut::from(span.bytes);
                            batch::set_base_offset(&mut stored, log.end_offset).expect("header");
                            log.batches.push((log.end_offset, stored.freeze()));
                            log.end_offset += i64::from(info.records_count);
                        }
                        (ErrorCode::None, base_offset)
                    }
                };
                partitions.push(proto::ProducePartitionResponse::create(
                    builder,
                    &proto::ProducePartitionResponseArgs {
                        partition: p.partition(),
                        error,
                        base_offset,
                        log_start_offset: 0,
                        message: None,
                    },
                ));
            }
            let partitions = builder.create_vector(&partitions);
            let name = builder.create_string(name);
            topics.push(proto::ProduceTopicResponse::create(
                builder,
                &proto::ProduceTopicResponseArgs { name: Some(name), partitions: Some(partitions) },
            ));
        }
        let topics = builder.create_vector(&topics);
        proto::ProduceResponse::create(builder, &proto::ProduceResponseArgs { topics: Some(topics) }).as_union_value()
    }

    fn fetch(
        &self,
        builder: &mut FlatBufferBuilder<'static>,
        request: &proto::FetchRequest<'_>,
        payload: &mut Vec<u8>,
    ) -> WIPOffset<UnionWIPOffset> {
        payload.clear();
        let state = self.state.lock().expect("not poisoned");
        let mut topics = Vec::new();
        for topic in request.topics().into_iter().flatten() {
            let name = topic.name().expect("name");
            let mut partitions = Vec::new();
            for p in topic.partitions().into_iter().flatten() {
                let log = state.topics.get(name).and_then(|logs| logs.get(usize::try_from(p.partition()).ok()?));
                let records_offset = u32::try_from(payload.len()).expect("small");
                let (error, high_watermark) = match log {
                    None => (ErrorCode::UnknownTopicOrPartition, -1),
                    Some(log) if p.offset() > log.end_offset || p.offset() < 0 => {
                        (ErrorCode::OffsetOutOfRange, log.end_offset)
                    }
                    Some(log) => {
                        for (_, bytes) in &log.batches {
                            let info = batch::validate_stored(bytes, 1 << 26).expect("stored");
                            if info.last_offset() >= p.offset() {
                                payload.extend_from_slice(bytes);
                            }
                        }
                        (ErrorCode::None, log.end_offset)
                    }
                };
                let records_bytes = u32::try_from(payload.len()).expect("small") - records_offset;
                partitions.push(proto::FetchPartitionResponse::create(
                    builder,
                    &proto::FetchPartitionResponseArgs {
                        partition: p.partition(),
                        error,
                        high_watermark,
                        log_start_offset: 0,
                        log_end_offset: high_watermark,
                        records_offset,
                        records_bytes,
                    },
                ));
            }
            let partitions = builder.create_vector(&partitions);
            let name = builder.create_string(name);
            topics.push(proto::FetchTopicResponse::create(
                builder,
                &proto::FetchTopicResponseArgs { name: Some(name), partitions: Some(partitions) },
            ));
        }
        let topics = builder.create_vector(&topics);
        proto::FetchResponse::create(builder, &proto::FetchResponseArgs { topics: Some(topics) }).as_union_value()
    }

    fn list_offsets(
        &self,
        builder: &mut FlatBufferBuilder<'static>,
        request: &proto::ListOffsetsRequest<'_>,
    ) -> WIPOffset<UnionWIPOffset> {
        let state = self.state.lock().expect("not poisoned");
        let mut topics = Vec::new();
        for topic in request.topics().into_iter().flatten() {
            let name = topic.name().expect("name");
            let mut partitions = Vec::new();
            for p in topic.partitions().into_iter().flatten() {
                let log = state.topics.get(name).and_then(|logs| logs.get(usize::try_from(p.partition()).ok()?));
                let offset = match (log, p.timestamp()) {
                    (None, _) => -1,
                    (Some(_), -2) => 0,
                    (Some(log), -1) => log.end_offset,
                    (Some(log), timestamp) => first_at_or_after(log, timestamp),
                };
                partitions.push(proto::ListOffsetsPartitionResponse::create(
                    builder,
                    &proto::ListOffsetsPartitionResponseArgs {
                        partition: p.partition(),
                        error: if log.is_some() { ErrorCode::None } else { ErrorCode::UnknownTopicOrPartition },
                        offset,
                        timestamp: -1,
                    },
                ));
            }
            let partitions = builder.create_vector(&partitions);
            let name = builder.create_string(name);
            topics.push(proto::ListOffsetsTopicResponse::create(
                builder,
                &proto::ListOffsetsTopicResponseArgs { name: Some(name), partitions: Some(partitions) },
            ));
        }
        let topics = builder.create_vector(&topics);
        proto::ListOffsetsResponse::create(builder, &proto::ListOffsetsResponseArgs { topics: Some(topics) })
            .as_union_value()
    }
}

fn first_at_or_after(log: &PartitionLog, timestamp_ms: i64) -> i64 {
    for (base_offset, bytes) in &log.batches {
        let info = batch::validate_stored(bytes, 1 << 26).expect("stored");
        for record in batch::records(bytes).expect("uncompressed") {
            let record = record.expect("valid");
            if record.timestamp_ms(info.base_timestamp) >= timestamp_ms {
                return record.offset(*base_offset);
            }
        }
    }
    -1
}

fn value_of(record: &ConsumerRecord) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
}

/// Polls until `count` records came or five seconds passed.
async fn poll_records(consumer: &mut Consumer, count: usize) -> Vec<ConsumerRecord> {
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while records.len() < count && tokio::time::Instant::now() < deadline {
        records.extend(consumer.poll(Duration::from_millis(200)).await.expect("poll"));
    }
    records
}

#[tokio::test]
async fn produced_records_come_back_in_order_from_the_partition_their_key_chose() {
    let broker = MockBroker::start().await;
    let client = Client::connect(broker.config()).await.expect("connects");
    Admin::new(client.clone()).create_topic("orders", 3, 1, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    let mut deliveries = Vec::new();
    for index in 0..60 {
        let key = format!("user-{}", index % 7);
        let record = ProducerRecord::new("orders", format!("value-{index}")).with_key(key.clone());
        deliveries.push((key, producer.send(record).await.expect("queued")));
    }
    producer.flush().await.expect("flushed");
    let mut expected: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (index, (key, delivery)) in deliveries.into_iter().enumerate() {
        let metadata = delivery.now_or_never().expect("flush waited for every delivery").expect("delivered");
        assert_eq!(metadata.partition, partition_for_key(key.as_bytes(), 3), "key {key}");
        expected.entry(metadata.partition).or_default().push((metadata.offset, format!("value-{index}")));
    }
    for offsets in expected.values() {
        let numbers: Vec<i64> = offsets.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(numbers, (0..i64::try_from(numbers.len()).expect("few")).collect::<Vec<_>>());
    }
    producer.close().await.expect("closed");

    let mut consumer = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
    let partitions: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new("orders", p)).collect();
    consumer.assign(partitions.clone());
    consumer.seek_many(&partitions, SeekTo::Earliest).await.expect("sought");
    let records = poll_records(&mut consumer, 60).await;
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for record in &records {
        got.entry(record.partition).or_default().push((record.offset, value_of(record)));
    }
    assert_eq!(got, expected);
    for tp in &partitions {
        let count = expected.get(&tp.partition).map_or(0, Vec::len);
        assert_eq!(consumer.position(tp), Some(i64::try_from(count).expect("few")));
    }
}

#[tokio::test]
async fn requests_go_to_the_owning_cores_port_when_shard_aware() {
    let broker = MockBroker::start().await;
    let client = Client::connect(broker.config()).await.expect("connects");
    Admin::new(client.clone()).create_topic("t", 2, 1, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    for partition in 0..2 {
        let record = ProducerRecord::new("t", "x").with_partition(partition);
        producer.send(record).await.expect("queued").await.expect("delivered");
    }
    assert_eq!(broker.requests_on(broker.shard_ports[0], "produce"), 1);
    assert_eq!(broker.requests_on(broker.shard_ports[1], "produce"), 1);
    assert_eq!(broker.requests_on(broker.main_port, "produce"), 0);

    let unaware = Client::connect(ClientConfig { shard_aware: false, ..broker.config() }).await.expect("connects");
    let producer = Producer::new(unaware, ProducerConfig::default()).expect("producer");
    producer.send(ProducerRecord::new("t", "y").with_partition(1)).await.expect("queued").await.expect("delivered");
    assert_eq!(broker.requests_on(broker.main_port, "produce"), 1);
}

#[tokio::test]
async fn acks_0_reports_no_offsets_but_the_records_arrive() {
    let broker = MockBroker::start().await;
    let client = Client::connect(broker.config()).await.expect("connects");
    Admin::new(client.clone()).create_topic("fire", 1, 1, &[]).await.expect("created");
    let config = ProducerConfig { acks: Acks::None, ..ProducerConfig::default() };
    let producer = Producer::new(client.clone(), config).expect("producer");
    let mut deliveries = Vec::new();
    for index in 0..5 {
        deliveries.push(producer.send(ProducerRecord::new("fire", format!("{index}"))).await.expect("queued"));
    }
    producer.close().await.expect("closed");
    for delivery in deliveries {
        assert_eq!(delivery.await.expect("written").offset, -1);
    }
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
    let tp = TopicPartition::new("fire", 0);
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, SeekTo::Offset(0)).await.expect("sought");
    let values: Vec<String> = poll_records(&mut consumer, 5).await.iter().map(value_of).collect();
    assert_eq!(values, vec!["0", "1", "2", "3", "4"]);
}

#[tokio::test]
async fn an_offset_out_of_range_is_an_error_unless_a_reset_policy_is_set() {
    let broker = MockBroker::start().await;
    let client = Client::connect(broker.config()).await.expect("connects");
    Admin::new(client.clone()).create_topic("r", 1, 1, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), ProducerConfig::default()).expect("producer");
    for index in 0..3 {
        let record =
            ProducerRecord { timestamp_ms: Some(1_000 * (index + 1)), ..ProducerRecord::new("r", format!("{index}")) };
        producer.send(record).await.expect("queued");
    }
    producer.close().await.expect("closed");
    let tp = TopicPartition::new("r", 0);

    let mut strict = Consumer::new(client.clone(), ConsumerConfig::default()).expect("consumer");
    strict.assign(vec![tp.clone()]);
    assert!(matches!(strict.poll(Duration::from_millis(100)).await, Err(ClientError::NoPosition { .. })));
    strict.seek(&tp, SeekTo::Offset(50)).await.expect("sought");
    let error = strict.poll(Duration::from_secs(2)).await.expect_err("out of range");
    assert!(matches!(error, ClientError::OffsetOutOfRange { offset: 50, .. }), "{error:?}");

    let config = ConsumerConfig { auto_offset_reset: AutoOffsetReset::Earliest, ..ConsumerConfig::default() };
    let mut lenient = Consumer::new(client.clone(), config).expect("consumer");
    lenient.assign(vec![tp.clone()]);
    lenient.seek(&tp, SeekTo::Offset(50)).await.expect("sought");
    let values: Vec<String> = poll_records(&mut lenient, 3).await.iter().map(value_of).collect();
    assert_eq!(values, vec!["0", "1", "2"]);

    let mut by_time = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
    by_time.assign(vec![tp.clone()]);
    assert_eq!(by_time.seek(&tp, SeekTo::Timestamp(2_000)).await.expect("sought"), 1);
    assert_eq!(by_time.seek(&tp, SeekTo::Timestamp(9_000)).await.expect("sought"), 3, "none after: the end");
    assert_eq!(by_time.end_offsets(std::slice::from_ref(&tp)).await.expect("listed"), vec![(tp, 3)]);
}

#[tokio::test]
async fn sending_to_an_unknown_topic_or_partition_fails_at_once() {
    let broker = MockBroker::start().await;
    let client = Client::connect(broker.config()).await.expect("connects");
    Admin::new(client.clone()).create_topic("known", 1, 1, &[]).await.expect("created");
    let again = Admin::new(client.clone()).create_topic("known", 1, 1, &[]).await;
    assert!(matches!(again, Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. })), "{again:?}");
    let producer = Producer::new(client, ProducerConfig::default()).expect("producer");
    let unknown = producer.send(ProducerRecord::new("missing", "x")).await;
    assert!(matches!(unknown, Err(ClientError::UnknownTopic(topic)) if topic == "missing"));
    let bad_partition = producer.send(ProducerRecord::new("known", "x").with_partition(1)).await;
    assert!(matches!(bad_partition, Err(ClientError::UnknownPartition { partition: 1, .. })));
}
