//! Metadata and DescribeCluster: where the cluster's brokers serve the
//! Kafka protocol, and each partition's leader and replicas.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::{Ctx, decode, respond};
use crate::catalog::{Catalog, kafka_topic_id};
use crate::limits::{NAME_BYTES_MAX, TOPICS_PER_REQUEST_MAX};
use crate::wire::{Reply, Response};

/// Kafka's cluster id: 22 characters (a UUID in URL-safe base64). Derived
/// from the cluster secret the first controller committed, so it is the
/// same on every broker and across restarts, and says nothing of the
/// secret (a hash of it).
pub(crate) fn cluster_id(catalog: &Catalog) -> String {
    use sha2::Digest;
    let Some(secret) = &catalog.cluster_secret else { return "spate-cluster-pending0".to_string() };
    let digest = sha2::Sha256::new().chain_update(b"spate cluster id").chain_update(secret).finalize();
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = u128::from_be_bytes(digest[..16].try_into().unwrap_or([0; 16]));
    (0..22).map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char).collect()
}

/// The live brokers with the listener the client came in by, at their
/// addresses on it (Kafka's rule: a client is never sent to another
/// listener, whose security it may not speak).
fn brokers(ctx: &Ctx, catalog: &Catalog) -> Vec<MetadataResponseBroker> {
    catalog
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let (host, port) = b.kafka_endpoint(&ctx.session.listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(i32::from(port))
                    .with_rack(None),
            )
        })
        .collect()
}

/// A partition's replicas on brokers that are fenced or gone.
fn offline_replicas(catalog: &Catalog, assignment: &crate::catalog::PartitionAssignment) -> Vec<i32> {
    assignment.replicas.iter().copied().filter(|r| catalog.brokers.get(r).is_none_or(|b| b.fenced)).collect()
}

fn topic_entry(catalog: &Catalog, name: &str) -> MetadataResponseTopic {
    let entry = MetadataResponseTopic::default().with_name(Some(TopicName(StrBytes::from_string(name.to_string()))));
    let Some(topic) = catalog.topics.get(name) else {
        return entry.with_error_code(K::UnknownTopicOrPartition.code());
    };
    let ids = |nodes: &[i32]| nodes.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let partitions = (0..topic.partitions)
        .map(|partition| {
            let assignment = topic.assignment(partition);
            let error = if assignment.leader < 0 { K::LeaderNotAvailable.code() } else { 0 };
            let offline = offline_replicas(catalog, &assignment);
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(partition as i32)
                .with_leader_id(BrokerId(assignment.leader))
                .with_leader_epoch(assignment.leader_epoch)
                .with_replica_nodes(ids(&assignment.replicas))
                .with_isr_nodes(ids(&assignment.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    entry
        .with_topic_id(uuid::Uuid::from_u128(kafka_topic_id(&topic.topic_id)))
        .with_is_internal(spate_flatbuf::is_internal_topic(name))
        .with_partitions(partitions)
}

/// The controller as Kafka clients see it: where admin requests go. Every
/// Spate broker serves them (they reach the active controller inside the
/// cluster), so, as Kafka's KRaft brokers do, answer with a broker the
/// client can reach: the active controller when it serves Kafka clients,
/// else this broker.
fn controller_id(ctx: &Ctx, catalog: &Catalog) -> i32 {
    match catalog.brokers.get(&catalog.controller_id) {
        Some(b) if b.kafka_endpoint(&ctx.session.listener).is_some() && !b.fenced => b.node_id,
        _ => ctx.shard.shared.config.node_id,
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A topic entry carrying only an error.
fn error_entry(name: &str, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_error_code(code)
}

/// The answer: `names` described, `denied` and `invalid` as errors.
fn answer(ctx: &Ctx, catalog: &Catalog, names: &[String], denied: &[String], invalid: &[String]) -> Response {
    let mut topics: Vec<MetadataResponseTopic> = names.iter().map(|name| topic_entry(catalog, name)).collect();
    topics.extend(denied.iter().map(|name| error_entry(name, K::TopicAuthorizationFailed.code())));
    topics.extend(invalid.iter().map(|name| error_entry(name, K::InvalidTopicException.code())));
    let response = MetadataResponse::default()
        .with_brokers(brokers(ctx, catalog))
        .with_cluster_id(Some(StrBytes::from_string(cluster_id(catalog))))
        .with_controller_id(BrokerId(controller_id(ctx, catalog)))
        .with_topics(topics);
    respond(ctx, &response)
}

pub(crate) fn metadata(ctx: Ctx, body: Bytes) -> Reply {
    let request: MetadataRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let catalog = ctx.shard.shared.catalog.load_full();
    // v0 asks for every topic with an empty list; later versions with null.
    let requested: Option<Vec<String>> = match &request.topics {
        None => None,
        Some(topics) if topics.is_empty() && ctx.version == 0 => None,
        Some(topics) => Some(topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect()),
    };
    let Some(requested) = requested else {
        // Every topic the principal may Describe, the others left out.
        let mut all: Vec<String> = catalog
            .topics
            .keys()
            .filter(|name| ctx.may_see(AclOperation::Describe, AclResourceType::Topic, name))
            .cloned()
            .collect();
        all.sort();
        return Reply::Now(answer(&ctx, &catalog, &all, &[], &[]));
    };
    if requested.len() > TOPICS_PER_REQUEST_MAX {
        tracing::warn!(
            shard = ctx.shard.id,
            topics = requested.len(),
            "closing a Kafka connection: Metadata over the topic cap"
        );
        return Reply::Now(Response::Close(None));
    }
    let mut names = Vec::new();
    let mut denied = Vec::new();
    let mut invalid = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for name in requested {
        if !seen.insert(name.clone()) {
            continue;
        }
        if !valid_name(&name) {
            invalid.push(crate::caps::bounded_message(name));
        } else if ctx.allowed(AclOperation::Describe, AclResourceType::Topic, &name) {
            names.push(name);
        } else {
            denied.push(name);
        }
    }
    // Kafka's auto.create.topics.enable: a Metadata request naming an
    // unknown topic creates it (v4+ clients may ask it not to).
    let config = &ctx.shard.shared.config;
    let allow = config.auto_create_topics_enable && (ctx.version < 4 || request.allow_auto_topic_creation);
    let mut missing: Vec<String> = if allow {
        names
            .iter()
            .filter(|n| !catalog.topics.contains_key(*n) && !spate_flatbuf::is_internal_topic(n))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    // Creating needs Create on the cluster or on the topic; a topic the
    // principal may not create is answered as denied (Kafka's answer).
    if !missing.is_empty() && !ctx.may_on_cluster(AclOperation::Create) {
        let (creatable, refused): (Vec<String>, Vec<String>) =
            missing.into_iter().partition(|name| ctx.allowed(AclOperation::Create, AclResourceType::Topic, name));
        names.retain(|name| !refused.contains(name));
        denied.extend(refused);
        missing = creatable;
    }
    if missing.is_empty() {
        return Reply::Now(answer(&ctx, &catalog, &names, &denied, &invalid));
    }
    let specs = missing
        .iter()
        .map(|name| {
            Ok(crate::admin::CreateSpec {
                name: name.clone(),
                partitions: config.num_partitions as i32,
                replication_factor: config.default_replication_factor,
                configs: Default::default(),
            })
        })
        .collect();
    let created = super::admin::create(&ctx.shard, specs, false);
    Reply::Later(Box::pin(async move {
        for (name, outcome) in created.await {
            if !matches!(outcome.error, ErrorCode::None | ErrorCode::TopicAlreadyExists) {
                tracing::info!(topic = %name, "auto-creating a topic failed: {:?} {:?}", outcome.error, outcome.message);
            }
        }
        let catalog: Arc<Catalog> = ctx.shard.shared.catalog.load_full();
        answer(&ctx, &catalog, &names, &denied, &invalid)
    }))
}

pub(crate) fn describe_cluster(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeClusterRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let catalog = ctx.shard.shared.catalog.load_full();
    let brokers = catalog
        .brokers
        .values()
        .filter(|b| request.include_fenced_brokers || !b.fenced)
        .filter_map(|b| {
            let (host, port) = b.kafka_endpoint(&ctx.session.listener)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.node_id))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(i32::from(port))
                    .with_is_fenced(b.fenced),
            )
        })
        .collect();
    let response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(cluster_id(&catalog)))
        .with_controller_id(BrokerId(controller_id(&ctx, &catalog)))
        .with_endpoint_type(1)
        .with_brokers(brokers);
    Reply::Now(respond(&ctx, &response))
}

/// Kafka's max.request.partition.size.limit: the most partitions one
/// DescribeTopicPartitions answer holds (the rest through its cursor).
const DESCRIBE_PARTITIONS_LIMIT_MAX: usize = 2000;

/// DescribeTopicPartitions (KIP-966's describe, what Kafka 4's tools and
/// AdminClient use): topics by name in name order, each partition with its
/// eligible leader replicas, paged by a cursor.
pub(crate) fn describe_topic_partitions(ctx: Ctx, body: Bytes) -> Reply {
    use kafka_protocol::messages::describe_topic_partitions_response::{
        Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
    };
    use kafka_protocol::messages::{DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse};
    let request: DescribeTopicPartitionsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.topics.len() > TOPICS_PER_REQUEST_MAX {
        return Reply::Now(Response::Close(None));
    }
    let catalog = ctx.shard.shared.catalog.load_full();
    // Every topic the principal may Describe, or the ones asked for (those
    // it may not see answered as denied).
    let listing = request.topics.is_empty();
    let mut names: Vec<String> = if listing {
        catalog
            .topics
            .keys()
            .filter(|name| ctx.may_see(AclOperation::Describe, AclResourceType::Topic, name))
            .cloned()
            .collect()
    } else {
        request.topics.iter().map(|t| t.name.0.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let limit = usize::try_from(request.response_partition_limit).unwrap_or(0).clamp(1, DESCRIBE_PARTITIONS_LIMIT_MAX);
    let (start_topic, start_partition) = match &request.cursor {
        Some(cursor) => (Some(cursor.topic_name.0.to_string()), cursor.partition_index.max(0) as u32),
        None => (None, 0),
    };
    let ids = |nodes: &[i32]| nodes.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let mut topics = Vec::new();
    let mut next_cursor = None;
    let mut listed = 0usize;
    'topics: for name in names.iter().filter(|n| start_topic.as_ref().is_none_or(|start| *n >= start)) {
        let entry = DescribeTopicPartitionsResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
            .with_topic_authorized_operations(i32::MIN);
        if !listing && !ctx.allowed(AclOperation::Describe, AclResourceType::Topic, name) {
            topics.push(entry.with_error_code(K::TopicAuthorizationFailed.code()));
            continue;
        }
        let Some(topic) = catalog.topics.get(name) else {
            topics.push(entry.with_error_code(K::UnknownTopicOrPartition.code()));
            continue;
        };
        let first = if start_topic.as_deref() == Some(name.as_str()) { start_partition } else { 0 };
        let mut partitions = Vec::new();
        for partition in first..topic.partitions {
            if listed == limit {
                next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(TopicName(StrBytes::from_string(name.clone())))
                        .with_partition_index(partition as i32),
                );
                if !partitions.is_empty() {
                    topics.push(describe_entry(topic, entry, partitions));
                }
                break 'topics;
            }
            listed += 1;
            let assignment = topic.assignment(partition);
            let offline = offline_replicas(&catalog, &assignment);
            partitions.push(
                DescribeTopicPartitionsResponsePartition::default()
                    .with_error_code(if assignment.leader < 0 { K::LeaderNotAvailable.code() } else { 0 })
                    .with_partition_index(partition as i32)
                    .with_leader_id(BrokerId(assignment.leader))
                    .with_leader_epoch(assignment.leader_epoch)
                    .with_replica_nodes(ids(&assignment.replicas))
                    .with_isr_nodes(ids(&assignment.isr))
                    .with_eligible_leader_replicas(Some(ids(&assignment.elr)))
                    // Spate keeps no last-known ELR (the ELR of a partition
                    // that lost every member): empty, as Kafka's for one
                    // that never did.
                    .with_last_known_elr(Some(Vec::new()))
                    .with_offline_replicas(ids(&offline)),
            );
        }
        topics.push(describe_entry(topic, entry, partitions));
    }
    let response = DescribeTopicPartitionsResponse::default().with_topics(topics).with_next_cursor(next_cursor);
    Reply::Now(respond(&ctx, &response))
}

fn describe_entry(
    topic: &crate::catalog::TopicMeta,
    entry: kafka_protocol::messages::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic,
    partitions: Vec<
        kafka_protocol::messages::describe_topic_partitions_response::DescribeTopicPartitionsResponsePartition,
    >,
) -> kafka_protocol::messages::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic {
    entry
        .with_topic_id(uuid::Uuid::from_u128(kafka_topic_id(&topic.topic_id)))
        .with_is_internal(spate_flatbuf::is_internal_topic(&topic.name))
        .with_partitions(partitions)
}
