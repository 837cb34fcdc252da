//! Handshake and Metadata: who the peer is, and where partitions live.

use std::rc::Rc;

use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;
use spate_flatbuf::{Frame, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

use spate_replication::acl::{AclOperation, AclResourceType};

use super::Session;
use crate::shard::Shard;
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

pub(super) fn handshake(shard: &Rc<Shard>, session: &Session, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_handshake_request()) else {
        return invalid(request_id, "handshake body missing");
    };
    let low = request.version_min().max(PROTOCOL_VERSION_MIN);
    let high = request.version_max().min(PROTOCOL_VERSION_MAX);
    let (mut error, version) = if low <= high { (ErrorCode::None, high) } else { (ErrorCode::UnsupportedVersion, 0) };
    // Client-id quotas name it; bounded by the frame cap like any string.
    *session.client_id.borrow_mut() = request.client_id().unwrap_or_default().to_string();
    if let Some(proof) = request.broker_auth() {
        let secret = shard.shared.catalog.load().cluster_secret.clone();
        let now_ms = crate::broker_auth::unix_now_ms();
        let verified = shard.replay_guard.borrow_mut().verify(
            secret.as_deref(),
            proof.bytes(),
            shard.shared.config.node_id,
            shard.id as u16,
            now_ms,
        );
        match verified {
            Ok(node_id) => session.broker.set(node_id),
            Err(err) => {
                tracing::warn!(shard = shard.id, "refused a broker handshake: {err}");
                error = ErrorCode::ClusterAuthorizationFailed;
            }
        }
    }
    let mut builder = FlatBufferBuilder::new();
    let body = HandshakeResponse::create(
        &mut builder,
        &HandshakeResponseArgs {
            error,
            version,
            node_id: shard.shared.config.node_id,
            shard: shard.id as u16,
            shard_count: shard.shared.shard_count as u16,
            frame_bytes_max: shard.shared.config.frame_bytes_max as u32,
        },
    );
    Reply::Now(Response::Frame(envelope_frame(builder, request_id, Body::HandshakeResponse, body.as_union_value(), 0)))
}

// ---- Metadata ----

pub(super) fn metadata(shard: &Rc<Shard>, session: &Session, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_metadata_request()) else {
        return invalid(request_id, "metadata body missing");
    };
    let catalog = shard.shared.catalog.load();
    let mut builder = FlatBufferBuilder::new();
    let names: Vec<String> = match request.topics() {
        Some(topics) => topics.iter().map(str::to_string).collect(),
        None => {
            // All topics: those the principal may see (`authz.rs`).
            let mut all: Vec<String> = catalog
                .topics
                .keys()
                .filter(|name| {
                    super::authz::may(shard, session, AclOperation::Describe, (AclResourceType::Topic, name))
                })
                .cloned()
                .collect();
            all.sort();
            all
        }
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in &names {
        let name_offset = builder.create_string(name);
        if !super::authz::may(shard, session, AclOperation::Describe, (AclResourceType::Topic, name)) {
            // Named but not to be seen: Kafka answers the same whether it
            // exists or not.
            topics.push(TopicMetadata::create(
                &mut builder,
                &TopicMetadataArgs {
                    name: Some(name_offset),
                    error: ErrorCode::TopicAuthorizationFailed,
                    partitions: None,
                },
            ));
            continue;
        }
        let Some(topic) = catalog.topics.get(name) else {
            topics.push(TopicMetadata::create(
                &mut builder,
                &TopicMetadataArgs {
                    name: Some(name_offset),
                    error: ErrorCode::UnknownTopicOrPartition,
                    partitions: None,
                },
            ));
            continue;
        };
        let mut partitions = Vec::with_capacity(topic.partitions as usize);
        for partition in 0..topic.partitions {
            let assignment = topic.assignment(partition);
            let replicas = builder.create_vector(&assignment.replicas);
            let isr = builder.create_vector(&assignment.isr);
            // The leader's shard that owns the partition (its shard count
            // may differ from this broker's).
            let leader_shards = catalog.brokers.get(&assignment.leader).map_or(0, |b| b.shard_ports.len());
            let leader_shard =
                if leader_shards == 0 { 0 } else { crate::catalog::owner_shard(&topic.name, partition, leader_shards) };
            let error = if assignment.leader < 0 { ErrorCode::LeaderNotAvailable } else { ErrorCode::None };
            partitions.push(PartitionMetadata::create(
                &mut builder,
                &PartitionMetadataArgs {
                    partition: partition as i32,
                    error,
                    leader: assignment.leader,
                    leader_epoch: assignment.leader_epoch,
                    shard: leader_shard as u16,
                    replicas: Some(replicas),
                    isr: Some(isr),
                },
            ));
        }
        let partitions = builder.create_vector(&partitions);
        topics.push(TopicMetadata::create(
            &mut builder,
            &TopicMetadataArgs { name: Some(name_offset), error: ErrorCode::None, partitions: Some(partitions) },
        ));
    }
    let topics = builder.create_vector(&topics);
    let brokers: Vec<_> = catalog
        .brokers
        .values()
        .map(|broker| {
            let host = builder.create_string(&broker.host);
            let shard_ports = builder.create_vector(&broker.shard_ports);
            BrokerInfo::create(
                &mut builder,
                &BrokerInfoArgs {
                    node_id: broker.node_id,
                    host: Some(host),
                    port: broker.port,
                    shard_ports: Some(shard_ports),
                    fenced: broker.fenced,
                    controller_port: broker.controller_port,
                },
            )
        })
        .collect();
    let brokers = builder.create_vector(&brokers);
    let controller_id = catalog.controller_id;
    let body = MetadataResponse::create(
        &mut builder,
        &MetadataResponseArgs { brokers: Some(brokers), controller_id, topics: Some(topics) },
    );
    Reply::Now(Response::Frame(envelope_frame(builder, request_id, Body::MetadataResponse, body.as_union_value(), 0)))
}
