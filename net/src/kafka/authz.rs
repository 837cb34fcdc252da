//! Authorization of Kafka requests (design decision 11): each handler asks
//! before any shard operation runs, with Kafka's mapping of APIs to
//! operations and resources (KafkaApis), and answers a denial with Kafka's
//! codes. Answers come from the connection's cached decisions
//! (`security::acl::Decisions`). Every denial of a request logs one line
//! to the `spate::audit` target; listings that silently leave out what a
//! principal may not see do not (as Kafka's `logIfDenied = false`).

use kafka_protocol::ResponseError as K;
use spate_replication::acl::{AclOperation, AclResourceType, CLUSTER_RESOURCE_NAME};

use super::Ctx;

/// The code for a denied operation on a resource of `resource_type`.
pub(crate) fn denied_code(resource_type: AclResourceType) -> i16 {
    match resource_type {
        AclResourceType::Topic => K::TopicAuthorizationFailed.code(),
        AclResourceType::Group => K::GroupAuthorizationFailed.code(),
        AclResourceType::Cluster => K::ClusterAuthorizationFailed.code(),
        AclResourceType::TransactionalId => K::TransactionalIdAuthorizationFailed.code(),
    }
}

impl Ctx {
    /// Whether the request's principal may do `op` on the resource; a
    /// denial is audited.
    pub(crate) fn allowed(&self, op: AclOperation, resource_type: AclResourceType, name: &str) -> bool {
        let allowed = self.decide(op, resource_type, name);
        if !allowed {
            self.audit_denial(op, resource_type, name);
        }
        allowed
    }

    /// `allowed` without the audit line: for listings that leave out what
    /// the principal may not see.
    pub(crate) fn may_see(&self, op: AclOperation, resource_type: AclResourceType, name: &str) -> bool {
        self.decide(op, resource_type, name)
    }

    /// Whether the principal may do `op` on the cluster.
    pub(crate) fn allowed_on_cluster(&self, op: AclOperation) -> bool {
        self.allowed(op, AclResourceType::Cluster, CLUSTER_RESOURCE_NAME)
    }

    /// `allowed_on_cluster` without the audit line, for a check that has a
    /// fallback (Create on the cluster, else on the topic).
    pub(crate) fn may_on_cluster(&self, op: AclOperation) -> bool {
        self.decide(op, AclResourceType::Cluster, CLUSTER_RESOURCE_NAME)
    }

    /// Whether the principal may do `op` on some resource of a type
    /// (Kafka's authorizeByResourceType); a denial is audited.
    pub(crate) fn allowed_on_any(&self, op: AclOperation, resource_type: AclResourceType) -> bool {
        let catalog = self.shard.shared.catalog.load();
        let allowed = self.session.decisions.allowed_any(
            &catalog.authorizer,
            &self.shard.shared.config,
            &self.principal,
            &self.client_host,
            op,
            resource_type,
        );
        if !allowed {
            self.audit_denial(op, resource_type, "(any)");
        }
        allowed
    }

    fn decide(&self, op: AclOperation, resource_type: AclResourceType, name: &str) -> bool {
        let catalog = self.shard.shared.catalog.load();
        self.session.decisions.allowed(
            &catalog.authorizer,
            &self.shard.shared.config,
            &self.principal,
            &self.client_host,
            op,
            (resource_type, name),
        )
    }

    /// One audit line for one denied operation (Kafka's authorizer log:
    /// who, from where, what, on what, in which request).
    pub(crate) fn audit_denial(&self, op: AclOperation, resource_type: AclResourceType, name: &str) {
        tracing::info!(
            target: "spate::audit",
            principal = %self.principal,
            host = self.client_host.trim_start_matches('/'),
            operation = ?op,
            resource_type = ?resource_type,
            resource = name,
            api = ?self.api,
            "denied"
        );
    }
}
