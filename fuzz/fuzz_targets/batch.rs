//! Every batch decoder on arbitrary bytes: never panics, and whatever
//! validation accepts reads back record by record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_engine::batch;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 20;
    for result in batch::split_batches(data) {
        let Ok(span) = result else { break };
        if let Ok(info) = batch::validate_stored(span.bytes, max) {
            if info.compression() == batch::Compression::None {
                let records = batch::records(span.bytes).expect("a valid uncompressed batch has records");
                let count = records.map(|record| record.expect("validated records parse")).count();
                assert_eq!(count as i32, info.records_count);
            }
        }
        let _ = batch::validate_produce(span.bytes, max);
    }
    let _ = batch::validate_stored(data, max);
    let _ = batch::validate_produce(data, max);
    let _ = batch::peek_header(data);
    // Markers come from the network (a leader's fetch response) too.
    if let Ok(marker) = batch::parse_control_batch(data) {
        let header = batch::peek_header(data).expect("a marker has a header");
        let rebuilt = batch::build_control_batch(
            header.producer_id.get(),
            header.producer_epoch.get(),
            marker,
            header.base_timestamp.get(),
        );
        assert_eq!(batch::parse_control_batch(&rebuilt), Ok(marker));
    }
    if let Ok(records) = batch::records(data) {
        for _ in records {}
    }
});
