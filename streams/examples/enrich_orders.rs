//! Orders joined with a customers table: `orders` (key: customer id;
//! value: the order, text) and `customers` (key: customer id; value: the
//! customer's name; a null value deletes the customer) to
//! `orders-enriched` (key: customer id; value: JSON `{"order",
//! "customer"}`). An order whose customer is unknown (never seen, or
//! deleted) is dropped, as Kafka Streams' inner `KStream.join(KTable)`.
//! The two input topics must have the same number of partitions
//! (co-partitioned by customer id).
//!
//! Brokers from SPATE_BROKERS (default localhost:9400); commit interval
//! from COMMIT_INTERVAL_MS (default 1000); the stores' directory from
//! STATE_DIR (Kafka's `state.dir`); NAME_PREFIX (default empty) goes in
//! front of the topics' names and the application id, so that several
//! copies share a broker. Runs until Ctrl-C (a clean close) or killed.

use serde::{Deserialize, Serialize};
use spate_streams::{Consumed, KafkaStreams, Materialized, Produced, Serdes, StreamsBuilder, StreamsConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnrichedOrder {
    order: String,
    customer: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let brokers = std::env::var("SPATE_BROKERS").unwrap_or_else(|_| "localhost:9400".into());
    let commit_interval_ms = std::env::var("COMMIT_INTERVAL_MS").unwrap_or_else(|_| "1000".into());
    let state_dir = std::env::var("STATE_DIR").ok();
    let prefix = std::env::var("NAME_PREFIX").unwrap_or_default();
    let application_id = format!("{prefix}streams-enrich-orders");

    let builder = StreamsBuilder::new();
    let customers = builder.table(
        &format!("{prefix}customers"),
        Consumed::with(Serdes::string(), Serdes::string()),
        Materialized::as_("customers-store"),
    );
    builder
        .stream(&format!("{prefix}orders"), Consumed::with(Serdes::string(), Serdes::string()))
        .join(&customers, |order: &String, customer: &String| EnrichedOrder {
            order: order.clone(),
            customer: customer.clone(),
        })
        .to(&format!("{prefix}orders-enriched"), Produced::with(Serdes::string(), Serdes::json::<EnrichedOrder>()));
    let topology = builder.build()?;
    println!("{}", topology.describe());

    let mut properties = vec![
        ("application.id", application_id.as_str()),
        ("bootstrap.servers", brokers.as_str()),
        ("commit.interval.ms", commit_interval_ms.as_str()),
    ];
    if let Some(state_dir) = &state_dir {
        properties.push(("state.dir", state_dir.as_str()));
    }
    let config = StreamsConfig::from_properties(&properties)?;
    let mut streams = KafkaStreams::new(topology, config)?;
    streams.start().await?;
    // Runs until Ctrl-C (a clean close: a last commit and checkpoint), or
    // an error stops the application.
    tokio::select! {
        result = streams.wait() => result?,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            streams.close().await?;
        }
    }
    Ok(())
}
