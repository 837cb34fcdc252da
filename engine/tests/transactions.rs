//! Transactions in a partition log: markers (commit and abort) close a
//! producer's transaction and fence older epochs, the last stable offset
//! stops at the oldest undecided transaction, read_committed reads stop
//! there, and the aborted list and open transactions come back right after
//! a seal, a close, a crash, a truncation and retention.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use spate_engine::batch::{self, BatchBuilder};
use spate_engine::io::{CrashMode, SimStorage, Storage, TornSector};
use spate_engine::{AbortedTxn, LogConfig, LogError, PartitionLog, ReadBound, TxnMarker};

/// A transactional batch of `count` records from `producer_id`/`epoch` at
/// sequence `first_seq`, values `"{tag}-{i}"`.
fn txn_batch(producer_id: i64, epoch: i16, first_seq: i32, count: usize, tag: &str) -> BytesMut {
    let mut builder = BatchBuilder::new(0).producer(producer_id, epoch, first_seq).transactional();
    for i in 0..count {
        builder.push(0, Some(format!("k{i}").as_bytes()), Some(format!("{tag}-{i}").as_bytes()), &[]);
    }
    builder.build()
}

fn marker(producer_id: i64, producer_epoch: i16, commit: bool) -> TxnMarker {
    TxnMarker { producer_id, producer_epoch, commit, coordinator_epoch: 3 }
}

/// The high watermark moves only when a test moves it, as under
/// replication.
fn manual_hw_config() -> LogConfig {
    LogConfig { high_watermark_follows_acks: false, ..small_config() }
}

#[test]
fn a_marker_from_an_older_epoch_is_fenced_and_a_newer_epoch_becomes_the_producers() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(txn_batch(7, 2, 0, 2, "a"), 0).await.unwrap();
        let end = log.log_end_offset();
        let stale = log.append_marker(marker(7, 1, true), 0);
        assert!(
            matches!(stale, Err(LogError::InvalidProducerEpoch { producer_id: 7, epoch: 1, current_epoch: 2 })),
            "{stale:?}"
        );
        assert_eq!(log.log_end_offset(), end, "a fenced marker appends nothing");
        assert_eq!(log.ongoing_transactions(), vec![(7, 0)], "and leaves the transaction open");
        // KIP-890: the coordinator ends the transaction with the epoch + 1.
        log.append_marker(marker(7, 3, false), 0).unwrap().durable().await.unwrap();
        assert_eq!(log.producer_entry(7).unwrap().epoch, 3);
        assert!(log.ongoing_transactions().is_empty());
        // The old epoch's data is fenced now too.
        let zombie = log.append(txn_batch(7, 2, 2, 1, "z"), 0);
        assert!(matches!(zombie, Err(LogError::Sequence(_))), "{zombie:?}");
        // The new epoch starts its next transaction at sequence 0.
        log.append_durable(txn_batch(7, 3, 0, 1, "b"), 0).await.unwrap();
        assert_eq!(log.ongoing_transactions(), vec![(7, 3)]);
        log.close().await.unwrap();
    });
}

/// A transactional batch that names no producer (id -1) would open a
/// transaction that no marker can ever end, holding the last stable
/// offset back for good: it is refused, as Kafka refuses it. It was
/// appended before, as a plain batch.
#[test]
fn a_transactional_batch_without_a_producer_id_is_refused() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let refused = log.append(txn_batch(-1, -1, -1, 1, "orphan"), 0);
        assert!(matches!(refused, Err(LogError::Sequence(_))), "{refused:?}");
        assert_eq!(log.log_end_offset(), 0, "nothing appended");
        assert_eq!(log.last_stable_offset(), log.high_watermark());
        log.close().await.unwrap();
    });
}

#[test]
fn the_last_stable_offset_stops_at_an_open_transaction_until_its_marker_is_below_the_high_watermark() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &manual_hw_config()).await;
        log.append_durable(batch("plain", 2, 0), 0).await.unwrap(); // 0-1
        log.append_durable(txn_batch(5, 0, 0, 3, "t"), 0).await.unwrap(); // 2-4
        log.append_durable(batch("after", 2, 0), 0).await.unwrap(); // 5-6
        log.set_high_watermark(7);
        assert_eq!(log.high_watermark(), 7);
        assert_eq!(log.last_stable_offset(), 2, "the open transaction holds it at its first offset");
        let marker_offset = log.append_marker(marker(5, 0, true), 0).unwrap().durable().await.unwrap().base_offset;
        assert_eq!(marker_offset, 7);
        assert_eq!(log.last_stable_offset(), 2, "the marker is not below the high watermark yet");
        log.set_high_watermark(8);
        assert_eq!(log.last_stable_offset(), 8, "decided and visible: the high watermark");
        log.close().await.unwrap();
    });
}

#[test]
fn a_read_committed_read_stops_at_the_last_stable_offset_and_its_long_poll_waits_for_it() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(batch("plain", 2, 0), 0).await.unwrap(); // 0-1
        log.append_durable(txn_batch(5, 0, 0, 2, "t"), 0).await.unwrap(); // 2-3
        log.append_durable(batch("more", 2, 0), 0).await.unwrap(); // 4-5
        let committed = log.read(0, 1 << 20, ReadBound::LastStable).await.unwrap();
        assert_eq!(committed.last_stable_offset, 2);
        assert_eq!(committed.high_watermark, 6);
        assert_eq!(records(&committed.batches).iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1]);
        let uncommitted = log.read(0, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(uncommitted.last_stable_offset, 2, "every read reports the last stable offset");
        assert_eq!(records(&uncommitted.batches).len(), 6);
        assert!(log.read(2, 1 << 20, ReadBound::LastStable).await.unwrap().batches.is_empty());
        // A read_committed long poll at 2 waits past the high watermark's moves.
        let poll = log.last_stable_above(2);
        let poller = glommio::spawn_local(poll);
        log.append_durable(batch("still", 1, 0), 0).await.unwrap();
        log.append_marker(marker(5, 0, true), 0).unwrap().durable().await.unwrap();
        assert_eq!(poller.await, 8);
        let committed = log.read(2, 1 << 20, ReadBound::LastStable).await.unwrap();
        assert_eq!(committed.last_stable_offset, 8);
        let offsets: Vec<i64> = records(&committed.batches).iter().map(|r| r.0).collect();
        assert_eq!(offsets, vec![2, 3, 4, 5, 6, 7], "data and the marker's record");
        log.close().await.unwrap();
    });
}

#[test]
fn aborted_transactions_are_listed_by_first_offset_for_the_range_they_touch() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(txn_batch(1, 0, 0, 2, "a"), 0).await.unwrap(); // 0-1
        log.append_durable(txn_batch(2, 0, 0, 2, "b"), 0).await.unwrap(); // 2-3
        log.append_durable(txn_batch(3, 0, 0, 1, "c"), 0).await.unwrap(); // 4
        log.append_durable(txn_batch(1, 0, 2, 1, "a"), 0).await.unwrap(); // 5
        log.append_marker(marker(2, 0, false), 0).unwrap().durable().await.unwrap(); // 6
        log.append_marker(marker(3, 0, true), 0).unwrap().durable().await.unwrap(); // 7
        log.append_marker(marker(1, 0, false), 0).unwrap().durable().await.unwrap(); // 8
        let b = AbortedTxn { producer_id: 2, first_offset: 2, last_offset: 6, last_stable_offset: 0 };
        let a = AbortedTxn { producer_id: 1, first_offset: 0, last_offset: 8, last_stable_offset: 9 };
        assert_eq!(log.aborted_transactions(0, 9).await.unwrap(), vec![a, b], "ordered by first offset");
        assert_eq!(log.aborted_transactions(7, 9).await.unwrap(), vec![a], "b ended before 7");
        assert_eq!(log.aborted_transactions(0, 2).await.unwrap(), vec![a], "b starts at 2");
        assert_eq!(log.aborted_transactions(9, 20).await.unwrap(), vec![]);
        assert!(log.ongoing_transactions().is_empty());
        assert_eq!(log.last_stable_offset(), 9);
        log.close().await.unwrap();
    });
}

#[test]
fn a_marker_for_a_producer_without_an_open_transaction_is_written_and_harmless() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(txn_batch(4, 0, 0, 1, "t"), 0).await.unwrap();
        log.append_marker(marker(4, 0, false), 0).unwrap().durable().await.unwrap();
        // A coordinator resends the marker after a failover, and one comes
        // for a producer this partition never saw.
        let resent = log.append_marker(marker(4, 0, false), 0).unwrap().durable().await.unwrap();
        let unknown = log.append_marker(marker(99, 0, true), 0).unwrap().durable().await.unwrap();
        assert_eq!((resent.base_offset, unknown.base_offset), (2, 3), "both are written");
        assert_eq!(log.aborted_transactions(0, 10).await.unwrap().len(), 1, "but add no aborted entry");
        assert_eq!(log.last_stable_offset(), 4);
        let stored = log.read(2, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        let parsed: Vec<_> = stored.batches.iter().map(|b| batch::parse_control_batch(b).unwrap()).collect();
        assert_eq!(parsed.iter().map(|m| m.commit).collect::<Vec<_>>(), vec![false, true]);
        assert_eq!(parsed[0].coordinator_epoch, 3);
        log.close().await.unwrap();
    });
}

#[test]
fn a_follower_learns_transactions_and_markers_from_its_leaders_batches() {
    run(async {
        let leader_storage = SimStorage::new();
        let leader = open(&leader_storage, &small_config()).await;
        leader.append_durable(txn_batch(1, 0, 0, 2, "a"), 0).await.unwrap();
        leader.append_durable(txn_batch(2, 0, 0, 2, "b"), 0).await.unwrap();
        leader.append_marker(marker(1, 0, false), 0).unwrap().durable().await.unwrap();
        let follower_storage = SimStorage::new();
        let follower =
            open(&follower_storage, &LogConfig { high_watermark_follows_acks: false, ..small_config() }).await;
        let output = leader.read(0, 1 << 20, ReadBound::LogEnd).await.unwrap();
        for bytes in output.batches {
            follower.append_replica(BytesMut::from(&bytes[..])).unwrap().durable().await.unwrap();
        }
        assert_eq!(follower.ongoing_transactions(), leader.ongoing_transactions());
        assert_eq!(
            follower.aborted_transactions(0, 100).await.unwrap(),
            leader.aborted_transactions(0, 100).await.unwrap()
        );
        assert_eq!(follower.last_stable_offset(), 0, "its high watermark has not moved");
        follower.set_high_watermark(5);
        assert_eq!(follower.last_stable_offset(), leader.last_stable_offset());
        assert_eq!(follower.last_stable_offset(), 2);
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

/// Small segments: a few batches of 1 KiB values roll.
fn rolling_config() -> LogConfig {
    LogConfig { segment_bytes_max: 4096, index_interval_bytes: 512, ..small_config() }
}

/// A transactional batch of one record with a 1 KiB value.
fn big_txn_batch(producer_id: i64, epoch: i16, seq: i32) -> BytesMut {
    let mut builder = BatchBuilder::new(0).producer(producer_id, epoch, seq).transactional();
    builder.push(0, Some(b"k"), Some(&[b'x'; 1024]), &[]);
    builder.build()
}

/// Four producers over several segments: producer 0 commits one
/// transaction and leaves its next one open, producers 1, 2 and 3 abort
/// theirs. Answers the aborted list.
async fn aborted_workload(log: &PartitionLog<SimStorage>) -> Vec<AbortedTxn> {
    let mut seq = [0i32; 4];
    for round in 0..12 {
        let producer = round % 4;
        log.append_durable(big_txn_batch(producer as i64, 0, seq[producer]), 0).await.unwrap();
        seq[producer] += 1;
        if round % 5 == 4 {
            log.append_marker(marker(producer as i64, 0, round != 9), 0).unwrap().durable().await.unwrap();
        }
    }
    log.append_marker(marker(2, 0, false), 0).unwrap().durable().await.unwrap();
    log.append_marker(marker(3, 0, false), 0).unwrap().durable().await.unwrap();
    log.aborted_transactions(0, i64::MAX).await.unwrap()
}

#[test]
fn aborted_transactions_and_open_ones_survive_seals_and_a_close() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &rolling_config()).await;
        let aborted = aborted_workload(&log).await;
        assert_eq!(aborted.len(), 3, "{aborted:?}");
        let ongoing = log.ongoing_transactions();
        assert_eq!(ongoing.len(), 1, "{ongoing:?}");
        assert!(log.segment_count() > 3);
        log.close().await.unwrap();
        // Every segment has its .txnindex: 34-byte entries for the aborts
        // whose marker it holds.
        let index_bytes: usize = storage
            .paths()
            .iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "txnindex"))
            .map(|path| storage.contents(path).unwrap().len())
            .sum();
        assert_eq!(index_bytes, 3 * 34);
        let log = open(&storage, &rolling_config()).await;
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), aborted);
        assert_eq!(log.ongoing_transactions(), ongoing);
        assert_eq!(log.last_stable_offset(), ongoing[0].1);
        log.close().await.unwrap();
    });
}

#[test]
fn aborted_transactions_of_sealed_segments_are_read_from_their_indexes_not_held_in_memory() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &rolling_config()).await;
        // Producer 100 opens a transaction first and aborts it last: every
        // abort in between keeps the last stable offset at its first batch.
        log.append_durable(big_txn_batch(100, 0, 0), 0).await.unwrap();
        let long_first = 0;
        // A client aborting in a loop, over many segments.
        for producer in 1..=40i64 {
            log.append_durable(big_txn_batch(producer, 0, 0), 0).await.unwrap();
            log.append_marker(marker(producer, 0, false), 0).unwrap().durable().await.unwrap();
        }
        log.append_marker(marker(100, 0, false), 0).unwrap().durable().await.unwrap();
        let long_last = log.log_end_offset() - 1;
        assert!(log.segment_count() > 8, "{} segments", log.segment_count());
        let all = log.aborted_transactions(0, i64::MAX).await.unwrap();
        assert_eq!(all.len(), 41, "{all:?}");
        // Only the unsealed segments' entries stay in memory (a 4 KiB
        // segment holds at most two of these aborts).
        let resident = log.aborted_transactions_resident();
        assert!(resident <= 4, "{resident} aborted transactions held in memory");
        // A fetch of the long transaction's first batch finds its abort,
        // whose marker is many sealed segments later.
        let first_fetch = log.aborted_transactions(long_first, long_first + 1).await.unwrap();
        assert_eq!(
            first_fetch,
            vec![AbortedTxn {
                producer_id: 100,
                first_offset: 0,
                last_offset: long_last,
                last_stable_offset: long_last + 1
            }]
        );
        // A fetch in the middle: the short transaction there and the long one.
        let mid = all.iter().find(|txn| txn.producer_id == 20).copied().unwrap();
        let mid_fetch = log.aborted_transactions(mid.first_offset, mid.last_offset + 1).await.unwrap();
        assert_eq!(mid_fetch.iter().map(|txn| txn.producer_id).collect::<Vec<_>>(), vec![100, 20]);
        // The same after a restart.
        log.close().await.unwrap();
        let log = open(&storage, &rolling_config()).await;
        assert!(log.aborted_transactions_resident() <= 4);
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), all);
        assert_eq!(log.aborted_transactions(long_first, long_first + 1).await.unwrap(), first_fetch);
        // A truncation into a sealed segment keeps what is below the cut
        // (its entries come back into memory with the cut segment).
        let cut = mid.last_offset + 1;
        assert_eq!(log.truncate_to(cut).await.unwrap(), cut);
        let below: Vec<AbortedTxn> = all.iter().filter(|txn| txn.last_offset < cut).copied().collect();
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), below);
        assert_eq!(log.ongoing_transactions(), vec![(100, long_first)], "its abort was cut away");
        log.close().await.unwrap();
        let log = open(&storage, &rolling_config()).await;
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), below);
        log.close().await.unwrap();
    });
}

#[test]
fn a_damaged_or_missing_txnindex_is_rebuilt_from_the_log() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &rolling_config()).await;
        let aborted = aborted_workload(&log).await;
        log.close().await.unwrap();
        let is_txn_index = |path: &std::path::PathBuf| path.extension().is_some_and(|ext| ext == "txnindex");
        let indexes: Vec<_> = storage.paths().into_iter().filter(is_txn_index).collect();
        let (full, empty): (Vec<_>, Vec<_>) =
            indexes.into_iter().partition(|path| !storage.contents(path).unwrap().is_empty());
        assert!(!full.is_empty() && !empty.is_empty(), "{full:?} {empty:?}");
        // One damaged (its version field), one gone.
        assert!(storage.flip_bit(&full[0], 1, 0));
        storage.remove(&empty[0]).await.unwrap();
        let log = open(&storage, &rolling_config()).await;
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), aborted);
        log.close().await.unwrap();
    });
}

#[test]
fn truncating_away_an_abort_marker_reopens_its_transaction_and_drops_its_entry() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &rolling_config()).await;
        log.append_durable(big_txn_batch(1, 0, 0), 0).await.unwrap(); // 0
        log.append_durable(big_txn_batch(2, 0, 0), 0).await.unwrap(); // 1
        log.append_marker(marker(2, 0, false), 0).unwrap().durable().await.unwrap(); // 2
        log.append_durable(big_txn_batch(1, 0, 1), 0).await.unwrap(); // 3
        log.append_marker(marker(1, 0, false), 0).unwrap().durable().await.unwrap(); // 4
        log.append_durable(big_txn_batch(3, 0, 0), 0).await.unwrap(); // 5
        log.append_marker(marker(3, 0, true), 0).unwrap().durable().await.unwrap(); // 6
        assert_eq!(log.aborted_transactions(0, 10).await.unwrap().len(), 2);
        assert_eq!(log.last_stable_offset(), 7);
        assert_eq!(log.truncate_to(4).await.unwrap(), 4);
        assert_eq!(
            log.aborted_transactions(0, 10).await.unwrap(),
            vec![AbortedTxn { producer_id: 2, first_offset: 1, last_offset: 2, last_stable_offset: 0 }]
        );
        assert_eq!(log.ongoing_transactions(), vec![(1, 0)], "its marker was cut: open again");
        assert_eq!(log.last_stable_offset(), 0);
        // And so after a restart, which reads the index and snapshot the
        // truncation wrote.
        log.close().await.unwrap();
        let log = open(&storage, &rolling_config()).await;
        assert_eq!(log.ongoing_transactions(), vec![(1, 0)]);
        assert_eq!(log.aborted_transactions(0, 10).await.unwrap().len(), 1);
        log.append_marker(marker(1, 0, true), 0).unwrap().durable().await.unwrap();
        assert_eq!(log.last_stable_offset(), 5);
        log.close().await.unwrap();
    });
}

#[test]
fn retention_drops_aborted_entries_below_the_log_start_with_their_txnindex_files() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { retention_bytes: Some(6 * 1024), ..rolling_config() };
        let log = open(&storage, &config).await;
        for round in 0..12 {
            let producer = 10 + round;
            log.append_durable(big_txn_batch(producer, 0, 0), 0).await.unwrap();
            log.append_marker(marker(producer, 0, false), 0).unwrap().durable().await.unwrap();
        }
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap().len(), 12);
        let outcome = log.enforce_retention(0).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        let start = log.log_start_offset();
        let kept = log.aborted_transactions(0, i64::MAX).await.unwrap();
        assert!(kept.iter().all(|txn| txn.last_offset >= start), "{kept:?} from {start}");
        assert_eq!(kept.len(), (12 - start / 2) as usize, "one per marker at or above the start");
        let indexes = storage.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "txnindex")).count();
        assert_eq!(indexes, log.segment_count() - 1, "a .txnindex per sealed segment, none for the deleted ones");
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), kept);
        log.close().await.unwrap();
    });
}

#[test]
fn a_power_loss_after_every_step_keeps_the_aborted_list_and_open_transactions() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &rolling_config()).await;
        let mut expected = Vec::new();
        for step in 0..14i64 {
            let producer = step % 3;
            log.append_durable(big_txn_batch(producer, 0, (step / 3) as i32), 0).await.unwrap();
            if step % 2 == 1 {
                log.append_marker(marker(producer, 0, step % 4 == 1), 0).unwrap().durable().await.unwrap();
            }
            expected.push((log.aborted_transactions(0, i64::MAX).await.unwrap(), log.ongoing_transactions()));
            // Acknowledged under durability `always`: a power loss now
            // keeps all of it.
            let crashed = storage.power_loss(CrashMode::DropUnsynced, TornSector::Zeros);
            let reopened = open(&crashed, &rolling_config()).await;
            assert_eq!(
                reopened.aborted_transactions(0, i64::MAX).await.unwrap(),
                expected.last().unwrap().0,
                "step {step}"
            );
            assert_eq!(reopened.ongoing_transactions(), expected.last().unwrap().1, "step {step}");
            drop(reopened);
        }
        log.close().await.unwrap();
    });
}

/// One record `key` = `value` (1 KiB of padding after it, so that segments
/// roll), transactional if `producer` is given.
fn keyed(producer: Option<(i64, i32)>, key: &str, value: &str) -> BytesMut {
    let mut builder = BatchBuilder::new(0);
    if let Some((producer_id, seq)) = producer {
        builder = builder.producer(producer_id, 0, seq).transactional();
    }
    let mut padded = value.as_bytes().to_vec();
    padded.extend_from_slice(&[b' '; 1024]);
    builder.push(0, Some(key.as_bytes()), Some(&padded), &[]);
    builder.build()
}

/// Every batch from the log start up to `bound`, in order.
async fn all_batches(log: &PartitionLog<SimStorage>, bound: ReadBound) -> Vec<bytes::Bytes> {
    let mut batches = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let output = log.read(offset, 1 << 20, bound).await.unwrap();
        let Some(last) = output.batches.last() else { return batches };
        offset = batch::validate_stored(last, usize::MAX).unwrap().last_offset() + 1;
        batches.extend(output.batches);
    }
}

/// (key, value without padding) of each record of a data batch.
fn keyed_records(bytes: &[u8]) -> Vec<(String, String)> {
    let records = batch::records(bytes).unwrap().map(|record| {
        let record = record.unwrap();
        let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
        let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
        (key, value.trim_end().to_owned())
    });
    records.collect()
}

/// (key, value without padding) of every data record, and the number of
/// control batches, from the log start to the high watermark.
async fn compacted_view(log: &PartitionLog<SimStorage>) -> (Vec<(String, String)>, usize) {
    let (mut data, mut markers) = (Vec::new(), 0);
    for bytes in all_batches(log, ReadBound::HighWatermark).await {
        if batch::peek_header(&bytes).unwrap().attributes().is_control() {
            markers += 1;
        } else {
            data.extend(keyed_records(&bytes));
        }
    }
    (data, markers)
}

#[test]
fn compaction_removes_aborted_records_keeps_committed_ones_and_markers_and_stops_at_the_last_stable_offset() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig {
            cleanup_policy: spate_engine::CleanupPolicy::Compact,
            min_cleanable_dirty_ratio: 0.0,
            clean_bytes_per_sec: u64::MAX,
            ..rolling_config()
        };
        let log = open(&storage, &config).await;
        let append = |batch: BytesMut| {
            let log = log.clone();
            async move { log.append_durable(batch, 0).await.unwrap() }
        };
        append(keyed(None, "a", "a1")).await;
        append(keyed(Some((1, 0)), "a", "a-aborted")).await;
        append(keyed(Some((2, 0)), "c", "c1")).await;
        append(keyed(Some((1, 1)), "b", "b-aborted")).await;
        log.append_marker(marker(1, 0, false), 0).unwrap().durable().await.unwrap();
        log.append_marker(marker(2, 0, true), 0).unwrap().durable().await.unwrap();
        append(keyed(None, "d", "d1")).await;
        for i in 0..3 {
            append(keyed(None, "e", &format!("e{i}"))).await;
        }
        // An open transaction, in a later segment that gets sealed.
        let open_at = append(keyed(Some((3, 0)), "a", "a-open")).await.base_offset;
        for i in 0..8 {
            append(keyed(None, "f", &format!("f{i}"))).await;
        }
        assert_eq!(log.last_stable_offset(), open_at);
        log.clean(0).await.unwrap();
        let (data, markers) = compacted_view(&log).await;
        let has = |key: &str, value: &str| data.iter().any(|(k, v)| k == key && v == value);
        assert!(has("a", "a1"), "an aborted record never shadows a committed one: {data:?}");
        assert!(!has("a", "a-aborted") && !has("b", "b-aborted"), "aborted records go: {data:?}");
        assert!(has("c", "c1") && has("d", "d1"));
        assert_eq!(markers, 2, "markers stay");
        assert!(has("a", "a-open"), "nothing at or above the last stable offset is cleaned");
        assert_eq!(data.iter().filter(|(k, _)| k == "f").count(), 8, "f's records are above it too");
        // Once the transaction commits, a later pass may clean past it.
        log.append_marker(marker(3, 0, true), 0).unwrap().durable().await.unwrap();
        for i in 8..12 {
            append(keyed(None, "f", &format!("f{i}"))).await;
        }
        log.clean(0).await.unwrap();
        let (data, markers) = compacted_view(&log).await;
        assert!(!data.iter().any(|(k, v)| k == "a" && v == "a1"), "superseded by the committed a-open: {data:?}");
        assert!(data.iter().any(|(k, v)| k == "a" && v == "a-open"));
        assert!(data.iter().filter(|(k, _)| k == "f").count() < 12, "f cleaned now: {data:?}");
        assert_eq!(markers, 3);
        log.close().await.unwrap();
    });
}

/// Without the truncation carrying over the not-yet-stable commits (and
/// writing its snapshot), the transaction stayed closed: the replay after
/// the cut starts above its first batch.
#[test]
fn a_cut_commit_marker_reopens_a_transaction_that_began_below_the_log_start() {
    run(async {
        let storage = SimStorage::new();
        // One 3 KiB batch per segment, so that seals leave snapshots behind
        // and the log start can pass a whole segment.
        let config = LogConfig { high_watermark_follows_acks: false, ..rolling_config() };
        let log = open(&storage, &config).await;
        let fat = |producer: Option<(i64, i32)>| {
            let mut builder = BatchBuilder::new(0);
            if let Some((producer_id, seq)) = producer {
                builder = builder.producer(producer_id, 0, seq).transactional();
            }
            builder.push(0, None, Some(&[b'x'; 3000]), &[]);
            builder.build()
        };
        log.append_durable(fat(Some((1, 0))), 0).await.unwrap(); // 0, its own segment
        for _ in 1..5 {
            log.append_durable(fat(None), 0).await.unwrap(); // 1..=4
        }
        log.set_high_watermark(5);
        assert_eq!(log.advance_log_start(1).await.unwrap(), 1, "the transaction's first batch is gone");
        assert_eq!(log.last_stable_offset(), 1, "held at the log start, Kafka's rule");
        log.append_marker(marker(1, 0, true), 0).unwrap().durable().await.unwrap(); // 5
        assert!(log.ongoing_transactions().is_empty());
        // The cut takes the commit marker, not yet below the high watermark,
        // and the snapshots above it: no replay can see offset 0.
        assert_eq!(log.truncate_to(2).await.unwrap(), 2);
        assert_eq!(log.ongoing_transactions(), vec![(1, 0)], "open again, from its first offset");
        assert_eq!(log.last_stable_offset(), 1);
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(log.ongoing_transactions(), vec![(1, 0)], "and after a restart (the truncation's snapshot)");
        log.close().await.unwrap();
    });
}

/// Markers of transactions whose data compaction removed: the commit of
/// a superseded value and the abort of removed records. Before a pass
/// after their delete horizon they stay; after it they go, and the abort's
/// `.txnindex` entry with it (left, it would make a read_committed
/// consumer skip the producer's later, committed batches, waiting for an
/// abort marker that is gone).
async fn marker_workload(log: &PartitionLog<SimStorage>) {
    let append = |batch: BytesMut| {
        let log = log.clone();
        async move { log.append_durable(batch, 0).await.unwrap() }
    };
    append(keyed(None, "a", "a1")).await;
    append(keyed(Some((1, 0)), "a", "a-aborted")).await;
    log.append_marker(marker(1, 0, false), 0).unwrap().durable().await.unwrap();
    append(keyed(Some((2, 0)), "b", "b1")).await;
    log.append_marker(marker(2, 0, true), 0).unwrap().durable().await.unwrap();
    append(keyed(Some((2, 1)), "b", "b2")).await;
    log.append_marker(marker(2, 0, true), 0).unwrap().durable().await.unwrap();
    // The same producer commits again after its abort.
    append(keyed(Some((1, 1)), "c", "c1")).await;
    log.append_marker(marker(1, 0, true), 0).unwrap().durable().await.unwrap();
    for i in 0..10 {
        append(keyed(None, "f", &format!("f{i}"))).await;
    }
}

fn marker_config() -> LogConfig {
    LogConfig {
        cleanup_policy: spate_engine::CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        clean_bytes_per_sec: u64::MAX,
        delete_retention_ms: 1000,
        ..rolling_config()
    }
}

/// What a read_committed consumer sees, as the Java consumer filters: the
/// data records of (key, value), dropping a transactional batch of a
/// producer listed as aborted from the entry's first offset until that
/// producer's abort marker.
async fn read_committed_view(log: &PartitionLog<SimStorage>) -> Vec<(String, String)> {
    let mut pending = log.aborted_transactions(0, i64::MAX).await.unwrap();
    let mut out = Vec::new();
    let mut skipping: Vec<i64> = Vec::new();
    for bytes in all_batches(log, ReadBound::LastStable).await {
        let info = batch::validate_stored(&bytes, usize::MAX).unwrap();
        let header = batch::peek_header(&bytes).unwrap();
        pending.retain(|txn| {
            let reached = txn.first_offset <= info.last_offset();
            if reached {
                skipping.push(txn.producer_id);
            }
            !reached
        });
        let producer_id = header.producer_id.get();
        if header.attributes().is_control() {
            if !batch::parse_control_batch(&bytes).unwrap().commit {
                skipping.retain(|&p| p != producer_id);
            }
        } else if !(header.attributes().is_transactional() && skipping.contains(&producer_id)) {
            out.extend(keyed_records(&bytes));
        }
    }
    out
}

#[test]
fn compaction_removes_a_marker_whose_data_is_gone_after_its_delete_horizon_with_its_txnindex_entry() {
    run(async {
        let storage = SimStorage::new();
        let config = marker_config();
        let log = open(&storage, &config).await;
        marker_workload(&log).await;
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap().len(), 1);
        let expected = read_committed_view(&log).await;
        assert!(expected.contains(&("c".into(), "c1".into())), "{expected:?}");

        log.clean(0).await.unwrap();
        let (data, markers) = compacted_view(&log).await;
        assert!(!data.iter().any(|(_, v)| v == "a-aborted" || v == "b1"), "{data:?}");
        assert_eq!(markers, 4, "markers stay until their horizon");
        assert!(!log.needs_clean(999), "the horizon (1000) is not reached");
        assert!(log.needs_clean(1000), "a marker's passed horizon calls for a pass");

        log.clean(1000).await.unwrap();
        let (_, markers) = compacted_view(&log).await;
        assert_eq!(markers, 2, "the abort of a-aborted and the commit of b1 go; b2's and c1's stay");
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), vec![], "the abort's entry went with it");
        let view = read_committed_view(&log).await;
        assert!(view.contains(&("c".into(), "c1".into())), "producer 1's commit after its abort is read: {view:?}");
        let committed = |view: &[(String, String)]| -> Vec<(String, String)> {
            let mut latest: std::collections::BTreeMap<String, String> = Default::default();
            for (key, value) in view {
                latest.insert(key.clone(), value.clone());
            }
            latest.into_iter().collect()
        };
        assert_eq!(committed(&view), committed(&expected), "the latest committed value of each key");
        log.close().await.unwrap();

        // As found again at the next open.
        let log = open(&storage, &config).await;
        assert_eq!(log.aborted_transactions(0, i64::MAX).await.unwrap(), vec![]);
        assert_eq!(read_committed_view(&log).await, view);
        log.close().await.unwrap();
    });
}

#[test]
fn a_crash_at_every_step_of_a_pass_removing_markers_never_lists_an_abort_without_its_marker() {
    let config = marker_config();
    let (trace, start, end, after) = run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &config).await;
        marker_workload(&log).await;
        log.clean(0).await.unwrap();
        // Closed and opened again: the pass starts from a log with a
        // producer snapshot at its end, as a broker's after a restart.
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        let start = storage.trace_len();
        log.clean(1000).await.unwrap();
        let end = storage.trace_len();
        let after = read_committed_view(&log).await;
        log.close().await.unwrap();
        (storage.trace(), start, end, after)
    });
    let mut crash_points = 0;
    for cut in start..=end {
        let disk = SimStorage::replay(&trace[..cut]);
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepUnsynced, CrashMode::DropOldestUnsynced] {
            for power_loss in [false, true] {
                crash_points += 1;
                run(async {
                    let crashed =
                        if power_loss { disk.power_loss(mode, TornSector::Garbage) } else { disk.crash(mode) };
                    let log = open(&crashed, &config).await;
                    // Every aborted transaction listed still has its marker.
                    for txn in log.aborted_transactions(0, i64::MAX).await.unwrap() {
                        let output = log.read(txn.last_offset, 1 << 16, ReadBound::HighWatermark).await.unwrap();
                        let first = output.batches.first().expect("a batch at the marker");
                        let info = batch::validate_stored(first, usize::MAX).unwrap();
                        assert!(
                            info.base_offset == txn.last_offset
                                && batch::peek_header(first).unwrap().attributes().is_control(),
                            "op {cut} {mode:?} power loss {power_loss}: {txn:?} listed without its marker"
                        );
                    }
                    // And a pass from there reaches the same log.
                    log.clean(1000).await.unwrap();
                    assert_eq!(read_committed_view(&log).await, after, "op {cut} {mode:?}");
                    log.close().await.unwrap();
                });
            }
        }
    }
    assert!(crash_points > 20, "{crash_points} crash points");
}
