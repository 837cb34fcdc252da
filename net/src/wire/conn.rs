//! One client connection: a reader that decodes frames and dispatches them,
//! and a writer that sends responses in request order. Up to
//! `connection_requests_in_flight_max` requests run at once, within the
//! connection's and the shard's byte budgets (`budget.rs`); past either the
//! reader stops reading (TCP pushes back on the client). A response the
//! client does not read for `connection_write_timeout_ms` closes the
//! connection.

use std::io::IoSlice;
use std::time::Instant;

use super::{FrontEnd, Reply, Response};
use crate::budget::{Budgets, ByteBudget, Charge};
use crate::deadline::Deadline;
use crate::limits::{LARGE_READ_STEP_BYTES, READ_CHUNK_BYTES, TLS_HANDSHAKE_RECORD_BYTE, TLS_HANDSHAKE_TIMEOUT_MS};
use crate::security::ConnInfo;
use bytes::{Bytes, BytesMut};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::net::TcpStream;

/// A response in the writer's queue.
enum Pending {
    Ready(Response),
    Running(glommio::task::JoinHandle<Response>),
}

struct Queued {
    pending: Pending,
    api: &'static str,
    started: Instant,
    /// The request's bytes in the budgets, released once it is written.
    charge: Option<Charge>,
}

/// How an accepted connection is secured: its listener's name and
/// protocol, and the TLS acceptor when the protocol is SSL or SASL_SSL.
#[derive(Clone)]
pub(crate) struct Security {
    pub listener: std::rc::Rc<str>,
    pub protocol: crate::security::SecurityProtocol,
    pub tls: Option<std::sync::Arc<crate::security::tls::TlsServer>>,
}

/// The server side of a TLS handshake on an accepted connection. A peer
/// that opens a connection and stalls the handshake holds no more than a
/// socket, and not for long (`TLS_HANDSHAKE_TIMEOUT_MS`).
pub(crate) async fn tls_handshake(
    tls: &crate::security::tls::TlsServer,
    stream: TcpStream,
) -> std::io::Result<futures_rustls::server::TlsStream<TcpStream>> {
    let timeout = std::time::Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS);
    futures::select_biased! {
        done = futures::FutureExt::fuse(tls.acceptor().accept(stream)) => done,
        () = futures::FutureExt::fuse(Deadline::after(timeout)) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT_MS} ms")))
        }
    }
}

/// Serves an accepted TCP connection: socket options, then the TLS
/// handshake if its listener has TLS, then its frames.
pub(crate) async fn serve_tcp<F: FrontEnd>(front: F, stream: TcpStream, security: Security) {
    let _ = stream.set_nodelay(true);
    // A peer that sends nothing for this long is dropped; a read that times
    // out ends the connection like a close.
    let idle = std::time::Duration::from_millis(front.config().connection_idle_timeout_ms);
    let _ = stream.set_read_timeout(Some(idle));
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let mut info = ConnInfo { peer, protocol: security.protocol, listener: security.listener, tls_principal: None };
    let Some(tls) = security.tls else {
        return serve(front, stream, info).await;
    };
    if front.plaintext_beside_tls() {
        // A native port with TLS: a connection that does not open with a
        // TLS handshake is served in plaintext, as PLAINTEXT (the front-end
        // serves such a connection only to a proven broker).
        let mut first = [0u8; 1];
        let opened = futures::select_biased! {
            peeked = futures::FutureExt::fuse(stream.peek(&mut first)) => peeked.ok(),
            () = futures::FutureExt::fuse(Deadline::after(idle)) => None,
        };
        match opened {
            Some(1..) if first[0] == TLS_HANDSHAKE_RECORD_BYTE => {}
            Some(1..) => {
                info.protocol = crate::security::SecurityProtocol::Plaintext;
                return serve(front, stream, info).await;
            }
            // Closed or silent before its first byte.
            _ => return,
        }
    }
    match tls_handshake(&tls, stream).await {
        Ok(stream) => {
            let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
            info.tls_principal = certificate.and_then(crate::security::tls::principal_of);
            serve(front, stream, info).await
        }
        Err(err) => {
            front.metrics().tls_handshake_failed();
            tracing::info!(shard = front.shard_id(), peer = %info.peer, listener = %info.listener, "TLS handshake failed: {err}");
        }
    }
}

async fn serve<F: FrontEnd, S: AsyncRead + AsyncWrite + Unpin + 'static>(front: F, stream: S, info: ConnInfo) {
    front.metrics().connection_opened();
    let peer = info.peer.clone();
    let (reader, writer) = stream.split();
    let (queue, responses) = local_channel::new_bounded(front.config().connection_requests_in_flight_max);
    let budgets = Budgets {
        connection: ByteBudget::new(front.config().connection_bytes_in_flight_max),
        shard: front.bytes_in_flight().clone(),
    };
    // The writer gives up on a client that does not read; the reader then
    // stops too (else it could wait for budget that the unwritten responses
    // hold, or read on for up to the idle timeout).
    let (writer_done, writer_gone) = futures::channel::oneshot::channel::<()>();
    let writer = glommio::spawn_local({
        let front = front.clone();
        async move {
            write_responses(front, writer, responses).await;
            drop(writer_done);
        }
    });
    let end = futures::select! {
        end = futures::FutureExt::fuse(read_requests(&front, &info, reader, &queue, &budgets)) => end,
        _ = futures::FutureExt::fuse(writer_gone) => Ok(()),
    };
    if let Err(err) = end {
        front.metrics().bad_frame();
        tracing::warn!(shard = front.shard_id(), %peer, "closing connection: {err}");
        let frame = F::framing_error(&err);
        let _ = queue
            .send(Queued {
                pending: Pending::Ready(Response::Close(frame)),
                api: "error",
                started: Instant::now(),
                charge: None,
            })
            .await;
    }
    drop(queue);
    writer.await;
    front.metrics().connection_closed();
    tracing::debug!(shard = front.shard_id(), %peer, "connection closed");
}

/// Reads and dispatches frames until the peer closes (Ok) or sends
/// something that ends the stream (Err). Each frame is admitted within the
/// byte budgets before it is dispatched, and a large one before its body is
/// read (its length is known from its header).
async fn read_requests<F: FrontEnd, S: AsyncRead + AsyncWrite + Unpin>(
    front: &F,
    info: &ConnInfo,
    mut reader: ReadHalf<S>,
    queue: &local_channel::LocalSender<Queued>,
    budgets: &Budgets,
) -> Result<(), F::FrameError> {
    let session = front.new_session(info);
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    // A large frame's bytes, charged before its body is read.
    let mut reserved: Option<Charge> = None;
    loop {
        loop {
            if let Some(until) = front.quiet_until(&session) {
                let now = Instant::now();
                if until > now {
                    Deadline::after(until - now).await;
                }
            }
            let Some(frame) = front.decode(&session, &mut buf)? else { break };
            let frame_bytes = F::frame_bytes(&frame);
            let charge = match reserved.take() {
                Some(charge) => {
                    charge.resize(frame_bytes);
                    charge
                }
                None => {
                    budgets.room_for(frame_bytes).await;
                    budgets.charge(frame_bytes)
                }
            };
            let started = Instant::now();
            let (reply, api) = front.dispatch(&session, frame, &charge);
            let pending = match reply {
                Reply::Now(response) => Pending::Ready(response),
                Reply::Later(future) => Pending::Running(glommio::spawn_local(future).detach()),
            };
            if queue.send(Queued { pending, api, started, charge: Some(charge) }).await.is_err() {
                return Ok(()); // the writer is gone: the socket failed
            }
        }
        let needed = front.bytes_needed(&session, &buf)?;
        if needed > scratch.len() && reserved.is_none() {
            let frame_bytes = buf.len() + needed;
            budgets.room_for(frame_bytes).await;
            reserved = Some(budgets.charge(frame_bytes));
        }
        let read = match read_more(&mut reader, &mut buf, needed, &mut scratch).await {
            Ok(read) => read,
            Err(err) => {
                tracing::debug!(shard = front.shard_id(), "read failed: {err}");
                return Ok(());
            }
        };
        if read == 0 {
            return if buf.is_empty() { Ok(()) } else { Err(F::truncated(buf.len())) };
        }
    }
}

/// Reads what the stream has into `buf`, which needs `needed` more bytes
/// for its next frame (as `FrameDecoder::bytes_needed` says; it checked the
/// frame's length against the cap). A large frame is read straight into its
/// final place: room is reserved for all of it (untouched pages cost
/// nothing) but zeroed and read a step at a time, so a header alone pins no
/// memory. Small frames are read into `scratch` and only the bytes read
/// copied, rather than zero a large region of the buffer for every read.
/// Returns the bytes read (0: the peer closed).
pub(crate) async fn read_more(
    reader: &mut (impl futures::AsyncRead + Unpin),
    buf: &mut BytesMut,
    needed: usize,
    scratch: &mut [u8],
) -> std::io::Result<usize> {
    if needed > scratch.len() {
        buf.reserve(needed);
        let start = buf.len();
        buf.resize(start + needed.min(LARGE_READ_STEP_BYTES), 0);
        let mut filled = start;
        let mut result = Ok(());
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        buf.truncate(filled);
        result.map(|()| filled - start)
    } else {
        let n = reader.read(scratch).await?;
        buf.extend_from_slice(&scratch[..n]);
        Ok(n)
    }
}

async fn write_responses<F: FrontEnd, S: AsyncRead + AsyncWrite + Unpin>(
    front: F,
    mut writer: WriteHalf<S>,
    responses: LocalReceiver<Queued>,
) {
    let write_timeout = std::time::Duration::from_millis(front.config().connection_write_timeout_ms);
    while let Some(queued) = responses.recv().await {
        let response = match queued.pending {
            Pending::Ready(response) => response,
            Pending::Running(handle) => match handle.await {
                Some(response) => response,
                None => {
                    // The request's task was cancelled (shard shutting down).
                    break;
                }
            },
        };
        front.metrics().request_done(queued.api, queued.started.elapsed());
        // From here the response is what the request holds.
        if let Some(charge) = &queued.charge {
            charge.resize(response.bytes());
        }
        let written = match response {
            Response::None => Ok(()),
            Response::Frame(frame) => write_vectored_all(&mut writer, frame, Vec::new(), write_timeout).await,
            Response::Vectored { head, payload } => write_vectored_all(&mut writer, head, payload, write_timeout).await,
            Response::Close(frame) => {
                if let Some(frame) = frame {
                    let _ = write_vectored_all(&mut writer, frame, Vec::new(), write_timeout).await;
                }
                break;
            }
        };
        if let Err(err) = written {
            if err.kind() == std::io::ErrorKind::TimedOut {
                front.metrics().write_timed_out();
                tracing::warn!(shard = front.shard_id(), "closing a connection whose client does not read: {err}");
            } else {
                tracing::debug!(shard = front.shard_id(), "write failed: {err}");
            }
            break;
        }
    }
    let _ = writer.close().await;
}

/// Writes a frame head and its payload buffers with as few syscalls as the
/// socket allows, never copying the payload. Each write must make progress
/// within `timeout_each`: a client that stops reading is given up on.
async fn write_vectored_all<S: AsyncRead + AsyncWrite + Unpin>(
    writer: &mut WriteHalf<S>,
    head: Bytes,
    payload: Vec<Bytes>,
    timeout_each: std::time::Duration,
) -> std::io::Result<()> {
    let mut buffers: Vec<Bytes> = Vec::with_capacity(payload.len() + 1);
    buffers.push(head);
    buffers.extend(payload.into_iter().filter(|b| !b.is_empty()));
    let mut first = 0;
    while first < buffers.len() {
        let slices: Vec<IoSlice<'_>> = buffers[first..].iter().take(1024).map(|b| IoSlice::new(b)).collect();
        // Biased: the write is polled first, so a write the socket takes at
        // once (the usual case) never registers a timer.
        let mut written = futures::select_biased! {
            written = futures::FutureExt::fuse(writer.write_vectored(&slices)) => written?,
            () = futures::FutureExt::fuse(Deadline::after(timeout_each)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nothing written for {} ms", timeout_each.as_millis()),
                ));
            }
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let len = buffers[first].len();
            if written >= len {
                written -= len;
                first += 1;
            } else {
                let rest = buffers[first].split_off(written);
                buffers[first] = rest;
                written = 0;
            }
        }
    }
    // TLS keeps what it encrypted until flushed (a plain socket has
    // nothing to flush: this returns at once).
    futures::select_biased! {
        flushed = futures::FutureExt::fuse(writer.flush()) => flushed,
        () = futures::FutureExt::fuse(Deadline::after(timeout_each)) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("nothing flushed for {} ms", timeout_each.as_millis()),
        )),
    }
}
