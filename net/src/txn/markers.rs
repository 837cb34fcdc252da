//! Transaction markers (Kafka's WriteTxnMarkers): the control batch that
//! ends a transaction on each of its partitions, written by the
//! partition's leader with `PartitionLog::append_marker` and acknowledged
//! once the in-sync replicas have it (acks=all, as group writes).
//!
//! For a partition led on this broker the coordinator sends a
//! `ShardOp::WriteMarker` to the partition's owner shard. For those led
//! elsewhere it sends one native Produce per destination (the leader's
//! shard that owns them) with a control batch (`build_control_batch`) for
//! each, over a `Peer` connection that proves it is a broker (kept for the
//! next markers, `MarkerPeers`); the receiving broker accepts a control
//! batch only on such a connection (`native/produce.rs`; clients' control
//! batches stay refused) and appends it with `append_marker` the same way.
//! The partitions not written are retried (following their leaders as
//! they move) until all are; a marker refused as fenced (a newer epoch
//! wrote there) counts as written.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use spate_engine::TxnMarker;
use spate_flatbuf::CONSUMER_OFFSETS_TOPIC;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;
use spate_format::batch::{ControlRecord, build_control_batch, parse_control_batch};

use super::state::TxnMeta;
use crate::catalog::{Catalog, TopicMeta, owner_shard};
use crate::deadline::Deadline;
use crate::group::Tp;
use crate::group::{Write, written};
use crate::limits::{
    TXN_MARKER_PEERS_IDLE_MAX, TXN_MARKER_READ_TIMEOUT_MS, TXN_MARKER_RETRY_MS, TXN_MARKER_RETRY_MS_MAX,
};
use crate::replica::peer::{BrokerIdentity, Peer, PeerTls};
use crate::shard::{Outcome, Shard, ShardOp, log_error_code};

/// Writes the marker of a prepared transaction to every one of its
/// partitions, retrying those not written (following their leaders) until
/// all are. False if `current` turned false first (this coordinator
/// resigned; the next one writes them).
pub(crate) async fn write_all(
    shard: &Rc<Shard>,
    meta: &TxnMeta,
    commit: bool,
    coordinator_epoch: i32,
    current: impl Fn() -> bool,
) -> bool {
    let marker =
        TxnMarker { producer_id: meta.producer_id, producer_epoch: meta.producer_epoch, commit, coordinator_epoch };
    let mut pending: Vec<Tp> = meta.partitions.iter().cloned().collect();
    let mut retry_ms = TXN_MARKER_RETRY_MS;
    loop {
        // A stopping shard leaves them to the partition's next coordinator.
        if !current() || shard.stopping.get() {
            return false;
        }
        pending = attempt(shard, pending, marker).await;
        if pending.is_empty() {
            return true;
        }
        Deadline::after(Duration::from_millis(retry_ms)).await;
        retry_ms = (retry_ms * 2).min(TXN_MARKER_RETRY_MS_MAX);
    }
}

/// Where a remote marker goes: the leader's node id and the address of
/// its shard that owns the partition.
pub(super) type Destination = (i32, SocketAddr);

/// A partition's marker on its way to another broker.
struct RemotePart {
    tp: Tp,
    topic: Arc<TopicMeta>,
    partition: u32,
}

/// One attempt at every pending partition's marker: to the owner shard for
/// partitions led here, in one request per destination for the others.
/// Returns the partitions whose marker is not written.
async fn attempt(shard: &Rc<Shard>, pending: Vec<Tp>, marker: TxnMarker) -> Vec<Tp> {
    let catalog = shard.shared.catalog.load_full();
    let mut local = Vec::new();
    let mut remote: BTreeMap<Destination, Vec<RemotePart>> = BTreeMap::new();
    let mut failed = Vec::new();
    for tp in pending {
        // A topic deleted (or a partition gone) since it joined the
        // transaction has nothing left to mark.
        let Some(topic) = catalog.topics.get(&tp.0).cloned() else { continue };
        let Some(partition) = u32::try_from(tp.1).ok().filter(|&p| p < topic.partitions) else { continue };
        let leader = topic.assignment(partition).leader;
        if leader < 0 {
            tracing::debug!(shard = shard.id, topic = %tp.0, partition, "transaction marker: no leader yet");
            failed.push(tp);
        } else if leader == shard.shared.config.node_id {
            let (reply, wait) = oneshot::channel();
            let owner = shard.shared.owner(&topic.name, partition);
            shard.submit(owner, ShardOp::WriteMarker { topic, partition, marker, reply });
            local.push((tp, wait));
        } else {
            match destination(&catalog, &topic.name, partition, leader) {
                Ok(to) => remote.entry(to).or_default().push(RemotePart { tp, topic, partition }),
                Err(message) => {
                    tracing::debug!(shard = shard.id, topic = %tp.0, partition, "transaction marker: {message}");
                    failed.push(tp);
                }
            }
        }
    }
    let local_writes = futures::future::join_all(local.into_iter().map(|(tp, wait)| async move {
        let outcome =
            wait.await.unwrap_or_else(|_| Outcome::err(ErrorCode::BrokerShuttingDown, "the partition's shard stopped"));
        (tp, outcome)
    }));
    let remote_writes = futures::future::join_all(remote.into_iter().map(|(to, parts)| {
        let catalog = &catalog;
        async move {
            let outcomes = remote_markers(shard, catalog, to, &parts, marker).await;
            (parts, outcomes)
        }
    }));
    let (local_outcomes, remote_outcomes) = futures::join!(local_writes, remote_writes);
    let mut outcomes: Vec<(Tp, Outcome)> = local_outcomes;
    for (parts, result) in remote_outcomes {
        match result {
            Ok(answers) => outcomes.extend(parts.into_iter().map(|p| p.tp).zip(answers)),
            Err(message) => {
                tracing::debug!(shard = shard.id, partitions = parts.len(), "transaction markers: {message}");
                failed.extend(parts.into_iter().map(|p| p.tp));
            }
        }
    }
    for (tp, outcome) in outcomes {
        match outcome.error {
            ErrorCode::None => {}
            // A producer with a newer epoch wrote there: this transaction's
            // end is not the partition's to learn any more.
            ErrorCode::InvalidProducerEpoch => {}
            code => {
                tracing::debug!(shard = shard.id, topic = %tp.0, partition = tp.1, ?code, message = ?outcome.message,
                    "transaction marker not written yet");
                failed.push(tp);
            }
        }
    }
    failed
}

/// The leader's shard that owns the partition, as its broker registered.
pub(super) fn destination(catalog: &Catalog, topic: &str, partition: u32, leader: i32) -> Result<Destination, String> {
    let broker = catalog.brokers.get(&leader).ok_or_else(|| format!("no address for broker {leader}"))?;
    let port = if broker.shard_ports.is_empty() {
        broker.port
    } else {
        broker.shard_ports[owner_shard(topic, partition, broker.shard_ports.len())]
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(broker.host.as_str(), port))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("no address for broker {leader}"))?;
    Ok((leader, addr))
}

/// Connections to other brokers' shards that markers (and KIP-890
/// verifications, `verify.rs`) went over, kept for the next ones (a
/// connection costs two handshakes): at most
/// `TXN_MARKER_PEERS_IDLE_MAX` idle ones per address, one per request in
/// flight beyond that. A connection that failed is dropped.
#[derive(Debug, Default)]
pub(crate) struct MarkerPeers {
    idle: RefCell<HashMap<Destination, Vec<Peer>>>,
}

impl MarkerPeers {
    pub(super) fn take(&self, key: Destination) -> Option<Peer> {
        self.idle.borrow_mut().get_mut(&key).and_then(Vec::pop)
    }

    pub(super) fn put(&self, key: Destination, peer: Peer) {
        let mut idle = self.idle.borrow_mut();
        let peers = idle.entry(key).or_default();
        if peers.len() < TXN_MARKER_PEERS_IDLE_MAX {
            peers.push(peer);
        }
    }
}

/// Sends the markers of `parts` to one destination, as one native Produce
/// (acks=all) of their control batches on a connection that proves this
/// broker's identity: an idle one if there is, else a new one (and a new
/// one again if the idle one turns out closed). Each part's answer, in
/// order.
async fn remote_markers(
    shard: &Rc<Shard>,
    catalog: &Catalog,
    to: Destination,
    parts: &[RemotePart],
    marker: TxnMarker,
) -> Result<Vec<Outcome>, String> {
    let peers = &shard.txns.peers;
    // An idle connection may have been closed meanwhile (the other side's
    // idle timeout, a restart): then a new one.
    if let Some(mut peer) = peers.take(to)
        && let Ok(outcomes) = send(&mut peer, parts, marker).await
    {
        peers.put(to, peer);
        return Ok(outcomes);
    }
    let mut peer = connect(shard, catalog, to).await?;
    let outcomes = send(&mut peer, parts, marker).await?;
    peers.put(to, peer);
    Ok(outcomes)
}

/// A new connection to another broker's shard that proves this broker's
/// identity (over TLS where the brokers' links are).
pub(super) async fn connect(shard: &Rc<Shard>, catalog: &Catalog, to: Destination) -> Result<Peer, String> {
    let (node, addr) = to;
    let identity = BrokerIdentity {
        node_id: shard.shared.config.node_id,
        to_node: node,
        secret: catalog.cluster_secret.as_deref(),
    };
    let read_timeout = Duration::from_millis(TXN_MARKER_READ_TIMEOUT_MS);
    let tls = catalog.brokers.get(&node).and_then(|broker| PeerTls::to(&shard.shared, &broker.host));
    Peer::connect(addr, shard.shared.config.frame_bytes_max, read_timeout, identity, tls)
        .await
        .map_err(|e| e.to_string())
}

/// One request with the marker for each of `parts` on `peer`: each part's
/// answer, in order.
async fn send(peer: &mut Peer, parts: &[RemotePart], marker: TxnMarker) -> Result<Vec<Outcome>, String> {
    let control = ControlRecord { commit: marker.commit, coordinator_epoch: marker.coordinator_epoch };
    let batch = build_control_batch(marker.producer_id, marker.producer_epoch, control, super::now_ms());
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for part in parts {
        by_topic.entry(part.topic.name.as_str()).or_default().push(part.partition);
    }
    let mut builder = FlatBufferBuilder::new();
    let mut topics = Vec::with_capacity(by_topic.len());
    for (name, partitions) in &by_topic {
        // A vector per partition: the receiver refuses partitions that
        // share their records.
        let entries: Vec<_> = partitions
            .iter()
            .map(|&partition| {
                let records = builder.create_vector(&batch[..]);
                ProducePartition::create(
                    &mut builder,
                    &ProducePartitionArgs { partition: partition as i32, records: Some(records) },
                )
            })
            .collect();
        let entries = builder.create_vector(&entries);
        let name = builder.create_string(name);
        topics.push(ProduceTopic::create(
            &mut builder,
            &ProduceTopicArgs { name: Some(name), partitions: Some(entries) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let body = ProduceRequest::create(
        &mut builder,
        &ProduceRequestArgs {
            acks: -1,
            timeout_ms: crate::limits::TXN_WRITE_TIMEOUT_MS as i32,
            topics: Some(topics),
            transactional_id: None,
            transactions_v2: false,
        },
    );
    let frame = peer.call(builder, Body::ProduceRequest, body.as_union_value()).await.map_err(|e| e.to_string())?;
    let envelope = frame.read().map_err(|e| e.to_string())?;
    let response = envelope.body_as_produce_response().ok_or("not a produce response")?;
    let mut answers: HashMap<(String, i32), Outcome> = HashMap::new();
    for topic in response.topics().into_iter().flatten() {
        let name = topic.name().unwrap_or_default();
        for answer in topic.partitions().into_iter().flatten() {
            let outcome = match answer.error() {
                ErrorCode::None => Outcome::ok(),
                code => Outcome::err(code, answer.message().unwrap_or_default().to_string()),
            };
            answers.insert((name.to_string(), answer.partition()), outcome);
        }
    }
    Ok(parts
        .iter()
        .map(|part| {
            answers
                .remove(&(part.topic.name.clone(), part.partition as i32))
                .unwrap_or_else(|| Outcome::err(ErrorCode::Unknown, "no answer for the partition"))
        })
        .collect())
}

/// The marker a control batch carries, if `batch` is one (the native
/// produce path accepts it from brokers only). Its error is the message
/// for a malformed one.
pub(crate) fn marker_from_batch(batch: &[u8]) -> Option<Result<TxnMarker, String>> {
    let header = spate_format::batch::peek_header(batch).ok()?;
    if !header.attributes().is_control() {
        return None;
    }
    Some(parse_control_batch(batch).map_err(|e| e.to_string()).map(|control| TxnMarker {
        producer_id: header.producer_id.get(),
        producer_epoch: header.producer_epoch.get(),
        commit: control.commit,
        coordinator_epoch: control.coordinator_epoch,
    }))
}

/// Appends a marker to a partition this shard owns and its replica here
/// leads, and answers once the in-sync replicas have it.
pub(crate) fn write_marker_here(
    shard: &Rc<Shard>,
    topic: Arc<TopicMeta>,
    partition: u32,
    marker: TxnMarker,
    reply: oneshot::Sender<Outcome>,
) {
    let write = (|| {
        let name = topic.name.as_str();
        let replica = shard.replica(&topic, partition).ok_or_else(|| {
            Outcome::err(ErrorCode::NotLeaderOrFollower, format!("{name}/{partition} is not open here"))
        })?;
        let leader_epoch = replica
            .check_leader(-1)
            .map_err(|refusal| Outcome::err(refusal.0, format!("{name}/{partition} is not led here")))?;
        let min_insync_replicas = shard.shared.min_insync_replicas(&topic);
        replica.check_min_isr(min_insync_replicas).map_err(|refusal| {
            Outcome::err(refusal.0, format!("{name}/{partition} has fewer in-sync replicas than {min_insync_replicas}"))
        })?;
        let ticket = replica
            .log
            .append_marker(marker, leader_epoch)
            .map_err(|err| Outcome::err(log_error_code(&err), err.to_string()))?;
        // The producer's transaction ended here: a first batch of it still
        // being verified must not open it again (`guard.rs`).
        let key = ((Arc::from(topic.topic_id.as_str()), partition), marker.producer_id);
        shard.verifications.marker_written(&key, marker.producer_epoch);
        Ok(Write::new(replica, ticket, leader_epoch, min_insync_replicas))
    })();
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let outcome = written(write).await;
        if outcome.error == ErrorCode::None && topic.name == CONSUMER_OFFSETS_TOPIC {
            offsets_marker_written(&shard, partition, marker);
        }
        let _ = reply.send(outcome);
    })
    .detach();
}

/// A marker landed on a partition of `__consumer_offsets`: the group
/// coordinator makes the transaction's offsets visible (commit) or drops
/// them (abort). The one call site of the group side's hook.
fn offsets_marker_written(shard: &Rc<Shard>, partition: u32, marker: TxnMarker) {
    crate::group::txn_offsets::txn_marker_written(shard, partition, marker.producer_id, marker.commit);
    tracing::debug!(
        shard = shard.id,
        partition,
        producer_id = marker.producer_id,
        commit = marker.commit,
        "transaction marker written to {CONSUMER_OFFSETS_TOPIC}"
    );
}
