//! Kafka's ACL APIs (kafka-acls, AdminClient's createAcls, describeAcls,
//! deleteAcls): CreateAcls and DeleteAcls go through the controller (the
//! metadata log) on the admin shard; DescribeAcls reads this broker's
//! image. Kafka's rule: describing needs Describe on the cluster, changing
//! needs Alter on it.

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{DeleteAclsFilterResult, DeleteAclsMatchingAcl};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use spate_replication::ControllerError;
use spate_replication::acl::{
    AclBinding, AclFilter, AclOperation, AclPatternFilter, AclPatternType, AclPermission, AclResourceType,
    CLUSTER_RESOURCE_NAME, WILDCARD_HOST,
};

use super::authz::denied_code;
use super::{Ctx, decode, respond};
use crate::admin::{ADMIN_SHARD, AdminOp};
use crate::limits::{ACL_CHANGES_PER_REQUEST_MAX, ADMIN_TIMEOUT_MS};
use crate::security::Principal;
use crate::shard::ShardOp;
use crate::wire::{Reply, Response};

/// Kafka's numbers for the ACL enums (`org.apache.kafka.common.acl` and
/// `.resource`): 0 is UNKNOWN, 1 ANY in every one of them.
mod code {
    pub const ANY: i8 = 1;
    pub const RESOURCE_TOPIC: i8 = 2;
    pub const RESOURCE_GROUP: i8 = 3;
    pub const RESOURCE_CLUSTER: i8 = 4;
    pub const RESOURCE_TRANSACTIONAL_ID: i8 = 5;
    pub const PATTERN_MATCH: i8 = 2;
    pub const PATTERN_LITERAL: i8 = 3;
    pub const PATTERN_PREFIXED: i8 = 4;
    pub const PERMISSION_DENY: i8 = 2;
    pub const PERMISSION_ALLOW: i8 = 3;
}

fn resource_type(value: i8) -> Option<AclResourceType> {
    Some(match value {
        code::RESOURCE_TOPIC => AclResourceType::Topic,
        code::RESOURCE_GROUP => AclResourceType::Group,
        code::RESOURCE_CLUSTER => AclResourceType::Cluster,
        code::RESOURCE_TRANSACTIONAL_ID => AclResourceType::TransactionalId,
        _ => return None,
    })
}

fn resource_type_code(value: AclResourceType) -> i8 {
    match value {
        AclResourceType::Topic => code::RESOURCE_TOPIC,
        AclResourceType::Group => code::RESOURCE_GROUP,
        AclResourceType::Cluster => code::RESOURCE_CLUSTER,
        AclResourceType::TransactionalId => code::RESOURCE_TRANSACTIONAL_ID,
    }
}

fn pattern_type(value: i8) -> Option<AclPatternType> {
    match value {
        code::PATTERN_LITERAL => Some(AclPatternType::Literal),
        code::PATTERN_PREFIXED => Some(AclPatternType::Prefixed),
        _ => None,
    }
}

fn pattern_type_code(value: AclPatternType) -> i8 {
    match value {
        AclPatternType::Literal => code::PATTERN_LITERAL,
        AclPatternType::Prefixed => code::PATTERN_PREFIXED,
    }
}

/// Kafka's operations in Kafka's order, from 2 (ALL) on.
const OPERATIONS: [AclOperation; 11] = [
    AclOperation::All,
    AclOperation::Read,
    AclOperation::Write,
    AclOperation::Create,
    AclOperation::Delete,
    AclOperation::Alter,
    AclOperation::Describe,
    AclOperation::ClusterAction,
    AclOperation::DescribeConfigs,
    AclOperation::AlterConfigs,
    AclOperation::IdempotentWrite,
];

fn operation(value: i8) -> Option<AclOperation> {
    OPERATIONS.get(usize::try_from(value).ok()?.checked_sub(2)?).copied()
}

fn operation_code(value: AclOperation) -> i8 {
    OPERATIONS.iter().position(|op| *op == value).map_or(0, |index| index as i8 + 2)
}

fn permission(value: i8) -> Option<AclPermission> {
    match value {
        code::PERMISSION_DENY => Some(AclPermission::Deny),
        code::PERMISSION_ALLOW => Some(AclPermission::Allow),
        _ => None,
    }
}

fn permission_code(value: AclPermission) -> i8 {
    match value {
        AclPermission::Deny => code::PERMISSION_DENY,
        AclPermission::Allow => code::PERMISSION_ALLOW,
    }
}

/// A binding from a CreateAcls entry, or why it cannot be one (Kafka's
/// checks: known types, a principal `Type:name`, the cluster named
/// `kafka-cluster`, a non-empty name).
fn binding(
    resource: (i8, &str, i8),
    principal: &str,
    host: &str,
    op: i8,
    permission_value: i8,
) -> Result<AclBinding, String> {
    let resource_type = resource_type(resource.0).ok_or(format!("resource type {} cannot be created", resource.0))?;
    let pattern_type = pattern_type(resource.2).ok_or(format!("pattern type {} cannot be created", resource.2))?;
    let operation = operation(op).ok_or(format!("operation {op} cannot be created"))?;
    let permission = permission(permission_value).ok_or(format!("permission {permission_value} cannot be created"))?;
    Principal::parse(principal).map_err(|err| err.to_string())?;
    if resource.1.is_empty() {
        return Err("an empty resource name".into());
    }
    if resource_type == AclResourceType::Cluster && resource.1 != CLUSTER_RESOURCE_NAME {
        return Err(format!("the cluster resource is named {CLUSTER_RESOURCE_NAME}, not {:?}", resource.1));
    }
    if host.is_empty() {
        return Err(format!("an empty host (use {WILDCARD_HOST:?} for every host)"));
    }
    Ok(AclBinding {
        resource_type,
        resource_name: resource.1.to_string(),
        pattern_type,
        principal: principal.to_string(),
        host: host.to_string(),
        operation,
        permission,
    })
}

/// A filter from DescribeAcls or a DeleteAcls entry (`ANY` = None).
fn filter(
    resource: (i8, Option<&str>, i8),
    principal: Option<&str>,
    host: Option<&str>,
    op: i8,
    perm: i8,
) -> Option<AclFilter> {
    let resource_type = match resource.0 {
        code::ANY => None,
        value => Some(resource_type(value)?),
    };
    let pattern = match resource.2 {
        code::ANY => AclPatternFilter::Any,
        code::PATTERN_MATCH => AclPatternFilter::Match,
        value => AclPatternFilter::Exactly(pattern_type(value)?),
    };
    let operation = match op {
        code::ANY => None,
        value => Some(operation(value)?),
    };
    let permission = match perm {
        code::ANY => None,
        value => Some(permission(value)?),
    };
    Some(AclFilter {
        resource_type,
        resource_name: resource.1.map(str::to_string),
        pattern,
        principal: principal.map(str::to_string),
        host: host.map(str::to_string),
        operation,
        permission,
    })
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// A controller refusal as an ACL API answers it.
fn controller_code(err: &ControllerError) -> i16 {
    match err {
        ControllerError::InvalidRequest(_) => K::InvalidRequest.code(),
        ControllerError::NotController => K::NotController.code(),
        ControllerError::Shutdown => K::NotLeaderOrFollower.code(),
        _ => K::UnknownServerError.code(),
    }
}

pub(crate) fn create_acls(ctx: Ctx, body: Bytes) -> Reply {
    let request: CreateAclsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.creations.len() > ACL_CHANGES_PER_REQUEST_MAX {
        tracing::warn!(shard = ctx.shard.id, "closing a Kafka connection: CreateAcls over the cap");
        return Reply::Now(Response::Close(None));
    }
    let allowed = ctx.allowed_on_cluster(AclOperation::Alter);
    let parsed: Vec<Result<AclBinding, (i16, String)>> = request
        .creations
        .iter()
        .map(|c| {
            if !allowed {
                return Err((denied_code(AclResourceType::Cluster), "Alter on the cluster is not allowed".into()));
            }
            binding(
                (c.resource_type, &c.resource_name, c.resource_pattern_type),
                &c.principal,
                &c.host,
                c.operation,
                c.permission_type,
            )
            .map_err(|message| (K::InvalidRequest.code(), message))
        })
        .collect();
    let acls: Vec<AclBinding> = parsed.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
    let (reply, wait) = oneshot::channel();
    if acls.is_empty() {
        let _ = reply.send(Ok(()));
    } else {
        ctx.shard.submit(ADMIN_SHARD, ShardOp::Admin(AdminOp::CreateAcls { acls, reply }));
    }
    Reply::Later(Box::pin(async move {
        let outcome = answer(wait).await;
        let results = parsed
            .into_iter()
            .map(|p| match (p, &outcome) {
                (Err((code, message)), _) => {
                    AclCreationResult::default().with_error_code(code).with_error_message(Some(text(&message)))
                }
                (Ok(_), Ok(())) => AclCreationResult::default(),
                (Ok(_), Err((code, message))) => {
                    AclCreationResult::default().with_error_code(*code).with_error_message(Some(text(message)))
                }
            })
            .collect();
        respond(&ctx, &CreateAclsResponse::default().with_results(results))
    }))
}

/// The admin shard's answer, or why there is none.
async fn answer<T>(wait: oneshot::Receiver<Result<T, ControllerError>>) -> Result<T, (i16, String)> {
    let timeout = std::time::Duration::from_millis(ADMIN_TIMEOUT_MS);
    futures::select! {
        result = futures::FutureExt::fuse(wait) => match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err((controller_code(&err), err.to_string())),
            Err(_) => Err((K::NotLeaderOrFollower.code(), "the admin shard stopped".into())),
        },
        () = futures::FutureExt::fuse(crate::deadline::Deadline::after(timeout)) => {
            Err((K::RequestTimedOut.code(), "not finished in time; it may still complete".into()))
        }
    }
}

pub(crate) fn describe_acls(ctx: Ctx, body: Bytes) -> Reply {
    let request: DescribeAclsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if !ctx.allowed_on_cluster(AclOperation::Describe) {
        let response = DescribeAclsResponse::default()
            .with_error_code(denied_code(AclResourceType::Cluster))
            .with_error_message(Some(text("Describe on the cluster is not allowed")));
        return Reply::Now(respond(&ctx, &response));
    }
    let filter = filter(
        (request.resource_type_filter, request.resource_name_filter.as_deref(), request.pattern_type_filter),
        request.principal_filter.as_deref(),
        request.host_filter.as_deref(),
        request.operation,
        request.permission_type,
    );
    let Some(filter) = filter else {
        let response = DescribeAclsResponse::default()
            .with_error_code(K::InvalidRequest.code())
            .with_error_message(Some(text("the filter names an unknown type, pattern, operation or permission")));
        return Reply::Now(respond(&ctx, &response));
    };
    let catalog = ctx.shard.shared.catalog.load();
    // The bindings are sorted by resource first, so one resource's ACLs
    // are neighbours.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for acl in catalog.authorizer.acls().iter().filter(|acl| filter.matches(acl)) {
        let description = AclDescription::default()
            .with_principal(text(&acl.principal))
            .with_host(text(&acl.host))
            .with_operation(operation_code(acl.operation))
            .with_permission_type(permission_code(acl.permission));
        let same = resources.last().is_some_and(|r| {
            r.resource_type == resource_type_code(acl.resource_type)
                && r.resource_name.as_str() == acl.resource_name
                && r.pattern_type == pattern_type_code(acl.pattern_type)
        });
        if !same {
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(resource_type_code(acl.resource_type))
                    .with_resource_name(text(&acl.resource_name))
                    .with_pattern_type(pattern_type_code(acl.pattern_type)),
            );
        }
        if let Some(resource) = resources.last_mut() {
            resource.acls.push(description);
        }
    }
    Reply::Now(respond(&ctx, &DescribeAclsResponse::default().with_resources(resources)))
}

pub(crate) fn delete_acls(ctx: Ctx, body: Bytes) -> Reply {
    let request: DeleteAclsRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    if request.filters.len() > ACL_CHANGES_PER_REQUEST_MAX {
        tracing::warn!(shard = ctx.shard.id, "closing a Kafka connection: DeleteAcls over the cap");
        return Reply::Now(Response::Close(None));
    }
    let allowed = ctx.allowed_on_cluster(AclOperation::Alter);
    let parsed: Vec<Result<AclFilter, (i16, String)>> = request
        .filters
        .iter()
        .map(|f| {
            if !allowed {
                return Err((denied_code(AclResourceType::Cluster), "Alter on the cluster is not allowed".into()));
            }
            filter(
                (f.resource_type_filter, f.resource_name_filter.as_deref(), f.pattern_type_filter),
                f.principal_filter.as_deref(),
                f.host_filter.as_deref(),
                f.operation,
                f.permission_type,
            )
            .ok_or((
                K::InvalidRequest.code(),
                "the filter names an unknown type, pattern, operation or permission".into(),
            ))
        })
        .collect();
    let filters: Vec<AclFilter> = parsed.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
    let (reply, wait) = oneshot::channel();
    if filters.is_empty() {
        let _ = reply.send(Ok(Vec::new()));
    } else {
        ctx.shard.submit(ADMIN_SHARD, ShardOp::Admin(AdminOp::DeleteAcls { filters, reply }));
    }
    Reply::Later(Box::pin(async move {
        let outcome = answer(wait).await;
        let mut matched = match &outcome {
            Ok(matched) => matched.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let results = parsed
            .into_iter()
            .map(|p| match (p, &outcome) {
                (Err((code, message)), _) => {
                    DeleteAclsFilterResult::default().with_error_code(code).with_error_message(Some(text(&message)))
                }
                (Ok(_), Err((code, message))) => {
                    DeleteAclsFilterResult::default().with_error_code(*code).with_error_message(Some(text(message)))
                }
                (Ok(_), Ok(_)) => {
                    let acls = matched.next().unwrap_or_default().iter().map(matching).collect();
                    DeleteAclsFilterResult::default().with_matching_acls(acls)
                }
            })
            .collect();
        respond(&ctx, &DeleteAclsResponse::default().with_filter_results(results))
    }))
}

fn matching(acl: &AclBinding) -> DeleteAclsMatchingAcl {
    DeleteAclsMatchingAcl::default()
        .with_resource_type(resource_type_code(acl.resource_type))
        .with_resource_name(text(&acl.resource_name))
        .with_pattern_type(pattern_type_code(acl.pattern_type))
        .with_principal(text(&acl.principal))
        .with_host(text(&acl.host))
        .with_operation(operation_code(acl.operation))
        .with_permission_type(permission_code(acl.permission))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Kafka's numbers (AclOperation.code(), ResourceType.code(), ...) map
    /// both ways; kafka-acls sends them.
    #[test]
    fn kafka_codes_map_both_ways() {
        assert_eq!(operation(3), Some(AclOperation::Read));
        assert_eq!(operation(12), Some(AclOperation::IdempotentWrite));
        assert_eq!(operation(1), None, "ANY is a filter only");
        assert_eq!(operation(13), None, "CREATE_TOKENS: delegation tokens are not served");
        for op in OPERATIONS {
            assert_eq!(operation(operation_code(op)), Some(op));
        }
        assert_eq!(resource_type(5), Some(AclResourceType::TransactionalId));
        assert_eq!(resource_type(7), None, "USER: not served");
        let made = binding((4, "kafka-cluster", 3), "User:alice", "*", 7, 3).unwrap();
        assert_eq!((made.operation, made.permission), (AclOperation::Alter, AclPermission::Allow));
        assert!(binding((4, "other", 3), "User:alice", "*", 7, 3).is_err());
        assert!(binding((2, "t", 2), "User:alice", "*", 7, 3).is_err(), "MATCH is a filter only");
        assert!(binding((2, "t", 3), "alice", "*", 7, 3).is_err(), "a principal is Type:name");
        let any = filter((1, None, 1), None, None, 1, 1).unwrap();
        assert_eq!(any, AclFilter::any());
        assert!(filter((9, None, 1), None, None, 1, 1).is_none());
    }
}
