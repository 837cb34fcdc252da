//! The native protocol's front-end: requests in, responses out, one file
//! per API family. `dispatch` runs a request's synchronous part at once (so
//! a connection's appends keep their order, across cores too) and returns
//! what is left as a future; the connection writes the responses in
//! request order.

mod authz;
mod fetch;
mod groups;
mod init_producer_id;
mod metadata;
mod offsets;
mod produce;
mod sasl;
mod topics;
mod txn;
#[cfg(test)]
pub(crate) use txn::txn_code;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

use crate::budget::{ByteBudget, Charge};
use crate::catalog::TopicMeta;
use crate::config::BrokerConfig;
use crate::metrics::ShardMetrics;
use crate::shard::Shard;
use crate::wire::{FrontEnd, Reply, Response, envelope, error_frame, invalid};

/// What a connection has established about its peer, for the requests
/// that follow on it.
#[derive(Debug)]
pub(crate) struct Session {
    /// The broker this connection proved it is (a valid `broker_auth` in
    /// its handshake), -1 for a client: only that broker may fetch as a
    /// replica on it, and it is authorized as a super user (`authz.rs`).
    broker: std::cell::Cell<i32>,
    /// Who the client is for ACLs: ANONYMOUS, or the user a
    /// SaslAuthenticate exchange proved (`sasl.rs`).
    principal: std::cell::RefCell<Rc<crate::security::Principal>>,
    /// Where the connection is in its SASL authentication.
    sasl: std::cell::RefCell<sasl::SaslState>,
    /// The client's ip, as ACLs name hosts.
    host: Rc<str>,
    /// This connection's authorization decisions, kept until the ACLs
    /// change.
    decisions: Rc<crate::security::acl::Decisions>,
    /// The client id its handshake sent, for client-id quotas.
    client_id: std::cell::RefCell<String>,
    /// A connection without TLS on ports that take clients over TLS
    /// (`native_security_protocol = SSL`): served only once its handshake
    /// proves it is a broker, and not at all when the brokers link over
    /// TLS too (the broker has a truststore: `replica::peer::PeerTls`).
    brokers_only: bool,
    plaintext_refused: bool,
    /// The client's quotas as this connection resolved them, and how long
    /// it is kept quiet for going over one.
    throttle: Rc<crate::throttle::ConnThrottle>,
}

impl Session {
    pub fn new(info: &crate::security::ConnInfo, shared: &crate::shard::Shared) -> Session {
        let peer = info.peer.as_str();
        let host = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
        let brokers_only = info.protocol == crate::security::SecurityProtocol::Plaintext
            && shared.config.native_tls().unwrap_or(false);
        let plaintext_refused = brokers_only && shared.tls.as_ref().is_some_and(|tls| tls.peer_client().is_some());
        // A verified client certificate names the principal (mutual TLS).
        let principal = info.tls_principal.clone().unwrap_or_else(crate::security::Principal::anonymous);
        Session {
            broker: std::cell::Cell::new(-1),
            brokers_only,
            plaintext_refused,
            principal: std::cell::RefCell::new(Rc::new(principal)),
            sasl: Default::default(),
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            decisions: Default::default(),
            client_id: Default::default(),
            throttle: Default::default(),
        }
    }
}

/// Entry point for one verified frame. `charge` holds the request's bytes
/// in the connection's and shard's budgets (a fetch sizes its answer to the
/// room they have and charges it there).
pub(crate) fn dispatch(shard: &Rc<Shard>, session: &Session, frame: Frame, charge: &Charge) -> (Reply, &'static str) {
    let (request_id, version, body_type) = match frame.read() {
        Ok(envelope) => (envelope.request_id(), envelope.version(), envelope.body_type()),
        Err(err) => return (invalid(0, &format!("envelope fails verification: {err}")), "error"),
    };
    let api = spate_flatbuf::api_name(body_type);
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
        let message =
            format!("protocol version {version}; this broker speaks {PROTOCOL_VERSION_MIN}-{PROTOCOL_VERSION_MAX}");
        return (Reply::Now(Response::Frame(error_frame(request_id, ErrorCode::UnsupportedVersion, &message))), api);
    }
    // Caps first: nothing of a request that breaks one is copied or
    // answered entry by entry.
    if let Some(refusal) = envelope(&frame).and_then(|e| crate::caps::check(&e).err()) {
        let response = error_frame(request_id, refusal.error, &refusal.message);
        // A producer with acks=0 reads no answers: as Kafka does, close the
        // connection so it learns that something went wrong.
        let acks_zero = envelope(&frame).and_then(|e| e.body_as_produce_request()).is_some_and(|r| r.acks() == 0);
        let response = if acks_zero { Response::Close(Some(response)) } else { Response::Frame(response) };
        return (Reply::Now(response), api);
    }
    if session.brokers_only && session.broker.get() < 0 {
        // Only handshakes are served until one proves a broker (a broker
        // first asks which shard accepted it, without a proof, then proves
        // itself for that shard: `replica::peer`).
        if body_type != Body::HandshakeRequest || session.plaintext_refused {
            tracing::info!(shard = shard.id, peer = %session.host, api, "closing a native connection without TLS: this broker takes native clients over TLS only");
            let message = "this broker's native ports take clients over TLS only (native_security_protocol = SSL; \
                           brokers too when it has a truststore): connect with security.protocol SSL or SASL_SSL";
            return (
                Reply::Now(Response::Close(Some(error_frame(request_id, ErrorCode::InvalidRequest, message)))),
                api,
            );
        }
    }
    if let Err(denied) = authz::check(shard, session, body_type, &frame) {
        return (Reply::Now(Response::Frame(error_frame(request_id, denied.error, &denied.message))), api);
    }
    // A proven broker's requests (replication, markers) are not a
    // client's to be charged for.
    let request_time = (session.broker.get() < 0)
        .then(|| {
            let principal = session.principal.borrow().clone();
            crate::throttle::RequestTime::start(shard, &session.throttle, &principal, &session.client_id.borrow())
        })
        .flatten();
    let reply = serve(shard, session, frame, charge, request_id, body_type);
    let reply = match request_time {
        Some(time) => time.charged(reply),
        None => reply,
    };
    (reply, api)
}

/// Runs the handler of the request's API.
fn serve(
    shard: &Rc<Shard>,
    session: &Session,
    frame: Frame,
    charge: &Charge,
    request_id: u64,
    body_type: Body,
) -> Reply {
    match body_type {
        Body::ProduceRequest => produce::produce(shard, session, frame, request_id),
        Body::FetchRequest => fetch::fetch(shard, session, &frame, request_id, charge),
        Body::HandshakeRequest => metadata::handshake(shard, session, &frame, request_id),
        Body::SaslAuthenticateRequest => sasl::authenticate(shard, session, &frame, request_id),
        Body::MetadataRequest => metadata::metadata(shard, session, &frame, request_id),
        Body::CreateTopicsRequest => topics::create_topics(shard, &frame, request_id),
        Body::DeleteTopicsRequest => topics::delete_topics(shard, &frame, request_id),
        Body::DescribeTopicsRequest => topics::describe_topics(shard, &frame, request_id),
        Body::AlterConfigsRequest => topics::alter_configs(shard, &frame, request_id),
        Body::ListOffsetsRequest => offsets::list_offsets(shard, &frame, request_id),
        Body::ConsumerGroupHeartbeatRequest => groups::heartbeat(shard, &frame, request_id),
        Body::OffsetCommitRequest => groups::offset_commit(shard, &frame, request_id),
        Body::OffsetFetchRequest => groups::offset_fetch(shard, session, &frame, request_id),
        Body::ListGroupsRequest => groups::list_groups(shard, session, request_id),
        Body::DescribeGroupsRequest => groups::describe_groups(shard, &frame, request_id),
        Body::DeleteGroupsRequest => groups::delete_groups(shard, &frame, request_id),
        Body::InitProducerIdRequest => {
            let request = crate::wire::envelope(&frame).and_then(|e| e.body_as_init_producer_id_request());
            match request.and_then(|r| r.transactional_id().map(|id| (id.to_string(), r.transaction_timeout_ms()))) {
                Some((txn_id, timeout_ms)) => txn::init_producer_id(shard, session, &txn_id, timeout_ms, request_id),
                None => init_producer_id::init_producer_id(shard, session, request_id),
            }
        }
        Body::AddPartitionsToTxnRequest => txn::add_partitions_to_txn(shard, session, &frame, request_id),
        Body::AddOffsetsToTxnRequest => txn::add_offsets_to_txn(shard, &frame, request_id),
        Body::TxnOffsetCommitRequest => txn::txn_offset_commit(shard, &frame, request_id),
        Body::EndTxnRequest => txn::end_txn(shard, session, &frame, request_id),
        Body::OffsetForLeaderEpochRequest => offsets::offset_for_leader_epoch(shard, &frame, request_id),
        other => {
            invalid(request_id, &format!("{} is not a request this broker serves", spate_flatbuf::api_name(other)))
        }
    }
}

impl Session {
    /// Charges `bytes` of `kind` to the client's quota (a proven broker is
    /// not charged); the connection is kept quiet if it went over.
    fn charge(&self, shard: &Shard, kind: crate::security::quota::QuotaKind, bytes: usize) {
        if self.broker.get() < 0 {
            let principal = self.principal.borrow().clone();
            self.throttle.charge(shard, (&principal, &self.client_id.borrow()), kind, bytes as u64);
        }
    }
}

fn clamp_ms(ms: i32, max_ms: u64) -> Duration {
    Duration::from_millis((ms.max(0) as u64).min(max_ms))
}

fn topic_of(shard: &Shard, name: &str) -> Option<Arc<TopicMeta>> {
    shard.shared.catalog.load().topics.get(name).cloned()
}

/// A partition index from the wire, if the topic has it.
fn partition_of(topic: &TopicMeta, partition: i32) -> Option<u32> {
    u32::try_from(partition).ok().filter(|&p| p < topic.partitions)
}

/// The native front-end on one shard, as connections are handed it.
#[derive(Clone)]
pub(crate) struct Native(pub Rc<Shard>);

impl FrontEnd for Native {
    type Session = Session;
    type Frame = Frame;
    type FrameError = spate_flatbuf::FrameError;

    fn new_session(&self, info: &crate::security::ConnInfo) -> Session {
        Session::new(info, &self.0.shared)
    }

    fn plaintext_beside_tls(&self) -> bool {
        true
    }

    fn decode(
        &self,
        _session: &Session,
        buf: &mut bytes::BytesMut,
    ) -> Result<Option<Frame>, spate_flatbuf::FrameError> {
        spate_flatbuf::FrameDecoder::new(self.0.shared.config.frame_bytes_max).decode(buf)
    }

    fn bytes_needed(&self, _session: &Session, buf: &bytes::BytesMut) -> Result<usize, spate_flatbuf::FrameError> {
        spate_flatbuf::FrameDecoder::new(self.0.shared.config.frame_bytes_max).bytes_needed(buf)
    }

    fn frame_bytes(frame: &Frame) -> usize {
        spate_flatbuf::FRAME_HEADER_BYTES + frame.envelope.len() + frame.payload.len()
    }

    fn truncated(buffered_bytes: usize) -> spate_flatbuf::FrameError {
        spate_flatbuf::FrameError::Truncated { buffered_bytes }
    }

    fn framing_error(err: &spate_flatbuf::FrameError) -> Option<bytes::Bytes> {
        // Request id 0: the frame that failed could not be read.
        Some(error_frame(0, ErrorCode::InvalidRequest, &err.to_string()))
    }

    fn dispatch(&self, session: &Session, frame: Frame, charge: &Charge) -> (Reply, &'static str) {
        dispatch(&self.0, session, frame, charge)
    }

    fn shard_id(&self) -> usize {
        self.0.id
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.0.metrics
    }

    fn config(&self) -> &BrokerConfig {
        &self.0.shared.config
    }

    fn bytes_in_flight(&self) -> &Rc<ByteBudget> {
        &self.0.bytes_in_flight
    }

    fn quiet_until(&self, session: &Session) -> Option<std::time::Instant> {
        session.throttle.quiet_until()
    }
}
