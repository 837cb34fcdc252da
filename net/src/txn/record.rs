//! The records a transaction coordinator writes to its partition of
//! `__transaction_state`: key the transactional id, value the
//! transaction's state (null: a tombstone), in a versioned big-endian
//! encoding of our own described byte by byte in docs/format.md
//! ("Transaction state records"). One key per transactional id, so the
//! latest record per key is the state and compaction keeps just that.

use std::collections::BTreeSet;

use spate_format::batch::BatchBuilder;

use super::state::{TxnMeta, TxnState};
use crate::group::record::Reader;
use crate::limits::TXN_PARTITIONS_MAX;

const KEY_VERSION: u8 = 0;
/// Version 1 adds `next_producer_id` at the end (KIP-890 part 2). It is
/// written only when there is one (a prepared transaction rotating its
/// producer id), so a broker from before reads every other record.
const VALUE_VERSION: u8 = 1;

fn put_str(out: &mut Vec<u8>, text: &str) {
    // Transactional ids and topic names are at most 249 bytes (checked
    // where they come in).
    debug_assert!(text.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(crate) fn key(txn_id: &str) -> Vec<u8> {
    let mut key = vec![KEY_VERSION];
    put_str(&mut key, txn_id);
    key
}

pub(crate) fn value(meta: &TxnMeta) -> Vec<u8> {
    assert!(meta.partitions.len() <= TXN_PARTITIONS_MAX, "AddPartitionsToTxn caps a transaction's partitions");
    let version = if meta.next_producer_id >= 0 { VALUE_VERSION } else { 0 };
    let mut value = vec![version];
    value.extend_from_slice(&meta.producer_id.to_be_bytes());
    value.extend_from_slice(&meta.producer_epoch.to_be_bytes());
    value.extend_from_slice(&meta.last_producer_id.to_be_bytes());
    value.extend_from_slice(&meta.last_producer_epoch.to_be_bytes());
    value.extend_from_slice(&meta.timeout_ms.to_be_bytes());
    value.push(meta.state.id());
    value.extend_from_slice(&meta.txn_start_ms.to_be_bytes());
    value.extend_from_slice(&meta.txn_last_update_ms.to_be_bytes());
    value.extend_from_slice(&(meta.partitions.len() as u32).to_be_bytes());
    for (topic, partition) in &meta.partitions {
        put_str(&mut value, topic);
        value.extend_from_slice(&partition.to_be_bytes());
    }
    if version >= 1 {
        value.extend_from_slice(&meta.next_producer_id.to_be_bytes());
    }
    value
}

/// Reads a record back: (transactional id, its state; None: a
/// tombstone). An unknown version or a malformed key or value is an error
/// (never a panic), which stops the coordinator's load.
pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<(String, Option<TxnMeta>), String> {
    let mut key = Reader(key);
    let version = key.u8()?;
    if version != KEY_VERSION {
        return Err(format!("unknown transaction key version {version}"));
    }
    let txn_id = key.string()?;
    if !key.0.is_empty() {
        return Err(format!("{} stray bytes after the key", key.0.len()));
    }
    let Some(value) = value else { return Ok((txn_id, None)) };
    let mut value = Reader(value);
    let version = value.u8()?;
    if version > VALUE_VERSION {
        return Err(format!("unknown transaction value version {version}"));
    }
    let producer_id = i64::from_be_bytes(value.array()?);
    let producer_epoch = i16::from_be_bytes(value.array()?);
    let last_producer_id = i64::from_be_bytes(value.array()?);
    let last_producer_epoch = i16::from_be_bytes(value.array()?);
    let timeout_ms = i32::from_be_bytes(value.array()?);
    let state_id = value.u8()?;
    let state = TxnState::from_id(state_id).ok_or_else(|| format!("unknown transaction state {state_id}"))?;
    let txn_start_ms = i64::from_be_bytes(value.array()?);
    let txn_last_update_ms = i64::from_be_bytes(value.array()?);
    let count = u32::from_be_bytes(value.array()?) as usize;
    // Checked before anything is allocated for them.
    if count > TXN_PARTITIONS_MAX {
        return Err(format!("{count} partitions in one transaction, over {TXN_PARTITIONS_MAX}"));
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..count {
        let topic = value.string()?;
        let partition = i32::from_be_bytes(value.array()?);
        partitions.insert((topic, partition));
    }
    let next_producer_id = if version >= 1 { i64::from_be_bytes(value.array()?) } else { -1 };
    if !value.0.is_empty() {
        return Err(format!("{} stray bytes after the value", value.0.len()));
    }
    let meta = TxnMeta {
        producer_id,
        producer_epoch,
        last_producer_id,
        last_producer_epoch,
        timeout_ms,
        state,
        partitions,
        txn_start_ms,
        txn_last_update_ms,
        next_producer_id,
    };
    Ok((txn_id, Some(meta)))
}

/// A batch of one record, timestamped now, ready to append.
pub(crate) fn batch(txn_id: &str, meta: Option<&TxnMeta>, now_ms: i64) -> bytes::BytesMut {
    let mut builder = BatchBuilder::new(now_ms);
    let value = meta.map(value);
    builder.push(now_ms, Some(&key(txn_id)), value.as_deref(), &[]);
    builder.build()
}

#[cfg(test)]
fn tp(topic: &str, partition: i32) -> crate::group::Tp {
    (topic.to_string(), partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TxnMeta {
        TxnMeta {
            producer_id: 0x0102,
            producer_epoch: 3,
            last_producer_id: -1,
            last_producer_epoch: -1,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: [tp("t", 1)].into_iter().collect(),
            txn_start_ms: 5,
            txn_last_update_ms: 6,
            next_producer_id: 0x0a,
        }
    }

    #[test]
    fn records_round_trip_with_the_layout_docs_show() {
        let meta = meta();
        assert_eq!(key("tx"), b"\x00\x00\x02tx");
        let value = value(&meta);
        let expected: &[u8] = b"\x01\
            \x00\x00\x00\x00\x00\x00\x01\x02\x00\x03\
            \xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            \x00\x00\xea\x60\x01\
            \x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x06\
            \x00\x00\x00\x01\x00\x01t\x00\x00\x00\x01\
            \x00\x00\x00\x00\x00\x00\x00\x0a";
        assert_eq!(value, expected);
        assert_eq!(decode(&key("tx"), Some(&value)), Ok(("tx".to_string(), Some(meta.clone()))));
        assert_eq!(decode(&key("tx"), None), Ok(("tx".to_string(), None)));
        // Without a next producer id the value is version 0, as written
        // before KIP-890 part 2, and loads as none.
        let old = TxnMeta { next_producer_id: -1, ..meta };
        let v0 = super::value(&old);
        assert_eq!(v0[0], 0);
        assert_eq!(v0[1..], value[1..value.len() - 8]);
        assert_eq!(decode(&key("tx"), Some(&v0)), Ok(("tx".to_string(), Some(old))));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let (key, value) = (key("tx"), value(&meta()));
        for cut in 0..value.len() {
            assert!(decode(&key, Some(&value[..cut])).is_err(), "value cut at {cut}");
        }
        for cut in 0..key.len() {
            assert!(decode(&key[..cut], None).is_err(), "key cut at {cut}");
        }
        let mut bad_state = value.clone();
        bad_state[1 + 8 + 2 + 8 + 2 + 4] = 99;
        assert!(decode(&key, Some(&bad_state)).is_err());
        // A partition count no record can have is refused before it is
        // allocated for.
        let mut huge = value[..value.len() - 8 - 7].to_vec();
        let at = huge.len() - 4;
        huge[at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&key, Some(&huge)).is_err());
        let mut long = value;
        long.push(0);
        assert!(decode(&key, Some(&long)).is_err());
    }
}
