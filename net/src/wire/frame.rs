//! Native frames out: an envelope behind its frame header, and the
//! ErrorResponse every layer answers with. Below the front-ends, since the
//! connection itself (an unreadable frame) and replica fetchers (requests
//! to a leader) build them too.

use bytes::{Bytes, BytesMut};
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, PROTOCOL_VERSION_MAX, frame_header};

use super::response::{Reply, Response};

pub(crate) fn envelope_frame(
    mut builder: FlatBufferBuilder<'_>,
    request_id: u64,
    body_type: Body,
    body: WIPOffset<UnionWIPOffset>,
    payload_bytes: usize,
) -> Bytes {
    let envelope = Envelope::create(
        &mut builder,
        &EnvelopeArgs { request_id, version: PROTOCOL_VERSION_MAX, body_type, body: Some(body) },
    );
    builder.finish(envelope, None);
    let data = builder.finished_data();
    let mut out = BytesMut::with_capacity(spate_flatbuf::FRAME_HEADER_BYTES + data.len());
    out.extend_from_slice(&frame_header(data.len(), payload_bytes));
    out.extend_from_slice(data);
    out.freeze()
}

/// An ErrorResponse frame.
pub(crate) fn error_frame(request_id: u64, error: ErrorCode, message: &str) -> Bytes {
    let mut builder = FlatBufferBuilder::new();
    let message = builder.create_string(&crate::caps::bounded_message(message.to_string()));
    let body = ErrorResponse::create(&mut builder, &ErrorResponseArgs { error, message: Some(message) });
    envelope_frame(builder, request_id, Body::ErrorResponse, body.as_union_value(), 0)
}

pub(crate) fn invalid(request_id: u64, message: &str) -> Reply {
    Reply::Now(Response::Frame(error_frame(request_id, ErrorCode::InvalidRequest, message)))
}

/// The verified envelope (decode verified it; nothing has changed it).
pub(crate) fn envelope(frame: &Frame) -> Option<Envelope<'_>> {
    frame.read().ok()
}
