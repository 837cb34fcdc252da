//! Transaction markers (Kafka's WriteTxnMarkers): the control batch that
//! ends a transaction on each of its partitions, written by the
//! partition's leader with `PartitionLog::append_marker` and acknowledged
//! once the in-sync replicas have it (acks=all, as group writes).
//!
//! For a partition led on this broker the coordinator sends a
//! `ShardOp::WriteMarker` to the partition's owner shard. For one led
//! elsewhere it sends a native Produce of the control batch
//! (`build_control_batch`) over a `Peer` connection, which proves it is a
//! broker (kept for the next markers, `MarkerPeers`); the receiving broker
//! accepts a control batch only on such a
//! connection (`native/produce.rs`; clients' control batches stay refused)
//! and appends it with `append_marker` the same way. Each partition is
//! retried (following its leader as it moves) until written; a marker
//! refused as fenced (a newer epoch wrote there) counts as written.

use std::cell::RefCell;
use std::collections::HashMap;
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
use crate::group::{Write, written};
use crate::limits::{
    TXN_MARKER_PEERS_IDLE_MAX, TXN_MARKER_READ_TIMEOUT_MS, TXN_MARKER_RETRY_MS, TXN_MARKER_RETRY_MS_MAX,
};
use crate::replica::peer::{BrokerIdentity, Peer};
use crate::shard::{Outcome, Shard, ShardOp, log_error_code};

/// Writes the marker of a prepared transaction to every one of its
/// partitions, each retried until written. False if `current` turned
/// false first (this coordinator resigned; the next one writes them).
pub(crate) async fn write_all(
    shard: &Rc<Shard>,
    meta: &TxnMeta,
    commit: bool,
    coordinator_epoch: i32,
    current: impl Fn() -> bool,
) -> bool {
    let marker =
        TxnMarker { producer_id: meta.producer_id, producer_epoch: meta.producer_epoch, commit, coordinator_epoch };
    // A stopping shard leaves them to the partition's next coordinator.
    let current = || current() && !shard.stopping.get();
    let writes =
        meta.partitions.iter().map(|(topic, partition)| until_written(shard, topic, *partition, marker, &current));
    futures::future::join_all(writes).await.into_iter().all(|done| done)
}

async fn until_written(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    marker: TxnMarker,
    current: &impl Fn() -> bool,
) -> bool {
    let mut retry_ms = TXN_MARKER_RETRY_MS;
    loop {
        if !current() {
            return false;
        }
        match write_one(shard, topic, partition, marker).await {
            Ok(()) => return true,
            Err(message) => {
                tracing::debug!(shard = shard.id, topic, partition, "transaction marker not written yet: {message}");
                Deadline::after(Duration::from_millis(retry_ms)).await;
                retry_ms = (retry_ms * 2).min(TXN_MARKER_RETRY_MS_MAX);
            }
        }
    }
}

/// One attempt at one partition's marker.
async fn write_one(shard: &Rc<Shard>, topic: &str, partition: i32, marker: TxnMarker) -> Result<(), String> {
    let catalog = shard.shared.catalog.load_full();
    // A topic deleted (or a partition gone) since it joined the
    // transaction has nothing left to mark.
    let Some(topic) = catalog.topics.get(topic).cloned() else { return Ok(()) };
    let Some(index) = u32::try_from(partition).ok().filter(|&p| p < topic.partitions) else { return Ok(()) };
    let leader = topic.assignment(index).leader;
    let outcome = if leader < 0 {
        return Err("the partition has no leader".into());
    } else if leader == shard.shared.config.node_id {
        let (reply, wait) = oneshot::channel();
        shard.submit(
            shard.shared.owner(&topic.name, index),
            ShardOp::WriteMarker { topic, partition: index, marker, reply },
        );
        wait.await.unwrap_or_else(|_| Outcome::err(ErrorCode::BrokerShuttingDown, "the partition's shard stopped"))
    } else {
        remote(shard, &catalog, &topic, index, leader, marker).await?
    };
    match outcome.error {
        ErrorCode::None => Ok(()),
        // A producer with a newer epoch wrote there: this transaction's
        // end is not the partition's to learn any more.
        ErrorCode::InvalidProducerEpoch => Ok(()),
        code => Err(format!("{code:?}: {}", outcome.message.unwrap_or_default())),
    }
}

/// Connections to other brokers' shards that markers went over, kept for
/// the next markers (a connection costs two handshakes): at most
/// `TXN_MARKER_PEERS_IDLE_MAX` idle ones per address, one per marker in
/// flight beyond that. A connection that failed is dropped.
#[derive(Debug, Default)]
pub(crate) struct MarkerPeers {
    idle: RefCell<HashMap<(i32, SocketAddr), Vec<Peer>>>,
}

impl MarkerPeers {
    fn take(&self, key: (i32, SocketAddr)) -> Option<Peer> {
        self.idle.borrow_mut().get_mut(&key).and_then(Vec::pop)
    }

    fn put(&self, key: (i32, SocketAddr), peer: Peer) {
        let mut idle = self.idle.borrow_mut();
        let peers = idle.entry(key).or_default();
        if peers.len() < TXN_MARKER_PEERS_IDLE_MAX {
            peers.push(peer);
        }
    }
}

/// Sends a marker to the leader `leader` of a partition led elsewhere, as
/// a native Produce (acks=all) of its control batch on a connection that
/// proves this broker's identity: an idle one if there is, else a new one
/// (and a new one again if the idle one turns out closed).
async fn remote(
    shard: &Rc<Shard>,
    catalog: &Arc<Catalog>,
    topic: &TopicMeta,
    partition: u32,
    leader: i32,
    marker: TxnMarker,
) -> Result<Outcome, String> {
    let broker = catalog.brokers.get(&leader).ok_or_else(|| format!("no address for broker {leader}"))?;
    let port = if broker.shard_ports.is_empty() {
        broker.port
    } else {
        broker.shard_ports[owner_shard(&topic.name, partition, broker.shard_ports.len())]
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(broker.host.as_str(), port))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("no address for broker {leader}"))?;
    let key = (leader, addr);
    let connect = || async {
        let identity = BrokerIdentity {
            node_id: shard.shared.config.node_id,
            to_node: leader,
            secret: catalog.cluster_secret.as_deref(),
        };
        let read_timeout = Duration::from_millis(TXN_MARKER_READ_TIMEOUT_MS);
        Peer::connect(addr, shard.shared.config.frame_bytes_max, read_timeout, identity)
            .await
            .map_err(|e| e.to_string())
    };
    let peers = &shard.txns.peers;
    // An idle connection may have been closed meanwhile (the other side's
    // idle timeout, a restart): then a new one.
    if let Some(mut peer) = peers.take(key)
        && let Ok(outcome) = send(&mut peer, topic, partition, marker).await
    {
        peers.put(key, peer);
        return Ok(outcome);
    }
    let mut peer = connect().await?;
    let outcome = send(&mut peer, topic, partition, marker).await?;
    peers.put(key, peer);
    Ok(outcome)
}

/// One marker on `peer`: the partition's answer.
async fn send(peer: &mut Peer, topic: &TopicMeta, partition: u32, marker: TxnMarker) -> Result<Outcome, String> {
    let control = ControlRecord { commit: marker.commit, coordinator_epoch: marker.coordinator_epoch };
    let batch = build_control_batch(marker.producer_id, marker.producer_epoch, control, super::now_ms());
    let mut builder = FlatBufferBuilder::new();
    let records = builder.create_vector(&batch[..]);
    let part = ProducePartition::create(
        &mut builder,
        &ProducePartitionArgs { partition: partition as i32, records: Some(records) },
    );
    let parts = builder.create_vector(&[part]);
    let name = builder.create_string(&topic.name);
    let produce_topic =
        ProduceTopic::create(&mut builder, &ProduceTopicArgs { name: Some(name), partitions: Some(parts) });
    let topics = builder.create_vector(&[produce_topic]);
    let body = ProduceRequest::create(
        &mut builder,
        &ProduceRequestArgs { acks: -1, timeout_ms: crate::limits::TXN_WRITE_TIMEOUT_MS as i32, topics: Some(topics) },
    );
    let frame = peer.call(builder, Body::ProduceRequest, body.as_union_value()).await.map_err(|e| e.to_string())?;
    let envelope = frame.read().map_err(|e| e.to_string())?;
    let response = envelope.body_as_produce_response().ok_or("not a produce response")?;
    let answer = response
        .topics()
        .into_iter()
        .flatten()
        .flat_map(|t| t.partitions().into_iter().flatten())
        .next()
        .ok_or("an empty produce response")?;
    Ok(match answer.error() {
        ErrorCode::None => Outcome::ok(),
        code => Outcome::err(code, answer.message().unwrap_or_default().to_string()),
    })
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
    // HOOK (the lead's): crate::group::txn_marker_written(shard, partition,
    // marker.producer_id, marker.commit) once it exists in this branch.
    tracing::debug!(
        shard = shard.id,
        partition,
        producer_id = marker.producer_id,
        commit = marker.commit,
        "transaction marker written to {CONSUMER_OFFSETS_TOPIC}"
    );
}
