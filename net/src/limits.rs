//! The broker's limits, in one place.

/// Shards per broker (shard ids travel as u16; more cores than this are
/// left to other processes).
pub const SHARDS_MAX: usize = 256;
/// Partitions per topic.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;
/// Topics per broker.
pub const TOPICS_MAX: usize = 10_000;
/// Config entries per topic and their lengths.
pub const TOPIC_CONFIGS_MAX: usize = 64;
pub const CONFIG_VALUE_BYTES_MAX: usize = 256;
/// A long-polling fetch waits at most this long whatever it asks.
pub const FETCH_WAIT_MS_MAX: u64 = 60_000;
/// Produce and admin requests wait at most this long whatever they ask.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 300_000;
/// Producer ids persisted at a time (the allocator's block); a restart
/// skips what is left of the last block.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;
/// A producer id handed to a client is `sequence << PRODUCER_ID_RANDOM_BITS
/// | tag`: the sequence (from the controller's blocks) keeps ids unique
/// across brokers and restarts; the tag, a keyed hash of the sequence and
/// the principal the id was given to (`producer_ids.rs`), makes another
/// producer's id unguessable (a client that knows its own id must still
/// guess 2^32 values to hit its neighbour's, issue 14) and lets any broker
/// check that a batch's id belongs to its sender. The trade: the sequence
/// has 31 bits left (ids are non-negative i64s), 2^31 producers over a
/// cluster's life, after which InitProducerId answers
/// ProducerIdsUnavailable.
pub const PRODUCER_ID_RANDOM_BITS: u32 = 32;
/// One past the largest sequence that still fits a non-negative id.
pub const PRODUCER_ID_SEQUENCE_END: i64 = 1 << (63 - PRODUCER_ID_RANDOM_BITS);
const _: () = assert!(PRODUCER_ID_RANDOM_BITS >= 32, "fewer random bits make a neighbour's id guessable");
const _: () = assert!(PRODUCER_ID_BLOCK_SIZE < PRODUCER_ID_SEQUENCE_END);
/// A SASL token's bytes (a SaslAuthenticate's auth_bytes). PLAIN and
/// SCRAM messages are a name, a nonce and a proof: well under 1 KiB.
/// Kafka's `sasl.server.max.receive.size` (512 KiB) also covers Kerberos
/// and OAuth tokens, which Spate does not take.
pub const SASL_TOKEN_BYTES_MAX: usize = 16 << 10;
/// Credential alterations in one AlterUserScramCredentials request: each
/// is a controller round trip and, for an upsertion, key derivations.
pub const SCRAM_ALTERATIONS_PER_REQUEST_MAX: usize = 1000;
/// Users named in one DescribeUserScramCredentials request.
pub const SCRAM_USERS_PER_DESCRIBE_MAX: usize = 10_000;
/// Bytes read from a socket at a time when no large frame is pending.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A large frame is zeroed and read this much at a time, so that a peer
/// that sends only a length pins no memory.
pub const LARGE_READ_STEP_BYTES: usize = 1 << 20;
/// Default byte budgets for requests in flight and responses not yet
/// written (`budget.rs`): a connection's fits two of the largest default
/// frames, so one producer keeps a pipeline going; a shard's is what a
/// shard may hold for all its clients at once, besides its tail cache
/// (default 256 MiB). Past either the broker stops reading (backpressure).
pub const CONNECTION_BYTES_IN_FLIGHT_MAX_DEFAULT: usize = 128 << 20;
pub const SHARD_BYTES_IN_FLIGHT_MAX_DEFAULT: usize = 512 << 20;
/// A connection whose client reads nothing of a response for this long is
/// closed: its unwritten responses would otherwise hold budget (and stall
/// every other client of the shard) without end. Long enough for a
/// consumer paused by its own garbage collector or a slow network.
pub const CONNECTION_WRITE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Partition entries in one request (fetch, produce, list offsets,
/// offsets for leader epoch, offset commit and fetch, a heartbeat's owned
/// partitions), over all its topic entries: each costs a read, a
/// cross-shard op or an entry in the answer, so one frame of small entries
/// must not buy unbounded work. As many as one topic may have.
pub const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;
/// Each partition a fetch reads uses up at least this much of the
/// request's byte budget, whatever it asks for: a read returns at least one
/// batch, so entries asking for 1 byte must not make a request of thousands
/// of reads. 64 MiB of budget reads at most 1024 partitions.
pub const FETCH_PARTITION_BYTES_MIN: usize = 64 * 1024;
/// Topic entries or names in one request: as many topics as a broker holds.
pub const TOPICS_PER_REQUEST_MAX: usize = TOPICS_MAX;
/// Group ids in one DescribeGroups or DeleteGroups request: each costs a
/// cross-shard op (and a describe one per partition of the group).
pub const GROUPS_PER_REQUEST_MAX: usize = 1_000;
/// Names from the wire (topic, group id, member id, client id): Kafka's
/// 249 bytes. Longer ones refuse the whole request before anything is
/// copied, so a name is never echoed into every entry of an answer.
pub const NAME_BYTES_MAX: usize = spate_flatbuf::TOPIC_NAME_BYTES_MAX;
/// An error message the broker sends: long enough for a sentence with a
/// name in it, short enough that a message per entry cannot multiply a
/// request's bytes.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 512;
/// A produced batch smaller than this fraction of its frame is copied out
/// of the receive buffer instead of sliced: the tail cache would otherwise
/// keep the whole frame alive while counting only the batch.
pub const PRODUCE_SLICE_FRACTION_MIN: usize = 2;
/// Consumer groups one shard coordinates, and members of one group.
pub const GROUPS_PER_SHARD_MAX: usize = 100_000;
/// Offsets committed inside transactions still open, held pending on one
/// shard (one per group, partition and producer): each is a few dozen
/// bytes, and a client looping TxnOffsetCommit over made-up group ids
/// must not grow them without bound (they last until the transaction's
/// timeout, 15 min at most).
pub const TXN_OFFSETS_PENDING_PER_SHARD_MAX: usize = 1_000_000;
pub const MEMBERS_PER_GROUP_MAX: usize = 10_000;
/// A classic (JoinGroup) member's protocols: how many it may offer and the
/// bytes of their metadata together, and the bytes of the assignment its
/// leader gives it. The coordinator keeps these bytes for the member's
/// life and hands every member's metadata to the leader, so they are
/// bounded per member and per group. A consumer's subscription and
/// assignment take a few bytes per topic and partition: 1 MiB covers tens
/// of thousands of partitions (Kafka bounds them only by
/// message.max.bytes, 1 MiB, since it stores them in one record).
pub const CLASSIC_PROTOCOLS_PER_MEMBER_MAX: usize = 64;
pub const CLASSIC_METADATA_BYTES_MAX: usize = 1 << 20;
pub const CLASSIC_ASSIGNMENT_BYTES_MAX: usize = 1 << 20;
/// All metadata and assignments one classic group holds: the leader's
/// JoinGroup answer carries every member's metadata in one response.
pub const CLASSIC_GROUP_BYTES_MAX: usize = 64 << 20;
/// A follower's replica fetch: how long the leader holds it when there is
/// nothing new, and how many bytes it asks for at once.
pub const REPLICA_FETCH_WAIT_MS: u64 = 500;
pub const REPLICA_FETCH_BYTES_MAX: usize = 8 << 20;
/// A follower whose fetch failed retries after this long, doubling up to
/// the max (the leader may be restarting or an election under way).
pub const REPLICA_FETCH_RETRY_MS_MIN: u64 = 50;
pub const REPLICA_FETCH_RETRY_MS_MAX: u64 = 1000;
/// A consumer group's write (a commit, a group epoch) is answered with
/// RequestTimedOut if the in-sync replicas do not all have it by then
/// (Kafka's offsets.commit.timeout.ms).
pub const GROUP_WRITE_TIMEOUT_MS: u64 = 5_000;
/// At the first start of a cluster, how long brokers wait for the
/// controller quorum's voters to register before creating
/// `__consumer_offsets` with fewer replicas than there are voters (up to
/// three).
pub const OFFSETS_TOPIC_BROKERS_WAIT_MS: u64 = 30_000;
/// The longest `boot-id` file read (a boot id is a 36-byte UUID): a longer
/// one is not a boot id, and is not read into memory whole.
pub const BOOT_ID_BYTES_MAX: usize = 64;
/// A leader whose ISR change the controller refused waits this long (or
/// for new metadata) before asking again.
pub const ISR_CHANGE_RETRY_MS: u64 = 500;
/// A broker's handshake proof (`broker_auth`) is accepted this far from the
/// receiver's clock, either way: brokers' clocks agree to well within it
/// (NTP), and a captured proof is worthless once it is this old.
pub const BROKER_AUTH_SKEW_MS: i64 = 60_000;
/// Proof nonces a shard remembers to refuse a replay within the skew
/// window. Brokers open a handful of connections per partition they follow
/// and reconnect rarely; past this many fresh proofs in one window a proof
/// is refused (retried later) rather than the memory growing.
pub const BROKER_AUTH_NONCES_MAX: usize = 65_536;
/// How often each shard looks for partitions whose log failed (a write or
/// fdatasync error) where no produce answer saw it (a follower's append, a
/// group write, retention), to take them offline and hand their leadership
/// over. A failed produce takes its partition offline at once; this only
/// bounds how long another failure keeps a dead log in its role.
pub const FAILED_LOG_CHECK_INTERVAL_MS: u64 = 1_000;

const _: () = assert!(NAME_BYTES_MAX == spate_flatbuf::GROUP_ID_BYTES_MAX);
const _: () = assert!(ERROR_MESSAGE_BYTES_MAX > NAME_BYTES_MAX + 64, "a message can name one name");
const _: () = assert!(PARTITIONS_PER_REQUEST_MAX >= PARTITIONS_PER_TOPIC_MAX as usize, "a request can cover a topic");
const _: () =
    assert!(CLASSIC_GROUP_BYTES_MAX >= CLASSIC_METADATA_BYTES_MAX + CLASSIC_ASSIGNMENT_BYTES_MAX, "one member fits");
const _: () = assert!(CONNECTION_BYTES_IN_FLIGHT_MAX_DEFAULT <= SHARD_BYTES_IN_FLIGHT_MAX_DEFAULT);
const _: () = assert!(FETCH_PARTITION_BYTES_MIN <= CONNECTION_BYTES_IN_FLIGHT_MAX_DEFAULT);

/// A TLS client must finish its handshake within this long of connecting
/// (else a peer could hold sockets open doing nothing, before any
/// request-level idle timeout applies). Kafka has no such bound; 10 s is
/// far above a handshake's round trips on any network clients use.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Client quotas measure a rate over this many samples of this length
/// (Kafka's quota.window.num = 11 and quota.window.size.seconds = 1).
pub const QUOTA_SAMPLES: usize = 11;
pub const QUOTA_SAMPLE_MS: i64 = 1000;
/// The longest a throttled connection is kept quiet at once: the whole
/// window, after which its rate is measured afresh.
pub const QUOTA_THROTTLE_MS_MAX: u64 = QUOTA_SAMPLES as u64 * QUOTA_SAMPLE_MS as u64;
/// Quota meters the broker keeps (one per user/client id that a quota
/// applies to; ~200 bytes each). Client ids are the client's to choose, so
/// the count is bounded: past it, idle meters go first.
pub const QUOTA_METERS_MAX: usize = 100_000;

/// The largest Kafka request a client may send on a SASL listener before
/// it has authenticated (Kafka's sasl.server.max.receive.size default):
/// ApiVersions and the SASL exchange are small, and without this bound
/// clients that never log in could fill the shard's byte budget.
pub const UNAUTHENTICATED_FRAME_BYTES_MAX: usize = 512 * 1024;
/// Bytes of authorization decisions a connection remembers
/// (`security::acl`), each counted as its resource name plus
/// `ACL_DECISION_OVERHEAD_BYTES`: a client naming more than fits starts
/// over (it costs lookups, never a wrong answer), so a connection cannot
/// grow its cache without bound by naming ever new topics. A producer to a
/// few hundred topics stays within it; it is half a socket read chunk.
pub const ACL_DECISIONS_BYTES_MAX: usize = 32 << 10;
/// What one cached decision costs besides its name: the hash table's
/// entry, the boxed name's header, the allocator's rounding.
pub const ACL_DECISION_OVERHEAD_BYTES: usize = 64;
const _: () = assert!(ACL_DECISIONS_BYTES_MAX <= READ_CHUNK_BYTES, "the cache costs less than a connection's buffer");
/// ACLs created, or filters deleted by, in one CreateAcls or DeleteAcls
/// request: a request is one metadata record, which must stay small
/// (kafka-acls sends a handful; the cluster holds at most
/// `spate_replication::limits::ACLS_MAX`).
pub const ACL_CHANGES_PER_REQUEST_MAX: usize = 1000;
/// How long an ACL change may wait for the controller before the client
/// is told it timed out (CreateAcls and DeleteAcls carry no timeout of
/// their own; Kafka's AdminClient waits 30 s by default for any call).
pub const ADMIN_TIMEOUT_MS: u64 = 30_000;

/// Partitions one transaction may write (its record in
/// `__transaction_state` lists them all, and each gets a marker at its
/// end): 1000 names of at most 249 bytes keep that record under 256 KiB,
/// well inside a batch. Kafka has no cap; Kafka Streams' transactions
/// span a task's partitions, far fewer.
pub const TXN_PARTITIONS_MAX: usize = 1_000;
/// Transactional ids one shard coordinates: each costs its record's state
/// in memory (a few hundred bytes plus its partitions' names).
pub const TXNS_PER_SHARD_MAX: usize = 100_000;
/// How long an AddPartitionsToTxn waits for the transaction before it to
/// complete (markers written, CompleteX persisted: ~1-2 ms on one broker)
/// before it is answered CONCURRENT_TRANSACTIONS after all.
pub const ADD_PARTITIONS_PARK_MS: u64 = 100;
/// AddPartitionsToTxn requests parked on one transactional id at once
/// (its one producer sends a few: partitions and offsets); more are
/// answered CONCURRENT_TRANSACTIONS at once.
pub const TXN_PARKED_PER_ID_MAX: usize = 8;
/// Client addresses whose `connection_creation_rate` quota (KIP-612) a
/// broker tracks at once (a few dozen bytes each): past it, those idle
/// for `IP_CREATION_IDLE_MS` are forgotten, and if none is, a new address
/// goes untracked (the broker-wide max.connection.creation.rate still
/// holds).
pub const IP_CREATION_BUCKETS_MAX: usize = 65_536;
pub const IP_CREATION_IDLE_MS: u64 = 10_000;
/// A coordinator's write to `__transaction_state` (a state change) is
/// answered with an error if the in-sync replicas do not all have it by
/// then (Kafka's transaction.state.log.write timeout is the request
/// timeout; this matches the group coordinator's).
pub const TXN_WRITE_TIMEOUT_MS: u64 = GROUP_WRITE_TIMEOUT_MS;
/// A marker that cannot be written yet (no leader, leader moving, fewer
/// in-sync replicas than required) is retried after this, doubling up to
/// `TXN_MARKER_RETRY_MS_MAX` (Kafka's coordinator retries markers until
/// written; the transaction stays in PrepareX meanwhile).
pub const TXN_MARKER_RETRY_MS: u64 = 50;
pub const TXN_MARKER_RETRY_MS_MAX: u64 = 2_000;
/// Idle broker-to-broker connections a shard keeps per address for
/// markers: enough for the markers of a few transactions ending at once;
/// more in flight open their own and close them after.
pub const TXN_MARKER_PEERS_IDLE_MAX: usize = 4;
/// How long a marker's broker-to-broker request may take before the
/// connection is dropped and the marker retried.
pub const TXN_MARKER_READ_TIMEOUT_MS: u64 = 30_000;
const _: () = assert!(TXN_MARKER_RETRY_MS <= TXN_MARKER_RETRY_MS_MAX);
const _: () = assert!(TXN_PARTITIONS_MAX * (NAME_BYTES_MAX + 6) < 1 << 20, "a transaction's record fits a batch");

/// How long a start waits for a port it needs to stop being listened on
/// before it refuses: the sockets of a broker killed a moment before go
/// when io_uring's asynchronous teardown of its ring drops them (CI saw a
/// restart right after a kill -9 find its own port still listening).
pub const PORT_FREE_WAIT_MS: u64 = 3_000;

/// The frame cap under which a native port can serve TLS and plaintext
/// side by side: a frame whose length field starts with 0x16 (a TLS
/// handshake record's first byte) would be at least this long.
pub const NATIVE_TLS_FRAME_BYTES_MAX: usize = 0x1600_0000;
/// A TLS record's first byte when it carries a handshake (RFC 8446 5.1).
pub const TLS_HANDSHAKE_RECORD_BYTE: u8 = 0x16;
const _: () = assert!(spate_flatbuf::FRAME_BYTES_MAX_DEFAULT < NATIVE_TLS_FRAME_BYTES_MAX);
