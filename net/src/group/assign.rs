//! Server-side assignors (KIP-848): pure functions from the members'
//! subscriptions, the topics' partition counts and the previous target to
//! a new target assignment. The coordinator then moves members toward it
//! incrementally (`state.rs`): nothing here knows about revocation.

use std::collections::{BTreeMap, BTreeSet};

/// A topic and partition.
pub(crate) type Tp = (String, i32);

/// Members to the partitions they are to own.
pub(crate) type Assignment = BTreeMap<String, BTreeSet<Tp>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Assignor {
    /// Per topic, contiguous ranges over the members subscribed to it,
    /// sorted by member id (Kafka's RangeAssignor): co-partitioned topics
    /// line up, but with many topics the first members get more.
    Range,
    /// Every partition of every topic in turn to the next member subscribed
    /// to its topic: the most even spread, ignoring history.
    RoundRobin,
    /// As even as round-robin, but a member keeps what it had as far as
    /// balance allows, so a rebalance moves as few partitions as it can.
    Sticky,
}

impl Assignor {
    pub(crate) fn parse(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "roundrobin" | "round-robin" => Some(Assignor::RoundRobin),
            "sticky" | "uniform" => Some(Assignor::Sticky),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::Sticky => "sticky",
        }
    }
}

/// Computes a target. `members` maps member ids to subscribed topics,
/// `partitions` topics to partition counts (a topic missing there has
/// none), `previous` is the last target (the sticky assignor keeps it
/// where it can). Every member gets an entry, empty if it gets nothing.
pub(crate) fn assign(
    assignor: Assignor,
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = members.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    if members.is_empty() {
        return out;
    }
    match assignor {
        Assignor::Range => range(members, partitions, &mut out),
        Assignor::RoundRobin => round_robin(members, partitions, &mut out),
        Assignor::Sticky => sticky(members, partitions, previous, &mut out),
    }
    debug_assert!(no_partition_twice(&out));
    out
}

fn no_partition_twice(assignment: &Assignment) -> bool {
    let mut seen = BTreeSet::new();
    assignment.values().flatten().all(|tp| seen.insert(tp))
}

/// Every partition of every subscribed topic, sorted.
fn all_partitions(members: &BTreeMap<String, BTreeSet<String>>, partitions: &BTreeMap<String, u32>) -> Vec<Tp> {
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    topics
        .into_iter()
        .flat_map(|topic| {
            let count = partitions.get(topic).copied().unwrap_or(0);
            (0..count).map(move |p| (topic.clone(), p as i32))
        })
        .collect()
}

fn range(members: &BTreeMap<String, BTreeSet<String>>, partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    let topics: BTreeSet<&String> = members.values().flatten().collect();
    for topic in topics {
        let count = partitions.get(topic).copied().unwrap_or(0) as usize;
        let subscribers: Vec<&String> = members.iter().filter(|(_, t)| t.contains(topic)).map(|(id, _)| id).collect();
        let (each, extra) = (count / subscribers.len(), count % subscribers.len());
        let mut next = 0usize;
        for (i, member) in subscribers.into_iter().enumerate() {
            let take = each + usize::from(i < extra);
            let slot = out.entry(member.clone()).or_default();
            slot.extend((next..next + take).map(|p| (topic.clone(), p as i32)));
            next += take;
        }
        debug_assert_eq!(next, count);
    }
}

fn round_robin(members: &BTreeMap<String, BTreeSet<String>>, partitions: &BTreeMap<String, u32>, out: &mut Assignment) {
    let ids: Vec<&String> = members.keys().collect();
    let mut cursor = 0usize;
    for tp in all_partitions(members, partitions) {
        // At least one member subscribes to tp's topic, so this ends.
        for step in 0..ids.len() {
            let member = ids[(cursor + step) % ids.len()];
            if members[member].contains(&tp.0) {
                out.entry(member.clone()).or_default().insert(tp);
                cursor = (cursor + step + 1) % ids.len();
                break;
            }
        }
    }
}

fn sticky(
    members: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
    out: &mut Assignment,
) {
    let all = all_partitions(members, partitions);
    let valid: BTreeSet<&Tp> = all.iter().collect();
    // Quotas as if every member subscribed to everything: floor each, and
    // `extra` members one more.
    let (floor, mut extra) = (all.len() / members.len(), all.len() % members.len());
    let mut taken: BTreeSet<Tp> = BTreeSet::new();
    let kept = |member: &String, taken: &BTreeSet<Tp>| -> Vec<Tp> {
        previous
            .get(member)
            .into_iter()
            .flatten()
            .filter(|tp| valid.contains(tp) && members[member].contains(&tp.0) && !taken.contains(*tp))
            .cloned()
            .collect()
    };
    for member in members.keys() {
        for tp in kept(member, &taken).into_iter().take(floor) {
            taken.insert(tp.clone());
            out.entry(member.clone()).or_default().insert(tp);
        }
    }
    for member in members.keys() {
        if extra == 0 {
            break;
        }
        if let Some(tp) = kept(member, &taken).into_iter().next() {
            taken.insert(tp.clone());
            out.entry(member.clone()).or_default().insert(tp);
            extra -= 1;
        }
    }
    for tp in all {
        if taken.contains(&tp) {
            continue;
        }
        let least = members
            .iter()
            .filter(|(_, topics)| topics.contains(&tp.0))
            .map(|(id, _)| id)
            .min_by_key(|id| (out.get(*id).map_or(0, BTreeSet::len), (*id).clone()));
        if let Some(member) = least {
            out.entry(member.clone()).or_default().insert(tp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str], topics: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        ids.iter().map(|id| (id.to_string(), topics.iter().map(|t| t.to_string()).collect())).collect()
    }

    fn counts(assignment: &Assignment) -> Vec<usize> {
        assignment.values().map(BTreeSet::len).collect()
    }

    fn covered(assignment: &Assignment) -> usize {
        assignment.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic_first_members_one_more() {
        let partitions = BTreeMap::from([("t".to_string(), 5)]);
        let out = assign(Assignor::Range, &members(&["a", "b"], &["t"]), &partitions, &Assignment::new());
        let tp = |p| ("t".to_string(), p);
        assert_eq!(out["a"], BTreeSet::from([tp(0), tp(1), tp(2)]));
        assert_eq!(out["b"], BTreeSet::from([tp(3), tp(4)]));
    }

    #[test]
    fn every_assignor_covers_every_partition_once_and_balances_within_one() {
        let partitions = BTreeMap::from([("t".to_string(), 4), ("u".to_string(), 3)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            for n in 1..=9 {
                let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let out = assign(assignor, &members(&ids, &["t", "u"]), &partitions, &Assignment::new());
                assert_eq!(covered(&out), 7, "{assignor:?} with {n}");
                assert!(no_partition_twice(&out));
                assert_eq!(out.len(), n);
                if assignor != Assignor::Range {
                    let (min, max) = (counts(&out).into_iter().min(), counts(&out).into_iter().max());
                    assert!(max.unwrap_or(0) - min.unwrap_or(0) <= 1, "{assignor:?} with {n}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to() {
        let mut subs = members(&["a"], &["t"]);
        subs.extend(members(&["b"], &["u"]));
        let partitions = BTreeMap::from([("t".to_string(), 2), ("u".to_string(), 2)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let out = assign(assignor, &subs, &partitions, &Assignment::new());
            assert!(out["a"].iter().all(|tp| tp.0 == "t"), "{assignor:?}");
            assert!(out["b"].iter().all(|tp| tp.0 == "u"), "{assignor:?}");
            assert_eq!(covered(&out), 4);
        }
    }

    #[test]
    fn sticky_moves_only_what_balance_requires() {
        let partitions = BTreeMap::from([("t".to_string(), 6)]);
        let two = assign(Assignor::Sticky, &members(&["a", "b"], &["t"]), &partitions, &Assignment::new());
        let three = assign(Assignor::Sticky, &members(&["a", "b", "c"], &["t"]), &partitions, &two);
        // a and b each give up one partition to c, keeping the rest.
        assert!(three["a"].is_subset(&two["a"]));
        assert!(three["b"].is_subset(&two["b"]));
        assert_eq!(counts(&three), vec![2, 2, 2]);
        // c leaves: its two go back, a and b keep theirs.
        let back = assign(Assignor::Sticky, &members(&["a", "b"], &["t"]), &partitions, &three);
        assert!(three["a"].is_subset(&back["a"]));
        assert!(three["b"].is_subset(&back["b"]));
        assert_eq!(counts(&back), vec![3, 3]);
    }

    #[test]
    fn extra_members_idle_and_unknown_topics_give_nothing() {
        let partitions = BTreeMap::from([("t".to_string(), 2)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let out = assign(assignor, &members(&["a", "b", "c"], &["t", "missing"]), &partitions, &Assignment::new());
            assert_eq!(covered(&out), 2);
            assert_eq!(out.values().filter(|s| s.is_empty()).count(), 1, "{assignor:?}");
        }
        assert_eq!(Assignor::parse("roundrobin"), Some(Assignor::RoundRobin));
        assert_eq!(Assignor::parse("cooperative"), None);
    }
}
