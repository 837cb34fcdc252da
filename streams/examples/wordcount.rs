//! Kafka's WordCountDemo on Spate: lines from `text-input`, counts per
//! word (lower-cased, split on whitespace) to `word-counts` (key: the word
//! as UTF-8, value: the count as 8 bytes big-endian, as Serdes.Long()).
//!
//! Brokers from SPATE_BROKERS (default localhost:9400); commit interval
//! from COMMIT_INTERVAL_MS (default 1000); the group session from
//! SESSION_TIMEOUT_MS (default 45000: a killed instance's partitions move
//! to the others after that long). Runs until killed: what was not
//! committed is processed again on the next start (at least once).

use spate_streams::{Consumed, Grouped, KafkaStreams, Materialized, Produced, Serdes, StreamsBuilder, StreamsConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let brokers = std::env::var("SPATE_BROKERS").unwrap_or_else(|_| "localhost:9400".into());
    let commit_interval_ms = std::env::var("COMMIT_INTERVAL_MS").unwrap_or_else(|_| "1000".into());
    let session_timeout_ms = std::env::var("SESSION_TIMEOUT_MS").unwrap_or_else(|_| "45000".into());

    let builder = StreamsBuilder::new();
    builder
        // Lines have no key: read it as an Option.
        .stream("text-input", Consumed::with(Serdes::nullable(Serdes::string()), Serdes::string()))
        .flat_map_values(|line: &String| line.to_lowercase().split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .group_by(|_, word| word.clone(), Grouped::with(Serdes::string(), Serdes::string()))
        .count(Materialized::as_("counts-store"))
        .to_stream()
        .to("word-counts", Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    let topology = builder.build()?;
    println!("{}", topology.describe());

    let config = StreamsConfig::from_properties(&[
        ("application.id", "streams-wordcount"),
        ("bootstrap.servers", &brokers),
        ("commit.interval.ms", &commit_interval_ms),
        ("session.timeout.ms", &session_timeout_ms),
    ])?;
    let mut streams = KafkaStreams::new(topology, config)?;
    streams.start().await?;
    // Runs until the process is stopped, or an error stops the application.
    streams.wait().await?;
    Ok(())
}
