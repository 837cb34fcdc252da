//! Clicks per user per 1-minute tumbling window, emitted once, when the
//! window closes (10 s of grace for late clicks). Reads `clicks` (key: the
//! user; value: anything, e.g. the page), writes `clicks-per-minute`
//! (key: the user; value: JSON `{"user", "window_start_ms",
//! "window_end_ms", "clicks"}`). Event time is the record's timestamp.
//!
//! Brokers from SPATE_BROKERS (default localhost:9400); commit interval
//! from COMMIT_INTERVAL_MS (default 1000); the stores' directory from
//! STATE_DIR (Kafka's `state.dir`); NAME_PREFIX (default empty) goes in
//! front of the topics' names and the application id, so that several
//! copies share a broker. Runs until Ctrl-C (a clean close) or killed.

use serde::{Deserialize, Serialize};
use spate_streams::{
    Consumed, Grouped, KafkaStreams, Materialized, Produced, Serdes, StreamsBuilder, StreamsConfig, Suppressed,
    TimeWindows,
};

const WINDOW_MS: i64 = 60_000;
const GRACE_MS: i64 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WindowCount {
    user: String,
    window_start_ms: i64,
    window_end_ms: i64,
    clicks: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let brokers = std::env::var("SPATE_BROKERS").unwrap_or_else(|_| "localhost:9400".into());
    let commit_interval_ms = std::env::var("COMMIT_INTERVAL_MS").unwrap_or_else(|_| "1000".into());
    let state_dir = std::env::var("STATE_DIR").ok();
    let prefix = std::env::var("NAME_PREFIX").unwrap_or_default();
    let application_id = format!("{prefix}streams-windowed-clicks");

    let builder = StreamsBuilder::new();
    builder
        .stream(&format!("{prefix}clicks"), Consumed::with(Serdes::string(), Serdes::bytes()))
        .group_by_key(Grouped::with(Serdes::string(), Serdes::bytes()))
        .windowed_by(TimeWindows::of_size_and_grace(WINDOW_MS, GRACE_MS))
        .count(Materialized::as_("clicks-per-window"))
        .suppress(Suppressed::until_window_closes(Serdes::string(), Serdes::i64()))
        .to_stream()
        .map(|windowed, clicks| {
            let count = WindowCount {
                user: windowed.key.clone(),
                window_start_ms: windowed.window.start_ms,
                window_end_ms: windowed.window.end_ms,
                clicks: clicks.unwrap_or(0),
            };
            (windowed.key.clone(), count)
        })
        .to(&format!("{prefix}clicks-per-minute"), Produced::with(Serdes::string(), Serdes::json::<WindowCount>()));
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
