//! A blocking Kafka-protocol test client: encodes a request with the
//! kafka-protocol crate's codecs (its `client` side), sends it to the
//! broker's Kafka listener and decodes the response, so tests see exactly
//! what a Kafka client would.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use spate_net::BrokerHandle;

pub struct KafkaConn {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl KafkaConn {
    pub fn connect(addr: SocketAddr) -> KafkaConn {
        let stream = TcpStream::connect(addr).expect("connect to the Kafka listener");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        KafkaConn { stream, next_correlation_id: 1 }
    }

    pub fn to(broker: &BrokerHandle) -> KafkaConn {
        KafkaConn::connect(broker.kafka_addr().expect("the broker serves Kafka"))
    }

    /// Sends `request` at `version` and returns its response, or None when
    /// the broker closed the connection instead.
    pub fn try_call<R: Request>(&mut self, version: i16, request: &R) -> Option<R::Response> {
        let api = ApiKey::try_from(R::KEY).expect("a known API");
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("spate-test")));
        let header_version = api.request_header_version(version);
        let mut body = BytesMut::new();
        header.encode(&mut body, header_version).expect("encode header");
        request.encode(&mut body, version).expect("encode request");
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        if self.stream.write_all(&frame).is_err() {
            // The broker closed the connection (and said so with a reset).
            return None;
        }

        let mut size = [0u8; 4];
        if self.stream.read_exact(&mut size).is_err() {
            return None;
        }
        let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut response).expect("a whole response");
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, api.response_header_version(version)).expect("header");
        assert_eq!(header.correlation_id, correlation_id, "responses in request order");
        let decoded = R::Response::decode(&mut response, version).expect("decode response");
        assert_eq!(response.remaining(), 0, "the whole response decoded");
        Some(decoded)
    }

    /// The socket, for bytes that are not a Kafka request.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn call<R: Request>(&mut self, version: i16, request: &R) -> R::Response {
        self.try_call(version, request).expect("a response, not a close")
    }
}

pub fn name(s: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(StrBytes::from_string(s.to_string()))
}

impl KafkaConn {
    /// Creates a topic through CreateTopics v7; returns its error code.
    pub fn create_topic(&mut self, topic: &str, partitions: i32, replication_factor: i16) -> i16 {
        use kafka_protocol::messages::CreateTopicsRequest;
        use kafka_protocol::messages::create_topics_request::CreatableTopic;
        let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor),
        ]);
        self.call(7, &request).topics[0].error_code
    }

    /// Metadata v12 of one topic (no auto-creation).
    pub fn metadata(&mut self, topic: &str) -> kafka_protocol::messages::metadata_response::MetadataResponseTopic {
        use kafka_protocol::messages::MetadataRequest;
        use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name(topic)))]))
            .with_allow_auto_topic_creation(false);
        self.call(12, &request).topics.remove(0)
    }

    /// Produces `records` (whole batches) with acks=-1 through Produce v9;
    /// returns (error code, base offset).
    pub fn produce(&mut self, topic: &str, partition: i32, records: Vec<u8>) -> (i16, i64) {
        self.produce_as(None, topic, partition, records)
    }

    /// `produce` naming a transactional id, as a transactional producer's
    /// requests do.
    pub fn produce_as(
        &mut self,
        transactional_id: Option<&str>,
        topic: &str,
        partition: i32,
        records: Vec<u8>,
    ) -> (i16, i64) {
        self.produce_at(9, transactional_id, topic, partition, records)
    }

    /// `produce_as` at a given Produce version (v12+: a transactions-v2
    /// client's, whose partitions join its transaction through it).
    pub fn produce_at(
        &mut self,
        version: i16,
        transactional_id: Option<&str>,
        topic: &str,
        partition: i32,
        records: Vec<u8>,
    ) -> (i16, i64) {
        use kafka_protocol::messages::ProduceRequest;
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        let transactional_id =
            transactional_id.map(|id| kafka_protocol::messages::TransactionalId(StrBytes::from_string(id.to_string())));
        let request = ProduceRequest::default()
            .with_transactional_id(transactional_id)
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![
                PartitionProduceData::default().with_index(partition).with_records(Some(Bytes::from(records))),
            ])]);
        let response = self.call(version, &request);
        let part = &response.responses[0].partition_responses[0];
        (part.error_code, part.base_offset)
    }

    /// ListOffsets v7 of one partition at `timestamp` (-1 latest, -2
    /// earliest); returns (error code, offset).
    pub fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
        self.list_offset_isolated(topic, partition, timestamp, 0)
    }

    /// `list_offset` at an isolation level (1: read_committed, whose latest
    /// is the last stable offset).
    pub fn list_offset_isolated(&mut self, topic: &str, partition: i32, timestamp: i64, isolation: i8) -> (i16, i64) {
        use kafka_protocol::messages::ListOffsetsRequest;
        use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_isolation_level(isolation)
            .with_topics(vec![ListOffsetsTopic::default().with_name(name(topic)).with_partitions(vec![
                ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp),
            ])]);
        let response = self.call(7, &request);
        let part = &response.topics[0].partitions[0];
        (part.error_code, part.offset)
    }
}
