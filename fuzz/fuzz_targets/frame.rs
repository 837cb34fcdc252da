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
            _ => {}
        }
    }
});
