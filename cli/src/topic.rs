//! `spate topic create|list|describe|alter-config|delete`.

use anyhow::Context;
use clap::Subcommand;
use spate_client::{Admin, ErrorCode, TopicDescription, TopicInfo};

use crate::GlobalArgs;
use crate::output::{Table, ids, print};
use crate::parse;

#[derive(Subcommand, Debug)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, short = 'r', default_value_t = 1)]
        replicas: i16,
        /// A topic config as key=value (repeatable), e.g. retention.ms=86400000.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse::config_entry)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Describe topics: partitions (leader, leader epoch, replicas, in-sync
    /// replicas, under-replicated or offline) with their offsets and sizes,
    /// and configs.
    Describe {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Change a topic's configs while it runs; other keys keep their values.
    AlterConfig {
        name: String,
        /// Set a config, as key=value (repeatable).
        #[arg(long = "set", short = 's', value_name = "KEY=VALUE", value_parser = parse::config_entry)]
        set: Vec<(String, String)>,
        /// Return a config to its default (repeatable).
        #[arg(long = "delete", short = 'd', value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub(crate) async fn run(global: &GlobalArgs, command: TopicCommand) -> anyhow::Result<()> {
    if let TopicCommand::Create { name, .. } = &command {
        spate_client::validate_topic_name(name)?;
    }
    let admin = Admin::new(global.connect().await?);
    match command {
        TopicCommand::Create { name, partitions, replicas, configs } => {
            admin
                .create_topic(&name, partitions, replicas, &configs)
                .await
                .with_context(|| format!("creating topic {name}"))?;
            let mut table = Table::new(&["TOPIC", "STATUS"]);
            table.row(vec![name, "OK".into()]);
            print(&table.render())?;
        }
        TopicCommand::List => {
            let mut topics = admin.list_topics().await.context("listing topics")?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            print(&list_table(&topics))?;
        }
        TopicCommand::Describe { names } => {
            let topics = admin.describe_topics(Some(&names)).await.context("describing topics")?;
            let sections: Vec<String> = names
                .iter()
                .filter_map(|name| topics.iter().find(|topic| &topic.name == name))
                .map(describe_text)
                .collect();
            print(&sections.join("\n"))?;
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                anyhow::bail!("nothing to change: give --set KEY=VALUE or --delete KEY");
            }
            admin
                .alter_configs(&name, &set, &delete)
                .await
                .with_context(|| format!("changing the configs of topic {name}"))?;
            let mut table = Table::new(&["TOPIC", "STATUS"]);
            table.row(vec![name, "OK".into()]);
            print(&table.render())?;
        }
        TopicCommand::Delete { names } => {
            let failure = |failed| format!("{failed} of {} topics could not be deleted", names.len());
            crate::output::delete_each("TOPIC", &names, failure, async |name| admin.delete_topic(name).await).await?;
        }
    }
    Ok(())
}

fn list_table(topics: &[TopicInfo]) -> String {
    let mut table = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
    for topic in topics {
        let replicas = topic.partitions.first().map_or(0, |partition| partition.replicas.len());
        table.row(vec![topic.name.clone(), topic.partitions.len().to_string(), replicas.to_string()]);
    }
    table.render()
}

fn describe_text(topic: &TopicDescription) -> String {
    let mut summary = Table::default();
    summary.row(vec!["NAME".into(), topic.name.clone()]);
    if let Some(topic_id) = &topic.topic_id {
        summary.row(vec!["TOPIC-ID".into(), topic_id.clone()]);
    }
    summary.row(vec!["PARTITIONS".into(), topic.partitions.len().to_string()]);
    let under_replicated = topic.partitions.iter().filter(|p| p.is_under_replicated()).count();
    summary.row(vec!["UNDER-REPLICATED".into(), under_replicated.to_string()]);

    let mut partitions = Table::new(&[
        "PARTITION",
        "LEADER",
        "EPOCH",
        "SHARD",
        "REPLICAS",
        "ISR",
        "LOG-START",
        "HIGH-WATERMARK",
        "LOG-END",
        "SIZE-BYTES",
        "SEGMENTS",
        "STATUS",
        "ERROR",
    ]);
    let mut sorted: Vec<_> = topic.partitions.iter().collect();
    sorted.sort_by_key(|partition| partition.partition);
    for p in sorted {
        // No leader: an election is under way, or no in-sync replica lives.
        let leader = if p.leader < 0 { "none".to_string() } else { p.leader.to_string() };
        // A log this broker cannot open (damaged, unreadable) is not
        // served here whatever the metadata says: say so first.
        let status = if p.error == Some(ErrorCode::StorageError) {
            "storage-error"
        } else if p.leader < 0 {
            "offline"
        } else if p.is_under_replicated() {
            "under-replicated"
        } else {
            "ok"
        };
        partitions.row(vec![
            p.partition.to_string(),
            leader,
            p.leader_epoch.to_string(),
            p.shard.to_string(),
            ids(&p.replicas),
            ids(&p.isr),
            p.log_start_offset.to_string(),
            p.high_watermark.to_string(),
            p.log_end_offset.to_string(),
            p.size_bytes.to_string(),
            p.segment_count.to_string(),
            status.into(),
            p.error.map(|code| format!("{code:?}")).unwrap_or_default(),
        ]);
    }

    let mut configs = Table::new(&["CONFIG", "VALUE", "SOURCE"]);
    let mut sorted: Vec<_> = topic.configs.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for entry in sorted {
        let source = if entry.is_set { "set" } else { "default" };
        configs.row(vec![entry.key.clone(), entry.value.clone(), source.into()]);
    }
    format!("{}\n{}\n{}", summary.render(), partitions.render(), configs.render())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use spate_client::{ConfigEntry, PartitionDescription};

    use super::*;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(subcommand)]
        command: TopicCommand,
    }

    #[test]
    fn create_takes_repeated_configs_and_refuses_malformed_ones() {
        let parsed = Wrapper::try_parse_from([
            "t",
            "create",
            "orders",
            "-p",
            "3",
            "--config",
            "retention.ms=1000",
            "-c",
            "segment.bytes=1048576",
        ])
        .expect("valid");
        let TopicCommand::Create { name, partitions, replicas, configs } = parsed.command else {
            panic!("parsed as another command")
        };
        assert_eq!((name.as_str(), partitions, replicas), ("orders", 3, 1));
        assert_eq!(configs, vec![("retention.ms".into(), "1000".into()), ("segment.bytes".into(), "1048576".into())]);
        let error =
            Wrapper::try_parse_from(["t", "create", "orders", "--config", "retention.ms"]).expect_err("no value");
        assert!(error.to_string().contains("key=value"), "{error}");
        assert!(Wrapper::try_parse_from(["t", "describe"]).is_err(), "describe needs a name");
    }

    #[test]
    fn describe_shows_offsets_sizes_and_config_sources() {
        let topic = TopicDescription {
            name: "orders".into(),
            error: None,
            topic_id: None,
            partitions: vec![PartitionDescription {
                partition: 0,
                error: None,
                leader: 1,
                shard: 1,
                replicas: vec![1],
                isr: vec![1],
                log_start_offset: 5,
                high_watermark: 42,
                log_end_offset: 43,
                size_bytes: 4096,
                segment_count: 2,
                leader_epoch: 3,
                partition_epoch: 4,
            }],
            configs: vec![
                ConfigEntry { key: "segment.bytes".into(), value: "1048576".into(), is_set: false },
                ConfigEntry { key: "retention.ms".into(), value: "1000".into(), is_set: true },
            ],
        };
        let text = describe_text(&topic);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].split_whitespace().eq(["NAME", "orders"]), "{}", lines[0]);
        assert!(lines.iter().any(|line| line.split_whitespace().eq(["UNDER-REPLICATED", "0"])));
        let row = lines.iter().find(|line| line.starts_with("0 ")).expect("partition row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, vec!["0", "1", "3", "1", "[1]", "[1]", "5", "42", "43", "4096", "2", "ok"]);
        let retention = lines.iter().find(|line| line.starts_with("retention.ms")).expect("config row");
        assert!(retention.ends_with("set"));
        let segment = lines.iter().find(|line| line.starts_with("segment.bytes")).expect("config row");
        assert!(segment.ends_with("default"));
    }

    #[test]
    fn describe_shows_leaders_epochs_and_under_replicated_partitions() {
        let partition = |partition, leader, isr: Vec<i32>| PartitionDescription {
            partition,
            error: None,
            leader,
            shard: 0,
            replicas: vec![1, 2, 3],
            isr,
            log_start_offset: 0,
            high_watermark: 10,
            log_end_offset: 12,
            size_bytes: 100,
            segment_count: 1,
            leader_epoch: 7,
            partition_epoch: 9,
        };
        let topic = TopicDescription {
            name: "orders".into(),
            error: None,
            topic_id: None,
            partitions: vec![partition(2, -1, vec![]), partition(1, 3, vec![3, 1]), partition(0, 1, vec![1, 2, 3])],
            configs: vec![],
        };
        let text = describe_text(&topic);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().any(|line| line.split_whitespace().eq(["UNDER-REPLICATED", "2"])), "{text}");
        let header = lines.iter().position(|line| line.starts_with("PARTITION ")).expect("partition table");
        // Cells are at least two spaces apart; id lists hold single spaces.
        let cells = |line: &&str| -> Vec<String> {
            line.split("  ").map(str::trim).filter(|cell| !cell.is_empty()).map(str::to_string).collect()
        };
        let rows: Vec<Vec<String>> = lines[header + 1..header + 4].iter().map(cells).collect();
        assert_eq!(rows[0][..6], ["0", "1", "7", "0", "[1 2 3]", "[1 2 3]"]);
        assert_eq!(rows[0].last().map(String::as_str), Some("ok"));
        assert_eq!(rows[1][..6], ["1", "3", "7", "0", "[1 2 3]", "[3 1]"]);
        assert_eq!(rows[1].last().map(String::as_str), Some("under-replicated"));
        assert_eq!(rows[2][..2], ["2", "none"]);
        assert_eq!(rows[2].last().map(String::as_str), Some("offline"));
    }
}
