//! The standalone worker's source offsets: kept in memory as tasks'
//! records are acknowledged, written to `offset.storage.file.filename`
//! every `offset.flush.interval.ms` and at shutdown, atomically (a temp
//! file, fsync, rename, fsync of the directory), so a crash leaves the old
//! file or the new one, never a torn one.
//!
//! The file is JSON: `{"version":1,"offsets":[{"connector":NAME,
//! "partition":{...},"offset":{...}}, ...]}`, one entry per source
//! partition of each connector, as Kafka keys its offsets by
//! `[connector, partition]`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value as Json, json};

use crate::error::{ConnectError, Result};
use crate::limits::OFFSETS_FILE_BYTES_MAX;
use crate::record::{SourceOffset, SourcePartition};

const FORMAT_VERSION: u64 = 1;

#[derive(Debug, Default)]
struct Entries {
    /// (connector, the partition as canonical JSON) -> (partition, offset).
    map: BTreeMap<(String, String), (SourcePartition, SourceOffset)>,
    dirty: bool,
}

#[derive(Debug)]
pub struct OffsetStore {
    path: PathBuf,
    entries: Mutex<Entries>,
    /// Held while a flush writes the file, so two flushes never interleave.
    writing: Mutex<()>,
}

fn canonical(partition: &SourcePartition) -> String {
    // serde_json's map is ordered by key here, so equal maps give equal text.
    Json::Object(partition.clone()).to_string()
}

impl OffsetStore {
    /// Reads the file if it exists; a missing file is an empty store.
    pub fn open(path: &Path) -> Result<OffsetStore> {
        let store =
            OffsetStore { path: path.to_path_buf(), entries: Mutex::new(Entries::default()), writing: Mutex::new(()) };
        // A directory that is not there would fail every flush, long after
        // the start; say so now.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(ConnectError::Config(format!(
                "offset.storage.file.filename {}: the directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let context = || format!("reading the offsets file {}", path.display());
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(error) => return Err(ConnectError::io(context(), error)),
        };
        let mut bytes = Vec::new();
        file.take(OFFSETS_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|e| ConnectError::io(context(), e))?;
        if bytes.len() as u64 > OFFSETS_FILE_BYTES_MAX {
            return Err(ConnectError::Config(format!(
                "{}: larger than {OFFSETS_FILE_BYTES_MAX} bytes",
                path.display()
            )));
        }
        let bad =
            |why: &str| ConnectError::Config(format!("{} is not a Spate Connect offsets file: {why}", path.display()));
        let document: Json = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
        if document.get("version").and_then(Json::as_u64) != Some(FORMAT_VERSION) {
            return Err(bad("unknown version"));
        }
        let offsets = document.get("offsets").and_then(Json::as_array).ok_or_else(|| bad("no offsets array"))?;
        let mut entries = Entries::default();
        for entry in offsets {
            let connector =
                entry.get("connector").and_then(Json::as_str).ok_or_else(|| bad("an entry without connector"))?;
            let partition =
                entry.get("partition").and_then(Json::as_object).ok_or_else(|| bad("an entry without partition"))?;
            let offset = entry.get("offset").and_then(Json::as_object).ok_or_else(|| bad("an entry without offset"))?;
            entries.map.insert((connector.to_string(), canonical(partition)), (partition.clone(), offset.clone()));
        }
        *store.lock() = entries;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic elsewhere must not take the offsets with it.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, connector: &str, partition: &SourcePartition) -> Option<SourceOffset> {
        self.lock().map.get(&(connector.to_string(), canonical(partition))).map(|(_, offset)| offset.clone())
    }

    /// Every stored partition and offset of `connector`.
    pub fn connector_offsets(&self, connector: &str) -> Vec<(SourcePartition, SourceOffset)> {
        self.lock().map.iter().filter(|((name, _), _)| name == connector).map(|(_, entry)| entry.clone()).collect()
    }

    /// Records that everything of `partition` up to `offset` is acknowledged.
    pub fn put(&self, connector: &str, partition: SourcePartition, offset: SourceOffset) {
        let mut entries = self.lock();
        entries.map.insert((connector.to_string(), canonical(&partition)), (partition, offset));
        entries.dirty = true;
    }

    /// Forgets one partition's offset.
    pub fn remove(&self, connector: &str, partition: &SourcePartition) {
        let mut entries = self.lock();
        if entries.map.remove(&(connector.to_string(), canonical(partition))).is_some() {
            entries.dirty = true;
        }
    }

    /// Forgets every offset of `connector`.
    pub fn remove_connector(&self, connector: &str) {
        let mut entries = self.lock();
        let before = entries.map.len();
        entries.map.retain(|(name, _), _| name != connector);
        if entries.map.len() != before {
            entries.dirty = true;
        }
    }

    /// Writes the file if anything changed since the last write. Returns
    /// whether it wrote.
    pub fn flush(&self) -> Result<bool> {
        let _writing = self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let document = {
            let mut entries = self.lock();
            if !entries.dirty {
                return Ok(false);
            }
            entries.dirty = false;
            let offsets: Vec<Json> = entries
                .map
                .iter()
                .map(|((connector, _), (partition, offset))| {
                    json!({"connector": connector, "partition": partition, "offset": offset})
                })
                .collect();
            json!({"version": FORMAT_VERSION, "offsets": offsets})
        };
        let written = write_atomically(&self.path, document.to_string().as_bytes());
        if written.is_err() {
            // Keep the changes for the next try.
            self.lock().dirty = true;
        }
        written.map(|()| true)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let context = || format!("writing the offsets file {}", path.display());
    let mut temp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let mut file = std::fs::File::create(&temp).map_err(|e| ConnectError::io(context(), e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| ConnectError::io(context(), e))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(|e| ConnectError::io(context(), e))?;
    // The rename is durable once the directory is.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ConnectError::io(context(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(name: &str) -> SourcePartition {
        let mut p = SourcePartition::new();
        p.insert("filename".into(), name.into());
        p
    }

    fn offset(position: u64) -> SourceOffset {
        let mut o = SourceOffset::new();
        o.insert("position".into(), position.into());
        o
    }

    #[test]
    fn offsets_survive_a_reopen_only_once_flushed() {
        let dir = crate::test_dir("offsets");
        let path = dir.join("connect.offsets");
        let store = OffsetStore::open(&path).expect("no file yet is an empty store");
        store.put("src", partition("a.txt"), offset(10));
        assert!(OffsetStore::open(&path).expect("reopen").get("src", &partition("a.txt")).is_none());
        assert!(store.flush().expect("flush"));
        assert!(!store.flush().expect("nothing new"), "an unchanged store is not rewritten");
        store.put("src", partition("a.txt"), offset(25));
        store.put("other", partition("a.txt"), offset(3));
        store.flush().expect("flush");
        let reopened = OffsetStore::open(&path).expect("reopen");
        assert_eq!(reopened.get("src", &partition("a.txt")), Some(offset(25)));
        assert_eq!(reopened.get("other", &partition("a.txt")), Some(offset(3)));
        assert_eq!(reopened.get("src", &partition("b.txt")), None);
        assert_eq!(reopened.connector_offsets("src"), vec![(partition("a.txt"), offset(25))]);
        reopened.remove("src", &partition("a.txt"));
        reopened.remove_connector("other");
        reopened.flush().expect("flush");
        let emptied = OffsetStore::open(&path).expect("reopen");
        assert!(emptied.connector_offsets("src").is_empty() && emptied.connector_offsets("other").is_empty());
        assert!(!dir.join("connect.offsets.tmp").exists());
    }

    #[test]
    fn a_damaged_offsets_file_is_a_config_error_not_a_silent_restart_from_zero() {
        let dir = crate::test_dir("offsets-damaged");
        let path = dir.join("connect.offsets");
        std::fs::write(&path, b"{\"version\":1,\"offs").expect("write");
        assert!(matches!(OffsetStore::open(&path), Err(ConnectError::Config(_))));
        let nowhere = dir.join("missing-dir").join("connect.offsets");
        assert!(
            matches!(OffsetStore::open(&nowhere), Err(ConnectError::Config(why)) if why.contains("does not exist"))
        );
        // Kafka's own (Java-serialized) offsets file is refused clearly too.
        std::fs::write(&path, [0xac, 0xed, 0x00, 0x05]).expect("write");
        assert!(matches!(OffsetStore::open(&path), Err(ConnectError::Config(_))));
    }
}
