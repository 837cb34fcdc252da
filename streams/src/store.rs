//! State stores: an in-memory key-value store and an in-memory window
//! store. Both keep serialized bytes (so a change is logged as it is
//! stored, and restored the same way) and record every change for the
//! task to write to the store's compacted changelog topic,
//! `<application.id>-<store name>-changelog`.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::StreamsError;
use crate::persistent::PersistentBytes;
use crate::segmented::{SegmentedBytes, from_sortable_ms, sortable_ms};
use crate::serde::{SerdeError, SerdeRef};

/// A store a task owns. Changes are bytes, as they go to the changelog.
pub trait StateStore: Any + Send {
    fn name(&self) -> &str;
    /// Applies one changelog record (a null value deletes).
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StreamsError>;
    /// The changes since the last call, in order, for the changelog.
    fn take_changes(&mut self) -> Vec<(Bytes, Option<Bytes>)>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn as_any(&self) -> &dyn Any;
    /// Whether the store keeps its state on disk (and so has a checkpoint).
    fn persistent(&self) -> bool {
        false
    }
    /// Opens a persistent store's files in `dir`; true when what was there
    /// was damaged and wiped (the store must be restored from the start).
    fn open(&mut self, _dir: &Path) -> Result<bool, StreamsError> {
        Ok(false)
    }
    /// Makes the changes so far durable (a persistent store's file).
    fn flush(&mut self) -> Result<(), StreamsError> {
        Ok(())
    }
    /// Empties the store before a restore from the changelog's start.
    fn wipe(&mut self) -> Result<(), StreamsError> {
        Ok(())
    }
}

/// The changelog topic of a store, by Kafka Streams' naming.
pub fn changelog_topic(application_id: &str, store_name: &str) -> String {
    format!("{application_id}-{store_name}-changelog")
}

type StoreFactory = Arc<dyn Fn() -> Box<dyn StateStore> + Send + Sync>;

/// How to make a store for each task, as Kafka's `StoreBuilder`.
#[derive(Clone)]
pub struct StoreBuilder {
    pub(crate) name: String,
    pub(crate) logging: bool,
    /// A window or session store's retention (None: a key-value store):
    /// its changelog deletes what is older than this plus
    /// `WINDOW_CHANGELOG_ADDITIONAL_RETENTION_MS`, as the store no longer
    /// keeps it.
    pub(crate) window_retention_ms: Option<i64>,
    pub(crate) factory: StoreFactory,
}

impl std::fmt::Debug for StoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBuilder").field("name", &self.name).field("logging", &self.logging).finish()
    }
}

impl StoreBuilder {
    /// No changelog: the store starts empty after a restart or a move.
    #[must_use]
    pub fn with_logging_disabled(mut self) -> Self {
        self.logging = false;
        self
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where a key-value store keeps its entries, as Kafka's
/// `KeyValueBytesStoreSupplier` (`Stores.persistentKeyValueStore(name)` or
/// `Stores.inMemoryKeyValueStore(name)`). A bare name (`&str`) is an
/// in-memory store, as this builder took before stores could persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValueStoreSupplier {
    pub(crate) name: String,
    pub(crate) persistent: bool,
}

impl From<&str> for KeyValueStoreSupplier {
    fn from(name: &str) -> Self {
        Stores::in_memory_key_value_store(name)
    }
}

impl From<&String> for KeyValueStoreSupplier {
    fn from(name: &String) -> Self {
        Stores::in_memory_key_value_store(name)
    }
}

/// Builders of the ready stores, as Kafka's `Stores`.
#[derive(Debug)]
pub struct Stores;

impl Stores {
    /// A key-value store on disk (redb), under
    /// `<state.dir>/<application.id>/<task id>/<name>`, restored from its
    /// checkpointed changelog offset.
    pub fn persistent_key_value_store(name: &str) -> KeyValueStoreSupplier {
        KeyValueStoreSupplier { name: name.to_string(), persistent: true }
    }

    /// A key-value store in memory, restored from its changelog's start.
    pub fn in_memory_key_value_store(name: &str) -> KeyValueStoreSupplier {
        KeyValueStoreSupplier { name: name.to_string(), persistent: false }
    }

    pub fn key_value_store_builder<K: 'static, V: 'static>(
        supplier: impl Into<KeyValueStoreSupplier>,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> StoreBuilder {
        let KeyValueStoreSupplier { name, persistent } = supplier.into();
        let store_name = name.clone();
        StoreBuilder {
            name,
            logging: true,
            window_retention_ms: None,
            factory: Arc::new(move || {
                let store = if persistent {
                    KeyValueStore::persistent(&store_name, key_serde.clone(), value_serde.clone())
                } else {
                    KeyValueStore::new(&store_name, key_serde.clone(), value_serde.clone())
                };
                Box::new(store) as Box<dyn StateStore>
            }),
        }
    }

    /// A window store on disk (redb, a table per time segment), under
    /// `<state.dir>/<application.id>/<task id>/<name>`, restored from its
    /// checkpointed changelog offset (Kafka's
    /// `Stores.persistentWindowStore`; the retention is given to
    /// `window_store_builder`).
    pub fn persistent_window_store(name: &str) -> WindowStoreSupplier {
        WindowStoreSupplier { name: name.to_string(), persistent: true }
    }

    /// A window store in memory, restored from its changelog's start.
    pub fn in_memory_window_store(name: &str) -> WindowStoreSupplier {
        WindowStoreSupplier { name: name.to_string(), persistent: false }
    }

    /// A session store on disk (redb, a table per time segment), restored
    /// from its checkpointed changelog offset.
    pub fn persistent_session_store(name: &str) -> SessionStoreSupplier {
        SessionStoreSupplier { name: name.to_string(), persistent: true }
    }

    /// A session store in memory, restored from its changelog's start.
    pub fn in_memory_session_store(name: &str) -> SessionStoreSupplier {
        SessionStoreSupplier { name: name.to_string(), persistent: false }
    }

    /// A store of values per key and session, keeping sessions that end
    /// within `retention_ms` of the latest end. A bare name is an
    /// in-memory store.
    pub fn session_store_builder<K: 'static, V: 'static>(
        supplier: impl Into<SessionStoreSupplier>,
        retention_ms: i64,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> StoreBuilder {
        let SessionStoreSupplier { name, persistent } = supplier.into();
        let store_name = name.clone();
        StoreBuilder {
            name,
            logging: true,
            window_retention_ms: Some(retention_ms),
            factory: Arc::new(move || {
                let (key_serde, value_serde) = (key_serde.clone(), value_serde.clone());
                let store = if persistent {
                    SessionStore::persistent(&store_name, retention_ms, key_serde, value_serde)
                } else {
                    SessionStore::new(&store_name, retention_ms, key_serde, value_serde)
                };
                Box::new(store) as Box<dyn StateStore>
            }),
        }
    }

    /// A store of values per key and window start, keeping windows that
    /// start within `retention_ms` of the latest start put. A bare name
    /// is an in-memory store.
    pub fn window_store_builder<K: 'static, V: 'static>(
        supplier: impl Into<WindowStoreSupplier>,
        retention_ms: i64,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> StoreBuilder {
        let WindowStoreSupplier { name, persistent } = supplier.into();
        let store_name = name.clone();
        StoreBuilder {
            name,
            logging: true,
            window_retention_ms: Some(retention_ms),
            factory: Arc::new(move || {
                let (key_serde, value_serde) = (key_serde.clone(), value_serde.clone());
                let store = if persistent {
                    WindowStore::persistent(&store_name, retention_ms, key_serde, value_serde)
                } else {
                    WindowStore::new(&store_name, retention_ms, key_serde, value_serde)
                };
                Box::new(store) as Box<dyn StateStore>
            }),
        }
    }
}

/// Where a window store keeps its entries, as Kafka's
/// `WindowBytesStoreSupplier`. A bare name is an in-memory store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStoreSupplier {
    pub(crate) name: String,
    pub(crate) persistent: bool,
}

impl From<&str> for WindowStoreSupplier {
    fn from(name: &str) -> Self {
        Stores::in_memory_window_store(name)
    }
}

impl From<&String> for WindowStoreSupplier {
    fn from(name: &String) -> Self {
        Stores::in_memory_window_store(name)
    }
}

/// Where a session store keeps its entries, as Kafka's
/// `SessionBytesStoreSupplier`. A bare name is an in-memory store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStoreSupplier {
    pub(crate) name: String,
    pub(crate) persistent: bool,
}

impl From<&str> for SessionStoreSupplier {
    fn from(name: &str) -> Self {
        Stores::in_memory_session_store(name)
    }
}

impl From<&String> for SessionStoreSupplier {
    fn from(name: &String) -> Self {
        Stores::in_memory_session_store(name)
    }
}

fn serialization(store: &str, source: SerdeError) -> StreamsError {
    StreamsError::Serialization { target: format!("store {store}"), source }
}

fn key_bytes<K>(store: &str, serde: &SerdeRef<K>, key: &K) -> Result<Bytes, StreamsError> {
    serde
        .serialize(store, key)
        .map_err(|source| serialization(store, source))?
        .ok_or_else(|| serialization(store, SerdeError::Null { topic: store.to_string() }))
}

/// Where a key-value store's bytes live.
enum KeyValueEntries {
    Memory(BTreeMap<Bytes, Bytes>),
    Persistent(PersistentBytes),
}

impl KeyValueEntries {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StreamsError> {
        match self {
            KeyValueEntries::Memory(entries) => Ok(entries.get(key).cloned()),
            KeyValueEntries::Persistent(store) => store.get(key),
        }
    }

    /// Applies a change (None deletes).
    fn apply(&mut self, key: Bytes, value: Option<Bytes>) {
        match (self, value) {
            (KeyValueEntries::Memory(entries), Some(value)) => {
                entries.insert(key, value);
            }
            (KeyValueEntries::Memory(entries), None) => {
                entries.remove(&key);
            }
            (KeyValueEntries::Persistent(store), value) => store.put(key, value),
        }
    }

    fn all(&self) -> Result<Vec<(Bytes, Bytes)>, StreamsError> {
        match self {
            KeyValueEntries::Memory(entries) => {
                Ok(entries.iter().map(|(key, value)| (key.clone(), value.clone())).collect())
            }
            KeyValueEntries::Persistent(store) => store.all(),
        }
    }

    fn len(&self) -> usize {
        match self {
            KeyValueEntries::Memory(entries) => entries.len(),
            KeyValueEntries::Persistent(store) => store.approximate_num_entries(),
        }
    }
}

/// A key-value store, ordered by key bytes (as Kafka's), in memory or on
/// disk (`Stores::persistent_key_value_store`).
pub struct KeyValueStore<K, V> {
    name: String,
    entries: KeyValueEntries,
    changes: Vec<(Bytes, Option<Bytes>)>,
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
}

impl<K, V> std::fmt::Debug for KeyValueStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValueStore").field("name", &self.name).field("entries", &self.entries.len()).finish()
    }
}

impl<K: 'static, V: 'static> KeyValueStore<K, V> {
    /// An in-memory store.
    pub fn new(name: &str, key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        let entries = KeyValueEntries::Memory(BTreeMap::new());
        KeyValueStore { name: name.to_string(), entries, changes: Vec::new(), key_serde, value_serde }
    }

    /// A store on disk; usable once the task opens it in its directory.
    pub fn persistent(name: &str, key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        let entries = KeyValueEntries::Persistent(PersistentBytes::new(name));
        KeyValueStore { name: name.to_string(), entries, changes: Vec::new(), key_serde, value_serde }
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        self.entries.get(&key)?.map(|value| self.read_value(&value)).transpose()
    }

    /// Stores `value` (a value that serializes to null deletes the key).
    pub fn put(&mut self, key: &K, value: &V) -> Result<(), StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let value =
            self.value_serde.serialize(&self.name, value).map_err(|source| serialization(&self.name, source))?;
        self.entries.apply(key.clone(), value.clone());
        self.changes.push((key, value));
        Ok(())
    }

    /// Removes the key, returning what it held.
    pub fn delete(&mut self, key: &K) -> Result<Option<V>, StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let old = self.entries.get(&key)?;
        self.entries.apply(key.clone(), None);
        self.changes.push((key, None));
        old.map(|value| self.read_value(&value)).transpose()
    }

    /// Every entry, in key-byte order.
    pub fn all(&self) -> Result<Vec<(K, V)>, StreamsError> {
        self.entries
            .all()?
            .iter()
            .map(|(key, value)| {
                let key = self
                    .key_serde
                    .deserialize(&self.name, Some(key))
                    .map_err(|source| serialization(&self.name, source))?;
                Ok((key, self.read_value(value)?))
            })
            .collect()
    }

    pub fn approximate_num_entries(&self) -> usize {
        self.entries.len()
    }

    fn read_value(&self, bytes: &[u8]) -> Result<V, StreamsError> {
        self.value_serde.deserialize(&self.name, Some(bytes)).map_err(|source| serialization(&self.name, source))
    }
}

impl<K: 'static, V: 'static> StateStore for KeyValueStore<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StreamsError> {
        self.entries.apply(Bytes::copy_from_slice(key), value.map(Bytes::copy_from_slice));
        Ok(())
    }
    fn take_changes(&mut self) -> Vec<(Bytes, Option<Bytes>)> {
        std::mem::take(&mut self.changes)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn persistent(&self) -> bool {
        matches!(self.entries, KeyValueEntries::Persistent(_))
    }
    fn open(&mut self, dir: &Path) -> Result<bool, StreamsError> {
        match &mut self.entries {
            KeyValueEntries::Memory(_) => Ok(false),
            KeyValueEntries::Persistent(store) => store.open(dir),
        }
    }
    fn flush(&mut self) -> Result<(), StreamsError> {
        match &mut self.entries {
            KeyValueEntries::Memory(_) => Ok(()),
            KeyValueEntries::Persistent(store) => store.flush(),
        }
    }
    fn wipe(&mut self) -> Result<(), StreamsError> {
        match &mut self.entries {
            KeyValueEntries::Memory(entries) => {
                entries.clear();
                Ok(())
            }
            KeyValueEntries::Persistent(store) => store.wipe(),
        }
    }
}

/// Bytes after the key in a window store's changelog key: the window
/// start (8, big-endian) and a sequence number (4), as Kafka's
/// `WindowKeySchema` writes them.
const WINDOW_KEY_SUFFIX_BYTES: usize = 12;
/// Bytes after the key in a persistent window store's table key: the
/// window start, sortable.
const WINDOW_TABLE_SUFFIX_BYTES: usize = 8;
/// Bytes after the key in a persistent session store's table key: the
/// end, then the start, both sortable.
const SESSION_TABLE_SUFFIX_BYTES: usize = 16;

/// Where a window store's bytes live.
enum WindowEntries {
    /// By window start first, so that expired windows are a prefix.
    Memory(BTreeMap<(i64, Bytes), Bytes>),
    /// Segments by window start (redb tables); in a segment by key bytes,
    /// then start: the key, then the start sortable (Kafka's
    /// `WindowKeySchema` order in a segment).
    Persistent(SegmentedBytes),
}

/// A window store: a value per key and window start, in memory or on
/// disk (redb, one table per time segment).
pub struct WindowStore<K, V> {
    name: String,
    retention_ms: i64,
    entries: WindowEntries,
    observed_start_ms: i64,
    changes: Vec<(Bytes, Option<Bytes>)>,
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
}

impl<K, V> std::fmt::Debug for WindowStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let persistent = matches!(self.entries, WindowEntries::Persistent(_));
        f.debug_struct("WindowStore").field("name", &self.name).field("persistent", &persistent).finish()
    }
}

/// The key, then `suffix`: a persistent store's key in its segment table.
fn table_key(key: &[u8], suffix: &[&[u8; 8]]) -> Bytes {
    let mut bytes = BytesMut::with_capacity(key.len() + 8 * suffix.len());
    bytes.put_slice(key);
    suffix.iter().for_each(|part| bytes.put_slice(*part));
    bytes.freeze()
}

/// A table key's key bytes, if it is `key`'s (a longer key that starts
/// with `key`'s bytes shares its range in the table).
fn key_of_table_key(table_key: &[u8], suffix_bytes: usize) -> Option<&[u8]> {
    table_key.get(..table_key.len().checked_sub(suffix_bytes)?)
}

impl<K: 'static, V: 'static> WindowStore<K, V> {
    /// A window store in memory, restored from its changelog's start.
    pub fn new(name: &str, retention_ms: i64, key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Self::with_entries(name, retention_ms, WindowEntries::Memory(BTreeMap::new()), key_serde, value_serde)
    }

    /// A window store on disk, opened by its task under `state.dir`,
    /// restored from its checkpointed changelog offset.
    pub fn persistent(name: &str, retention_ms: i64, key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        let entries = WindowEntries::Persistent(SegmentedBytes::new(name, retention_ms));
        Self::with_entries(name, retention_ms, entries, key_serde, value_serde)
    }

    fn with_entries(
        name: &str,
        retention_ms: i64,
        entries: WindowEntries,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> Self {
        assert!(retention_ms >= 0, "a window store's retention is not negative");
        WindowStore {
            name: name.to_string(),
            retention_ms,
            entries,
            observed_start_ms: i64::MIN,
            changes: Vec::new(),
            key_serde,
            value_serde,
        }
    }

    fn is_persistent(&self) -> bool {
        matches!(self.entries, WindowEntries::Persistent(_))
    }

    /// The earliest window start kept: windows that started more than the
    /// retention before the latest start are gone, as in Kafka's window
    /// stores (memory and disk stay bounded by the retention, not by the
    /// input).
    fn keep_from_ms(&self) -> i64 {
        self.observed_start_ms.saturating_sub(self.retention_ms).saturating_add(1)
    }

    pub fn fetch(&self, key: &K, window_start_ms: i64) -> Result<Option<V>, StreamsError> {
        if window_start_ms < self.keep_from_ms() {
            return Ok(None);
        }
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let value = match &self.entries {
            WindowEntries::Memory(entries) => entries.get(&(window_start_ms, key)).cloned(),
            WindowEntries::Persistent(store) => {
                store.get(store.segment_of(window_start_ms), &table_key(&key, &[&sortable_ms(window_start_ms)]))?
            }
        };
        value.map(|value| self.read_value(&value)).transpose()
    }

    /// The values of `key` in windows starting from `from_ms` to `to_ms`
    /// (inclusive), by start.
    pub fn fetch_range(&self, key: &K, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, V)>, StreamsError> {
        let from_ms = from_ms.max(self.keep_from_ms());
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let found: Vec<(i64, Bytes)> = match &self.entries {
            WindowEntries::Memory(entries) => entries
                .range((from_ms, Bytes::new())..)
                .take_while(|((start_ms, _), _)| *start_ms <= to_ms)
                .filter(|((_, entry_key), _)| *entry_key == key)
                .map(|((start_ms, _), value)| (*start_ms, value.clone()))
                .collect(),
            WindowEntries::Persistent(store) => {
                let (from, to) = (table_key(&key, &[&sortable_ms(from_ms)]), table_key(&key, &[&sortable_ms(to_ms)]));
                let (first, last) = (store.segment_of(from_ms), store.segment_of(to_ms));
                let mut found = Vec::new();
                for segment in store.segments()?.into_iter().filter(|s| (first..=last).contains(s)) {
                    for (table_key, value) in store.range(segment, &from, Some(&to))? {
                        if key_of_table_key(&table_key, WINDOW_TABLE_SUFFIX_BYTES) == Some(key.as_ref()) {
                            found.push((from_sortable_ms(&table_key[key.len()..]), value));
                        }
                    }
                }
                found
            }
        };
        found.into_iter().map(|(start_ms, value)| Ok((start_ms, self.read_value(&value)?))).collect()
    }

    pub fn put(&mut self, key: &K, window_start_ms: i64, value: &V) -> Result<(), StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let value =
            self.value_serde.serialize(&self.name, value).map_err(|source| serialization(&self.name, source))?;
        self.changes.push((window_changelog_key(&key, window_start_ms), value.clone()));
        self.apply(key, window_start_ms, value);
        Ok(())
    }

    /// Every (key, window start, value), by window start then key bytes.
    pub fn all(&self) -> Result<Vec<(K, i64, V)>, StreamsError> {
        let entries: Vec<(i64, Bytes, Bytes)> = match &self.entries {
            WindowEntries::Memory(entries) => {
                entries.iter().map(|((start_ms, key), value)| (*start_ms, key.clone(), value.clone())).collect()
            }
            WindowEntries::Persistent(store) => {
                let mut entries = Vec::new();
                for segment in store.segments()? {
                    for (table_key, value) in store.segment_entries(segment)? {
                        let key = key_of_table_key(&table_key, WINDOW_TABLE_SUFFIX_BYTES).unwrap_or_default();
                        let start_ms = from_sortable_ms(&table_key[key.len()..]);
                        if start_ms >= self.keep_from_ms() {
                            entries.push((start_ms, Bytes::copy_from_slice(key), value));
                        }
                    }
                }
                entries.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
                entries
            }
        };
        entries
            .into_iter()
            .map(|(start_ms, key, value)| {
                let key = self
                    .key_serde
                    .deserialize(&self.name, Some(&key))
                    .map_err(|source| serialization(&self.name, source))?;
                Ok((key, start_ms, self.read_value(&value)?))
            })
            .collect()
    }

    fn apply(&mut self, key: Bytes, window_start_ms: i64, value: Option<Bytes>) {
        self.observed_start_ms = self.observed_start_ms.max(window_start_ms);
        let keep_from_ms = self.keep_from_ms();
        match &mut self.entries {
            WindowEntries::Memory(entries) => {
                match value {
                    Some(value) => entries.insert((window_start_ms, key), value),
                    None => entries.remove(&(window_start_ms, key)),
                };
                *entries = entries.split_off(&(keep_from_ms, Bytes::new()));
            }
            WindowEntries::Persistent(store) => {
                // An expired window is not written (Kafka's stores skip it
                // too); older segments go whole, the rest of an expired
                // window's segment is left out of every read.
                if window_start_ms >= keep_from_ms {
                    let segment = store.segment_of(window_start_ms);
                    store.put(segment, table_key(&key, &[&sortable_ms(window_start_ms)]), value);
                }
                store.set_observed_ms(self.observed_start_ms);
                store.drop_segments_before(store.segment_of(keep_from_ms));
            }
        }
    }

    fn read_value(&self, bytes: &[u8]) -> Result<V, StreamsError> {
        self.value_serde.deserialize(&self.name, Some(bytes)).map_err(|source| serialization(&self.name, source))
    }
}

/// Where a session store's bytes live.
enum SessionEntries {
    /// (key bytes, end, start): a key's sessions by end.
    Memory(BTreeMap<(Bytes, i64, i64), Bytes>),
    /// Segments by session end (redb tables); in a segment the key, the
    /// end and the start (sortable): a key's sessions by end, as Kafka's
    /// `SessionKeySchema` segments them.
    Persistent(SegmentedBytes),
}

/// A session store: a value per key and session [start, end] (end
/// inclusive), as Kafka's session store, in memory or on disk (redb, one
/// table per time segment). Sessions ending more than the retention
/// before the latest end are dropped.
pub struct SessionStore<K, V> {
    name: String,
    retention_ms: i64,
    entries: SessionEntries,
    observed_end_ms: i64,
    changes: Vec<(Bytes, Option<Bytes>)>,
    key_serde: SerdeRef<K>,
    value_serde: SerdeRef<V>,
}

impl<K, V> std::fmt::Debug for SessionStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let persistent = matches!(self.entries, SessionEntries::Persistent(_));
        f.debug_struct("SessionStore").field("name", &self.name).field("persistent", &persistent).finish()
    }
}

/// (start, end, value) of a session.
type Session = (i64, i64, Bytes);

impl<K: 'static, V: 'static> SessionStore<K, V> {
    /// A session store in memory, restored from its changelog's start.
    pub fn new(name: &str, retention_ms: i64, key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        Self::with_entries(name, retention_ms, SessionEntries::Memory(BTreeMap::new()), key_serde, value_serde)
    }

    /// A session store on disk, opened by its task under `state.dir`,
    /// restored from its checkpointed changelog offset.
    pub fn persistent(name: &str, retention_ms: i64, key_serde: SerdeRef<K>, value_serde: SerdeRef<V>) -> Self {
        let entries = SessionEntries::Persistent(SegmentedBytes::new(name, retention_ms));
        Self::with_entries(name, retention_ms, entries, key_serde, value_serde)
    }

    fn with_entries(
        name: &str,
        retention_ms: i64,
        entries: SessionEntries,
        key_serde: SerdeRef<K>,
        value_serde: SerdeRef<V>,
    ) -> Self {
        assert!(retention_ms >= 0, "a session store's retention is not negative");
        SessionStore {
            name: name.to_string(),
            retention_ms,
            entries,
            observed_end_ms: i64::MIN,
            changes: Vec::new(),
            key_serde,
            value_serde,
        }
    }

    /// The earliest session end kept.
    fn keep_from_ms(&self) -> i64 {
        self.observed_end_ms.saturating_sub(self.retention_ms)
    }

    /// The key's sessions that end at or after `earliest_end_ms` and start
    /// at or before `latest_start_ms`: (start, end, value), by end.
    pub fn find_sessions(
        &self,
        key: &K,
        earliest_end_ms: i64,
        latest_start_ms: i64,
    ) -> Result<Vec<(i64, i64, V)>, StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let earliest_end_ms = earliest_end_ms.max(self.keep_from_ms());
        let found: Vec<Session> = match &self.entries {
            SessionEntries::Memory(entries) => entries
                .range((key.clone(), earliest_end_ms, i64::MIN)..=(key.clone(), i64::MAX, i64::MAX))
                .map(|((_, end_ms, start_ms), value)| (*start_ms, *end_ms, value.clone()))
                .collect(),
            SessionEntries::Persistent(store) => {
                let from = table_key(&key, &[&sortable_ms(earliest_end_ms), &sortable_ms(i64::MIN)]);
                let to = table_key(&key, &[&sortable_ms(i64::MAX), &sortable_ms(i64::MAX)]);
                let first = store.segment_of(earliest_end_ms);
                let mut found = Vec::new();
                for segment in store.segments()?.into_iter().filter(|segment| *segment >= first) {
                    for (table_key, value) in store.range(segment, &from, Some(&to))? {
                        if key_of_table_key(&table_key, SESSION_TABLE_SUFFIX_BYTES) == Some(key.as_ref()) {
                            let times = &table_key[key.len()..];
                            found.push((from_sortable_ms(&times[8..]), from_sortable_ms(times), value));
                        }
                    }
                }
                found
            }
        };
        found
            .into_iter()
            .filter(|(start_ms, _, _)| *start_ms <= latest_start_ms)
            .map(|(start_ms, end_ms, value)| Ok((start_ms, end_ms, self.read_value(&value)?)))
            .collect()
    }

    pub fn put(&mut self, key: &K, start_ms: i64, end_ms: i64, value: &V) -> Result<(), StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        let value =
            self.value_serde.serialize(&self.name, value).map_err(|source| serialization(&self.name, source))?;
        self.changes.push((session_changelog_key(&key, start_ms, end_ms), value.clone()));
        self.apply(key, start_ms, end_ms, value);
        Ok(())
    }

    pub fn remove(&mut self, key: &K, start_ms: i64, end_ms: i64) -> Result<(), StreamsError> {
        let key = key_bytes(&self.name, &self.key_serde, key)?;
        self.changes.push((session_changelog_key(&key, start_ms, end_ms), None));
        self.apply(key, start_ms, end_ms, None);
        Ok(())
    }

    /// Every (key, start, end, value), by key bytes then end.
    pub fn all(&self) -> Result<Vec<(K, i64, i64, V)>, StreamsError> {
        let entries: Vec<(Bytes, i64, i64, Bytes)> = match &self.entries {
            SessionEntries::Memory(entries) => entries
                .iter()
                .map(|((key, end_ms, start_ms), value)| (key.clone(), *end_ms, *start_ms, value.clone()))
                .collect(),
            SessionEntries::Persistent(store) => {
                let mut entries = Vec::new();
                for segment in store.segments()? {
                    for (table_key, value) in store.segment_entries(segment)? {
                        let key = key_of_table_key(&table_key, SESSION_TABLE_SUFFIX_BYTES).unwrap_or_default();
                        let times = &table_key[key.len()..];
                        let (end_ms, start_ms) = (from_sortable_ms(times), from_sortable_ms(&times[8..]));
                        if end_ms >= self.keep_from_ms() {
                            entries.push((Bytes::copy_from_slice(key), end_ms, start_ms, value));
                        }
                    }
                }
                entries.sort_unstable_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
                entries
            }
        };
        entries
            .into_iter()
            .map(|(key, end_ms, start_ms, value)| {
                let key = self
                    .key_serde
                    .deserialize(&self.name, Some(&key))
                    .map_err(|source| serialization(&self.name, source))?;
                Ok((key, start_ms, end_ms, self.read_value(&value)?))
            })
            .collect()
    }

    fn apply(&mut self, key: Bytes, start_ms: i64, end_ms: i64, value: Option<Bytes>) {
        self.observed_end_ms = self.observed_end_ms.max(end_ms);
        let keep_from_ms = self.keep_from_ms();
        match &mut self.entries {
            SessionEntries::Memory(entries) => {
                match value {
                    Some(value) => entries.insert((key, end_ms, start_ms), value),
                    None => entries.remove(&(key, end_ms, start_ms)),
                };
                // Sessions are ordered by key first, so expiry is a scan;
                // it runs only when the oldest kept end is behind (rarely,
                // in a busy store).
                if entries.keys().any(|(_, end, _)| *end < keep_from_ms) {
                    entries.retain(|(_, end, _), _| *end >= keep_from_ms);
                }
            }
            SessionEntries::Persistent(store) => {
                if end_ms >= keep_from_ms {
                    let table_key = table_key(&key, &[&sortable_ms(end_ms), &sortable_ms(start_ms)]);
                    store.put(store.segment_of(end_ms), table_key, value);
                }
                store.set_observed_ms(self.observed_end_ms);
                store.drop_segments_before(store.segment_of(keep_from_ms));
            }
        }
    }

    fn read_value(&self, bytes: &[u8]) -> Result<V, StreamsError> {
        self.value_serde.deserialize(&self.name, Some(bytes)).map_err(|source| serialization(&self.name, source))
    }
}

/// Kafka's `SessionKeySchema`: the key, then the end and the start (8
/// bytes each, big-endian).
fn session_changelog_key(key: &[u8], start_ms: i64, end_ms: i64) -> Bytes {
    let mut bytes = BytesMut::with_capacity(key.len() + 16);
    bytes.put_slice(key);
    bytes.put_i64(end_ms);
    bytes.put_i64(start_ms);
    bytes.freeze()
}

impl<K: 'static, V: 'static> StateStore for SessionStore<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StreamsError> {
        let split = key.len().checked_sub(16).ok_or_else(|| StreamsError::Store {
            name: self.name.clone(),
            reason: format!("changelog key of {} bytes is shorter than a session key", key.len()),
        })?;
        let mut end = [0u8; 8];
        end.copy_from_slice(&key[split..split + 8]);
        let mut start = [0u8; 8];
        start.copy_from_slice(&key[split + 8..]);
        let (start_ms, end_ms) = (i64::from_be_bytes(start), i64::from_be_bytes(end));
        self.apply(Bytes::copy_from_slice(&key[..split]), start_ms, end_ms, value.map(Bytes::copy_from_slice));
        Ok(())
    }
    fn take_changes(&mut self) -> Vec<(Bytes, Option<Bytes>)> {
        std::mem::take(&mut self.changes)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn persistent(&self) -> bool {
        matches!(self.entries, SessionEntries::Persistent(_))
    }
    fn open(&mut self, dir: &Path) -> Result<bool, StreamsError> {
        match &mut self.entries {
            SessionEntries::Memory(_) => Ok(false),
            SessionEntries::Persistent(store) => {
                let wiped = store.open(dir)?;
                self.observed_end_ms = store.observed_ms();
                Ok(wiped)
            }
        }
    }
    fn flush(&mut self) -> Result<(), StreamsError> {
        match &mut self.entries {
            SessionEntries::Memory(_) => Ok(()),
            SessionEntries::Persistent(store) => store.flush(),
        }
    }
    fn wipe(&mut self) -> Result<(), StreamsError> {
        self.observed_end_ms = i64::MIN;
        match &mut self.entries {
            SessionEntries::Memory(entries) => {
                entries.clear();
                Ok(())
            }
            SessionEntries::Persistent(store) => store.wipe(),
        }
    }
}

fn window_changelog_key(key: &[u8], window_start_ms: i64) -> Bytes {
    let mut bytes = BytesMut::with_capacity(key.len() + WINDOW_KEY_SUFFIX_BYTES);
    bytes.put_slice(key);
    bytes.put_i64(window_start_ms);
    bytes.put_i32(0);
    bytes.freeze()
}

impl<K: 'static, V: 'static> StateStore for WindowStore<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StreamsError> {
        let split = key.len().checked_sub(WINDOW_KEY_SUFFIX_BYTES).ok_or_else(|| StreamsError::Store {
            name: self.name.clone(),
            reason: format!("changelog key of {} bytes is shorter than a window key", key.len()),
        })?;
        let mut start_bytes = [0u8; 8];
        start_bytes.copy_from_slice(&key[split..split + 8]);
        let start_ms = i64::from_be_bytes(start_bytes);
        self.apply(Bytes::copy_from_slice(&key[..split]), start_ms, value.map(Bytes::copy_from_slice));
        Ok(())
    }
    fn take_changes(&mut self) -> Vec<(Bytes, Option<Bytes>)> {
        std::mem::take(&mut self.changes)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn persistent(&self) -> bool {
        self.is_persistent()
    }
    fn open(&mut self, dir: &Path) -> Result<bool, StreamsError> {
        match &mut self.entries {
            WindowEntries::Memory(_) => Ok(false),
            WindowEntries::Persistent(store) => {
                let wiped = store.open(dir)?;
                self.observed_start_ms = store.observed_ms();
                Ok(wiped)
            }
        }
    }
    fn flush(&mut self) -> Result<(), StreamsError> {
        match &mut self.entries {
            WindowEntries::Memory(_) => Ok(()),
            WindowEntries::Persistent(store) => store.flush(),
        }
    }
    fn wipe(&mut self) -> Result<(), StreamsError> {
        self.observed_start_ms = i64::MIN;
        match &mut self.entries {
            WindowEntries::Memory(entries) => {
                entries.clear();
                Ok(())
            }
            WindowEntries::Persistent(store) => store.wipe(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::serde::Serdes;

    #[test]
    fn key_value_changes_are_logged_and_restore_rebuilds_the_store() {
        let mut store = KeyValueStore::new("counts", Serdes::string(), Serdes::i64());
        store.put(&"a".into(), &1).unwrap();
        store.put(&"b".into(), &2).unwrap();
        store.put(&"a".into(), &3).unwrap();
        assert_eq!(store.delete(&"b".into()).unwrap(), Some(2));
        let changes = store.take_changes();
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[3], (Bytes::from_static(b"b"), None));

        let mut restored = KeyValueStore::new("counts", Serdes::string(), Serdes::i64());
        for (key, value) in &changes {
            restored.restore(key, value.as_deref()).unwrap();
        }
        assert_eq!(restored.all().unwrap(), vec![("a".to_string(), 3)]);
        assert!(restored.take_changes().is_empty(), "a restore is not logged again");
    }

    #[test]
    fn session_store_finds_overlapping_sessions_and_restores_from_kafkas_session_keys() {
        let mut store = SessionStore::new("s", 100, Serdes::string(), Serdes::i64());
        store.put(&"k".into(), 0, 10, &2).unwrap();
        store.put(&"k".into(), 20, 30, &3).unwrap();
        store.put(&"j".into(), 0, 50, &9).unwrap();
        // Sessions of k ending at or after 5 and starting at or before 25.
        let found = store.find_sessions(&"k".into(), 5, 25).unwrap();
        assert_eq!(found, vec![(0, 10, 2), (20, 30, 3)]);
        assert_eq!(store.find_sessions(&"k".into(), 11, 19).unwrap(), vec![]);
        store.remove(&"k".into(), 0, 10).unwrap();
        let changes = store.take_changes();
        assert_eq!(changes[0].0.len(), 1 + 16);
        let mut restored = SessionStore::new("s", 100, Serdes::string(), Serdes::i64());
        for (key, value) in &changes {
            restored.restore(key, value.as_deref()).unwrap();
        }
        assert_eq!(restored.all().unwrap(), vec![("j".to_string(), 0, 50, 9), ("k".to_string(), 20, 30, 3)]);
    }

    #[test]
    fn window_store_expires_windows_past_retention_and_restores_from_its_changelog_keys() {
        let mut store = WindowStore::new("w", 100, Serdes::string(), Serdes::i64());
        store.put(&"k".into(), 0, &1).unwrap();
        store.put(&"k".into(), 50, &2).unwrap();
        store.put(&"k".into(), 149, &3).unwrap();
        // As Kafka's: a window starting at or before latest start minus the
        // retention (149 - 100) is gone; 50 is just inside.
        assert_eq!(store.fetch(&"k".into(), 0).unwrap(), None);
        assert_eq!(store.fetch(&"k".into(), 50).unwrap(), Some(2));
        let changes = store.take_changes();
        assert_eq!(changes[1].0.len(), 1 + WINDOW_KEY_SUFFIX_BYTES);

        let mut restored = WindowStore::new("w", 100, Serdes::string(), Serdes::i64());
        for (key, value) in &changes {
            restored.restore(key, value.as_deref()).unwrap();
        }
        assert_eq!(restored.all().unwrap(), vec![("k".to_string(), 50, 2), ("k".to_string(), 149, 3)]);
        assert!(restored.restore(b"short", Some(b"x")).is_err());
    }

    fn test_dir(name: &str) -> std::path::PathBuf {
        // Test data stays under target/, per process.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/spate-streams-unit")
            .join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A small deterministic generator (xorshift), so that the model
    /// tests need no dependency and replay exactly.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn a_persistent_window_store_answers_as_the_in_memory_one_through_expiry_flushes_and_a_reopen() {
        let dir = test_dir("window-model");
        // A retention of 3 minutes: segments of 90 s, so time moving over
        // 20 minutes drops many of them.
        let retention_ms = 180_000;
        let mut memory = WindowStore::new("w", retention_ms, Serdes::string(), Serdes::i64());
        let mut disk = WindowStore::persistent("w", retention_ms, Serdes::string(), Serdes::i64());
        assert!(!disk.open(&dir).unwrap());
        let keys = ["a", "ab", "b", ""];
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for step in 0..2_000_i64 {
            let key = keys[(next(&mut state) % 4) as usize].to_string();
            // Mostly forward in time, sometimes late (before the newest).
            let start_ms = step * 600 - (next(&mut state) % 240_000) as i64;
            disk.put(&key, start_ms, &step).unwrap();
            memory.put(&key, start_ms, &step).unwrap();
            if step % 97 == 0 {
                disk.flush().unwrap();
            }
            if step % 250 == 0 {
                // A clean restart: flushed, closed, reopened from the file
                // (its observed time included, so it expires the same).
                disk.flush().unwrap();
                drop(disk);
                disk = WindowStore::persistent("w", retention_ms, Serdes::string(), Serdes::i64());
                assert!(!disk.open(&dir).unwrap());
            }
            let probe = keys[(next(&mut state) % 4) as usize].to_string();
            let (from_ms, to_ms) = (start_ms - 200_000, start_ms + 1_000);
            assert_eq!(
                disk.fetch_range(&probe, from_ms, to_ms).unwrap(),
                memory.fetch_range(&probe, from_ms, to_ms).unwrap(),
                "step {step}"
            );
            assert_eq!(disk.fetch(&key, start_ms).unwrap(), memory.fetch(&key, start_ms).unwrap(), "step {step}");
        }
        assert_eq!(disk.all().unwrap(), memory.all().unwrap());
        disk.flush().unwrap();
        let segments = store_segments(&disk);
        // The retention spans two 90 s segments, so at most three hold a
        // live window; the older ones were dropped.
        assert!(!segments.is_empty() && segments.len() <= 3, "live segments: {segments:?}");
    }

    fn store_segments<K: 'static, V: 'static>(store: &WindowStore<K, V>) -> Vec<i64> {
        match &store.entries {
            WindowEntries::Persistent(store) => store.segments().unwrap(),
            WindowEntries::Memory(_) => Vec::new(),
        }
    }

    #[test]
    fn a_persistent_session_store_answers_as_the_in_memory_one_through_expiry_and_a_reopen() {
        let dir = test_dir("session-model");
        let retention_ms = 150_000;
        let mut memory = SessionStore::new("s", retention_ms, Serdes::string(), Serdes::i64());
        let mut disk = SessionStore::persistent("s", retention_ms, Serdes::string(), Serdes::i64());
        assert!(!disk.open(&dir).unwrap());
        let keys = ["a", "ab", "b"];
        let mut state = 0x2545_f491_4f6c_dd1d;
        for step in 0..1_500_i64 {
            let key = keys[(next(&mut state) % 3) as usize].to_string();
            let end_ms = step * 500 - (next(&mut state) % 100_000) as i64;
            let start_ms = end_ms - (next(&mut state) % 30_000) as i64;
            if step % 5 == 4 {
                disk.remove(&key, start_ms, end_ms).unwrap();
                memory.remove(&key, start_ms, end_ms).unwrap();
            } else {
                disk.put(&key, start_ms, end_ms, &step).unwrap();
                memory.put(&key, start_ms, end_ms, &step).unwrap();
            }
            if step % 200 == 0 {
                disk.flush().unwrap();
                drop(disk);
                disk = SessionStore::persistent("s", retention_ms, Serdes::string(), Serdes::i64());
                assert!(!disk.open(&dir).unwrap());
            }
            let probe = keys[(next(&mut state) % 3) as usize].to_string();
            let (earliest_end_ms, latest_start_ms) = (end_ms - 300_000, end_ms);
            assert_eq!(
                disk.find_sessions(&probe, earliest_end_ms, latest_start_ms).unwrap(),
                memory.find_sessions(&probe, earliest_end_ms, latest_start_ms).unwrap(),
                "step {step}"
            );
        }
        assert_eq!(disk.all().unwrap(), memory.all().unwrap());
    }
}
