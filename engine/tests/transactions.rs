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
use spate_engine::io::SimStorage;
use spate_engine::{AbortedTxn, LogConfig, LogError, ReadBound, TxnMarker};

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
        assert_eq!(log.aborted_transactions(0, 9), vec![a, b], "ordered by first offset");
        assert_eq!(log.aborted_transactions(7, 9), vec![a], "b ended before 7");
        assert_eq!(log.aborted_transactions(0, 2), vec![a], "b starts at 2");
        assert_eq!(log.aborted_transactions(9, 20), vec![]);
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
        assert_eq!(log.aborted_transactions(0, 10).len(), 1, "but add no aborted entry");
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
        assert_eq!(follower.aborted_transactions(0, 100), leader.aborted_transactions(0, 100));
        assert_eq!(follower.last_stable_offset(), 0, "its high watermark has not moved");
        follower.set_high_watermark(5);
        assert_eq!(follower.last_stable_offset(), leader.last_stable_offset());
        assert_eq!(follower.last_stable_offset(), 2);
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}
