//! Transaction coordinators (issue 17), built like the group coordinators
//! (`group/`): a transactional id lives on the shard that owns partition
//! `group_partition(txn_id)` of `__transaction_state`, on the broker that
//! leads that partition. That shard's `Txns` holds the state of its ids
//! (`RefCell`, one executor); other shards reach it with `ShardOp::Txn`.
//!
//! Every state change is a record in that partition (`record.rs`),
//! appended and replicated to the in-sync replicas (acks=all, the topic is
//! `flush.ms=0`) before it is answered; while it is on its way the id is
//! `pending` and other requests on it get CONCURRENT_TRANSACTIONS, as in
//! Kafka, except AddPartitionsToTxn, which waits up to
//! `ADD_PARTITIONS_PARK_MS` for the previous transaction to complete
//! (`add_partitions`). The state machine itself is `state.rs`.
//!
//! Leadership follows the replica's role as groups do (`sync`, after every
//! metadata change): a partition whose replica starts leading replays its
//! whole log (requests get COORDINATOR_LOAD_IN_PROGRESS meanwhile), then
//! finishes every transaction it finds prepared (PrepareCommit or
//! PrepareAbort: the markers are written again, then the CompleteX
//! record); one that stops leading drops its ids (NOT_COORDINATOR).
//!
//! EndTxn: PrepareX persisted, then answered, then a marker written to
//! every partition of the transaction (`markers.rs`), then CompleteX
//! persisted. An Ongoing transaction past its timeout is aborted under a
//! bumped epoch, checked every `transaction_abort_check_interval_ms`.

pub(crate) mod guard;
mod markers;
pub(crate) mod record;
pub(crate) mod state;
mod verify;
pub(crate) use verify::{Ask, add_offsets_partition, verify};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use spate_engine::ReadBound;
use spate_flatbuf::group_partition;
use spate_flatbuf::proto::ErrorCode;

pub(crate) use self::markers::{marker_from_batch, write_marker_here};
use self::state::{EndStep, InitStep};
pub(crate) use self::state::{TxnError, TxnMeta, TxnState};
use crate::admin::ADMIN_SHARD;
use crate::catalog::{Catalog, TopicMeta};
use crate::deadline::Deadline;
use crate::group::{Tp, Write, written};
use crate::limits::{ADD_PARTITIONS_PARK_MS, TXN_PARKED_PER_ID_MAX, TXNS_PER_SHARD_MAX};
use crate::security::Principal;
use crate::shard::{Outcome, Shard, ShardOp};

pub(crate) use spate_flatbuf::TRANSACTION_STATE_TOPIC;

/// Kafka's transaction.state.log.replication.factor: up to this many
/// replicas, as many as there are brokers when it is created.
pub(crate) const TXN_TOPIC_REPLICATION_FACTOR: usize = 3;

/// Bytes read at a time while replaying a partition.
const LOAD_READ_BYTES: usize = 1 << 20;

/// A shard's transactional ids: those of the partitions of
/// `__transaction_state` that it owns and this broker leads.
#[derive(Debug, Default)]
pub(crate) struct Txns {
    txns: RefCell<HashMap<String, Entry>>,
    partitions: RefCell<HashMap<u32, Coordination>>,
    /// Numbers each leadership of a partition, so that a write or a load
    /// of an earlier one cannot touch a later one's state.
    terms: Cell<u64>,
    /// Connections for markers to partitions led by other brokers.
    peers: markers::MarkerPeers,
}

#[derive(Debug)]
struct Entry {
    /// The state as persisted; None while a new id's first record is on
    /// its way.
    meta: Option<TxnMeta>,
    /// A state change is being written (requests get
    /// CONCURRENT_TRANSACTIONS).
    pending: bool,
    /// AddPartitionsToTxn requests parked until the transaction before
    /// theirs completes (`park`): woken by every settled state change,
    /// dropped (and so woken) with the entry.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Entry {
    fn new(meta: Option<TxnMeta>) -> Entry {
        Entry { meta, pending: false, waiters: Vec::new() }
    }

    fn wake_parked(&mut self) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// A partition of `__transaction_state` whose replica here leads.
#[derive(Debug)]
struct Coordination {
    leader_epoch: i32,
    term: u64,
    load: Load,
}

#[derive(Debug)]
enum Load {
    Loading,
    Loaded,
    /// Replay failed (a damaged log): requests get NOT_COORDINATOR, and
    /// the broker's log says why.
    Failed,
}

/// Work for a transactional id's coordinator.
#[derive(Debug)]
pub(crate) enum TxnOp {
    Init {
        txn_id: String,
        timeout_ms: i32,
        /// KIP-360: the producer id and epoch the client had, if any.
        expected: Option<(i64, i16)>,
        principal: Principal,
        /// A new producer id, once the coordinator asked for one.
        fresh_producer_id: Option<i64>,
        reply: oneshot::Sender<Result<(i64, i16), TxnError>>,
    },
    AddPartitions {
        txn_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<Tp>,
        reply: oneshot::Sender<Result<(), TxnError>>,
    },
    End {
        txn_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        /// A transactions-v2 client (KIP-890 part 2): the transaction ends
        /// under the next epoch (`state::end`).
        bump_epoch: bool,
        /// A new producer id, once the coordinator asked for one (a v2
        /// end with the epochs exhausted), bound to this principal.
        fresh_producer_id: Option<i64>,
        principal: Principal,
        /// The producer id and epoch the producer goes on with.
        reply: oneshot::Sender<Result<(i64, i16), TxnError>>,
    },
    /// KIP-890 part 1, from a partition leader (`verify.rs`): are these
    /// partitions in the producer's ongoing transaction? Writes nothing.
    Verify {
        txn_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<Tp>,
        reply: oneshot::Sender<Result<(), TxnError>>,
    },
    Describe {
        txn_id: String,
        reply: oneshot::Sender<Result<Option<TxnMeta>, TxnError>>,
    },
    /// Every id this shard coordinates now.
    List {
        reply: oneshot::Sender<Vec<(String, TxnMeta)>>,
    },
}

/// The shard that coordinates `txn_id` on this broker, if
/// `__transaction_state` exists.
pub(crate) fn coordinator(shard: &Shard, txn_id: &str) -> Option<usize> {
    let catalog = shard.shared.catalog.load();
    let topic = catalog.topics.get(TRANSACTION_STATE_TOPIC)?;
    Some(shard.shared.owner(TRANSACTION_STATE_TOPIC, group_partition(txn_id, topic.partitions)))
}

/// Sends `op` to the coordinator shard of `txn_id`; false if there is none.
pub(crate) fn route(shard: &Rc<Shard>, txn_id: &str, op: TxnOp) -> bool {
    match coordinator(shard, txn_id) {
        Some(owner) => {
            shard.submit(owner, ShardOp::Txn(op));
            true
        }
        None => false,
    }
}

/// Sends `op` to the transactional id's coordinator shard and waits for
/// its answer (both front-ends' transaction APIs).
pub(crate) async fn call<T>(
    shard: &Rc<Shard>,
    txn_id: &str,
    op: impl FnOnce(oneshot::Sender<Result<T, TxnError>>) -> TxnOp,
) -> Result<T, TxnError> {
    let (reply, wait) = oneshot::channel();
    if !route(shard, txn_id, op(reply)) {
        return Err(TxnError::CoordinatorNotAvailable);
    }
    wait.await.unwrap_or(Err(TxnError::CoordinatorNotAvailable))
}

/// EndTxn at the transactional id's coordinator (both front-ends): the
/// producer id and epoch the producer goes on with.
pub(crate) async fn end_transaction(
    shard: &Rc<Shard>,
    txn_id: String,
    (producer_id, producer_epoch): (i64, i16),
    commit: bool,
    bump_epoch: bool,
    principal: Principal,
) -> Result<(i64, i16), TxnError> {
    call(shard, &txn_id.clone(), |reply| TxnOp::End {
        txn_id,
        producer_id,
        producer_epoch,
        commit,
        bump_epoch,
        fresh_producer_id: None,
        principal,
        reply,
    })
    .await
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether this shard coordinates `txn_id` now: (its partition, the term
/// of that leadership).
fn serving(shard: &Shard, catalog: &Catalog, txn_id: &str) -> Result<(u32, u64), TxnError> {
    let topic = catalog.topics.get(TRANSACTION_STATE_TOPIC).ok_or(TxnError::CoordinatorNotAvailable)?;
    let partition = group_partition(txn_id, topic.partitions);
    let replica = shard.replica(topic, partition).ok_or(TxnError::NotCoordinator)?;
    let leader_epoch = replica.check_leader(-1).map_err(|_| TxnError::NotCoordinator)?;
    match shard.txns.partitions.borrow().get(&partition) {
        Some(c) if c.leader_epoch == leader_epoch => match c.load {
            Load::Loaded => Ok((partition, c.term)),
            Load::Loading => Err(TxnError::CoordinatorLoadInProgress),
            Load::Failed => Err(TxnError::NotCoordinator),
        },
        // Leads, but the coordinator has not caught up with it yet.
        _ => Err(TxnError::CoordinatorLoadInProgress),
    }
}

fn is_current(shard: &Shard, partition: u32, term: u64) -> bool {
    shard.txns.partitions.borrow().get(&partition).is_some_and(|c| c.term == term && matches!(c.load, Load::Loaded))
}

/// The leader epoch of a partition's coordination (markers carry it as
/// the coordinator epoch), if it is still `term`.
fn coordinator_epoch(shard: &Shard, partition: u32, term: u64) -> Option<i32> {
    shard.txns.partitions.borrow().get(&partition).filter(|c| c.term == term).map(|c| c.leader_epoch)
}

/// Kafka's mapping of a failed coordinator write (TransactionStateManager).
fn write_error(outcome: &Outcome) -> TxnError {
    match outcome.error {
        ErrorCode::NotLeaderOrFollower | ErrorCode::StorageError => TxnError::NotCoordinator,
        _ => TxnError::CoordinatorNotAvailable,
    }
}

/// Runs an op on its coordinator: checks and the append now, the wait for
/// the in-sync replicas in a task.
pub(crate) fn execute(shard: &Rc<Shard>, op: TxnOp) {
    let catalog = shard.shared.catalog.load_full();
    match op {
        TxnOp::Init { txn_id, timeout_ms, expected, principal, fresh_producer_id, reply } => {
            init(shard, &catalog, txn_id, timeout_ms, expected, principal, fresh_producer_id, reply);
        }
        TxnOp::AddPartitions { txn_id, producer_id, producer_epoch, partitions, reply } => {
            let park_until = Instant::now() + Duration::from_millis(ADD_PARTITIONS_PARK_MS);
            add_partitions(shard, &catalog, txn_id, producer_id, producer_epoch, partitions, reply, park_until);
        }
        TxnOp::End { txn_id, producer_id, producer_epoch, commit, bump_epoch, fresh_producer_id, principal, reply } => {
            let step = serving(shard, &catalog, &txn_id).and_then(|(partition, term)| {
                let txns = shard.txns.txns.borrow();
                let entry = txns.get(&txn_id);
                let (current, pending) = (entry.and_then(|e| e.meta.as_ref()), entry.is_some_and(|e| e.pending));
                let step = state::end(
                    current,
                    pending,
                    producer_id,
                    producer_epoch,
                    commit,
                    bump_epoch,
                    fresh_producer_id,
                    now_ms(),
                )?;
                Ok((partition, term, step))
            });
            match step {
                Err(err) => drop(reply.send(Err(err))),
                Ok((_, _, EndStep::Done(continues_as))) => drop(reply.send(Ok(continues_as))),
                Ok((partition, term, EndStep::Prepare(next))) => {
                    prepare(shard, &catalog, txn_id, partition, term, next, reply)
                }
                Ok((_, _, EndStep::NeedProducerId)) => {
                    with_fresh_producer_id(shard, txn_id, principal, reply, move |txn_id, principal, fresh, reply| {
                        let fresh_producer_id = Some(fresh);
                        TxnOp::End {
                            txn_id,
                            producer_id,
                            producer_epoch,
                            commit,
                            bump_epoch,
                            fresh_producer_id,
                            principal,
                            reply,
                        }
                    });
                }
            }
        }
        TxnOp::Verify { txn_id, producer_id, producer_epoch, partitions, reply } => {
            let verified = serving(shard, &catalog, &txn_id).and_then(|_| {
                let txns = shard.txns.txns.borrow();
                state::verify(txns.get(&txn_id).and_then(|e| e.meta.as_ref()), producer_id, producer_epoch, &partitions)
            });
            let _ = reply.send(verified);
        }
        TxnOp::Describe { txn_id, reply } => {
            let described = serving(shard, &catalog, &txn_id)
                .map(|_| shard.txns.txns.borrow().get(&txn_id).and_then(|e| e.meta.clone()));
            let _ = reply.send(described);
        }
        TxnOp::List { reply } => {
            let listed = shard
                .txns
                .txns
                .borrow()
                .iter()
                .filter_map(|(id, e)| e.meta.clone().map(|meta| (id.clone(), meta)))
                .collect();
            let _ = reply.send(listed);
        }
    }
}

/// AddPartitionsToTxn (and AddOffsetsToTxn). One that meets the
/// previous transaction still completing (its markers and CompleteX on
/// their way, a few milliseconds after EndTxn was answered: the producer's
/// next transaction starts at once) is parked until that completes, up to
/// `park_until`, rather than answered CONCURRENT_TRANSACTIONS: the client
/// would back off (the Java client 20 ms) for what takes ~1-2 ms, which
/// cost a committing producer a fifth of its throughput under
/// durability=always (perf-reports/2026-12-07-transactions.md).
#[allow(clippy::too_many_arguments)]
fn add_partitions(
    shard: &Rc<Shard>,
    catalog: &Arc<Catalog>,
    txn_id: String,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<Tp>,
    reply: oneshot::Sender<Result<(), TxnError>>,
    park_until: Instant,
) {
    let step = serving(shard, catalog, &txn_id).and_then(|(partition, term)| {
        let txns = shard.txns.txns.borrow();
        let entry = txns.get(&txn_id);
        let (current, pending) = (entry.and_then(|e| e.meta.as_ref()), entry.is_some_and(|e| e.pending));
        let next = state::add_partitions(current, pending, producer_id, producer_epoch, &partitions, now_ms())?;
        Ok(next.map(|next| (partition, term, next)))
    });
    match step {
        Err(TxnError::ConcurrentTransactions) if Instant::now() < park_until => {
            let (wake, woken) = oneshot::channel();
            let parked = {
                let mut txns = shard.txns.txns.borrow_mut();
                match txns.get_mut(&txn_id) {
                    Some(entry) if entry.waiters.len() < TXN_PARKED_PER_ID_MAX => {
                        entry.waiters.push(wake);
                        true
                    }
                    _ => false,
                }
            };
            if !parked {
                let _ = reply.send(Err(TxnError::ConcurrentTransactions));
                return;
            }
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let timer = glommio::timer::sleep(park_until.saturating_duration_since(Instant::now()));
                futures::future::select(woken, Box::pin(timer)).await;
                // Woken by a state change (or the entry gone), or out of
                // time: look again with the coordinator's state as it is
                // now; past the deadline a CONCURRENT_TRANSACTIONS goes out.
                let catalog = shard.shared.catalog.load_full();
                add_partitions(&shard, &catalog, txn_id, producer_id, producer_epoch, partitions, reply, park_until);
            })
            .detach();
        }
        Err(err) => drop(reply.send(Err(err))),
        Ok(None) => drop(reply.send(Ok(()))),
        Ok(Some((partition, term, next))) => {
            let write = persist(shard, catalog, &txn_id, partition, &next);
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(settle(&shard, &txn_id, partition, term, next, write).await);
            })
            .detach();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn init(
    shard: &Rc<Shard>,
    catalog: &Arc<Catalog>,
    txn_id: String,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    principal: Principal,
    fresh_producer_id: Option<i64>,
    reply: oneshot::Sender<Result<(i64, i16), TxnError>>,
) {
    let timeout_max_ms = shard.shared.config.transaction_max_timeout_ms;
    if timeout_ms <= 0 || timeout_ms as u64 > timeout_max_ms {
        let _ = reply.send(Err(TxnError::InvalidTransactionTimeout));
        return;
    }
    let step = serving(shard, catalog, &txn_id).and_then(|(partition, term)| {
        let txns = shard.txns.txns.borrow();
        let entry = txns.get(&txn_id);
        if entry.is_some_and(|e| e.pending) {
            return Err(TxnError::ConcurrentTransactions);
        }
        if entry.is_none() && txns.len() >= TXNS_PER_SHARD_MAX {
            tracing::warn!(shard = shard.id, "refused a new transactional id: {TXNS_PER_SHARD_MAX} on this shard");
            return Err(TxnError::CoordinatorNotAvailable);
        }
        let current = entry.and_then(|e| e.meta.as_ref());
        let usable = current.is_none_or(|meta| {
            catalog
                .cluster_secret
                .as_deref()
                .is_none_or(|secret| crate::producer_ids::belongs_to(secret, meta.producer_id, &principal))
        });
        let step = state::init(current, timeout_ms, expected, fresh_producer_id, usable, now_ms())?;
        Ok((partition, term, step))
    });
    let (partition, term, step) = match step {
        Err(err) => {
            let _ = reply.send(Err(err));
            return;
        }
        Ok(step) => step,
    };
    match step {
        InitStep::NeedProducerId => {
            with_fresh_producer_id(shard, txn_id, principal, reply, move |txn_id, principal, fresh, reply| {
                let fresh_producer_id = Some(fresh);
                TxnOp::Init { txn_id, timeout_ms, expected, principal, fresh_producer_id, reply }
            });
        }
        InitStep::Write(next) => {
            let write = persist(shard, catalog, &txn_id, partition, &next);
            let answer = (next.producer_id, next.producer_epoch);
            let shard = shard.clone();
            glommio::spawn_local(async move {
                let settled = settle(&shard, &txn_id, partition, term, next, write).await;
                let _ = reply.send(settled.map(|()| answer));
            })
            .detach();
        }
        InitStep::AbortFirst(next) => {
            tracing::info!(shard = shard.id, txn_id, "InitProducerId fences an ongoing transaction: aborting it");
            let (done, _) = oneshot::channel();
            prepare(shard, catalog, txn_id, partition, term, next, done);
            let _ = reply.send(Err(TxnError::ConcurrentTransactions));
        }
    }
}

/// Asks for a new producer id for `txn_id`'s producer (bound to
/// `principal`), then runs again the op `retry` makes with it; a refusal
/// is `reply`'s answer.
fn with_fresh_producer_id<T: 'static>(
    shard: &Rc<Shard>,
    txn_id: String,
    principal: Principal,
    reply: oneshot::Sender<Result<T, TxnError>>,
    retry: impl FnOnce(String, Principal, i64, oneshot::Sender<Result<T, TxnError>>) -> TxnOp + 'static,
) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        match allocate_producer_id(&shard, &txn_id, &principal).await {
            Err(err) => drop(reply.send(Err(err))),
            Ok(fresh) => execute(&shard, retry(txn_id, principal, fresh, reply)),
        }
    })
    .detach();
}

/// A new producer id from the admin shard's allocator for `txn_id`'s
/// producer, bound to `principal`.
async fn allocate_producer_id(shard: &Rc<Shard>, txn_id: &str, principal: &Principal) -> Result<i64, TxnError> {
    let (allocated, wait) = oneshot::channel();
    shard.submit(ADMIN_SHARD, ShardOp::InitProducerId { principal: principal.clone(), reply: allocated });
    match wait.await {
        Ok(Ok(producer_id)) => Ok(producer_id),
        Ok(Err(message)) => {
            tracing::error!(shard = shard.id, txn_id, "cannot allocate a producer id: {message}");
            Err(TxnError::ProducerIdsUnavailable)
        }
        Err(_) => Err(TxnError::CoordinatorNotAvailable),
    }
}

/// Appends `next` as the id's state and marks the id pending until
/// `settle` has the outcome.
fn persist(shard: &Shard, catalog: &Catalog, txn_id: &str, partition: u32, next: &TxnMeta) -> Result<Write, Outcome> {
    persist_record(shard, catalog, txn_id, partition, Some(next))
}

/// Appends the id's record (`None`: its tombstone) and marks the id
/// pending.
fn persist_record(
    shard: &Shard,
    catalog: &Catalog,
    txn_id: &str,
    partition: u32,
    next: Option<&TxnMeta>,
) -> Result<Write, Outcome> {
    let topic = catalog
        .topics
        .get(TRANSACTION_STATE_TOPIC)
        .ok_or_else(|| Outcome::err(ErrorCode::NotReady, format!("{TRANSACTION_STATE_TOPIC} does not exist")))?;
    let batch = record::batch(txn_id, next, now_ms());
    let write = crate::group::append_batch(shard, topic, partition, batch, txn_id)?;
    shard.txns.txns.borrow_mut().entry(txn_id.to_string()).or_insert_with(|| Entry::new(None)).pending = true;
    Ok(write)
}

/// Waits for a state change's write; once the in-sync replicas have it,
/// it is the id's state (if this shard still coordinates it in `term`).
async fn settle(
    shard: &Rc<Shard>,
    txn_id: &str,
    partition: u32,
    term: u64,
    next: TxnMeta,
    write: Result<Write, Outcome>,
) -> Result<(), TxnError> {
    let appended = write.is_ok();
    let outcome = written(write).await;
    if !is_current(shard, partition, term) {
        return Err(TxnError::NotCoordinator);
    }
    let mut txns = shard.txns.txns.borrow_mut();
    if outcome.error != ErrorCode::None {
        tracing::warn!(shard = shard.id, txn_id, error = ?outcome.error, message = ?outcome.message,
            "a transaction's state change was not replicated");
        // Kafka leaves the state as it was (the record may still be
        // replicated later; a new coordinator would then read it).
        if appended && let Some(entry) = txns.get_mut(txn_id) {
            entry.pending = false;
            entry.wake_parked();
            if entry.meta.is_none() {
                txns.remove(txn_id);
            }
        }
        return Err(write_error(&outcome));
    }
    let entry = txns.entry(txn_id.to_string()).or_insert_with(|| Entry::new(None));
    entry.meta = Some(next);
    entry.pending = false;
    // The parked requests run once this task yields (they are tasks).
    entry.wake_parked();
    Ok(())
}

/// Persists a PrepareCommit or PrepareAbort, answers `reply` once it is
/// replicated, then writes the markers and completes the transaction.
fn prepare(
    shard: &Rc<Shard>,
    catalog: &Catalog,
    txn_id: String,
    partition: u32,
    term: u64,
    prepared: TxnMeta,
    reply: oneshot::Sender<Result<(i64, i16), TxnError>>,
) {
    assert!(prepared.state.is_prepared(), "markers follow a prepared state only");
    let write = persist(shard, catalog, &txn_id, partition, &prepared);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let settled = settle(&shard, &txn_id, partition, term, prepared.clone(), write).await;
        let ok = settled.is_ok();
        let _ = reply.send(settled.map(|()| prepared.continues_as()));
        if ok {
            finish(&shard, &txn_id, partition, term, prepared).await;
        }
    })
    .detach();
}

/// Writes the markers of a prepared transaction to each of its
/// partitions, then persists CompleteCommit or CompleteAbort. Gives up
/// only when this shard stops coordinating the partition (the next
/// coordinator finishes it from the PrepareX record).
async fn finish(shard: &Rc<Shard>, txn_id: &str, partition: u32, term: u64, prepared: TxnMeta) {
    let Some(coordinator_epoch) = coordinator_epoch(shard, partition, term) else { return };
    let commit = prepared.state == TxnState::PrepareCommit;
    if !markers::write_all(shard, &prepared, commit, coordinator_epoch, || is_current(shard, partition, term)).await {
        return;
    }
    let mut retry_ms = crate::limits::TXN_MARKER_RETRY_MS;
    loop {
        if !is_current(shard, partition, term) {
            return;
        }
        let still_prepared =
            shard.txns.txns.borrow().get(txn_id).is_some_and(|e| !e.pending && e.meta.as_ref() == Some(&prepared));
        if !still_prepared {
            return;
        }
        let next = state::complete(&prepared, now_ms());
        let catalog = shard.shared.catalog.load_full();
        let write = persist(shard, &catalog, txn_id, partition, &next);
        match settle(shard, txn_id, partition, term, next, write).await {
            Ok(()) => {
                tracing::debug!(shard = shard.id, txn_id, commit, "transaction complete");
                return;
            }
            Err(err) => {
                tracing::warn!(shard = shard.id, txn_id, ?err, "completing a transaction: retrying");
                Deadline::after(Duration::from_millis(retry_ms)).await;
                retry_ms = (retry_ms * 2).min(crate::limits::TXN_MARKER_RETRY_MS_MAX);
            }
        }
    }
}

/// Aborts, under a bumped epoch, every Ongoing transaction of this shard
/// past its timeout. Runs for the life of the shard.
pub(crate) fn spawn_timeout_checks(shard: &Rc<Shard>) {
    let shard = shard.clone();
    let interval = Duration::from_millis(shard.shared.config.transaction_abort_check_interval_ms.max(1));
    glommio::spawn_local(async move {
        while !shard.stopping.get() {
            Deadline::after(interval).await;
            abort_timed_out(&shard);
        }
    })
    .detach();
}

/// The ids with a persisted state for which `wanted` holds, with that
/// state (copied: the caller writes, which needs the map).
fn settled_where(shard: &Shard, wanted: impl Fn(&Entry, &TxnMeta) -> bool) -> Vec<(String, TxnMeta)> {
    let txns = shard.txns.txns.borrow();
    txns.iter()
        .filter_map(|(id, entry)| {
            entry.meta.as_ref().filter(|meta| wanted(entry, meta)).map(|meta| (id.clone(), meta.clone()))
        })
        .collect()
}

fn abort_timed_out(shard: &Rc<Shard>) {
    let now = now_ms();
    expire_idle(shard, now);
    let expired = settled_where(shard, |entry, meta| !entry.pending && state::timed_out(meta, now));
    if expired.is_empty() {
        return;
    }
    let catalog = shard.shared.catalog.load_full();
    for (txn_id, meta) in expired {
        let Ok((partition, term)) = serving(shard, &catalog, &txn_id) else { continue };
        tracing::info!(
            shard = shard.id,
            txn_id,
            producer_id = meta.producer_id,
            timeout_ms = meta.timeout_ms,
            "aborting a transaction past its timeout"
        );
        let (done, _) = oneshot::channel();
        prepare(shard, &catalog, txn_id, partition, term, state::fenced_abort(&meta, now), done);
    }
}

/// Forgets the ids idle past `transactional_id_expiration_ms`: a
/// tombstone each, replicated, then the entry goes (unless its state
/// changed meanwhile). A producer that comes back gets a new producer id.
fn expire_idle(shard: &Rc<Shard>, now: i64) {
    let expiration_ms = shard.shared.config.transactional_id_expiration_ms;
    let idle = settled_where(shard, |entry, meta| {
        !entry.pending && entry.waiters.is_empty() && state::expired(meta, now, expiration_ms)
    });
    if idle.is_empty() {
        return;
    }
    let catalog = shard.shared.catalog.load_full();
    for (txn_id, meta) in idle {
        let Ok((partition, term)) = serving(shard, &catalog, &txn_id) else { continue };
        let write = persist_record(shard, &catalog, &txn_id, partition, None);
        let appended = write.is_ok();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let outcome = written(write).await;
            if !appended || !is_current(&shard, partition, term) {
                return;
            }
            let mut txns = shard.txns.txns.borrow_mut();
            let Some(entry) = txns.get_mut(&txn_id) else { return };
            entry.pending = false;
            entry.wake_parked();
            if outcome.error == ErrorCode::None && entry.meta.as_ref() == Some(&meta) {
                txns.remove(&txn_id);
                tracing::info!(shard = shard.id, txn_id, producer_id = meta.producer_id, "transactional id expired");
            }
        })
        .detach();
    }
}

/// Brings the coordinator in line with this shard's replicas of
/// `__transaction_state` (as `group::sync` does for groups). Called after
/// every metadata change and at start; idempotent.
pub(crate) fn sync(shard: &Rc<Shard>, catalog: &Catalog) {
    let topic = catalog.topics.get(TRANSACTION_STATE_TOPIC).cloned();
    let leading = topic.as_ref().map(|topic| shard.led_partitions(topic)).unwrap_or_default();
    let resigned: Vec<u32> = shard
        .txns
        .partitions
        .borrow()
        .iter()
        .filter(|(partition, c)| leading.get(partition) != Some(&c.leader_epoch))
        .map(|(partition, _)| *partition)
        .collect();
    for partition in resigned {
        shard.txns.partitions.borrow_mut().remove(&partition);
        let count = topic.as_ref().map_or(0, |t| t.partitions);
        shard.txns.txns.borrow_mut().retain(|id, _| count > 0 && group_partition(id, count) != partition);
        tracing::info!(
            shard = shard.id,
            partition,
            "no longer the coordinator of {TRANSACTION_STATE_TOPIC}/{partition}"
        );
    }
    let Some(topic) = topic else { return };
    for (partition, leader_epoch) in leading {
        if !shard.txns.partitions.borrow().contains_key(&partition) {
            start_load(shard, &topic, partition, leader_epoch);
        }
    }
}

/// Replays a partition this shard's replica now leads, then finishes the
/// transactions it left prepared.
fn start_load(shard: &Rc<Shard>, topic: &Arc<TopicMeta>, partition: u32, leader_epoch: i32) {
    let term = shard.txns.terms.get() + 1;
    shard.txns.terms.set(term);
    shard.txns.partitions.borrow_mut().insert(partition, Coordination { leader_epoch, term, load: Load::Loading });
    let (shard, topic) = (shard.clone(), topic.clone());
    glommio::spawn_local(async move {
        let started = Instant::now();
        let loaded = read_txns(&shard, &topic, partition).await;
        let prepared = {
            let mut partitions = shard.txns.partitions.borrow_mut();
            let Some(coordination) = partitions.get_mut(&partition).filter(|c| c.term == term) else { return };
            match loaded {
                Err(message) => {
                    tracing::error!(shard = shard.id, partition, "{message}");
                    coordination.load = Load::Failed;
                    return;
                }
                Ok(loaded) => {
                    let mut txns = shard.txns.txns.borrow_mut();
                    txns.retain(|id, _| group_partition(id, topic.partitions) != partition);
                    let prepared: Vec<(String, TxnMeta)> = loaded
                        .iter()
                        .filter(|(_, m)| m.state.is_prepared())
                        .map(|(i, m)| (i.clone(), m.clone()))
                        .collect();
                    let count = loaded.len();
                    txns.extend(loaded.into_iter().map(|(id, meta)| (id, Entry::new(Some(meta)))));
                    coordination.load = Load::Loaded;
                    tracing::info!(
                        shard = shard.id,
                        partition,
                        leader_epoch,
                        ids = count,
                        prepared = prepared.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "now the coordinator of {TRANSACTION_STATE_TOPIC}/{partition}"
                    );
                    prepared
                }
            }
        };
        // A previous coordinator decided these and may not have written
        // every marker: write them all again (a marker written twice is
        // harmless; the partition ignores one for a finished transaction).
        for (txn_id, meta) in prepared {
            let shard = shard.clone();
            glommio::spawn_local(async move { finish(&shard, &txn_id, partition, term, meta).await }).detach();
        }
    })
    .detach();
}

/// The states in a partition's log (the latest record per id).
async fn read_txns(shard: &Rc<Shard>, topic: &TopicMeta, partition: u32) -> Result<HashMap<String, TxnMeta>, String> {
    let name = topic.name.as_str();
    let fail = |err: String| format!("loading transactions from {name}/{partition}: {err}");
    let log = shard.log(topic, partition).ok_or_else(|| fail("not open".into()))?;
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    let mut txns = HashMap::new();
    while offset < end {
        let output = log.read(offset, LOAD_READ_BYTES, ReadBound::LogEnd).await.map_err(|e| fail(e.to_string()))?;
        if output.batches.is_empty() {
            break;
        }
        for batch in output.batches {
            let next = apply_batch(&mut txns, &batch, offset).map_err(&fail)?;
            assert!(next > offset, "reads return batches at or after the offset asked for");
            offset = next;
        }
    }
    Ok(txns)
}

/// Applies a stored batch's records from `offset` on; the offset after it.
pub(crate) fn apply_batch(txns: &mut HashMap<String, TxnMeta>, batch: &[u8], offset: i64) -> Result<i64, String> {
    // Checked again right where it is read back.
    let info = spate_format::batch::validate_stored(batch, usize::MAX).map_err(|e| e.to_string())?;
    let next = info.last_offset().checked_add(1).ok_or_else(|| "a batch ends at the last offset".to_string())?;
    // A transaction marker holds no state (none is written here: internal
    // topics are refused by AddPartitionsToTxn).
    if info.attributes().is_control() {
        return Ok(next);
    }
    for record in spate_format::batch::records(batch).map_err(|e| e.to_string())? {
        let record = record.map_err(|e| e.to_string())?;
        if record.offset(info.base_offset) < offset {
            continue;
        }
        let key = record.key.ok_or_else(|| "a record without a key".to_string())?;
        match record::decode(key, record.value)? {
            (txn_id, Some(meta)) => txns.insert(txn_id, meta),
            (txn_id, None) => txns.remove(&txn_id),
        };
    }
    Ok(next)
}

/// The request that creates `__transaction_state` at the first start of a
/// cluster (beside `__consumer_offsets`, `server.rs`). Its partition count
/// never changes later, since that would move every transactional id.
pub(crate) fn txn_topic_request(partitions: u32, replication_factor: u16) -> spate_replication::ControllerRequest {
    // Kafka's transaction.state.log.min.isr is 2 (or all there are).
    let min_insync_replicas = replication_factor.min(2);
    spate_replication::ControllerRequest::CreateTopic {
        name: TRANSACTION_STATE_TOPIC.to_string(),
        partitions,
        replication_factor,
        configs: std::collections::BTreeMap::from([
            ("retention.ms".to_string(), "-1".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("flush.ms".to_string(), "0".to_string()),
            ("min.insync.replicas".to_string(), min_insync_replicas.to_string()),
        ]),
    }
}
