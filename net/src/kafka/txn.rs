//! Kafka's transaction APIs on Spate's transaction coordinator (`txn/`):
//! InitProducerId with a transactional id, AddPartitionsToTxn (v0-v3, the
//! client's), AddOffsetsToTxn, EndTxn, DescribeTransactions and
//! ListTransactions, authorized with Kafka's rules and answered with
//! Kafka's codes for each version.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, group_partition};
use spate_replication::acl::{AclOperation, AclResourceType};

use super::{Ctx, decode, respond};
use crate::group::Tp;
use crate::limits::{GROUPS_PER_REQUEST_MAX, NAME_BYTES_MAX, PARTITIONS_PER_REQUEST_MAX};
use crate::txn::{TxnError, TxnMeta, TxnOp, TxnState, call, end_transaction};
use crate::wire::{Reply, Response};

/// Kafka's code for a refusal, at the request's version: clients before
/// PRODUCER_FENCED (InitProducerId v4, the others v2) get
/// INVALID_PRODUCER_EPOCH, as Kafka answers them.
fn code(ctx: &Ctx, err: TxnError) -> i16 {
    let fenced_since = if ctx.api == kafka_protocol::messages::ApiKey::InitProducerId { 4 } else { 2 };
    match err {
        TxnError::NotCoordinator => K::NotCoordinator.code(),
        TxnError::CoordinatorLoadInProgress => K::CoordinatorLoadInProgress.code(),
        TxnError::CoordinatorNotAvailable | TxnError::ProducerIdsUnavailable => K::CoordinatorNotAvailable.code(),
        TxnError::ConcurrentTransactions => K::ConcurrentTransactions.code(),
        TxnError::ProducerFenced if ctx.version >= fenced_since => K::ProducerFenced.code(),
        TxnError::ProducerFenced => K::InvalidProducerEpoch.code(),
        TxnError::InvalidProducerIdMapping => K::InvalidProducerIdMapping.code(),
        TxnError::InvalidTxnState => K::InvalidTxnState.code(),
        TxnError::InvalidTransactionTimeout => K::InvalidTransactionTimeout.code(),
        TxnError::TooManyPartitions => K::InvalidRequest.code(),
    }
}

fn valid_id(txn_id: &str) -> bool {
    !txn_id.is_empty() && txn_id.len() <= NAME_BYTES_MAX
}

/// InitProducerId with a transactional id (the idempotent case stays in
/// `produce.rs`).
pub(crate) fn init_producer_id(ctx: Ctx, request: InitProducerIdRequest, txn_id: String) -> Reply {
    let refused = |ctx: &Ctx, code: i16| {
        let response = InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        Reply::Now(respond(ctx, &response))
    };
    if !ctx.allowed(AclOperation::Write, AclResourceType::TransactionalId, &txn_id) {
        return refused(&ctx, K::TransactionalIdAuthorizationFailed.code());
    }
    if !valid_id(&txn_id) {
        return refused(&ctx, K::InvalidRequest.code());
    }
    // KIP-360 (v3+): the producer id and epoch the client had, if any.
    let expected = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    let timeout_ms = request.transaction_timeout_ms;
    let principal = (*ctx.principal).clone();
    Reply::Later(Box::pin(async move {
        let result = call(&ctx.shard, &txn_id.clone(), |reply| TxnOp::Init {
            txn_id,
            timeout_ms,
            expected,
            principal,
            fresh_producer_id: None,
            reply,
        })
        .await;
        let response = match result {
            Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(producer_epoch),
            Err(err) => InitProducerIdResponse::default()
                .with_error_code(code(&ctx, err))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        };
        respond(&ctx, &response)
    }))
}

/// The answer to AddPartitionsToTxn v0-v3: a code per partition.
fn add_partitions_response(answers: &BTreeMap<String, Vec<(i32, i16)>>) -> AddPartitionsToTxnResponse {
    let topics = answers
        .iter()
        .map(|(topic, partitions)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(TopicName(StrBytes::from_string(topic.clone())))
                .with_results_by_partition(
                    partitions
                        .iter()
                        .map(|(partition, code)| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*partition)
                                .with_partition_error_code(*code)
                        })
                        .collect(),
                )
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics)
}

pub(crate) fn add_partitions_to_txn(ctx: Ctx, body: Bytes) -> Reply {
    let request: AddPartitionsToTxnRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let count: usize = request.v3_and_below_topics.iter().map(|t| t.partitions.len()).sum();
    if count > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let txn_id = request.v3_and_below_transactional_id.0.to_string();
    let catalog = ctx.shard.shared.catalog.load_full();
    let txn_denied = !ctx.allowed(AclOperation::Write, AclResourceType::TransactionalId, &txn_id);
    // Kafka: every partition gets the transactional id's refusal, or its
    // own (not authorized, unknown); if any has one, the rest get
    // OPERATION_NOT_ATTEMPTED and nothing is added.
    let mut answers: BTreeMap<String, Vec<(i32, i16)>> = BTreeMap::new();
    let mut partitions: Vec<Tp> = Vec::with_capacity(count);
    let mut refused = false;
    for topic in &request.v3_and_below_topics {
        let name = topic.name.0.to_string();
        let own = if txn_denied {
            Some(K::TransactionalIdAuthorizationFailed.code())
        } else if !ctx.allowed(AclOperation::Write, AclResourceType::Topic, &name) {
            Some(K::TopicAuthorizationFailed.code())
        } else {
            None
        };
        // Internal topics take markers only through AddOffsetsToTxn (a
        // marker in `__transaction_state` would be a record its
        // coordinator cannot read); clients may not write them anyway.
        let own = own.or(spate_flatbuf::is_internal_topic(&name).then_some(K::InvalidTopicException.code()));
        let meta = catalog.topics.get(&name);
        for &partition in &topic.partitions {
            let known = meta.is_some_and(|t| partition >= 0 && (partition as u32) < t.partitions);
            let own = own.or((!known).then_some(K::UnknownTopicOrPartition.code()));
            refused |= own.is_some();
            answers.entry(name.clone()).or_default().push((partition, own.unwrap_or(0)));
            partitions.push((name.clone(), partition));
        }
    }
    if refused {
        for entries in answers.values_mut() {
            for (_, code) in entries.iter_mut().filter(|(_, code)| *code == 0) {
                *code = K::OperationNotAttempted.code();
            }
        }
        return Reply::Now(respond(&ctx, &add_partitions_response(&answers)));
    }
    let (producer_id, producer_epoch) = (request.v3_and_below_producer_id.0, request.v3_and_below_producer_epoch);
    Reply::Later(Box::pin(async move {
        let result = call(&ctx.shard, &txn_id.clone(), |reply| TxnOp::AddPartitions {
            txn_id,
            producer_id,
            producer_epoch,
            partitions,
            reply,
        })
        .await;
        let answer = result.err().map_or(0, |err| code(&ctx, err));
        for entries in answers.values_mut() {
            entries.iter_mut().for_each(|(_, code)| *code = answer);
        }
        respond(&ctx, &add_partitions_response(&answers))
    }))
}

pub(crate) fn add_offsets_to_txn(ctx: Ctx, body: Bytes) -> Reply {
    let request: AddOffsetsToTxnRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let txn_id = request.transactional_id.0.to_string();
    let group_id = request.group_id.0.to_string();
    let refused =
        |ctx: &Ctx, code: i16| Reply::Now(respond(ctx, &AddOffsetsToTxnResponse::default().with_error_code(code)));
    if !ctx.allowed(AclOperation::Write, AclResourceType::TransactionalId, &txn_id) {
        return refused(&ctx, K::TransactionalIdAuthorizationFailed.code());
    }
    if !ctx.allowed(AclOperation::Read, AclResourceType::Group, &group_id) {
        return refused(&ctx, K::GroupAuthorizationFailed.code());
    }
    if group_id.is_empty() || group_id.len() > NAME_BYTES_MAX {
        return refused(&ctx, K::InvalidGroupId.code());
    }
    // The group's partition of __consumer_offsets joins the transaction:
    // its marker is what makes the transaction's offsets count.
    let Some(offsets_partitions) =
        ctx.shard.shared.catalog.load().topics.get(CONSUMER_OFFSETS_TOPIC).map(|t| t.partitions)
    else {
        return refused(&ctx, K::CoordinatorNotAvailable.code());
    };
    let partition = (CONSUMER_OFFSETS_TOPIC.to_string(), group_partition(&group_id, offsets_partitions) as i32);
    let (producer_id, producer_epoch) = (request.producer_id.0, request.producer_epoch);
    Reply::Later(Box::pin(async move {
        let result = call(&ctx.shard, &txn_id.clone(), |reply| TxnOp::AddPartitions {
            txn_id,
            producer_id,
            producer_epoch,
            partitions: vec![partition],
            reply,
        })
        .await;
        let answer = result.err().map_or(0, |err| code(&ctx, err));
        respond(&ctx, &AddOffsetsToTxnResponse::default().with_error_code(answer))
    }))
}

pub(crate) fn end_txn(ctx: Ctx, body: Bytes) -> Reply {
    let request: EndTxnRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let txn_id = request.transactional_id.0.to_string();
    if !ctx.allowed(AclOperation::Write, AclResourceType::TransactionalId, &txn_id) {
        let response = EndTxnResponse::default().with_error_code(K::TransactionalIdAuthorizationFailed.code());
        return Reply::Now(respond(&ctx, &response));
    }
    let (producer_id, producer_epoch, commit) = (request.producer_id.0, request.producer_epoch, request.committed);
    // v5 is transactions v2 (KIP-890 part 2): every transaction ends under
    // the next epoch, which the answer carries.
    let bump_epoch = ctx.version >= 5;
    let principal = (*ctx.principal).clone();
    Reply::Later(Box::pin(async move {
        let producer = (producer_id, producer_epoch);
        let result = end_transaction(&ctx.shard, txn_id, producer, commit, bump_epoch, principal).await;
        let response = match result {
            Ok((producer_id, producer_epoch)) => {
                EndTxnResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(producer_epoch)
            }
            Err(err) => EndTxnResponse::default()
                .with_error_code(code(&ctx, err))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        };
        respond(&ctx, &response)
    }))
}

/// A transaction as DescribeTransactions shows it, its partitions limited
/// to topics the client may describe (as Kafka filters them).
fn described(ctx: &Ctx, txn_id: &str, meta: &TxnMeta) -> TransactionState {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in &meta.partitions {
        if ctx.allowed(AclOperation::Describe, AclResourceType::Topic, topic) {
            topics.entry(topic).or_default().push(*partition);
        }
    }
    TransactionState::default()
        .with_transactional_id(TransactionalId(StrBytes::from_string(txn_id.to_string())))
        .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
        .with_transaction_timeout_ms(meta.timeout_ms)
        .with_transaction_start_time_ms(meta.txn_start_ms)
        .with_producer_id(ProducerId(meta.producer_id))
        .with_producer_epoch(meta.producer_epoch)
        .with_topics(
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicData::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

pub(crate) fn describe_transactions(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeTransactionsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.transactional_ids.len() > GROUPS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let ids: Vec<String> = request.transactional_ids.iter().map(|id| id.0.to_string()).collect();
    Reply::Later(Box::pin(async move {
        let mut states = Vec::with_capacity(ids.len());
        for txn_id in ids {
            let entry = TransactionState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(txn_id.clone())))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            if !ctx.allowed(AclOperation::Describe, AclResourceType::TransactionalId, &txn_id) {
                states.push(entry.with_error_code(K::TransactionalIdAuthorizationFailed.code()));
                continue;
            }
            let result =
                call(&ctx.shard, &txn_id.clone(), |reply| TxnOp::Describe { txn_id: txn_id.clone(), reply }).await;
            states.push(match result {
                Ok(Some(meta)) => described(&ctx, &txn_id, &meta),
                Ok(None) => entry.with_error_code(K::TransactionalIdNotFound.code()),
                Err(err) => entry.with_error_code(code(&ctx, err)),
            });
        }
        respond(&ctx, &DescribeTransactionsResponse::default().with_transaction_states(states))
    }))
}

pub(crate) fn list_transactions(ctx: Ctx, body: Bytes) -> Reply {
    let request: ListTransactionsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.state_filters.len() + request.producer_id_filters.len() > PARTITIONS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    // Kafka lists the filters it does not know and still answers the rest.
    let mut unknown_states = Vec::new();
    let mut states: Vec<TxnState> = Vec::new();
    for name in &request.state_filters {
        match TxnState::parse(name.as_str()) {
            Some(state) => states.push(state),
            None => unknown_states.push(name.clone()),
        }
    }
    let producer_ids: Vec<i64> = request.producer_id_filters.iter().map(|id| id.0).collect();
    // v1: only transactions running longer than this (-1: any).
    let duration_ms_min = request.duration_filter;
    Reply::Later(Box::pin(async move {
        let mut waits = Vec::with_capacity(ctx.shard.shared.shard_count);
        for owner in 0..ctx.shard.shared.shard_count {
            let (reply, wait) = oneshot::channel();
            ctx.shard.submit(owner, crate::shard::ShardOp::Txn(TxnOp::List { reply }));
            waits.push(wait);
        }
        let now_ms = crate::txn::now_ms();
        let mut listed = Vec::new();
        for wait in waits {
            for (txn_id, meta) in wait.await.unwrap_or_default() {
                let wanted = (states.is_empty() || states.contains(&meta.state))
                    && (producer_ids.is_empty() || producer_ids.contains(&meta.producer_id))
                    && (duration_ms_min < 0
                        || (meta.txn_start_ms >= 0 && now_ms - meta.txn_start_ms > duration_ms_min))
                    && ctx.allowed(AclOperation::Describe, AclResourceType::TransactionalId, &txn_id);
                if wanted {
                    listed.push(
                        ListedTransaction::default()
                            .with_transactional_id(TransactionalId(StrBytes::from_string(txn_id)))
                            .with_producer_id(ProducerId(meta.producer_id))
                            .with_transaction_state(StrBytes::from_static_str(meta.state.name())),
                    );
                }
            }
        }
        let response = ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown_states)
            .with_transaction_states(listed);
        respond(&ctx, &response)
    }))
}
