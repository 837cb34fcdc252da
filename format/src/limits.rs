//! The format's limits, in one place.

/// The most bytes a compressed batch's records may take once decompressed.
///
/// A producer's compressed batch is decompressed once, when the broker
/// validates it, so this bounds the memory one batch can make the broker
/// allocate, whatever its compressed size (a few kilobytes of zstd can
/// claim gigabytes: a decompression bomb). It equals the largest
/// uncompressed batch the engine ever accepts (`max.message.bytes` is at
/// most 64 MiB), so compression never lets a batch hold more records than
/// the largest uncompressed one could. Consumers use the same bound.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The largest zstd window (2^24 bytes, 16 MiB) a frame may ask the
/// decoder to allocate. zstd's own default is 2^27, but then a 20-byte
/// hostile frame makes the broker allocate 128 MiB for one batch. Kafka
/// producers compress each batch on its own, and zstd never uses a window
/// larger than its input, so any batch up to 16 MiB at any level, and any
/// batch at levels 1-20, stays within this.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;
/// Snappy's densest element (a 3-byte copy of 64 bytes) bounds how far a
/// block can expand; a block declaring more is refused unread.
pub const SNAPPY_EXPANSION_MAX: usize = 22;

/// Bytes of records per xerial snappy chunk: the block size of the xerial
/// `SnappyOutputStream` that Kafka's Java producer writes with by default.
pub const SNAPPY_CHUNK_BYTES: usize = 32 * 1024;

/// The zstd level Kafka's producer uses by default.
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

/// Bytes read from a decompressor at a time.
pub(crate) const DECOMPRESS_READ_BYTES: usize = 64 * 1024;

const _: () = assert!(SNAPPY_CHUNK_BYTES <= DECOMPRESSED_BYTES_MAX);
const _: () = assert!(DECOMPRESS_READ_BYTES <= DECOMPRESSED_BYTES_MAX);
