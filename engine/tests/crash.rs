//! Crash tests on the simulated disk: a workload is recorded once, then the
//! disk is rebuilt as it was after every write and every fdatasync and
//! crashed there, dropping unsynced writes, keeping them, keeping all but
//! the oldest (writes in flight together land in any order), or tearing the
//! newest one at several bytes. The same workload is also cut after every
//! operation, metadata ones included, and hit by a power loss (directory
//! entries not synced and size changes not fdatasynced revert, torn sectors
//! read as zeros or garbage). Recovery must always succeed and yield a
//! prefix of what was appended that holds every batch acknowledged under
//! `Durability::Always` before the crash.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use spate_engine::io::{CrashMode, SimStorage, TornSector, TraceOp};
use spate_engine::{LogConfig, PartitionLog, TailCache};

/// What the workload appended, in order, and when each batch was acked.
struct Recorded {
    trace: Vec<TraceOp>,
    /// Per batch appended before the truncation: its record values.
    before: Vec<Vec<Vec<u8>>>,
    /// How many of `before` the truncation kept.
    kept: usize,
    /// Per batch appended after the truncation.
    after: Vec<Vec<Vec<u8>>>,
    /// Per batch of `before` then `after`: the trace length when its ack was
    /// seen (an upper bound on the true ack point, so the check is sound).
    acked_at: Vec<usize>,
    /// Trace positions where the truncation started and ended.
    truncation: (usize, usize),
}

fn crash_config() -> LogConfig {
    pipelined_config()
}

fn values_of(batch: &bytes::BytesMut) -> Vec<Vec<u8>> {
    spate_engine::batch::records(batch).unwrap().map(|r| r.unwrap().value.unwrap().to_vec()).collect()
}

/// Appends `rounds` rounds, one batch at a time or in concurrent groups.
async fn append_rounds(
    log: &PartitionLog<SimStorage>,
    storage: &SimStorage,
    rounds: std::ops::Range<usize>,
    batches: &mut Vec<Vec<Vec<u8>>>,
    acked_at: &mut Vec<usize>,
) {
    for round in rounds {
        let group = if round % 3 == 0 { 4 } else { 1 };
        let mut tickets = Vec::new();
        for i in 0..group {
            let tag = format!("r{round}-{i}");
            let batch = if round == 7 { sized_batch(9000, round as u8, 0) } else { batch(&tag, 1 + (round % 5), 0) };
            batches.push(values_of(&batch));
            tickets.push(log.append(batch, round as i32 / 4).unwrap());
        }
        for ticket in tickets {
            ticket.durable().await.unwrap();
            acked_at.push(storage.trace_len());
        }
    }
}

/// Appends with rolls, changing epochs and a multi-page batch, truncates
/// back over a segment boundary, and appends again.
fn record_workload() -> Recorded {
    run(async {
        let storage = SimStorage::new();
        let log = open(&storage, &crash_config()).await;
        let (mut before, mut after, mut acked_at) = (Vec::new(), Vec::new(), Vec::new());
        append_rounds(&log, &storage, 0..12, &mut before, &mut acked_at).await;
        let kept = before.len() - 9;
        let cut_offset: usize = before[..kept].iter().map(Vec::len).sum();
        let start = storage.trace_len();
        assert_eq!(log.truncate_to(cut_offset as i64).await.unwrap(), cut_offset as i64);
        let end = storage.trace_len();
        append_rounds(&log, &storage, 12..16, &mut after, &mut acked_at).await;
        log.close().await.unwrap();
        Recorded { trace: storage.trace(), before, kept, after, acked_at, truncation: (start, end) }
    })
}

/// How many whole batches of `batches` make up `records`, if they do.
fn whole_batches(batches: &[Vec<Vec<u8>>], records: &[Vec<u8>]) -> Option<usize> {
    let mut taken = 0;
    let mut count = 0;
    while taken < records.len() {
        let batch = batches.get(count)?;
        if records.get(taken..taken + batch.len())? != batch.as_slice() {
            return None;
        }
        taken += batch.len();
        count += 1;
    }
    Some(count)
}

/// Checks one recovered disk: whole batches, a prefix of the log before or
/// after the truncation, with every batch acked at or before `cut` present.
fn check_recovery(recorded: &Recorded, crashed: SimStorage, cut: usize, mode: impl std::fmt::Debug) {
    run(async {
        let log = PartitionLog::open(crashed, log_dir(), crash_config(), TailCache::new(1 << 20))
            .await
            .unwrap_or_else(|err| panic!("recovery failed after op {cut} with {mode:?}: {err}"));
        let recovered: Vec<Vec<u8>> = read_all(&log, 0).await.into_iter().map(|(_, value)| value).collect();
        let after_truncation: Vec<_> =
            recorded.before[..recorded.kept].iter().chain(&recorded.after).cloned().collect();
        let (start, end) = recorded.truncation;
        let acked_before = recorded.acked_at[..recorded.before.len()].iter().filter(|&&at| at <= cut).count();
        let acked_after = recorded.acked_at[recorded.before.len()..].iter().filter(|&&at| at <= cut).count();
        let (history, required) = if cut < start {
            (&recorded.before, acked_before)
        } else if cut >= end {
            (&after_truncation, recorded.kept + acked_after)
        } else {
            // Mid-truncation: the kept part is common to both histories.
            let history = if whole_batches(&recorded.before, &recovered).is_some() {
                &recorded.before
            } else {
                &after_truncation
            };
            (history, recorded.kept)
        };
        let whole = whole_batches(history, &recovered)
            .unwrap_or_else(|| panic!("after op {cut} with {mode:?}: not a prefix of whole appended batches"));
        assert!(whole >= required, "after op {cut} with {mode:?}: {required} batches acked, {whole} recovered");
        // The recovered log accepts appends right after what it kept.
        let info = log.append_durable(batch("after-crash", 1, 0), 99).await.unwrap();
        assert_eq!(info.base_offset, recovered.len() as i64);
    });
}

#[test]
fn recovery_after_a_crash_at_every_write_and_fdatasync_keeps_a_prefix_with_every_acked_batch() {
    let recorded = record_workload();
    assert!(recorded.acked_at.len() >= 30);
    let mut crash_points = 0;
    for cut in 0..=recorded.trace.len() {
        let after_data_op = cut == 0 || matches!(recorded.trace[cut - 1], TraceOp::Write { .. } | TraceOp::Sync { .. });
        if !after_data_op {
            continue;
        }
        let disk = SimStorage::replay(&recorded.trace[..cut]);
        let mut modes = vec![CrashMode::DropUnsynced, CrashMode::KeepUnsynced, CrashMode::DropOldestUnsynced];
        for keep_bytes in [0, 1, 61, 100, 4095, 4096, 4096 + 77, 9000] {
            modes.push(CrashMode::TearNewestWrite { keep_bytes });
        }
        for mode in modes {
            check_recovery(&recorded, disk.crash(mode), cut, mode);
            crash_points += 1;
        }
    }
    assert!(crash_points > 500, "only {crash_points} crash points explored");
}

#[test]
fn recovery_after_a_power_loss_at_every_operation_keeps_a_prefix_with_every_acked_batch() {
    // Directory entries not synced revert, sizes revert to their last
    // fdatasync, torn sectors hold zeros or garbage; crashes after every
    // operation, metadata ones included. Without a directory sync after
    // `create_dir_all` the log's directory itself would vanish here, and
    // without one between removing a truncation's later segments and
    // cutting the segment kept, they would come back after a shorter one.
    let recorded = record_workload();
    let mut crash_points = 0;
    // What a torn sector holds matters only where a write is torn.
    let mut power_losses = vec![
        (CrashMode::DropUnsynced, TornSector::Zeros),
        (CrashMode::KeepUnsynced, TornSector::Zeros),
        (CrashMode::DropOldestUnsynced, TornSector::Zeros),
    ];
    let mut crashes = Vec::new();
    for torn in [TornSector::Zeros, TornSector::Garbage] {
        for keep_bytes in [100, 4096 + 77] {
            power_losses.push((CrashMode::TearNewestWrite { keep_bytes }, torn));
        }
        // Metadata kept, but the torn sector of an extending write is
        // zeros or garbage.
        for keep_bytes in [600, 4096 + 77] {
            crashes.push((CrashMode::TearNewestWrite { keep_bytes }, torn));
        }
    }
    for cut in 0..=recorded.trace.len() {
        let disk = SimStorage::replay(&recorded.trace[..cut]);
        for &(mode, torn) in &power_losses {
            check_recovery(&recorded, disk.power_loss(mode, torn), cut, ("power loss", mode, torn));
            crash_points += 1;
        }
        for &(mode, torn) in &crashes {
            check_recovery(&recorded, disk.crash_with(mode, torn), cut, ("crash", mode, torn));
            crash_points += 1;
        }
    }
    assert!(crash_points > 1000, "only {crash_points} crash points explored");
}

#[test]
fn bit_flips_anywhere_in_a_segment_are_never_served_as_data() {
    // Every byte of a closed log's segment files, one flip at a time: either
    // open or read reports corruption, or what is served is exactly what was
    // written (the flip hit nothing a reader returns).
    let (storage, expected, data_bytes) = run(async {
        let storage = SimStorage::new();
        let config = LogConfig { segment_bytes_max: 1 << 20, ..crash_config() };
        let log = open(&storage, &config).await;
        for i in 0..6 {
            log.append_durable(batch(&format!("b{i}"), 3, 1000 + i), 1).await.unwrap();
        }
        let expected = read_all(&log, 0).await;
        let data_bytes = log.size_bytes() as usize;
        log.close().await.unwrap();
        (storage, expected, data_bytes)
    });
    let segment = storage.paths().into_iter().find(|p| p.extension().is_some_and(|ext| ext == "log")).unwrap();
    let mut unchanged = 0;
    for byte in 0..data_bytes {
        let disk = storage.crash(CrashMode::KeepUnsynced);
        assert!(disk.flip_bit(&segment, byte, (byte % 8) as u8));
        let served = run(async {
            let config = LogConfig { segment_bytes_max: 1 << 20, ..crash_config() };
            let Ok(log) = PartitionLog::open(disk, log_dir(), config, TailCache::new(1 << 20)).await else {
                return None;
            };
            let mut out = Vec::new();
            let mut offset = 0;
            loop {
                match log.read(offset, 1 << 20, spate_engine::ReadBound::HighWatermark).await {
                    Ok(output) if output.batches.is_empty() => return Some(out),
                    Ok(output) => {
                        let got = records(&output.batches);
                        offset = got.last().unwrap().0 + 1;
                        out.extend(got);
                    }
                    Err(_) => return None,
                }
            }
        });
        if let Some(served) = served {
            // Whatever is served is never changed (the log was closed
            // cleanly, so a damaged batch fails the open or the read).
            assert!(expected.starts_with(&served), "flip at byte {byte} changed served data");
            if served == expected {
                unchanged += 1;
            }
        }
    }
    // Only the leader epoch (4 bytes a batch) sits outside both the CRC and
    // the offset checks; a flip there changes no record.
    assert!(unchanged <= 6 * 4, "{unchanged} flips went unnoticed");
}
