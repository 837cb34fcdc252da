//! A broker's connection to another broker's shard, for replica fetches:
//! one request at a time, on the native protocol (the same frames clients
//! send), from a glommio task.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::AsyncWriteExt;
use glommio::net::TcpStream;
use spate_flatbuf::flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use spate_flatbuf::proto::{Body, ErrorCode, HandshakeRequest, HandshakeRequestArgs};
use spate_flatbuf::{Frame, FrameDecoder, FrameError};

use crate::limits::READ_CHUNK_BYTES;
use crate::wire::conn::read_more;
use crate::wire::envelope_frame;

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
    #[error("{addr} refused this broker's handshake: {0:?}", .code)]
    Refused { addr: SocketAddr, code: ErrorCode },
    #[error("no cluster secret yet to prove this broker with")]
    NoSecret,
}

/// Who this broker is, to prove it on a connection (`broker_auth`).
pub(crate) struct BrokerIdentity<'a> {
    pub node_id: i32,
    /// The broker the connection goes to.
    pub to_node: i32,
    pub secret: Option<&'a [u8]>,
}

/// A connection to another broker: plain TCP, or TLS over it when the
/// native ports take TLS and this broker has a truststore to check the
/// other against.
enum PeerStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl futures::AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => std::pin::Pin::new(stream).poll_read(cx, buf),
            PeerStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl futures::AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => std::pin::Pin::new(stream).poll_write(cx, buf),
            PeerStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => std::pin::Pin::new(stream).poll_flush(cx),
            PeerStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => std::pin::Pin::new(stream).poll_close(cx),
            PeerStream::Tls(stream) => std::pin::Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

/// TLS to another broker: this broker's client configuration and the host
/// name the other's certificate must carry (its advertised host).
pub(crate) struct PeerTls {
    pub client: std::sync::Arc<rustls::ClientConfig>,
    pub host: String,
}

impl PeerTls {
    /// TLS to the broker reached at `host`, when this broker's native
    /// ports take TLS and it has a truststore (`TlsServer::peer_client`);
    /// else None: plaintext, the link proven by the cluster secret alone.
    pub fn to(shared: &crate::shard::Shared, host: &str) -> Option<PeerTls> {
        if !shared.config.native_tls().unwrap_or(false) {
            return None;
        }
        let client = shared.tls.as_ref()?.peer_client()?;
        Some(PeerTls { client, host: host.to_string() })
    }
}

pub(crate) struct Peer {
    addr: SocketAddr,
    stream: PeerStream,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// Small reads land here first (see `wire::conn::read_more`).
    scratch: Vec<u8>,
    next_request_id: u64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("addr", &self.addr).finish()
    }
}

impl Peer {
    /// Connects and proves this broker's identity (issue 14): a first
    /// handshake learns which shard accepted the connection, a second
    /// carries the proof bound to that shard. Reads time out after
    /// `read_timeout` (longer than any long poll this side asks for), so a
    /// leader that vanished without a FIN is noticed.
    pub async fn connect(
        addr: SocketAddr,
        frame_bytes_max: usize,
        read_timeout: Duration,
        identity: BrokerIdentity<'_>,
        tls: Option<PeerTls>,
    ) -> Result<Peer, PeerError> {
        let secret = identity.secret.ok_or(PeerError::NoSecret)?;
        let mut peer = Peer::open(addr, frame_bytes_max, read_timeout, tls).await?;
        let (code, shard) = peer.handshake(None).await?;
        if code != ErrorCode::None {
            return Err(PeerError::Refused { addr, code });
        }
        let now_ms = crate::broker_auth::unix_now_ms();
        let proof = crate::broker_auth::prove(secret, identity.node_id, identity.to_node, shard, now_ms)
            .ok_or(PeerError::NoSecret)?;
        let (code, _) = peer.handshake(Some(&proof)).await?;
        if code != ErrorCode::None {
            return Err(PeerError::Refused { addr, code });
        }
        Ok(peer)
    }

    /// One handshake; answers its error code and the accepting shard.
    async fn handshake(&mut self, broker_auth: Option<&[u8]>) -> Result<(ErrorCode, u16), PeerError> {
        let addr = self.addr;
        let mut builder = FlatBufferBuilder::new();
        let broker_auth = broker_auth.map(|proof| builder.create_vector(proof));
        let client_id = builder.create_string("spate-replica-fetcher");
        let body = HandshakeRequest::create(
            &mut builder,
            &HandshakeRequestArgs { client_id: Some(client_id), broker_auth, ..Default::default() },
        );
        let frame = self.call(builder, Body::HandshakeRequest, body.as_union_value()).await?;
        let envelope = frame.read().map_err(|source| PeerError::Frame { addr, source })?;
        let response = envelope
            .body_as_handshake_response()
            .ok_or(PeerError::Refused { addr, code: ErrorCode::InvalidRequest })?;
        Ok((response.error(), response.shard()))
    }

    async fn open(
        addr: SocketAddr,
        frame_bytes_max: usize,
        read_timeout: Duration,
        tls: Option<PeerTls>,
    ) -> Result<Peer, PeerError> {
        let stream = TcpStream::connect_timeout(addr, read_timeout)
            .await
            .map_err(|err| PeerError::Connect { addr, source: std::io::Error::other(err) })?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(read_timeout))
            .map_err(|err| PeerError::Connect { addr, source: std::io::Error::other(err) })?;
        let stream = match tls {
            None => PeerStream::Plain(stream),
            Some(tls) => {
                let name =
                    rustls_pki_types::ServerName::try_from(tls.host.clone()).map_err(|_| PeerError::Connect {
                        addr,
                        source: std::io::Error::other(format!("{:?} is not a host name TLS can check", tls.host)),
                    })?;
                let connector = futures_rustls::TlsConnector::from(tls.client);
                let stream = connector.connect(name, stream).await.map_err(|err| PeerError::Connect {
                    addr,
                    source: std::io::Error::new(err.kind(), format!("TLS handshake: {err}")),
                })?;
                PeerStream::Tls(Box::new(stream))
            }
        };
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
