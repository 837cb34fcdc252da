//! `spate consume TOPIC --group G`: a member of a consumer group. The
//! coordinator assigns it partitions; it prints their records and commits
//! after printing (the positions after the records it has printed and
//! flushed, before each poll), so a member killed at any moment leaves
//! nothing skipped: its partitions move to the others after its session
//! times out and they start at the last commit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use spate_client::{AutoOffsetReset, GroupAssignor, GroupConfig, GroupConsumer, SeekTo, TopicPartition};

use crate::GlobalArgs;
use crate::consume::{ConsumeArgs, flush_lines};

const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// The group options of `spate consume`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct GroupArgs {
    /// Consume as a member of this group: partitions are assigned by the
    /// group's coordinator, offsets committed.
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// With --group: how the group divides partitions (the first member's
    /// choice holds).
    #[arg(long, value_enum, default_value_t = AssignorArg::Sticky, requires = "group")]
    pub assignor: AssignorArg,
    /// With --group: the member is removed if silent this long.
    #[arg(long, default_value_t = 45_000, requires = "group", value_parser = clap::value_parser!(u64).range(1..=2_147_483_647))]
    pub session_timeout_ms: u64,
    /// With --group: commit at most this often.
    #[arg(long, default_value_t = 1_000, requires = "group")]
    pub commit_interval_ms: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssignorArg {
    Range,
    Roundrobin,
    Sticky,
}

pub(crate) async fn run(global: &GlobalArgs, args: ConsumeArgs, group: String) -> anyhow::Result<()> {
    let reset = match (args.from_beginning, args.offset) {
        (true, _) | (false, Some(SeekTo::Earliest)) => AutoOffsetReset::Earliest,
        (false, None | Some(SeekTo::Latest)) => AutoOffsetReset::Latest,
        (false, Some(_)) => anyhow::bail!(
            "with --group, --offset says where partitions without a committed offset start: earliest or latest"
        ),
    };
    if !args.partition.is_empty() || args.exit {
        anyhow::bail!("with --group the coordinator assigns partitions: --partition and --exit do not apply");
    }
    let client = global.connect().await?;
    let assignor = match args.group_args.assignor {
        AssignorArg::Range => GroupAssignor::Range,
        AssignorArg::Roundrobin => GroupAssignor::RoundRobin,
        AssignorArg::Sticky => GroupAssignor::Sticky,
    };
    let config = GroupConfig {
        group_id: group,
        assignor,
        session_timeout_ms: args.group_args.session_timeout_ms,
        auto_commit: true,
        auto_commit_interval_ms: args.group_args.commit_interval_ms,
        auto_offset_reset: reset,
        ..GroupConfig::default()
    };
    let mut consumer = GroupConsumer::new(client, config)?;
    consumer.subscribe(std::slice::from_ref(&args.topic)).await.context("joining the group")?;
    let key_separator = args.print_key.then_some(args.key_separator.as_str());
    let mut stdout = std::io::stdout();
    let mut printed = 0u64;
    let mut out = Vec::new();
    while args.count.is_none_or(|count| printed < count) {
        let records = consumer.poll(POLL_TIMEOUT).await.context("fetching records")?;
        out.clear();
        // Where each partition's unprinted records start, if --count cuts
        // a poll short: the position goes back there so it is not committed.
        let mut first_unprinted: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for record in &records {
            if args.count.is_some_and(|count| printed >= count) {
                let tp = TopicPartition::new(record.topic.clone(), record.partition);
                first_unprinted.entry(tp).or_insert(record.offset);
                continue;
            }
            args.format.write(&mut out, record, key_separator)?;
            printed += 1;
        }
        flush_lines(&mut stdout, &out)?;
        for (tp, offset) in first_unprinted {
            consumer.seek(&tp, offset).await.context("rewinding past the last printed record")?;
        }
    }
    consumer.close().await.context("leaving the group")?;
    Ok(())
}
