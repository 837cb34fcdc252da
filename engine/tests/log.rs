//! Behaviour of the partition log a broker relies on, on the simulated disk.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use spate_engine::io::{SimStorage, Storage, TraceOp};
use spate_engine::{Durability, LogConfig, LogError, PartitionLog, ReadBound, TailCache};

#[test]
fn appended_batches_get_consecutive_offsets_and_read_back_unchanged() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let first = log.append_durable(batch("a", 3, 1000), 0).await.unwrap();
        let second = log.append_durable(batch("b", 2, 1001), 0).await.unwrap();
        assert_eq!((first.base_offset, first.last_offset), (0, 2));
        assert_eq!((second.base_offset, second.last_offset), (3, 4));
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.high_watermark(), 5);
        let values: Vec<_> =
            read_all(&log, 0).await.into_iter().map(|(o, v)| (o, String::from_utf8(v).unwrap())).collect();
        let expected: Vec<_> =
            ["a-0", "a-1", "a-2", "b-0", "b-1"].iter().enumerate().map(|(o, v)| (o as i64, v.to_string())).collect();
        assert_eq!(values, expected);
        // A read from inside a batch returns the whole batch.
        let output = log.read(4, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(records(&output.batches).first().map(|r| r.0), Some(3));
        log.close().await.unwrap();
    });
}

#[test]
fn the_leader_epoch_is_stamped_in_the_header_and_kept_in_the_checkpoint() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(batch("a", 2, 0), 3).await.unwrap();
        log.append_durable(batch("b", 2, 0), 5).await.unwrap();
        let output = log.read(2, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        let header = spate_engine::batch::peek_header(&output.batches[0]).unwrap();
        assert_eq!(header.partition_leader_epoch.get(), 5);
        assert_eq!(header.base_offset.get(), 2);
        log.close().await.unwrap();
        let log = open(&storage, &small_config()).await;
        let epochs: Vec<_> = log.leader_epochs().entries().iter().map(|e| (e.epoch, e.start_offset)).collect();
        assert_eq!(epochs, vec![(3, 0), (5, 2)]);
    });
}

#[test]
fn an_always_ack_comes_only_after_an_fdatasync_covering_the_batch() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let before = storage.trace_len();
        log.append_durable(batch("a", 1, 0), 0).await.unwrap();
        let trace = storage.trace();
        let ops = &trace[before..];
        let write_at = ops.iter().position(
            |op| matches!(op, TraceOp::Write { path, .. } if path.extension().is_some_and(|ext| ext == "log")),
        );
        let sync_at = ops
            .iter()
            .rposition(|op| matches!(op, TraceOp::Sync { path } if path.extension().is_some_and(|ext| ext == "log")));
        assert!(write_at.unwrap() < sync_at.unwrap(), "the segment was written then synced before the ack: {ops:?}");
        // What a crash keeps now contains the batch.
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        let log = open(&crashed, &small_config()).await;
        assert_eq!(read_all(&log, 0).await.len(), 1);
    });
}

#[test]
fn concurrent_appends_share_fdatasyncs() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let before = storage.trace_len();
        let tickets: Vec<_> = (0..50).map(|i| log.append(batch(&format!("t{i}"), 1, 0), 0).unwrap()).collect();
        for (i, ticket) in tickets.into_iter().enumerate() {
            assert_eq!(ticket.durable().await.unwrap().base_offset, i as i64);
        }
        let syncs = storage.trace()[before..].iter().filter(|op| matches!(op, TraceOp::Sync { .. })).count();
        assert!(syncs < 10, "50 appends in flight together took {syncs} fdatasyncs");
        log.close().await.unwrap();
    });
}

#[test]
fn a_restart_keeps_every_record_offset_and_segment() {
    run(async {
        let storage = SimStorage::new();
        let config = small_config();
        let log = open(&storage, &config).await;
        append_batches(&log, 200, 5).await;
        let before = read_all(&log, 0).await;
        let segments = log.segment_count();
        assert!(segments > 3, "small segments roll: {segments}");
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(log.segment_count(), segments);
        assert_eq!(log.log_end_offset(), 1000);
        assert_eq!(read_all(&log, 0).await, before);
        // Reads from the middle, with a cold cache, go through the index.
        let output = log.read(777, 100, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(records(&output.batches)[0].0, 775);
        let appended = log.append_durable(batch("after", 1, 0), 0).await.unwrap();
        assert_eq!(appended.base_offset, 1000);
    });
}

#[test]
fn a_restart_after_a_crash_without_close_rebuilds_indexes() {
    run(async {
        let storage = SimStorage::new();
        let config = small_config();
        let log = open(&storage, &config).await;
        append_batches(&log, 100, 5).await;
        let before = read_all(&log, 0).await;
        drop(log);
        // Take every index file away: recovery must rebuild them.
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        for path in crashed.paths() {
            if path.extension().is_some_and(|ext| ext == "index" || ext == "timeindex") {
                crashed.remove(&path).await.unwrap();
            }
        }
        let log = open(&crashed, &config).await;
        assert_eq!(read_all(&log, 0).await, before);
        assert!(crashed.paths().iter().any(|path| path.extension().is_some_and(|ext| ext == "index")));
        let output = log.read(333, 100, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(records(&output.batches)[0].0, 330);
    });
}

#[test]
fn reads_stop_at_the_high_watermark_for_consumers_and_at_the_log_end_for_followers() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { high_watermark_follows_acks: false, ..small_config() };
        let log = open(&storage, &config).await;
        log.append_durable(batch("a", 2, 0), 0).await.unwrap();
        log.append_durable(batch("b", 2, 0), 0).await.unwrap();
        assert_eq!(log.high_watermark(), 0);
        assert!(log.read(0, 1 << 20, ReadBound::HighWatermark).await.unwrap().batches.is_empty());
        assert_eq!(log.read(0, 1 << 20, ReadBound::LogEnd).await.unwrap().batches.len(), 2);
        log.set_high_watermark(2);
        assert_eq!(read_all(&log, 0).await.len(), 2);
        log.set_high_watermark(100);
        assert_eq!(log.high_watermark(), 4, "the high watermark never passes the log end");
        let err = log.read(5, 100, ReadBound::LogEnd).await.unwrap_err();
        assert!(matches!(err, LogError::OffsetOutOfRange { requested: 5, .. }));
    });
}

#[test]
fn offsets_are_found_by_timestamp() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        for i in 0..300 {
            log.append_durable(batch(&format!("r{i}"), 2, 1000 + i * 10), 0).await.unwrap();
        }
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1000 + 150 * 10).await.unwrap(), Some(300));
        assert_eq!(log.offset_for_timestamp(1000 + 150 * 10 - 5).await.unwrap(), Some(300));
        assert_eq!(log.offset_for_timestamp(1_000_000).await.unwrap(), None);
        log.close().await.unwrap();
        let log = open(&storage, &small_config()).await;
        assert_eq!(log.offset_for_timestamp(1000 + 250 * 10).await.unwrap(), Some(500));
    });
}

#[test]
fn truncation_removes_whole_batches_from_the_cut_and_survives_restart() {
    run(async {
        let storage = SimStorage::new();
        let config = small_config();
        let log = open(&storage, &config).await;
        for i in 0..200 {
            log.append_durable(batch(&format!("r{i}"), 5, i), i as i32 / 50).await.unwrap();
        }
        // 512 is inside the batch 510..=514: that batch goes too.
        assert_eq!(log.truncate_to(512).await.unwrap(), 510);
        assert_eq!(log.log_end_offset(), 510);
        assert_eq!(log.high_watermark(), 510);
        assert_eq!(log.leader_epochs().latest_epoch(), Some(2));
        assert_eq!(read_all(&log, 0).await.last().unwrap().0, 509);
        let appended = log.append_durable(batch("new", 1, 0), 7).await.unwrap();
        assert_eq!(appended.base_offset, 510);
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 511);
        assert_eq!(all.last().unwrap(), &(510, b"new-0".to_vec()));
        assert_eq!(log.leader_epochs().latest_epoch(), Some(7));
    });
}

#[test]
fn retention_deletes_old_segments_and_moves_the_log_start() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { retention_bytes: Some(200 * 1024), segment_bytes_max: 64 * 1024, ..small_config() };
        let log = open(&storage, &config).await;
        for i in 0..100 {
            log.append_durable(sized_batch(4000, i as u8, i * 1000), 0).await.unwrap();
        }
        let size_before = log.size_bytes();
        let outcome = log.enforce_retention(0).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        assert!(log.size_bytes() < 200 * 1024 + 64 * 1024, "size {} after retention", log.size_bytes());
        assert!(log.size_bytes() + outcome.bytes_deleted == size_before);
        let start = log.log_start_offset();
        assert!(start > 0);
        assert!(matches!(log.read(0, 100, ReadBound::HighWatermark).await, Err(LogError::OffsetOutOfRange { .. })));
        assert_eq!(read_all(&log, start).await.len() as i64, 100 - start);
        log.close().await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(log.log_start_offset(), start);
    });
}

/// DeleteRecords: the start moves inside a segment, the records below are
/// gone at once and after a restart or a crash (the
/// `log-start-offset-checkpoint`), the segments wholly below are deleted,
/// and retention later never moves the start back. Without
/// `advance_log_start` the engine could move its start only to segment
/// boundaries (retention), and a restart put it back at the first segment.
#[test]
fn advancing_the_log_start_hides_the_records_below_across_restarts_and_crashes() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { segment_bytes_max: 64 * 1024, ..small_config() };
        let log = open(&storage, &config).await;
        for i in 0..100 {
            log.append_durable(sized_batch(4000, i as u8, i * 1000), 0).await.unwrap();
        }
        let segments_before = log.segment_count();
        assert!(segments_before > 3);
        assert!(matches!(log.advance_log_start(101).await, Err(LogError::OffsetOutOfRange { .. })));
        assert_eq!(log.advance_log_start(37).await.unwrap(), 37);
        assert_eq!(log.log_start_offset(), 37);
        assert!(log.segment_count() < segments_before, "segments wholly below 37 are deleted");
        assert!(matches!(log.read(36, 100, ReadBound::HighWatermark).await, Err(LogError::OffsetOutOfRange { .. })));
        assert_eq!(read_all(&log, 37).await.len(), 63);
        assert_eq!(log.advance_log_start(10).await.unwrap(), 37, "never backwards");
        assert_eq!(log.advance_log_start(100).await.unwrap(), 100, "up to the high watermark");
        assert_eq!(log.advance_log_start(37).await.unwrap(), 100);
        log.close().await.unwrap();

        let log = open(&storage, &config).await;
        assert_eq!(log.log_start_offset(), 100, "kept across a clean restart");
        log.append_durable(sized_batch(4000, 1, 0), 0).await.unwrap();
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        let log = open(&crashed, &config).await;
        assert_eq!(log.log_start_offset(), 100, "kept across a crash");
        assert_eq!(read_all(&log, 100).await.len(), 1);
        // Retention deleting the segment that holds the start moves it to
        // the next segment, never back below it.
        log.enforce_retention(i64::MAX / 2).await.unwrap();
        assert!(log.log_start_offset() >= 100);
    });
}

#[test]
fn retention_by_time_keeps_the_active_segment() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { retention_ms: Some(10_000), segment_bytes_max: 64 * 1024, ..small_config() };
        let log = open(&storage, &config).await;
        for i in 0..60 {
            log.append_durable(sized_batch(4000, 1, i * 1000), 0).await.unwrap();
        }
        // Now = 65 s: records older than 55 s (timestamps < 55_000) may go.
        log.enforce_retention(65_000).await.unwrap();
        let start = log.log_start_offset();
        assert!(start > 0 && start <= 55, "log start {start}");
        log.enforce_retention(i64::MAX / 2).await.unwrap();
        assert!(log.log_end_offset() - log.log_start_offset() > 0, "the active segment stays");
    });
}

#[test]
fn an_fdatasync_error_fails_the_waiting_appends_and_every_later_one() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(batch("ok", 1, 0), 0).await.unwrap();
        storage.fail_sync_at(0);
        let err = log.append_durable(batch("lost", 1, 0), 0).await.unwrap_err();
        assert!(matches!(err, LogError::Failed { .. }), "{err}");
        // The next fdatasync would succeed; the log must not trust it.
        let err = log.append(batch("later", 1, 0), 0).unwrap_err();
        assert!(matches!(err, LogError::Failed { .. }), "{err}");
        assert_eq!(log.high_watermark(), 1, "nothing unsynced became visible");
        assert!(log.failure().is_some());
        assert!(log.close().await.is_err());
        // After a restart the acknowledged record is there.
        let log = open(&storage.crash(spate_engine::io::CrashMode::DropUnsynced), &small_config()).await;
        assert_eq!(read_all(&log, 0).await, vec![(0, b"ok-0".to_vec())]);
    });
}

#[test]
fn a_write_error_stops_acknowledgements_too() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &LogConfig { durability: Durability::Never, ..small_config() }).await;
        storage.fail_write_at(0);
        assert!(log.append_durable(batch("x", 1, 0), 0).await.is_err());
        assert!(log.append(batch("y", 1, 0), 0).is_err());
    });
}

#[test]
fn malformed_batches_are_refused_with_a_typed_error_and_nothing_is_written() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &LogConfig { batch_bytes_max: 10_000, ..small_config() }).await;
        let mut bad_crc = batch("a", 2, 0);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert!(matches!(log.append(bad_crc, 0), Err(LogError::InvalidBatch(_))));
        let mut bad_magic = batch("a", 2, 0);
        bad_magic[16] = 1;
        assert!(matches!(log.append(bad_magic, 0), Err(LogError::InvalidBatch(_))));
        assert!(matches!(log.append(sized_batch(20_000, 0, 0), 0), Err(LogError::InvalidBatch(_))));
        let truncated = batch("a", 2, 0).split_to(40);
        assert!(matches!(log.append(truncated, 0), Err(LogError::InvalidBatch(_))));
        assert_eq!(log.log_end_offset(), 0);
        log.append_durable(batch("good", 1, 0), 0).await.unwrap();
        assert_eq!(read_all(&log, 0).await.len(), 1);
    });
}

#[test]
fn interval_and_never_policies_ack_after_the_write_without_waiting_for_a_sync() {
    for durability in [Durability::IntervalMs(60_000), Durability::Never] {
        run(async {
            let storage = SimStorage::new();
            let log = open(&storage, &LogConfig { durability, ..small_config() }).await;
            log.append_durable(batch("a", 1, 0), 0).await.unwrap();
            let log_syncs = storage
                .trace()
                .iter()
                .filter(|op| matches!(op, TraceOp::Sync { path } if path.extension().is_some_and(|ext| ext == "log")))
                .count();
            assert_eq!(log_syncs, 0, "{durability:?} synced the segment before acking");
            // An explicit flush syncs whatever the policy.
            log.flush().await.unwrap();
            let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
            assert_eq!(read_all(&open(&crashed, &small_config()).await, 0).await.len(), 1);
        });
    }
}

#[test]
fn the_interval_policy_syncs_in_the_background() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &LogConfig { durability: Durability::IntervalMs(20), ..small_config() }).await;
        log.append_durable(batch("a", 1, 0), 0).await.unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
        let syncs = storage.trace().iter().filter(|op| matches!(op, TraceOp::Sync { .. })).count();
        assert!(syncs >= 1, "no background fdatasync after 10 intervals");
    });
}

#[test]
fn a_corrupt_batch_in_a_sealed_segment_is_reported_and_never_served() {
    run(async {
        let storage = SimStorage::new();
        let config = small_config();
        let log = open(&storage, &config).await;
        append_batches(&log, 100, 5).await;
        log.close().await.unwrap();
        let first = storage.paths().into_iter().find(|p| p.extension().is_some_and(|ext| ext == "log")).unwrap();
        // A bit inside the first segment, well past its header region.
        assert!(storage.flip_bit(&first, 5000, 3));
        let log = open(&storage, &config).await;
        let err = log.read(0, 64 * 1024, ReadBound::HighWatermark).await.unwrap_err();
        assert!(matches!(err, LogError::Corruption { .. }), "{err}");
        // Data elsewhere is still served.
        let tail = log.read(400, 1000, ReadBound::HighWatermark).await.unwrap();
        assert!(!tail.batches.is_empty());
    });
}

#[test]
fn after_a_clean_close_a_corrupt_batch_in_the_active_segment_fails_open_instead_of_truncating() {
    run(async {
        let storage = SimStorage::new();
        // One index entry for the whole segment: recovery scans all of it.
        let config = LogConfig { segment_bytes_max: 1 << 20, index_interval_bytes: 1 << 20, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 20, 5).await;
        log.close().await.unwrap();
        let segment = storage.paths().into_iter().find(|p| p.extension().is_some_and(|ext| ext == "log")).unwrap();
        let bytes_before = storage.contents(&segment).unwrap().len();
        assert!(storage.flip_bit(&segment, 200, 0));
        let err =
            PartitionLog::open(storage.clone(), log_dir(), config.clone(), TailCache::new(1 << 20)).await.unwrap_err();
        assert!(matches!(err, LogError::Corruption { .. }), "{err}");
        assert_eq!(storage.contents(&segment).unwrap().len(), bytes_before, "nothing was cut off");
        // It stays refused: the failed open did not launder the damage.
        let again = PartitionLog::open(storage.clone(), log_dir(), config, TailCache::new(1 << 20)).await;
        assert!(matches!(again, Err(LogError::Corruption { .. })));
    });
}

#[test]
fn a_clean_close_leaves_exact_segments_and_a_reopen_needs_no_repair() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        append_batches(&log, 50, 3).await;
        let size = log.size_bytes();
        log.close().await.unwrap();
        let on_disk: u64 = storage
            .paths()
            .iter()
            .filter(|p| p.extension().is_some_and(|ext| ext == "log"))
            .map(|p| storage.contents(p).unwrap().len() as u64)
            .sum();
        assert_eq!(on_disk, size, "segments hold exactly their batches");
        let marker = log_dir().join("clean-shutdown");
        assert!(storage.contents(&marker).is_some());
        let before = storage.trace_len();
        let log = open(&storage, &small_config()).await;
        assert!(storage.contents(&marker).is_none(), "the marker is consumed by the open");
        let truncations = storage.trace()[before..].iter().filter(|op| matches!(op, TraceOp::Truncate { .. })).count();
        assert_eq!(truncations, 0);
        assert_eq!(read_all(&log, 0).await.len(), 150);
    });
}

/// A clock the test moves, for configs whose recovery point must be due
/// (or not) at a chosen moment.
fn manual_clock() -> (std::rc::Rc<std::cell::Cell<i64>>, spate_engine::Clock) {
    let now_ms = std::rc::Rc::new(std::cell::Cell::new(1_000_000i64));
    let clock_now = now_ms.clone();
    (now_ms, spate_engine::Clock::new(move || clock_now.get()))
}

/// The byte position of the `index`th batch in a segment's content.
fn batch_position(contents: &[u8], index: usize) -> usize {
    let mut position = 0;
    for _ in 0..index {
        let header = spate_engine::batch::peek_header(&contents[position..]).unwrap();
        position += 12 + header.batch_length.get() as usize;
    }
    position
}

fn segment_path(storage: &SimStorage) -> std::path::PathBuf {
    storage.paths().into_iter().find(|p| p.extension().is_some_and(|ext| ext == "log")).unwrap()
}

#[test]
fn after_a_crash_damage_at_or_above_the_recovery_point_is_cut_at_the_first_damaged_batch() {
    run(async {
        let storage = SimStorage::new();
        // The clock stands still: no recovery point is ever due, so the
        // whole active segment may be a torn tail (as with a log written
        // before recovery points existed).
        let (_, clock) = manual_clock();
        let config = LogConfig { segment_bytes_max: 1 << 20, clock, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 20, 5).await;
        drop(log);
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        let segment = segment_path(&crashed);
        // Inside the second batch: the first stays, the rest is cut.
        let first = read_all(&open(&crashed.crash(spate_engine::io::CrashMode::KeepUnsynced), &config).await, 0).await;
        assert_eq!(first.len(), 100);
        assert!(crashed.flip_bit(&segment, 200, 0));
        let log = open(&crashed, &config).await;
        let kept = read_all(&log, 0).await;
        assert_eq!(kept, first[..5].to_vec(), "only whole batches before the damage are kept");
    });
}

#[test]
fn after_a_crash_damage_below_the_recovery_point_fails_the_open_and_nothing_is_cut() {
    // Issue 13: synced batches followed a flipped byte in the active
    // segment, and recovery cut them all off and opened. Before recovery
    // points the open succeeded here with 5 of 105 records.
    run(async {
        let storage = SimStorage::new();
        let (now_ms, clock) = manual_clock();
        let config = LogConfig { segment_bytes_max: 1 << 20, clock, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 20, 5).await;
        // The next synced cycle writes the recovery point: all 21 batches.
        now_ms.set(now_ms.get() + spate_engine::limits::RECOVERY_POINT_INTERVAL_MS);
        log.append_durable(batch("last", 5, 0), 0).await.unwrap();
        drop(log);
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        let segment = segment_path(&crashed);
        let before = crashed.contents(&segment).unwrap();
        let damaged_at = batch_position(&before, 1) + 40;
        assert!(crashed.flip_bit(&segment, damaged_at, 0));
        match PartitionLog::open(crashed.clone(), log_dir(), config.clone(), TailCache::new(1 << 20)).await {
            Err(LogError::Corruption { path, position, reason }) => {
                assert_eq!(path, segment);
                assert_eq!(position, batch_position(&before, 1) as u64);
                assert!(reason.contains("offset 5"), "the reason names the damaged offset: {reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(crashed.contents(&segment).unwrap().len(), before.len(), "nothing was cut");
        // Repaired (the byte flipped back), every batch is there.
        assert!(crashed.flip_bit(&segment, damaged_at, 0));
        assert_eq!(read_all(&open(&crashed, &config).await, 0).await.len(), 105);
    });
}

#[test]
fn a_log_that_acks_before_syncing_has_a_recovery_point_where_its_syncs_reached() {
    run(async {
        let storage = SimStorage::new();
        let (now_ms, clock) = manual_clock();
        let config = LogConfig { durability: Durability::Never, segment_bytes_max: 1 << 20, clock, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 10, 5).await;
        now_ms.set(now_ms.get() + spate_engine::limits::RECOVERY_POINT_INTERVAL_MS);
        // The only sync under `Never` short of a seal or close.
        log.flush().await.unwrap();
        append_batches(&log, 10, 5).await;
        drop(log);
        let crashed = storage.crash(spate_engine::io::CrashMode::KeepUnsynced);
        let segment = segment_path(&crashed);
        let contents = crashed.contents(&segment).unwrap();
        // Below the point (offsets 0..50): corruption.
        let below = crashed.crash(spate_engine::io::CrashMode::KeepUnsynced);
        assert!(below.flip_bit(&segment, batch_position(&contents, 3) + 40, 0));
        let opened = PartitionLog::open(below, log_dir(), config.clone(), TailCache::new(1 << 20)).await;
        assert!(matches!(opened, Err(LogError::Corruption { .. })), "got {opened:?}");
        // Above it: a tail that was never synced, cut at the damage.
        let above = crashed.crash(spate_engine::io::CrashMode::KeepUnsynced);
        assert!(above.flip_bit(&segment, batch_position(&contents, 14) + 40, 0));
        assert_eq!(read_all(&open(&above, &config).await, 0).await.len(), 70);
    });
}

#[test]
fn a_truncation_lowers_the_recovery_point_so_damage_past_the_new_end_is_still_cut() {
    run(async {
        let storage = SimStorage::new();
        let (now_ms, clock) = manual_clock();
        let config = LogConfig { segment_bytes_max: 1 << 20, clock, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 20, 5).await;
        now_ms.set(now_ms.get() + spate_engine::limits::RECOVERY_POINT_INTERVAL_MS);
        log.append_durable(batch("last", 5, 0), 0).await.unwrap();
        // The point was 105; batches at 50.. are rewritten after the cut.
        assert_eq!(log.truncate_to(50).await.unwrap(), 50);
        append_batches(&log, 10, 5).await;
        drop(log);
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        let segment = segment_path(&crashed);
        let contents = crashed.contents(&segment).unwrap();
        assert!(crashed.flip_bit(&segment, batch_position(&contents, 12) + 40, 0));
        assert_eq!(read_all(&open(&crashed, &config).await, 0).await.len(), 60);
    });
}

#[test]
fn a_recovery_point_past_the_log_end_after_a_clean_close_is_lowered_not_trusted() {
    // A stored point no synced batch backs (a file from elsewhere, with a
    // valid CRC): the open lowers it instead of asserting, and a crash
    // right after still cuts a torn tail rather than failing the open.
    run(async {
        let storage = SimStorage::new();
        let (_, clock) = manual_clock();
        let config = LogConfig { segment_bytes_max: 1 << 20, clock, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 4, 5).await;
        log.close().await.unwrap();
        let mut bytes = b"SPRP\x00\x01".to_vec();
        bytes.extend_from_slice(&1_000i64.to_be_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_be_bytes());
        let path = log_dir().join("recovery-point-checkpoint");
        spate_engine::io::write_file_atomic(&storage, &path, &bytes).await.unwrap();
        let log = open(&storage, &config).await;
        assert_eq!(read_all(&log, 0).await.len(), 20);
        append_batches(&log, 2, 5).await;
        drop(log);
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        let segment = segment_path(&crashed);
        let contents = crashed.contents(&segment).unwrap();
        assert!(crashed.flip_bit(&segment, batch_position(&contents, 5) + 40, 0));
        assert_eq!(read_all(&open(&crashed, &config).await, 0).await.len(), 25);
    });
}

#[test]
fn a_log_without_a_recovery_point_file_cuts_a_damaged_active_segment_as_before() {
    run(async {
        let storage = SimStorage::new();
        let (now_ms, clock) = manual_clock();
        let config = LogConfig { segment_bytes_max: 1 << 20, clock, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 20, 5).await;
        now_ms.set(now_ms.get() + spate_engine::limits::RECOVERY_POINT_INTERVAL_MS);
        log.append_durable(batch("last", 5, 0), 0).await.unwrap();
        drop(log);
        let crashed = storage.crash(spate_engine::io::CrashMode::DropUnsynced);
        // As written by a version before recovery points.
        crashed.remove(&log_dir().join("recovery-point-checkpoint")).await.unwrap();
        let segment = segment_path(&crashed);
        let contents = crashed.contents(&segment).unwrap();
        assert!(crashed.flip_bit(&segment, batch_position(&contents, 1) + 40, 0));
        assert_eq!(read_all(&open(&crashed, &config).await, 0).await.len(), 5);
    });
}

#[test]
fn a_torn_tail_is_cut_off_and_appends_continue_after_it() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { durability: Durability::Never, segment_bytes_max: 1 << 20, ..small_config() };
        let log = open(&storage, &config).await;
        append_batches(&log, 10, 5).await;
        log.flush().await.unwrap();
        // Three pages long: written as its first page, its last page, then
        // the whole pages between them, the newest write.
        log.append_durable(sized_batch(10_000, 9, 0), 0).await.unwrap();
        drop(log);
        // The newest write reached the disk only in part.
        let crashed = storage.crash(spate_engine::io::CrashMode::TearNewestWrite { keep_bytes: 100 });
        let log = open(&crashed, &config).await;
        assert_eq!(log.log_end_offset(), 50);
        log.append_durable(batch("next", 1, 0), 0).await.unwrap();
        log.close().await.unwrap();
        let log = open(&crashed, &config).await;
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 51);
        assert_eq!(all[50], (50, b"next-0".to_vec()));
    });
}

#[test]
fn appends_truncation_retention_and_flush_after_close_are_refused() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(batch("a", 1, 0), 0).await.unwrap();
        log.close().await.unwrap();
        assert!(matches!(log.append(batch("a", 1, 0), 0), Err(LogError::Closed)));
        assert!(matches!(log.truncate_to(0).await, Err(LogError::Closed)));
        assert!(matches!(log.enforce_retention(i64::MAX).await, Err(LogError::Closed)));
        // Everything is synced, so a flush has nothing to wait for.
        log.flush().await.unwrap();
        // Nothing changed on disk after the clean-shutdown marker.
        assert!(storage.contents(&log_dir().join("clean-shutdown")).is_some());
        assert_eq!(read_all(&open(&storage, &small_config()).await, 0).await.len(), 1);
    });
}

#[test]
fn segments_roll_by_age_and_background_retention_deletes_expired_ones() {
    run(async {
        let now_ms = std::rc::Rc::new(std::cell::Cell::new(1_000_000i64));
        let clock_now = now_ms.clone();
        let config = LogConfig {
            segment_bytes_max: 1 << 20,
            segment_ms: 60_000,
            retention_ms: Some(120_000),
            clock: spate_engine::Clock::new(move || clock_now.get()),
            ..small_config()
        };
        let storage = SimStorage::new();
        let log = open(&storage, &config).await;
        // Three minutes of appends, one a minute, stamped with the clock.
        for minute in 0..4 {
            log.append_durable(batch(&format!("m{minute}"), 2, now_ms.get()), 0).await.unwrap();
            now_ms.set(now_ms.get() + 61_000);
        }
        assert_eq!(log.segment_count(), 4, "each append came after segment_ms and rolled");
        let queue = glommio::executor().current_task_queue();
        log.spawn_retention(std::time::Duration::from_millis(5), queue).unwrap();
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        // Now is 1_244_000: segments whose newest record is before
        // 1_124_000 are past retention (1_000_000, 1_061_000, 1_122_000);
        // the active one (1_183_000) stays.
        assert_eq!(log.log_start_offset(), 6);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(read_all(&log, 6).await.len(), 2);
        log.close().await.unwrap();
    });
}

#[test]
fn appends_beyond_the_pending_limit_get_backpressure_until_the_disk_catches_up() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { pending_bytes_max: 8 * 1024, batch_bytes_max: 4096, ..small_config() };
        let log = open(&storage, &config).await;
        let mut tickets = Vec::new();
        let refused = loop {
            match log.append(sized_batch(1900, 1, 0), 0) {
                Ok(ticket) => tickets.push(ticket),
                Err(err) => break err,
            }
            assert!(tickets.len() < 100, "no backpressure after 100 appends");
        };
        assert!(matches!(refused, LogError::Backpressure { limit: 8192, .. }), "{refused}");
        assert_eq!(tickets.len(), 4, "four batches of about 1975 bytes fit in 8 KiB");
        for ticket in tickets {
            ticket.durable().await.unwrap();
        }
        // Nothing was lost or reordered, and appends are welcome again.
        assert_eq!(log.append_durable(sized_batch(2000, 2, 0), 0).await.unwrap().base_offset, 4);
        assert_eq!(read_all(&log, 0).await.len(), 5);
    });
}

#[test]
fn a_long_poll_wakes_when_the_high_watermark_passes_its_offset_and_on_close() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        log.append_durable(batch("a", 2, 0), 0).await.unwrap();
        // Already above: completes at once with the current high watermark.
        assert_eq!(log.high_watermark_above(1).await, 2);
        let waiting = glommio::spawn_local(log.high_watermark_above(2));
        glommio::executor().yield_now().await;
        log.append_durable(batch("b", 3, 0), 0).await.unwrap();
        assert_eq!(waiting.await, 5);
        // A waiter at the end is released by close rather than left hanging.
        let waiting = glommio::spawn_local(log.high_watermark_above(5));
        glommio::executor().yield_now().await;
        log.close().await.unwrap();
        assert_eq!(waiting.await, 5);
    });
}
