//! The bytes of a persistent window or session store: a redb database
//! file (`<state.dir>/<application.id>/<task id>/<store>/store.redb`, as a
//! key-value store's) with one table per time segment, as Kafka's
//! segmented RocksDB stores keep one database per segment. A record's
//! segment is its time (a window's start, a session's end) divided by the
//! segment interval; the store's retention drops whole segments, one
//! `delete_table` each, never a scan of expired keys.
//!
//! As `PersistentBytes`: writes go to an in-memory overlay and reach the
//! file at `flush`, in one durable transaction together with the
//! segments dropped since and the store's observed time (the latest
//! window start or session end, which fixes what has expired), so that a
//! reopened store expires exactly what it had expired before.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::error::StreamsError;
use crate::limits::SEGMENT_INTERVAL_MS_MIN;
use crate::persistent::STORE_FILE_NAME;

/// The store's own facts: the observed time, under `OBSERVED_MS_KEY`.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const OBSERVED_MS_KEY: &str = "observed_ms";
/// Segment tables are named this, then the segment id.
const SEGMENT_TABLE_PREFIX: &str = "segment-";

/// Kafka's segment interval for a retention: half of it, at least a
/// minute (`Math.max(retentionPeriod / 2, 60_000L)`).
pub(crate) fn segment_interval_ms(retention_ms: i64) -> i64 {
    (retention_ms / 2).max(SEGMENT_INTERVAL_MS_MIN)
}

/// An i64 as 8 bytes whose byte order is the numbers' order (big-endian,
/// sign bit flipped), so that a table's key order is time order.
pub(crate) fn sortable_ms(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn from_sortable_ms(bytes: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(raw) ^ (1 << 63)) as i64
}

fn store_error(store: &str, what: &str, error: impl std::fmt::Display) -> StreamsError {
    StreamsError::Store { name: store.to_string(), reason: format!("{what}: {error}") }
}

fn table_name(segment: i64) -> String {
    format!("{SEGMENT_TABLE_PREFIX}{segment}")
}

pub(crate) struct SegmentedBytes {
    store: String,
    segment_interval_ms: i64,
    db: Option<redb::Database>,
    /// Changes since the last flush, newest per (segment, key).
    dirty: BTreeMap<(i64, Bytes), Option<Bytes>>,
    /// Segments below this id are gone (their tables deleted at the next
    /// flush, never read meanwhile).
    live_from_segment: i64,
    observed_ms: i64,
}

impl SegmentedBytes {
    pub fn new(store: &str, retention_ms: i64) -> Self {
        SegmentedBytes {
            store: store.to_string(),
            segment_interval_ms: segment_interval_ms(retention_ms),
            db: None,
            dirty: BTreeMap::new(),
            live_from_segment: i64::MIN,
            observed_ms: i64::MIN,
        }
    }

    pub fn segment_of(&self, ms: i64) -> i64 {
        ms.div_euclid(self.segment_interval_ms)
    }

    /// Opens (or creates) the database in `dir`, reading its observed
    /// time. A file redb cannot open is deleted and created anew: returns
    /// true then, and the caller must restore the store from the start.
    pub fn open(&mut self, dir: &Path) -> Result<bool, StreamsError> {
        std::fs::create_dir_all(dir).map_err(|e| store_error(&self.store, &format!("create {}", dir.display()), e))?;
        let path = dir.join(STORE_FILE_NAME);
        let (db, wiped) = match redb::Database::create(&path) {
            Ok(db) => (db, false),
            Err(error @ redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(store_error(&self.store, &format!("open {}", path.display()), error));
            }
            Err(error) => {
                tracing::warn!(store = %self.store, path = %path.display(), %error, "store file cannot be opened; wiping it and restoring from the changelog's start");
                std::fs::remove_file(&path)
                    .map_err(|e| store_error(&self.store, &format!("remove {}", path.display()), e))?;
                let db = redb::Database::create(&path)
                    .map_err(|e| store_error(&self.store, &format!("create {}", path.display()), e))?;
                (db, true)
            }
        };
        self.db = Some(db);
        self.dirty.clear();
        self.live_from_segment = i64::MIN;
        self.observed_ms = self.read_observed_ms()?;
        Ok(wiped)
    }

    fn db(&self) -> Result<&redb::Database, StreamsError> {
        self.db.as_ref().ok_or_else(|| store_error(&self.store, "not opened", "no state directory given"))
    }

    fn read_observed_ms(&self) -> Result<i64, StreamsError> {
        let read = self.db()?.begin_read().map_err(|e| store_error(&self.store, "read", e))?;
        match read.open_table(META) {
            Ok(table) => {
                let value = table.get(OBSERVED_MS_KEY).map_err(|e| store_error(&self.store, "read", e))?;
                Ok(value.map_or(i64::MIN, |value| value.value()))
            }
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(i64::MIN),
            Err(error) => Err(store_error(&self.store, "read", error)),
        }
    }

    /// The latest time the store has seen (i64::MIN: none), as flushed or
    /// set since.
    pub fn observed_ms(&self) -> i64 {
        self.observed_ms
    }

    pub fn set_observed_ms(&mut self, observed_ms: i64) {
        self.observed_ms = observed_ms;
    }

    /// Records a change (None deletes) in `segment`; it reaches the file
    /// at `flush`. A change to a dropped segment is ignored: it expired.
    pub fn put(&mut self, segment: i64, key: Bytes, value: Option<Bytes>) {
        if segment >= self.live_from_segment {
            self.dirty.insert((segment, key), value);
        }
    }

    pub fn get(&self, segment: i64, key: &[u8]) -> Result<Option<Bytes>, StreamsError> {
        if segment < self.live_from_segment {
            return Ok(None);
        }
        if let Some(change) = self.dirty.get(&(segment, Bytes::copy_from_slice(key))) {
            return Ok(change.clone());
        }
        let read = self.db()?.begin_read().map_err(|e| store_error(&self.store, "read", e))?;
        let name = table_name(segment);
        let table = match read.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(store_error(&self.store, "read", error)),
        };
        let value = table.get(key).map_err(|e| store_error(&self.store, "read", e))?;
        Ok(value.map(|value| Bytes::copy_from_slice(value.value())))
    }

    /// The entries of `segment` with keys from `from` to `to` (both
    /// included; None: unbounded), in key order: the file's, with the
    /// overlay over them.
    pub fn range(&self, segment: i64, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(Bytes, Bytes)>, StreamsError> {
        if segment < self.live_from_segment || to.is_some_and(|to| from > to) {
            return Ok(Vec::new());
        }
        let mut merged = BTreeMap::new();
        let read = self.db()?.begin_read().map_err(|e| store_error(&self.store, "read", e))?;
        let name = table_name(segment);
        match read.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)) {
            Ok(table) => {
                let entries = match to {
                    Some(to) => table.range(from..=to),
                    None => table.range(from..),
                }
                .map_err(|e| store_error(&self.store, "read", e))?;
                for entry in entries {
                    let (key, value) = entry.map_err(|e| store_error(&self.store, "read", e))?;
                    merged.insert(Bytes::copy_from_slice(key.value()), Bytes::copy_from_slice(value.value()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(store_error(&self.store, "read", error)),
        }
        let changes = self
            .dirty
            .range((segment, Bytes::copy_from_slice(from))..)
            .take_while(|((s, key), _)| *s == segment && to.is_none_or(|to| key.as_ref() <= to));
        for ((_, key), change) in changes {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// Every entry of `segment`, in key order.
    pub fn segment_entries(&self, segment: i64) -> Result<Vec<(Bytes, Bytes)>, StreamsError> {
        self.range(segment, &[], None)
    }

    /// The live segments' ids, ascending: those in the file and those
    /// only in the overlay.
    pub fn segments(&self) -> Result<Vec<i64>, StreamsError> {
        let mut segments: Vec<i64> = self.file_segments()?;
        segments.extend(self.dirty.keys().map(|(segment, _)| *segment));
        segments.retain(|segment| *segment >= self.live_from_segment);
        segments.sort_unstable();
        segments.dedup();
        Ok(segments)
    }

    fn file_segments(&self) -> Result<Vec<i64>, StreamsError> {
        let read = self.db()?.begin_read().map_err(|e| store_error(&self.store, "read", e))?;
        let tables = read.list_tables().map_err(|e| store_error(&self.store, "read", e))?;
        Ok(tables.filter_map(|table| table.name().strip_prefix(SEGMENT_TABLE_PREFIX)?.parse().ok()).collect())
    }

    /// Drops every segment below `segment`: gone from reads at once, from
    /// the file at the next flush.
    pub fn drop_segments_before(&mut self, segment: i64) {
        if segment <= self.live_from_segment {
            return;
        }
        self.live_from_segment = segment;
        self.dirty = self.dirty.split_off(&(segment, Bytes::new()));
    }

    /// Writes the overlay, the dropped segments and the observed time to
    /// the file in one durable transaction.
    pub fn flush(&mut self) -> Result<(), StreamsError> {
        let expired: Vec<i64> =
            self.file_segments()?.into_iter().filter(|segment| *segment < self.live_from_segment).collect();
        if self.dirty.is_empty() && expired.is_empty() && self.observed_ms == self.read_observed_ms()? {
            return Ok(());
        }
        let write = self.db()?.begin_write().map_err(|e| store_error(&self.store, "flush", e))?;
        for segment in expired {
            let name = table_name(segment);
            write
                .delete_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(|e| store_error(&self.store, "flush", e))?;
        }
        let mut changes = self.dirty.iter().peekable();
        while let Some(((segment, _), _)) = changes.peek() {
            let segment = *segment;
            let name = table_name(segment);
            let mut table = write
                .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(|e| store_error(&self.store, "flush", e))?;
            while let Some(((_, key), change)) = changes.next_if(|((s, _), _)| *s == segment) {
                match change {
                    Some(value) => table.insert(key.as_ref(), value.as_ref()).map(|_| ()),
                    None => table.remove(key.as_ref()).map(|_| ()),
                }
                .map_err(|e| store_error(&self.store, "flush", e))?;
            }
        }
        {
            let mut meta = write.open_table(META).map_err(|e| store_error(&self.store, "flush", e))?;
            meta.insert(OBSERVED_MS_KEY, self.observed_ms).map_err(|e| store_error(&self.store, "flush", e))?;
        }
        // Durability Immediate (redb's default): the commit returns after
        // the fsync, so the checkpoint written next never runs ahead of it.
        write.commit().map_err(|e| store_error(&self.store, "flush", e))?;
        self.dirty.clear();
        Ok(())
    }

    /// Empties the store, file and overlay, and forgets its observed time
    /// (before a restore from the start).
    pub fn wipe(&mut self) -> Result<(), StreamsError> {
        self.dirty.clear();
        self.live_from_segment = i64::MIN;
        self.observed_ms = i64::MIN;
        let segments = self.file_segments()?;
        let write = self.db()?.begin_write().map_err(|e| store_error(&self.store, "wipe", e))?;
        for segment in segments {
            let name = table_name(segment);
            write
                .delete_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(|e| store_error(&self.store, "wipe", e))?;
        }
        write.delete_table(META).map_err(|e| store_error(&self.store, "wipe", e))?;
        write.commit().map_err(|e| store_error(&self.store, "wipe", e))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn test_dir(name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/spate-streams-unit")
            .join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sortable_ms_orders_bytes_as_numbers() {
        let times = [i64::MIN, -60_000, -1, 0, 1, 59_999, 60_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(sortable_ms(pair[0]) < sortable_ms(pair[1]), "{pair:?}");
        }
        for time in times {
            assert_eq!(from_sortable_ms(&sortable_ms(time)), time);
        }
        assert_eq!(segment_interval_ms(70_000), 60_000, "at least a minute");
        assert_eq!(segment_interval_ms(86_400_000), 43_200_000, "half the retention");
    }

    #[test]
    fn dropped_segments_leave_reads_at_once_and_the_file_at_flush_and_survive_a_reopen() {
        let dir = test_dir("segmented-drop");
        let mut store = SegmentedBytes::new("w", 120_000);
        assert!(!store.open(&dir).unwrap());
        assert_eq!(store.observed_ms(), i64::MIN);
        for segment in 0..4 {
            store.put(segment, Bytes::from("k"), Some(Bytes::from(format!("v{segment}"))));
        }
        store.set_observed_ms(200_000);
        store.flush().unwrap();
        assert_eq!(store.segments().unwrap(), vec![0, 1, 2, 3]);
        store.drop_segments_before(2);
        assert_eq!(store.get(1, b"k").unwrap(), None, "dropped: gone from reads before the flush");
        store.put(1, Bytes::from("late"), Some(Bytes::from("x")));
        assert_eq!(store.segments().unwrap(), vec![2, 3], "a write to a dropped segment is ignored");
        store.put(3, Bytes::from("k"), None);
        store.put(3, Bytes::from("j"), Some(Bytes::from("w3")));
        assert_eq!(store.segment_entries(3).unwrap(), vec![(Bytes::from("j"), Bytes::from("w3"))]);
        store.set_observed_ms(300_000);
        store.flush().unwrap();
        assert_eq!(store.file_segments().unwrap(), vec![2, 3], "the dropped tables are deleted");
        drop(store);

        let mut store = SegmentedBytes::new("w", 120_000);
        assert!(!store.open(&dir).unwrap());
        assert_eq!(store.observed_ms(), 300_000);
        assert_eq!(store.get(2, b"k").unwrap(), Some(Bytes::from("v2")));
        assert_eq!(store.range(3, b"a", Some(b"z")).unwrap(), vec![(Bytes::from("j"), Bytes::from("w3"))]);
        store.put(5, Bytes::from("unflushed"), Some(Bytes::from("lost")));
        drop(store);

        let mut store = SegmentedBytes::new("w", 120_000);
        store.open(&dir).unwrap();
        assert_eq!(store.segments().unwrap(), vec![2, 3], "a crash loses what was not flushed");
        store.wipe().unwrap();
        assert!(store.segments().unwrap().is_empty());
        assert_eq!(store.observed_ms(), i64::MIN);
    }
}
