//! A follower's fetcher: one task per follower partition, on the shard that
//! owns it, talking to the shard of the leader that owns the partition
//! there. First it finds where its log diverges from the leader's by
//! leader epoch (OffsetForLeaderEpoch; KIP-101, KIP-279) and truncates
//! there, never to its high watermark; then it fetches from its log end
//! and appends what comes with the leader's offsets and epochs. It stops
//! when its role changes (the replica drops the stop sender).
//!
//! Each fetch reports what this replica has made durable (its ack offset:
//! synced under durability `always`, written otherwise), which is what the
//! leader counts toward the high watermark (design decision 13). Once it
//! has caught up with the leader's log end, it waits for its appends to be
//! durable before the next fetch, so that the report is current: the
//! leader has nothing new to answer with meanwhile (acks=all producers
//! wait on this very report), so a fetch sent earlier would sit in the
//! leader's long poll with a stale report.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use futures::channel::oneshot;
use spate_engine::LogError;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::{
    Body, ErrorCode, FetchPartition, FetchPartitionArgs, FetchRequest, FetchRequestArgs, FetchTopic, FetchTopicArgs,
    OffsetForLeaderEpochPartition, OffsetForLeaderEpochPartitionArgs, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochRequestArgs, OffsetForLeaderEpochTopic, OffsetForLeaderEpochTopicArgs,
};

use super::peer::{BrokerIdentity, Peer, PeerError, PeerTls};
use super::{Replica, Role};
use crate::catalog::owner_shard;
use crate::deadline::Deadline;
use crate::limits::{
    REPLICA_FETCH_BYTES_MAX, REPLICA_FETCH_RETRY_MS_MAX, REPLICA_FETCH_RETRY_MS_MIN, REPLICA_FETCH_WAIT_MS,
};
use crate::shard::Shared;

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("leader {0} is not in the metadata (or has no usable address)")]
    NoAddress(i32),
    #[error("leader answered {0:?}")]
    Refused(ErrorCode),
    #[error("local log: {0}")]
    Log(#[from] LogError),
    #[error("leader's answer is malformed: {0}")]
    Malformed(String),
}

pub(crate) fn spawn(shared: Arc<Shared>, replica: Rc<Replica>, stop: oneshot::Receiver<()>) {
    glommio::spawn_local(async move {
        futures::select! {
            () = run(shared, replica).fuse() => {}
            _ = stop.fuse() => {}
        }
    })
    .detach();
}

async fn run(shared: Arc<Shared>, replica: Rc<Replica>) {
    let mut retry_ms = REPLICA_FETCH_RETRY_MS_MIN;
    loop {
        let Role::Follower { leader } = replica.role() else { return };
        let leader_epoch = replica.assignment().leader_epoch;
        match follow(&shared, &replica, leader, leader_epoch).await {
            Ok(()) => return,
            Err(err) => {
                tracing::debug!(partition = replica.partition, leader, leader_epoch, "replica fetch: {err}; retrying");
                Deadline::after(Duration::from_millis(retry_ms)).await;
                retry_ms = (retry_ms * 2).min(REPLICA_FETCH_RETRY_MS_MAX);
            }
        }
    }
}

/// The address of the leader's shard that owns this partition.
fn leader_addr(
    shared: &Shared,
    topic: &str,
    partition: u32,
    leader: i32,
) -> Result<(SocketAddr, Option<PeerTls>), FollowError> {
    let catalog = shared.catalog.load();
    let broker = catalog.brokers.get(&leader).ok_or(FollowError::NoAddress(leader))?;
    let port = if broker.shard_ports.is_empty() {
        broker.port
    } else {
        broker.shard_ports[owner_shard(topic, partition, broker.shard_ports.len())]
    };
    let addr = (broker.host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or(FollowError::NoAddress(leader))?;
    Ok((addr, PeerTls::to(shared, &broker.host)))
}

async fn follow(
    shared: &Arc<Shared>,
    replica: &Rc<Replica>,
    leader: i32,
    leader_epoch: i32,
) -> Result<(), FollowError> {
    let topic = replica.topic();
    let (addr, tls) = leader_addr(shared, &topic.name, replica.partition, leader)?;
    let read_timeout = Duration::from_millis(REPLICA_FETCH_WAIT_MS * 4);
    let catalog = shared.catalog.load_full();
    let identity =
        BrokerIdentity { node_id: shared.config.node_id, to_node: leader, secret: catalog.cluster_secret.as_deref() };
    let mut peer = Peer::connect(addr, shared.config.frame_bytes_max, read_timeout, identity, tls).await?;
    drop(catalog);
    truncate_by_epoch(&mut peer, replica, &topic.name, leader_epoch).await?;
    tracing::info!(topic = %topic.name, partition = replica.partition, leader, leader_epoch, log_end_offset = replica.log.log_end_offset(), "following");
    let node_id = shared.config.node_id;
    let mut last_ticket: Option<spate_engine::AppendTicket> = None;
    let mut caught_up = false;
    loop {
        if replica.role() != (Role::Follower { leader }) || replica.assignment().leader_epoch != leader_epoch {
            return Ok(());
        }
        if caught_up && let Some(ticket) = last_ticket.take() {
            ticket.durable().await?;
        }
        let offset = replica.log.log_end_offset();
        let durable_offset = replica.log.ack_offset();
        debug_assert!(durable_offset <= offset, "durable {durable_offset} past the log end {offset}");
        let mut builder = FlatBufferBuilder::new();
        let part = FetchPartition::create(
            &mut builder,
            &FetchPartitionArgs {
                partition: replica.partition as i32,
                offset,
                max_bytes: REPLICA_FETCH_BYTES_MAX as i32,
                current_leader_epoch: leader_epoch,
                replica_durable_offset: durable_offset,
            },
        );
        let parts = builder.create_vector(&[part]);
        let name = builder.create_string(&topic.name);
        let fetch_topic =
            FetchTopic::create(&mut builder, &FetchTopicArgs { name: Some(name), partitions: Some(parts) });
        let topics = builder.create_vector(&[fetch_topic]);
        let body = FetchRequest::create(
            &mut builder,
            &FetchRequestArgs {
                max_wait_ms: REPLICA_FETCH_WAIT_MS as i32,
                min_bytes: 1,
                max_bytes: REPLICA_FETCH_BYTES_MAX as i32,
                topics: Some(topics),
                replica_id: node_id,
                isolation_level: 0,
            },
        );
        let mut frame = peer.call(builder, Body::FetchRequest, body.as_union_value()).await?;
        let (error, high_watermark, leader_log_start, leader_log_end, range) = {
            let envelope = frame.read().map_err(|err| FollowError::Malformed(err.to_string()))?;
            let response = envelope
                .body_as_fetch_response()
                .ok_or_else(|| FollowError::Malformed(format!("{:?} to a fetch", envelope.body_type())))?;
            let part = response
                .topics()
                .and_then(|topics| topics.iter().next())
                .and_then(|topic| topic.partitions())
                .and_then(|parts| parts.iter().next())
                .ok_or_else(|| FollowError::Malformed("no partition in the fetch response".into()))?;
            let start = part.records_offset() as usize;
            let end = start + part.records_bytes() as usize;
            (part.error(), part.high_watermark(), part.log_start_offset(), part.log_end_offset(), start..end)
        };
        match error {
            ErrorCode::None => {}
            ErrorCode::OffsetOutOfRange if leader_log_start > offset => {
                // This log ends below the leader's start (retention ran
                // there while this replica was away, or its disk is new):
                // start over, empty, where the leader's log starts.
                replica.log.reset_to(leader_log_start).await?;
                continue;
            }
            ErrorCode::OffsetOutOfRange => {
                // This log ends past the leader's: it diverged (or the
                // leader lost an unacknowledged tail). Find where, again.
                truncate_by_epoch(&mut peer, replica, &topic.name, leader_epoch).await?;
                continue;
            }
            other => return Err(FollowError::Refused(other)),
        }
        if range.end > frame.payload.len() {
            return Err(FollowError::Malformed(format!(
                "records {range:?} past a {}-byte payload",
                frame.payload.len()
            )));
        }
        let mut records: BytesMut = frame.payload.split_to(range.end);
        let _ = records.split_to(range.start);
        let batches = crate::shard::split_into_batches(records)
            .map_err(|outcome| FollowError::Malformed(outcome.message.unwrap_or_default()))?;
        for batch in batches {
            let ticket = match replica.log.append_replica(batch.clone()) {
                Err(LogError::Backpressure { .. }) => {
                    // Let the disk catch up with what is queued, then go on.
                    if let Some(ticket) = last_ticket.take() {
                        ticket.durable().await?;
                    }
                    replica.log.append_replica(batch)?
                }
                Err(LogError::ReplicaOffset { .. })
                    if replica.log.log_start_offset() == replica.log.log_end_offset() =>
                {
                    // An empty log reset to a leader's log start inside this
                    // batch: start it over at the batch.
                    let header = spate_format::batch::peek_header(&batch)
                        .map_err(|err| FollowError::Malformed(err.to_string()))?;
                    let base_offset = header.base_offset.get();
                    let last_offset = base_offset + i64::from(header.last_offset_delta.get());
                    replica.log.restart_at_batch(base_offset, last_offset).await?;
                    replica.log.append_replica(batch)?
                }
                other => other?,
            };
            last_ticket = Some(ticket);
        }
        caught_up = replica.log.log_end_offset() >= leader_log_end;
        replica.log.set_high_watermark(high_watermark);
        // The leader's start moved (DeleteRecords, or its retention): so
        // does this copy's, as a Kafka follower's does, within what it
        // holds committed, so that records deleted there are not served
        // here after a failover.
        let log_start_offset = leader_log_start.min(replica.log.high_watermark());
        if log_start_offset > replica.log.log_start_offset() {
            replica.log.advance_log_start(log_start_offset).await?;
        }
    }
}

/// KIP-279: ask the leader for the end of the largest epoch it has that is
/// not newer than this log's latest, and cut this log at the smaller of
/// that and this log's own end of the same epoch.
async fn truncate_by_epoch(
    peer: &mut Peer,
    replica: &Replica,
    topic: &str,
    leader_epoch: i32,
) -> Result<(), FollowError> {
    let log = &replica.log;
    let Some(latest) = log.leader_epochs().latest_epoch() else { return Ok(()) };
    let mut builder = FlatBufferBuilder::new();
    let part = OffsetForLeaderEpochPartition::create(
        &mut builder,
        &OffsetForLeaderEpochPartitionArgs {
            partition: replica.partition as i32,
            current_leader_epoch: leader_epoch,
            leader_epoch: latest,
        },
    );
    let parts = builder.create_vector(&[part]);
    let name = builder.create_string(topic);
    let request_topic = OffsetForLeaderEpochTopic::create(
        &mut builder,
        &OffsetForLeaderEpochTopicArgs { name: Some(name), partitions: Some(parts) },
    );
    let topics = builder.create_vector(&[request_topic]);
    let body = OffsetForLeaderEpochRequest::create(
        &mut builder,
        &OffsetForLeaderEpochRequestArgs { topics: Some(topics), replica_id: replica.node_id },
    );
    let frame = peer.call(builder, Body::OffsetForLeaderEpochRequest, body.as_union_value()).await?;
    let (error, their_epoch, their_end) = {
        let envelope = frame.read().map_err(|err| FollowError::Malformed(err.to_string()))?;
        let response = envelope
            .body_as_offset_for_leader_epoch_response()
            .ok_or_else(|| FollowError::Malformed(format!("{:?} to OffsetForLeaderEpoch", envelope.body_type())))?;
        let part = response
            .topics()
            .and_then(|topics| topics.iter().next())
            .and_then(|topic| topic.partitions())
            .and_then(|parts| parts.iter().next())
            .ok_or_else(|| FollowError::Malformed("no partition in the OffsetForLeaderEpoch response".into()))?;
        (part.error(), part.leader_epoch(), part.end_offset())
    };
    if error != ErrorCode::None {
        return Err(FollowError::Refused(error));
    }
    let log_end = log.log_end_offset();
    let target = if their_epoch < 0 {
        // The leader has no epoch this old: nothing of ours is known to it
        // past its log start, which it sends as the end.
        their_end.max(0)
    } else {
        // Our end of the same epoch (or of our largest below it); none at
        // all means everything we have is from epochs the leader never had.
        let ours = log.leader_epochs().end_offset_for(their_epoch, log_end).map_or(0, |entry| entry.start_offset);
        their_end.min(ours)
    };
    if target < log_end {
        tracing::warn!(
            topic,
            partition = replica.partition,
            from = log_end,
            to = target,
            latest_epoch = latest,
            leader_epoch = their_epoch,
            "truncating a diverged follower log by leader epoch"
        );
        log.truncate_to(target).await?;
    }
    Ok(())
}
