//! `spate consume TOPIC`: prints records one per line, following the
//! partitions like `kcat -C`, or stopping at their ends with `--exit`.
//!
//! Output is flushed after every batch of records so that a pipe sees
//! them at once; a closed pipe ends the command quietly.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use spate_client::{Consumer, ConsumerConfig, SeekTo, TopicPartition};

use crate::GlobalArgs;
use crate::output;
use crate::parse;

/// How long one poll waits before the loop checks whether it is done.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The value (or key, separator, value with --print-key), raw.
    Text,
    /// One JSON object per line; see the README for the fields.
    Json,
}

impl Format {
    /// Appends one record as a line in this format.
    pub(crate) fn write(
        self,
        out: &mut Vec<u8>,
        record: &spate_client::ConsumerRecord,
        key_separator: Option<&str>,
    ) -> anyhow::Result<()> {
        match self {
            Format::Text => output::text_line(out, record, key_separator),
            Format::Json => {
                out.extend_from_slice(output::json_line(record)?.as_bytes());
                out.push(b'\n');
            }
        }
        Ok(())
    }
}

/// Writes a poll's lines and flushes, so that pipes see records at once
/// and, with `--group`, every line is out of the process before the next
/// poll commits it. (Rust's stdout is a `LineWriter` whether or not it is a
/// terminal, but the flush must not depend on how it buffers.)
pub(crate) fn flush_lines(stdout: &mut impl Write, out: &[u8]) -> anyhow::Result<()> {
    if !out.is_empty() {
        stdout.write_all(out).context("writing records")?;
        stdout.flush().context("writing records")?;
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub(crate) struct ConsumeArgs {
    pub(crate) topic: String,
    /// Start at each partition's first record (same as --offset earliest).
    #[arg(long, conflicts_with = "offset")]
    pub(crate) from_beginning: bool,
    /// Where to start: earliest, latest (the default), an offset, or
    /// @TIMESTAMP_MS for the first record at or after that time.
    #[arg(long, short = 'o', value_parser = parse::start_offset)]
    pub(crate) offset: Option<SeekTo>,
    /// A partition to read (repeatable); all partitions by default.
    #[arg(long, short = 'p')]
    pub(crate) partition: Vec<i32>,
    /// Exit after this many records.
    #[arg(long, short = 'c')]
    pub(crate) count: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Text format: print the key, the separator, then the value.
    #[arg(long)]
    pub(crate) print_key: bool,
    /// Text format: what goes between key and value with --print-key.
    #[arg(long, short = 'k', value_name = "SEP", default_value = "\t", value_parser = parse::separator)]
    pub(crate) key_separator: String,
    /// Stop at the end of the partitions (their high watermarks when
    /// consuming starts) instead of waiting for more.
    #[arg(long, short = 'e')]
    pub(crate) exit: bool,
    #[command(flatten)]
    pub(crate) group_args: crate::consume_group::GroupArgs,
}

pub(crate) async fn run(global: &GlobalArgs, args: ConsumeArgs) -> anyhow::Result<()> {
    spate_client::validate_topic_name(&args.topic)?;
    if let Some(group) = args.group_args.group.clone() {
        return crate::consume_group::run(global, args, group).await;
    }
    let client = global.connect().await?;
    let metadata = client.metadata(Some(std::slice::from_ref(&args.topic))).await.context("reading metadata")?;
    let partition_count = metadata.partition_count(&args.topic)?;
    let partitions = chosen_partitions(&args.topic, partition_count, &args.partition)?;
    let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
    consumer.assign(partitions.clone());
    let start = if args.from_beginning { SeekTo::Earliest } else { args.offset.unwrap_or(SeekTo::Latest) };
    consumer.seek_many(&partitions, start).await.context("finding where to start")?;
    let mut ends: Option<BTreeMap<TopicPartition, i64>> = None;
    if args.exit {
        let end_offsets = consumer.end_offsets(&partitions).await.context("finding the partitions' ends")?;
        ends = Some(end_offsets.into_iter().collect());
    }
    let key_separator = args.print_key.then_some(args.key_separator.as_str());
    let mut stdout = std::io::stdout();
    let mut printed = 0u64;
    let mut out = Vec::new();
    loop {
        if let Some(ends) = &ends
            && ends.iter().all(|(tp, end)| consumer.position(tp).is_some_and(|position| position >= *end))
        {
            return Ok(());
        }
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
        let records = consumer.poll(POLL_TIMEOUT).await.context("fetching records")?;
        out.clear();
        for record in &records {
            let tp = TopicPartition::new(record.topic.clone(), record.partition);
            let past_end = ends.as_ref().and_then(|ends| ends.get(&tp)).is_some_and(|end| record.offset >= *end);
            if past_end || args.count.is_some_and(|count| printed >= count) {
                continue;
            }
            args.format.write(&mut out, record, key_separator)?;
            printed += 1;
        }
        flush_lines(&mut stdout, &out)?;
    }
}

/// The partitions to read: those asked for, each checked, or all of them.
fn chosen_partitions(topic: &str, partition_count: i32, asked: &[i32]) -> anyhow::Result<Vec<TopicPartition>> {
    if asked.is_empty() {
        return Ok((0..partition_count).map(|partition| TopicPartition::new(topic, partition)).collect());
    }
    let mut chosen = Vec::new();
    for &partition in asked {
        if !(0..partition_count).contains(&partition) {
            anyhow::bail!("topic {topic} has no partition {partition} (it has {partition_count})");
        }
        let tp = TopicPartition::new(topic, partition);
        if !chosen.contains(&tp) {
            chosen.push(tp);
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    #[test]
    fn consume_flags_parse_like_kcat() {
        let parsed = Wrapper::try_parse_from(["c", "orders", "-o", "earliest", "-p", "0", "-p", "2", "-c", "10", "-e"])
            .expect("valid");
        assert_eq!(parsed.args.offset, Some(SeekTo::Earliest));
        assert_eq!(parsed.args.partition, vec![0, 2]);
        assert_eq!(parsed.args.count, Some(10));
        assert!(parsed.args.exit);
        assert_eq!(parsed.args.format, Format::Text);
        let json = Wrapper::try_parse_from(["c", "orders", "--format", "json"]).expect("valid");
        assert_eq!(json.args.format, Format::Json);
        assert!(Wrapper::try_parse_from(["c", "orders", "--from-beginning", "--offset", "5"]).is_err());
        assert!(Wrapper::try_parse_from(["c", "orders", "--format", "xml"]).is_err());
        assert!(Wrapper::try_parse_from(["c", "orders", "--offset", "-1"]).is_err());
    }

    #[test]
    fn partitions_default_to_all_and_unknown_ones_are_refused() {
        let all = chosen_partitions("t", 3, &[]).expect("all");
        assert_eq!(all.iter().map(|tp| tp.partition).collect::<Vec<_>>(), vec![0, 1, 2]);
        let some = chosen_partitions("t", 3, &[2, 0, 2]).expect("valid");
        assert_eq!(some.iter().map(|tp| tp.partition).collect::<Vec<_>>(), vec![2, 0]);
        let error = chosen_partitions("t", 3, &[3]).expect_err("out of range");
        assert!(error.to_string().contains("no partition 3"));
    }
}
