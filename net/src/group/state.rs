//! One group's state on its coordinator, as a plain state machine (time is
//! passed in) so that membership, fencing and incremental reconciliation
//! are tested without a broker.
//!
//! The model is KIP-848's. The group epoch goes up on every change of
//! membership, subscriptions or subscribed topics' partition counts, and
//! the assignor then computes a new target. Each member moves toward its
//! target one heartbeat at a time: it is told to drop what it must give
//! up, and it is given a partition only once no other member holds it,
//! where "holds" means reported owned in its last heartbeat or granted in
//! its last answer. So a partition is never owned twice, and a rebalance
//! moves only the partitions that change hands.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use spate_flatbuf::proto::ErrorCode;

use super::assign::{Assignment, Assignor, Tp, assign};
use super::classic_state::ClassicGroup;

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub client_id: String,
    pub epoch: i32,
    /// The epoch before the last move; a request still carrying it (sent
    /// before the answer that moved it arrived) is accepted.
    pub previous_epoch: i32,
    pub subscribed: BTreeSet<String>,
    pub session_timeout: Duration,
    /// Removed if no heartbeat arrives by then.
    pub deadline: Instant,
    /// What the member reported owning in its last heartbeat.
    pub owned: BTreeSet<Tp>,
    /// What its last answer allowed it to own.
    pub assigned: BTreeSet<Tp>,
}

impl Member {
    fn holds(&self, tp: &Tp) -> bool {
        self.owned.contains(tp) || self.assigned.contains(tp)
    }
}

#[derive(Debug)]
pub(crate) struct Group {
    pub epoch: i32,
    pub assignor: Assignor,
    pub members: BTreeMap<String, Member>,
    pub target: Assignment,
    /// The partition counts the target was computed with.
    pub topic_partitions: BTreeMap<String, u32>,
    /// Committed offsets (applied once durable).
    pub offsets: BTreeMap<Tp, i64>,
    /// Loaded from the log of a coordinator that had members (soft state,
    /// lost in the move): until then they may still rejoin here, and the
    /// group counts as not empty for commits and deletes from outside it.
    pub rejoin_until: Option<Instant>,
    /// Kafka's classic protocol, if the group is (or was last) a classic
    /// group (`classic_state.rs`); the two kinds share epoch and offsets.
    pub classic: Option<Box<ClassicGroup>>,
}

/// A heartbeat as the coordinator reads it.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatIn {
    pub member_id: String,
    pub member_epoch: i32,
    pub subscribed: BTreeSet<String>,
    pub assignor: Option<Assignor>,
    pub session_timeout: Duration,
    pub owned: BTreeSet<Tp>,
    pub client_id: String,
    /// KIP-1082: the member id the client chose for itself (Kafka's
    /// ConsumerGroupHeartbeat v1), kept when it joins; None: the
    /// coordinator picks one.
    pub client_member_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeartbeatOut {
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: BTreeSet<Tp>,
}

/// What a heartbeat changed, for the caller to persist and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Changed {
    pub epoch: bool,
    /// A new member joined: start its session timer.
    pub joined: bool,
}

pub(crate) type Refusal = (ErrorCode, String);

impl Group {
    pub(crate) fn new(assignor: Assignor) -> Group {
        Group {
            epoch: 0,
            assignor,
            members: BTreeMap::new(),
            target: Assignment::new(),
            topic_partitions: BTreeMap::new(),
            offsets: BTreeMap::new(),
            rejoin_until: None,
            classic: None,
        }
    }

    /// Members of either kind.
    pub(crate) fn member_count(&self) -> usize {
        self.members.len() + self.classic.as_ref().map_or(0, |c| c.members.len())
    }

    /// Whether the group may have live members: it has some here, or had
    /// some under its previous coordinator less than their session timeout
    /// ago, which may not have rejoined yet.
    pub(crate) fn may_have_members(&self, now: Instant) -> bool {
        self.member_count() > 0 || self.rejoin_until.is_some_and(|until| now < until)
    }

    /// The longest session timeout of the members, in ms (for the group
    /// record).
    pub(crate) fn session_timeout_ms_max(&self) -> u32 {
        let longest = self.members.values().map(|m| m.session_timeout).max().unwrap_or_default();
        u32::try_from(longest.as_millis()).unwrap_or(u32::MAX)
    }

    pub(crate) fn state(&self) -> &'static str {
        if let Some(classic) = self.classic.as_ref().filter(|c| !c.members.is_empty()) {
            return classic.state.name();
        }
        if self.members.is_empty() {
            return "Empty";
        }
        let settled = self.members.iter().all(|(id, member)| {
            let target = self.target.get(id).cloned().unwrap_or_default();
            member.owned == target && member.assigned == target && member.epoch == self.epoch
        });
        if settled { "Stable" } else { "Reconciling" }
    }

    /// Joins, heartbeats or leaves. `counts` gives a topic's partition
    /// count (None: no such topic); `new_id` a fresh member id.
    pub(crate) fn heartbeat(
        &mut self,
        request: HeartbeatIn,
        now: Instant,
        counts: &dyn Fn(&str) -> Option<u32>,
        new_id: impl FnOnce() -> String,
    ) -> Result<(HeartbeatOut, Changed), Refusal> {
        let mut changed = Changed::default();
        let member_id = match request.member_epoch {
            -1 => {
                // Leaving: the member's partitions are free at once.
                if self.members.remove(&request.member_id).is_some() {
                    self.bump(counts);
                    changed.epoch = true;
                }
                let out = HeartbeatOut { member_id: request.member_id, member_epoch: -1, assignment: BTreeSet::new() };
                return Ok((out, changed));
            }
            0 => {
                // Joining (or rejoining after being fenced): a fresh id, so
                // nothing the old incarnation sends is taken for the new.
                if self.members.is_empty()
                    && let Some(assignor) = request.assignor
                {
                    self.assignor = assignor;
                }
                if !request.member_id.is_empty() {
                    self.members.remove(&request.member_id);
                }
                let id = new_id();
                self.members.insert(
                    id.clone(),
                    Member {
                        client_id: request.client_id.clone(),
                        epoch: 0,
                        previous_epoch: 0,
                        subscribed: BTreeSet::new(),
                        session_timeout: request.session_timeout,
                        deadline: now + request.session_timeout,
                        owned: BTreeSet::new(),
                        assigned: BTreeSet::new(),
                    },
                );
                changed.joined = true;
                changed.epoch = true;
                id
            }
            epoch => {
                let Some(member) = self.members.get(&request.member_id) else {
                    return Err((
                        ErrorCode::UnknownMemberId,
                        format!(
                            "member {} is not in the group (session expired, left, or broker restarted)",
                            request.member_id
                        ),
                    ));
                };
                if epoch != member.epoch && epoch != member.previous_epoch {
                    let message = format!("member epoch {epoch}, current {}", member.epoch);
                    // A fenced member starts over; its partitions are freed.
                    self.members.remove(&request.member_id);
                    self.bump(counts);
                    return Err((ErrorCode::FencedMemberEpoch, message));
                }
                request.member_id.clone()
            }
        };
        let member = self.members.get_mut(&member_id).expect("present: joined or checked above");
        member.deadline = now + request.session_timeout;
        member.session_timeout = request.session_timeout;
        member.owned = request.owned;
        if member.subscribed != request.subscribed {
            member.subscribed = request.subscribed;
            changed.epoch = true;
        }
        if changed.epoch || self.topics_changed(counts) {
            self.bump(counts);
            changed.epoch = true;
        }
        let out = self.reconcile(&member_id);
        Ok((out, changed))
    }

    /// Removes members whose session ended by `now`; true if any was.
    pub(crate) fn expire(&mut self, member_id: &str, now: Instant, counts: &dyn Fn(&str) -> Option<u32>) -> bool {
        let expired = self.members.get(member_id).is_some_and(|member| member.deadline <= now);
        if expired {
            self.members.remove(member_id);
            self.bump(counts);
        }
        expired
    }

    /// Whether a commit from this member (or an administrative one, with an
    /// empty id) may be applied.
    pub(crate) fn check_commit(&self, member_id: &str, member_epoch: i32, now: Instant) -> Result<(), Refusal> {
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err((
                    ErrorCode::NonEmptyGroup,
                    format!("the group has {} members; offsets change only while it has none", self.members.len()),
                ));
            }
            if self.may_have_members(now) {
                return Err((
                    ErrorCode::NonEmptyGroup,
                    "the group had members when its coordinator moved, which may still rejoin; offsets change only while it has none"
                        .to_string(),
                ));
            }
            return Ok(());
        }
        let Some(member) = self.members.get(member_id) else {
            return Err((ErrorCode::UnknownMemberId, format!("member {member_id} is not in the group")));
        };
        if member_epoch != member.epoch && member_epoch != member.previous_epoch {
            return Err((
                ErrorCode::FencedMemberEpoch,
                format!("commit at member epoch {member_epoch}; the member is at {}", member.epoch),
            ));
        }
        Ok(())
    }

    fn topics_changed(&self, counts: &dyn Fn(&str) -> Option<u32>) -> bool {
        let subscribed: BTreeSet<&String> = self.members.values().flat_map(|m| &m.subscribed).collect();
        subscribed.iter().any(|topic| self.topic_partitions.get(*topic).copied() != counts(topic))
            || self.topic_partitions.keys().any(|topic| !subscribed.contains(topic))
    }

    /// A new group epoch and target.
    fn bump(&mut self, counts: &dyn Fn(&str) -> Option<u32>) {
        self.epoch = self.epoch.saturating_add(1);
        let subscriptions: BTreeMap<String, BTreeSet<String>> =
            self.members.iter().map(|(id, m)| (id.clone(), m.subscribed.clone())).collect();
        self.topic_partitions = subscriptions
            .values()
            .flatten()
            .filter_map(|topic| counts(topic).map(|count| (topic.clone(), count)))
            .collect();
        self.target = assign(self.assignor, &subscriptions, &self.topic_partitions, &self.target);
    }

    /// What the member may own now: what it owns of its target, plus the
    /// rest of its target that no one else holds. Its epoch catches up with
    /// the group's once it holds nothing outside its target.
    fn reconcile(&mut self, member_id: &str) -> HeartbeatOut {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let others_hold = |tp: &Tp| self.members.iter().any(|(id, m)| id != member_id && m.holds(tp));
        let member = &self.members[member_id];
        let mut assignment: BTreeSet<Tp> = member.owned.intersection(&target).cloned().collect();
        assignment.extend(target.iter().filter(|tp| !member.owned.contains(*tp) && !others_hold(tp)).cloned());
        let revoking = !member.owned.is_subset(&target);
        let epoch = self.epoch;
        let member = self.members.get_mut(member_id).expect("reconciling a present member");
        if !revoking && member.epoch != epoch {
            member.previous_epoch = member.epoch;
            member.epoch = epoch;
        }
        member.assigned = assignment.clone();
        HeartbeatOut { member_id: member_id.to_string(), member_epoch: member.epoch, assignment }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(1);

    fn counts(topic: &str) -> Option<u32> {
        (topic == "t").then_some(4)
    }

    fn join(group: &mut Group, id: &str, now: Instant) -> HeartbeatOut {
        let request = HeartbeatIn {
            member_id: String::new(),
            member_epoch: 0,
            subscribed: BTreeSet::from(["t".to_string()]),
            assignor: Some(Assignor::Sticky),
            session_timeout: SESSION,
            owned: BTreeSet::new(),
            client_id: "test".into(),
            client_member_id: None,
        };
        group.heartbeat(request, now, &counts, || id.to_string()).expect("joins").0
    }

    fn beat(
        group: &mut Group,
        last: &HeartbeatOut,
        owned: &BTreeSet<Tp>,
        now: Instant,
    ) -> Result<HeartbeatOut, Refusal> {
        let request = HeartbeatIn {
            member_id: last.member_id.clone(),
            member_epoch: last.member_epoch,
            subscribed: BTreeSet::from(["t".to_string()]),
            assignor: None,
            session_timeout: SESSION,
            owned: owned.clone(),
            client_id: "test".into(),
            client_member_id: None,
        };
        group.heartbeat(request, now, &counts, || unreachable!("no join")).map(|(out, _)| out)
    }

    #[test]
    fn a_partition_moves_only_after_its_old_owner_gives_it_up() {
        let now = Instant::now();
        let mut group = Group::new(Assignor::Sticky);
        let a = join(&mut group, "a", now);
        assert_eq!(a.assignment.len(), 4, "alone, a gets everything");
        let a = beat(&mut group, &a, &a.assignment.clone(), now).expect("beat");
        let a_owned = a.assignment.clone();
        let b = join(&mut group, "b", now);
        assert!(b.assignment.is_empty(), "b gets nothing while a still owns all: {b:?}");
        // a is told to give up two; until it confirms, b still waits.
        let a2 = beat(&mut group, &a, &a_owned, now).expect("beat");
        assert_eq!(a2.assignment.len(), 2);
        assert_eq!(group.state(), "Reconciling");
        let b = beat(&mut group, &b, &BTreeSet::new(), now).expect("beat");
        assert!(b.assignment.is_empty(), "a has not confirmed yet");
        let a3 = beat(&mut group, &a2, &a2.assignment.clone(), now).expect("beat");
        assert_eq!(a3.member_epoch, group.epoch, "a caught up with the group epoch");
        let b = beat(&mut group, &b, &BTreeSet::new(), now).expect("beat");
        assert_eq!(b.assignment.len(), 2);
        assert!(b.assignment.is_disjoint(&a3.assignment));
        let _ = beat(&mut group, &b, &b.assignment.clone(), now).expect("beat");
        assert_eq!(group.state(), "Stable");
    }

    #[test]
    fn an_expired_member_frees_its_partitions_and_its_late_requests_are_refused() {
        let now = Instant::now();
        let mut group = Group::new(Assignor::Range);
        let a = join(&mut group, "a", now);
        let a = beat(&mut group, &a, &a.assignment.clone(), now).expect("beat");
        let b = join(&mut group, "b", now);
        assert!(!group.expire("a", now, &counts), "not yet");
        assert!(group.expire("a", now + SESSION, &counts));
        let b = beat(&mut group, &b, &BTreeSet::new(), now + SESSION).expect("beat");
        assert_eq!(b.assignment.len(), 4, "a's partitions went to b at once");
        let late = beat(&mut group, &a, &a.assignment.clone(), now + SESSION);
        assert_eq!(late.map_err(|e| e.0), Err(ErrorCode::UnknownMemberId));
        assert_eq!(group.check_commit("a", a.member_epoch, now).map_err(|e| e.0), Err(ErrorCode::UnknownMemberId));
        assert!(group.check_commit("b", b.member_epoch, now).is_ok());
        assert_eq!(group.check_commit("", -1, now).map_err(|e| e.0), Err(ErrorCode::NonEmptyGroup));
    }

    #[test]
    fn a_stale_epoch_is_fenced_and_the_member_removed() {
        let now = Instant::now();
        let mut group = Group::new(Assignor::Range);
        let a = join(&mut group, "a", now);
        let a1 = beat(&mut group, &a, &a.assignment.clone(), now).expect("beat");
        let b = join(&mut group, "b", now);
        let a2 = beat(&mut group, &a1, &a1.assignment.clone(), now).expect("beat");
        let a3 = beat(&mut group, &a2, &a2.assignment.clone(), now).expect("beat");
        let _ = b;
        assert!(a3.member_epoch > a1.member_epoch);
        // Neither the current epoch nor the previous one (epoch 0 would be
        // a join).
        let stale = HeartbeatOut { member_epoch: a3.member_epoch + 5, ..a3.clone() };
        assert_eq!(
            group.check_commit("a", stale.member_epoch, now).map_err(|e| e.0),
            Err(ErrorCode::FencedMemberEpoch)
        );
        let fenced = beat(&mut group, &stale, &a3.assignment.clone(), now);
        assert_eq!(fenced.map_err(|e| e.0), Err(ErrorCode::FencedMemberEpoch));
        assert!(!group.members.contains_key("a"));
    }

    #[test]
    fn leaving_empties_the_group_and_keeps_offsets() {
        let now = Instant::now();
        let mut group = Group::new(Assignor::RoundRobin);
        let a = join(&mut group, "a", now);
        group.offsets.insert(("t".into(), 0), 5);
        let left = HeartbeatOut { member_epoch: -1, ..a };
        let request = HeartbeatIn {
            member_id: left.member_id.clone(),
            member_epoch: -1,
            subscribed: BTreeSet::new(),
            assignor: None,
            session_timeout: SESSION,
            owned: BTreeSet::new(),
            client_id: String::new(),
            client_member_id: None,
        };
        let (_, changed) = group.heartbeat(request, now, &counts, || unreachable!()).expect("leaves");
        assert!(changed.epoch);
        assert_eq!(group.state(), "Empty");
        assert!(group.check_commit("", -1, now).is_ok());
        assert_eq!(group.offsets.len(), 1);
    }
}
