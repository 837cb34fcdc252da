//! `spate txn list|describe|describe-producers|abort`: transactions through
//! the brokers' Kafka listeners, with the verbs and flag names of Kafka's
//! kafka-transactions tool. `list` asks every broker (each lists the
//! transactional ids it coordinates), `describe` the id's coordinator,
//! `describe-producers` and `abort` the partition's leader. `abort` ends
//! a hanging transaction on one partition with an abort marker
//! (WriteTxnMarkers, ClusterAction): run it only on a transaction its
//! coordinator no longer knows, or the transaction loses its atomicity.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::describe_producers_response::ProducerState;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, FindCoordinatorRequest, ListTransactionsRequest,
    MetadataRequest, MetadataResponse, ProducerId, TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka_admin::{Connection, KafkaAdmin, error_name};
use crate::kafka_security::SecurityArgs;
use crate::output::{Table, print};

/// FindCoordinator's key type for transactional ids.
const KEY_TYPE_TRANSACTION: i8 = 1;

#[derive(Subcommand, Debug)]
pub(crate) enum TxnCommand {
    /// Every broker's transactions: id, coordinator, producer id, state.
    List(ListArgs),
    /// One transactional id's state, from its coordinator.
    Describe(DescribeArgs),
    /// A partition's producers and the first offset of their open
    /// transaction, from its leader.
    DescribeProducers(PartitionArgs),
    /// End a hanging transaction on one partition with an abort marker:
    /// the producer whose open transaction starts at --start-offset, or
    /// the one named by --producer-id, --producer-epoch and
    /// --coordinator-epoch.
    Abort(AbortArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    connection: Connection,
}

#[derive(Args, Debug)]
pub(crate) struct DescribeArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long)]
    transactional_id: String,
}

#[derive(Args, Debug)]
pub(crate) struct PartitionArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partition: i32,
}

#[derive(Args, Debug)]
pub(crate) struct AbortArgs {
    #[command(flatten)]
    partition: PartitionArgs,
    /// The first offset of the open transaction to abort.
    #[arg(long, conflicts_with_all = ["producer_id", "producer_epoch", "coordinator_epoch"])]
    start_offset: Option<i64>,
    #[arg(long, requires_all = ["producer_epoch", "coordinator_epoch"])]
    producer_id: Option<i64>,
    #[arg(long)]
    producer_epoch: Option<i16>,
    #[arg(long)]
    coordinator_epoch: Option<i32>,
}

pub(crate) fn run(command: TxnCommand, security: &SecurityArgs) -> anyhow::Result<()> {
    let secure = |connection: &mut Connection| connection.security = security.clone();
    match command {
        TxnCommand::List(mut args) => {
            secure(&mut args.connection);
            list(&args)
        }
        TxnCommand::Describe(mut args) => {
            secure(&mut args.connection);
            describe(&args)
        }
        TxnCommand::DescribeProducers(mut args) => {
            secure(&mut args.connection);
            describe_producers(&args)
        }
        TxnCommand::Abort(mut args) => {
            secure(&mut args.partition.connection);
            abort(&args)
        }
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// The connection flags, aimed at another broker.
fn to_broker(connection: &Connection, host: &str, port: i32) -> Connection {
    Connection { bootstrap_server: format!("{host}:{port}"), ..connection.clone() }
}

/// The cluster's brokers and, for `topic`, its partitions' leaders.
fn metadata(connection: &Connection, topic: Option<&str>) -> anyhow::Result<MetadataResponse> {
    let mut admin = KafkaAdmin::connect(connection)?;
    let topics = topic.map(|name| vec![MetadataRequestTopic::default().with_name(Some(TopicName(text(name))))]);
    admin.call(&MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false))
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let brokers = metadata(&args.connection, None)?.brokers;
    if brokers.is_empty() {
        bail!("the cluster named no brokers");
    }
    let mut rows = Vec::new();
    for broker in &brokers {
        let mut admin = KafkaAdmin::connect(&to_broker(&args.connection, &broker.host, broker.port))
            .with_context(|| format!("broker {}", broker.node_id.0))?;
        let response = admin.call(&ListTransactionsRequest::default())?;
        if response.error_code != 0 {
            bail!("broker {} refused ListTransactions: {}", broker.node_id.0, error_name(response.error_code));
        }
        for state in response.transaction_states {
            rows.push(vec![
                state.transactional_id.0.to_string(),
                broker.node_id.0.to_string(),
                state.producer_id.0.to_string(),
                state.transaction_state.to_string(),
            ]);
        }
    }
    rows.sort();
    let mut table = Table::new(&["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"]);
    rows.into_iter().for_each(|row| table.row(row));
    print(&table.render())?;
    Ok(())
}

fn describe(args: &DescribeArgs) -> anyhow::Result<()> {
    let id = args.transactional_id.as_str();
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    // Batched keys (v4+), which every Spate broker serves.
    let request =
        FindCoordinatorRequest::default().with_key_type(KEY_TYPE_TRANSACTION).with_coordinator_keys(vec![text(id)]);
    let found = admin.call(&request)?;
    let Some(coordinator) = found.coordinators.first() else {
        bail!("FindCoordinator answered no coordinator for {id:?}");
    };
    let (code, node_id, host, port) =
        (coordinator.error_code, coordinator.node_id.0, coordinator.host.to_string(), coordinator.port);
    if code != 0 {
        bail!("finding the coordinator of {id:?}: {}", error_name(code));
    }
    let mut coordinator = KafkaAdmin::connect(&to_broker(&args.connection, &host, port))
        .with_context(|| format!("the coordinator of {id:?} (broker {node_id})"))?;
    let response = coordinator
        .call(&DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(text(id))]))?;
    let Some(state) = response.transaction_states.first() else {
        bail!("the coordinator answered no state for {id:?}");
    };
    if state.error_code != 0 {
        bail!("describing {id:?}: {}", error_name(state.error_code));
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let partitions: Vec<String> =
        state.topics.iter().flat_map(|t| t.partitions.iter().map(move |p| format!("{}-{p}", t.topic.0))).collect();
    let duration_ms = if state.transaction_start_time_ms >= 0 { now_ms - state.transaction_start_time_ms } else { -1 };
    let mut table = Table::new(&[
        "COORDINATOR",
        "TRANSACTIONAL-ID",
        "PRODUCER-ID",
        "PRODUCER-EPOCH",
        "STATE",
        "TIMEOUT-MS",
        "START-TIME-MS",
        "DURATION-MS",
        "PARTITIONS",
    ]);
    table.row(vec![
        node_id.to_string(),
        id.to_string(),
        state.producer_id.0.to_string(),
        state.producer_epoch.to_string(),
        state.transaction_state.to_string(),
        state.transaction_timeout_ms.to_string(),
        state.transaction_start_time_ms.to_string(),
        duration_ms.to_string(),
        partitions.join(","),
    ]);
    print(&table.render())?;
    Ok(())
}

/// The partition's producers, from its leader, and that leader's connection.
fn producers(args: &PartitionArgs) -> anyhow::Result<(Vec<ProducerState>, Connection)> {
    let (topic, partition) = (args.topic.as_str(), args.partition);
    let meta = metadata(&args.connection, Some(topic))?;
    let found = meta.topics.iter().find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
    let Some(found) = found else { bail!("the cluster has no topic {topic:?}") };
    if found.error_code != 0 {
        bail!("topic {topic:?}: {}", error_name(found.error_code));
    }
    let Some(leader_id) = found.partitions.iter().find(|p| p.partition_index == partition).map(|p| p.leader_id.0)
    else {
        bail!("topic {topic:?} has no partition {partition}");
    };
    let Some(leader) = meta.brokers.iter().find(|b| b.node_id.0 == leader_id) else {
        bail!("{topic}/{partition} has no leader now (leader {leader_id})");
    };
    let connection = to_broker(&args.connection, &leader.host, leader.port);
    let mut admin = KafkaAdmin::connect(&connection).with_context(|| format!("the leader of {topic}/{partition}"))?;
    let request = DescribeProducersRequest::default().with_topics(vec![
        TopicRequest::default().with_name(TopicName(text(topic))).with_partition_indexes(vec![partition]),
    ]);
    let response = admin.call(&request)?;
    let answer =
        response.topics.first().and_then(|t| t.partitions.first()).context("DescribeProducers answered nothing")?;
    if answer.error_code != 0 {
        bail!("describing the producers of {topic}/{partition}: {}", error_name(answer.error_code));
    }
    Ok((answer.active_producers.clone(), connection))
}

fn describe_producers(args: &PartitionArgs) -> anyhow::Result<()> {
    let (producers, _) = producers(args)?;
    let mut table = Table::new(&[
        "PRODUCER-ID",
        "PRODUCER-EPOCH",
        "COORDINATOR-EPOCH",
        "LAST-SEQUENCE",
        "TRANSACTION-START-OFFSET",
    ]);
    for producer in producers {
        let start = producer.current_txn_start_offset;
        table.row(vec![
            producer.producer_id.0.to_string(),
            producer.producer_epoch.to_string(),
            producer.coordinator_epoch.to_string(),
            producer.last_sequence.to_string(),
            if start < 0 { "none".to_string() } else { start.to_string() },
        ]);
    }
    print(&table.render())?;
    Ok(())
}

fn abort(args: &AbortArgs) -> anyhow::Result<()> {
    let (topic, partition) = (args.partition.topic.as_str(), args.partition.partition);
    let (producers, leader) = producers(&args.partition)?;
    let (producer_id, producer_epoch, coordinator_epoch) = match (args.start_offset, args.producer_id) {
        (Some(start), _) => {
            let Some(found) = producers.iter().find(|p| p.current_txn_start_offset == start) else {
                bail!("no producer has a transaction open at offset {start} of {topic}/{partition}");
            };
            let epoch = i16::try_from(found.producer_epoch).context("a producer epoch out of range")?;
            (found.producer_id.0, epoch, found.coordinator_epoch)
        }
        (None, Some(producer_id)) => (
            producer_id,
            args.producer_epoch.context("--producer-epoch")?,
            args.coordinator_epoch.context("--coordinator-epoch")?,
        ),
        (None, None) => bail!("name the transaction: --start-offset, or --producer-id with its epochs"),
    };
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
        .with_transaction_result(false)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(vec![
            WritableTxnMarkerTopic::default().with_name(TopicName(text(topic))).with_partition_indexes(vec![partition]),
        ]);
    let mut admin = KafkaAdmin::connect(&leader)?;
    let response = admin.call(&WriteTxnMarkersRequest::default().with_markers(vec![marker]))?;
    let code = response
        .markers
        .first()
        .and_then(|m| m.topics.first())
        .and_then(|t| t.partitions.first())
        .map(|p| p.error_code)
        .context("WriteTxnMarkers answered nothing")?;
    if code != 0 {
        bail!("aborting producer {producer_id}'s transaction on {topic}/{partition}: {}", error_name(code));
    }
    print(&format!("aborted producer {producer_id}'s transaction (epoch {producer_epoch}) on {topic}/{partition}\n"))?;
    Ok(())
}
