//! The per-shard tail cache: recent batches of every log on a shard, so that
//! consumers and followers at the tail are served from memory even though
//! O_DIRECT writes bypass the page cache.
//!
//! Lives on one shard and is shared (`Rc`) by the logs it owns. Batches not
//! yet written to disk are pinned: they are the only copy a reader can get,
//! so they are never evicted; the byte budget applies to written ones, oldest
//! first.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

/// Identifies a log within its shard's cache.
pub type LogId = u64;

#[derive(Debug)]
struct Entry {
    last_offset: i64,
    bytes: Bytes,
    pinned: bool,
}

#[derive(Debug, Default)]
struct Inner {
    logs: HashMap<LogId, BTreeMap<i64, Entry>>,
    /// Insertion order across logs, for eviction: (log, base offset).
    order: VecDeque<(LogId, i64)>,
    bytes_used: usize,
    next_log_id: LogId,
}

#[derive(Debug)]
pub struct TailCache {
    bytes_max: usize,
    inner: RefCell<Inner>,
}

/// Batches found in the cache for a read.
#[derive(Debug, Default)]
pub struct CachedRun {
    pub batches: Vec<Bytes>,
    pub bytes: usize,
}

impl TailCache {
    pub fn new(bytes_max: usize) -> Rc<Self> {
        Rc::new(TailCache { bytes_max, inner: RefCell::new(Inner::default()) })
    }

    pub fn bytes_used(&self) -> usize {
        self.inner.borrow().bytes_used
    }

    pub fn register_log(&self) -> LogId {
        let mut inner = self.inner.borrow_mut();
        inner.next_log_id += 1;
        inner.next_log_id
    }

    /// Adds a batch that is not on disk yet.
    pub fn insert_pinned(&self, log: LogId, base_offset: i64, last_offset: i64, bytes: Bytes) {
        let mut inner = self.inner.borrow_mut();
        inner.bytes_used += bytes.len();
        let previous =
            inner.logs.entry(log).or_default().insert(base_offset, Entry { last_offset, bytes, pinned: true });
        assert!(previous.is_none(), "a batch offset is cached twice");
        inner.order.push_back((log, base_offset));
    }

    /// Marks every batch of `log` up to `last_offset` as written, so the
    /// budget may evict them.
    pub fn unpin_through(&self, log: LogId, last_offset: i64) {
        let mut inner = self.inner.borrow_mut();
        if let Some(entries) = inner.logs.get_mut(&log) {
            for (_, entry) in entries.range_mut(..=last_offset).rev() {
                if !entry.pinned {
                    break;
                }
                entry.pinned = false;
            }
        }
        Self::evict(&mut inner, self.bytes_max);
    }

    fn evict(inner: &mut Inner, bytes_max: usize) {
        let mut kept_pinned = Vec::new();
        while inner.bytes_used > bytes_max {
            let Some((log, base)) = inner.order.pop_front() else { break };
            let Some(entries) = inner.logs.get_mut(&log) else { continue };
            match entries.get(&base) {
                None => continue,
                Some(entry) if entry.pinned => kept_pinned.push((log, base)),
                Some(_) => {
                    if let Some(entry) = entries.remove(&base) {
                        inner.bytes_used -= entry.bytes.len();
                    }
                }
            }
        }
        for key in kept_pinned.into_iter().rev() {
            inner.order.push_front(key);
        }
    }

    /// Whole batches of `log` from the one containing `offset`, contiguous,
    /// each with last offset < `offset_end`, up to `bytes_max` (always at
    /// least one batch). Empty when the cache does not hold `offset`.
    pub fn read(&self, log: LogId, offset: i64, offset_end: i64, bytes_max: usize) -> CachedRun {
        let inner = self.inner.borrow();
        let mut run = CachedRun::default();
        let Some(entries) = inner.logs.get(&log) else { return run };
        let Some((&first_base, first)) = entries.range(..=offset).next_back() else { return run };
        if first.last_offset < offset {
            return run;
        }
        let mut expected_base = first_base;
        for (&base, entry) in entries.range(first_base..) {
            let fits = run.batches.is_empty() || run.bytes + entry.bytes.len() <= bytes_max;
            if base != expected_base || entry.last_offset >= offset_end || !fits {
                break;
            }
            run.bytes += entry.bytes.len();
            run.batches.push(entry.bytes.clone());
            expected_base = entry.last_offset + 1;
        }
        run
    }

    /// The lowest offset of `log` the cache holds, if any.
    pub fn first_offset(&self, log: LogId) -> Option<i64> {
        let inner = self.inner.borrow();
        inner.logs.get(&log)?.keys().next().copied()
    }

    /// Drops batches of `log` with a base offset >= `offset` (truncation).
    pub fn remove_from(&self, log: LogId, offset: i64) {
        let mut inner = self.inner.borrow_mut();
        let Some(entries) = inner.logs.get_mut(&log) else { return };
        let removed = entries.split_off(&offset);
        let freed: usize = removed.values().map(|entry| entry.bytes.len()).sum();
        inner.bytes_used -= freed;
    }

    /// Drops batches of `log` that end below `offset` (retention).
    pub fn remove_below(&self, log: LogId, offset: i64) {
        let mut inner = self.inner.borrow_mut();
        let Some(entries) = inner.logs.get_mut(&log) else { return };
        let mut freed = 0;
        entries.retain(|_, entry| {
            let keep = entry.last_offset >= offset;
            if !keep {
                freed += entry.bytes.len();
            }
            keep
        });
        inner.bytes_used -= freed;
    }

    pub fn drop_log(&self, log: LogId) {
        let mut inner = self.inner.borrow_mut();
        if let Some(entries) = inner.logs.remove(&log) {
            let freed: usize = entries.values().map(|entry| entry.bytes.len()).sum();
            inner.bytes_used -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn pinned_batches_survive_the_budget_and_written_ones_are_evicted_oldest_first() {
        let cache = TailCache::new(250);
        let log = cache.register_log();
        cache.insert_pinned(log, 0, 9, batch(100));
        cache.insert_pinned(log, 10, 19, batch(100));
        cache.insert_pinned(log, 20, 29, batch(100));
        cache.unpin_through(log, 9);
        // 300 bytes used, budget 250: the written batch 0..9 goes first.
        assert_eq!(cache.bytes_used(), 200);
        assert_eq!(cache.first_offset(log), Some(10));
        assert!(cache.read(log, 5, 100, 1000).batches.is_empty());
        assert_eq!(cache.read(log, 15, 100, 1000).batches.len(), 2);
    }

    #[test]
    fn reads_return_contiguous_whole_batches_below_the_end_within_the_byte_budget() {
        let cache = TailCache::new(10_000);
        let log = cache.register_log();
        for base in (0..50).step_by(10) {
            cache.insert_pinned(log, base, base + 9, batch(100));
        }
        let run = cache.read(log, 12, 40, 250);
        assert_eq!(run.batches.len(), 2, "byte budget of 250 fits two 100-byte batches");
        let run = cache.read(log, 12, 30, 10_000);
        assert_eq!(run.batches.len(), 2, "batches reaching the end offset are left out");
        let run = cache.read(log, 0, 100, 1);
        assert_eq!(run.batches.len(), 1, "one batch even if larger than the budget");
        cache.remove_from(log, 20);
        assert_eq!(cache.read(log, 0, 100, 10_000).batches.len(), 2);
        cache.remove_below(log, 10);
        assert_eq!(cache.first_offset(log), Some(10));
        cache.drop_log(log);
        assert_eq!(cache.bytes_used(), 0);
    }
}
