//! `spate produce TOPIC`: one record per input line.
//!
//! Lines are read as bytes (they need not be UTF-8) and sent as they come;
//! a task beside the reader awaits the deliveries in order, so reading,
//! batching and acknowledgements overlap. On success the only output is a
//! summary line on stderr (`--verbose` adds one line per record).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use spate_client::{Acks, ClientError, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::GlobalArgs;
use crate::parse;

/// Deliveries awaited behind the reader; past this the reader waits.
const DELIVERIES_QUEUED_MAX: usize = 16 * 1024;

#[derive(clap::Args, Debug)]
pub(crate) struct ProduceArgs {
    topic: String,
    /// Read records from this file instead of stdin.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Split each line into key and value at the first SEP; lines without
    /// it have no key.
    #[arg(long, short = 'k', value_name = "SEP", value_parser = parse::separator)]
    key_separator: Option<String>,
    /// Send every record to this partition instead of partitioning by key.
    #[arg(long, short = 'p')]
    partition: Option<i32>,
    /// -1 or all (every in-sync replica), 1 (the leader), 0 (no answer).
    #[arg(long, default_value = "all", value_parser = parse::acks)]
    acks: Acks,
    /// How long a batch waits for more records before it is sent.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Compress each batch: none, gzip, snappy, lz4 or zstd.
    #[arg(long, short = 'z', default_value = "none", value_parser = parse::compression)]
    compression: spate_client::Compression,
    /// Print each record's partition and offset to stderr.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// A value equal to MARKER is produced as null: a tombstone, which
    /// deletes its key from a compacted topic (Kafka's console producer's
    /// null.marker, KIP-810).
    #[arg(long, value_name = "MARKER")]
    null_marker: Option<String>,
}

pub(crate) async fn run(global: &GlobalArgs, args: ProduceArgs) -> anyhow::Result<()> {
    spate_client::validate_topic_name(&args.topic)?;
    let client = global.connect().await?;
    let config = ProducerConfig {
        acks: args.acks,
        linger_ms: args.linger_ms,
        compression: args.compression,
        // Retries of a record stop after four request timeouts: Kafka's
        // default (120 s) for the default --timeout-ms, shorter for a
        // shorter one.
        delivery_timeout_ms: global.timeout_ms.saturating_mul(4),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    let input: Box<dyn AsyncRead + Unpin + Send> = match &args.file {
        Some(path) => {
            Box::new(tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?)
        }
        None => Box::new(tokio::io::stdin()),
    };
    let started = Instant::now();
    let (deliveries, queue) = mpsc::channel(DELIVERIES_QUEUED_MAX);
    let collector = tokio::spawn(collect(queue, args.verbose));
    let sent = send_lines(&producer, &args, input, deliveries).await;
    let closed = producer.close().await;
    let report = collector.await.context("waiting for deliveries")?;
    let sent = sent?;
    closed.context("closing the producer")?;
    let elapsed_s = started.elapsed().as_secs_f64();
    if let Some(error) = report.first_error {
        anyhow::bail!(
            "{} of {sent} records were not produced to {}; the first because: {error}",
            report.failed,
            args.topic
        );
    }
    let _ = writeln!(std::io::stderr(), "produced {sent} records to {} in {elapsed_s:.3}s", args.topic);
    Ok(())
}

/// Sends each line of `input` as a record; returns how many were sent.
async fn send_lines(
    producer: &Producer,
    args: &ProduceArgs,
    input: Box<dyn AsyncRead + Unpin + Send>,
    deliveries: mpsc::Sender<DeliveryFuture>,
) -> anyhow::Result<u64> {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let mut sent = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await.context("reading input")? == 0 {
            return Ok(sent);
        }
        let (key, value) =
            parse::split_key(parse::trim_line_end(&line), args.key_separator.as_deref().map(str::as_bytes));
        let tombstone = args.null_marker.as_deref().is_some_and(|marker| marker.as_bytes() == value);
        let record = ProducerRecord {
            topic: args.topic.clone(),
            partition: args.partition,
            key: key.map(Bytes::copy_from_slice),
            value: (!tombstone).then(|| Bytes::copy_from_slice(value)),
            ..ProducerRecord::default()
        };
        let delivery = producer.send(record).await.with_context(|| format!("producing to {}", args.topic))?;
        sent += 1;
        if deliveries.send(delivery).await.is_err() {
            anyhow::bail!("the delivery collector stopped");
        }
    }
}

#[derive(Debug, Default)]
struct Report {
    failed: u64,
    first_error: Option<ClientError>,
}

async fn collect(mut queue: mpsc::Receiver<DeliveryFuture>, verbose: bool) -> Report {
    let mut report = Report::default();
    while let Some(delivery) = queue.recv().await {
        match delivery.await {
            Ok(metadata) if verbose => {
                let _ = writeln!(
                    std::io::stderr(),
                    "Produced to partition {} at offset {} with timestamp {}.",
                    metadata.partition,
                    metadata.offset,
                    metadata.timestamp_ms
                );
            }
            Ok(_) => {}
            Err(error) => {
                report.failed += 1;
                report.first_error.get_or_insert(error);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: ProduceArgs,
    }

    #[test]
    fn produce_flags_parse_like_rpk() {
        let parsed = Wrapper::try_parse_from(["p", "orders", "-k", ":", "--acks", "1", "-p", "2"]).expect("valid");
        assert_eq!(parsed.args.key_separator.as_deref(), Some(":"));
        assert_eq!(parsed.args.acks, Acks::Leader);
        assert_eq!(parsed.args.partition, Some(2));
        let default = Wrapper::try_parse_from(["p", "orders"]).expect("valid");
        assert_eq!(default.args.acks, Acks::All);
        assert!(Wrapper::try_parse_from(["p", "orders", "--acks", "2"]).is_err());
        assert!(Wrapper::try_parse_from(["p", "orders", "--key-separator", ""]).is_err());
        assert_eq!(default.args.compression, spate_client::Compression::None);
        let zstd = Wrapper::try_parse_from(["p", "orders", "--compression", "zstd"]).expect("valid");
        assert_eq!(zstd.args.compression, spate_client::Compression::Zstd);
        assert!(Wrapper::try_parse_from(["p", "orders", "-z", "brotli"]).is_err());
    }
}
