//! The record cache in front of the changelogs (Kafka's
//! `statestore.cache.max.bytes`, default 10 MiB): between commits a
//! store's changes are kept per changelog key, the newest only, so that a
//! key updated a thousand times between two commits is written to its
//! changelog once. The runtime drains it at each commit (before the
//! producer flush, so the writes are acknowledged before the stores are
//! flushed and checkpointed) and whenever the caches of all tasks hold
//! more than the setting (evicting = writing out).
//!
//! Not yet: Kafka's cache also holds back the updates a table forwards
//! downstream; here every update is still forwarded.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::processor::OutRecord;

/// Bytes an entry costs beyond its key and value (topic reference, map
/// node, timestamp), so that many tiny entries still count.
const ENTRY_OVERHEAD_BYTES: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct ChangelogCache {
    /// (changelog topic, key) -> newest value (None: deleted) and its
    /// timestamp.
    entries: BTreeMap<(String, Bytes), (Option<Bytes>, i64)>,
    size_bytes: usize,
}

fn entry_bytes(key_bytes: usize, value: &Option<Bytes>) -> usize {
    ENTRY_OVERHEAD_BYTES + key_bytes + value.as_ref().map_or(0, Bytes::len)
}

impl ChangelogCache {
    /// Keeps `value` as the key's newest change, replacing an older one.
    pub fn put(&mut self, topic: &str, key: Bytes, value: Option<Bytes>, timestamp_ms: i64) {
        let key_bytes = key.len();
        let added_bytes = entry_bytes(key_bytes, &value);
        let replaced = self.entries.insert((topic.to_string(), key), (value, timestamp_ms));
        let removed_bytes = replaced.map_or(0, |(old_value, _)| entry_bytes(key_bytes, &old_value));
        self.size_bytes = self.size_bytes + added_bytes - removed_bytes;
        debug_assert!(self.size_bytes >= self.entries.len() * ENTRY_OVERHEAD_BYTES);
    }

    /// What the cache holds, by the count above.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Every cached change as a changelog record to `partition`; empties it.
    pub fn drain(&mut self, partition: i32) -> Vec<OutRecord> {
        self.size_bytes = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|((topic, key), (value, timestamp_ms))| OutRecord {
                topic,
                partition: Some(partition),
                key: Some(key),
                value,
                timestamp_ms,
                headers: Vec::new(),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_key_changed_many_times_between_commits_is_written_once_with_its_newest_value() {
        let mut cache = ChangelogCache::default();
        for count in 1..=1000i64 {
            cache.put(
                "app-counts-changelog",
                Bytes::from("kafka"),
                Some(Bytes::from(count.to_be_bytes().to_vec())),
                count,
            );
        }
        cache.put("app-counts-changelog", Bytes::from("gone"), Some(Bytes::from("x")), 5);
        cache.put("app-counts-changelog", Bytes::from("gone"), None, 6);
        let one_entry_bytes = ENTRY_OVERHEAD_BYTES + "kafka".len() + 8;
        assert_eq!(cache.size_bytes(), one_entry_bytes + ENTRY_OVERHEAD_BYTES + "gone".len());
        let records = cache.drain(3);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key.as_deref(), Some(&b"gone"[..]));
        assert_eq!(records[0].value, None, "a delete stays a tombstone");
        assert_eq!(records[1].value.as_deref(), Some(&1000i64.to_be_bytes()[..]));
        assert_eq!(records[1].timestamp_ms, 1000);
        assert!(records.iter().all(|record| record.partition == Some(3)));
        assert_eq!(cache.size_bytes(), 0);
        assert!(cache.drain(3).is_empty());
    }
}
