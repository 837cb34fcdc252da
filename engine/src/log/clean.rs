//! Log compaction: the cleaner keeps the latest record per key in the sealed
//! segments of a log whose policy compacts, as Kafka's LogCleaner does.
//!
//! A pass ([`PartitionLog::clean`]):
//! 1. builds an offset map (key digest -> latest offset) over the dirty
//!    sealed segments, from `first_dirty_offset` on, until the map is full
//!    (`LogConfig::clean_offset_map_entries_max`) or the first unsealed
//!    segment is reached; where it stopped is the pass's clean end;
//! 2. rewrites each sealed segment that starts below the clean end, oldest
//!    first. A batch keeps its base offset, last offset delta, producer
//!    fields, leader epoch and attributes (Kafka's `MemoryRecords.filterTo`
//!    with `overrideLastOffset`); it loses each record below the clean end
//!    whose key has a later offset in the map, and each tombstone below the
//!    clean end whose delete horizon has passed. A batch left with no record
//!    goes. A batch that keeps a tombstone below the clean end and has no
//!    delete horizon gets one (now + `delete_retention_ms`, in its base
//!    timestamp, attribute bit 6: KIP-534). Compressed and control batches
//!    are kept whole (their keys are not read). Offsets never change.
//!    Transactions: only segments wholly below the last stable offset are
//!    read (an undecided transaction's records may yet be aborted); the
//!    data batches of aborted transactions go whole and stay out of the
//!    map. A marker (control batch) below the clean end whose transaction
//!    has no data batch left gets a delete horizon, as a tombstone does,
//!    and goes at a pass after it (Kafka's cleaner); an abort marker's
//!    entry leaves its segment's `.txnindex` with it, since a
//!    read_committed consumer told of an aborted transaction skips that
//!    producer's batches until it meets the abort marker. A pass whose
//!    rewrite of a segment did not go in (the segment changed meanwhile)
//!    removes no marker after it: the data it meant to drop is still
//!    there.
//! 3. swaps each rewritten segment in, crash-safely: `<base>.log.cleaned`
//!    and its `.index.cleaned`, `.timeindex.cleaned` (and `.txnindex.cleaned`
//!    when a marker went) are written and synced;
//!    the compaction checkpoint is raised; `.log.cleaned` is renamed to
//!    `.log.swap` and the directory synced (the commit point: recovery
//!    completes a swap from here, and removes `.cleaned` files without one);
//!    then the index files and the `.log` are renamed over the old ones and
//!    the directory synced. A segment left with no batch is deleted instead
//!    (never the first, so the log start stays).
//!
//! The active segment, and a rolled one not yet sealed, are never touched.
//! The heavy part (reading, the map, writing `.cleaned` files) runs without
//! locks; only each swap takes the maintenance lock, and checks that the
//! segment is still the one it read (truncation or retention may have
//! changed it meanwhile). Reads in flight keep their handle on the old file.
//! Reads and writes together are held to `LogConfig::clean_bytes_per_sec`,
//! and one pass runs at a time per shard, so one offset map is in memory.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use glommio::sync::Semaphore;

use super::{LogInner, PartitionLog, remove_if_exists};
use crate::batch::{self, BATCH_HEADER_BYTES, BATCH_OVERHEAD_BYTES, BatchInfo, MAGIC_V2, Record};
use crate::error::{LogError, Result};
use crate::io::{IoBuf, Storage, StorageFile};
use crate::limits::{BATCH_BYTES_MAX_LIMIT, CLEAN_WRITE_BYTES, SEGMENT_BYTES_MAX_LIMIT, align_down, align_up};
use crate::segment::{BatchCursor, INDEX_SUFFIX, Segment, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX};
use crate::varint;

/// The log's compaction checkpoint: batches at or below the offset it holds
/// may follow a gap (see `segment::follows`).
pub(crate) const COMPACTION_CHECKPOINT_NAME: &str = "compaction-checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"SPCC";
const CHECKPOINT_VERSION: u16 = 1;
/// magic, version, offset, CRC-32C.
pub(crate) const CHECKPOINT_BYTES: usize = 4 + 2 + 8 + 4;
/// A segment file being written by the cleaner: `<base>.log.cleaned`.
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";
/// A cleaned segment committed but not yet renamed: `<base>.log.swap`.
pub(crate) const SWAP_SUFFIX: &str = "swap";

// Attribute bits of the batch header (Kafka's).
pub(super) const LOG_APPEND_TIME_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;
const DELETE_HORIZON_BIT: i16 = 1 << 6;

pub(crate) fn encode_checkpoint(gaps_below: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_BYTES);
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_be_bytes());
    out.extend_from_slice(&gaps_below.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(out.len(), CHECKPOINT_BYTES);
    out
}

/// The offset a checkpoint holds, or `None` if it does not check out.
pub(crate) fn decode_checkpoint(bytes: &[u8]) -> Option<i64> {
    if bytes.len() != CHECKPOINT_BYTES {
        return None;
    }
    let (body, crc) = bytes.split_at(CHECKPOINT_BYTES - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return None;
    }
    let (magic, rest) = body.split_at(4);
    let (version, offset) = rest.split_at(2);
    if magic != CHECKPOINT_MAGIC || version != CHECKPOINT_VERSION.to_be_bytes() {
        return None;
    }
    Some(i64::from_be_bytes(offset.try_into().ok()?))
}

/// `path` with `.<extra>` appended to its file name.
pub(crate) fn with_suffix(path: &Path, extra: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(extra);
    path.with_file_name(name)
}

/// What one cleaning pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanOutcome {
    /// Below this offset the log is compacted: a key's only record there is
    /// its latest below it, and tombstones past their horizon are gone.
    pub clean_end_offset: i64,
    pub segments_rewritten: usize,
    pub segments_deleted: usize,
    pub records_removed: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

thread_local! {
    /// One pass at a time per shard (executor thread): bounds the memory of
    /// offset maps to one, and the cleaner's I/O to one log's rate.
    static CLEANER_PERMITS: Rc<Semaphore> = Rc::new(Semaphore::new(1));
}

/// A 128-bit digest of a key, as Kafka's map keeps an MD5 of each key: a
/// fixed size per entry whatever the key's. Two keys sharing a digest would
/// let one's record remove the other's; at 128 bits that is not a concern.
fn key_digest(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// Key digest -> the latest offset seen, bounded in entries.
struct OffsetMap {
    latest: HashMap<u128, i64>,
    entries_max: usize,
}

impl OffsetMap {
    fn new(entries_max: usize) -> Self {
        OffsetMap { latest: HashMap::new(), entries_max }
    }

    /// Records `offset` as the key's latest; false if the key is new and
    /// the map is full.
    fn insert(&mut self, digest: u128, offset: i64) -> bool {
        if let Some(latest) = self.latest.get_mut(&digest) {
            assert!(offset > *latest, "offsets are mapped in order");
            *latest = offset;
            return true;
        }
        if self.latest.len() >= self.entries_max {
            return false;
        }
        self.latest.insert(digest, offset);
        true
    }

    fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&key_digest(key)).copied()
    }
}

/// Holds the cleaner's reads plus writes to a rate by sleeping.
struct Throttle {
    bytes_per_sec: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Self {
        assert!(bytes_per_sec > 0, "validated with the config");
        Throttle { bytes_per_sec, started: Instant::now(), bytes: 0 }
    }

    async fn consume(&mut self, bytes: u64) {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            glommio::timer::sleep(due - elapsed).await;
        }
    }
}

/// A sealed segment as the pass found it.
struct SegmentView<F> {
    base: i64,
    file: Rc<F>,
    path: PathBuf,
    written_bytes: u64,
    /// The base offset of the segment after it (there always is one).
    next_base: i64,
    created_ms: i64,
    /// Where a scan for the first dirty offset may start.
    dirty_start: (u64, i64),
}

/// The aborted transactions with data in a segment a pass reads, by producer:
/// their data batches go, whatever their keys (Kafka's cleaner drops
/// aborted records too). Their markers stay.
#[derive(Default)]
struct AbortedRanges {
    by_producer: HashMap<i64, Vec<(i64, i64)>>,
}

impl AbortedRanges {
    fn new(aborted: &[crate::txn::AbortedTxn]) -> Self {
        let mut by_producer: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for txn in aborted {
            by_producer.entry(txn.producer_id).or_default().push((txn.first_offset, txn.last_offset));
        }
        AbortedRanges { by_producer }
    }

    /// Whether `info` is a data batch of an aborted transaction.
    fn holds(&self, info: &BatchInfo) -> bool {
        let transactional_data = info.attributes & TRANSACTIONAL_BIT != 0 && info.attributes & CONTROL_BIT == 0;
        transactional_data
            && self
                .by_producer
                .get(&info.producer_id)
                .is_some_and(|ranges| ranges.iter().any(|&(first, last)| (first..=last).contains(&info.base_offset)))
    }
}

/// The rules of one pass.
struct Filter<'a> {
    map: &'a OffsetMap,
    aborted: &'a AbortedRanges,
    clean_end: i64,
    now_ms: i64,
    delete_retention_ms: i64,
    /// False once a rewrite of this pass did not go in.
    markers_removable: bool,
}

/// The transactions a pass has read into, by producer: whether the one
/// open (since the producer's last marker) has a data batch kept. Read in
/// log order across the pass's segments.
#[derive(Debug, Clone, Default)]
struct OpenTxns {
    with_data: HashMap<i64, bool>,
}

impl OpenTxns {
    /// A data batch kept.
    fn kept(&mut self, info: &BatchInfo) {
        if info.attributes & TRANSACTIONAL_BIT != 0 && info.attributes & CONTROL_BIT == 0 {
            self.with_data.insert(info.producer_id, true);
        }
    }

    /// A marker: the transaction it ends had data kept; the producer's
    /// next one starts empty.
    fn ended(&mut self, producer_id: i64) -> bool {
        self.with_data.remove(&producer_id).unwrap_or(false)
    }
}

enum Filtered {
    Keep,
    Drop { records: u64 },
    Rewrite { bytes: Vec<u8>, records_removed: u64 },
}

/// What filtering a segment found.
#[derive(Default)]
struct SegmentSummary {
    changed: bool,
    batches_kept: usize,
    records_removed: u64,
    /// The earliest future delete horizon of a tombstone or marker kept.
    horizon_ms: Option<i64>,
    /// The offsets of the markers removed (their `.txnindex` entries go).
    markers_removed: Vec<i64>,
    /// The open transactions after the segment.
    open_txns: OpenTxns,
}

/// What cleaning one segment left for the rest of the pass.
struct SegmentCleaned {
    /// The segment is as the pass decided (unchanged, rewritten or
    /// deleted); false if its rewrite did not go in.
    went_in: bool,
    /// The earliest future delete horizon of a tombstone or marker kept.
    horizon_ms: Option<i64>,
    open_txns: OpenTxns,
}

/// The new segment file being written, and its in-memory segment.
struct SegmentOut<F: StorageFile> {
    file: F,
    path: PathBuf,
    segment: Segment<F>,
    buf: Vec<u8>,
    /// Bytes of the file already written (a multiple of the alignment).
    flushed: u64,
    index_interval_bytes: u64,
}

impl<F: StorageFile> SegmentOut<F> {
    async fn push(&mut self, bytes: &[u8], info: &BatchInfo, throttle: &mut Throttle) -> Result<()> {
        let position = self.segment.dispatched_bytes;
        if position + bytes.len() as u64 > SEGMENT_BYTES_MAX_LIMIT {
            // Delete horizons can lengthen timestamp deltas; never past a
            // position an index entry can hold.
            return Err(LogError::corruption(&self.path, position, "a cleaned segment would pass 4 GiB"));
        }
        self.segment.record_batch(position, info, self.index_interval_bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CLEAN_WRITE_BYTES {
            let whole = align_down(self.buf.len() as u64) as usize;
            self.write(whole, throttle).await?;
        }
        Ok(())
    }

    /// Writes the first `len` bytes of the buffer (zero-padded to the
    /// alignment) at the flushed position.
    async fn write(&mut self, len: usize, throttle: &mut Throttle) -> Result<()> {
        let aligned = align_up(len as u64) as usize;
        let mut buf = self.file.alloc_buf(aligned);
        let (data, padding) = buf.as_mut_bytes().split_at_mut(len);
        data.copy_from_slice(&self.buf[..len]);
        padding.fill(0);
        self.file.write_at(buf, self.flushed).await.map_err(|err| LogError::io("write", &self.path, err))?;
        throttle.consume(aligned as u64).await;
        self.buf.drain(..len.min(self.buf.len()));
        self.flushed += aligned as u64;
        Ok(())
    }

    /// Writes the rest, cuts the file to its exact size and syncs it.
    async fn finish(mut self, throttle: &mut Throttle) -> Result<(F, Segment<F>)> {
        if !self.buf.is_empty() {
            self.write(self.buf.len(), throttle).await?;
        }
        let size = self.segment.dispatched_bytes;
        self.file.truncate(size).await.map_err(|err| LogError::io("truncate", &self.path, err))?;
        self.file.fdatasync().await.map_err(|err| LogError::io("fdatasync", &self.path, err))?;
        let segment = &mut self.segment;
        segment.written_bytes = size;
        segment.submitted_bytes = size;
        segment.sealed = true;
        Ok((self.file, self.segment))
    }
}

/// Decides a batch's fate under the pass's rules.
fn filter_batch(filter: &Filter<'_>, info: &BatchInfo, bytes: &[u8]) -> Result<(Filtered, Option<i64>)> {
    if filter.aborted.holds(info) {
        return Ok((Filtered::Drop { records: u64::try_from(info.records_count).unwrap_or_default() }, None));
    }
    // Compressed batches' keys are not read (the engine has no codecs), and
    // control batches are not the cleaner's: both are kept whole.
    let records = match batch::records(bytes) {
        Ok(records) if info.attributes & CONTROL_BIT == 0 => records,
        _ => return Ok((Filtered::Keep, None)),
    };
    let horizon = (info.attributes & DELETE_HORIZON_BIT != 0).then_some(info.base_timestamp);
    let mut kept: Vec<(Record<'_>, i64)> = Vec::new();
    let mut removed = 0u64;
    let mut tombstone_kept = false;
    for record in records {
        let record = record.map_err(|err| LogError::corruption(PathBuf::new(), 0, err.to_string()))?;
        let offset = record.offset(info.base_offset);
        let timestamp_ms = record.timestamp_ms(info.base_timestamp);
        let below_end = offset < filter.clean_end;
        let superseded = match record.key {
            Some(key) => below_end && filter.map.latest(key).is_some_and(|latest| latest > offset),
            None => false,
        };
        let tombstone = record.key.is_some() && record.value.is_none() && below_end;
        let expired = tombstone && horizon.is_some_and(|horizon_ms| horizon_ms <= filter.now_ms);
        if superseded || expired {
            removed += 1;
            continue;
        }
        tombstone_kept |= tombstone;
        kept.push((record, timestamp_ms));
    }
    let new_horizon = horizon.or(tombstone_kept.then(|| filter.now_ms.saturating_add(filter.delete_retention_ms)));
    let pending_horizon = new_horizon.filter(|&horizon_ms| tombstone_kept && horizon_ms > filter.now_ms);
    if removed == 0 && new_horizon == horizon {
        return Ok((Filtered::Keep, pending_horizon));
    }
    if kept.is_empty() {
        return Ok((Filtered::Drop { records: removed }, None));
    }
    let bytes = encode_batch(info, &kept, new_horizon);
    Ok((Filtered::Rewrite { bytes, records_removed: removed }, pending_horizon))
}

/// Decides a marker's fate: one whose transaction has no data left
/// (`had_data` false) and that lies below the clean end gets a delete
/// horizon, then goes once the horizon has passed.
fn filter_marker(
    filter: &Filter<'_>,
    info: &BatchInfo,
    bytes: &[u8],
    had_data: bool,
) -> Result<(Filtered, Option<i64>)> {
    if had_data || !filter.markers_removable || info.last_offset() >= filter.clean_end {
        return Ok((Filtered::Keep, None));
    }
    match (info.attributes & DELETE_HORIZON_BIT != 0).then_some(info.base_timestamp) {
        Some(horizon_ms) if horizon_ms <= filter.now_ms => {
            Ok((Filtered::Drop { records: u64::try_from(info.records_count).unwrap_or_default() }, None))
        }
        Some(horizon_ms) => Ok((Filtered::Keep, Some(horizon_ms))),
        None => {
            let horizon_ms = filter.now_ms.saturating_add(filter.delete_retention_ms);
            let corrupt = |err: &dyn std::fmt::Display| LogError::corruption(PathBuf::new(), 0, err.to_string());
            let mut kept: Vec<(Record<'_>, i64)> = Vec::new();
            for record in batch::records(bytes).map_err(|err| corrupt(&err))? {
                let record = record.map_err(|err| corrupt(&err))?;
                let timestamp_ms = record.timestamp_ms(info.base_timestamp);
                kept.push((record, timestamp_ms));
            }
            if kept.is_empty() {
                return Ok((Filtered::Keep, None));
            }
            let bytes = encode_batch(info, &kept, Some(horizon_ms));
            Ok((Filtered::Rewrite { bytes, records_removed: 0 }, Some(horizon_ms)))
        }
    }
}

/// A batch holding `kept` (records with their timestamps) under `info`'s
/// header: same base offset, last offset delta, leader epoch, producer
/// fields; the base timestamp is the delete horizon if there is one (bit 6
/// set), else the first record's; the max timestamp is the records' under
/// CreateTime and the original under LogAppendTime, as Kafka's builder does.
fn encode_batch(info: &BatchInfo, kept: &[(Record<'_>, i64)], horizon: Option<i64>) -> Vec<u8> {
    assert!(!kept.is_empty(), "an empty batch is dropped, not written");
    let base_timestamp = horizon.unwrap_or(kept[0].1);
    let max_timestamp = if info.attributes & LOG_APPEND_TIME_BIT != 0 {
        info.max_timestamp
    } else {
        kept.iter().map(|(_, timestamp_ms)| *timestamp_ms).max().unwrap_or(base_timestamp)
    };
    let mut records = Vec::new();
    let mut body = Vec::new();
    for (record, timestamp_ms) in kept {
        body.clear();
        body.put_i8(record.attributes);
        varint::write_varlong(&mut body, timestamp_ms.wrapping_sub(base_timestamp));
        varint::write_varint(&mut body, record.offset_delta);
        put_nullable(&mut body, record.key);
        put_nullable(&mut body, record.value);
        varint::write_varint(&mut body, record.headers.len() as i32);
        for header in &record.headers {
            put_nullable(&mut body, Some(header.key));
            put_nullable(&mut body, header.value);
        }
        varint::write_varint(&mut records, body.len() as i32);
        records.extend_from_slice(&body);
    }
    let attributes = info.attributes | if horizon.is_some() { DELETE_HORIZON_BIT } else { 0 };
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
    out.put_i64(info.base_offset);
    out.put_i32((BATCH_HEADER_BYTES - BATCH_OVERHEAD_BYTES + records.len()) as i32);
    out.put_i32(info.partition_leader_epoch);
    out.put_i8(MAGIC_V2);
    out.put_u32(0); // the CRC, computed below
    out.put_i16(attributes);
    out.put_i32(info.last_offset_delta);
    out.put_i64(base_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(info.producer_id);
    out.put_i16(info.producer_epoch);
    out.put_i32(info.base_sequence);
    out.put_i32(kept.len() as i32);
    assert_eq!(out.len(), BATCH_HEADER_BYTES, "the header is Kafka's 61 bytes");
    out.extend_from_slice(&records);
    batch::write_crc(&mut out).expect("a whole batch has room for its CRC");
    out
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            varint::write_varint(out, bytes.len() as i32);
            out.extend_from_slice(bytes);
        }
        None => varint::write_varint(out, -1),
    }
}

impl<S: Storage> PartitionLog<S> {
    /// One cleaning pass over the sealed segments (see the module's notes),
    /// with `now_ms` deciding delete horizons. Does nothing unless the
    /// policy compacts. Errors leave the log as it was, except one after a
    /// swap's commit point, which stops the log (`Failed`) until reopened.
    pub async fn clean(&self, now_ms: i64) -> Result<CleanOutcome> {
        let inner = &self.inner;
        inner.check_open()?;
        if !inner.config().cleanup_policy.compacts() {
            return Ok(CleanOutcome {
                clean_end_offset: inner.state.borrow().first_dirty_offset,
                ..Default::default()
            });
        }
        let permits = CLEANER_PERMITS.with(Rc::clone);
        let _permit = permits.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        inner.check_open()?;
        let outcome = inner.clean_pass(now_ms).await?;
        if outcome.segments_rewritten + outcome.segments_deleted > 0 {
            tracing::info!(dir = %inner.dir.display(), clean_end_offset = outcome.clean_end_offset,
                rewritten = outcome.segments_rewritten, deleted = outcome.segments_deleted,
                records_removed = outcome.records_removed, bytes_written = outcome.bytes_written, "log cleaned");
        }
        Ok(outcome)
    }

    /// Whether a pass is due: the policy compacts and either the dirty
    /// share of the sealed segments reaches `min_cleanable_dirty_ratio`, or
    /// a kept tombstone's delete horizon has passed.
    pub fn needs_clean(&self, now_ms: i64) -> bool {
        let inner = &self.inner;
        if !inner.config().cleanup_policy.compacts() {
            return false;
        }
        let state = inner.state.borrow();
        if state.next_horizon_ms.is_some_and(|horizon_ms| horizon_ms <= now_ms) {
            return true;
        }
        let (mut total, mut dirty) = (0u64, 0u64);
        let mut segments = state.segments.iter().peekable();
        while let Some((_, segment)) = segments.next() {
            let Some(&(&next_base, _)) = segments.peek() else { break };
            if !segment.sealed {
                break;
            }
            total += segment.written_bytes;
            if next_base > state.first_dirty_offset {
                dirty += segment.written_bytes;
            }
        }
        dirty > 0 && dirty as f64 >= inner.config().min_cleanable_dirty_ratio * total as f64
    }

    /// Cleans every `interval` when a pass is due, in the background on
    /// this shard in the given task queue, until the log is closed.
    pub fn spawn_cleaner(&self, interval: Duration, queue: glommio::TaskQueueHandle) -> Result<()> {
        self.spawn_maintenance(interval, queue, "cleaning", async |log, now_ms| {
            if log.needs_clean(now_ms) { log.clean(now_ms).await.map(|_| ()) } else { Ok(()) }
        })
    }
}

impl<S: Storage> LogInner<S> {
    async fn clean_pass(&self, now_ms: i64) -> Result<CleanOutcome> {
        let (views, first_dirty, gaps_below, truncations) = self.sealed_views();
        let mut outcome = CleanOutcome { clean_end_offset: first_dirty, ..Default::default() };
        let Some(last) = views.last() else { return Ok(outcome) };
        let mut throttle = Throttle::new(self.config().clean_bytes_per_sec);
        let dirty_end = last.next_base;
        let (map, clean_end) =
            self.build_offset_map(&views, first_dirty..dirty_end, gaps_below, &mut throttle, &mut outcome).await?;
        outcome.clean_end_offset = clean_end;
        let delete_retention_ms = self.config().delete_retention_ms;
        let cleaned: Vec<&SegmentView<S::File>> = views.iter().filter(|view| view.base < clean_end).collect();
        let new_gaps_below = cleaned.last().map_or(gaps_below, |view| view.next_base.max(gaps_below));
        let mut next_horizon_ms: Option<i64> = None;
        let mut open_txns = OpenTxns::default();
        let mut markers_removable = true;
        for view in cleaned {
            self.check_open()?;
            let aborted = self.aborted_ranges(view).await?;
            let filter =
                Filter { map: &map, aborted: &aborted, clean_end, now_ms, delete_retention_ms, markers_removable };
            let cleaned = self
                .clean_segment(view, &filter, &open_txns, gaps_below, new_gaps_below, &mut throttle, &mut outcome)
                .await?;
            open_txns = cleaned.open_txns;
            markers_removable &= cleaned.went_in;
            next_horizon_ms = match (next_horizon_ms, cleaned.horizon_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut state = self.state.borrow_mut();
        // A truncation during the pass may have removed what it mapped.
        if state.truncations == truncations {
            state.first_dirty_offset = state.first_dirty_offset.max(clean_end);
        }
        state.next_horizon_ms = next_horizon_ms;
        // Cached batches of cleaned segments still hold removed records.
        self.cache.remove_below(self.log_id, new_gaps_below.min(state.log_end_offset));
        Ok(outcome)
    }

    /// The sealed segments below the first unsealed one, and wholly below
    /// the last stable offset (Kafka never cleans an undecided
    /// transaction: whether its records stay is not known yet), oldest
    /// first.
    fn sealed_views(&self) -> (Vec<SegmentView<S::File>>, i64, i64, u64) {
        let state = self.state.borrow();
        let last_stable_offset = state.last_stable_offset();
        let mut views = Vec::new();
        let mut segments = state.segments.values().peekable();
        while let Some(segment) = segments.next() {
            let Some(next) = segments.peek() else { break };
            let Some(file) = segment.file.clone() else { break };
            if !segment.sealed || next.base_offset > last_stable_offset {
                break;
            }
            views.push(SegmentView {
                base: segment.base_offset,
                file,
                path: segment.log_path.clone(),
                written_bytes: segment.written_bytes,
                next_base: next.base_offset,
                created_ms: segment.created_ms,
                dirty_start: segment.start_for(state.first_dirty_offset),
            });
        }
        (views, state.first_dirty_offset, state.gaps_below, state.truncations)
    }

    /// Maps every key of `dirty` (first dirty offset to dirty end) but
    /// those of aborted transactions; returns the map and the offset where
    /// it stopped: the first record whose key did not fit, or the dirty end.
    async fn build_offset_map(
        &self,
        views: &[SegmentView<S::File>],
        dirty: std::ops::Range<i64>,
        gaps_below: i64,
        throttle: &mut Throttle,
        outcome: &mut CleanOutcome,
    ) -> Result<(OffsetMap, i64)> {
        let (first_dirty, dirty_end) = (dirty.start, dirty.end);
        let mut map = OffsetMap::new(self.config().clean_offset_map_entries_max);
        for view in views.iter().filter(|view| view.next_base > first_dirty) {
            let aborted = self.aborted_ranges(view).await?;
            let start = if view.base <= first_dirty { view.dirty_start } else { (0, view.base) };
            let mut cursor = BatchCursor::new(&*view.file, &view.path, view.written_bytes, start, gaps_below);
            while let Some((_, info, bytes)) = cursor.next().await? {
                throttle.consume(info.batch_bytes as u64).await;
                outcome.bytes_read += info.batch_bytes as u64;
                // An aborted record must not shadow an earlier committed
                // one of its key: it goes, and the earlier one stays.
                if info.last_offset() < first_dirty || info.attributes & CONTROL_BIT != 0 || aborted.holds(&info) {
                    continue;
                }
                // A compressed batch's keys stay unknown: its older
                // versions elsewhere are kept, which loses nothing.
                let Ok(records) = batch::records(&bytes) else { continue };
                for record in records {
                    let record = record.map_err(|err| LogError::corruption(&view.path, 0, err.to_string()))?;
                    let offset = record.offset(info.base_offset);
                    let Some(key) = record.key else { continue };
                    if offset >= first_dirty && !map.insert(key_digest(key), offset) {
                        return Ok((map, offset));
                    }
                }
            }
        }
        // Past a truncation the first dirty offset may lie beyond the sealed
        // segments; the pass then stays within them.
        Ok((map, dirty_end))
    }

    /// The aborted transactions with data in one segment (read from the
    /// `.txnindex` files as a fetch reads them): one segment's worth at a
    /// time, so a pass over a log with many aborts holds no more than
    /// that in memory.
    async fn aborted_ranges(&self, view: &SegmentView<S::File>) -> Result<AbortedRanges> {
        Ok(AbortedRanges::new(&self.aborted_over(view.base, view.next_base).await?))
    }

    /// Filters one segment; writes what it keeps to `out` when given.
    #[allow(clippy::too_many_arguments)]
    async fn filter_segment(
        &self,
        view: &SegmentView<S::File>,
        filter: &Filter<'_>,
        open_txns: &OpenTxns,
        gaps_below: i64,
        throttle: &mut Throttle,
        outcome: &mut CleanOutcome,
        mut out: Option<&mut SegmentOut<S::File>>,
    ) -> Result<SegmentSummary> {
        let mut summary = SegmentSummary { open_txns: open_txns.clone(), ..Default::default() };
        let mut cursor = BatchCursor::new(&*view.file, &view.path, view.written_bytes, (0, view.base), gaps_below);
        while let Some((_, info, bytes)) = cursor.next().await? {
            throttle.consume(info.batch_bytes as u64).await;
            outcome.bytes_read += info.batch_bytes as u64;
            let (filtered, horizon_ms) = if info.attributes & CONTROL_BIT != 0 {
                let had_data = summary.open_txns.ended(info.producer_id);
                let decided = filter_marker(filter, &info, &bytes, had_data)?;
                if matches!(decided.0, Filtered::Drop { .. }) {
                    summary.markers_removed.push(info.base_offset);
                }
                decided
            } else {
                filter_batch(filter, &info, &bytes)?
            };
            if let Some(horizon_ms) = horizon_ms {
                summary.horizon_ms = Some(summary.horizon_ms.map_or(horizon_ms, |h| h.min(horizon_ms)));
            }
            let kept: Option<(Bytes, BatchInfo)> = match filtered {
                Filtered::Keep => Some((bytes, info)),
                Filtered::Drop { records } => {
                    summary.changed = true;
                    summary.records_removed += records;
                    None
                }
                Filtered::Rewrite { bytes, records_removed } => {
                    summary.changed = true;
                    summary.records_removed += records_removed;
                    // Checked as any stored batch is, before it is written.
                    let rewritten = batch::validate_stored(&bytes, BATCH_BYTES_MAX_LIMIT)?;
                    assert_eq!(rewritten.base_offset, info.base_offset);
                    assert_eq!(rewritten.last_offset(), info.last_offset());
                    Some((Bytes::from(bytes), rewritten))
                }
            };
            if let Some((bytes, kept_info)) = kept {
                summary.open_txns.kept(&kept_info);
                summary.batches_kept += 1;
                if let Some(out) = out.as_deref_mut() {
                    out.push(&bytes, &kept_info, throttle).await?;
                }
            }
        }
        Ok(summary)
    }

    /// Cleans one sealed segment, reading on from `open_txns`.
    #[allow(clippy::too_many_arguments)]
    async fn clean_segment(
        &self,
        view: &SegmentView<S::File>,
        filter: &Filter<'_>,
        open_txns: &OpenTxns,
        gaps_below: i64,
        new_gaps_below: i64,
        throttle: &mut Throttle,
        outcome: &mut CleanOutcome,
    ) -> Result<SegmentCleaned> {
        // A first read decides; most segments of a compacted log are
        // already clean, and writing them again would be wasted.
        let dry = self.filter_segment(view, filter, open_txns, gaps_below, throttle, outcome, None).await?;
        let cleaned = |went_in: bool, horizon_ms: Option<i64>| SegmentCleaned {
            went_in,
            horizon_ms,
            open_txns: dry.open_txns.clone(),
        };
        if !dry.changed {
            return Ok(cleaned(true, dry.horizon_ms));
        }
        if dry.batches_kept == 0 {
            if self.commit_delete(view, new_gaps_below).await? {
                outcome.segments_deleted += 1;
                outcome.records_removed += dry.records_removed;
                return Ok(cleaned(true, None));
            }
            if !self.is_first_segment(view.base) {
                return Ok(cleaned(false, dry.horizon_ms));
            }
            // The first segment stays, empty, so the log start stays.
        }
        let path = with_suffix(&view.path, CLEANED_SUFFIX);
        let decided = (open_txns, dry.markers_removed.as_slice());
        let written = self.write_cleaned(view, filter, decided, gaps_below, throttle, outcome, &path).await;
        let (segment, txn_index) = match written {
            Ok(written) => written,
            Err(err) => {
                self.remove_cleaned(view).await;
                return Err(err);
            }
        };
        outcome.bytes_written += segment.written_bytes;
        let went_in = self.commit_swap(view, segment, txn_index, new_gaps_below).await?;
        if went_in {
            outcome.segments_rewritten += 1;
            outcome.records_removed += dry.records_removed;
        }
        Ok(cleaned(went_in, dry.horizon_ms))
    }

    /// Writes `<base>.log.cleaned` and its `.cleaned` index files, synced,
    /// from the open transactions before the segment and the markers its
    /// first read removed; true if the `.txnindex` changed (the removed
    /// abort markers' entries went with them).
    #[allow(clippy::too_many_arguments)]
    async fn write_cleaned(
        &self,
        view: &SegmentView<S::File>,
        filter: &Filter<'_>,
        (open_txns, markers_removed): (&OpenTxns, &[i64]),
        gaps_below: i64,
        throttle: &mut Throttle,
        outcome: &mut CleanOutcome,
        path: &Path,
    ) -> Result<(Segment<S::File>, bool)> {
        let file = self.storage.open(path, true).await.map_err(|err| LogError::io("open", path, err))?;
        file.truncate(0).await.map_err(|err| LogError::io("truncate", path, err))?;
        let mut out = SegmentOut {
            file,
            path: path.to_path_buf(),
            segment: Segment::new(&self.dir, view.base, view.created_ms),
            buf: Vec::new(),
            flushed: 0,
            index_interval_bytes: self.config().index_interval_bytes,
        };
        let written =
            self.filter_segment(view, filter, open_txns, gaps_below, throttle, outcome, Some(&mut out)).await?;
        // The same bytes under the same rules decide the same.
        assert_eq!(written.markers_removed, markers_removed, "a segment's two reads decide alike");
        let (file, mut segment) = out.finish(throttle).await?;
        segment.file = Some(Rc::new(file));
        let index_path = with_suffix(&segment.index_path(), CLEANED_SUFFIX);
        self.write_atomic(&index_path, &segment.index.encode()).await?;
        let time_index_path = with_suffix(&segment.time_index_path(), CLEANED_SUFFIX);
        self.write_atomic(&time_index_path, &segment.time_index.encode()).await?;
        let entries = self.state.borrow().segments.get(&view.base).map_or(0, |old| old.aborted_entries);
        segment.aborted_entries = entries;
        if markers_removed.is_empty() || entries == 0 {
            return Ok((segment, false));
        }
        let txn_index_path = view.path.with_extension(TXN_INDEX_SUFFIX);
        let aborted =
            crate::txn::read_index(&self.storage, &txn_index_path, view.base, view.next_base, entries).await?;
        let kept: Vec<crate::txn::AbortedTxn> =
            aborted.into_iter().filter(|txn| !markers_removed.contains(&txn.last_offset)).collect();
        if kept.len() == entries {
            return Ok((segment, false));
        }
        self.write_atomic(&with_suffix(&txn_index_path, CLEANED_SUFFIX), &crate::txn::encode_index(&kept)).await?;
        segment.aborted_entries = kept.len();
        Ok((segment, true))
    }

    fn is_first_segment(&self, base: i64) -> bool {
        self.state.borrow().segments.keys().next() == Some(&base)
    }

    /// Whether the segment is still sealed and unchanged since the pass
    /// read it.
    fn still_there(&self, view: &SegmentView<S::File>) -> bool {
        let state = self.state.borrow();
        state.segments.get(&view.base).is_some_and(|segment| {
            segment.sealed
                && segment.written_bytes == view.written_bytes
                && segment.file.as_ref().is_some_and(|file| Rc::ptr_eq(file, &view.file))
        })
    }

    /// Raises the compaction checkpoint before a swap (or a replicated
    /// batch after a gap) can leave gaps there. Durable when it returns.
    pub(super) async fn raise_gaps_below(&self, gaps_below: i64) -> Result<()> {
        let _permit = self.gaps_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        if self.state.borrow().gaps_below >= gaps_below {
            return Ok(());
        }
        self.write_atomic(&self.dir.join(COMPACTION_CHECKPOINT_NAME), &encode_checkpoint(gaps_below)).await?;
        self.state.borrow_mut().gaps_below = gaps_below;
        Ok(())
    }

    /// Raises the checkpoint over the gaps replicated batches left, before
    /// the flusher writes them: on disk, a gap is never above it.
    pub(super) async fn cover_replicated_gaps(&self) -> Result<()> {
        let wanted = self.state.borrow().gaps_wanted;
        self.raise_gaps_below(wanted).await
    }

    /// Lowers the checkpoint to a new log end (after a truncation), so that
    /// batches appended there are held to contiguity again.
    pub(super) async fn lower_gaps_below(&self, log_end_offset: i64) -> Result<()> {
        let _permit = self.gaps_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        {
            let mut state = self.state.borrow_mut();
            state.gaps_wanted = state.gaps_wanted.min(log_end_offset);
            if state.gaps_below <= log_end_offset {
                return Ok(());
            }
        }
        self.write_atomic(&self.dir.join(COMPACTION_CHECKPOINT_NAME), &encode_checkpoint(log_end_offset)).await?;
        self.state.borrow_mut().gaps_below = log_end_offset;
        Ok(())
    }

    /// Swaps a cleaned segment in; false if the segment changed meanwhile.
    async fn commit_swap(
        &self,
        view: &SegmentView<S::File>,
        segment: Segment<S::File>,
        txn_index: bool,
        gaps_below: i64,
    ) -> Result<bool> {
        let permit = self.maintenance_lock.acquire_permit(1).await.map_err(|_| LogError::Closed);
        let ready = match permit.and_then(|permit| self.check_open().map(|()| permit)) {
            Ok(permit) if self.still_there(view) => self.raise_gaps_below(gaps_below).await.map(|()| Some(permit)),
            Ok(_) => Ok(None),
            Err(err) => Err(err),
        };
        let _permit = match ready {
            Ok(Some(permit)) => permit,
            Ok(None) | Err(_) => {
                self.remove_cleaned(view).await;
                return ready.map(|_| false);
            }
        };
        // `still_there` held: the `.txnindex` count the new one was cut
        // from (`write_cleaned`) is still the segment's.
        if let Err(err) = self.swap_files(view, txn_index).await {
            self.fail(err.clone());
            return Err(err);
        }
        let mut state = self.state.borrow_mut();
        state.segments.insert(view.base, segment);
        // The cached entries may be the segment's old ones.
        *self.txn_index_cache.borrow_mut() = None;
        Ok(true)
    }

    /// The renames of a swap. From the first one on, recovery completes
    /// the swap, so an error here stops the log.
    async fn swap_files(&self, view: &SegmentView<S::File>, txn_index: bool) -> Result<()> {
        let storage = &self.storage;
        let rename = |from: PathBuf, to: PathBuf| async move {
            storage.rename(&from, &to).await.map_err(|err| LogError::io("rename", &from, err))
        };
        let swap = with_suffix(&view.path, SWAP_SUFFIX);
        rename(with_suffix(&view.path, CLEANED_SUFFIX), swap.clone()).await?;
        self.sync_dir().await?;
        let txn_index = txn_index.then_some(TXN_INDEX_SUFFIX);
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX].into_iter().chain(txn_index) {
            let path = view.path.with_extension(suffix);
            rename(with_suffix(&path, CLEANED_SUFFIX), path).await?;
        }
        rename(swap, view.path.clone()).await?;
        self.sync_dir().await
    }

    /// Deletes a segment left with no batch; false if it changed meanwhile
    /// or is now the first (which stays, keeping the log start).
    async fn commit_delete(&self, view: &SegmentView<S::File>, gaps_below: i64) -> Result<bool> {
        let _permit = self.maintenance_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.check_open()?;
        if !self.still_there(view) || self.is_first_segment(view.base) {
            return Ok(false);
        }
        self.raise_gaps_below(gaps_below).await?;
        let removed = async {
            for path in [crate::segment::LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX]
                .map(|suffix| view.path.with_extension(suffix))
            {
                remove_if_exists(&self.storage, &path).await?;
            }
            self.sync_dir().await
        };
        if let Err(err) = removed.await {
            self.fail(err.clone());
            return Err(err);
        }
        self.state.borrow_mut().segments.remove(&view.base);
        Ok(true)
    }

    /// Best effort: a leftover `.cleaned` file is removed at the next open.
    async fn remove_cleaned(&self, view: &SegmentView<S::File>) {
        for suffix in [crate::segment::LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
            let path = with_suffix(&view.path.with_extension(suffix), CLEANED_SUFFIX);
            let _ = remove_if_exists(&self.storage, &path).await;
        }
    }

    async fn sync_dir(&self) -> Result<()> {
        self.storage.sync_dir(&self.dir).await.map_err(|err| LogError::io("sync dir", &self.dir, err))
    }
}
