//! `spate txn list|describe|abort` against a real `spate serve`: the
//! transactions its coordinator knows, one described, and a hanging one
//! (a batch its producer never added to a transaction) ended with an
//! abort marker on its partition.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{Broker, cli, data_dir};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

struct Kafka {
    stream: TcpStream,
    correlation_id: i32,
}

impl Kafka {
    fn connect(broker: &Broker) -> Kafka {
        let stream = TcpStream::connect(broker.kafka_addr()).expect("connect to the Kafka listener");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        Kafka { stream, correlation_id: 0 }
    }

    fn call<R: Request>(&mut self, version: i16, body: &R) -> R::Response {
        let api = ApiKey::try_from(R::KEY).expect("a known API");
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("txn-cli-test")));
        let mut out = BytesMut::new();
        header.encode(&mut out, api.request_header_version(version)).expect("header");
        body.encode(&mut out, version).expect("body");
        let mut frame = BytesMut::new();
        frame.put_i32(out.len() as i32);
        frame.put_slice(&out);
        self.stream.write_all(&frame).expect("write");
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).expect("a response");
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).expect("a whole response");
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version)).expect("header");
        assert_eq!(header.correlation_id, self.correlation_id);
        let response = R::Response::decode(&mut body, version).expect("body");
        assert!(!body.has_remaining());
        response
    }

    /// InitProducerId for `id`, retried while the coordinator loads.
    fn init(&mut self, id: &str) -> (i64, i16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let request = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.to_string()))))
                .with_transaction_timeout_ms(600_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let response = self.call(4, &request);
            if response.error_code == 0 {
                return (response.producer_id.0, response.producer_epoch);
            }
            assert!(Instant::now() < deadline, "InitProducerId: {}", response.error_code);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn produce_in_transaction(&mut self, id: Option<&str>, pid: i64, epoch: i16) -> i16 {
        let mut builder = spate_format::batch::BatchBuilder::new(1).producer(pid, epoch, 0).transactional();
        builder.push(1, None, Some(b"pending"), &[]);
        let request = ProduceRequest::default()
            .with_transactional_id(id.map(|id| TransactionalId(StrBytes::from_string(id.to_string()))))
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str("t"))).with_partition_data(
                    vec![PartitionProduceData::default().with_index(0).with_records(Some(builder.build().freeze()))],
                ),
            ]);
        self.call(9, &request).responses[0].partition_responses[0].error_code
    }
}

#[test]
fn txn_commands_list_describe_and_abort_a_hanging_transaction() {
    let broker = Broker::start(&data_dir("cli_txn"), 1);
    let kafka_addr = broker.kafka_addr();
    let mut kafka = Kafka::connect(&broker);
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("t")))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let created = kafka.call(7, &CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![topic]));
    assert_eq!(created.topics[0].error_code, 0);

    let (pid, epoch) = kafka.init("cli-app");
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("cli-app")))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![0]),
        ]);
    let added = kafka.call(3, &request);
    assert_eq!(added.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0);
    assert_eq!(kafka.produce_in_transaction(Some("cli-app"), pid, epoch), 0);

    let txn = |args: &[&str]| {
        let mut all = vec!["txn"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--bootstrap-server", &kafka_addr]);
        cli(&all, None)
    };
    let (ok, out, err) = txn(&["list"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|line| line.starts_with("cli-app")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["cli-app", "1", &pid.to_string(), "Ongoing"]);
    let (ok, out, err) = txn(&["list", "--state", "CompleteCommit"]);
    assert!(ok && !out.contains("cli-app"), "{out}{err}");
    let (ok, _, err) = txn(&["list", "--state", "Bogus"]);
    assert!(!ok && err.contains("unknown state \"Bogus\""), "{err}");

    let (ok, out, err) = txn(&["describe", "--transactional-id", "cli-app"]);
    assert!(ok, "{err}");
    assert!(out.contains("Ongoing") && out.contains("t-0") && out.contains("600000"), "{out}");
    let (ok, _, err) = txn(&["describe", "--transactional-id", "nobody"]);
    assert!(!ok && err.contains("TransactionalIdNotFound"), "{err}");

    // A producer that writes in a transaction its coordinator never heard
    // of leaves it open on the partition: abort ends it there.
    kafka.init("stray");
    let (stray, stray_epoch) = kafka.init("stray");
    assert_eq!(kafka.produce_in_transaction(None, stray, stray_epoch), 0);
    let (pid_arg, epoch_arg) = (stray.to_string(), stray_epoch.to_string());
    let abort = |epoch: &str| {
        txn(&["abort", "--topic", "t", "--partition", "0", "--producer-id", &pid_arg, "--producer-epoch", epoch])
    };
    let (ok, out, err) = abort(&epoch_arg);
    assert!(ok && out.contains("aborted"), "{out}{err}");
    let (ok, _, err) = abort(&(stray_epoch - 1).to_string());
    assert!(!ok && err.contains("InvalidProducerEpoch"), "an older epoch is refused: {err}");
    broker.stop();
}
