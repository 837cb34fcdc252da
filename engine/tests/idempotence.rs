//! The idempotent producer's state in a partition log: duplicates answered
//! with their original offsets, gaps and stale epochs refused, and the
//! state rebuilt from snapshots and the log after a clean close, a crash at
//! every point of a workload, a damaged snapshot and a truncation.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use spate_engine::batch::{self, BatchBuilder};
use spate_engine::io::{CrashMode, SimStorage, Storage, TornSector};
use spate_engine::producer_state::{ProducerStateTable, SequenceError};
use spate_engine::{LogConfig, LogError, PartitionLog, ReadBound};

/// A batch of `count` records from `producer_id`/`epoch` at `first_seq`.
fn idempotent_batch(producer_id: i64, epoch: i16, first_seq: i32, count: usize) -> BytesMut {
    let mut builder = BatchBuilder::new(0).producer(producer_id, epoch, first_seq);
    for i in 0..count {
        let value = format!("p{producer_id}-s{}", first_seq + i as i32);
        builder.push(0, None, Some(value.as_bytes()), &[]);
    }
    builder.build()
}

/// The state a fresh table reaches by recording every batch in the log.
async fn state_from_log<S: Storage>(log: &PartitionLog<S>) -> ProducerStateTable {
    let mut table = ProducerStateTable::default();
    let mut offset = log.log_start_offset();
    loop {
        let output = log.read(offset, 1 << 20, ReadBound::LogEnd).await.unwrap();
        if output.batches.is_empty() {
            return table;
        }
        for bytes in &output.batches {
            let info = batch::validate_stored(bytes, usize::MAX).unwrap();
            table.record(&info, spate_engine::producer_state::marker_of(&info, bytes));
            offset = info.last_offset() + 1;
        }
    }
}

/// Small segments, so that a few dozen batches roll several times.
fn rolling_config() -> LogConfig {
    LogConfig { segment_bytes_max: 4096, ..small_config() }
}

/// The producer ids the workload uses.
const PRODUCERS: [i64; 3] = [10, 11, 12];

/// Appends `rounds` batches round robin over `PRODUCERS`, 1-3 records each,
/// continuing each producer's sequence from `next_seq`.
async fn append_rounds<S: Storage>(log: &PartitionLog<S>, next_seq: &mut [i32; 3], rounds: usize) {
    for round in 0..rounds {
        let at = round % PRODUCERS.len();
        let count = 1 + round % 3;
        let batch = idempotent_batch(PRODUCERS[at], 0, next_seq[at], count);
        let info = log.append_durable(batch, 0).await.unwrap();
        assert!(!info.duplicate);
        next_seq[at] += count as i32;
    }
}

#[test]
fn a_retried_batch_gets_its_original_offsets_and_appends_nothing() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let first = log.append_durable(idempotent_batch(1, 0, 0, 3), 0).await.unwrap();
        let second = log.append_durable(idempotent_batch(1, 0, 3, 2), 0).await.unwrap();
        let end = log.log_end_offset();
        let retry = log.append_durable(idempotent_batch(1, 0, 0, 3), 0).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!((retry.base_offset, retry.last_offset), (first.base_offset, first.last_offset));
        let retry = log.append_durable(idempotent_batch(1, 0, 3, 2), 0).await.unwrap();
        assert_eq!((retry.base_offset, retry.last_offset), (second.base_offset, second.last_offset));
        assert_eq!(log.log_end_offset(), end, "duplicates append nothing");
        assert_eq!(read_all(&log, 0).await.len(), 5);
        log.close().await.unwrap();
    });
}

#[test]
fn a_duplicate_of_a_batch_not_yet_durable_is_acknowledged_with_it() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let original = log.append(idempotent_batch(4, 0, 0, 2), 0).unwrap();
        let retry = log.append(idempotent_batch(4, 0, 0, 2), 0).unwrap();
        assert!(retry.info.duplicate);
        let retried = retry.durable().await.unwrap();
        assert!(log.high_watermark() > retried.last_offset, "acked only once the original is");
        assert_eq!(original.durable().await.unwrap().base_offset, retried.base_offset);
        log.close().await.unwrap();
    });
}

#[test]
fn gaps_and_stale_epochs_are_refused_without_appending() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(idempotent_batch(2, 1, 0, 2), 0).await.unwrap();
        let gap = log.append(idempotent_batch(2, 1, 5, 1), 0).unwrap_err();
        assert!(matches!(gap, LogError::Sequence(SequenceError::OutOfOrder { expected_seq: 2, .. })), "{gap}");
        let stale = log.append(idempotent_batch(2, 0, 2, 1), 0).unwrap_err();
        assert!(matches!(stale, LogError::Sequence(SequenceError::StaleEpoch { current_epoch: 1, .. })), "{stale}");
        assert_eq!(log.log_end_offset(), 2);
        // A batch without a producer id is never checked.
        log.append_durable(batch("plain", 1, 0), 0).await.unwrap();
        log.append_durable(idempotent_batch(2, 1, 2, 1), 0).await.unwrap();
        log.close().await.unwrap();
    });
}

#[test]
fn a_clean_restart_loads_the_state_from_its_snapshot() {
    run(async {
        let storage = SimStorage::new();
        let config = rolling_config();
        let log = open(&storage, &config).await;
        let mut next_seq = [0; 3];
        append_rounds(&log, &mut next_seq, 150).await;
        assert!(log.segment_count() > 2, "the workload rolls segments");
        let before: Vec<_> = PRODUCERS.iter().map(|&id| log.producer_entry(id)).collect();
        log.close().await.unwrap();
        let snapshots = storage.paths().iter().filter(|p| p.extension().is_some_and(|e| e == "snapshot")).count();
        assert!((1..=2).contains(&snapshots), "{snapshots} snapshots kept");

        let log = open(&storage, &config).await;
        let after: Vec<_> = PRODUCERS.iter().map(|&id| log.producer_entry(id)).collect();
        assert_eq!(before, after);
        let last = after[0].as_ref().unwrap().batches.back().copied().unwrap();
        let count = (last.last_seq - last.first_seq + 1) as usize;
        let retry = log.append_durable(idempotent_batch(PRODUCERS[0], 0, last.first_seq, count), 0).await.unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, last.base_offset);
        append_rounds(&log, &mut next_seq, 3).await;
        log.close().await.unwrap();
    });
}

#[test]
fn a_damaged_or_missing_snapshot_is_rebuilt_from_the_log() {
    run(async {
        let storage = SimStorage::new();
        let config = rolling_config();
        let log = open(&storage, &config).await;
        let mut next_seq = [0; 3];
        append_rounds(&log, &mut next_seq, 40).await;
        let expected = state_from_log(&log).await;
        log.close().await.unwrap();
        let mut snapshots: Vec<_> =
            storage.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "snapshot")).collect();
        snapshots.sort();
        let newest = snapshots.pop().unwrap();
        assert!(storage.flip_bit(&newest, 20, 3));
        let log = open(&storage, &config).await;
        assert_eq!(state_from_log(&log).await, expected);
        for id in PRODUCERS {
            assert_eq!(log.producer_entry(id), expected.entry(id).cloned());
        }
        log.close().await.unwrap();
        for path in storage.paths().into_iter().filter(|p| p.extension().is_some_and(|e| e == "snapshot")) {
            storage.remove(&path).await.unwrap();
        }
        let log = open(&storage, &config).await;
        for id in PRODUCERS {
            assert_eq!(log.producer_entry(id), expected.entry(id).cloned());
        }
        log.close().await.unwrap();
    });
}

/// Records a workload of idempotent appends across rolls, then crashes it
/// after every write and fdatasync, dropping or keeping unsynced writes:
/// each recovered log's producer state must be exactly what its batches
/// make, and each producer must continue right after its last batch there.
#[test]
fn after_a_crash_anywhere_the_state_is_what_the_recovered_log_holds() {
    let config = LogConfig { flush_cycle_bytes_max: 1, ..rolling_config() };
    let trace = run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &config).await;
        let mut next_seq = [0; 3];
        append_rounds(&log, &mut next_seq, 80).await;
        log.close().await.unwrap();
        storage.trace()
    });
    let mut checked = 0;
    for cut in (0..=trace.len()).step_by(3) {
        for (mode, power_loss) in
            [(CrashMode::DropUnsynced, false), (CrashMode::KeepUnsynced, false), (CrashMode::KeepUnsynced, true)]
        {
            let disk = SimStorage::replay(&trace[..cut]);
            let crashed = if power_loss { disk.power_loss(mode, TornSector::Garbage) } else { disk.crash(mode) };
            let mode = (mode, power_loss);
            run(async {
                let log = open(&crashed, &config).await;
                let expected = state_from_log(&log).await;
                for (at, id) in PRODUCERS.into_iter().enumerate() {
                    let entry = log.producer_entry(id);
                    assert_eq!(entry, expected.entry(id).cloned(), "cut {cut} {mode:?} producer {id}");
                    let next = entry.map_or(0, |entry| entry.batches.back().unwrap().last_seq + 1);
                    let info = log.append_durable(idempotent_batch(id, 0, next, 1 + at), 0).await.unwrap();
                    assert!(!info.duplicate);
                }
                log.close().await.unwrap();
            });
            checked += 1;
        }
    }
    assert!(checked > 20);
}

#[test]
fn truncation_rebuilds_the_state_so_cut_batches_can_come_again() {
    run(async {
        let storage = SimStorage::new();
        let config = rolling_config();
        let log = open(&storage, &config).await;
        let mut next_seq = [0; 3];
        append_rounds(&log, &mut next_seq, 30).await;
        let cut = log.log_end_offset() / 2;
        let new_end = log.truncate_to(cut).await.unwrap();
        let expected = state_from_log(&log).await;
        for id in PRODUCERS {
            assert_eq!(log.producer_entry(id), expected.entry(id).cloned(), "producer {id}");
        }
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(log.log_end_offset(), new_end);
        for id in PRODUCERS {
            assert_eq!(log.producer_entry(id), expected.entry(id).cloned(), "producer {id} after reopening");
        }
        log.close().await.unwrap();
    });
}
