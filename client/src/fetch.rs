//! Records out of a fetch response's payload.
//!
//! Each partition's records are a slice of the payload: whole RecordBatch
//! v2 batches, the same bytes the broker stored. Every batch is validated
//! (length, magic, CRC-32C, counts, every record) before its records are
//! read. Records of an uncompressed batch are slices of the payload, not
//! copies; a compressed batch is decompressed (at most
//! `limits::DECOMPRESSED_BYTES_MAX`) and its records are slices of that.

use std::collections::HashSet;

use bytes::Bytes;
use spate_format::batch::{self, TimestampType};
use spate_format::limits::DECOMPRESSED_BYTES_MAX;

use crate::consumer::ConsumerRecord;
use crate::error::ClientError;
use crate::metadata::TopicPartition;

/// The records of one partition at or after the fetch offset, and the
/// offset to fetch next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionRecords {
    pub records: Vec<ConsumerRecord>,
    /// One past the last offset of the last batch; the fetch offset when
    /// there was no batch. Batches may end in offsets with no record
    /// (compaction, control records), so this can pass the last record.
    pub next_offset: i64,
}

/// Parses `payload[records_offset..][..records_bytes]` for `tp`, keeping
/// records at or after `fetch_offset` (a batch may start before it).
///
/// `aborted` (read_committed: the broker's aborted transactions with data
/// here, as (producer id, first offset)) drops the batches of aborted
/// transactions with Kafka's rule: walking batches in offset order, a
/// producer is aborted from its transaction's first offset until its abort
/// marker, and its transactional batches in between are skipped.
pub(crate) fn partition_records(
    tp: &TopicPartition,
    payload: &Bytes,
    records_offset: u32,
    records_bytes: u32,
    fetch_offset: i64,
    aborted: &[(i64, i64)],
) -> Result<PartitionRecords, ClientError> {
    let start = usize::try_from(records_offset).unwrap_or(usize::MAX);
    let end = start.checked_add(usize::try_from(records_bytes).unwrap_or(usize::MAX));
    let records_bytes = match end {
        Some(end) if end <= payload.len() => payload.slice(start..end),
        _ => {
            return Err(ClientError::Protocol(format!(
                "the records of {tp} ({records_bytes} bytes at {records_offset}) run past the {}-byte payload",
                payload.len()
            )));
        }
    };
    let mut out = PartitionRecords { records: Vec::new(), next_offset: fetch_offset };
    let mut aborted_by_first_offset: Vec<(i64, i64)> = aborted.iter().map(|&(pid, first)| (first, pid)).collect();
    aborted_by_first_offset.sort_unstable();
    let mut pending_aborts = aborted_by_first_offset.into_iter().peekable();
    let mut aborted_producers: HashSet<i64> = HashSet::new();
    for span in batch::split_batches(&records_bytes) {
        let span = span?;
        let batch_bytes = &records_bytes[span.range.clone()];
        let info = batch::validate_stored(batch_bytes, usize::MAX)?;
        if info.producer_id >= 0 {
            while let Some(&(first_offset, producer_id)) = pending_aborts.peek()
                && first_offset <= info.last_offset()
            {
                aborted_producers.insert(producer_id);
                pending_aborts.next();
            }
        }
        let attributes = info.attributes();
        let skipped = if attributes.is_control() {
            // Transaction markers, not user records; an abort marker ends
            // its producer's aborted transaction.
            if batch::parse_control_batch(batch_bytes).is_ok_and(|marker| !marker.commit) {
                aborted_producers.remove(&info.producer_id);
            }
            true
        } else {
            attributes.is_transactional() && aborted_producers.contains(&info.producer_id)
        };
        if info.last_offset() < fetch_offset {
            continue;
        }
        out.next_offset = out.next_offset.max(info.last_offset() + 1);
        if skipped {
            continue;
        }
        let log_append_time = info.attributes().timestamp_type() == TimestampType::LogAppendTime;
        let decompressed =
            batch::decompressed_records(&records_bytes.slice(span.range.clone()), DECOMPRESSED_BYTES_MAX)?;
        for record in decompressed.iter() {
            let record = record?;
            let offset = record.offset(info.base_offset);
            if offset < fetch_offset {
                continue;
            }
            // With log-append time the broker's time is the batch's max
            // timestamp, for every record (as in Kafka).
            let timestamp_ms =
                if log_append_time { info.max_timestamp } else { record.timestamp_ms(info.base_timestamp) };
            let slice = |bytes: &[u8]| decompressed.bytes().slice_ref(bytes);
            out.records.push(ConsumerRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                timestamp_ms,
                key: record.key.map(slice),
                value: record.value.map(slice),
                headers: record
                    .headers
                    .iter()
                    .map(|header| (String::from_utf8_lossy(header.key).into_owned(), header.value.map(slice)))
                    .collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use spate_format::batch::{BatchBuilder, BatchError, set_base_offset, write_crc};

    use super::*;

    fn batch(base_offset: i64, values: &[&str]) -> BytesMut {
        let mut builder = BatchBuilder::new(1_000);
        for (index, value) in values.iter().enumerate() {
            let key = format!("k{index}");
            let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace", Some(b"abc")), (b"empty", None)];
            builder.push(
                1_000 + i64::try_from(index).expect("small"),
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                headers,
            );
        }
        let mut bytes = builder.build();
        set_base_offset(&mut bytes, base_offset).expect("whole header");
        bytes
    }

    fn payload(parts: &[&[u8]]) -> Bytes {
        parts.concat().into()
    }

    fn values(records: &[ConsumerRecord]) -> Vec<(i64, String)> {
        records
            .iter()
            .map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()))
            .collect()
    }

    #[test]
    fn records_below_the_fetch_offset_are_skipped_and_the_position_passes_the_last_batch() {
        let tp = TopicPartition::new("t", 3);
        let first = batch(10, &["a", "b", "c", "d", "e"]);
        let second = batch(15, &["f", "g", "h"]);
        // Another partition's records come first in the payload.
        let payload = payload(&[b"other partition", &first, &second]);
        let records_bytes = u32::try_from(first.len() + second.len()).expect("small");
        let parsed = partition_records(&tp, &payload, 15, records_bytes, 12, &[]).expect("valid batches");
        assert_eq!(
            values(&parsed.records),
            vec![
                (12, "c".into()),
                (13, "d".into()),
                (14, "e".into()),
                (15, "f".into()),
                (16, "g".into()),
                (17, "h".into())
            ]
        );
        assert_eq!(parsed.next_offset, 18);
        let record = &parsed.records[0];
        assert_eq!((record.topic.as_str(), record.partition, record.timestamp_ms), ("t", 3, 1_002));
        assert_eq!(record.key.as_deref(), Some(&b"k2"[..]));
        assert_eq!(
            record.headers,
            vec![("trace".to_string(), Some(Bytes::from_static(b"abc"))), ("empty".to_string(), None)]
        );
    }

    #[test]
    fn a_batch_wholly_below_the_fetch_offset_yields_nothing_and_keeps_the_position() {
        let tp = TopicPartition::new("t", 0);
        let old = batch(0, &["a", "b"]);
        let payload = payload(&[&old]);
        let parsed =
            partition_records(&tp, &payload, 0, u32::try_from(old.len()).expect("small"), 5, &[]).expect("valid");
        assert!(parsed.records.is_empty());
        assert_eq!(parsed.next_offset, 5);
        let empty = partition_records(&tp, &payload, 0, 0, 5, &[]).expect("no records is fine");
        assert_eq!((empty.records.len(), empty.next_offset), (0, 5));
    }

    #[test]
    fn compressed_batches_read_as_the_same_records() {
        use spate_format::batch::Compression;
        let tp = TopicPartition::new("t", 0);
        let plain = batch(0, &["a", "b", "c"]);
        let expected =
            partition_records(&tp, &payload(&[&plain]), 0, u32::try_from(plain.len()).expect("small"), 0, &[])
                .expect("valid");
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut builder = BatchBuilder::new(1_000).compression(codec);
            for (index, value) in ["a", "b", "c"].iter().enumerate() {
                let key = format!("k{index}");
                let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace", Some(b"abc")), (b"empty", None)];
                let timestamp_ms = 1_000 + i64::try_from(index).expect("small");
                builder.push(timestamp_ms, Some(key.as_bytes()), Some(value.as_bytes()), headers);
            }
            let compressed = builder.build();
            let bytes = u32::try_from(compressed.len()).expect("small");
            let parsed = partition_records(&tp, &payload(&[&compressed]), 0, bytes, 1, &[]).expect("valid");
            assert_eq!(parsed.records, expected.records[1..], "{codec:?}");
            assert_eq!(parsed.next_offset, 3);
        }
    }

    #[test]
    fn a_corrupt_batch_is_an_error_not_records() {
        let tp = TopicPartition::new("t", 0);
        let mut bytes = batch(0, &["hello", "world"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let payload = payload(&[&bytes]);
        let result = partition_records(&tp, &payload, 0, u32::try_from(bytes.len()).expect("small"), 0, &[]);
        assert!(matches!(result, Err(ClientError::Batch(BatchError::BadCrc { .. }))), "{result:?}");
    }

    #[test]
    fn a_cut_batch_or_a_slice_past_the_payload_is_an_error() {
        let tp = TopicPartition::new("t", 0);
        let bytes = batch(0, &["hello"]);
        let payload = payload(&[&bytes]);
        let cut = partition_records(&tp, &payload, 0, u32::try_from(bytes.len() - 1).expect("small"), 0, &[]);
        assert!(matches!(cut, Err(ClientError::Batch(BatchError::Truncated { .. }))), "{cut:?}");
        let past = partition_records(&tp, &payload, 1, u32::try_from(bytes.len()).expect("small"), 0, &[]);
        assert!(matches!(past, Err(ClientError::Protocol(_))), "{past:?}");
        let overflow = partition_records(&tp, &payload, u32::MAX, u32::MAX, 0, &[]);
        assert!(matches!(overflow, Err(ClientError::Protocol(_))), "{overflow:?}");
    }

    #[test]
    fn control_batches_advance_the_position_without_yielding_records() {
        let tp = TopicPartition::new("t", 0);
        let mut control = batch(4, &["marker"]);
        // Attributes are bytes 21-22; bit 5 marks a control batch.
        control[22] |= 1 << 5;
        write_crc(&mut control).expect("whole batch");
        let data = batch(5, &["x"]);
        let payload = payload(&[&control, &data]);
        let bytes = u32::try_from(control.len() + data.len()).expect("small");
        let parsed = partition_records(&tp, &payload, 0, bytes, 4, &[]).expect("valid");
        assert_eq!(values(&parsed.records), vec![(5, "x".into())]);
        assert_eq!(parsed.next_offset, 6);
    }

    fn txn_batch(base_offset: i64, producer_id: i64, values: &[&str]) -> BytesMut {
        let mut builder = BatchBuilder::new(1_000).producer(producer_id, 0, 0).transactional();
        for value in values {
            builder.push(1_000, None, Some(value.as_bytes()), &[]);
        }
        let mut bytes = builder.build();
        set_base_offset(&mut bytes, base_offset).expect("whole header");
        bytes
    }

    fn marker(offset: i64, producer_id: i64, commit: bool) -> BytesMut {
        let marker = spate_format::batch::ControlRecord { commit, coordinator_epoch: 0 };
        let mut bytes = spate_format::batch::build_control_batch(producer_id, 0, marker, 1_000);
        set_base_offset(&mut bytes, offset).expect("whole header");
        bytes
    }

    #[test]
    fn read_committed_skips_the_batches_of_aborted_transactions_only() {
        let tp = TopicPartition::new("t", 0);
        // Producer 7's transaction at 0-1 aborts (marker at 5); producer
        // 8's at 2-3 commits (marker at 6); a plain batch at 4; producer 7
        // writes again at 7, a later transaction that is not aborted.
        let parts = [
            txn_batch(0, 7, &["a0", "a1"]),
            txn_batch(2, 8, &["c2", "c3"]),
            batch(4, &["plain"]),
            marker(5, 7, false),
            marker(6, 8, true),
            txn_batch(7, 7, &["n7"]),
        ];
        let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let payload = payload(&slices);
        let bytes = u32::try_from(payload.len()).expect("small");
        let committed = partition_records(&tp, &payload, 0, bytes, 0, &[(7, 0)]).expect("valid");
        assert_eq!(
            values(&committed.records),
            vec![(2, "c2".into()), (3, "c3".into()), (4, "plain".into()), (7, "n7".into())]
        );
        assert_eq!(committed.next_offset, 8);
        // read_uncommitted (no aborted list): everything but the markers.
        let everything = partition_records(&tp, &payload, 0, bytes, 0, &[]).expect("valid");
        assert_eq!(everything.records.len(), 6);
        // Fetched from the middle of the aborted transaction: still skipped.
        let middle = partition_records(&tp, &payload, 0, bytes, 1, &[(7, 0)]).expect("valid");
        assert_eq!(values(&middle.records)[0], (2, "c2".into()));
    }
}
