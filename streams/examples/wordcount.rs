//! Kafka's WordCountDemo on Spate: lines from `text-input`, counts per
//! word (lower-cased, split on whitespace) to `word-counts` (key: the word
//! as UTF-8, value: the count as 8 bytes big-endian, as Serdes.Long()).
//!
//! Brokers from SPATE_BROKERS (default localhost:9400); commit interval
//! from COMMIT_INTERVAL_MS (default 1000); the group session from
//! SESSION_TIMEOUT_MS (default 45000: a killed instance's partitions move
//! to the others after that long); its persistent store's directory from
//! STATE_DIR (Kafka's `state.dir`; default: `spate-streams` in the temporary
//! directory); its record cache's bound from CACHE_MAX_BYTES (Kafka's
//! `statestore.cache.max.bytes`, default 10 MiB; 0 writes every count to
//! the changelog as it changes); NAME_PREFIX (default empty) goes in front
//! of the topics' names and the application id, so that several copies
//! share a broker (the differential test runs one next to its Kafka
//! Streams twin); PROCESSING_GUARANTEE (default at_least_once; or
//! exactly_once_v2: counts exact through crashes). Ctrl-C (SIGINT) closes it cleanly: a last commit and
//! checkpoint, so the next start restores only what the changelog has
//! after it. Killed otherwise, what was not committed is processed again
//! on the next start (at least once).

use spate_streams::{Consumed, Grouped, KafkaStreams, Materialized, Produced, Serdes, StreamsBuilder, StreamsConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let brokers = std::env::var("SPATE_BROKERS").unwrap_or_else(|_| "localhost:9400".into());
    let commit_interval_ms = std::env::var("COMMIT_INTERVAL_MS").unwrap_or_else(|_| "1000".into());
    let session_timeout_ms = std::env::var("SESSION_TIMEOUT_MS").unwrap_or_else(|_| "45000".into());
    let state_dir = std::env::var("STATE_DIR").ok();
    let cache_max_bytes = std::env::var("CACHE_MAX_BYTES").ok();
    let prefix = std::env::var("NAME_PREFIX").unwrap_or_default();
    let processing_guarantee = std::env::var("PROCESSING_GUARANTEE").unwrap_or_else(|_| "at_least_once".into());
    let application_id = format!("{prefix}streams-wordcount");

    let builder = StreamsBuilder::new();
    builder
        // Lines have no key: read it as an Option.
        .stream(&format!("{prefix}text-input"), Consumed::with(Serdes::nullable(Serdes::string()), Serdes::string()))
        .flat_map_values(|line: &String| line.to_lowercase().split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .group_by(|_, word| word.clone(), Grouped::with(Serdes::string(), Serdes::string()))
        .count(Materialized::as_("counts-store"))
        .to_stream()
        .to(&format!("{prefix}word-counts"), Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    let topology = builder.build()?;
    println!("{}", topology.describe());

    let mut properties = vec![
        ("application.id", application_id.as_str()),
        ("bootstrap.servers", brokers.as_str()),
        ("commit.interval.ms", commit_interval_ms.as_str()),
        ("session.timeout.ms", session_timeout_ms.as_str()),
        ("processing.guarantee", processing_guarantee.as_str()),
    ];
    if let Some(state_dir) = &state_dir {
        properties.push(("state.dir", state_dir.as_str()));
    }
    if let Some(cache_max_bytes) = &cache_max_bytes {
        properties.push(("statestore.cache.max.bytes", cache_max_bytes.as_str()));
    }
    let config = StreamsConfig::from_properties(&properties)?;
    let mut streams = KafkaStreams::new(topology, config)?;
    streams.start().await?;
    // Runs until Ctrl-C, or an error stops the application.
    tokio::select! {
        result = streams.wait() => result?,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            streams.close().await?;
            eprintln!("wordcount closed");
        }
    }
    Ok(())
}
