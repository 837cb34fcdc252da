//! The partition log: an ordered set of segments on one shard, with offset
//! assignment, group commit, reads, truncation and retention.
//!
//! Lives on the shard that owns the partition; nothing here is `Send`.
//!
//! An append is two-phase, as Redpanda's produce path: [`PartitionLog::append`]
//! fixes the batch's offsets and order synchronously and returns an
//! [`AppendTicket`]; awaiting the ticket completes once the bytes are durable
//! under the log's [`Durability`]. A single flusher task per log takes what
//! was dispatched since its last cycle (up to `flush_cycle_bytes_max`) and
//! writes it in aligned chunks followed by one fdatasync, so appends that
//! arrive while a cycle is in flight share the next one (group commit).
//! Cycles are pipelined (see `flush.rs`): the next cycle's chunks go to the
//! device while earlier ones sync, and acks stay in order.
//!
//! Offsets obey, asserted on change:
//!   log_start <= high_watermark <= log_end, and
//!   synced <= written <= log_end (all exclusive ends).

pub(crate) mod clean;
mod flush;

pub use clean::CleanOutcome;
use flush::run_flusher;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::{StreamExt, TryStreamExt};
use glommio::sync::Semaphore;

use crate::batch::{self, BatchInfo, TimestampType};
use crate::cache::{LogId, TailCache};
use crate::checkpoint::LeaderEpochCache;
use crate::error::{LogError, Result};
use crate::io::{IoBuf, Storage, StorageFile, write_file_atomic};
use crate::limits::{
    BATCH_BYTES_MAX_LIMIT, CLEAN_BYTES_PER_SEC_DEFAULT, CLEAN_OFFSET_MAP_ENTRIES_MAX, FLUSH_CYCLE_BYTES_MAX,
    IO_ALIGN_BYTES, PENDING_BYTES_MAX, RECOVERY_POINT_INTERVAL_MS, SEGMENT_BYTES_MAX_LIMIT, SEGMENT_OFFSET_SPAN_MAX,
    SYNCS_IN_FLIGHT_MAX, WRITE_CHUNK_BYTES, WRITES_IN_FLIGHT_MAX, align_down, align_up,
};
use crate::producer_state::{ProducerEntry, ProducerStateTable, SequenceCheck};
use crate::segment::{self, Segment};
use crate::txn::{AbortedTxn, TxnMarker, TxnState};

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before the ack: an acknowledged batch survives power loss.
    Always,
    /// Ack once written to the device; fdatasync in the background so that
    /// written data waits at most this long to become durable (rolls,
    /// `flush` and `close` sync too).
    IntervalMs(u64),
    /// Ack once written to the device; the OS and device decide when it is
    /// durable (fdatasync only at roll, close, truncation and `flush`).
    Never,
}

/// Milliseconds since the epoch; a seam so tests can move time.
#[derive(Clone)]
pub struct Clock(Rc<dyn Fn() -> i64>);

impl Clock {
    pub fn new(now_ms: impl Fn() -> i64 + 'static) -> Self {
        Clock(Rc::new(now_ms))
    }

    pub fn system() -> Self {
        Clock::new(|| {
            let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            since_epoch.as_millis() as i64
        })
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// What happens to old data (Kafka's cleanup.policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Retention deletes whole old segments.
    #[default]
    Delete,
    /// The cleaner keeps the latest record per key; retention deletes
    /// nothing.
    Compact,
    /// Both: compaction, and retention by time and size.
    CompactDelete,
}

impl CleanupPolicy {
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment before this size (Kafka's segment.bytes).
    pub segment_bytes_max: u64,
    /// Roll a segment older than this (Kafka's segment.ms).
    pub segment_ms: i64,
    /// One sparse index entry per this many bytes of log.
    pub index_interval_bytes: u64,
    /// Largest batch accepted (Kafka's max.message.bytes).
    pub batch_bytes_max: usize,
    pub durability: Durability,
    /// Whose clock stamps a batch (message.timestamp.type): the producer's
    /// (`CreateTime`, stored as sent) or the log's at append
    /// (`LogAppendTime`: the batch's type bit and max timestamp are set and
    /// its CRC recomputed, as Kafka does).
    pub timestamp_type: TimestampType,
    /// Delete sealed segments whose newest record is older (retention.ms).
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger
    /// (retention.bytes).
    pub retention_bytes: Option<u64>,
    /// Disk blocks reserved ahead of the write position.
    pub preallocate_bytes: u64,
    /// Bytes accepted ahead of the disk before appends are refused with
    /// `Backpressure` (at least one batch is always accepted).
    pub pending_bytes_max: usize,
    /// Bytes one group-commit cycle takes from the queue (at least one
    /// batch). Smaller cycles keep two in flight sooner; larger ones
    /// amortise each fdatasync over more appends.
    pub flush_cycle_bytes_max: usize,
    /// With one replica the high watermark follows acknowledged appends;
    /// replication turns this off and moves it itself.
    pub high_watermark_follows_acks: bool,
    /// Delete old segments, compact, or both (cleanup.policy).
    pub cleanup_policy: CleanupPolicy,
    /// How long the cleaner keeps a tombstone once it has first seen it
    /// (delete.retention.ms): consumers reading the log within that time
    /// see the delete.
    pub delete_retention_ms: i64,
    /// Clean once the dirty part of the sealed segments (written since the
    /// last clean) is at least this fraction of them
    /// (min.cleanable.dirty.ratio).
    pub min_cleanable_dirty_ratio: f64,
    /// The cleaner's reads plus writes per second.
    pub clean_bytes_per_sec: u64,
    /// Keys the cleaner's offset map holds; at most
    /// `limits::CLEAN_OFFSET_MAP_ENTRIES_MAX`.
    pub clean_offset_map_entries_max: usize,
    pub clock: Clock,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            index_interval_bytes: 32 * 1024,
            batch_bytes_max: 4 * 1024 * 1024,
            durability: Durability::Always,
            timestamp_type: TimestampType::CreateTime,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            preallocate_bytes: 32 * 1024 * 1024,
            flush_cycle_bytes_max: FLUSH_CYCLE_BYTES_MAX,
            pending_bytes_max: PENDING_BYTES_MAX,
            high_watermark_follows_acks: true,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            clean_bytes_per_sec: CLEAN_BYTES_PER_SEC_DEFAULT,
            clean_offset_map_entries_max: CLEAN_OFFSET_MAP_ENTRIES_MAX,
            clock: Clock::system(),
        }
    }
}

impl LogConfig {
    /// Checks every field against the engine's limits (`open` does too).
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes_max < IO_ALIGN_BYTES || self.segment_bytes_max > SEGMENT_BYTES_MAX_LIMIT {
            return Err(LogError::InvalidConfig("segment_bytes_max must be in [4096, 4 GiB)"));
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > BATCH_BYTES_MAX_LIMIT {
            return Err(LogError::InvalidConfig("batch_bytes_max must be in [1, 64 MiB]"));
        }
        if self.pending_bytes_max < self.batch_bytes_max {
            return Err(LogError::InvalidConfig("pending_bytes_max must hold at least the largest batch"));
        }
        if self.flush_cycle_bytes_max == 0 {
            return Err(LogError::InvalidConfig("flush_cycle_bytes_max must be positive"));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::InvalidConfig("index_interval_bytes must be positive"));
        }
        if self.segment_ms <= 0 {
            return Err(LogError::InvalidConfig("segment_ms must be positive"));
        }
        if let Durability::IntervalMs(0) = self.durability {
            return Err(LogError::InvalidConfig("flush interval must be positive"));
        }
        if self.delete_retention_ms < 0 {
            return Err(LogError::InvalidConfig("delete_retention_ms must not be negative"));
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return Err(LogError::InvalidConfig("min_cleanable_dirty_ratio must be in [0, 1]"));
        }
        if self.clean_bytes_per_sec == 0 {
            return Err(LogError::InvalidConfig("clean_bytes_per_sec must be positive"));
        }
        if !(1..=CLEAN_OFFSET_MAP_ENTRIES_MAX).contains(&self.clean_offset_map_entries_max) {
            return Err(LogError::InvalidConfig("clean_offset_map_entries_max must be in [1, 2^20]"));
        }
        Ok(())
    }
}

/// Which offsets a read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBound {
    /// Consumers: committed data only (read_uncommitted).
    HighWatermark,
    /// Followers: everything appended.
    LogEnd,
    /// read_committed consumers: below the last stable offset, where every
    /// transaction is decided and its marker committed.
    LastStable,
}

#[derive(Debug, Clone, Default)]
pub struct ReadOutput {
    /// Whole batches, in offset order, contiguous.
    pub batches: Vec<Bytes>,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    /// The last stable offset when the read began (whatever the bound).
    pub last_stable_offset: i64,
}

/// Which offset an [`OffsetAbove`] waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Consumers' long polls.
    HighWatermark,
    /// A follower's replica fetch: the high watermark cannot move before
    /// followers fetch, so they wait for appends.
    LogEnd,
    /// read_committed long polls. The last stable offset moves only when
    /// the high watermark does (or a truncation lowers it), so these wait
    /// with the high watermark's waiters and look again when woken.
    LastStable,
}

/// The future of [`PartitionLog::high_watermark_above`] and
/// [`PartitionLog::log_end_above`]: completes once that offset is above
/// `offset`, or the log is closed or failed (or, for the log end, being
/// truncated); yields the offset it saw.
#[must_use = "futures do nothing unless awaited"]
pub struct OffsetAbove<S: Storage> {
    inner: Rc<LogInner<S>>,
    offset: i64,
    mark: Mark,
}

impl<S: Storage> Future for OffsetAbove<S> {
    type Output = i64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i64> {
        let mut state = self.inner.state.borrow_mut();
        let state = &mut *state;
        let last_stable_offset = state.last_stable_offset();
        let (seen, ended, wakers) = match self.mark {
            Mark::HighWatermark => (state.high_watermark, false, &mut state.high_watermark_wakers),
            Mark::LogEnd => (state.log_end_offset, state.truncating, &mut state.log_end_wakers),
            Mark::LastStable => (last_stable_offset, false, &mut state.high_watermark_wakers),
        };
        if seen > self.offset || ended || state.closed || state.failed.is_some() {
            return Poll::Ready(seen);
        }
        if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<S: Storage> fmt::Debug for OffsetAbove<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffsetAbove").field("mark", &self.mark).field("offset", &self.offset).finish()
    }
}

/// Offsets given to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// An idempotent producer's retry of a batch already in the log: these
    /// are the original batch's offsets and nothing was appended.
    pub duplicate: bool,
}

/// An append whose order is fixed; await [`AppendTicket::durable`] for the
/// ack under the log's durability policy.
#[derive(Debug)]
#[must_use = "an append is acknowledged only once its ticket completes"]
pub struct AppendTicket {
    pub info: AppendInfo,
    done: oneshot::Receiver<Result<()>>,
}

impl AppendTicket {
    pub async fn durable(self) -> Result<AppendInfo> {
        match self.done.await {
            Ok(Ok(())) => Ok(self.info),
            Ok(Err(err)) => Err(err),
            Err(oneshot::Canceled) => Err(LogError::Closed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// A dispatched batch not yet written.
#[derive(Debug)]
struct Pending {
    segment_base: i64,
    position: u64,
    last_offset: i64,
    bytes: Bytes,
}

#[derive(Debug)]
struct Waiter {
    /// Completes when the ack point reaches this offset (exclusive end).
    offset_end: i64,
    /// Needs an fdatasync whatever the policy (an explicit flush).
    needs_sync: bool,
    done: oneshot::Sender<Result<()>>,
}

#[derive(Debug)]
pub(crate) struct LogState<F> {
    segments: BTreeMap<i64, Segment<F>>,
    log_start_offset: i64,
    log_end_offset: i64,
    written_offset: i64,
    synced_offset: i64,
    /// The recovery point as stored on disk (`recovery_point.rs`): never
    /// above `synced_offset`, and when it was last written.
    recovery_point: i64,
    recovery_point_ms: i64,
    high_watermark: i64,
    pending: VecDeque<Pending>,
    /// How many of `pending`, from the front, are in writes in flight.
    submitted_count: usize,
    pending_bytes: usize,
    waiters: VecDeque<Waiter>,
    epochs: LeaderEpochCache,
    epochs_dirty: bool,
    sync_requested: bool,
    last_sync_ms: i64,
    failed: Option<LogError>,
    closed: bool,
    truncating: bool,
    /// Counts truncations, so a read that raced one can tell.
    truncations: u64,
    /// Tasks waiting for the high watermark to move (long-polling fetches).
    high_watermark_wakers: Vec<Waker>,
    /// Tasks waiting for the log end to move (replica fetches).
    log_end_wakers: Vec<Waker>,
    /// Batches starting at or below this offset may follow a gap left by
    /// compaction (the compaction checkpoint); above it offsets are
    /// contiguous. `i64::MIN` in a log never compacted.
    gaps_below: i64,
    /// The highest base offset of a replicated batch that follows a gap
    /// (its leader compacted what was between): the flusher raises
    /// `gaps_below` to it, durably, before it writes the batch.
    gaps_wanted: i64,
    /// Where the cleaner's next offset map starts: everything below was
    /// compacted (kept in memory only; the log start after an open).
    first_dirty_offset: i64,
    /// The earliest delete horizon of a tombstone the cleaner kept, when
    /// it must look again even without new dirty data.
    next_horizon_ms: Option<i64>,
    /// The idempotent producers' sequence state (`producer_state.rs`).
    producers: ProducerStateTable,
    /// A snapshot of `producers` taken at a roll (its end offset and
    /// bytes), written by the flusher when it seals the segment.
    pending_snapshot: Option<(i64, Vec<u8>)>,
    /// Aborted and not yet stable transactions (`txn.rs`).
    txns: TxnState,
}

impl<F> LogState<F> {
    /// The state of a log just recovered: everything on disk is written,
    /// synced and, with one replica, committed.
    pub(crate) fn recovered(
        segments: BTreeMap<i64, Segment<F>>,
        epochs: LeaderEpochCache,
        gaps_below: i64,
        producers: ProducerStateTable,
        txns: TxnState,
        now_ms: i64,
        recovery_point: i64,
    ) -> Self {
        let log_start_offset = segments.keys().next().copied().unwrap_or(0);
        let log_end_offset = segments.values().next_back().map_or(0, |segment| segment.next_offset);
        let state = LogState {
            segments,
            log_start_offset,
            log_end_offset,
            written_offset: log_end_offset,
            synced_offset: log_end_offset,
            recovery_point,
            recovery_point_ms: now_ms,
            high_watermark: log_end_offset,
            pending: VecDeque::new(),
            submitted_count: 0,
            pending_bytes: 0,
            waiters: VecDeque::new(),
            epochs,
            epochs_dirty: false,
            sync_requested: false,
            last_sync_ms: now_ms,
            failed: None,
            closed: false,
            truncating: false,
            truncations: 0,
            high_watermark_wakers: Vec::new(),
            log_end_wakers: Vec::new(),
            // Above the log end it would only spare batches not appended
            // yet from the contiguity check (a crash can leave it there,
            // between the checkpoint and the batches that needed it).
            gaps_below: gaps_below.min(log_end_offset),
            gaps_wanted: i64::MIN,
            first_dirty_offset: log_start_offset,
            next_horizon_ms: None,
            producers,
            pending_snapshot: None,
            txns,
        };
        state.check_offsets();
        state
    }

    /// Raises the log start offset (recovery, from its file); the records
    /// below it are never read.
    pub(crate) fn raise_log_start(&mut self, offset: i64) {
        if offset > self.log_start_offset {
            self.log_start_offset = offset;
            self.first_dirty_offset = self.first_dirty_offset.max(offset);
            self.txns.drop_below(offset);
        }
        self.check_offsets();
    }

    fn check_offsets(&self) {
        assert!(self.log_start_offset <= self.high_watermark, "log start above high watermark");
        assert!(self.high_watermark <= self.log_end_offset, "high watermark above log end");
        assert!(self.synced_offset <= self.written_offset, "synced above written");
        assert!(self.recovery_point <= self.synced_offset, "recovery point above synced");
        assert!(self.written_offset <= self.log_end_offset, "written above log end");
    }

    /// Raises the high watermark and wakes whoever waits for it.
    fn raise_high_watermark(&mut self, high_watermark: i64) {
        if high_watermark > self.high_watermark {
            self.high_watermark = high_watermark;
            self.txns.high_watermark_moved(high_watermark);
            self.wake_high_watermark_waiters();
        }
    }

    /// Kafka's last stable offset (`txn.rs`); never above the high
    /// watermark.
    fn last_stable_offset(&self) -> i64 {
        let first_ongoing_offset = self.producers.first_ongoing_offset();
        let last_stable_offset =
            self.txns.last_stable_offset(self.log_start_offset, self.high_watermark, first_ongoing_offset);
        debug_assert!(self.log_start_offset <= last_stable_offset && last_stable_offset <= self.high_watermark);
        last_stable_offset
    }

    /// Wakes every offset waiter: the high watermark moved, or the log
    /// closed or failed.
    fn wake_high_watermark_waiters(&mut self) {
        for waker in self.high_watermark_wakers.drain(..) {
            waker.wake();
        }
        self.wake_log_end_waiters();
    }

    fn wake_log_end_waiters(&mut self) {
        for waker in self.log_end_wakers.drain(..) {
            waker.wake();
        }
    }

    /// `Some(0)` if the recovery point should be written now (syncs moved
    /// past it and the interval has passed, or `force`), `Some(ms)` if it
    /// will be due in `ms`, `None` if it is up to date.
    fn recovery_point_due_in_ms(&self, now_ms: i64, force: bool) -> Option<i64> {
        if self.recovery_point >= self.synced_offset {
            return None;
        }
        let elapsed_ms = now_ms.saturating_sub(self.recovery_point_ms);
        Some(if force { 0 } else { (RECOVERY_POINT_INTERVAL_MS - elapsed_ms).max(0) })
    }

    /// The offset below which the log acknowledges appends under its
    /// durability policy.
    fn ack_offset(&self, durability: Durability) -> i64 {
        match durability {
            Durability::Always => self.synced_offset,
            Durability::IntervalMs(_) | Durability::Never => self.written_offset,
        }
    }

    fn active(&self) -> &Segment<F> {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment<F> {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }
}

/// Wakes the flusher; one waiter, level-triggered.
#[derive(Debug, Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wait(self: &Rc<Self>) -> NotifyWait {
        NotifyWait(self.clone())
    }
}

struct NotifyWait(Rc<Notify>);

impl Future for NotifyWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct LogInner<S: Storage> {
    storage: S,
    dir: PathBuf,
    /// Replaced whole by `update_config`; readers take the current one.
    config: RefCell<Rc<LogConfig>>,
    cache: Rc<TailCache>,
    log_id: LogId,
    state: RefCell<LogState<S::File>>,
    /// Held by the flusher while cycles run, and by truncation and close.
    io_lock: Semaphore,
    /// Serialises retention, truncation and close with each other.
    maintenance_lock: Semaphore,
    /// Serialises changes of the compaction checkpoint: the cleaner (under
    /// `maintenance_lock`) and the flusher (under `io_lock`) both raise it.
    gaps_lock: Semaphore,
    wake: Rc<Notify>,
    flusher_done: RefCell<Option<oneshot::Receiver<()>>>,
    /// The sealed segment's `.txnindex` a read needed last (base offset,
    /// entries): a read_committed consumer catching up reads the same
    /// segment's many fetches in a row. Bounded by one segment's entries.
    txn_index_cache: RefCell<Option<(i64, Rc<Vec<AbortedTxn>>)>>,
}

impl<S: Storage> Drop for LogInner<S> {
    fn drop(&mut self) {
        // A log dropped without close (or after a failure) must not leave
        // its batches, pinned ones included, in the shard's cache.
        self.cache.drop_log(self.log_id);
        // The flusher holds only a weak reference; wake it so it sees the
        // log is gone and ends.
        self.wake.notify();
    }
}

/// A partition's log. Cheap to clone; all clones are the same log.
pub struct PartitionLog<S: Storage> {
    inner: Rc<LogInner<S>>,
}

impl<S: Storage> Clone for PartitionLog<S> {
    fn clone(&self) -> Self {
        PartitionLog { inner: self.inner.clone() }
    }
}

impl<S: Storage> fmt::Debug for PartitionLog<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.borrow();
        f.debug_struct("PartitionLog")
            .field("dir", &self.inner.dir)
            .field("log_start_offset", &state.log_start_offset)
            .field("high_watermark", &state.high_watermark)
            .field("log_end_offset", &state.log_end_offset)
            .finish()
    }
}

pub(crate) const EPOCH_CHECKPOINT_NAME: &str = "leader-epoch-checkpoint";
/// Present only between a clean close and the next open.
pub(crate) const CLEAN_SHUTDOWN_NAME: &str = "clean-shutdown";
pub(crate) const CLEAN_SHUTDOWN_CONTENT: &[u8] = b"spate clean shutdown v1\n";

impl<S: Storage> PartitionLog<S> {
    /// Opens (recovering) or creates the log in `dir` and starts its flusher
    /// on the current executor.
    pub async fn open(storage: S, dir: impl Into<PathBuf>, config: LogConfig, cache: Rc<TailCache>) -> Result<Self> {
        config.validate()?;
        let dir = dir.into();
        let state = crate::recovery::recover(&storage, &dir, &config).await?;
        let log_id = cache.register_log();
        let inner = Rc::new(LogInner {
            storage,
            dir,
            config: RefCell::new(Rc::new(config)),
            cache,
            log_id,
            state: RefCell::new(state),
            io_lock: Semaphore::new(1),
            maintenance_lock: Semaphore::new(1),
            gaps_lock: Semaphore::new(1),
            wake: Rc::new(Notify::default()),
            flusher_done: RefCell::new(None),
            txn_index_cache: RefCell::new(None),
        });
        let (done_tx, done_rx) = oneshot::channel();
        *inner.flusher_done.borrow_mut() = Some(done_rx);
        glommio::spawn_local(run_flusher(Rc::downgrade(&inner), inner.wake.clone(), done_tx)).detach();
        Ok(PartitionLog { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The log's current config.
    pub fn config(&self) -> Rc<LogConfig> {
        self.inner.config()
    }

    /// Replaces the log's config while it runs (a topic config changed).
    /// Each use reads the current config, so the change applies from the
    /// next append (batch size, timestamp type, roll by size or age), flush
    /// cycle (durability; the flusher is woken to see it) and retention run.
    /// Refused with `InvalidConfig` if `config` fails `validate`, and with
    /// `InvalidConfig` if it changes what the log was opened with and
    /// cannot change (index interval, preallocation, high watermark owner).
    pub fn update_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        let current = self.inner.config();
        if config.index_interval_bytes != current.index_interval_bytes
            || config.preallocate_bytes != current.preallocate_bytes
            || config.high_watermark_follows_acks != current.high_watermark_follows_acks
        {
            return Err(LogError::InvalidConfig(
                "index interval, preallocation and high watermark owner are fixed at open",
            ));
        }
        *self.inner.config.borrow_mut() = Rc::new(config);
        self.inner.wake.notify();
        Ok(())
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.state.borrow().log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.inner.state.borrow().log_end_offset
    }

    pub fn high_watermark(&self) -> i64 {
        self.inner.state.borrow().high_watermark
    }

    /// Kafka's last stable offset: the lowest first offset of the
    /// transactions still unstable (no marker yet, or a marker not yet
    /// below the high watermark), else the high watermark. read_committed
    /// consumers read below it.
    pub fn last_stable_offset(&self) -> i64 {
        self.inner.state.borrow().last_stable_offset()
    }

    /// The aborted transactions that may have records in
    /// `[start_offset, end_offset)` (last offset >= start, first offset <
    /// end), ordered by first offset: what a read_committed fetch returns
    /// beside its batches. Those of sealed segments are read from their
    /// `.txnindex` files (`txn.rs`). A segment that retention or a
    /// truncation removed while this ran is `OffsetOutOfRange` or
    /// `Truncating` (retriable), never a shorter list.
    pub async fn aborted_transactions(&self, start_offset: i64, end_offset: i64) -> Result<Vec<AbortedTxn>> {
        self.inner.aborted_over(start_offset, end_offset).await
    }

    /// How many aborted transactions the log holds in memory: those whose
    /// marker is in a segment not sealed yet.
    pub fn aborted_transactions_resident(&self) -> usize {
        self.inner.state.borrow().txns.resident_count()
    }

    /// (producer id, first offset) of every open transaction, oldest first
    /// (DescribeProducers' current transaction start).
    pub fn ongoing_transactions(&self) -> Vec<(i64, i64)> {
        self.inner.state.borrow().producers.ongoing_transactions().collect()
    }

    /// Total bytes of the log's segments, written or not.
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.borrow().segments.values().map(|segment| segment.dispatched_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// What the partition knows of an idempotent producer.
    pub fn producer_entry(&self, producer_id: i64) -> Option<ProducerEntry> {
        self.inner.state.borrow().producers.entry(producer_id).cloned()
    }

    /// The producer's epoch here and whether it has a transaction open:
    /// what a KIP-890 check needs on every transactional produce, without
    /// copying the producer's entry.
    pub fn producer_transaction(&self, producer_id: i64) -> Option<(i16, bool)> {
        let state = self.inner.state.borrow();
        state.producers.entry(producer_id).map(|entry| (entry.epoch, entry.current_txn_first_offset.is_some()))
    }

    /// Every idempotent producer this log keeps state for (Kafka's
    /// DescribeProducers), by id.
    pub fn producers(&self) -> Vec<(i64, ProducerEntry)> {
        self.inner.state.borrow().producers.entries().map(|(id, entry)| (id, entry.clone())).collect()
    }

    pub fn leader_epochs(&self) -> LeaderEpochCache {
        self.inner.state.borrow().epochs.clone()
    }

    /// The error that stopped this log's writes, if any.
    pub fn failure(&self) -> Option<LogError> {
        self.inner.state.borrow().failed.clone()
    }

    /// Moves the high watermark (replication). It never passes the written
    /// log end and never goes back.
    pub fn set_high_watermark(&self, high_watermark: i64) {
        let mut state = self.inner.state.borrow_mut();
        let bounded = high_watermark.min(state.written_offset);
        state.raise_high_watermark(bounded);
        state.check_offsets();
    }

    /// The offset below which appends are acknowledged under the log's
    /// durability policy (synced under `Always`, written otherwise): the
    /// leader's own contribution to a replicated high watermark.
    pub fn ack_offset(&self) -> i64 {
        self.inner.state.borrow().ack_offset(self.inner.config().durability)
    }

    /// Completes once something is appended at or after `offset` (see
    /// [`OffsetAbove`]).
    pub fn log_end_above(&self, offset: i64) -> OffsetAbove<S> {
        OffsetAbove { inner: self.inner.clone(), offset, mark: Mark::LogEnd }
    }

    /// Completes once the high watermark is above `offset`, or the log is
    /// closed or failed: what a long-polling fetch at `offset` waits for.
    pub fn high_watermark_above(&self, offset: i64) -> OffsetAbove<S> {
        OffsetAbove { inner: self.inner.clone(), offset, mark: Mark::HighWatermark }
    }

    /// Completes (with the last stable offset) once the last stable offset
    /// is above `offset`, or the log is closed or failed: a read_committed
    /// long poll. The high watermark can move while the last stable offset
    /// stays (an open transaction holds it), so such a fetch waits on this
    /// rather than on `high_watermark_above`.
    pub fn last_stable_above(&self, offset: i64) -> OffsetAbove<S> {
        OffsetAbove { inner: self.inner.clone(), offset, mark: Mark::LastStable }
    }

    /// Phase one of an append: validates the batch, assigns its offsets and
    /// leader epoch (written into the header, outside the CRC) and queues it
    /// for the next group commit. The order of appends is the order of calls.
    pub fn append(&self, mut batch: BytesMut, leader_epoch: i32) -> Result<AppendTicket> {
        let inner = &self.inner;
        inner.check_open()?;
        let mut state = inner.state.borrow_mut();
        if state.truncating {
            return Err(LogError::Truncating);
        }
        let config = inner.config();
        let limit = config.pending_bytes_max;
        if !state.pending.is_empty() && state.pending_bytes + batch.len() > limit {
            return Err(LogError::Backpressure { pending_bytes: state.pending_bytes, limit });
        }
        let mut info = batch::validate_produce(&batch, config.batch_bytes_max)?;
        if config.timestamp_type == TimestampType::LogAppendTime {
            // Validation checked the CRC first, so resealing launders nothing.
            let now_ms = config.clock.now_ms();
            batch::set_log_append_time(&mut batch, now_ms)?;
            info.attributes = batch::peek_header(&batch)?.attributes.get();
            info.max_timestamp = now_ms;
        }
        // Checked in the same step that assigns offsets: nothing can come
        // between an idempotent producer's check and its append.
        if let SequenceCheck::Duplicate(original) = state.producers.check(&info)? {
            return Ok(inner.duplicate_ticket(&mut state, original.base_offset, original.last_offset));
        }
        let base_offset = state.log_end_offset;
        info.base_offset = base_offset;
        batch::set_base_offset(&mut batch, base_offset)?;
        batch::set_partition_leader_epoch(&mut batch, leader_epoch)?;
        info.partition_leader_epoch = leader_epoch;
        Ok(inner.enqueue(state, batch, &info, &config))
    }

    /// A follower's append: the batch keeps the offsets and leader epoch
    /// its leader gave it (checked, never reassigned), so every replica
    /// holds the same bytes at the same offsets. It must start at or after
    /// the log end (compaction may have left a gap on the leader; the
    /// compaction checkpoint is raised over it before the batch is written,
    /// so reads, recovery and a later leadership accept it). No
    /// LogAppendTime restamp (the leader did it) and no sequence check (the
    /// leader did it); the producer state still learns the batch, for the
    /// day this replica leads.
    pub fn append_replica(&self, batch: BytesMut) -> Result<AppendTicket> {
        let inner = &self.inner;
        inner.check_open()?;
        let state = inner.state.borrow_mut();
        if state.truncating {
            return Err(LogError::Truncating);
        }
        let config = inner.config();
        let limit = config.pending_bytes_max;
        if !state.pending.is_empty() && state.pending_bytes + batch.len() > limit {
            return Err(LogError::Backpressure { pending_bytes: state.pending_bytes, limit });
        }
        // The leader may have a larger max.message.bytes than this replica
        // was opened with for a moment (config change in flight): replicas
        // never refuse a batch their leader took for its size alone.
        let info = batch::validate_stored(&batch, crate::limits::BATCH_BYTES_MAX_LIMIT)?;
        if info.base_offset < state.log_end_offset {
            return Err(LogError::ReplicaOffset {
                base_offset: info.base_offset,
                log_end_offset: state.log_end_offset,
            });
        }
        let mut state = state;
        if info.base_offset > state.log_end_offset {
            state.gaps_wanted = state.gaps_wanted.max(info.base_offset);
        }
        Ok(inner.enqueue(state, batch, &info, &config))
    }

    /// Writes a transaction marker (WriteTxnMarkers): a control batch built
    /// here, stamped with the log's clock, appended like any batch (its
    /// ticket is the ack). It closes the producer's open transaction; an
    /// abort marker adds the transaction to the aborted list. A marker for
    /// a producer with no open transaction (a coordinator resending after a
    /// failover) is written too, and changes nothing but the epoch. A
    /// marker with an epoch below the producer's is refused with
    /// `InvalidProducerEpoch` (a deposed coordinator or a fenced producer);
    /// a higher one becomes the producer's epoch.
    pub fn append_marker(&self, marker: TxnMarker, leader_epoch: i32) -> Result<AppendTicket> {
        let inner = &self.inner;
        inner.check_open()?;
        let state = inner.state.borrow_mut();
        if state.truncating {
            return Err(LogError::Truncating);
        }
        let config = inner.config();
        if let Some(entry) = state.producers.entry(marker.producer_id)
            && marker.producer_epoch < entry.epoch
        {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: marker.producer_id,
                epoch: marker.producer_epoch,
                current_epoch: entry.epoch,
            });
        }
        if marker.producer_id < 0 || marker.producer_epoch < 0 {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: marker.producer_id,
                epoch: marker.producer_epoch,
                current_epoch: -1,
            });
        }
        // Markers are not refused for backpressure: the coordinator would
        // only retry, and a transaction left open holds the last stable
        // offset back. A marker is 80 bytes.
        let control = batch::ControlRecord { commit: marker.commit, coordinator_epoch: marker.coordinator_epoch };
        let mut batch =
            batch::build_control_batch(marker.producer_id, marker.producer_epoch, control, config.clock.now_ms());
        let mut info = batch::validate_stored(&batch, BATCH_BYTES_MAX_LIMIT)?;
        let base_offset = state.log_end_offset;
        info.base_offset = base_offset;
        batch::set_base_offset(&mut batch, base_offset)?;
        batch::set_partition_leader_epoch(&mut batch, leader_epoch)?;
        info.partition_leader_epoch = leader_epoch;
        Ok(inner.enqueue(state, batch, &info, &config))
    }

    /// Appends and waits for the ack.
    pub async fn append_durable(&self, batch: BytesMut, leader_epoch: i32) -> Result<AppendInfo> {
        self.append(batch, leader_epoch)?.durable().await
    }

    /// Waits until everything appended so far is written and fdatasync'ed,
    /// whatever the durability policy.
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_not_failed()?;
        let done = {
            let mut state = self.inner.state.borrow_mut();
            if state.synced_offset == state.log_end_offset && state.pending.is_empty() {
                return Ok(());
            }
            if state.closed {
                return Err(LogError::Closed);
            }
            let (done_tx, done_rx) = oneshot::channel();
            let offset_end = state.log_end_offset;
            state.waiters.push_back(Waiter { offset_end, needs_sync: true, done: done_tx });
            state.sync_requested = true;
            done_rx
        };
        self.inner.wake.notify();
        match done.await {
            Ok(result) => result,
            Err(oneshot::Canceled) => Err(LogError::Closed),
        }
    }

    /// Reads whole batches starting with the one that contains `offset`, up
    /// to `bytes_max` bytes (at least one batch when any is readable).
    pub async fn read(&self, offset: i64, bytes_max: usize, bound: ReadBound) -> Result<ReadOutput> {
        let inner = &self.inner;
        let (mut output, offset_end) = {
            let state = inner.state.borrow();
            let output = ReadOutput {
                batches: Vec::new(),
                log_start_offset: state.log_start_offset,
                high_watermark: state.high_watermark,
                log_end_offset: state.log_end_offset,
                last_stable_offset: state.last_stable_offset(),
            };
            if offset < state.log_start_offset || offset > state.log_end_offset {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.log_end_offset,
                });
            }
            let offset_end = match bound {
                ReadBound::HighWatermark => state.high_watermark,
                ReadBound::LogEnd => state.log_end_offset,
                ReadBound::LastStable => output.last_stable_offset,
            };
            (output, offset_end)
        };
        if offset >= offset_end {
            return Ok(output);
        }
        let cached = inner.cache.read(inner.log_id, offset, offset_end, bytes_max);
        if !cached.batches.is_empty() {
            output.batches = cached.batches;
            return Ok(output);
        }
        let truncations = inner.state.borrow().truncations;
        match inner.read_from_segments(offset, offset_end, bytes_max).await {
            Ok(batches) => output.batches = batches,
            // Reads do not wait for a truncation; one that raced it may
            // have read a file being cut. That is not corruption: the
            // offset is gone, and the caller asks again from the new end.
            Err(LogError::Corruption { .. }) if inner.state.borrow().truncations != truncations => {
                let state = inner.state.borrow();
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.log_end_offset,
                });
            }
            Err(err) => return Err(err),
        }
        Ok(output)
    }

    /// The largest record timestamp in the log, if it has records (each
    /// segment keeps its own: the last entry of its time index).
    pub fn max_timestamp_ms(&self) -> Option<i64> {
        let state = self.inner.state.borrow();
        state.segments.values().map(|segment| segment.max_timestamp_ms).filter(|&ms| ms != i64::MIN).max()
    }

    /// The offset of the first record with a timestamp >= `timestamp_ms`
    /// below the high watermark, or `None` if there is none (Kafka's
    /// ListOffsets by timestamp).
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        Ok(self.record_for_timestamp(timestamp_ms).await?.map(|(offset, _)| offset))
    }

    /// As `offset_for_timestamp`, with the record's own timestamp: (offset,
    /// timestamp), as Kafka's ListOffsets answers.
    pub async fn record_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>> {
        let start = {
            let state = self.inner.state.borrow();
            let segment = state.segments.values().find(|segment| segment.max_timestamp_ms >= timestamp_ms);
            match segment {
                None => return Ok(None),
                Some(segment) => {
                    let relative = segment.time_index.floor_below(timestamp_ms).map_or(0, |e| e.relative_offset);
                    (segment.base_offset + i64::from(relative)).max(state.log_start_offset)
                }
            }
        };
        let mut offset = start;
        loop {
            let output = self.read(offset, 1 << 20, ReadBound::HighWatermark).await?;
            if output.batches.is_empty() {
                return Ok(None);
            }
            for bytes in &output.batches {
                let header = batch::peek_header(bytes)?;
                let last_offset = header.base_offset.get() + i64::from(header.last_offset_delta.get());
                if header.max_timestamp.get() >= timestamp_ms {
                    let (found, found_timestamp) = first_record_at_or_after(bytes, timestamp_ms)?;
                    return Ok(Some((found.max(offset), found_timestamp)));
                }
                offset = last_offset + 1;
            }
        }
    }

    /// Removes every record at or after `offset` (replication's divergence
    /// repair). Whole batches go: if `offset` falls inside a batch, the log
    /// ends before that batch. Returns the new log end offset.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64> {
        self.with_log_cut(|inner| async move { inner.truncate_locked(offset).await }).await
    }

    /// A follower whose log ends below its leader's log start (it was away
    /// longer than the leader's retention, or lost its disk) cannot catch up
    /// by fetching: it drops everything and starts over, empty, at `offset`
    /// (Kafka's truncateFullyAndStartAt). Only forward: `offset` must not be
    /// below the log end.
    pub async fn reset_to(&self, offset: i64) -> Result<()> {
        let log_end_offset = self.log_end_offset();
        if offset < log_end_offset {
            return Err(LogError::ReplicaOffset { base_offset: offset, log_end_offset });
        }
        self.with_log_cut(|inner| async move {
            inner.restart_empty_at(offset, "it ended below the leader's log start").await
        })
        .await
    }

    /// A follower that reset to its leader's log start (`reset_to`), where
    /// DeleteRecords had moved it into a batch, is sent that batch whole:
    /// it starts before this log's end. Such a log, empty, starts over at
    /// the batch's base offset so that the batch can be appended, as a
    /// Kafka follower does; the log start follows the leader's again with
    /// the next fetch. Refused (`ReplicaOffset`) unless the log is empty
    /// and the batch `base_offset..=last_offset` holds its end.
    pub async fn restart_at_batch(&self, base_offset: i64, last_offset: i64) -> Result<()> {
        let (log_start_offset, log_end_offset) = {
            let state = self.inner.state.borrow();
            (state.log_start_offset, state.log_end_offset)
        };
        if log_start_offset != log_end_offset || base_offset >= log_end_offset || last_offset < log_end_offset {
            return Err(LogError::ReplicaOffset { base_offset, log_end_offset });
        }
        self.with_log_cut(|inner| async move {
            inner.restart_empty_at(base_offset, "the leader's first batch starts before its log start").await
        })
        .await
    }

    /// Runs a change that cuts the log (truncation, reset) alone: after
    /// everything pending is written, with the flusher idle and appends
    /// refused (`Truncating`); a failure stops the log.
    async fn with_log_cut<T, F>(&self, work: impl FnOnce(Rc<LogInner<S>>) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let inner = &self.inner;
        let _maintenance = inner.maintenance_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        inner.check_open()?;
        let _permit = loop {
            self.flush().await?;
            let permit = inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
            let mut state = inner.state.borrow_mut();
            if state.pending.is_empty() {
                state.truncating = true;
                break permit;
            }
        };
        inner.state.borrow_mut().truncations += 1;
        let result = work(inner.clone()).await;
        inner.state.borrow_mut().truncating = false;
        if let Err(err) = &result {
            inner.fail(err.clone());
        }
        result
    }

    /// Deletes whole sealed segments past retention time or size, all of
    /// them below the high watermark, and moves the log start offset.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        let inner = &self.inner;
        // Not the flusher's lock: the flusher never touches sealed segments,
        // and under steady appends it may hold its lock for a long time.
        let _permit = inner.maintenance_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        inner.check_open()?;
        let result = inner.delete_expired_segments(now_ms).await;
        if let Err(err) = &result {
            // The segments are gone from memory but maybe not from disk; a
            // later open would bring them back. Stop, as for any I/O error.
            inner.fail(err.clone());
        }
        result
    }

    /// Moves the log start offset forward to `offset` (Kafka's
    /// DeleteRecords): records below it are unreadable from now on, a
    /// restart included, and the segments wholly below it are deleted (the
    /// one holding it stays, as in Kafka, until retention takes it). An
    /// offset past the high watermark is `OffsetOutOfRange`: only committed
    /// records may be deleted. At or below the current start it changes
    /// nothing. Returns the log start offset after the call.
    pub async fn advance_log_start(&self, offset: i64) -> Result<i64> {
        let inner = &self.inner;
        // Retention, truncation and close hold it too, so the log end
        // cannot drop below `offset` meanwhile.
        let _permit = inner.maintenance_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        inner.check_open()?;
        {
            let state = inner.state.borrow();
            if offset < 0 || offset > state.high_watermark {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.high_watermark,
                });
            }
            if offset <= state.log_start_offset {
                return Ok(state.log_start_offset);
            }
        }
        let result = inner.advance_log_start_locked(offset).await;
        if let Err(err) = &result {
            // As for retention: what is gone from memory may not be gone
            // from disk, and the start may not be on disk.
            inner.fail(err.clone());
        }
        result
    }

    /// Runs retention every `interval` in the background on this shard, in
    /// the given task queue, until the log is closed.
    pub fn spawn_retention(&self, interval: Duration, queue: glommio::TaskQueueHandle) -> Result<()> {
        self.spawn_maintenance(interval, queue, "retention", async |log, now_ms| {
            log.enforce_retention(now_ms).await.map(|_| ())
        })
    }

    /// Runs `work` every `interval` on this shard, in `queue`, until the log
    /// is closed, dropped or failed (the failure was logged where it
    /// happened); other errors are logged as `what` failing and retried at
    /// the next interval. Retention and the cleaner share it.
    pub(crate) fn spawn_maintenance(
        &self,
        interval: Duration,
        queue: glommio::TaskQueueHandle,
        what: &'static str,
        work: impl AsyncFn(&PartitionLog<S>, i64) -> Result<()> + 'static,
    ) -> Result<()> {
        let weak = Rc::downgrade(&self.inner);
        let task = async move {
            loop {
                glommio::timer::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                let log = PartitionLog { inner };
                if log.inner.state.borrow().closed {
                    break;
                }
                let now_ms = log.inner.config().clock.now_ms();
                match work(&log, now_ms).await {
                    Ok(()) => {}
                    Err(LogError::Closed | LogError::Failed { .. }) => break,
                    Err(err) => tracing::error!(dir = %log.dir().display(), error = %err, "{what} failed"),
                }
            }
        };
        glommio::spawn_local_into(task, queue)
            .map(|task| drop(task.detach()))
            .map_err(|_| LogError::InvalidConfig("no such task queue for background maintenance"))
    }

    /// Writes and syncs everything, persists the active segment's indexes,
    /// and stops the flusher. Appends after close fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        {
            let mut state = inner.state.borrow_mut();
            state.closed = true;
            state.wake_high_watermark_waiters();
        }
        inner.wake.notify();
        let done = inner.flusher_done.borrow_mut().take();
        if let Some(done) = done {
            let _ = done.await;
        }
        inner.check_not_failed()?;
        let _maintenance = inner.maintenance_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        let _permit = inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        let result = inner.close_active_segment().await;
        if let Err(err) = &result {
            inner.fail(err.clone());
        }
        result?;
        inner.cache.drop_log(inner.log_id);
        Ok(())
    }
}

/// The offset of the first record of `bytes` with a timestamp at or after
/// `timestamp_ms`; the batch's base offset when its records cannot be read
/// without decompressing.
/// The first record of a batch with a timestamp >= `timestamp_ms`: its
/// offset and timestamp. A batch whose records cannot be read without
/// decompressing answers its base offset and its max timestamp; one with
/// LogAppendTime, its max timestamp for every record (Kafka's rule).
fn first_record_at_or_after(bytes: &[u8], timestamp_ms: i64) -> Result<(i64, i64)> {
    let header = batch::peek_header(bytes)?;
    let base_offset = header.base_offset.get();
    let base_timestamp = header.base_timestamp.get();
    let max_timestamp = header.max_timestamp.get();
    if header.attributes.get() & clean::LOG_APPEND_TIME_BIT != 0 {
        return Ok((base_offset, max_timestamp));
    }
    let Ok(records) = batch::records(bytes) else { return Ok((base_offset, max_timestamp)) };
    for record in records {
        let record = record?;
        let record_timestamp = record.timestamp_ms(base_timestamp);
        if record_timestamp >= timestamp_ms {
            return Ok((record.offset(base_offset), record_timestamp));
        }
    }
    Ok((base_offset, max_timestamp))
}

async fn remove_if_exists<S: Storage>(storage: &S, path: &Path) -> Result<()> {
    match storage.remove(path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(LogError::io("remove", path, err)),
    }
}

impl<S: Storage> LogInner<S> {
    /// The current config (cheap: a reference count).
    fn config(&self) -> Rc<LogConfig> {
        self.config.borrow().clone()
    }

    /// The common end of every append, once the batch has its offsets and
    /// epoch in its header: place it in the active segment, pin it in the
    /// tail cache, queue it for the flusher and hand out its ticket.
    fn enqueue(
        &self,
        mut state: std::cell::RefMut<'_, LogState<S::File>>,
        batch: BytesMut,
        info: &BatchInfo,
        config: &LogConfig,
    ) -> AppendTicket {
        let base_offset = info.base_offset;
        assert!(base_offset >= state.log_end_offset, "a batch never starts below the log end");
        if state.epochs.assign(info.partition_leader_epoch, base_offset) {
            state.epochs_dirty = true;
        }
        self.roll_if_needed(&mut state, info);
        let marker = crate::producer_state::marker_of(info, &batch);
        if let Some(done) = state.producers.record(info, marker) {
            let high_watermark = state.high_watermark;
            state.txns.complete(&done, high_watermark);
        }
        let segment = state.active_mut();
        assert!(!segment.sealed, "appends never reach a sealed segment");
        let position = segment.dispatched_bytes;
        let segment_base = segment.base_offset;
        segment.record_batch(position, info, config.index_interval_bytes);
        let bytes = batch.freeze();
        let last_offset = info.last_offset();
        self.cache.insert_pinned(self.log_id, base_offset, last_offset, bytes.clone());
        state.pending_bytes += bytes.len();
        state.pending.push_back(Pending { segment_base, position, last_offset, bytes });
        state.log_end_offset = last_offset + 1;
        let (done_tx, done_rx) = oneshot::channel();
        state.waiters.push_back(Waiter { offset_end: last_offset + 1, needs_sync: false, done: done_tx });
        state.check_offsets();
        state.wake_log_end_waiters();
        drop(state);
        self.wake.notify();
        AppendTicket { info: AppendInfo { base_offset, last_offset, duplicate: false }, done: done_rx }
    }

    fn roll_if_needed(&self, state: &mut LogState<S::File>, info: &BatchInfo) {
        let now_ms = self.config().clock.now_ms();
        let active = state.active_mut();
        let full = active.dispatched_bytes + info.batch_bytes as u64 > self.config().segment_bytes_max;
        let old = now_ms - active.created_ms >= self.config().segment_ms;
        let span_exhausted = info.last_offset() - active.base_offset > SEGMENT_OFFSET_SPAN_MAX;
        if active.is_empty() || !(full || old || span_exhausted) {
            return;
        }
        active.roll_requested = true;
        // The producer state as of the new segment's base, written once the
        // old segment is sealed: recovery replays only the log after it.
        state.pending_snapshot = Some((info.base_offset, state.producers.encode(info.base_offset)));
        let segment = Segment::new(&self.dir, info.base_offset, now_ms);
        tracing::debug!(dir = %self.dir.display(), base_offset = info.base_offset, "rolling segment");
        state.segments.insert(info.base_offset, segment);
    }

    /// The ticket of a retried duplicate: it completes once the original
    /// batch is acknowledged (at once if it already is).
    fn duplicate_ticket(&self, state: &mut LogState<S::File>, base_offset: i64, last_offset: i64) -> AppendTicket {
        let ack_offset = match self.config().durability {
            Durability::Always => state.synced_offset,
            Durability::IntervalMs(_) | Durability::Never => state.written_offset,
        };
        let (done_tx, done_rx) = oneshot::channel();
        if last_offset < ack_offset {
            let _ = done_tx.send(Ok(()));
        } else {
            state.waiters.push_back(Waiter { offset_end: last_offset + 1, needs_sync: false, done: done_tx });
        }
        AppendTicket { info: AppendInfo { base_offset, last_offset, duplicate: true }, done: done_rx }
    }

    /// Writes the producer-state snapshot taken at the last roll, if any.
    async fn write_pending_snapshot(&self) -> Result<()> {
        let pending = self.state.borrow_mut().pending_snapshot.take();
        match pending {
            Some((end_offset, bytes)) => {
                crate::producer_state::write_snapshot(&self.storage, &self.dir, end_offset, &bytes).await
            }
            None => Ok(()),
        }
    }

    /// Rebuilds the producer state after a truncation to `log_end_offset`.
    async fn rebuild_producer_state(&self, log_end_offset: i64) -> Result<()> {
        let (gaps_below, seeds) = {
            let mut state = self.state.borrow_mut();
            state.pending_snapshot = None;
            // Open before the cut: still open. Aborted by a marker the cut
            // took: open again.
            let epoch_of = |producer_id| state.producers.entry(producer_id).map_or(0, |entry| entry.epoch);
            let mut seeds: Vec<(i64, i16, i64)> = state
                .producers
                .ongoing_transactions()
                .map(|(producer_id, first_offset)| (producer_id, epoch_of(producer_id), first_offset))
                .collect();
            for txn in state.txns.aborted_between(log_end_offset, i64::MAX) {
                if txn.last_offset >= log_end_offset && txn.first_offset < log_end_offset {
                    seeds.push((txn.producer_id, epoch_of(txn.producer_id), txn.first_offset));
                }
            }
            // Committed by a marker the cut took, if it was not yet below
            // the high watermark (the log keeps no older commits).
            for (producer_id, first_offset) in state.txns.unstable_from(log_end_offset) {
                if first_offset < log_end_offset {
                    seeds.push((producer_id, epoch_of(producer_id), first_offset));
                }
            }
            (state.gaps_below, seeds)
        };
        let sources_for = |offset| crate::producer_state::producer_sources(&self.state.borrow().segments, offset);
        let recovered =
            crate::producer_state::recover(&self.storage, &self.dir, gaps_below, log_end_offset, &seeds, sources_for)
                .await?;
        let mut state = self.state.borrow_mut();
        state.txns.truncate_from(log_end_offset);
        state.producers = recovered.table;
        Ok(())
    }

    /// Errors unless the log is open and has not failed.
    fn check_open(&self) -> Result<()> {
        self.check_not_failed()?;
        if self.state.borrow().closed {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Errors with `Failed` once an I/O error has stopped the log.
    fn check_not_failed(&self) -> Result<()> {
        match &self.state.borrow().failed {
            Some(cause) => Err(self.failed_with(cause.clone())),
            None => Ok(()),
        }
    }

    fn failed_with(&self, cause: LogError) -> LogError {
        LogError::Failed { dir: self.dir.clone(), cause: Box::new(cause) }
    }

    fn fail(&self, err: LogError) {
        let mut state = self.state.borrow_mut();
        if state.failed.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %err, "log stops accepting writes");
            state.failed = Some(err.clone());
        }
        let cause = state.failed.clone().unwrap_or(err);
        for waiter in state.waiters.drain(..) {
            let _ = waiter.done.send(Err(self.failed_with(cause.clone())));
        }
        state.wake_high_watermark_waiters();
    }

    /// The end of a clean shutdown: the active segment is cut to its exact
    /// size and synced, its indexes are written, and the clean-shutdown
    /// marker tells the next open that the segment's tail is not torn, so
    /// any damage there is corruption rather than an interrupted write.
    async fn close_active_segment(&self) -> Result<()> {
        let (file, segment_base, written_bytes) = {
            let state = self.state.borrow();
            let active = state.active();
            (active.file.clone(), active.base_offset, active.written_bytes)
        };
        if let Some(file) = file {
            self.persist_segment(&file, segment_base, written_bytes).await?;
        }
        let (log_end_offset, snapshot) = {
            let mut state = self.state.borrow_mut();
            state.synced_offset = state.written_offset;
            state.pending_snapshot = None;
            (state.log_end_offset, state.producers.encode(state.log_end_offset))
        };
        self.write_recovery_point_if_due(true).await?;
        // The next open loads this and replays nothing.
        crate::producer_state::write_snapshot(&self.storage, &self.dir, log_end_offset, &snapshot).await?;
        self.write_atomic(&self.dir.join(CLEAN_SHUTDOWN_NAME), CLEAN_SHUTDOWN_CONTENT).await
    }

    async fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        write_file_atomic(&self.storage, path, data).await.map_err(|err| LogError::io("write", path, err))
    }

    /// Writes the recovery point if it is due (see
    /// `LogState::recovery_point_due_in_ms`): everything below the synced
    /// offset is on the media.
    async fn write_recovery_point_if_due(&self, force: bool) -> Result<()> {
        let now_ms = self.config().clock.now_ms();
        let (due_in_ms, synced_offset) = {
            let state = self.state.borrow();
            (state.recovery_point_due_in_ms(now_ms, force), state.synced_offset)
        };
        if due_in_ms != Some(0) {
            return Ok(());
        }
        self.write_recovery_point(synced_offset, now_ms).await
    }

    /// Lowers the stored recovery point to `offset` before anything at or
    /// above it is cut, so that a crash during the cut and appends after it
    /// find no point above what the log holds synced.
    async fn lower_recovery_point(&self, offset: i64) -> Result<()> {
        if self.state.borrow().recovery_point <= offset {
            return Ok(());
        }
        self.write_recovery_point(offset, self.config().clock.now_ms()).await
    }

    async fn write_recovery_point(&self, offset: i64, now_ms: i64) -> Result<()> {
        // A point above the synced offset would make the next recovery
        // refuse a torn tail as corruption; one below is only less precise.
        assert!(offset <= self.state.borrow().synced_offset, "recovery point above the synced offset");
        let path = self.dir.join(crate::recovery_point::RECOVERY_POINT_NAME);
        self.write_atomic(&path, &crate::recovery_point::encode(offset)).await?;
        let mut state = self.state.borrow_mut();
        assert!(offset <= state.synced_offset, "the synced offset went down during the write");
        state.recovery_point = offset;
        state.recovery_point_ms = now_ms;
        state.check_offsets();
        Ok(())
    }

    async fn write_epoch_checkpoint(&self, epochs: Option<&LeaderEpochCache>) -> Result<()> {
        match epochs {
            Some(epochs) => self.write_atomic(&self.dir.join(EPOCH_CHECKPOINT_NAME), &epochs.encode()).await,
            None => Ok(()),
        }
    }

    /// Cuts a segment whose batches are all written to its exact size,
    /// syncs it and persists its indexes: when it is sealed, and for the
    /// active segment at close.
    async fn persist_segment(&self, file: &S::File, segment_base: i64, end_position: u64) -> Result<()> {
        let (path, index, time_index, index_path, time_index_path) = {
            let state = self.state.borrow();
            let segment = &state.segments[&segment_base];
            let encoded = (segment.index.encode(), segment.time_index.encode());
            (segment.log_path.clone(), encoded.0, encoded.1, segment.index_path(), segment.time_index_path())
        };
        file.truncate(end_position).await.map_err(|err| LogError::io("truncate", &path, err))?;
        file.fdatasync().await.map_err(|err| LogError::io("fdatasync", &path, err))?;
        self.write_atomic(&index_path, &index).await?;
        self.write_atomic(&time_index_path, &time_index).await?;
        // Before the producer snapshot that follows a seal or close: the
        // next open takes the aborted transactions below that snapshot from
        // these files.
        self.write_txn_index(segment_base).await
    }

    /// Writes a segment's `.txnindex`: the aborted transactions whose marker
    /// it holds, as known now.
    async fn write_txn_index(&self, segment_base: i64) -> Result<()> {
        let (path, entries) = {
            let state = self.state.borrow();
            let segment = &state.segments[&segment_base];
            (segment.txn_index_path(), state.txns.aborted_in(segment_base, segment.next_offset))
        };
        crate::txn::write_index(&self.storage, &path, &entries).await?;
        if let Some(segment) = self.state.borrow_mut().segments.get_mut(&segment_base) {
            segment.aborted_entries = entries.len();
        }
        Ok(())
    }

    /// A segment was sealed, its `.txnindex` written with it: its aborted
    /// transactions leave memory (reads find them in the file).
    pub(crate) fn evict_sealed_txns(&self, segment_base: i64) {
        let mut state = self.state.borrow_mut();
        let next_offset = state.segments[&segment_base].next_offset;
        state.txns.evict_below(next_offset);
    }

    /// `PartitionLog::aborted_transactions`: the resident entries, and
    /// those of the sealed segments' `.txnindex` files from the segment
    /// holding `start_offset` on, until an entry shows that no transaction
    /// begun below `end_offset` was still open at its marker (its last
    /// stable offset is at or past `end_offset`: Kafka's `isComplete`), so
    /// a fetch near the end of the log reads no file.
    pub(crate) async fn aborted_over(&self, start_offset: i64, end_offset: i64) -> Result<Vec<AbortedTxn>> {
        // One look at the state: a seal in between moves entries from
        // memory to a file this list would not hold.
        let (sealed, mut found, start_offset) = {
            let state = self.state.borrow();
            // Transactions wholly below the log start went with their
            // records (a start moved into a segment leaves its file as it
            // was, and a truncation brings such entries back into memory).
            let start_offset = start_offset.max(state.log_start_offset);
            let resident_from = state.txns.resident_from();
            let sealed: Vec<(i64, i64, usize, PathBuf)> = state
                .segments
                .values()
                .filter(|segment| {
                    segment.base_offset < resident_from
                        && segment.next_offset > start_offset
                        && segment.aborted_entries > 0
                })
                .map(|segment| {
                    (segment.base_offset, segment.next_offset, segment.aborted_entries, segment.txn_index_path())
                })
                .collect();
            (sealed, state.txns.aborted_between(start_offset, end_offset), start_offset)
        };
        'segments: for (base_offset, next_offset, entries, path) in sealed {
            let index = self.sealed_txn_index(base_offset, next_offset, entries, &path, start_offset).await?;
            for txn in index.iter().filter(|txn| txn.last_offset >= start_offset) {
                if txn.first_offset < end_offset {
                    found.push(*txn);
                }
                if txn.last_stable_offset >= end_offset {
                    break 'segments;
                }
            }
        }
        found.sort_by_key(|txn| (txn.first_offset, txn.last_offset));
        Ok(found)
    }

    /// A sealed segment's `.txnindex` entries, from the one-segment cache
    /// or its file.
    async fn sealed_txn_index(
        &self,
        base_offset: i64,
        next_offset: i64,
        entries: usize,
        path: &Path,
        start_offset: i64,
    ) -> Result<Rc<Vec<AbortedTxn>>> {
        if let Some((cached_base, index)) = self.txn_index_cache.borrow().as_ref()
            && *cached_base == base_offset
            && index.len() == entries
        {
            return Ok(index.clone());
        }
        match crate::txn::read_index(&self.storage, path, base_offset, next_offset, entries).await {
            Ok(index) => {
                let index = Rc::new(index);
                *self.txn_index_cache.borrow_mut() = Some((base_offset, index.clone()));
                Ok(index)
            }
            Err(err) => {
                let state = self.state.borrow();
                let unchanged = base_offset < state.txns.resident_from()
                    && state.segments.get(&base_offset).is_some_and(|segment| {
                        segment.next_offset == next_offset && segment.aborted_entries == entries
                    });
                if unchanged {
                    Err(err)
                } else if start_offset < state.log_start_offset {
                    // Retention took the segment meanwhile.
                    Err(LogError::OffsetOutOfRange {
                        requested: start_offset,
                        log_start_offset: state.log_start_offset,
                        log_end_offset: state.log_end_offset,
                    })
                } else {
                    // A truncation rewrote it meanwhile: ask again.
                    Err(LogError::Truncating)
                }
            }
        }
    }

    /// Brings the aborted transactions of the sealed segments from
    /// `segment_base` on back into memory: a truncation into them makes the
    /// cut segment the active one.
    async fn load_sealed_txns_from(&self, segment_base: i64) -> Result<()> {
        let sealed: Vec<(i64, i64, usize, PathBuf)> = {
            let state = self.state.borrow();
            let resident_from = state.txns.resident_from();
            state
                .segments
                .range(segment_base..resident_from.max(segment_base))
                .map(|(_, segment)| segment)
                .filter(|segment| segment.aborted_entries > 0)
                .map(|segment| {
                    (segment.base_offset, segment.next_offset, segment.aborted_entries, segment.txn_index_path())
                })
                .collect()
        };
        let mut loaded = Vec::new();
        for (base_offset, next_offset, entries, path) in sealed {
            loaded.extend(crate::txn::read_index(&self.storage, &path, base_offset, next_offset, entries).await?);
        }
        let mut state = self.state.borrow_mut();
        // What the log start left behind stays gone, as `drop_below` had it.
        let log_start_offset = state.log_start_offset;
        loaded.retain(|txn| txn.last_offset >= log_start_offset);
        if segment_base < state.txns.resident_from() {
            state.txns.load_below(segment_base, loaded);
        }
        Ok(())
    }

    async fn read_from_segments(&self, offset: i64, offset_end: i64, bytes_max: usize) -> Result<Vec<Bytes>> {
        let mut segment_base = offset;
        loop {
            let (file, path, limit, (position, position_offset), next_base, gaps_below) = {
                let state = self.state.borrow();
                let Some((_, segment)) = state.segments.range(..=segment_base).next_back() else {
                    return Ok(Vec::new());
                };
                let next_base = state.segments.range(segment.base_offset + 1..).next().map(|(base, _)| *base);
                let Some(file) = segment.file.clone() else { return Ok(Vec::new()) };
                let start = segment.start_for(offset);
                (file, segment.log_path.clone(), segment.written_bytes, start, next_base, state.gaps_below)
            };
            let batches = segment::read_batches(
                &*file,
                &path,
                limit,
                position,
                position_offset,
                offset,
                offset_end,
                bytes_max,
                gaps_below,
            )
            .await?;
            match next_base {
                // Compaction can leave the rest of a segment without the
                // offset asked for; it is then in the next one.
                Some(next) if batches.is_empty() && next < offset_end => segment_base = next,
                _ => return Ok(batches),
            }
        }
    }

    async fn delete_expired_segments(&self, now_ms: i64) -> Result<RetentionOutcome> {
        let doomed = self.detach_expired_segments(now_ms);
        let mut outcome = RetentionOutcome::default();
        for segment in &doomed {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += segment.written_bytes;
            for path in
                [segment.log_path.clone(), segment.index_path(), segment.time_index_path(), segment.txn_index_path()]
            {
                remove_if_exists(&self.storage, &path).await?;
            }
        }
        if !doomed.is_empty() {
            self.storage.sync_dir(&self.dir).await.map_err(|err| LogError::io("sync dir", &self.dir, err))?;
            tracing::info!(dir = %self.dir.display(), segments = outcome.segments_deleted, bytes = outcome.bytes_deleted,
                log_start_offset = self.state.borrow().log_start_offset, "retention deleted segments");
        }
        Ok(outcome)
    }

    async fn advance_log_start_locked(&self, offset: i64) -> Result<i64> {
        // On disk first: once a record is answered gone, no restart may
        // bring it back (recovery takes the larger of this and the first
        // segment's base).
        let path = self.dir.join(crate::log_start::LOG_START_NAME);
        self.write_atomic(&path, &crate::log_start::encode(offset)).await?;
        let doomed = {
            let mut state = self.state.borrow_mut();
            assert!(offset <= state.high_watermark, "log start moved past the high watermark");
            assert!(offset > state.log_start_offset, "log start moved backwards");
            state.log_start_offset = offset;
            let mut doomed = Vec::new();
            loop {
                let mut bases = state.segments.keys();
                let (Some(&first), Some(&second)) = (bases.next(), bases.next()) else { break };
                if second > offset || !state.segments[&first].sealed {
                    break;
                }
                let Some(segment) = state.segments.remove(&first) else { break };
                doomed.push(segment);
            }
            self.cache.remove_below(self.log_id, offset);
            state.first_dirty_offset = state.first_dirty_offset.max(offset);
            state.txns.drop_below(offset);
            state.check_offsets();
            doomed
        };
        for segment in &doomed {
            for path in
                [segment.log_path.clone(), segment.index_path(), segment.time_index_path(), segment.txn_index_path()]
            {
                remove_if_exists(&self.storage, &path).await?;
            }
        }
        if !doomed.is_empty() {
            self.storage.sync_dir(&self.dir).await.map_err(|err| LogError::io("sync dir", &self.dir, err))?;
        }
        tracing::info!(dir = %self.dir.display(), log_start_offset = offset, segments_deleted = doomed.len(), "log start moved (records deleted)");
        Ok(offset)
    }

    fn detach_expired_segments(&self, now_ms: i64) -> Vec<Segment<S::File>> {
        if !self.config().cleanup_policy.deletes() {
            // Compact alone: the cleaner decides what goes, by key.
            return Vec::new();
        }
        let mut state = self.state.borrow_mut();
        let mut total_bytes: u64 = state.segments.values().map(|segment| segment.written_bytes).sum();
        let mut doomed = Vec::new();
        loop {
            let mut bases = state.segments.keys();
            let (Some(&first), Some(&second)) = (bases.next(), bases.next()) else { break };
            let segment = &state.segments[&first];
            if !segment.sealed || second > state.high_watermark {
                break;
            }
            let by_time =
                self.config().retention_ms.is_some_and(|ms| now_ms.saturating_sub(segment.max_timestamp_ms) > ms);
            let by_size = self.config().retention_bytes.is_some_and(|max| total_bytes - segment.written_bytes >= max);
            if !(by_time || by_size) {
                break;
            }
            let Some(segment) = state.segments.remove(&first) else { break };
            total_bytes -= segment.written_bytes;
            // A start moved by `advance_log_start` may lie inside `second`'s
            // segment already: never back.
            state.log_start_offset = state.log_start_offset.max(second);
            doomed.push(segment);
        }
        if !doomed.is_empty() {
            self.cache.remove_below(self.log_id, state.log_start_offset);
            state.first_dirty_offset = state.first_dirty_offset.max(state.log_start_offset);
            let log_start_offset = state.log_start_offset;
            state.txns.drop_below(log_start_offset);
        }
        state.check_offsets();
        doomed
    }

    /// Drops the whole log and starts it over, empty, at `offset`: every
    /// segment, the producer snapshots and the leader epochs go, and an
    /// empty segment file at `offset` takes their place, synced, so a
    /// restart starts there too. Runs with the log cut (`with_log_cut`).
    async fn restart_empty_at(&self, offset: i64, reason: &str) -> Result<()> {
        // A crash part way may leave no segment at all: an empty log at 0.
        self.lower_recovery_point(0).await?;
        let old: Vec<Segment<S::File>> = std::mem::take(&mut self.state.borrow_mut().segments).into_values().collect();
        // Oldest first: a crash part way leaves the newer segments, a
        // contiguous log recovery takes as it was before the reset.
        for segment in &old {
            for path in
                [segment.log_path.clone(), segment.index_path(), segment.time_index_path(), segment.txn_index_path()]
            {
                remove_if_exists(&self.storage, &path).await?;
            }
        }
        let names = self.storage.list_dir(&self.dir).await.map_err(|err| LogError::io("list", &self.dir, err))?;
        for name in names.iter().filter(|name| name.ends_with(&format!(".{}", crate::producer_state::SNAPSHOT_SUFFIX)))
        {
            remove_if_exists(&self.storage, &self.dir.join(name)).await?;
        }
        let mut segment = Segment::new(&self.dir, offset, self.config().clock.now_ms());
        segment.file = Some(self.open_segment_file(&segment.log_path).await?);
        let epochs = LeaderEpochCache::default();
        {
            let mut state = self.state.borrow_mut();
            state.segments.insert(offset, segment);
            state.log_start_offset = offset;
            state.log_end_offset = offset;
            state.written_offset = offset;
            state.synced_offset = offset;
            // Everything below the leader's log start was committed there.
            state.high_watermark = offset;
            state.first_dirty_offset = offset;
            state.epochs = epochs.clone();
            state.producers = Default::default();
            state.txns = TxnState::default();
            state.check_offsets();
        }
        *self.txn_index_cache.borrow_mut() = None;
        self.cache.remove_below(self.log_id, offset);
        self.cache.remove_from(self.log_id, offset);
        self.lower_gaps_below(offset).await?;
        self.write_epoch_checkpoint(Some(&epochs)).await?;
        tracing::warn!(dir = %self.dir.display(), log_start_offset = offset, reason, "log reset: every segment dropped");
        Ok(())
    }

    async fn truncate_locked(&self, offset: i64) -> Result<i64> {
        let (log_end_offset, log_start_offset) = {
            let state = self.state.borrow();
            (state.log_end_offset, state.log_start_offset)
        };
        if offset >= log_end_offset {
            return Ok(log_end_offset);
        }
        let offset = offset.max(log_start_offset);
        // Find the segment and the first batch that reaches `offset`.
        let (segment_base, file, path, (position, position_offset), written_bytes, gaps_below) = {
            let state = self.state.borrow();
            let (_, segment) = state.segments.range(..=offset).next_back().expect("offset is inside the log");
            let start = segment.start_for(offset);
            let path = segment.log_path.clone();
            (segment.base_offset, segment.file.clone(), path, start, segment.written_bytes, state.gaps_below)
        };
        let mut cut_position = written_bytes;
        let mut new_end = offset;
        if let Some(file) = &file {
            let mut found = None;
            let mut next_offset = i64::MIN;
            segment::scan(&**file, &path, written_bytes, position, position_offset, gaps_below, |position, info, _| {
                if found.is_none() && info.last_offset() >= offset {
                    found = Some((position, info.base_offset));
                }
                next_offset = info.last_offset() + 1;
            })
            .await?;
            match found {
                Some((position, base_offset)) => (cut_position, new_end) = (position, base_offset),
                None => new_end = next_offset.max(segment_base).min(offset),
            }
        }
        if new_end < log_start_offset {
            // The cut batch holds the log start (DeleteRecords moved it into
            // the batch): no record at or past the start survives, and the
            // records below it are deleted already. Kafka's follower ends
            // the same way: empty, at its log start.
            self.restart_empty_at(log_start_offset, "a truncation into the batch holding the log start").await?;
            return Ok(log_start_offset);
        }
        // The cut segment becomes the active one, whose aborted
        // transactions are kept in memory; the rebuild below also needs
        // those of the later segments, whose files go now.
        *self.txn_index_cache.borrow_mut() = None;
        self.load_sealed_txns_from(segment_base).await?;
        self.lower_recovery_point(new_end).await?;
        // Everything after the cut: later segments go, this one shrinks.
        let later: Vec<Segment<S::File>> = {
            let mut state = self.state.borrow_mut();
            let later = state.segments.split_off(&(segment_base + 1));
            later.into_values().collect()
        };
        // Newest first, so a crash part way leaves contiguous segments.
        for segment in later.iter().rev() {
            for path in
                [segment.log_path.clone(), segment.index_path(), segment.time_index_path(), segment.txn_index_path()]
            {
                remove_if_exists(&self.storage, &path).await?;
            }
        }
        let (index_path, time_index_path, txn_index_path) = {
            let state = self.state.borrow();
            let segment = &state.segments[&segment_base];
            (segment.index_path(), segment.time_index_path(), segment.txn_index_path())
        };
        // The index files describe the old content; they are rebuilt at
        // seal or close (the transaction index below, once the state is).
        remove_if_exists(&self.storage, &index_path).await?;
        remove_if_exists(&self.storage, &time_index_path).await?;
        remove_if_exists(&self.storage, &txn_index_path).await?;
        // The removals are durable before the cut is: a power loss between
        // them would otherwise bring the later segments back after a
        // shorter one, a gap recovery refuses as corruption.
        self.storage.sync_dir(&self.dir).await.map_err(|err| LogError::io("sync dir", &self.dir, err))?;
        let mut page_head = Vec::new();
        if let Some(file) = &file {
            file.truncate(cut_position).await.map_err(|err| LogError::io("truncate", &path, err))?;
            file.fdatasync().await.map_err(|err| LogError::io("fdatasync", &path, err))?;
            page_head = read_page_head(&**file, &path, cut_position).await?;
        }
        let epochs = {
            let mut state = self.state.borrow_mut();
            let segment = state.segments.get_mut(&segment_base).expect("segment kept");
            segment.dispatched_bytes = cut_position;
            segment.written_bytes = cut_position;
            segment.submitted_bytes = cut_position;
            segment.page_head = page_head;
            segment.preallocated_bytes = 0;
            segment.next_offset = new_end;
            segment.index.truncate_to_position(cut_position as u32);
            segment.time_index.truncate_to_offset(segment.relative(new_end));
            segment.bytes_since_index_entry =
                cut_position - segment.index.last().map_or(0, |entry| u64::from(entry.position));
            segment.roll_requested = false;
            segment.sealed = false;
            state.log_end_offset = new_end;
            state.written_offset = new_end;
            state.synced_offset = new_end;
            state.high_watermark = state.high_watermark.min(new_end);
            state.first_dirty_offset = state.first_dirty_offset.min(new_end);
            state.epochs.truncate_from(new_end).then(|| state.epochs.clone())
        };
        self.cache.remove_from(self.log_id, new_end);
        self.write_epoch_checkpoint(epochs.as_ref()).await?;
        self.lower_gaps_below(new_end).await?;
        self.rebuild_producer_state(new_end).await?;
        // The next open takes the cut segment's aborted transactions below
        // its snapshot from here rather than replaying the whole log.
        self.write_txn_index(segment_base).await?;
        // The rebuild removed the snapshots above the cut and may have
        // carried over transactions whose first batch no replay can see
        // (below the log start): a snapshot at the cut keeps them.
        let snapshot = self.state.borrow().producers.encode(new_end);
        crate::producer_state::write_snapshot(&self.storage, &self.dir, new_end, &snapshot).await?;
        tracing::info!(dir = %self.dir.display(), log_end_offset = new_end, "log truncated");
        self.state.borrow().check_offsets();
        Ok(new_end)
    }
}

/// Reads the partial last page before `position`: what the next flush must
/// write again in front of new batches.
pub(crate) async fn read_page_head<F: StorageFile>(file: &F, path: &Path, position: u64) -> Result<Vec<u8>> {
    let page_start = align_down(position);
    let head_len = (position - page_start) as usize;
    if head_len == 0 {
        return Ok(Vec::new());
    }
    let page =
        file.read_at(page_start, IO_ALIGN_BYTES as usize).await.map_err(|err| LogError::io("read", path, err))?;
    if page.len() < head_len {
        return Err(LogError::corruption(path, position, "file shorter than its batches"));
    }
    Ok(page[..head_len].to_vec())
}
