//! Kafka's admin APIs on topics: CreateTopics, DeleteTopics,
//! CreatePartitions, DescribeConfigs, AlterConfigs, IncrementalAlterConfigs. Each becomes the
//! native front-end's admin operation (`admin.rs`, run through the
//! controller on the admin shard).

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclOperation, AclResourceType};

use super::codes::kafka_code;
use super::{Ctx, decode, respond};
use crate::admin::{AdminOp, AlterSpec, CreateSpec, TopicResults};
use crate::limits::{REQUEST_TIMEOUT_MS_MAX, TOPICS_PER_REQUEST_MAX};
use crate::shard::{Outcome, Shard};
use crate::wire::Reply;

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Creates topics (also for Metadata's auto-creation).
pub(crate) fn create(
    shard: &Rc<Shard>,
    specs: Vec<Result<CreateSpec, (String, Outcome)>>,
    validate_only: bool,
) -> impl Future<Output = TopicResults> + 'static {
    let names = specs.iter().map(|s| s.as_ref().map_or_else(|(n, _)| n.clone(), |s| s.name.clone())).collect();
    crate::admin::run(shard, names, Duration::from_secs(30), move |reply| AdminOp::Create {
        topics: specs,
        validate_only,
        reply,
    })
}

fn timeout(ms: i32) -> Duration {
    Duration::from_millis((ms.max(0) as u64).clamp(1, REQUEST_TIMEOUT_MS_MAX))
}

fn message(outcome: &Outcome) -> Option<StrBytes> {
    outcome.message.clone().map(StrBytes::from_string)
}

pub(crate) fn create_topics(ctx: Ctx, body: Bytes) -> Reply {
    let request: CreateTopicsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.topics.len() > TOPICS_PER_REQUEST_MAX {
        return Reply::Now(crate::wire::Response::Close(None));
    }
    let config = &ctx.shard.shared.config;
    // Create on the cluster covers every topic; else each needs its own.
    let on_cluster = ctx.may_on_cluster(AclOperation::Create);
    let denied: Vec<bool> = request
        .topics
        .iter()
        .map(|topic| !on_cluster && !ctx.allowed(AclOperation::Create, AclResourceType::Topic, topic.name.0.as_str()))
        .collect();
    let specs: Vec<Result<CreateSpec, (String, Outcome)>> = request
        .topics
        .iter()
        .zip(&denied)
        .map(|(topic, &denied)| {
            let name = topic.name.0.to_string();
            if denied {
                return Err((name, Outcome::err(ErrorCode::Unknown, "Create is not allowed")));
            }
            if !topic.assignments.is_empty() {
                return Err((
                    name,
                    Outcome::err(ErrorCode::InvalidRequest, "manual replica assignments are not supported"),
                ));
            }
            let entries: Vec<(String, String)> = topic
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            let configs = crate::shard::config_map(&entries)
                .map_err(|message| (name.clone(), Outcome::err(ErrorCode::InvalidConfig, message)))?;
            // -1: the broker's defaults (KIP-464).
            let partitions =
                if topic.num_partitions == -1 { config.num_partitions as i32 } else { topic.num_partitions };
            let replication_factor = if topic.replication_factor == -1 {
                config.default_replication_factor
            } else {
                topic.replication_factor
            };
            Ok(CreateSpec { name, partitions, replication_factor, configs })
        })
        .collect();
    let shapes: Vec<(i32, i16)> =
        specs.iter().map(|s| s.as_ref().map_or((-1, -1), |s| (s.partitions, s.replication_factor))).collect();
    let names: Vec<String> = request.topics.iter().map(|t| t.name.0.to_string()).collect();
    let wait = crate::admin::run(&ctx.shard, names, timeout(request.timeout_ms), move |reply| AdminOp::Create {
        topics: specs,
        validate_only: request.validate_only,
        reply,
    });
    Reply::Later(Box::pin(async move {
        let results = wait.await;
        let catalog = ctx.shard.shared.catalog.load_full();
        let topics = results
            .into_iter()
            .zip(shapes)
            .zip(denied)
            .map(|(((name, outcome), (partitions, replication_factor)), denied)| {
                let id = catalog
                    .topics
                    .get(&name)
                    .map_or(uuid::Uuid::nil(), |t| uuid::Uuid::from_u128(crate::catalog::kafka_topic_id(&t.topic_id)));
                let ok = outcome.error == ErrorCode::None;
                CreatableTopicResult::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_topic_id(if ok { id } else { uuid::Uuid::nil() })
                    .with_error_code(if denied {
                        K::TopicAuthorizationFailed.code()
                    } else {
                        kafka_code(outcome.error)
                    })
                    .with_error_message(message(&outcome))
                    .with_num_partitions(if ok { partitions } else { -1 })
                    .with_replication_factor(if ok { replication_factor } else { -1 })
            })
            .collect();
        respond(&ctx, &CreateTopicsResponse::default().with_topics(topics))
    }))
}

/// CreatePartitions: grows topics through the controller (`admin.rs`);
/// the new partitions are placed by the controller as a new topic's are.
pub(crate) fn create_partitions(ctx: Ctx, body: Bytes) -> Reply {
    let request: CreatePartitionsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.topics.len() > TOPICS_PER_REQUEST_MAX {
        return Reply::Now(crate::wire::Response::Close(None));
    }
    let mut topics = Vec::new();
    let mut refused = Vec::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        if !ctx.allowed(AclOperation::Alter, AclResourceType::Topic, &name) {
            refused.push(
                CreatePartitionsTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_error_code(K::TopicAuthorizationFailed.code()),
            );
            continue;
        }
        if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            // Manual placement is not supported (as in CreateTopics): the
            // controller places every partition. (Clients send null for
            // none; an empty list is taken to mean the same.)
            refused.push(
                CreatePartitionsTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_error_code(K::InvalidReplicaAssignment.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "manual replica assignments are not supported",
                    ))),
            );
            continue;
        }
        topics.push((name, topic.count));
    }
    let names = topics.iter().map(|(name, _)| name.clone()).collect();
    let validate_only = request.validate_only;
    let wait = crate::admin::run(&ctx.shard, names, timeout(request.timeout_ms), move |reply| {
        AdminOp::CreatePartitions { topics, validate_only, reply }
    });
    Reply::Later(Box::pin(async move {
        let mut results: Vec<CreatePartitionsTopicResult> = wait
            .await
            .into_iter()
            .map(|(name, outcome)| {
                CreatePartitionsTopicResult::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_error_code(kafka_code(outcome.error))
                    .with_error_message(message(&outcome))
            })
            .collect();
        results.extend(refused);
        respond(&ctx, &CreatePartitionsResponse::default().with_results(results))
    }))
}

pub(crate) fn delete_topics(ctx: Ctx, body: Bytes) -> Reply {
    let request: DeleteTopicsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let catalog = ctx.shard.shared.catalog.load_full();
    // v6 names topics in `topics` (by name or id); before, in `topic_names`.
    let mut names: Vec<String> = request.topic_names.iter().map(|n| n.0.to_string()).collect();
    let mut unknown_ids = Vec::new();
    for state in &request.topics {
        match &state.name {
            Some(name) => names.push(name.0.to_string()),
            None => match catalog.by_kafka_id.get(&state.topic_id.as_u128()) {
                Some(name) => names.push(name.clone()),
                None => unknown_ids.push(state.topic_id),
            },
        }
    }
    if names.len() > TOPICS_PER_REQUEST_MAX {
        return Reply::Now(crate::wire::Response::Close(None));
    }
    let (names, denied): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|name| ctx.allowed(AclOperation::Delete, AclResourceType::Topic, name));
    let ids: BTreeMap<String, uuid::Uuid> = names
        .iter()
        .filter_map(|n| {
            let topic = catalog.topics.get(n)?;
            Some((n.clone(), uuid::Uuid::from_u128(crate::catalog::kafka_topic_id(&topic.topic_id))))
        })
        .collect();
    let wait = crate::admin::run(&ctx.shard, names.clone(), timeout(request.timeout_ms), move |reply| {
        AdminOp::Delete { names, reply }
    });
    Reply::Later(Box::pin(async move {
        let mut responses: Vec<DeletableTopicResult> = wait
            .await
            .into_iter()
            .map(|(name, outcome)| {
                DeletableTopicResult::default()
                    .with_topic_id(ids.get(&name).copied().unwrap_or_default())
                    .with_name(Some(TopicName(StrBytes::from_string(name))))
                    .with_error_code(kafka_code(outcome.error))
                    .with_error_message(message(&outcome))
            })
            .collect();
        for name in denied {
            responses.push(
                DeletableTopicResult::default()
                    .with_name(Some(TopicName(StrBytes::from_string(name))))
                    .with_error_code(K::TopicAuthorizationFailed.code()),
            );
        }
        for id in unknown_ids {
            responses.push(DeletableTopicResult::default().with_topic_id(id).with_error_code(K::UnknownTopicId.code()));
        }
        respond(&ctx, &DeleteTopicsResponse::default().with_responses(responses))
    }))
}

pub(crate) fn describe_configs(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeConfigsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let catalog = ctx.shard.shared.catalog.load_full();
    let results = request
        .resources
        .iter()
        .take(TOPICS_PER_REQUEST_MAX)
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC
                    if !ctx.allowed(
                        AclOperation::DescribeConfigs,
                        AclResourceType::Topic,
                        resource.resource_name.as_str(),
                    ) =>
                {
                    result.with_error_code(K::TopicAuthorizationFailed.code())
                }
                RESOURCE_BROKER if !ctx.allowed_on_cluster(AclOperation::DescribeConfigs) => {
                    result.with_error_code(K::ClusterAuthorizationFailed.code())
                }
                RESOURCE_TOPIC => {
                    let Some(topic) = catalog.topics.get(resource.resource_name.as_str()) else {
                        return result.with_error_code(K::UnknownTopicOrPartition.code());
                    };
                    let Ok(log_config) = ctx.shard.shared.log_config(topic) else {
                        return result.with_error_code(K::InvalidConfig.code());
                    };
                    let wanted = |key: &str| {
                        resource.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
                    };
                    let configs = crate::topic_config::effective(&log_config, &topic.configs)
                        .into_iter()
                        .filter(|(key, _)| wanted(key))
                        .map(|(key, value)| {
                            // Kafka's ConfigSource: 1 DYNAMIC_TOPIC_CONFIG
                            // (set on the topic), 5 DEFAULT_CONFIG.
                            let set = topic.configs.contains_key(key);
                            DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_static_str(key))
                                .with_value(Some(StrBytes::from_string(value)))
                                .with_read_only(false)
                                .with_config_source(if set { 1 } else { 5 })
                                .with_is_sensitive(false)
                        })
                        .collect();
                    result.with_configs(configs)
                }
                // Broker configs are set at start; none are described yet.
                RESOURCE_BROKER => result,
                _ => result
                    .with_error_code(K::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_static_str("only topic and broker resources"))),
            }
        })
        .collect();
    Reply::Now(respond(&ctx, &DescribeConfigsResponse::default().with_results(results)))
}

/// One resource's answer in either AlterConfigs response.
struct Altered {
    resource_type: i8,
    name: StrBytes,
    outcome: Outcome,
    /// Kafka's authorization error for it (0: authorized).
    denied: i16,
}

impl Altered {
    fn code(&self) -> i16 {
        if self.denied != 0 { self.denied } else { kafka_code(self.outcome.error) }
    }
}

/// Whether the principal may alter a resource's configs; if not, its
/// answer.
fn alter_denied(ctx: &Ctx, resource_type: i8, name: &StrBytes) -> Option<Altered> {
    let denied = match resource_type {
        RESOURCE_TOPIC if !ctx.allowed(AclOperation::AlterConfigs, AclResourceType::Topic, name.as_str()) => {
            K::TopicAuthorizationFailed.code()
        }
        RESOURCE_BROKER if !ctx.allowed_on_cluster(AclOperation::AlterConfigs) => K::ClusterAuthorizationFailed.code(),
        _ => return None,
    };
    let outcome = Outcome::err(ErrorCode::Unknown, "AlterConfigs is not allowed");
    Some(Altered { resource_type, name: name.clone(), outcome, denied })
}

fn alter(ctx: &Ctx, specs: Vec<AlterSpec>, validate_only: bool) -> impl Future<Output = TopicResults> + 'static {
    let names = specs.iter().map(|s| s.name.clone()).collect();
    crate::admin::run(&ctx.shard, names, Duration::from_secs(30), move |reply| AdminOp::Alter {
        topics: specs,
        validate_only,
        reply,
    })
}

fn alter_reply(
    ctx: Ctx,
    specs: Vec<AlterSpec>,
    refused: Vec<Altered>,
    validate_only: bool,
    respond_with: impl FnOnce(&Ctx, Vec<Altered>) -> crate::wire::Response + 'static,
) -> Reply {
    let wait = alter(&ctx, specs, validate_only);
    Reply::Later(Box::pin(async move {
        let mut all: Vec<Altered> = wait
            .await
            .into_iter()
            .map(|(name, outcome)| Altered {
                resource_type: RESOURCE_TOPIC,
                name: StrBytes::from_string(name),
                outcome,
                denied: 0,
            })
            .collect();
        all.extend(refused);
        respond_with(&ctx, all)
    }))
}

pub(crate) fn alter_configs(ctx: Ctx, body: Bytes) -> Reply {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let request: AlterConfigsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut specs = Vec::new();
    let mut refused = Vec::new();
    for resource in request.resources.iter().take(TOPICS_PER_REQUEST_MAX) {
        if let Some(denied) = alter_denied(&ctx, resource.resource_type, &resource.resource_name) {
            refused.push(denied);
            continue;
        }
        if resource.resource_type != RESOURCE_TOPIC {
            refused.push(Altered {
                resource_type: resource.resource_type,
                name: resource.resource_name.clone(),
                outcome: Outcome::err(ErrorCode::InvalidRequest, "only topic configs can be altered"),
                denied: 0,
            });
            continue;
        }
        // AlterConfigs replaces the whole set: keys not given go back to
        // their defaults.
        let name = resource.resource_name.to_string();
        let set: Vec<(String, String)> =
            resource.configs.iter().filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string()))).collect();
        let delete = catalog
            .topics
            .get(&name)
            .map(|t| t.configs.keys().filter(|k| !set.iter().any(|(s, _)| s == *k)).cloned().collect())
            .unwrap_or_default();
        specs.push(AlterSpec { name, set, delete });
    }
    alter_reply(ctx, specs, refused, request.validate_only, |ctx, all| {
        let responses = all
            .into_iter()
            .map(|a| {
                AlterConfigsResourceResponse::default()
                    .with_resource_type(a.resource_type)
                    .with_error_code(a.code())
                    .with_resource_name(a.name.clone())
                    .with_error_message(message(&a.outcome))
            })
            .collect();
        respond(ctx, &AlterConfigsResponse::default().with_responses(responses))
    })
}

pub(crate) fn incremental_alter_configs(ctx: Ctx, body: Bytes) -> Reply {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let request: IncrementalAlterConfigsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let mut specs = Vec::new();
    let mut refused = Vec::new();
    'resources: for resource in request.resources.iter().take(TOPICS_PER_REQUEST_MAX) {
        let refuse = |why: &str| Altered {
            resource_type: resource.resource_type,
            name: resource.resource_name.clone(),
            outcome: Outcome::err(ErrorCode::InvalidRequest, why),
            denied: 0,
        };
        if let Some(denied) = alter_denied(&ctx, resource.resource_type, &resource.resource_name) {
            refused.push(denied);
            continue;
        }
        if resource.resource_type != RESOURCE_TOPIC {
            refused.push(refuse("only topic configs can be altered"));
            continue;
        }
        let mut spec = AlterSpec { name: resource.resource_name.to_string(), set: Vec::new(), delete: Vec::new() };
        for config in &resource.configs {
            // Kafka's operations: 0 SET, 1 DELETE, 2 APPEND, 3 SUBTRACT
            // (the last two for list-valued configs, none of which Spate
            // has).
            match (config.config_operation, &config.value) {
                (0, Some(value)) => spec.set.push((config.name.to_string(), value.to_string())),
                (1, _) => spec.delete.push(config.name.to_string()),
                _ => {
                    refused.push(refuse("only SET (with a value) and DELETE are supported"));
                    continue 'resources;
                }
            }
        }
        specs.push(spec);
    }
    alter_reply(ctx, specs, refused, request.validate_only, |ctx, all| {
        let responses = all
            .into_iter()
            .map(|a| {
                AlterConfigsResourceResponse::default()
                    .with_resource_type(a.resource_type)
                    .with_error_code(a.code())
                    .with_resource_name(a.name.clone())
                    .with_error_message(message(&a.outcome))
            })
            .collect();
        respond(ctx, &IncrementalAlterConfigsResponse::default().with_responses(responses))
    })
}
