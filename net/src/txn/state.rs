//! Kafka's transaction state machine (`TransactionMetadata` and the
//! checks of `TransactionCoordinator`), as pure functions from a
//! transaction's state and a request to the next state or an error, so
//! that every rule is testable without a broker. The coordinator
//! (`mod.rs`) persists each next state before it answers.

use std::collections::BTreeSet;

use crate::group::Tp;
use crate::limits::TXN_PARTITIONS_MAX;

/// An epoch this high takes a new producer id at the next
/// InitProducerId (Kafka's `isEpochExhausted`: one epoch is kept in
/// reserve for fencing the producer at a timeout).
pub(crate) const EPOCH_EXHAUSTED: i16 = i16::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    /// Kafka's state of an expired transactional id; Spate does not
    /// expire ids yet, so nothing is written in it.
    Dead,
    /// Kafka's transient state while a fenced producer's transaction is
    /// aborted; Spate goes straight to PrepareAbort with the bumped epoch
    /// (the same record Kafka writes next), so it is never written either.
    PrepareEpochFence,
}

impl TxnState {
    pub(crate) const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    /// Kafka's byte for the state (its `TransactionState.id`), which is
    /// also what the record stores.
    pub(crate) fn id(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|state| state.id() == id)
    }

    /// The name Kafka's DescribeTransactions and ListTransactions use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|state| state.name() == name)
    }

    /// Markers are being written: the outcome is decided, not yet done.
    pub(crate) fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A transactional id's state, as its record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The producer id and epoch before the last InitProducerId (-1:
    /// none), so that a retried InitProducerId (KIP-360) is recognised.
    pub last_producer_id: i64,
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<Tp>,
    /// When the transaction's first partition was added (-1: none yet).
    pub txn_start_ms: i64,
    pub txn_last_update_ms: i64,
    /// KIP-890 part 2: the producer id the producer continues under once
    /// this prepared transaction completes (-1: the same). Set when a
    /// transactions-v2 EndTxn finds the epochs exhausted: the markers go
    /// out under the old id at the last epoch, then the id rotates.
    pub next_producer_id: i64,
}

impl TxnMeta {
    /// The producer id and epoch the producer goes on with after this
    /// state: what EndTxn v5 answers.
    pub(crate) fn continues_as(&self) -> (i64, i16) {
        if self.next_producer_id >= 0 { (self.next_producer_id, 0) } else { (self.producer_id, self.producer_epoch) }
    }
}

/// Why a request on a transaction is refused, in Kafka's terms (the
/// front-end picks each version's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnError {
    NotCoordinator,
    CoordinatorLoadInProgress,
    CoordinatorNotAvailable,
    /// A state change of the transaction is under way; retry.
    ConcurrentTransactions,
    /// A newer producer with this transactional id exists.
    ProducerFenced,
    InvalidProducerIdMapping,
    InvalidTxnState,
    InvalidTransactionTimeout,
    /// More partitions than `TXN_PARTITIONS_MAX` in one transaction.
    TooManyPartitions,
    /// No producer id could be allocated.
    ProducerIdsUnavailable,
}

/// What an InitProducerId does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitStep {
    /// A new producer id is needed first: the id is new, its producer's
    /// epochs are exhausted, or its producer id was given to another
    /// principal (whose batches would be refused under this one's).
    NeedProducerId,
    /// Persist this state, then answer with its producer id and epoch.
    Write(TxnMeta),
    /// The transaction is Ongoing: it is aborted first, under a bumped
    /// epoch that fences its producer (persist this PrepareAbort, then
    /// markers, then CompleteAbort); the client is told
    /// CONCURRENT_TRANSACTIONS and retries.
    AbortFirst(TxnMeta),
}

/// InitProducerId with a transactional id. `expected`: the producer id
/// and epoch the client had (KIP-360), if any; `fresh_producer_id`: a
/// new id, once `NeedProducerId` asked for one; `producer_id_usable`:
/// the current id was given to the requesting principal.
pub(crate) fn init(
    current: Option<&TxnMeta>,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    fresh_producer_id: Option<i64>,
    producer_id_usable: bool,
    now_ms: i64,
) -> Result<InitStep, TxnError> {
    let empty = |producer_id: i64, producer_epoch: i16, last_producer_id: i64, last_producer_epoch: i16| TxnMeta {
        producer_id,
        producer_epoch,
        last_producer_id,
        last_producer_epoch,
        timeout_ms,
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        txn_start_ms: -1,
        txn_last_update_ms: now_ms,
        next_producer_id: -1,
    };
    let Some(current) = current else {
        let Some(producer_id) = fresh_producer_id else { return Ok(InitStep::NeedProducerId) };
        return Ok(InitStep::Write(empty(producer_id, 0, -1, -1)));
    };
    if let Some((producer_id, epoch)) = expected {
        // Kafka's isValidProducerId: the current producer, or the one
        // before a rotation retrying.
        let valid = current.producer_epoch < 0
            || producer_id == current.producer_id
            || (producer_id == current.last_producer_id && epoch >= EPOCH_EXHAUSTED);
        if !valid {
            return Err(TxnError::ProducerFenced);
        }
    }
    match current.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence | TxnState::Dead => {
            Err(TxnError::ConcurrentTransactions)
        }
        TxnState::Ongoing => Ok(InitStep::AbortFirst(fenced_abort(current, now_ms))),
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
            let exhausted = current.producer_epoch >= EPOCH_EXHAUSTED;
            let matches_expected = expected.is_none_or(|(_, epoch)| epoch == current.producer_epoch);
            if (exhausted || !producer_id_usable) && matches_expected {
                let Some(producer_id) = fresh_producer_id else { return Ok(InitStep::NeedProducerId) };
                let last_epoch = if expected.is_some() { current.producer_epoch } else { -1 };
                return Ok(InitStep::Write(empty(producer_id, 0, current.producer_id, last_epoch)));
            }
            let bumped = current.producer_epoch + 1;
            let (epoch, last_epoch) = match expected {
                None => (bumped, -1),
                Some((_, epoch)) if current.producer_epoch < 0 || epoch == current.producer_epoch => {
                    (bumped, current.producer_epoch)
                }
                // A retry of an InitProducerId that succeeded: its answer
                // again, without another bump.
                Some((_, epoch)) if epoch == current.last_producer_epoch => {
                    (current.producer_epoch, current.last_producer_epoch)
                }
                Some(_) => return Err(TxnError::ProducerFenced),
            };
            Ok(InitStep::Write(empty(current.producer_id, epoch, current.last_producer_id, last_epoch)))
        }
    }
}

/// The PrepareAbort that ends an Ongoing transaction whose producer is
/// fenced (a new InitProducerId, or its timeout): the epoch is bumped
/// (unless none is left), so the old producer's next request fails and
/// the markers are written under an epoch it cannot reuse.
pub(crate) fn fenced_abort(current: &TxnMeta, now_ms: i64) -> TxnMeta {
    assert_eq!(current.state, TxnState::Ongoing, "only an Ongoing transaction is fenced");
    let mut next = current.clone();
    next.producer_epoch = next.producer_epoch.saturating_add(1);
    next.state = TxnState::PrepareAbort;
    next.txn_last_update_ms = now_ms;
    next
}

/// The checks every request from a producer makes first, in Kafka's
/// order: its id, its epoch, then whether a state change is on its way
/// (`pending`), so that a fenced producer learns it is fenced.
fn check_producer(
    current: Option<&TxnMeta>,
    pending: bool,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<&TxnMeta, TxnError> {
    let current = current.ok_or(TxnError::InvalidProducerIdMapping)?;
    if current.producer_id != producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if current.producer_epoch != producer_epoch {
        return Err(TxnError::ProducerFenced);
    }
    if pending {
        return Err(TxnError::ConcurrentTransactions);
    }
    Ok(current)
}

/// AddPartitionsToTxn (and AddOffsetsToTxn's one partition): the next
/// state, or None when every partition is in the transaction already
/// (nothing to write; the answer is success).
pub(crate) fn add_partitions(
    current: Option<&TxnMeta>,
    pending: bool,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[Tp],
    now_ms: i64,
) -> Result<Option<TxnMeta>, TxnError> {
    let current = check_producer(current, pending, producer_id, producer_epoch)?;
    match current.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence | TxnState::Dead => {
            Err(TxnError::ConcurrentTransactions)
        }
        TxnState::Ongoing if partitions.iter().all(|tp| current.partitions.contains(tp)) => Ok(None),
        state => {
            let mut next = current.clone();
            if state != TxnState::Ongoing {
                next.partitions.clear();
                next.txn_start_ms = now_ms;
            }
            next.partitions.extend(partitions.iter().cloned());
            if next.partitions.len() > TXN_PARTITIONS_MAX {
                return Err(TxnError::TooManyPartitions);
            }
            next.state = TxnState::Ongoing;
            next.txn_last_update_ms = now_ms;
            Ok(Some(next))
        }
    }
}

/// KIP-890 part 1: whether a partition leader may take the producer's
/// first transactional batch of a transaction on `partitions`: each must
/// be in its ongoing transaction. Unlike the producer's own requests a
/// state change on its way (`pending`) does not matter: the partitions
/// persisted are the ones the producer was told were added, and a
/// transaction ending after this answer is caught at the partition
/// (its marker lands first: `shard.rs` verifications).
pub(crate) fn verify(
    current: Option<&TxnMeta>,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[Tp],
) -> Result<(), TxnError> {
    let current = check_producer(current, false, producer_id, producer_epoch)?;
    if current.state == TxnState::Ongoing && partitions.iter().all(|tp| current.partitions.contains(tp)) {
        Ok(())
    } else {
        Err(TxnError::InvalidTxnState)
    }
}

/// What an EndTxn does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndStep {
    /// Persist this PrepareCommit or PrepareAbort, answer, write markers.
    Prepare(TxnMeta),
    /// A retry of an EndTxn that completed: success, nothing to write;
    /// the producer goes on as (producer id, epoch).
    Done((i64, i16)),
    /// A v2 EndTxn with the producer's epochs exhausted: a new producer id
    /// is needed first (the producer continues under it).
    NeedProducerId,
}

/// EndTxn. `bump_epoch`: a transactions-v2 client (EndTxn v5, KIP-890
/// part 2), whose every transaction ends under the next epoch: the
/// prepared state carries it (the markers are written with it, so a late
/// batch of the ended transaction is fenced at the partition by its epoch
/// alone) and the client is answered it. Its retry comes with the epoch
/// before the bump (`last_producer_epoch`), or the producer id before a
/// rotation (`last_producer_id`), and is recognised as one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn end(
    current: Option<&TxnMeta>,
    pending: bool,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    bump_epoch: bool,
    fresh_producer_id: Option<i64>,
    now_ms: i64,
) -> Result<EndStep, TxnError> {
    let same = |state: TxnState| (state == TxnState::CompleteCommit || state == TxnState::PrepareCommit) == commit;
    if bump_epoch && let Some(meta) = current {
        let ended = matches!(
            meta.state,
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::CompleteCommit | TxnState::CompleteAbort
        );
        let before_bump = meta.producer_id == producer_id
            && meta.last_producer_epoch == producer_epoch
            && meta.producer_epoch == producer_epoch.saturating_add(1);
        let before_rotation = meta.producer_epoch == 0
            && meta.last_producer_id == producer_id
            && meta.last_producer_epoch == producer_epoch;
        if ended && same(meta.state) && (before_bump || before_rotation) {
            return if pending || meta.state.is_prepared() {
                Err(TxnError::ConcurrentTransactions)
            } else {
                Ok(EndStep::Done(meta.continues_as()))
            };
        }
    }
    let current = check_producer(current, pending, producer_id, producer_epoch)?;
    let ends = match current.state {
        TxnState::Ongoing => true,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => bump_epoch && !commit,
        _ => false,
    };
    let exhausted = bump_epoch && current.producer_epoch >= EPOCH_EXHAUSTED;
    if ends && exhausted && fresh_producer_id.is_none() {
        return Ok(EndStep::NeedProducerId);
    }
    let next_producer_id = if exhausted { fresh_producer_id.unwrap_or(-1) } else { -1 };
    let prepared = |state: TxnState| {
        let mut next = current.clone();
        next.state = state;
        next.txn_last_update_ms = now_ms;
        if bump_epoch {
            // Exhausted epochs keep the last one for this bump
            // (EPOCH_EXHAUSTED is i16::MAX - 1); the id rotates after.
            next.last_producer_epoch = current.producer_epoch;
            next.producer_epoch = current.producer_epoch.saturating_add(1);
            next.next_producer_id = next_producer_id;
        }
        next
    };
    match current.state {
        TxnState::Ongoing => {
            let state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
            Ok(EndStep::Prepare(prepared(state)))
        }
        // A v2 client's transaction may end with nothing added (its first
        // produce failed before it reached the coordinator): an abort then
        // still bumps the epoch, fencing whatever of it is in flight.
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort if bump_epoch && !commit => {
            let mut next = prepared(TxnState::PrepareAbort);
            next.partitions.clear();
            Ok(EndStep::Prepare(next))
        }
        state @ (TxnState::CompleteCommit | TxnState::CompleteAbort) if same(state) && !bump_epoch => {
            Ok(EndStep::Done(current.continues_as()))
        }
        state @ (TxnState::PrepareCommit | TxnState::PrepareAbort) if same(state) => {
            Err(TxnError::ConcurrentTransactions)
        }
        TxnState::PrepareEpochFence | TxnState::Dead => Err(TxnError::ConcurrentTransactions),
        _ => Err(TxnError::InvalidTxnState),
    }
}

/// The CompleteCommit or CompleteAbort after every marker of a prepared
/// transaction is written.
pub(crate) fn complete(prepared: &TxnMeta, now_ms: i64) -> TxnMeta {
    assert!(prepared.state.is_prepared(), "only a prepared transaction completes");
    let mut next = prepared.clone();
    next.state =
        if prepared.state == TxnState::PrepareCommit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
    next.partitions.clear();
    next.txn_last_update_ms = now_ms;
    if prepared.next_producer_id >= 0 {
        // KIP-890 part 2: the epochs ran out; the producer goes on under
        // the new id (a retried EndTxn names the old one: `end`).
        // The id and epoch the producer had (before the bump).
        next.last_producer_id = prepared.producer_id;
        next.last_producer_epoch = prepared.last_producer_epoch;
        next.producer_id = prepared.next_producer_id;
        next.producer_epoch = 0;
        next.next_producer_id = -1;
    }
    next
}

/// An Ongoing transaction past its timeout (the coordinator aborts it).
/// Kafka's rule for forgetting a transactional id: no transaction in
/// progress (Empty or complete) and no change for `expiration_ms`.
pub(crate) fn expired(meta: &TxnMeta, now_ms: i64, expiration_ms: u64) -> bool {
    let idle = matches!(meta.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort);
    idle && now_ms.saturating_sub(meta.txn_last_update_ms) >= expiration_ms as i64
}

pub(crate) fn timed_out(meta: &TxnMeta, now_ms: i64) -> bool {
    meta.state == TxnState::Ongoing && meta.txn_start_ms.saturating_add(i64::from(meta.timeout_ms)) <= now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> Tp {
        (topic.to_string(), partition)
    }

    fn started(producer_id: i64, epoch: i16) -> TxnMeta {
        match init(None, 1000, None, Some(producer_id), true, 0) {
            Ok(InitStep::Write(mut meta)) => {
                meta.producer_epoch = epoch;
                meta
            }
            other => panic!("a new id is written: {other:?}"),
        }
    }

    #[test]
    fn verification_passes_only_partitions_of_the_ongoing_transaction_at_the_current_epoch() {
        let meta = started(7, 0);
        let (t0, t1) = ([tp("t", 0)], [tp("t", 1)]);
        // Nothing added yet: a batch would open a transaction the
        // coordinator does not know.
        assert_eq!(verify(Some(&meta), 7, 0, &t0), Err(TxnError::InvalidTxnState));
        let ongoing = add_partitions(Some(&meta), false, 7, 0, &t0, 1).expect("added").expect("written");
        assert_eq!(verify(Some(&ongoing), 7, 0, &t0), Ok(()));
        assert_eq!(verify(Some(&ongoing), 7, 0, &t1), Err(TxnError::InvalidTxnState));
        assert_eq!(verify(Some(&ongoing), 7, 1, &t0), Err(TxnError::ProducerFenced));
        assert_eq!(verify(Some(&ongoing), 8, 0, &t0), Err(TxnError::InvalidProducerIdMapping));
        assert_eq!(verify(None, 7, 0, &t0), Err(TxnError::InvalidProducerIdMapping));
        // Ended (aborting, then complete): a late batch is refused.
        let Ok(EndStep::Prepare(aborting)) = end(Some(&ongoing), false, 7, 0, false, false, None, 2) else {
            panic!("abort prepared")
        };
        assert_eq!(verify(Some(&aborting), 7, 0, &t0), Err(TxnError::InvalidTxnState));
        let done = complete(&aborting, 3);
        assert_eq!(verify(Some(&done), 7, 0, &t0), Err(TxnError::InvalidTxnState));
    }

    #[test]
    fn a_new_transactional_id_needs_a_producer_id_then_starts_empty_at_epoch_0() {
        assert_eq!(init(None, 1000, None, None, true, 0), Ok(InitStep::NeedProducerId));
        let meta = started(7, 0);
        assert_eq!((meta.producer_id, meta.producer_epoch, meta.state), (7, 0, TxnState::Empty));
    }

    #[test]
    fn init_again_bumps_the_epoch_and_fences_the_old_producer() {
        let first = started(7, 0);
        let Ok(InitStep::Write(second)) = init(Some(&first), 1000, None, None, true, 1) else { panic!("bumped") };
        assert_eq!((second.producer_id, second.producer_epoch), (7, 1));
        let tps = [tp("t", 0)];
        assert_eq!(add_partitions(Some(&second), false, 7, 0, &tps, 2), Err(TxnError::ProducerFenced));
        assert_eq!(end(Some(&second), false, 7, 0, true, false, None, 2), Err(TxnError::ProducerFenced));
        assert_eq!(end(Some(&second), false, 8, 1, true, false, None, 2), Err(TxnError::InvalidProducerIdMapping));
    }

    #[test]
    fn init_during_an_ongoing_transaction_aborts_it_under_a_bumped_epoch() {
        let meta = started(7, 3);
        let ongoing = add_partitions(Some(&meta), false, 7, 3, &[tp("t", 0)], 5).expect("allowed").expect("a change");
        let Ok(InitStep::AbortFirst(abort)) = init(Some(&ongoing), 1000, None, None, true, 6) else { panic!() };
        assert_eq!((abort.state, abort.producer_epoch), (TxnState::PrepareAbort, 4));
        assert_eq!(abort.partitions, ongoing.partitions, "the markers go to every partition");
        assert_eq!(init(Some(&abort), 1000, None, None, true, 7), Err(TxnError::ConcurrentTransactions));
    }

    #[test]
    fn exhausted_epochs_or_another_principals_id_take_a_new_producer_id() {
        let tired = started(7, EPOCH_EXHAUSTED);
        assert_eq!(init(Some(&tired), 1000, None, None, true, 1), Ok(InitStep::NeedProducerId));
        let Ok(InitStep::Write(rotated)) = init(Some(&tired), 1000, None, Some(9), true, 1) else { panic!() };
        assert_eq!((rotated.producer_id, rotated.producer_epoch, rotated.last_producer_id), (9, 0, 7));
        let theirs = started(7, 2);
        assert_eq!(init(Some(&theirs), 1000, None, None, false, 1), Ok(InitStep::NeedProducerId));
    }

    #[test]
    fn kip_360_a_producer_that_names_its_epoch_bumps_it_and_a_retry_gets_the_same_answer() {
        let meta = started(7, 4);
        let Ok(InitStep::Write(bumped)) = init(Some(&meta), 1000, Some((7, 4)), None, true, 1) else { panic!() };
        assert_eq!((bumped.producer_epoch, bumped.last_producer_epoch), (5, 4));
        let Ok(InitStep::Write(retry)) = init(Some(&bumped), 1000, Some((7, 4)), None, true, 2) else { panic!() };
        assert_eq!(retry.producer_epoch, 5, "a retry is not bumped again");
        assert_eq!(init(Some(&bumped), 1000, Some((7, 2)), None, true, 2), Err(TxnError::ProducerFenced));
        assert_eq!(init(Some(&bumped), 1000, Some((8, 5)), None, true, 2), Err(TxnError::ProducerFenced));
    }

    #[test]
    fn a_transaction_commits_through_prepare_and_complete() {
        let meta = started(7, 0);
        let ongoing = add_partitions(Some(&meta), false, 7, 0, &[tp("t", 0)], 5).expect("allowed").expect("a change");
        assert_eq!((ongoing.state, ongoing.txn_start_ms), (TxnState::Ongoing, 5));
        assert_eq!(add_partitions(Some(&ongoing), false, 7, 0, &[tp("t", 0)], 6), Ok(None), "already in");
        let Ok(EndStep::Prepare(prepared)) = end(Some(&ongoing), false, 7, 0, true, false, None, 7) else { panic!() };
        assert_eq!(prepared.state, TxnState::PrepareCommit);
        assert_eq!(end(Some(&prepared), false, 7, 0, true, false, None, 8), Err(TxnError::ConcurrentTransactions));
        assert_eq!(end(Some(&prepared), false, 7, 0, false, false, None, 8), Err(TxnError::InvalidTxnState));
        assert_eq!(
            add_partitions(Some(&prepared), false, 7, 0, &[tp("u", 0)], 8),
            Err(TxnError::ConcurrentTransactions)
        );
        let done = complete(&prepared, 9);
        assert_eq!((done.state, done.partitions.len()), (TxnState::CompleteCommit, 0));
        assert_eq!(
            end(Some(&done), false, 7, 0, true, false, None, 10),
            Ok(EndStep::Done((7, 0))),
            "a retried commit succeeds"
        );
        assert_eq!(end(Some(&done), false, 7, 0, false, false, None, 10), Err(TxnError::InvalidTxnState));
        assert_eq!(
            end(Some(&meta), false, 7, 0, true, false, None, 10),
            Err(TxnError::InvalidTxnState),
            "nothing to end"
        );
        let next = add_partitions(Some(&done), false, 7, 0, &[tp("u", 1)], 11).expect("allowed").expect("a change");
        assert_eq!(next.partitions.len(), 1, "a new transaction starts with only its own partitions");
    }

    /// KIP-890 part 2: a v2 client's transaction ends under the next
    /// epoch, the answer names it, a retry with the epoch before is
    /// recognised, and the next transaction begins at the new epoch.
    #[test]
    fn a_v2_end_bumps_the_epoch_and_a_retry_with_the_old_one_succeeds() {
        let meta = started(7, 3);
        let ongoing = add_partitions(Some(&meta), false, 7, 3, &[tp("t", 0)], 5).expect("allowed").expect("a change");
        let Ok(EndStep::Prepare(prepared)) = end(Some(&ongoing), false, 7, 3, true, true, None, 6) else { panic!() };
        assert_eq!(
            (prepared.state, prepared.producer_epoch, prepared.last_producer_epoch),
            (TxnState::PrepareCommit, 4, 3)
        );
        assert_eq!(prepared.continues_as(), (7, 4));
        assert_eq!(prepared.partitions, ongoing.partitions, "the markers go to every partition");
        // A retry while the markers are written: retriable.
        assert_eq!(end(Some(&prepared), false, 7, 3, true, true, None, 7), Err(TxnError::ConcurrentTransactions));
        let done = complete(&prepared, 8);
        assert_eq!(end(Some(&done), false, 7, 3, true, true, None, 9), Ok(EndStep::Done((7, 4))));
        // The other outcome, or an older epoch, is not a retry.
        assert_eq!(end(Some(&done), false, 7, 3, false, true, None, 9), Err(TxnError::ProducerFenced));
        assert_eq!(end(Some(&done), false, 7, 2, true, true, None, 9), Err(TxnError::ProducerFenced));
        // The old epoch can no longer add a partition: a late batch of the
        // ended transaction is fenced.
        assert_eq!(add_partitions(Some(&done), false, 7, 3, &[tp("t", 1)], 9), Err(TxnError::ProducerFenced));
        let next = add_partitions(Some(&done), false, 7, 4, &[tp("t", 1)], 10).expect("allowed").expect("a change");
        assert_eq!((next.state, next.producer_epoch, next.partitions.len()), (TxnState::Ongoing, 4, 1));
        // A v2 commit of nothing is refused, as Kafka refuses it.
        assert_eq!(end(Some(&done), false, 7, 4, true, true, None, 11), Err(TxnError::InvalidTxnState));
    }

    #[test]
    fn a_v2_abort_with_nothing_added_still_bumps_the_epoch() {
        let meta = started(7, 0);
        let Ok(EndStep::Prepare(aborting)) = end(Some(&meta), false, 7, 0, false, true, None, 1) else { panic!() };
        assert_eq!(
            (aborting.state, aborting.producer_epoch, aborting.partitions.len()),
            (TxnState::PrepareAbort, 1, 0)
        );
        let done = complete(&aborting, 2);
        assert_eq!(end(Some(&done), false, 7, 0, false, true, None, 3), Ok(EndStep::Done((7, 1))), "a retry");
        let Ok(EndStep::Prepare(again)) = end(Some(&done), false, 7, 1, false, true, None, 4) else { panic!() };
        assert_eq!(again.producer_epoch, 2);
    }

    #[test]
    fn a_v2_end_with_exhausted_epochs_rotates_the_producer_id_after_the_markers() {
        let meta = started(7, EPOCH_EXHAUSTED);
        let tps = [tp("t", 0)];
        let ongoing =
            add_partitions(Some(&meta), false, 7, EPOCH_EXHAUSTED, &tps, 1).expect("allowed").expect("a change");
        assert_eq!(end(Some(&ongoing), false, 7, EPOCH_EXHAUSTED, true, true, None, 2), Ok(EndStep::NeedProducerId));
        let Ok(EndStep::Prepare(prepared)) = end(Some(&ongoing), false, 7, EPOCH_EXHAUSTED, true, true, Some(9), 2)
        else {
            panic!()
        };
        // The markers go out under the old id at the last epoch.
        assert_eq!((prepared.producer_id, prepared.producer_epoch), (7, i16::MAX));
        assert_eq!(prepared.continues_as(), (9, 0));
        let done = complete(&prepared, 3);
        assert_eq!(
            (done.producer_id, done.producer_epoch, done.last_producer_id, done.next_producer_id),
            (9, 0, 7, -1)
        );
        assert_eq!(end(Some(&done), false, 7, EPOCH_EXHAUSTED, true, true, None, 4), Ok(EndStep::Done((9, 0))));
        assert!(add_partitions(Some(&done), false, 9, 0, &tps, 5).expect("allowed").is_some());
        // A v1 client's end never bumps.
        let Ok(EndStep::Prepare(v1)) = end(Some(&ongoing), false, 7, EPOCH_EXHAUSTED, true, false, None, 2) else {
            panic!()
        };
        assert_eq!(v1.continues_as(), (7, EPOCH_EXHAUSTED));
    }

    #[test]
    fn an_ongoing_transaction_times_out_after_its_timeout_from_its_start() {
        let meta = started(7, 0);
        let ongoing = add_partitions(Some(&meta), false, 7, 0, &[tp("t", 0)], 100).expect("allowed").expect("a change");
        assert!(!timed_out(&ongoing, 100 + 999));
        assert!(timed_out(&ongoing, 100 + 1000));
        assert!(!timed_out(&meta, i64::MAX), "only Ongoing transactions time out");
    }

    #[test]
    fn a_fenced_producer_is_told_so_even_while_a_change_is_on_its_way() {
        let meta = started(7, 2);
        assert_eq!(add_partitions(Some(&meta), true, 7, 1, &[tp("t", 0)], 1), Err(TxnError::ProducerFenced));
        assert_eq!(end(Some(&meta), true, 7, 1, true, false, None, 1), Err(TxnError::ProducerFenced));
        assert_eq!(add_partitions(Some(&meta), true, 7, 2, &[tp("t", 0)], 1), Err(TxnError::ConcurrentTransactions));
    }

    #[test]
    fn a_transaction_is_capped_in_partitions() {
        let meta = started(7, 0);
        let many: Vec<Tp> = (0..=TXN_PARTITIONS_MAX as i32).map(|p| tp("t", p)).collect();
        assert_eq!(add_partitions(Some(&meta), false, 7, 0, &many, 1), Err(TxnError::TooManyPartitions));
    }

    #[test]
    fn state_names_and_ids_are_kafkas() {
        for state in TxnState::ALL {
            assert_eq!(TxnState::from_id(state.id()), Some(state));
            assert_eq!(TxnState::parse(state.name()), Some(state));
        }
        assert_eq!(TxnState::CompleteAbort.id(), 5);
    }
}
