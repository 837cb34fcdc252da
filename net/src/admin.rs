//! Catalog changes (CreateTopics, DeleteTopics, CreatePartitions,
//! AlterConfigs, ElectLeaders, AlterUserScramCredentials, AlterClientQuotas, CreateAcls,
//! DeleteAcls), run on shard
//! 0 one at a time: checked here, then committed by the controller (the
//! metadata log), then applied by every broker as it follows the log (this
//! one before it answers: its partitions are open, its configs applied).
//! A crash after the commit is repaired by the next start's reconcile.

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use spate_flatbuf::proto::ErrorCode;
use spate_replication::acl::{AclBinding, AclFilter};
use spate_replication::{ControllerError, ControllerRequest, ScramCredential, ScramMechanism};

use crate::catalog::{Catalog, TopicMeta};
use crate::limits::{PARTITIONS_PER_TOPIC_MAX, TOPICS_MAX};
use crate::shard::{Outcome, Shard};
use crate::topic_config;

/// One client quota entity and its changes: each key set to a rate
/// (decimal text) or removed.
pub(crate) type QuotaChange = (Vec<spate_replication::QuotaEntityPart>, Vec<(String, Option<String>)>);

/// The shard that runs catalog changes.
pub(crate) const ADMIN_SHARD: usize = 0;

#[derive(Debug, Clone)]
pub(crate) struct CreateSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug)]
pub(crate) enum AdminOp {
    Create {
        topics: Vec<Result<CreateSpec, (String, Outcome)>>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<(String, Outcome)>>,
    },
    Delete {
        names: Vec<String>,
        reply: oneshot::Sender<Vec<(String, Outcome)>>,
    },
    Alter {
        topics: Vec<AlterSpec>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<(String, Outcome)>>,
    },
    /// Kafka's ElectLeaders: preferred (or, `unclean`, any unfenced
    /// replica for leaderless partitions), one partition at a time; each
    /// answer is the controller's own (its election errors have no
    /// native `ErrorCode`).
    ElectLeaders {
        partitions: Vec<(String, u32)>,
        unclean: bool,
        reply: oneshot::Sender<Vec<Result<(), ControllerError>>>,
    },
    /// Kafka's AlterClientQuotas: each entity's changes, one controller
    /// decision each, answered in order.
    AlterClientQuotas {
        entries: Vec<QuotaChange>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<Result<(), ControllerError>>>,
    },
    /// Kafka's AlterUserScramCredentials: each user's alteration through
    /// the controller, one user at a time; each answer is the controller's
    /// own (its credential errors have no native `ErrorCode`).
    AlterScramCredentials {
        users: Vec<ScramAlteration>,
        reply: oneshot::Sender<Vec<Result<(), ControllerError>>>,
    },
    /// Kafka's CreateAcls: the bindings join the ACL set, all or none.
    CreateAcls {
        acls: Vec<AclBinding>,
        reply: oneshot::Sender<Result<(), ControllerError>>,
    },
    /// Kafka's DeleteAcls: per filter, the bindings it matched (and
    /// removed), as the image had them just before the deletion.
    DeleteAcls {
        filters: Vec<AclFilter>,
        reply: oneshot::Sender<Result<Vec<Vec<AclBinding>>, ControllerError>>,
    },
    /// Grow topics to a partition count each (name, count).
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<(String, Outcome)>>,
    },
}

/// One user's credential changes: keys already derived (no password).
#[derive(Debug, Clone)]
pub(crate) struct ScramAlteration {
    pub user: String,
    pub upsertions: Vec<(ScramMechanism, ScramCredential)>,
    pub deletions: Vec<ScramMechanism>,
}

/// One topic's part of an AlterConfigs request.
#[derive(Debug, Clone)]
pub(crate) struct AlterSpec {
    pub name: String,
    pub set: Vec<(String, String)>,
    pub delete: Vec<String>,
}

/// Per topic name, what an admin operation did.
pub(crate) type TopicResults = Vec<(String, Outcome)>;

/// Sends an admin operation for topics `names` to the admin shard (from
/// any front-end) and answers with its results; if the shard stops, or
/// nothing comes back within `timeout`, every name gets that outcome
/// instead (a timed-out operation may still complete).
pub(crate) fn run(
    shard: &Rc<Shard>,
    names: Vec<String>,
    timeout: std::time::Duration,
    make: impl FnOnce(oneshot::Sender<TopicResults>) -> AdminOp,
) -> impl std::future::Future<Output = TopicResults> + 'static {
    let (reply, wait) = oneshot::channel();
    shard.submit(ADMIN_SHARD, crate::shard::ShardOp::Admin(make(reply)));
    async move {
        futures::select! {
            results = futures::FutureExt::fuse(wait) => results.unwrap_or_else(|_| {
                names.iter().map(|n| (n.clone(), Outcome::err(ErrorCode::BrokerShuttingDown, "admin shard stopped"))).collect()
            }),
            () = futures::FutureExt::fuse(crate::deadline::Deadline::after(timeout)) => names
                .iter()
                .map(|n| (n.clone(), Outcome::err(ErrorCode::RequestTimedOut, "not finished in time; it may still complete")))
                .collect(),
        }
    }
}

pub(crate) fn execute(shard: Rc<Shard>, op: AdminOp) {
    assert_eq!(shard.id, ADMIN_SHARD, "catalog changes run on the admin shard only");
    glommio::spawn_local(async move {
        // The lock is never closed, so acquiring cannot fail.
        let _permit = shard.admin_lock.acquire_permit(1).await;
        match op {
            AdminOp::Create { topics, validate_only, reply } => {
                let _ = reply.send(create(&shard, topics, validate_only).await);
            }
            AdminOp::Delete { names, reply } => {
                let _ = reply.send(delete(&shard, names).await);
            }
            AdminOp::Alter { topics, validate_only, reply } => {
                let _ = reply.send(alter(&shard, topics, validate_only).await);
            }
            AdminOp::ElectLeaders { partitions, unclean, reply } => {
                let mut results = Vec::with_capacity(partitions.len());
                for (topic, partition) in partitions {
                    let request = ControllerRequest::ElectLeader { topic: topic.clone(), partition, unclean };
                    let result = through_controller_result(&shard, request).await;
                    if result.is_ok() {
                        tracing::info!(%topic, partition, unclean, "leader elected on request");
                    }
                    results.push(result);
                }
                let _ = reply.send(results);
            }
            AdminOp::AlterClientQuotas { entries, validate_only, reply } => {
                let mut results = Vec::with_capacity(entries.len());
                for (entity, changes) in entries {
                    let result = if validate_only {
                        let image = shard.shared.controller().image();
                        spate_replication::controller::alter_client_quotas(&image, &entity, &changes).map(drop)
                    } else {
                        let request =
                            ControllerRequest::AlterClientQuotas { entity: entity.clone(), changes: changes.clone() };
                        through_controller_result(&shard, request).await
                    };
                    if result.is_ok() && !validate_only {
                        tracing::info!(?entity, ?changes, "client quotas changed");
                    }
                    results.push(result);
                }
                let _ = reply.send(results);
            }
            AdminOp::AlterScramCredentials { users, reply } => {
                let mut results = Vec::with_capacity(users.len());
                for alteration in users {
                    let user = alteration.user.clone();
                    let (upserted, deleted) = (alteration.upsertions.len(), alteration.deletions.len());
                    let request = ControllerRequest::AlterScramCredentials {
                        user: alteration.user,
                        upsertions: alteration.upsertions,
                        deletions: alteration.deletions,
                    };
                    let result = through_controller_result(&shard, request).await;
                    if result.is_ok() {
                        tracing::info!(%user, upserted, deleted, "SCRAM credentials altered");
                    }
                    results.push(result);
                }
                let _ = reply.send(results);
            }
            AdminOp::CreatePartitions { topics, validate_only, reply } => {
                let _ = reply.send(create_partitions(&shard, topics, validate_only).await);
            }
            AdminOp::CreateAcls { acls, reply } => {
                let count = acls.len();
                let result = through_controller_result(&shard, ControllerRequest::CreateAcls { acls }).await;
                if result.is_ok() {
                    tracing::info!(acls = count, "ACLs created");
                }
                let _ = reply.send(result);
            }
            AdminOp::DeleteAcls { filters, reply } => {
                // Catalog changes run one at a time here, so what the filters
                // match now is what the deletion removes (an ACL created
                // meanwhile came through here too).
                let image = shard.shared.controller().image();
                let matched: Vec<Vec<AclBinding>> = filters
                    .iter()
                    .map(|filter| image.acls.iter().filter(|acl| filter.matches(acl)).cloned().collect())
                    .collect();
                let result = if matched.iter().all(Vec::is_empty) {
                    Ok(())
                } else {
                    through_controller_result(&shard, ControllerRequest::DeleteAcls { filters }).await
                };
                if result.is_ok() {
                    tracing::info!(acls = matched.iter().map(Vec::len).sum::<usize>(), "ACLs deleted");
                }
                let _ = reply.send(result.map(|()| matched));
            }
        }
    })
    .detach();
}

fn check(spec: &CreateSpec, catalog: &Catalog, seen: &mut HashSet<String>) -> Result<(), Outcome> {
    if let Err(err) = spate_flatbuf::validate_topic_name(&spec.name) {
        return Err(Outcome::err(ErrorCode::InvalidTopic, err.to_string()));
    }
    if spate_flatbuf::is_internal_topic(&spec.name) {
        return Err(Outcome::err(
            ErrorCode::InternalTopic,
            format!("{:?}: names starting with __ are the broker's", spec.name),
        ));
    }
    if catalog.topics.contains_key(&spec.name) || !seen.insert(spec.name.clone()) {
        return Err(Outcome::err(ErrorCode::TopicAlreadyExists, format!("topic {:?} exists", spec.name)));
    }
    if spec.partitions < 1 || spec.partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(Outcome::err(
            ErrorCode::InvalidPartitions,
            format!("{} partitions: expected 1 to {PARTITIONS_PER_TOPIC_MAX}", spec.partitions),
        ));
    }
    let brokers = catalog.brokers.values().filter(|broker| !broker.fenced).count();
    if spec.replication_factor < 1 || spec.replication_factor as usize > brokers.max(1) {
        return Err(Outcome::err(
            ErrorCode::InvalidReplicationFactor,
            format!("replication factor {}: this cluster has {brokers} live brokers", spec.replication_factor),
        ));
    }
    if catalog.topics.len() + seen.len() > TOPICS_MAX {
        return Err(Outcome::err(ErrorCode::InvalidRequest, format!("at most {TOPICS_MAX} topics")));
    }
    topic_config::validate(&spec.configs).map_err(|err| Outcome::err(ErrorCode::InvalidConfig, err.0))
}

/// A controller refusal as the client sees it.
fn controller_outcome(err: &ControllerError) -> Outcome {
    let code = match err {
        ControllerError::TopicAlreadyExists => ErrorCode::TopicAlreadyExists,
        ControllerError::UnknownTopicOrPartition => ErrorCode::UnknownTopicOrPartition,
        ControllerError::InvalidReplicationFactor(_) => ErrorCode::InvalidReplicationFactor,
        ControllerError::InvalidPartitions => ErrorCode::InvalidPartitions,
        ControllerError::InvalidRequest(_)
        | ControllerError::UnacceptableCredential(_)
        | ControllerError::ResourceNotFound(_) => ErrorCode::InvalidRequest,
        ControllerError::NotController => ErrorCode::NotController,
        ControllerError::Shutdown => ErrorCode::BrokerShuttingDown,
        ControllerError::Storage(_) => ErrorCode::StorageError,
        ControllerError::FencedLeaderEpoch | ControllerError::InvalidUpdateVersion | ControllerError::NotLeader => {
            ErrorCode::Unknown
        }
        // Only ElectLeaders gets these, and it answers in Kafka's codes.
        ControllerError::ElectionNotNeeded
        | ControllerError::PreferredLeaderNotAvailable
        | ControllerError::EligibleLeadersNotAvailable => ErrorCode::LeaderNotAvailable,
    };
    Outcome::err(code, err.to_string())
}

/// Sends a change to the controller; once it is committed and applied
/// here, publishes the new catalog and has every shard of this broker
/// reconcile (so what this broker hosts is open when the answer goes).
async fn through_controller(shard: &Rc<Shard>, request: ControllerRequest) -> Outcome {
    match through_controller_result(shard, request).await {
        Ok(()) => Outcome::ok(),
        Err(err) => controller_outcome(&err),
    }
}

/// `through_controller`, with the controller's own error.
async fn through_controller_result(shard: &Rc<Shard>, request: ControllerRequest) -> Result<(), ControllerError> {
    let result = shard.shared.controller().request(request).await;
    let catalog = Arc::new(Catalog::from_image_after(&shard.shared.controller().image(), &shard.shared.catalog.load()));
    shard.shared.catalog.store(catalog.clone());
    crate::shard::apply_everywhere(shard, &catalog).await;
    result.map(|_| ())
}

async fn create(
    shard: &Rc<Shard>,
    topics: Vec<Result<CreateSpec, (String, Outcome)>>,
    validate_only: bool,
) -> Vec<(String, Outcome)> {
    let current = shard.shared.catalog.load_full();
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for spec in topics {
        let spec = match spec {
            Ok(spec) => spec,
            Err(refused) => {
                results.push(refused);
                continue;
            }
        };
        let outcome = match check(&spec, &current, &mut seen) {
            Err(outcome) => outcome,
            Ok(()) if validate_only => Outcome::ok(),
            Ok(()) => {
                let request = ControllerRequest::CreateTopic {
                    name: spec.name.clone(),
                    partitions: spec.partitions as u32,
                    replication_factor: spec.replication_factor as u16,
                    configs: spec.configs,
                };
                let outcome = through_controller(shard, request).await;
                if outcome.error == ErrorCode::None {
                    tracing::info!(topic = %spec.name, partitions = spec.partitions, rf = spec.replication_factor, "topic created");
                }
                outcome
            }
        };
        results.push((spec.name, outcome));
    }
    results
}

async fn delete(shard: &Rc<Shard>, names: Vec<String>) -> Vec<(String, Outcome)> {
    let mut results = Vec::new();
    for name in names {
        if spate_flatbuf::is_internal_topic(&name) {
            results.push((name.clone(), Outcome::err(ErrorCode::InternalTopic, format!("{name:?} is the broker's"))));
            continue;
        }
        if !shard.shared.catalog.load().topics.contains_key(&name) {
            results
                .push((name.clone(), Outcome::err(ErrorCode::UnknownTopicOrPartition, format!("no topic {name:?}"))));
            continue;
        }
        // Every broker deletes its replicas' files when it applies the
        // record (a crash in between: the next start's reconcile does it).
        let outcome = through_controller(shard, ControllerRequest::DeleteTopic { name: name.clone() }).await;
        if outcome.error == ErrorCode::None {
            tracing::info!(topic = %name, "topic deleted");
        }
        results.push((name, outcome));
    }
    results
}

/// Checks one topic's alteration against the catalog being built.
fn check_alter(spec: &AlterSpec, catalog: &Catalog, seen: &mut HashSet<String>) -> Result<Arc<TopicMeta>, Outcome> {
    if spate_flatbuf::is_internal_topic(&spec.name) {
        return Err(Outcome::err(ErrorCode::InternalTopic, format!("{:?} is configured by the broker", spec.name)));
    }
    if !seen.insert(spec.name.clone()) {
        return Err(Outcome::err(ErrorCode::InvalidRequest, format!("topic {:?} named twice", spec.name)));
    }
    let Some(topic) = catalog.topics.get(&spec.name) else {
        return Err(Outcome::err(ErrorCode::UnknownTopicOrPartition, format!("no topic {:?}", spec.name)));
    };
    let configs = topic_config::altered(&topic.configs, &spec.set, &spec.delete)
        .map_err(|err| Outcome::err(ErrorCode::InvalidConfig, err.0))?;
    Ok(Arc::new(TopicMeta { configs, ..(**topic).clone() }))
}

async fn alter(shard: &Rc<Shard>, topics: Vec<AlterSpec>, validate_only: bool) -> Vec<(String, Outcome)> {
    let current = shard.shared.catalog.load_full();
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for spec in topics {
        let outcome = match check_alter(&spec, &current, &mut seen) {
            Err(outcome) => outcome,
            Ok(_) if validate_only => Outcome::ok(),
            Ok(topic) => {
                let request =
                    ControllerRequest::AlterTopicConfigs { name: topic.name.clone(), configs: topic.configs.clone() };
                let outcome = through_controller(shard, request).await;
                if outcome.error == ErrorCode::None {
                    tracing::info!(topic = %topic.name, configs = ?topic.configs, "topic configs changed");
                }
                outcome
            }
        };
        results.push((spec.name, outcome));
    }
    results
}

/// Checks one topic's new partition count against the catalog.
fn check_create_partitions(
    name: &str,
    count: i32,
    catalog: &Catalog,
    seen: &mut HashSet<String>,
) -> Result<(), Outcome> {
    if spate_flatbuf::is_internal_topic(name) {
        return Err(Outcome::err(ErrorCode::InternalTopic, format!("{name:?} is the broker's")));
    }
    if !seen.insert(name.to_string()) {
        return Err(Outcome::err(ErrorCode::InvalidRequest, format!("topic {name:?} named twice")));
    }
    let Some(topic) = catalog.topics.get(name) else {
        return Err(Outcome::err(ErrorCode::UnknownTopicOrPartition, format!("no topic {name:?}")));
    };
    // Partitions are only added: removing one would lose its records and
    // move keys to other partitions (Kafka refuses the same way).
    if count <= topic.partitions as i32 {
        return Err(Outcome::err(
            ErrorCode::InvalidPartitions,
            format!("topic {name:?} has {} partitions; only more can be asked for, not {count}", topic.partitions),
        ));
    }
    if count > PARTITIONS_PER_TOPIC_MAX {
        return Err(Outcome::err(
            ErrorCode::InvalidPartitions,
            format!("{count} partitions: at most {PARTITIONS_PER_TOPIC_MAX}"),
        ));
    }
    let brokers = catalog.brokers.values().filter(|broker| !broker.fenced).count();
    if topic.replication_factor as usize > brokers.max(1) {
        return Err(Outcome::err(
            ErrorCode::InvalidReplicationFactor,
            format!("replication factor {}: this cluster has {brokers} live brokers", topic.replication_factor),
        ));
    }
    Ok(())
}

async fn create_partitions(
    shard: &Rc<Shard>,
    topics: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<(String, Outcome)> {
    let current = shard.shared.catalog.load_full();
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    for (name, count) in topics {
        let outcome = match check_create_partitions(&name, count, &current, &mut seen) {
            Err(outcome) => outcome,
            Ok(()) if validate_only => Outcome::ok(),
            Ok(()) => {
                let request = ControllerRequest::CreatePartitions { name: name.clone(), count: count as u32 };
                let outcome = through_controller(shard, request).await;
                if outcome.error == ErrorCode::None {
                    tracing::info!(topic = %name, partitions = count, "partitions added");
                }
                outcome
            }
        };
        results.push((name, outcome));
    }
    results
}
