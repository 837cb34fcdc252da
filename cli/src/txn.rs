//! `spate txn list|describe|abort`: transactions through the brokers'
//! Kafka listeners, as Kafka's kafka-transactions tool shows and ends them:
//! `list` asks every broker for the transactional ids it coordinates
//! (ListTransactions), `describe` asks an id's coordinator
//! (FindCoordinator, DescribeTransactions), and `abort` ends a hanging
//! transaction on one partition with an abort marker written by the
//! partition's leader (WriteTxnMarkers; its producer id and epoch are what
//! DescribeProducers shows, the coordinator epoch any at or above the one
//! of the transaction's markers so far).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, FindCoordinatorRequest, ListTransactionsRequest, MetadataRequest, ProducerId,
    TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::kafka_admin::{Connection, KafkaAdmin, error_name};
use crate::output::{Table, print};

#[derive(Subcommand, Debug)]
pub(crate) enum TxnCommand {
    /// List transactional ids and their states, from every broker.
    List(ListArgs),
    /// Describe a transactional id's transaction (its coordinator's view).
    Describe(DescribeArgs),
    /// Abort a hanging transaction on one partition (an abort marker,
    /// written by the partition's leader): for a producer whose transaction
    /// its coordinator does not know, which holds back read_committed
    /// consumers.
    Abort(AbortArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    connection: Connection,
    /// Only these states (repeatable): Empty, Ongoing, PrepareCommit,
    /// PrepareAbort, CompleteCommit, CompleteAbort.
    #[arg(long = "state")]
    states: Vec<String>,
    /// Only these producer ids (repeatable).
    #[arg(long = "producer-id")]
    producer_ids: Vec<i64>,
}

#[derive(Args, Debug)]
pub(crate) struct DescribeArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long)]
    transactional_id: String,
}

#[derive(Args, Debug)]
pub(crate) struct AbortArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partition: i32,
    #[arg(long)]
    producer_id: i64,
    #[arg(long)]
    producer_epoch: i16,
    /// The coordinator epoch to write the marker under.
    #[arg(long, default_value_t = 0)]
    coordinator_epoch: i32,
}

pub(crate) fn run(command: TxnCommand) -> anyhow::Result<()> {
    match command {
        TxnCommand::List(args) => list(&args),
        TxnCommand::Describe(args) => describe(&args),
        TxnCommand::Abort(args) => abort(&args),
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// The cluster's brokers: (node id, their Kafka address as the listener
/// we reached advertises it).
fn brokers(admin: &mut KafkaAdmin) -> anyhow::Result<Vec<(i32, String)>> {
    let metadata = admin.call(&MetadataRequest::default().with_topics(Some(Vec::new())))?;
    Ok(metadata.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port))).collect())
}

/// A connection to another broker, with the same settings.
fn connect_to(connection: &Connection, address: &str) -> anyhow::Result<KafkaAdmin> {
    let mut other = connection.clone();
    other.bootstrap_server = address.to_string();
    KafkaAdmin::connect(&other)
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let request = ListTransactionsRequest::default()
        .with_state_filters(args.states.iter().map(|s| text(s)).collect())
        .with_producer_id_filters(args.producer_ids.iter().map(|id| ProducerId(*id)).collect())
        .with_duration_filter(-1);
    let mut rows = Vec::new();
    for (node, address) in brokers(&mut admin)? {
        let mut broker = connect_to(&args.connection, &address).with_context(|| format!("broker {node}"))?;
        let response = broker.call(&request)?;
        if response.error_code != 0 {
            bail!("broker {node} refused ListTransactions: {}", error_name(response.error_code));
        }
        if let Some(unknown) = response.unknown_state_filters.first() {
            bail!(
                "unknown state {unknown:?}: expected Empty, Ongoing, PrepareCommit, PrepareAbort, CompleteCommit or CompleteAbort"
            );
        }
        for txn in &response.transaction_states {
            rows.push(vec![
                txn.transactional_id.to_string(),
                node.to_string(),
                txn.producer_id.0.to_string(),
                txn.transaction_state.to_string(),
            ]);
        }
    }
    rows.sort();
    let mut table = Table::new(&["TRANSACTIONAL-ID", "COORDINATOR", "PRODUCER-ID", "STATE"]);
    for row in rows {
        table.row(row);
    }
    print(&table.render())?;
    Ok(())
}

fn describe(args: &DescribeArgs) -> anyhow::Result<()> {
    let id = args.transactional_id.as_str();
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    // Batched keys (v4+, which every Spate broker serves).
    let request = FindCoordinatorRequest::default().with_key_type(1).with_coordinator_keys(vec![text(id)]);
    let found = admin.call(&request)?;
    let coordinator = found.coordinators.first().context("no answer for the key")?;
    let (code, node, host, port) =
        (coordinator.error_code, coordinator.node_id.0, coordinator.host.to_string(), coordinator.port);
    if code != 0 {
        bail!("no coordinator for {id:?}: {}", error_name(code));
    }
    let mut coordinator = connect_to(&args.connection, &format!("{host}:{port}"))?;
    let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(text(id))]);
    let response = coordinator.call(&request)?;
    let Some(txn) = response.transaction_states.first() else { bail!("the coordinator answered nothing") };
    if txn.error_code != 0 {
        bail!("{id:?}: {}", error_name(txn.error_code));
    }
    let partitions: Vec<String> =
        txn.topics.iter().flat_map(|t| t.partitions.iter().map(move |p| format!("{}-{p}", t.topic.0))).collect();
    let mut table = Table::new(&[
        "COORDINATOR",
        "TRANSACTIONAL-ID",
        "PRODUCER-ID",
        "PRODUCER-EPOCH",
        "STATE",
        "TIMEOUT-MS",
        "START-TIME-MS",
        "PARTITIONS",
    ]);
    table.row(vec![
        node.to_string(),
        txn.transactional_id.to_string(),
        txn.producer_id.0.to_string(),
        txn.producer_epoch.to_string(),
        txn.transaction_state.to_string(),
        txn.transaction_timeout_ms.to_string(),
        txn.transaction_start_time_ms.to_string(),
        partitions.join(","),
    ]);
    print(&table.render())?;
    Ok(())
}

fn abort(args: &AbortArgs) -> anyhow::Result<()> {
    let mut admin = KafkaAdmin::connect(&args.connection)?;
    let request = MetadataRequest::default().with_topics(Some(vec![
        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(text(&args.topic)))),
    ]));
    let metadata = admin.call(&request)?;
    let topic = metadata.topics.first().context("no answer for the topic")?;
    if topic.error_code != 0 {
        bail!("{}: {}", args.topic, error_name(topic.error_code));
    }
    let leader = topic
        .partitions
        .iter()
        .find(|p| p.partition_index == args.partition)
        .with_context(|| format!("{} has no partition {}", args.topic, args.partition))?
        .leader_id
        .0;
    let broker = metadata
        .brokers
        .iter()
        .find(|b| b.node_id.0 == leader)
        .with_context(|| format!("{}-{} has no leader now", args.topic, args.partition))?;
    let mut leader_admin = connect_to(&args.connection, &format!("{}:{}", broker.host, broker.port))?;
    let request = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(args.producer_id))
            .with_producer_epoch(args.producer_epoch)
            .with_transaction_result(false)
            .with_coordinator_epoch(args.coordinator_epoch)
            .with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(text(&args.topic)))
                    .with_partition_indexes(vec![args.partition]),
            ]),
    ]);
    let response = leader_admin.call(&request)?;
    let code = response
        .markers
        .first()
        .and_then(|m| m.topics.first())
        .and_then(|t| t.partitions.first())
        .map(|p| p.error_code)
        .context("an empty answer")?;
    if code != 0 {
        bail!("the leader refused the abort marker: {}", error_name(code));
    }
    print(&format!(
        "aborted producer {} epoch {} on {}-{}\n",
        args.producer_id, args.producer_epoch, args.topic, args.partition
    ))?;
    Ok(())
}
