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
    CLUSTER_RESOURCE_NAME, KAFKA_CODE_ANY, KAFKA_CODE_MATCH, WILDCARD_HOST,
};

use super::authz::denied_code;
use super::{Ctx, decode, respond};
use crate::admin::{ADMIN_SHARD, AdminOp};
use crate::limits::{ACL_CHANGES_PER_REQUEST_MAX, ADMIN_TIMEOUT_MS};
use crate::security::Principal;
use crate::shard::ShardOp;
use crate::wire::{Reply, Response};

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
    let resource_type = AclResourceType::from_kafka_code(resource.0)
        .ok_or(format!("resource type {} cannot be created", resource.0))?;
    let pattern_type =
        AclPatternType::from_kafka_code(resource.2).ok_or(format!("pattern type {} cannot be created", resource.2))?;
    let operation = AclOperation::from_kafka_code(op).ok_or(format!("operation {op} cannot be created"))?;
    let permission = AclPermission::from_kafka_code(permission_value)
        .ok_or(format!("permission {permission_value} cannot be created"))?;
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
        KAFKA_CODE_ANY => None,
        value => Some(AclResourceType::from_kafka_code(value)?),
    };
    let pattern = match resource.2 {
        KAFKA_CODE_ANY => AclPatternFilter::Any,
        KAFKA_CODE_MATCH => AclPatternFilter::Match,
        value => AclPatternFilter::Exactly(AclPatternType::from_kafka_code(value)?),
    };
    let operation = match op {
        KAFKA_CODE_ANY => None,
        value => Some(AclOperation::from_kafka_code(value)?),
    };
    let permission = match perm {
        KAFKA_CODE_ANY => None,
        value => Some(AclPermission::from_kafka_code(value)?),
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
            .with_operation(acl.operation.kafka_code())
            .with_permission_type(acl.permission.kafka_code());
        let same = resources.last().is_some_and(|r| {
            r.resource_type == acl.resource_type.kafka_code()
                && r.resource_name.as_str() == acl.resource_name
                && r.pattern_type == acl.pattern_type.kafka_code()
        });
        if !same {
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(acl.resource_type.kafka_code())
                    .with_resource_name(text(&acl.resource_name))
                    .with_pattern_type(acl.pattern_type.kafka_code()),
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
        .with_resource_type(acl.resource_type.kafka_code())
        .with_resource_name(text(&acl.resource_name))
        .with_pattern_type(acl.pattern_type.kafka_code())
        .with_principal(text(&acl.principal))
        .with_host(text(&acl.host))
        .with_operation(acl.operation.kafka_code())
        .with_permission_type(acl.permission.kafka_code())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// CreateAcls entries and filters as kafka-acls sends them.
    #[test]
    fn creations_and_filters_are_checked_as_kafka_checks_them() {
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
