//! TCP between controller voters.
//!
//! A frame is `[u32 BE length][u8 kind][payload]`: kind 1 is a raft-rs
//! `eraftpb::Message` in protobuf (its own encoding: no second codec for
//! Raft's traffic), kind 2 a `Control` message in JSON (rare, small, and
//! readable in a packet dump). Lengths are capped (MAX_FRAME_BYTES) before
//! anything is allocated; a bad frame closes that connection with a logged
//! error, never a panic.
//!
//! Each peer has one outbound connection, owned by a writer thread that
//! reconnects with backoff and drops frames while the peer is down (Raft
//! resends, controller RPCs are retried by their origin). Each accepted
//! connection gets a reader thread. Frames carry their sender's id, so the
//! two directions need not be paired.
//!
//! With `TransportTls` (the controller listener's protocol is SSL) every
//! connection is mutual TLS: a voter presents its certificate and checks
//! the other's against the cluster's CAs, the connecting side also the
//! name it dialled; a connection that is not TLS, or whose certificate the
//! CAs did not sign, is closed before any frame is read. Without it the
//! port is open to whoever can reach it.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

use crate::controller::{BrokerEndpoints, BrokerRestart, ControllerError, ControllerRequest};
use crate::limits::{
    ACCEPT_POLL_MS, CONNECT_TIMEOUT_MS, MAX_FRAME_BYTES, PEER_QUEUE_FRAMES, RECONNECT_BACKOFF_MAX_MS,
    RECONNECT_BACKOFF_MIN_MS, WRITE_TIMEOUT_MS,
};

const KIND_RAFT: u8 = 1;
const KIND_CONTROL: u8 = 2;

/// Controller traffic other than Raft's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Control {
    /// A request forwarded to the active controller. (from, incarnation,
    /// seq) identifies it across resends.
    Forward { from: i32, incarnation: u64, seq: u64, request: ControllerRequest },
    /// The active controller refused a forwarded request. Success needs no
    /// reply: the origin sees its request id in the committed entry.
    ForwardReply { incarnation: u64, seq: u64, error: ControllerError },
    /// A broker's liveness, to the active controller.
    Heartbeat {
        node_id: i32,
        incarnation: u64,
        endpoints: BrokerEndpoints,
        /// How the broker's previous process ended (KIP-966); absent from
        /// older brokers: a clean stop.
        #[serde(default)]
        restart: BrokerRestart,
    },
}

#[derive(Debug)]
pub(crate) enum Inbound {
    Raft(Box<Message>),
    Control(Control),
}

/// Delivers an inbound message; false when the receiver is gone.
pub(crate) type Deliver = Arc<dyn Fn(Inbound) -> bool + Send + Sync>;

pub(crate) fn encode_raft(msg: &Message) -> Option<Vec<u8>> {
    match msg.write_to_bytes() {
        Ok(bytes) => Some(frame(KIND_RAFT, &bytes)),
        Err(e) => {
            tracing::error!(error = %e, "encode raft message");
            None
        }
    }
}

pub(crate) fn encode_control(c: &Control) -> Option<Vec<u8>> {
    match serde_json::to_vec(c) {
        Ok(bytes) => Some(frame(KIND_CONTROL, &bytes)),
        Err(e) => {
            tracing::error!(error = %e, "encode control message");
            None
        }
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    f.push(kind);
    f.extend_from_slice(payload);
    f
}

/// Decode a frame body (after the length).
pub(crate) fn decode(body: &[u8]) -> Result<Inbound, String> {
    let (&kind, payload) = body.split_first().ok_or("empty frame")?;
    match kind {
        KIND_RAFT => Message::parse_from_bytes(payload)
            .map(|m| Inbound::Raft(Box::new(m)))
            .map_err(|e| format!("bad raft message: {e}")),
        KIND_CONTROL => {
            serde_json::from_slice(payload).map(Inbound::Control).map_err(|e| format!("bad control message: {e}"))
        }
        k => Err(format!("unknown frame kind {k}")),
    }
}

/// Read one frame body; None at a clean end of stream.
pub(crate) fn read_frame(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} not in 1..={MAX_FRAME_BYTES}"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Mutual TLS on the voters' connections: this voter's server side (which
/// must require and verify client certificates) and client side (its own
/// certificate, the CAs), and the name each peer's certificate must hold.
/// The configs are swapped whole when the broker reloads its certificates
/// (SIGHUP); each new connection takes the current ones.
#[derive(Clone)]
pub struct TransportTls {
    pub server: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    pub client: Arc<arc_swap::ArcSwap<rustls::ClientConfig>>,
    /// Per voter id, the host it is dialled by (its certificate must name
    /// it); a voter missing here is checked for its address's IP.
    pub peer_names: HashMap<i32, String>,
}

impl std::fmt::Debug for TransportTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportTls").field("peer_names", &self.peer_names).finish_non_exhaustive()
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    ServerTls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    ClientTls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::ServerTls(s) => s.read(buf),
            Stream::ClientTls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::ServerTls(s) => s.write(buf),
            Stream::ClientTls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::ServerTls(s) => s.flush(),
            Stream::ClientTls(s) => s.flush(),
        }
    }
}

impl Stream {
    fn shutdown(&self) {
        let socket = match self {
            Stream::Plain(s) => s,
            Stream::ServerTls(s) => &s.sock,
            Stream::ClientTls(s) => &s.sock,
        };
        let _ = socket.shutdown(Shutdown::Both);
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[derive(Debug)]
pub(crate) struct Transport {
    peers: HashMap<i32, SyncSender<Vec<u8>>>,
    writers: Vec<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    inbound: Readers,
}

impl Transport {
    /// Bind `listen` and start the listener and one writer per peer.
    pub fn start(
        node_id: i32,
        listen: SocketAddr,
        peers: &[(i32, SocketAddr)],
        deliver: Deliver,
        tls: Option<TransportTls>,
    ) -> io::Result<Transport> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let inbound = Arc::new(Mutex::new(Vec::new()));
        let listener = {
            let stop = stop.clone();
            let inbound = inbound.clone();
            let server = tls.as_ref().map(|tls| tls.server.clone());
            thread::Builder::new()
                .name(format!("ctrl-listen-{node_id}"))
                .spawn(move || accept_loop(listener, stop, inbound, deliver, server))?
        };
        let mut senders = HashMap::new();
        let mut writers = Vec::new();
        for &(peer, addr) in peers {
            let (tx, rx) = mpsc::sync_channel(PEER_QUEUE_FRAMES);
            senders.insert(peer, tx);
            let client = match &tls {
                Some(tls) => {
                    let host = tls.peer_names.get(&peer).cloned().unwrap_or_else(|| addr.ip().to_string());
                    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("voter {peer}: {host:?} is not a host name"),
                        )
                    })?;
                    Some((tls.client.clone(), name))
                }
                None => None,
            };
            writers.push(
                thread::Builder::new()
                    .name(format!("ctrl-peer-{node_id}-{peer}"))
                    .spawn(move || write_loop(peer, addr, rx, client))?,
            );
        }
        Ok(Transport { peers: senders, writers, listener: Some(listener), stop, inbound })
    }

    /// Queue a frame to a peer; dropped if its queue is full or unknown.
    pub fn send(&self, to: i32, frame: Vec<u8>) {
        let Some(tx) = self.peers.get(&to) else {
            tracing::debug!(to, "no such controller peer");
            return;
        };
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => tracing::debug!(to, "peer queue full: frame dropped"),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Stop every thread and close every socket. Idempotent.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Writers end when their queue's sender is dropped.
        self.peers.clear();
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        let readers: Vec<_> = match self.inbound.lock() {
            Ok(mut v) => v.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        for (stream, reader) in readers {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = reader.join();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Readers = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    inbound: Readers,
    deliver: Deliver,
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let server = tls.as_ref().map(|tls| tls.load_full());
                if let Err(e) = start_reader(stream, peer, &inbound, deliver.clone(), server) {
                    tracing::warn!(%peer, error = %e, "controller connection setup failed");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
            Err(e) => {
                tracing::warn!(error = %e, "controller accept failed");
                thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
        }
    }
}

fn start_reader(
    stream: TcpStream,
    peer: SocketAddr,
    inbound: &Readers,
    deliver: Deliver,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let socket = stream.try_clone()?;
    // The handshake runs on the first read: a peer that does not speak TLS
    // or presents no certificate the CAs signed fails it, and is closed
    // below like a bad frame, before any frame is read.
    let mut reader = match tls {
        Some(config) => Stream::ServerTls(Box::new(rustls::StreamOwned::new(
            rustls::ServerConnection::new(config).map_err(tls_error)?,
            socket,
        ))),
        None => Stream::Plain(socket),
    };
    let handle = thread::Builder::new().name("ctrl-reader".into()).spawn(move || {
        loop {
            match read_frame(&mut reader) {
                Ok(Some(body)) => match decode(&body) {
                    Ok(msg) => {
                        if !deliver(msg) {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "bad controller frame: closing");
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        tracing::error!(%peer, error = %e, "bad controller frame: closing");
                    } else {
                        tracing::debug!(%peer, error = %e, "controller connection closed");
                    }
                    break;
                }
            }
        }
        // Shut down, not just dropped: `inbound` holds a clone of the socket.
        reader.shutdown();
    })?;
    let mut v = match inbound.lock() {
        Ok(v) => v,
        Err(p) => p.into_inner(),
    };
    // Forget readers that have ended, so reconnects do not accumulate.
    let (done, live): (Vec<_>, Vec<_>) = v.drain(..).partition(|(_, h)| h.is_finished());
    for (_, h) in done {
        let _ = h.join();
    }
    *v = live;
    v.push((stream, handle));
    Ok(())
}

fn write_loop(
    peer: i32,
    addr: SocketAddr,
    rx: Receiver<Vec<u8>>,
    tls: Option<(Arc<arc_swap::ArcSwap<rustls::ClientConfig>>, rustls_pki_types::ServerName<'static>)>,
) {
    let mut conn: Option<BufWriter<Stream>> = None;
    let mut backoff = Duration::from_millis(RECONNECT_BACKOFF_MIN_MS);
    let mut next_attempt = Instant::now();
    while let Ok(first) = rx.recv() {
        if conn.is_none() && Instant::now() >= next_attempt {
            match connect(addr, tls.as_ref()) {
                Ok(s) => {
                    tracing::debug!(peer, %addr, "connected to controller peer");
                    conn = Some(BufWriter::new(s));
                    backoff = Duration::from_millis(RECONNECT_BACKOFF_MIN_MS);
                }
                Err(e) => {
                    tracing::debug!(peer, %addr, error = %e, "connect to controller peer failed");
                    next_attempt = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_millis(RECONNECT_BACKOFF_MAX_MS));
                }
            }
        }
        let Some(w) = conn.as_mut() else {
            continue; // dropped: the peer is down
        };
        // Write this frame and whatever else is queued, then flush once.
        let mut result = w.write_all(&first);
        while result.is_ok() {
            match rx.try_recv() {
                Ok(f) => result = w.write_all(&f),
                Err(_) => break,
            }
        }
        if let Err(e) = result.and_then(|()| w.flush()) {
            tracing::debug!(peer, %addr, error = %e, "write to controller peer failed");
            conn = None;
            next_attempt = Instant::now();
        }
    }
}

fn connect(
    addr: SocketAddr,
    tls: Option<&(Arc<arc_swap::ArcSwap<rustls::ClientConfig>>, rustls_pki_types::ServerName<'static>)>,
) -> io::Result<Stream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    let Some((config, name)) = tls else { return Ok(Stream::Plain(s)) };
    // The handshake completes before the first frame is written; reads time
    // out too, so a peer that never answers it does not hold the writer.
    s.set_read_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
    let mut tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(config.load_full(), name.clone()).map_err(tls_error)?,
        s,
    );
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Stream::ClientTls(Box::new(tls)))
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // protobuf structs have private fields
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut m = Message::default();
        m.from = 1;
        m.to = 2;
        m.term = 7;
        let f = encode_raft(&m).expect("encode");
        let body = read_frame(&mut &f[..]).expect("read").expect("frame");
        match decode(&body) {
            Ok(Inbound::Raft(back)) => assert_eq!(*back, m),
            other => panic!("{other:?}"),
        }
        let c = Control::ForwardReply { incarnation: 1, seq: 2, error: ControllerError::NotLeader };
        let f = encode_control(&c).expect("encode");
        let body = read_frame(&mut &f[..]).expect("read").expect("frame");
        match decode(&body) {
            Ok(Inbound::Control(back)) => assert_eq!(back, c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let huge = (MAX_FRAME_BYTES + 1).to_be_bytes();
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(read_frame(&mut &0u32.to_be_bytes()[..]).is_err());
        let mut short = 10u32.to_be_bytes().to_vec();
        short.push(1);
        assert!(read_frame(&mut &short[..]).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        assert!(decode(&[KIND_RAFT, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[KIND_CONTROL, b'{']).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn a_bad_frame_closes_only_that_connection() {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let deliver: Deliver = Arc::new(move |m| tx.lock().map(|t| t.send(format!("{m:?}")).is_ok()).unwrap_or(false));
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let mut t = Transport::start(1, addr, &[], deliver, None).expect("start");
        let mut bad = TcpStream::connect(addr).expect("connect");
        bad.write_all(&u32::MAX.to_be_bytes()).expect("write");
        let mut buf = [0u8; 1];
        // The server closes it: a read sees EOF (or a reset).
        let n = bad.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0);
        let mut good = TcpStream::connect(addr).expect("connect");
        let f = encode_control(&Control::ForwardReply { incarnation: 1, seq: 1, error: ControllerError::Shutdown })
            .expect("encode");
        good.write_all(&f).expect("write");
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("delivered");
        assert!(got.contains("ForwardReply"));
        t.shutdown();
    }
}
