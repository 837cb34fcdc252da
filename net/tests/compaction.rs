//! A compacted topic on a real broker: its cleaner keeps the latest record
//! per key, at the offsets they were produced at.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use spate_flatbuf::proto::ErrorCode;
use spate_format::batch::{self, BatchBuilder};

/// Every record from offset 0 as (offset, key, value), following batches by
/// their last offsets (compaction leaves gaps).
fn fetch_all(conn: &mut Conn, topic: &str) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (error, high_watermark, bytes) = conn.fetch(topic, 0, offset, 0);
        assert_eq!(error, ErrorCode::None);
        if offset >= high_watermark {
            return out;
        }
        for span in batch::split_batches(&bytes) {
            let span = span.expect("whole batches");
            let info = batch::validate_stored(span.bytes, usize::MAX).expect("valid");
            for record in batch::records(span.bytes).expect("uncompressed") {
                let record = record.expect("record");
                let record_offset = record.offset(info.base_offset);
                if record_offset >= offset {
                    let key = record.key.expect("keyed").to_vec();
                    out.push((record_offset, key, record.value.unwrap_or_default().to_vec()));
                }
            }
            offset = info.last_offset() + 1;
        }
    }
}

#[test]
fn a_compacted_topic_keeps_the_latest_record_per_key_after_a_clean() {
    let dir = data_dir("compacted-topic");
    let config = spate_net::BrokerConfig { cleaner_check_interval_ms: 50, ..config(&dir, 1) };
    let broker = spate_net::start(config).expect("broker starts");
    let mut conn = Conn::connect(broker.addr().port());
    let configs = [("cleanup.policy", "compact"), ("segment.bytes", "4096"), ("delete.retention.ms", "60000")];
    assert_eq!(conn.create_topic("table", 1, &configs), ErrorCode::None);
    // 400 updates of 10 keys, about 30 segments.
    let mut latest = BTreeMap::new();
    for i in 0..400u32 {
        let key = format!("key-{}", i % 10).into_bytes();
        let value = format!("value-{i}-{}", "x".repeat(200)).into_bytes();
        let mut builder = BatchBuilder::new(0);
        builder.push(0, Some(&key), Some(&value), &[]);
        let (error, offset) = conn.produce("table", 0, &builder.build(), -1);
        assert_eq!(error, ErrorCode::None);
        assert_eq!(offset, i64::from(i));
        latest.insert(key, (offset, value));
    }
    // The cleaner runs in the background; wait until it has compacted the
    // sealed segments (at most one record per key there, plus the active
    // segment's records).
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = fetch_all(&mut conn, "table");
        if records.len() < 60 {
            break records;
        }
        assert!(Instant::now() < deadline, "not compacted: {} records", records.len());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
    // The last record per key is each key's latest, at its own offset.
    let mut last_per_key = BTreeMap::new();
    for (offset, key, value) in &records {
        last_per_key.insert(key.clone(), (*offset, value.clone()));
    }
    assert_eq!(last_per_key, latest);
    stop(broker);
}
