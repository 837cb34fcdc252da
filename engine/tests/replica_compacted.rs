//! Compaction together with replication (issue 13): a follower copying a
//! compacted leader (`append_replica`, as the replica fetcher does, from a
//! fresh start or after a reset) gets batches with gaps between them. It
//! must read them back, reopen, recover from a crash at any point and lead
//! without reporting corruption, while a damaged base offset where its log
//! has no gaps is still caught.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use common::*;
use spate_engine::batch::{self, BatchBuilder};
use spate_engine::io::{CrashMode, SimStorage, Storage};
use spate_engine::{CleanupPolicy, Clock, LogConfig, LogError, PartitionLog, ReadBound, TailCache};

/// (offset, key, value) of one record read back.
type Rec = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn compact_config(clock: &Rc<Cell<i64>>) -> LogConfig {
    let clock = clock.clone();
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 512,
        preallocate_bytes: 16 * 1024,
        retention_ms: None,
        cleanup_policy: CleanupPolicy::Compact,
        min_cleanable_dirty_ratio: 0.0,
        clean_bytes_per_sec: u64::MAX,
        clock: Clock::new(move || clock.get()),
        ..LogConfig::default()
    }
}

/// A follower's config: replication owns the high watermark.
fn follower_config(clock: &Rc<Cell<i64>>) -> LogConfig {
    LogConfig { high_watermark_follows_acks: false, ..compact_config(clock) }
}

fn keyed_batch(key: &[u8], value: &[u8], timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    builder.push(timestamp_ms, Some(key), Some(value), &[]);
    builder.build()
}

fn records_of(batches: &[Bytes]) -> Vec<Rec> {
    let mut out = Vec::new();
    for bytes in batches {
        let info = batch::validate_stored(bytes, usize::MAX).unwrap();
        for record in batch::records(bytes).unwrap() {
            let record = record.unwrap();
            out.push((
                record.offset(info.base_offset),
                record.key.map(<[u8]>::to_vec),
                record.value.map(<[u8]>::to_vec),
            ));
        }
    }
    out
}

/// Every batch from `offset` to `bound`, following the gaps between
/// batches by their headers' last offsets.
async fn read_batches<S: Storage>(
    log: &PartitionLog<S>,
    mut offset: i64,
    bound: ReadBound,
) -> Result<Vec<Bytes>, LogError> {
    let mut out = Vec::new();
    loop {
        let output = log.read(offset, 4096, bound).await?;
        let Some(last) = output.batches.last() else { return Ok(out) };
        let header = batch::peek_header(last).unwrap();
        offset = header.base_offset.get() + i64::from(header.last_offset_delta.get()) + 1;
        out.extend(output.batches);
    }
}

async fn read_records<S: Storage>(log: &PartitionLog<S>) -> Result<Vec<Rec>, LogError> {
    Ok(records_of(&read_batches(log, log.log_start_offset(), ReadBound::HighWatermark).await?))
}

/// A cache too small to hold the log, so that reads come from the disk.
fn open_with<S: Storage>(storage: &S, config: &LogConfig) -> impl Future<Output = Result<PartitionLog<S>, LogError>> {
    PartitionLog::open(storage.clone(), log_dir(), config.clone(), TailCache::new(4096))
}

/// A compacted leader: key "a" rewritten over and over around keys written
/// once, cleaned (gaps between batches, segments emptied and deleted), then
/// a tail appended after the clean (no gaps there).
async fn compacted_leader(storage: &SimStorage, clock: &Rc<Cell<i64>>) -> PartitionLog<SimStorage> {
    let leader = open_with(storage, &compact_config(clock)).await.unwrap();
    for round in 0..80u32 {
        let key = if round % 9 == 1 { format!("once-{round}") } else { "a".to_string() };
        let value = format!("{key}-{round}-").repeat(8);
        leader.append_durable(keyed_batch(key.as_bytes(), value.as_bytes(), clock.get()), 1).await.unwrap();
    }
    let outcome = leader.clean(clock.get()).await.unwrap();
    assert!(outcome.records_removed >= 40 && outcome.segments_rewritten >= 2, "{outcome:?}");
    for round in 80..90u32 {
        let value = format!("tail-{round}");
        leader.append_durable(keyed_batch(b"t", value.as_bytes(), clock.get()), 2).await.unwrap();
    }
    leader
}

/// Copies the leader's batches from `from` into the follower as the replica
/// fetcher does: the leader's own bytes and offsets through
/// `append_replica`. Returns, per batch, the storage trace length once it
/// was acknowledged and the batch's last offset.
async fn replicate(
    leader: &PartitionLog<SimStorage>,
    follower: &PartitionLog<SimStorage>,
    follower_disk: &SimStorage,
    from: i64,
) -> Vec<(usize, i64)> {
    let mut acked = Vec::new();
    for bytes in read_batches(leader, from, ReadBound::LogEnd).await.unwrap() {
        let ticket = follower.append_replica(BytesMut::from(&bytes[..])).unwrap();
        let last_offset = ticket.info.last_offset;
        ticket.durable().await.unwrap();
        acked.push((follower_disk.trace_len(), last_offset));
    }
    follower.set_high_watermark(follower.log_end_offset());
    acked
}

fn has_gaps(records: &[Rec]) -> bool {
    records.windows(2).any(|pair| pair[1].0 > pair[0].0 + 1)
}

/// Before the fix the follower accepted the gapped batches but held them
/// to offset contiguity everywhere: its reads from disk failed with
/// `Corruption`, and so did its reopen.
#[test]
fn a_follower_of_a_compacted_leader_reads_reopens_and_leads_without_corruption() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let leader = compacted_leader(&SimStorage::new(), &clock).await;
        let expected = read_records(&leader).await.unwrap();
        assert!(has_gaps(&expected), "the leader's log has gaps");
        let disk = SimStorage::new();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        replicate(&leader, &follower, &disk, leader.log_start_offset()).await;
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(read_records(&follower).await.unwrap(), expected, "read back from disk");
        follower.close().await.unwrap();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        follower.set_high_watermark(follower.log_end_offset());
        assert_eq!(read_records(&follower).await.unwrap(), expected, "after a reopen");
        // Promoted: it appends as a leader after the leader's last offset,
        // compacts its own log, and reopens with all of it.
        let promoted = follower.append_durable(keyed_batch(b"n", b"new", clock.get()), 3).await.unwrap();
        assert_eq!(promoted.base_offset, leader.log_end_offset());
        follower.set_high_watermark(follower.log_end_offset());
        follower.clean(clock.get()).await.unwrap();
        let led = read_records(&follower).await.unwrap();
        assert_eq!(led.last().map(|r| r.0), Some(promoted.base_offset));
        follower.close().await.unwrap();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        follower.set_high_watermark(follower.log_end_offset());
        assert_eq!(read_records(&follower).await.unwrap(), led, "after leading and a reopen");
    });
}

/// A follower reset to the leader's log start (`reset_to`, its own log
/// having fallen behind it) starts with a gap if compaction removed the
/// leader's first records; before the fix its reopen failed.
#[test]
fn a_follower_reset_onto_a_compacted_leader_reopens_without_corruption() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let leader = compacted_leader(&SimStorage::new(), &clock).await;
        let expected = read_records(&leader).await.unwrap();
        assert!(expected[0].0 > 0, "the leader's first record is compacted away");
        let disk = SimStorage::new();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        follower.reset_to(0).await.unwrap();
        replicate(&leader, &follower, &disk, 0).await;
        follower.close().await.unwrap();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        follower.set_high_watermark(follower.log_end_offset());
        assert_eq!(read_records(&follower).await.unwrap(), expected);
    });
}

/// Crashed at every write and fdatasync of its copy, in every crash mode,
/// the follower recovers without corruption to a prefix of the leader's
/// records holding every batch it acknowledged. Before the fix, recovery
/// took the first gap in the active segment for a torn tail and cut it
/// there, dropping acknowledged batches (what failed first, at op 9), and
/// failed on a sealed segment with a gap.
#[test]
fn a_follower_of_a_compacted_leader_recovers_from_a_crash_at_every_step() {
    let clock = Rc::new(Cell::new(1_000_000));
    let (trace, start, acked, expected) = run(async {
        let leader = compacted_leader(&SimStorage::new(), &clock).await;
        let expected = read_records(&leader).await.unwrap();
        let disk = SimStorage::new();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        let start = disk.trace_len();
        let acked = replicate(&leader, &follower, &disk, leader.log_start_offset()).await;
        (disk.trace(), start, acked, expected)
    });
    let mut crash_points = 0;
    for cut in start..=trace.len() {
        let disk = SimStorage::replay(&trace[..cut]);
        let acked_end = acked.iter().filter(|(at, _)| *at <= cut).map(|(_, last)| last + 1).max().unwrap_or(0);
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepUnsynced, CrashMode::TearNewestWrite { keep_bytes: 100 }] {
            crash_points += 1;
            run(async {
                let crashed = disk.crash(mode);
                let follower = open_with(&crashed, &follower_config(&clock))
                    .await
                    .unwrap_or_else(|err| panic!("recovery failed after op {cut} with {mode:?}: {err}"));
                follower.set_high_watermark(follower.log_end_offset());
                let recovered = read_records(&follower)
                    .await
                    .unwrap_or_else(|err| panic!("read failed after op {cut} with {mode:?}: {err}"));
                assert_eq!(recovered[..], expected[..recovered.len()], "op {cut} {mode:?}: a prefix");
                assert!(follower.log_end_offset() >= acked_end, "op {cut} {mode:?}: acknowledged batches kept");
            });
        }
    }
    assert!(crash_points > 300, "{crash_points} crash points");
}

/// The segment file of `log_dir()` holding `offset`, and the byte position
/// in it of the batch starting at `offset`.
fn batch_position(storage: &SimStorage, offset: i64) -> (PathBuf, usize) {
    let mut segments: Vec<(i64, PathBuf)> = storage
        .paths()
        .into_iter()
        .filter_map(|path| Some((path.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()?, path.clone())))
        .collect();
    segments.sort();
    let (_, path) = segments.iter().rev().find(|(base, _)| *base <= offset).unwrap();
    let bytes = storage.contents(path).unwrap();
    let mut position = 0;
    while position + 12 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[position..position + 8].try_into().unwrap());
        let length = i32::from_be_bytes(bytes[position + 8..position + 12].try_into().unwrap());
        if base == offset {
            return (path.clone(), position);
        }
        position += 12 + length as usize;
    }
    panic!("no batch at {offset} in {}", path.display());
}

fn flip_base_offset_up(storage: &SimStorage, path: &Path, position: usize, base_offset: i64) {
    // The lowest bit that is clear in the base offset: setting it moves
    // the batch up, past the end of the one before (a gap, not an overlap).
    let bit = (0..8).find(|bit| base_offset & (1 << bit) == 0).unwrap();
    assert!(storage.flip_bit(path, position + 7, bit));
}

/// Where the follower's log has no gaps (here: what it appended after its
/// promotion) a damaged base offset is still caught: never served, and a
/// reopen reports it.
#[test]
fn a_damaged_base_offset_where_a_replicated_log_has_no_gaps_is_still_detected() {
    run(async {
        let clock = Rc::new(Cell::new(1_000_000));
        let leader = compacted_leader(&SimStorage::new(), &clock).await;
        let disk = SimStorage::new();
        let follower = open_with(&disk, &follower_config(&clock)).await.unwrap();
        replicate(&leader, &follower, &disk, leader.log_start_offset()).await;
        let mut last_base = 0;
        for round in 0..40 {
            let value = format!("led-{round}-").repeat(10);
            last_base = follower.append_durable(keyed_batch(b"l", value.as_bytes(), 0), 3).await.unwrap().base_offset;
        }
        follower.close().await.unwrap();
        // A batch in a sealed segment, and the log's last batch.
        let target = last_base - 30;
        for offset in [target, last_base] {
            let damaged = disk.crash(CrashMode::KeepUnsynced);
            let (path, position) = batch_position(&damaged, offset);
            flip_base_offset_up(&damaged, &path, position, offset);
            match open_with(&damaged, &follower_config(&clock)).await {
                Err(LogError::Corruption { .. }) => {}
                Err(other) => panic!("batch {offset}: not a corruption: {other}"),
                Ok(log) => {
                    log.set_high_watermark(log.log_end_offset());
                    let read = read_records(&log).await;
                    assert!(matches!(read, Err(LogError::Corruption { .. })), "batch {offset}: served: {read:?}");
                }
            }
        }
    });
}
