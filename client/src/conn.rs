//! One multiplexed connection to one broker port.
//!
//! Many requests are in flight at once: each gets the next request id and a
//! slot in the pending table, a writer task sends frames in the order they
//! were queued, and a reader task hands each response to the slot with its
//! request id. The broker answers in request order, but matching by id
//! does not depend on it. A produce with acks=0 gets no answer, so it takes
//! no slot: its sender only learns that the frame was written.
//!
//! Any failure (I/O, an unreadable frame, a request timeout) ends the
//! connection: every pending request fails with the same error, and the
//! pool opens a new connection for the next request. A timed-out request
//! ends it too because the broker answers in order, so every later answer
//! would wait behind the missing one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use spate_flatbuf::{FRAME_BYTES_MAX_DEFAULT, Frame, FrameDecoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::config::{ClientTls, SaslConfig, SaslMechanism};
use crate::error::ClientError;
use crate::limits::{
    IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX, READ_CHUNK_BYTES, WRITE_BUFFER_BYTES, WRITE_QUEUE_FRAMES_MAX,
};
use crate::lock;
use crate::protocol::{self, HandshakeInfo, OutFrame, Stamp};
use crate::scram::ScramClient;

type Reply = oneshot::Sender<Result<Frame, ClientError>>;

/// A frame for the writer, and who to tell once it is written (acks=0).
struct Outgoing {
    frame: OutFrame,
    written: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// What the caller side and the two tasks share.
#[derive(Default)]
struct State {
    pending: HashMap<u64, Reply>,
    /// Request ids start at 1: 0 marks an answer to a request the broker
    /// could not read at all.
    next_request_id: u64,
    /// Set once; the connection is unusable from then on.
    failure: Option<ClientError>,
    tasks: Vec<AbortHandle>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// Ends the connection: records the first error, fails every pending
    /// request with it and stops both tasks (which closes the socket).
    fn fail(&self, error: ClientError) {
        let (pending, tasks) = {
            let mut state = lock(&self.state);
            if state.failure.is_none() {
                state.failure = Some(error.clone());
            }
            (std::mem::take(&mut state.pending), std::mem::take(&mut state.tasks))
        };
        for (_, reply) in pending {
            // The caller may have stopped waiting; that is fine.
            let _ = reply.send(Err(error.clone()));
        }
        for task in tasks {
            task.abort();
        }
    }

    fn failure(&self) -> Option<ClientError> {
        lock(&self.state).failure.clone()
    }

    fn add_task(&self, task: AbortHandle) {
        let mut state = lock(&self.state);
        if state.failure.is_some() {
            task.abort();
        } else {
            state.tasks.push(task);
        }
    }

    /// Hands a response to the request it answers.
    fn dispatch(&self, frame: Frame) -> Result<(), ClientError> {
        let request_id = protocol::request_id(&frame)?;
        let mut state = lock(&self.state);
        if let Some(reply) = state.pending.remove(&request_id) {
            drop(state);
            let _ = reply.send(Ok(frame));
            return Ok(());
        }
        if request_id == 0 {
            drop(state);
            // The broker could not read some request at all; which one is
            // unknown, so nothing on this connection can be trusted.
            return Err(protocol::decode_error(&frame));
        }
        if request_id < state.next_request_id {
            // An id we issued but no one waits for: an acks=0 produce the
            // broker answered anyway. Harmless.
            return Ok(());
        }
        Err(ClientError::Protocol(format!("the broker answered request {request_id}, which was never sent")))
    }
}

/// A connection to one address, shared by every request to it.
pub(crate) struct Connection {
    address: String,
    shared: Arc<Shared>,
    writer: mpsc::Sender<Outgoing>,
    in_flight: Semaphore,
    handshake: Option<HandshakeInfo>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("address", &self.address).field("handshake", &self.handshake).finish()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.fail(ClientError::Closed);
    }
}

impl Connection {
    /// Connects to `address` and completes the handshake.
    pub(crate) async fn connect(
        address: &str,
        client_id: &str,
        timeout: Duration,
        frame_bytes_max: usize,
        security: (Option<&SaslConfig>, Option<&ClientTls>),
    ) -> Result<Connection, ClientError> {
        let (sasl, tls) = security;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Err(_elapsed) => return Err(ClientError::Timeout),
            Ok(Err(error)) => return Err(std::io::Error::new(error.kind(), format!("{address}: {error}")).into()),
            Ok(Ok(stream)) => stream,
        };
        // Requests are written whole; Nagle would only delay small ones.
        stream.set_nodelay(true)?;
        let mut connection = match tls {
            None => {
                let (read, write) = stream.into_split();
                Connection::start(address, read, write, frame_bytes_max)
            }
            Some(tls) => {
                let (host, _) = crate::config::parse_address(address)?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
                    ClientError::InvalidConfig(format!("{host:?} is not a host name or address TLS can check"))
                })?;
                let connector = tokio_rustls::TlsConnector::from(tls.0.clone());
                let stream = match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
                    Err(_elapsed) => return Err(ClientError::Timeout),
                    Ok(Err(error)) => {
                        let message = format!("{address}: TLS handshake failed: {error}");
                        return Err(std::io::Error::new(error.kind(), message).into());
                    }
                    Ok(Ok(stream)) => stream,
                };
                let (read, write) = tokio::io::split(stream);
                Connection::start(address, read, write, frame_bytes_max)
            }
        };
        connection.handshake(client_id, timeout).await?;
        if let Some(sasl) = sasl {
            connection.authenticate(sasl, timeout).await?;
        }
        Ok(connection)
    }

    /// The SASL exchange after the handshake: SCRAM's client-first and
    /// client-final (the broker's final signature checked, so an impostor
    /// that accepts any proof is refused), or PLAIN's one message.
    async fn authenticate(&self, sasl: &SaslConfig, timeout: Duration) -> Result<(), ClientError> {
        let name = sasl.mechanism.name();
        let exchange = async |token: Vec<u8>, first: bool| {
            let mechanism = first.then_some(name);
            let frame = self.request(timeout, |stamp| protocol::sasl_authenticate(stamp, mechanism, &token)).await?;
            protocol::decode_sasl_authenticate(&frame)
        };
        match sasl.mechanism {
            SaslMechanism::Plain => {
                let token = format!("\0{}\0{}", sasl.username, sasl.password).into_bytes();
                let (_, complete) = exchange(token, true).await?;
                if !complete {
                    return Err(ClientError::Protocol("the broker did not end the PLAIN exchange".into()));
                }
            }
            SaslMechanism::Scram(scram) => {
                let scram_error = |err: crate::scram::ScramError| ClientError::Protocol(err.to_string());
                let mut client = ScramClient::new(scram, &sasl.username, &sasl.password)?;
                let (server_first, _) = exchange(client.client_first(), true).await?;
                let client_final = client.client_final(&server_first).map_err(scram_error)?;
                let (server_final, complete) = exchange(client_final, false).await?;
                client.verify_server_final(&server_final).map_err(scram_error)?;
                if !complete {
                    return Err(ClientError::Protocol("the broker did not end the SCRAM exchange".into()));
                }
            }
        }
        Ok(())
    }

    /// Starts the reader and writer tasks on an already open stream.
    pub(crate) fn start<R, W>(address: &str, read: R, write: W, frame_bytes_max: usize) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        lock(&shared.state).next_request_id = 1;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        let decoder = FrameDecoder::new(frame_bytes_max);
        let reader_task = tokio::spawn(read_loop(read, decoder, shared.clone()));
        let writer_task = tokio::spawn(write_loop(write, queue, shared.clone()));
        shared.add_task(reader_task.abort_handle());
        shared.add_task(writer_task.abort_handle());
        Connection {
            address: address.to_string(),
            shared,
            writer,
            in_flight: Semaphore::new(IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX),
            handshake: None,
        }
    }

    pub(crate) async fn handshake(&mut self, client_id: &str, timeout: Duration) -> Result<HandshakeInfo, ClientError> {
        let frame = self.request(timeout, |stamp| protocol::handshake(stamp, client_id)).await?;
        let info = protocol::decode_handshake(&frame)?;
        self.handshake = Some(info);
        Ok(info)
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn is_usable(&self) -> bool {
        self.shared.failure().is_none()
    }

    fn failure_or_closed(&self) -> ClientError {
        self.shared.failure().unwrap_or(ClientError::Closed)
    }

    /// Takes the next request id, registering `reply` for its answer.
    fn register(&self, reply: Option<Reply>) -> Result<Stamp, ClientError> {
        let mut state = lock(&self.shared.state);
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        let request_id = state.next_request_id;
        state.next_request_id += 1;
        if let Some(reply) = reply {
            state.pending.insert(request_id, reply);
        }
        let version = self.handshake.map_or(spate_flatbuf::PROTOCOL_VERSION_MIN, |info| info.version);
        Ok(Stamp { request_id, version })
    }

    fn unregister(&self, request_id: u64) {
        lock(&self.shared.state).pending.remove(&request_id);
    }

    fn check_size(&self, frame: &OutFrame) -> Result<(), ClientError> {
        let bytes_max = self.handshake.map_or(FRAME_BYTES_MAX_DEFAULT, |info| info.frame_bytes_max);
        if frame.frame_bytes() > bytes_max {
            return Err(ClientError::RequestTooLarge { bytes: frame.frame_bytes(), bytes_max });
        }
        Ok(())
    }

    /// Sends a request and waits for its response, at most `timeout` in all.
    pub(crate) async fn request(
        &self,
        timeout: Duration,
        build: impl FnOnce(Stamp) -> OutFrame,
    ) -> Result<Frame, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let _slot = tokio::time::timeout_at(deadline, self.in_flight.acquire())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?;
        let (reply, response) = oneshot::channel();
        let stamp = self.register(Some(reply))?;
        let frame = build(stamp);
        if let Err(error) = self.check_size(&frame) {
            self.unregister(stamp.request_id);
            return Err(error);
        }
        let exchange = async {
            self.writer.send(Outgoing { frame, written: None }).await.map_err(|_| self.failure_or_closed())?;
            response.await.map_err(|_| self.failure_or_closed())?
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let others = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connection to {} closed: request {} timed out", self.address, stamp.request_id),
                );
                self.shared.fail(others.into());
                Err(ClientError::Timeout)
            }
        }
    }

    /// Sends a request that gets no response (a produce with acks=0) and
    /// waits until it is written to the socket.
    pub(crate) async fn send_only(
        &self,
        timeout: Duration,
        build: impl FnOnce(Stamp) -> OutFrame,
    ) -> Result<(), ClientError> {
        let stamp = self.register(None)?;
        let frame = build(stamp);
        self.check_size(&frame)?;
        let (written, done) = oneshot::channel();
        let exchange = async {
            self.writer.send(Outgoing { frame, written: Some(written) }).await.map_err(|_| self.failure_or_closed())?;
            done.await.map_err(|_| self.failure_or_closed())?
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| ClientError::Timeout)?
    }
}

fn frame_error(error: FrameError) -> ClientError {
    ClientError::Protocol(format!("bad frame from the broker: {error}"))
}

async fn read_loop<R: AsyncRead + Unpin>(mut read: R, decoder: FrameDecoder, shared: Arc<Shared>) {
    let error = read_frames(&mut read, &decoder, &shared).await;
    shared.fail(error);
}

/// Reads and dispatches frames until something goes wrong; returns what did.
async fn read_frames<R: AsyncRead + Unpin>(read: &mut R, decoder: &FrameDecoder, shared: &Shared) -> ClientError {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(error) = shared.dispatch(frame) {
                        return error;
                    }
                }
                Ok(None) => break,
                Err(error) => return frame_error(error),
            }
        }
        // The decoder checks the announced length against the cap before
        // this reserves room for it.
        let needed = match decoder.bytes_needed(&buf) {
            Ok(needed) => needed,
            Err(error) => return frame_error(error),
        };
        buf.reserve(needed.max(READ_CHUNK_BYTES));
        match read.read_buf(&mut buf).await {
            Ok(0) => {
                let what = if buf.is_empty() {
                    "the broker closed the connection".to_string()
                } else {
                    format!("the broker closed the connection in the middle of a frame ({} bytes buffered)", buf.len())
                };
                return std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what).into();
            }
            Ok(_) => {}
            Err(error) => return error.into(),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(write: W, mut queue: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    let mut written = Vec::new();
    while let Some(first) = queue.recv().await {
        // Everything already queued goes out with one flush.
        let mut next = Some(first);
        let result: std::io::Result<()> = async {
            while let Some(outgoing) = next.take() {
                writer.write_all(&outgoing.frame.header).await?;
                writer.write_all(&outgoing.frame.envelope).await?;
                written.extend(outgoing.written);
                next = queue.try_recv().ok();
            }
            writer.flush().await
        }
        .await;
        match result {
            Ok(()) => {
                for done in written.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                let error = ClientError::from(error);
                for done in written.drain(..) {
                    let _ = done.send(Err(error.clone()));
                }
                shared.fail(error);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use spate_flatbuf::flatbuffers::FlatBufferBuilder;
    use spate_flatbuf::proto::{self, Body, ErrorCode};
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::*;
    use crate::protocol::ProduceEntry;
    use crate::protocol::tests::response;

    /// The broker's end of an in-memory connection.
    struct FakeBroker {
        read: ReadHalf<DuplexStream>,
        write: WriteHalf<DuplexStream>,
        buf: BytesMut,
        decoder: FrameDecoder,
    }

    impl FakeBroker {
        async fn next_request(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.buf).ok()? {
                    return Some(frame);
                }
                if self.read.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        }

        async fn send(&mut self, frame_bytes: &[u8]) {
            self.write.write_all(frame_bytes).await.expect("client end open");
        }
    }

    fn pair(frame_bytes_max: usize) -> (Connection, FakeBroker) {
        let (client, broker) = tokio::io::duplex(1 << 20);
        let (client_read, client_write) = tokio::io::split(client);
        let (read, write) = tokio::io::split(broker);
        let connection = Connection::start("fake:1", client_read, client_write, frame_bytes_max);
        let broker = FakeBroker { read, write, buf: BytesMut::new(), decoder: FrameDecoder::new(1 << 24) };
        (connection, broker)
    }

    /// A metadata response whose controller id tells which request it answers.
    fn metadata_answer(request_id: u64, controller_id: i32) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        let body = proto::MetadataResponse::create(
            &mut builder,
            &proto::MetadataResponseArgs { brokers: None, controller_id, topics: None },
        );
        let envelope = proto::Envelope::create(
            &mut builder,
            &proto::EnvelopeArgs {
                request_id,
                version: 1,
                body_type: Body::MetadataResponse,
                body: Some(body.as_union_value()),
            },
        );
        builder.finish(envelope, None);
        spate_flatbuf::encode_frame(&builder, &[]).to_vec()
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn responses_reach_their_requests_by_id_and_acks_0_takes_no_slot() {
        let (connection, mut broker) = pair(1 << 20);
        let connection = Arc::new(connection);
        let ask = |connection: Arc<Connection>| async move {
            let frame = connection.request(SECOND, |stamp| protocol::metadata(stamp, None)).await?;
            protocol::decode_metadata(&frame).map(|metadata| metadata.controller_id)
        };
        let first = tokio::spawn(ask(connection.clone()));
        // Let the first request be written before the others.
        let request = broker.next_request().await.expect("first request");
        let first_id = request.read().expect("valid").request_id();
        let fire_and_forget = connection.send_only(SECOND, |stamp| {
            protocol::produce(stamp, 0, 1000, None, &[ProduceEntry { topic: "t", partition: 0, records: b"x" }])
        });
        fire_and_forget.await.expect("acks=0 produce is written");
        let second = tokio::spawn(ask(connection.clone()));
        let mut ids = vec![first_id];
        while ids.len() < 3 {
            let request = broker.next_request().await.expect("more requests");
            ids.push(request.read().expect("valid").request_id());
        }
        assert_eq!(ids, vec![1, 2, 3], "ids count up, the produce took one");
        // Answer the second metadata request first: matching is by id.
        broker.send(&metadata_answer(3, 300)).await;
        broker.send(&metadata_answer(1, 100)).await;
        assert_eq!(second.await.expect("task").expect("answered"), 300);
        assert_eq!(first.await.expect("task").expect("answered"), 100);
        assert!(connection.is_usable());
    }

    #[tokio::test]
    async fn an_answer_to_a_request_never_sent_ends_the_connection() {
        let (connection, mut broker) = pair(1 << 20);
        let waiting = connection.request(SECOND, |stamp| protocol::metadata(stamp, None));
        let broker_side = async {
            broker.next_request().await.expect("request");
            broker.send(&metadata_answer(99, 1)).await;
        };
        let (result, ()) = tokio::join!(waiting, broker_side);
        assert!(matches!(result, Err(ClientError::Protocol(_))), "{result:?}");
        assert!(!connection.is_usable());
        let later = connection.request(SECOND, |stamp| protocol::metadata(stamp, None)).await;
        assert!(matches!(later, Err(ClientError::Protocol(_))), "the first failure sticks: {later:?}");
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_is_refused_from_its_length() {
        let (connection, mut broker) = pair(64 * 1024);
        let waiting = connection.request(SECOND, |stamp| protocol::metadata(stamp, None));
        let broker_side = async {
            broker.next_request().await.expect("request");
            // Announces 1 GiB; the client must refuse before allocating it.
            broker.send(&(1u32 << 30).to_be_bytes()).await;
        };
        let (result, ()) = tokio::join!(waiting, broker_side);
        assert!(matches!(&result, Err(ClientError::Protocol(m)) if m.contains("limit")), "{result:?}");
    }

    #[tokio::test]
    async fn a_request_timeout_fails_the_request_and_closes_the_connection() {
        let (connection, mut broker) = pair(1 << 20);
        let short = Duration::from_millis(50);
        let waiting = connection.request(short, |stamp| protocol::metadata(stamp, None));
        let broker_side = async { broker.next_request().await };
        let (result, _request) = tokio::join!(waiting, broker_side);
        assert!(matches!(result, Err(ClientError::Timeout)), "{result:?}");
        assert!(!connection.is_usable());
    }

    #[tokio::test]
    async fn a_broker_that_hangs_up_fails_pending_requests_with_a_retriable_error() {
        let (connection, mut broker) = pair(1 << 20);
        let waiting = connection.request(SECOND, |stamp| protocol::metadata(stamp, None));
        let broker_side = async {
            broker.next_request().await.expect("request");
            drop(broker);
        };
        let (result, ()) = tokio::join!(waiting, broker_side);
        let error = result.expect_err("no answer");
        assert!(error.is_retriable(), "{error:?}");
    }

    #[tokio::test]
    async fn an_error_response_is_the_requests_error() {
        let (connection, mut broker) = pair(1 << 20);
        let waiting = connection.request(SECOND, |stamp| protocol::metadata(stamp, None));
        let broker_side = async {
            let request = broker.next_request().await.expect("request");
            let request_id = request.read().expect("valid").request_id();
            let answer = response(request_id, b"", |builder| {
                let body = proto::ErrorResponse::create(
                    builder,
                    &proto::ErrorResponseArgs { error: ErrorCode::UnsupportedVersion, message: None },
                );
                (Body::ErrorResponse, body.as_union_value())
            });
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&spate_flatbuf::frame_header(answer.envelope.len(), 0));
            bytes.extend_from_slice(&answer.envelope);
            broker.send(&bytes).await;
        };
        let (result, ()) = tokio::join!(waiting, broker_side);
        let frame = result.expect("a response arrived");
        assert!(matches!(
            protocol::decode_metadata(&frame),
            Err(ClientError::Server { code: ErrorCode::UnsupportedVersion, .. })
        ));
        assert!(connection.is_usable(), "an error answer leaves the connection open");
    }
}
