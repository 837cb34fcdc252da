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

/// The largest zstd window (2^27 bytes, 128 MiB) a frame may ask the
/// decoder to allocate: zstd's own default limit, which every level a Kafka
/// producer can choose (up to 22, whose window is 2^27) stays within.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Bytes of records per xerial snappy chunk: the block size of the xerial
/// `SnappyOutputStream` that Kafka's Java producer writes with by default.
pub const SNAPPY_CHUNK_BYTES: usize = 32 * 1024;

/// The zstd level Kafka's producer uses by default.
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

/// Bytes read from a decompressor at a time.
pub(crate) const DECOMPRESS_READ_BYTES: usize = 64 * 1024;

const _: () = assert!(SNAPPY_CHUNK_BYTES <= DECOMPRESSED_BYTES_MAX);
const _: () = assert!(DECOMPRESS_READ_BYTES <= DECOMPRESSED_BYTES_MAX);
