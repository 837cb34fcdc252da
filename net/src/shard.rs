//! A shard: one pinned executor that owns a set of partitions. Only the
//! owner touches a partition's log; other shards reach it with a
//! [`ShardOp`] through its mailbox (design decision 1). Every op's first
//! step runs synchronously on receipt, so appends from one connection keep
//! the order in which they were sent even when they cross cores.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::channel::{mpsc, oneshot};
use spate_engine::batch::BatchError;
use spate_engine::io::DmaStorage;
use spate_engine::producer_state::SequenceError;
use spate_engine::{Durability, LogConfig, LogError, PartitionLog, ReadBound, TailCache};
use spate_flatbuf::proto::ErrorCode;
use spate_flatbuf::{OFFSET_EARLIEST, OFFSET_LATEST};

/// Kafka's ListOffsets spec for the record with the largest timestamp.
pub(crate) const OFFSET_MAX_TIMESTAMP: i64 = -3;

use crate::catalog::{Catalog, TopicMeta, owner_shard};
use crate::config::BrokerConfig;
use crate::deadline::Deadline;
use crate::limits::FAILED_LOG_CHECK_INTERVAL_MS;
use crate::metrics::ShardMetrics;
use crate::replica::{Refusal, Replica, Role};
use crate::topic_config;

pub(crate) type Log = PartitionLog<DmaStorage>;

/// A partition by topic id (unique per creation) and index.
type PartitionKey = (Arc<str>, u32);

/// What every shard shares: read-mostly, no locks on the data path.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: BrokerConfig,
    /// The Kafka listeners, as `config` names them (validated at start).
    pub kafka_listeners: Vec<crate::config::KafkaListener>,
    /// TLS for the SSL and SASL_SSL listeners, if any (reloaded on SIGHUP).
    pub tls: Option<Arc<crate::security::tls::TlsServer>>,
    /// Mutual TLS between the controller voters, when the controller
    /// listener is SSL (reloaded on SIGHUP).
    pub controller_tls: Option<spate_replication::TransportTls>,
    /// OAUTHBEARER's JWKS and rules, when configured (reloaded on SIGHUP).
    pub oauth: arc_swap::ArcSwapOption<crate::security::sasl::OAuthValidator>,
    /// Client quota meters, shared by every shard (quotas are per broker).
    pub quota_meters: crate::security::quota::QuotaMeters,
    /// Open client connections per address, shared by every shard.
    pub connection_limits: Arc<crate::wire::connection_limits::ConnectionLimits>,
    pub default_durability: Durability,
    pub shard_count: usize,
    pub catalog: ArcSwap<Catalog>,
    pub mailboxes: Vec<mpsc::UnboundedSender<ShardOp>>,
    /// Set once every shard has bound its listeners.
    pub ports: OnceLock<Ports>,
    /// Where /metrics listens, once bound.
    pub metrics_port: OnceLock<u16>,
    /// The cluster metadata controller (this node's Raft voter): topics,
    /// assignments, ISR changes and producer ids go through it.
    /// Set once at start, before any shard serves.
    pub controller: OnceLock<spate_replication::Controller>,
    /// A log failed to close: the stop is not clean, so no clean-stop
    /// marker is written (`clean_stop.rs`).
    pub close_failed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
pub(crate) struct Ports {
    pub main: u16,
    pub shards: Vec<u16>,
    /// Each Kafka listener's port, in `Shared::kafka_listeners`' order.
    pub kafka: Vec<u16>,
}

impl Shared {
    pub fn owner(&self, topic: &str, partition: u32) -> usize {
        owner_shard(topic, partition, self.shard_count)
    }

    /// The engine config of a topic's partitions. With more than one
    /// replica the high watermark is replication's to move.
    pub fn log_config(&self, topic: &TopicMeta) -> Result<LogConfig, topic_config::TopicConfigError> {
        let mut config = LogConfig {
            durability: self.default_durability,
            high_watermark_follows_acks: topic.replication_factor <= 1,
            ..LogConfig::default()
        };
        // The broker's defaults first (server.properties' log.*), then
        // the topic's own.
        topic_config::apply(&self.config.log_defaults, &mut config)?;
        topic_config::apply(&topic.configs, &mut config)?;
        Ok(config)
    }

    /// min.insync.replicas of a topic (acks=all).
    pub fn min_insync_replicas(&self, topic: &TopicMeta) -> usize {
        min_insync_replicas(topic)
    }

    pub fn controller(&self) -> &spate_replication::Controller {
        self.controller.get().expect("the controller starts before any shard serves")
    }

    /// Tells the controller that this broker's replica of a partition
    /// cannot serve; answers the partition as the controller then has it.
    pub fn replica_offline(
        &self,
        topic: String,
        partition: u32,
    ) -> impl std::future::Future<
        Output = Result<crate::catalog::PartitionAssignment, spate_replication::ControllerError>,
    > + 'static {
        self.partition_answer(spate_replication::ControllerRequest::ReplicaOffline { topic, partition })
    }

    /// Sends a request the controller answers with the partition as it
    /// then is.
    fn partition_answer(
        &self,
        request: spate_replication::ControllerRequest,
    ) -> impl std::future::Future<
        Output = Result<crate::catalog::PartitionAssignment, spate_replication::ControllerError>,
    > + 'static {
        let request = self.controller().request(request);
        async move {
            match request.await? {
                spate_replication::ControllerResponse::Partition(p) => {
                    Ok(crate::catalog::PartitionAssignment::from(&p))
                }
                // Not a refusal: what became of the request is unknown.
                other => {
                    Err(spate_replication::ControllerError::Storage(format!("unexpected controller answer {other:?}")))
                }
            }
        }
    }

    /// Asks the controller to change a partition's ISR (its leader only).
    pub fn alter_partition(
        &self,
        topic: String,
        partition: u32,
        from_node: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<i32>,
    ) -> impl std::future::Future<
        Output = Result<crate::catalog::PartitionAssignment, spate_replication::ControllerError>,
    > + 'static {
        self.partition_answer(spate_replication::ControllerRequest::AlterPartition {
            topic,
            partition,
            from_node,
            leader_epoch,
            partition_epoch,
            new_isr,
        })
    }
}

/// Outcome of one partition's part of a request.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub error: ErrorCode,
    pub message: Option<String>,
}

impl Outcome {
    pub fn ok() -> Self {
        Outcome { error: ErrorCode::None, message: None }
    }
    pub fn err(error: ErrorCode, message: impl Into<String>) -> Self {
        Outcome { error, message: Some(crate::caps::bounded_message(message.into())) }
    }
}

#[derive(Debug)]
pub(crate) struct AppendResult {
    pub outcome: Outcome,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

#[derive(Debug, Default)]
pub(crate) struct ReadResult {
    pub error: ErrorCode,
    pub high_watermark: i64,
    /// Kafka's last stable offset: below it every transaction has ended.
    pub last_stable_offset: i64,
    /// read_committed reads: the aborted transactions that may have data
    /// among `batches` (the consumer drops those batches).
    pub aborted: Vec<spate_engine::AbortedTxn>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub batches: Vec<Bytes>,
    /// The read found damaged data (a `LogError::Corruption`, with its
    /// file and position): the partition goes offline here.
    pub damaged: Option<String>,
}

impl ReadResult {
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
    fn error(error: ErrorCode) -> Self {
        ReadResult {
            error,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            log_end_offset: -1,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
pub(crate) struct EpochEndResult {
    pub error: ErrorCode,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

#[derive(Debug)]
pub(crate) struct OffsetResult {
    pub error: ErrorCode,
    pub offset: i64,
    /// ListOffsets for the latest timestamp: that timestamp (-1 otherwise).
    pub timestamp: i64,
}

#[derive(Debug, Default)]
pub(crate) struct PartitionStats {
    pub error: ErrorCode,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
    pub segment_count: u32,
}

/// One idempotent producer as a partition's log knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    /// The sequence number of its last record here (-1: none).
    pub last_sequence: i32,
    /// The first offset of its open transaction here (-1: none).
    pub current_txn_start_offset: i64,
}

/// A produce to one partition, for its owner shard.
#[derive(Debug)]
pub(crate) struct ProduceOp {
    pub topic: Arc<TopicMeta>,
    pub partition: u32,
    pub batches: Vec<BytesMut>,
    pub acks: i16,
    pub timeout: Duration,
    /// The request's transactional id: its coordinator is asked before
    /// the producer's first transactional batch of a transaction is taken
    /// (KIP-890 part 1, `txn/guard.rs`).
    pub transactional_id: Option<Arc<str>>,
    /// A transactions-v2 client (Kafka's Produce v12+, KIP-890 part 2):
    /// it adds no partition itself; the coordinator is told to add this
    /// one rather than asked whether it is in.
    pub transactions_v2: bool,
    pub reply: oneshot::Sender<AppendResult>,
}

/// Where a produce stands with KIP-890 (`Shard::verification`).
enum Verification {
    /// Nothing to verify: append now.
    None,
    /// The producer's transaction is open here: append, behind the
    /// producer's verification on its way, if any.
    Open(crate::txn::guard::GuardKey),
    /// Its first batch of a transaction here: the coordinator first.
    Ask(crate::txn::guard::GuardKey, Question),
}

/// What the partition's leader asks the transaction's coordinator.
struct Question {
    txn_id: Arc<str>,
    ask: crate::txn::Ask,
    producer_epoch: i16,
    /// The partition's leader epoch when asked.
    leader_epoch: i32,
}

/// Work for the shard that owns a partition (or, for `Admin`, shard 0).
#[derive(Debug)]
pub(crate) enum ShardOp {
    Produce(ProduceOp),
    Fetch {
        topic: Arc<TopicMeta>,
        partition: u32,
        offset: i64,
        bytes_max: usize,
        /// Long poll: with no data at `offset`, wait until then.
        wait_until: Option<Instant>,
        /// A follower's node id (replica fetch), or -1 for a consumer.
        replica_id: i32,
        /// -1: unchecked.
        current_leader_epoch: i32,
        /// Replica fetches: what the follower has made durable under its
        /// durability policy (-1: nothing known); what counts toward the
        /// high watermark and the ISR.
        replica_durable_offset: i64,
        /// A consumer with Kafka's isolation.level=read_committed.
        read_committed: bool,
        reply: oneshot::Sender<ReadResult>,
    },
    /// OffsetForLeaderEpoch on the leader.
    EpochEndOffset {
        topic: Arc<TopicMeta>,
        partition: u32,
        current_leader_epoch: i32,
        leader_epoch: i32,
        reply: oneshot::Sender<EpochEndResult>,
    },
    /// New metadata: open what this shard now hosts, apply roles, close
    /// and delete what the metadata no longer has.
    Metadata {
        catalog: Arc<Catalog>,
        reply: oneshot::Sender<()>,
    },
    ListOffset {
        topic: Arc<TopicMeta>,
        partition: u32,
        timestamp: i64,
        /// Kafka's isolation.level=read_committed: "latest" is the last
        /// stable offset.
        read_committed: bool,
        reply: oneshot::Sender<OffsetResult>,
    },
    Stats {
        topic: Arc<TopicMeta>,
        partition: u32,
        reply: oneshot::Sender<PartitionStats>,
    },
    /// DeleteRecords on the leader: the log start moves to `offset` (-1:
    /// the high watermark); the reply's offset is the new log start.
    /// Followers move theirs as they fetch (`replica/fetcher.rs`).
    DeleteRecords {
        topic: Arc<TopicMeta>,
        partition: u32,
        offset: i64,
        reply: oneshot::Sender<OffsetResult>,
    },
    /// DescribeProducers on the leader: each idempotent producer the log
    /// keeps state for.
    DescribeProducers {
        topic: Arc<TopicMeta>,
        partition: u32,
        reply: oneshot::Sender<Result<Vec<ProducerSummary>, ErrorCode>>,
    },
    Admin(crate::admin::AdminOp),
    /// For the coordinator of a consumer group.
    Group(crate::group::GroupOp),
    /// For the coordinator of a transactional id.
    Txn(crate::txn::TxnOp),
    /// A transaction marker for a partition this shard owns (`txn/markers.rs`),
    /// answered once the in-sync replicas have it.
    WriteMarker {
        topic: Arc<TopicMeta>,
        partition: u32,
        marker: spate_engine::TxnMarker,
        reply: oneshot::Sender<Outcome>,
    },
    Metrics {
        reply: oneshot::Sender<crate::metrics::ShardSnapshot>,
    },
    /// Allocate a producer id (on the admin shard), bound to the
    /// principal that asked.
    InitProducerId {
        principal: crate::security::Principal,
        reply: oneshot::Sender<Result<i64, String>>,
    },
    /// Stop accepting, close every log cleanly, end the shard.
    Shutdown,
}

pub(crate) struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub cache: Rc<TailCache>,
    logs: RefCell<HashMap<Arc<str>, HashMap<u32, Log>>>,
    /// The replica state of every open partition, by topic id.
    replicas: RefCell<HashMap<PartitionKey, Rc<Replica>>>,
    /// Partitions hosted here whose log failed to open (a damaged segment,
    /// an I/O error): offline on this broker, answering StorageError, while
    /// every other partition is served. One damaged file must not keep a
    /// broker from serving everything else. See `recover_offline`.
    offline: RefCell<HashMap<PartitionKey, OfflineReplica>>,
    /// Broker proofs this shard accepted lately (`broker_auth`).
    pub replay_guard: RefCell<crate::broker_auth::ReplayGuard>,
    /// Metadata is applied one change at a time.
    reconcile_lock: glommio::sync::Semaphore,
    /// Serialises catalog changes (used on shard 0 only).
    pub admin_lock: glommio::sync::Semaphore,
    pub metrics: ShardMetrics,
    /// Bytes of requests in flight and responses not yet written, over all
    /// of this shard's connections (`budget.rs`).
    pub bytes_in_flight: Rc<crate::budget::ByteBudget>,
    /// The consumer groups this shard coordinates.
    pub groups: crate::group::Groups,
    /// The transactional ids this shard coordinates.
    pub txns: crate::txn::Txns,
    /// Produces waiting for their transaction's verification (KIP-890).
    pub verifications: crate::txn::guard::Verifications<ProduceOp>,
    pub stopping: Cell<bool>,
    /// Accept loops wait on this to stop.
    pub stop_listeners: RefCell<Vec<oneshot::Sender<()>>>,
    /// Where compaction runs: behind requests (Latency::NotImportant).
    cleaner_queue: glommio::TaskQueueHandle,
    /// Used on the admin shard only.
    pub producer_ids: crate::producer_ids::ProducerIdAllocator,
}

/// A produce's answer when its transaction's coordinator did not confirm
/// the partition is in the transaction (KIP-890 part 1). A coordinator
/// that could not answer is retriable (Kafka's produce path answers
/// NOT_ENOUGH_REPLICAS then, which every client retries).
fn verification_refusal(err: crate::txn::TxnError, topic: &str, partition: u32) -> (ErrorCode, String) {
    use crate::txn::TxnError;
    match err {
        TxnError::ProducerFenced => (
            ErrorCode::InvalidProducerEpoch,
            format!("{topic}/{partition}: a newer producer with this transactional id exists"),
        ),
        TxnError::InvalidProducerIdMapping => (
            ErrorCode::InvalidProducerIdMapping,
            format!("{topic}/{partition}: the producer id is not the transactional id's"),
        ),
        TxnError::InvalidTxnState => (
            ErrorCode::InvalidTxnState,
            format!("{topic}/{partition} is not in the producer's ongoing transaction (add it first)"),
        ),
        TxnError::TooManyPartitions => (
            ErrorCode::InvalidTxnState,
            format!("{topic}/{partition}: the transaction has as many partitions as it may"),
        ),
        other => (
            ErrorCode::NotEnoughReplicas,
            format!("{topic}/{partition}: the transaction coordinator could not verify the partition ({other:?})"),
        ),
    }
}

/// A partition hosted here whose log failed to open, met damaged data or
/// failed a write.
#[derive(Debug)]
struct OfflineReplica {
    topic: Arc<TopicMeta>,
    /// The error that took it offline, naming the file and position (a
    /// corruption) or the operation (an I/O error): produce answers carry
    /// it, so an operator sees where to look from a client's error alone.
    reason: String,
    /// The controller has been told.
    reported: bool,
    cause: OfflineCause,
}

/// Why a partition is offline here, which decides what happens once
/// another replica leads it (`recover_offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfflineCause {
    /// Damaged data (a CRC mismatch in synced data, a log that cannot be
    /// opened because of what its files hold): the files move aside and
    /// the partition is fetched again onto the same disk.
    Damaged,
    /// The disk failed under the log (a write, fallocate or fdatasync
    /// error: `LogError::Failed`, sticky; or an I/O error opening it): the
    /// files stay where they are and the partition stays offline, since a
    /// copy fetched again onto a failing disk would only fail again, or
    /// worse, be acknowledged from a disk that loses it. Replacing the disk
    /// and restarting is the operator's.
    DiskFailed,
}

impl OfflineCause {
    /// The cause of a failure to open a log.
    fn of_open_error(err: &LogError) -> OfflineCause {
        match err {
            LogError::Io { .. } | LogError::Failed { .. } => OfflineCause::DiskFailed,
            _ => OfflineCause::Damaged,
        }
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("id", &self.id).finish()
    }
}

/// Has every shard reconcile with `catalog`; completes when all have.
pub(crate) async fn apply_everywhere(shard: &Rc<Shard>, catalog: &Arc<Catalog>) {
    let mut waits = Vec::with_capacity(shard.shared.shard_count);
    for owner in 0..shard.shared.shard_count {
        let (reply, wait) = oneshot::channel();
        shard.submit(owner, ShardOp::Metadata { catalog: catalog.clone(), reply });
        waits.push(wait);
    }
    for wait in waits {
        let _ = wait.await;
    }
}

pub(crate) fn log_error_code(err: &LogError) -> ErrorCode {
    match err {
        LogError::InvalidBatch(BatchError::Oversize { .. } | BatchError::DecompressedTooLarge { .. }) => {
            ErrorCode::MessageTooLarge
        }
        LogError::InvalidBatch(_) => ErrorCode::CorruptMessage,
        LogError::Io { .. } | LogError::Failed { .. } | LogError::Corruption { .. } => ErrorCode::StorageError,
        LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        LogError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        LogError::Truncating | LogError::ReplicaOffset { .. } => ErrorCode::NotReady,
        LogError::Backpressure { .. } => ErrorCode::Throttled,
        LogError::Closed => ErrorCode::BrokerShuttingDown,
        LogError::Sequence(SequenceError::OutOfOrder { .. }) => ErrorCode::OutOfOrderSequence,
        LogError::Sequence(SequenceError::StaleEpoch { .. }) => ErrorCode::InvalidProducerEpoch,
        // A marker from a fenced producer's or a deposed coordinator's
        // transaction: the coordinator counts it as written.
        LogError::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
        LogError::Sequence(SequenceError::Invalid { .. }) => ErrorCode::CorruptMessage,
        LogError::Sequence(SequenceError::OutsideTransaction { .. }) => ErrorCode::InvalidTxnState,
    }
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Self> {
        let cache = TailCache::new(shared.config.tail_cache_bytes);
        let producer_ids = crate::producer_ids::ProducerIdAllocator::default();
        let bytes_in_flight = crate::budget::ByteBudget::new(shared.config.shard_bytes_in_flight_max);
        Rc::new(Shard {
            producer_ids,
            id,
            shared,
            cache,
            logs: RefCell::new(HashMap::new()),
            replicas: RefCell::new(HashMap::new()),
            offline: RefCell::new(HashMap::new()),
            replay_guard: RefCell::new(crate::broker_auth::ReplayGuard::default()),
            reconcile_lock: glommio::sync::Semaphore::new(1),
            admin_lock: glommio::sync::Semaphore::new(1),
            metrics: ShardMetrics::default(),
            bytes_in_flight,
            groups: crate::group::Groups::default(),
            txns: crate::txn::Txns::default(),
            verifications: Default::default(),
            stopping: Cell::new(false),
            stop_listeners: RefCell::new(Vec::new()),
            cleaner_queue: glommio::executor().create_task_queue(
                glommio::Shares::default(),
                glommio::Latency::NotImportant,
                "cleaner",
            ),
        })
    }

    /// The partitions of `topic` this shard owns whose replica leads here,
    /// with their leader epochs: what a coordinator (groups, transactions)
    /// serves.
    pub(crate) fn led_partitions(&self, topic: &TopicMeta) -> HashMap<u32, i32> {
        (0..topic.partitions)
            .filter(|&partition| self.shared.owner(&topic.name, partition) == self.id)
            .filter_map(|partition| {
                let replica = self.replica(topic, partition)?;
                replica.check_leader(-1).ok().map(|leader_epoch| (partition, leader_epoch))
            })
            .collect()
    }

    pub(crate) fn log(&self, topic: &TopicMeta, partition: u32) -> Option<Log> {
        self.logs.borrow().get(topic.topic_id.as_str()).and_then(|parts| parts.get(&partition)).cloned()
    }

    /// Why a partition of `topic` has no replica open here: its topic is
    /// gone (deleted since the request read the catalog), this broker is
    /// not one of its replicas (stale client metadata), or it is one and the
    /// partition is not open yet (its metadata just arrived): retriable.
    fn not_hosted(&self, topic: &TopicMeta, partition: u32) -> ErrorCode {
        let catalog = self.shared.catalog.load();
        match catalog.topics.get(&topic.name) {
            Some(current) if current.topic_id == topic.topic_id => {
                if self.is_offline(topic, partition) {
                    ErrorCode::StorageError
                } else if current.assignment(partition).replicas.contains(&self.shared.config.node_id) {
                    ErrorCode::NotReady
                } else {
                    ErrorCode::NotLeaderOrFollower
                }
            }
            _ => ErrorCode::UnknownTopicOrPartition,
        }
    }

    fn is_offline(&self, topic: &TopicMeta, partition: u32) -> bool {
        self.offline.borrow().contains_key(&(Arc::from(topic.topic_id.as_str()), partition))
    }

    /// How many partitions hosted here are offline (failed to open).
    pub(crate) fn offline_count(&self) -> usize {
        self.offline.borrow().len()
    }

    pub(crate) fn replica(&self, topic: &TopicMeta, partition: u32) -> Option<Rc<Replica>> {
        self.replicas.borrow().get(&(Arc::from(topic.topic_id.as_str()), partition)).cloned()
    }

    /// The replicas this shard leads.
    fn leaders(&self) -> Vec<Rc<Replica>> {
        self.replicas.borrow().values().filter(|replica| replica.role() == Role::Leader).cloned().collect()
    }

    /// Leaders drop followers that lag from their ISR, through the
    /// controller. Runs for the life of the shard.
    pub fn spawn_isr_checks(self: &Rc<Self>) {
        let shard = self.clone();
        let lag_max = Duration::from_millis(self.shared.config.replica_lag_time_max_ms);
        glommio::spawn_local(async move {
            while !shard.stopping.get() {
                Deadline::after(lag_max / 2).await;
                for replica in shard.leaders() {
                    replica.maybe_shrink_isr(&shard.shared, &replica, lag_max);
                }
            }
        })
        .detach();
    }

    /// Sends `op` to the shard that owns it; runs it here if that is us.
    pub fn submit(self: &Rc<Self>, owner: usize, op: ShardOp) {
        if owner == self.id {
            self.execute(op);
        } else if let Err(err) = self.shared.mailboxes[owner].unbounded_send(op) {
            // The owner has stopped (shutdown): dropping the op drops its
            // reply sender, which the waiting request reports.
            tracing::debug!(shard = self.id, owner, "owner shard gone: {err}");
        }
    }

    /// Runs an op. Everything up to the first await happens now, in the
    /// order ops arrive.
    pub fn execute(self: &Rc<Self>, op: ShardOp) {
        match op {
            ShardOp::Produce(op) => self.produce(op),
            ShardOp::Fetch {
                topic,
                partition,
                offset,
                bytes_max,
                wait_until,
                replica_id,
                current_leader_epoch,
                replica_durable_offset,
                read_committed,
                reply,
            } => {
                let replica = if self.stopping.get() {
                    Err(ErrorCode::BrokerShuttingDown)
                } else {
                    self.replica(&topic, partition).ok_or_else(|| self.not_hosted(&topic, partition))
                };
                // Consumers read from the leader below the high watermark;
                // a follower's fetch (from the leader) up to the log end,
                // and tells the leader how far the follower has come.
                let checked = replica.and_then(|replica| {
                    let check = replica.check_leader(current_leader_epoch).map(|_| ());
                    let check = check.and_then(|()| {
                        if replica_id >= 0 {
                            replica.record_follower_fetch(
                                &self.shared,
                                &replica,
                                replica_id,
                                offset,
                                replica_durable_offset,
                            )
                        } else {
                            Ok(())
                        }
                    });
                    check.map(|()| replica).map_err(|Refusal(code)| code)
                });
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let mut reply = reply;
                    let mut result = match checked {
                        Err(error) => ReadResult::error(error),
                        Ok(replica) => {
                            // read_committed consumers stop at the last
                            // stable offset: nothing of an open transaction.
                            let bound = if replica_id >= 0 {
                                ReadBound::LogEnd
                            } else if read_committed {
                                ReadBound::LastStable
                            } else {
                                ReadBound::HighWatermark
                            };
                            fetch_partition(&replica.log, offset, bytes_max, wait_until, bound, &mut reply).await
                        }
                    };
                    if let Some(reason) = result.damaged.take() {
                        shard.take_offline(&topic, partition, OfflineCause::Damaged, reason).await;
                    }
                    let _ = reply.send(result);
                })
                .detach();
            }
            ShardOp::EpochEndOffset { topic, partition, current_leader_epoch, leader_epoch, reply } => {
                let result = match self.replica(&topic, partition) {
                    None => {
                        EpochEndResult { error: ErrorCode::UnknownTopicOrPartition, leader_epoch: -1, end_offset: -1 }
                    }
                    Some(replica) => match replica.check_leader(current_leader_epoch) {
                        Err(Refusal(error)) => EpochEndResult { error, leader_epoch: -1, end_offset: -1 },
                        Ok(_) => {
                            let log = &replica.log;
                            match log.leader_epochs().end_offset_for(leader_epoch, log.log_end_offset()) {
                                Some(entry) => EpochEndResult {
                                    error: ErrorCode::None,
                                    leader_epoch: entry.epoch,
                                    end_offset: entry.start_offset,
                                },
                                // No epoch that old here: nothing below the
                                // log start is known to this leader.
                                None => EpochEndResult {
                                    error: ErrorCode::None,
                                    leader_epoch: -1,
                                    end_offset: log.log_start_offset(),
                                },
                            }
                        }
                    },
                };
                let _ = reply.send(result);
            }
            ShardOp::Metadata { catalog, reply } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    // Errors are logged; the partition reports StorageError.
                    let _ = shard.reconcile(&catalog).await;
                    let _ = reply.send(());
                })
                .detach();
            }
            ShardOp::ListOffset { topic, partition, timestamp, read_committed, reply } => {
                let replica = self.replica(&topic, partition).ok_or_else(|| self.not_hosted(&topic, partition));
                glommio::spawn_local(async move {
                    let result = match replica {
                        Err(error) => OffsetResult { error, offset: -1, timestamp: -1 },
                        Ok(replica) => match replica.check_leader(-1) {
                            Err(Refusal(error)) => OffsetResult { error, offset: -1, timestamp: -1 },
                            Ok(_) => list_offset(&replica.log, timestamp, read_committed).await,
                        },
                    };
                    let _ = reply.send(result);
                })
                .detach();
            }
            ShardOp::Stats { topic, partition, reply } => {
                let stats = match self.log(&topic, partition) {
                    None if self.is_offline(&topic, partition) => PartitionStats {
                        error: ErrorCode::StorageError,
                        log_start_offset: -1,
                        high_watermark: -1,
                        log_end_offset: -1,
                        ..Default::default()
                    },
                    None => PartitionStats { error: ErrorCode::UnknownTopicOrPartition, ..Default::default() },
                    Some(log) => PartitionStats {
                        error: log.failure().map_or(ErrorCode::None, |err| log_error_code(&err)),
                        log_start_offset: log.log_start_offset(),
                        high_watermark: log.high_watermark(),
                        log_end_offset: log.log_end_offset(),
                        size_bytes: log.size_bytes(),
                        segment_count: log.segment_count() as u32,
                    },
                };
                let _ = reply.send(stats);
            }
            ShardOp::DeleteRecords { topic, partition, offset, reply } => {
                let leader = self
                    .replica(&topic, partition)
                    .ok_or_else(|| self.not_hosted(&topic, partition))
                    .and_then(|replica| replica.check_leader(-1).map(|_| replica).map_err(|Refusal(code)| code));
                glommio::spawn_local(async move {
                    let result = match leader {
                        Err(error) => OffsetResult { error, offset: -1, timestamp: -1 },
                        Ok(replica) => delete_records(&replica.log, offset).await,
                    };
                    let _ = reply.send(result);
                })
                .detach();
            }
            ShardOp::DescribeProducers { topic, partition, reply } => {
                let producers = self
                    .replica(&topic, partition)
                    .ok_or_else(|| self.not_hosted(&topic, partition))
                    .and_then(|replica| replica.check_leader(-1).map(|_| replica).map_err(|Refusal(code)| code))
                    .map(|replica| {
                        let open: HashMap<i64, i64> = replica.log.ongoing_transactions().into_iter().collect();
                        replica
                            .log
                            .producers()
                            .into_iter()
                            .map(|(id, entry)| {
                                let last_sequence = entry.batches.back().map_or(-1, |batch| batch.last_seq);
                                let current_txn_start_offset = open.get(&id).copied().unwrap_or(-1);
                                ProducerSummary {
                                    producer_id: id,
                                    epoch: entry.epoch,
                                    last_sequence,
                                    current_txn_start_offset,
                                }
                            })
                            .collect()
                    });
                let _ = reply.send(producers);
            }
            ShardOp::Admin(op) => crate::admin::execute(self.clone(), op),
            ShardOp::Group(op) => crate::group::execute(self, op),
            ShardOp::Txn(op) => crate::txn::execute(self, op),
            ShardOp::WriteMarker { topic, partition, marker, reply } => {
                crate::txn::write_marker_here(self, topic, partition, marker, reply);
            }
            ShardOp::Metrics { reply } => {
                let mut snapshot = self.metrics.snapshot(self.id, &self.partition_sizes(), self.offline_count());
                snapshot.bytes_in_flight = self.bytes_in_flight.used_bytes();
                snapshot.bytes_in_flight_peak = self.bytes_in_flight.peak_bytes();
                let _ = reply.send(snapshot);
            }
            ShardOp::InitProducerId { principal, reply } => {
                assert_eq!(self.id, crate::admin::ADMIN_SHARD, "producer ids come from the admin shard");
                let shard = self.clone();
                glommio::spawn_local(async move {
                    // The controller's image first: right after the first
                    // start the secret may be committed before the catalog
                    // this shard reads has it.
                    let image = shard.shared.controller().image();
                    let secret = image
                        .cluster_secret_hex
                        .as_deref()
                        .and_then(crate::broker_auth::secret_from_hex)
                        .or_else(|| shard.shared.catalog.load().cluster_secret.as_deref().map(<[u8]>::to_vec));
                    let allocated =
                        shard.producer_ids.allocate(shard.shared.controller(), secret.as_deref(), &principal);
                    let _ = reply.send(allocated.await);
                })
                .detach();
            }
            ShardOp::Shutdown => {
                // Handled by the mailbox loop, which owns the shard's end.
            }
        }
    }

    /// A produce on the owner: appended now, unless it carries its
    /// producer's first transactional batch of a transaction here (its
    /// coordinator is asked first) or that producer's verification here is
    /// still on its way (it queues behind).
    fn produce(self: &Rc<Self>, op: ProduceOp) {
        let (key, question) = match self.verification(&op) {
            Verification::None => return self.produce_now(op),
            Verification::Open(key) => (key, None),
            Verification::Ask(key, question) => (key, Some(question)),
        };
        let Some(op) = self.verifications.queue_behind(&key, op) else { return };
        let Some(question) = question else { return self.produce_now(op) };
        self.verifications.begin(key.clone(), question.leader_epoch);
        let shard = self.clone();
        glommio::spawn_local(async move {
            let tp = (op.topic.name.clone(), op.partition as i32);
            let Question { txn_id, ask, producer_epoch, .. } = &question;
            let answer = crate::txn::verify(&shard, *ask, txn_id, key.1, *producer_epoch, tp).await;
            shard.verified(&key, &question, op, answer);
        })
        .detach();
    }

    /// Whether `op` takes part in a KIP-890 verification: its producer on
    /// the partition, and the question to ask if its first transactional
    /// batch opens the producer's transaction here.
    fn verification(&self, op: &ProduceOp) -> Verification {
        // A v2 client's partitions join its transaction only this way.
        if !self.shared.config.transaction_partition_verification_enable && !op.transactions_v2 {
            return Verification::None;
        }
        let Some(txn_id) = op.transactional_id.clone() else { return Verification::None };
        let header = op.batches.iter().find_map(|batch| {
            spate_format::batch::peek_header(batch).ok().filter(|header| header.attributes().is_transactional())
        });
        let Some(header) = header else { return Verification::None };
        let (producer_id, producer_epoch) = (header.producer_id.get(), header.producer_epoch.get());
        let key = ((Arc::from(op.topic.topic_id.as_str()), op.partition), producer_id);
        // Refusals (not hosted, not the leader) are the append's to give.
        let Some(replica) = self.replica(&op.topic, op.partition) else { return Verification::None };
        let Ok(leader_epoch) = replica.check_leader(-1) else { return Verification::None };
        match replica.log.producer_transaction(producer_id) {
            // A newer epoch was here (a marker of the transaction this
            // batch belonged to, under transactions v2, or a newer
            // producer's batch): the append refuses it as fenced, with no
            // question asked.
            Some((epoch, _)) if epoch > producer_epoch => return Verification::None,
            // Open here at this epoch: verified when it opened, and its
            // marker has not ended it (a marker clears it in the same step).
            Some((epoch, true)) if epoch == producer_epoch => return Verification::Open(key),
            _ => {}
        }
        let ask = if op.transactions_v2 { crate::txn::Ask::Add } else { crate::txn::Ask::Verify };
        Verification::Ask(key, Question { txn_id, ask, producer_epoch, leader_epoch })
    }

    /// The coordinator answered `op`'s verification: append it or refuse
    /// it, then run what queued behind it, in order.
    fn verified(
        self: &Rc<Self>,
        key: &crate::txn::guard::GuardKey,
        question: &Question,
        op: ProduceOp,
        answer: Result<(), crate::txn::TxnError>,
    ) {
        let finished = self.verifications.finish(key);
        let name = &op.topic.name;
        let partition = op.partition;
        let epoch_bumps = question.ask == crate::txn::Ask::Add;
        let refusal = match answer {
            Ok(()) if finished.ended(question.producer_epoch, epoch_bumps) => Some((
                ErrorCode::InvalidTxnState,
                format!("{name}/{partition}: the transaction ended while the partition was verified"),
            )),
            Ok(()) => {
                let now = self.replica(&op.topic, partition).map(|replica| replica.check_leader(-1));
                match now {
                    Some(Ok(epoch)) if epoch == finished.leader_epoch => None,
                    _ => Some((
                        ErrorCode::NotLeaderOrFollower,
                        format!("{name}/{partition}: leadership moved while the transaction was verified"),
                    )),
                }
            }
            Err(err) => Some(verification_refusal(err, name, partition)),
        };
        match refusal {
            None => self.produce_now(op),
            Some((code, message)) => {
                tracing::debug!(shard = self.id, topic = %name, partition, producer_id = key.1, ?code, "{message}");
                let _ = op.reply.send(AppendResult {
                    outcome: Outcome::err(code, message),
                    base_offset: -1,
                    log_start_offset: -1,
                });
            }
        }
        for queued in finished.queued {
            self.produce(queued);
        }
    }

    /// Appends now (phase one) and answers once acknowledged (phase two).
    fn produce_now(self: &Rc<Self>, op: ProduceOp) {
        let ProduceOp { topic, partition, batches, acks, timeout, reply, .. } = op;
        let pending = self.append(&topic, partition, batches, acks);
        let metrics_topic = topic.name.clone();
        let shard = self.clone();
        glommio::spawn_local(async move {
            let result = pending.finish(acks, timeout).await;
            if result.outcome.error == ErrorCode::None {
                shard.metrics.produced(&metrics_topic);
            } else {
                // A failed write fails the log for good: stop
                // serving it now rather than at the next check.
                shard.take_offline_if_failed(&topic, partition).await;
            }
            let _ = reply.send(result);
        })
        .detach();
    }

    /// Phase one of a produce on the owner: every batch of the partition is
    /// validated first (so a bad one appends nothing), then all are
    /// appended in order.
    fn append(&self, topic: &TopicMeta, partition: u32, batches: Vec<BytesMut>, acks: i16) -> PendingAppend {
        if self.stopping.get() {
            return PendingAppend::failed(ErrorCode::BrokerShuttingDown, "broker is shutting down".into());
        }
        let Some(replica) = self.replica(topic, partition) else {
            let key = (Arc::from(topic.topic_id.as_str()), partition);
            let message = match self.offline.borrow().get(&key) {
                Some(offline) => format!("{}/{partition} is offline on this broker: {}", topic.name, offline.reason),
                None => format!("{}/{partition} is not open on this broker", topic.name),
            };
            return PendingAppend::failed(self.not_hosted(topic, partition), message);
        };
        let leader_epoch = match replica.check_leader(-1) {
            Ok(epoch) => epoch,
            Err(Refusal(code)) => {
                let message = format!("{}/{partition}: this broker does not lead it", topic.name);
                return PendingAppend::failed(code, message);
            }
        };
        let min_insync_replicas = self.shared.min_insync_replicas(topic);
        if acks == -1
            && let Err(Refusal(code)) = replica.check_min_isr(min_insync_replicas)
        {
            let isr = replica.assignment().isr;
            let message = format!("ISR {isr:?} is smaller than min.insync.replicas={min_insync_replicas}");
            return PendingAppend::failed(code, message);
        }
        let log = replica.log.clone();
        if batches.len() > 1 {
            // The engine validates each batch as it appends; with several,
            // check them all first so that a bad one appends none.
            for batch in &batches {
                if let Err(err) = spate_engine::batch::validate_produce(batch, log.config().batch_bytes_max) {
                    return PendingAppend::failed(log_error_code(&LogError::from(err.clone())), err.to_string());
                }
            }
        }
        let mut tickets = Vec::with_capacity(batches.len());
        for batch in batches {
            let bytes = batch.len();
            match log.append(batch, leader_epoch) {
                Ok(ticket) => {
                    self.metrics.bytes_in(&topic.name, bytes, ticket.info.last_offset - ticket.info.base_offset + 1);
                    tickets.push(ticket);
                }
                Err(err) => {
                    // Earlier batches of this request are appended and stay:
                    // they were valid; the error names the first that failed.
                    return PendingAppend::failed(log_error_code(&err), err.to_string());
                }
            }
        }
        PendingAppend::Appended { replica, tickets, leader_epoch, min_insync_replicas }
    }

    /// Opens the partitions not open yet. One that fails goes offline on
    /// this broker (see `offline`) and the others open; the first failure
    /// is returned.
    async fn open_partitions(&self, topic: &Arc<TopicMeta>, partitions: &[u32]) -> Result<(), String> {
        let config = self.shared.log_config(topic).map_err(|err| err.to_string())?;
        let data_dir = self.shared.config.data_dir.clone();
        let mut first_error = None;
        for &partition in partitions {
            if self.log(topic, partition).is_some() || self.is_offline(topic, partition) {
                continue;
            }
            let dir = topic.partition_dir(&data_dir, partition);
            let log = match PartitionLog::open(DmaStorage, dir.clone(), config.clone(), self.cache.clone()).await {
                Ok(log) => log,
                Err(err) => {
                    // The error names the file and the position (a
                    // Corruption) or the operation (I/O): what an operator
                    // needs to repair it.
                    let reason = format!("opening {}: {err}", dir.display());
                    tracing::error!(shard = self.id, topic = %topic.name, partition, "partition offline on this broker: {reason}");
                    let cause = OfflineCause::of_open_error(&err);
                    let offline =
                        OfflineReplica { topic: topic.clone(), reason: reason.clone(), reported: false, cause };
                    self.offline.borrow_mut().insert((Arc::from(topic.topic_id.as_str()), partition), offline);
                    first_error.get_or_insert(reason);
                    continue;
                }
            };
            let retention_every = Duration::from_millis(self.shared.config.retention_check_interval_ms);
            if let Err(err) = log.spawn_retention(retention_every, glommio::executor().current_task_queue()) {
                tracing::warn!(dir = %dir.display(), "retention not started: {err}");
            }
            // Every log gets one: a topic may turn compaction on live.
            let cleaner_every = Duration::from_millis(self.shared.config.cleaner_check_interval_ms);
            if let Err(err) = log.spawn_cleaner(cleaner_every, self.cleaner_queue) {
                tracing::warn!(dir = %dir.display(), "cleaner not started: {err}");
            }
            tracing::debug!(shard = self.id, topic = %topic.name, partition, "partition open");
            let topic_id: Arc<str> = Arc::from(topic.topic_id.as_str());
            let replica = Replica::new(log.clone(), topic.clone(), partition, self.shared.config.node_id);
            self.replicas.borrow_mut().insert((topic_id.clone(), partition), replica);
            self.logs.borrow_mut().entry(topic_id).or_default().insert(partition, log);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Brings this shard in line with the metadata: opens the partitions
    /// it now hosts (a replica of this node, owned by this shard), gives
    /// each its role, applies config changes, and closes and deletes the
    /// partitions of topics the metadata no longer has.
    /// Returns the first partition that failed to open, if any (the others
    /// are served).
    pub async fn reconcile(self: &Rc<Self>, catalog: &Catalog) -> Result<(), String> {
        let Ok(_permit) = self.reconcile_lock.acquire_permit(1).await else { return Ok(()) };
        if self.stopping.get() {
            return Ok(());
        }
        let node_id = self.shared.config.node_id;
        let mut first_error = None;
        for (topic, mine) in self.owned_partitions(catalog) {
            if let Err(err) = self.open_partitions(&topic, &mine).await {
                tracing::error!(shard = self.id, topic = %topic.name, "partitions not opened: {err}");
                first_error.get_or_insert(format!("topic {}: {err}", topic.name));
            }
            for partition in mine {
                let Some(replica) = self.replica(&topic, partition) else { continue };
                if replica.topic().configs != topic.configs
                    && let Err(err) = self.reconfigure(&topic, &[partition])
                {
                    tracing::error!(shard = self.id, topic = %topic.name, partition, "config not applied: {err}");
                }
                replica.apply_metadata(&self.shared, topic.clone());
            }
        }
        let doomed: Vec<Rc<Replica>> = self
            .replicas
            .borrow()
            .values()
            .filter(|replica| {
                let topic = replica.topic();
                !catalog.topics.get(&topic.name).is_some_and(|current| {
                    current.topic_id == topic.topic_id
                        && current.assignment(replica.partition).replicas.contains(&node_id)
                })
            })
            .cloned()
            .collect();
        // An offline partition of a topic deleted (or moved away) since is
        // forgotten, and its files go.
        let gone: Vec<(Arc<TopicMeta>, u32)> = self
            .offline
            .borrow()
            .iter()
            .filter(|((topic_id, partition), _)| {
                !catalog.topics.values().any(|topic| {
                    *topic.topic_id == **topic_id && topic.assignment(*partition).replicas.contains(&node_id)
                })
            })
            .map(|((_, partition), offline)| (offline.topic.clone(), *partition))
            .collect();
        for (topic, partition) in gone {
            self.offline.borrow_mut().remove(&(Arc::from(topic.topic_id.as_str()), partition));
            let dir = topic.partition_dir(&self.shared.config.data_dir, partition);
            if let Err(err) = remove_dir_all_off_core(dir).await {
                tracing::error!(shard = self.id, topic = %topic.name, partition, "removing an offline partition: {err}");
            }
        }
        self.report_offline();
        for replica in doomed {
            // delete_partitions stops the replica (fetcher, waiters) first.
            let topic = replica.topic();
            tracing::info!(shard = self.id, topic = %topic.name, partition = replica.partition, "deleting a partition the metadata no longer has here");
            if let Err(err) = self.delete_partitions(&topic, &[replica.partition]).await {
                tracing::error!(shard = self.id, topic = %topic.name, "delete failed: {err}");
            }
        }
        // Group coordinators follow the roles of __consumer_offsets.
        crate::group::sync(self, catalog);
        // Transaction coordinators follow the roles of __transaction_state.
        crate::txn::sync(self, catalog);
        first_error.map_or(Ok(()), Err)
    }

    /// Takes the partition offline if its log has failed (a write,
    /// fallocate or fdatasync error: sticky, the log acknowledges nothing
    /// more until reopened).
    async fn take_offline_if_failed(self: &Rc<Self>, topic: &Arc<TopicMeta>, partition: u32) {
        let failure = self.log(topic, partition).and_then(|log| log.failure());
        if let Some(failure) = failure {
            let reason = format!("its log failed: {failure}");
            self.take_offline(topic, partition, OfflineCause::DiskFailed, reason).await;
        }
    }

    /// Every `FAILED_LOG_CHECK_INTERVAL_MS`, takes offline the partitions
    /// whose log has failed in a way no produce answer saw: a follower's
    /// append, a group write, retention, compaction, an acks=0 produce.
    /// Runs for the life of the shard.
    pub fn spawn_failed_log_checks(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            while !shard.stopping.get() {
                Deadline::after(Duration::from_millis(FAILED_LOG_CHECK_INTERVAL_MS)).await;
                let failed: Vec<(Arc<TopicMeta>, u32)> = shard
                    .replicas
                    .borrow()
                    .values()
                    .filter(|replica| replica.log.failure().is_some())
                    .map(|replica| (replica.topic(), replica.partition))
                    .collect();
                for (topic, partition) in failed {
                    if shard.stopping.get() {
                        break;
                    }
                    shard.take_offline_if_failed(&topic, partition).await;
                }
            }
        })
        .detach();
    }

    /// A partition whose log turned out damaged while serving (a read met a
    /// batch failing its CRC in synced data) or failed (its disk) stops
    /// serving here: its log closes, it goes offline and is reported
    /// (`recover_offline`), never served from that copy again.
    async fn take_offline(
        self: &Rc<Self>,
        topic: &Arc<TopicMeta>,
        partition: u32,
        cause: OfflineCause,
        reason: String,
    ) {
        let key: PartitionKey = (Arc::from(topic.topic_id.as_str()), partition);
        let Some(replica) = self.replicas.borrow_mut().remove(&key) else { return };
        tracing::error!(shard = self.id, topic = %topic.name, partition, ?cause, "partition offline on this broker: {reason}");
        replica.stop();
        if let Some(parts) = self.logs.borrow_mut().get_mut(topic.topic_id.as_str()) {
            parts.remove(&partition);
        }
        let offline = OfflineReplica { topic: topic.clone(), reason: reason.clone(), reported: false, cause };
        self.offline.borrow_mut().insert(key, offline);
        // What is in flight fails or completes; the damaged copy is set
        // aside or kept as is, never served again.
        if let Err(err) = replica.log.close().await {
            tracing::warn!(topic = %topic.name, partition, "closing an offline partition: {err}");
        }
        self.report_offline();
    }

    /// Tells the controller of every offline partition not reported yet,
    /// each in a task of its own (`recover_offline`).
    fn report_offline(self: &Rc<Self>) {
        let mut offline = self.offline.borrow_mut();
        for ((_, partition), replica) in offline.iter_mut().filter(|(_, replica)| !replica.reported) {
            replica.reported = true;
            let recovery = self.clone().recover_offline(replica.topic.clone(), *partition, replica.cause);
            glommio::spawn_local(recovery).detach();
        }
    }

    /// An offline replica, reported: the controller takes it out of the
    /// ISR, and moves the leadership away if it led (issue 13). If another
    /// in-sync replica then leads, the damaged files move aside (kept for
    /// the operator as `<partition>.damaged-<unix ms>`) and the partition
    /// starts over empty as that leader's follower, fetching everything
    /// again; it rejoins the ISR once caught up. A last in-sync replica
    /// stays offline: the data may exist nowhere else, and only an
    /// operator (repairing the files, or by unclean election) may decide.
    /// So does a replica whose disk failed (`OfflineCause::DiskFailed`),
    /// whoever leads: its files stay in place for the operator.
    async fn recover_offline(self: Rc<Self>, topic: Arc<TopicMeta>, partition: u32, cause: OfflineCause) {
        let node_id = self.shared.config.node_id;
        let assignment = match self.shared.replica_offline(topic.name.clone(), partition).await {
            Ok(assignment) => assignment,
            Err(err) => {
                tracing::error!(topic = %topic.name, partition, "could not report an offline partition: {err}");
                return;
            }
        };
        if assignment.leader < 0 || assignment.leader == node_id || assignment.isr.contains(&node_id) {
            tracing::error!(topic = %topic.name, partition, leader = assignment.leader, isr = ?assignment.isr, "partition stays offline here: no other in-sync replica leads it; repair or remove the damaged files and restart, or allow unclean.leader.election.enable");
            return;
        }
        if cause == OfflineCause::DiskFailed {
            tracing::error!(topic = %topic.name, partition, leader = assignment.leader, "partition stays offline here: its disk failed; it is not fetched again onto it. Replace the disk (or move the data directory) and restart the broker");
            return;
        }
        // Never act on older metadata than the controller's answer: with
        // it this broker could still see itself as the leader.
        loop {
            if self.stopping.get() {
                return;
            }
            let catalog = self.shared.catalog.load_full();
            let current = catalog.topics.get(&topic.name).filter(|t| t.topic_id == topic.topic_id);
            let Some(current) = current else { return };
            if current.assignment(partition).partition_epoch >= assignment.partition_epoch {
                break;
            }
            crate::deadline::Deadline::after(Duration::from_millis(50)).await;
        }
        let dir = topic.partition_dir(&self.shared.config.data_dir, partition);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let aside = dir.with_file_name(format!("{partition}.damaged-{now_ms}"));
        if let Err(err) = glommio::io::rename(&dir, &aside).await {
            tracing::error!(dir = %dir.display(), "partition stays offline: moving its damaged files aside failed: {err}");
            return;
        }
        tracing::warn!(topic = %topic.name, partition, leader = assignment.leader, damaged = %aside.display(), "damaged partition moved aside; fetching it again from the leader");
        self.offline.borrow_mut().remove(&(Arc::from(topic.topic_id.as_str()), partition));
        let catalog = self.shared.catalog.load_full();
        if let Err(err) = self.reconcile(&catalog).await {
            tracing::error!(topic = %topic.name, partition, "reopening a partition moved aside: {err}");
        }
    }

    /// Gives each open partition of `topic` the config its catalog entry
    /// now makes; they apply it from their next append, flush or retention
    /// run.
    fn reconfigure(&self, topic: &TopicMeta, partitions: &[u32]) -> Result<(), String> {
        let config = self.shared.log_config(topic).map_err(|err| err.to_string())?;
        for &partition in partitions {
            if let Some(log) = self.log(topic, partition) {
                log.update_config(config.clone()).map_err(|err| format!("{}/{partition}: {err}", topic.name))?;
            }
        }
        Ok(())
    }

    async fn delete_partitions(&self, topic: &Arc<TopicMeta>, partitions: &[u32]) -> Result<(), String> {
        let data_dir = self.shared.config.data_dir.clone();
        for &partition in partitions {
            let log = {
                let mut logs = self.logs.borrow_mut();
                let parts = logs.get_mut(topic.topic_id.as_str());
                let log = parts.and_then(|parts| parts.remove(&partition));
                if let Some(replica) =
                    self.replicas.borrow_mut().remove(&(Arc::from(topic.topic_id.as_str()), partition))
                {
                    replica.stop();
                }
                if logs.get(topic.topic_id.as_str()).is_some_and(HashMap::is_empty) {
                    logs.remove(topic.topic_id.as_str());
                }
                log
            };
            if let Some(log) = log {
                // Errors closing a log about to be deleted change nothing.
                let _ = log.close().await;
            }
            let dir = topic.partition_dir(&data_dir, partition);
            remove_dir_all_off_core(dir).await?;
        }
        // The topic's directory goes with its last partition here (other
        // shards may still be deleting theirs: then it is not empty yet).
        let topic_dir = topic.topic_dir(&data_dir);
        let _ = glommio::executor().spawn_blocking(move || std::fs::remove_dir(topic_dir)).await;
        Ok(())
    }

    fn partition_sizes(&self) -> Vec<(String, u32, u64)> {
        let catalog = self.shared.catalog.load();
        let names: HashMap<&str, &str> =
            catalog.topics.values().map(|t| (t.topic_id.as_str(), t.name.as_str())).collect();
        let logs = self.logs.borrow();
        let mut sizes = Vec::new();
        for (topic_id, parts) in logs.iter() {
            let name = names.get(&**topic_id).copied().unwrap_or("(deleted)");
            for (partition, log) in parts {
                sizes.push((name.to_string(), *partition, log.size_bytes()));
            }
        }
        sizes
    }

    /// Closes every log (flushing what is pending) so the next start is a
    /// clean one.
    /// Returns whether every log closed without an error.
    pub async fn close_all(&self) -> bool {
        for replica in self.replicas.borrow_mut().drain().map(|(_, replica)| replica) {
            replica.stop();
        }
        let logs: Vec<(Arc<str>, u32, Log)> = self
            .logs
            .borrow_mut()
            .drain()
            .flat_map(|(id, parts)| parts.into_iter().map(move |(p, log)| (id.clone(), p, log)))
            .collect();
        let mut all_closed = true;
        for (topic_id, partition, log) in logs {
            if let Err(err) = log.close().await {
                tracing::error!(shard = self.id, %topic_id, partition, "close failed: {err}");
                all_closed = false;
            }
        }
        all_closed
    }

    /// The partitions of the catalog this shard owns: those of this node's
    /// replicas that hash to this shard.
    pub fn owned_partitions(&self, catalog: &Catalog) -> Vec<(Arc<TopicMeta>, Vec<u32>)> {
        let node_id = self.shared.config.node_id;
        catalog
            .topics
            .values()
            .map(|topic| {
                let mine: Vec<u32> = (0..topic.partitions)
                    .filter(|&p| self.shared.owner(&topic.name, p) == self.id)
                    .filter(|&p| topic.assignment(p).replicas.contains(&node_id))
                    .collect();
                (topic.clone(), mine)
            })
            .filter(|(_, mine)| !mine.is_empty())
            .collect()
    }
}

/// min.insync.replicas of a topic: acks=all needs an ISR this large, and
/// a leader moves the high watermark only with one.
pub(crate) fn min_insync_replicas(topic: &TopicMeta) -> usize {
    topic
        .configs
        .get("min.insync.replicas")
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(topic_config::MIN_INSYNC_REPLICAS_DEFAULT as usize)
}

/// Deleting a directory tree is metadata work with no io_uring equivalent;
/// run it on glommio's blocking pool so the core keeps serving.
pub(crate) async fn remove_dir_all_off_core(dir: PathBuf) -> Result<(), String> {
    let shown = dir.display().to_string();
    let result = glommio::executor()
        .spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        })
        .await;
    result.map_err(|err| format!("removing {shown}: {err}"))
}

pub(crate) enum PendingAppend {
    Done(AppendResult),
    Appended {
        replica: Rc<Replica>,
        tickets: Vec<spate_engine::AppendTicket>,
        leader_epoch: i32,
        min_insync_replicas: usize,
    },
}

impl PendingAppend {
    fn failed(error: ErrorCode, message: String) -> Self {
        PendingAppend::Done(AppendResult {
            outcome: Outcome { error, message: Some(crate::caps::bounded_message(message)) },
            base_offset: -1,
            log_start_offset: -1,
        })
    }

    /// Phase two: waits for the acks the producer asked for: the leader's
    /// own (its durability policy), then with acks=all every in-sync
    /// replica's (the high watermark passing the batches).
    async fn finish(self, acks: i16, timeout: Duration) -> AppendResult {
        let (replica, tickets, leader_epoch, min_insync_replicas) = match self {
            PendingAppend::Done(result) => return result,
            PendingAppend::Appended { replica, tickets, leader_epoch, min_insync_replicas } => {
                (replica, tickets, leader_epoch, min_insync_replicas)
            }
        };
        let log = replica.log.clone();
        let base_offset = tickets.first().map_or(-1, |t| t.info.base_offset);
        let offset_end = tickets.last().map_or(-1, |t| t.info.last_offset + 1);
        if acks == 0 {
            // Nobody waits for the answer; failures are the log's to report.
            // The high watermark still follows once the batches are acked.
            let replica = replica.clone();
            glommio::spawn_local(async move {
                for ticket in tickets {
                    if ticket.durable().await.is_err() {
                        return;
                    }
                }
                replica.advance_high_watermark();
            })
            .detach();
            return AppendResult { outcome: Outcome::ok(), base_offset, log_start_offset: log.log_start_offset() };
        }
        let wait_all = async {
            for ticket in tickets {
                ticket.durable().await?;
            }
            // The leader's ack point moved: so may the high watermark.
            replica.advance_high_watermark();
            if acks == -1 && replica.replicated() {
                let code = replica.wait_replicated(offset_end, leader_epoch, min_insync_replicas).await;
                if code != ErrorCode::None {
                    return Ok(Outcome::err(code, format!("offsets below {offset_end} are not replicated to the ISR")));
                }
            }
            Ok::<Outcome, LogError>(Outcome::ok())
        };
        let outcome = futures::select! {
            result = wait_all.fuse() => match result {
                Ok(outcome) => outcome,
                Err(err) => Outcome::err(log_error_code(&err), err.to_string()),
            },
            () = Deadline::after(timeout).fuse() => Outcome::err(
                ErrorCode::RequestTimedOut,
                format!("not acknowledged within {} ms; the batch may still be appended", timeout.as_millis()),
            ),
        };
        AppendResult { outcome, base_offset, log_start_offset: log.log_start_offset() }
    }
}

/// Reads at `offset`; with nothing there yet and a deadline, waits for the
/// high watermark to pass `offset`, the deadline, or the asker to go away.
async fn fetch_partition(
    log: &Log,
    offset: i64,
    bytes_max: usize,
    wait_until: Option<Instant>,
    bound: ReadBound,
    reply: &mut oneshot::Sender<ReadResult>,
) -> ReadResult {
    let result = read_partition(log, offset, bytes_max, bound).await;
    let now = Instant::now();
    let deadline = match wait_until {
        Some(deadline) if result.batches.is_empty() && result.error == ErrorCode::None && deadline > now => deadline,
        _ => return result,
    };
    // Wait once: for the high watermark to pass `offset` (it also fires
    // when the log closes or fails), the deadline, or the asker to go
    // away; then read once more and answer with whatever is there.
    // A follower waits for the log end instead: the high watermark
    // cannot move before followers fetch.
    let arrived = match bound {
        ReadBound::LogEnd => log.log_end_above(offset),
        ReadBound::HighWatermark => log.high_watermark_above(offset),
        // read_committed: the high watermark can move while an open
        // transaction holds the last stable offset.
        ReadBound::LastStable => log.last_stable_above(offset),
    };
    futures::select! {
        _ = arrived.fuse() => {}
        () = Deadline::at(deadline).fuse() => {}
        () = reply.cancellation().fuse() => return ReadResult::default(),
    }
    read_partition(log, offset, bytes_max, bound).await
}

async fn read_partition(log: &Log, offset: i64, bytes_max: usize, bound: ReadBound) -> ReadResult {
    let read = async {
        let output = log.read(offset, bytes_max, bound).await?;
        let aborted = match (bound, output.batches.last()) {
            // The transactions aborted with data from `offset` to the end
            // of what was read. Without them the batches are not served: a
            // read_committed consumer would take aborted records.
            (ReadBound::LastStable, Some(last)) => {
                let end = spate_engine::batch::peek_header(last).map_or(offset, |h| {
                    h.base_offset.get().saturating_add(i64::from(h.last_offset_delta.get())).saturating_add(1)
                });
                log.aborted_transactions(offset, end).await?
            }
            _ => Vec::new(),
        };
        Ok::<_, LogError>((output, aborted))
    };
    match read.await {
        Ok((output, aborted)) => ReadResult {
            error: ErrorCode::None,
            high_watermark: output.high_watermark,
            last_stable_offset: output.last_stable_offset,
            aborted,
            log_start_offset: output.log_start_offset,
            log_end_offset: output.log_end_offset,
            batches: output.batches,
            damaged: None,
        },
        Err(err) => ReadResult {
            error: log_error_code(&err),
            high_watermark: log.high_watermark(),
            last_stable_offset: log.last_stable_offset(),
            aborted: Vec::new(),
            log_start_offset: log.log_start_offset(),
            log_end_offset: log.log_end_offset(),
            batches: Vec::new(),
            damaged: matches!(err, LogError::Corruption { .. }).then(|| err.to_string()),
        },
    }
}

/// Moves a leader's log start (Kafka's DeleteRecords; -1: up to the high
/// watermark). Past the high watermark: OffsetOutOfRange.
async fn delete_records(log: &Log, offset: i64) -> OffsetResult {
    let offset = if offset == -1 { log.high_watermark() } else { offset };
    match log.advance_log_start(offset).await {
        Ok(log_start_offset) => OffsetResult { error: ErrorCode::None, offset: log_start_offset, timestamp: -1 },
        Err(err) => OffsetResult { error: log_error_code(&err), offset: -1, timestamp: -1 },
    }
}

async fn list_offset(log: &Log, timestamp: i64, read_committed: bool) -> OffsetResult {
    match timestamp {
        OFFSET_EARLIEST => OffsetResult { error: ErrorCode::None, offset: log.log_start_offset(), timestamp: -1 },
        OFFSET_LATEST if read_committed => {
            OffsetResult { error: ErrorCode::None, offset: log.last_stable_offset(), timestamp: -1 }
        }
        OFFSET_LATEST => OffsetResult { error: ErrorCode::None, offset: log.high_watermark(), timestamp: -1 },
        // Kafka's -3: the record with the largest timestamp (KIP-734).
        OFFSET_MAX_TIMESTAMP => match log.max_timestamp_ms() {
            None => OffsetResult { error: ErrorCode::None, offset: -1, timestamp: -1 },
            Some(max_ms) => match log.record_for_timestamp(max_ms).await {
                Ok(Some((offset, _))) => OffsetResult { error: ErrorCode::None, offset, timestamp: max_ms },
                Ok(None) => OffsetResult { error: ErrorCode::None, offset: -1, timestamp: -1 },
                Err(err) => OffsetResult { error: log_error_code(&err), offset: -1, timestamp: -1 },
            },
        },
        ts if ts < 0 => OffsetResult { error: ErrorCode::InvalidRequest, offset: -1, timestamp: -1 },
        ts => match log.record_for_timestamp(ts).await {
            Ok(Some((offset, timestamp))) => OffsetResult { error: ErrorCode::None, offset, timestamp },
            Ok(None) => OffsetResult { error: ErrorCode::None, offset: -1, timestamp: -1 },
            Err(err) => OffsetResult { error: log_error_code(&err), offset: -1, timestamp: -1 },
        },
    }
}

/// Configs as a map for the catalog, refusing duplicates.
pub(crate) fn config_map(entries: &[(String, String)]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (key, value) in entries {
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(format!("config {key:?} given twice"));
        }
    }
    Ok(map)
}

/// Splits a partition's records into whole batches without copying.
pub(crate) fn split_into_batches(mut records: BytesMut) -> Result<Vec<BytesMut>, Outcome> {
    let mut lengths = Vec::new();
    for span in spate_format::batch::split_batches(&records) {
        match span {
            Ok(span) => lengths.push(span.range.len()),
            Err(err) => return Err(Outcome::err(ErrorCode::CorruptMessage, err.to_string())),
        }
    }
    let batches: Vec<BytesMut> = lengths.into_iter().map(|len| records.split_to(len)).collect();
    assert!(records.is_empty(), "split_batches covers the buffer or fails");
    Ok(batches)
}
