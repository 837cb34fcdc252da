//! Spate Streams' benchmark (issue 18): the wordcount topology's
//! throughput on one core, and the restore rate of a large persistent
//! store from its changelog. The application runs on a single-threaded
//! tokio runtime (one core, the client's I/O included); the broker is
//! another process (`spate serve`), best pinned to another core.
//!
//! 1. wordcount: `LINES` lines of `WORDS_PER_LINE` words (from a
//!    vocabulary of `VOCABULARY` words) are produced to a one-partition
//!    topic first, untimed; then the wordcount topology (as
//!    examples/wordcount.rs: flat_map_values, group_by through a
//!    repartition topic, count in a persistent store, to) runs from
//!    `start` until the group has committed the input's end offset.
//!    Reported: lines/s and words/s (each word is a repartitioned record,
//!    a count update, a changelog write through the cache and an output).
//! 2. restore: `RESTORE_MB` MiB of records (`VALUE_BYTES` values, keys
//!    `k<i>`) are written straight to the changelog of a table's
//!    persistent store, untimed; then the application starts with no
//!    checkpoint and restores the store from the changelog's start.
//!    Timed from `start` until the store answers the last key. Reported:
//!    MB/s of changelog records (keys and values) restored.
//!    RESTORE_STORE=memory restores into an in-memory store instead.
//!
//! Brokers from SPATE_BROKERS (default localhost:9400); state under
//! STATE_DIR (default: a directory under the system's temporary one).
//! Topic names carry the process id, so runs on one broker do not meet.
//! Prints one JSON line of results.

use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, GroupAdmin, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use spate_streams::{
    Consumed, Grouped, KafkaStreams, Materialized, Produced, Serdes, StoreType, StreamsBuilder, StreamsConfig,
    changelog_topic,
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Produces `count` records made by `record(i)`, every delivery awaited.
async fn produce(
    client: &Client,
    count: u64,
    record: impl Fn(u64) -> ProducerRecord,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = ProducerConfig { linger_ms: 5, ..ProducerConfig::default() };
    let producer = Producer::new(client.clone(), config)?;
    let mut deliveries = Vec::new();
    for index in 0..count {
        deliveries.push(producer.send(record(index)).await?);
        // Bound the futures held: await the oldest half now and then.
        if deliveries.len() >= 50_000 {
            for delivery in deliveries.drain(..25_000) {
                delivery.await?;
            }
        }
    }
    for delivery in deliveries {
        delivery.await?;
    }
    producer.close().await?;
    Ok(())
}

fn config(application_id: &str, brokers: &str, state_dir: &str) -> Result<StreamsConfig, Box<dyn std::error::Error>> {
    Ok(StreamsConfig::from_properties(&[
        ("application.id", application_id),
        ("bootstrap.servers", brokers),
        ("commit.interval.ms", "1000"),
        ("state.dir", state_dir),
    ])?)
}

async fn wordcount(
    client: &Client,
    brokers: &str,
    state_dir: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (lines, words_per_line, vocabulary) =
        (env_or("LINES", 200_000), env_or("WORDS_PER_LINE", 8), env_or("VOCABULARY", 1_000));
    let id = std::process::id();
    let (input, output, application_id) =
        (format!("bench-text-{id}"), format!("bench-counts-{id}"), format!("bench-wordcount-{id}"));
    let admin = Admin::new(client.clone());
    admin.create_topic(&input, 1, 1, &[]).await?;
    admin.create_topic(&output, 1, 1, &[]).await?;
    let line = |index: u64| -> String {
        (0..words_per_line)
            .map(|word| format!("word{}", (index * 7 + word * 13) % vocabulary))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let input_bytes: u64 = (0..lines).map(|index| line(index).len() as u64).sum();
    produce(client, lines, |index| ProducerRecord::new(input.clone(), line(index)).with_partition(0)).await?;

    let builder = StreamsBuilder::new();
    builder
        .stream(&input, Consumed::with(Serdes::nullable(Serdes::string()), Serdes::string()))
        .flat_map_values(|line: &String| line.to_lowercase().split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .group_by(|_, word| word.clone(), Grouped::with(Serdes::string(), Serdes::string()))
        .count(Materialized::as_("counts-store"))
        .to_stream()
        .to(&output, Produced::with(Serdes::string(), Serdes::nullable(Serdes::i64())));
    let mut streams = KafkaStreams::new(builder.build()?, config(&application_id, brokers, state_dir)?)?;
    let started = Instant::now();
    streams.start().await?;
    let groups = GroupAdmin::new(client.clone());
    let input_partition = TopicPartition::new(&input, 0);
    loop {
        let committed = groups.committed_offsets(&application_id, None).await.unwrap_or_default();
        if committed.get(&input_partition).is_some_and(|offset| *offset >= lines as i64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    streams.close().await?;
    let words = lines * words_per_line;
    Ok(serde_json::json!({
        "lines": lines, "words": words, "input_bytes": input_bytes, "elapsed_s": elapsed_s,
        "lines_per_s": lines as f64 / elapsed_s, "words_per_s": words as f64 / elapsed_s,
    }))
}

async fn restore(
    client: &Client,
    brokers: &str,
    state_dir: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (restore_mib, value_bytes) = (env_or("RESTORE_MB", 256), env_or("VALUE_BYTES", 1_000));
    let id = std::process::id();
    let (source, application_id) = (format!("bench-table-{id}"), format!("bench-restore-{id}"));
    let changelog = changelog_topic(&application_id, "big");
    let admin = Admin::new(client.clone());
    admin.create_topic(&source, 1, 1, &[]).await?;
    let compacted = [("cleanup.policy".to_string(), "compact".to_string())];
    admin.create_topic(&changelog, 1, 1, &compacted).await?;
    let value = Bytes::from(vec![b'v'; value_bytes as usize]);
    let records = (restore_mib << 20) / (value_bytes + 8);
    let key = |index: u64| format!("k{index:07}");
    let changelog_bytes: u64 = (0..records).map(|index| key(index).len() as u64 + value_bytes).sum();
    produce(client, records, |index| {
        ProducerRecord::new(changelog.clone(), value.clone()).with_key(key(index)).with_partition(0)
    })
    .await?;
    // The changelog's end, so that the wait below knows the data is in.
    let consumer = Consumer::new(client.clone(), ConsumerConfig::default())?;
    let ends = consumer.end_offsets(&[TopicPartition::new(&changelog, 0)]).await?;

    let builder = StreamsBuilder::new();
    // RESTORE_STORE=memory restores into an in-memory store instead: the
    // difference is the cost of the redb file.
    let store_type = match std::env::var("RESTORE_STORE").as_deref() {
        Ok("memory") => StoreType::InMemory,
        _ => StoreType::Persistent,
    };
    builder.table(
        &source,
        Consumed::with(Serdes::string(), Serdes::bytes()),
        Materialized::as_("big").with_store_type(store_type),
    );
    let mut streams = KafkaStreams::new(builder.build()?, config(&application_id, brokers, state_dir)?)?;
    let started = Instant::now();
    streams.start().await?;
    let last = key(records - 1);
    loop {
        if streams.query_key_value::<String, Bytes>("big", last.clone()).await.ok().flatten().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    streams.close().await?;
    let megabytes = changelog_bytes as f64 / 1e6;
    Ok(serde_json::json!({
        "records": records, "changelog_end_offset": ends.first().map(|(_, end)| *end),
        "changelog_bytes": changelog_bytes, "elapsed_s": elapsed_s, "mb_per_s": megabytes / elapsed_s,
        "store": format!("{store_type:?}"),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let brokers = std::env::var("SPATE_BROKERS").unwrap_or_else(|_| "localhost:9400".into());
    let state_dir = std::env::var("STATE_DIR").unwrap_or_else(|_| {
        std::env::temp_dir().join(format!("spate-streams-bench-{}", std::process::id())).display().to_string()
    });
    let client = Client::connect(ClientConfig { bootstrap: vec![brokers.clone()], ..ClientConfig::default() }).await?;
    let only = std::env::var("ONLY").unwrap_or_default();
    let mut results = serde_json::Map::new();
    if only.is_empty() || only == "wordcount" {
        results.insert("wordcount".into(), wordcount(&client, &brokers, &state_dir).await?);
    }
    if only.is_empty() || only == "restore" {
        results.insert("restore".into(), restore(&client, &brokers, &state_dir).await?);
    }
    println!("{}", serde_json::Value::Object(results));
    Ok(())
}
