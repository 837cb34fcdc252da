//! The replicated state: metadata records and the image they build.
//!
//! Pure and deterministic: every node applies the same committed records in
//! the same order and gets the same image. A record that no longer applies
//! (its topic was deleted, its partition does not exist) is ignored, never
//! an error, because an earlier record in the log already decided the
//! outcome on every node.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::acl::{AclBinding, AclFilter};

/// The topic config that allows electing a leader from outside the ISR.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";
/// The topic config below which the ISR puts its removed members in the
/// ELR (KIP-966), as acks=all refuses writes below it.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
/// Its default, Kafka's (and the broker's, `net/src/topic_config.rs`).
pub const MIN_INSYNC_REPLICAS_DEFAULT: usize = 1;
/// The topic config of its durability: "0" syncs before a write counts
/// (durability `always`); absent, the broker's default applies.
pub const FLUSH_MS: &str = "flush.ms";

/// One change to the cluster metadata. Raft entries carry these as JSON: the
/// volume is tiny and the log stays human-inspectable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A broker process started (or restarted: a new incarnation). It is
    /// registered fenced; an `UnfenceBroker` follows once it heartbeats.
    RegisterBroker {
        node_id: i32,
        /// Random per process start: a new value means the broker lost its
        /// in-memory state.
        incarnation: u64,
        host: String,
        port: u16,
        shard_ports: Vec<u16>,
        controller_port: u16,
        /// Where the broker serves the Kafka protocol (0: it does not).
        /// Absent in older logs.
        #[serde(default)]
        kafka_host: String,
        #[serde(default)]
        kafka_port: u16,
        /// Every Kafka listener's advertised address, by listener name (the
        /// first is also `kafka_host`/`kafka_port`): a client is given the
        /// brokers' addresses on the listener it came in by. Absent in
        /// older logs: only `kafka_host`/`kafka_port`, as PLAINTEXT.
        #[serde(default)]
        kafka_listeners: Vec<KafkaEndpoint>,
        /// KIP-966: the previous process of this broker stopped uncleanly
        /// and the machine rebooted since, so writes it had not synced may
        /// be gone, including some it reported to leaders as durable under
        /// a durability other than `always`. Absent in older logs: false.
        #[serde(default)]
        unsynced_writes_lost: bool,
        /// The broker's default durability is `always` (topics without
        /// their own `flush.ms` synced every write before reporting it).
        #[serde(default)]
        default_durability_always: bool,
    },
    FenceBroker {
        node_id: i32,
    },
    UnfenceBroker {
        node_id: i32,
    },
    /// Partition p's replicas are `assignments[p]`; leader = replicas[0],
    /// isr = replicas, both epochs 0.
    CreateTopic {
        name: String,
        topic_id: String,
        configs: BTreeMap<String, String>,
        assignments: Vec<Vec<i32>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Partitions `first_partition ..` of the topic are added, partition
    /// `first_partition + i` with replicas `assignments[i]`; as at
    /// creation, leader = replicas[0], isr = replicas, both epochs 0.
    /// Applies only while the topic has exactly `first_partition`
    /// partitions (else an earlier record decided otherwise: ignored).
    CreatePartitions {
        name: String,
        first_partition: u32,
        assignments: Vec<Vec<i32>>,
    },
    /// Full replacement of the topic's configs.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    PartitionChange {
        topic: String,
        partition: u32,
        /// -1: no leader.
        leader: i32,
        isr: Vec<i32>,
        leader_epoch: i32,
        partition_epoch: i32,
        /// Eligible leader replicas (KIP-966); absent in older logs, which
        /// knew none: empty.
        #[serde(default)]
        elr: Vec<i32>,
    },
    /// Producer ids `[start, start + len)` belong to `node_id`.
    ProducerIdBlock {
        node_id: i32,
        start: i64,
        len: i64,
    },
    /// The secret brokers prove they know to each other (issue 14: only a
    /// broker may fetch as a follower), 32 random bytes in hex. Committed
    /// once by the first active controller; a later one is ignored.
    ClusterSecret {
        secret_hex: String,
    },
    /// Kafka's client quotas (KIP-546): set (`value` Some) or remove one
    /// quota key of an entity. `value` is the decimal text of Kafka's
    /// double (a byte rate, in bytes per second).
    AlterClientQuota {
        entity: Vec<QuotaEntityPart>,
        key: String,
        value: Option<String>,
    },
    /// A user's SCRAM credential for one mechanism (RFC 5802), added or
    /// replaced: what a server needs to check a client's proof and prove
    /// itself, never the password nor the salted password (either would
    /// let whoever reads the log log in). Absent from older logs.
    UpsertScramCredential {
        user: String,
        mechanism: ScramMechanism,
        #[serde(with = "hex_bytes")]
        salt: Vec<u8>,
        iterations: u32,
        #[serde(with = "hex_bytes")]
        stored_key: Vec<u8>,
        #[serde(with = "hex_bytes")]
        server_key: Vec<u8>,
    },
    /// The user's credential for this mechanism is gone (the user with it,
    /// if it was the last).
    DeleteScramCredential {
        user: String,
        mechanism: ScramMechanism,
    },
    /// Kafka's CreateAcls: the bindings join the ACL set (one already
    /// there stays once).
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Kafka's DeleteAcls: every binding any of the filters matches
    /// leaves the ACL set. Filters, not bindings, so that every node
    /// deletes what the filters match in its own image at this point of
    /// the log (the same set on every node).
    DeleteAcls {
        filters: Vec<AclFilter>,
    },
}

/// Kafka's SCRAM mechanisms, named as Kafka names them in
/// `sasl.enabled.mechanisms` and in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism SASL calls `name` (exactly: SASL names are upper case).
    pub fn parse(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Kafka's ScramMechanism type in Alter/DescribeUserScramCredentials.
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(kafka_type: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL.into_iter().find(|m| m.kafka_type() == kafka_type)
    }

    /// Bytes of the hash's output: of a salted password, a stored key, a
    /// server key.
    pub fn hash_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// One user's SCRAM credential for one mechanism, as the image keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "hex_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// H(ClientKey): a client's proof is checked against it.
    #[serde(with = "hex_bytes")]
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key"): signs the server's final message.
    #[serde(with = "hex_bytes")]
    pub server_key: Vec<u8>,
}

/// Byte strings in the log as lower-case hex: JSON arrays of numbers would
/// be three times as long and unreadable.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if !text.len().is_multiple_of(2) {
            return Err(serde::de::Error::custom("hex of odd length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| serde::de::Error::custom("not hex"))
    }
}

/// One part of a client quota's entity (Kafka's `user`, `client-id`);
/// `name: None` is that type's default entity (`<default>`). An entity's
/// parts are sorted by type, each type at most once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntityPart {
    pub entity_type: String,
    pub name: Option<String>,
}

/// One Kafka listener of a broker, as clients of that listener reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaEndpoint {
    /// The listener's name (`PLAINTEXT`, `SASL_SSL`, `EXTERNAL`, ...).
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerImage {
    pub node_id: i32,
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    pub controller_port: u16,
    /// Where the broker serves the Kafka protocol (port 0: it does not).
    #[serde(default)]
    pub kafka_host: String,
    #[serde(default)]
    pub kafka_port: u16,
    #[serde(default)]
    pub kafka_listeners: Vec<KafkaEndpoint>,
    /// Fenced brokers lead nothing and may not be added to an ISR.
    pub fenced: bool,
    /// As registered (`RegisterBroker`): this process started after an
    /// unclean stop and a reboot.
    #[serde(default)]
    pub unsynced_writes_lost: bool,
    #[serde(default)]
    pub default_durability_always: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1: no leader.
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change of leader, ISR or ELR (the version
    /// AlterPartition requests must quote).
    pub partition_epoch: i32,
    /// Eligible leader replicas (KIP-966): replicas out of the ISR that
    /// hold everything up to the high watermark, because they left the
    /// ISR while it was below min.insync.replicas (when the high watermark
    /// stops). Fenced members stay; a broker that registers
    /// `unsynced_writes_lost` leaves. Never overlaps the ISR. Absent in
    /// snapshots written before: empty.
    #[serde(default)]
    pub elr: Vec<i32>,
}

impl PartitionImage {
    /// A new partition: the first replica leads, every replica is in sync.
    fn new(replicas: &[i32]) -> PartitionImage {
        PartitionImage {
            replicas: replicas.to_vec(),
            isr: replicas.to_vec(),
            leader: replicas.first().copied().unwrap_or(-1),
            leader_epoch: 0,
            partition_epoch: 0,
            elr: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub topic_id: String,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionImage>,
}

impl TopicImage {
    /// Whether this topic allows electing a leader from outside the ISR.
    pub fn unclean_leader_election(&self) -> bool {
        self.configs.get(UNCLEAN_LEADER_ELECTION).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// min.insync.replicas, at least 1 (so an empty ISR is always below it).
    pub fn min_insync_replicas(&self) -> usize {
        self.configs
            .get(MIN_INSYNC_REPLICAS)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(MIN_INSYNC_REPLICAS_DEFAULT)
            .max(1)
    }

    /// Whether a replica of this topic on a broker syncs every write
    /// before it reports it (durability `always`): its own `flush.ms` of 0,
    /// or none and the broker's default is `always`.
    pub fn durability_always(&self, broker_default_always: bool) -> bool {
        match self.configs.get(FLUSH_MS) {
            Some(v) => v.trim().parse::<i64>() == Ok(0),
            None => broker_default_always,
        }
    }
}

/// The cluster metadata as of `applied_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerImage>,
    pub topics: BTreeMap<String, TopicImage>,
    /// The next producer id to hand out.
    pub next_producer_id: i64,
    /// See `MetadataRecord::ClusterSecret`; None until the first active
    /// controller commits it.
    pub cluster_secret_hex: Option<String>,
    /// Client quotas by entity: quota key -> value (decimal text).
    pub client_quotas: BTreeMap<Vec<QuotaEntityPart>, BTreeMap<String, String>>,
    /// SCRAM credentials: user -> mechanism -> credential.
    pub scram_credentials: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
    /// Kafka's ACLs (`CreateAcls`, `DeleteAcls`).
    pub acls: BTreeSet<AclBinding>,
    /// Counts the changes to `acls` (every applied `CreateAcls` or
    /// `DeleteAcls`, whether it changed the set or not): brokers cache
    /// authorization decisions per connection and drop them when it moves.
    pub acls_version: u64,
    /// The Raft index of the last applied entry.
    pub applied_index: u64,
    /// The Raft leader (the active controller) as this node last knew it, -1
    /// unknown. Not replicated state: set by the local quorum node.
    pub controller_id: i32,
}

impl Default for MetadataImage {
    fn default() -> Self {
        MetadataImage {
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_producer_id: 0,
            cluster_secret_hex: None,
            client_quotas: BTreeMap::new(),
            scram_credentials: BTreeMap::new(),
            acls: BTreeSet::new(),
            acls_version: 0,
            applied_index: 0,
            controller_id: -1,
        }
    }
}

impl MetadataImage {
    /// Apply one record. Deterministic; a record that no longer applies is
    /// ignored.
    pub fn apply(&mut self, record: &MetadataRecord) {
        match record {
            MetadataRecord::AlterClientQuota { entity, key, value } => {
                let quotas = self.client_quotas.entry(entity.clone()).or_default();
                match value {
                    Some(value) => {
                        quotas.insert(key.clone(), value.clone());
                    }
                    None => {
                        quotas.remove(key);
                    }
                }
                if quotas.is_empty() {
                    self.client_quotas.remove(entity);
                }
            }
            MetadataRecord::RegisterBroker {
                node_id,
                incarnation,
                host,
                port,
                shard_ports,
                controller_port,
                kafka_host,
                kafka_port,
                kafka_listeners,
                unsynced_writes_lost,
                default_durability_always,
            } => {
                self.brokers.insert(
                    *node_id,
                    BrokerImage {
                        node_id: *node_id,
                        incarnation: *incarnation,
                        host: host.clone(),
                        port: *port,
                        shard_ports: shard_ports.clone(),
                        controller_port: *controller_port,
                        kafka_host: kafka_host.clone(),
                        kafka_port: *kafka_port,
                        kafka_listeners: kafka_listeners.clone(),
                        fenced: true,
                        unsynced_writes_lost: *unsynced_writes_lost,
                        default_durability_always: *default_durability_always,
                    },
                );
            }
            MetadataRecord::FenceBroker { node_id } => {
                if let Some(b) = self.brokers.get_mut(node_id) {
                    b.fenced = true;
                }
            }
            MetadataRecord::UnfenceBroker { node_id } => {
                if let Some(b) = self.brokers.get_mut(node_id) {
                    b.fenced = false;
                }
            }
            MetadataRecord::CreateTopic { name, topic_id, configs, assignments } => {
                if self.topics.contains_key(name) {
                    return;
                }
                let partitions = assignments.iter().map(|replicas| PartitionImage::new(replicas)).collect();
                self.topics.insert(
                    name.clone(),
                    TopicImage { name: name.clone(), topic_id: topic_id.clone(), configs: configs.clone(), partitions },
                );
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataRecord::CreatePartitions { name, first_partition, assignments } => {
                if let Some(t) = self.topics.get_mut(name)
                    && t.partitions.len() == *first_partition as usize
                {
                    t.partitions.extend(assignments.iter().map(|replicas| PartitionImage::new(replicas)));
                }
            }
            MetadataRecord::AlterTopicConfigs { name, configs } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.configs = configs.clone();
                }
            }
            MetadataRecord::PartitionChange { topic, partition, leader, isr, leader_epoch, partition_epoch, elr } => {
                if let Some(p) = self.partition_mut(topic, *partition) {
                    p.leader = *leader;
                    p.isr = isr.clone();
                    p.elr = elr.clone();
                    p.leader_epoch = *leader_epoch;
                    p.partition_epoch = *partition_epoch;
                }
            }
            MetadataRecord::ProducerIdBlock { start, len, .. } => {
                self.next_producer_id = self.next_producer_id.max(start.saturating_add(*len));
            }
            MetadataRecord::ClusterSecret { secret_hex } => {
                self.cluster_secret_hex.get_or_insert_with(|| secret_hex.clone());
            }
            MetadataRecord::UpsertScramCredential { user, mechanism, salt, iterations, stored_key, server_key } => {
                let credential = ScramCredential {
                    salt: salt.clone(),
                    iterations: *iterations,
                    stored_key: stored_key.clone(),
                    server_key: server_key.clone(),
                };
                self.scram_credentials.entry(user.clone()).or_default().insert(*mechanism, credential);
            }
            MetadataRecord::DeleteScramCredential { user, mechanism } => {
                if let Some(credentials) = self.scram_credentials.get_mut(user) {
                    credentials.remove(mechanism);
                    if credentials.is_empty() {
                        self.scram_credentials.remove(user);
                    }
                }
            }
            MetadataRecord::CreateAcls { acls } => {
                self.acls.extend(acls.iter().cloned());
                self.acls_version += 1;
            }
            MetadataRecord::DeleteAcls { filters } => {
                self.acls.retain(|binding| !filters.iter().any(|filter| filter.matches(binding)));
                self.acls_version += 1;
            }
        }
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionImage> {
        self.topics.get(topic).and_then(|t| t.partitions.get(partition as usize))
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionImage> {
        self.topics.get_mut(topic).and_then(|t| t.partitions.get_mut(partition as usize))
    }

    /// Registered, unfenced brokers, sorted by id.
    pub fn unfenced_brokers(&self) -> Vec<i32> {
        self.brokers.values().filter(|b| !b.fenced).map(|b| b.node_id).collect()
    }

    pub fn is_unfenced(&self, node_id: i32) -> bool {
        self.brokers.get(&node_id).is_some_and(|b| !b.fenced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(node_id: i32) -> MetadataRecord {
        MetadataRecord::RegisterBroker {
            node_id,
            incarnation: 7,
            host: "h".into(),
            port: 1,
            shard_ports: vec![2],
            controller_port: 3,
            kafka_host: "h".into(),
            kafka_port: 4,
            kafka_listeners: vec![KafkaEndpoint { name: "PLAINTEXT".into(), host: "h".into(), port: 4 }],
            unsynced_writes_lost: false,
            default_durability_always: true,
        }
    }

    #[test]
    fn records_build_the_image() {
        let mut img = MetadataImage::default();
        img.apply(&register(1));
        assert!(img.brokers[&1].fenced, "registered fenced");
        img.apply(&MetadataRecord::UnfenceBroker { node_id: 1 });
        assert_eq!(img.unfenced_brokers(), vec![1]);
        img.apply(&MetadataRecord::CreateTopic {
            name: "t".into(),
            topic_id: "id".into(),
            configs: BTreeMap::new(),
            assignments: vec![vec![1, 2], vec![2, 1]],
        });
        let p = img.partition("t", 1).cloned();
        assert_eq!(
            p,
            Some(PartitionImage {
                replicas: vec![2, 1],
                isr: vec![2, 1],
                leader: 2,
                leader_epoch: 0,
                partition_epoch: 0,
                elr: vec![],
            })
        );
        img.apply(&MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 1,
            leader: 1,
            isr: vec![1],
            leader_epoch: 1,
            partition_epoch: 1,
            elr: vec![],
        });
        assert_eq!(img.partition("t", 1).map(|p| p.leader), Some(1));
        img.apply(&MetadataRecord::ProducerIdBlock { node_id: 1, start: 0, len: 1000 });
        assert_eq!(img.next_producer_id, 1000);
        img.apply(&MetadataRecord::DeleteTopic { name: "t".into() });
        // A record for a deleted topic is ignored, not a panic.
        img.apply(&MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 0,
            leader: 1,
            isr: vec![1],
            leader_epoch: 1,
            partition_epoch: 1,
            elr: vec![],
        });
        img.apply(&MetadataRecord::AlterTopicConfigs { name: "t".into(), configs: BTreeMap::new() });
        assert!(img.topics.is_empty());
    }

    /// Metadata logs and snapshots written before KIP-966 lack the ELR and
    /// the restart flags: they still decode, with an empty ELR and a clean
    /// stop.
    #[test]
    fn records_and_images_written_before_the_elr_still_decode() {
        let old = r#"{"PartitionChange":{"topic":"t","partition":0,"leader":-1,"isr":[1],"leader_epoch":2,"partition_epoch":3}}"#;
        let r: MetadataRecord = serde_json::from_str(old).expect("old PartitionChange");
        assert!(matches!(r, MetadataRecord::PartitionChange { ref elr, .. } if elr.is_empty()));
        let old = r#"{"RegisterBroker":{"node_id":1,"incarnation":7,"host":"h","port":1,"shard_ports":[2],"controller_port":3}}"#;
        let r: MetadataRecord = serde_json::from_str(old).expect("old RegisterBroker");
        assert!(matches!(r, MetadataRecord::RegisterBroker { unsynced_writes_lost: false, kafka_port: 0, .. }));
        let old = r#"{"replicas":[1,2],"isr":[1],"leader":1,"leader_epoch":0,"partition_epoch":1}"#;
        let p: PartitionImage = serde_json::from_str(old).expect("old snapshot's partition");
        assert!(p.elr.is_empty());
        let old =
            r#"{"node_id":1,"incarnation":7,"host":"h","port":1,"shard_ports":[],"controller_port":3,"fenced":false}"#;
        let b: BrokerImage = serde_json::from_str(old).expect("old snapshot's broker");
        assert!(!b.unsynced_writes_lost);
    }

    /// Every node applies the same ACL records to the same set: a deletion
    /// by filter removes what matches at its place in the log, and each
    /// change moves the version brokers key their cached decisions by.
    #[test]
    fn acl_records_add_and_delete_by_filter() {
        use crate::acl::*;
        let acl = |name: &str, permission| AclBinding {
            resource_type: AclResourceType::Topic,
            resource_name: name.into(),
            pattern_type: AclPatternType::Literal,
            principal: "User:ANONYMOUS".into(),
            host: "*".into(),
            operation: AclOperation::Write,
            permission,
        };
        let mut img = MetadataImage::default();
        img.apply(&MetadataRecord::CreateAcls {
            acls: vec![acl("a", AclPermission::Deny), acl("b", AclPermission::Allow), acl("a", AclPermission::Deny)],
        });
        assert_eq!(img.acls.len(), 2, "a binding is held once");
        assert_eq!(img.acls_version, 1);
        let deny_filter = AclFilter { permission: Some(AclPermission::Deny), ..AclFilter::any() };
        let json = serde_json::to_string(&MetadataRecord::DeleteAcls { filters: vec![deny_filter] }).expect("encode");
        let record: MetadataRecord = serde_json::from_str(&json).expect("decode");
        img.apply(&record);
        assert_eq!(img.acls.iter().map(|a| a.resource_name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(img.acls_version, 2);
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = register(3);
        let json = serde_json::to_string(&r).expect("encode");
        let back: MetadataRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, r);
    }

    /// Credentials travel in the log as hex, with their mechanism's Kafka
    /// name, and decode back; a deleted last credential takes its user.
    #[test]
    fn scram_credentials_round_trip_and_build_the_image() {
        let upsert = MetadataRecord::UpsertScramCredential {
            user: "alice".into(),
            mechanism: ScramMechanism::Sha512,
            salt: vec![0xab, 0x01],
            iterations: 8192,
            stored_key: vec![0xff; 64],
            server_key: vec![0x00; 64],
        };
        let json = serde_json::to_string(&upsert).expect("encode");
        assert!(json.contains(r#""mechanism":"SCRAM-SHA-512""#) && json.contains(r#""salt":"ab01""#), "{json}");
        let back: MetadataRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, upsert);
        let mut img = MetadataImage::default();
        img.apply(&upsert);
        assert_eq!(img.scram_credentials["alice"][&ScramMechanism::Sha512].salt, vec![0xab, 0x01]);
        img.apply(&MetadataRecord::DeleteScramCredential { user: "bob".into(), mechanism: ScramMechanism::Sha256 });
        img.apply(&MetadataRecord::DeleteScramCredential { user: "alice".into(), mechanism: ScramMechanism::Sha512 });
        assert!(img.scram_credentials.is_empty());
        let odd = json.replace("ab01", "ab0");
        assert!(serde_json::from_str::<MetadataRecord>(&odd).is_err(), "odd hex is refused, not truncated");
        for mechanism in ScramMechanism::ALL {
            assert_eq!(ScramMechanism::parse(mechanism.name()), Some(mechanism));
            assert_eq!(ScramMechanism::from_kafka_type(mechanism.kafka_type()), Some(mechanism));
        }
        assert_eq!(ScramMechanism::from_kafka_type(0), None, "Kafka's UNKNOWN");
    }
}
