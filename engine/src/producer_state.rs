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
//! The state is rebuilt from batch headers: `recover` loads the newest
//! snapshot at or below the log end and replays the batches after it.
//!
//! Snapshot file (`<offset:020>.snapshot`, the state after every batch
//! below `offset`), big-endian, written atomically:
//!   magic "SPPS" | version u16 = 1 | end_offset i64 | count u32 |
//!   count x (producer_id i64 | epoch i16 | batch_count u8 (1-5) |
//!   batch_count x (first_seq i32 | last_seq i32 | base_offset i64 |
//!   last_offset i64)) | crc32c u32 over everything before it.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::batch::BatchInfo;
use crate::error::{LogError, Result};
use crate::io::{Storage, StorageFile, read_file, write_file_atomic};
use crate::limits::{PRODUCER_BATCHES_RETAINED, PRODUCER_SNAPSHOTS_RETAINED, PRODUCER_STATE_ENTRIES_MAX};
use crate::segment;

pub(crate) const SNAPSHOT_SUFFIX: &str = "snapshot";
const MAGIC: &[u8; 4] = b"SPPS";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 2 + 8 + 4;
const BATCH_BYTES: usize = 4 + 4 + 8 + 8;
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 1;
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
    /// Oldest first; never empty, at most `PRODUCER_BATCHES_RETAINED`.
    pub batches: VecDeque<BatchMetadata>,
}

impl ProducerEntry {
    fn last_offset(&self) -> i64 {
        self.batches.back().map_or(i64::MIN, |batch| batch.last_offset)
    }
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

    /// Applies the sequence rules (module docs) to a produced batch.
    pub fn check(&self, info: &BatchInfo) -> Result<SequenceCheck, SequenceError> {
        let (producer_id, epoch, first_seq) = (info.producer_id, info.producer_epoch, info.base_sequence);
        if producer_id == NO_PRODUCER_ID {
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
        let expected_seq = if epoch > entry.epoch {
            0
        } else {
            let last = entry.batches.back().expect("an entry holds at least one batch").last_seq;
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
    pub fn record(&mut self, info: &BatchInfo) {
        if info.producer_id < 0 || info.base_sequence < 0 {
            return;
        }
        let batch = BatchMetadata {
            first_seq: info.base_sequence,
            last_seq: increment_sequence(info.base_sequence, info.last_offset_delta),
            base_offset: info.base_offset,
            last_offset: info.last_offset(),
        };
        let entry = self
            .entries
            .entry(info.producer_id)
            .or_insert_with(|| ProducerEntry { epoch: info.producer_epoch, batches: VecDeque::new() });
        if entry.epoch != info.producer_epoch {
            entry.epoch = info.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > PRODUCER_BATCHES_RETAINED {
            entry.batches.pop_front();
        }
        if self.entries.len() > PRODUCER_STATE_ENTRIES_MAX {
            self.evict_oldest();
        }
    }

    /// Forgets the producer whose last batch is oldest: past the limit,
    /// as Kafka expires idle producer ids (producer.id.expiration.ms). It
    /// is then unknown, and accepted at any sequence.
    fn evict_oldest(&mut self) {
        let oldest = self.entries.iter().min_by_key(|(_, entry)| entry.last_offset()).map(|(id, _)| *id);
        if let Some(producer_id) = oldest {
            self.entries.remove(&producer_id);
        }
    }

    /// Forgets batches at or after `offset` (the log was truncated there).
    /// A producer left with none is forgotten, so it is unknown.
    pub fn truncate_from(&mut self, offset: i64) {
        for entry in self.entries.values_mut() {
            entry.batches.retain(|batch| batch.last_offset < offset);
        }
        self.entries.retain(|_, entry| !entry.batches.is_empty());
    }

    pub fn encode(&self, end_offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * 64 + CRC_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&end_offset.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (producer_id, entry) in &self.entries {
            assert!(!entry.batches.is_empty() && entry.batches.len() <= PRODUCER_BATCHES_RETAINED);
            out.extend_from_slice(&producer_id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
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
        if reader.take(MAGIC.len())? != MAGIC || reader.take(2)? != VERSION.to_be_bytes() {
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
            let batch_count = usize::from(reader.take(1)?[0]);
            if producer_id < 0 || !(1..=PRODUCER_BATCHES_RETAINED).contains(&batch_count) {
                return None;
            }
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
            if table.entries.insert(producer_id, ProducerEntry { epoch, batches }).is_some() {
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

/// Producer state at `log_end_offset`: the newest valid snapshot at or
/// below it (newer ones are removed: the log lost what they saw), then
/// every batch from the snapshot's offset on. `sources_for(offset)` gives
/// the segments, in offset order, with where to start scanning for `offset`.
pub(crate) async fn recover<S: Storage>(
    storage: &S,
    dir: &Path,
    gaps_below: i64,
    log_end_offset: i64,
    sources_for: impl FnOnce(i64) -> Vec<SegmentSource<S::File>>,
) -> Result<ProducerStateTable> {
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
    replay(&mut table, &sources_for(from_offset), gaps_below, from_offset).await?;
    Ok(table)
}

/// Records every batch ending at or after `from_offset`.
pub(crate) async fn replay<F: StorageFile>(
    table: &mut ProducerStateTable,
    segments: &[SegmentSource<F>],
    gaps_below: i64,
    from_offset: i64,
) -> Result<()> {
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
            |_, info, _| {
                if info.last_offset() >= from_offset {
                    table.record(info);
                }
            },
        )
        .await?;
    }
    Ok(())
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
            table.record(info);
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
