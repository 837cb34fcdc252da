//! Orders joined with a customers table: `orders` (key: customer id;
//! value: the order, text) and `customers` (key: customer id; value: the
//! customer's name; a null value deletes the customer) to
//! `orders-enriched` (key: customer id; value: JSON `{"order",
//! "customer"}`). An order whose customer is unknown (never seen, or
//! deleted) is dropped, as Kafka Streams' inner `KStream.join(KTable)`.
//! The two input topics must have the same number of partitions
//! (co-partitioned by customer id).
//!
//! Brokers from SPATE_BROKERS (default localhost:9400). Runs until killed.

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

    let builder = StreamsBuilder::new();
    let customers = builder.table(
        "customers",
        Consumed::with(Serdes::string(), Serdes::string()),
        Materialized::as_("customers-store"),
    );
    builder
        .stream("orders", Consumed::with(Serdes::string(), Serdes::string()))
        .join(&customers, |order: &String, customer: &String| EnrichedOrder {
            order: order.clone(),
            customer: customer.clone(),
        })
        .to("orders-enriched", Produced::with(Serdes::string(), Serdes::json::<EnrichedOrder>()));
    let topology = builder.build()?;
    println!("{}", topology.describe());

    let config = StreamsConfig::from_properties(&[
        ("application.id", "streams-enrich-orders"),
        ("bootstrap.servers", &brokers),
        ("commit.interval.ms", "1000"),
    ])?;
    let mut streams = KafkaStreams::new(topology, config)?;
    streams.start().await?;
    streams.wait().await?;
    Ok(())
}
