//! Helpers shared by the engine's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use spate_engine::batch::{self, BatchBuilder};
use spate_engine::io::Storage;
use spate_engine::{LogConfig, PartitionLog, TailCache};

/// Runs `future` to completion on a fresh glommio executor on this thread.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound).make().unwrap().run(future)
}

/// A batch of `count` records `"{tag}-{i}"`, keyed `"k{i % 7}"`, all with
/// `timestamp_ms`.
pub fn batch(tag: &str, count: usize, timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    for i in 0..count {
        let key = format!("k{}", i % 7);
        let value = format!("{tag}-{i}");
        builder.push(timestamp_ms, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
    }
    builder.build()
}

/// A batch of one record whose value is `value_bytes` bytes of `fill`.
pub fn sized_batch(value_bytes: usize, fill: u8, timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    builder.push(timestamp_ms, None, Some(&vec![fill; value_bytes]), &[]);
    builder.build()
}

/// The values of every record in `batches`, with their offsets.
pub fn records(batches: &[Bytes]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for bytes in batches {
        let info = batch::validate_stored(bytes, usize::MAX).unwrap();
        for record in batch::records(bytes).unwrap() {
            let record = record.unwrap();
            out.push((record.offset(info.base_offset), record.value.unwrap_or_default().to_vec()));
        }
    }
    out
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 8 * 1024,
        index_interval_bytes: 1024,
        preallocate_bytes: 64 * 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Small segments and one batch per flush cycle, so that rolls happen and
/// concurrent appends keep several cycles writing and syncing at once.
pub fn pipelined_config() -> LogConfig {
    LogConfig {
        durability: spate_engine::Durability::Always,
        segment_bytes_max: 8 * 1024,
        index_interval_bytes: 1024,
        preallocate_bytes: 16 * 1024,
        flush_cycle_bytes_max: 1,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Appends `count` batches of `records_per_batch` records, one at a time,
/// each acknowledged before the next (batch `i` tagged `r{i}`, timestamp `i`).
pub async fn append_batches<S: Storage>(log: &PartitionLog<S>, count: usize, records_per_batch: usize) {
    for i in 0..count {
        log.append_durable(batch(&format!("r{i}"), records_per_batch, i as i64), 0).await.unwrap();
    }
}

pub async fn open<S: Storage>(storage: &S, config: &LogConfig) -> PartitionLog<S> {
    PartitionLog::open(storage.clone(), log_dir(), config.clone(), TailCache::new(1 << 20)).await.unwrap()
}

pub fn log_dir() -> PathBuf {
    PathBuf::from("/data/topic-0")
}

/// Reads every committed record from `offset` to the high watermark.
pub async fn read_all<S: Storage>(log: &PartitionLog<S>, mut offset: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let output = log.read(offset, 64 * 1024, spate_engine::ReadBound::HighWatermark).await.unwrap();
        if output.batches.is_empty() {
            return out;
        }
        let got = records(&output.batches);
        offset = got.last().unwrap().0 + 1;
        out.extend(got);
    }
}

/// A directory on the real disk (not tmpfs) for O_DIRECT tests.
pub fn disk_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn cache() -> Rc<TailCache> {
    TailCache::new(1 << 20)
}
