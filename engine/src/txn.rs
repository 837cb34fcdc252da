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

use std::collections::VecDeque;

use crate::producer_state::CompletedTxn;

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
    /// Ascending by `last_offset` (markers are appended in offset order).
    aborted: Vec<AbortedTxn>,
    /// (first offset, marker offset) of completed transactions whose marker
    /// is at or above the high watermark, ascending by marker offset.
    unstable: VecDeque<(i64, i64)>,
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
            self.unstable.push_back((done.first_offset, done.last_offset));
        }
    }

    /// The high watermark moved to `high_watermark`: markers below it are
    /// visible to consumers, so their transactions no longer hold the last
    /// stable offset back.
    pub(crate) fn high_watermark_moved(&mut self, high_watermark: i64) {
        while self.unstable.front().is_some_and(|&(_, marker_offset)| marker_offset < high_watermark) {
            self.unstable.pop_front();
        }
    }

    /// Kafka's last stable offset: the high watermark, held back by the
    /// oldest open transaction (`first_ongoing_offset`) and by completed
    /// ones whose marker is not below the high watermark yet.
    pub(crate) fn last_stable_offset(&self, high_watermark: i64, first_ongoing_offset: Option<i64>) -> i64 {
        let unstable = self.unstable.iter().map(|&(first_offset, _)| first_offset).min();
        [Some(high_watermark), first_ongoing_offset, unstable].into_iter().flatten().min().unwrap_or(high_watermark)
    }

    /// The aborted transactions that may have records in
    /// `[start_offset, end_offset)`, ordered by first offset.
    pub(crate) fn aborted_between(&self, start_offset: i64, end_offset: i64) -> Vec<AbortedTxn> {
        let from = self.aborted.partition_point(|txn| txn.last_offset < start_offset);
        let mut found: Vec<AbortedTxn> =
            self.aborted[from..].iter().filter(|txn| txn.first_offset < end_offset).copied().collect();
        found.sort_by_key(|txn| (txn.first_offset, txn.last_offset));
        found
    }

    /// The log was cut at `offset` and the producer state rebuilt by a
    /// replay from `replayed_from`, which saw `replayed` complete: what the
    /// replay saw replaces what was known from there on.
    pub(crate) fn rebuilt_from(&mut self, replayed_from: i64, replayed: &[CompletedTxn], high_watermark: i64) {
        self.aborted.retain(|txn| txn.last_offset < replayed_from);
        self.unstable.retain(|&(_, marker_offset)| marker_offset < replayed_from);
        for done in replayed {
            self.complete(done, high_watermark);
        }
        self.high_watermark_moved(high_watermark);
    }

    /// The log start moved to `offset`: transactions wholly below it are
    /// gone with their records.
    pub(crate) fn drop_below(&mut self, offset: i64) {
        self.aborted.retain(|txn| txn.last_offset >= offset);
    }
}
