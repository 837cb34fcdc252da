//! The transaction APIs on the native port (issue 17): InitProducerId with
//! a transactional id, AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit and EndTxn, served by the same transaction and group
//! coordinators as Kafka's (`txn/`, `group/txn_offsets.rs`), so a native
//! transactional producer and a Kafka one share transactional ids, fencing
//! and markers. ACLs are checked before (`authz.rs`); each answer is one
//! code for the whole request.

use std::rc::Rc;

use futures::channel::oneshot;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, Frame, group_partition, validate_group_id};

use crate::group::txn_offsets::TxnCommit;
use crate::group::{GroupOp, Tp, classic::codes};
use crate::limits::PARTITIONS_PER_REQUEST_MAX;
use crate::shard::Shard;
use crate::txn::{TxnError, TxnOp, call};
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

/// The native code for a coordinator's refusal. The codes the client
/// retries on are the group coordinator's (`NotLeaderOrFollower`: look the
/// coordinator up again; `NotReady`: loading), so one retry loop serves
/// both coordinators.
pub(crate) fn txn_code(err: TxnError) -> (ErrorCode, &'static str) {
    match err {
        TxnError::NotCoordinator => (ErrorCode::NotLeaderOrFollower, "not the transactional id's coordinator"),
        TxnError::CoordinatorLoadInProgress => (ErrorCode::NotReady, "the transaction coordinator is loading"),
        TxnError::CoordinatorNotAvailable | TxnError::ProducerIdsUnavailable => {
            (ErrorCode::LeaderNotAvailable, "no transaction coordinator available")
        }
        TxnError::ConcurrentTransactions => {
            (ErrorCode::ConcurrentTransactions, "the previous transaction is still being completed")
        }
        TxnError::ProducerFenced => (ErrorCode::ProducerFenced, "a newer producer with this transactional id exists"),
        TxnError::InvalidProducerIdMapping => {
            (ErrorCode::InvalidProducerIdMapping, "the producer id is not the transactional id's")
        }
        TxnError::InvalidTxnState => (ErrorCode::InvalidTxnState, "not valid in the transaction's state"),
        TxnError::InvalidTransactionTimeout => {
            (ErrorCode::InvalidTransactionTimeout, "transaction timeout above transaction.max.timeout.ms")
        }
        TxnError::TooManyPartitions => (ErrorCode::InvalidRequest, "too many partitions in the transaction"),
    }
}

/// The native code for the group coordinator's answer to a transactional
/// offset commit (it answers in Kafka's codes, for both front-ends).
fn group_code(code: i16) -> ErrorCode {
    const INVALID_PRODUCER_EPOCH: i16 = 47;
    const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    match code {
        codes::NONE => ErrorCode::None,
        codes::COORDINATOR_LOAD_IN_PROGRESS | codes::REBALANCE_IN_PROGRESS => ErrorCode::NotReady,
        codes::NOT_COORDINATOR => ErrorCode::NotLeaderOrFollower,
        codes::COORDINATOR_NOT_AVAILABLE => ErrorCode::LeaderNotAvailable,
        codes::UNKNOWN_TOPIC_OR_PARTITION => ErrorCode::UnknownTopicOrPartition,
        codes::UNKNOWN_MEMBER_ID => ErrorCode::UnknownMemberId,
        codes::ILLEGAL_GENERATION | codes::FENCED_MEMBER_EPOCH | codes::STALE_MEMBER_EPOCH => {
            ErrorCode::FencedMemberEpoch
        }
        codes::INVALID_REQUEST => ErrorCode::InvalidRequest,
        codes::INVALID_COMMIT_OFFSET_SIZE => ErrorCode::MessageTooLarge,
        INVALID_PRODUCER_EPOCH => ErrorCode::ProducerFenced,
        INVALID_PRODUCER_ID_MAPPING => ErrorCode::InvalidProducerIdMapping,
        _ => ErrorCode::Unknown,
    }
}

fn valid_txn_id(txn_id: &str) -> bool {
    // Longer ids never get here (`caps.rs`).
    !txn_id.is_empty()
}

macro_rules! answer {
    ($table:ident, $args:ident, $body:ident, $request_id:expr, $error:expr, $message:expr) => {{
        let mut builder = FlatBufferBuilder::new();
        let message = $message.map(|m: &str| builder.create_string(m));
        let body = $table::create(&mut builder, &$args { error: $error, message });
        Response::Frame(envelope_frame(builder, $request_id, Body::$body, body.as_union_value(), 0))
    }};
}

fn add_partitions_answer(request_id: u64, result: Result<(), (ErrorCode, &str)>) -> Response {
    let (error, message) = result.err().map_or((ErrorCode::None, None), |(code, text)| (code, Some(text)));
    answer!(
        AddPartitionsToTxnResponse,
        AddPartitionsToTxnResponseArgs,
        AddPartitionsToTxnResponse,
        request_id,
        error,
        message
    )
}

fn add_offsets_answer(request_id: u64, result: Result<(), (ErrorCode, &str)>) -> Response {
    let (error, message) = result.err().map_or((ErrorCode::None, None), |(code, text)| (code, Some(text)));
    answer!(AddOffsetsToTxnResponse, AddOffsetsToTxnResponseArgs, AddOffsetsToTxnResponse, request_id, error, message)
}

fn txn_offset_commit_answer(request_id: u64, result: Result<(), (ErrorCode, &str)>) -> Response {
    let (error, message) = result.err().map_or((ErrorCode::None, None), |(code, text)| (code, Some(text)));
    answer!(TxnOffsetCommitResponse, TxnOffsetCommitResponseArgs, TxnOffsetCommitResponse, request_id, error, message)
}

/// EndTxn's answer: the producer id and epoch to go on with, or why not.
fn end_txn_answer(request_id: u64, result: Result<(i64, i16), (ErrorCode, &str)>) -> Response {
    let mut builder = FlatBufferBuilder::new();
    let args = match result {
        Ok((producer_id, producer_epoch)) => {
            EndTxnResponseArgs { error: ErrorCode::None, message: None, producer_id, producer_epoch }
        }
        Err((error, text)) => {
            let message = Some(builder.create_string(text));
            EndTxnResponseArgs { error, message, producer_id: -1, producer_epoch: -1 }
        }
    };
    let body = EndTxnResponse::create(&mut builder, &args);
    Response::Frame(envelope_frame(builder, request_id, Body::EndTxnResponse, body.as_union_value(), 0))
}

/// InitProducerId with a transactional id: the coordinator bumps the
/// epoch (fencing an older instance) after ending what it left open.
pub(super) fn init_producer_id(
    shard: &Rc<Shard>,
    session: &super::Session,
    txn_id: &str,
    timeout_ms: i32,
    request_id: u64,
) -> Reply {
    let init_answer = move |result: Result<(i64, i16), (ErrorCode, &str)>| {
        let mut builder = FlatBufferBuilder::new();
        let args = match result {
            Ok((producer_id, producer_epoch)) => {
                InitProducerIdResponseArgs { error: ErrorCode::None, producer_id, producer_epoch, message: None }
            }
            Err((error, message)) => InitProducerIdResponseArgs {
                error,
                producer_id: -1,
                producer_epoch: -1,
                message: Some(builder.create_string(message)),
            },
        };
        let body = InitProducerIdResponse::create(&mut builder, &args);
        Response::Frame(envelope_frame(builder, request_id, Body::InitProducerIdResponse, body.as_union_value(), 0))
    };
    if !valid_txn_id(txn_id) {
        return Reply::Now(init_answer(Err((ErrorCode::InvalidRequest, "an empty transactional id"))));
    }
    let principal = (**session.principal.borrow()).clone();
    let (shard, txn_id) = (shard.clone(), txn_id.to_string());
    Reply::Later(Box::pin(async move {
        let result = call(&shard, &txn_id.clone(), |reply| TxnOp::Init {
            txn_id,
            timeout_ms,
            expected: None,
            principal,
            fresh_producer_id: None,
            reply,
        })
        .await;
        init_answer(result.map_err(txn_code))
    }))
}

pub(super) fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    session: &super::Session,
    frame: &Frame,
    request_id: u64,
) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_add_partitions_to_txn_request()) else {
        return invalid(request_id, "add partitions to txn body missing");
    };
    let txn_id = request.transactional_id().unwrap_or_default().to_string();
    if !valid_txn_id(&txn_id) {
        return Reply::Now(add_partitions_answer(
            request_id,
            Err((ErrorCode::InvalidRequest, "an empty transactional id")),
        ));
    }
    let catalog = shard.shared.catalog.load_full();
    let mut partitions: Vec<Tp> = Vec::new();
    for entry in request.topics().iter().flatten() {
        let topic = entry.topic().unwrap_or_default();
        // Internal topics join a transaction only through AddOffsetsToTxn,
        // or a group coordinator's add for a TxnOffsetCommit v5 (another
        // broker, KIP-890 part 2).
        let offsets_from_broker = topic == CONSUMER_OFFSETS_TOPIC && session.broker.get() >= 0;
        if spate_flatbuf::is_internal_topic(topic) && !offsets_from_broker {
            return Reply::Now(add_partitions_answer(
                request_id,
                Err((ErrorCode::InternalTopic, "internal topics join a transaction through AddOffsetsToTxn only")),
            ));
        }
        let meta = catalog.topics.get(topic);
        for partition in entry.partitions().iter().flatten() {
            if !meta.is_some_and(|t| partition >= 0 && (partition as u32) < t.partitions) {
                return Reply::Now(add_partitions_answer(
                    request_id,
                    Err((ErrorCode::UnknownTopicOrPartition, "a partition of the request does not exist")),
                ));
            }
            partitions.push((topic.to_string(), partition));
        }
    }
    // Counted by `caps.rs` already; kept here beside the copy it bounds.
    debug_assert!(partitions.len() <= PARTITIONS_PER_REQUEST_MAX);
    if partitions.is_empty() {
        return Reply::Now(add_partitions_answer(request_id, Ok(())));
    }
    let producer = (request.producer_id(), request.producer_epoch());
    if request.verify_only() {
        // KIP-890 part 1: a partition leader's question (`txn/verify.rs`),
        // Kafka's AddPartitionsToTxn v4 verifyOnly; brokers only.
        if session.broker.get() < 0 {
            return Reply::Now(add_partitions_answer(
                request_id,
                Err((ErrorCode::ClusterAuthorizationFailed, "verify_only is for brokers")),
            ));
        }
    }
    add_to_transaction(shard, txn_id, producer, partitions, request.verify_only(), move |result| {
        add_partitions_answer(request_id, result)
    })
}

/// Adds `partitions` to the transactional id's open transaction at its
/// coordinator, or with `verify_only` (another broker's partition leader
/// asking) answers whether they are in it; `answer` builds the response
/// from the outcome.
fn add_to_transaction(
    shard: &Rc<Shard>,
    txn_id: String,
    (producer_id, producer_epoch): (i64, i16),
    partitions: Vec<Tp>,
    verify_only: bool,
    answer: impl FnOnce(Result<(), (ErrorCode, &str)>) -> Response + 'static,
) -> Reply {
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let result = call(&shard, &txn_id.clone(), |reply| {
            if verify_only {
                TxnOp::Verify { txn_id, producer_id, producer_epoch, partitions, reply }
            } else {
                TxnOp::AddPartitions { txn_id, producer_id, producer_epoch, partitions, reply }
            }
        })
        .await;
        answer(result.map_err(txn_code))
    }))
}

pub(super) fn add_offsets_to_txn(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_add_offsets_to_txn_request()) else {
        return invalid(request_id, "add offsets to txn body missing");
    };
    let txn_id = request.transactional_id().unwrap_or_default().to_string();
    let group_id = request.group_id().unwrap_or_default().to_string();
    if !valid_txn_id(&txn_id) {
        return Reply::Now(add_offsets_answer(
            request_id,
            Err((ErrorCode::InvalidRequest, "an empty transactional id")),
        ));
    }
    if validate_group_id(&group_id).is_err() {
        return Reply::Now(add_offsets_answer(request_id, Err((ErrorCode::InvalidGroupId, "an invalid group id"))));
    }
    // The group's partition of __consumer_offsets joins the transaction:
    // its marker is what makes the transaction's offsets count.
    let Some(offsets_partitions) = shard.shared.catalog.load().topics.get(CONSUMER_OFFSETS_TOPIC).map(|t| t.partitions)
    else {
        return Reply::Now(add_offsets_answer(
            request_id,
            Err((ErrorCode::LeaderNotAvailable, "__consumer_offsets does not exist yet")),
        ));
    };
    let partition = (CONSUMER_OFFSETS_TOPIC.to_string(), group_partition(&group_id, offsets_partitions) as i32);
    let producer = (request.producer_id(), request.producer_epoch());
    add_to_transaction(shard, txn_id, producer, vec![partition], false, move |result| {
        add_offsets_answer(request_id, result)
    })
}

pub(super) fn txn_offset_commit(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_txn_offset_commit_request()) else {
        return invalid(request_id, "txn offset commit body missing");
    };
    let group_id = request.group_id().unwrap_or_default().to_string();
    if validate_group_id(&group_id).is_err() {
        return Reply::Now(txn_offset_commit_answer(
            request_id,
            Err((ErrorCode::InvalidGroupId, "an invalid group id")),
        ));
    }
    let mut offsets = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default();
        for part in topic.partitions().iter().flatten() {
            offsets.push(((name.to_string(), part.partition()), part.offset()));
        }
    }
    if offsets.is_empty() {
        return Reply::Now(txn_offset_commit_answer(request_id, Ok(())));
    }
    // Transactions v2: no AddOffsetsToTxn was sent; the group's offsets
    // partition joins the transaction first.
    let join = request.transactions_v2().then(|| request.transactional_id().unwrap_or_default().to_string());
    let (producer_id, producer_epoch) = (request.producer_id(), request.producer_epoch());
    let (reply, wait) = oneshot::channel();
    let op = GroupOp::TxnCommit(TxnCommit {
        group_id: group_id.clone(),
        member_id: request.member_id().unwrap_or_default().to_string(),
        group_instance_id: None,
        // A KIP-848 member's epoch stands where a classic member's
        // generation does (the coordinator checks whichever the group has).
        generation_id: request.member_epoch(),
        producer_id,
        producer_epoch,
        offsets,
        reply,
    });
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        if let Some(txn_id) = join {
            let joined = crate::txn::add_offsets_partition(&shard, &txn_id, &group_id, producer_id, producer_epoch);
            if let Err(err) = joined.await {
                return txn_offset_commit_answer(request_id, Err(txn_code(err)));
            }
        }
        if !crate::group::route(&shard, &group_id, op) {
            return txn_offset_commit_answer(
                request_id,
                Err((ErrorCode::LeaderNotAvailable, "no group coordinator: __consumer_offsets is missing")),
            );
        }
        let code = wait.await.unwrap_or(codes::COORDINATOR_NOT_AVAILABLE);
        let result = match group_code(code) {
            ErrorCode::None => Ok(()),
            error => Err((error, "the group coordinator refused the transactional offset commit")),
        };
        txn_offset_commit_answer(request_id, result)
    }))
}

pub(super) fn end_txn(shard: &Rc<Shard>, session: &super::Session, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_end_txn_request()) else {
        return invalid(request_id, "end txn body missing");
    };
    let txn_id = request.transactional_id().unwrap_or_default().to_string();
    if !valid_txn_id(&txn_id) {
        return Reply::Now(end_txn_answer(request_id, Err((ErrorCode::InvalidRequest, "an empty transactional id"))));
    }
    let (producer_id, producer_epoch, commit) = (request.producer_id(), request.producer_epoch(), request.commit());
    // Transactions v2 (KIP-890 part 2): the next epoch, in the answer.
    let bump_epoch = request.transactions_v2();
    let principal = (**session.principal.borrow()).clone();
    let shard = shard.clone();
    Reply::Later(Box::pin(async move {
        let producer = (producer_id, producer_epoch);
        let result = crate::txn::end_transaction(&shard, txn_id, producer, commit, bump_epoch, principal).await;
        end_txn_answer(request_id, result.map_err(txn_code))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_refusals_map_to_codes_the_client_retries_or_reports() {
        // The client's group retry loop follows these two (coordinator
        // moved, loading): the transaction coordinator must use the same.
        assert_eq!(txn_code(TxnError::NotCoordinator).0, ErrorCode::NotLeaderOrFollower);
        assert_eq!(txn_code(TxnError::CoordinatorLoadInProgress).0, ErrorCode::NotReady);
        assert_eq!(txn_code(TxnError::ProducerFenced).0, ErrorCode::ProducerFenced);
        assert_eq!(group_code(codes::NOT_COORDINATOR), ErrorCode::NotLeaderOrFollower);
        assert_eq!(group_code(47), ErrorCode::ProducerFenced);
        assert_eq!(group_code(codes::STALE_MEMBER_EPOCH), ErrorCode::FencedMemberEpoch);
        assert_eq!(group_code(9999), ErrorCode::Unknown);
    }
}
