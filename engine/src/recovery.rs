//! Opening a log directory after a clean shutdown or a crash.
//!
//! - Leftover temporary files of interrupted atomic writes are removed, and
//!   index files without a segment.
//! - Sealed segments (all but the last) are checked from their last index
//!   entry to their end, which must be exactly the file's end; a missing or
//!   damaged index is rebuilt by a full scan. Damage in a sealed segment is
//!   corruption: reported, never truncated away.
//! - The active (last) segment is scanned from its newest index entry that
//!   points at the batch it claims. After a clean close (the clean-shutdown
//!   marker is present) it must end exactly at its file's end: any damage
//!   is corruption. After a crash, everything from the first invalid batch
//!   on is cut off, as Kafka does past its recovery point: concurrent chunk
//!   writes may have reached the disk out of order, so a damaged batch with
//!   a valid one after it is what an interrupted flush looks like too. That
//!   case is logged as an error, with the bytes dropped.
//!   Only at or above the recovery point (`recovery_point.rs`), though:
//!   damage below it is corruption of synced data and fails the open, and
//!   so does a log that ends below it. Without the file (a log written by
//!   an older version) the point is 0.
//! - The marker is removed before the log accepts writes, so a crash after
//!   this open is never mistaken for a clean close.
//! - The leader-epoch checkpoint is read, or rebuilt from batch headers when
//!   missing or damaged, and cut to the recovered log end.
//! - A cleaner's swap cut short is settled first: a `<base>.log.swap` was
//!   committed, so it is completed (its `.cleaned` index files and then the
//!   swap renamed over the segment's files); `.cleaned` files without a
//!   swap are removed, leaving the old segment. The compaction checkpoint
//!   says below which offset batches may follow a gap (`segment::follows`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::batch::BATCH_HEADER_BYTES;
use crate::checkpoint::{CHECKPOINT_BYTES_MAX, LeaderEpochCache};
use crate::error::{LogError, Result};
use crate::index::{OffsetIndex, TimeIndex};
use crate::io::{Storage, StorageFile, read_file, write_file_atomic};
use crate::limits::{INDEX_ENTRY_BYTES, RECOVERY_INDEX_PROBES_MAX, TIME_INDEX_ENTRY_BYTES};
use crate::log::clean::{CHECKPOINT_BYTES, CLEANED_SUFFIX, COMPACTION_CHECKPOINT_NAME, SWAP_SUFFIX, decode_checkpoint};
use crate::log::{CLEAN_SHUTDOWN_NAME, EPOCH_CHECKPOINT_NAME, LogConfig, LogState, read_page_head};
use crate::segment::{
    self, INDEX_SUFFIX, LOG_SUFFIX, ScanEnd, Segment, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX, parse_segment_name,
};

pub(crate) async fn recover<S: Storage>(storage: &S, dir: &Path, config: &LogConfig) -> Result<LogState<S::File>> {
    // A new partition directory (and topic directory) must survive power
    // loss along with the files synced into it.
    crate::io::create_dir_durable(storage, dir).await.map_err(|err| LogError::io("create dir", dir, err))?;
    let names = storage.list_dir(dir).await.map_err(|err| LogError::io("list dir", dir, err))?;
    let names = if settle_swaps(storage, dir, &names).await? {
        storage.list_dir(dir).await.map_err(|err| LogError::io("list dir", dir, err))?
    } else {
        names
    };
    let gaps_below = read_gaps_below(storage, dir).await?;
    let mut bases = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".tmp") {
            storage.remove(&path).await.map_err(|err| LogError::io("remove", &path, err))?;
            continue;
        }
        match parse_segment_name(name) {
            Some((base, LOG_SUFFIX)) => bases.push(base),
            Some((base, INDEX_SUFFIX | TIME_INDEX_SUFFIX | TXN_INDEX_SUFFIX)) => {
                let log_name = format!("{base:020}.{LOG_SUFFIX}");
                if !names.contains(&log_name) {
                    storage.remove(&path).await.map_err(|err| LogError::io("remove", &path, err))?;
                }
            }
            _ => {}
        }
    }
    bases.sort_unstable();
    let marker = dir.join(CLEAN_SHUTDOWN_NAME);
    let clean = names.iter().any(|name| name == CLEAN_SHUTDOWN_NAME);
    let now_ms = config.clock.now_ms();
    let recovery_point = crate::recovery_point::read(storage, dir).await?;
    let mut segments = BTreeMap::new();
    let mut epochs_seen = LeaderEpochCache::default();
    let mut next_offset = 0;
    for (at, &base) in bases.iter().enumerate() {
        let active = at + 1 == bases.len();
        if at > 0 && !segment::follows(base, next_offset, gaps_below) {
            let path = segment::segment_path(dir, base, LOG_SUFFIX);
            let reason = format!("segment starts at {base} but the previous one ends at {next_offset}");
            return Err(LogError::corruption(path, 0, reason));
        }
        let context = SegmentContext { active, clean_close: clean, gaps_below, now_ms, recovery_point };
        let segment = recover_segment(storage, dir, base, &context, config, &mut epochs_seen).await?;
        next_offset = segment.next_offset;
        segments.insert(base, segment);
    }
    if segments.is_empty() {
        segments.insert(0, Segment::new(dir, 0, now_ms));
    }
    let log_end_offset = segments.values().next_back().map_or(0, |segment| segment.next_offset);
    if !clean && log_end_offset < recovery_point {
        // Whole synced batches are missing, not damaged: a file cut short
        // by something other than this engine (which lowers the point
        // before it cuts).
        let active = segments.values().next_back().expect("a log always has an active segment");
        let reason = format!("the log ends at offset {log_end_offset}, below its recovery point {recovery_point}");
        tracing::error!(segment = %active.log_path.display(), reason = %reason, "synced batches are missing");
        return Err(LogError::corruption(&active.log_path, active.written_bytes, reason));
    }
    let mut epochs = recover_epochs(storage, dir, &segments, gaps_below).await?;
    let stored = epochs.clone();
    for entry in epochs_seen.entries() {
        epochs.assign(entry.epoch, entry.start_offset);
    }
    epochs.truncate_from(log_end_offset);
    if epochs != stored {
        // Epochs found only by scanning must be kept: a later open may scan
        // less of the log (new index entries) and would place them later.
        let path = dir.join(EPOCH_CHECKPOINT_NAME);
        write_file_atomic(storage, &path, &epochs.encode()).await.map_err(|err| LogError::io("write", &path, err))?;
    }
    if clean {
        storage.remove(&marker).await.map_err(|err| LogError::io("remove", &marker, err))?;
        storage.sync_dir(dir).await.map_err(|err| LogError::io("sync dir", dir, err))?;
    }
    // The producer state starts from the newest snapshot at or below the
    // log end; those above it saw batches the crash took.
    let sources_for = |offset| crate::producer_state::producer_sources(&segments, offset);
    let recovered = crate::producer_state::recover(storage, dir, gaps_below, log_end_offset, &[], sources_for).await?;
    // Everything recovered is committed (the high watermark is the log
    // end), so no completed transaction is unstable: only the aborted list
    // is recovered.
    let txns = crate::txn::recover_aborted(storage, &mut segments, &recovered, gaps_below).await?;
    let producers = recovered.table;
    if recovery_point > log_end_offset {
        // Only after a clean close, where the point plays no part (every
        // byte was checked); it must not outlive this open, or a crash
        // before the next sync would take the tail for corruption.
        tracing::error!(dir = %dir.display(), recovery_point, log_end_offset, "recovery point past the log end; lowered");
        let path = dir.join(crate::recovery_point::RECOVERY_POINT_NAME);
        let bytes = crate::recovery_point::encode(log_end_offset);
        write_file_atomic(storage, &path, &bytes).await.map_err(|err| LogError::io("write", &path, err))?;
    }
    let recovery_point = recovery_point.min(log_end_offset);
    // A start moved by DeleteRecords (`log_start.rs`) may lie inside the
    // first segment. Never past the log end: a crash may have taken an
    // unsynced tail the start had passed (durability other than `always`).
    let log_start_offset = crate::log_start::read(storage, dir).await?.min(log_end_offset);
    let mut state = LogState::recovered(segments, epochs, gaps_below, producers, txns, now_ms, recovery_point);
    state.raise_log_start(log_start_offset);
    Ok(state)
}

/// Completes committed swaps and removes uncommitted cleaner files; true if
/// anything changed.
async fn settle_swaps<S: Storage>(storage: &S, dir: &Path, names: &[String]) -> Result<bool> {
    let swap_suffix = format!("{LOG_SUFFIX}.{SWAP_SUFFIX}");
    let swaps: Vec<i64> = names
        .iter()
        .filter_map(|name| parse_segment_name(name))
        .filter(|(_, suffix)| *suffix == swap_suffix)
        .map(|(base, _)| base)
        .collect();
    let mut changed = false;
    for name in names {
        let Some((base, suffix)) = parse_segment_name(name) else { continue };
        let Some(kind) = suffix.strip_suffix(&format!(".{CLEANED_SUFFIX}")) else { continue };
        // A swap's index files are renamed below; anything else cleaned
        // belongs to a swap that never committed.
        if kind == LOG_SUFFIX || !swaps.contains(&base) {
            let path = dir.join(name);
            storage.remove(&path).await.map_err(|err| LogError::io("remove", &path, err))?;
            changed = true;
        }
    }
    for base in swaps {
        tracing::warn!(dir = %dir.display(), base, "completing a compaction swap cut short");
        // A swap that removed markers carries its new `.txnindex` too.
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
            let cleaned = format!("{base:020}.{suffix}.{CLEANED_SUFFIX}");
            if names.contains(&cleaned) {
                let (from, to) = (dir.join(&cleaned), segment::segment_path(dir, base, suffix));
                storage.rename(&from, &to).await.map_err(|err| LogError::io("rename", &from, err))?;
            }
        }
        let from = dir.join(format!("{base:020}.{swap_suffix}"));
        let to = segment::segment_path(dir, base, LOG_SUFFIX);
        storage.rename(&from, &to).await.map_err(|err| LogError::io("rename", &from, err))?;
        changed = true;
    }
    if changed {
        storage.sync_dir(dir).await.map_err(|err| LogError::io("sync dir", dir, err))?;
    }
    Ok(changed)
}

/// The compaction checkpoint: `i64::MIN` (no gaps anywhere) if the log was
/// never compacted. A damaged one allows gaps everywhere rather than fail
/// the open: contiguity is a check on base offsets, the CRC still guards
/// every batch's records.
async fn read_gaps_below<S: Storage>(storage: &S, dir: &Path) -> Result<i64> {
    let path = dir.join(COMPACTION_CHECKPOINT_NAME);
    match read_file(storage, &path, CHECKPOINT_BYTES).await {
        Ok(None) => Ok(i64::MIN),
        Ok(Some(bytes)) => Ok(decode_checkpoint(&bytes).unwrap_or_else(|| {
            tracing::error!(path = %path.display(), "damaged compaction checkpoint; allowing gaps everywhere");
            i64::MAX
        })),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            tracing::error!(path = %path.display(), "oversized compaction checkpoint; allowing gaps everywhere");
            Ok(i64::MAX)
        }
        Err(err) => Err(LogError::io("read", &path, err)),
    }
}

/// What recovering one segment depends on besides its files.
struct SegmentContext {
    active: bool,
    clean_close: bool,
    gaps_below: i64,
    now_ms: i64,
    /// Below this offset every batch was synced: damage there is never a
    /// torn tail.
    recovery_point: i64,
}

async fn recover_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    base: i64,
    context: &SegmentContext,
    config: &LogConfig,
    epochs_seen: &mut LeaderEpochCache,
) -> Result<Segment<S::File>> {
    let SegmentContext { active, clean_close, gaps_below, now_ms, recovery_point } = *context;
    let mut segment = Segment::new(dir, base, now_ms);
    let path = segment.log_path.clone();
    let file = storage.open(&path, false).await.map_err(|err| LogError::io("open", &path, err))?;
    let file_bytes = file.size().await.map_err(|err| LogError::io("stat", &path, err))?;
    let entries_max = file_bytes as usize / BATCH_HEADER_BYTES + 1;
    let index_bytes = read_file(storage, &segment.index_path(), entries_max * INDEX_ENTRY_BYTES).await;
    let time_index_bytes = read_file(storage, &segment.time_index_path(), entries_max * TIME_INDEX_ENTRY_BYTES).await;
    let (mut index, mut time_index, mut rebuild) = match (index_bytes, time_index_bytes) {
        (Ok(Some(index_bytes)), Ok(Some(time_index_bytes))) => {
            let (index, index_damaged) = OffsetIndex::decode(&index_bytes, file_bytes);
            let (time_index, time_damaged) = TimeIndex::decode(&time_index_bytes, u64::from(u32::MAX));
            (index, time_index, index_damaged || time_damaged)
        }
        // Missing, unreadable or oversized index files are rebuilt.
        _ => (OffsetIndex::default(), TimeIndex::default(), true),
    };
    if rebuild && !active {
        tracing::warn!(segment = %path.display(), "rebuilding a missing or damaged index");
        index = OffsetIndex::default();
        time_index = TimeIndex::default();
    }
    // Start from the newest entry that points at the batch it claims.
    let mut probes = 0;
    while let Some(entry) = index.last() {
        let expected = base + i64::from(entry.relative_offset);
        match segment::batch_at(&file, &path, file_bytes, u64::from(entry.position)).await? {
            Some(info) if info.base_offset == expected => break,
            _ => {
                index.pop();
                rebuild = true;
                probes += 1;
                if probes >= RECOVERY_INDEX_PROBES_MAX {
                    index = OffsetIndex::default();
                }
            }
        }
    }
    let start = index.last();
    let start_position = start.map_or(0, |entry| u64::from(entry.position));
    segment.next_offset = base + start.map_or(0, |entry| i64::from(entry.relative_offset));
    segment.dispatched_bytes = start_position;
    time_index.truncate_to_offset(start.map_or(0, |entry| entry.relative_offset) + 1);
    segment.max_timestamp_ms = time_index.entries().last().map_or(i64::MIN, |entry| entry.timestamp_ms);
    segment.index = index;
    segment.time_index = time_index;
    let interval = config.index_interval_bytes;
    let next_offset = segment.next_offset;
    let outcome =
        segment::scan(&file, &path, file_bytes, start_position, next_offset, gaps_below, |position, info, _| {
            segment.record_batch(position, info, interval);
            epochs_seen.assign(info.partition_leader_epoch, info.base_offset);
        })
        .await?;
    // Sealed segments, and the active one after a clean close, are exactly
    // whole batches; only the active one after a crash may end torn.
    // Only the active one after a crash, and there only at or above the
    // recovery point: below it every batch was synced, so damage there is
    // corruption, not an interrupted write.
    let may_be_torn = active && !clean_close;
    let damaged_offset = segment.next_offset;
    match (outcome.end.clone(), may_be_torn) {
        (ScanEnd::Clean, _) => {}
        (ScanEnd::Corrupt { position, reason } | ScanEnd::Tail { position, reason }, false) => {
            tracing::error!(segment = %path.display(), position, reason = %reason, "corrupt segment");
            return Err(LogError::corruption(&path, position, reason));
        }
        (ScanEnd::Corrupt { position, reason } | ScanEnd::Tail { position, reason }, true)
            if damaged_offset < recovery_point =>
        {
            let reason = format!(
                "batch at offset {damaged_offset}, below the recovery point {recovery_point} (synced data), is \
                 damaged: {reason}"
            );
            tracing::error!(segment = %path.display(), position, reason = %reason, "corruption of synced data");
            return Err(LogError::corruption(&path, position, reason));
        }
        (ScanEnd::Corrupt { position, reason } | ScanEnd::Tail { position, reason }, true) => {
            if matches!(outcome.end, ScanEnd::Corrupt { .. }) {
                tracing::error!(segment = %path.display(), position, file_bytes, reason = %reason,
                    "valid batches follow a damaged one after a crash: an interrupted flush or corruption; \
                     cutting the log at the damaged batch");
            } else {
                tracing::warn!(segment = %path.display(), position, file_bytes, reason = %reason,
                    "cutting a torn or unwritten tail off the active segment");
            }
            // Cut physically, so that stale bytes past the end can never
            // be mistaken for batches by a later recovery.
            file.truncate(position).await.map_err(|err| LogError::io("truncate", &path, err))?;
        }
    }
    if may_be_torn {
        // What survived the crash may still sit in the device's cache; the
        // log counts it as synced (and a later recovery point covers it),
        // so it must be.
        file.fdatasync().await.map_err(|err| LogError::io("fdatasync", &path, err))?;
    }
    segment.written_bytes = outcome.end_position;
    segment.submitted_bytes = outcome.end_position;
    assert_eq!(segment.written_bytes, segment.dispatched_bytes, "scan accounted for every batch");
    segment.page_head = read_page_head(&file, &path, outcome.end_position).await?;
    if !active {
        segment.sealed = true;
        if rebuild {
            persist_indexes(storage, &segment).await?;
        }
    }
    segment.file = Some(std::rc::Rc::new(file));
    Ok(segment)
}

async fn persist_indexes<S: Storage>(storage: &S, segment: &Segment<S::File>) -> Result<()> {
    let index_path = segment.index_path();
    write_file_atomic(storage, &index_path, &segment.index.encode())
        .await
        .map_err(|err| LogError::io("write", &index_path, err))?;
    let time_index_path = segment.time_index_path();
    write_file_atomic(storage, &time_index_path, &segment.time_index.encode())
        .await
        .map_err(|err| LogError::io("write", &time_index_path, err))
}

/// The checkpoint as stored, or rebuilt from the batch headers of every
/// segment when it is missing (with data present) or damaged.
async fn recover_epochs<S: Storage>(
    storage: &S,
    dir: &Path,
    segments: &BTreeMap<i64, Segment<S::File>>,
    gaps_below: i64,
) -> Result<LeaderEpochCache> {
    let path = dir.join(EPOCH_CHECKPOINT_NAME);
    let stored = match read_file(storage, &path, CHECKPOINT_BYTES_MAX).await {
        Ok(Some(bytes)) => LeaderEpochCache::decode(&bytes).map_err(|err| err.to_string()),
        Ok(None) => Err("missing".to_owned()),
        Err(err) => Err(err.to_string()),
    };
    let has_data = segments.values().any(|segment| !segment.is_empty());
    match stored {
        Ok(epochs) => return Ok(epochs),
        Err(_) if !has_data => return Ok(LeaderEpochCache::default()),
        Err(reason) => {
            tracing::warn!(path = %path.display(), reason = %reason, "rebuilding the leader-epoch checkpoint")
        }
    }
    let mut epochs = LeaderEpochCache::default();
    for segment in segments.values() {
        let Some(file) = &segment.file else { continue };
        let (path, end) = (&segment.log_path, segment.written_bytes);
        segment::scan(&**file, path, end, 0, segment.base_offset, gaps_below, |_, info, _| {
            epochs.assign(info.partition_leader_epoch, info.base_offset);
        })
        .await?;
    }
    write_file_atomic(storage, &path, &epochs.encode()).await.map_err(|err| LogError::io("write", &path, err))?;
    Ok(epochs)
}
