//! The bytes of a persistent key-value store, in a redb database file
//! (`<state.dir>/<application.id>/<task id>/<store>/store.redb`).
//!
//! Writes go to an in-memory overlay of the keys changed since the last
//! flush (a deleted key is `None` there) and reach the file at `flush`, in
//! one durable redb transaction. The runtime flushes at each commit,
//! after the changelog records of those writes are acknowledged, then
//! writes the task's checkpoint: the file then holds exactly the
//! changelog up to the checkpointed offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::StreamsError;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// The database file's name in a store's directory.
pub const STORE_FILE_NAME: &str = "store.redb";

pub(crate) struct PersistentBytes {
    store: String,
    path: Option<PathBuf>,
    db: Option<redb::Database>,
    /// Changes since the last flush, newest per key.
    dirty: BTreeMap<Bytes, Option<Bytes>>,
}

fn store_error(store: &str, what: &str, error: impl std::fmt::Display) -> StreamsError {
    StreamsError::Store { name: store.to_string(), reason: format!("{what}: {error}") }
}

impl PersistentBytes {
    pub fn new(store: &str) -> Self {
        PersistentBytes { store: store.to_string(), path: None, db: None, dirty: BTreeMap::new() }
    }

    /// Opens (or creates) the database in `dir`. A file redb cannot open
    /// (damaged, or not a redb file) is deleted and created anew: returns
    /// true then, and the caller must restore the store from the start.
    pub fn open(&mut self, dir: &Path) -> Result<bool, StreamsError> {
        std::fs::create_dir_all(dir).map_err(|e| store_error(&self.store, &format!("create {}", dir.display()), e))?;
        let path = dir.join(STORE_FILE_NAME);
        let (db, wiped) = match redb::Database::create(&path) {
            Ok(db) => (db, false),
            // Another process holds it: not damage, and not ours to wipe.
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
        self.path = Some(path);
        self.dirty.clear();
        Ok(wiped)
    }

    fn db(&self) -> Result<&redb::Database, StreamsError> {
        self.db.as_ref().ok_or_else(|| store_error(&self.store, "not opened", "no state directory given"))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StreamsError> {
        if let Some(change) = self.dirty.get(key) {
            return Ok(change.clone());
        }
        let read = self.db()?.begin_read().map_err(|e| store_error(&self.store, "read", e))?;
        let table = match read.open_table(TABLE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(store_error(&self.store, "read", error)),
        };
        let value = table.get(key).map_err(|e| store_error(&self.store, "read", e))?;
        Ok(value.map(|value| Bytes::copy_from_slice(value.value())))
    }

    /// Records a change (None deletes); it reaches the file at `flush`.
    pub fn put(&mut self, key: Bytes, value: Option<Bytes>) {
        self.dirty.insert(key, value);
    }

    /// Every entry, in key-byte order: the file's, with the overlay over it.
    pub fn all(&self) -> Result<Vec<(Bytes, Bytes)>, StreamsError> {
        let mut merged = BTreeMap::new();
        let read = self.db()?.begin_read().map_err(|e| store_error(&self.store, "read", e))?;
        match read.open_table(TABLE) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| store_error(&self.store, "read", e))? {
                    let (key, value) = entry.map_err(|e| store_error(&self.store, "read", e))?;
                    merged.insert(Bytes::copy_from_slice(key.value()), Bytes::copy_from_slice(value.value()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(store_error(&self.store, "read", error)),
        }
        for (key, change) in &self.dirty {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// Entries in the file plus the changed keys not flushed yet.
    pub fn approximate_num_entries(&self) -> usize {
        let in_file = self
            .db()
            .ok()
            .and_then(|db| db.begin_read().ok())
            .and_then(|read| read.open_table(TABLE).ok())
            .and_then(|table| table.len().ok())
            .unwrap_or(0);
        usize::try_from(in_file).unwrap_or(usize::MAX).saturating_add(self.dirty.len())
    }

    /// Writes the overlay to the file in one durable transaction.
    pub fn flush(&mut self) -> Result<(), StreamsError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let write = self.db()?.begin_write().map_err(|e| store_error(&self.store, "flush", e))?;
        {
            let mut table = write.open_table(TABLE).map_err(|e| store_error(&self.store, "flush", e))?;
            for (key, change) in &self.dirty {
                match change {
                    Some(value) => table.insert(key.as_ref(), value.as_ref()).map(|_| ()),
                    None => table.remove(key.as_ref()).map(|_| ()),
                }
                .map_err(|e| store_error(&self.store, "flush", e))?;
            }
        }
        // redb's default durability is Immediate: the commit returns after
        // the fsync, so a checkpoint written next never runs ahead of it.
        write.commit().map_err(|e| store_error(&self.store, "flush", e))?;
        self.dirty.clear();
        Ok(())
    }

    /// Empties the store, file and overlay (before a restore from the start).
    pub fn wipe(&mut self) -> Result<(), StreamsError> {
        self.dirty.clear();
        let write = self.db()?.begin_write().map_err(|e| store_error(&self.store, "wipe", e))?;
        write.delete_table(TABLE).map_err(|e| store_error(&self.store, "wipe", e))?;
        write.commit().map_err(|e| store_error(&self.store, "wipe", e))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn test_dir(name: &str) -> PathBuf {
        // Test data stays under target/, per process.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/spate-streams-unit")
            .join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn flushed_entries_survive_a_reopen_and_unflushed_ones_do_not() {
        let dir = test_dir("persistent-reopen");
        let mut store = PersistentBytes::new("s");
        assert!(!store.open(&dir).unwrap());
        store.put(Bytes::from("a"), Some(Bytes::from("1")));
        store.put(Bytes::from("b"), Some(Bytes::from("2")));
        assert_eq!(store.get(b"a").unwrap(), Some(Bytes::from("1")));
        store.flush().unwrap();
        store.put(Bytes::from("a"), None);
        store.put(Bytes::from("c"), Some(Bytes::from("3")));
        assert_eq!(store.get(b"a").unwrap(), None);
        assert_eq!(
            store.all().unwrap(),
            vec![(Bytes::from("b"), Bytes::from("2")), (Bytes::from("c"), Bytes::from("3"))]
        );
        drop(store);
        // A crash loses the overlay: the file holds the last flush.
        let mut store = PersistentBytes::new("s");
        assert!(!store.open(&dir).unwrap());
        assert_eq!(
            store.all().unwrap(),
            vec![(Bytes::from("a"), Bytes::from("1")), (Bytes::from("b"), Bytes::from("2"))]
        );
        store.wipe().unwrap();
        assert!(store.all().unwrap().is_empty());
        assert_eq!(store.get(b"a").unwrap(), None);
    }

    #[test]
    fn a_damaged_store_file_is_wiped_and_reported_for_a_full_restore() {
        let dir = test_dir("persistent-damaged");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STORE_FILE_NAME), b"this is not a redb file, just damage".repeat(200)).unwrap();
        let mut store = PersistentBytes::new("s");
        assert!(store.open(&dir).unwrap(), "a damaged file must be reported as wiped");
        assert!(store.all().unwrap().is_empty());
        store.put(Bytes::from("k"), Some(Bytes::from("v")));
        store.flush().unwrap();
        drop(store);
        let mut store = PersistentBytes::new("s");
        assert!(!store.open(&dir).unwrap());
        assert_eq!(store.get(b"k").unwrap(), Some(Bytes::from("v")));
    }

    #[test]
    fn a_store_used_before_it_is_opened_is_an_error() {
        let store = PersistentBytes::new("s");
        assert!(matches!(store.get(b"k"), Err(StreamsError::Store { .. })));
    }
}
