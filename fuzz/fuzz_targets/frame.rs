//! The frame decoder and envelope verifier on arbitrary bytes: never
//! panics, and every accessor of a verified request reads without panic
//! (the broker reads them in place, trusting verification).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spate_flatbuf::FrameDecoder;
use spate_flatbuf::proto::Body;

fuzz_target!(|data: &[u8]| {
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let envelope = frame.read().expect("decode verified this envelope");
        let _ = (envelope.request_id(), envelope.version());
        match envelope.body_type() {
            Body::ProduceRequest => {
                let request = envelope.body_as_produce_request().expect("verified union");
                let _ = (request.acks(), request.timeout_ms());
                for topic in request.topics().iter().flatten() {
                    let _ = topic.name();
                    for part in topic.partitions().iter().flatten() {
                        let _ = (part.partition(), part.records().map(|r| r.bytes().len()));
                    }
                }
            }
            Body::FetchRequest => {
                let request = envelope.body_as_fetch_request().expect("verified union");
                for topic in request.topics().iter().flatten() {
                    let _ = topic.name();
                    for part in topic.partitions().iter().flatten() {
                        let _ = (part.partition(), part.offset(), part.max_bytes());
                    }
                }
            }
            Body::CreateTopicsRequest => {
                let request = envelope.body_as_create_topics_request().expect("verified union");
                for topic in request.topics().iter().flatten() {
                    let _ = (topic.name(), topic.partitions(), topic.replication_factor());
                    for config in topic.configs().iter().flatten() {
                        let _ = (config.key(), config.value());
                    }
                }
            }
            Body::MetadataRequest => {
                let request = envelope.body_as_metadata_request().expect("verified union");
                let _ = request.topics().map(|t| t.iter().count());
            }
            Body::ConsumerGroupHeartbeatRequest => {
                let request = envelope.body_as_consumer_group_heartbeat_request().expect("verified union");
                let _ = (request.group_id(), request.member_id(), request.member_epoch(), request.assignor());
                let _ = (request.session_timeout_ms(), request.client_id());
                let _ = request.subscribed_topics().map(|t| t.iter().count());
                for owned in request.owned_partitions().iter().flatten() {
                    let _ = (owned.topic(), owned.partitions().map(|p| p.iter().sum::<i32>()));
                }
            }
            Body::OffsetCommitRequest => {
                let request = envelope.body_as_offset_commit_request().expect("verified union");
                let _ = (request.group_id(), request.member_id(), request.member_epoch());
                for topic in request.topics().iter().flatten() {
                    let _ = topic.name();
                    for part in topic.partitions().iter().flatten() {
                        let _ = (part.partition(), part.offset());
                    }
                }
            }
            Body::OffsetFetchRequest => {
                let request = envelope.body_as_offset_fetch_request().expect("verified union");
                for topic in request.topics().iter().flatten() {
                    let _ = (topic.topic(), topic.partitions().map(|p| p.iter().count()));
                }
            }
            Body::DescribeGroupsRequest | Body::DeleteGroupsRequest => {
                let groups = envelope
                    .body_as_describe_groups_request()
                    .and_then(|r| r.groups())
                    .or_else(|| envelope.body_as_delete_groups_request().and_then(|r| r.groups()));
                let _ = groups.map(|g| g.iter().count());
            }
            _ => {}
        }
    }
});
