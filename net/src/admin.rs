//! Catalog changes (CreateTopics, DeleteTopics, AlterConfigs), run on shard
//! 0 one at a time. Order of a create: persist the catalog, open the
//! partitions on their owners, then publish the new snapshot, so no request
//! sees a topic whose partitions are not open. A crash after the persist
//! reopens (and so creates) the partitions at the next start. Order of an
//! alter: persist, publish, then each owner applies the new config to its
//! open logs (a crash between persist and apply opens them with it).

use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use spate_engine::io::{DmaStorage, write_file_atomic};
use spate_flatbuf::proto::ErrorCode;

use crate::catalog::{CATALOG_FILE, Catalog, TopicMeta, new_topic_id};
use crate::limits::{PARTITIONS_PER_TOPIC_MAX, TOPICS_MAX};
use crate::shard::{Outcome, Shard, ShardOp, remove_dir_all_off_core};
use crate::topic_config;

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
}

/// One topic's part of an AlterConfigs request.
#[derive(Debug, Clone)]
pub(crate) struct AlterSpec {
    pub name: String,
    pub set: Vec<(String, String)>,
    pub delete: Vec<String>,
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
    if spec.replication_factor != 1 {
        return Err(Outcome::err(
            ErrorCode::InvalidReplicationFactor,
            format!("replication factor {}: this cluster has 1 broker", spec.replication_factor),
        ));
    }
    if catalog.topics.len() + seen.len() > TOPICS_MAX {
        return Err(Outcome::err(ErrorCode::InvalidRequest, format!("at most {TOPICS_MAX} topics")));
    }
    topic_config::validate(&spec.configs).map_err(|err| Outcome::err(ErrorCode::InvalidConfig, err.0))
}

async fn persist(shard: &Shard, catalog: &Catalog) -> Result<(), Outcome> {
    let path = shard.shared.config.data_dir.join(CATALOG_FILE);
    write_file_atomic(&DmaStorage, &path, &catalog.encode())
        .await
        .map_err(|err| Outcome::err(ErrorCode::StorageError, format!("writing {}: {err}", path.display())))
}

/// Sends one op per owning shard and waits for all of them.
async fn on_owners(
    shard: &Rc<Shard>,
    topic: &Arc<TopicMeta>,
    make: impl Fn(Arc<TopicMeta>, Vec<u32>, oneshot::Sender<Result<(), String>>) -> ShardOp,
) -> Result<(), String> {
    let mut by_owner: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for partition in 0..topic.partitions {
        by_owner.entry(shard.shared.owner(&topic.name, partition)).or_default().push(partition);
    }
    let mut waits = Vec::new();
    for (owner, partitions) in by_owner {
        let (tx, rx) = oneshot::channel();
        shard.submit(owner, make(topic.clone(), partitions, tx));
        waits.push(rx);
    }
    for wait in waits {
        wait.await.map_err(|_| "a shard stopped".to_string())??;
    }
    Ok(())
}

async fn create(
    shard: &Rc<Shard>,
    topics: Vec<Result<CreateSpec, (String, Outcome)>>,
    validate_only: bool,
) -> Vec<(String, Outcome)> {
    let current = shard.shared.catalog.load_full();
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    let mut accepted = Vec::new();
    for spec in topics {
        let spec = match spec {
            Ok(spec) => spec,
            Err(refused) => {
                results.push(refused);
                continue;
            }
        };
        match check(&spec, &current, &mut seen) {
            Err(outcome) => results.push((spec.name, outcome)),
            Ok(()) if validate_only => results.push((spec.name, Outcome::ok())),
            Ok(()) => accepted.push(Arc::new(TopicMeta {
                name: spec.name,
                topic_id: new_topic_id(),
                partitions: spec.partitions as u32,
                replication_factor: spec.replication_factor,
                configs: spec.configs,
            })),
        }
    }
    if accepted.is_empty() {
        return results;
    }
    let mut next = (*current).clone();
    for topic in &accepted {
        next.topics.insert(topic.name.clone(), topic.clone());
    }
    if let Err(outcome) = persist(shard, &next).await {
        results.extend(accepted.iter().map(|topic| (topic.name.clone(), outcome.clone())));
        return results;
    }
    for topic in &accepted {
        let opened =
            on_owners(shard, topic, |topic, partitions, reply| ShardOp::Open { topic, partitions, reply }).await;
        let outcome = match opened {
            Ok(()) => {
                tracing::info!(topic = %topic.name, partitions = topic.partitions, "topic created");
                Outcome::ok()
            }
            Err(err) => {
                tracing::error!(topic = %topic.name, "partitions did not open: {err}");
                Outcome::err(ErrorCode::StorageError, err)
            }
        };
        results.push((topic.name.clone(), outcome));
    }
    shard.shared.catalog.store(Arc::new(next));
    results
}

async fn delete(shard: &Rc<Shard>, names: Vec<String>) -> Vec<(String, Outcome)> {
    let current = shard.shared.catalog.load_full();
    let mut next = (*current).clone();
    let mut results = Vec::new();
    let mut doomed = Vec::new();
    for name in names {
        if spate_flatbuf::is_internal_topic(&name) {
            results.push((name.clone(), Outcome::err(ErrorCode::InternalTopic, format!("{name:?} is the broker's"))));
            continue;
        }
        match next.topics.remove(&name) {
            Some(topic) => doomed.push(topic),
            None => results
                .push((name.clone(), Outcome::err(ErrorCode::UnknownTopicOrPartition, format!("no topic {name:?}")))),
        }
    }
    if doomed.is_empty() {
        return results;
    }
    // Persist, then unpublish so no new request reaches the partitions,
    // then remove the files (an orphan left by a crash here is removed at
    // the next start).
    if let Err(outcome) = persist(shard, &next).await {
        results.extend(doomed.iter().map(|topic| (topic.name.clone(), outcome.clone())));
        return results;
    }
    shard.shared.catalog.store(Arc::new(next));
    for topic in doomed {
        let deleted =
            on_owners(shard, &topic, |topic, partitions, reply| ShardOp::Delete { topic, partitions, reply }).await;
        let deleted = match deleted {
            Ok(()) => remove_dir_all_off_core(topic.topic_dir(&shard.shared.config.data_dir)).await,
            Err(err) => Err(err),
        };
        let outcome = match deleted {
            Ok(()) => {
                tracing::info!(topic = %topic.name, "topic deleted");
                Outcome::ok()
            }
            Err(err) => Outcome::err(ErrorCode::StorageError, err),
        };
        results.push((topic.name.clone(), outcome));
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
    let mut next = (*current).clone();
    let mut seen = HashSet::new();
    let mut results = Vec::new();
    let mut changed = Vec::new();
    for spec in topics {
        match check_alter(&spec, &next, &mut seen) {
            Err(outcome) => results.push((spec.name, outcome)),
            Ok(_) if validate_only => results.push((spec.name, Outcome::ok())),
            Ok(topic) => {
                next.topics.insert(topic.name.clone(), topic.clone());
                changed.push(topic);
            }
        }
    }
    if changed.is_empty() {
        return results;
    }
    if let Err(outcome) = persist(shard, &next).await {
        results.extend(changed.iter().map(|topic| (topic.name.clone(), outcome.clone())));
        return results;
    }
    shard.shared.catalog.store(Arc::new(next));
    for topic in changed {
        let applied =
            on_owners(shard, &topic, |topic, partitions, reply| ShardOp::Reconfigure { topic, partitions, reply })
                .await;
        let outcome = match applied {
            Ok(()) => {
                tracing::info!(topic = %topic.name, configs = ?topic.configs, "topic configs changed");
                Outcome::ok()
            }
            Err(err) => {
                tracing::error!(topic = %topic.name, "configs stored but not applied to every open log: {err}");
                Outcome::err(ErrorCode::StorageError, err)
            }
        };
        results.push((topic.name.clone(), outcome));
    }
    results
}
