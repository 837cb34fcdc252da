//! Owned copies of what the broker says about the cluster, and where each
//! partition's requests go.

use std::fmt;

use spate_flatbuf::proto::ErrorCode;

use crate::config::format_address;
use crate::error::ClientError;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The answer to a Metadata request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterMetadata {
    pub brokers: Vec<BrokerInfo>,
    pub controller_id: i32,
    pub topics: Vec<TopicInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    /// The main port: any core accepts and forwards.
    pub port: u16,
    /// `shard_ports[i]` is core i's own port.
    pub shard_ports: Vec<u16>,
    /// The controller fenced the broker (it missed heartbeats): it leads
    /// nothing and is in no in-sync replica set until it comes back.
    pub fenced: bool,
    /// The broker's controller quorum listener when it is a voter, else 0.
    pub controller_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// `None` when the broker reported no error for the topic.
    pub error: Option<ErrorCode>,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// The leader's node id; negative when the partition has no leader.
    pub leader: i32,
    pub leader_epoch: i32,
    /// The leader's core that owns the partition.
    pub shard: u16,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub error: Option<ErrorCode>,
}

/// A topic as DescribeTopics reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub error: Option<ErrorCode>,
    pub topic_id: Option<String>,
    pub partitions: Vec<PartitionDescription>,
    /// Every known config with its effective value.
    pub configs: Vec<ConfigEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: i32,
    pub error: Option<ErrorCode>,
    pub leader: i32,
    pub shard: u16,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
    pub segment_count: u32,
    /// -1 when the broker does not report one.
    pub leader_epoch: i32,
    /// Bumped by the controller at every change of leader or ISR; -1 when
    /// not reported.
    pub partition_epoch: i32,
}

impl PartitionDescription {
    /// Fewer replicas in sync than assigned.
    pub fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

impl PartitionInfo {
    /// Fewer replicas in sync than assigned.
    pub fn is_under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

/// Where a partition's requests go, and the leader epoch the metadata
/// gave, which fetches carry so that a deposed leader refuses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionRoute {
    pub address: String,
    pub leader: i32,
    pub leader_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
    /// True when set on the topic, false for a default.
    pub is_set: bool,
}

/// `None` for `ErrorCode::None`, so that callers can match on `Some`.
pub(crate) fn error_of(code: ErrorCode) -> Option<ErrorCode> {
    (code != ErrorCode::None).then_some(code)
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|topic| topic.name == name)
    }

    pub fn broker(&self, node_id: i32) -> Option<&BrokerInfo> {
        self.brokers.iter().find(|broker| broker.node_id == node_id)
    }

    /// The number of partitions of a topic the broker reports without error.
    pub fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        let info = self.usable_topic(topic)?;
        i32::try_from(info.partitions.len())
            .map_err(|_| ClientError::Protocol(format!("topic {topic:?} reports too many partitions")))
    }

    fn usable_topic(&self, topic: &str) -> Result<&TopicInfo, ClientError> {
        let info = self.topic(topic).ok_or_else(|| ClientError::UnknownTopic(topic.to_string()))?;
        match info.error {
            None if !info.partitions.is_empty() => Ok(info),
            None | Some(ErrorCode::UnknownTopicOrPartition) => Err(ClientError::UnknownTopic(topic.to_string())),
            Some(code) => Err(ClientError::server(code, None)),
        }
    }

    /// Where requests for a partition go: the leader's port for the owning
    /// core when `shard_aware` (and the broker lists one), else its main port.
    pub fn partition_address(&self, topic: &str, partition: i32, shard_aware: bool) -> Result<String, ClientError> {
        Ok(self.partition_route(topic, partition, shard_aware)?.address)
    }

    /// The leader's address for the partition with its leader epoch. A
    /// partition without a leader (-1, an election under way) or whose
    /// leader the metadata does not list is `LeaderNotAvailable`, which is
    /// retriable: callers refresh metadata and try again.
    pub(crate) fn partition_route(
        &self,
        topic: &str,
        partition: i32,
        shard_aware: bool,
    ) -> Result<PartitionRoute, ClientError> {
        let info = self.usable_topic(topic)?;
        let unknown = || ClientError::UnknownPartition { topic: topic.to_string(), partition };
        let partition_info = info.partitions.iter().find(|p| p.partition == partition).ok_or_else(unknown)?;
        if let Some(code) = partition_info.error {
            return Err(ClientError::Server { code, message: Some(format!("metadata of {topic}/{partition}")) });
        }
        let no_leader = |why: String| ClientError::Server { code: ErrorCode::LeaderNotAvailable, message: Some(why) };
        if partition_info.leader < 0 {
            return Err(no_leader(format!("{topic}/{partition} has no leader")));
        }
        let broker = self.broker(partition_info.leader).ok_or_else(|| {
            no_leader(format!("leader {} of {topic}/{partition} is not listed", partition_info.leader))
        })?;
        let shard_port = broker.shard_ports.get(usize::from(partition_info.shard)).copied();
        let port = match shard_port {
            Some(port) if shard_aware && port != 0 => port,
            _ => broker.port,
        };
        Ok(PartitionRoute {
            address: format_address(&broker.host, port),
            leader: partition_info.leader,
            leader_epoch: partition_info.leader_epoch,
        })
    }

    /// Every broker's main address, for requests any broker can answer;
    /// fenced brokers last.
    pub(crate) fn broker_addresses(&self) -> Vec<String> {
        let mut brokers: Vec<&BrokerInfo> = self.brokers.iter().collect();
        brokers.sort_by_key(|broker| broker.fenced);
        brokers.into_iter().map(|broker| format_address(&broker.host, broker.port)).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One broker (node 1, main port 9400, cores on 9401 and 9402) and a
    /// topic whose partition p is owned by core p % 2.
    pub(crate) fn one_broker(topic: &str, partitions: i32) -> ClusterMetadata {
        ClusterMetadata {
            brokers: vec![BrokerInfo {
                node_id: 1,
                host: "127.0.0.1".into(),
                port: 9400,
                shard_ports: vec![9401, 9402],
                fenced: false,
                controller_port: 0,
            }],
            controller_id: 1,
            topics: vec![TopicInfo {
                name: topic.into(),
                error: None,
                partitions: (0..partitions)
                    .map(|partition| PartitionInfo {
                        partition,
                        leader: 1,
                        leader_epoch: 0,
                        shard: u16::try_from(partition % 2).unwrap_or_default(),
                        replicas: vec![1],
                        isr: vec![1],
                        error: None,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn shard_aware_routing_uses_the_owning_cores_port() {
        let metadata = one_broker("orders", 3);
        assert_eq!(metadata.partition_address("orders", 0, true).ok().as_deref(), Some("127.0.0.1:9401"));
        assert_eq!(metadata.partition_address("orders", 1, true).ok().as_deref(), Some("127.0.0.1:9402"));
        assert_eq!(metadata.partition_address("orders", 1, false).ok().as_deref(), Some("127.0.0.1:9400"));
        assert!(matches!(
            metadata.partition_address("orders", 3, true),
            Err(ClientError::UnknownPartition { partition: 3, .. })
        ));
        assert!(matches!(metadata.partition_address("nope", 0, true), Err(ClientError::UnknownTopic(_))));
    }

    #[test]
    fn a_partition_without_a_leader_is_a_retriable_error() {
        let mut metadata = one_broker("orders", 1);
        metadata.topics[0].partitions[0].leader = -1;
        let error = metadata.partition_address("orders", 0, true).err();
        assert!(error.as_ref().is_some_and(ClientError::is_retriable), "{error:?}");
        assert_eq!(error.as_ref().and_then(ClientError::code), Some(ErrorCode::LeaderNotAvailable));
        assert!(error.as_ref().is_some_and(ClientError::invalidates_metadata));
        // A leader the metadata does not list: the same.
        metadata.topics[0].partitions[0].leader = 7;
        let error = metadata.partition_address("orders", 0, true).err();
        assert_eq!(error.as_ref().and_then(ClientError::code), Some(ErrorCode::LeaderNotAvailable));
        // A shard the broker lists no port for falls back to the main port.
        let mut metadata = one_broker("orders", 1);
        metadata.brokers[0].shard_ports.clear();
        assert_eq!(metadata.partition_address("orders", 0, true).ok().as_deref(), Some("127.0.0.1:9400"));
    }

    #[test]
    fn each_partition_goes_to_its_own_leaders_shard_port_with_its_epoch() {
        let mut metadata = one_broker("orders", 2);
        metadata.brokers.push(BrokerInfo {
            node_id: 2,
            host: "10.0.0.2".into(),
            port: 9500,
            shard_ports: vec![9501, 9502, 9503],
            fenced: false,
            controller_port: 0,
        });
        let p1 = &mut metadata.topics[0].partitions[1];
        (p1.leader, p1.leader_epoch, p1.shard) = (2, 7, 2);
        let route = metadata.partition_route("orders", 1, true).expect("routed");
        assert_eq!((route.address.as_str(), route.leader, route.leader_epoch), ("10.0.0.2:9503", 2, 7));
        assert_eq!(metadata.partition_address("orders", 1, false).ok().as_deref(), Some("10.0.0.2:9500"));
        assert_eq!(metadata.partition_address("orders", 0, true).ok().as_deref(), Some("127.0.0.1:9401"));
        // Fenced brokers are asked last for metadata.
        metadata.brokers[0].fenced = true;
        assert_eq!(metadata.broker_addresses(), vec!["10.0.0.2:9500".to_string(), "127.0.0.1:9400".to_string()]);
    }
}
