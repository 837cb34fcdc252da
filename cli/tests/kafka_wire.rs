//! The Kafka listener's edges, byte for byte, against a real `spate
//! serve`: what a client that is newer, older or broken gets, and that
//! none of it hurts the broker.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{Broker, data_dir};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.kafka_addr()).expect("connect to the Kafka listener");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
}

fn send_raw(stream: &mut TcpStream, body: &[u8]) {
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.put_slice(body);
    stream.write_all(&frame).expect("write");
}

fn request<T: Encodable>(stream: &mut TcpStream, api: ApiKey, version: i16, correlation_id: i32, body: &T) {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("kafka-wire-test")));
    let mut out = BytesMut::new();
    header.encode(&mut out, api.request_header_version(version)).expect("header");
    body.encode(&mut out, version).expect("body");
    send_raw(stream, &out);
}

/// The next response frame, or None if the broker closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

fn response<T: Decodable>(stream: &mut TcpStream, api: ApiKey, version: i16, correlation_id: i32) -> T {
    let mut frame = read_frame(stream).expect("a response");
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version)).expect("header");
    assert_eq!(header.correlation_id, correlation_id);
    let body = T::decode(&mut frame, version).expect("body");
    assert!(!frame.has_remaining(), "the whole frame is the response");
    body
}

fn served(broker: &Broker) {
    let mut stream = connect(broker);
    request(&mut stream, ApiKey::Metadata, 12, 7, &MetadataRequest::default().with_topics(None));
    let metadata: MetadataResponse = response(&mut stream, ApiKey::Metadata, 12, 7);
    assert_eq!(metadata.brokers.len(), 1, "{metadata:?}");
    assert_eq!(metadata.brokers[0].port, i32::from(broker.kafka_port));
    assert_eq!(metadata.brokers[0].host.as_str(), "127.0.0.1");
}

/// KIP-511: a client newer than the broker sends ApiVersions at a version
/// the broker does not know and must get a v0 answer (header v0) listing
/// the broker's versions, not a closed connection.
#[test]
fn api_versions_newer_than_ours_gets_a_v0_answer() {
    let broker = Broker::start(&data_dir("kafka_wire_api_versions"), 1);
    let mut stream = connect(&broker);
    // v99 of ApiVersions: its body cannot be parsed; only its header.
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(99)
        .with_correlation_id(41)
        .with_client_id(Some(StrBytes::from_static_str("future-client")));
    let mut out = BytesMut::new();
    header.encode(&mut out, 2).expect("header");
    out.put_slice(&[0, 0, 0]); // a body from the future
    send_raw(&mut stream, &out);
    let answer: ApiVersionsResponse = response(&mut stream, ApiKey::ApiVersions, 0, 41);
    assert_eq!(answer.error_code, 35, "UNSUPPORTED_VERSION");
    let versions = answer.api_keys.iter().find(|k| k.api_key == ApiKey::ApiVersions as i16).expect("listed");
    assert_eq!((versions.min_version, versions.max_version), (0, 4));
    // The client retries at our highest and is served; the flexible
    // version's response header is still v0 (ApiVersions' rule).
    request(&mut stream, ApiKey::ApiVersions, 4, 42, &ApiVersionsRequest::default());
    let answer: ApiVersionsResponse = response(&mut stream, ApiKey::ApiVersions, 4, 42);
    assert_eq!(answer.error_code, 0);
    assert!(answer.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16));
    // APIs that come with later issues are not advertised.
    assert!(!answer.api_keys.iter().any(|k| k.api_key == ApiKey::EndTxn as i16));
    assert!(!answer.api_keys.iter().any(|k| k.api_key == ApiKey::CreateDelegationToken as i16));
    broker.stop();
}

/// Frames a client cannot mean close that connection only: the broker
/// serves the next client as before. (The last case, nine bytes of 0xff as
/// a Metadata body, once aborted the broker: the codec sized a vector from
/// the count it read, 2^31 entries; vendor/README.md.)
#[test]
fn broken_frames_close_the_connection_not_the_broker() {
    let broker = Broker::start(&data_dir("kafka_wire_broken"), 1);
    // A negative size, a size over the cap, a header cut short, an API key
    // Kafka does not have, a body that does not parse.
    let mut cases: Vec<Vec<u8>> = vec![
        (-1i32).to_be_bytes().to_vec(),
        (i32::MAX).to_be_bytes().to_vec(),
        [&4i32.to_be_bytes()[..], &[0, 3, 0, 12]].concat(),
        [&10i32.to_be_bytes()[..], &[0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]].concat(),
    ];
    let mut garbage = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(12)
        .with_correlation_id(1)
        .encode(&mut garbage, 2)
        .expect("header");
    garbage.put_slice(&[0xff; 9]);
    cases.push([&(garbage.len() as i32).to_be_bytes()[..], &garbage[..]].concat());
    for case in cases {
        let mut stream = connect(&broker);
        stream.write_all(&case).expect("write");
        let mut rest = Vec::new();
        // The broker closes (EOF) rather than answer or wait; a frame
        // whose header is incomplete waits for more, so end our side.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let read = stream.read_to_end(&mut rest);
        assert!(read.is_ok(), "closed, not timed out: {read:?}");
        assert!(rest.is_empty(), "no answer to a broken frame: {rest:?}");
    }
    served(&broker);
    broker.stop();
}

/// A Kafka client cannot fetch as a follower: a replica id is refused
/// (only an authenticated broker connection may move the high watermark).
#[test]
fn a_kafka_fetch_claiming_a_replica_id_is_refused() {
    let broker = Broker::start(&data_dir("kafka_wire_replica_fetch"), 1);
    let mut stream = connect(&broker);
    let fetch = FetchRequest::default().with_replica_id(kafka_protocol::messages::BrokerId(1)).with_max_wait_ms(0);
    request(&mut stream, ApiKey::Fetch, 12, 3, &fetch);
    let answer: FetchResponse = response(&mut stream, ApiKey::Fetch, 12, 3);
    assert_eq!(answer.error_code, 31, "CLUSTER_AUTHORIZATION_FAILED");
    served(&broker);
    broker.stop();
}
