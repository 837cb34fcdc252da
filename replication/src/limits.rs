//! Every limit and default of the crate, in one place.

/// Kafka's limit on topic name length (249: a file name of 255 with room
/// for a partition suffix).
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// A topic with more partitions than this is a mistake, not a plan; the cap
/// keeps one CreateTopic record (and one Raft entry) bounded.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 100_000;
/// Largest producer id block per request: a broker asks for blocks, it does
/// not reserve the id space.
pub const MAX_PRODUCER_ID_BLOCK: i64 = 1_000_000;

/// A SCRAM credential's iterations: Kafka's bounds (its ScramMechanism's
/// minIterations, RFC 7677's recommended minimum, and maxIterations). Fewer
/// make a stolen log cheap to attack; more make every login cost a broker
/// core for long (PLAIN derives the salted password at each login).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;
/// Users with SCRAM credentials: each is a few hundred bytes of the image,
/// which a snapshot writes whole and must fit SNAPSHOT_BYTES_MAX.
pub const SCRAM_USERS_MAX: usize = 4096;
/// A SCRAM user name's bytes (Kafka has no limit; a principal name longer
/// than this is a mistake or an attack on the log).
pub const SCRAM_USER_NAME_BYTES_MAX: usize = 256;
/// A SCRAM salt's bytes (Kafka's tools make 20-30, RFC 5802's example
/// 16; RFC 5802 sets no bound).
pub const SCRAM_SALT_BYTES_MAX: usize = 64;
const _: () = assert!(SCRAM_ITERATIONS_MIN <= SCRAM_ITERATIONS_MAX);
// A user holds a name and at most two credentials, each a salt and two
// keys of at most 64 bytes in hex with some JSON around them: every user
// fits in half a snapshot, leaving the other half to topics.
const _: () = assert!(
    SCRAM_USERS_MAX * (SCRAM_USER_NAME_BYTES_MAX + 2 * (2 * SCRAM_SALT_BYTES_MAX + 2 * 2 * 64 + 64))
        < SNAPSHOT_BYTES_MAX / 2
);
/// ACL bindings per cluster. Every broker holds them all in memory and
/// every snapshot carries them; Kafka clusters with many thousands are
/// unusual (prefixed ACLs cover families of resources).
pub const ACLS_MAX: usize = 20_000;
/// Longest resource name, principal or host in an ACL: a topic name is at
/// most 249 bytes, a certificate subject as a principal a few hundred.
pub const ACL_FIELD_BYTES_MAX: usize = 1024;
/// A full set of ACLs of ordinary size (64-byte fields) fits a snapshot
/// with room for the rest of the image (a binding's JSON is its fields
/// plus under 200 bytes of names). Longer fields can outgrow it; the log
/// then keeps growing instead (logged), as for any oversized image.
const _: () = assert!(ACLS_MAX * (3 * 64 + 200) < SNAPSHOT_BYTES_MAX);

/// Largest frame between controllers. Raft messages are capped well below
/// (MAX_RAFT_MSG_BYTES); anything larger is a bug or an attack and closes
/// the connection before we allocate.
pub const MAX_FRAME_BYTES: u32 = 16 << 20;
/// raft-rs's max_size_per_msg: entries per append message.
pub const MAX_RAFT_MSG_BYTES: u64 = 1 << 20;
/// raft-rs's max_inflight_msgs: append messages in flight per follower.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Largest entry record in the log file (same reasoning as MAX_FRAME_BYTES):
/// a length above it is a torn or corrupt tail.
pub const MAX_ENTRY_BYTES: u32 = MAX_FRAME_BYTES;
/// Largest snapshot of the metadata image (the protobuf Snapshot, image
/// included). A leader sends it whole in one Raft message, so it must fit a
/// frame with room for the message around it; an image larger than this is
/// not snapshotted (logged) and the log keeps growing instead.
pub const SNAPSHOT_BYTES_MAX: usize = MAX_FRAME_BYTES as usize - (64 << 10);
const _: () = assert!(SNAPSHOT_BYTES_MAX < MAX_FRAME_BYTES as usize);
/// A node snapshots its image after this many entries applied since its
/// last snapshot: a restart then replays at most this many entries, and a
/// follower this far behind gets the snapshot instead of the entries. Each
/// snapshot writes the whole image (kilobytes to megabytes), so not often.
pub const DEFAULT_SNAPSHOT_INTERVAL_ENTRIES: u64 = 4096;
/// ... or once this many bytes were appended to the log file since it was
/// last rewritten (a few large entries, such as topics with many
/// partitions, count by size rather than number).
pub const DEFAULT_SNAPSHOT_INTERVAL_BYTES: u64 = 16 << 20;
/// Frames queued per peer while its connection is slow or down; beyond it
/// frames are dropped (Raft resends, controller RPCs are retried).
pub const PEER_QUEUE_FRAMES: usize = 4096;
/// Reconnect backoff to a peer: from the first to the last value, doubling.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 50;
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 1000;
/// Connect and write timeouts to a peer: a stalled peer must not stall the
/// writer thread for long.
pub const CONNECT_TIMEOUT_MS: u64 = 200;
pub const WRITE_TIMEOUT_MS: u64 = 1000;
/// How often the listener checks for shutdown between accepts.
pub const ACCEPT_POLL_MS: u64 = 20;

/// Raft timing in ticks (Raft's usual ratio): an election after 10-20 quiet
/// ticks, a leader heartbeat every 2.
pub const ELECTION_TICK: usize = 10;
pub const HEARTBEAT_TICK: usize = 2;

/// Request ids remembered as applied, so a retried request is not decided
/// twice. Retries come within request_timeout_ms, far fewer than this.
pub const APPLIED_REQUEST_IDS: usize = 10_000;
/// A forwarded request is sent again after this many ticks without an
/// answer (to the leader as then known); ids make the resend harmless.
pub const RESEND_AFTER_TICKS: u64 = 5;

/// QuorumConfig defaults.
pub const DEFAULT_TICK_MS: u64 = 100;
pub const DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS: u64 = 500;
pub const DEFAULT_BROKER_SESSION_TIMEOUT_MS: u64 = 6000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// The cluster secret brokers prove they know to each other: 256 bits, as
/// much as the HMAC-SHA256 that proves it can use.
pub const CLUSTER_SECRET_BYTES: usize = 32;

/// Client quota entities the metadata keeps (each a few dozen bytes in
/// every broker's image and every snapshot): far above any operator's
/// set, and a bound on what AlterClientQuotas requests can add.
pub const MAX_CLIENT_QUOTA_ENTITIES: usize = 10_000;
/// Longest user or client id a quota names (Kafka bounds neither; a
/// client id is a short string in practice).
pub const MAX_QUOTA_ENTITY_NAME_LEN: usize = 1024;
