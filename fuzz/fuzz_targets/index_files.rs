//! The decoders of files recovery reads: index, time index, transaction
//! index, epoch checkpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_engine::checkpoint::LeaderEpochCache;
use spate_engine::index::{OffsetIndex, TimeIndex};

fuzz_target!(|data: &[u8]| {
    let (index, _) = OffsetIndex::decode(data, u64::from(u32::MAX));
    for pair in index.entries().windows(2) {
        assert!(pair[0].relative_offset < pair[1].relative_offset && pair[0].position < pair[1].position);
    }
    let (time_index, _) = TimeIndex::decode(data, u64::from(u32::MAX));
    for pair in time_index.entries().windows(2) {
        assert!(pair[0].timestamp_ms < pair[1].timestamp_ms);
    }
    if let Some(entries) = spate_engine::txn::decode_index(data, 0, i64::MAX) {
        assert_eq!(spate_engine::txn::encode_index(&entries), data, "a decoded .txnindex re-encodes to its bytes");
    }
    if let Ok(epochs) = LeaderEpochCache::decode(data) {
        assert_eq!(LeaderEpochCache::decode(&epochs.encode()), Ok(epochs));
    }
});
