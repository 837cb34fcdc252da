//! `spate cluster info`.

use anyhow::Context;
use clap::Subcommand;
use spate_client::{Admin, ClusterMetadata};

use crate::GlobalArgs;
use crate::output::{Table, print};

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// Brokers, the controller, and topics with their partition counts.
    Info,
}

pub(crate) async fn run(global: &GlobalArgs, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Info => {
            let admin = Admin::new(global.connect().await?);
            let metadata = admin.cluster_info().await.context("reading cluster metadata")?;
            print(&info_text(&metadata))?;
        }
    }
    Ok(())
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
        metadata.controller_id,
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
                BrokerInfo { node_id: 2, host: "10.0.0.2".into(), port: 9400, shard_ports: vec![] },
                BrokerInfo { node_id: 1, host: "10.0.0.1".into(), port: 9400, shard_ports: vec![9401, 9402] },
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
}
