//! `spate acl create|delete|list`: Kafka's ACLs through a broker's Kafka
//! listener (CreateAcls, DeleteAcls, DescribeAcls), with kafka-acls' flag
//! names where they fit (`--allow-principal`, `--operation`, `--topic`,
//! `--resource-pattern-type`, ...).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;
use spate_replication::acl::{
    AclOperation, AclPatternType, AclPermission, AclResourceType, CLUSTER_RESOURCE_NAME, KAFKA_CODE_ANY,
    KAFKA_CODE_MATCH, WILDCARD_HOST,
};

use crate::kafka_admin::{Connection, KafkaAdmin, error_name};
use crate::kafka_security::SecurityArgs;
use crate::output::{Table, print};

#[derive(Subcommand, Debug)]
pub(crate) enum AclCommand {
    /// Add ACLs: each principal, host and operation on each resource.
    Create(Resources),
    /// Remove the ACLs that match (only the resources given: every ACL on
    /// them; with principals or operations, only those).
    Delete(Resources),
    /// List ACLs (all, or those of the resources given).
    List(Resources),
}

/// The resources and principals an ACL command names, as kafka-acls'.
#[derive(Args, Debug, Clone)]
pub(crate) struct Resources {
    #[command(flatten)]
    connection: Connection,
    /// A topic (repeatable; `*` for every topic).
    #[arg(long)]
    topic: Vec<String>,
    /// A consumer group (repeatable; `*` for every group).
    #[arg(long)]
    group: Vec<String>,
    /// The cluster (kafka-cluster).
    #[arg(long)]
    cluster: bool,
    /// A transactional id (repeatable).
    #[arg(long)]
    transactional_id: Vec<String>,
    /// literal or prefixed; to list or delete also any (exact name, any
    /// type) or match (every ACL that applies to the name).
    #[arg(long)]
    resource_pattern_type: Option<String>,
    /// Principals allowed, as Type:name (repeatable; User:* for all).
    #[arg(long)]
    allow_principal: Vec<String>,
    /// Principals denied, as Type:name (repeatable).
    #[arg(long)]
    deny_principal: Vec<String>,
    /// A principal whose ACLs to list, whether allowed or denied.
    #[arg(long)]
    principal: Vec<String>,
    /// Hosts (ips) the allow principals may connect from (default *).
    #[arg(long)]
    allow_host: Vec<String>,
    /// Hosts (ips) the deny principals are denied from (default *).
    #[arg(long)]
    deny_host: Vec<String>,
    /// Kafka's operations (repeatable): All, Read, Write, Create, Delete,
    /// Alter, Describe, ClusterAction, DescribeConfigs, AlterConfigs,
    /// IdempotentWrite.
    #[arg(long)]
    operation: Vec<String>,
}

/// A resource as kafka-acls names it: type and name.
fn resources(args: &Resources) -> Vec<(AclResourceType, String)> {
    let mut out: Vec<(AclResourceType, String)> = Vec::new();
    out.extend(args.topic.iter().map(|t| (AclResourceType::Topic, t.clone())));
    out.extend(args.group.iter().map(|g| (AclResourceType::Group, g.clone())));
    if args.cluster {
        out.push((AclResourceType::Cluster, CLUSTER_RESOURCE_NAME.to_string()));
    }
    out.extend(args.transactional_id.iter().map(|t| (AclResourceType::TransactionalId, t.clone())));
    out
}

fn operations(args: &Resources) -> anyhow::Result<Vec<AclOperation>> {
    args.operation
        .iter()
        .map(|name| {
            AclOperation::parse(name).with_context(|| {
                let names: Vec<String> = AclOperation::ALL_VALUES.iter().map(|op| format!("{op:?}")).collect();
                format!("operation {name:?}: expected one of {}", names.join(", "))
            })
        })
        .collect()
}

fn check_principal(principal: &str) -> anyhow::Result<()> {
    match principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(()),
        _ => bail!("principal {principal:?}: expected Type:name, for example User:alice"),
    }
}

/// (principal, host, permission) triples: each allow principal from each
/// allow host, each deny principal from each deny host.
fn grants(args: &Resources) -> anyhow::Result<Vec<(String, String, AclPermission)>> {
    let hosts = |given: &[String]| if given.is_empty() { vec![WILDCARD_HOST.to_string()] } else { given.to_vec() };
    let mut out = Vec::new();
    for (principals, given_hosts, permission) in [
        (&args.allow_principal, &args.allow_host, AclPermission::Allow),
        (&args.deny_principal, &args.deny_host, AclPermission::Deny),
    ] {
        for principal in principals {
            check_principal(principal)?;
            for host in hosts(given_hosts) {
                out.push((principal.clone(), host, permission));
            }
        }
    }
    Ok(out)
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

pub(crate) fn run(command: AclCommand, security: &SecurityArgs) -> anyhow::Result<()> {
    let with_security = |mut args: Resources| {
        args.connection.security = security.clone();
        args
    };
    match command {
        AclCommand::Create(args) => create(&with_security(args)),
        AclCommand::Delete(args) => delete(&with_security(args)),
        AclCommand::List(args) => list(&with_security(args)),
    }
}

fn create(args: &Resources) -> anyhow::Result<()> {
    let pattern = match args.resource_pattern_type.as_deref() {
        None => AclPatternType::Literal,
        Some(name) => AclPatternType::parse(name)
            .with_context(|| format!("--resource-pattern-type {name:?}: literal or prefixed to create"))?,
    };
    let resources = resources(args);
    let grants = grants(args)?;
    let operations = operations(args)?;
    if resources.is_empty() || grants.is_empty() || operations.is_empty() {
        bail!(
            "name a resource (--topic, --group, --cluster, --transactional-id), a principal (--allow-principal, --deny-principal) and an --operation"
        );
    }
    let mut creations = Vec::new();
    let mut rows = Vec::new();
    for (resource_type, name) in &resources {
        for (principal, host, permission) in &grants {
            for operation in &operations {
                creations.push(
                    AclCreation::default()
                        .with_resource_type(resource_type.kafka_code())
                        .with_resource_name(text(name))
                        .with_resource_pattern_type(pattern.kafka_code())
                        .with_principal(text(principal))
                        .with_host(text(host))
                        .with_operation(operation.kafka_code())
                        .with_permission_type(permission.kafka_code()),
                );
                rows.push(row(*resource_type, name, pattern, principal, host, *operation, *permission));
            }
        }
    }
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let response = admin.call(&CreateAclsRequest::default().with_creations(creations))?;
    let mut table = Table::new(&HEADERS_WITH_STATUS);
    let mut failed = 0;
    for (mut cells, result) in rows.into_iter().zip(&response.results) {
        if result.error_code == 0 {
            cells.push("OK".into());
        } else {
            failed += 1;
            let message = result.error_message.as_deref().unwrap_or("");
            cells.push(format!("{}: {message}", error_name(result.error_code)));
        }
        table.row(cells);
    }
    print(&table.render())?;
    if failed > 0 {
        bail!("{failed} of {} ACLs not created", response.results.len());
    }
    Ok(())
}

const HEADERS: [&str; 7] =
    ["RESOURCE-TYPE", "RESOURCE-NAME", "PATTERN-TYPE", "PRINCIPAL", "HOST", "OPERATION", "PERMISSION"];
const HEADERS_WITH_STATUS: [&str; 8] =
    ["RESOURCE-TYPE", "RESOURCE-NAME", "PATTERN-TYPE", "PRINCIPAL", "HOST", "OPERATION", "PERMISSION", "STATUS"];

fn row(
    resource_type: AclResourceType,
    name: &str,
    pattern: AclPatternType,
    principal: &str,
    host: &str,
    operation: AclOperation,
    permission: AclPermission,
) -> Vec<String> {
    vec![
        format!("{resource_type:?}"),
        name.to_string(),
        format!("{pattern:?}"),
        principal.to_string(),
        host.to_string(),
        format!("{operation:?}"),
        format!("{permission:?}"),
    ]
}

/// A filter's pattern type: Kafka's code (any and match included).
fn pattern_filter(args: &Resources, default: i8) -> anyhow::Result<i8> {
    match args.resource_pattern_type.as_deref() {
        None => Ok(default),
        Some(name) if name.eq_ignore_ascii_case("any") => Ok(KAFKA_CODE_ANY),
        Some(name) if name.eq_ignore_ascii_case("match") => Ok(KAFKA_CODE_MATCH),
        Some(name) => AclPatternType::parse(name)
            .map(AclPatternType::kafka_code)
            .with_context(|| format!("--resource-pattern-type {name:?}: literal, prefixed, any or match")),
    }
}

/// The filters a delete or list names: per resource (or any), per
/// principal and permission (or any), per operation (or any).
fn filters(args: &Resources, pattern_default: i8) -> anyhow::Result<Vec<DeleteAclsFilter>> {
    let pattern = pattern_filter(args, pattern_default)?;
    let mut resources: Vec<(i8, Option<String>)> =
        resources(args).into_iter().map(|(kind, name)| (kind.kafka_code(), Some(name))).collect();
    if resources.is_empty() {
        resources.push((KAFKA_CODE_ANY, None));
    }
    let mut principals: Vec<(Option<String>, Option<String>, i8)> = grants(args)?
        .into_iter()
        .map(|(principal, host, permission)| {
            // A host given is a filter; the default * names every host.
            let host = (host != WILDCARD_HOST).then_some(host);
            (Some(principal), host, permission.kafka_code())
        })
        .collect();
    for principal in &args.principal {
        check_principal(principal)?;
        principals.push((Some(principal.clone()), None, KAFKA_CODE_ANY));
    }
    if principals.is_empty() {
        principals.push((None, None, KAFKA_CODE_ANY));
    }
    let mut operations: Vec<i8> = operations(args)?.into_iter().map(AclOperation::kafka_code).collect();
    if operations.is_empty() {
        operations.push(KAFKA_CODE_ANY);
    }
    let mut out = Vec::new();
    for (resource_type, name) in &resources {
        for (principal, host, permission) in &principals {
            for operation in &operations {
                out.push(
                    DeleteAclsFilter::default()
                        .with_resource_type_filter(*resource_type)
                        .with_resource_name_filter(name.as_deref().map(text))
                        .with_pattern_type_filter(if name.is_some() { pattern } else { KAFKA_CODE_ANY })
                        .with_principal_filter(principal.as_deref().map(text))
                        .with_host_filter(host.as_deref().map(text))
                        .with_operation(*operation)
                        .with_permission_type(*permission),
                );
            }
        }
    }
    Ok(out)
}

/// A row from Kafka's codes (unknown values print as numbers).
fn row_of_codes(codes: (i8, &str, i8), principal: &str, host: &str, operation: i8, permission: i8) -> Vec<String> {
    let named = |name: Option<String>, code: i8| name.unwrap_or_else(|| code.to_string());
    vec![
        named(AclResourceType::from_kafka_code(codes.0).map(|v| format!("{v:?}")), codes.0),
        codes.1.to_string(),
        named(AclPatternType::from_kafka_code(codes.2).map(|v| format!("{v:?}")), codes.2),
        principal.to_string(),
        host.to_string(),
        named(AclOperation::from_kafka_code(operation).map(|v| format!("{v:?}")), operation),
        named(AclPermission::from_kafka_code(permission).map(|v| format!("{v:?}")), permission),
    ]
}

fn delete(args: &Resources) -> anyhow::Result<()> {
    if resources(args).is_empty() {
        bail!("name the resources whose ACLs to delete (--topic, --group, --cluster, --transactional-id)");
    }
    let filters = filters(args, AclPatternType::Literal.kafka_code())?;
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let response = admin.call(&DeleteAclsRequest::default().with_filters(filters))?;
    let mut table = Table::new(&HEADERS);
    for result in &response.filter_results {
        if result.error_code != 0 {
            let message = result.error_message.as_deref().unwrap_or("");
            bail!("deleting ACLs failed: {}: {message}", error_name(result.error_code));
        }
        for acl in &result.matching_acls {
            table.row(row_of_codes(
                (acl.resource_type, &acl.resource_name, acl.pattern_type),
                &acl.principal,
                &acl.host,
                acl.operation,
                acl.permission_type,
            ));
        }
    }
    print(&table.render())?;
    Ok(())
}

fn list(args: &Resources) -> anyhow::Result<()> {
    let filters = filters(args, KAFKA_CODE_ANY)?;
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let mut rows = Vec::new();
    for filter in filters {
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(filter.resource_type_filter)
            .with_resource_name_filter(filter.resource_name_filter)
            .with_pattern_type_filter(filter.pattern_type_filter)
            .with_principal_filter(filter.principal_filter)
            .with_host_filter(filter.host_filter)
            .with_operation(filter.operation)
            .with_permission_type(filter.permission_type);
        let response = admin.call(&request)?;
        if response.error_code != 0 {
            let message = response.error_message.as_deref().unwrap_or("");
            bail!("listing ACLs failed: {}: {message}", error_name(response.error_code));
        }
        for resource in &response.resources {
            for acl in &resource.acls {
                rows.push(row_of_codes(
                    (resource.resource_type, &resource.resource_name, resource.pattern_type),
                    &acl.principal,
                    &acl.host,
                    acl.operation,
                    acl.permission_type,
                ));
            }
        }
    }
    rows.sort();
    rows.dedup();
    let mut table = Table::new(&HEADERS);
    for row in rows {
        table.row(row);
    }
    print(&table.render())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(extra: &[&str]) -> Resources {
        #[derive(clap::Parser, Debug)]
        struct Wrapper {
            #[command(flatten)]
            resources: Resources,
        }
        let args = std::iter::once("acl").chain(extra.iter().copied());
        <Wrapper as clap::Parser>::try_parse_from(args).expect("valid flags").resources
    }

    /// kafka-acls' product: each principal, host and operation on each
    /// resource; delete and list filters stay open where nothing is named.
    #[test]
    fn flags_become_bindings_and_filters_as_kafka_acls_makes_them() {
        let args = parsed(&[
            "--allow-principal",
            "User:a",
            "--allow-principal",
            "User:b",
            "--deny-principal",
            "User:c",
            "--deny-host",
            "10.0.0.1",
            "--operation",
            "read",
            "--operation",
            "IDEMPOTENT_WRITE",
            "--topic",
            "t",
        ]);
        let made = grants(&args).expect("grants");
        assert_eq!(made.len(), 3);
        assert!(made.contains(&("User:c".into(), "10.0.0.1".into(), AclPermission::Deny)));
        assert_eq!(operations(&args).expect("ops"), [AclOperation::Read, AclOperation::IdempotentWrite]);
        assert_eq!(filters(&args, KAFKA_CODE_ANY).expect("filters").len(), 6);

        let everything = filters(&parsed(&[]), KAFKA_CODE_ANY).expect("filters");
        assert_eq!(everything.len(), 1);
        assert_eq!(everything[0].resource_name_filter, None);
        assert_eq!(everything[0].operation, KAFKA_CODE_ANY);
        let by_topic = filters(&parsed(&["--topic", "t", "--resource-pattern-type", "match"]), 3).expect("filters");
        assert_eq!(by_topic[0].pattern_type_filter, KAFKA_CODE_MATCH);
        assert!(grants(&parsed(&["--allow-principal", "alice"])).is_err(), "Type:name");
        assert!(operations(&parsed(&["--operation", "Fly"])).is_err());
    }
}
