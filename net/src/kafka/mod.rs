//! The Kafka protocol front-end (design decision 10): Kafka clients, tools
//! and frameworks talk to the same shards as native clients. Each request
//! is decoded with the `kafka-protocol` crate's codecs (generated from
//! Kafka's own message specs), turned into the same shard operations the
//! native front-end uses (append, read, list offsets, group and
//! transaction coordinator calls), and answered in Kafka's terms: Kafka error codes, Kafka's
//! response versions. The connection itself (budgets, backpressure,
//! in-order answers, write timeout) is `conn.rs`, shared with the native
//! protocol.
//!
//! Records pass through untouched: a produce request's record batches are
//! slices of the receive buffer (as on the native path), and a fetch
//! response's batches are written from the tail cache or the read buffers
//! with a vectored write (`response::vectored`).

mod acls;
mod admin;
mod authz;
mod codes;
mod consumer_group;
mod fetch;
mod fetch_session;
mod groups;
mod metadata;
mod offset_delete;
mod partitions;
mod produce;
mod quotas;
mod response;
mod sasl;
mod scram_credentials;
mod txn;
mod txn_offset_commit;
mod versions;
mod write_txn_markers;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use crate::budget::{ByteBudget, Charge};
use crate::config::BrokerConfig;
use crate::metrics::ShardMetrics;
use crate::security::acl::Decisions;
use crate::security::quota::QuotaKind;
use crate::security::{ConnInfo, Principal, SecurityProtocol};
use crate::shard::Shard;
use crate::throttle::{ConnThrottle, RequestTime};
use crate::wire::{FrontEnd, Reply, Response};

pub(crate) use self::response::respond;

/// The Kafka front-end of one shard. Kafka's framing: a 4-byte big-endian
/// size, then the request header and body.
#[derive(Clone)]
pub(crate) struct Kafka(pub Rc<Shard>);

/// One request as received: header and body, size prefix removed.
#[derive(Debug)]
pub(crate) struct KafkaFrame {
    bytes: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum KafkaFrameError {
    #[error(
        "Kafka request of {frame_bytes} bytes is over the {frame_bytes_max}-byte limit (socket.request.max.bytes; sasl.server.max.receive.size before SASL authentication)"
    )]
    TooLarge { frame_bytes: i64, frame_bytes_max: usize },
    #[error("connection closed in the middle of a Kafka request ({buffered_bytes} bytes buffered)")]
    Truncated { buffered_bytes: usize },
}

/// The smallest request: api key, version, correlation id and a client id
/// length.
const REQUEST_HEADER_BYTES_MIN: usize = 10;

impl Kafka {
    /// The largest request this connection may send now: before SASL
    /// succeeds only a handshake's worth (Kafka's
    /// sasl.server.max.receive.size), so that clients that have not
    /// authenticated cannot fill the shard's byte budget.
    fn frame_bytes_max(&self, session: &Session) -> usize {
        if session.authenticated.get() {
            self.0.shared.config.frame_bytes_max
        } else {
            crate::limits::UNAUTHENTICATED_FRAME_BYTES_MAX.min(self.0.shared.config.frame_bytes_max)
        }
    }

    fn size(&self, session: &Session, buf: &[u8]) -> Result<Option<usize>, KafkaFrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        // A negative or tiny size cannot be a request; neither can one over
        // the cap, which is refused before anything is allocated for it.
        let frame_bytes_max = self.frame_bytes_max(session);
        if size < 0 || size as usize > frame_bytes_max {
            return Err(KafkaFrameError::TooLarge { frame_bytes: size as i64, frame_bytes_max });
        }
        Ok(Some(size as usize))
    }
}

impl FrontEnd for Kafka {
    type Session = Rc<Session>;
    type Frame = KafkaFrame;
    type FrameError = KafkaFrameError;

    fn new_session(&self, info: &ConnInfo) -> Self::Session {
        // Kafka shows a member's host as "/<ip>".
        let peer = info.peer.as_str();
        let ip = peer.rsplit_once(':').map_or(peer, |(ip, _)| ip);
        let principal = info.tls_principal.clone().unwrap_or_else(Principal::anonymous);
        Rc::new(Session {
            client_host: format!("/{ip}"),
            protocol: info.protocol,
            listener: info.listener.clone(),
            principal: RefCell::new(Rc::new(principal)),
            authenticated: std::cell::Cell::new(!info.protocol.uses_sasl()),
            login_expires: std::cell::Cell::new(None),
            throttle: Default::default(),
            sasl: RefCell::default(),
            remembered: Rc::default(),
            fetch: Default::default(),
            decisions: Rc::default(),
        })
    }

    fn decode(&self, session: &Self::Session, buf: &mut BytesMut) -> Result<Option<KafkaFrame>, KafkaFrameError> {
        let Some(size) = self.size(session, buf)? else { return Ok(None) };
        if buf.len() < 4 + size {
            return Ok(None);
        }
        buf.advance(4);
        Ok(Some(KafkaFrame { bytes: buf.split_to(size) }))
    }

    fn bytes_needed(&self, session: &Self::Session, buf: &BytesMut) -> Result<usize, KafkaFrameError> {
        match self.size(session, buf)? {
            None => Ok(4 - buf.len()),
            Some(size) => Ok((4 + size).saturating_sub(buf.len())),
        }
    }

    fn frame_bytes(frame: &KafkaFrame) -> usize {
        4 + frame.bytes.len()
    }

    fn truncated(buffered_bytes: usize) -> KafkaFrameError {
        KafkaFrameError::Truncated { buffered_bytes }
    }

    fn framing_error(_err: &KafkaFrameError) -> Option<Bytes> {
        // Kafka has no answer for a request it cannot frame: it closes.
        None
    }

    fn dispatch(&self, session: &Self::Session, frame: KafkaFrame, charge: &Charge) -> (Reply, &'static str) {
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

    fn quiet_until(&self, session: &Self::Session) -> Option<std::time::Instant> {
        session.throttle.quiet_until()
    }
}

/// What a Kafka connection keeps between requests.
#[derive(Debug)]
pub(crate) struct Session {
    /// "/<ip>" of the client, as Kafka shows a group member's host.
    client_host: String,
    /// The listener's security protocol: on a SASL one, nothing but
    /// ApiVersions and the SASL exchange is served until it succeeds.
    protocol: SecurityProtocol,
    /// The listener's name (`PLAINTEXT`, `EXTERNAL`, ...).
    listener: Rc<str>,
    /// Who the client is: ANONYMOUS, the TLS client certificate's subject,
    /// or the SASL user once authenticated. Every request is authorized
    /// as the principal at its dispatch.
    principal: RefCell<Rc<Principal>>,
    /// False on a SASL listener until the client authenticates.
    authenticated: std::cell::Cell<bool>,
    /// When the SASL login ends (`connections.max.reauth.ms`, KIP-368):
    /// past it, any request but a re-authentication closes the connection.
    login_expires: std::cell::Cell<Option<std::time::Instant>>,
    /// The client's quotas as this connection resolved them, and how long
    /// it is kept quiet for going over one (KIP-219).
    throttle: Rc<ConnThrottle>,
    /// Where the SASL exchange is (`sasl.rs`).
    sasl: RefCell<sasl::SaslState>,
    /// What KIP-848 members sent last (`consumer_group`).
    remembered: Rc<consumer_group::Remembered>,
    /// This connection's fetch session (KIP-227), if the client made one.
    fetch: std::cell::RefCell<Option<fetch_session::FetchSession>>,
    /// This connection's authorization decisions, kept until the ACLs or
    /// the principal change.
    decisions: Rc<Decisions>,
}

/// What a handler knows of its request.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub shard: Rc<Shard>,
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    /// For the group coordinator's member ids and `group describe`.
    pub client_id: String,
    pub client_host: String,
    /// The connection it came on (its listener, whose brokers' addresses
    /// answers give; its cached authorization decisions, `authz.rs`).
    pub session: Rc<Session>,
    /// Who sent it (see `Session::principal`), as it was at dispatch.
    pub principal: Rc<Principal>,
}

fn dispatch(shard: &Rc<Shard>, session: &Rc<Session>, frame: KafkaFrame, charge: &Charge) -> (Reply, &'static str) {
    let bytes = frame.bytes;
    if matches!(*session.sasl.borrow(), sasl::SaslState::Legacy) {
        // After a SaslHandshake v0 the client sends bare SASL tokens, not
        // Kafka requests (Kafka before 1.0; every client since sends
        // SaslHandshake v1 and SaslAuthenticate when the broker lists it).
        tracing::info!(shard = shard.id, client = %session.client_host,
            "closing a Kafka connection: after SaslHandshake v0 it sends bare SASL tokens, which Spate does not read; \
             the client must use SaslAuthenticate (Kafka 1.0+ clients do)");
        return (Reply::Now(Response::Close(None)), "kafka.sasl_handshake");
    }
    if bytes.len() < REQUEST_HEADER_BYTES_MIN - 2 {
        tracing::debug!(shard = shard.id, "closing a Kafka connection: a request too short for its header");
        return (Reply::Now(Response::Close(None)), "kafka.invalid");
    }
    let api_key = i16::from_be_bytes([bytes[0], bytes[1]]);
    let version = i16::from_be_bytes([bytes[2], bytes[3]]);
    let correlation_id = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let Ok(api) = ApiKey::try_from(api_key) else {
        // Kafka closes on an API it does not know; so does Spate (there is
        // no response schema to answer in).
        tracing::debug!(shard = shard.id, api_key, "closing a Kafka connection: unknown API key");
        return (Reply::Now(Response::Close(None)), "kafka.invalid");
    };
    let name = versions::api_name(api);
    let Some(supported) = versions::supported(api) else {
        tracing::debug!(shard = shard.id, ?api, "closing a Kafka connection: an API Spate does not serve");
        return (Reply::Now(Response::Close(None)), name);
    };
    if !(supported.0..=supported.1).contains(&version) {
        if api == ApiKey::ApiVersions {
            // KIP-511: a client newer than us gets a v0 answer listing our
            // versions, and retries at one of them.
            return (Reply::Now(versions::unsupported_api_versions(correlation_id)), name);
        }
        return (Reply::Now(versions::unsupported(api, version, correlation_id)), name);
    }
    let sasl_api = matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
    if session.login_expires.get().is_some_and(|expires| std::time::Instant::now() >= expires) && !sasl_api {
        // KIP-368: a login past its lifetime serves nothing but its
        // re-authentication.
        tracing::info!(shard = shard.id, ?api, client = %session.client_host,
            "closing a Kafka connection: its SASL login expired (connections.max.reauth.ms) without re-authentication");
        return (Reply::Now(Response::Close(None)), name);
    }
    if !session.authenticated.get() && !sasl_api && api != ApiKey::ApiVersions {
        // Kafka closes a connection that sends anything else before SASL
        // succeeds on a SASL listener.
        tracing::info!(shard = shard.id, ?api, protocol = %session.protocol, client = %session.client_host,
            "closing a Kafka connection: a request before SASL authentication");
        return (Reply::Now(Response::Close(None)), name);
    }
    // Parse the header at its version (copying only its small fields),
    // then hand the body to the handler: a produce request's body stays a
    // `BytesMut` (its records are split off it, not copied); the others
    // decode from `Bytes` slices of it.
    let mut bytes = bytes;
    let header_version = api.request_header_version(version);
    let (header, header_bytes) = {
        let mut view = produce::RangeBuf::new(&bytes);
        match RequestHeader::decode(&mut view, header_version) {
            Ok(header) if view.large.is_empty() => (header, view.position()),
            Ok(_) => {
                tracing::debug!(shard = shard.id, "closing a Kafka connection: an oversized client id");
                return (Reply::Now(Response::Close(None)), name);
            }
            Err(err) => {
                tracing::debug!(shard = shard.id, "closing a Kafka connection: bad request header: {err}");
                return (Reply::Now(Response::Close(None)), name);
            }
        }
    };
    bytes.advance(header_bytes);
    let ctx = Ctx {
        shard: shard.clone(),
        api,
        version,
        correlation_id,
        client_id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
        client_host: session.client_host.clone(),
        principal: session.principal.borrow().clone(),
        session: session.clone(),
    };
    let request_time = RequestTime::start(shard, &session.throttle, &ctx.principal, &ctx.client_id);
    let reply = serve(api, ctx, bytes, charge, session);
    let reply = match request_time {
        Some(time) => time.charged(reply),
        None => reply,
    };
    (reply, name)
}

/// Runs the handler of `api`.
fn serve(api: ApiKey, ctx: Ctx, bytes: BytesMut, charge: &Charge, session: &Rc<Session>) -> Reply {
    if api == ApiKey::Produce {
        return produce::produce(ctx, bytes);
    }
    let body = bytes.freeze();
    match api {
        ApiKey::ApiVersions => Reply::Now(versions::api_versions(&ctx)),
        ApiKey::Metadata => metadata::metadata(ctx, body),
        ApiKey::DescribeCluster => metadata::describe_cluster(ctx, body),
        ApiKey::DescribeTopicPartitions => metadata::describe_topic_partitions(ctx, body),
        ApiKey::FindCoordinator => groups::find_coordinator(ctx, body),
        ApiKey::InitProducerId => produce::init_producer_id(ctx, body),
        ApiKey::Fetch => fetch::fetch(ctx, body, charge, session.clone()),
        ApiKey::ListOffsets => fetch::list_offsets(ctx, body),
        ApiKey::OffsetForLeaderEpoch => fetch::offset_for_leader_epoch(ctx, body),
        ApiKey::CreateTopics => admin::create_topics(ctx, body),
        ApiKey::DeleteTopics => admin::delete_topics(ctx, body),
        ApiKey::CreatePartitions => admin::create_partitions(ctx, body),
        ApiKey::DeleteRecords => partitions::delete_records(ctx, body),
        ApiKey::DescribeLogDirs => partitions::describe_log_dirs(ctx, body),
        ApiKey::ElectLeaders => partitions::elect_leaders(ctx, body),
        ApiKey::DescribeProducers => partitions::describe_producers(ctx, body),
        ApiKey::OffsetDelete => offset_delete::offset_delete(ctx, body),
        ApiKey::DescribeConfigs => admin::describe_configs(ctx, body),
        ApiKey::AlterConfigs => admin::alter_configs(ctx, body),
        ApiKey::IncrementalAlterConfigs => admin::incremental_alter_configs(ctx, body),
        ApiKey::OffsetCommit => groups::offset_commit(ctx, body),
        ApiKey::OffsetFetch => groups::offset_fetch(ctx, body),
        ApiKey::TxnOffsetCommit => txn_offset_commit::txn_offset_commit(ctx, body),
        ApiKey::WriteTxnMarkers => write_txn_markers::write_txn_markers(ctx, body),
        ApiKey::ListGroups => groups::list_groups(ctx, body),
        ApiKey::DescribeGroups => groups::describe_groups(ctx, body),
        ApiKey::DeleteGroups => groups::delete_groups(ctx, body),
        ApiKey::JoinGroup => groups::join_group(ctx, body),
        ApiKey::SyncGroup => groups::sync_group(ctx, body),
        ApiKey::Heartbeat => groups::heartbeat(ctx, body),
        ApiKey::LeaveGroup => groups::leave_group(ctx, body),
        ApiKey::ConsumerGroupHeartbeat => consumer_group::heartbeat(ctx, body, session.remembered.clone()),
        ApiKey::ConsumerGroupDescribe => consumer_group::describe(ctx, body),
        ApiKey::DescribeClientQuotas => quotas::describe_client_quotas(ctx, body),
        ApiKey::AlterClientQuotas => quotas::alter_client_quotas(ctx, body),
        ApiKey::SaslHandshake => sasl::handshake(ctx, body, session),
        ApiKey::SaslAuthenticate => sasl::authenticate(ctx, body, session),
        ApiKey::AlterUserScramCredentials => scram_credentials::alter(ctx, body),
        ApiKey::DescribeUserScramCredentials => scram_credentials::describe(ctx, body),
        ApiKey::CreateAcls => acls::create_acls(ctx, body),
        ApiKey::DescribeAcls => acls::describe_acls(ctx, body),
        ApiKey::DeleteAcls => acls::delete_acls(ctx, body),
        ApiKey::AddPartitionsToTxn => txn::add_partitions_to_txn(ctx, body),
        ApiKey::AddOffsetsToTxn => txn::add_offsets_to_txn(ctx, body),
        ApiKey::EndTxn => txn::end_txn(ctx, body),
        ApiKey::DescribeTransactions => txn::describe_transactions(ctx, body),
        ApiKey::ListTransactions => txn::list_transactions(ctx, body),
        _ => Reply::Now(Response::Close(None)),
    }
}

impl Ctx {
    /// Counts `bytes` against the client's quota of `kind` and returns the
    /// throttle time to answer with (0: none). A throttled connection is
    /// not read from for that long (KIP-219: the answer goes at once, the
    /// client's next request waits).
    pub fn throttle(&self, kind: QuotaKind, bytes: usize) -> i32 {
        let who = (&*self.principal, self.client_id.as_str());
        self.session.throttle.charge(&self.shard, who, kind, bytes as u64) as i32
    }
}

/// Decodes a request body; a body that does not parse closes the
/// connection (Kafka does the same: the stream may be out of step).
pub(crate) fn decode<T: Decodable>(ctx: &Ctx, mut body: Bytes) -> Result<T, Reply> {
    T::decode(&mut body, ctx.version).map_err(|err| {
        tracing::debug!(shard = ctx.shard.id, api = ?ctx.api, version = ctx.version, "closing a Kafka connection: {err:#}");
        Reply::Now(Response::Close(None))
    })
}

/// Cuts one request off `bytes` as `dispatch` does (size prefix, header)
/// and decodes its body as the API it names, at its version, without a
/// shard: the fuzz target `kafka_requests` drives the Kafka codecs through
/// here. An error is fine; a panic, a hang or an allocation sized by the
/// input is not.
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_request(bytes: &[u8]) -> Result<(), String> {
    use kafka_protocol::messages::*;
    let mut frame = BytesMut::from(bytes);
    if frame.len() < REQUEST_HEADER_BYTES_MIN - 2 {
        return Err("short".into());
    }
    let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).map_err(|()| "unknown api".to_string())?;
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let (min, max) = versions::supported(api).ok_or("not served")?;
    if !(min..=max).contains(&version) {
        return Err("version".into());
    }
    let header_bytes = {
        let mut view = produce::RangeBuf::new(&frame);
        RequestHeader::decode(&mut view, api.request_header_version(version)).map_err(|e| e.to_string())?;
        view.position()
    };
    frame.advance(header_bytes);
    if api == ApiKey::Produce {
        let mut view = produce::RangeBuf::new(&frame);
        let request = ProduceRequest::decode(&mut view, version).map_err(|e| e.to_string())?;
        for range in &view.large {
            assert!(range.end <= frame.len(), "a large field lies inside the request");
        }
        drop(request);
        return Ok(());
    }
    let mut body = frame.freeze();
    fn one<T: Decodable>(body: &mut Bytes, version: i16) -> Result<(), String> {
        T::decode(body, version).map(drop).map_err(|e| e.to_string())
    }
    match api {
        ApiKey::ApiVersions => one::<ApiVersionsRequest>(&mut body, version),
        ApiKey::Metadata => one::<MetadataRequest>(&mut body, version),
        ApiKey::DescribeCluster => one::<DescribeClusterRequest>(&mut body, version),
        ApiKey::DescribeTopicPartitions => one::<DescribeTopicPartitionsRequest>(&mut body, version),
        ApiKey::FindCoordinator => one::<FindCoordinatorRequest>(&mut body, version),
        ApiKey::InitProducerId => one::<InitProducerIdRequest>(&mut body, version),
        ApiKey::Fetch => one::<FetchRequest>(&mut body, version),
        ApiKey::ListOffsets => one::<ListOffsetsRequest>(&mut body, version),
        ApiKey::OffsetForLeaderEpoch => one::<OffsetForLeaderEpochRequest>(&mut body, version),
        ApiKey::CreateTopics => one::<CreateTopicsRequest>(&mut body, version),
        ApiKey::DeleteTopics => one::<DeleteTopicsRequest>(&mut body, version),
        ApiKey::DescribeConfigs => one::<DescribeConfigsRequest>(&mut body, version),
        ApiKey::AlterConfigs => one::<AlterConfigsRequest>(&mut body, version),
        ApiKey::IncrementalAlterConfigs => one::<IncrementalAlterConfigsRequest>(&mut body, version),
        ApiKey::OffsetCommit => one::<OffsetCommitRequest>(&mut body, version),
        ApiKey::OffsetFetch => one::<OffsetFetchRequest>(&mut body, version),
        ApiKey::TxnOffsetCommit => one::<TxnOffsetCommitRequest>(&mut body, version),
        ApiKey::WriteTxnMarkers => one::<WriteTxnMarkersRequest>(&mut body, version),
        ApiKey::ListGroups => one::<ListGroupsRequest>(&mut body, version),
        ApiKey::DescribeGroups => one::<DescribeGroupsRequest>(&mut body, version),
        ApiKey::DeleteGroups => one::<DeleteGroupsRequest>(&mut body, version),
        ApiKey::ConsumerGroupHeartbeat => one::<ConsumerGroupHeartbeatRequest>(&mut body, version),
        ApiKey::ConsumerGroupDescribe => one::<ConsumerGroupDescribeRequest>(&mut body, version),
        ApiKey::JoinGroup => one::<JoinGroupRequest>(&mut body, version),
        ApiKey::SyncGroup => one::<SyncGroupRequest>(&mut body, version),
        ApiKey::Heartbeat => one::<HeartbeatRequest>(&mut body, version),
        ApiKey::LeaveGroup => one::<LeaveGroupRequest>(&mut body, version),
        ApiKey::DescribeClientQuotas => one::<DescribeClientQuotasRequest>(&mut body, version),
        ApiKey::AlterClientQuotas => one::<AlterClientQuotasRequest>(&mut body, version),
        ApiKey::SaslHandshake => one::<SaslHandshakeRequest>(&mut body, version),
        ApiKey::SaslAuthenticate => one::<SaslAuthenticateRequest>(&mut body, version),
        ApiKey::AlterUserScramCredentials => one::<AlterUserScramCredentialsRequest>(&mut body, version),
        ApiKey::DescribeUserScramCredentials => one::<DescribeUserScramCredentialsRequest>(&mut body, version),
        ApiKey::CreateAcls => one::<CreateAclsRequest>(&mut body, version),
        ApiKey::DescribeAcls => one::<DescribeAclsRequest>(&mut body, version),
        ApiKey::DeleteAcls => one::<DeleteAclsRequest>(&mut body, version),
        ApiKey::AddPartitionsToTxn => one::<AddPartitionsToTxnRequest>(&mut body, version),
        ApiKey::AddOffsetsToTxn => one::<AddOffsetsToTxnRequest>(&mut body, version),
        ApiKey::EndTxn => one::<EndTxnRequest>(&mut body, version),
        ApiKey::DescribeTransactions => one::<DescribeTransactionsRequest>(&mut body, version),
        ApiKey::ListTransactions => one::<ListTransactionsRequest>(&mut body, version),
        // Served APIs added later decode through their handlers' types;
        // until listed here they are not fuzzed.
        _ => Ok(()),
    }
}
