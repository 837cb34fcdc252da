//! The wire floor: frames off and onto sockets, and the reply types every
//! front-end answers with. It names no front-end and no shard: a
//! connection is handed its front-end (`FrontEnd`), so the native protocol
//! and those beside it share one reader and writer, and the shard core
//! (replica fetchers) may use the frame helpers and reads below it.

pub(crate) mod conn;
pub(crate) mod connection_limits;
pub(crate) mod frame;
pub(crate) mod response;

use std::rc::Rc;

use bytes::{Bytes, BytesMut};

pub(crate) use self::frame::{envelope, envelope_frame, error_frame, invalid};
pub(crate) use self::response::{Reply, Response};
use crate::budget::{ByteBudget, Charge};
use crate::config::BrokerConfig;
use crate::metrics::ShardMetrics;
use crate::security::ConnInfo;

/// A protocol front-end as a connection sees it: what it needs of the
/// shard it runs on, a session per connection, and the dispatch of each
/// verified frame. Connections are generic over it, so every call is
/// static, as the direct call it replaces was.
pub(crate) trait FrontEnd: Clone + 'static {
    /// What a connection has established about its peer.
    type Session;
    /// One request as cut from the byte stream.
    type Frame;
    /// Why the byte stream cannot be read on (it is closed).
    type FrameError: std::fmt::Display;

    /// A new connection's session: its peer's address, its listener's
    /// security protocol, what TLS established.
    fn new_session(&self, info: &ConnInfo) -> Self::Session;

    /// The next whole frame in `buf`, if there is one (split off it).
    /// The session is the connection's: what it has established may bound
    /// what it may send (an unauthenticated Kafka client, small frames).
    fn decode(&self, session: &Self::Session, buf: &mut BytesMut) -> Result<Option<Self::Frame>, Self::FrameError>;

    /// The bytes `buf` still lacks for its next frame (its length checked
    /// against the cap first, so a large frame is refused before any room
    /// is made for it).
    fn bytes_needed(&self, session: &Self::Session, buf: &BytesMut) -> Result<usize, Self::FrameError>;

    /// A frame's bytes as received, length prefix included.
    fn frame_bytes(frame: &Self::Frame) -> usize;

    /// A stream that ended in the middle of a frame.
    fn truncated(buffered_bytes: usize) -> Self::FrameError;

    /// What to send before closing a stream that broke the framing, if the
    /// protocol has an answer for that.
    fn framing_error(err: &Self::FrameError) -> Option<Bytes>;

    /// Runs one frame's synchronous part at once and returns the reply
    /// with the API's name (for metrics). `charge` holds the request's
    /// bytes in the connection's and shard's budgets.
    fn dispatch(&self, session: &Self::Session, frame: Self::Frame, charge: &Charge) -> (Reply, &'static str);

    fn shard_id(&self) -> usize;

    /// Until when nothing more is to be read from this connection: a client
    /// over its quota is kept quiet (Kafka's KIP-219). None: read on.
    /// Whether a listener with TLS also serves connections that do not
    /// open with a TLS handshake (the native ports: brokers' connections).
    fn plaintext_beside_tls(&self) -> bool {
        false
    }

    fn quiet_until(&self, _session: &Self::Session) -> Option<std::time::Instant> {
        None
    }

    fn metrics(&self) -> &ShardMetrics;

    fn config(&self) -> &BrokerConfig;

    /// The shard's byte budget, shared by all of its connections.
    fn bytes_in_flight(&self) -> &Rc<ByteBudget>;
}
