//! KIP-890 part 1, the partition leader's side of the question: is this
//! partition in the producer's ongoing transaction? Asked of the
//! transactional id's coordinator before the producer's first
//! transactional batch of a transaction is taken on a partition
//! (`shard.rs`, verifications). Without it a batch that arrives after its
//! transaction ended (a retry delayed past an abort, a client that never
//! added the partition) opens a transaction no coordinator will end, and
//! the partition's last stable offset stops there.
//!
//! KIP-890 part 2 (transactions v2) asks the same question as an order:
//! a v2 client adds no partition itself, so the leader of a partition its
//! first batch of a transaction goes to adds the partition
//! (`Ask::Add`), as the group coordinator adds a group's offsets
//! partition for a TxnOffsetCommit v5. The coordinator refuses an older
//! epoch, so a late batch of an ended transaction is fenced.
//!
//! The coordinator on this broker is asked with a `TxnOp::Verify` (or
//! `AddPartitions`); one on another broker with a native
//! AddPartitionsToTxn (marked `verify_only` for a question), over the
//! connections markers use (`markers.rs`), which prove this broker's
//! identity: the other side answers a question only on such a one.

use std::rc::Rc;

use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC, group_partition};

use super::markers::{connect, destination};
use super::{TxnError, TxnOp, call};
use crate::group::Tp;
use crate::replica::peer::Peer;
use crate::shard::Shard;

/// What a partition leader asks of a transaction's coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Is the partition in the producer's ongoing transaction (part 1)?
    Verify,
    /// Add it, beginning the transaction if none is ongoing (part 2).
    Add,
}

/// Asks `txn_id`'s coordinator whether `tp` is in the ongoing transaction
/// of (`producer_id`, `producer_epoch`), or to add it. A coordinator that
/// cannot be reached (moving, loading, a broken connection) is an error
/// the producer retries (`TxnError::CoordinatorNotAvailable` and kin).
pub(crate) async fn verify(
    shard: &Rc<Shard>,
    ask: Ask,
    txn_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    tp: Tp,
) -> Result<(), TxnError> {
    let catalog = shard.shared.catalog.load_full();
    let topic = catalog.topics.get(TRANSACTION_STATE_TOPIC).ok_or(TxnError::CoordinatorNotAvailable)?;
    let partition = group_partition(txn_id, topic.partitions);
    let leader = topic.assignment(partition).leader;
    if leader < 0 {
        return Err(TxnError::CoordinatorNotAvailable);
    }
    if leader == shard.shared.config.node_id {
        let txn_id = txn_id.to_string();
        let partitions = vec![tp];
        return call(shard, &txn_id.clone(), |reply| match ask {
            Ask::Verify => TxnOp::Verify { txn_id, producer_id, producer_epoch, partitions, reply },
            Ask::Add => TxnOp::AddPartitions { txn_id, producer_id, producer_epoch, partitions, reply },
        })
        .await;
    }
    let to = destination(&catalog, TRANSACTION_STATE_TOPIC, partition, leader).map_err(|message| {
        tracing::debug!(shard = shard.id, txn_id, "transaction verification: {message}");
        TxnError::CoordinatorNotAvailable
    })?;
    let question = Question { ask, txn_id, producer_id, producer_epoch, tp: &tp };
    let peers = &shard.txns.peers;
    // An idle connection may have been closed meanwhile: then a new one
    // (the question changes nothing, so asking twice is harmless).
    if let Some(mut peer) = peers.take(to)
        && let Ok(answer) = call_peer(&mut peer, &question).await
    {
        peers.put(to, peer);
        return answer;
    }
    let asked = async {
        let mut peer = connect(shard, &catalog, to).await?;
        let answer = call_peer(&mut peer, &question).await?;
        peers.put(to, peer);
        Ok::<_, String>(answer)
    };
    asked.await.unwrap_or_else(|message| {
        tracing::debug!(shard = shard.id, txn_id, coordinator = to.0, "transaction verification: {message}");
        Err(TxnError::CoordinatorNotAvailable)
    })
}

/// Transactions v2: `group_id`'s partition of `__consumer_offsets` joins
/// the producer's transaction, as a TxnOffsetCommit v5 asks (its client
/// sent no AddOffsetsToTxn); the group's coordinator calls this before it
/// writes the offsets there.
pub(crate) async fn add_offsets_partition(
    shard: &Rc<Shard>,
    txn_id: &str,
    group_id: &str,
    producer_id: i64,
    producer_epoch: i16,
) -> Result<(), TxnError> {
    let partitions = shard.shared.catalog.load().topics.get(CONSUMER_OFFSETS_TOPIC).map(|topic| topic.partitions);
    let partitions = partitions.ok_or(TxnError::CoordinatorNotAvailable)?;
    let tp = (CONSUMER_OFFSETS_TOPIC.to_string(), group_partition(group_id, partitions) as i32);
    verify(shard, Ask::Add, txn_id, producer_id, producer_epoch, tp).await
}

struct Question<'a> {
    ask: Ask,
    txn_id: &'a str,
    producer_id: i64,
    producer_epoch: i16,
    tp: &'a Tp,
}

/// One AddPartitionsToTxn (verify-only for a question) on `peer`: the
/// coordinator's answer, or why there was none.
async fn call_peer(peer: &mut Peer, question: &Question<'_>) -> Result<Result<(), TxnError>, String> {
    let mut builder = FlatBufferBuilder::new();
    let partitions = builder.create_vector(&[question.tp.1]);
    let topic = builder.create_string(&question.tp.0);
    let topics = [TopicPartitions::create(
        &mut builder,
        &TopicPartitionsArgs { topic: Some(topic), partitions: Some(partitions) },
    )];
    let topics = builder.create_vector(&topics);
    let transactional_id = builder.create_string(question.txn_id);
    let body = AddPartitionsToTxnRequest::create(
        &mut builder,
        &AddPartitionsToTxnRequestArgs {
            transactional_id: Some(transactional_id),
            producer_id: question.producer_id,
            producer_epoch: question.producer_epoch,
            topics: Some(topics),
            verify_only: question.ask == Ask::Verify,
        },
    );
    let frame =
        peer.call(builder, Body::AddPartitionsToTxnRequest, body.as_union_value()).await.map_err(|e| e.to_string())?;
    let envelope = frame.read().map_err(|e| e.to_string())?;
    let response = envelope.body_as_add_partitions_to_txn_response().ok_or("not an add partitions to txn response")?;
    Ok(from_code(response.error()))
}

/// The coordinator's answer, back from the native code it travelled in
/// (`native/txn.rs` txn_code, its inverse here).
fn from_code(code: ErrorCode) -> Result<(), TxnError> {
    Err(match code {
        ErrorCode::None => return Ok(()),
        ErrorCode::InvalidTxnState => TxnError::InvalidTxnState,
        ErrorCode::ConcurrentTransactions => TxnError::ConcurrentTransactions,
        ErrorCode::InvalidRequest => TxnError::TooManyPartitions,
        ErrorCode::ProducerFenced => TxnError::ProducerFenced,
        ErrorCode::InvalidProducerIdMapping => TxnError::InvalidProducerIdMapping,
        ErrorCode::NotLeaderOrFollower => TxnError::NotCoordinator,
        ErrorCode::NotReady => TxnError::CoordinatorLoadInProgress,
        _ => TxnError::CoordinatorNotAvailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal the coordinator can give a verification survives the
    /// trip through the native code (native/txn.rs txn_code).
    #[test]
    fn a_remote_coordinators_answer_means_what_a_local_one_would() {
        for err in [
            TxnError::InvalidTxnState,
            TxnError::ConcurrentTransactions,
            TxnError::TooManyPartitions,
            TxnError::ProducerFenced,
            TxnError::InvalidProducerIdMapping,
            TxnError::NotCoordinator,
            TxnError::CoordinatorLoadInProgress,
            TxnError::CoordinatorNotAvailable,
        ] {
            let (code, _) = crate::native::txn_code(err);
            assert_eq!(from_code(code), Err(err), "{err:?} as {code:?}");
        }
        assert_eq!(from_code(ErrorCode::None), Ok(()));
    }
}
