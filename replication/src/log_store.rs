//! The node's Raft log in memory, as raft-rs reads it (`raft::Storage`):
//! the latest snapshot (with its data, so a leader can send it to a
//! follower that lags behind the compacted log) and the entries after it.
//! It mirrors what is durable in `storage.rs`: the node changes it only
//! after the same change is fsynced there.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

#[derive(Debug)]
pub(crate) struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index 0: no snapshot (the log starts at 1).
    snapshot: Snapshot,
    /// Indexes snapshot index + 1 onward, without gaps.
    entries: Vec<Entry>,
}

impl LogStore {
    pub fn new(conf_state: ConfState, snapshot: Option<Snapshot>, entries: Vec<Entry>) -> LogStore {
        let snapshot = snapshot.unwrap_or_default();
        let s = LogStore { hard_state: HardState::default(), conf_state, snapshot, entries };
        s.check();
        s
    }

    /// The log is contiguous and continues the snapshot.
    fn check(&self) {
        if let Some(first) = self.entries.first() {
            assert_eq!(first.index, self.snapshot_index() + 1, "log continues its snapshot");
        }
        for w in self.entries.windows(2) {
            assert_eq!(w[1].index, w[0].index + 1, "log without gaps");
        }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or_else(|| self.snapshot_index(), |e| e.index)
    }

    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or_else(|| self.snapshot.get_metadata().term, |e| e.term)
    }

    /// Append persisted entries; an entry at or below the last replaces the
    /// suffix from its index.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), raft::Error> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot_index() || first.index > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entries.truncate((first.index - self.snapshot_index() - 1) as usize);
        self.entries.extend_from_slice(ents);
        self.check();
        Ok(())
    }

    /// A snapshot from the leader replaces the whole log.
    pub fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snap;
    }

    /// Our own snapshot at an applied index: the entries it covers go.
    pub fn compact_to(&mut self, snap: Snapshot) {
        let index = snap.get_metadata().index;
        assert!(index > self.snapshot_index() && index <= self.last_index(), "snapshot inside the log");
        assert_eq!(Some(snap.get_metadata().term), self.term_of(index), "snapshot term matches its entry");
        self.entries.retain(|e| e.index > index);
        self.snapshot = snap;
        self.check();
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.snapshot_index() {
            return Some(self.snapshot.get_metadata().term);
        }
        let first = self.snapshot_index() + 1;
        if idx < first {
            return None;
        }
        self.entries.get((idx - first) as usize).map(|e| e.term)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut ents = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        // At least one entry, then as many as fit in max_size (raft-rs's rule).
        if let Some(max) = max_size.into() {
            let mut size = 0u64;
            let keep = ents
                .iter()
                .take_while(|e| {
                    size += protobuf::Message::compute_size(*e) as u64;
                    size <= max
                })
                .count()
                .max(1);
            ents.truncate(keep);
        }
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(LogStore::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Before the first snapshot nothing is compacted, so no peer needs
        // one; a request above ours waits for the next.
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
