//! `spate cluster status` and `spate cluster info`.

use anyhow::Context;
use clap::Subcommand;
use spate_client::{Admin, BrokerInfo, ClusterMetadata};

use crate::GlobalArgs;
use crate::output::{Table, print};

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// One line per broker (address, shards, alive or fenced, controller),
    /// the controller, and partitions without a leader or under-replicated.
    #[command(visible_alias = "health")]
    Status,
    /// Brokers, the controller, and topics with their partition counts.
    Info,
}

pub(crate) async fn run(global: &GlobalArgs, command: ClusterCommand) -> anyhow::Result<()> {
    let admin = Admin::new(global.connect().await?);
    let metadata = admin.cluster_info().await.context("reading cluster metadata")?;
    match command {
        ClusterCommand::Status => print(&status_text(&metadata))?,
        ClusterCommand::Info => print(&info_text(&metadata))?,
    }
    Ok(())
}

fn address(broker: &BrokerInfo) -> String {
    if broker.host.contains(':') {
        format!("[{}]:{}", broker.host, broker.port)
    } else {
        format!("{}:{}", broker.host, broker.port)
    }
}

/// The controller's id, or "none" while the quorum has no leader.
fn controller_text(metadata: &ClusterMetadata) -> String {
    if metadata.controller_id < 0 { "none".into() } else { metadata.controller_id.to_string() }
}

fn status_text(metadata: &ClusterMetadata) -> String {
    let mut brokers = Table::new(&["ID", "ADDRESS", "SHARDS", "STATUS", "CONTROLLER"]);
    let mut sorted: Vec<_> = metadata.brokers.iter().collect();
    sorted.sort_by_key(|broker| broker.node_id);
    for broker in sorted {
        let status = if broker.fenced { "fenced" } else { "alive" };
        let role = if broker.node_id == metadata.controller_id {
            "active"
        } else if broker.controller_port != 0 {
            "voter"
        } else {
            ""
        };
        brokers.row(vec![
            broker.node_id.to_string(),
            address(broker),
            broker.shard_ports.len().to_string(),
            status.into(),
            role.into(),
        ]);
    }
    let partitions = metadata.topics.iter().flat_map(|topic| &topic.partitions);
    let (mut total, mut leaderless, mut under_replicated) = (0, 0, 0);
    for partition in partitions {
        total += 1;
        leaderless += usize::from(partition.leader < 0);
        under_replicated += usize::from(partition.is_under_replicated());
    }
    let mut summary = Table::default();
    summary.row(vec!["CONTROLLER".into(), controller_text(metadata)]);
    summary.row(vec!["BROKERS".into(), metadata.brokers.len().to_string()]);
    let fenced = metadata.brokers.iter().filter(|broker| broker.fenced).count();
    summary.row(vec!["FENCED".into(), fenced.to_string()]);
    summary.row(vec!["PARTITIONS".into(), total.to_string()]);
    summary.row(vec!["LEADERLESS".into(), leaderless.to_string()]);
    summary.row(vec!["UNDER-REPLICATED".into(), under_replicated.to_string()]);
    format!("{}\n{}", summary.render(), brokers.render())
}

fn info_text(metadata: &ClusterMetadata) -> String {
    let mut brokers = Table::new(&["ID", "HOST", "PORT", "SHARD-PORTS"]);
    let mut sorted: Vec<_> = metadata.brokers.iter().collect();
    sorted.sort_by_key(|broker| broker.node_id);
    for broker in sorted {
        // rpk marks the controller with a star.
        let id = if broker.node_id == metadata.controller_id {
            format!("{}*", broker.node_id)
        } else {
            broker.node_id.to_string()
        };
        let shard_ports: Vec<String> = broker.shard_ports.iter().map(u16::to_string).collect();
        brokers.row(vec![id, broker.host.clone(), broker.port.to_string(), shard_ports.join(",")]);
    }
    let mut topics = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
    let mut sorted: Vec<_> = metadata.topics.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in sorted {
        let replicas = topic.partitions.first().map_or(0, |partition| partition.replicas.len());
        topics.row(vec![topic.name.clone(), topic.partitions.len().to_string(), replicas.to_string()]);
    }
    format!(
        "CLUSTER\n=======\ncontroller  {}\n\nBROKERS\n=======\n{}\nTOPICS\n======\n{}",
        controller_text(metadata),
        brokers.render(),
        topics.render()
    )
}

#[cfg(test)]
mod tests {
    use spate_client::BrokerInfo;

    use super::*;

    #[test]
    fn info_marks_the_controller_and_lists_shard_ports() {
        let metadata = ClusterMetadata {
            brokers: vec![
                BrokerInfo {
                    node_id: 2,
                    host: "10.0.0.2".into(),
                    port: 9400,
                    shard_ports: vec![],
                    fenced: false,
                    controller_port: 0,
                },
                BrokerInfo {
                    node_id: 1,
                    host: "10.0.0.1".into(),
                    port: 9400,
                    shard_ports: vec![9401, 9402],
                    fenced: false,
                    controller_port: 0,
                },
            ],
            controller_id: 1,
            topics: vec![],
        };
        let text = info_text(&metadata);
        let lines: Vec<&str> = text.lines().collect();
        let first = lines.iter().position(|line| line.starts_with("ID")).expect("broker table") + 1;
        assert_eq!(lines[first], "1*  10.0.0.1  9400  9401,9402");
        assert_eq!(lines[first + 1], "2   10.0.0.2  9400");
    }

    fn broker(node_id: i32, host: &str, shards: usize, fenced: bool, controller_port: u16) -> BrokerInfo {
        BrokerInfo {
            node_id,
            host: host.into(),
            port: 9400,
            shard_ports: (0..shards).map(|shard| 9401 + shard as u16).collect(),
            fenced,
            controller_port,
        }
    }

    #[test]
    fn status_shows_each_broker_its_liveness_and_the_controller() {
        use spate_client::{PartitionInfo, TopicInfo};
        let partition = |partition, leader, isr: Vec<i32>| PartitionInfo {
            partition,
            leader,
            leader_epoch: 3,
            shard: 0,
            replicas: vec![1, 2, 3],
            isr,
            error: None,
        };
        let metadata = ClusterMetadata {
            brokers: vec![
                broker(3, "10.0.0.3", 4, true, 9500),
                broker(1, "10.0.0.1", 2, false, 9500),
                broker(2, "::1", 2, false, 0),
            ],
            controller_id: 1,
            topics: vec![TopicInfo {
                name: "orders".into(),
                error: None,
                partitions: vec![partition(0, 1, vec![1, 2, 3]), partition(1, 2, vec![2, 1]), partition(2, -1, vec![])],
            }],
        };
        let text = status_text(&metadata);
        let lines: Vec<&str> = text.lines().collect();
        let value = |key: &str| {
            let line = lines.iter().find(|line| line.starts_with(key)).expect("summary line");
            line.split_whitespace().last().unwrap_or_default().to_string()
        };
        assert_eq!(value("CONTROLLER"), "1");
        assert_eq!(value("FENCED"), "1");
        assert_eq!(value("LEADERLESS"), "1");
        assert_eq!(value("UNDER-REPLICATED"), "2", "partition 1 lacks a replica, partition 2 all of them");
        let header = lines.iter().position(|line| line.starts_with("ID")).expect("broker table");
        let rows: Vec<Vec<&str>> = lines[header + 1..].iter().map(|line| line.split_whitespace().collect()).collect();
        assert_eq!(rows[0], vec!["1", "10.0.0.1:9400", "2", "alive", "active"]);
        assert_eq!(rows[1], vec!["2", "[::1]:9400", "2", "alive"]);
        assert_eq!(rows[2], vec!["3", "10.0.0.3:9400", "4", "fenced", "voter"]);

        let leaderless = ClusterMetadata { controller_id: -1, ..metadata };
        assert!(status_text(&leaderless).lines().any(|line| line.split_whitespace().eq(["CONTROLLER", "none"])));
    }
}
