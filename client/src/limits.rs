//! Every bound the client keeps, in one place.

/// Requests awaiting a response on one connection. Past this, a caller
/// waits for a slot rather than growing the pending table without bound.
pub(crate) const IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// Frames queued for a connection's writer task.
pub(crate) const WRITE_QUEUE_FRAMES_MAX: usize = 256;

/// Bytes the writer buffers before it writes (larger frames go straight
/// through); small requests written together take one syscall.
pub(crate) const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Bytes the reader asks the socket for at a time when no frame is pending.
pub(crate) const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The smallest frame cap a client may set: a metadata response for a
/// small cluster must fit.
pub(crate) const FRAME_BYTES_MAX_MIN: usize = 64 * 1024;

/// Forced metadata refreshes (after an error) are spaced at least this far
/// apart, so that a storm of failures does not become a storm of requests.
pub(crate) const METADATA_REFRESH_BACKOFF_MS: u64 = 100;

/// A request any broker can answer (metadata) gives each broker an equal
/// share of the request timeout, but at least this much of what is left.
pub(crate) const ANY_BROKER_ATTEMPT_MS_MIN: u64 = 1_000;

/// The flatbuffer fields around a produce request's record bytes: envelope,
/// tables and vector headers, per request and per partition.
pub(crate) const PRODUCE_REQUEST_OVERHEAD_BYTES: usize = 256;
pub(crate) const PRODUCE_PARTITION_OVERHEAD_BYTES: usize = 64;

/// Random bytes in the SCRAM client nonce (RFC 5802 asks for enough to be
/// unguessable; 18 bytes are 24 base64 characters).
pub const SCRAM_CLIENT_NONCE_BYTES: usize = 18;

/// The SCRAM iterations a client accepts from a broker's challenge:
/// Kafka's bounds (ScramMechanism minIterations, RFC 7677's recommended
/// minimum, and maxIterations). Fewer is a weak credential a broker should
/// not have; more is a broker making the client burn CPU.
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;

/// Largest PEM file read for TLS settings (`security.rs`): a CA bundle is
/// a few hundred KiB; anything far larger is the wrong file.
pub const PEM_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The longest transactional id (Kafka's 249-byte name limit, as the
/// broker enforces it).
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 249;

/// How long a topic missing from the metadata is looked up again before
/// it counts as unknown: one just created reaches every broker within
/// milliseconds, rarely more (Kafka's producer waits max.block.ms, 60 s).
pub const UNKNOWN_TOPIC_WAIT_MS: u64 = 5_000;
