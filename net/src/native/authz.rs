//! Authorization of native requests (design decision 11), with the ACLs
//! and Kafka's mapping of operations the Kafka front-end uses
//! (`kafka/authz.rs`).
//!
//! The native protocol has no authentication yet, so its clients are
//! `User:ANONYMOUS`, as clients of a Kafka PLAINTEXT listener are: on a
//! broker with no authentication anywhere `allow.everyone.if.no.acl.found`
//! defaults to true and everything is served as before; once a listener
//! authenticates, it defaults to false and the native ports serve only what
//! ACLs grant `User:ANONYMOUS`, instead of everything to everyone. A
//! connection that proved it is a broker (`broker_auth`) is Kafka's
//! inter-broker principal: a super user.
//!
//! A request is checked whole before any of it runs: one resource denied
//! and the request is answered with the denial's code (the native client
//! reports it as the request's error), nothing done. Listings (Metadata of
//! all topics, ListGroups) leave out what the principal may not Describe.
//! Every denial logs one line to the `spate::audit` target.

use std::rc::Rc;

use spate_flatbuf::Frame;
use spate_flatbuf::proto::*;
use spate_replication::acl::{AclOperation, AclResourceType, CLUSTER_RESOURCE_NAME};

use super::Session;
use crate::security::Principal;
use crate::security::acl::Decisions;
use crate::shard::Shard;
use crate::wire::envelope;

/// A denied request: its code and what to tell the client.
#[derive(Debug)]
pub(super) struct Denied {
    pub error: ErrorCode,
    pub message: String,
}

/// Whether the session may do `op` on the resource (no audit line: for
/// listings that leave out what it may not see).
pub(super) fn may(shard: &Shard, session: &Session, op: AclOperation, resource: (AclResourceType, &str)) -> bool {
    session.asker().may(shard, op, resource)
}

/// What a decision needs of a session, owned: for an answer that is
/// awaited (ListGroups filters what its shards answer).
#[derive(Debug, Clone)]
pub(super) struct Asker {
    broker: i32,
    principal: Rc<Principal>,
    host: Rc<str>,
    decisions: Rc<Decisions>,
}

impl Asker {
    pub fn may(&self, shard: &Shard, op: AclOperation, resource: (AclResourceType, &str)) -> bool {
        if self.broker >= 0 {
            return true;
        }
        let catalog = shard.shared.catalog.load();
        self.decisions.allowed(&catalog.authorizer, &shard.shared.config, &self.principal, &self.host, op, resource)
    }
}

impl Session {
    pub(super) fn asker(&self) -> Asker {
        Asker {
            broker: self.broker.get(),
            principal: self.principal.borrow().clone(),
            host: self.host.clone(),
            decisions: self.decisions.clone(),
        }
    }
}

/// Checks every resource `frame`'s request touches; the first denial.
/// Metadata and ListGroups filter instead; the handshake is open.
pub(super) fn check(shard: &Shard, session: &Session, body_type: Body, frame: &Frame) -> Result<(), Denied> {
    use AclOperation::*;
    use AclResourceType::{Cluster, Group, Topic, TransactionalId};
    let Some(request) = envelope(frame) else { return Ok(()) };
    let mut asks: Vec<(AclOperation, AclResourceType, &str)> = Vec::new();
    fn topics<'a>(
        asks: &mut Vec<(AclOperation, AclResourceType, &'a str)>,
        op: AclOperation,
        names: impl Iterator<Item = &'a str>,
    ) {
        asks.extend(names.map(|name| (op, AclResourceType::Topic, name)));
    }
    match body_type {
        Body::ProduceRequest => {
            if let Some(body) = request.body_as_produce_request() {
                // Kafka: a transactional producer needs Write on its id.
                if let Some(txn_id) = body.transactional_id() {
                    asks.push((Write, TransactionalId, txn_id));
                }
                topics(&mut asks, Write, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::FetchRequest => {
            // A replica fetch needs a proven broker, which the fetch itself
            // checks (`ClusterAuthorizationFailed`).
            if let Some(body) = request.body_as_fetch_request().filter(|body| body.replica_id() < 0) {
                topics(&mut asks, Read, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::CreateTopicsRequest => {
            // Kafka: Create on the cluster, else on each topic.
            if !may(shard, session, Create, (Cluster, CLUSTER_RESOURCE_NAME))
                && let Some(body) = request.body_as_create_topics_request()
            {
                topics(&mut asks, Create, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::DeleteTopicsRequest => {
            if let Some(body) = request.body_as_delete_topics_request() {
                topics(&mut asks, Delete, body.names().iter().flatten());
            }
        }
        Body::DescribeTopicsRequest => {
            if let Some(body) = request.body_as_describe_topics_request() {
                topics(&mut asks, Describe, body.names().iter().flatten());
                topics(&mut asks, DescribeConfigs, body.names().iter().flatten());
            }
        }
        Body::AlterConfigsRequest => {
            if let Some(body) = request.body_as_alter_configs_request() {
                topics(&mut asks, AlterConfigs, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::ListOffsetsRequest => {
            if let Some(body) = request.body_as_list_offsets_request() {
                topics(&mut asks, Describe, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::OffsetForLeaderEpochRequest => {
            if let Some(body) = request.body_as_offset_for_leader_epoch_request() {
                topics(&mut asks, Describe, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::ConsumerGroupHeartbeatRequest => {
            // KIP-848: Read on the group, Describe on what it subscribes to.
            if let Some(body) = request.body_as_consumer_group_heartbeat_request() {
                asks.push((Read, Group, body.group_id().unwrap_or_default()));
                topics(&mut asks, Describe, body.subscribed_topics().iter().flatten());
            }
        }
        Body::OffsetCommitRequest => {
            if let Some(body) = request.body_as_offset_commit_request() {
                asks.push((Read, Group, body.group_id().unwrap_or_default()));
                topics(&mut asks, Read, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::OffsetFetchRequest => {
            if let Some(body) = request.body_as_offset_fetch_request() {
                asks.push((Describe, Group, body.group_id().unwrap_or_default()));
                topics(&mut asks, Describe, body.topics().iter().flatten().filter_map(|t| t.topic()));
            }
        }
        Body::DescribeGroupsRequest => {
            if let Some(body) = request.body_as_describe_groups_request() {
                asks.extend(body.groups().iter().flatten().map(|group| (Describe, Group, group)));
            }
        }
        Body::DeleteGroupsRequest => {
            if let Some(body) = request.body_as_delete_groups_request() {
                asks.extend(body.groups().iter().flatten().map(|group| (Delete, Group, group)));
            }
        }
        Body::InitProducerIdRequest
            if let Some(txn_id) = request.body_as_init_producer_id_request().and_then(|b| b.transactional_id()) =>
        {
            asks.push((Write, TransactionalId, txn_id));
        }
        // Kafka's rules for the transaction APIs: Write on the
        // transactional id; the partitions' topics Write; a group's
        // offsets Read on the group (and on each topic when committed).
        Body::AddPartitionsToTxnRequest => {
            if let Some(body) = request.body_as_add_partitions_to_txn_request() {
                asks.push((Write, TransactionalId, body.transactional_id().unwrap_or_default()));
                topics(&mut asks, Write, body.topics().iter().flatten().filter_map(|t| t.topic()));
            }
        }
        Body::AddOffsetsToTxnRequest => {
            if let Some(body) = request.body_as_add_offsets_to_txn_request() {
                asks.push((Write, TransactionalId, body.transactional_id().unwrap_or_default()));
                asks.push((Read, Group, body.group_id().unwrap_or_default()));
            }
        }
        Body::TxnOffsetCommitRequest => {
            if let Some(body) = request.body_as_txn_offset_commit_request() {
                asks.push((Write, TransactionalId, body.transactional_id().unwrap_or_default()));
                asks.push((Read, Group, body.group_id().unwrap_or_default()));
                topics(&mut asks, Read, body.topics().iter().flatten().filter_map(|t| t.name()));
            }
        }
        Body::EndTxnRequest => {
            if let Some(body) = request.body_as_end_txn_request() {
                asks.push((Write, TransactionalId, body.transactional_id().unwrap_or_default()));
            }
        }
        Body::InitProducerIdRequest => {
            // Kafka 2.8+ (KIP-679): IdempotentWrite on the cluster, or
            // Write on some topic.
            let catalog = shard.shared.catalog.load();
            let allowed = session.broker.get() >= 0
                || may(shard, session, IdempotentWrite, (Cluster, CLUSTER_RESOURCE_NAME))
                || session.decisions.allowed_any(
                    &catalog.authorizer,
                    &shard.shared.config,
                    &session.principal.borrow(),
                    &session.host,
                    Write,
                    Topic,
                );
            if !allowed {
                return Err(denied(session, body_type, IdempotentWrite, Cluster, CLUSTER_RESOURCE_NAME));
            }
        }
        _ => {}
    }
    for (op, resource_type, name) in asks {
        if !may(shard, session, op, (resource_type, name)) {
            return Err(denied(session, body_type, op, resource_type, name));
        }
    }
    Ok(())
}

/// The denial's answer, and its audit line (Kafka's authorizer log: who,
/// from where, what, on what, in which request).
fn denied(session: &Session, body_type: Body, op: AclOperation, resource_type: AclResourceType, name: &str) -> Denied {
    let api = spate_flatbuf::api_name(body_type);
    tracing::info!(
        target: "spate::audit",
        principal = %session.principal.borrow(),
        host = %session.host,
        operation = ?op,
        resource_type = ?resource_type,
        resource = name,
        api,
        "denied"
    );
    let error = match resource_type {
        AclResourceType::Topic => ErrorCode::TopicAuthorizationFailed,
        AclResourceType::Group => ErrorCode::GroupAuthorizationFailed,
        AclResourceType::TransactionalId => ErrorCode::TransactionalIdAuthorizationFailed,
        AclResourceType::Cluster => ErrorCode::ClusterAuthorizationFailed,
    };
    let message = format!(
        "{} may not {op:?} {resource_type:?} {name:?} (ACLs; a native connection that did not authenticate is User:ANONYMOUS)",
        session.principal.borrow()
    );
    Denied { error, message }
}
