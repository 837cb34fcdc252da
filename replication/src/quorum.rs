//! The running controller node: raft-rs's RawNode on a dedicated std thread,
//! its log on disk, the transport to the other voters, and the public handle.
//!
//! Everything that changes state happens on the node's thread, in order:
//! Raft messages, ticks, requests, heartbeats, applying committed entries.
//! Handles talk to it through a channel and read the applied image from an
//! ArcSwap without locks.
//!
//! Requests. The origin node gives every request an id (node, incarnation,
//! seq) and sends it to the Raft leader (or decides it itself when it is the
//! leader), again after RESEND_AFTER_TICKS or a leader change, until
//! request_timeout_ms. The leader decides against its image of everything
//! it has proposed (so concurrent requests never decide on stale state),
//! proposes one entry holding the request id and all the decision's records
//! (applied atomically), and replies only with refusals. Success reaches the
//! origin through the log itself: when the origin applies an entry carrying
//! its request id it answers the caller, after publishing the image, so the
//! caller's image() already shows the change. A leader remembers the ids it
//! proposed this term and every node the last APPLIED_REQUEST_IDS applied
//! ids, so a resend is never decided twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::channel::{mpsc as fmpsc, oneshot};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};

use crate::acl::AclBinding;
use crate::controller::{self, BrokerEndpoints, BrokerRestart, ControllerError, ControllerRequest, ControllerResponse};
use crate::limits::{
    APPLIED_REQUEST_IDS, CLUSTER_SECRET_BYTES, DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS, DEFAULT_BROKER_SESSION_TIMEOUT_MS,
    DEFAULT_REQUEST_TIMEOUT_MS, DEFAULT_SNAPSHOT_INTERVAL_BYTES, DEFAULT_SNAPSHOT_INTERVAL_ENTRIES, DEFAULT_TICK_MS,
    ELECTION_TICK, HEARTBEAT_TICK, MAX_INFLIGHT_MSGS, MAX_RAFT_MSG_BYTES, RESEND_AFTER_TICKS, SNAPSHOT_BYTES_MAX,
};
use crate::log_store::LogStore;
use crate::metadata::{
    BrokerImage, MetadataImage, MetadataRecord, QuotaEntityPart, ScramCredential, ScramMechanism, TopicImage,
};
use crate::storage::{self, DiskStorage, Recovered, RepairNeed};
use crate::transport::{self, Control, Deliver, Inbound, Transport};

#[derive(Clone, Debug)]
pub struct QuorumConfig {
    /// This node's id (>= 1); its Raft id is the same number.
    pub node_id: i32,
    /// Every controller voter with its controller address, this node
    /// included. Empty or only this node: a single-node cluster, no network.
    pub voters: Vec<(i32, SocketAddr)>,
    /// Where the metadata log lives (the broker passes `<data dir>/metadata`).
    pub data_dir: PathBuf,
    /// Raft's tick; elections take 10-20 ticks, leader heartbeats every 2.
    pub tick_ms: u64,
    /// How often this broker tells the active controller it is alive.
    pub broker_heartbeat_interval_ms: u64,
    /// A broker silent this long is fenced and loses its leaderships.
    pub broker_session_timeout_ms: u64,
    /// How long request() keeps trying to reach an active controller.
    pub request_timeout_ms: u64,
    /// Snapshot the image after this many applied entries...
    pub snapshot_interval_entries: u64,
    /// ... or once the log file has grown by this many bytes.
    pub snapshot_interval_bytes: u64,
    /// How this broker's previous process ended, for its registration
    /// (KIP-966); the default is a clean stop.
    pub restart: BrokerRestart,
    /// Mutual TLS between the voters (the controller listener is SSL);
    /// None: plaintext, open to whoever reaches the port.
    pub tls: Option<crate::transport::TransportTls>,
}

impl QuorumConfig {
    /// A config with the default timings.
    pub fn new(node_id: i32, voters: Vec<(i32, SocketAddr)>, data_dir: PathBuf) -> QuorumConfig {
        QuorumConfig {
            node_id,
            voters,
            data_dir,
            tick_ms: DEFAULT_TICK_MS,
            broker_heartbeat_interval_ms: DEFAULT_BROKER_HEARTBEAT_INTERVAL_MS,
            broker_session_timeout_ms: DEFAULT_BROKER_SESSION_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            snapshot_interval_entries: DEFAULT_SNAPSHOT_INTERVAL_ENTRIES,
            snapshot_interval_bytes: DEFAULT_SNAPSHOT_INTERVAL_BYTES,
            restart: BrokerRestart::default(),
            tls: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumStatus {
    pub node_id: i32,
    /// The Raft leader (active controller), -1 unknown.
    pub leader_id: i32,
    pub term: u64,
    pub voters: Vec<i32>,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Index of the latest snapshot: the log on disk starts after it.
    pub snapshot_index: u64,
    /// The log was damaged and is not yet repaired from a leader: this
    /// node neither votes nor campaigns.
    pub repairing: bool,
    /// Vote and pre-vote requests ignored while repairing.
    pub votes_refused: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("invalid controller config: {0}")]
    Config(String),
    #[error("metadata storage: {0}")]
    Storage(#[from] std::io::Error),
    /// A record in the middle of the metadata log fails its checksum (or
    /// length) and valid records follow it: synced data was damaged, and
    /// what it held may have been committed. A node with peers repairs it
    /// from the leader; a single node cannot, and refuses to start.
    #[error(
        "metadata log {} is damaged at byte {position_bytes} (valid records follow the bad one, \
         up to index {index_max}); no peer can repair it: restore the directory, or cut the file at \
         byte {position_bytes} to accept losing what followed",
        path.display()
    )]
    LogDamaged { path: PathBuf, position_bytes: u64, index_max: u64 },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// Identifies a request across resends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct RequestId {
    node_id: i32,
    incarnation: u64,
    seq: u64,
}

/// The data of a metadata snapshot (JSON): the replicated part of the image
/// and the request ids applied so far, so that a resend is still answered
/// by its entry after a restart from the snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    brokers: BTreeMap<i32, BrokerImage>,
    topics: BTreeMap<String, TopicImage>,
    next_producer_id: i64,
    applied_ids: Vec<RequestId>,
    /// Absent in snapshots written before the secret existed.
    #[serde(default)]
    cluster_secret_hex: Option<String>,
    /// As a list (JSON keys are strings). Absent in older snapshots.
    #[serde(default)]
    client_quotas: Vec<(Vec<QuotaEntityPart>, BTreeMap<String, String>)>,
    /// Absent in snapshots written before SCRAM: none.
    #[serde(default)]
    scram_credentials: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
    /// Absent in snapshots written before ACLs: none.
    #[serde(default)]
    acls: BTreeSet<AclBinding>,
    #[serde(default)]
    acls_version: u64,
}

/// The image (at the snapshot's index) and applied request ids in a snapshot.
fn decode_snapshot_data(snap: &Snapshot) -> Result<(MetadataImage, Vec<RequestId>), String> {
    let data: SnapshotData = serde_json::from_slice(&snap.data).map_err(|e| e.to_string())?;
    let image = MetadataImage {
        brokers: data.brokers,
        topics: data.topics,
        next_producer_id: data.next_producer_id,
        cluster_secret_hex: data.cluster_secret_hex,
        client_quotas: data.client_quotas.into_iter().collect(),
        scram_credentials: data.scram_credentials,
        acls: data.acls,
        acls_version: data.acls_version,
        applied_index: snap.get_metadata().index,
        controller_id: -1,
    };
    Ok((image, data.applied_ids))
}

/// What a Raft entry holds: one decision's records, applied together, and
/// the request that caused it (none for heartbeats and failures).
#[derive(Debug, Serialize, Deserialize)]
struct EntryPayload {
    origin: Option<RequestId>,
    records: Vec<MetadataRecord>,
}

type Reply = oneshot::Sender<Result<ControllerResponse, ControllerError>>;

enum Event {
    Inbound(Inbound),
    Request { request: ControllerRequest, reply: Reply },
    Shutdown,
}

#[derive(Debug)]
struct Shared {
    image: ArcSwap<MetadataImage>,
    status: ArcSwap<QuorumStatus>,
    subscribers: Mutex<Vec<fmpsc::UnboundedSender<Arc<MetadataImage>>>>,
}

#[derive(Debug)]
struct Inner {
    node_id: i32,
    /// This process's incarnation, as its heartbeats register it.
    incarnation: u64,
    tx: Mutex<Option<mpsc::Sender<Event>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Inner {
    fn send(&self, ev: Event) -> bool {
        match self.tx.lock() {
            Ok(tx) => tx.as_ref().is_some_and(|tx| tx.send(ev).is_ok()),
            Err(_) => false,
        }
    }

    fn shutdown(&self) {
        let tx = self.tx.lock().ok().and_then(|mut t| t.take());
        if let Some(tx) = tx {
            let _ = tx.send(Event::Shutdown);
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread
            && t.thread().id() != thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A handle on this process's controller node. Cheap to clone; Send + Sync.
#[derive(Clone, Debug)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl Controller {
    /// Replay the metadata log, bind this node's voter address (if there are
    /// other voters), and start the node's threads. This broker registers
    /// through its own heartbeats.
    pub fn start(config: QuorumConfig, endpoints: BrokerEndpoints) -> Result<Controller, QuorumError> {
        let node_id = config.node_id;
        if node_id < 1 {
            return Err(QuorumError::Config(format!("node id {node_id} < 1")));
        }
        let mut voter_ids: Vec<i32> = config.voters.iter().map(|v| v.0).collect();
        voter_ids.sort_unstable();
        voter_ids.dedup();
        if voter_ids.len() != config.voters.len() || voter_ids.iter().any(|v| *v < 1) {
            return Err(QuorumError::Config("voter ids must be unique and >= 1".into()));
        }
        if voter_ids.is_empty() {
            voter_ids.push(node_id);
        }
        if !voter_ids.contains(&node_id) {
            return Err(QuorumError::Config(format!("node {node_id} is not a voter")));
        }
        if config.tick_ms == 0 {
            return Err(QuorumError::Config("tick_ms must be > 0".into()));
        }
        let single = voter_ids.len() == 1;

        let (mut disk, recovered) = DiskStorage::open(&config.data_dir)?;
        let conf_state = ConfState::from((voter_ids.iter().map(|v| *v as u64).collect::<Vec<_>>(), vec![]));
        let Recovery { store, repair, image, applied_ids } =
            recover(node_id, single, &mut disk, recovered, conf_state)?;
        let hs = store.hard_state().clone();

        let raft_config = raft::Config {
            id: node_id as u64,
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
            check_quorum: true,
            pre_vote: true,
            applied: hs.commit,
            max_size_per_msg: MAX_RAFT_MSG_BYTES,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            ..Default::default()
        };
        raft_config.validate()?;
        let mut raw = RawNode::new(&raft_config, store, &crate::raft_log::logger(node_id))?;
        if single {
            // A cluster of one needs no election timeout to pass.
            raw.campaign()?;
        }

        let shared = Arc::new(Shared {
            image: ArcSwap::from_pointee(MetadataImage::default()),
            status: ArcSwap::from_pointee(QuorumStatus {
                node_id,
                leader_id: -1,
                term: hs.term,
                voters: voter_ids.clone(),
                committed_index: hs.commit,
                applied_index: 0,
                snapshot_index: 0,
                repairing: false,
                votes_refused: 0,
            }),
            subscribers: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel();
        let incarnation = random_u64();
        let mut node = Node {
            id: node_id,
            incarnation,
            endpoints,
            restart: config.restart,
            voters: voter_ids,
            raw,
            disk,
            transport: None,
            applied: image,
            applied_ids: HashSet::new(),
            applied_order: VecDeque::new(),
            active: None,
            pending: BTreeMap::new(),
            next_seq: 1,
            ticks: 0,
            tick: Duration::from_millis(config.tick_ms),
            heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            last_heartbeat: None,
            published: (u64::MAX, i32::MIN),
            resolved: Vec::new(),
            failed: None,
            repair,
            snapshot_interval_entries: config.snapshot_interval_entries.max(1),
            snapshot_interval_bytes: config.snapshot_interval_bytes,
            snapshot_retry_index: 0,
            snapshots_sent: Vec::new(),
            votes_refused: 0,
            peer_incarnations: HashMap::new(),
            shared: shared.clone(),
        };
        node.remember_applied_ids(applied_ids);
        // The image is right before any network I/O.
        let first = node.raw.store().snapshot_index() + 1;
        let committed: Vec<Entry> =
            node.raw.store().entries().iter().take_while(|e| e.index <= hs.commit).cloned().collect();
        debug_assert!(committed.first().is_none_or(|e| e.index == first));
        node.apply_entries(committed);
        node.publish();

        if !single {
            let addr = config
                .voters
                .iter()
                .find(|v| v.0 == node_id)
                .map(|v| v.1)
                .ok_or_else(|| QuorumError::Config("no address for this node".into()))?;
            let peers: Vec<_> = config.voters.iter().copied().filter(|v| v.0 != node_id).collect();
            let inbound_tx = tx.clone();
            let deliver: Deliver = Arc::new(move |m| inbound_tx.send(Event::Inbound(m)).is_ok());
            node.transport = Some(Transport::start(node_id, addr, &peers, deliver, config.tls.clone())?);
        }
        let thread = thread::Builder::new().name(format!("controller-{node_id}")).spawn(move || node.run(rx))?;
        Ok(Controller {
            inner: Arc::new(Inner {
                node_id,
                incarnation,
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                shared,
            }),
        })
    }

    /// The latest applied metadata.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.inner.shared.image.load_full()
    }

    /// The current image at once, then each newly applied one (one per
    /// batch of committed entries, or a change of active controller).
    pub fn subscribe(&self) -> fmpsc::UnboundedReceiver<Arc<MetadataImage>> {
        let (tx, rx) = fmpsc::unbounded();
        let _ = tx.unbounded_send(self.image());
        if let Ok(mut subs) = self.inner.shared.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    /// Send a request to the active controller. Resolves once the resulting
    /// records are committed and applied on this node, with a refusal, or
    /// with NotController after request_timeout_ms without an answer.
    pub fn request(
        &self,
        request: ControllerRequest,
    ) -> impl Future<Output = Result<ControllerResponse, ControllerError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.inner.send(Event::Request { request, reply });
        async move {
            if !sent {
                return Err(ControllerError::Shutdown);
            }
            rx.await.unwrap_or(Err(ControllerError::Shutdown))
        }
    }

    pub fn status(&self) -> QuorumStatus {
        QuorumStatus::clone(&self.inner.shared.status.load())
    }

    pub fn node_id(&self) -> i32 {
        self.inner.node_id
    }

    /// This process's incarnation: the broker sees itself registered (as
    /// this process, not an earlier one) once the image's entry carries it.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Stop the threads and close the sockets. Idempotent; blocks until the
    /// node's threads have ended (briefly: at most a connect timeout).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

/// The node's starting point, from what was on disk.
struct Recovery {
    store: LogStore,
    /// Some: the log was damaged and the node must not vote or campaign
    /// until a leader has given it back what it may have lost.
    repair: Option<RepairNeed>,
    /// The snapshot's image (or an empty one), before the log is replayed.
    image: MetadataImage,
    applied_ids: Vec<RequestId>,
}

/// Decide how a node starts from what `DiskStorage::open` found. A damaged
/// middle of the log is kept (hard-linked aside) and the log rewritten to
/// the entries before the damage after a repair marker; a single node, which
/// no peer can repair, refuses to start instead.
fn recover(
    node_id: i32,
    single: bool,
    disk: &mut DiskStorage,
    mut recovered: Recovered,
    conf_state: ConfState,
) -> Result<Recovery, QuorumError> {
    let (snap_index, snap_term) = recovered.snapshot_index_term();
    let (last_index, last_term) = recovered.last_index_term();
    if recovered.cut_bytes > 0 {
        tracing::warn!(node_id, cut_bytes = recovered.cut_bytes, last_index, "metadata log tail was cut");
    }
    let mut repair = recovered.repair;
    let mut rewrite = recovered.discarded;
    if let Some(d) = recovered.damage.take() {
        // Every ack this node sent went out under a term no later than the
        // one in its hard state (persisted before the acks).
        let need = RepairNeed { index_max: d.index_max, term_max: d.term_max.max(recovered.hard_state.term) };
        if single && !need.met_by(last_index, last_term) {
            return Err(QuorumError::LogDamaged {
                path: d.path,
                position_bytes: d.position_bytes,
                index_max: d.index_max,
            });
        }
        let kept = disk.preserve_damaged_log()?;
        tracing::error!(
            node_id,
            path = %d.path.display(),
            position_bytes = d.position_bytes,
            index_max = d.index_max,
            kept_as = %kept.display(),
            last_index,
            "metadata log damaged in the middle: it restarts from the entries before the damage and \
             neither votes nor campaigns until the leader has repaired it"
        );
        repair = RepairNeed::merge(repair, Some(need));
        rewrite = true;
    }
    let repair = repair.filter(|r| !r.met_by(last_index, last_term));
    if single && let Some(r) = repair {
        return Err(QuorumError::Config(format!(
            "metadata log needs repair up to index {} (it was damaged) and this node has no peer",
            r.index_max
        )));
    }
    if rewrite {
        disk.rewrite_log(&recovered.entries, repair)?;
    }
    let mut hs = recovered.hard_state;
    if repair.is_some() {
        // Entries kept from a damaged log may be ones a lost record had
        // replaced: apply none of them until the leader confirms them.
        hs.commit = snap_index;
    }
    if hs.commit > last_index {
        // Only a lost log can do this (the commit index is persisted after
        // the entries): the leader will send the entries again.
        tracing::error!(node_id, commit = hs.commit, last_index, "metadata log shorter than its commit index");
        hs.commit = last_index;
    }
    // raft-rs counts the snapshot as committed.
    hs.commit = hs.commit.max(snap_index);
    hs.term = hs.term.max(snap_term);
    let (image, applied_ids) = match &recovered.snapshot {
        Some(snap) => decode_snapshot_data(snap).map_err(|e| {
            QuorumError::Storage(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("metadata snapshot data: {e}"),
            ))
        })?,
        None => (MetadataImage::default(), Vec::new()),
    };
    let mut store = LogStore::new(conf_state, recovered.snapshot, recovered.entries);
    store.set_hard_state(hs);
    Ok(Recovery { store, repair, image, applied_ids })
}

/// The committed metadata in `data_dir`, read without starting a node (no
/// Raft, no network, no write): for tools and tests. The latest snapshot
/// plus the log up to the hard state's commit index. A damaged log (see
/// `QuorumError::LogDamaged`) is an error; a log still waiting for repair
/// gives the image of its snapshot.
pub fn read_image(data_dir: &Path) -> Result<MetadataImage, QuorumError> {
    image_of(storage::load(data_dir)?)
}

/// The committed image in what `storage::load` read (`read_image`'s work
/// after the files are read, apart so the fuzz target reaches it).
pub(crate) fn image_of(recovered: storage::Recovered) -> Result<MetadataImage, QuorumError> {
    if let Some(d) = recovered.damage {
        return Err(QuorumError::LogDamaged { path: d.path, position_bytes: d.position_bytes, index_max: d.index_max });
    }
    let (last_index, last_term) = recovered.last_index_term();
    let repaired = recovered.repair.is_none_or(|r| r.met_by(last_index, last_term));
    let (mut image, _) = match &recovered.snapshot {
        Some(snap) => decode_snapshot_data(snap).map_err(|e| {
            QuorumError::Storage(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot data: {e}")))
        })?,
        None => (MetadataImage::default(), Vec::new()),
    };
    let commit = if repaired { recovered.hard_state.commit } else { 0 };
    for e in recovered.entries.iter().take_while(|e| e.index <= commit) {
        if e.get_entry_type() == EntryType::EntryNormal
            && !e.data.is_empty()
            && let Ok(payload) = serde_json::from_slice::<EntryPayload>(&e.data)
        {
            for r in &payload.records {
                image.apply(r);
            }
        }
        image.applied_index = e.index;
    }
    Ok(image)
}

/// A random u64 from std's randomly keyed SipHash, the clock and a counter:
/// unique per call, which is all incarnations and topic ids need (not a
/// secret).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish().max(1)
}

fn random_topic_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// A request waiting for its answer on its origin node.
struct Pending {
    request: ControllerRequest,
    reply: Reply,
    deadline: Instant,
    /// The leader it was last sent to (-1: not yet) and when (in ticks).
    sent_to: i32,
    sent_at_tick: u64,
}

/// State of the active controller: this node leads and has applied every
/// entry of earlier terms.
struct Active {
    term: u64,
    /// The applied image plus every record proposed in this term.
    image: MetadataImage,
    last_heard: HashMap<i32, Instant>,
    proposed: HashSet<RequestId>,
}

struct Node {
    id: i32,
    incarnation: u64,
    endpoints: BrokerEndpoints,
    /// How this broker's previous process ended, sent with every heartbeat.
    restart: BrokerRestart,
    voters: Vec<i32>,
    raw: RawNode<LogStore>,
    disk: DiskStorage,
    transport: Option<Transport>,
    applied: MetadataImage,
    applied_ids: HashSet<RequestId>,
    applied_order: VecDeque<RequestId>,
    active: Option<Active>,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    ticks: u64,
    tick: Duration,
    heartbeat_interval: Duration,
    session_timeout: Duration,
    request_timeout: Duration,
    last_heartbeat: Option<Instant>,
    /// (applied index, controller id) last published.
    published: (u64, i32),
    /// Answers to send once the image that shows them is published.
    resolved: Vec<(Reply, Result<ControllerResponse, ControllerError>)>,
    /// A storage error stops the node for good (a failed fsync cannot be
    /// retried honestly).
    failed: Option<String>,
    /// Some while the log is not yet repaired after damage: the node then
    /// neither ticks (so never campaigns) nor answers vote requests.
    repair: Option<RepairNeed>,
    snapshot_interval_entries: u64,
    snapshot_interval_bytes: u64,
    /// A snapshot too large to write is retried only from this index on.
    snapshot_retry_index: u64,
    /// Peers sent a snapshot in this ready, reported to raft-rs after it.
    snapshots_sent: Vec<u64>,
    votes_refused: u64,
    /// The incarnation each peer last announced in its heartbeat.
    peer_incarnations: HashMap<i32, u64>,
    shared: Arc<Shared>,
}

impl Node {
    fn run(mut self, rx: mpsc::Receiver<Event>) {
        let mut next_tick = Instant::now() + self.tick;
        'outer: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    if !self.handle(ev) {
                        break;
                    }
                    while let Ok(ev) = rx.try_recv() {
                        if !self.handle(ev) {
                            break 'outer;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.failed.is_some() {
                continue;
            }
            let now = Instant::now();
            if now >= next_tick {
                // A node with a damaged log must not campaign: with no
                // ticks its election timeout never passes.
                if self.repair.is_none() {
                    self.raw.tick();
                }
                self.ticks += 1;
                next_tick += self.tick;
                if next_tick < now {
                    next_tick = now + self.tick;
                }
                self.on_tick(now);
            }
            self.on_ready();
            self.maintain_role();
            self.on_ready();
            self.publish();
        }
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(ControllerError::Shutdown));
        }
        if let Some(mut t) = self.transport.take() {
            t.shutdown();
        }
        if let Ok(mut subs) = self.shared.subscribers.lock() {
            subs.clear();
        }
        tracing::info!(node_id = self.id, "controller stopped");
    }

    /// Handle one event; false to stop.
    fn handle(&mut self, ev: Event) -> bool {
        if let Some(msg) = &self.failed {
            match ev {
                Event::Request { reply, .. } => {
                    let _ = reply.send(Err(ControllerError::Storage(msg.clone())));
                }
                Event::Shutdown => return false,
                Event::Inbound(_) => {}
            }
            return true;
        }
        match ev {
            Event::Shutdown => return false,
            Event::Inbound(Inbound::Raft(mut m)) => {
                if m.get_msg_type() == MessageType::MsgHeartbeat {
                    // A leader quotes the commit index up to what it thinks
                    // we hold; after a cut tail or damage we may hold less,
                    // and raft-rs would panic committing past our log. While
                    // repairing, only appends (which check the log matches)
                    // may move the commit index.
                    let log = &self.raw.raft.raft_log;
                    let limit = if self.repair.is_some() { log.committed } else { log.last_index() };
                    m.commit = m.commit.min(limit);
                }
                if self.repair.is_some() && refused_while_repairing(m.get_msg_type()) {
                    tracing::debug!(node_id = self.id, from = m.from, kind = ?m.get_msg_type(), "log under repair: no vote");
                    self.votes_refused += 1;
                    return true;
                }
                if self.voters.contains(&(m.from as i32))
                    && let Err(e) = self.raw.step(*m)
                {
                    tracing::debug!(node_id = self.id, error = %e, "raft step");
                }
            }
            Event::Inbound(Inbound::Control(c)) => self.on_control(c),
            Event::Request { request, reply } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.pending.insert(
                    seq,
                    Pending {
                        request,
                        reply,
                        deadline: Instant::now() + self.request_timeout,
                        sent_to: -1,
                        sent_at_tick: 0,
                    },
                );
                self.try_send(seq);
            }
        }
        true
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Forward { from, incarnation, seq, request } => {
                let id = RequestId { node_id: from, incarnation, seq };
                if let Some(Err(error)) = self.decide(id, &request) {
                    self.send_control(from, &Control::ForwardReply { incarnation, seq, error });
                }
            }
            Control::ForwardReply { incarnation, seq, error } => {
                if incarnation == self.incarnation
                    && let Some(p) = self.pending.remove(&seq)
                {
                    let _ = p.reply.send(Err(error));
                }
            }
            Control::Heartbeat { node_id, incarnation, endpoints, restart } => {
                self.note_incarnation(node_id, incarnation);
                self.on_heartbeat(node_id, incarnation, &endpoints, restart)
            }
        }
    }

    /// A peer that restarted may have lost the end of its log (a cut tail,
    /// or damage): what this leader believes it holds is then too high, and
    /// raft-rs (Progress::maybe_decr_to) ignores a rejection at or below
    /// that index while replicating, so the peer could wait forever for what
    /// it lacks. A new incarnation starts its replication over with a probe.
    /// Lowering `matched` only delays commits, never hastens one.
    fn note_incarnation(&mut self, node_id: i32, incarnation: u64) {
        let previous = self.peer_incarnations.insert(node_id, incarnation);
        if previous == Some(incarnation) || node_id == self.id || self.raw.raft.state != StateRole::Leader {
            return;
        }
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(node_id as u64) {
            pr.become_probe();
            pr.matched = 0;
            tracing::info!(node_id = self.id, peer = node_id, "peer restarted: probing its log again");
        }
    }

    fn leader_id(&self) -> i32 {
        self.raw.raft.leader_id as i32
    }

    fn send_control(&self, to: i32, c: &Control) {
        if let (Some(t), Some(frame)) = (&self.transport, transport::encode_control(c)) {
            t.send(to, frame);
        }
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        let Some(t) = &self.transport else {
            return;
        };
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(m.to);
            }
            if let Some(frame) = transport::encode_raft(&m) {
                t.send(m.to as i32, frame);
            }
        }
    }

    /// Send (or decide locally) a pending request if it is due.
    fn try_send(&mut self, seq: u64) {
        // This broker's own registration comes first: a request right after
        // start (say, a topic of replication factor 1 on a single node)
        // must not see a cluster without it.
        let registered = self.applied.brokers.get(&self.id).is_some_and(|b| b.incarnation == self.incarnation);
        let leader = self.leader_id();
        let Some(p) = self.pending.get(&seq) else {
            return;
        };
        if !registered || leader <= 0 {
            return;
        }
        if p.sent_to == leader && self.ticks < p.sent_at_tick + RESEND_AFTER_TICKS {
            return;
        }
        let id = RequestId { node_id: self.id, incarnation: self.incarnation, seq };
        let request = p.request.clone();
        if leader == self.id {
            match self.decide(id, &request) {
                None => return, // not active yet: next tick
                Some(Err(e)) => {
                    if let Some(p) = self.pending.remove(&seq) {
                        let _ = p.reply.send(Err(e));
                    }
                    return;
                }
                Some(Ok(())) => {}
            }
        } else {
            self.send_control(leader, &Control::Forward { from: self.id, incarnation: self.incarnation, seq, request });
        }
        if let Some(p) = self.pending.get_mut(&seq) {
            p.sent_to = leader;
            p.sent_at_tick = self.ticks;
        }
    }

    /// The active controller decides a request and proposes its records.
    /// None: not the active controller (the origin will retry).
    fn decide(&mut self, id: RequestId, request: &ControllerRequest) -> Option<Result<(), ControllerError>> {
        if self.raw.raft.state != StateRole::Leader {
            return None;
        }
        let active = self.active.as_ref()?;
        if self.applied_ids.contains(&id) || active.proposed.contains(&id) {
            // A resend of a request already decided: its entry answers it.
            return Some(Ok(()));
        }
        let img = &active.image;
        let records = match request {
            ControllerRequest::CreateTopic { name, partitions, replication_factor, configs } => {
                controller::create_topic(img, name, *partitions, *replication_factor, configs, random_topic_id())
            }
            ControllerRequest::DeleteTopic { name } => controller::delete_topic(img, name),
            ControllerRequest::CreatePartitions { name, count } => controller::create_partitions(img, name, *count),
            ControllerRequest::ElectLeader { topic, partition, unclean } => {
                controller::elect_leader(img, topic, *partition, *unclean)
            }
            ControllerRequest::AlterTopicConfigs { name, configs } => {
                controller::alter_topic_configs(img, name, configs)
            }
            ControllerRequest::AlterClientQuotas { entity, changes } => {
                controller::alter_client_quotas(img, entity, changes)
            }
            ControllerRequest::AlterPartition {
                topic,
                partition,
                from_node,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => controller::alter_partition(
                img,
                topic,
                *partition,
                *from_node,
                *leader_epoch,
                *partition_epoch,
                new_isr,
            )
            .map(|(records, _)| records),
            ControllerRequest::AllocateProducerIds { count } => {
                controller::allocate_producer_ids(img, id.node_id, *count)
            }
            ControllerRequest::ReplicaOffline { topic, partition } => {
                controller::replica_offline(img, topic, *partition, id.node_id)
            }
            ControllerRequest::AlterScramCredentials { user, upsertions, deletions } => {
                controller::alter_scram_credentials(img, user, upsertions, deletions)
            }
            ControllerRequest::CreateAcls { acls } => controller::create_acls(img, acls),
            ControllerRequest::DeleteAcls { filters } => controller::delete_acls(filters),
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        // A dropped proposal (we just lost the leadership within this batch
        // of events) is not the caller's error: the origin resends it to the
        // next leader.
        self.propose(Some(id), records).ok()?;
        if let Some(a) = self.active.as_mut() {
            a.proposed.insert(id);
        }
        Some(Ok(()))
    }

    /// Propose one entry; on success the active image includes it.
    fn propose(&mut self, origin: Option<RequestId>, records: Vec<MetadataRecord>) -> Result<(), ControllerError> {
        if records.is_empty() {
            return Ok(());
        }
        let payload = EntryPayload { origin, records };
        let data = serde_json::to_vec(&payload).map_err(|e| ControllerError::InvalidRequest(e.to_string()))?;
        if let Err(e) = self.raw.propose(vec![], data) {
            tracing::warn!(node_id = self.id, error = %e, "proposal dropped");
            return Err(ControllerError::NotController);
        }
        if let Some(a) = self.active.as_mut() {
            for r in &payload.records {
                debug_assert_eq!(controller::check_invariants(&a.image, r), Ok(()), "proposing {r:?}");
                a.image.apply(r);
            }
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, node_id: i32, incarnation: u64, endpoints: &BrokerEndpoints, restart: BrokerRestart) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        a.last_heard.insert(node_id, Instant::now());
        let records = controller::broker_heartbeat(&a.image, node_id, incarnation, endpoints, restart);
        if !records.is_empty() {
            tracing::info!(node_id = self.id, broker = node_id, incarnation, "broker registers or returns");
            let _ = self.propose(None, records);
        }
    }

    fn heartbeat_self(&mut self) {
        self.last_heartbeat = Some(Instant::now());
        let leader = self.leader_id();
        if self.active.is_some() {
            let endpoints = self.endpoints.clone();
            self.on_heartbeat(self.id, self.incarnation, &endpoints, self.restart);
        } else if leader > 0 && leader != self.id {
            self.send_control(
                leader,
                &Control::Heartbeat {
                    node_id: self.id,
                    incarnation: self.incarnation,
                    endpoints: self.endpoints.clone(),
                    restart: self.restart,
                },
            );
        }
    }

    /// Become (or stop being) the active controller.
    fn maintain_role(&mut self) {
        let leading = self.raw.raft.state == StateRole::Leader;
        let term = self.raw.raft.term;
        if !leading {
            if self.active.take().is_some() {
                tracing::info!(node_id = self.id, "no longer the active controller");
            }
            return;
        }
        if self.active.as_ref().is_some_and(|a| a.term == term) {
            return;
        }
        // Active once every entry of earlier terms is applied: the entry at
        // the applied index is of this term (the leader's first entry).
        let applied_term = self.raw.raft.raft_log.term(self.applied.applied_index).unwrap_or(0);
        if applied_term != term {
            return;
        }
        let now = Instant::now();
        tracing::info!(node_id = self.id, term, "active controller");
        self.active = Some(Active {
            term,
            image: self.applied.clone(),
            // Nobody is blamed for silence before we took over.
            last_heard: self.applied.brokers.keys().map(|b| (*b, now)).collect(),
            proposed: HashSet::new(),
        });
        self.heartbeat_self();
        let seqs: Vec<u64> = self.pending.keys().copied().collect();
        for seq in seqs {
            self.try_send(seq);
        }
    }

    /// The first active controller of a cluster commits its secret (see
    /// `MetadataRecord::ClusterSecret`); once in the image it never changes.
    fn ensure_cluster_secret(&mut self) {
        let Some(active) = self.active.as_ref() else { return };
        if active.image.cluster_secret_hex.is_some() {
            return;
        }
        let mut secret = [0u8; CLUSTER_SECRET_BYTES];
        if let Err(err) = getrandom::fill(&mut secret) {
            tracing::error!(node_id = self.id, "no randomness for the cluster secret: {err}");
            return;
        }
        let secret_hex = secret.iter().map(|b| format!("{b:02x}")).collect();
        let _ = self.propose(None, vec![MetadataRecord::ClusterSecret { secret_hex }]);
    }

    fn on_tick(&mut self, now: Instant) {
        self.ensure_cluster_secret();
        if self.last_heartbeat.is_none_or(|t| now.duration_since(t) >= self.heartbeat_interval) {
            self.heartbeat_self();
        }
        if let Some(a) = self.active.as_mut() {
            let timeout = self.session_timeout;
            let mut silent = Vec::new();
            for b in a.image.brokers.values() {
                if b.fenced || b.node_id == self.id {
                    continue;
                }
                let heard = *a.last_heard.entry(b.node_id).or_insert(now);
                if now.duration_since(heard) > timeout {
                    silent.push(b.node_id);
                }
            }
            for b in silent {
                let Some(a) = self.active.as_ref() else {
                    break;
                };
                let records = controller::broker_failure(&a.image, b);
                tracing::warn!(node_id = self.id, broker = b, "broker session timed out: fencing");
                let _ = self.propose(None, records);
            }
        }
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
        for seq in expired {
            if let Some(p) = self.pending.remove(&seq) {
                let _ = p.reply.send(Err(ControllerError::NotController));
            }
        }
        let seqs: Vec<u64> = self.pending.keys().copied().collect();
        for seq in seqs {
            self.try_send(seq);
        }
    }

    fn fail(&mut self, what: &str, e: std::io::Error) {
        let msg = format!("{what}: {e}");
        tracing::error!(node_id = self.id, error = %msg, "metadata storage failed: controller stops");
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(ControllerError::Storage(msg.clone())));
        }
        self.active = None;
        self.failed = Some(msg);
    }

    fn persist_hard_state(&mut self, hs: &HardState) -> bool {
        if let Err(e) = self.disk.set_hard_state(hs) {
            self.fail("write hard state", e);
            return false;
        }
        self.raw.mut_store().set_hard_state(hs.clone());
        true
    }

    fn on_ready(&mut self) {
        if self.failed.is_some() || !self.raw.has_ready() {
            return;
        }
        let mut rd = self.raw.ready();
        // A leader may send before it persists (Raft thesis 10.2.1).
        self.send_messages(rd.take_messages());
        if !rd.snapshot().is_empty() && !self.install_snapshot(rd.snapshot().clone()) {
            return;
        }
        let committed = rd.take_committed_entries();
        self.apply_entries(committed);
        if let Err(e) = self.disk.append(rd.entries()) {
            self.fail("append to the metadata log", e);
            return;
        }
        if let Err(e) = self.raw.mut_store().append(rd.entries()) {
            tracing::error!(node_id = self.id, error = %e, "memory log append");
        }
        if let Some(hs) = rd.hs() {
            let hs = hs.clone();
            if !self.persist_hard_state(&hs) {
                return;
            }
        }
        // Votes and append acknowledgements: only after the fsyncs above.
        self.send_messages(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.raw.store().hard_state().clone();
            hs.commit = commit;
            if !self.persist_hard_state(&hs) {
                return;
            }
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries());
        self.raw.advance_apply();
        // The transport cannot tell whether a snapshot arrived: reporting
        // it done makes raft-rs probe the follower at its next heartbeat,
        // and a follower still behind gets the snapshot again.
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, SnapshotStatus::Finish);
        }
        self.check_repaired();
        self.maybe_snapshot();
    }

    /// A snapshot from the leader: durable first (snapshot file, then the
    /// log emptied), then in memory and applied.
    fn install_snapshot(&mut self, snap: Snapshot) -> bool {
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        let (image, ids) = match decode_snapshot_data(&snap) {
            Ok(d) => d,
            Err(e) => {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                self.fail("decode the leader's snapshot", e);
                return false;
            }
        };
        tracing::info!(node_id = self.id, index, term, "installing the leader's metadata snapshot");
        if let Err(e) = self.disk.write_snapshot(&snap) {
            self.fail("write the metadata snapshot", e);
            return false;
        }
        let repair = self.repair.filter(|r| !r.met_by(index, term));
        if let Err(e) = self.disk.rewrite_log(&[], repair) {
            self.fail("rewrite the metadata log", e);
            return false;
        }
        self.raw.mut_store().apply_snapshot(snap);
        self.applied = image;
        self.applied_ids.clear();
        self.applied_order.clear();
        self.remember_applied_ids(ids);
        true
    }

    /// Snapshot the applied image and compact the log below it, every
    /// snapshot_interval_entries applied entries or snapshot_interval_bytes
    /// of log. Not while the log waits for repair: its rewrite would have to
    /// keep the repair marker, and it is short then anyway.
    fn maybe_snapshot(&mut self) {
        let applied = self.applied.applied_index;
        let snap_index = self.raw.store().snapshot_index();
        if self.repair.is_some()
            || self.failed.is_some()
            || applied <= snap_index
            || applied < self.snapshot_retry_index
        {
            return;
        }
        if applied - snap_index < self.snapshot_interval_entries
            && self.disk.log_bytes_appended() < self.snapshot_interval_bytes
        {
            return;
        }
        let Ok(term) = raft::Storage::term(self.raw.store(), applied) else {
            tracing::error!(node_id = self.id, applied, "applied entry missing from the log: no snapshot");
            return;
        };
        let data = SnapshotData {
            brokers: self.applied.brokers.clone(),
            topics: self.applied.topics.clone(),
            next_producer_id: self.applied.next_producer_id,
            applied_ids: self.applied_order.iter().copied().collect(),
            cluster_secret_hex: self.applied.cluster_secret_hex.clone(),
            client_quotas: self.applied.client_quotas.clone().into_iter().collect(),
            scram_credentials: self.applied.scram_credentials.clone(),
            acls: self.applied.acls.clone(),
            acls_version: self.applied.acls_version,
        };
        let data = match serde_json::to_vec(&data) {
            Ok(d) if d.len() < SNAPSHOT_BYTES_MAX - (4 << 10) => d,
            Ok(d) => {
                tracing::error!(
                    node_id = self.id,
                    bytes = d.len(),
                    "metadata image too large to snapshot: log keeps growing"
                );
                self.snapshot_retry_index = applied.saturating_add(self.snapshot_interval_entries);
                return;
            }
            Err(e) => {
                tracing::error!(node_id = self.id, error = %e, "encode metadata snapshot");
                self.snapshot_retry_index = applied.saturating_add(self.snapshot_interval_entries);
                return;
            }
        };
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.raw.store().conf_state().clone());
        // The snapshot is durable before the log loses what it covers.
        if let Err(e) = self.disk.write_snapshot(&snap) {
            self.fail("write the metadata snapshot", e);
            return;
        }
        self.raw.mut_store().compact_to(snap);
        let kept: Vec<Entry> = self.raw.store().entries().to_vec();
        if let Err(e) = self.disk.rewrite_log(&kept, None) {
            self.fail("compact the metadata log", e);
            return;
        }
        tracing::info!(
            node_id = self.id,
            index = applied,
            term,
            kept = kept.len(),
            "metadata snapshot written, log compacted"
        );
    }

    /// Votes and campaigns resume once the log holds again what the damage
    /// may have taken (see RepairNeed).
    fn check_repaired(&mut self) {
        let Some(need) = self.repair else {
            return;
        };
        let store = self.raw.store();
        if need.met_by(store.last_index(), store.last_term()) {
            tracing::info!(
                node_id = self.id,
                last_index = store.last_index(),
                last_term = store.last_term(),
                "metadata log repaired from the leader: voting again"
            );
            self.repair = None;
        }
    }

    fn remember_applied_ids(&mut self, ids: Vec<RequestId>) {
        for id in ids {
            self.remember_applied_id(id);
        }
    }

    fn remember_applied_id(&mut self, id: RequestId) {
        if self.applied_ids.insert(id) {
            self.applied_order.push_back(id);
            if self.applied_order.len() > APPLIED_REQUEST_IDS
                && let Some(old) = self.applied_order.pop_front()
            {
                self.applied_ids.remove(&old);
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                match serde_json::from_slice::<EntryPayload>(&e.data) {
                    Ok(payload) => self.apply_payload(payload),
                    // The same bytes fail the same way on every node.
                    Err(err) => {
                        tracing::error!(node_id = self.id, index = e.index, error = %err, "undecodable metadata entry skipped")
                    }
                }
            }
            self.applied.applied_index = e.index;
        }
    }

    fn apply_payload(&mut self, payload: EntryPayload) {
        for r in &payload.records {
            if let Err(violation) = controller::check_invariants(&self.applied, r) {
                tracing::error!(node_id = self.id, index = self.applied.applied_index + 1, %violation, "committed metadata record breaks a controller invariant");
            }
            self.applied.apply(r);
        }
        let Some(id) = payload.origin else {
            return;
        };
        self.remember_applied_id(id);
        if id.node_id != self.id || id.incarnation != self.incarnation {
            return;
        }
        let Some(p) = self.pending.remove(&id.seq) else {
            return;
        };
        let response = match &p.request {
            ControllerRequest::AlterPartition { topic, partition, .. }
            | ControllerRequest::ElectLeader { topic, partition, .. }
            | ControllerRequest::ReplicaOffline { topic, partition } => self
                .applied
                .partition(topic, *partition)
                .cloned()
                .map(ControllerResponse::Partition)
                .ok_or(ControllerError::UnknownTopicOrPartition),
            ControllerRequest::AllocateProducerIds { .. } => payload
                .records
                .iter()
                .find_map(|r| match r {
                    MetadataRecord::ProducerIdBlock { start, len, .. } => {
                        Some(ControllerResponse::ProducerIds { start: *start, len: *len })
                    }
                    _ => None,
                })
                .ok_or_else(|| ControllerError::InvalidRequest("no producer id block".into())),
            _ => Ok(ControllerResponse::Done),
        };
        self.resolved.push((p.reply, response));
    }

    /// Publish the image and status if they changed, then answer the
    /// requests the new image shows.
    fn publish(&mut self) {
        let leader = if self.raw.raft.leader_id == 0 { -1 } else { self.leader_id() };
        self.applied.controller_id = leader;
        if self.published != (self.applied.applied_index, leader) {
            self.published = (self.applied.applied_index, leader);
            let image = Arc::new(self.applied.clone());
            self.shared.image.store(image.clone());
            if let Ok(mut subs) = self.shared.subscribers.lock() {
                subs.retain(|s| s.unbounded_send(image.clone()).is_ok());
            }
        }
        let status = QuorumStatus {
            node_id: self.id,
            leader_id: leader,
            term: self.raw.raft.term,
            voters: self.voters.clone(),
            committed_index: self.raw.raft.raft_log.committed,
            applied_index: self.applied.applied_index,
            snapshot_index: self.raw.store().snapshot_index(),
            repairing: self.repair.is_some(),
            votes_refused: self.votes_refused,
        };
        if **self.shared.status.load() != status {
            self.shared.status.store(Arc::new(status));
        }
        for (reply, result) in self.resolved.drain(..) {
            let _ = reply.send(result);
        }
    }
}

/// Messages a node with a damaged log ignores: granting a vote (or a
/// pre-vote) could elect a leader that lacks entries this node had
/// acknowledged and lost, and a leader transfer would make it campaign.
fn refused_while_repairing(t: MessageType) -> bool {
    matches!(t, MessageType::MsgRequestVote | MessageType::MsgRequestPreVote | MessageType::MsgTimeoutNow)
}
