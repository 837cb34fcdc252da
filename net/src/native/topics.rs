//! The admin APIs on topics: CreateTopics, DeleteTopics, AlterConfigs
//! (run on the admin shard, `admin.rs`) and DescribeTopics.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;

use super::clamp_ms;
use crate::admin::{AdminOp, AlterSpec, CreateSpec};
use crate::limits::REQUEST_TIMEOUT_MS_MAX;
use crate::shard::{Outcome, PartitionStats, Shard, ShardOp, config_map};
use crate::topic_config;
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

/// Which admin API a list of topic results answers.
#[derive(Debug, Clone, Copy)]
enum AdminApi {
    Create,
    Delete,
    Alter,
}

fn topic_results_frame(request_id: u64, results: &[(String, Outcome)], api: AdminApi) -> Bytes {
    let mut builder = FlatBufferBuilder::new();
    let mut offsets = Vec::with_capacity(results.len());
    for (name, outcome) in results {
        let name = builder.create_string(name);
        let message = outcome.message.as_deref().map(|m| builder.create_string(m));
        offsets.push(TopicResult::create(
            &mut builder,
            &TopicResultArgs { name: Some(name), error: outcome.error, message },
        ));
    }
    let results = builder.create_vector(&offsets);
    match api {
        AdminApi::Create => {
            let body = CreateTopicsResponse::create(&mut builder, &CreateTopicsResponseArgs { results: Some(results) });
            envelope_frame(builder, request_id, Body::CreateTopicsResponse, body.as_union_value(), 0)
        }
        AdminApi::Delete => {
            let body = DeleteTopicsResponse::create(&mut builder, &DeleteTopicsResponseArgs { results: Some(results) });
            envelope_frame(builder, request_id, Body::DeleteTopicsResponse, body.as_union_value(), 0)
        }
        AdminApi::Alter => {
            let body = AlterConfigsResponse::create(&mut builder, &AlterConfigsResponseArgs { results: Some(results) });
            envelope_frame(builder, request_id, Body::AlterConfigsResponse, body.as_union_value(), 0)
        }
    }
}

fn admin_reply(
    shard: &Rc<Shard>,
    request_id: u64,
    timeout: Duration,
    api: AdminApi,
    make: impl FnOnce(oneshot::Sender<crate::admin::TopicResults>) -> AdminOp,
    names: Vec<String>,
) -> Reply {
    let wait = crate::admin::run(shard, names, timeout, make);
    Reply::Later(Box::pin(async move {
        let results = wait.await;
        Response::Frame(topic_results_frame(request_id, &results, api))
    }))
}

pub(super) fn create_topics(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_create_topics_request()) else {
        return invalid(request_id, "create topics body missing");
    };
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default().to_string();
        names.push(name.clone());
        let entries: Vec<(String, String)> = topic
            .configs()
            .iter()
            .flatten()
            .map(|c| (c.key().unwrap_or_default().to_string(), c.value().unwrap_or_default().to_string()))
            .collect();
        specs.push(match config_map(&entries) {
            Ok(configs) => Ok(CreateSpec {
                name,
                partitions: topic.partitions(),
                replication_factor: topic.replication_factor(),
                configs,
            }),
            Err(message) => Err((name, Outcome::err(ErrorCode::InvalidConfig, message))),
        });
    }
    let validate_only = request.validate_only();
    let timeout = clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX);
    admin_reply(
        shard,
        request_id,
        timeout,
        AdminApi::Create,
        |reply| AdminOp::Create { topics: specs, validate_only, reply },
        names,
    )
}

pub(super) fn delete_topics(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_delete_topics_request()) else {
        return invalid(request_id, "delete topics body missing");
    };
    let names: Vec<String> = request.names().iter().flatten().map(str::to_string).collect();
    let timeout = clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX);
    let op_names = names.clone();
    admin_reply(shard, request_id, timeout, AdminApi::Delete, |reply| AdminOp::Delete { names: op_names, reply }, names)
}

// ---- AlterConfigs ----

pub(super) fn alter_configs(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_alter_configs_request()) else {
        return invalid(request_id, "alter configs body missing");
    };
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for topic in request.topics().iter().flatten() {
        let name = topic.name().unwrap_or_default().to_string();
        names.push(name.clone());
        let set = topic
            .set()
            .iter()
            .flatten()
            .map(|c| (c.key().unwrap_or_default().to_string(), c.value().unwrap_or_default().to_string()))
            .collect();
        let delete = topic.delete().iter().flatten().map(str::to_string).collect();
        specs.push(AlterSpec { name, set, delete });
    }
    let validate_only = request.validate_only();
    let timeout = clamp_ms(request.timeout_ms(), REQUEST_TIMEOUT_MS_MAX);
    admin_reply(
        shard,
        request_id,
        timeout,
        AdminApi::Alter,
        |reply| AdminOp::Alter { topics: specs, validate_only, reply },
        names,
    )
}

// ---- DescribeTopics ----

pub(super) fn describe_topics(shard: &Rc<Shard>, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_describe_topics_request()) else {
        return invalid(request_id, "describe topics body missing");
    };
    let catalog = shard.shared.catalog.load_full();
    let names: Vec<String> = match request.names() {
        Some(names) => names.iter().map(str::to_string).collect(),
        None => {
            let mut all: Vec<String> = catalog.topics.keys().cloned().collect();
            all.sort();
            all
        }
    };
    let mut waits = Vec::new();
    for name in &names {
        let Some(topic) = catalog.topics.get(name).cloned() else {
            waits.push((name.clone(), None, Vec::new()));
            continue;
        };
        let mut parts = Vec::new();
        for partition in 0..topic.partitions {
            let (reply, wait) = oneshot::channel();
            shard.submit(
                shard.shared.owner(&topic.name, partition),
                ShardOp::Stats { topic: topic.clone(), partition, reply },
            );
            parts.push(wait);
        }
        waits.push((name.clone(), Some(topic), parts));
    }
    let node_id = shard.shared.config.node_id;
    let shared = shard.shared.clone();
    Reply::Later(Box::pin(async move {
        let mut builder = FlatBufferBuilder::new();
        let mut topics = Vec::new();
        for (name, topic, parts) in waits {
            let name_offset = builder.create_string(&name);
            let Some(topic) = topic else {
                topics.push(TopicDescription::create(
                    &mut builder,
                    &TopicDescriptionArgs {
                        name: Some(name_offset),
                        error: ErrorCode::UnknownTopicOrPartition,
                        ..Default::default()
                    },
                ));
                continue;
            };
            let mut partitions = Vec::new();
            for (partition, wait) in parts.into_iter().enumerate() {
                let mut stats =
                    wait.await.unwrap_or(PartitionStats { error: ErrorCode::BrokerShuttingDown, ..Default::default() });
                let assignment = topic.assignment(partition as u32);
                if stats.error == ErrorCode::UnknownTopicOrPartition && !assignment.replicas.contains(&node_id) {
                    // Not hosted here: the assignment is all this broker
                    // knows (its leader has the offsets).
                    stats = PartitionStats {
                        error: ErrorCode::None,
                        log_start_offset: -1,
                        high_watermark: -1,
                        log_end_offset: -1,
                        ..Default::default()
                    };
                }
                let replicas = builder.create_vector(&assignment.replicas);
                let isr = builder.create_vector(&assignment.isr);
                partitions.push(PartitionDescription::create(
                    &mut builder,
                    &PartitionDescriptionArgs {
                        partition: partition as i32,
                        error: stats.error,
                        leader: assignment.leader,
                        shard: shared.owner(&topic.name, partition as u32) as u16,
                        replicas: Some(replicas),
                        isr: Some(isr),
                        log_start_offset: stats.log_start_offset,
                        high_watermark: stats.high_watermark,
                        log_end_offset: stats.log_end_offset,
                        size_bytes: stats.size_bytes,
                        segment_count: stats.segment_count,
                        leader_epoch: assignment.leader_epoch,
                        partition_epoch: assignment.partition_epoch,
                    },
                ));
            }
            let partitions = builder.create_vector(&partitions);
            let effective = match shared.log_config(&topic) {
                Ok(config) => topic_config::effective(&config, &topic.configs),
                Err(_) => Vec::new(),
            };
            let mut configs = Vec::new();
            for (key, value) in effective {
                let is_set = topic.configs.contains_key(key);
                let key = builder.create_string(key);
                let value = builder.create_string(&value);
                configs.push(ConfigEntry::create(
                    &mut builder,
                    &ConfigEntryArgs { key: Some(key), value: Some(value), is_set },
                ));
            }
            let configs = builder.create_vector(&configs);
            let topic_id = builder.create_string(&topic.topic_id);
            topics.push(TopicDescription::create(
                &mut builder,
                &TopicDescriptionArgs {
                    name: Some(name_offset),
                    error: ErrorCode::None,
                    topic_id: Some(topic_id),
                    partitions: Some(partitions),
                    configs: Some(configs),
                },
            ));
        }
        let topics = builder.create_vector(&topics);
        let body = DescribeTopicsResponse::create(&mut builder, &DescribeTopicsResponseArgs { topics: Some(topics) });
        Response::Frame(envelope_frame(builder, request_id, Body::DescribeTopicsResponse, body.as_union_value(), 0))
    }))
}
