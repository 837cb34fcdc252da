//! InitProducerId: a new idempotent producer id from the admin shard.

use std::rc::Rc;

use futures::channel::oneshot;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;

use crate::admin::ADMIN_SHARD;
use crate::shard::{Shard, ShardOp};
use crate::wire::{Reply, Response, envelope_frame};

/// A new producer id from the admin shard, with epoch 0.
pub(super) fn init_producer_id(shard: &Rc<Shard>, session: &super::Session, request_id: u64) -> Reply {
    let (reply, wait) = oneshot::channel();
    // ANONYMOUS unless the connection authenticated (`sasl.rs`).
    let principal = (**session.principal.borrow()).clone();
    shard.submit(ADMIN_SHARD, ShardOp::InitProducerId { principal, reply });
    Reply::Later(Box::pin(async move {
        let result = wait.await.unwrap_or_else(|_| Err("the admin shard stopped".to_string()));
        let mut builder = FlatBufferBuilder::new();
        let args = match &result {
            Ok(producer_id) => InitProducerIdResponseArgs {
                error: ErrorCode::None,
                producer_id: *producer_id,
                producer_epoch: 0,
                message: None,
            },
            Err(message) => {
                tracing::error!(error = %message, "cannot allocate a producer id");
                InitProducerIdResponseArgs {
                    error: ErrorCode::ProducerIdsUnavailable,
                    producer_id: -1,
                    producer_epoch: -1,
                    message: Some(builder.create_string(message)),
                }
            }
        };
        let body = InitProducerIdResponse::create(&mut builder, &args);
        Response::Frame(envelope_frame(builder, request_id, Body::InitProducerIdResponse, body.as_union_value(), 0))
    }))
}
