//! The leader-epoch cache of a partition (epoch -> first offset written in
//! it) and its checkpoint file. Replication uses it to find where a
//! follower's log diverges from the leader's (Kafka's KIP-101/KIP-279).
//!
//! File (`leader-epoch-checkpoint`), big-endian, written atomically:
//!   magic "SPLE" | version u16 = 1 | count u32 | count x (epoch i32,
//!   start_offset i64) | crc32c u32 over everything before it.

use crate::limits::EPOCH_ENTRIES_MAX;

const MAGIC: &[u8; 4] = b"SPLE";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 2 + 4;
const ENTRY_BYTES: usize = 4 + 8;
const CRC_BYTES: usize = 4;

/// Bytes the checkpoint file can ever take; larger files are corrupt.
pub const CHECKPOINT_BYTES_MAX: usize = HEADER_BYTES + EPOCH_ENTRIES_MAX * ENTRY_BYTES + CRC_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("leader-epoch checkpoint is {0} bytes, too short or not a whole number of entries")]
    BadLength(usize),
    #[error("leader-epoch checkpoint has a bad magic or version")]
    BadHeader,
    #[error("leader-epoch checkpoint checksum mismatch")]
    BadCrc,
    #[error("leader-epoch checkpoint entries do not grow")]
    NotMonotonic,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|entry| entry.epoch)
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the
    /// cache changed (and so must be checkpointed). Older epochs are ignored:
    /// a batch may carry an epoch below the newest one only when replicated.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 {
            return false;
        }
        match self.entries.last() {
            Some(last) if epoch <= last.epoch => false,
            Some(last) => {
                assert!(start_offset >= last.start_offset, "epoch start offsets must not go back");
                self.entries.push(EpochEntry { epoch, start_offset });
                true
            }
            None => {
                self.entries.push(EpochEntry { epoch, start_offset });
                true
            }
        }
    }

    /// Kafka's OffsetForLeaderEpoch: the largest epoch <= `epoch` and the
    /// offset where it ended (the next epoch's start, or the log end).
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<EpochEntry> {
        let count = self.entries.partition_point(|entry| entry.epoch <= epoch);
        let found = self.entries.get(count.checked_sub(1)?)?;
        let end_offset = self.entries.get(count).map_or(log_end_offset, |next| next.start_offset);
        Some(EpochEntry { epoch: found.epoch, start_offset: end_offset })
    }

    /// Forgets epochs that start at or after `offset` (the log was cut there).
    pub fn truncate_from(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.start_offset < offset);
        self.entries.len() != before
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + CRC_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.start_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() < HEADER_BYTES + CRC_BYTES || bytes.len() > CHECKPOINT_BYTES_MAX {
            return Err(CheckpointError::BadLength(bytes.len()));
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_BYTES);
        let stored_crc = u32::from_be_bytes(crc_bytes.try_into().map_err(|_| CheckpointError::BadLength(bytes.len()))?);
        if crc32c::crc32c(body) != stored_crc {
            return Err(CheckpointError::BadCrc);
        }
        let (header, entry_bytes) = body.split_at(HEADER_BYTES);
        let (magic, rest) = header.split_at(MAGIC.len());
        let (version, count) = rest.split_at(2);
        if magic != MAGIC || version != VERSION.to_be_bytes() {
            return Err(CheckpointError::BadHeader);
        }
        let count = u32::from_be_bytes(count.try_into().map_err(|_| CheckpointError::BadHeader)?) as usize;
        if entry_bytes.len() != count.saturating_mul(ENTRY_BYTES) {
            return Err(CheckpointError::BadLength(bytes.len()));
        }
        let mut cache = LeaderEpochCache::default();
        for chunk in entry_bytes.chunks_exact(ENTRY_BYTES) {
            let (epoch, start) = chunk.split_at(4);
            let entry = EpochEntry {
                epoch: i32::from_be_bytes(epoch.try_into().map_err(|_| CheckpointError::BadHeader)?),
                start_offset: i64::from_be_bytes(start.try_into().map_err(|_| CheckpointError::BadHeader)?),
            };
            let grows = cache
                .entries
                .last()
                .is_none_or(|last| entry.epoch > last.epoch && entry.start_offset >= last.start_offset);
            if !grows || entry.epoch < 0 || entry.start_offset < 0 {
                return Err(CheckpointError::NotMonotonic);
            }
            cache.entries.push(entry);
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for &(epoch, start) in entries {
            assert!(cache.assign(epoch, start));
        }
        cache
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka_offset_for_leader_epoch() {
        let cache = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(cache.end_offset_for(0, 30), None);
        assert_eq!(cache.end_offset_for(1, 30), Some(EpochEntry { epoch: 1, start_offset: 10 }));
        // Epoch 2 was never led here: answer with epoch 1 and where it ended.
        assert_eq!(cache.end_offset_for(2, 30), Some(EpochEntry { epoch: 1, start_offset: 10 }));
        assert_eq!(cache.end_offset_for(4, 30), Some(EpochEntry { epoch: 4, start_offset: 30 }));
        assert_eq!(cache.end_offset_for(9, 30), Some(EpochEntry { epoch: 4, start_offset: 30 }));
    }

    #[test]
    fn stale_epochs_do_not_enter_the_cache() {
        let mut cache = cache(&[(2, 0)]);
        assert!(!cache.assign(1, 5));
        assert!(!cache.assign(2, 5));
        assert_eq!(cache.entries().len(), 1);
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let cache = cache(&[(1, 0), (3, 10)]);
        let bytes = cache.encode();
        assert_eq!(LeaderEpochCache::decode(&bytes), Ok(cache));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(LeaderEpochCache::decode(&damaged).is_err(), "flip at byte {at} was accepted");
        }
        assert_eq!(LeaderEpochCache::decode(&bytes[..bytes.len() - 1]).err(), Some(CheckpointError::BadCrc));
        assert!(LeaderEpochCache::decode(&[]).is_err());
    }

    #[test]
    fn truncation_drops_epochs_starting_at_or_after_the_cut() {
        let mut cache = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert!(cache.truncate_from(10));
        assert_eq!(cache.latest_epoch(), Some(1));
    }
}
