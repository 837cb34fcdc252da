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
    let dir = data_dir("kafka_wire_api_versions");
    let broker = Broker::start(&dir, 1);
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
    assert!(answer.api_keys.iter().any(|k| k.api_key == ApiKey::EndTxn as i16));
    // APIs not served (delegation tokens come later) are not advertised.
    assert!(!answer.api_keys.iter().any(|k| k.api_key == ApiKey::CreateDelegationToken as i16));
    broker.stop();
}

/// Frames a client cannot mean close that connection only: the broker
/// serves the next client as before. (The last case, nine bytes of 0xff as
/// a Metadata body, once aborted the broker: the codec sized a vector from
/// the count it read, 2^31 entries; vendor/README.md.)
#[test]
fn broken_frames_close_the_connection_not_the_broker() {
    let dir = data_dir("kafka_wire_broken");
    let broker = Broker::start(&dir, 1);
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
    let dir = data_dir("kafka_wire_replica_fetch");
    let broker = Broker::start(&dir, 1);
    let mut stream = connect(&broker);
    let fetch = FetchRequest::default().with_replica_id(kafka_protocol::messages::BrokerId(1)).with_max_wait_ms(0);
    request(&mut stream, ApiKey::Fetch, 12, 3, &fetch);
    let answer: FetchResponse = response(&mut stream, ApiKey::Fetch, 12, 3);
    assert_eq!(answer.error_code, 31, "CLUSTER_AUTHORIZATION_FAILED");
    served(&broker);
    broker.stop();
}

/// A second broker started on a port the first one holds must fail with
/// a clear error: every shard binds with SO_REUSEPORT, which the kernel
/// grants to any process of the same user, so before this check the second
/// broker started and silently took about half of the first one's new
/// connections (seen: a Kafka tool's requests answered by another broker
/// build, alternately).
#[test]
fn a_second_broker_on_the_same_port_is_refused_not_sharing_it() {
    let first_dir = data_dir("kafka_wire_port_taken");
    let broker = Broker::start(&first_dir, 1);
    let dir = data_dir("kafka_wire_port_taken_second");
    let listeners = format!("PLAINTEXT://127.0.0.1:{}", broker.kafka_port);
    let output = std::process::Command::new(common::SPATE)
        .args(["serve", "--metrics-listen", "", "--no-pin", "--port", "0", "--shards", "1", "--listeners", &listeners])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("run spate serve");
    assert!(!output.status.success(), "a second broker started on a taken port");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{} is not free", broker.kafka_port)), "{stderr}");
    served(&broker);
    broker.stop();
}

/// A start refused (here: its Kafka port is taken) changes nothing on
/// disk: it used to record the machine's boot id before the check, so a
/// broker that had crashed before a reboot, then failed one start, then
/// started again no longer knew it may have lost unsynced writes and led
/// by right (CI's cluster_e2e ELR test failed this way: the restart right
/// after a kill -9 met its own port still held by io_uring's teardown, the
/// retry found the boot id rewritten).
#[test]
fn a_refused_start_leaves_the_record_of_a_reboot_for_the_next_start() {
    let dir = data_dir("kafka_wire_refused_start");
    let broker = Broker::start(&dir, 1);
    broker.kill9();
    let boot_id = dir.join("boot-id");
    assert!(boot_id.exists(), "a start that registered records the boot id");
    let rebooted = "00000000-0000-0000-0000-000000000000\n";
    std::fs::write(&boot_id, rebooted).expect("rewrite the boot id");
    let port = common::free_port_below_ephemeral();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let listeners = format!("PLAINTEXT://127.0.0.1:{port}");
    let output = std::process::Command::new(common::SPATE)
        .args(["serve", "--metrics-listen", "", "--no-pin", "--port", "0", "--shards", "1", "--listeners", &listeners])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("run spate serve");
    assert!(!output.status.success(), "started on a taken port");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not free"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_to_string(&boot_id).expect("the boot id"), rebooted, "the refused start rewrote it");
}

/// `--port 39500 --listeners PLAINTEXT://127.0.0.1:39501` put the Kafka
/// listener on shard 0's native port (the native port + 1): SO_REUSEPORT
/// let both bind it, so half of the Kafka clients' connections reached the
/// native protocol and were closed ("frame cannot hold its envelope"), and
/// the Java AdminClient's thread died on a mismatched correlation id. Seen
/// by hand running Kafka's kafka-transactions tool. The broker now refuses
/// to start, naming both.
#[test]
fn a_kafka_listener_on_a_shard_port_of_the_same_broker_is_refused() {
    let port = common::free_port_below_ephemeral();
    let listeners = format!("PLAINTEXT://127.0.0.1:{}", port + 1);
    let dir = data_dir("kafka_wire_port_twice");
    let output = std::process::Command::new(common::SPATE)
        .args(["serve", "--metrics-listen", "", "--no-pin", "--shards", "1", "--listeners", &listeners])
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("run spate serve");
    assert!(!output.status.success(), "a broker started with one port bound twice");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected =
        format!("127.0.0.1:{} is configured twice: for shard 0's native port and for the Kafka listener", port + 1);
    assert!(stderr.contains(&expected), "{stderr}");
}

fn request_as<T: Encodable>(stream: &mut TcpStream, api: ApiKey, version: i16, client_id: &'static str, body: &T) {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut out = BytesMut::new();
    header.encode(&mut out, api.request_header_version(version)).expect("header");
    body.encode(&mut out, version).expect("body");
    send_raw(stream, &out);
}

/// request_percentage (KIP-124), set with AlterClientQuotas on a client
/// id: a client whose requests take more of the shard's time than its
/// share is kept quiet, so it gets far fewer requests through than a
/// client without a quota, on the same broker at the same time. Before,
/// the key was refused and a client could take the whole core.
#[test]
fn a_client_over_its_request_percentage_is_held_to_its_share_of_the_core() {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    use kafka_protocol::messages::{AlterClientQuotasRequest, AlterClientQuotasResponse};
    let dir = data_dir("kafka_wire_request_quota");
    let broker = Broker::start(&dir, 1);
    let mut admin = connect(&broker);
    // 0.1% of a core: 1 ms of the shard's time a second.
    let alter = AlterClientQuotasRequest::default().with_entries(vec![
        EntryData::default()
            .with_entity(vec![
                EntityData::default()
                    .with_entity_type(StrBytes::from_static_str("client-id"))
                    .with_entity_name(Some(StrBytes::from_static_str("busy"))),
            ])
            .with_ops(vec![
                OpData::default().with_key(StrBytes::from_static_str("request_percentage")).with_value(0.1),
            ]),
    ]);
    request(&mut admin, ApiKey::AlterClientQuotas, 1, 2, &alter);
    let altered: AlterClientQuotasResponse = response(&mut admin, ApiKey::AlterClientQuotas, 1, 2);
    assert_eq!(altered.entries[0].error_code, 0, "{altered:?}");
    // Requests answered within `seconds`, one at a time.
    let answered = |client_id: &'static str, seconds: u64| {
        let mut stream = connect(&broker);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut count = 0u64;
        while std::time::Instant::now() < until {
            request_as(&mut stream, ApiKey::ApiVersions, 3, client_id, &ApiVersionsRequest::default());
            let _: ApiVersionsResponse = response(&mut stream, ApiKey::ApiVersions, 3, 1);
            count += 1;
        }
        count as f64 / seconds as f64
    };
    let free_per_s = answered("free", 2);
    let busy_per_s = answered("busy", 4);
    eprintln!("requests/s: free {free_per_s:.0}, busy {busy_per_s:.0}");
    assert!(
        busy_per_s * 3.0 < free_per_s,
        "the quota'd client got {busy_per_s:.0} requests/s through, the free one {free_per_s:.0}"
    );
    broker.stop();
}

/// consumer_byte_rate, set with AlterClientQuotas on a client id: a fetch
/// that takes it over its rate is answered at once with throttle_time_ms,
/// and the connection is not read from for that long (KIP-219); another
/// client id is not throttled; DescribeClientQuotas shows the quota.
#[test]
fn a_client_over_its_consumer_byte_rate_is_throttled_and_kept_quiet() {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{
        AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
        TopicName,
    };
    let dir = data_dir("kafka_wire_quota");
    let broker = Broker::start(&dir, 1);
    // 200 records of 1000 bytes, written by kcat.
    let lines: String = (0..200).map(|i| format!("{i:0>1000}\n")).collect();
    let mut kcat = std::process::Command::new("kcat")
        .args(["-b", &broker.kafka_addr(), "-P", "-t", "quota", "-m", "10"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat (installed by compat/install.sh)");
    kcat.stdin.take().expect("stdin").write_all(lines.as_bytes()).expect("write to kcat");
    assert!(kcat.wait().expect("kcat").success());

    let mut admin = connect(&broker);
    let quota_bytes_per_s = 15_000.0;
    let alter = AlterClientQuotasRequest::default().with_entries(vec![
        EntryData::default()
            .with_entity(vec![
                EntityData::default()
                    .with_entity_type(StrBytes::from_static_str("client-id"))
                    .with_entity_name(Some(StrBytes::from_static_str("slow-reader"))),
            ])
            .with_ops(vec![
                OpData::default()
                    .with_key(StrBytes::from_static_str("consumer_byte_rate"))
                    .with_value(quota_bytes_per_s),
            ]),
    ]);
    request(&mut admin, ApiKey::AlterClientQuotas, 1, 2, &alter);
    let altered: AlterClientQuotasResponse = response(&mut admin, ApiKey::AlterClientQuotas, 1, 2);
    assert_eq!(altered.entries[0].error_code, 0, "{altered:?}");
    let describe = DescribeClientQuotasRequest::default().with_components(vec![
        ComponentData::default().with_entity_type(StrBytes::from_static_str("client-id")).with_match_type(2),
    ]);
    request(&mut admin, ApiKey::DescribeClientQuotas, 1, 3, &describe);
    let described: DescribeClientQuotasResponse = response(&mut admin, ApiKey::DescribeClientQuotas, 1, 3);
    let entries = described.entries.unwrap_or_default();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].values[0].value, quota_bytes_per_s);

    let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(4 << 20).with_topics(vec![
        FetchTopic::default().with_topic(TopicName(StrBytes::from_static_str("quota"))).with_partitions(vec![
            FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(4 << 20),
        ]),
    ]);
    let fetch_as = |client_id: &'static str| {
        let mut stream = connect(&broker);
        request_as(&mut stream, ApiKey::Fetch, 12, client_id, &fetch);
        let answer: FetchResponse = response(&mut stream, ApiKey::Fetch, 12, 1);
        let records = answer.responses[0].partitions[0].records.as_ref().map_or(0, Bytes::len);
        assert!(records > 150_000, "the fetch read {records} bytes");
        (stream, answer.throttle_time_ms)
    };
    // ~200 KB against 15 KB/s over the 11 s quota window.
    let (mut slow, throttle_ms) = fetch_as("slow-reader");
    assert!(throttle_ms > 1000, "throttle_time_ms {throttle_ms}");
    // Its next request waits out the throttle (a lower bound: a slow
    // machine only makes it longer).
    let asked = std::time::Instant::now();
    request_as(&mut slow, ApiKey::ApiVersions, 3, "slow-reader", &ApiVersionsRequest::default());
    let _: ApiVersionsResponse = response(&mut slow, ApiKey::ApiVersions, 3, 1);
    let waited_ms = asked.elapsed().as_millis() as i32;
    assert!(waited_ms >= throttle_ms * 8 / 10, "answered after {waited_ms} ms of a {throttle_ms} ms throttle");
    // Another client id has no quota.
    let (_, other) = fetch_as("fast-reader");
    assert_eq!(other, 0);
    broker.stop();
}
