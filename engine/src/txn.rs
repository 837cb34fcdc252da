//! Transactions as a partition log sees them (Kafka's KIP-98 partition
//! side): markers, aborted transactions and the last stable offset.
//!
//! Which producer has a transaction open, and since which offset, lives in
//! the producer state (`producer_state.rs`), since it is rebuilt the same
//! way. This module keeps what a marker leaves behind:
//! - the aborted transactions (Kafka's `.txnindex` entries), oldest marker
//!   first, which read_committed consumers get with their fetch so that
//!   they can drop aborted records;
//! - the completed transactions whose marker is not yet below the high
//!   watermark: until it is, a consumer could see the data but not the
//!   marker, so they still hold the last stable offset back.
//!
//! In memory are only the aborted transactions whose marker is in the
//! active segment (or a rolled one not sealed yet): a sealed segment's live
//! in its `.txnindex` file alone, read when a read_committed fetch or the
//! cleaner reaches it, as Kafka reads its transaction indexes. A client that
//! aborts transactions in a loop therefore costs the broker memory in
//! proportion to one segment, not to the whole log.
//!
//! The aborted list persists as Kafka's `.txnindex`, one file beside each
//! segment holding the entries whose abort marker is in that segment,
//! written atomically when the segment is sealed, at close and after a
//! truncation (the cut segment's). Entries of 34 bytes, big-endian, no
//! header, in marker order: version i16 = 0 | producer_id i64 |
//! first_offset i64 | last_offset i64 | last_stable_offset i64. On open,
//! the entries below the producer snapshot the state starts from come from
//! these files and the rest from the replay after the snapshot; a segment
//! below it whose file is missing or damaged is rebuilt from a replay of
//! the whole log (and its file written again).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use crate::batch::BATCH_HEADER_BYTES;
use crate::error::{LogError, Result};
use crate::io::{Storage, read_file, write_file_atomic};
use crate::limits::TXN_INDEX_ENTRY_BYTES;
use crate::producer_state::{CompletedTxn, ProducerStateTable, Recovered};
use crate::segment::Segment;

/// The only `.txnindex` entry version (Kafka's `AbortedTxn.CURRENT_VERSION`).
const TXN_INDEX_VERSION: i16 = 0;

/// A transaction marker the coordinator asks a partition to write
/// (WriteTxnMarkers): the end of `producer_id`'s transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// An aborted transaction: Kafka's `.txnindex` entry (`AbortedTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AbortedTxn {
    pub producer_id: i64,
    /// The offset of the transaction's first batch.
    pub first_offset: i64,
    /// The offset of its abort marker.
    pub last_offset: i64,
    /// The last stable offset once the marker was written: the first offset
    /// of the oldest other transaction still open then, else the marker's
    /// offset + 1.
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub(crate) fn from_completed(done: &CompletedTxn) -> Self {
        AbortedTxn {
            producer_id: done.producer_id,
            first_offset: done.first_offset,
            last_offset: done.last_offset,
            last_stable_offset: done.last_stable_offset,
        }
    }
}

/// What the markers of a log left behind (module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TxnState {
    /// The aborted transactions whose marker is at or above
    /// `resident_from`, ascending by `last_offset` (markers are appended in
    /// offset order). Those below live in sealed segments' `.txnindex`.
    aborted: Vec<AbortedTxn>,
    /// The base offset of the oldest segment whose entries are in memory.
    resident_from: i64,
    /// (producer id, first offset, marker offset) of completed transactions
    /// whose marker is at or above the high watermark, ascending by marker
    /// offset.
    unstable: VecDeque<(i64, i64, i64)>,
}

impl TxnState {
    /// Takes in a transaction a marker completed (at append or replay),
    /// with the high watermark as it is now.
    pub(crate) fn complete(&mut self, done: &CompletedTxn, high_watermark: i64) {
        if !done.commit {
            assert!(self.aborted.last().is_none_or(|last| last.last_offset < done.last_offset), "markers in order");
            self.aborted.push(AbortedTxn::from_completed(done));
        }
        if done.last_offset >= high_watermark {
            self.unstable.push_back((done.producer_id, done.first_offset, done.last_offset));
        }
    }

    /// The high watermark moved to `high_watermark`: markers below it are
    /// visible to consumers, so their transactions no longer hold the last
    /// stable offset back.
    pub(crate) fn high_watermark_moved(&mut self, high_watermark: i64) {
        while self.unstable.front().is_some_and(|&(_, _, marker_offset)| marker_offset < high_watermark) {
            self.unstable.pop_front();
        }
    }

    /// Kafka's last stable offset: the high watermark, held back by the
    /// oldest open transaction (`first_ongoing_offset`) and by completed
    /// ones whose marker is not below the high watermark yet; never below
    /// the log start (Kafka's rule: a transaction that began below it
    /// holds the last stable offset there).
    pub(crate) fn last_stable_offset(
        &self,
        log_start_offset: i64,
        high_watermark: i64,
        first_ongoing_offset: Option<i64>,
    ) -> i64 {
        debug_assert!(log_start_offset <= high_watermark);
        let unstable = self.unstable.iter().map(|&(_, first_offset, _)| first_offset).min();
        let held = [Some(high_watermark), first_ongoing_offset, unstable].into_iter().flatten().min();
        held.unwrap_or(high_watermark).max(log_start_offset)
    }

    /// (producer id, first offset) of the completed transactions whose
    /// marker is at or after `offset` and not yet below the high
    /// watermark: a truncation to `offset` reopens them.
    pub(crate) fn unstable_from(&self, offset: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.unstable.iter().filter(move |&&(_, _, marker)| marker >= offset).map(|&(id, first, _)| (id, first))
    }

    /// Entries whose marker is below this offset are not in memory: they
    /// are in the `.txnindex` of the sealed segment holding the marker.
    pub(crate) fn resident_from(&self) -> i64 {
        self.resident_from
    }

    /// How many aborted transactions are held in memory.
    pub(crate) fn resident_count(&self) -> usize {
        self.aborted.len()
    }

    /// A segment ending at `offset` was sealed and its `.txnindex` written:
    /// its entries leave memory.
    pub(crate) fn evict_below(&mut self, offset: i64) {
        self.aborted.retain(|txn| txn.last_offset >= offset);
        self.resident_from = self.resident_from.max(offset);
    }

    /// The entries of the sealed segments from `offset` up to
    /// `resident_from` come back into memory (a truncation into them
    /// makes the cut segment the active one).
    pub(crate) fn load_below(&mut self, offset: i64, mut entries: Vec<AbortedTxn>) {
        assert!(offset <= self.resident_from, "entries come back below the resident ones");
        assert!(
            entries.iter().all(|txn| (offset..self.resident_from).contains(&txn.last_offset)),
            "loaded entries are those of the segments below the resident ones"
        );
        entries.append(&mut self.aborted);
        self.set_aborted(entries, offset);
    }

    /// The resident aborted transactions that may have records in
    /// `[start_offset, end_offset)`, ordered by first offset.
    pub(crate) fn aborted_between(&self, start_offset: i64, end_offset: i64) -> Vec<AbortedTxn> {
        let from = self.aborted.partition_point(|txn| txn.last_offset < start_offset);
        let mut found: Vec<AbortedTxn> =
            self.aborted[from..].iter().filter(|txn| txn.first_offset < end_offset).copied().collect();
        found.sort_by_key(|txn| (txn.first_offset, txn.last_offset));
        found
    }

    /// The aborted transactions whose marker is in `[base_offset,
    /// end_offset)`: one segment's `.txnindex`.
    pub(crate) fn aborted_in(&self, base_offset: i64, end_offset: i64) -> Vec<AbortedTxn> {
        let from = self.aborted.partition_point(|txn| txn.last_offset < base_offset);
        self.aborted[from..].iter().take_while(|txn| txn.last_offset < end_offset).copied().collect()
    }

    /// Replaces the resident aborted transactions: those whose marker is
    /// at or above `resident_from` (recovery).
    pub(crate) fn set_aborted(&mut self, aborted: Vec<AbortedTxn>, resident_from: i64) {
        assert!(aborted.windows(2).all(|pair| pair[0].last_offset < pair[1].last_offset), "markers in order");
        assert!(aborted.iter().all(|txn| txn.last_offset >= resident_from), "only resident entries");
        self.aborted = aborted;
        self.resident_from = resident_from;
    }

    /// The log was cut at `offset`: what a marker at or above it left
    /// goes. Nothing is added: a truncation only takes markers away, and
    /// what the log knew of the markers below the cut stays true (a replay
    /// could not say better: it may start after a transaction's first
    /// batch).
    pub(crate) fn truncate_from(&mut self, offset: i64) {
        self.aborted.retain(|txn| txn.last_offset < offset);
        self.unstable.retain(|&(_, _, marker_offset)| marker_offset < offset);
    }

    /// The log start moved to `offset`: transactions wholly below it are
    /// gone with their records.
    pub(crate) fn drop_below(&mut self, offset: i64) {
        self.aborted.retain(|txn| txn.last_offset >= offset);
    }
}

/// One segment's `.txnindex` bytes.
pub fn encode_index(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TXN_INDEX_ENTRY_BYTES);
    for txn in entries {
        assert!(txn.first_offset <= txn.last_offset, "a transaction ends at or after its start");
        out.extend_from_slice(&TXN_INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&txn.producer_id.to_be_bytes());
        out.extend_from_slice(&txn.first_offset.to_be_bytes());
        out.extend_from_slice(&txn.last_offset.to_be_bytes());
        out.extend_from_slice(&txn.last_stable_offset.to_be_bytes());
    }
    assert_eq!(out.len(), entries.len() * TXN_INDEX_ENTRY_BYTES);
    out
}

/// The entries of a segment's `.txnindex`, or `None` if it does not check
/// out: whole entries of version 0, markers inside `[base_offset,
/// end_offset)` in increasing order, each transaction starting at or before
/// its marker (and not below 0), a non-negative producer id.
pub fn decode_index(bytes: &[u8], base_offset: i64, end_offset: i64) -> Option<Vec<AbortedTxn>> {
    if !bytes.len().is_multiple_of(TXN_INDEX_ENTRY_BYTES) {
        return None;
    }
    let mut entries: Vec<AbortedTxn> = Vec::with_capacity(bytes.len() / TXN_INDEX_ENTRY_BYTES);
    for chunk in bytes.chunks_exact(TXN_INDEX_ENTRY_BYTES) {
        let (version, rest) = chunk.split_at(2);
        let field = |at: usize| i64::from_be_bytes(rest[at * 8..at * 8 + 8].try_into().unwrap_or_default());
        let txn = AbortedTxn {
            producer_id: field(0),
            first_offset: field(1),
            last_offset: field(2),
            last_stable_offset: field(3),
        };
        let in_order = entries.last().is_none_or(|previous| previous.last_offset < txn.last_offset);
        let sane = version == TXN_INDEX_VERSION.to_be_bytes()
            && txn.producer_id >= 0
            && (0..=txn.last_offset).contains(&txn.first_offset)
            && (base_offset..end_offset).contains(&txn.last_offset);
        if !(in_order && sane) {
            return None;
        }
        entries.push(txn);
    }
    Some(entries)
}

/// Writes one segment's `.txnindex` (atomically).
pub(crate) async fn write_index<S: Storage>(storage: &S, path: &Path, entries: &[AbortedTxn]) -> Result<()> {
    write_file_atomic(storage, path, &encode_index(entries)).await.map_err(|err| LogError::io("write", path, err))
}

/// The aborted transactions of a log being opened (module docs): from the
/// `.txnindex` files below `recovered.replayed_from`, then from the replay
/// after it. A segment below it without a valid file gets its entries from
/// a replay of the whole log, and its file written again if it is sealed.
///
/// Every segment but the active (last) one leaves with a valid `.txnindex`
/// and its entry count in `aborted_entries`; the returned state holds the
/// active segment's entries only.
pub(crate) async fn recover_aborted<S: Storage>(
    storage: &S,
    segments: &mut BTreeMap<i64, Segment<S::File>>,
    recovered: &Recovered,
    gaps_below: i64,
) -> Result<TxnState> {
    let replayed_from = recovered.replayed_from;
    let mut from_files: Vec<AbortedTxn> = Vec::new();
    let mut missing: Vec<(i64, i64)> = Vec::new();
    let active_base = segments.keys().next_back().copied().unwrap_or(0);
    for segment in segments.values().filter(|segment| segment.base_offset < replayed_from) {
        let (base, end) = (segment.base_offset, segment.next_offset);
        let bytes_max = (segment.written_bytes as usize / BATCH_HEADER_BYTES + 1) * TXN_INDEX_ENTRY_BYTES;
        let path = segment.txn_index_path();
        match read_file(storage, &path, bytes_max).await.ok().flatten().and_then(|b| decode_index(&b, base, end)) {
            Some(entries) => from_files.extend(entries.into_iter().filter(|txn| txn.last_offset < replayed_from)),
            None => missing.push((base, end)),
        }
    }
    let mut rebuilt: Vec<AbortedTxn> = Vec::new();
    if !missing.is_empty() {
        tracing::warn!(segments = missing.len(), "rebuilding missing or damaged transaction indexes from the log");
        let mut table = ProducerStateTable::default();
        let sources = crate::producer_state::producer_sources(segments, i64::MIN);
        let completed = crate::producer_state::replay(&mut table, &sources, gaps_below, i64::MIN).await?;
        let in_missing = |offset: i64| missing.iter().any(|&(base, end)| (base..end).contains(&offset));
        rebuilt = aborted_of(&completed)
            .filter(|txn| txn.last_offset < replayed_from && in_missing(txn.last_offset))
            .collect();
    }
    let mut aborted = from_files;
    aborted.extend(rebuilt);
    aborted.sort_by_key(|txn| txn.last_offset);
    aborted.extend(aborted_of(&recovered.completed));
    // The sealed segments' entries go to their files and leave memory.
    // Written again: a file found missing or damaged, and a segment
    // reaching past the snapshot the replay started from (its file, if
    // any, may predate markers the replay found).
    for segment in segments.values_mut().filter(|segment| segment.base_offset < active_base) {
        let (base, end) = (segment.base_offset, segment.next_offset);
        let entries: Vec<AbortedTxn> =
            aborted.iter().filter(|txn| (base..end).contains(&txn.last_offset)).copied().collect();
        if end > replayed_from || missing.iter().any(|&(missing_base, _)| missing_base == base) {
            write_index(storage, &segment.txn_index_path(), &entries).await?;
        }
        segment.aborted_entries = entries.len();
    }
    let mut state = TxnState::default();
    state.set_aborted(aborted.into_iter().filter(|txn| txn.last_offset >= active_base).collect(), active_base);
    Ok(state)
}

/// The entries of a sealed segment's `.txnindex`, which must be the
/// `entries` its segment counts: anything else is corruption.
pub(crate) async fn read_index<S: Storage>(
    storage: &S,
    path: &Path,
    base_offset: i64,
    end_offset: i64,
    entries: usize,
) -> Result<Vec<AbortedTxn>> {
    let bytes_max = entries * TXN_INDEX_ENTRY_BYTES;
    let bytes = read_file(storage, path, bytes_max)
        .await
        .map_err(|err| LogError::io("read", path, err))?
        .ok_or_else(|| LogError::corruption(path, 0, "transaction index missing or longer than its segment counts"))?;
    match decode_index(&bytes, base_offset, end_offset) {
        Some(decoded) if decoded.len() == entries => Ok(decoded),
        _ => Err(LogError::corruption(path, 0, format!("transaction index is not the {entries} entries written"))),
    }
}

fn aborted_of(completed: &[CompletedTxn]) -> impl Iterator<Item = AbortedTxn> + '_ {
    completed.iter().filter(|done| !done.commit).map(AbortedTxn::from_completed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn txn(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn { producer_id, first_offset, last_offset, last_stable_offset: first_offset }
    }

    #[test]
    fn a_txnindex_entry_is_kafkas_34_bytes_big_endian() {
        let bytes =
            encode_index(&[AbortedTxn { producer_id: 1, first_offset: 2, last_offset: 3, last_stable_offset: 4 }]);
        let mut expected = vec![0, 0];
        for field in [1i64, 2, 3, 4] {
            expected.extend_from_slice(&field.to_be_bytes());
        }
        assert_eq!(bytes, expected);
        assert_eq!(
            decode_index(&bytes, 0, 10),
            Some(vec![AbortedTxn { producer_id: 1, first_offset: 2, last_offset: 3, last_stable_offset: 4 }])
        );
        assert_eq!(decode_index(&[], 0, 10), Some(vec![]));
    }

    #[test]
    fn a_damaged_txnindex_is_refused() {
        let entries = [txn(1, 0, 5), txn(2, 3, 7)];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes, 5, 8), Some(entries.to_vec()));
        assert_eq!(decode_index(&bytes[..bytes.len() - 1], 5, 8), None, "a torn entry");
        assert_eq!(decode_index(&bytes, 6, 8), None, "a marker before the segment");
        assert_eq!(decode_index(&bytes, 5, 7), None, "a marker past its end");
        assert_eq!(decode_index(&encode_index(&[txn(2, 3, 7), txn(1, 0, 5)]), 0, 8), None, "out of order");
        let mut bad_version = bytes.clone();
        bad_version[1] = 1;
        assert_eq!(decode_index(&bad_version, 5, 8), None);
        let mut negative_id = bytes.clone();
        negative_id[2] = 0x80;
        assert_eq!(decode_index(&negative_id, 5, 8), None);
        let mut starts_after_its_marker = bytes;
        starts_after_its_marker[2 + 8 + 7] = 9;
        assert_eq!(decode_index(&starts_after_its_marker, 5, 8), None);
    }

    #[test]
    fn the_last_stable_offset_is_held_by_open_and_unreplicated_transactions() {
        let mut state = TxnState::default();
        assert_eq!(state.last_stable_offset(0, 10, None), 10);
        assert_eq!(state.last_stable_offset(0, 10, Some(4)), 4);
        assert_eq!(state.last_stable_offset(6, 10, Some(4)), 6, "never below the log start");
        let done =
            CompletedTxn { producer_id: 1, first_offset: 2, last_offset: 12, commit: true, last_stable_offset: 13 };
        state.complete(&done, 10);
        assert_eq!(state.last_stable_offset(0, 10, None), 2, "its marker is not below the high watermark");
        assert_eq!(state.unstable_from(12).collect::<Vec<_>>(), vec![(1, 2)]);
        assert_eq!(state.unstable_from(13).count(), 0);
        state.high_watermark_moved(12);
        assert_eq!(state.last_stable_offset(0, 12, None), 2);
        state.high_watermark_moved(13);
        assert_eq!(state.last_stable_offset(0, 13, None), 13);
        assert!(state.aborted_between(0, 100).is_empty(), "a commit is no aborted entry");
    }
}
