//! A log's config changed while it runs (`PartitionLog::update_config`),
//! and the log-append-time stamp, on the simulated disk.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use spate_engine::batch::{self, BatchError, Compression, TimestampType};
use spate_engine::io::SimStorage;
use spate_engine::{Clock, Durability, LogConfig, LogError, ReadBound};

#[test]
fn retention_set_live_deletes_old_segments_without_a_reopen() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { segment_bytes_max: 16 * 1024, retention_bytes: None, ..small_config() };
        let log = open(&storage, &config).await;
        for i in 0..40 {
            log.append_durable(sized_batch(4000, i as u8, i * 1000), 0).await.unwrap();
        }
        assert_eq!(log.enforce_retention(0).await.unwrap().segments_deleted, 0, "no retention yet");
        let segments_before = log.segment_count();
        log.update_config(LogConfig { retention_bytes: Some(32 * 1024), ..(*log.config()).clone() }).unwrap();
        let outcome = log.enforce_retention(0).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        assert!(log.segment_count() < segments_before);
        assert!(log.size_bytes() < 32 * 1024 + 16 * 1024, "{} bytes left", log.size_bytes());
        assert!(log.log_start_offset() > 0);
        log.close().await.unwrap();
    });
}

#[test]
fn segment_size_and_batch_limit_set_live_apply_to_the_next_append() {
    run(async {
        let storage = SimStorage::new();
        let config = LogConfig { segment_bytes_max: 1 << 20, ..small_config() };
        let log = open(&storage, &config).await;
        for i in 0..8 {
            log.append_durable(sized_batch(3000, 1, i), 0).await.unwrap();
        }
        assert_eq!(log.segment_count(), 1);
        let smaller = LogConfig { segment_bytes_max: 8 * 1024, batch_bytes_max: 2048, ..(*log.config()).clone() };
        log.update_config(smaller).unwrap();
        let refused = log.append(sized_batch(3000, 1, 9), 0).map(|_| ());
        assert!(matches!(refused, Err(LogError::InvalidBatch(BatchError::Oversize { max: 2048, .. }))), "{refused:?}");
        for i in 0..6 {
            log.append_durable(sized_batch(1000, 2, 10 + i), 0).await.unwrap();
        }
        assert!(log.segment_count() >= 2, "rolled at the new size");
        assert_eq!(read_all(&log, 0).await.len(), 14);
        log.close().await.unwrap();
    });
}

#[test]
fn durability_set_live_reaches_the_flusher() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &LogConfig { durability: Durability::Never, ..small_config() }).await;
        log.append_durable(batch("a", 2, 0), 0).await.unwrap();
        log.update_config(LogConfig { durability: Durability::Always, ..(*log.config()).clone() }).unwrap();
        log.append_durable(batch("b", 2, 0), 0).await.unwrap();
        // Under Always an ack means synced: nothing is left to flush.
        assert_eq!(log.config().durability, Durability::Always);
        log.flush().await.unwrap();
        assert_eq!(read_all(&log, 0).await.len(), 4);
        log.close().await.unwrap();
    });
}

#[test]
fn an_invalid_or_fixed_config_change_is_refused_and_changes_nothing() {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &small_config()).await;
        let current = (*log.config()).clone();
        let bad = LogConfig { segment_bytes_max: 1, ..current.clone() };
        assert!(matches!(log.update_config(bad), Err(LogError::InvalidConfig(_))));
        let fixed = LogConfig { index_interval_bytes: 4096, ..current.clone() };
        assert!(matches!(log.update_config(fixed), Err(LogError::InvalidConfig(_))));
        assert_eq!(log.config().segment_bytes_max, current.segment_bytes_max);
        assert_eq!(log.config().index_interval_bytes, current.index_interval_bytes);
        log.close().await.unwrap();
    });
}

#[test]
fn log_append_time_stamps_the_batch_with_the_log_clock_and_a_valid_crc() {
    run(async {
        let storage = SimStorage::new();
        let config =
            LogConfig { timestamp_type: TimestampType::LogAppendTime, clock: Clock::new(|| 77_000), ..small_config() };
        let log = open(&storage, &config).await;
        let mut builder = batch::BatchBuilder::new(1_000).compression(Compression::Gzip);
        builder.push(1_000, None, Some(b"x"), &[]);
        builder.push(1_005, None, Some(b"y"), &[]);
        log.append_durable(builder.build(), 0).await.unwrap();
        let mut created = batch::BatchBuilder::new(1_000);
        created.push(1_000, None, Some(b"z"), &[]);
        log.update_config(LogConfig { timestamp_type: TimestampType::CreateTime, ..(*log.config()).clone() }).unwrap();
        log.append_durable(created.build(), 0).await.unwrap();
        let output = log.read(0, 1 << 20, ReadBound::HighWatermark).await.unwrap();
        assert_eq!(output.batches.len(), 2);
        let stamped = batch::validate_stored(&output.batches[0], usize::MAX).unwrap();
        assert_eq!(stamped.attributes().timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(stamped.compression(), Compression::Gzip);
        assert_eq!((stamped.base_timestamp, stamped.max_timestamp), (1_000, 77_000));
        let kept = batch::validate_stored(&output.batches[1], usize::MAX).unwrap();
        assert_eq!(kept.attributes().timestamp_type(), TimestampType::CreateTime);
        assert_eq!(kept.max_timestamp, 1_000);
        // The time index follows the stamp: a lookup by time finds batch 0.
        assert_eq!(log.offset_for_timestamp(50_000).await.unwrap(), Some(0));
        log.close().await.unwrap();
    });
}
