//! A broker's connection to another broker's shard, for replica fetches:
//! one request at a time, on the native protocol (the same frames clients
//! send), from a glommio task.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::AsyncWriteExt;
use glommio::net::TcpStream;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::Body;
use spate_flatbuf::{Frame, FrameDecoder, FrameError};

use crate::api::envelope_frame;
use crate::conn::read_more;
use crate::limits::READ_CHUNK_BYTES;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("i/o with {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("bad frame from {addr}: {source}")]
    Frame { addr: SocketAddr, source: FrameError },
    #[error("{addr} closed the connection")]
    Closed { addr: SocketAddr },
    #[error("{addr} answered request {expected} with {got}")]
    Mismatch { addr: SocketAddr, expected: u64, got: u64 },
}

pub(crate) struct Peer {
    addr: SocketAddr,
    stream: TcpStream,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// Small reads land here first (see `conn::read_more`).
    scratch: Vec<u8>,
    next_request_id: u64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish()
    }
}

impl Peer {
    /// Connects; reads time out after `read_timeout` (longer than any
    /// long poll this side asks for), so a leader that vanished without a
    /// FIN is noticed.
    pub async fn connect(addr: SocketAddr, frame_bytes_max: usize, read_timeout: Duration) -> Result<Peer, PeerError> {
        let stream = TcpStream::connect_timeout(addr, read_timeout)
            .await
            .map_err(|err| PeerError::Connect { addr, source: std::io::Error::other(err) })?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(read_timeout))
            .map_err(|err| PeerError::Connect { addr, source: std::io::Error::other(err) })?;
        Ok(Peer {
            addr,
            stream,
            decoder: FrameDecoder::new(frame_bytes_max),
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scratch: vec![0u8; READ_CHUNK_BYTES],
            next_request_id: 1,
        })
    }

    /// Sends one request (the builder holds its body) and returns the
    /// response's frame, checked to answer this request.
    pub async fn call(
        &mut self,
        builder: FlatBufferBuilder<'_>,
        body_type: Body,
        body: WIPOffset<UnionWIPOffset>,
    ) -> Result<Frame, PeerError> {
        let addr = self.addr;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let frame = envelope_frame(builder, request_id, body_type, body, 0);
        self.stream.write_all(&frame).await.map_err(|source| PeerError::Io { addr, source })?;
        let frame = self.read_frame().await?;
        let envelope = frame.read().map_err(|source| PeerError::Frame { addr, source })?;
        if envelope.request_id() != request_id {
            return Err(PeerError::Mismatch { addr, expected: request_id, got: envelope.request_id() });
        }
        Ok(frame)
    }

    async fn read_frame(&mut self) -> Result<Frame, PeerError> {
        let addr = self.addr;
        loop {
            if let Some(frame) =
                self.decoder.decode(&mut self.buf).map_err(|source| PeerError::Frame { addr, source })?
            {
                return Ok(frame);
            }
            let needed = self.decoder.bytes_needed(&self.buf).map_err(|source| PeerError::Frame { addr, source })?;
            let read = read_more(&mut self.stream, &mut self.buf, needed, &mut self.scratch)
                .await
                .map_err(|source| PeerError::Io { addr, source })?;
            if read == 0 {
                return Err(PeerError::Closed { addr });
            }
        }
    }
}
