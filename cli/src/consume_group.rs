//! `spate consume TOPIC --group G`: a member of a consumer group. The
//! coordinator assigns it partitions; it prints their records and commits
//! after printing (the positions after the records it has printed and
//! flushed, before each poll), so a member killed at any moment leaves
//! nothing skipped: its partitions move to the others after its session
//! times out and they start at the last commit.
//!
//! SIGTERM and SIGINT stop it cleanly: it commits exactly what it printed,
//! leaves the group (the partitions move at once) and exits 0. A closed
//! pipe or a failed write ends it without committing anything more (what
//! sat in the pipe may never have been read), leaving the group too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use spate_client::{AutoOffsetReset, GroupAssignor, GroupConfig, GroupConsumer, SeekTo, TopicPartition};

use crate::GlobalArgs;
use crate::consume::{ConsumeArgs, flush_lines};

/// How long one poll waits when there is nothing to print; also how long
/// a signal may wait before the member notices it.
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
    // Before the member joins and anything is fetched, so that no signal
    // finds it unprepared: from here on SIGTERM and SIGINT end it cleanly.
    // (Until here nothing is consumed, and a signal ends the process as
    // usual, even while it waits for an unreachable cluster.)
    let stop = stop_on_signals()?;
    let mut consumer = GroupConsumer::new(client, config)?;
    consumer.subscribe(std::slice::from_ref(&args.topic)).await.context("joining the group")?;
    match print_records(&mut consumer, &args, &stop).await {
        Ok(()) => {
            // Every record the polls returned is written and flushed (or,
            // past --count, sought back over), so the positions are exactly
            // what was printed: commit them, then leave so that the
            // partitions move at once.
            let committed = consumer.commit_sync().await.context("committing the printed records");
            let left = consumer.leave().await.context("leaving the group");
            committed.and(left)
        }
        Err(Stopped::Output(error)) => {
            // What reached a closed pipe may never have been read, and a
            // failed write may have left part of a poll out: commit nothing
            // more. Leaving hands the partitions over at once, from the last
            // commit; if that fails too, the session timeout does it.
            let _ = consumer.leave().await;
            Err(error)
        }
        Err(Stopped::Consumer(error)) => Err(error),
    }
}

/// Why printing stopped early.
enum Stopped {
    /// Writing or flushing stdout failed (a closed pipe, a full disk).
    Output(anyhow::Error),
    /// Fetching or the group failed.
    Consumer(anyhow::Error),
}

/// Polls and prints until `--count` records are printed or a signal asks
/// to stop. Each poll's records are written and flushed before the next
/// poll, which is where the group consumer commits: so a commit never
/// covers a record that is not on stdout yet.
async fn print_records(consumer: &mut GroupConsumer, args: &ConsumeArgs, stop: &AtomicBool) -> Result<(), Stopped> {
    let key_separator = args.print_key.then_some(args.key_separator.as_str());
    let mut stdout = std::io::stdout();
    let mut printed = 0u64;
    let mut out = Vec::new();
    while args.count.is_none_or(|count| printed < count) && !stop.load(Ordering::SeqCst) {
        let records = consumer.poll(POLL_TIMEOUT).await.context("fetching records").map_err(Stopped::Consumer)?;
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
            args.format.write(&mut out, record, key_separator).map_err(Stopped::Consumer)?;
            printed += 1;
        }
        flush_lines(&mut stdout, &out).map_err(Stopped::Output)?;
        for (tp, offset) in first_unprinted {
            consumer
                .seek(&tp, offset)
                .await
                .context("rewinding past the last printed record")
                .map_err(Stopped::Consumer)?;
        }
    }
    Ok(())
}

/// The flag SIGTERM and SIGINT set: the member stops after the poll in
/// hand (at most `POLL_TIMEOUT` when idle), commits what it printed, leaves
/// and exits 0. A second signal ends the process at once (exit code 128 +
/// the signal), for a member stuck on a write nobody reads or a cluster
/// that does not answer.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so that it sees the flag as the previous
        // signal left it: it exits only on the second.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.clone())
            .context("handling signals")?;
        signal_hook::flag::register(signal, stop.clone()).context("handling signals")?;
    }
    Ok(stop)
}
