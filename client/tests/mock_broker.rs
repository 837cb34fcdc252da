//! The client against small in-process brokers that speak the protocol
//! (handshake, metadata, create topics, produce, fetch, list offsets, init
//! producer id) over real sockets on 127.0.0.1, each with a main port and
//! one port per core. A `MockCluster` runs one or more of them over one
//! shared, scripted state: the partitions' logs (in memory, as if
//! replication were instant), who leads each partition at which leader
//! epoch, which brokers are dead, and errors to answer next. A broker that
//! does not lead a partition refuses its requests with
//! `NotLeaderOrFollower`; a fetch with an older or newer leader epoch than
//! the partition's gets `FencedLeaderEpoch` or `UnknownLeaderEpoch`; an
//! idempotent producer's batch is checked against the sequence of the last
//! batch from its producer id (a duplicate is answered with its original
//! offset, a gap is `OutOfOrderSequence`), as the real broker does.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
use tokio::task::AbortHandle;

const SHARD_COUNT: usize = 2;

#[derive(Default)]
struct PartitionLog {
    /// (base offset, batch bytes), in offset order.
    batches: Vec<(i64, Bytes)>,
    end_offset: i64,
}

impl PartitionLog {
    /// The base offset of the stored batch with this producer id and base
    /// sequence, if there is one (a retried duplicate).
    fn duplicate_of(&self, producer_id: i64, base_sequence: i32) -> Option<i64> {
        self.batches.iter().find_map(|(base_offset, bytes)| {
            let info = batch::validate_stored(bytes, 1 << 26).ok()?;
            (info.producer_id == producer_id && info.base_sequence == base_sequence).then_some(*base_offset)
        })
    }

    /// The sequence the producer's next batch must start at.
    fn next_sequence(&self, producer_id: i64) -> i32 {
        self.batches
            .iter()
            .filter_map(|(_, bytes)| batch::validate_stored(bytes, 1 << 26).ok())
            .filter(|info| info.producer_id == producer_id)
            .map(|info| info.base_sequence + info.records_count)
            .last()
            .unwrap_or(0)
    }
}

/// Who leads a partition, at which leader epoch; leader -1: nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    leader: i32,
    epoch: i32,
}

/// What a broker does with the next request of an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Refuse every partition with this code; append nothing.
    Refuse(ErrorCode),
    /// Append, then answer every partition with this code.
    AppendThenRefuse(ErrorCode),
    /// Append, then close the connection without answering.
    AppendThenHangUp,
}

struct Injected {
    node: i32,
    api: &'static str,
    action: Action,
    /// Leadership of every partition in the request moves here when the
    /// action runs.
    then_lead: Option<Leadership>,
}

/// A produce of one partition as a broker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProduceSeen {
    node: i32,
    tp: TopicPartition,
    producer_id: i64,
    base_sequence: i32,
    error: ErrorCode,
}

/// A fetch of one partition as a broker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FetchSeen {
    node: i32,
    tp: TopicPartition,
    offset: i64,
    current_leader_epoch: i32,
    error: ErrorCode,
}

struct NodeInfo {
    node_id: i32,
    main_port: u16,
    shard_ports: Vec<u16>,
    dead: bool,
}

#[derive(Default)]
struct ClusterState {
    nodes: Vec<NodeInfo>,
    topics: BTreeMap<String, Vec<PartitionLog>>,
    leaders: BTreeMap<TopicPartition, Leadership>,
    /// The API of every request, by the port it arrived on.
    requests: HashMap<u16, Vec<&'static str>>,
    produced: Vec<ProduceSeen>,
    fetched: Vec<FetchSeen>,
    injected: VecDeque<Injected>,
    next_producer_id: i64,
}

impl ClusterState {
    fn take_injected(&mut self, node: i32, api: &str) -> Option<Injected> {
        let index = self.injected.iter().position(|injected| injected.node == node && injected.api == api)?;
        self.injected.remove(index)
    }

    fn leadership(&self, tp: &TopicPartition) -> Leadership {
        self.leaders.get(tp).copied().unwrap_or(Leadership { leader: -1, epoch: -1 })
    }
}

/// What a broker sends back for a request.
enum Answer {
    Frame(Bytes),
    Nothing,
    HangUp,
}

/// Several mock brokers over one shared state.
#[derive(Clone)]
struct MockCluster {
    state: Arc<Mutex<ClusterState>>,
    brokers: Vec<MockBroker>,
}

impl MockCluster {
    /// Brokers 1..=count.
    async fn start(count: i32) -> MockCluster {
        let state = Arc::new(Mutex::new(ClusterState { next_producer_id: 1_000, ..ClusterState::default() }));
        let mut brokers = Vec::new();
        for node_id in 1..=count {
            brokers.push(MockBroker::start_in(node_id, state.clone()).await);
        }
        MockCluster { state, brokers }
    }

    fn broker(&self, node_id: i32) -> &MockBroker {
        self.brokers.iter().find(|broker| broker.node_id == node_id).expect("a node of the cluster")
    }

    fn config(&self, bootstrap: &[i32]) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.iter().map(|node| format!("127.0.0.1:{}", self.broker(*node).main_port)).collect(),
            request_timeout_ms: 5_000,
            ..ClientConfig::default()
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.state.lock().expect("not poisoned")
    }

    fn set_leader(&self, topic: &str, partition: i32, leader: i32, epoch: i32) {
        self.state().leaders.insert(TopicPartition::new(topic, partition), Leadership { leader, epoch });
    }

    fn inject(&self, node: i32, api: &'static str, action: Action, then_lead: Option<(i32, i32)>) {
        let then_lead = then_lead.map(|(leader, epoch)| Leadership { leader, epoch });
        self.state().injected.push_back(Injected { node, api, action, then_lead });
    }

    /// Stops a broker: its ports refuse connections, its connections
    /// close, and the metadata reports it fenced.
    fn kill(&self, node_id: i32) {
        let broker = self.broker(node_id);
        for task in broker.tasks.lock().expect("not poisoned").drain(..) {
            task.abort();
        }
        for node in &mut self.state().nodes {
            if node.node_id == node_id {
                node.dead = true;
            }
        }
    }

    /// (base offset, producer id, base sequence, values) of every batch.
    fn log(&self, topic: &str, partition: usize) -> Vec<(i64, i64, i32, Vec<String>)> {
        let state = self.state();
        let log = &state.topics[topic][partition];
        log.batches
            .iter()
            .map(|(base_offset, bytes)| {
                let info = batch::validate_stored(bytes, 1 << 26).expect("stored");
                let values = batch::records(bytes)
                    .expect("uncompressed")
                    .map(|record| {
                        String::from_utf8_lossy(record.expect("valid").value.unwrap_or_default()).into_owned()
                    })
                    .collect();
                (*base_offset, info.producer_id, info.base_sequence, values)
            })
            .collect()
    }

    fn produced(&self) -> Vec<ProduceSeen> {
        self.state().produced.clone()
    }

    fn fetched(&self) -> Vec<FetchSeen> {
        self.state().fetched.clone()
    }

    fn requests(&self, api: &str) -> usize {
        let state = self.state();
        state.requests.values().flatten().filter(|a| **a == api).count()
    }
}

#[derive(Clone)]
struct MockBroker {
    node_id: i32,
    main_port: u16,
    shard_ports: Vec<u16>,
    state: Arc<Mutex<ClusterState>>,
    /// Its listeners and connections, aborted when it is killed.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl MockBroker {
    /// A cluster of one: broker 1.
    async fn start() -> MockBroker {
        MockCluster::start(1).await.brokers.remove(0)
    }

    async fn start_in(node_id: i32, state: Arc<Mutex<ClusterState>>) -> MockBroker {
        let mut listeners = Vec::new();
        for _ in 0..=SHARD_COUNT {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback"));
        }
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect();
        state.lock().expect("not poisoned").nodes.push(NodeInfo {
            node_id,
            main_port: ports[0],
            shard_ports: ports[1..].to_vec(),
            dead: false,
        });
        let broker = MockBroker {
            node_id,
            main_port: ports[0],
            shard_ports: ports[1..].to_vec(),
            state,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        for (index, listener) in listeners.into_iter().enumerate() {
            let broker_for_task = broker.clone();
            let port = ports[index];
            let listening = tokio::spawn(async move {
                let broker = broker_for_task;
                while let Ok((stream, _)) = listener.accept().await {
                    let serving = tokio::spawn(broker.clone().serve(stream, index.saturating_sub(1), port));
                    broker.tasks.lock().expect("not poisoned").push(serving.abort_handle());
                }
            });
            broker.tasks.lock().expect("not poisoned").push(listening.abort_handle());
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
            match self.answer(&frame, shard, port).await {
                Answer::Frame(answer) => {
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
                Answer::Nothing => {}
                Answer::HangUp => return,
            }
        }
    }

    async fn answer(&self, frame: &Frame, shard: usize, port: u16) -> Answer {
        let envelope = frame.read().expect("the client sends valid envelopes");
        let request_id = envelope.request_id();
        let api = spate_flatbuf::api_name(envelope.body_type());
        let injected = {
            let mut state = self.state.lock().expect("not poisoned");
            state.requests.entry(port).or_default().push(api);
            state.take_injected(self.node_id, api)
        };
        let mut builder = FlatBufferBuilder::new();
        let mut payload = Vec::new();
        let (body_type, body) = match envelope.body_type() {
            Body::HandshakeRequest => {
                let args = proto::HandshakeResponseArgs {
                    error: ErrorCode::None,
                    version: 1,
                    node_id: self.node_id,
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
                let error = if let Some(Action::Refuse(code)) = injected.as_ref().map(|injected| injected.action) {
                    code
                } else if state.topics.contains_key(&name) {
                    ErrorCode::TopicAlreadyExists
                } else {
                    let partitions = usize::try_from(topic.partitions()).expect("positive");
                    state.topics.insert(name.clone(), (0..partitions).map(|_| PartitionLog::default()).collect());
                    let leader = state.nodes.iter().find(|node| !node.dead).map_or(-1, |node| node.node_id);
                    for partition in 0..topic.partitions() {
                        state.leaders.insert(TopicPartition::new(&name, partition), Leadership { leader, epoch: 0 });
                    }
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
                let body = self.produce(&mut builder, &request, injected.as_ref());
                if injected.as_ref().is_some_and(|injected| injected.action == Action::AppendThenHangUp) {
                    return Answer::HangUp;
                }
                if request.acks() == 0 {
                    return Answer::Nothing;
                }
                (Body::ProduceResponse, body)
            }
            Body::FetchRequest => {
                let request = envelope.body_as_fetch_request().expect("body");
                let mut body = self.fetch(&mut builder, &request, &mut payload, injected.as_ref(), true);
                if payload.is_empty() && request.max_wait_ms() > 0 {
                    // Long poll, shortened: wait a little for records.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    builder = FlatBufferBuilder::new();
                    body = self.fetch(&mut builder, &request, &mut payload, injected.as_ref(), false);
                }
                (Body::FetchResponse, body)
            }
            Body::ListOffsetsRequest => {
                let request = envelope.body_as_list_offsets_request().expect("body");
                (Body::ListOffsetsResponse, self.list_offsets(&mut builder, &request))
            }
            Body::InitProducerIdRequest => {
                let producer_id = {
                    let mut state = self.state.lock().expect("not poisoned");
                    state.next_producer_id += 1;
                    state.next_producer_id
                };
                let args = proto::InitProducerIdResponseArgs { producer_id, producer_epoch: 0, ..Default::default() };
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
        Answer::Frame(encode_frame(&builder, &payload))
    }

    fn metadata(&self, builder: &mut FlatBufferBuilder<'static>) -> WIPOffset<UnionWIPOffset> {
        let state = self.state.lock().expect("not poisoned");
        let brokers: Vec<_> = state
            .nodes
            .iter()
            .map(|node| {
                let host = builder.create_string("127.0.0.1");
                let shard_ports = builder.create_vector(&node.shard_ports);
                proto::BrokerInfo::create(
                    builder,
                    &proto::BrokerInfoArgs {
                        node_id: node.node_id,
                        host: Some(host),
                        port: node.main_port,
                        shard_ports: Some(shard_ports),
                        fenced: node.dead,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let brokers = builder.create_vector(&brokers);
        let node_ids: Vec<i32> = state.nodes.iter().map(|node| node.node_id).collect();
        let in_sync: Vec<i32> = state.nodes.iter().filter(|node| !node.dead).map(|node| node.node_id).collect();
        let mut topics = Vec::new();
        for (name, partitions) in &state.topics {
            let partitions: Vec<_> = (0..partitions.len())
                .map(|partition| {
                    let partition = i32::try_from(partition).expect("few");
                    let leadership = state.leadership(&TopicPartition::new(name, partition));
                    let replicas = builder.create_vector(&node_ids);
                    let isr = builder.create_vector(&in_sync);
                    // Kafka's way: no leader is LeaderNotAvailable, leader -1.
                    let error = if leadership.leader < 0 { ErrorCode::LeaderNotAvailable } else { ErrorCode::None };
                    proto::PartitionMetadata::create(
                        builder,
                        &proto::PartitionMetadataArgs {
                            partition,
                            error,
                            leader: leadership.leader,
                            leader_epoch: leadership.epoch,
                            shard: u16::try_from(partition).expect("few") % SHARD_COUNT as u16,
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
        let controller_id = state.nodes.iter().find(|node| !node.dead).map_or(-1, |node| node.node_id);
        let args = proto::MetadataResponseArgs { brokers: Some(brokers), controller_id, topics: Some(topics) };
        proto::MetadataResponse::create(builder, &args).as_union_value()
    }

    /// Appends a partition's batches as the leader would: a batch the log
    /// already has from the same producer id and sequence is answered with
    /// its offset, a sequence gap is refused.
    fn append(log: &mut PartitionLog, records: &[u8]) -> (ErrorCode, i64, i64, i32) {
        let mut first = None;
        let mut seen = (-1, -1);
        for span in batch::split_batches(records) {
            let span = span.expect("whole batches");
            let info = batch::validate_produce(span.bytes, 1 << 26).expect("valid batch");
            seen = (info.producer_id, info.base_sequence);
            if info.producer_id >= 0 {
                if let Some(base_offset) = log.duplicate_of(info.producer_id, info.base_sequence) {
                    first.get_or_insert(base_offset);
                    continue;
                }
                if info.base_sequence != log.next_sequence(info.producer_id) {
                    return (ErrorCode::OutOfOrderSequence, -1, seen.0, seen.1);
                }
            }
            let mut stored = BytesMut::from(span.bytes);
            batch::set_base_offset(&mut stored, log.end_offset).expect("header");
            first.get_or_insert(log.end_offset);
            log.batches.push((log.end_offset, stored.freeze()));
            log.end_offset += i64::from(info.records_count);
        }
        (ErrorCode::None, first.unwrap_or(-1), seen.0, seen.1)
    }

    fn produce(
        &self,
        builder: &mut FlatBufferBuilder<'static>,
        request: &proto::ProduceRequest<'_>,
        injected: Option<&Injected>,
    ) -> WIPOffset<UnionWIPOffset> {
        let mut guard = self.state.lock().expect("not poisoned");
        let state = &mut *guard;
        let mut topics = Vec::new();
        for topic in request.topics().into_iter().flatten() {
            let name = topic.name().expect("name");
            let mut partitions = Vec::new();
            for p in topic.partitions().into_iter().flatten() {
                let tp = TopicPartition::new(name, p.partition());
                let records = p.records().expect("records").bytes();
                let leadership = state.leadership(&tp);
                let log =
                    state.topics.get_mut(name).and_then(|logs| logs.get_mut(usize::try_from(p.partition()).ok()?));
                let (error, base_offset, producer_id, base_sequence) = match (log, injected.map(|i| i.action)) {
                    (None, _) => (ErrorCode::UnknownTopicOrPartition, -1, -1, -1),
                    (Some(_), Some(Action::Refuse(code))) => {
                        let first = batch::validate_produce(records, 1 << 26).expect("valid batch");
                        (code, -1, first.producer_id, first.base_sequence)
                    }
                    (Some(_), _) if leadership.leader != self.node_id => {
                        let first = batch::validate_produce(records, 1 << 26).expect("valid batch");
                        (ErrorCode::NotLeaderOrFollower, -1, first.producer_id, first.base_sequence)
                    }
                    (Some(log), action) => {
                        let (error, base_offset, producer_id, base_sequence) = Self::append(log, records);
                        match action {
                            Some(Action::AppendThenRefuse(code)) => (code, -1, producer_id, base_sequence),
                            _ => (error, base_offset, producer_id, base_sequence),
                        }
                    }
                };
                if let Some(lead) = injected.and_then(|injected| injected.then_lead) {
                    state.leaders.insert(tp.clone(), lead);
                }
                state.produced.push(ProduceSeen { node: self.node_id, tp, producer_id, base_sequence, error });
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

    /// `record` notes the fetch in `fetched` (the first pass of a long poll).
    fn fetch(
        &self,
        builder: &mut FlatBufferBuilder<'static>,
        request: &proto::FetchRequest<'_>,
        payload: &mut Vec<u8>,
        injected: Option<&Injected>,
        record: bool,
    ) -> WIPOffset<UnionWIPOffset> {
        payload.clear();
        let mut state = self.state.lock().expect("not poisoned");
        let mut topics = Vec::new();
        for topic in request.topics().into_iter().flatten() {
            let name = topic.name().expect("name");
            let mut partitions = Vec::new();
            for p in topic.partitions().into_iter().flatten() {
                let tp = TopicPartition::new(name, p.partition());
                let leadership = state.leadership(&tp);
                let log = state.topics.get(name).and_then(|logs| logs.get(usize::try_from(p.partition()).ok()?));
                let records_offset = u32::try_from(payload.len()).expect("small");
                let epoch = p.current_leader_epoch();
                let (error, high_watermark) = match (log, injected.map(|i| i.action)) {
                    (None, _) => (ErrorCode::UnknownTopicOrPartition, -1),
                    (Some(_), Some(Action::Refuse(code))) => (code, -1),
                    // Kafka's order: the epoch first, then leadership.
                    (Some(_), _) if epoch >= 0 && epoch < leadership.epoch => (ErrorCode::FencedLeaderEpoch, -1),
                    (Some(_), _) if epoch > leadership.epoch => (ErrorCode::UnknownLeaderEpoch, -1),
                    (Some(_), _) if leadership.leader != self.node_id => (ErrorCode::NotLeaderOrFollower, -1),
                    (Some(log), _) if p.offset() > log.end_offset || p.offset() < 0 => {
                        (ErrorCode::OffsetOutOfRange, log.end_offset)
                    }
                    (Some(log), _) => {
                        for (_, bytes) in &log.batches {
                            let info = batch::validate_stored(bytes, 1 << 26).expect("stored");
                            if info.last_offset() >= p.offset() {
                                payload.extend_from_slice(bytes);
                            }
                        }
                        (ErrorCode::None, log.end_offset)
                    }
                };
                if record {
                    let seen =
                        FetchSeen { node: self.node_id, tp, offset: p.offset(), current_leader_epoch: epoch, error };
                    state.fetched.push(seen);
                }
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
                        ..Default::default()
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
                let leads = state.leadership(&TopicPartition::new(name, p.partition())).leader == self.node_id;
                let log = state.topics.get(name).and_then(|logs| logs.get(usize::try_from(p.partition()).ok()?));
                let offset = match (log, p.timestamp()) {
                    (None, _) => -1,
                    (Some(_), _) if !leads => -1,
                    (Some(_), -2) => 0,
                    (Some(log), -1) => log.end_offset,
                    (Some(log), timestamp) => first_at_or_after(log, timestamp),
                };
                let error = match log {
                    None => ErrorCode::UnknownTopicOrPartition,
                    Some(_) if !leads => ErrorCode::NotLeaderOrFollower,
                    Some(_) => ErrorCode::None,
                };
                partitions.push(proto::ListOffsetsPartitionResponse::create(
                    builder,
                    &proto::ListOffsetsPartitionResponseArgs { partition: p.partition(), error, offset, timestamp: -1 },
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
async fn sending_to_an_unknown_topic_fails_once_it_stays_unknown_and_an_unknown_partition_at_once() {
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

// ---- A cluster of several brokers ----

/// Waits up to five seconds for a delivery.
async fn delivered(delivery: spate_client::DeliveryFuture) -> spate_client::RecordMetadata {
    tokio::time::timeout(Duration::from_secs(5), delivery).await.expect("delivered in time").expect("delivered")
}

fn producer_config() -> ProducerConfig {
    ProducerConfig { linger_ms: 0, retry_backoff_ms: 20, delivery_timeout_ms: 10_000, ..ProducerConfig::default() }
}

#[tokio::test]
async fn a_produce_refused_by_a_deposed_leader_goes_to_the_new_leader_once_with_the_same_sequence() {
    let cluster = MockCluster::start(2).await;
    let client = Client::connect(cluster.config(&[1])).await.expect("connects");
    Admin::new(client.clone()).create_topic("t", 1, 2, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), producer_config()).expect("producer");
    let first = delivered(producer.send(ProducerRecord::new("t", "a")).await.expect("queued")).await;
    assert_eq!(first.offset, 0);
    // Broker 2 takes over; the client's metadata still names broker 1.
    cluster.set_leader("t", 0, 2, 1);
    let second = delivered(producer.send(ProducerRecord::new("t", "b")).await.expect("queued")).await;
    assert_eq!(second.offset, 1);
    producer.close().await.expect("closed");

    let seen: Vec<(i32, i32, ErrorCode)> =
        cluster.produced().iter().map(|seen| (seen.node, seen.base_sequence, seen.error)).collect();
    assert_eq!(
        seen,
        vec![(1, 0, ErrorCode::None), (1, 1, ErrorCode::NotLeaderOrFollower), (2, 1, ErrorCode::None)],
        "the refused batch went to the new leader with its sequence unchanged"
    );
    let producer_ids: Vec<i64> = cluster.produced().iter().map(|seen| seen.producer_id).collect();
    assert!(producer_ids.iter().all(|id| *id == producer_ids[0] && *id > 0), "{producer_ids:?}");
    assert_eq!(cluster.requests("init_producer_id"), 1, "the producer kept its id");
    let log = cluster.log("t", 0);
    let values: Vec<&str> = log.iter().flat_map(|(_, _, _, values)| values.iter().map(String::as_str)).collect();
    assert_eq!(values, vec!["a", "b"], "each record exactly once");
    // The new leader's requests went to its own port for the partition's core.
    let shard_port = cluster.broker(2).shard_ports[0];
    assert_eq!(cluster.broker(2).requests_on(shard_port, "produce"), 1);
}

#[tokio::test]
async fn a_lost_produce_answer_is_retried_on_the_new_leader_and_deduplicated_not_renumbered() {
    let cluster = MockCluster::start(2).await;
    let client = Client::connect(cluster.config(&[1, 2])).await.expect("connects");
    Admin::new(client.clone()).create_topic("t", 1, 2, &[]).await.expect("created");
    // Broker 1 appends, then leadership moves to broker 2 and broker 1
    // hangs up without answering: the producer cannot know it was written.
    cluster.inject(1, "produce", Action::AppendThenHangUp, Some((2, 1)));
    let producer = Producer::new(client.clone(), producer_config()).expect("producer");
    let metadata = delivered(producer.send(ProducerRecord::new("t", "once")).await.expect("queued")).await;
    assert_eq!(metadata.offset, 0, "answered with the original offset");
    let next = delivered(producer.send(ProducerRecord::new("t", "next")).await.expect("queued")).await;
    assert_eq!(next.offset, 1);
    producer.close().await.expect("closed");

    let seen: Vec<(i32, i32)> = cluster.produced().iter().map(|seen| (seen.node, seen.base_sequence)).collect();
    assert_eq!(seen, vec![(1, 0), (2, 0), (2, 1)], "the retry kept sequence 0");
    let log = cluster.log("t", 0);
    assert_eq!(log.len(), 2, "the retry was not appended twice: {log:?}");
    assert_eq!(log[0].3, vec!["once"]);
    assert_eq!(log[0].1, log[1].1, "one producer id throughout");
    assert_eq!(cluster.requests("init_producer_id"), 1);
}

#[tokio::test]
async fn not_enough_replicas_is_retried_without_refreshing_metadata_and_after_append_deduplicated() {
    let cluster = MockCluster::start(2).await;
    let client = Client::connect(cluster.config(&[1])).await.expect("connects");
    Admin::new(client.clone()).create_topic("t", 1, 2, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), producer_config()).expect("producer");
    delivered(producer.send(ProducerRecord::new("t", "warm-up")).await.expect("queued")).await;
    let metadata_requests = cluster.requests("metadata");
    cluster.inject(1, "produce", Action::Refuse(ErrorCode::NotEnoughReplicas), None);
    cluster.inject(1, "produce", Action::AppendThenRefuse(ErrorCode::NotEnoughReplicasAfterAppend), None);
    let metadata = delivered(producer.send(ProducerRecord::new("t", "x")).await.expect("queued")).await;
    assert_eq!(metadata.offset, 1);
    producer.close().await.expect("closed");
    assert_eq!(cluster.requests("metadata"), metadata_requests, "the leader had not moved");
    let errors: Vec<ErrorCode> = cluster.produced().iter().map(|seen| seen.error).collect();
    assert_eq!(
        errors,
        vec![ErrorCode::None, ErrorCode::NotEnoughReplicas, ErrorCode::NotEnoughReplicasAfterAppend, ErrorCode::None]
    );
    let values: Vec<String> = cluster.log("t", 0).into_iter().flat_map(|(_, _, _, values)| values).collect();
    assert_eq!(values, vec!["warm-up", "x"], "appended once although acknowledged on the second retry");
}

#[tokio::test]
async fn a_fetch_fenced_by_a_newer_leader_epoch_continues_at_the_same_offset_on_the_new_leader() {
    let cluster = MockCluster::start(2).await;
    let producing = Client::connect(cluster.config(&[1])).await.expect("connects");
    Admin::new(producing.clone()).create_topic("t", 1, 2, &[]).await.expect("created");
    let producer = Producer::new(producing, producer_config()).expect("producer");
    for value in ["0", "1", "2"] {
        delivered(producer.send(ProducerRecord::new("t", value)).await.expect("queued")).await;
    }
    let consuming = Client::connect(cluster.config(&[1])).await.expect("connects");
    let mut consumer = Consumer::new(
        consuming,
        ConsumerConfig { fetch_max_wait_ms: 50, retry_backoff_ms: 20, ..ConsumerConfig::default() },
    )
    .expect("consumer");
    let tp = TopicPartition::new("t", 0);
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, SeekTo::Earliest).await.expect("sought");
    let first: Vec<String> = poll_records(&mut consumer, 3).await.iter().map(value_of).collect();
    assert_eq!(first, vec!["0", "1", "2"]);

    // Broker 2 leads at epoch 1; the consumer's metadata still says broker
    // 1 at epoch 0, and broker 1 knows better.
    cluster.set_leader("t", 0, 2, 1);
    for value in ["3", "4"] {
        delivered(producer.send(ProducerRecord::new("t", value)).await.expect("queued")).await;
    }
    let rest: Vec<ConsumerRecord> = poll_records(&mut consumer, 2).await;
    let offsets: Vec<(i64, String)> = rest.iter().map(|r| (r.offset, value_of(r))).collect();
    assert_eq!(offsets, vec![(3, "3".into()), (4, "4".into())], "no record skipped or repeated");
    assert_eq!(consumer.position(&tp), Some(5));

    let fetched = cluster.fetched();
    assert!(fetched.iter().filter(|seen| seen.node == 1).all(|seen| seen.current_leader_epoch == 0), "{fetched:?}");
    let fenced = fetched.iter().find(|seen| seen.error == ErrorCode::FencedLeaderEpoch).expect("broker 1 fenced");
    assert_eq!((fenced.node, fenced.offset, fenced.current_leader_epoch), (1, 3, 0));
    let on_new_leader: Vec<&FetchSeen> = fetched.iter().filter(|seen| seen.node == 2).collect();
    let first_there = on_new_leader.first().expect("fetched from broker 2");
    assert_eq!((first_there.offset, first_there.current_leader_epoch, first_there.error), (3, 1, ErrorCode::None));
    producer.close().await.expect("closed");
}

#[tokio::test]
async fn a_partition_without_a_leader_waits_for_one_instead_of_failing() {
    let cluster = MockCluster::start(2).await;
    let client = Client::connect(cluster.config(&[1])).await.expect("connects");
    Admin::new(client.clone()).create_topic("t", 1, 2, &[]).await.expect("created");
    cluster.set_leader("t", 0, -1, 1);
    let producer = Producer::new(client.clone(), producer_config()).expect("producer");
    let delivery = producer.send(ProducerRecord::new("t", "patient")).await.expect("queued");
    let elect = {
        let cluster = cluster.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.set_leader("t", 0, 2, 2);
        }
    };
    let (metadata, ()) = tokio::join!(delivered(delivery), elect);
    assert_eq!(metadata.offset, 0);
    let nodes: Vec<i32> = cluster.produced().iter().map(|seen| seen.node).collect();
    assert_eq!(nodes, vec![2], "nothing was sent before a leader was known");
    producer.close().await.expect("closed");

    // A consumer waits the same way.
    cluster.set_leader("t", 0, -1, 3);
    let consuming = Client::connect(cluster.config(&[2])).await.expect("connects");
    let mut consumer = Consumer::new(consuming, ConsumerConfig { retry_backoff_ms: 20, ..ConsumerConfig::default() })
        .expect("consumer");
    let tp = TopicPartition::new("t", 0);
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, SeekTo::Offset(0)).await.expect("sought");
    assert!(consumer.poll(Duration::from_millis(200)).await.expect("no error, no records").is_empty());
    cluster.set_leader("t", 0, 1, 4);
    let values: Vec<String> = poll_records(&mut consumer, 1).await.iter().map(value_of).collect();
    assert_eq!(values, vec!["patient"]);
}

#[tokio::test]
async fn bootstrap_skips_a_dead_address_and_the_client_outlives_the_broker_it_first_asked() {
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("bound");
    // The listener is dropped: the port refuses connections.
    let cluster = MockCluster::start(2).await;
    let mut config = cluster.config(&[1]);
    config.bootstrap.insert(0, dead.to_string());
    let client = Client::connect(config).await.expect("a live bootstrap broker is enough");
    Admin::new(client.clone()).create_topic("t", 1, 2, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), producer_config()).expect("producer");
    delivered(producer.send(ProducerRecord::new("t", "before")).await.expect("queued")).await;

    // Broker 1, the only bootstrap broker alive, dies; broker 2 leads.
    cluster.set_leader("t", 0, 2, 1);
    cluster.kill(1);
    let after = delivered(producer.send(ProducerRecord::new("t", "after")).await.expect("queued")).await;
    assert_eq!(after.offset, 1);
    producer.close().await.expect("closed");
    let metadata = client.metadata(None).await.expect("broker 2 answers metadata");
    assert!(metadata.broker(1).is_some_and(|broker| broker.fenced));
    assert_eq!(metadata.topic("t").map(|topic| topic.partitions[0].leader), Some(2));
    let values: Vec<String> = cluster.log("t", 0).into_iter().flat_map(|(_, _, _, values)| values).collect();
    assert_eq!(values, vec!["before", "after"]);
}

#[tokio::test]
async fn list_offsets_follow_the_leader() {
    let cluster = MockCluster::start(3).await;
    let client = Client::connect(cluster.config(&[3])).await.expect("connects");
    Admin::new(client.clone()).create_topic("t", 2, 3, &[]).await.expect("created");
    let producer = Producer::new(client.clone(), producer_config()).expect("producer");
    for partition in 0..2 {
        delivered(producer.send(ProducerRecord::new("t", "x").with_partition(partition)).await.expect("queued")).await;
    }
    producer.close().await.expect("closed");
    cluster.set_leader("t", 1, 3, 1);
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).expect("consumer");
    let partitions = vec![TopicPartition::new("t", 0), TopicPartition::new("t", 1)];
    consumer.assign(partitions.clone());
    let ends = consumer.end_offsets(&partitions).await.expect("listed after a refresh");
    assert_eq!(ends, vec![(partitions[0].clone(), 1), (partitions[1].clone(), 1)]);
    assert!(cluster.broker(3).shard_ports.iter().any(|port| cluster.broker(3).requests_on(*port, "list_offsets") > 0));
}

#[tokio::test]
async fn a_topic_change_refused_by_a_controller_without_quorum_is_retried() {
    let cluster = MockCluster::start(2).await;
    let client = Client::connect(cluster.config(&[2])).await.expect("connects");
    cluster.inject(1, "create_topics", Action::Refuse(ErrorCode::NotController), None);
    Admin::new(client.clone()).create_topic("t", 1, 2, &[]).await.expect("created on the second try");
    assert_eq!(cluster.requests("create_topics"), 2);
    assert_eq!(
        cluster.broker(1).requests_on(cluster.broker(1).main_port, "create_topics"),
        2,
        "sent to the controller"
    );
    let again = Admin::new(client).create_topic("t", 1, 2, &[]).await;
    assert!(matches!(again, Err(ClientError::Server { code: ErrorCode::TopicAlreadyExists, .. })), "{again:?}");
}
