//! DescribeClientQuotas and AlterClientQuotas (KIP-546), what
//! `kafka-configs --entity-type users|clients` and AdminClient use: quotas
//! live in the metadata log, changed through the controller on the admin
//! shard; enforcement is `security::quota`.

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterClientQuotasResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
};
use kafka_protocol::protocol::StrBytes;
use spate_replication::QuotaEntityPart;
use spate_replication::acl::AclOperation;
use spate_replication::controller::ControllerError;

use super::{Ctx, decode, respond};
use crate::admin::{ADMIN_SHARD, AdminOp};
use crate::shard::ShardOp;
use crate::wire::{Reply, Response};

/// A DescribeClientQuotas component's match type (Kafka's).
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;
/// Entries an AlterClientQuotas request may carry (each one a controller
/// round trip); far above what any tool sends.
const ALTER_ENTRIES_MAX: usize = 1000;

pub(crate) fn describe_client_quotas(ctx: Ctx, body: Bytes) -> Reply {
    use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
    let request: DescribeClientQuotasRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    // Kafka: quotas are the cluster's configs.
    if !ctx.allowed_on_cluster(AclOperation::DescribeConfigs) {
        let denied = DescribeClientQuotasResponse::default()
            .with_error_code(K::ClusterAuthorizationFailed.code())
            .with_entries(None);
        return Reply::Now(respond(&ctx, &denied));
    }
    let catalog = ctx.shard.shared.catalog.load_full();
    let mut entries = Vec::new();
    for (entity, values) in &catalog.client_quotas.entities {
        let matches = request.components.iter().all(|component| {
            let part = entity.iter().find(|p| p.entity_type == component.entity_type.as_str());
            match (component.match_type, part) {
                (MATCH_EXACT, Some(part)) => match (&part.name, &component._match) {
                    (Some(name), Some(wanted)) => name.as_str() == wanted.as_str(),
                    _ => false,
                },
                (MATCH_DEFAULT, Some(part)) => part.name.is_none(),
                (MATCH_SPECIFIED, Some(_)) => true,
                _ => false,
            }
        });
        // Strict: the entity has no parts the filter did not name.
        let strict_ok = !request.strict
            || entity.iter().all(|p| request.components.iter().any(|c| c.entity_type.as_str() == p.entity_type));
        if !matches || !strict_ok {
            continue;
        }
        let entity = entity
            .iter()
            .map(|p| {
                EntityData::default()
                    .with_entity_type(StrBytes::from_string(p.entity_type.clone()))
                    .with_entity_name(p.name.clone().map(StrBytes::from_string))
            })
            .collect();
        let values = values
            .iter()
            .filter_map(|(key, value)| {
                let value = value.parse::<f64>().ok()?;
                Some(ValueData::default().with_key(StrBytes::from_string(key.clone())).with_value(value))
            })
            .collect();
        entries.push(EntryData::default().with_entity(entity).with_values(values));
    }
    Reply::Now(respond(&ctx, &DescribeClientQuotasResponse::default().with_entries(Some(entries))))
}

/// One AlterClientQuotas entry's answer: its entity as sent, and its error
/// (code, message) if it failed.
type Answer = (Vec<kafka_protocol::messages::alter_client_quotas_response::EntityData>, Option<(i16, String)>);

pub(crate) fn alter_client_quotas(ctx: Ctx, body: Bytes) -> Reply {
    use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
    let request: AlterClientQuotasRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.entries.len() > ALTER_ENTRIES_MAX {
        return Reply::Now(Response::Close(None));
    }
    // Each entry's entity, sorted by type as the metadata keeps it; a type
    // named twice is refused here, the rest is checked by the controller.
    let allowed = ctx.allowed_on_cluster(AclOperation::AlterConfigs);
    let mut work = Vec::with_capacity(request.entries.len());
    let mut answers: Vec<Answer> = Vec::new();
    for entry in &request.entries {
        let echo = entry
            .entity
            .iter()
            .map(|e| {
                EntityData::default().with_entity_type(e.entity_type.clone()).with_entity_name(e.entity_name.clone())
            })
            .collect();
        let mut entity: Vec<QuotaEntityPart> = entry
            .entity
            .iter()
            .map(|e| QuotaEntityPart {
                entity_type: e.entity_type.to_string(),
                name: e.entity_name.as_ref().map(|n| n.to_string()),
            })
            .collect();
        entity.sort();
        if !allowed {
            answers.push((
                echo,
                Some((K::ClusterAuthorizationFailed.code(), "AlterConfigs on the cluster is denied".into())),
            ));
            continue;
        }
        if entity.windows(2).any(|w| w[0].entity_type == w[1].entity_type) {
            answers.push((echo, Some((K::InvalidRequest.code(), "an entity type is named twice".into()))));
            continue;
        }
        let changes: Vec<(String, Option<String>)> =
            entry.ops.iter().map(|op| (op.key.to_string(), (!op.remove).then(|| op.value.to_string()))).collect();
        answers.push((echo, None));
        work.push((answers.len() - 1, entity, changes));
    }
    let (reply, wait) = oneshot::channel();
    let entries: Vec<_> = work.iter().map(|(_, entity, changes)| (entity.clone(), changes.clone())).collect();
    if entries.is_empty() {
        let _ = reply.send(Vec::new());
    } else {
        let op = AdminOp::AlterClientQuotas { entries, validate_only: request.validate_only, reply };
        ctx.shard.submit(ADMIN_SHARD, ShardOp::Admin(op));
    }
    Reply::Later(Box::pin(async move {
        let results = wait.await.unwrap_or_else(|_| vec![Err(ControllerError::Shutdown); work.len()]);
        for ((index, ..), result) in work.iter().zip(results) {
            answers[*index].1 = result.err().map(|err| match err {
                ControllerError::InvalidRequest(why) => (K::InvalidRequest.code(), why),
                ControllerError::NotController | ControllerError::Shutdown => {
                    (K::NotController.code(), err.to_string())
                }
                other => (K::UnknownServerError.code(), other.to_string()),
            });
        }
        let entries = answers
            .into_iter()
            .map(|(entity, error)| {
                let (code, message) = error.map_or((0, None), |(code, message)| (code, Some(message)));
                EntryData::default()
                    .with_entity(entity)
                    .with_error_code(code)
                    .with_error_message(message.map(StrBytes::from_string))
            })
            .collect();
        respond(&ctx, &AlterClientQuotasResponse::default().with_entries(entries))
    }))
}
