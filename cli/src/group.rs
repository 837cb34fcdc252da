//! `spate group list|describe|reset-offsets|delete`, in the manner of
//! `kafka-consumer-groups` and `rpk group`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use clap::Subcommand;
use spate_client::{
    Admin, Consumer, ConsumerConfig, GroupAdmin, GroupDescription, SeekTo, TopicPartition, validate_group_id,
};

use crate::GlobalArgs;
use crate::output::{Table, print};

#[derive(Subcommand, Debug)]
pub(crate) enum GroupCommand {
    /// List groups with their state and member count.
    List,
    /// Members, assignment, and per partition the committed offset, log
    /// end offset and lag.
    Describe { group: String },
    /// Set a group's committed offsets (only while it has no members).
    ResetOffsets(ResetArgs),
    /// Delete groups (only without members), with their committed offsets.
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime"])))]
pub(crate) struct ResetArgs {
    group: String,
    /// Topics to reset (repeatable); by default those the group has
    /// committed offsets for.
    #[arg(long, short = 't')]
    topic: Vec<String>,
    /// Each partition's log start offset.
    #[arg(long)]
    to_earliest: bool,
    /// Each partition's high watermark.
    #[arg(long)]
    to_latest: bool,
    /// This offset, clamped to each partition's range.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    to_offset: Option<i64>,
    /// The first record at or after this time: ms since the epoch, or
    /// YYYY-MM-DDTHH:MM:SS[.mmm][Z] in UTC.
    #[arg(long, value_name = "TIME", value_parser = parse_datetime)]
    to_datetime: Option<i64>,
}

pub(crate) async fn run(global: &GlobalArgs, command: GroupCommand) -> anyhow::Result<()> {
    let client = global.connect().await?;
    let groups = GroupAdmin::new(client.clone());
    match command {
        GroupCommand::List => {
            let listings = groups.list_groups().await.context("listing groups")?;
            let mut table = Table::new(&["GROUP", "STATE", "MEMBERS"]);
            for listing in listings {
                table.row(vec![listing.group_id, listing.state, listing.members.to_string()]);
            }
            print(&table.render())?;
        }
        GroupCommand::Describe { group } => {
            validate_group_id(&group).map_err(anyhow::Error::msg)?;
            let description =
                groups.describe_group(&group).await.with_context(|| format!("describing group {group}"))?;
            print(&describe_text(&description))?;
        }
        GroupCommand::ResetOffsets(args) => reset(&client, &groups, args).await?,
        GroupCommand::Delete { groups: names } => {
            let failure = |failed| format!("{failed} of {} groups not deleted", names.len());
            crate::output::delete_each("GROUP", &names, failure, async |name| groups.delete_group(name).await).await?;
        }
    }
    Ok(())
}

fn partitions_text(set: &BTreeSet<TopicPartition>) -> String {
    let mut by_topic: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for tp in set {
        by_topic.entry(&tp.topic).or_default().push(tp.partition.to_string());
    }
    let parts: Vec<String> = by_topic.into_iter().map(|(topic, ps)| format!("{topic}[{}]", ps.join(" "))).collect();
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

fn or_dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(crate) fn describe_text(group: &GroupDescription) -> String {
    let mut head = Table::new(&["GROUP", &group.group_id]);
    head.row(vec!["STATE".into(), group.state.clone()]);
    head.row(vec!["EPOCH".into(), group.group_epoch.to_string()]);
    head.row(vec!["ASSIGNOR".into(), group.assignor.clone()]);
    head.row(vec!["MEMBERS".into(), group.members.len().to_string()]);
    let mut members = Table::new(&["MEMBER-ID", "CLIENT-ID", "EPOCH", "ASSIGNMENT"]);
    for member in &group.members {
        members.row(vec![
            member.member_id.clone(),
            member.client_id.clone(),
            member.member_epoch.to_string(),
            partitions_text(&member.assignment),
        ]);
    }
    let mut offsets = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER-ID"]);
    for offset in &group.offsets {
        offsets.row(vec![
            offset.tp.topic.clone(),
            offset.tp.partition.to_string(),
            or_dash(offset.committed_offset),
            or_dash(offset.log_end_offset),
            or_dash(offset.lag),
            offset.member_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut text = head.render();
    if !group.members.is_empty() {
        text.push('\n');
        text.push_str(&members.render());
    }
    text.push('\n');
    text.push_str(&offsets.render());
    text
}

async fn reset(client: &spate_client::Client, groups: &GroupAdmin, args: ResetArgs) -> anyhow::Result<()> {
    validate_group_id(&args.group).map_err(anyhow::Error::msg)?;
    let topics: BTreeSet<String> = if args.topic.is_empty() {
        let committed = groups.committed_offsets(&args.group, None).await.context("reading committed offsets")?;
        committed.keys().map(|tp| tp.topic.clone()).collect()
    } else {
        args.topic.iter().cloned().collect()
    };
    if topics.is_empty() {
        anyhow::bail!("group {} has no committed offsets; name the topics with --topic", args.group);
    }
    let names: Vec<String> = topics.into_iter().collect();
    let described = Admin::new(client.clone()).describe_topics(Some(&names)).await.context("describing topics")?;
    let partitions: Vec<TopicPartition> = described
        .iter()
        .flat_map(|topic| topic.partitions.iter().map(|p| TopicPartition::new(topic.name.clone(), p.partition)))
        .collect();
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default())?;
    consumer.assign(partitions.clone());
    let targets: Vec<(TopicPartition, i64)> = match (args.to_earliest, args.to_latest, args.to_offset, args.to_datetime)
    {
        (true, ..) => consumer.beginning_offsets(&partitions).await?,
        (_, true, ..) => consumer.end_offsets(&partitions).await?,
        (_, _, Some(offset), _) => {
            let starts: BTreeMap<_, _> = consumer.beginning_offsets(&partitions).await?.into_iter().collect();
            let ends: BTreeMap<_, _> = consumer.end_offsets(&partitions).await?.into_iter().collect();
            partitions.iter().map(|tp| (tp.clone(), offset.clamp(starts[tp], ends[tp].max(starts[tp])))).collect()
        }
        (_, _, _, Some(time)) => consumer.seek_many(&partitions, SeekTo::Timestamp(time)).await?,
        _ => anyhow::bail!("say where to: --to-earliest, --to-latest, --to-offset or --to-datetime"),
    };
    let offsets: BTreeMap<TopicPartition, i64> = targets.into_iter().collect();
    groups.reset_offsets(&args.group, &offsets).await.with_context(|| format!("resetting group {}", args.group))?;
    let mut table = Table::new(&["TOPIC", "PARTITION", "NEW-OFFSET"]);
    for (tp, offset) in &offsets {
        table.row(vec![tp.topic.clone(), tp.partition.to_string(), offset.to_string()]);
    }
    print(&table.render())?;
    Ok(())
}

/// Milliseconds since the epoch, or an ISO 8601 UTC time
/// (`2024-05-01T12:00:00`, optional `.mmm` and `Z`).
pub(crate) fn parse_datetime(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("{text:?} is neither ms since the epoch nor YYYY-MM-DDTHH:MM:SS[.mmm][Z]");
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let date: Vec<i64> = date.split('-').map(|n| n.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let (time, millis) = match time.split_once('.') {
        Some((time, ms)) if ms.len() == 3 => (time, ms.parse::<i64>().map_err(|_| bad())?),
        Some(_) => return Err(bad()),
        None => (time, 0),
    };
    let time: Vec<i64> = time.split(':').map(|n| n.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let (&[year, month, day], &[hour, minute, second]) = (date.as_slice(), time.as_slice()) else { return Err(bad()) };
    // Bounded fields keep the arithmetic below far from overflow.
    let in_range = (0..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..=23).contains(&hour)
        && (0..=59).contains(&minute)
        && (0..=60).contains(&second);
    if !in_range {
        return Err(bad());
    }
    Ok((days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_are_utc_iso_or_milliseconds() {
        assert_eq!(parse_datetime("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_datetime("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_datetime("2023-11-14T22:13:20.250"), Ok(1_700_000_000_250));
        assert_eq!(parse_datetime("2000-03-01T00:00:00"), Ok(951_868_800_000));
        for bad in [
            "yesterday",
            "2023-13-01T00:00:00",
            "2023-11-14",
            "2023-11-14T22:13",
            "2023-11-14T22:13:20.5",
            "9223372036854775807-01-01T00:00:00",
            "2023-11-14T-1:13:20",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad:?} accepted");
        }
    }
}
