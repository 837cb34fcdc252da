//! The idempotent producer's state in one partition: per producer id, its
//! epoch and the sequence ranges and offsets of its last
//! `limits::PRODUCER_BATCHES_RETAINED` (5) batches, as Kafka keeps them
//! (`ProducerStateManager`, `ProducerAppendInfo`).
//!
//! `PartitionLog::append` checks a batch against it in the same synchronous
//! step that assigns the batch's offsets, so two appends can never both
//! pass as the next batch of one producer. The rules are Kafka's (3.x,
//! KIP-360), for a batch from producer id `p` (the producer id -1 means no
//! producer: nothing is checked):
//!
//! 1. Same epoch and the same first and last sequence as one of the last
//!    five batches: a retried duplicate. Nothing is appended; the append
//!    answers with the original batch's offsets.
//! 2. An epoch older than the newest seen for `p`: `StaleEpoch` (the wire's
//!    InvalidProducerEpoch), a newer instance of the producer exists.
//! 3. A newer epoch must start at sequence 0; the same epoch must continue
//!    at the last sequence + 1 (wrapping after i32::MAX to 0). Otherwise
//!    `OutOfOrder`.
//! 4. A producer id the partition has no state for (new, or every batch of
//!    it expired) is accepted at any sequence, as Kafka does since KIP-360.
//!
//! Transactions (Kafka's `ProducerStateManager` again): a producer's first
//! transactional batch (attribute bit 4) opens its transaction at that
//! batch's base offset; a control batch (a commit or abort marker) closes
//! it, and `record` answers the completed transaction. A marker with a
//! newer epoch makes that the producer's epoch (the coordinator bumps it
//! when it aborts for a fenced or timed-out producer, and on every
//! transaction under KIP-890). A producer with an open transaction is never
//! evicted, and an entry may hold no batches (its epoch and transaction
//! come from a marker or a snapshot).
//!
//! The state is rebuilt from batch headers (and markers' records):
//! `recover` loads the newest snapshot at or below the log end and replays
//! the batches after it.
//!
//! Snapshot file (`<offset:020>.snapshot`, the state after every batch
//! below `offset`), big-endian, written atomically:
//!   magic "SPPS" | version u16 = 2 | end_offset i64 | count u32 |
//!   count x (producer_id i64 | epoch i16 | txn_first_offset i64 (-1: none)
//!   | batch_count u8 (0-5) | batch_count x (first_seq i32 | last_seq i32 |
//!   base_offset i64 | last_offset i64)) | crc32c u32 over everything
//!   before it.
//! Version 1 (before transactions) has no txn_first_offset and 1-5 batches;
//! it is still read.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use std::collections::BTreeSet;

use crate::batch::{self, BatchInfo};
use crate::error::{LogError, Result};
use crate::io::{Storage, StorageFile, read_file, write_file_atomic};
use crate::limits::{PRODUCER_BATCHES_RETAINED, PRODUCER_SNAPSHOTS_RETAINED, PRODUCER_STATE_ENTRIES_MAX};
use crate::segment;

pub(crate) const SNAPSHOT_SUFFIX: &str = "snapshot";
const MAGIC: &[u8; 4] = b"SPPS";
const VERSION: u16 = 2;
/// Snapshots written before transactions: no transaction offset.
const VERSION_1: u16 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 2 + 8 + 4;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8;
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 8 + 1;
/// The transaction offset of a producer with no open transaction.
const NO_TXN: i64 = -1;
const CRC_BYTES: usize = 4;
/// Bytes a snapshot can ever take; a larger file is corrupt.
pub const SNAPSHOT_BYTES_MAX: usize = HEADER_BYTES
    + PRODUCER_STATE_ENTRIES_MAX * (ENTRY_HEADER_BYTES + PRODUCER_BATCHES_RETAINED * BATCH_BYTES)
    + CRC_BYTES;

/// Kafka's "no producer id".
pub const NO_PRODUCER_ID: i64 = -1;

/// Where one of a producer's batches went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// One producer id's state in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first; at most `PRODUCER_BATCHES_RETAINED`. Empty only when
    /// the entry has an open transaction or its epoch came from a marker.
    pub batches: VecDeque<BatchMetadata>,
    /// The first offset of the producer's open transaction, if it has one.
    pub current_txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    fn last_offset(&self) -> i64 {
        self.batches.back().map_or(i64::MIN, |batch| batch.last_offset)
    }

    fn new(epoch: i16) -> Self {
        ProducerEntry { epoch, batches: VecDeque::new(), current_txn_first_offset: None }
    }
}

/// A transaction a marker ended, at the marker's append (or replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub commit: bool,
    /// Kafka's `lastStableOffset(completedTxn)`: the first offset of the
    /// oldest other transaction still open, else the marker's offset + 1.
    pub last_stable_offset: i64,
}

/// What `ProducerStateTable::check` decided about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it (and then `record` it).
    Append,
    /// A retry of a batch already in the log at these offsets.
    Duplicate(BatchMetadata),
}

/// A batch the sequence rules refuse; nothing of it is appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error(
        "out-of-order sequence from producer {producer_id} epoch {epoch}: the batch starts at {first_seq}, \
         the partition expects {expected_seq}"
    )]
    OutOfOrder { producer_id: i64, epoch: i16, first_seq: i32, expected_seq: i32 },
    #[error("producer {producer_id} epoch {epoch} is fenced: the partition has seen epoch {current_epoch}")]
    StaleEpoch { producer_id: i64, epoch: i16, current_epoch: i16 },
    #[error("producer {producer_id} sent base sequence {base_sequence} or epoch {epoch}; both must be >= 0")]
    Invalid { producer_id: i64, epoch: i16, base_sequence: i32 },
    #[error(
        "producer {producer_id} epoch {epoch} has a transaction open on this partition and sent a batch outside it"
    )]
    OutsideTransaction { producer_id: i64, epoch: i16 },
}

/// Kafka's `DefaultRecordBatch.incrementSequence`: sequences wrap from
/// i32::MAX to 0.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment { increment - (i32::MAX - sequence) - 1 } else { sequence + increment }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    i64::from(next_seq) == i64::from(last_seq) + 1 || (next_seq == 0 && last_seq == i32::MAX)
}

/// Every producer's state in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    entries: BTreeMap<i64, ProducerEntry>,
    /// (first offset, producer id) of every open transaction: derived from
    /// `entries`, for the last stable offset.
    ongoing: BTreeSet<(i64, i64)>,
}

impl ProducerStateTable {
    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every producer id with its state, by id.
    pub fn entries(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.entries.iter().map(|(id, entry)| (*id, entry))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (producer id, first offset) of every open transaction, oldest first.
    pub fn ongoing_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().map(|&(first_offset, producer_id)| (producer_id, first_offset))
    }

    /// Opens `producer_id`'s transaction at `first_offset` unless it has
    /// one open: a truncation's rebuild carries over the transactions that
    /// began before where its replay starts (module docs of `recover`).
    pub(crate) fn seed_open_txn(&mut self, producer_id: i64, epoch: i16, first_offset: i64) {
        let entry = self.entries.entry(producer_id).or_insert_with(|| ProducerEntry::new(epoch));
        if entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(first_offset);
            self.ongoing.insert((first_offset, producer_id));
        }
    }

    /// The first offset of the oldest open transaction.
    pub fn first_ongoing_offset(&self) -> Option<i64> {
        self.ongoing.first().map(|&(first_offset, _)| first_offset)
    }

    /// Applies the sequence rules (module docs) to a produced batch.
    pub fn check(&self, info: &BatchInfo) -> Result<SequenceCheck, SequenceError> {
        let (producer_id, epoch, first_seq) = (info.producer_id, info.producer_epoch, info.base_sequence);
        // A transactional batch must name its producer (Kafka refuses one
        // without): it would open a transaction no marker can end.
        if producer_id == NO_PRODUCER_ID && !info.attributes().is_transactional() {
            return Ok(SequenceCheck::Append);
        }
        if producer_id < 0 || epoch < 0 || first_seq < 0 {
            return Err(SequenceError::Invalid { producer_id, epoch, base_sequence: first_seq });
        }
        let Some(entry) = self.entries.get(&producer_id) else { return Ok(SequenceCheck::Append) };
        let last_seq = increment_sequence(first_seq, info.last_offset_delta);
        if epoch == entry.epoch
            && let Some(original) =
                entry.batches.iter().find(|batch| batch.first_seq == first_seq && batch.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate(*original));
        }
        if epoch < entry.epoch {
            return Err(SequenceError::StaleEpoch { producer_id, epoch, current_epoch: entry.epoch });
        }
        // Kafka's rule (INVALID_TXN_STATE): a producer's batches while its
        // transaction is open belong to it; a plain one would be read as
        // committed at once, ahead of the transaction's outcome. A newer
        // epoch has fenced that transaction (its abort marker follows).
        if epoch == entry.epoch && !info.attributes().is_transactional() && entry.current_txn_first_offset.is_some() {
            return Err(SequenceError::OutsideTransaction { producer_id, epoch });
        }
        let expected_seq = if epoch > entry.epoch {
            0
        } else {
            // An entry without batches (its epoch came from a marker)
            // expects sequence 0, as Kafka's `checkSequence` does.
            let last = entry.batches.back().map_or(-1, |batch| batch.last_seq);
            if in_sequence(last, first_seq) {
                return Ok(SequenceCheck::Append);
            }
            increment_sequence(last, 1)
        };
        if first_seq == expected_seq {
            return Ok(SequenceCheck::Append);
        }
        Err(SequenceError::OutOfOrder { producer_id, epoch, first_seq, expected_seq })
    }

    /// Records a batch at its assigned offsets: after `check` allowed it,
    /// or unchecked while replaying the log (recovery, replication).
    /// `marker` is the parsed record of a control batch (`None` for data
    /// batches, and for control batches that are not transaction markers).
    /// Answers the transaction a marker completed, if it completed one: a
    /// marker for a producer with no open transaction (a coordinator
    /// resending after a failover) changes nothing but the epoch.
    pub fn record(&mut self, info: &BatchInfo, marker: Option<batch::ControlRecord>) -> Option<CompletedTxn> {
        if info.producer_id < 0 {
            return None;
        }
        if info.attributes().is_control() {
            return self.record_marker(info, marker?);
        }
        if info.base_sequence < 0 {
            return None;
        }
        let batch = BatchMetadata {
            first_seq: info.base_sequence,
            last_seq: increment_sequence(info.base_sequence, info.last_offset_delta),
            base_offset: info.base_offset,
            last_offset: info.last_offset(),
        };
        let entry = self.entries.entry(info.producer_id).or_insert_with(|| ProducerEntry::new(info.producer_epoch));
        if entry.epoch != info.producer_epoch {
            entry.epoch = info.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > PRODUCER_BATCHES_RETAINED {
            entry.batches.pop_front();
        }
        if info.attributes().is_transactional() && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(info.base_offset);
            self.ongoing.insert((info.base_offset, info.producer_id));
        }
        if self.entries.len() > PRODUCER_STATE_ENTRIES_MAX {
            self.evict_oldest();
        }
        None
    }

    fn record_marker(&mut self, info: &BatchInfo, marker: batch::ControlRecord) -> Option<CompletedTxn> {
        let producer_id = info.producer_id;
        let entry = self.entries.entry(producer_id).or_insert_with(|| ProducerEntry::new(info.producer_epoch));
        if info.producer_epoch > entry.epoch {
            entry.epoch = info.producer_epoch;
            entry.batches.clear();
        }
        let first_offset = entry.current_txn_first_offset.take()?;
        let removed = self.ongoing.remove(&(first_offset, producer_id));
        assert!(removed, "an open transaction is in the ongoing index");
        let last_offset = info.base_offset;
        assert!(first_offset <= last_offset, "a transaction ends after it starts");
        let last_stable_offset = self.first_ongoing_offset().unwrap_or(last_offset + 1);
        Some(CompletedTxn { producer_id, first_offset, last_offset, commit: marker.commit, last_stable_offset })
    }

    /// Forgets the producer whose last batch is oldest: past the limit,
    /// as Kafka expires idle producer ids (producer.id.expiration.ms). It
    /// is then unknown, and accepted at any sequence.
    /// A producer in a transaction is never forgotten: its marker must
    /// still close the transaction (Kafka does not expire them either).
    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.current_txn_first_offset.is_none())
            .min_by_key(|(_, entry)| entry.last_offset())
            .map(|(id, _)| *id);
        if let Some(producer_id) = oldest {
            self.entries.remove(&producer_id);
        }
    }

    /// Forgets batches and transactions at or after `offset` (the log was
    /// truncated there). A producer left with neither is forgotten, so it
    /// is unknown. (A transaction whose marker was cut cannot be reopened
    /// from here: the log rebuilds the table by replay instead.)
    pub fn truncate_from(&mut self, offset: i64) {
        for entry in self.entries.values_mut() {
            entry.batches.retain(|batch| batch.last_offset < offset);
            entry.current_txn_first_offset = entry.current_txn_first_offset.filter(|&first| first < offset);
        }
        self.entries.retain(|_, entry| !entry.batches.is_empty() || entry.current_txn_first_offset.is_some());
        self.ongoing.retain(|&(first_offset, _)| first_offset < offset);
    }

    pub fn encode(&self, end_offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * 64 + CRC_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&end_offset.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (producer_id, entry) in &self.entries {
            assert!(entry.batches.len() <= PRODUCER_BATCHES_RETAINED);
            let txn_first_offset = entry.current_txn_first_offset.unwrap_or(NO_TXN);
            assert!(txn_first_offset < end_offset, "a snapshot holds only transactions below its offset");
            out.extend_from_slice(&producer_id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&txn_first_offset.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for batch in &entry.batches {
                assert!(batch.last_offset < end_offset, "a snapshot holds only batches below its offset");
                out.extend_from_slice(&batch.first_seq.to_be_bytes());
                out.extend_from_slice(&batch.last_seq.to_be_bytes());
                out.extend_from_slice(&batch.base_offset.to_be_bytes());
                out.extend_from_slice(&batch.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The snapshot's end offset and state, or `None` if it does not check
    /// out (length, CRC, header, counts, offsets below the end).
    pub fn decode(bytes: &[u8]) -> Option<(i64, Self)> {
        if bytes.len() < HEADER_BYTES + CRC_BYTES || bytes.len() > SNAPSHOT_BYTES_MAX {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        let mut reader = Reader(body);
        if reader.take(MAGIC.len())? != MAGIC {
            return None;
        }
        let version = u16::from_be_bytes(reader.array()?);
        if version != VERSION && version != VERSION_1 {
            return None;
        }
        let end_offset = i64::from_be_bytes(reader.array()?);
        let count = u32::from_be_bytes(reader.array()?) as usize;
        if count > PRODUCER_STATE_ENTRIES_MAX {
            return None;
        }
        let mut table = ProducerStateTable::default();
        for _ in 0..count {
            let producer_id = i64::from_be_bytes(reader.array()?);
            let epoch = i16::from_be_bytes(reader.array()?);
            let txn_first_offset = if version == VERSION { i64::from_be_bytes(reader.array()?) } else { NO_TXN };
            let batch_count = usize::from(reader.take(1)?[0]);
            let batches_min = if version == VERSION { 0 } else { 1 };
            if producer_id < 0 || !(batches_min..=PRODUCER_BATCHES_RETAINED).contains(&batch_count) {
                return None;
            }
            if txn_first_offset < NO_TXN || txn_first_offset >= end_offset {
                return None;
            }
            let current_txn_first_offset = (txn_first_offset != NO_TXN).then_some(txn_first_offset);
            let mut batches = VecDeque::with_capacity(batch_count);
            for _ in 0..batch_count {
                let batch = BatchMetadata {
                    first_seq: i32::from_be_bytes(reader.array()?),
                    last_seq: i32::from_be_bytes(reader.array()?),
                    base_offset: i64::from_be_bytes(reader.array()?),
                    last_offset: i64::from_be_bytes(reader.array()?),
                };
                if batch.base_offset > batch.last_offset || batch.last_offset >= end_offset {
                    return None;
                }
                batches.push_back(batch);
            }
            if let Some(first_offset) = current_txn_first_offset {
                table.ongoing.insert((first_offset, producer_id));
            }
            let entry = ProducerEntry { epoch, batches, current_txn_first_offset };
            if table.entries.insert(producer_id, entry).is_some() {
                return None;
            }
        }
        reader.0.is_empty().then_some((end_offset, table))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

pub(crate) fn snapshot_path(dir: &Path, end_offset: i64) -> PathBuf {
    dir.join(format!("{end_offset:020}.{SNAPSHOT_SUFFIX}"))
}

/// The end offsets of the snapshots in `names`, ascending.
pub(crate) fn snapshot_offsets(names: &[String]) -> Vec<i64> {
    let mut offsets: Vec<i64> = names
        .iter()
        .filter_map(|name| segment::parse_segment_name(name))
        .filter(|(_, suffix)| *suffix == SNAPSHOT_SUFFIX)
        .map(|(offset, _)| offset)
        .collect();
    offsets.sort_unstable();
    offsets
}

/// Writes a snapshot and removes all but the newest
/// `PRODUCER_SNAPSHOTS_RETAINED`.
pub(crate) async fn write_snapshot<S: Storage>(storage: &S, dir: &Path, end_offset: i64, bytes: &[u8]) -> Result<()> {
    let path = snapshot_path(dir, end_offset);
    write_file_atomic(storage, &path, bytes).await.map_err(|err| LogError::io("write", &path, err))?;
    let names = storage.list_dir(dir).await.map_err(|err| LogError::io("list dir", dir, err))?;
    let offsets = snapshot_offsets(&names);
    let doomed = offsets.len().saturating_sub(PRODUCER_SNAPSHOTS_RETAINED);
    for &offset in &offsets[..doomed] {
        remove_snapshot(storage, dir, offset).await?;
    }
    Ok(())
}

async fn remove_snapshot<S: Storage>(storage: &S, dir: &Path, offset: i64) -> Result<()> {
    let path = snapshot_path(dir, offset);
    match storage.remove(&path).await {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(LogError::io("remove", &path, err)),
        _ => Ok(()),
    }
}

/// Removes snapshots above `offset` (the log ends there now), so that a
/// later open never loads state the log no longer holds.
pub(crate) async fn remove_snapshots_above<S: Storage>(storage: &S, dir: &Path, offset: i64) -> Result<()> {
    let names = storage.list_dir(dir).await.map_err(|err| LogError::io("list dir", dir, err))?;
    let doomed: Vec<i64> = snapshot_offsets(&names).into_iter().filter(|&end| end > offset).collect();
    for &end in &doomed {
        remove_snapshot(storage, dir, end).await?;
    }
    if !doomed.is_empty() {
        storage.sync_dir(dir).await.map_err(|err| LogError::io("sync dir", dir, err))?;
    }
    Ok(())
}

/// A segment as the rebuild reads it.
pub(crate) struct SegmentSource<F> {
    pub base_offset: i64,
    pub file: Option<Rc<F>>,
    pub path: PathBuf,
    pub written_bytes: u64,
    /// Where to start scanning for an offset: `Segment::start_for`.
    pub index_start: (u64, i64),
}

/// What `recover` rebuilt: the table, the offset its replay started from
/// (the snapshot's; `i64::MIN` without one) and the transactions the
/// replay saw completed, in marker order.
pub(crate) struct Recovered {
    pub table: ProducerStateTable,
    pub replayed_from: i64,
    pub completed: Vec<CompletedTxn>,
}

/// Producer state at `log_end_offset`: the newest valid snapshot at or
/// below it (newer ones are removed: the log lost what they saw), then
/// every batch from the snapshot's offset on. `sources_for(offset)` gives
/// the segments, in offset order, with where to start scanning for `offset`.
///
/// `seeds` (producer id, epoch, first offset) are transactions known open
/// at `log_end_offset` or cut open by a truncation there (aborted, or
/// committed by a marker not yet below the high watermark); those that
/// began before the replay starts are opened before it, since the replay
/// cannot see their first batch (it may lie below the log start, or below a
/// snapshot that was removed). One committed by a marker already below the
/// high watermark is not among them and stays closed: the log keeps no
/// older commits.
pub(crate) async fn recover<S: Storage>(
    storage: &S,
    dir: &Path,
    gaps_below: i64,
    log_end_offset: i64,
    seeds: &[(i64, i16, i64)],
    sources_for: impl FnOnce(i64) -> Vec<SegmentSource<S::File>>,
) -> Result<Recovered> {
    remove_snapshots_above(storage, dir, log_end_offset).await?;
    let names = storage.list_dir(dir).await.map_err(|err| LogError::io("list dir", dir, err))?;
    let mut loaded = None;
    for &offset in snapshot_offsets(&names).iter().rev() {
        let path = snapshot_path(dir, offset);
        let bytes = read_file(storage, &path, SNAPSHOT_BYTES_MAX).await;
        match bytes.ok().flatten().and_then(|bytes| ProducerStateTable::decode(&bytes)) {
            Some((end_offset, table)) if end_offset == offset => {
                loaded = Some((end_offset, table));
                break;
            }
            _ => tracing::warn!(path = %path.display(), "skipping a damaged producer snapshot"),
        }
    }
    let (from_offset, mut table) = loaded.unwrap_or((i64::MIN, ProducerStateTable::default()));
    let sources = sources_for(from_offset);
    let replay_start = sources.first().map_or(from_offset, |first| from_offset.max(first.base_offset));
    for &(producer_id, epoch, first_offset) in seeds.iter().filter(|&&(_, _, first)| first < replay_start) {
        table.seed_open_txn(producer_id, epoch, first_offset);
    }
    let completed = replay(&mut table, &sources, gaps_below, from_offset).await?;
    Ok(Recovered { table, replayed_from: from_offset, completed })
}

/// Records every batch ending at or after `from_offset`; answers the
/// transactions completed meanwhile.
pub(crate) async fn replay<F: StorageFile>(
    table: &mut ProducerStateTable,
    segments: &[SegmentSource<F>],
    gaps_below: i64,
    from_offset: i64,
) -> Result<Vec<CompletedTxn>> {
    let mut completed = Vec::new();
    for (at, source) in segments.iter().enumerate() {
        let next_base = segments.get(at + 1).map_or(i64::MAX, |next| next.base_offset);
        if next_base <= from_offset {
            continue;
        }
        let Some(file) = &source.file else { continue };
        let (position, position_offset) =
            if from_offset > source.base_offset { source.index_start } else { (0, source.base_offset) };
        segment::scan(
            &**file,
            &source.path,
            source.written_bytes,
            position,
            position_offset,
            gaps_below,
            |_, info, bytes| {
                if info.last_offset() >= from_offset {
                    let marker = marker_of(info, bytes);
                    completed.extend(table.record(info, marker));
                }
            },
        )
        .await?;
    }
    Ok(completed)
}

/// The transaction marker of a control batch; `None` for data batches and
/// for control records that are not markers (which change no state).
pub fn marker_of(info: &BatchInfo, bytes: &[u8]) -> Option<batch::ControlRecord> {
    if !info.attributes().is_control() {
        return None;
    }
    match batch::parse_control_batch(bytes) {
        Ok(marker) => Some(marker),
        Err(err) => {
            tracing::warn!(offset = info.base_offset, error = %err, "a control batch that is no transaction marker");
            None
        }
    }
}

/// The segments as the producer-state rebuild reads them, with where to
/// start scanning for `offset`.
pub(crate) fn producer_sources<F>(
    segments: &BTreeMap<i64, crate::segment::Segment<F>>,
    offset: i64,
) -> Vec<SegmentSource<F>>
where
    F: crate::io::StorageFile,
{
    segments
        .values()
        .map(|segment| SegmentSource {
            base_offset: segment.base_offset,
            file: segment.file.clone(),
            path: segment.log_path.clone(),
            written_bytes: segment.written_bytes,
            index_start: segment.start_for(offset.max(segment.base_offset)),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::batch::{self, BatchBuilder};

    /// A batch from `producer_id`/`epoch` of `count` records starting at
    /// sequence `first_seq`, as if appended at `base_offset`.
    fn info(producer_id: i64, epoch: i16, first_seq: i32, count: usize, base_offset: i64) -> BatchInfo {
        let mut builder = BatchBuilder::new(0).producer(producer_id, epoch, first_seq);
        for _ in 0..count {
            builder.push(0, None, Some(b"v"), &[]);
        }
        let mut info = batch::validate_produce(&builder.build(), 1 << 20).unwrap();
        info.base_offset = base_offset;
        info
    }

    /// Checks and, if allowed, records the batch; the outcome of the check.
    fn append(table: &mut ProducerStateTable, info: &BatchInfo) -> Result<SequenceCheck, SequenceError> {
        let check = table.check(info)?;
        if check == SequenceCheck::Append {
            table.record(info, None);
        }
        Ok(check)
    }

    #[test]
    fn batches_must_continue_the_sequence() {
        let mut table = ProducerStateTable::default();
        assert_eq!(append(&mut table, &info(7, 0, 0, 3, 0)), Ok(SequenceCheck::Append));
        assert_eq!(append(&mut table, &info(7, 0, 3, 2, 3)), Ok(SequenceCheck::Append));
        let gap = append(&mut table, &info(7, 0, 6, 1, 5));
        assert_eq!(gap, Err(SequenceError::OutOfOrder { producer_id: 7, epoch: 0, first_seq: 6, expected_seq: 5 }));
        // Overlapping but not equal to a remembered batch: out of order too.
        assert!(matches!(append(&mut table, &info(7, 0, 1, 2, 5)), Err(SequenceError::OutOfOrder { .. })));
        assert_eq!(append(&mut table, &info(7, 0, 5, 1, 5)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn a_retry_of_one_of_the_last_five_batches_returns_its_original_offsets() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            append(&mut table, &info(1, 0, i * 2, 2, 100 + i64::from(i) * 2)).unwrap();
        }
        // Batches 2..=6 are remembered; 0 and 1 have aged out.
        let expected = BatchMetadata { first_seq: 4, last_seq: 5, base_offset: 104, last_offset: 105 };
        assert_eq!(table.check(&info(1, 0, 4, 2, -1)), Ok(SequenceCheck::Duplicate(expected)));
        assert!(matches!(table.check(&info(1, 0, 12, 2, -1)), Ok(SequenceCheck::Duplicate(_))));
        assert!(matches!(table.check(&info(1, 0, 2, 2, -1)), Err(SequenceError::OutOfOrder { .. })));
        assert_eq!(table.entry(1).unwrap().batches.len(), PRODUCER_BATCHES_RETAINED);
        // The same range under another epoch is no duplicate.
        assert!(matches!(table.check(&info(1, 1, 4, 2, -1)), Err(SequenceError::OutOfOrder { .. })));
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_starts_at_zero() {
        let mut table = ProducerStateTable::default();
        append(&mut table, &info(3, 2, 0, 5, 0)).unwrap();
        let stale = table.check(&info(3, 1, 5, 1, -1));
        assert_eq!(stale, Err(SequenceError::StaleEpoch { producer_id: 3, epoch: 1, current_epoch: 2 }));
        assert!(matches!(table.check(&info(3, 3, 5, 1, -1)), Err(SequenceError::OutOfOrder { expected_seq: 0, .. })));
        assert_eq!(append(&mut table, &info(3, 3, 0, 1, 5)), Ok(SequenceCheck::Append));
        assert_eq!(table.entry(3).unwrap().batches.len(), 1, "a new epoch starts a new history");
        assert!(matches!(table.check(&info(3, 2, 5, 1, -1)), Err(SequenceError::StaleEpoch { .. })));
    }

    #[test]
    fn unknown_producers_are_accepted_at_any_sequence_and_non_producers_unchecked() {
        let mut table = ProducerStateTable::default();
        assert_eq!(append(&mut table, &info(9, 4, 1000, 1, 0)), Ok(SequenceCheck::Append));
        assert_eq!(append(&mut table, &info(NO_PRODUCER_ID, -1, -1, 1, 1)), Ok(SequenceCheck::Append));
        assert_eq!(append(&mut table, &info(NO_PRODUCER_ID, -1, -1, 1, 2)), Ok(SequenceCheck::Append));
        assert_eq!(table.len(), 1);
        assert!(matches!(table.check(&info(9, 4, -5, 1, 3)), Err(SequenceError::Invalid { .. })));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        let mut table = ProducerStateTable::default();
        append(&mut table, &info(5, 0, i32::MAX - 1, 2, 0)).unwrap();
        assert_eq!(table.entry(5).unwrap().batches[0].last_seq, i32::MAX);
        assert_eq!(append(&mut table, &info(5, 0, 0, 1, 2)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn truncation_forgets_batches_from_the_cut() {
        let mut table = ProducerStateTable::default();
        append(&mut table, &info(1, 0, 0, 2, 0)).unwrap();
        append(&mut table, &info(1, 0, 2, 2, 2)).unwrap();
        append(&mut table, &info(2, 0, 0, 2, 4)).unwrap();
        table.truncate_from(2);
        assert_eq!(table.entry(1).unwrap().batches.len(), 1);
        assert!(table.entry(2).is_none());
        assert_eq!(table.check(&info(1, 0, 2, 2, -1)), Ok(SequenceCheck::Append), "the cut batch may come again");
    }

    fn marker_info(producer_id: i64, epoch: i16, commit: bool, offset: i64) -> (BatchInfo, batch::ControlRecord) {
        let control = batch::ControlRecord { commit, coordinator_epoch: 0 };
        let mut info =
            batch::validate_stored(&batch::build_control_batch(producer_id, epoch, control, 0), 1 << 20).unwrap();
        info.base_offset = offset;
        (info, control)
    }

    fn txn_info(producer_id: i64, epoch: i16, first_seq: i32, base_offset: i64) -> BatchInfo {
        let mut builder = BatchBuilder::new(0).producer(producer_id, epoch, first_seq).transactional();
        builder.push(0, None, Some(b"v"), &[]);
        let mut info = batch::validate_produce(&builder.build(), 1 << 20).unwrap();
        info.base_offset = base_offset;
        info
    }

    #[test]
    fn a_transaction_opens_at_its_first_batch_and_a_marker_closes_it() {
        let mut table = ProducerStateTable::default();
        assert_eq!(table.record(&txn_info(1, 0, 0, 10), None), None);
        assert_eq!(table.record(&txn_info(2, 0, 0, 11), None), None);
        assert_eq!(table.record(&txn_info(1, 0, 1, 12), None), None);
        assert_eq!(table.ongoing_transactions().collect::<Vec<_>>(), vec![(1, 10), (2, 11)]);
        let (info, control) = marker_info(1, 1, false, 13);
        let done = table.record(&info, Some(control)).unwrap();
        assert_eq!(
            done,
            CompletedTxn { producer_id: 1, first_offset: 10, last_offset: 13, commit: false, last_stable_offset: 11 }
        );
        assert_eq!(table.entry(1).unwrap().epoch, 1, "a newer marker epoch is the producer's");
        assert!(table.entry(1).unwrap().batches.is_empty());
        assert_eq!(table.check(&txn_info(1, 1, 0, -1)), Ok(SequenceCheck::Append), "the new epoch starts at 0");
        assert!(table.check(&txn_info(1, 1, 5, -1)).is_err());
        // A resent marker finds no transaction.
        let (info, control) = marker_info(1, 1, false, 14);
        assert_eq!(table.record(&info, Some(control)), None);
        let (info, control) = marker_info(2, 0, true, 15);
        assert_eq!(table.record(&info, Some(control)).unwrap().last_stable_offset, 16);
    }

    #[test]
    fn a_plain_batch_while_the_producers_transaction_is_open_is_refused() {
        let mut table = ProducerStateTable::default();
        table.record(&txn_info(1, 0, 0, 10), None);
        let plain = info(1, 0, 1, 1, -1);
        assert_eq!(table.check(&plain), Err(SequenceError::OutsideTransaction { producer_id: 1, epoch: 0 }));
        assert_eq!(table.check(&txn_info(1, 0, 1, -1)), Ok(SequenceCheck::Append), "inside it, it goes on");
        // A newer epoch fenced the transaction (its abort marker follows).
        assert_eq!(table.check(&info(1, 1, 0, 1, -1)), Ok(SequenceCheck::Append));
        let (marker, control) = marker_info(1, 0, true, 11);
        table.record(&marker, Some(control));
        assert_eq!(table.check(&info(1, 0, 1, 1, -1)), Ok(SequenceCheck::Append), "closed: plain batches again");
    }

    #[test]
    fn snapshots_keep_open_transactions_and_read_version_1() {
        let mut table = ProducerStateTable::default();
        table.record(&txn_info(1, 0, 0, 3), None);
        let (info, control) = marker_info(2, 4, true, 4);
        table.record(&info, Some(control));
        let bytes = table.encode(5);
        let (end, decoded) = ProducerStateTable::decode(&bytes).unwrap();
        assert_eq!((end, &decoded), (5, &table));
        assert_eq!(decoded.ongoing_transactions().collect::<Vec<_>>(), vec![(1, 3)]);
        assert_eq!(decoded.entry(2).unwrap().epoch, 4, "an entry with no batches keeps its epoch");
        // Version 1, as written before transactions: one producer, one batch.
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"SPPS");
        v1.extend_from_slice(&1u16.to_be_bytes());
        v1.extend_from_slice(&9i64.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&7i64.to_be_bytes());
        v1.extend_from_slice(&2i16.to_be_bytes());
        v1.push(1);
        for field in [0i32, 4] {
            v1.extend_from_slice(&field.to_be_bytes());
        }
        for field in [3i64, 7] {
            v1.extend_from_slice(&field.to_be_bytes());
        }
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let (end, old) = ProducerStateTable::decode(&v1).unwrap();
        assert_eq!(end, 9);
        let entry = old.entry(7).unwrap();
        assert_eq!((entry.epoch, entry.batches.len(), entry.current_txn_first_offset), (2, 1, None));
        // A transaction at or past the snapshot's end is damage.
        let mut past = ProducerStateTable::default();
        past.record(&txn_info(1, 0, 0, 3), None);
        let mut bytes = past.encode(4);
        let at = HEADER_BYTES + 8 + 2 + 7;
        bytes[at] = 4;
        let body = bytes.len() - CRC_BYTES;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(ProducerStateTable::decode(&bytes), None);
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut table = ProducerStateTable::default();
        for i in 0..6 {
            append(&mut table, &info(1, 0, i, 1, i64::from(i))).unwrap();
        }
        append(&mut table, &info(i64::MAX, i16::MAX, 0, 3, 6)).unwrap();
        let bytes = table.encode(9);
        assert_eq!(ProducerStateTable::decode(&bytes), Some((9, table.clone())));
        for at in [0, 5, 20, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert_eq!(ProducerStateTable::decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(ProducerStateTable::decode(&bytes[..bytes.len() - 1]), None);
        let empty = ProducerStateTable::default().encode(0);
        assert_eq!(ProducerStateTable::decode(&empty), Some((0, ProducerStateTable::default())));
    }
}
