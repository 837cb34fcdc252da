//! The active controller's decisions: pure functions over an image that
//! return the records to propose. They run only on the Raft leader, against
//! its image of everything it has proposed so far, so two requests in flight
//! never decide on the same stale state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::acl::{AclBinding, AclFilter};
use crate::limits::{
    ACL_FIELD_BYTES_MAX, ACLS_MAX, MAX_PARTITIONS_PER_TOPIC, MAX_PRODUCER_ID_BLOCK, MAX_TOPIC_NAME_LEN,
    SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN, SCRAM_SALT_BYTES_MAX, SCRAM_USER_NAME_BYTES_MAX, SCRAM_USERS_MAX,
};
use crate::metadata::{MetadataImage, MetadataRecord, PartitionImage, ScramCredential, ScramMechanism, TopicImage};

/// Where a broker serves clients and its controller peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEndpoints {
    pub host: String,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    pub controller_port: u16,
    /// The first Kafka listener's advertised address (port 0: none).
    pub kafka_host: String,
    pub kafka_port: u16,
    /// Every Kafka listener's, by name.
    pub kafka_listeners: Vec<crate::metadata::KafkaEndpoint>,
}

/// A request to the active controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerRequest {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grow a topic to `count` partitions (Kafka's CreatePartitions); a
    /// count at or below the current one is refused.
    CreatePartitions {
        name: String,
        count: u32,
    },
    /// Kafka's ElectLeaders for one partition: the preferred replica (the
    /// first) takes the leadership if it is in the ISR and unfenced; or,
    /// `unclean`, a partition without a leader gets one even from outside
    /// the ISR and ELR, whatever the topic's unclean election config.
    ElectLeader {
        topic: String,
        partition: u32,
        unclean: bool,
    },
    /// Full replacement of the topic's configs.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Kafka's AlterClientQuotas for one entity: each key set to a value
    /// (a rate, as decimal text) or (None) removed.
    AlterClientQuotas {
        entity: Vec<crate::metadata::QuotaEntityPart>,
        changes: Vec<(String, Option<String>)>,
    },
    /// Sent by a partition's leader to grow or shrink its ISR.
    AlterPartition {
        topic: String,
        partition: u32,
        from_node: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: Vec<i32>,
    },
    AllocateProducerIds {
        count: i64,
    },
    /// Sent by a broker whose replica of a partition cannot serve (its log
    /// failed to open: damaged or unreadable files). The replica is the
    /// sender's own (the request's origin), never another broker's.
    ReplicaOffline {
        topic: String,
        partition: u32,
    },
    /// Kafka's AlterUserScramCredentials for one user: its credentials for
    /// `upsertions`' mechanisms set, for `deletions`' removed, together (one
    /// entry). The broker derived the keys; no password travels here.
    AlterScramCredentials {
        user: String,
        upsertions: Vec<(ScramMechanism, ScramCredential)>,
        deletions: Vec<ScramMechanism>,
    },
    /// Kafka's CreateAcls: add the bindings to the ACL set.
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Kafka's DeleteAcls: remove every binding a filter matches.
    DeleteAcls {
        filters: Vec<AclFilter>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerResponse {
    Done,
    /// The partition after an AlterPartition.
    Partition(PartitionImage),
    ProducerIds {
        start: i64,
        len: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControllerError {
    #[error("topic already exists")]
    TopicAlreadyExists,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("invalid number of partitions")]
    InvalidPartitions,
    #[error("fenced leader epoch")]
    FencedLeaderEpoch,
    #[error("invalid update version (stale partition epoch)")]
    InvalidUpdateVersion,
    #[error("not the partition leader")]
    NotLeader,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("no active controller answered in time")]
    NotController,
    #[error("the controller is shut down")]
    Shutdown,
    #[error("metadata storage error: {0}")]
    Storage(String),
    #[error("the partition already has the leader asked for")]
    ElectionNotNeeded,
    #[error("the preferred replica is fenced or out of the ISR")]
    PreferredLeaderNotAvailable,
    #[error("no unfenced replica may lead the partition")]
    EligibleLeadersNotAvailable,
    /// Kafka's UNACCEPTABLE_CREDENTIAL.
    #[error("unacceptable credential: {0}")]
    UnacceptableCredential(String),
    /// Kafka's RESOURCE_NOT_FOUND (a credential to delete does not exist).
    #[error("{0}")]
    ResourceNotFound(String),
}

/// Applies each record to a scratch image as it is produced, so that later
/// decisions in the same batch see earlier ones.
struct Batch {
    image: MetadataImage,
    records: Vec<MetadataRecord>,
}

impl Batch {
    fn new(image: &MetadataImage) -> Batch {
        Batch { image: image.clone(), records: Vec::new() }
    }

    fn push(&mut self, record: MetadataRecord) {
        self.image.apply(&record);
        self.records.push(record);
    }
}

/// A stable hash (FNV-1a) of a topic name: where its assignment starts, so
/// that leaders of different topics spread across brokers. Stable across
/// processes and versions, unlike std's hasher.
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Kafka's rule for topic names: 1..=249 of `[a-zA-Z0-9._-]`, not `.`/`..`.
fn validate_topic_name(name: &str) -> Result<(), ControllerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(ControllerError::InvalidRequest(format!("invalid topic name {name:?}"))) }
}

/// Replica j of partition p = brokers[(start + p + j) % n] over the unfenced
/// brokers sorted by id: every broker gets the same number of replicas and
/// of leaders (± 1).
pub fn assign_replicas(brokers: &[i32], partitions: u32, rf: u16, start: usize) -> Vec<Vec<i32>> {
    let n = brokers.len();
    (0..partitions as usize).map(|p| (0..rf as usize).map(|j| brokers[(start + p + j) % n]).collect()).collect()
}

pub fn create_topic(
    image: &MetadataImage,
    name: &str,
    partitions: u32,
    replication_factor: u16,
    configs: &BTreeMap<String, String>,
    topic_id: String,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    validate_topic_name(name)?;
    if image.topics.contains_key(name) {
        return Err(ControllerError::TopicAlreadyExists);
    }
    if partitions == 0 || partitions > MAX_PARTITIONS_PER_TOPIC {
        return Err(ControllerError::InvalidPartitions);
    }
    let brokers = image.unfenced_brokers();
    if replication_factor == 0 || usize::from(replication_factor) > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "replication factor {replication_factor} with {} unfenced brokers",
            brokers.len()
        )));
    }
    let start = (name_hash(name) % brokers.len() as u64) as usize;
    Ok(vec![MetadataRecord::CreateTopic {
        name: name.to_string(),
        topic_id,
        configs: configs.clone(),
        assignments: assign_replicas(&brokers, partitions, replication_factor, start),
    }])
}

pub fn delete_topic(image: &MetadataImage, name: &str) -> Result<Vec<MetadataRecord>, ControllerError> {
    if !image.topics.contains_key(name) {
        return Err(ControllerError::UnknownTopicOrPartition);
    }
    Ok(vec![MetadataRecord::DeleteTopic { name: name.to_string() }])
}

/// Grows a topic to `count` partitions. The new partitions are placed as
/// `create_topic` would have placed them in a topic created with `count`
/// (the same start, over today's unfenced brokers), so leaders and
/// replicas stay spread; each gets as many replicas as partition 0 has.
pub fn create_partitions(
    image: &MetadataImage,
    name: &str,
    count: u32,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let Some(topic) = image.topics.get(name) else {
        return Err(ControllerError::UnknownTopicOrPartition);
    };
    let current = topic.partitions.len() as u32;
    // Kafka's rule: partitions are only ever added (keys would move to
    // other partitions, and records in removed ones would be lost).
    if count <= current || count > MAX_PARTITIONS_PER_TOPIC {
        return Err(ControllerError::InvalidPartitions);
    }
    let replication_factor = topic.partitions.first().map_or(1, |p| p.replicas.len()) as u16;
    let brokers = image.unfenced_brokers();
    if replication_factor == 0 || usize::from(replication_factor) > brokers.len() {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "replication factor {replication_factor} with {} unfenced brokers",
            brokers.len()
        )));
    }
    let start = (name_hash(name) % brokers.len() as u64) as usize;
    let mut assignments = assign_replicas(&brokers, count, replication_factor, start);
    let added = assignments.split_off(current as usize);
    Ok(vec![MetadataRecord::CreatePartitions { name: name.to_string(), first_partition: current, assignments: added }])
}

/// The quota keys Spate enforces on user and client-id entities (Kafka's
/// names; `request_percentage` is of one core's time, as Kafka's is of
/// one request handler thread's).
pub const CLIENT_QUOTA_KEYS: [&str; 3] = ["producer_byte_rate", "consumer_byte_rate", "request_percentage"];
/// The entity types of client quotas Spate keeps (Kafka's names).
pub const CLIENT_QUOTA_ENTITY_TYPES: [&str; 3] = ["client-id", "ip", "user"];
/// The one quota of an `ip` entity (KIP-612): new connections a second
/// from that address (or, for the default ip entity, from each address).
pub const IP_QUOTA_KEY: &str = "connection_creation_rate";

/// One entity's quota changes, checked: known entity types, each once and
/// in order; known keys with finite positive values. The image keeps at
/// most `MAX_CLIENT_QUOTA_ENTITIES` entities.
pub fn alter_client_quotas(
    image: &MetadataImage,
    entity: &[crate::metadata::QuotaEntityPart],
    changes: &[(String, Option<String>)],
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let invalid = |why: String| Err(ControllerError::InvalidRequest(why));
    if entity.is_empty() {
        return invalid("a client quota names an entity (user and/or client-id, or an ip)".into());
    }
    for (i, part) in entity.iter().enumerate() {
        if !CLIENT_QUOTA_ENTITY_TYPES.contains(&part.entity_type.as_str()) {
            return invalid(format!(
                "entity type {:?}: only user, client-id and ip quotas are supported",
                part.entity_type
            ));
        }
        if i > 0 && entity[i - 1].entity_type >= part.entity_type {
            return invalid("each entity type once, in order".into());
        }
        if part.entity_type == "ip" {
            if entity.len() > 1 {
                return invalid("an ip quota names the ip alone".into());
            }
            if part.name.as_ref().is_some_and(|name| name.parse::<std::net::IpAddr>().is_err()) {
                return invalid(format!("ip {:?} is not an IP address", part.name.as_deref().unwrap_or_default()));
            }
        }
        if part.name.as_ref().is_some_and(|n| n.len() > crate::limits::MAX_QUOTA_ENTITY_NAME_LEN) {
            return invalid(format!(
                "an entity name is longer than {} bytes",
                crate::limits::MAX_QUOTA_ENTITY_NAME_LEN
            ));
        }
    }
    let ip = entity[0].entity_type == "ip";
    for (key, value) in changes {
        if ip && key != IP_QUOTA_KEY {
            return invalid(format!("quota {key:?} is not one of an ip entity (it takes {IP_QUOTA_KEY})"));
        }
        if !ip && !CLIENT_QUOTA_KEYS.contains(&key.as_str()) {
            return invalid(format!(
                "quota {key:?} is not supported (Spate enforces {} on users and client ids, {IP_QUOTA_KEY} on ips)",
                CLIENT_QUOTA_KEYS.join(", ")
            ));
        }
        let rate = value.as_ref().map(|v| v.trim().parse::<f64>());
        if rate.is_some_and(|rate| !rate.is_ok_and(|v| v.is_finite() && v > 0.0)) {
            return invalid(format!("quota {key}: a rate must be a positive number"));
        }
    }
    if !image.client_quotas.contains_key(entity)
        && image.client_quotas.len() >= crate::limits::MAX_CLIENT_QUOTA_ENTITIES
    {
        return invalid(format!("at most {} quota entities", crate::limits::MAX_CLIENT_QUOTA_ENTITIES));
    }
    let mut batch = Batch::new(image);
    for (key, value) in changes {
        batch.push(MetadataRecord::AlterClientQuota {
            entity: entity.to_vec(),
            key: key.clone(),
            value: value.as_ref().map(|v| v.trim().to_string()),
        });
    }
    Ok(batch.records)
}

pub fn alter_topic_configs(
    image: &MetadataImage,
    name: &str,
    configs: &BTreeMap<String, String>,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    if !image.topics.contains_key(name) {
        return Err(ControllerError::UnknownTopicOrPartition);
    }
    let mut batch = Batch::new(image);
    batch.push(MetadataRecord::AlterTopicConfigs { name: name.to_string(), configs: configs.clone() });
    // A lower min.insync.replicas may put an ISR at the minimum: its
    // leader moves the high watermark again, past what the ELR members
    // have, so they leave it (Kafka cleans ELRs at any change; an ISR still
    // below the minimum keeps its ELR here, as its high watermark still
    // waits, and an empty ISR keeps the claim of the last copies).
    let mut changes = Vec::new();
    if let Some(topic) = batch.image.topics.get(name) {
        let min_isr = topic.min_insync_replicas();
        for (index, p) in topic.partitions.iter().enumerate() {
            if p.leader == -1 && p.isr.is_empty() {
                // Unclean election just enabled is the operator's way out
                // for a partition whose every claim is gone (or whose ELR
                // members are all fenced): elect now, not at the next
                // broker's return. A non-empty ISR without a leader is a
                // last copy whose log failed; it waits for its broker.
                changes.extend(elect_leaderless(&batch.image, topic, index as u32, p));
                continue;
            }
            if p.elr.is_empty() || p.isr.len() < min_isr {
                continue;
            }
            changes.push(MetadataRecord::PartitionChange {
                topic: name.to_string(),
                partition: index as u32,
                leader: p.leader,
                isr: p.isr.clone(),
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch + 1,
                elr: Vec::new(),
            });
        }
    }
    for c in changes {
        batch.push(c);
    }
    Ok(batch.records)
}

/// How a broker's previous process ended, as it registers (KIP-966). The
/// broker works it out from its data directory at start (`net/src/
/// clean_stop.rs`): a marker written after a graceful stop closed every log,
/// and the machine's boot id recorded at the previous start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRestart {
    /// The previous process stopped uncleanly AND the machine rebooted
    /// since: writes that were not synced may be gone, including some the
    /// broker reported to leaders as durable under durability `never` or an
    /// interval. (An unclean process stop alone loses nothing reported: the
    /// page cache survives a process; with O_DIRECT nothing unwritten was
    /// ever reported.)
    pub unsynced_writes_lost: bool,
    /// The broker's default durability is `always`: replicas of topics
    /// without their own `flush.ms` reported only what they had synced.
    pub default_durability_always: bool,
}

/// A broker failed (missed heartbeats for the session timeout) or restarted
/// (a new incarnation: it lost its in-memory state). Fence it; move the
/// leadership of what it leads (`elect`); drop it from the ISRs it follows
/// in, into the ELR where the ISR falls below min.insync.replicas (an ISR
/// that loses its last member always does: the claim of the last copy
/// moves to the ELR, KIP-966).
pub fn broker_failure(image: &MetadataImage, node_id: i32) -> Vec<MetadataRecord> {
    let mut batch = Batch::new(image);
    fail_broker(&mut batch, node_id);
    batch.records
}

fn fail_broker(batch: &mut Batch, node_id: i32) {
    let Some(broker) = batch.image.brokers.get(&node_id) else {
        return;
    };
    if !broker.fenced {
        batch.push(MetadataRecord::FenceBroker { node_id });
    }
    let mut changes = Vec::new();
    for topic in batch.image.topics.values() {
        for (index, p) in topic.partitions.iter().enumerate() {
            changes.extend(leave_partition(&batch.image, topic, index as u32, p, node_id, Leaving::KeepsData));
        }
    }
    for c in changes {
        batch.push(c);
    }
}

/// KIP-966's rule for the ELR when the ISR becomes `isr`: at or above
/// min.insync.replicas it is empty (the ISR alone decides); below, it keeps
/// its members not in the new ISR and gains the members the ISR just lost,
/// since each held everything up to the high watermark when it left and
/// the high watermark does not move while the ISR is below the minimum.
/// `excluded` is a replica known not to hold it (its log failed).
fn next_elr(p: &PartitionImage, isr: &[i32], min_insync_replicas: usize, excluded: Option<i32>) -> Vec<i32> {
    if isr.len() >= min_insync_replicas {
        return Vec::new();
    }
    let mut elr: Vec<i32> = Vec::new();
    for r in p.elr.iter().chain(p.isr.iter()) {
        if !isr.contains(r) && Some(*r) != excluded && !elr.contains(r) {
            elr.push(*r);
        }
    }
    elr
}

/// Who may lead a partition that `leaving` (-1: nobody) leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// An unfenced member of the ISR: it has everything acknowledged.
    Isr(i32),
    /// An unfenced member of the ELR (KIP-966): it has everything up to
    /// the high watermark.
    Elr(i32),
    /// An unfenced replica in neither, by the topic's unclean election.
    Unclean(i32),
    Nobody,
}

/// Leaders come from the ISR first, then from the ELR, each in replica
/// order (the preferred replica first), then, if the topic allows unclean
/// election, from any unfenced replica.
fn elect(image: &MetadataImage, topic: &TopicImage, p: &PartitionImage, leaving: i32) -> Choice {
    elect_allowing(image, p, leaving, topic.unclean_leader_election())
}

/// `elect`, with unclean election allowed or not by the caller.
fn elect_allowing(image: &MetadataImage, p: &PartitionImage, leaving: i32, unclean: bool) -> Choice {
    let eligible = |r: &&i32| **r != leaving && image.is_unfenced(**r);
    if let Some(l) = p.replicas.iter().filter(eligible).find(|r| p.isr.contains(r)) {
        return Choice::Isr(*l);
    }
    if let Some(l) = p.replicas.iter().filter(eligible).find(|r| p.elr.contains(r)) {
        return Choice::Elr(*l);
    }
    match p.replicas.iter().find(eligible) {
        Some(l) if unclean => Choice::Unclean(*l),
        _ => Choice::Nobody,
    }
}

/// A leader for a partition that has none and no ISR, if `elect` finds
/// one (an unfenced ELR member, or by unclean election).
fn elect_leaderless(
    image: &MetadataImage,
    topic: &TopicImage,
    partition: u32,
    p: &PartitionImage,
) -> Option<MetadataRecord> {
    elect_leaderless_allowing(image, topic, partition, p, topic.unclean_leader_election())
}

/// `elect_leaderless`, with unclean election allowed or not by the caller.
fn elect_leaderless_allowing(
    image: &MetadataImage,
    topic: &TopicImage,
    partition: u32,
    p: &PartitionImage,
    unclean: bool,
) -> Option<MetadataRecord> {
    let (leader, isr, elr) = match elect_allowing(image, p, -1, unclean) {
        Choice::Isr(l) => (l, p.isr.clone(), p.elr.clone()),
        Choice::Elr(l) => (l, vec![l], next_elr(p, &[l], topic.min_insync_replicas(), None)),
        Choice::Unclean(l) => (l, vec![l], Vec::new()),
        Choice::Nobody => return None,
    };
    Some(MetadataRecord::PartitionChange {
        topic: topic.name.clone(),
        partition,
        leader,
        isr,
        leader_epoch: p.leader_epoch + 1,
        partition_epoch: p.partition_epoch + 1,
        elr,
    })
}

/// Kafka's ElectLeaders for one partition (KIP-460). Preferred: the
/// first replica leads if it is unfenced and in the ISR
/// (`PreferredLeaderNotAvailable` otherwise; `ElectionNotNeeded` if it
/// leads already). Unclean: only a partition without a leader
/// (`ElectionNotNeeded` otherwise) gets one, from the ISR, then the ELR,
/// then any unfenced replica, as `elect` chooses with unclean election
/// allowed (`EligibleLeadersNotAvailable` if none is unfenced).
pub fn elect_leader(
    image: &MetadataImage,
    topic: &str,
    partition: u32,
    unclean: bool,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let (Some(t), Some(p)) = (image.topics.get(topic), image.partition(topic, partition)) else {
        return Err(ControllerError::UnknownTopicOrPartition);
    };
    if unclean {
        if p.leader != -1 {
            return Err(ControllerError::ElectionNotNeeded);
        }
        return elect_leaderless_allowing(image, t, partition, p, true)
            .map(|change| vec![change])
            .ok_or(ControllerError::EligibleLeadersNotAvailable);
    }
    let Some(&preferred) = p.replicas.first() else {
        return Err(ControllerError::PreferredLeaderNotAvailable);
    };
    if p.leader == preferred {
        return Err(ControllerError::ElectionNotNeeded);
    }
    if !p.isr.contains(&preferred) || !image.is_unfenced(preferred) {
        return Err(ControllerError::PreferredLeaderNotAvailable);
    }
    Ok(vec![MetadataRecord::PartitionChange {
        topic: topic.to_string(),
        partition,
        leader: preferred,
        isr: p.isr.clone(),
        leader_epoch: p.leader_epoch + 1,
        partition_epoch: p.partition_epoch + 1,
        elr: p.elr.clone(),
    }])
}

/// Why a replica leaves a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaving {
    /// Its broker failed or restarted: its disk still holds what it
    /// reported, so below min.insync.replicas it goes to the ELR.
    KeepsData,
    /// Its log failed (damaged or unreadable): it leaves the ELR too,
    /// except that a last copy keeps its ISR claim for the operator.
    LogFailed,
}

/// `node_id`'s replica of a partition can no longer be counted on (its
/// broker failed, or the replica's log did). If it led, the leadership
/// moves (`elect`), else the partition has no leader; if it only followed,
/// it leaves the ISR. The ELR follows `next_elr`.
fn leave_partition(
    image: &MetadataImage,
    topic: &TopicImage,
    partition: u32,
    p: &PartitionImage,
    node_id: i32,
    why: Leaving,
) -> Option<MetadataRecord> {
    let min_isr = topic.min_insync_replicas();
    let excluded = (why == Leaving::LogFailed).then_some(node_id);
    let isr_without: Vec<i32> = p.isr.iter().copied().filter(|r| *r != node_id).collect();
    // A failed log that is the last copy anyone vouches for keeps its ISR
    // claim: no one else may lead but by unclean election, and the
    // operator may still recover it (a restart puts it in the ELR).
    let last_copy = why == Leaving::LogFailed && isr_without.is_empty() && p.elr.iter().all(|r| *r == node_id);
    let (leader, isr, elr, leader_epoch) = if p.leader == node_id {
        let (leader, isr, elr) = match elect(image, topic, p, node_id) {
            Choice::Isr(l) => (l, isr_without.clone(), next_elr(p, &isr_without, min_isr, excluded)),
            Choice::Elr(l) => (l, vec![l], next_elr(p, &[l], min_isr, excluded)),
            Choice::Unclean(l) => (l, vec![l], Vec::new()),
            Choice::Nobody if last_copy => (-1, p.isr.clone(), Vec::new()),
            Choice::Nobody => (-1, isr_without.clone(), next_elr(p, &isr_without, min_isr, excluded)),
        };
        (leader, isr, elr, p.leader_epoch + 1)
    } else if p.isr.contains(&node_id) && !last_copy {
        (p.leader, isr_without.clone(), next_elr(p, &isr_without, min_isr, excluded), p.leader_epoch)
    } else if p.elr.contains(&node_id) && why == Leaving::LogFailed && !last_copy {
        (p.leader, p.isr.clone(), p.elr.iter().copied().filter(|r| *r != node_id).collect(), p.leader_epoch)
    } else {
        return None;
    };
    Some(MetadataRecord::PartitionChange {
        topic: topic.name.clone(),
        partition,
        leader,
        isr,
        leader_epoch,
        partition_epoch: p.partition_epoch + 1,
        elr,
    })
}

/// A broker reports that its replica of a partition cannot serve (the log
/// failed to open): it leaves the ISR and the ELR, and the leadership if it
/// had it, as at a broker failure of this one partition
/// (`leave_partition`). Nothing changes when it is the last copy and led
/// (no other may lead but by unclean election) or holds no claim.
/// Adds ACL bindings, all or none: a set that would pass `ACLS_MAX`, or a
/// binding with an oversized field, is refused whole.
pub fn create_acls(image: &MetadataImage, acls: &[AclBinding]) -> Result<Vec<MetadataRecord>, ControllerError> {
    let oversized = acls.iter().find(|acl| {
        [&acl.resource_name, &acl.principal, &acl.host].iter().any(|field| field.len() > ACL_FIELD_BYTES_MAX)
    });
    if let Some(acl) = oversized {
        return Err(ControllerError::InvalidRequest(format!(
            "an ACL field over {ACL_FIELD_BYTES_MAX} bytes (resource {:.64}...)",
            acl.resource_name
        )));
    }
    let new = acls.iter().filter(|acl| !image.acls.contains(acl)).count();
    if image.acls.len() + new > ACLS_MAX {
        return Err(ControllerError::InvalidRequest(format!(
            "the cluster would hold more than {ACLS_MAX} ACLs ({} now, {new} new)",
            image.acls.len()
        )));
    }
    Ok(vec![MetadataRecord::CreateAcls { acls: acls.to_vec() }])
}

/// Removes the bindings the filters match (none matching is no error: the
/// record then changes nothing).
pub fn delete_acls(filters: &[AclFilter]) -> Result<Vec<MetadataRecord>, ControllerError> {
    Ok(vec![MetadataRecord::DeleteAcls { filters: filters.to_vec() }])
}

pub fn replica_offline(
    image: &MetadataImage,
    topic: &str,
    partition: u32,
    node_id: i32,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let t = image.topics.get(topic).ok_or(ControllerError::UnknownTopicOrPartition)?;
    let p = t.partitions.get(partition as usize).ok_or(ControllerError::UnknownTopicOrPartition)?;
    if !p.replicas.contains(&node_id) {
        return Err(ControllerError::InvalidRequest(format!(
            "broker {node_id} is not a replica of {topic}/{partition}"
        )));
    }
    Ok(leave_partition(image, t, partition, p, node_id, Leaving::LogFailed).into_iter().collect())
}

/// A broker registered with `unsynced_writes_lost` (KIP-966's unclean
/// shutdown, narrowed to what can lose reported data here): on every
/// partition whose durability on it is not `always`, it may lack what it
/// reported, so it leaves the ISR and the ELR and leads none of them by
/// right. It comes back into an ISR only by fetching (AlterPartition).
fn forget_unsynced_claims(batch: &mut Batch, node_id: i32, default_durability_always: bool) {
    let mut changes = Vec::new();
    for topic in batch.image.topics.values() {
        if topic.durability_always(default_durability_always) {
            continue;
        }
        for (index, p) in topic.partitions.iter().enumerate() {
            if !p.isr.contains(&node_id) && !p.elr.contains(&node_id) {
                continue;
            }
            // It was failed first, so it leads nothing here.
            debug_assert_ne!(p.leader, node_id);
            changes.push(MetadataRecord::PartitionChange {
                topic: topic.name.clone(),
                partition: index as u32,
                leader: p.leader,
                isr: p.isr.iter().copied().filter(|r| *r != node_id).collect(),
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch + 1,
                elr: p.elr.iter().copied().filter(|r| *r != node_id).collect(),
            });
        }
    }
    for c in changes {
        batch.push(c);
    }
}

/// A fenced broker is back: unfence it, and give it the leadership of every
/// leader-less partition whose ISR has it, or (the ISR empty) whose ELR
/// has it, or, with unclean election enabled, of which it is a replica,
/// alone in the ISR.
fn unfence_broker(batch: &mut Batch, node_id: i32) {
    batch.push(MetadataRecord::UnfenceBroker { node_id });
    let mut changes = Vec::new();
    for topic in batch.image.topics.values() {
        let min_isr = topic.min_insync_replicas();
        for (index, p) in topic.partitions.iter().enumerate() {
            if p.leader != -1 {
                continue;
            }
            let (isr, elr) = if p.isr.contains(&node_id) {
                (p.isr.clone(), next_elr(p, &p.isr, min_isr, None))
            } else if p.isr.is_empty() && p.elr.contains(&node_id) {
                (vec![node_id], next_elr(p, &[node_id], min_isr, None))
            } else if topic.unclean_leader_election() && p.replicas.contains(&node_id) {
                (vec![node_id], Vec::new())
            } else {
                continue;
            };
            changes.push(MetadataRecord::PartitionChange {
                topic: topic.name.clone(),
                partition: index as u32,
                leader: node_id,
                isr,
                leader_epoch: p.leader_epoch + 1,
                partition_epoch: p.partition_epoch + 1,
                elr,
            });
        }
    }
    for c in changes {
        batch.push(c);
    }
}

/// A broker heartbeat reached the active controller. Returns the records it
/// calls for (none for a live, known, unfenced broker). `restart` is how
/// the broker's previous process ended; it counts only when the broker
/// registers (a new incarnation).
pub fn broker_heartbeat(
    image: &MetadataImage,
    node_id: i32,
    incarnation: u64,
    endpoints: &BrokerEndpoints,
    restart: BrokerRestart,
) -> Vec<MetadataRecord> {
    let known = image.brokers.get(&node_id);
    if known.is_some_and(|b| b.incarnation == incarnation && !b.fenced) {
        return Vec::new();
    }
    let mut batch = Batch::new(image);
    let restarted = known.is_some_and(|b| b.incarnation != incarnation);
    if restarted {
        // It lost its in-memory state: a failure first. It rejoins ISRs
        // only through AlterPartition from the partitions' leaders.
        fail_broker(&mut batch, node_id);
    }
    if known.is_none() || restarted {
        if restart.unsynced_writes_lost {
            tracing::warn!(
                broker = node_id,
                "registers after an unclean stop and a reboot: it leaves the ISRs and ELRs of partitions not \
                 synced on every write"
            );
            forget_unsynced_claims(&mut batch, node_id, restart.default_durability_always);
        }
        batch.push(MetadataRecord::RegisterBroker {
            node_id,
            incarnation,
            host: endpoints.host.clone(),
            port: endpoints.port,
            shard_ports: endpoints.shard_ports.clone(),
            controller_port: endpoints.controller_port,
            kafka_host: endpoints.kafka_host.clone(),
            kafka_port: endpoints.kafka_port,
            kafka_listeners: endpoints.kafka_listeners.clone(),
            unsynced_writes_lost: restart.unsynced_writes_lost,
            default_durability_always: restart.default_durability_always,
        });
    }
    unfence_broker(&mut batch, node_id);
    batch.records
}

/// A partition leader asks to change its ISR. On success returns the
/// PartitionChange (partition_epoch + 1, same leader and leader epoch) and
/// the partition as it will be.
#[allow(clippy::too_many_arguments)]
pub fn alter_partition(
    image: &MetadataImage,
    topic: &str,
    partition: u32,
    from_node: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    new_isr: &[i32],
) -> Result<(Vec<MetadataRecord>, PartitionImage), ControllerError> {
    let t = image.topics.get(topic).ok_or(ControllerError::UnknownTopicOrPartition)?;
    let p = t.partitions.get(partition as usize).ok_or(ControllerError::UnknownTopicOrPartition)?;
    if leader_epoch != p.leader_epoch {
        return Err(ControllerError::FencedLeaderEpoch);
    }
    if from_node != p.leader {
        return Err(ControllerError::NotLeader);
    }
    if partition_epoch != p.partition_epoch {
        return Err(ControllerError::InvalidUpdateVersion);
    }
    let mut sorted = new_isr.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != new_isr.len() {
        return Err(ControllerError::InvalidRequest("duplicate broker in the ISR".into()));
    }
    if let Some(r) = new_isr.iter().find(|r| !p.replicas.contains(r)) {
        return Err(ControllerError::InvalidRequest(format!("broker {r} is not a replica")));
    }
    if !new_isr.contains(&p.leader) {
        return Err(ControllerError::InvalidRequest("the ISR must contain the leader".into()));
    }
    // KIP-841: a fenced broker may stay in the ISR but may not be added.
    if let Some(r) = new_isr.iter().find(|r| !p.isr.contains(r) && !image.is_unfenced(**r)) {
        return Err(ControllerError::InvalidRequest(format!("broker {r} is fenced and may not join the ISR")));
    }
    // Members rejoining the ISR leave the ELR; members it drops below
    // min.insync.replicas join it (they have everything up to the high
    // watermark, the leader's own condition for keeping them so far).
    let elr = next_elr(p, new_isr, t.min_insync_replicas(), None);
    let next = PartitionImage { isr: new_isr.to_vec(), partition_epoch: p.partition_epoch + 1, elr, ..p.clone() };
    let record = MetadataRecord::PartitionChange {
        topic: topic.to_string(),
        partition,
        leader: next.leader,
        isr: next.isr.clone(),
        leader_epoch: next.leader_epoch,
        partition_epoch: next.partition_epoch,
        elr: next.elr.clone(),
    };
    Ok((vec![record], next))
}

pub fn allocate_producer_ids(
    image: &MetadataImage,
    node_id: i32,
    count: i64,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    if !(1..=MAX_PRODUCER_ID_BLOCK).contains(&count) {
        return Err(ControllerError::InvalidRequest(format!(
            "producer id count {count} not in 1..={MAX_PRODUCER_ID_BLOCK}"
        )));
    }
    if image.next_producer_id.checked_add(count).is_none() {
        return Err(ControllerError::InvalidRequest("producer ids exhausted".into()));
    }
    Ok(vec![MetadataRecord::ProducerIdBlock { node_id, start: image.next_producer_id, len: count }])
}

/// Checks a SCRAM credential's shape: Kafka's iteration bounds, a salt,
/// keys as long as the mechanism's hash.
pub fn check_scram_credential(mechanism: ScramMechanism, credential: &ScramCredential) -> Result<(), String> {
    if credential.iterations < SCRAM_ITERATIONS_MIN {
        return Err(format!("Too few iterations: {} (at least {SCRAM_ITERATIONS_MIN})", credential.iterations));
    }
    if credential.iterations > SCRAM_ITERATIONS_MAX {
        return Err(format!("Too many iterations: {} (at most {SCRAM_ITERATIONS_MAX})", credential.iterations));
    }
    if credential.salt.is_empty() || credential.salt.len() > SCRAM_SALT_BYTES_MAX {
        return Err(format!("a salt of {} bytes (1 to {SCRAM_SALT_BYTES_MAX})", credential.salt.len()));
    }
    let hash_bytes = mechanism.hash_bytes();
    if credential.stored_key.len() != hash_bytes || credential.server_key.len() != hash_bytes {
        return Err(format!("{} keys are {hash_bytes} bytes", mechanism.name()));
    }
    Ok(())
}

/// Sets and removes one user's SCRAM credentials (Kafka's
/// AlterUserScramCredentials, one user's part), in one entry.
pub fn alter_scram_credentials(
    image: &MetadataImage,
    user: &str,
    upsertions: &[(ScramMechanism, ScramCredential)],
    deletions: &[ScramMechanism],
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let unacceptable = ControllerError::UnacceptableCredential;
    if user.is_empty() {
        return Err(unacceptable("Username must not be empty".into()));
    }
    if user.len() > SCRAM_USER_NAME_BYTES_MAX {
        return Err(unacceptable(format!("a user name of at most {SCRAM_USER_NAME_BYTES_MAX} bytes")));
    }
    let mut seen = Vec::new();
    for mechanism in upsertions.iter().map(|(m, _)| m).chain(deletions) {
        if seen.contains(mechanism) {
            return Err(ControllerError::InvalidRequest(format!("{} altered twice", mechanism.name())));
        }
        seen.push(*mechanism);
    }
    let existing = image.scram_credentials.get(user);
    for mechanism in deletions {
        if !existing.is_some_and(|credentials| credentials.contains_key(mechanism)) {
            return Err(ControllerError::ResourceNotFound(
                "Attempt to delete a user credential that does not exist".into(),
            ));
        }
    }
    for (mechanism, credential) in upsertions {
        check_scram_credential(*mechanism, credential).map_err(unacceptable)?;
    }
    if existing.is_none() && !upsertions.is_empty() && image.scram_credentials.len() >= SCRAM_USERS_MAX {
        return Err(unacceptable(format!("at most {SCRAM_USERS_MAX} users have SCRAM credentials")));
    }
    let deleted = deletions
        .iter()
        .map(|mechanism| MetadataRecord::DeleteScramCredential { user: user.into(), mechanism: *mechanism });
    let upserted = upsertions.iter().map(|(mechanism, c)| MetadataRecord::UpsertScramCredential {
        user: user.into(),
        mechanism: *mechanism,
        salt: c.salt.clone(),
        iterations: c.iterations,
        stored_key: c.stored_key.clone(),
        server_key: c.server_key.clone(),
    });
    Ok(deleted.chain(upserted).collect())
}

/// The controller's invariants, for one record about to be applied to
/// `before`: a partition's epochs only grow (the partition epoch with every
/// change, the leader epoch with every leader change); its ISR and its ELR
/// hold only replicas, each once, and never the same one; its leader (if
/// any) is in the ISR; producer id blocks never overlap. An ISR may be
/// empty (KIP-966): when its last member fails, the claim of the last copy
/// moves to the ELR, and a partition without a leader needs no ISR. The
/// active controller checks every record it proposes (debug builds) and
/// every node every record it applies (a violation is logged; the record is
/// applied anyway, as on every other node, since the log already decided
/// it). A record for a partition that no longer exists is ignored by
/// `apply` and passes.
pub fn check_invariants(before: &MetadataImage, record: &MetadataRecord) -> Result<(), String> {
    match record {
        MetadataRecord::PartitionChange { topic, partition, leader, isr, leader_epoch, partition_epoch, elr } => {
            let Some(p) = before.partition(topic, *partition) else {
                return Ok(());
            };
            let at = format!("{topic}-{partition}");
            if *partition_epoch <= p.partition_epoch {
                return Err(format!("{at}: partition epoch {partition_epoch} after {}", p.partition_epoch));
            }
            if *leader_epoch < p.leader_epoch {
                return Err(format!("{at}: leader epoch {leader_epoch} after {}", p.leader_epoch));
            }
            if *leader != p.leader && *leader_epoch == p.leader_epoch {
                return Err(format!("{at}: leader {} -> {leader} without a new leader epoch", p.leader));
            }
            check_isr(&at, *leader, isr, &p.replicas)?;
            check_elr(&at, isr, elr, &p.replicas)
        }
        MetadataRecord::CreateTopic { name, assignments, .. } => check_new_partitions(name, 0, assignments),
        MetadataRecord::CreatePartitions { name, first_partition, assignments } => {
            let Some(topic) = before.topics.get(name) else {
                return Ok(());
            };
            if *first_partition as usize != topic.partitions.len() {
                return Err(format!(
                    "{name}: partitions added from {first_partition}, but the topic has {}",
                    topic.partitions.len()
                ));
            }
            check_new_partitions(name, *first_partition, assignments)
        }
        MetadataRecord::ProducerIdBlock { start, len, .. } => {
            if *start < before.next_producer_id || *len < 1 {
                return Err(format!(
                    "producer ids [{start}, +{len}) overlap what was handed out (< {})",
                    before.next_producer_id
                ));
            }
            Ok(())
        }
        MetadataRecord::UpsertScramCredential { mechanism, salt, iterations, stored_key, server_key, .. } => {
            let credential = ScramCredential {
                salt: salt.clone(),
                iterations: *iterations,
                stored_key: stored_key.clone(),
                server_key: server_key.clone(),
            };
            check_scram_credential(*mechanism, &credential)
        }
        _ => Ok(()),
    }
}

/// New partitions start with the ISR as the replicas, the leader as the
/// first.
fn check_new_partitions(name: &str, first_partition: u32, assignments: &[Vec<i32>]) -> Result<(), String> {
    for (index, replicas) in assignments.iter().enumerate() {
        let at = format!("{name}-{}", first_partition as usize + index);
        if replicas.is_empty() {
            return Err(format!("{at}: no replicas"));
        }
        check_isr(&at, replicas[0], replicas, replicas)?;
    }
    Ok(())
}

fn check_isr(at: &str, leader: i32, isr: &[i32], replicas: &[i32]) -> Result<(), String> {
    if let Some(r) = isr.iter().find(|r| !replicas.contains(r)) {
        return Err(format!("{at}: ISR member {r} is not a replica"));
    }
    if isr.iter().enumerate().any(|(i, r)| isr[..i].contains(r)) {
        return Err(format!("{at}: ISR {isr:?} names a broker twice"));
    }
    if leader != -1 && !isr.contains(&leader) {
        return Err(format!("{at}: leader {leader} not in its ISR {isr:?}"));
    }
    Ok(())
}

fn check_elr(at: &str, isr: &[i32], elr: &[i32], replicas: &[i32]) -> Result<(), String> {
    if let Some(r) = elr.iter().find(|r| !replicas.contains(r)) {
        return Err(format!("{at}: ELR member {r} is not a replica"));
    }
    if let Some(r) = elr.iter().find(|r| isr.contains(r)) {
        return Err(format!("{at}: {r} is in both the ISR and the ELR"));
    }
    if elr.iter().enumerate().any(|(i, r)| elr[..i].contains(r)) {
        return Err(format!("{at}: ELR {elr:?} names a broker twice"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{FLUSH_MS, MIN_INSYNC_REPLICAS, UNCLEAN_LEADER_ELECTION};

    const CLEAN: BrokerRestart = BrokerRestart { unsynced_writes_lost: false, default_durability_always: true };

    fn endpoints(n: i32) -> BrokerEndpoints {
        BrokerEndpoints {
            host: "127.0.0.1".into(),
            port: 9000 + n as u16,
            shard_ports: vec![],
            controller_port: 9100 + n as u16,
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9300 + n as u16,
            kafka_listeners: vec![],
        }
    }

    /// Every decision these tests make is also checked against the
    /// invariants before it is applied.
    fn apply(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for r in records {
            assert_eq!(check_invariants(image, r), Ok(()), "{r:?}");
            image.apply(r);
        }
    }

    fn cluster(n: i32) -> MetadataImage {
        let mut img = MetadataImage::default();
        for id in 1..=n {
            let recs = broker_heartbeat(&img, id, 100 + id as u64, &endpoints(id), CLEAN);
            apply(&mut img, &recs);
        }
        img
    }

    fn with_topic(img: &mut MetadataImage, name: &str, parts: u32, rf: u16, unclean: bool) {
        let mut configs = BTreeMap::new();
        if unclean {
            configs.insert(UNCLEAN_LEADER_ELECTION.to_string(), "true".to_string());
        }
        let recs = create_topic(img, name, parts, rf, &configs, "id".into()).expect("create");
        apply(img, &recs);
    }

    fn set_partition(img: &mut MetadataImage, t: &str, p: u32, leader: i32, isr: Vec<i32>) {
        let cur = img.partition(t, p).cloned().expect("partition");
        img.apply(&MetadataRecord::PartitionChange {
            topic: t.into(),
            partition: p,
            leader,
            isr,
            leader_epoch: cur.leader_epoch,
            partition_epoch: cur.partition_epoch,
            elr: vec![],
        });
    }

    #[test]
    fn an_offline_replica_leaves_the_isr_and_its_leadership_but_a_last_member_keeps_its_claim() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 1, 3, false);
        let p = img.partition("t", 0).cloned().expect("partition");
        let follower = *p.replicas.iter().find(|r| **r != p.leader).expect("a follower");
        // A follower's damaged replica leaves the ISR; the leader stays.
        let recs = replica_offline(&img, "t", 0, follower).expect("offline");
        apply(&mut img, &recs);
        let after = img.partition("t", 0).cloned().expect("partition");
        assert_eq!(after.leader, p.leader);
        assert!(!after.isr.contains(&follower));
        assert_eq!(after.partition_epoch, p.partition_epoch + 1);
        // The leader's damaged replica hands the leadership to the other
        // in-sync replica, under a new epoch.
        let recs = replica_offline(&img, "t", 0, p.leader).expect("offline");
        apply(&mut img, &recs);
        let moved = img.partition("t", 0).cloned().expect("partition");
        assert_ne!(moved.leader, p.leader);
        assert!(moved.leader > 0 && moved.leader != follower);
        assert_eq!(moved.isr, vec![moved.leader]);
        assert_eq!(moved.leader_epoch, p.leader_epoch + 1);
        // The last in-sync replica keeps its claim: no leader rather than
        // one without the data.
        let recs = replica_offline(&img, "t", 0, moved.leader).expect("offline");
        apply(&mut img, &recs);
        let last = img.partition("t", 0).cloned().expect("partition");
        assert_eq!(last.leader, -1);
        assert_eq!(last.isr, vec![moved.leader]);
        // Only a replica may report itself.
        with_topic(&mut img, "one", 1, 1, false);
        let owner = img.partition("one", 0).expect("partition").leader;
        let other = (1..=3).find(|n| *n != owner).expect("another broker");
        assert!(matches!(replica_offline(&img, "one", 0, other), Err(ControllerError::InvalidRequest(_))));
        assert!(matches!(replica_offline(&img, "gone", 0, 1), Err(ControllerError::UnknownTopicOrPartition)));
    }

    #[test]
    fn heartbeat_registers_and_unfences_new_brokers() {
        let img = MetadataImage::default();
        let recs = broker_heartbeat(&img, 1, 5, &endpoints(1), CLEAN);
        assert!(matches!(recs[0], MetadataRecord::RegisterBroker { node_id: 1, incarnation: 5, .. }));
        assert_eq!(recs[1], MetadataRecord::UnfenceBroker { node_id: 1 });
        let mut img = img;
        apply(&mut img, &recs);
        assert!(broker_heartbeat(&img, 1, 5, &endpoints(1), CLEAN).is_empty(), "live: nothing to do");
    }

    #[test]
    fn assignment_balances_replicas_and_leaders() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 6, 3, false);
        let t = &img.topics["t"];
        let mut leads = BTreeMap::new();
        for p in &t.partitions {
            *leads.entry(p.leader).or_insert(0) += 1;
            let mut r = p.replicas.clone();
            r.sort_unstable();
            assert_eq!(r, vec![1, 2, 3], "three distinct replicas");
            assert_eq!(p.isr, p.replicas);
            assert_eq!((p.leader_epoch, p.partition_epoch), (0, 0));
        }
        assert_eq!(leads.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        // rf 2 over 3 brokers: every broker holds 4 of the 12 replicas.
        with_topic(&mut img, "u", 6, 2, false);
        let mut holds = BTreeMap::new();
        for p in &img.topics["u"].partitions {
            for r in &p.replicas {
                *holds.entry(*r).or_insert(0) += 1;
            }
        }
        assert_eq!(holds.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    }

    #[test]
    fn added_partitions_keep_leaders_and_replicas_balanced_and_the_old_ones_unchanged() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 2, 2, false);
        let before = img.topics["t"].partitions.clone();
        let recs = create_partitions(&img, "t", 6).expect("grows");
        for r in &recs {
            assert_eq!(check_invariants(&img, r), Ok(()));
        }
        apply(&mut img, &recs);
        let t = &img.topics["t"];
        assert_eq!(t.partitions.len(), 6);
        assert_eq!(t.partitions[..2], before[..], "existing partitions untouched");
        let mut leads = BTreeMap::new();
        let mut holds = BTreeMap::new();
        for p in &t.partitions {
            *leads.entry(p.leader).or_insert(0) += 1;
            for r in &p.replicas {
                *holds.entry(*r).or_insert(0) += 1;
            }
            assert_eq!(p.replicas.len(), 2, "as many replicas as partition 0");
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader, p.replicas[0]);
        }
        // The same placement a topic created with six partitions gets.
        assert_eq!(leads.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(holds.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
    }

    #[test]
    fn create_partitions_refuses_a_smaller_or_equal_count_and_unknown_topics() {
        let mut img = cluster(1);
        with_topic(&mut img, "t", 3, 1, false);
        assert_eq!(create_partitions(&img, "t", 3), Err(ControllerError::InvalidPartitions));
        assert_eq!(create_partitions(&img, "t", 2), Err(ControllerError::InvalidPartitions));
        assert_eq!(create_partitions(&img, "t", MAX_PARTITIONS_PER_TOPIC + 1), Err(ControllerError::InvalidPartitions));
        assert_eq!(create_partitions(&img, "nope", 4), Err(ControllerError::UnknownTopicOrPartition));
        // A record decided against an older partition count (a race that
        // the log already settled) is ignored and flagged.
        let stale = create_partitions(&img, "t", 4).expect("grows");
        apply(&mut img, &stale);
        assert_eq!(img.topics["t"].partitions.len(), 4);
        assert!(check_invariants(&img, &stale[0]).is_err());
        img.apply(&stale[0]);
        assert_eq!(img.topics["t"].partitions.len(), 4, "applied once only");
    }

    #[test]
    fn leaders_of_single_partition_topics_spread() {
        let mut img = cluster(3);
        let mut leads = BTreeMap::new();
        for i in 0..30 {
            let name = format!("topic-{i}");
            with_topic(&mut img, &name, 1, 1, false);
            *leads.entry(img.topics[&name].partitions[0].leader).or_insert(0) += 1;
        }
        assert_eq!(leads.len(), 3, "every broker leads some: {leads:?}");
    }

    #[test]
    fn create_topic_validates() {
        let img = cluster(2);
        let c = BTreeMap::new();
        assert!(matches!(
            create_topic(&img, "t", 1, 3, &c, "x".into()),
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            create_topic(&img, "t", 1, 0, &c, "x".into()),
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
        assert_eq!(create_topic(&img, "t", 0, 1, &c, "x".into()), Err(ControllerError::InvalidPartitions));
        assert!(matches!(
            create_topic(&img, "bad name", 1, 1, &c, "x".into()),
            Err(ControllerError::InvalidRequest(_))
        ));
        let mut img = img;
        with_topic(&mut img, "t", 1, 1, false);
        assert_eq!(create_topic(&img, "t", 1, 1, &c, "x".into()), Err(ControllerError::TopicAlreadyExists));
        // Fenced brokers do not count towards the replication factor.
        let r = broker_failure(&img, 2);
        apply(&mut img, &r);
        assert!(matches!(
            create_topic(&img, "v", 1, 2, &c, "x".into()),
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
    }

    #[test]
    fn delete_and_alter_need_the_topic() {
        let mut img = cluster(1);
        let c = BTreeMap::from([("retention.ms".to_string(), "1".to_string())]);
        assert_eq!(delete_topic(&img, "t"), Err(ControllerError::UnknownTopicOrPartition));
        assert_eq!(alter_topic_configs(&img, "t", &c), Err(ControllerError::UnknownTopicOrPartition));
        with_topic(&mut img, "t", 1, 1, false);
        let r = alter_topic_configs(&img, "t", &c).expect("alter");
        apply(&mut img, &r);
        assert_eq!(img.topics["t"].configs, c);
        let r = delete_topic(&img, "t").expect("delete");
        apply(&mut img, &r);
        assert!(img.topics.is_empty());
    }

    #[test]
    fn preferred_election_moves_the_leadership_back_to_the_first_replica_only_if_it_is_in_sync() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 1, 3, false);
        let p = img.partition("t", 0).cloned().expect("p");
        let (first, second, third) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        assert_eq!(elect_leader(&img, "t", 0, false), Err(ControllerError::ElectionNotNeeded));
        // The first replica is out of the ISR while the second leads.
        set_partition(&mut img, "t", 0, second, vec![second, third]);
        assert_eq!(elect_leader(&img, "t", 0, false), Err(ControllerError::PreferredLeaderNotAvailable));
        // Back in sync: it leads again, at a new leader epoch.
        set_partition(&mut img, "t", 0, second, vec![second, third, first]);
        let recs = elect_leader(&img, "t", 0, false).expect("elected");
        apply(&mut img, &recs);
        let q = img.partition("t", 0).expect("p");
        assert_eq!((q.leader, q.leader_epoch, q.partition_epoch), (first, p.leader_epoch + 1, p.partition_epoch + 1));
        assert_eq!(q.isr, vec![second, third, first], "the ISR is unchanged");
        // Fenced, it may not lead.
        set_partition(&mut img, "t", 0, second, vec![second, third, first]);
        img.apply(&MetadataRecord::FenceBroker { node_id: first });
        assert_eq!(elect_leader(&img, "t", 0, false), Err(ControllerError::PreferredLeaderNotAvailable));
        assert_eq!(elect_leader(&img, "nope", 0, false), Err(ControllerError::UnknownTopicOrPartition));
        assert_eq!(elect_leader(&img, "t", 1, false), Err(ControllerError::UnknownTopicOrPartition));
    }

    #[test]
    fn unclean_election_gives_a_leaderless_partition_any_unfenced_replica_whatever_the_topic_config() {
        let mut img = cluster(2);
        with_topic(&mut img, "t", 1, 2, false);
        assert_eq!(elect_leader(&img, "t", 0, true), Err(ControllerError::ElectionNotNeeded), "it has a leader");
        let p = img.partition("t", 0).cloned().expect("p");
        set_partition(&mut img, "t", 0, -1, vec![]);
        let recs = elect_leader(&img, "t", 0, true).expect("elected");
        apply(&mut img, &recs);
        let q = img.partition("t", 0).expect("p");
        assert_eq!((q.leader, q.isr.clone()), (p.replicas[0], vec![p.replicas[0]]));
        assert_eq!(q.leader_epoch, p.leader_epoch + 1);
        set_partition(&mut img, "t", 0, -1, vec![]);
        for node in [1, 2] {
            img.apply(&MetadataRecord::FenceBroker { node_id: node });
        }
        assert_eq!(elect_leader(&img, "t", 0, true), Err(ControllerError::EligibleLeadersNotAvailable));
    }

    #[test]
    fn failure_elects_from_the_isr_only() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 1, 3, false);
        let p = img.partition("t", 0).cloned().expect("p");
        let (l, second, third) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        // The second replica fell out of the ISR: the third must be chosen.
        set_partition(&mut img, "t", 0, l, vec![l, third]);
        let r = broker_failure(&img, l);
        apply(&mut img, &r);
        let q = img.partition("t", 0).expect("p");
        assert!(img.brokers[&l].fenced);
        assert_eq!(q.leader, third, "not {second}, which is out of the ISR");
        assert_eq!(q.isr, vec![third]);
        assert_eq!((q.leader_epoch, q.partition_epoch), (1, 1));
    }

    #[test]
    fn failure_of_a_follower_shrinks_the_isr() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 1, 3, false);
        let p = img.partition("t", 0).cloned().expect("p");
        let r = broker_failure(&img, p.replicas[1]);
        apply(&mut img, &r);
        let q = img.partition("t", 0).expect("p");
        assert_eq!(q.leader, p.leader);
        assert_eq!(q.isr, vec![p.replicas[0], p.replicas[2]]);
        assert_eq!((q.leader_epoch, q.partition_epoch), (0, 1));
    }

    #[test]
    fn no_clean_candidate_leaves_no_leader_and_the_last_member_in_the_elr() {
        let mut img = cluster(2);
        with_topic(&mut img, "t", 1, 2, false);
        let p = img.partition("t", 0).cloned().expect("p");
        let (l, f) = (p.replicas[0], p.replicas[1]);
        set_partition(&mut img, "t", 0, l, vec![l]);
        let r = broker_failure(&img, l);
        apply(&mut img, &r);
        let q = img.partition("t", 0).expect("p");
        assert_eq!(q.leader, -1, "{f} is out of the ISR: no unclean election");
        assert!(q.isr.is_empty());
        assert_eq!(q.elr, vec![l], "the last ISR member's claim moves to the ELR");
        assert_eq!((q.leader_epoch, q.partition_epoch), (1, 1));
        // The last ISR member comes back (same incarnation): it leads again.
        let inc = img.brokers[&l].incarnation;
        let r = broker_heartbeat(&img, l, inc, &endpoints(l), CLEAN);
        apply(&mut img, &r);
        let q = img.partition("t", 0).expect("p");
        assert!(!img.brokers[&l].fenced);
        assert_eq!((q.leader, q.leader_epoch, q.partition_epoch), (l, 2, 2));
        assert_eq!((q.isr.clone(), q.elr.clone()), (vec![l], Vec::<i32>::new()), "at min.insync.replicas (1): no ELR");
    }

    #[test]
    fn follower_failure_then_leader_failure_leaves_the_claim_with_the_last_member() {
        let mut img = cluster(2);
        with_topic(&mut img, "t", 1, 2, false);
        let p = img.partition("t", 0).cloned().expect("p");
        let (l, f) = (p.replicas[0], p.replicas[1]);
        let r = broker_failure(&img, f);
        apply(&mut img, &r);
        assert_eq!(img.partition("t", 0).expect("p").elr, Vec::<i32>::new(), "ISR [l] is at min.insync.replicas 1");
        let r = broker_failure(&img, l);
        apply(&mut img, &r);
        let q = img.partition("t", 0).expect("p");
        assert_eq!(q.leader, -1);
        assert!(q.isr.is_empty());
        assert_eq!(q.elr, vec![l], "{f} left when the ISR was at the minimum: it may lack later writes");
        // f returns: it is in neither, so it does not lead.
        let inc = img.brokers[&f].incarnation;
        let r = broker_heartbeat(&img, f, inc, &endpoints(f), CLEAN);
        apply(&mut img, &r);
        assert_eq!(img.partition("t", 0).expect("p").leader, -1);
    }

    /// A leader shrinking its ISR via AlterPartition.
    fn alter_isr(img: &mut MetadataImage, topic: &str, isr: &[i32]) -> PartitionImage {
        let p = img.partition(topic, 0).cloned().expect("p");
        let (recs, next) =
            alter_partition(img, topic, 0, p.leader, p.leader_epoch, p.partition_epoch, isr).expect("alter");
        apply(img, &recs);
        assert_eq!(img.partition(topic, 0), Some(&next));
        next
    }

    fn with_configs(img: &mut MetadataImage, name: &str, rf: u16, configs: &[(&str, &str)]) -> PartitionImage {
        let configs = configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let recs = create_topic(img, name, 1, rf, &configs, "id".into()).expect("create");
        apply(img, &recs);
        img.partition(name, 0).cloned().expect("p")
    }

    /// KIP-966: the ELR holds the members the ISR lost below
    /// min.insync.replicas; a member rejoining the ISR leaves it; an ISR
    /// back at the minimum clears it. (Before, no ELR existed: every
    /// member but the last lost its claim when it left.)
    #[test]
    fn the_elr_takes_members_the_isr_loses_below_the_minimum_and_clears_at_it() {
        let mut img = cluster(3);
        let p = with_configs(&mut img, "m2", 3, &[(MIN_INSYNC_REPLICAS, "2")]);
        let (l, a, b) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        assert_eq!(alter_isr(&mut img, "m2", &[l, a]).elr, Vec::<i32>::new(), "2 of min 2: no ELR");
        assert_eq!(alter_isr(&mut img, "m2", &[l]).elr, vec![a], "below the minimum: the removed one");
        assert_eq!(alter_isr(&mut img, "m2", &[l, b]).elr, Vec::<i32>::new(), "back at the minimum: cleared");
        let p = with_configs(&mut img, "m3", 3, &[(MIN_INSYNC_REPLICAS, "3")]);
        let (l, a, b) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        assert_eq!(alter_isr(&mut img, "m3", &[l, a]).elr, vec![b]);
        assert_eq!(alter_isr(&mut img, "m3", &[l]).elr, vec![b, a], "kept, and the next one added");
        assert_eq!(alter_isr(&mut img, "m3", &[l, b]).elr, vec![a], "a member rejoining the ISR leaves the ELR");
        assert_eq!(alter_isr(&mut img, "m3", &[l, b, a]).elr, Vec::<i32>::new());
        // A follower's failure below the minimum: into the ELR, fenced.
        alter_isr(&mut img, "m3", &[l, a]);
        let r = broker_failure(&img, a);
        apply(&mut img, &r);
        let q = img.partition("m3", 0).expect("p");
        assert_eq!((q.isr.clone(), q.elr.clone()), (vec![l], vec![b, a]));
    }

    /// KIP-966: with no ISR member left to lead, an unfenced ELR member
    /// does (before, the partition waited for the last ISR member).
    #[test]
    fn leaders_come_from_the_isr_then_from_unfenced_elr_members() {
        let mut img = cluster(3);
        let p = with_configs(&mut img, "t", 3, &[(MIN_INSYNC_REPLICAS, "2")]);
        let (l, a, b) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        alter_isr(&mut img, "t", &[l]);
        let r = broker_failure(&img, a);
        apply(&mut img, &r);
        assert_eq!(img.partition("t", 0).expect("p").elr, vec![a, b], "a fenced member stays in the ELR");
        let r = broker_failure(&img, l);
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!(q.leader, b, "{a} is fenced; {b} is the first unfenced ELR member");
        assert_eq!(q.isr, vec![b]);
        assert_eq!(q.elr, vec![a, l], "the old leader left an ISR below the minimum: into the ELR");
        assert_eq!(q.leader_epoch, p.leader_epoch + 1);
        // b fails too: nobody unfenced; a fenced ELR member leads when it
        // returns.
        let r = broker_failure(&img, b);
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.leader, q.isr.clone(), q.elr.clone()), (-1, Vec::<i32>::new(), vec![a, l, b]));
        let inc = img.brokers[&a].incarnation;
        let r = broker_heartbeat(&img, a, inc, &endpoints(a), CLEAN);
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.leader, q.isr.clone(), q.elr.clone()), (a, vec![a], vec![l, b]));
    }

    /// The scenario of issue 13: a topic not synced on every write, the
    /// last ISR member restarted after a power loss (unclean stop and a
    /// reboot) may lack what it reported; it must not lead by right while
    /// a clean ELR member can. Before this change it led again at once.
    #[test]
    fn a_broker_that_lost_unsynced_writes_leaves_every_elr_and_does_not_lead_by_right() {
        let mut img = cluster(3);
        let never = with_configs(&mut img, "never", 3, &[(MIN_INSYNC_REPLICAS, "2"), (FLUSH_MS, "-1")]);
        let (l, a, b) = (never.replicas[0], never.replicas[1], never.replicas[2]);
        alter_isr(&mut img, "never", &[l]);
        // The same brokers hold a topic synced on every write, and one
        // that follows the broker's default.
        with_configs(&mut img, "always", 3, &[(FLUSH_MS, "0")]);
        with_configs(&mut img, "default", 3, &[]);
        for t in ["always", "default"] {
            let p = img.partition(t, 0).cloned().expect("p");
            assert_eq!(p.replicas, never.replicas);
            alter_isr(&mut img, t, &[l]);
        }
        for n in [a, b, l] {
            let r = broker_failure(&img, n);
            apply(&mut img, &r);
        }
        assert_eq!(img.partition("never", 0).expect("p").elr, vec![a, b, l]);
        // l restarts after a reboot: out of every ELR it might not honour.
        let lost = BrokerRestart { unsynced_writes_lost: true, default_durability_always: false };
        let r = broker_heartbeat(&img, l, 777, &endpoints(l), lost);
        apply(&mut img, &r);
        assert!(img.brokers[&l].unsynced_writes_lost);
        for t in ["never", "default"] {
            let q = img.partition(t, 0).cloned().expect("p");
            assert_eq!(q.leader, -1, "{t}: {l} does not lead by right");
            assert!(q.isr.is_empty());
            assert!(!q.elr.contains(&l), "{t}: {q:?}");
        }
        // Synced on every write: what it reported is on its disk.
        assert_eq!(img.partition("always", 0).expect("p").leader, l);
        // A clean ELR member leads "never" when it returns.
        let r = broker_heartbeat(&img, a, 888, &endpoints(a), CLEAN);
        apply(&mut img, &r);
        let q = img.partition("never", 0).cloned().expect("p");
        assert_eq!((q.leader, q.isr.clone(), q.elr.clone()), (a, vec![a], vec![b]));
        // Its broker default `always` would have kept l's claim on
        // "default": only topics not synced lose it.
        let mut img2 = cluster(1);
        with_configs(&mut img2, "default", 1, &[]);
        let r = broker_failure(&img2, 1);
        apply(&mut img2, &r);
        let synced = BrokerRestart { unsynced_writes_lost: true, default_durability_always: true };
        let r = broker_heartbeat(&img2, 1, 5, &endpoints(1), synced);
        apply(&mut img2, &r);
        assert_eq!(img2.partition("default", 0).expect("p").leader, 1);
    }

    #[test]
    fn unclean_election_still_elects_a_broker_that_lost_unsynced_writes() {
        let mut img = cluster(1);
        with_configs(&mut img, "t", 1, &[(FLUSH_MS, "-1"), (UNCLEAN_LEADER_ELECTION, "true")]);
        let r = broker_failure(&img, 1);
        apply(&mut img, &r);
        let lost = BrokerRestart { unsynced_writes_lost: true, default_durability_always: false };
        let r = broker_heartbeat(&img, 1, 5, &endpoints(1), lost);
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.leader, q.isr.clone(), q.elr.clone()), (1, vec![1], Vec::<i32>::new()));
    }

    /// Lowering min.insync.replicas to the ISR's size lets the leader move
    /// the high watermark again, past what ELR members hold: they leave.
    /// (Before, the ELR outlived the change.)
    #[test]
    fn a_lower_min_insync_replicas_clears_the_elrs_it_satisfies() {
        let mut img = cluster(3);
        let p = with_configs(&mut img, "t", 3, &[(MIN_INSYNC_REPLICAS, "3")]);
        let (l, a) = (p.replicas[0], p.replicas[1]);
        alter_isr(&mut img, "t", &[l, a]);
        let raised = BTreeMap::from([(MIN_INSYNC_REPLICAS.to_string(), "4".to_string())]);
        let r = alter_topic_configs(&img, "t", &raised).expect("alter");
        apply(&mut img, &r);
        assert_eq!(img.partition("t", 0).expect("p").elr.len(), 1, "still below the minimum: kept");
        let lowered = BTreeMap::from([(MIN_INSYNC_REPLICAS.to_string(), "2".to_string())]);
        let r = alter_topic_configs(&img, "t", &lowered).expect("alter");
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.isr.clone(), q.elr.clone()), (vec![l, a], Vec::<i32>::new()));
        assert_eq!(q.partition_epoch, p.partition_epoch + 2);
    }

    /// The operator's way out when every claim is gone: enabling unclean
    /// election elects an unfenced replica at once. (Before, a broker had
    /// to return first.)
    #[test]
    fn enabling_unclean_election_elects_where_no_claim_is_left() {
        let mut img = cluster(2);
        let p = with_configs(&mut img, "t", 2, &[(FLUSH_MS, "-1")]);
        let (l, f) = (p.replicas[0], p.replicas[1]);
        let r = broker_failure(&img, f);
        apply(&mut img, &r);
        let r = broker_failure(&img, l);
        apply(&mut img, &r);
        let lost = BrokerRestart { unsynced_writes_lost: true, default_durability_always: false };
        let r = broker_heartbeat(&img, l, 9, &endpoints(l), lost);
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.leader, q.isr.len(), q.elr.len()), (-1, 0, 0), "no claim left");
        // Another config change elects nobody.
        let same = img.topics["t"].configs.clone();
        assert_eq!(alter_topic_configs(&img, "t", &same).expect("alter").len(), 1);
        let mut unclean = same;
        unclean.insert(UNCLEAN_LEADER_ELECTION.to_string(), "true".to_string());
        let r = alter_topic_configs(&img, "t", &unclean).expect("alter");
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.leader, q.isr.clone(), q.elr.clone()), (l, vec![l], Vec::<i32>::new()));
        assert_eq!(q.leader_epoch, p.leader_epoch + 2);
    }

    #[test]
    fn an_offline_replica_never_joins_the_elr_and_leaves_it() {
        let mut img = cluster(3);
        let p = with_configs(&mut img, "t", 3, &[(MIN_INSYNC_REPLICAS, "2")]);
        let (l, a, b) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        alter_isr(&mut img, "t", &[l, a]);
        alter_isr(&mut img, "t", &[l]);
        assert_eq!(img.partition("t", 0).expect("p").elr, vec![a]);
        alter_isr(&mut img, "t", &[l, b]);
        // b's log fails while the ISR is at the minimum: b is out, not in
        // the ELR (its log may be set aside and fetched anew).
        let r = replica_offline(&img, "t", 0, b).expect("offline");
        apply(&mut img, &r);
        let q = img.partition("t", 0).cloned().expect("p");
        assert_eq!((q.isr.clone(), q.elr.clone()), (vec![l], Vec::<i32>::new()));
        let p = with_configs(&mut img, "u", 3, &[(MIN_INSYNC_REPLICAS, "3")]);
        let (l, a) = (p.replicas[0], p.replicas[1]);
        alter_isr(&mut img, "u", &[l]);
        let r = replica_offline(&img, "u", 0, a).expect("offline");
        apply(&mut img, &r);
        assert!(!img.partition("u", 0).expect("p").elr.contains(&a), "an ELR member whose log failed leaves it");
    }

    #[test]
    fn unclean_election_when_the_topic_allows_it() {
        let mut img = cluster(2);
        with_topic(&mut img, "t", 1, 2, true);
        let p = img.partition("t", 0).cloned().expect("p");
        let (l, f) = (p.replicas[0], p.replicas[1]);
        set_partition(&mut img, "t", 0, l, vec![l]);
        let r = broker_failure(&img, l);
        apply(&mut img, &r);
        let q = img.partition("t", 0).expect("p");
        assert_eq!((q.leader, q.isr.clone(), q.leader_epoch), (f, vec![f], 1));
    }

    #[test]
    fn restart_is_a_failure_then_a_registration() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 3, 3, false);
        let led: Vec<u32> = (0..3).filter(|p| img.partition("t", *p).map(|x| x.leader) == Some(1)).collect();
        assert_eq!(led.len(), 1);
        let recs = broker_heartbeat(&img, 1, 999, &endpoints(1), CLEAN);
        assert_eq!(recs[0], MetadataRecord::FenceBroker { node_id: 1 });
        apply(&mut img, &recs);
        let b = &img.brokers[&1];
        assert_eq!((b.incarnation, b.fenced), (999, false));
        for p in 0..3 {
            let q = img.partition("t", p).expect("p");
            assert!(!q.isr.contains(&1), "rejoins ISRs only via AlterPartition");
            assert_ne!(q.leader, 1);
        }
        let q = img.partition("t", led[0]).expect("p");
        assert_eq!(q.leader_epoch, 1);
    }

    #[test]
    fn alter_partition_checks_epochs_leader_and_isr() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 1, 3, false);
        let p = img.partition("t", 0).cloned().expect("p");
        let l = p.leader;
        let follower = p.replicas[1];
        let ap = |img: &MetadataImage, from, le, pe, isr: &[i32]| alter_partition(img, "t", 0, from, le, pe, isr);
        assert_eq!(
            alter_partition(&img, "t", 5, l, 0, 0, &[l]).map(|x| x.1),
            Err(ControllerError::UnknownTopicOrPartition)
        );
        assert_eq!(ap(&img, l, 1, 0, &[l]).map(|x| x.1), Err(ControllerError::FencedLeaderEpoch));
        assert_eq!(ap(&img, follower, 0, 0, &[l]).map(|x| x.1), Err(ControllerError::NotLeader));
        assert_eq!(ap(&img, l, 0, 3, &[l]).map(|x| x.1), Err(ControllerError::InvalidUpdateVersion));
        assert!(matches!(ap(&img, l, 0, 0, &[follower]), Err(ControllerError::InvalidRequest(_))));
        assert!(matches!(ap(&img, l, 0, 0, &[l, 42]), Err(ControllerError::InvalidRequest(_))));
        assert!(matches!(ap(&img, l, 0, 0, &[l, l]), Err(ControllerError::InvalidRequest(_))));
        // Shrink to the leader alone.
        let (recs, next) = ap(&img, l, 0, 0, &[l]).expect("shrink");
        apply(&mut img, &recs);
        assert_eq!(img.partition("t", 0), Some(&next));
        assert_eq!((next.leader, next.leader_epoch, next.partition_epoch), (l, 0, 1));
        // The old version is now stale.
        assert_eq!(ap(&img, l, 0, 0, &[l]).map(|x| x.1), Err(ControllerError::InvalidUpdateVersion));
        // KIP-841: a fenced broker may not be added.
        let r = broker_failure(&img, follower);
        apply(&mut img, &r);
        let pe = img.partition("t", 0).expect("p").partition_epoch;
        assert!(matches!(
            ap(&img, l, 0, pe, &[l, follower]),
            Err(ControllerError::InvalidRequest(m)) if m.contains("fenced")
        ));
        // An unfenced one may.
        let other = p.replicas[2];
        let (_, grown) = ap(&img, l, 0, pe, &[l, other]).expect("grow");
        assert_eq!(grown.isr, vec![l, other]);
    }

    #[test]
    fn kept_fenced_isr_member_is_allowed() {
        let mut img = cluster(3);
        with_topic(&mut img, "t", 1, 3, false);
        let p = img.partition("t", 0).cloned().expect("p");
        // Fence a follower without the ISR change (as if the ISR shrink
        // record were still to come): keeping it is not an addition.
        img.apply(&MetadataRecord::FenceBroker { node_id: p.replicas[1] });
        assert!(alter_partition(&img, "t", 0, p.leader, 0, 0, &p.replicas).is_ok());
    }

    #[test]
    fn producer_id_blocks_are_consecutive() {
        let mut img = cluster(1);
        let a = allocate_producer_ids(&img, 1, 1000).expect("a");
        apply(&mut img, &a);
        let b = allocate_producer_ids(&img, 1, 10).expect("b");
        assert_eq!(b, vec![MetadataRecord::ProducerIdBlock { node_id: 1, start: 1000, len: 10 }]);
        assert!(allocate_producer_ids(&img, 1, 0).is_err());
        assert!(allocate_producer_ids(&img, 1, MAX_PRODUCER_ID_BLOCK + 1).is_err());
    }

    #[test]
    fn invariant_violations_are_named() {
        let mut img = cluster(3);
        let recs = create_topic(&img, "t", 1, 3, &BTreeMap::new(), "id".into()).expect("create");
        apply(&mut img, &recs);
        let p = img.partition("t", 0).cloned().expect("partition");
        let change =
            |leader: i32, isr: Vec<i32>, leader_epoch: i32, partition_epoch: i32| MetadataRecord::PartitionChange {
                topic: "t".into(),
                partition: 0,
                leader,
                isr,
                leader_epoch,
                partition_epoch,
                elr: vec![],
            };
        let next = p.partition_epoch + 1;
        assert_eq!(check_invariants(&img, &change(p.leader, p.isr.clone(), p.leader_epoch, next)), Ok(()));
        let bad = [
            change(p.leader, p.isr.clone(), p.leader_epoch, p.partition_epoch),
            change(p.leader, p.isr.clone(), p.leader_epoch - 1, next),
            change(p.isr[1], p.isr.clone(), p.leader_epoch, next),
            change(p.leader, vec![], p.leader_epoch, next),
            change(p.leader, vec![p.isr[1]], p.leader_epoch, next),
            change(p.leader, vec![p.leader, 9], p.leader_epoch, next),
        ];
        for r in &bad {
            assert!(check_invariants(&img, r).is_err(), "{r:?}");
        }
        // No leader, the ISR keeping its last claim: allowed.
        assert_eq!(check_invariants(&img, &change(-1, vec![p.leader], p.leader_epoch + 1, next)), Ok(()));
        // No leader and no ISR, the claim in the ELR (KIP-966): allowed.
        let in_elr = |isr: Vec<i32>, elr: Vec<i32>| MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 0,
            leader: -1,
            isr,
            leader_epoch: p.leader_epoch + 1,
            partition_epoch: next,
            elr,
        };
        assert_eq!(check_invariants(&img, &in_elr(vec![], vec![p.leader])), Ok(()));
        for bad in [
            in_elr(vec![p.isr[1]], vec![p.isr[1]]),
            in_elr(vec![], vec![9]),
            in_elr(vec![], vec![p.leader, p.leader]),
            in_elr(vec![p.isr[1], p.isr[1]], vec![]),
        ] {
            assert!(check_invariants(&img, &bad).is_err(), "{bad:?}");
        }
        let ids = MetadataRecord::ProducerIdBlock { node_id: 1, start: 0, len: 10 };
        apply(&mut img, std::slice::from_ref(&ids));
        assert!(check_invariants(&img, &ids).is_err(), "a block handed out twice");
        let empty = MetadataRecord::CreateTopic {
            name: "e".into(),
            topic_id: "e".into(),
            configs: BTreeMap::new(),
            assignments: vec![vec![]],
        };
        assert!(check_invariants(&img, &empty).is_err());
    }

    /// Client quotas: checked before they are committed, kept in the image
    /// by entity, and removed key by key.
    #[test]
    fn client_quotas_are_checked_then_kept_by_entity() {
        use crate::metadata::QuotaEntityPart;
        let mut img = MetadataImage::default();
        let client =
            |name: Option<&str>| QuotaEntityPart { entity_type: "client-id".into(), name: name.map(str::to_string) };
        let user = QuotaEntityPart { entity_type: "user".into(), name: Some("alice".into()) };
        let ip = |name: Option<&str>| QuotaEntityPart { entity_type: "ip".into(), name: name.map(str::to_string) };
        let set = |key: &str, value: &str| vec![(key.to_string(), Some(value.to_string()))];
        for (entity, changes) in [
            (vec![], set("producer_byte_rate", "1024")),
            (vec![QuotaEntityPart { entity_type: "ip".into(), name: None }], set("producer_byte_rate", "1")),
            (vec![user.clone(), client(None)], set("producer_byte_rate", "1")),
            (vec![client(None)], set("controller_mutation_rate", "50")),
            (vec![client(None)], set("connection_creation_rate", "5")),
            (vec![ip(Some("not-an-ip"))], set("connection_creation_rate", "5")),
            (vec![ip(None), user.clone()], set("connection_creation_rate", "5")),
            (vec![client(None)], set("producer_byte_rate", "-1")),
            (vec![client(None)], set("producer_byte_rate", "lots")),
        ] {
            assert!(
                matches!(alter_client_quotas(&img, &entity, &changes), Err(ControllerError::InvalidRequest(_))),
                "{entity:?} {changes:?}"
            );
        }
        let entity = vec![client(Some("app")), user];
        let records = alter_client_quotas(&img, &entity, &set("producer_byte_rate", "1024.5")).expect("valid");
        apply(&mut img, &records);
        let records = alter_client_quotas(&img, &entity, &set("consumer_byte_rate", "2048")).expect("valid");
        apply(&mut img, &records);
        assert_eq!(img.client_quotas[&entity].get("producer_byte_rate").map(String::as_str), Some("1024.5"));
        let remove = vec![("producer_byte_rate".to_string(), None), ("consumer_byte_rate".to_string(), None)];
        let records = alter_client_quotas(&img, &entity, &remove).expect("valid");
        apply(&mut img, &records);
        assert!(img.client_quotas.is_empty(), "an entity without quotas is gone");
        for entity in [vec![ip(Some("10.0.0.1"))], vec![ip(None)]] {
            let records = alter_client_quotas(&img, &entity, &set("connection_creation_rate", "5")).expect("valid");
            apply(&mut img, &records);
        }
        assert_eq!(img.client_quotas.len(), 2);
    }

    fn credential(iterations: u32) -> ScramCredential {
        ScramCredential { salt: vec![7; 20], iterations, stored_key: vec![1; 32], server_key: vec![2; 32] }
    }

    /// Kafka's rules for AlterUserScramCredentials: iterations within
    /// 4096..=16384, a non-empty user, deleting only what exists; keys
    /// come as long as the mechanism's hash.
    #[test]
    fn scram_credentials_are_checked_before_they_are_committed() {
        use ScramMechanism::{Sha256, Sha512};
        let mut img = cluster(1);
        let ok = alter_scram_credentials(&img, "alice", &[(Sha256, credential(4096))], &[]).expect("upsert");
        assert_eq!(ok.len(), 1);
        for r in &ok {
            assert_eq!(check_invariants(&img, r), Ok(()));
            img.apply(r);
        }
        assert_eq!(img.scram_credentials["alice"][&Sha256].iterations, 4096);
        let refused = |result| matches!(result, Err(ControllerError::UnacceptableCredential(_)));
        assert!(refused(alter_scram_credentials(&img, "alice", &[(Sha256, credential(4095))], &[])));
        assert!(refused(alter_scram_credentials(&img, "alice", &[(Sha256, credential(16385))], &[])));
        assert!(refused(alter_scram_credentials(&img, "", &[(Sha256, credential(8192))], &[])));
        let short_keys = ScramCredential { stored_key: vec![1; 32], server_key: vec![2; 32], ..credential(8192) };
        assert!(refused(alter_scram_credentials(&img, "bob", &[(Sha512, short_keys)], &[])));
        assert!(matches!(
            alter_scram_credentials(&img, "alice", &[], &[Sha512]),
            Err(ControllerError::ResourceNotFound(_))
        ));
        assert!(matches!(
            alter_scram_credentials(&img, "alice", &[(Sha256, credential(8192))], &[Sha256]),
            Err(ControllerError::InvalidRequest(_))
        ));
        // Replacing and deleting in one go: the last credential takes the
        // user with it.
        let records = alter_scram_credentials(&img, "alice", &[], &[Sha256]).expect("delete");
        for r in &records {
            img.apply(r);
        }
        assert!(img.scram_credentials.is_empty());
        let bad = MetadataRecord::UpsertScramCredential {
            user: "x".into(),
            mechanism: Sha256,
            salt: vec![1],
            iterations: 1,
            stored_key: vec![0; 32],
            server_key: vec![0; 32],
        };
        assert!(check_invariants(&img, &bad).is_err(), "the log never holds a weak credential");
    }
}
