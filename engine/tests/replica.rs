//! A follower's log: batches keep their leader's offsets and epochs, and
//! the replica-fetch wait fires on appends.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use futures::FutureExt;
use spate_engine::io::SimStorage;
use spate_engine::{LogConfig, LogError, ReadBound};

fn replicated(config: &LogConfig) -> LogConfig {
    LogConfig { high_watermark_follows_acks: false, ..config.clone() }
}

#[test]
fn a_follower_keeps_the_leaders_offsets_epochs_and_bytes() {
    run(async {
        let leader_disk = SimStorage::new();
        let follower_disk = SimStorage::new();
        let leader = open(&leader_disk, &small_config()).await;
        leader.append_durable(batch("a", 3, 1000), 1).await.unwrap();
        leader.append_durable(batch("b", 2, 1001), 4).await.unwrap();
        let config = replicated(&small_config());
        let follower = open(&follower_disk, &config).await;
        let read = leader.read(0, 1 << 20, ReadBound::LogEnd).await.unwrap();
        for bytes in &read.batches {
            follower.append_replica(BytesMut::from(&bytes[..])).unwrap().durable().await.unwrap();
        }
        assert_eq!(follower.log_end_offset(), 5);
        let epochs: Vec<_> = follower.leader_epochs().entries().iter().map(|e| (e.epoch, e.start_offset)).collect();
        assert_eq!(epochs, vec![(1, 0), (4, 3)]);
        // Not visible to consumers until the leader's high watermark says so.
        assert_eq!(follower.high_watermark(), 0);
        follower.set_high_watermark(5);
        let copy = follower.read(0, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(copy.batches, read.batches, "byte for byte the leader's batches");
        // A batch below the log end is refused and changes nothing.
        let again = BytesMut::from(&read.batches[1][..]);
        assert!(matches!(follower.append_replica(again), Err(LogError::ReplicaOffset { base_offset: 3, .. })));
        assert_eq!(follower.log_end_offset(), 5);
        follower.close().await.unwrap();
        // Recovery keeps the epochs.
        let follower = open(&follower_disk, &config).await;
        assert_eq!(follower.leader_epochs().latest_epoch(), Some(4));
    });
}

#[test]
fn a_corrupt_replicated_batch_is_refused() {
    run(async {
        let storage = SimStorage::new();
        let follower = open(&storage, &replicated(&small_config())).await;
        let mut bytes = BytesMut::from(&batch("a", 2, 0)[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert!(matches!(follower.append_replica(bytes), Err(LogError::InvalidBatch(_))));
        assert_eq!(follower.log_end_offset(), 0);
    });
}

#[test]
fn log_end_above_waits_for_an_append_and_the_ack_offset_follows_the_disk() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &replicated(&small_config())).await;
        let mut wait = Box::pin(log.log_end_above(0));
        assert!((&mut wait).now_or_never().is_none(), "nothing appended yet");
        let ticket = log.append(batch("a", 2, 0), 0).unwrap();
        assert_eq!((&mut wait).now_or_never(), Some(2));
        ticket.durable().await.unwrap();
        assert_eq!(log.ack_offset(), 2);
        // With the high watermark owned by replication, acks do not move it.
        assert_eq!(log.high_watermark(), 0);
    });
}

#[test]
fn a_reset_follower_starts_empty_at_the_leaders_log_start_and_stays_there_after_a_restart() {
    run(async {
        let storage = SimStorage::new();
        let config = replicated(&small_config());
        let follower = open(&storage, &config).await;
        for tag in ["a", "b"] {
            let mut bytes = batch(tag, 2, 0);
            let base = follower.log_end_offset();
            spate_engine::batch::set_base_offset(&mut bytes, base).unwrap();
            spate_engine::batch::set_partition_leader_epoch(&mut bytes, 1).unwrap();
            follower.append_replica(bytes).unwrap().durable().await.unwrap();
        }
        assert_eq!(follower.log_end_offset(), 4);
        // Only forward.
        assert!(matches!(follower.reset_to(3).await, Err(LogError::ReplicaOffset { .. })));
        follower.reset_to(100).await.unwrap();
        assert_eq!(
            (follower.log_start_offset(), follower.log_end_offset(), follower.high_watermark()),
            (100, 100, 100)
        );
        assert!(follower.leader_epochs().entries().is_empty());
        assert!(matches!(follower.read(2, 1 << 20, ReadBound::LogEnd).await, Err(LogError::OffsetOutOfRange { .. })));
        // The leader's next batch lands at its own offset.
        let mut bytes = batch("c", 3, 0);
        spate_engine::batch::set_base_offset(&mut bytes, 100).unwrap();
        spate_engine::batch::set_partition_leader_epoch(&mut bytes, 5).unwrap();
        follower.append_replica(bytes).unwrap().durable().await.unwrap();
        follower.set_high_watermark(103);
        assert_eq!(records(&follower.read(100, 1 << 20, ReadBound::HighWatermark).await.unwrap().batches)[0].0, 100);
        follower.close().await.unwrap();
        let follower = open(&storage, &config).await;
        assert_eq!((follower.log_start_offset(), follower.log_end_offset()), (100, 103));
        let epochs: Vec<_> = follower.leader_epochs().entries().iter().map(|e| (e.epoch, e.start_offset)).collect();
        assert_eq!(epochs, vec![(5, 100)]);
    });
}

#[test]
fn a_reset_of_a_log_never_written_survives_a_crash() {
    run(async {
        let storage = SimStorage::new();
        let config = replicated(&small_config());
        let follower = open(&storage, &config).await;
        follower.reset_to(42).await.unwrap();
        // No close: the restart is a crash's.
        drop(follower);
        let follower = open(&storage, &config).await;
        assert_eq!((follower.log_start_offset(), follower.log_end_offset()), (42, 42));
    });
}

/// A follower's log of `batches` batches of `records` records each, at
/// leader epoch 1.
async fn replica_of(
    storage: &SimStorage,
    config: &LogConfig,
    batches: usize,
    records: usize,
) -> spate_engine::PartitionLog<SimStorage> {
    let follower = open(storage, config).await;
    for index in 0..batches {
        let mut bytes = batch(&format!("b{index}"), records, 0);
        let base = follower.log_end_offset();
        spate_engine::batch::set_base_offset(&mut bytes, base).unwrap();
        spate_engine::batch::set_partition_leader_epoch(&mut bytes, 1).unwrap();
        follower.append_replica(bytes).unwrap().durable().await.unwrap();
    }
    follower.set_high_watermark(follower.log_end_offset());
    follower
}

#[test]
fn truncating_into_the_batch_that_holds_a_moved_log_start_leaves_the_log_empty_at_its_start() {
    run(async {
        let storage = SimStorage::new();
        let config = replicated(&small_config());
        // Batches 0..=1 and 2..=3; DeleteRecords moved the start to 3.
        let follower = replica_of(&storage, &config, 2, 2).await;
        assert_eq!(follower.advance_log_start(3).await.unwrap(), 3);
        // A leader change cuts at 3: whole batches go, so 2..=3 does, and
        // with it the log start's record. It used to panic ("log start
        // above high watermark").
        assert_eq!(follower.truncate_to(3).await.unwrap(), 3);
        let offsets = (follower.log_start_offset(), follower.log_end_offset(), follower.high_watermark());
        assert_eq!(offsets, (3, 3, 3), "empty at its start");
        assert!(matches!(follower.read(0, 1 << 20, ReadBound::LogEnd).await, Err(LogError::OffsetOutOfRange { .. })));
        follower.close().await.unwrap();
        let follower = open(&storage, &config).await;
        assert_eq!((follower.log_start_offset(), follower.log_end_offset()), (3, 3), "and after a restart");

        // The same through reset_to (a log start inside the last batch).
        let storage = SimStorage::new();
        let follower = replica_of(&storage, &config, 1, 2).await;
        follower.advance_log_start(1).await.unwrap();
        follower.reset_to(7).await.unwrap();
        assert_eq!((follower.log_start_offset(), follower.log_end_offset()), (7, 7));
    });
}

#[test]
fn an_empty_follower_at_a_log_start_inside_a_batch_takes_that_batch_whole() {
    run(async {
        let storage = SimStorage::new();
        let config = replicated(&small_config());
        let follower = open(&storage, &config).await;
        // The leader's start is 6, inside its batch 5..=8: the follower
        // reset there and is sent the batch from 5.
        follower.reset_to(6).await.unwrap();
        let mut straddling = batch("leader", 4, 0);
        spate_engine::batch::set_base_offset(&mut straddling, 5).unwrap();
        spate_engine::batch::set_partition_leader_epoch(&mut straddling, 3).unwrap();
        let refused = follower.append_replica(straddling.clone());
        assert!(matches!(refused, Err(LogError::ReplicaOffset { base_offset: 5, log_end_offset: 6 })));
        // Only a batch that holds the log end, and only into an empty log.
        assert!(matches!(follower.restart_at_batch(2, 4).await, Err(LogError::ReplicaOffset { .. })));
        follower.restart_at_batch(5, 8).await.unwrap();
        follower.append_replica(straddling).unwrap().durable().await.unwrap();
        follower.set_high_watermark(9);
        assert_eq!(follower.advance_log_start(6).await.unwrap(), 6, "the fetcher follows the leader's start");
        let read = follower.read(6, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(records(&read.batches).iter().map(|r| r.0).collect::<Vec<_>>(), [5, 6, 7, 8]);
        assert!(matches!(follower.restart_at_batch(5, 9).await, Err(LogError::ReplicaOffset { .. })), "not empty");
        follower.close().await.unwrap();
        let follower = open(&storage, &config).await;
        assert_eq!((follower.log_start_offset(), follower.log_end_offset()), (6, 9));
    });
}
