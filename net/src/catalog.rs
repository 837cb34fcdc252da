//! The topic catalog: the broker's view of the controller's metadata
//! (topics, partition assignments, ISR, leaders, brokers). Built from each
//! metadata image this node applies (`Catalog::from_image`); every shard
//! reads an immutable snapshot swapped in after each change.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub const TOPICS_DIR: &str = "topics";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Unique per creation, so a topic deleted and created again under the
    /// same name never sees the old one's files.
    pub topic_id: String,
    pub partitions: u32,
    pub replication_factor: i16,
    /// Kafka config names to values, as the user set them.
    pub configs: BTreeMap<String, String>,
    /// Per partition: replicas, ISR, leader and epochs, from the
    /// controller's metadata (empty in a catalog file; see `assignment`).
    #[serde(skip)]
    pub assignments: Vec<PartitionAssignment>,
}

/// Where a partition lives in the cluster, as the controller decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionAssignment {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1: no leader (offline).
    pub leader: i32,
    /// Bumped at every leader change; stamped into every batch.
    pub leader_epoch: i32,
    /// Bumped at every change of leader or ISR.
    pub partition_epoch: i32,
    /// Eligible leader replicas (KIP-966), for Kafka's
    /// DescribeTopicPartitions.
    pub elr: Vec<i32>,
}

impl From<&spate_replication::PartitionImage> for PartitionAssignment {
    fn from(p: &spate_replication::PartitionImage) -> Self {
        PartitionAssignment {
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            elr: p.elr.clone(),
        }
    }
}

/// A broker of the cluster, as the controller's metadata has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerMeta {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    pub controller_port: u16,
    /// Where it serves the Kafka protocol (port 0: it does not).
    pub kafka_host: String,
    pub kafka_port: u16,
    /// Every Kafka listener's address, by listener name.
    pub kafka_listeners: Vec<spate_replication::KafkaEndpoint>,
    pub fenced: bool,
}

impl BrokerMeta {
    /// Where clients of the Kafka listener `listener` reach this broker, if
    /// it has such a listener. A broker registered before listeners had
    /// names has one, PLAINTEXT.
    pub fn kafka_endpoint(&self, listener: &str) -> Option<(&str, u16)> {
        if self.kafka_listeners.is_empty() {
            let plaintext = self.kafka_port != 0 && listener.eq_ignore_ascii_case("PLAINTEXT");
            return plaintext.then_some((self.kafka_host.as_str(), self.kafka_port));
        }
        let endpoint = self.kafka_listeners.iter().find(|e| e.name.eq_ignore_ascii_case(listener))?;
        Some((endpoint.host.as_str(), endpoint.port))
    }
}

impl TopicMeta {
    /// The partition's assignment (a partition the metadata does not
    /// describe has no replicas and no leader).
    pub fn assignment(&self, partition: u32) -> PartitionAssignment {
        self.assignments.get(partition as usize).cloned().unwrap_or(PartitionAssignment {
            leader: -1,
            leader_epoch: -1,
            partition_epoch: -1,
            ..Default::default()
        })
    }

    /// `<data>/topics/<name>.<topic_id>/<partition>`: readable, unique.
    pub fn partition_dir(&self, data_dir: &Path, partition: u32) -> PathBuf {
        self.topic_dir(data_dir).join(partition.to_string())
    }

    pub fn topic_dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(TOPICS_DIR).join(format!("{}.{}", self.name, self.topic_id))
    }
}

/// One immutable snapshot of the catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub topics: HashMap<String, Arc<TopicMeta>>,
    /// Every registered broker, by node id.
    pub brokers: BTreeMap<i32, BrokerMeta>,
    /// The active controller's node id (-1: none known).
    pub controller_id: i32,
    /// The secret brokers prove they know (`broker_auth`); None until the
    /// first active controller has committed it.
    pub cluster_secret: Option<Arc<[u8]>>,
    /// Topic names by their Kafka topic id (`kafka_topic_id`), for Kafka
    /// requests that name topics by id.
    pub by_kafka_id: HashMap<u128, String>,
    /// Client quotas (user / client id byte rates).
    pub(crate) client_quotas: Arc<crate::security::quota::ClientQuotas>,
    /// Every user's SCRAM credentials (salts and keys, no passwords), for
    /// SASL on any shard.
    pub scram_credentials: Arc<crate::security::sasl::ScramCredentials>,
    /// Kafka's ACLs, indexed for the front-ends' checks.
    pub authorizer: Arc<crate::security::Authorizer>,
}

/// A topic's Kafka topic id: a stable 16-byte UUID derived from Spate's
/// topic id (unique per creation, so a topic deleted and created again
/// gets a new one, as in Kafka). Never the nil UUID, which Kafka reads as
/// "no id".
pub fn kafka_topic_id(topic_id: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(topic_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // RFC 4122 version 4 / variant bits, as Kafka's own ids have.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    u128::from_be_bytes(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid catalog: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Catalog {
    /// The catalog of `image` after `previous`: the ACL index is kept when
    /// the ACLs did not change (most images change partitions, not ACLs,
    /// and the index is rebuilt from every binding).
    pub fn from_image_after(image: &spate_replication::MetadataImage, previous: &Catalog) -> Catalog {
        if previous.authorizer.version() == image.acls_version && image.acls.len() == previous.authorizer.acls().len() {
            return Catalog { authorizer: previous.authorizer.clone(), ..Catalog::from_image_without_acls(image) };
        }
        Catalog::from_image(image)
    }

    /// The broker's view of the controller's metadata image.
    pub fn from_image(image: &spate_replication::MetadataImage) -> Catalog {
        let authorizer = Arc::new(crate::security::Authorizer::new(&image.acls, image.acls_version));
        Catalog { authorizer, ..Catalog::from_image_without_acls(image) }
    }

    fn from_image_without_acls(image: &spate_replication::MetadataImage) -> Catalog {
        let topics = image
            .topics
            .values()
            .map(|topic| {
                let assignments: Vec<PartitionAssignment> =
                    topic.partitions.iter().map(PartitionAssignment::from).collect();
                let meta = TopicMeta {
                    name: topic.name.clone(),
                    topic_id: topic.topic_id.clone(),
                    partitions: assignments.len() as u32,
                    replication_factor: assignments.first().map_or(1, |a| a.replicas.len() as i16),
                    configs: topic.configs.clone(),
                    assignments,
                };
                (topic.name.clone(), Arc::new(meta))
            })
            .collect();
        let brokers = image
            .brokers
            .values()
            .map(|broker| {
                let meta = BrokerMeta {
                    node_id: broker.node_id,
                    host: broker.host.clone(),
                    port: broker.port,
                    shard_ports: broker.shard_ports.clone(),
                    controller_port: broker.controller_port,
                    kafka_host: broker.kafka_host.clone(),
                    kafka_port: broker.kafka_port,
                    kafka_listeners: broker.kafka_listeners.clone(),
                    fenced: broker.fenced,
                };
                (broker.node_id, meta)
            })
            .collect();
        let cluster_secret = image
            .cluster_secret_hex
            .as_deref()
            .and_then(crate::broker_auth::secret_from_hex)
            .map(|secret| Arc::from(secret.into_boxed_slice()));
        let by_kafka_id = image.topics.values().map(|t| (kafka_topic_id(&t.topic_id), t.name.clone())).collect();
        let client_quotas = Arc::new(crate::security::quota::ClientQuotas::from_image(&image.client_quotas));
        Catalog {
            topics,
            brokers,
            controller_id: image.controller_id,
            cluster_secret,
            by_kafka_id,
            client_quotas,
            scram_credentials: Arc::new(image.scram_credentials.clone()),
            authorizer: Arc::default(),
        }
    }
}

/// Which shard owns a partition: spread each topic's partitions over the
/// shards, starting at a place that depends on the name so that many small
/// topics do not all land on shard 0. Not persisted: a broker restarted with
/// another shard count reassigns, and any shard can open any directory.
pub fn owner_shard(topic: &str, partition: u32, shard_count: usize) -> usize {
    debug_assert!(shard_count > 0);
    let start = crc32c::crc32c(topic.as_bytes()) as usize;
    (start.wrapping_add(partition as usize)) % shard_count
}

/// A new topic id: 16 hex digits, random enough that two creations of the
/// same name never collide (std's RandomState is seeded from the OS).
pub fn new_topic_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_every_shard() {
        let shards: std::collections::HashSet<usize> = (0..8).map(|p| owner_shard("orders", p, 4)).collect();
        assert_eq!(shards.len(), 4);
        assert_eq!(owner_shard("orders", 3, 1), 0);
    }

    /// A catalog after an image with the same ACLs shares the previous
    /// one's index; an ACL change builds a new one with the new version.
    #[test]
    fn the_acl_index_is_rebuilt_only_when_the_acls_change() {
        use spate_replication::MetadataRecord;
        use spate_replication::acl::*;
        let mut image = spate_replication::MetadataImage::default();
        let first = Catalog::from_image(&image);
        image.apply(&MetadataRecord::ProducerIdBlock { node_id: 1, start: 0, len: 10 });
        let same = Catalog::from_image_after(&image, &first);
        assert!(Arc::ptr_eq(&first.authorizer, &same.authorizer));
        image.apply(&MetadataRecord::CreateAcls {
            acls: vec![AclBinding {
                resource_type: AclResourceType::Topic,
                resource_name: "t".into(),
                pattern_type: AclPatternType::Literal,
                principal: "User:*".into(),
                host: "*".into(),
                operation: AclOperation::Read,
                permission: AclPermission::Deny,
            }],
        });
        let changed = Catalog::from_image_after(&image, &same);
        assert_eq!((changed.authorizer.version(), changed.authorizer.acls().len()), (1, 1));
    }

    #[test]
    fn topic_ids_differ() {
        assert_ne!(new_topic_id(), new_topic_id());
    }
}
