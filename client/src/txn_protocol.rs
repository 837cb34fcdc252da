//! The transaction APIs' requests and responses (schema: "Transactions"
//! in flatbuf/schema/spate.fbs), with no I/O. Each answer is one code for
//! the whole request.

use std::collections::BTreeMap;

use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::{self, Body, ErrorCode};

use crate::error::ClientError;
use crate::metadata::TopicPartition;
use crate::producer::ProducerIdentity;
use crate::protocol::{OutFrame, Stamp, body, envelope, finish};

pub(crate) fn init_producer_id(stamp: Stamp, transactional_id: &str, transaction_timeout_ms: i32) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let transactional_id = builder.create_string(transactional_id);
    let body = proto::InitProducerIdRequest::create(
        &mut builder,
        &proto::InitProducerIdRequestArgs { transactional_id: Some(transactional_id), transaction_timeout_ms },
    );
    finish(builder, stamp, Body::InitProducerIdRequest, body.as_union_value())
}

/// A consumer group member's identity for a transactional offset commit
/// (Kafka's ConsumerGroupMetadata): the coordinator refuses the commit of
/// a member fenced from the group. `member_id` empty and `member_epoch` -1
/// commit as a producer outside the group (not checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
}

impl ConsumerGroupMetadata {
    /// A group's offsets committed from outside its membership.
    pub fn new(group_id: impl Into<String>) -> Self {
        ConsumerGroupMetadata { group_id: group_id.into(), member_id: String::new(), member_epoch: -1 }
    }
}

pub(crate) fn txn_offset_commit(
    stamp: Stamp,
    transactional_id: &str,
    producer: ProducerIdentity,
    group: &ConsumerGroupMetadata,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let topics = crate::group_protocol::create_offsets(&mut builder, offsets);
    let transactional_id = builder.create_string(transactional_id);
    let group_id = builder.create_string(&group.group_id);
    let member_id = builder.create_string(&group.member_id);
    let body = proto::TxnOffsetCommitRequest::create(
        &mut builder,
        &proto::TxnOffsetCommitRequestArgs {
            transactional_id: Some(transactional_id),
            group_id: Some(group_id),
            producer_id: producer.id,
            producer_epoch: producer.epoch,
            member_id: Some(member_id),
            member_epoch: group.member_epoch,
            topics: Some(topics),
            transactions_v2: true,
        },
    );
    finish(builder, stamp, Body::TxnOffsetCommitRequest, body.as_union_value())
}

pub(crate) fn end_txn(stamp: Stamp, transactional_id: &str, producer: ProducerIdentity, commit: bool) -> OutFrame {
    let mut builder = FlatBufferBuilder::new();
    let transactional_id = builder.create_string(transactional_id);
    let body = proto::EndTxnRequest::create(
        &mut builder,
        &proto::EndTxnRequestArgs {
            transactional_id: Some(transactional_id),
            producer_id: producer.id,
            producer_epoch: producer.epoch,
            commit,
            transactions_v2: true,
        },
    );
    finish(builder, stamp, Body::EndTxnRequest, body.as_union_value())
}

fn outcome(error: ErrorCode, message: Option<&str>) -> Result<(), ClientError> {
    match error {
        ErrorCode::None => Ok(()),
        code => Err(ClientError::server(code, message)),
    }
}

pub(crate) fn decode_txn_offset_commit(frame: &Frame) -> Result<(), ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::TxnOffsetCommitResponse, proto::Envelope::body_as_txn_offset_commit_response)?;
    outcome(response.error(), response.message())
}

/// The producer id and epoch to go on with (transactions v2: the next
/// epoch, or a new id once the epochs ran out).
pub(crate) fn decode_end_txn(frame: &Frame) -> Result<ProducerIdentity, ClientError> {
    let envelope = envelope(frame)?;
    let response = body(&envelope, Body::EndTxnResponse, proto::Envelope::body_as_end_txn_response)?;
    outcome(response.error(), response.message())?;
    let (id, epoch) = (response.producer_id(), response.producer_epoch());
    if id < 0 || epoch < 0 {
        // A broker from before transactions v2 kept the epoch.
        return Err(ClientError::Protocol(
            "EndTxn answered no producer epoch: the broker predates transactions v2".into(),
        ));
    }
    Ok(ProducerIdentity { id, epoch })
}
