//! Every limit the engine enforces, in one place, with the relationships
//! between them checked at compile time.

/// Alignment of every O_DIRECT position and length. The device reports 512,
/// but 4096 matches the page size and every disk we run on.
pub const IO_ALIGN_BYTES: u64 = 4096;

/// Largest single write submitted to the disk. A cycle's whole pages are cut
/// into chunks of at most this size and submitted together, so the device
/// sees several writes in flight (the limits file measures 1 MiB at iodepth
/// 8); a continued first page and a partial last page go as single pages.
pub const WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// How many chunk writes one flush keeps in flight at once.
pub const WRITES_IN_FLIGHT_MAX: usize = 8;

/// Default bytes one group-commit cycle takes from the pending queue. Two
/// cycles write at once and up to `SYNCS_IN_FLIGHT_MAX` more sync, so the
/// data a log keeps moving is a few times this; it bounds the ack latency
/// of the first append in a cycle. A cycle always takes at least one batch.
pub const FLUSH_CYCLE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Written cycles whose fdatasync may run at once. On a virtio disk an
/// fdatasync costs about as long as writing the data it covers, so syncs
/// overlap each other and the next cycle's writes; acks stay in order.
pub const SYNCS_IN_FLIGHT_MAX: usize = 2;

/// Bytes a log accepts ahead of the disk before refusing appends with
/// backpressure; bounds the memory pinned in the tail cache.
pub const PENDING_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Size of one read from a segment file when scanning or serving a fetch.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;
/// The largest single DMA read a fetch issues (its bytes plus slack).
pub const FETCH_READ_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The largest batch any configuration may allow (max.message.bytes).
pub const BATCH_BYTES_MAX_LIMIT: usize = 64 * 1024 * 1024;

/// Positions in the offset index are u32, so a segment can never be larger.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = u32::MAX as u64;

/// Offsets in the offset index are relative to the segment base and stored
/// as u32, so a segment rolls before its offsets span more than this.
pub const SEGMENT_OFFSET_SPAN_MAX: i64 = u32::MAX as i64;

/// Size of one `.index` entry: relative offset u32 + position u32.
pub const INDEX_ENTRY_BYTES: usize = 8;

/// Size of one `.timeindex` entry: timestamp i64 + relative offset u32.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Bytes of one `.txnindex` entry, Kafka's `AbortedTxn.TOTAL_SIZE`: version
/// i16, producer id i64, first, last and last stable offsets i64. A
/// segment holds at most one entry per abort marker, and a marker takes a
/// whole batch, so a file past `(segment bytes / batch header bytes + 1) *
/// TXN_INDEX_ENTRY_BYTES` is damaged.
pub const TXN_INDEX_ENTRY_BYTES: usize = 2 + 8 + 8 + 8 + 8;

/// Most entries the leader-epoch checkpoint may hold; a longer file is
/// rejected as corrupt rather than allocated.
pub const EPOCH_ENTRIES_MAX: usize = 1 << 20;

/// Most milliseconds between writes of a log's recovery point (the offset
/// below which everything is known synced) while syncs move it. Each write
/// is a small atomic file write (two fdatasyncs and a directory sync), so
/// once a second per busy partition keeps it off the append path's cost;
/// damage to data synced within the last interval is still taken for a
/// torn tail after a crash. Seals and closes write it at once.
pub const RECOVERY_POINT_INTERVAL_MS: i64 = 1000;

/// How many index entries recovery tries, newest first, before scanning a
/// segment from its start.
pub const RECOVERY_INDEX_PROBES_MAX: usize = 16;

/// Keys the cleaner's offset map holds at most (key digest -> latest
/// offset, about 40 bytes each with the hash table's overhead, so about
/// 40 MiB). A dirty range with more keys is cleaned as far as they reach,
/// and the rest in the next pass, as Kafka does with its dedupe buffer.
pub const CLEAN_OFFSET_MAP_ENTRIES_MAX: usize = 1 << 20;

/// Default rate of the cleaner's reads plus writes, per log being cleaned
/// (one at a time per shard), so that produce latency holds while it runs.
pub const CLEAN_BYTES_PER_SEC_DEFAULT: u64 = 64 * 1024 * 1024;

/// Bytes the cleaner collects before one write of its new segment.
pub const CLEAN_WRITE_BYTES: usize = WRITE_CHUNK_BYTES;

/// Batches remembered per producer id and partition to detect retried
/// duplicates; Kafka's value, and the most requests an idempotent producer
/// may keep in flight per partition.
pub const PRODUCER_BATCHES_RETAINED: usize = 5;

/// Producer ids a partition tracks; past this the one idle longest is
/// forgotten (Kafka expires them by time, producer.id.expiration.ms).
pub const PRODUCER_STATE_ENTRIES_MAX: usize = 1 << 16;

/// Producer-state snapshots kept per partition (the newest ones).
pub const PRODUCER_SNAPSHOTS_RETAINED: usize = 2;

const _: () = assert!(IO_ALIGN_BYTES.is_power_of_two());
const _: () = assert!((WRITE_CHUNK_BYTES as u64).is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!((READ_CHUNK_BYTES as u64).is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(FLUSH_CYCLE_BYTES_MAX >= WRITE_CHUNK_BYTES);
const _: () = assert!(PENDING_BYTES_MAX >= 2 * FLUSH_CYCLE_BYTES_MAX + BATCH_BYTES_MAX_LIMIT);
const _: () = assert!((BATCH_BYTES_MAX_LIMIT as u64) < SEGMENT_BYTES_MAX_LIMIT);
const _: () = assert!((CLEAN_WRITE_BYTES as u64).is_multiple_of(IO_ALIGN_BYTES));
const _: () = assert!(CLEAN_OFFSET_MAP_ENTRIES_MAX >= 1);
const _: () = assert!(PRODUCER_BATCHES_RETAINED >= 1 && PRODUCER_BATCHES_RETAINED <= u8::MAX as usize);
const _: () = assert!(PRODUCER_SNAPSHOTS_RETAINED >= 1);
const _: () = assert!(RECOVERY_POINT_INTERVAL_MS > 0);

/// Rounds `value` down to the I/O alignment.
pub const fn align_down(value: u64) -> u64 {
    value & !(IO_ALIGN_BYTES - 1)
}

/// Rounds `value` up to the I/O alignment.
pub const fn align_up(value: u64) -> u64 {
    (value + IO_ALIGN_BYTES - 1) & !(IO_ALIGN_BYTES - 1)
}
const _: () = assert!((FETCH_READ_BYTES_MAX as u64).is_multiple_of(IO_ALIGN_BYTES));
