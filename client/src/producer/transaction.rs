//! The transactional producer (Kafka's transactional.id; issue 17).
//!
//! `init_transactions` asks the transactional id's coordinator for the
//! producer id and a new epoch (fencing any older instance and ending what
//! it left open). Transactions are Kafka's transactions v2 (KIP-890 part
//! 2): the producer adds no partition itself; its produces say so, and the
//! leader of a partition adds it to the transaction before it takes the
//! transaction's first batch there (so no batch reaches a partition
//! outside its transaction: a crash can never leave data the coordinator
//! does not know about, which would hold the partition's last stable
//! offset back). A consumer group's offsets (`send_offsets_to_transaction`:
//! read-process-write exactly once) go to the group's coordinator, which
//! adds the group's offsets partition. EndTxn, once every record is
//! acknowledged, answers the next epoch: every transaction ends under a
//! new one, so a late batch of an ended transaction is fenced. A batch
//! that failed for good inside a transaction makes the commit refuse: the
//! caller aborts and may retry the work in a new transaction.
//!
//! Calls are serialized by one async lock: a `send` cannot slip between a
//! commit's flush and its EndTxn into the transaction being committed.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::Mutex as AsyncMutex;

use super::{DeliveryFuture, Producer, ProducerRecord, Shared};
use crate::error::ClientError;
use crate::group::coordinator_request;
use crate::group_protocol::Coordinator;
use crate::lock;
use crate::metadata::TopicPartition;
use crate::producer::ProducerIdentity;
use crate::txn_protocol::{self, ConsumerGroupMetadata};
use spate_flatbuf::proto::ErrorCode;

#[derive(Debug, Clone)]
enum Phase {
    /// `init_transactions` has not succeeded yet.
    Uninitialized,
    /// No transaction open.
    Ready,
    InTransaction,
    /// A newer producer with the same id exists, or the coordinator
    /// refused this one for good: only closing is left.
    Fatal(ClientError),
}

#[derive(Debug)]
struct TxnState {
    phase: Phase,
    producer: Option<ProducerIdentity>,
    /// Partitions the open transaction has sent to.
    partitions: BTreeSet<TopicPartition>,
    /// Groups whose offsets the open transaction carries.
    groups: BTreeSet<String>,
    /// The accumulator's failed-batch count when the transaction began.
    failed_at_begin: u64,
}

#[derive(Debug)]
pub(super) struct TxnShared {
    pub(super) id: String,
    state: AsyncMutex<TxnState>,
}

impl TxnShared {
    pub(super) fn new(id: String) -> Self {
        TxnShared {
            id,
            state: AsyncMutex::new(TxnState {
                phase: Phase::Uninitialized,
                producer: None,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                failed_at_begin: 0,
            }),
        }
    }
}

fn state_error(what: &str) -> ClientError {
    ClientError::TransactionState(what.to_string())
}

/// Refusals after which this producer may never be used again (Kafka's
/// fatal errors: ProducerFencedException and friends).
fn is_fatal(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(
            ErrorCode::ProducerFenced
                | ErrorCode::InvalidProducerEpoch
                | ErrorCode::InvalidProducerIdMapping
                | ErrorCode::TransactionalIdAuthorizationFailed
                | ErrorCode::InvalidTransactionTimeout
        )
    )
}

impl TxnState {
    fn check(&self, want: &Phase, what: &str) -> Result<ProducerIdentity, ClientError> {
        match (&self.phase, self.producer) {
            (Phase::Fatal(error), _) => Err(error.clone()),
            (phase, Some(producer)) if std::mem::discriminant(phase) == std::mem::discriminant(want) => Ok(producer),
            (Phase::Uninitialized, _) => Err(state_error(&format!("{what}: call init_transactions first"))),
            (Phase::Ready, _) => Err(state_error(&format!("{what}: no transaction is open (begin_transaction)"))),
            (_, _) => Err(state_error(&format!("{what}: a transaction is already open"))),
        }
    }

    /// Records a refusal: fatal ones end the producer.
    fn note(&mut self, error: ClientError) -> ClientError {
        if is_fatal(&error) {
            self.phase = Phase::Fatal(error.clone());
        }
        error
    }
}

fn txn_of(producer: &Producer) -> Result<&TxnShared, ClientError> {
    producer
        .shared
        .txn
        .as_ref()
        .ok_or_else(|| state_error("not a transactional producer (ProducerConfig::transactional_id is not set)"))
}

/// A new producer id and epoch from the coordinator; the accumulator
/// sequences every partition from 0 under it.
async fn init_identity(shared: &Shared, txn: &TxnShared, state: &mut TxnState) -> Result<(), ClientError> {
    let timeout_ms = shared.config.transaction_timeout_ms;
    let build = |stamp| txn_protocol::init_producer_id(stamp, &txn.id, timeout_ms);
    let result = coordinator_request(
        &shared.client,
        Coordinator::Transaction(&txn.id),
        build,
        crate::protocol::decode_init_producer_id,
    )
    .await;
    let (id, epoch) = result.map_err(|error| state.note(error))?;
    tracing::debug!(transactional_id = %txn.id, producer_id = id, epoch, "transactional producer id");
    set_identity(shared, state, ProducerIdentity { id, epoch });
    Ok(())
}

/// The producer goes on as `producer`: its batches carry it, every
/// partition's sequence from 0.
fn set_identity(shared: &Shared, state: &mut TxnState, producer: ProducerIdentity) {
    lock(&shared.state).accumulator.set_producer(producer);
    shared.wake.notify_one();
    state.producer = Some(producer);
}

/// Ends the open transaction at its coordinator, then goes on under the
/// epoch it answers (transactions v2).
async fn end_transaction(
    shared: &Shared,
    txn: &TxnShared,
    state: &mut TxnState,
    producer: ProducerIdentity,
    commit: bool,
) -> Result<(), ClientError> {
    let build = |stamp| txn_protocol::end_txn(stamp, &txn.id, producer, commit);
    let result =
        coordinator_request(&shared.client, Coordinator::Transaction(&txn.id), build, txn_protocol::decode_end_txn)
            .await;
    let next = result.map_err(|error| state.note(error))?;
    set_identity(shared, state, next);
    Ok(())
}

/// `Producer::send` of a transactional producer: the record's partition
/// joins the transaction first.
pub(super) async fn send(
    producer: &Producer,
    txn: &TxnShared,
    mut record: ProducerRecord,
) -> Result<DeliveryFuture, ClientError> {
    let mut state = txn.state.lock().await;
    state.check(&Phase::InTransaction, "send")?;
    let partition = match record.partition {
        Some(partition) => partition,
        None => producer.choose_partition(&record).await?,
    };
    // Its leader adds the partition to the transaction (transactions v2).
    state.partitions.insert(TopicPartition::new(record.topic.clone(), partition));
    record.partition = Some(partition);
    // Queued under the lock: a commit waits for it and then flushes it.
    producer.send_now(record).await
}

impl Producer {
    /// Kafka's initTransactions: gets this transactional id's producer id
    /// and a new epoch from its coordinator. Any older producer with the
    /// same id is fenced (its next request fails with `ProducerFenced`),
    /// and a transaction it left open is aborted (or completed, if it had
    /// asked to commit) before this returns. Call once, before the first
    /// transaction.
    pub async fn init_transactions(&self) -> Result<(), ClientError> {
        let txn = txn_of(self)?;
        let mut state = txn.state.lock().await;
        if let Phase::Fatal(error) = &state.phase {
            return Err(error.clone());
        }
        if !matches!(state.phase, Phase::Uninitialized) {
            return Err(state_error("init_transactions: already initialized"));
        }
        init_identity(&self.shared, txn, &mut state).await?;
        state.phase = Phase::Ready;
        Ok(())
    }

    /// Kafka's beginTransaction: records sent from now until the commit or
    /// abort belong to the transaction.
    pub async fn begin_transaction(&self) -> Result<(), ClientError> {
        let txn = txn_of(self)?;
        let mut state = txn.state.lock().await;
        state.check(&Phase::Ready, "begin_transaction")?;
        state.phase = Phase::InTransaction;
        state.partitions.clear();
        state.groups.clear();
        state.failed_at_begin = lock(&self.shared.state).accumulator.failed_batches();
        Ok(())
    }

    /// Kafka's sendOffsetsToTransaction: the consumer group's offsets
    /// (the next offset to read, per partition) commit with the
    /// transaction, and are discarded if it aborts. `group` carries the
    /// member's id and epoch from its `GroupConsumer`, so that a member
    /// fenced from the group cannot commit (or `ConsumerGroupMetadata::new`
    /// to commit from outside the group).
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &BTreeMap<TopicPartition, i64>,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), ClientError> {
        let txn = txn_of(self)?;
        let mut state = txn.state.lock().await;
        let identity = state.check(&Phase::InTransaction, "send_offsets_to_transaction")?;
        if offsets.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        // The group's coordinator adds its offsets partition to the
        // transaction (transactions v2: no AddOffsetsToTxn).
        state.groups.insert(group.group_id.clone());
        let build = |stamp| txn_protocol::txn_offset_commit(stamp, &txn.id, identity, group, offsets);
        coordinator_request(
            &shared.client,
            Coordinator::Group(&group.group_id),
            build,
            txn_protocol::decode_txn_offset_commit,
        )
        .await
        .map_err(|error| state.note(error))
    }

    /// Kafka's commitTransaction: waits until every record of the
    /// transaction is acknowledged, then commits it. If a record failed
    /// for good, nothing is committed and `TransactionAbortable` is
    /// returned: call `abort_transaction`. A retriable failure of the
    /// commit itself (a timeout) leaves the transaction open: call commit
    /// again (or abort).
    pub async fn commit_transaction(&self) -> Result<(), ClientError> {
        let txn = txn_of(self)?;
        let mut state = txn.state.lock().await;
        let identity = state.check(&Phase::InTransaction, "commit_transaction")?;
        self.flush().await?;
        let failed = lock(&self.shared.state).accumulator.failed_batches() - state.failed_at_begin;
        if failed > 0 {
            return Err(ClientError::TransactionAbortable(format!(
                "{failed} batch(es) of the transaction failed; abort it"
            )));
        }
        // A transaction that touched nothing has nothing at the coordinator.
        if !state.partitions.is_empty() || !state.groups.is_empty() {
            end_transaction(&self.shared, txn, &mut state, identity, true).await?;
        }
        state.phase = Phase::Ready;
        Ok(())
    }

    /// Kafka's abortTransaction: the transaction's records are never
    /// visible to read_committed consumers and its offsets never count.
    /// Records still queued are sent first (they go into the aborted
    /// transaction); a producer whose batches failed takes a new epoch.
    pub async fn abort_transaction(&self) -> Result<(), ClientError> {
        let txn = txn_of(self)?;
        let mut state = txn.state.lock().await;
        let identity = state.check(&Phase::InTransaction, "abort_transaction")?;
        // Their outcomes do not matter: the transaction is aborted. A flush
        // that cannot run (the producer is closed) still lets the abort go
        // to the coordinator.
        if let Err(error) = self.flush().await {
            tracing::warn!(transactional_id = %txn.id, %error, "aborting a transaction whose records could not be flushed");
        }
        if !state.partitions.is_empty() || !state.groups.is_empty() {
            end_transaction(&self.shared, txn, &mut state, identity, false).await?;
        }
        // A batch that failed for good dropped the producer's sequence
        // state: bump the epoch (the coordinator's InitProducerId) so the
        // partitions accept its batches from sequence 0 again.
        if lock(&self.shared.state).accumulator.lost_identity() {
            init_identity(&self.shared, txn, &mut state).await?;
        }
        state.phase = Phase::Ready;
        Ok(())
    }

    /// The partition the partitioner picks for `record` now.
    async fn choose_partition(&self, record: &ProducerRecord) -> Result<i32, ClientError> {
        let partition_count = self.shared.client.partition_count(&record.topic).await?;
        let record_bytes = super::record_bytes_upper_bound(record);
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        let accumulator = &state.accumulator;
        let topic = record.topic.as_str();
        let has_room = |partition| accumulator.has_room(&TopicPartition::new(topic, partition), record_bytes);
        Ok(state.partitioner.partition(
            self.shared.config.partitioner,
            topic,
            record.key.as_deref(),
            partition_count,
            has_room,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_out_of_order_are_refused_with_what_to_do() {
        let mut state = TxnState {
            phase: Phase::Uninitialized,
            producer: None,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            failed_at_begin: 0,
        };
        let error = state.check(&Phase::InTransaction, "send").expect_err("not initialized");
        assert!(error.to_string().contains("init_transactions"), "{error}");
        state.phase = Phase::Ready;
        state.producer = Some(ProducerIdentity { id: 1, epoch: 0 });
        let error = state.check(&Phase::InTransaction, "send").expect_err("no transaction");
        assert!(error.to_string().contains("begin_transaction"), "{error}");
        assert!(state.check(&Phase::Ready, "begin_transaction").is_ok());
        let fenced = ClientError::server(ErrorCode::ProducerFenced, None);
        let _ = state.note(fenced);
        assert!(matches!(state.phase, Phase::Fatal(_)));
        let error = state.check(&Phase::Ready, "begin_transaction").expect_err("fenced");
        assert_eq!(error.code(), Some(ErrorCode::ProducerFenced));
        // A retriable refusal does not end the producer.
        let mut open = TxnState { phase: Phase::InTransaction, ..state };
        let _ = open.note(ClientError::Timeout);
        assert!(matches!(open.phase, Phase::InTransaction));
    }
}
