//! A classic group's membership (Kafka's JoinGroup / SyncGroup protocol)
//! on its coordinator, as a plain state machine: time is passed in, and
//! answers to parked requests go to an outbox that the caller (`classic.rs`)
//! delivers, so that the rebalance protocol is tested without a broker.
//!
//! The model is Kafka's `ClassicGroup`. A rebalance (PreparingRebalance)
//! holds every JoinGroup until each known member has rejoined or the
//! rebalance timeout passes (members that did not rejoin are removed,
//! static ones kept); the first rebalance of an empty group also waits the
//! initial rebalance delay. Completing it starts a new generation
//! (CompletingRebalance): the leader gets every member's metadata and
//! answers with the assignments in its SyncGroup, which ends the rebalance
//! (Stable) and answers every member's SyncGroup with its own assignment.
//! Assignors run in the clients; the coordinator only stores bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;

use super::classic::{JoinIn, JoinMember, JoinOut, SyncIn, SyncOut, codes};
use crate::limits::{
    CLASSIC_ASSIGNMENT_BYTES_MAX, CLASSIC_GROUP_BYTES_MAX, CLASSIC_METADATA_BYTES_MAX, CLASSIC_PROTOCOLS_PER_MEMBER_MAX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClassicState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// Its coordinator stopped serving it: every request is refused.
    Dead,
}

impl ClassicState {
    /// Kafka's names, as DescribeGroups and ListGroups show them.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
            ClassicState::Dead => "Dead",
        }
    }
}

#[derive(Debug)]
pub(crate) struct ClassicMember {
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Protocol names and metadata, the member's preferred first.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// Removed if nothing is heard from it by then (unless we hold one of
    /// its requests: it is waiting for us, not gone).
    pub deadline: Instant,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
    join_reply: Option<oneshot::Sender<JoinOut>>,
    sync_reply: Option<oneshot::Sender<SyncOut>>,
}

impl ClassicMember {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    fn bytes(&self) -> usize {
        self.protocols.iter().map(|(name, m)| name.len() + m.len()).sum::<usize>() + self.assignment.len()
    }

    pub(crate) fn awaiting(&self) -> bool {
        self.join_reply.is_some() || self.sync_reply.is_some()
    }
}

/// Bounds from the broker's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassicConfig {
    pub session_timeout_ms_min: u64,
    pub session_timeout_ms_max: u64,
    pub initial_rebalance_delay_ms: u64,
    pub members_max: usize,
}

/// Answers and events for the caller to deliver and act on.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub joins: Vec<(oneshot::Sender<JoinOut>, JoinOut)>,
    pub syncs: Vec<(oneshot::Sender<SyncOut>, SyncOut)>,
    /// Members added (or renamed by a static rejoin): watch their sessions.
    pub joined: Vec<String>,
    /// A new generation: persist it before the joins are answered.
    pub generation_changed: bool,
    /// A phase with a deadline started (`phase_deadline`): time it.
    pub phase_started: bool,
}

#[derive(Debug)]
pub(crate) struct ClassicGroup {
    pub state: ClassicState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    /// group_instance_id -> member id of the static members.
    pub static_members: BTreeMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (KIP-394), and until
    /// when they may join with them (a session).
    pub pending: BTreeMap<String, Instant>,
    /// PreparingRebalance: when the join phase ends at the latest. After
    /// it, while members of the generation have not sent their SyncGroup
    /// (`unsynced`): when those that still have not are removed.
    pub phase_deadline: Option<Instant>,
    /// Members of the current generation whose SyncGroup has not come: a
    /// leader that never sends its own would hold the group in
    /// CompletingRebalance for good (Kafka's pending sync members).
    unsynced: BTreeSet<String>,
    /// During the first rebalance of an empty group: the join phase lasts
    /// at least the initial delay, a new member pushes it back by as much
    /// again, up to this instant (the rebalance timeout).
    initial_delay_limit: Option<Instant>,
    /// Numbers each rebalance's timer, so that a timer of an earlier one ends.
    pub phase_timer: u64,
    pub outbox: Outbox,
}

type Member = (String, Option<String>);

fn join_error(member_id: &str, error: i16) -> JoinOut {
    JoinOut {
        error,
        generation_id: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        skip_assignment: false,
        member_id: member_id.to_string(),
        members: Vec::new(),
    }
}

fn sync_error(error: i16) -> SyncOut {
    SyncOut { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
}

impl ClassicGroup {
    /// A group whose generations continue from `generation` (the group's
    /// epoch, which only grows, whichever protocol it served before).
    pub(crate) fn new(generation: i32) -> ClassicGroup {
        ClassicGroup {
            state: ClassicState::Empty,
            generation,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending: BTreeMap::new(),
            phase_deadline: None,
            unsynced: BTreeSet::new(),
            initial_delay_limit: None,
            phase_timer: 0,
            outbox: Outbox::default(),
        }
    }

    pub(crate) fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.outbox)
    }

    /// The longest session timeout of the members, in ms (for the group
    /// record: how long members may come back after a failover).
    pub(crate) fn session_timeout_ms_max(&self) -> u32 {
        let longest = self.members.values().map(|m| m.session_timeout).max().unwrap_or_default();
        u32::try_from(longest.as_millis()).unwrap_or(u32::MAX)
    }

    /// The chosen protocol's metadata of a member (DescribeGroups).
    pub(crate) fn metadata_of(&self, member: &ClassicMember) -> Bytes {
        self.protocol_name.as_deref().map(|p| member.metadata_for(p)).unwrap_or_default()
    }

    fn answer_join(&mut self, reply: oneshot::Sender<JoinOut>, out: JoinOut) {
        self.outbox.joins.push((reply, out));
    }

    /// Kafka's check of a request naming a member: a static member's
    /// instance id must belong to that member id (else the sender is an
    /// older incarnation: FENCED_INSTANCE_ID), and the member must exist.
    fn check_member(&self, member_id: &str, group_instance_id: Option<&str>) -> Result<(), i16> {
        if let Some(instance) = group_instance_id {
            match self.static_members.get(instance) {
                Some(owner) if owner != member_id => return Err(codes::FENCED_INSTANCE_ID),
                Some(_) => {}
                None => return Err(codes::UNKNOWN_MEMBER_ID),
            }
        }
        if self.members.contains_key(member_id) { Ok(()) } else { Err(codes::UNKNOWN_MEMBER_ID) }
    }

    /// Whether a member offering these protocols may be in the group: the
    /// same protocol type as the others, and one protocol they all support.
    fn supports(&self, member_id: &str, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        let others: Vec<&ClassicMember> =
            self.members.iter().filter(|(id, _)| id.as_str() != member_id).map(|(_, m)| m).collect();
        if others.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| others.iter().all(|m| m.protocols.iter().any(|(theirs, _)| theirs == name)))
    }

    fn bytes_total(&self) -> usize {
        self.members.values().map(ClassicMember::bytes).sum()
    }

    fn purge_pending(&mut self, now: Instant) {
        self.pending.retain(|_, until| *until > now);
    }

    /// A JoinGroup. Its answer goes to the outbox, now or when the join
    /// phase of the rebalance completes.
    pub(crate) fn join(
        &mut self,
        input: JoinIn,
        reply: oneshot::Sender<JoinOut>,
        now: Instant,
        config: &ClassicConfig,
        new_id: impl FnOnce() -> String,
    ) {
        self.purge_pending(now);
        if let Err(error) = self.check_join(&input, config) {
            self.answer_join(reply, join_error(&input.member_id, error));
            return;
        }
        if input.member_id.is_empty() {
            self.join_new(input, reply, now, config, new_id);
        } else {
            self.join_known(input, reply, now, config);
        }
    }

    fn check_join(&self, input: &JoinIn, config: &ClassicConfig) -> Result<(), i16> {
        if self.state == ClassicState::Dead {
            return Err(codes::COORDINATOR_NOT_AVAILABLE);
        }
        let session_ms = u64::try_from(input.session_timeout_ms).unwrap_or(0);
        if session_ms < config.session_timeout_ms_min || session_ms > config.session_timeout_ms_max {
            return Err(codes::INVALID_SESSION_TIMEOUT);
        }
        if input.protocol_type.is_empty() || input.protocols.is_empty() {
            return Err(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        let metadata_bytes: usize = input.protocols.iter().map(|(name, m)| name.len() + m.len()).sum();
        if input.protocols.len() > CLASSIC_PROTOCOLS_PER_MEMBER_MAX || metadata_bytes > CLASSIC_METADATA_BYTES_MAX {
            return Err(codes::INVALID_REQUEST);
        }
        // The member this join replaces or updates (a static member back
        // under a new id replaces its old self): not one of the others.
        let own_id = match (&input.group_instance_id, input.member_id.is_empty()) {
            (Some(instance), true) => self.static_members.get(instance).cloned().unwrap_or_default(),
            _ => input.member_id.clone(),
        };
        let held = self.members.get(&own_id).map_or(0, ClassicMember::bytes);
        if self.bytes_total() - held + metadata_bytes > CLASSIC_GROUP_BYTES_MAX {
            return Err(codes::GROUP_MAX_SIZE_REACHED);
        }
        if !self.supports(&own_id, &input.protocol_type, &input.protocols) {
            return Err(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        Ok(())
    }

    /// A join without a member id: a new member, or a static member
    /// coming back under a new id.
    fn join_new(
        &mut self,
        input: JoinIn,
        reply: oneshot::Sender<JoinOut>,
        now: Instant,
        config: &ClassicConfig,
        new_id: impl FnOnce() -> String,
    ) {
        let known_instance = input.group_instance_id.as_ref().and_then(|i| self.static_members.get(i)).cloned();
        if known_instance.is_none() && self.members.len() + self.pending.len() >= config.members_max {
            self.answer_join(reply, join_error("", codes::GROUP_MAX_SIZE_REACHED));
            return;
        }
        let member_id = new_id();
        if let Some(old_id) = known_instance {
            self.replace_static(old_id, member_id, input, reply, now);
        } else if input.group_instance_id.is_none() && input.require_known_member_id {
            // KIP-394: the id goes back first and the client joins again
            // with it, so that a join whose answer is lost leaves no
            // member behind that the group would wait for.
            self.pending.insert(member_id.clone(), now + session(&input));
            self.answer_join(reply, join_error(&member_id, codes::MEMBER_ID_REQUIRED));
        } else {
            self.add_member(member_id, input, reply, now, config);
        }
    }

    fn join_known(&mut self, input: JoinIn, reply: oneshot::Sender<JoinOut>, now: Instant, config: &ClassicConfig) {
        let member_id = input.member_id.clone();
        if self.pending.remove(&member_id).is_some() {
            self.add_member(member_id, input, reply, now, config);
            return;
        }
        if let Err(error) = self.check_member(&member_id, input.group_instance_id.as_deref()) {
            self.answer_join(reply, join_error(&member_id, error));
            return;
        }
        let unchanged = self.members[&member_id].protocols == input.protocols;
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        match self.state {
            ClassicState::PreparingRebalance => {
                self.update_member(&member_id, input, reply, now);
                self.try_complete_join(now);
            }
            // The same join again (its answer was lost, or a follower
            // rejoining with nothing new): the current generation.
            ClassicState::CompletingRebalance if unchanged => self.answer_current(&member_id, reply, false),
            ClassicState::Stable if unchanged && !is_leader => self.answer_current(&member_id, reply, false),
            ClassicState::CompletingRebalance | ClassicState::Stable => {
                self.update_member(&member_id, input, reply, now);
                self.prepare_rebalance(now, config);
            }
            ClassicState::Empty | ClassicState::Dead => {
                self.answer_join(reply, join_error(&member_id, codes::UNKNOWN_MEMBER_ID));
            }
        }
    }

    fn add_member(
        &mut self,
        member_id: String,
        input: JoinIn,
        reply: oneshot::Sender<JoinOut>,
        now: Instant,
        config: &ClassicConfig,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(input.protocol_type.clone());
        }
        if let Some(instance) = &input.group_instance_id {
            self.static_members.insert(instance.clone(), member_id.clone());
        }
        let member = ClassicMember {
            group_instance_id: input.group_instance_id.clone(),
            client_id: input.client_id.clone(),
            client_host: input.client_host.clone(),
            protocols: input.protocols.clone(),
            session_timeout: session(&input),
            rebalance_timeout: rebalance(&input),
            deadline: now + session(&input),
            assignment: Bytes::new(),
            join_reply: Some(reply),
            sync_reply: None,
        };
        // The first member to join leads, as in Kafka.
        if self.leader.is_none() {
            self.leader = Some(member_id.clone());
        }
        self.members.insert(member_id.clone(), member);
        self.outbox.joined.push(member_id);
        match self.state {
            ClassicState::PreparingRebalance => {
                if let Some(limit) = self.initial_delay_limit {
                    // One more member in the first rebalance: wait for
                    // others a while longer, as Kafka's delayed initial join.
                    let delay = Duration::from_millis(config.initial_rebalance_delay_ms);
                    self.phase_deadline = Some((now + delay).min(limit));
                }
                self.try_complete_join(now);
            }
            _ => self.prepare_rebalance(now, config),
        }
    }

    /// A static member rejoined under a new member id: it takes the old
    /// member's place, and whatever the old id sends from now on is
    /// fenced. No rebalance if the group is stable and its protocols did
    /// not change (KIP-345).
    fn replace_static(
        &mut self,
        old_id: String,
        new_id: String,
        input: JoinIn,
        reply: oneshot::Sender<JoinOut>,
        now: Instant,
    ) {
        let mut member = self.members.remove(&old_id).expect("static members are members");
        if let Some(old_reply) = member.join_reply.take() {
            self.answer_join(old_reply, join_error(&old_id, codes::FENCED_INSTANCE_ID));
        }
        if let Some(old_reply) = member.sync_reply.take() {
            self.outbox.syncs.push((old_reply, sync_error(codes::FENCED_INSTANCE_ID)));
        }
        let unchanged = member.protocols == input.protocols;
        member.protocols = input.protocols.clone();
        member.client_id = input.client_id.clone();
        member.client_host = input.client_host.clone();
        member.session_timeout = session(&input);
        member.rebalance_timeout = rebalance(&input);
        member.deadline = now + member.session_timeout;
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        if self.unsynced.remove(&old_id) {
            self.unsynced.insert(new_id.clone());
        }
        let instance = input.group_instance_id.clone().expect("a static member has an instance id");
        self.static_members.insert(instance, new_id.clone());
        self.members.insert(new_id.clone(), member);
        self.outbox.joined.push(new_id.clone());
        match self.state {
            ClassicState::Stable if unchanged => {
                // The leader need not assign again (KIP-814), but gets the
                // members so that it knows the group.
                let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                self.answer_current(&new_id, reply, is_leader);
            }
            ClassicState::PreparingRebalance => {
                self.members.get_mut(&new_id).expect("inserted").join_reply = Some(reply);
                self.try_complete_join(now);
            }
            // In CompletingRebalance the leader may already be assigning
            // to the old id, so the rebalance starts over.
            _ => {
                self.members.get_mut(&new_id).expect("inserted").join_reply = Some(reply);
                self.begin_rebalance(now, None);
            }
        }
    }

    fn update_member(&mut self, member_id: &str, input: JoinIn, reply: oneshot::Sender<JoinOut>, now: Instant) {
        let member = self.members.get_mut(member_id).expect("checked by the caller");
        member.protocols = input.protocols.clone();
        member.client_id = input.client_id.clone();
        member.client_host = input.client_host.clone();
        member.session_timeout = session(&input);
        member.rebalance_timeout = rebalance(&input);
        member.deadline = now + member.session_timeout;
        // A join sent again before the first was answered: the first
        // request's connection hears that a rebalance is on.
        let earlier = member.join_reply.replace(reply);
        if let Some(earlier) = earlier {
            self.answer_join(earlier, join_error(member_id, codes::REBALANCE_IN_PROGRESS));
        }
    }

    /// The answer for the current generation, without a rebalance.
    fn answer_current(&mut self, member_id: &str, reply: oneshot::Sender<JoinOut>, skip_assignment: bool) {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let out = self.join_answer(member_id, is_leader, skip_assignment);
        self.answer_join(reply, out);
    }

    fn join_answer(&self, member_id: &str, is_leader: bool, skip_assignment: bool) -> JoinOut {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if is_leader {
            self.members
                .iter()
                .map(|(id, m)| JoinMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinOut {
            error: codes::NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            skip_assignment,
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Starts the rebalance over (the caller could not write the
    /// generation that completed it).
    pub(crate) fn restart_rebalance(&mut self, now: Instant) {
        self.begin_rebalance(now, None);
    }

    /// Starts a rebalance from Empty, Stable or CompletingRebalance.
    fn prepare_rebalance(&mut self, now: Instant, config: &ClassicConfig) {
        let initial = (self.state == ClassicState::Empty)
            .then(|| Duration::from_millis(config.initial_rebalance_delay_ms))
            .filter(|delay| !delay.is_zero());
        self.begin_rebalance(now, initial);
    }

    fn begin_rebalance(&mut self, now: Instant, initial_delay: Option<Duration>) {
        if self.state == ClassicState::CompletingRebalance {
            // Syncs of the generation that ends get no assignment.
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(reply) = member.sync_reply.take() {
                    self.outbox.syncs.push((reply, sync_error(codes::REBALANCE_IN_PROGRESS)));
                }
            }
        }
        let rebalance_timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        self.state = ClassicState::PreparingRebalance;
        self.unsynced.clear();
        match initial_delay {
            Some(delay) => {
                self.initial_delay_limit = Some(now + rebalance_timeout);
                self.phase_deadline = Some(now + delay.min(rebalance_timeout));
            }
            None => {
                self.initial_delay_limit = None;
                self.phase_deadline = Some(now + rebalance_timeout);
            }
        }
        self.outbox.phase_started = true;
        self.try_complete_join(now);
    }

    /// Completes the join phase once every member has rejoined (and no
    /// member id handed out is still to join), except during the initial
    /// delay, which only its deadline ends.
    fn try_complete_join(&mut self, now: Instant) {
        let all_joined = self.members.values().all(|m| m.join_reply.is_some()) && self.pending.is_empty();
        if self.state == ClassicState::PreparingRebalance && self.initial_delay_limit.is_none() && all_joined {
            self.complete_join(now);
        }
    }

    /// The join phase's deadline passed (the caller's timer).
    pub(crate) fn on_phase_deadline(&mut self, now: Instant) {
        self.purge_pending(now);
        if self.phase_deadline.is_none_or(|d| d > now) {
            return;
        }
        if self.state == ClassicState::PreparingRebalance {
            self.complete_join(now);
            return;
        }
        // Members that took the generation's join answer but never synced
        // within the rebalance timeout are gone (one removal starts the
        // next rebalance, which forgets the rest of the set).
        self.phase_deadline = None;
        let unsynced = std::mem::take(&mut self.unsynced);
        for member_id in unsynced {
            self.remove_member(&member_id, now);
        }
    }

    /// Ends the join phase: members that did not rejoin leave (static ones
    /// stay, their sessions decide), a new generation starts, and every
    /// member waiting is answered; the leader with everyone's metadata.
    fn complete_join(&mut self, now: Instant) {
        self.initial_delay_limit = None;
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_reply.is_none() && m.group_instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        let joined: Vec<String> =
            self.members.iter().filter(|(_, m)| m.join_reply.is_some()).map(|(id, _)| id.clone()).collect();
        if joined.is_empty() && !self.members.is_empty() {
            // Only static members that have not rejoined: wait another
            // round; their sessions end the wait if they are gone.
            let rebalance_timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
            self.phase_deadline = Some(now + rebalance_timeout);
            self.outbox.phase_started = true;
            return;
        }
        self.phase_deadline = None;
        self.generation = self.generation.saturating_add(1);
        self.outbox.generation_changed = true;
        if self.members.is_empty() {
            self.state = ClassicState::Empty;
            self.protocol_type = None;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        self.protocol_name = Some(self.vote());
        let leader_rejoined = self.leader.as_ref().is_some_and(|l| joined.contains(l));
        if !leader_rejoined {
            self.leader = joined.first().cloned();
        }
        self.state = ClassicState::CompletingRebalance;
        let rebalance_timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
        self.phase_deadline = Some(now + rebalance_timeout);
        self.outbox.phase_started = true;
        self.unsynced = joined.iter().cloned().collect();
        for id in joined {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let out = self.join_answer(&id, is_leader, false);
            let member = self.members.get_mut(&id).expect("joined members are members");
            member.deadline = now + member.session_timeout;
            let reply = member.join_reply.take().expect("joined members wait");
            self.answer_join(reply, out);
        }
    }

    /// Kafka's vote: among the protocols every member supports, each
    /// member votes for the one it prefers most; most votes win (ties go
    /// to the name first in order, so the choice is deterministic).
    fn vote(&self) -> String {
        let first = self.members.values().next().expect("a vote needs members");
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| self.members.values().all(|m| m.protocols.iter().any(|(p, _)| p == *name)))
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((choice, _)) = member.protocols.iter().find(|(p, _)| candidates.contains(&p)) {
                *votes.entry(choice).or_default() += 1;
            }
        }
        let most = votes.values().copied().max().unwrap_or(0);
        votes.into_iter().find(|(_, n)| *n == most).map(|(name, _)| name.clone()).unwrap_or_default()
    }

    /// A SyncGroup: the leader's carries the assignments.
    pub(crate) fn sync(&mut self, input: SyncIn, reply: oneshot::Sender<SyncOut>, now: Instant) {
        match self.check_sync(&input) {
            Err(error) => self.outbox.syncs.push((reply, sync_error(error))),
            Ok(()) => self.sync_checked(input, reply, now),
        }
    }

    fn check_sync(&self, input: &SyncIn) -> Result<(), i16> {
        if self.state == ClassicState::Dead {
            return Err(codes::COORDINATOR_NOT_AVAILABLE);
        }
        self.check_member(&input.member_id, input.group_instance_id.as_deref())?;
        if input.generation_id != self.generation {
            return Err(codes::ILLEGAL_GENERATION);
        }
        let type_differs = input.protocol_type.as_ref().is_some_and(|t| self.protocol_type.as_ref() != Some(t));
        let name_differs = input.protocol_name.as_ref().is_some_and(|n| self.protocol_name.as_ref() != Some(n));
        if type_differs || name_differs {
            return Err(codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        let assigned: usize = input.assignments.iter().map(|(_, a)| a.len()).sum();
        if input.assignments.iter().any(|(_, a)| a.len() > CLASSIC_ASSIGNMENT_BYTES_MAX)
            || self.bytes_total() + assigned > CLASSIC_GROUP_BYTES_MAX
        {
            return Err(codes::INVALID_REQUEST);
        }
        Ok(())
    }

    fn sync_checked(&mut self, input: SyncIn, reply: oneshot::Sender<SyncOut>, now: Instant) {
        if matches!(self.state, ClassicState::CompletingRebalance | ClassicState::Stable) {
            self.unsynced.remove(&input.member_id);
            if self.unsynced.is_empty() {
                self.phase_deadline = None;
            }
        }
        match self.state {
            ClassicState::Empty | ClassicState::Dead => {
                self.outbox.syncs.push((reply, sync_error(codes::UNKNOWN_MEMBER_ID)));
            }
            ClassicState::PreparingRebalance => {
                self.outbox.syncs.push((reply, sync_error(codes::REBALANCE_IN_PROGRESS)));
            }
            ClassicState::Stable => {
                let out = self.sync_answer(&input.member_id);
                self.outbox.syncs.push((reply, out));
            }
            ClassicState::CompletingRebalance => {
                let member = self.members.get_mut(&input.member_id).expect("checked");
                member.deadline = now + member.session_timeout;
                if let Some(earlier) = member.sync_reply.replace(reply) {
                    self.outbox.syncs.push((earlier, sync_error(codes::REBALANCE_IN_PROGRESS)));
                }
                if self.leader.as_deref() == Some(input.member_id.as_str()) {
                    self.assign(input.assignments);
                }
            }
        }
    }

    /// The leader's assignments end the rebalance: every member waiting
    /// gets its own (members the leader left out get none).
    fn assign(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut assignments: BTreeMap<String, Bytes> = assignments.into_iter().collect();
        for (id, member) in self.members.iter_mut() {
            member.assignment = assignments.remove(id).unwrap_or_default();
        }
        self.state = ClassicState::Stable;
        let waiting: Vec<String> =
            self.members.iter().filter(|(_, m)| m.sync_reply.is_some()).map(|(id, _)| id.clone()).collect();
        for id in waiting {
            let out = self.sync_answer(&id);
            let reply = self.members.get_mut(&id).and_then(|m| m.sync_reply.take()).expect("waiting");
            self.outbox.syncs.push((reply, out));
        }
    }

    fn sync_answer(&self, member_id: &str) -> SyncOut {
        SyncOut {
            error: codes::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self.members.get(member_id).map(|m| m.assignment.clone()).unwrap_or_default(),
        }
    }

    /// A Heartbeat: keeps the session and tells of a rebalance.
    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> i16 {
        if self.state == ClassicState::Dead {
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        if let Err(error) = self.check_member(member_id, group_instance_id) {
            return error;
        }
        if generation_id != self.generation {
            return codes::ILLEGAL_GENERATION;
        }
        let member = self.members.get_mut(member_id).expect("checked");
        member.deadline = now + member.session_timeout;
        match self.state {
            ClassicState::PreparingRebalance => codes::REBALANCE_IN_PROGRESS,
            // A member may heartbeat between its join answer and its sync.
            ClassicState::CompletingRebalance | ClassicState::Stable => codes::NONE,
            ClassicState::Empty | ClassicState::Dead => codes::UNKNOWN_MEMBER_ID,
        }
    }

    /// A LeaveGroup of members (by member id, or by instance id for
    /// static members): an error code per member.
    pub(crate) fn leave(&mut self, members: &[Member], now: Instant) -> Vec<i16> {
        members.iter().map(|(member_id, instance)| self.leave_one(member_id, instance.as_deref(), now)).collect()
    }

    fn leave_one(&mut self, member_id: &str, group_instance_id: Option<&str>, now: Instant) -> i16 {
        if self.state == ClassicState::Dead {
            return codes::COORDINATOR_NOT_AVAILABLE;
        }
        let leaving = match group_instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return codes::UNKNOWN_MEMBER_ID,
                Some(owner) if !member_id.is_empty() && owner != member_id => return codes::FENCED_INSTANCE_ID,
                Some(owner) => owner.clone(),
            },
            None if self.pending.remove(member_id).is_some() => return codes::NONE,
            None if self.members.contains_key(member_id) => member_id.to_string(),
            None => return codes::UNKNOWN_MEMBER_ID,
        };
        self.remove_member(&leaving, now);
        codes::NONE
    }

    /// Removes a member whose session ended by `now`; true if it was.
    /// A member whose join or sync we hold is alive: it waits for us.
    pub(crate) fn expire(&mut self, member_id: &str, now: Instant) -> bool {
        let Some(member) = self.members.get_mut(member_id) else { return false };
        if member.awaiting() {
            member.deadline = member.deadline.max(now + member.session_timeout);
            return false;
        }
        if member.deadline > now {
            return false;
        }
        self.remove_member(member_id, now);
        true
    }

    fn remove_member(&mut self, member_id: &str, now: Instant) {
        let Some(mut member) = self.members.remove(member_id) else { return };
        self.unsynced.remove(member_id);
        if let Some(instance) = &member.group_instance_id
            && self.static_members.get(instance).map(String::as_str) == Some(member_id)
        {
            self.static_members.remove(instance);
        }
        if let Some(reply) = member.join_reply.take() {
            self.answer_join(reply, join_error(member_id, codes::UNKNOWN_MEMBER_ID));
        }
        if let Some(reply) = member.sync_reply.take() {
            self.outbox.syncs.push((reply, sync_error(codes::UNKNOWN_MEMBER_ID)));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        match self.state {
            ClassicState::Stable | ClassicState::CompletingRebalance => self.begin_rebalance(now, None),
            ClassicState::PreparingRebalance => self.try_complete_join(now),
            ClassicState::Empty | ClassicState::Dead => {}
        }
    }

    /// Whether a commit from this member may be applied (Kafka's
    /// validateOffsetCommit). `Ok` for a commit from outside the group
    /// (no member id, no instance id, generation < 0) only while the
    /// group has no members.
    pub(crate) fn check_commit(
        &self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), i16> {
        if self.state == ClassicState::Dead {
            return Err(codes::COORDINATOR_NOT_AVAILABLE);
        }
        if member_id.is_empty() && group_instance_id.is_none() && generation_id < 0 {
            return if self.members.is_empty() { Ok(()) } else { Err(codes::UNKNOWN_MEMBER_ID) };
        }
        self.check_member(member_id, group_instance_id)?;
        if generation_id != self.generation {
            return Err(codes::ILLEGAL_GENERATION);
        }
        if self.state == ClassicState::CompletingRebalance {
            // The member knows the new generation but not yet its
            // partitions: what it commits may not be its own.
            return Err(codes::REBALANCE_IN_PROGRESS);
        }
        Ok(())
    }

    /// Stops serving the group (its coordinator resigned or stops): every
    /// request held is answered with `error`.
    pub(crate) fn resign(&mut self, error: i16) {
        self.state = ClassicState::Dead;
        self.phase_deadline = None;
        self.unsynced.clear();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let member = self.members.get_mut(&id).expect("listed");
            let (join, sync) = (member.join_reply.take(), member.sync_reply.take());
            if let Some(reply) = join {
                self.answer_join(reply, join_error(&id, error));
            }
            if let Some(reply) = sync {
                self.outbox.syncs.push((reply, sync_error(error)));
            }
        }
    }
}

fn session(input: &JoinIn) -> Duration {
    Duration::from_millis(u64::try_from(input.session_timeout_ms).unwrap_or(0))
}

/// JoinGroup v0 has no rebalance timeout (the lead passes -1 or 0 then):
/// the session timeout stands in, as in Kafka.
fn rebalance(input: &JoinIn) -> Duration {
    match u64::try_from(input.rebalance_timeout_ms) {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => session(input),
    }
}

#[cfg(test)]
mod tests {
    use futures::channel::oneshot::Receiver;

    use super::*;

    const SESSION_MS: i32 = 1_000;
    const REBALANCE_MS: i32 = 2_000;

    fn config(initial_rebalance_delay_ms: u64) -> ClassicConfig {
        ClassicConfig {
            session_timeout_ms_min: 100,
            session_timeout_ms_max: 10_000,
            initial_rebalance_delay_ms,
            members_max: 100,
        }
    }

    fn join_in(member_id: &str, instance: Option<&str>, protocols: &[(&str, &str)]) -> JoinIn {
        JoinIn {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: instance.map(str::to_string),
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|(n, m)| (n.to_string(), Bytes::from(m.to_string()))).collect(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            require_known_member_id: false,
            reason: None,
        }
    }

    /// The test's side of the caller: delivers the outbox's answers.
    fn deliver(group: &mut ClassicGroup) -> Outbox {
        let mut outbox = group.take_outbox();
        for (reply, out) in outbox.joins.drain(..) {
            let _ = reply.send(out);
        }
        for (reply, out) in outbox.syncs.drain(..) {
            let _ = reply.send(out);
        }
        outbox
    }

    fn join(
        group: &mut ClassicGroup,
        input: JoinIn,
        id: &str,
        now: Instant,
        config: &ClassicConfig,
    ) -> Receiver<JoinOut> {
        let (reply, wait) = oneshot::channel();
        group.join(input, reply, now, config, || id.to_string());
        deliver(group);
        wait
    }

    fn sync(group: &mut ClassicGroup, out: &JoinOut, assignments: &[(&str, &str)], now: Instant) -> Receiver<SyncOut> {
        let (reply, wait) = oneshot::channel();
        let input = SyncIn {
            group_id: "g".into(),
            member_id: out.member_id.clone(),
            group_instance_id: None,
            generation_id: out.generation_id,
            protocol_type: Some("consumer".into()),
            protocol_name: out.protocol_name.clone(),
            assignments: assignments.iter().map(|(id, a)| (id.to_string(), Bytes::from(a.to_string()))).collect(),
        };
        group.sync(input, reply, now);
        deliver(group);
        wait
    }

    fn answered<T>(wait: &mut Receiver<T>) -> T {
        wait.try_recv().expect("not cancelled").expect("answered")
    }

    fn waiting<T: std::fmt::Debug + PartialEq>(wait: &mut Receiver<T>) {
        assert_eq!(wait.try_recv().expect("not cancelled"), None, "still held");
    }

    /// A stable group of members `ids` (each joining alone in turn would
    /// rebalance each time; they join within the initial delay instead).
    fn stable(ids: &[&str], now: Instant) -> (ClassicGroup, Vec<JoinOut>) {
        let config = config(100);
        let mut group = ClassicGroup::new(0);
        let mut waits: Vec<_> =
            ids.iter().map(|id| join(&mut group, join_in("", None, &[("range", id)]), id, now, &config)).collect();
        group.on_phase_deadline(now + Duration::from_millis(100));
        deliver(&mut group);
        let outs: Vec<JoinOut> = waits.iter_mut().map(answered).collect();
        let assignments: Vec<(&str, &str)> = ids.iter().map(|id| (*id, *id)).collect();
        let mut syncs: Vec<_> = outs
            .iter()
            .map(|out| {
                let mine = if out.member_id == out.leader { assignments.as_slice() } else { &[] };
                sync(&mut group, out, mine, now)
            })
            .collect();
        for wait in &mut syncs {
            assert_eq!(answered(wait).error, codes::NONE);
        }
        assert_eq!(group.state, ClassicState::Stable);
        (group, outs)
    }

    #[test]
    fn three_members_join_the_leader_gets_all_metadata_and_sync_hands_out_assignments() {
        let now = Instant::now();
        let config = config(100);
        let mut group = ClassicGroup::new(7);
        let mut a = join(&mut group, join_in("", None, &[("range", "ma"), ("roundrobin", "ra")]), "a", now, &config);
        let later = now + Duration::from_millis(50);
        let mut b = join(&mut group, join_in("", None, &[("roundrobin", "rb"), ("range", "mb")]), "b", later, &config);
        let mut c = join(&mut group, join_in("", None, &[("roundrobin", "rc")]), "c", later, &config);
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        waiting(&mut a);
        // The initial delay restarts with each new member.
        group.on_phase_deadline(now + Duration::from_millis(100));
        waiting(&mut a);
        group.on_phase_deadline(later + Duration::from_millis(100));
        assert!(deliver(&mut group).generation_changed);
        let (a, b, c) = (answered(&mut a), answered(&mut b), answered(&mut c));
        for out in [&a, &b, &c] {
            assert_eq!(out.error, codes::NONE);
            assert_eq!(out.generation_id, 8, "generations continue from the group's epoch");
            assert_eq!(out.leader, "a", "the first to join leads");
            assert_eq!(out.protocol_name.as_deref(), Some("roundrobin"), "the only protocol all support");
        }
        let metadata: Vec<(&str, &[u8])> =
            a.members.iter().map(|m| (m.member_id.as_str(), m.metadata.as_ref())).collect();
        assert_eq!(metadata, [("a", &b"ra"[..]), ("b", b"rb"), ("c", b"rc")]);
        assert!(b.members.is_empty() && c.members.is_empty(), "followers get no metadata");
        let mut b_sync = sync(&mut group, &b, &[], now);
        let mut c_sync = sync(&mut group, &c, &[], now);
        waiting(&mut b_sync);
        assert_eq!(group.state, ClassicState::CompletingRebalance);
        let mut a_sync = sync(&mut group, &a, &[("a", "A"), ("b", "B"), ("c", "C")], now);
        assert_eq!(group.state, ClassicState::Stable);
        for (wait, expected) in [(&mut a_sync, "A"), (&mut b_sync, "B"), (&mut c_sync, "C")] {
            let out = answered(wait);
            assert_eq!(out.error, codes::NONE);
            assert_eq!(out.assignment, Bytes::from(expected));
            assert_eq!(out.protocol_name.as_deref(), Some("roundrobin"));
        }
        // A late follower's sync in Stable gets its assignment at once.
        assert_eq!(answered(&mut sync(&mut group, &b, &[], now)).assignment, Bytes::from("B"));
    }

    #[test]
    fn a_leader_that_never_syncs_is_removed_after_the_rebalance_timeout() {
        let now = Instant::now();
        let config = config(100);
        let mut group = ClassicGroup::new(0);
        let mut a = join(&mut group, join_in("", None, &[("range", "a")]), "a", now, &config);
        let mut b = join(&mut group, join_in("", None, &[("range", "b")]), "b", now, &config);
        group.on_phase_deadline(now + Duration::from_millis(100));
        deliver(&mut group);
        let (a, b) = (answered(&mut a), answered(&mut b));
        assert_eq!(a.leader, "a");
        let mut b_sync = sync(&mut group, &b, &[], now);
        // a keeps heartbeating but never sends its assignments.
        let timeout = now + Duration::from_millis(REBALANCE_MS as u64 + 100);
        assert_eq!(group.heartbeat("a", None, a.generation_id, now + Duration::from_millis(900)), codes::NONE);
        group.on_phase_deadline(now + Duration::from_millis(REBALANCE_MS as u64));
        deliver(&mut group);
        waiting(&mut b_sync);
        group.on_phase_deadline(timeout);
        deliver(&mut group);
        assert_eq!(answered(&mut b_sync).error, codes::REBALANCE_IN_PROGRESS, "b hears to join again");
        assert_eq!(group.heartbeat("a", None, a.generation_id, timeout), codes::UNKNOWN_MEMBER_ID);
        let mut b = join(&mut group, join_in("b", None, &[("range", "b")]), "-", timeout, &config);
        let b = answered(&mut b);
        assert_eq!((b.error, b.leader.as_str(), b.generation_id), (codes::NONE, "b", a.generation_id + 1));
        // Once every member synced there is nothing left to time.
        assert_eq!(answered(&mut sync(&mut group, &b, &[("b", "B")], timeout)).assignment, Bytes::from("B"));
        assert_eq!(group.phase_deadline, None);
    }

    #[test]
    fn a_member_that_stops_heartbeating_is_removed_and_a_rebalance_follows() {
        let now = Instant::now();
        let (mut group, outs) = stable(&["a", "b"], now);
        let generation = outs[0].generation_id;
        let half = now + Duration::from_millis(600);
        assert_eq!(group.heartbeat("b", None, generation, half), codes::NONE);
        let end = now + Duration::from_millis(SESSION_MS as u64);
        assert!(group.expire("a", end), "a sent nothing for a session");
        assert!(!group.expire("b", end), "b's heartbeat kept it");
        deliver(&mut group);
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        assert_eq!(group.heartbeat("b", None, generation, end), codes::REBALANCE_IN_PROGRESS);
        assert_eq!(group.heartbeat("a", None, generation, end), codes::UNKNOWN_MEMBER_ID);
        let mut b = join(&mut group, join_in("b", None, &[("range", "b")]), "-", end, &config(100));
        let b = answered(&mut b);
        assert_eq!((b.error, b.generation_id, b.leader.as_str()), (codes::NONE, generation + 1, "b"));
        assert_eq!(b.members.len(), 1);
    }

    #[test]
    fn members_that_do_not_rejoin_in_the_rebalance_timeout_are_removed() {
        let now = Instant::now();
        let config = config(100);
        let (mut group, outs) = stable(&["a", "b"], now);
        let mut c = join(&mut group, join_in("", None, &[("range", "c")]), "c", now, &config);
        let mut a = join(&mut group, join_in("a", None, &[("range", "a")]), "-", now, &config);
        waiting(&mut c);
        group.on_phase_deadline(now + Duration::from_millis(REBALANCE_MS as u64));
        deliver(&mut group);
        let (a, c) = (answered(&mut a), answered(&mut c));
        assert_eq!(a.generation_id, outs[0].generation_id + 1);
        assert_eq!(a.leader, "a", "the leader rejoined and keeps leading");
        let members: Vec<&str> = a.members.iter().map(|m| m.member_id.as_str()).collect();
        assert_eq!(members, ["a", "c"], "b did not rejoin");
        assert_eq!(c.error, codes::NONE);
    }

    #[test]
    fn a_static_member_rejoining_takes_its_place_without_a_rebalance_and_fences_the_old_id() {
        let now = Instant::now();
        let config = config(0);
        let mut group = ClassicGroup::new(0);
        let mut first = join(&mut group, join_in("", Some("i1"), &[("range", "m")]), "old", now, &config);
        let first = answered(&mut first);
        assert_eq!((first.error, first.generation_id), (codes::NONE, 1));
        assert_eq!(answered(&mut sync(&mut group, &first, &[("old", "A")], now)).assignment, Bytes::from("A"));
        // A restart: same instance id, no member id, same protocols.
        let mut again = join(&mut group, join_in("", Some("i1"), &[("range", "m")]), "new", now, &config);
        let again = answered(&mut again);
        assert_eq!(again.error, codes::NONE);
        assert_eq!(again.member_id, "new");
        assert_eq!(again.generation_id, 1, "no rebalance");
        assert_eq!(again.leader, "new", "it led, and leads on");
        assert!(again.skip_assignment, "the leader need not assign again");
        assert_eq!(group.state, ClassicState::Stable);
        assert_eq!(answered(&mut sync(&mut group, &again, &[], now)).assignment, Bytes::from("A"), "kept");
        assert_eq!(group.heartbeat("old", Some("i1"), 1, now), codes::FENCED_INSTANCE_ID);
        assert_eq!(group.heartbeat("old", None, 1, now), codes::UNKNOWN_MEMBER_ID);
        assert_eq!(group.check_commit("old", Some("i1"), 1), Err(codes::FENCED_INSTANCE_ID));
        assert_eq!(group.leave(&[("old".into(), Some("i1".into()))], now), [codes::FENCED_INSTANCE_ID]);
        assert_eq!(group.heartbeat("new", Some("i1"), 1, now), codes::NONE);
        // Back with other protocols: that is a rebalance.
        let _changed = join(&mut group, join_in("", Some("i1"), &[("roundrobin", "m")]), "newer", now, &config);
        assert_ne!(group.state, ClassicState::Stable);
    }

    #[test]
    fn a_join_without_member_id_gets_one_with_member_id_required_then_joins_with_it() {
        let now = Instant::now();
        let config = config(0);
        let mut group = ClassicGroup::new(0);
        let required = JoinIn { require_known_member_id: true, ..join_in("", None, &[("range", "m")]) };
        let mut first = join(&mut group, required.clone(), "given", now, &config);
        let first = answered(&mut first);
        assert_eq!((first.error, first.member_id.as_str()), (codes::MEMBER_ID_REQUIRED, "given"));
        assert!(group.members.is_empty(), "nobody to wait for if the client never comes back");
        assert_eq!(group.state, ClassicState::Empty);
        let mut second = join(&mut group, JoinIn { member_id: "given".into(), ..required.clone() }, "-", now, &config);
        let second = answered(&mut second);
        assert_eq!((second.error, second.generation_id, second.leader.as_str()), (codes::NONE, 1, "given"));
        // An id handed out and never used lapses after a session.
        let mut third = join(&mut group, required, "lapsed", now, &config);
        assert_eq!(answered(&mut third).error, codes::MEMBER_ID_REQUIRED);
        let late = now + Duration::from_millis(SESSION_MS as u64);
        let mut fourth =
            join(&mut group, JoinIn { member_id: "lapsed".into(), ..join_in("", None, &[]) }, "-", late, &config);
        assert_eq!(answered(&mut fourth).error, codes::INCONSISTENT_GROUP_PROTOCOL, "no protocols");
        let mut fifth = join(&mut group, join_in("lapsed", None, &[("range", "m")]), "-", late, &config);
        assert_eq!(answered(&mut fifth).error, codes::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn leave_group_starts_a_rebalance_and_the_last_leave_empties_the_group() {
        let now = Instant::now();
        let (mut group, outs) = stable(&["a", "b"], now);
        let generation = outs[0].generation_id;
        assert_eq!(
            group.leave(&[("b".into(), None), ("zz".into(), None)], now),
            [codes::NONE, codes::UNKNOWN_MEMBER_ID]
        );
        deliver(&mut group);
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        assert_eq!(group.heartbeat("a", None, generation, now), codes::REBALANCE_IN_PROGRESS);
        let mut a = join(&mut group, join_in("a", None, &[("range", "a")]), "-", now, &config(100));
        let a = answered(&mut a);
        assert_eq!((a.generation_id, a.members.len()), (generation + 1, 1));
        assert_eq!(group.leave(&[("a".into(), None)], now), [codes::NONE]);
        let outbox = deliver(&mut group);
        assert!(outbox.generation_changed, "the empty group is a generation too, as in Kafka");
        assert_eq!(group.state, ClassicState::Empty);
        assert_eq!(group.generation, generation + 2);
        assert_eq!(group.check_commit("", None, -1), Ok(()), "outside commits are allowed again");
    }

    #[test]
    fn commits_are_checked_against_member_and_generation() {
        let now = Instant::now();
        let (mut group, outs) = stable(&["a", "b"], now);
        let generation = outs[0].generation_id;
        assert_eq!(group.check_commit("a", None, generation), Ok(()));
        assert_eq!(group.check_commit("a", None, generation - 1), Err(codes::ILLEGAL_GENERATION));
        assert_eq!(group.check_commit("x", None, generation), Err(codes::UNKNOWN_MEMBER_ID));
        assert_eq!(group.check_commit("", None, -1), Err(codes::UNKNOWN_MEMBER_ID), "not from outside");
        // Commits stay allowed while the group prepares a rebalance...
        let _c = join(&mut group, join_in("", None, &[("range", "c")]), "c", now, &config(100));
        assert_eq!(group.check_commit("a", None, generation), Ok(()));
        let mut a = join(&mut group, join_in("a", None, &[("range", "a")]), "-", now, &config(100));
        let _b = join(&mut group, join_in("b", None, &[("range", "b")]), "-", now, &config(100));
        let a = answered(&mut a);
        // ...but not between the join answer and the assignment.
        assert_eq!(group.state, ClassicState::CompletingRebalance);
        assert_eq!(group.check_commit("a", None, a.generation_id), Err(codes::REBALANCE_IN_PROGRESS));
        assert_eq!(group.check_commit("a", None, generation), Err(codes::ILLEGAL_GENERATION), "a stale generation");
    }

    #[test]
    fn sync_refuses_stale_generations_unknown_members_and_other_protocols() {
        let now = Instant::now();
        let (mut group, outs) = stable(&["a", "b"], now);
        let a = &outs[0];
        let stale = JoinOut { generation_id: a.generation_id - 1, ..a.clone() };
        assert_eq!(answered(&mut sync(&mut group, &stale, &[], now)).error, codes::ILLEGAL_GENERATION);
        let unknown = JoinOut { member_id: "x".into(), ..a.clone() };
        assert_eq!(answered(&mut sync(&mut group, &unknown, &[], now)).error, codes::UNKNOWN_MEMBER_ID);
        let other = JoinOut { protocol_name: Some("roundrobin".into()), ..a.clone() };
        assert_eq!(answered(&mut sync(&mut group, &other, &[], now)).error, codes::INCONSISTENT_GROUP_PROTOCOL);
        let _c = join(&mut group, join_in("", None, &[("range", "c")]), "c", now, &config(100));
        assert_eq!(answered(&mut sync(&mut group, a, &[], now)).error, codes::REBALANCE_IN_PROGRESS);
    }

    #[test]
    fn a_rebalance_answers_held_syncs_and_a_resigning_coordinator_answers_held_joins() {
        let now = Instant::now();
        let config = config(100);
        let mut group = ClassicGroup::new(0);
        let mut a = join(&mut group, join_in("", None, &[("range", "a")]), "a", now, &config);
        let _b = join(&mut group, join_in("", None, &[("range", "b")]), "b", now, &config);
        group.on_phase_deadline(now + Duration::from_millis(100));
        deliver(&mut group);
        let a = answered(&mut a);
        let mut b_sync = sync(&mut group, &JoinOut { member_id: "b".into(), ..a.clone() }, &[], now);
        waiting(&mut b_sync);
        // A new member before the leader assigned: b's sync is answered.
        let mut c = join(&mut group, join_in("", None, &[("range", "c")]), "c", now, &config);
        assert_eq!(answered(&mut b_sync).error, codes::REBALANCE_IN_PROGRESS);
        waiting(&mut c);
        group.resign(codes::NOT_COORDINATOR);
        deliver(&mut group);
        assert_eq!(answered(&mut c).error, codes::NOT_COORDINATOR);
        assert_eq!(group.heartbeat("a", None, a.generation_id, now), codes::COORDINATOR_NOT_AVAILABLE);
    }

    #[test]
    fn joins_that_break_the_group_s_protocol_or_size_are_refused() {
        let now = Instant::now();
        let mut config = config(0);
        config.members_max = 2;
        let mut group = ClassicGroup::new(0);
        let _a = join(&mut group, join_in("", None, &[("range", "a")]), "a", now, &config);
        let other_type = JoinIn { protocol_type: "connect".into(), ..join_in("", None, &[("range", "b")]) };
        assert_eq!(
            answered(&mut join(&mut group, other_type, "b", now, &config)).error,
            codes::INCONSISTENT_GROUP_PROTOCOL
        );
        let no_common = join_in("", None, &[("roundrobin", "b")]);
        assert_eq!(
            answered(&mut join(&mut group, no_common, "b", now, &config)).error,
            codes::INCONSISTENT_GROUP_PROTOCOL
        );
        let short = JoinIn { session_timeout_ms: 10, ..join_in("", None, &[("range", "b")]) };
        assert_eq!(answered(&mut join(&mut group, short, "b", now, &config)).error, codes::INVALID_SESSION_TIMEOUT);
        let _b = join(&mut group, join_in("", None, &[("range", "b")]), "b", now, &config);
        let third = join_in("", None, &[("range", "c")]);
        assert_eq!(answered(&mut join(&mut group, third, "c", now, &config)).error, codes::GROUP_MAX_SIZE_REACHED);
        let big = join_in("", None, &[("range", &"x".repeat(CLASSIC_METADATA_BYTES_MAX + 1))]);
        assert_eq!(answered(&mut join(&mut group, big, "d", now, &config)).error, codes::INVALID_REQUEST);
    }
}
