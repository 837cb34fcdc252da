//! Writing Kafka responses: the size prefix, the response header at the
//! version the API's request version implies, the body encoded by the
//! `kafka-protocol` crate.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::Encodable;

use super::Ctx;
use crate::wire::Response;

/// The response to `ctx`'s request, as one frame.
pub(crate) fn respond<T: Encodable>(ctx: &Ctx, body: &T) -> Response {
    match encode(ctx, body) {
        Ok(frame) => Response::Frame(frame.freeze()),
        Err(err) => {
            // Only a bug of ours (a field out of its version's range) lands
            // here; the client cannot be answered in its schema: close.
            tracing::error!(api = ?ctx.api, version = ctx.version, "cannot encode a Kafka response: {err:#}");
            Response::Close(None)
        }
    }
}

/// The frame of a response: size, header, body.
pub(crate) fn encode<T: Encodable>(ctx: &Ctx, body: &T) -> anyhow::Result<BytesMut> {
    let header_version = ctx.api.response_header_version(ctx.version);
    let header = ResponseHeader::default().with_correlation_id(ctx.correlation_id);
    let size = header.compute_size(header_version)? + body.compute_size(ctx.version)?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(size as i32);
    header.encode(&mut out, header_version)?;
    body.encode(&mut out, ctx.version)?;
    debug_assert_eq!(out.len(), 4 + size, "compute_size and encode disagree");
    Ok(out)
}

/// Where a marker stands in an encoded response, and the record batches
/// that replace it.
pub(crate) struct Splice {
    pub marker: Bytes,
    pub batches: Vec<Bytes>,
}

/// A response with record batches written from their own buffers (no
/// copy): `frame` was encoded with each partition's records set to its
/// splice's marker (a 16-byte value nothing else in a response can hold at
/// that place: see `marker`); each marker and its length prefix are
/// replaced by the real length and the batches. Kafka's response structs
/// carry counts, not byte lengths, so only the frame's size prefix changes.
/// Markers appear in the order they were encoded, so each is searched from
/// where the previous one ended: the search covers the head once.
pub(crate) fn vectored(frame: BytesMut, splices: Vec<Splice>, flexible: bool) -> Response {
    let mut frame = frame.freeze();
    let mut payload: Vec<Bytes> = Vec::with_capacity(splices.len() * 3 + 1);
    let mut cursor = 4; // past the size prefix, rewritten at the end
    let mut head_cut: Option<Bytes> = None;
    for splice in splices {
        let prefix_bytes = if flexible { 1 } else { 4 };
        let found = find(&frame[cursor..], &splice.marker).map(|at| cursor + at);
        let Some(at) = found.filter(|&at| at >= cursor + prefix_bytes) else {
            // Not found: a bug; answer with the marker bytes rather than
            // mis-framed data, and say so.
            tracing::error!("fetch response: a records marker is missing; answering without splicing");
            continue;
        };
        let records_bytes: usize = splice.batches.iter().map(Bytes::len).sum();
        let before = frame.slice(cursor..at - prefix_bytes);
        if head_cut.is_none() {
            head_cut = Some(before);
        } else {
            payload.push(before);
        }
        let mut prefix = BytesMut::with_capacity(5);
        if flexible {
            // COMPACT_RECORDS: unsigned varint of length + 1.
            put_unsigned_varint(&mut prefix, records_bytes as u32 + 1);
        } else {
            prefix.put_i32(records_bytes as i32);
        }
        payload.push(prefix.freeze());
        payload.extend(splice.batches.into_iter().filter(|b| !b.is_empty()));
        cursor = at + splice.marker.len();
    }
    let tail = frame.split_off(cursor);
    payload.push(tail);
    let head_rest = head_cut.unwrap_or_default();
    let size = head_rest.len() + payload.iter().map(Bytes::len).sum::<usize>();
    let mut head = BytesMut::with_capacity(4 + head_rest.len());
    head.put_i32(size as i32);
    head.extend_from_slice(&head_rest);
    Response::Vectored { head: head.freeze(), payload }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// A marker for the `index`th partition of one response: 12 bytes that
/// cannot start a topic name, a count or an offset of a real response
/// (0xff bytes and a fixed random tail), then the index. The bytes around
/// it are checked too (its length prefix must precede it), so a collision
/// needs 16 chosen bytes in a field a client controls, and fields a client
/// controls (topic names) allow only [a-zA-Z0-9._-].
pub(crate) fn marker(index: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    out.extend_from_slice(&[0xff, 0xfe, 0xfd, 0x00, 0x9b, 0x17, 0xc4, 0x5e, 0xa2, 0x3d, 0x81, 0xf0]);
    out.put_u32(index);
    out.freeze()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn flatten(response: Response) -> Vec<u8> {
        match response {
            Response::Vectored { head, payload } => {
                let mut out = head.to_vec();
                for p in payload {
                    out.extend_from_slice(&p);
                }
                out
            }
            other => panic!("not vectored: {other:?}"),
        }
    }

    /// The spliced frame is byte for byte what encoding the records in
    /// place would give, in both the flexible and the old encoding.
    #[test]
    fn splicing_equals_encoding_in_place() {
        for flexible in [false, true] {
            let records = [Bytes::from_static(b"abcdefgh"), Bytes::from_static(b"ij")];
            let encode = |first: &[u8], second: &[u8]| {
                let mut body = BytesMut::new();
                body.put_slice(b"head");
                for r in [first, second] {
                    if flexible {
                        put_unsigned_varint(&mut body, r.len() as u32 + 1);
                    } else {
                        body.put_i32(r.len() as i32);
                    }
                    body.put_slice(r);
                    body.put_slice(b"--");
                }
                let mut frame = BytesMut::new();
                frame.put_i32(body.len() as i32);
                frame.extend_from_slice(&body);
                frame
            };
            let expected = encode(&records[0], &records[1]);
            let (m0, m1) = (marker(0), marker(1));
            let with_markers = encode(&m0, &m1);
            let spliced = vectored(
                with_markers,
                vec![
                    Splice { marker: m0, batches: vec![records[0].slice(0..5), records[0].slice(5..)] },
                    Splice { marker: m1, batches: vec![records[1].clone()] },
                ],
                flexible,
            );
            assert_eq!(flatten(spliced), expected.to_vec(), "flexible {flexible}");
        }
    }
}
