//! The replicated state: metadata records and the image they build.
//!
//! Pure and deterministic: every node applies the same committed records in
//! the same order and gets the same image. A record that no longer applies
//! (its topic was deleted, its partition does not exist) is ignored, never
//! an error, because an earlier record in the log already decided the
//! outcome on every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topic config that allows electing a leader from outside the ISR.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerImage {
    pub node_id: i32,
    pub incarnation: u64,
    pub host: String,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    pub controller_port: u16,
    /// Fenced brokers lead nothing and may not be added to an ISR.
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// -1: no leader.
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change of leader or ISR (the version AlterPartition
    /// requests must quote).
    pub partition_epoch: i32,
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
            MetadataRecord::RegisterBroker { node_id, incarnation, host, port, shard_ports, controller_port } => {
                self.brokers.insert(
                    *node_id,
                    BrokerImage {
                        node_id: *node_id,
                        incarnation: *incarnation,
                        host: host.clone(),
                        port: *port,
                        shard_ports: shard_ports.clone(),
                        controller_port: *controller_port,
                        fenced: true,
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
                let partitions = assignments
                    .iter()
                    .map(|replicas| PartitionImage {
                        replicas: replicas.clone(),
                        isr: replicas.clone(),
                        leader: replicas.first().copied().unwrap_or(-1),
                        leader_epoch: 0,
                        partition_epoch: 0,
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicImage { name: name.clone(), topic_id: topic_id.clone(), configs: configs.clone(), partitions },
                );
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataRecord::AlterTopicConfigs { name, configs } => {
                if let Some(t) = self.topics.get_mut(name) {
                    t.configs = configs.clone();
                }
            }
            MetadataRecord::PartitionChange { topic, partition, leader, isr, leader_epoch, partition_epoch } => {
                if let Some(p) = self.partition_mut(topic, *partition) {
                    p.leader = *leader;
                    p.isr = isr.clone();
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
                partition_epoch: 0
            })
        );
        img.apply(&MetadataRecord::PartitionChange {
            topic: "t".into(),
            partition: 1,
            leader: 1,
            isr: vec![1],
            leader_epoch: 1,
            partition_epoch: 1,
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
        });
        img.apply(&MetadataRecord::AlterTopicConfigs { name: "t".into(), configs: BTreeMap::new() });
        assert!(img.topics.is_empty());
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = register(3);
        let json = serde_json::to_string(&r).expect("encode");
        let back: MetadataRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, r);
    }
}
