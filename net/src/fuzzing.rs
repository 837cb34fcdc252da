//! Entry points for the fuzz target `group_records` (`fuzz/`), compiled
//! only with the feature `fuzzing` and hidden from the docs: not an API.
//! They run the consumer-group coordinator's own readers of
//! `__consumer_offsets` (the record key and value decoders, and the replay
//! of a stored batch into groups) on bytes from outside, and assert what
//! must hold of what decodes.

use spate_format::batch::BatchBuilder;

use crate::group::{self, record::GroupRecord};

/// One record's key and value (`None`: a tombstone). What decodes must be
/// what its encoder writes: the same key bytes (a key has no room for
/// anything else), a value that decodes to the same record, and a
/// tombstone exactly when the value was absent. A value may carry bytes
/// after the fields this version knows (a later version's), so its bytes
/// need not come back.
pub fn group_record(key: &[u8], value: Option<&[u8]>) {
    let Ok(record) = GroupRecord::decode(key, value) else { return };
    assert_eq!(record.key(), key, "a decoded key re-encodes to its bytes");
    let value_again = record.value();
    assert_eq!(value_again.is_none(), value.is_none(), "a tombstone stays a tombstone");
    let again = GroupRecord::decode(&record.key(), value_again.as_deref()).expect("an encoded record decodes");
    assert_eq!(again, record, "a record round-trips");
}

/// A record's key and value, either absent.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A batch of `records` (key, value) as a coordinator writes them, with its
/// base offset set (offsets lie outside the CRC).
pub fn records_batch(records: &[KeyValue<'_>], base_offset: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    for (key, value) in records {
        builder.push(0, *key, *value, &[]);
    }
    let mut batch = builder.build().to_vec();
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    batch
}

/// A stored batch of `__consumer_offsets` replayed from `offset` on, as a
/// coordinator that takes over the partition does: a bad batch or record
/// is an error (which stops the load), never a panic.
pub fn replay_batch(batch: &[u8], offset: i64) {
    let mut groups = group::Replayed::default();
    let _ = group::apply_batch(&mut groups, batch, offset);
}

/// One Kafka request (api key, version, header, body; no size prefix)
/// decoded as the Kafka front-end decodes it (`kafka::decode_request`).
pub fn kafka_request(bytes: &[u8]) {
    let _ = crate::kafka::decode_request(bytes);
}
