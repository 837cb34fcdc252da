//! Sparse in-memory indexes of one segment and their file encodings.
//!
//! `.index`: one entry every `index_interval_bytes` of log, mapping an offset
//! (relative to the segment base) to the byte position of the batch that
//! starts with it. `.timeindex`: an entry whenever the segment's largest
//! timestamp so far grew at such a point. Both are rebuilt from the log when
//! missing or damaged, so they are hints: every position found through them
//! is checked against the batch header it points to.

use crate::limits::{INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Clone, Default)]
pub struct OffsetIndex {
    entries: Vec<IndexEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, entry: IndexEntry) {
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset, "index offsets must grow");
            assert!(entry.position > last.position, "index positions must grow");
        }
        self.entries.push(entry);
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    /// The entry with the largest relative offset <= `relative_offset`.
    pub fn floor(&self, relative_offset: u32) -> Option<IndexEntry> {
        let count = self.entries.partition_point(|entry| entry.relative_offset <= relative_offset);
        count.checked_sub(1).map(|at| self.entries[at])
    }

    /// Drops entries pointing at or past `position` (after a truncation).
    pub fn truncate_to_position(&mut self, position: u32) {
        self.entries.retain(|entry| entry.position < position);
    }

    /// Drops the newest entry (recovery found it pointing at bad data).
    pub fn pop(&mut self) -> Option<IndexEntry> {
        self.entries.pop()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
            out.extend_from_slice(&entry.position.to_be_bytes());
        }
        out
    }

    /// Decodes an index file against a segment of `segment_bytes` bytes.
    /// Returns the longest valid prefix and whether anything was dropped:
    /// entries must grow strictly and point inside the segment.
    pub fn decode(bytes: &[u8], segment_bytes: u64) -> (OffsetIndex, bool) {
        let mut index = OffsetIndex::default();
        let mut chunks = bytes.chunks_exact(INDEX_ENTRY_BYTES);
        for chunk in chunks.by_ref() {
            let (offset_bytes, position_bytes) = chunk.split_at(4);
            let entry = IndexEntry {
                relative_offset: u32::from_be_bytes(offset_bytes.try_into().unwrap_or_default()),
                position: u32::from_be_bytes(position_bytes.try_into().unwrap_or_default()),
            };
            let grows = index
                .last()
                .is_none_or(|last| entry.relative_offset > last.relative_offset && entry.position > last.position);
            if !grows || u64::from(entry.position) >= segment_bytes {
                return (index, true);
            }
            index.entries.push(entry);
        }
        let partial = !chunks.remainder().is_empty();
        (index, partial)
    }
}

#[derive(Debug, Clone, Default)]
pub struct TimeIndex {
    entries: Vec<TimeIndexEntry>,
}

impl TimeIndex {
    /// Adds an entry when `timestamp_ms` is larger than every earlier one.
    pub fn maybe_push(&mut self, entry: TimeIndexEntry) {
        let grows = self
            .entries
            .last()
            .is_none_or(|last| entry.timestamp_ms > last.timestamp_ms && entry.relative_offset > last.relative_offset);
        if grows {
            self.entries.push(entry);
        }
    }

    pub fn entries(&self) -> &[TimeIndexEntry] {
        &self.entries
    }

    /// The newest entry whose timestamp is below `timestamp_ms`: every batch
    /// before its offset is older than `timestamp_ms`, so a search for the
    /// first record at or after `timestamp_ms` may start there.
    pub fn floor_below(&self, timestamp_ms: i64) -> Option<TimeIndexEntry> {
        let count = self.entries.partition_point(|entry| entry.timestamp_ms < timestamp_ms);
        count.checked_sub(1).map(|at| self.entries[at])
    }

    pub fn truncate_to_offset(&mut self, relative_offset: u32) {
        self.entries.retain(|entry| entry.relative_offset < relative_offset);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_INDEX_ENTRY_BYTES);
        for entry in &self.entries {
            out.extend_from_slice(&entry.timestamp_ms.to_be_bytes());
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        out
    }

    /// Decodes a time index file; entries must grow strictly in both fields
    /// and stay below `relative_offset_end`. Returns the valid prefix and
    /// whether anything was dropped.
    pub fn decode(bytes: &[u8], relative_offset_end: u64) -> (TimeIndex, bool) {
        let mut index = TimeIndex::default();
        let mut chunks = bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES);
        for chunk in chunks.by_ref() {
            let (timestamp_bytes, offset_bytes) = chunk.split_at(8);
            let entry = TimeIndexEntry {
                timestamp_ms: i64::from_be_bytes(timestamp_bytes.try_into().unwrap_or_default()),
                relative_offset: u32::from_be_bytes(offset_bytes.try_into().unwrap_or_default()),
            };
            let grows = index.entries.last().is_none_or(|last| {
                entry.timestamp_ms > last.timestamp_ms && entry.relative_offset > last.relative_offset
            });
            if !grows || u64::from(entry.relative_offset) >= relative_offset_end {
                return (index, true);
            }
            index.entries.push(entry);
        }
        let partial = !chunks.remainder().is_empty();
        (index, partial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_index_round_trips_and_floors() {
        let mut index = OffsetIndex::default();
        index.push(IndexEntry { relative_offset: 0, position: 0 });
        index.push(IndexEntry { relative_offset: 10, position: 4096 });
        index.push(IndexEntry { relative_offset: 25, position: 9000 });
        let (decoded, dropped) = OffsetIndex::decode(&index.encode(), 10_000);
        assert!(!dropped);
        assert_eq!(decoded.entries(), index.entries());
        assert_eq!(decoded.floor(9).map(|e| e.position), Some(0));
        assert_eq!(decoded.floor(10).map(|e| e.position), Some(4096));
        assert_eq!(decoded.floor(1000).map(|e| e.position), Some(9000));
    }

    #[test]
    fn offset_index_decode_keeps_only_the_valid_prefix() {
        let mut index = OffsetIndex::default();
        index.push(IndexEntry { relative_offset: 1, position: 100 });
        index.push(IndexEntry { relative_offset: 2, position: 200 });
        let mut bytes = index.encode();
        // Zero padding after the entries, as a direct write leaves it.
        bytes.extend_from_slice(&[0; 16]);
        let (decoded, dropped) = OffsetIndex::decode(&bytes, 1000);
        assert!(dropped);
        assert_eq!(decoded.entries(), index.entries());
        // An entry pointing past the segment end is rejected.
        let (decoded, dropped) = OffsetIndex::decode(&index.encode(), 150);
        assert!(dropped);
        assert_eq!(decoded.entries().len(), 1);
    }

    #[test]
    fn time_index_finds_a_safe_start_for_a_timestamp_search() {
        let mut index = TimeIndex::default();
        index.maybe_push(TimeIndexEntry { timestamp_ms: 100, relative_offset: 0 });
        index.maybe_push(TimeIndexEntry { timestamp_ms: 90, relative_offset: 5 });
        index.maybe_push(TimeIndexEntry { timestamp_ms: 200, relative_offset: 10 });
        assert_eq!(index.entries().len(), 2, "a smaller timestamp adds no entry");
        assert_eq!(index.floor_below(100), None);
        assert_eq!(index.floor_below(150).map(|e| e.relative_offset), Some(0));
        assert_eq!(index.floor_below(201).map(|e| e.relative_offset), Some(10));
        let (decoded, dropped) = TimeIndex::decode(&index.encode(), 11);
        assert!(!dropped);
        assert_eq!(decoded.entries(), index.entries());
    }
}
