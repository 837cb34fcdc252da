//! Frames: `u32 frame_bytes | u32 envelope_bytes | envelope | payload`
//! (big-endian lengths; `frame_bytes` counts everything after itself).
//!
//! [`FrameDecoder`] is sans-I/O so the glommio server and the tokio client
//! share it: feed it a buffer, take whole frames out. Every length is
//! checked against the receiver's cap *before* anything is allocated, and
//! every envelope is verified before it is read.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, VerifierOptions};

use crate::generated::spate::proto::{Envelope, root_as_envelope_with_opts};

/// The length fields in front of every envelope.
pub const FRAME_HEADER_BYTES: usize = 8;
/// The smallest envelope flatbuffers can encode (root offset + vtable).
const ENVELOPE_BYTES_MIN: usize = 8;
/// The default cap on a frame: a 64 MiB batch (the engine's limit) plus
/// room for the envelope around it.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024 + 1024 * 1024;
/// The largest cap anyone may configure: frame_bytes is a u32, and a
/// larger cap only lets one peer pin more memory.
pub const FRAME_BYTES_MAX_LIMIT: usize = 1 << 30;

/// The verifier's limits: our envelopes are a few levels deep and hold one
/// table per partition, so these bound the work a hostile frame can cause.
/// The apparent size is what the verifier adds up as it visits fields,
/// vtables and vectors, and it counts some bytes more than once (a
/// produce envelope just over 1 MiB added up to more than its own size and
/// was refused): twice the envelope keeps the work linear in the frame and
/// accepts every honest one.
fn verifier_options(frame_bytes: usize) -> VerifierOptions {
    VerifierOptions {
        max_depth: 16,
        max_tables: 1 << 20,
        max_apparent_size: frame_bytes.saturating_mul(2).max(1 << 20),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {frame_bytes} bytes is over the {frame_bytes_max}-byte limit")]
    TooLarge { frame_bytes: usize, frame_bytes_max: usize },
    #[error("frame of {frame_bytes} bytes cannot hold its {envelope_bytes}-byte envelope")]
    BadEnvelopeLength { frame_bytes: usize, envelope_bytes: usize },
    #[error("envelope fails verification: {0}")]
    Invalid(#[from] InvalidFlatbuffer),
    #[error("connection closed in the middle of a frame ({buffered_bytes} bytes buffered)")]
    Truncated { buffered_bytes: usize },
}

/// One received frame: the envelope's bytes and the payload's, both slices
/// of the receive buffer (no copy).
#[derive(Debug)]
pub struct Frame {
    /// The verified envelope flatbuffer. Mutable so that batch bytes can be
    /// split off it and patched in place (base offset, leader epoch).
    pub envelope: BytesMut,
    pub payload: BytesMut,
}

impl Frame {
    /// The envelope. Verified at decode; verified again here (cheap next to
    /// the I/O) because `envelope` is mutable and this crate has no `unsafe`.
    pub fn read(&self) -> Result<Envelope<'_>, FrameError> {
        Ok(root_as_envelope_with_opts(&verifier_options(self.envelope.len()), &self.envelope)?)
    }
}

/// Splits a byte stream into frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    frame_bytes_max: usize,
}

impl FrameDecoder {
    pub fn new(frame_bytes_max: usize) -> Self {
        assert!(frame_bytes_max <= FRAME_BYTES_MAX_LIMIT, "frame cap over the limit");
        FrameDecoder { frame_bytes_max }
    }

    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// How many more bytes the frame at the head of `buf` needs, checking
    /// its length first; call before reserving space for it.
    pub fn bytes_needed(&self, buf: &[u8]) -> Result<usize, FrameError> {
        if buf.len() < 4 {
            return Ok(4 - buf.len());
        }
        let frame_bytes = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        self.check_frame_bytes(frame_bytes)?;
        Ok((4 + frame_bytes).saturating_sub(buf.len()))
    }

    fn check_frame_bytes(&self, frame_bytes: usize) -> Result<(), FrameError> {
        if frame_bytes > self.frame_bytes_max {
            return Err(FrameError::TooLarge { frame_bytes, frame_bytes_max: self.frame_bytes_max });
        }
        if frame_bytes < 4 + ENVELOPE_BYTES_MIN {
            return Err(FrameError::BadEnvelopeLength { frame_bytes, envelope_bytes: 0 });
        }
        Ok(())
    }

    /// Takes the next whole frame off the front of `buf`, or `None` if it is
    /// not all there yet. An error means the stream cannot be resynchronised:
    /// answer if possible, then close the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < FRAME_HEADER_BYTES {
            if buf.len() >= 4 {
                self.bytes_needed(buf)?;
            }
            return Ok(None);
        }
        let frame_bytes = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        self.check_frame_bytes(frame_bytes)?;
        let envelope_bytes = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if envelope_bytes < ENVELOPE_BYTES_MIN || envelope_bytes > frame_bytes - 4 {
            return Err(FrameError::BadEnvelopeLength { frame_bytes, envelope_bytes });
        }
        if buf.len() < 4 + frame_bytes {
            return Ok(None);
        }
        let mut body = buf.split_to(4 + frame_bytes);
        body.advance(FRAME_HEADER_BYTES);
        let payload = body.split_off(envelope_bytes);
        let envelope = body;
        root_as_envelope_with_opts(&verifier_options(envelope.len()), &envelope)?;
        Ok(Some(Frame { envelope, payload }))
    }
}

/// The 8 length bytes in front of a finished envelope and its payload.
pub fn frame_header(envelope_bytes: usize, payload_bytes: usize) -> [u8; FRAME_HEADER_BYTES] {
    let frame_bytes = 4 + envelope_bytes + payload_bytes;
    let frame_bytes = u32::try_from(frame_bytes).expect("frames are capped far below 4 GiB");
    let envelope_bytes = u32::try_from(envelope_bytes).expect("envelope within a frame");
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[..4].copy_from_slice(&frame_bytes.to_be_bytes());
    header[4..].copy_from_slice(&envelope_bytes.to_be_bytes());
    header
}

/// A whole frame in one buffer: header, the builder's finished envelope and
/// `payload` (for requests and small responses; fetch responses write the
/// payload separately with a vectored write).
pub fn encode_frame(builder: &FlatBufferBuilder<'_>, payload: &[u8]) -> Bytes {
    let envelope = builder.finished_data();
    let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + envelope.len() + payload.len());
    out.put_slice(&frame_header(envelope.len(), payload.len()));
    out.put_slice(envelope);
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        Body, EnvelopeArgs, ErrorCode, ErrorResponse, ErrorResponseArgs, MetadataRequest, MetadataRequestArgs,
    };

    fn metadata_frame(request_id: u64, payload: &[u8]) -> Bytes {
        let mut builder = FlatBufferBuilder::new();
        let body = MetadataRequest::create(&mut builder, &MetadataRequestArgs { topics: None });
        let envelope = crate::proto::Envelope::create(
            &mut builder,
            &EnvelopeArgs {
                request_id,
                version: 1,
                body_type: Body::MetadataRequest,
                body: Some(body.as_union_value()),
            },
        );
        builder.finish(envelope, None);
        encode_frame(&builder, payload)
    }

    /// A produce envelope of `records_bytes` of batches over `partitions`
    /// partitions of one topic.
    fn produce_frame(records_bytes: usize, partitions: usize) -> Bytes {
        use crate::proto::{
            ProducePartition, ProducePartitionArgs, ProduceRequest, ProduceRequestArgs, ProduceTopic, ProduceTopicArgs,
        };
        let mut builder = FlatBufferBuilder::new();
        let records = vec![7u8; records_bytes / partitions];
        let parts: Vec<_> = (0..partitions)
            .map(|partition| {
                let records = builder.create_vector(&records);
                ProducePartition::create(
                    &mut builder,
                    &ProducePartitionArgs { partition: partition as i32, records: Some(records) },
                )
            })
            .collect();
        let parts = builder.create_vector(&parts);
        let name = builder.create_string("t");
        let topic = ProduceTopic::create(&mut builder, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = builder.create_vector(&[topic]);
        let body =
            ProduceRequest::create(&mut builder, &ProduceRequestArgs { topics: Some(topics), ..Default::default() });
        let envelope = crate::proto::Envelope::create(
            &mut builder,
            &EnvelopeArgs {
                request_id: 1,
                version: 1,
                body_type: Body::ProduceRequest,
                body: Some(body.as_union_value()),
            },
        );
        builder.finish(envelope, None);
        encode_frame(&builder, &[])
    }

    /// The verifier counts every table's vtable and fields as it visits
    /// them, so what it "sees" can exceed the envelope's bytes; a limit of
    /// exactly the envelope's size refused ordinary produce frames just
    /// over 1 MiB ("apparent size too large").
    #[test]
    fn produce_frames_over_a_mebibyte_verify() {
        let decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        for (records_bytes, partitions) in
            [(1 << 20, 1), ((1 << 20) + 4096, 1), ((1 << 20) + 4096, 64), (8 << 20, 1000)]
        {
            let mut buf = BytesMut::from(&produce_frame(records_bytes, partitions)[..]);
            let frame = decoder.decode(&mut buf).expect("a whole frame").expect("one frame");
            frame.read().expect("verifies");
        }
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let mut stream = BytesMut::new();
        stream.extend_from_slice(&metadata_frame(7, b"payload"));
        stream.extend_from_slice(&metadata_frame(8, b""));
        let decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in stream {
            buf.extend_from_slice(&[byte]);
            if let Some(frame) = decoder.decode(&mut buf).expect("valid stream") {
                frames.push(frame);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 2);
        let first = frames[0].read().expect("verified");
        assert_eq!(first.request_id(), 7);
        assert_eq!(first.body_type(), Body::MetadataRequest);
        assert_eq!(&frames[0].payload[..], b"payload");
        assert_eq!(frames[1].read().expect("verified").request_id(), 8);
        assert!(frames[1].payload.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused_from_the_length_alone() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decoder.decode(&mut buf), Err(FrameError::TooLarge { frame_bytes: 0x7fff_ffff, .. })));
        assert!(matches!(decoder.bytes_needed(&buf), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn envelope_length_must_fit_the_frame() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&20u32.to_be_bytes());
        buf.extend_from_slice(&100u32.to_be_bytes());
        assert!(matches!(decoder.decode(&mut buf), Err(FrameError::BadEnvelopeLength { .. })));
        let mut tiny = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(decoder.decode(&mut tiny), Err(FrameError::BadEnvelopeLength { .. })));
    }

    #[test]
    fn garbage_envelopes_fail_verification() {
        let decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&68u32.to_be_bytes());
        buf.extend_from_slice(&64u32.to_be_bytes());
        buf.extend_from_slice(&[0xff; 64]);
        assert!(matches!(decoder.decode(&mut buf), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn an_error_response_carries_code_and_message() {
        let mut builder = FlatBufferBuilder::new();
        let message = builder.create_string("no such API");
        let body = ErrorResponse::create(
            &mut builder,
            &ErrorResponseArgs { error: ErrorCode::InvalidRequest, message: Some(message) },
        );
        let envelope = crate::proto::Envelope::create(
            &mut builder,
            &EnvelopeArgs {
                request_id: 1,
                version: 1,
                body_type: Body::ErrorResponse,
                body: Some(body.as_union_value()),
            },
        );
        builder.finish(envelope, None);
        let mut buf = BytesMut::from(&encode_frame(&builder, &[])[..]);
        let frame = FrameDecoder::new(1024).decode(&mut buf).expect("valid").expect("whole");
        let envelope = frame.read().expect("verified");
        let error = envelope.body_as_error_response().expect("error body");
        assert_eq!(error.error(), ErrorCode::InvalidRequest);
        assert_eq!(error.message(), Some("no such API"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let decoder = FrameDecoder::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                let _ = frame.read();
            }
        }
    }
}
