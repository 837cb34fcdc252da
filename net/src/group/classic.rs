//! Kafka's classic group protocol (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, client-side assignors, static membership KIP-345) in the
//! same coordinator and offsets store as the native (KIP-848) groups: a
//! group id is one kind or the other while it has members, and an empty
//! group may change kind. The interface is protocol-neutral (plain Rust,
//! Kafka error codes as `i16`): the Kafka front-end maps its messages onto
//! `join`, `sync`, `heartbeat`, `leave`, `commit`, `describe` and `list`.
//!
//! Each call goes to the group's coordinator shard (`ShardOp::Group`, as
//! the native APIs) and runs the state machine (`classic_state.rs`). A
//! completed join phase (a new generation) is written to the group's
//! partition as the group record before anyone hears of it, so that a
//! generation never goes backwards after a failover; membership itself
//! is soft state (after a failover members get UNKNOWN_MEMBER_ID and join
//! again). Held joins and syncs are answered when the coordinator stops
//! serving the group (NOT_COORDINATOR) or the shard stops
//! (COORDINATOR_NOT_AVAILABLE), never dropped.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use spate_flatbuf::proto::ErrorCode;
use spate_flatbuf::validate_group_id;

use super::classic_state::{ClassicConfig, ClassicGroup, ClassicState, Outbox};
use super::record::{GroupMeta, GroupRecord};
use super::{
    Assignor, Group, GroupOp, GroupView, MemberView, Tp, append, coordinator, new_member_id, serving, written,
};
use crate::limits::{GROUPS_PER_SHARD_MAX, MEMBERS_PER_GROUP_MAX};
use crate::shard::{Outcome, Shard, ShardOp};

/// Kafka's error codes, as the classic protocol answers them.
pub(crate) mod codes {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    pub const INVALID_REQUEST: i16 = 42;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const FENCED_MEMBER_EPOCH: i16 = 110;
    pub const STALE_MEMBER_EPOCH: i16 = 113;
}

/// The group record's assignor name for a classic group, so that a
/// coordinator that loads it knows the group's kind.
const CLASSIC_RECORD_TAG: &str = "classic";

/// The protocol type of Kafka's consumers (the only one whose bytes the
/// coordinator reads, for `spate group describe`).
pub(crate) const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

#[derive(Debug, Clone)]
pub(crate) struct JoinIn {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout_ms: i32,
    /// -1 (JoinGroup v0): the session timeout.
    pub rebalance_timeout_ms: i32,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+ (KIP-394): a join without a member id gets one with
    /// MEMBER_ID_REQUIRED and joins again with it.
    pub require_known_member_id: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinOut {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    /// Every member's metadata, for the leader only.
    pub members: Vec<JoinMember>,
}

#[derive(Debug, Clone)]
pub(crate) struct SyncIn {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment per member id (others send none).
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncOut {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// A member as Kafka's DescribeGroups shows it.
#[derive(Debug, Clone)]
pub(crate) struct DescribedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as Kafka's DescribeGroups shows it, classic or native.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub error: i16,
    pub state: String,
    pub protocol_type: String,
    pub protocol_name: String,
    pub members: Vec<DescribedMember>,
}

/// A group as Kafka's ListGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub group_id: String,
    /// "consumer", or "" for a group with only offsets (Kafka's simple group).
    pub protocol_type: String,
    pub state: String,
    /// "classic" or "consumer" (KIP-848), Kafka's group types.
    pub group_type: &'static str,
}

/// The classic protocol's work for a group's coordinator.
#[derive(Debug)]
pub(crate) enum ClassicOp {
    Join {
        input: JoinIn,
        reply: oneshot::Sender<JoinOut>,
    },
    Sync {
        input: SyncIn,
        reply: oneshot::Sender<SyncOut>,
    },
    Heartbeat {
        group_id: String,
        member_id: String,
        group_instance_id: Option<String>,
        generation_id: i32,
        reply: oneshot::Sender<i16>,
    },
    Leave {
        group_id: String,
        members: Vec<(String, Option<String>)>,
        reply: oneshot::Sender<(i16, Vec<i16>)>,
    },
    Describe {
        group_id: String,
        reply: oneshot::Sender<Described>,
    },
    List {
        reply: oneshot::Sender<Vec<Listed>>,
    },
}

/// A native outcome's error as Kafka's code, for a coordinator's answers:
/// not leading (or not hosting the partition) sends the client to look up
/// the coordinator again, loading makes it retry, a stop to another one.
pub(crate) fn kafka_code(error: ErrorCode) -> i16 {
    match error {
        ErrorCode::None => codes::NONE,
        ErrorCode::NotReady => codes::COORDINATOR_LOAD_IN_PROGRESS,
        ErrorCode::NotLeaderOrFollower => codes::NOT_COORDINATOR,
        ErrorCode::BrokerShuttingDown | ErrorCode::StorageError => codes::COORDINATOR_NOT_AVAILABLE,
        // A group write not replicated in time: Kafka's coordinator maps
        // it to COORDINATOR_NOT_AVAILABLE too (the client retries).
        ErrorCode::RequestTimedOut => codes::COORDINATOR_NOT_AVAILABLE,
        ErrorCode::UnknownTopicOrPartition => codes::UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::InvalidRequest => codes::INVALID_REQUEST,
        ErrorCode::MessageTooLarge => codes::INVALID_COMMIT_OFFSET_SIZE,
        ErrorCode::UnknownMemberId => codes::UNKNOWN_MEMBER_ID,
        ErrorCode::FencedMemberEpoch => codes::FENCED_MEMBER_EPOCH,
        ErrorCode::NonEmptyGroup => codes::NON_EMPTY_GROUP,
        ErrorCode::GroupIdNotFound => codes::GROUP_ID_NOT_FOUND,
        ErrorCode::InvalidGroupId => codes::INVALID_GROUP_ID,
        _ => codes::UNKNOWN_SERVER_ERROR,
    }
}

/// Kafka's code for a coordinator that cannot take a group request now.
fn unavailable(outcome: &Outcome) -> i16 {
    match kafka_code(outcome.error) {
        code @ (codes::COORDINATOR_LOAD_IN_PROGRESS | codes::NOT_COORDINATOR) => code,
        _ => codes::COORDINATOR_NOT_AVAILABLE,
    }
}

fn join_refused(input: &JoinIn, error: i16) -> JoinOut {
    JoinOut {
        error,
        generation_id: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        skip_assignment: false,
        member_id: input.member_id.clone(),
        members: Vec::new(),
    }
}

fn sync_refused(error: i16) -> SyncOut {
    SyncOut { error, protocol_type: None, protocol_name: None, assignment: Bytes::new() }
}

/// Sends a classic op to the group's coordinator; Kafka's code if the
/// group id is invalid or there is no coordinator yet (no
/// `__consumer_offsets`).
fn route(shard: &Rc<Shard>, group_id: &str, op: ClassicOp) -> Result<(), i16> {
    validate_group_id(group_id).map_err(|_| codes::INVALID_GROUP_ID)?;
    let owner = coordinator(shard, group_id).ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
    shard.submit(owner, ShardOp::Group(GroupOp::Classic(op)));
    Ok(())
}

/// JoinGroup. Answered when the join phase completes (or at once).
pub(crate) async fn join(shard: &Rc<Shard>, input: JoinIn) -> JoinOut {
    let (reply, wait) = oneshot::channel();
    let refused = |error| join_refused(&input, error);
    if let Err(error) = route(shard, &input.group_id.clone(), ClassicOp::Join { input: input.clone(), reply }) {
        return refused(error);
    }
    wait.await.unwrap_or_else(|_| refused(codes::COORDINATOR_NOT_AVAILABLE))
}

/// SyncGroup. A follower's is answered once the leader's arrives.
pub(crate) async fn sync(shard: &Rc<Shard>, input: SyncIn) -> SyncOut {
    let (reply, wait) = oneshot::channel();
    if let Err(error) = route(shard, &input.group_id.clone(), ClassicOp::Sync { input, reply }) {
        return sync_refused(error);
    }
    wait.await.unwrap_or_else(|_| sync_refused(codes::COORDINATOR_NOT_AVAILABLE))
}

/// Heartbeat: NONE, REBALANCE_IN_PROGRESS (join again) or an error.
pub(crate) async fn heartbeat(
    shard: &Rc<Shard>,
    group_id: &str,
    member_id: &str,
    group_instance_id: Option<&str>,
    generation_id: i32,
) -> i16 {
    let (reply, wait) = oneshot::channel();
    let op = ClassicOp::Heartbeat {
        group_id: group_id.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: group_instance_id.map(str::to_string),
        generation_id,
        reply,
    };
    if let Err(error) = route(shard, group_id, op) {
        return error;
    }
    wait.await.unwrap_or(codes::COORDINATOR_NOT_AVAILABLE)
}

/// LeaveGroup: (the request's error, one error per member). LeaveGroup
/// v0-v2 name one member by member id and have only the request's error:
/// answer with the member's own code when the request's is NONE.
pub(crate) async fn leave(
    shard: &Rc<Shard>,
    group_id: &str,
    members: Vec<(String, Option<String>)>,
) -> (i16, Vec<i16>) {
    let count = members.len();
    let (reply, wait) = oneshot::channel();
    if let Err(error) = route(shard, group_id, ClassicOp::Leave { group_id: group_id.to_string(), members, reply }) {
        return (error, vec![error; count]);
    }
    wait.await.unwrap_or_else(|_| (codes::COORDINATOR_NOT_AVAILABLE, vec![codes::COORDINATOR_NOT_AVAILABLE; count]))
}

/// DescribeGroups for one group, classic or native.
pub(crate) async fn describe(shard: &Rc<Shard>, group_id: &str) -> Described {
    let refused = |error| Described {
        error,
        state: "Dead".into(),
        protocol_type: String::new(),
        protocol_name: String::new(),
        members: Vec::new(),
    };
    let (reply, wait) = oneshot::channel();
    if let Err(error) = route(shard, group_id, ClassicOp::Describe { group_id: group_id.to_string(), reply }) {
        return refused(error);
    }
    wait.await.unwrap_or_else(|_| refused(codes::COORDINATOR_NOT_AVAILABLE))
}

/// ListGroups: the groups every shard of this broker coordinates.
pub(crate) async fn list(shard: &Rc<Shard>) -> Vec<Listed> {
    let waits: Vec<_> = (0..shard.shared.shard_count)
        .map(|owner| {
            let (reply, wait) = oneshot::channel();
            shard.submit(owner, ShardOp::Group(GroupOp::Classic(ClassicOp::List { reply })));
            wait
        })
        .collect();
    let mut all = Vec::new();
    for wait in waits {
        all.extend(wait.await.unwrap_or_default());
    }
    all.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    all
}

/// OffsetCommit from a Kafka client: a classic member (generation id,
/// member id, instance id), a KIP-848 member (member epoch, member id) or
/// outside any group (generation -1, empty member id: only while the group
/// has no members). The same code for every partition, since a commit is
/// checked and written whole; UNKNOWN_TOPIC_OR_PARTITION if any partition
/// is unknown (filter those out first for per-partition answers).
pub(crate) async fn commit(
    shard: &Rc<Shard>,
    group_id: &str,
    member_id: &str,
    group_instance_id: Option<&str>,
    generation_id_or_member_epoch: i32,
    offsets: Vec<(Tp, i64)>,
) -> Vec<(Tp, i16)> {
    let partitions: Vec<Tp> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
    let (reply, wait) = oneshot::channel();
    let op = GroupOp::Commit {
        group_id: group_id.to_string(),
        member_id: member_id.to_string(),
        group_instance_id: group_instance_id.map(str::to_string),
        member_epoch: generation_id_or_member_epoch,
        offsets,
        reply: super::CommitReply::Kafka(reply),
    };
    let code = match validate_group_id(group_id) {
        Err(_) => codes::INVALID_GROUP_ID,
        Ok(()) => match coordinator(shard, group_id) {
            None => codes::COORDINATOR_NOT_AVAILABLE,
            Some(owner) => {
                shard.submit(owner, ShardOp::Group(op));
                wait.await.unwrap_or(codes::COORDINATOR_NOT_AVAILABLE)
            }
        },
    };
    partitions.into_iter().map(|tp| (tp, code)).collect()
}

/// The commit check for both kinds of group: a classic group with members
/// checks generation and member as Kafka's classic coordinator; otherwise
/// the native rules (member epoch; outside commits only while empty).
/// Refusals carry Kafka's code and the native outcome.
pub(crate) fn check_commit(
    group: &Group,
    member_id: &str,
    group_instance_id: Option<&str>,
    epoch: i32,
    now: Instant,
) -> Result<(), (i16, Outcome)> {
    if let Some(classic) = group.classic.as_deref().filter(|c| !c.members.is_empty()) {
        return classic.check_commit(member_id, group_instance_id, epoch).map_err(|code| {
            let native = match code {
                codes::UNKNOWN_MEMBER_ID => ErrorCode::UnknownMemberId,
                codes::REBALANCE_IN_PROGRESS => ErrorCode::NotReady,
                _ => ErrorCode::FencedMemberEpoch,
            };
            (code, Outcome::err(native, format!("commit refused by the classic group (Kafka error {code})")))
        });
    }
    if member_id.is_empty() && group_instance_id.is_some() {
        let message = format!("no static member {group_instance_id:?}");
        return Err((codes::UNKNOWN_MEMBER_ID, Outcome::err(ErrorCode::UnknownMemberId, message)));
    }
    group.check_commit(member_id, epoch, now).map_err(|(error, message)| {
        let code = match error {
            // Kafka answers an outside commit to a group with members so.
            ErrorCode::NonEmptyGroup => codes::UNKNOWN_MEMBER_ID,
            // A KIP-848 member's commit at an older epoch.
            ErrorCode::FencedMemberEpoch => codes::STALE_MEMBER_EPOCH,
            other => kafka_code(other),
        };
        (code, Outcome::err(error, message))
    })
}

/// Whether a native (KIP-848) heartbeat may use this group: not while it
/// is a classic group with members (Kafka: GROUP_ID_NOT_FOUND). An empty
/// classic group becomes a native one.
pub(crate) fn claim_native(group: &mut Group) -> Result<(), (ErrorCode, String)> {
    match group.classic.as_deref() {
        Some(classic) if !classic.members.is_empty() => Err((
            ErrorCode::GroupIdNotFound,
            format!("the group is a classic (JoinGroup) group with {} members", classic.members.len()),
        )),
        Some(_) => {
            group.classic = None;
            Ok(())
        }
        None => Ok(()),
    }
}

fn config(shard: &Shard) -> ClassicConfig {
    let config = &shard.shared.config;
    ClassicConfig {
        session_timeout_ms_min: config.group_session_timeout_ms_min,
        session_timeout_ms_max: config.group_session_timeout_ms_max,
        initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        members_max: MEMBERS_PER_GROUP_MAX,
    }
}

/// Runs a classic op on its coordinator (`GroupOp::Classic`).
pub(crate) fn execute(shard: &Rc<Shard>, op: ClassicOp) {
    let catalog = shard.shared.catalog.load_full();
    let refusal = |group_id: &str| -> Option<i16> {
        if shard.stopping.get() {
            return Some(codes::COORDINATOR_NOT_AVAILABLE);
        }
        serving(shard, &catalog, group_id).err().map(|outcome| unavailable(&outcome))
    };
    match op {
        ClassicOp::Join { input, reply } => match refusal(&input.group_id) {
            Some(error) => drop(reply.send(join_refused(&input, error))),
            None => execute_join(shard, input, reply),
        },
        ClassicOp::Sync { input, reply } => match refusal(&input.group_id) {
            Some(error) => drop(reply.send(sync_refused(error))),
            None => {
                let group_id = input.group_id.clone();
                let ran = with_group(shard, &group_id, reply, |classic, reply, now| classic.sync(input, reply, now));
                if let Err(reply) = ran {
                    let _ = reply.send(sync_refused(codes::UNKNOWN_MEMBER_ID));
                }
            }
        },
        ClassicOp::Heartbeat { group_id, member_id, group_instance_id, generation_id, reply } => {
            let code = refusal(&group_id).map(heartbeat_refusal).unwrap_or_else(|| {
                let mut code = codes::UNKNOWN_MEMBER_ID;
                let _ = with_group(shard, &group_id, (), |classic, (), now| {
                    code = classic.heartbeat(&member_id, group_instance_id.as_deref(), generation_id, now);
                });
                code
            });
            let _ = reply.send(code);
        }
        ClassicOp::Leave { group_id, members, reply } => {
            let answer = match refusal(&group_id) {
                Some(error) => (error, vec![error; members.len()]),
                None => {
                    let mut answer = (codes::UNKNOWN_MEMBER_ID, vec![codes::UNKNOWN_MEMBER_ID; members.len()]);
                    let _ = with_group(shard, &group_id, (), |classic, (), now| {
                        answer = (codes::NONE, classic.leave(&members, now));
                    });
                    answer
                }
            };
            let _ = reply.send(answer);
        }
        ClassicOp::Describe { group_id, reply } => {
            let described = match refusal(&group_id) {
                Some(error) => Described {
                    error,
                    state: "Dead".into(),
                    protocol_type: String::new(),
                    protocol_name: String::new(),
                    members: Vec::new(),
                },
                None => describe_here(shard, &group_id),
            };
            let _ = reply.send(described);
        }
        ClassicOp::List { reply } => {
            let groups = shard.groups.groups.borrow();
            let listed = groups
                .iter()
                .filter(|(id, _)| serving(shard, &catalog, id).is_ok())
                .map(|(id, group)| listed(id, group))
                .collect();
            let _ = reply.send(listed);
        }
    }
}

/// A heartbeat that arrives while the coordinator loads its partition is
/// answered NONE, as Kafka does ("respond blindly"): the member cannot be
/// checked yet, and clients treat an unexpected heartbeat error as fatal.
fn heartbeat_refusal(code: i16) -> i16 {
    if code == codes::COORDINATOR_LOAD_IN_PROGRESS { codes::NONE } else { code }
}

/// Runs `f` on the group's classic state, if it is a classic group, then
/// delivers what it did. Gives `arg` back if the group is not one.
fn with_group<A>(
    shard: &Rc<Shard>,
    group_id: &str,
    arg: A,
    f: impl FnOnce(&mut ClassicGroup, A, Instant),
) -> Result<(), A> {
    let effects = {
        let mut groups = shard.groups.groups.borrow_mut();
        let Some(group) = groups.get_mut(group_id).filter(|g| g.classic.is_some()) else { return Err(arg) };
        f(group.classic.as_deref_mut().expect("filtered"), arg, Instant::now());
        deliver(shard, group_id, group)
    };
    effects.start(shard, group_id);
    Ok(())
}

fn execute_join(shard: &Rc<Shard>, input: JoinIn, reply: oneshot::Sender<JoinOut>) {
    let group_id = input.group_id.clone();
    let effects = {
        let mut groups = shard.groups.groups.borrow_mut();
        if !groups.contains_key(&group_id) && groups.len() >= GROUPS_PER_SHARD_MAX {
            let _ = reply.send(join_refused(&input, codes::INVALID_REQUEST));
            return;
        }
        let group = groups.entry(group_id.clone()).or_insert_with(|| Group::new(Assignor::Sticky));
        if !group.members.is_empty() {
            // A KIP-848 group with members: Kafka refuses a classic join so.
            let _ = reply.send(join_refused(&input, codes::INCONSISTENT_GROUP_PROTOCOL));
            return;
        }
        let epoch = group.epoch;
        let classic = group.classic.get_or_insert_with(|| Box::new(ClassicGroup::new(epoch)));
        if let Some(reason) = &input.reason {
            tracing::debug!(group = %group_id, member = %input.member_id, "classic join: {reason}");
        }
        let client_id = input.client_id.clone();
        classic.join(input, reply, Instant::now(), &config(shard), || new_member_id(&client_id));
        deliver(shard, &group_id, group)
    };
    effects.start(shard, &group_id);
}

type HeldJoins = Vec<(oneshot::Sender<JoinOut>, JoinOut)>;

/// A new generation's record on its way, and the joins that wait for it.
struct GenerationWrite {
    write: Result<super::Write, Outcome>,
    generation: i32,
    joins: HeldJoins,
}

/// What is left to do once the groups are no longer borrowed (glommio
/// runs a spawned task at once, and the tasks borrow the groups).
struct Effects {
    watch: Vec<String>,
    phase_timer: Option<u64>,
    write: Option<GenerationWrite>,
}

/// Acts on what the state machine did: answers now what needs no write,
/// appends a new generation's record (its joins wait for it).
fn deliver(shard: &Rc<Shard>, group_id: &str, group: &mut Group) -> Effects {
    let mut effects = Effects { watch: Vec::new(), phase_timer: None, write: None };
    let Some(classic) = group.classic.as_deref_mut() else { return effects };
    let Outbox { joins, syncs, joined, generation_changed, phase_started } = classic.take_outbox();
    // One epoch per group, whichever protocol: never behind a generation.
    group.epoch = group.epoch.max(classic.generation);
    effects.watch = joined;
    if phase_started {
        classic.phase_timer += 1;
        effects.phase_timer = Some(classic.phase_timer);
    }
    for (reply, out) in syncs {
        let _ = reply.send(out);
    }
    if !generation_changed {
        for (reply, out) in joins {
            let _ = reply.send(out);
        }
        return effects;
    }
    let generation = classic.generation;
    let record = GroupRecord::Group {
        group: group_id.to_string(),
        meta: Some(GroupMeta {
            epoch: generation,
            assignor: CLASSIC_RECORD_TAG.to_string(),
            members: u32::try_from(classic.members.len()).unwrap_or(u32::MAX),
            session_timeout_ms_max: classic.session_timeout_ms_max(),
        }),
    };
    // Appended now, so that records keep the order of the changes.
    effects.write = Some(GenerationWrite { write: append(shard, group_id, &[record]), generation, joins });
    effects
}

impl Effects {
    fn start(self, shard: &Rc<Shard>, group_id: &str) {
        for member_id in self.watch {
            watch_member(shard.clone(), group_id.to_string(), member_id);
        }
        if let Some(timer) = self.phase_timer {
            watch_phase(shard.clone(), group_id.to_string(), timer);
        }
        if let Some(write) = self.write {
            answer_when_written(shard.clone(), group_id.to_string(), write);
        }
    }
}

/// The joins of a new generation hear of it once it is on disk and on the
/// in-sync replicas; if it cannot be written, they hear why and the
/// rebalance starts over (nobody may use a generation a failover could
/// forget).
fn answer_when_written(shard: Rc<Shard>, group_id: String, write: GenerationWrite) {
    let GenerationWrite { write, generation, joins } = write;
    glommio::spawn_local(async move {
        let stored = written(write).await;
        if stored.error == ErrorCode::None {
            for (reply, out) in joins {
                let _ = reply.send(out);
            }
            return;
        }
        tracing::warn!(group = %group_id, generation, "generation not written: {:?}", stored.message);
        let error = unavailable(&stored);
        for (reply, out) in joins {
            let failed = JoinOut { error, generation_id: -1, members: Vec::new(), ..out };
            let _ = reply.send(failed);
        }
        let _ = with_group(&shard, &group_id, (), |classic, (), now| {
            if classic.generation == generation && classic.state == ClassicState::CompletingRebalance {
                classic.restart_rebalance(now);
            }
        });
    })
    .detach();
}

/// Removes a member whose session ends without a heartbeat, join or sync:
/// one timer per member, re-armed to its latest deadline.
fn watch_member(shard: Rc<Shard>, group_id: String, member_id: String) {
    glommio::spawn_local(async move {
        loop {
            let deadline = {
                let groups = shard.groups.groups.borrow();
                let member =
                    groups.get(&group_id).and_then(|g| g.classic.as_deref()).and_then(|c| c.members.get(&member_id));
                match member {
                    Some(member) => member.deadline,
                    None => return, // left, replaced, or the group gone
                }
            };
            let now = Instant::now();
            if deadline > now {
                glommio::timer::Timer::new(deadline - now).await;
                continue;
            }
            let mut expired = false;
            let _ = with_group(&shard, &group_id, (), |classic, (), now| expired = classic.expire(&member_id, now));
            if expired {
                tracing::info!(group = %group_id, member = %member_id, "classic member removed: session timed out");
                return;
            }
        }
    })
    .detach();
}

/// Ends a rebalance's join phase at its deadline (the rebalance timeout,
/// or the initial delay), or after it removes members that did not sync
/// within the rebalance timeout; unless a later phase took over (`timer`).
fn watch_phase(shard: Rc<Shard>, group_id: String, timer: u64) {
    glommio::spawn_local(async move {
        loop {
            let deadline = {
                let groups = shard.groups.groups.borrow();
                let classic = groups.get(&group_id).and_then(|g| g.classic.as_deref());
                match classic.filter(|c| c.phase_timer == timer).and_then(|c| c.phase_deadline) {
                    Some(deadline) => deadline,
                    None => return,
                }
            };
            let now = Instant::now();
            if deadline > now {
                glommio::timer::Timer::new(deadline - now).await;
                continue;
            }
            let _ = with_group(&shard, &group_id, (), |classic, (), now| classic.on_phase_deadline(now));
        }
    })
    .detach();
}

/// The group's partition stopped being led here: held requests hear
/// NOT_COORDINATOR and find the new coordinator.
pub(crate) fn resign(group: &mut Group) {
    answer_all(group, codes::NOT_COORDINATOR);
}

/// The shard stops: every held join and sync is answered.
pub(crate) fn stop(shard: &Shard) {
    for group in shard.groups.groups.borrow_mut().values_mut() {
        answer_all(group, codes::COORDINATOR_NOT_AVAILABLE);
    }
}

fn answer_all(group: &mut Group, error: i16) {
    let Some(classic) = group.classic.as_deref_mut() else { return };
    classic.resign(error);
    let outbox = classic.take_outbox();
    for (reply, out) in outbox.joins {
        let _ = reply.send(out);
    }
    for (reply, out) in outbox.syncs {
        let _ = reply.send(out);
    }
}

fn listed(group_id: &str, group: &Group) -> Listed {
    let (protocol_type, group_type) = match group.classic.as_deref() {
        Some(classic) => (classic.protocol_type.clone().unwrap_or_else(|| CONSUMER_PROTOCOL_TYPE.into()), "classic"),
        None if group.epoch == 0 && group.members.is_empty() => (String::new(), "classic"),
        None => (CONSUMER_PROTOCOL_TYPE.to_string(), "consumer"),
    };
    Listed { group_id: group_id.to_string(), protocol_type, state: group.state().to_string(), group_type }
}

fn describe_here(shard: &Shard, group_id: &str) -> Described {
    let groups = shard.groups.groups.borrow();
    let Some(group) = groups.get(group_id) else {
        return Described {
            error: codes::GROUP_ID_NOT_FOUND,
            state: "Dead".into(),
            protocol_type: String::new(),
            protocol_name: String::new(),
            members: Vec::new(),
        };
    };
    let Some(classic) = group.classic.as_deref() else {
        // A native group seen through Kafka's DescribeGroups: no
        // client-side metadata or assignment bytes to show.
        return Described {
            error: codes::NONE,
            state: group.state().to_string(),
            protocol_type: if group.members.is_empty() { String::new() } else { CONSUMER_PROTOCOL_TYPE.into() },
            protocol_name: group.assignor.name().to_string(),
            members: group
                .members
                .iter()
                .map(|(id, m)| DescribedMember {
                    member_id: id.clone(),
                    group_instance_id: None,
                    client_id: m.client_id.clone(),
                    client_host: String::new(),
                    metadata: Bytes::new(),
                    assignment: Bytes::new(),
                })
                .collect(),
        };
    };
    Described {
        error: codes::NONE,
        state: classic.state.name().to_string(),
        protocol_type: classic.protocol_type.clone().unwrap_or_default(),
        protocol_name: classic.protocol_name.clone().unwrap_or_default(),
        members: classic
            .members
            .iter()
            .map(|(id, m)| DescribedMember {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: classic.metadata_of(m),
                assignment: m.assignment.clone(),
            })
            .collect(),
    }
}

/// A classic group as the native DescribeGroups shows it:
/// the generation as the epoch, the protocol as the assignor, each
/// member's subscription and assignment read from Kafka's consumer
/// protocol bytes where they are that (else none).
pub(crate) fn native_view(group: &Group) -> Option<GroupView> {
    let classic = group.classic.as_deref()?;
    let consumer = classic.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL_TYPE);
    let members = classic
        .members
        .iter()
        .map(|(id, m)| {
            let subscribed = if consumer { consumer_subscription(&classic.metadata_of(m)) } else { Vec::new() };
            let assigned = if consumer { consumer_assignment(&m.assignment) } else { BTreeSet::new() };
            MemberView {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                epoch: classic.generation,
                subscribed,
                target: assigned.clone(),
                assigned,
            }
        })
        .collect();
    Some(GroupView {
        classic: true,
        state: classic.state.name(),
        epoch: classic.generation,
        assignor: static_protocol_name(classic.protocol_name.as_deref()),
        members,
        offsets: group.offsets.clone(),
    })
}

/// The native view names the assignor with a static string: the
/// protocols Kafka's clients ship, else "classic".
fn static_protocol_name(name: Option<&str>) -> &'static str {
    match name {
        Some("range") => "range",
        Some("roundrobin") => "roundrobin",
        Some("sticky") => "sticky",
        Some("cooperative-sticky") => "cooperative-sticky",
        _ => CLASSIC_RECORD_TAG,
    }
}

/// Reads Kafka's consumer protocol (ConsumerProtocolSubscription and
/// ConsumerProtocolAssignment, all versions: a version, then fields in
/// order, later versions only appending). Bounded by the bytes present;
/// anything malformed reads as nothing.
struct ProtocolReader<'a>(&'a [u8]);

impl ProtocolReader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take::<2>().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take::<4>().map(i32::from_be_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        let bytes = self.0.get(..len)?;
        self.0 = &self.0[len..];
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// An array's length, refused if it cannot fit in what is left (each
    /// entry takes at least `entry_bytes_min`).
    fn count(&mut self, entry_bytes_min: usize) -> Option<usize> {
        let count = usize::try_from(self.i32()?).ok()?;
        (count.checked_mul(entry_bytes_min)? <= self.0.len()).then_some(count)
    }
}

fn consumer_subscription(metadata: &[u8]) -> Vec<String> {
    let read = |reader: &mut ProtocolReader| -> Option<Vec<String>> {
        reader.i16()?;
        let count = reader.count(2)?;
        (0..count).map(|_| reader.string()).collect()
    };
    read(&mut ProtocolReader(metadata)).unwrap_or_default()
}

fn consumer_assignment(assignment: &[u8]) -> BTreeSet<Tp> {
    let read = |reader: &mut ProtocolReader| -> Option<BTreeSet<Tp>> {
        reader.i16()?;
        let mut out = BTreeSet::new();
        for _ in 0..reader.count(6)? {
            let topic = reader.string()?;
            for _ in 0..reader.count(4)? {
                out.insert((topic.clone(), reader.i32()?));
            }
        }
        Some(out)
    };
    read(&mut ProtocolReader(assignment)).unwrap_or_default()
}

/// What the group record of a loaded group says about its kind.
pub(crate) fn loaded_kind(group: &mut Group, meta: &GroupMeta) {
    if meta.assignor == CLASSIC_RECORD_TAG {
        group.classic.get_or_insert_with(|| Box::new(ClassicGroup::new(meta.epoch))).generation = meta.epoch;
    } else {
        group.classic = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use futures::executor::block_on;
    use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, group_partition};

    use super::*;
    use crate::BrokerConfig;
    use crate::admin::{AdminOp, CreateSpec};
    use crate::server::BrokerHandle;

    /// Kafka's ConsumerProtocolAssignment v0: topics with partitions.
    fn assignment(topics: &[(&str, &[i32])]) -> Bytes {
        let mut out = 0i16.to_be_bytes().to_vec();
        out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
            for partition in *partitions {
                out.extend_from_slice(&partition.to_be_bytes());
            }
        }
        out.extend_from_slice(&(-1i32).to_be_bytes()); // no user data
        Bytes::from(out)
    }

    /// Kafka's ConsumerProtocolSubscription v0: topics, no user data.
    fn subscription(topics: &[&str]) -> Bytes {
        let mut out = 0i16.to_be_bytes().to_vec();
        out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for topic in topics {
            out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
        }
        out.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(out)
    }

    #[test]
    fn consumer_protocol_bytes_read_back_and_malformed_ones_read_as_nothing() {
        assert_eq!(consumer_subscription(&subscription(&["t", "u"])), ["t", "u"]);
        let read = consumer_assignment(&assignment(&[("t", &[0, 2]), ("u", &[1])]));
        assert_eq!(read, BTreeSet::from([("t".into(), 0), ("t".into(), 2), ("u".into(), 1)]));
        // A count far beyond the bytes present allocates nothing.
        let mut huge = 0i16.to_be_bytes().to_vec();
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(consumer_assignment(&huge).is_empty());
        assert!(consumer_subscription(&huge).is_empty());
        assert!(consumer_assignment(&[0, 0, 0]).is_empty());
    }

    #[test]
    fn coordinator_refusals_map_to_kafka_codes_clients_retry_on() {
        let outcome = |error| Outcome::err(error, "");
        assert_eq!(unavailable(&outcome(ErrorCode::NotReady)), codes::COORDINATOR_LOAD_IN_PROGRESS);
        assert_eq!(unavailable(&outcome(ErrorCode::NotLeaderOrFollower)), codes::NOT_COORDINATOR);
        assert_eq!(unavailable(&outcome(ErrorCode::BrokerShuttingDown)), codes::COORDINATOR_NOT_AVAILABLE);
        assert_eq!(unavailable(&outcome(ErrorCode::RequestTimedOut)), codes::COORDINATOR_NOT_AVAILABLE);
        assert_eq!(heartbeat_refusal(codes::COORDINATOR_LOAD_IN_PROGRESS), codes::NONE);
        assert_eq!(heartbeat_refusal(codes::NOT_COORDINATOR), codes::NOT_COORDINATOR);
    }

    #[test]
    fn one_commit_check_serves_both_kinds_of_group() {
        let now = Instant::now();
        let mut native = Group::new(Assignor::Range);
        assert!(check_commit(&native, "", None, -1, now).is_ok(), "outside commits to an empty group");
        assert_eq!(check_commit(&native, "m", None, 3, now).unwrap_err().0, codes::UNKNOWN_MEMBER_ID);
        assert_eq!(check_commit(&native, "", Some("i"), -1, now).unwrap_err().0, codes::UNKNOWN_MEMBER_ID);
        // A classic group with a member: generation and member decide.
        let mut classic = ClassicGroup::new(4);
        let (reply, _wait) = oneshot::channel();
        let config = ClassicConfig {
            session_timeout_ms_min: 1,
            session_timeout_ms_max: 10_000,
            initial_rebalance_delay_ms: 0,
            members_max: 10,
        };
        let input = JoinIn {
            group_id: "g".into(),
            member_id: String::new(),
            group_instance_id: None,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 1_000,
            client_id: String::new(),
            client_host: String::new(),
            require_known_member_id: false,
            reason: None,
        };
        classic.join(input, reply, now, &config, || "a".into());
        assert_eq!(classic.generation, 5);
        native.classic = Some(Box::new(classic));
        assert_eq!(check_commit(&native, "a", None, 4, now).unwrap_err().0, codes::ILLEGAL_GENERATION);
        assert_eq!(check_commit(&native, "", None, -1, now).unwrap_err().0, codes::UNKNOWN_MEMBER_ID);
        assert_eq!(native.member_count(), 1);
        assert!(native.may_have_members(now), "a classic member keeps deletes out");
        // A KIP-848 heartbeat is refused while classic members are there.
        assert_eq!(claim_native(&mut native).unwrap_err().0, ErrorCode::GroupIdNotFound);
        native.classic.as_deref_mut().unwrap().leave(&[("a".into(), None)], now);
        assert!(claim_native(&mut native).is_ok(), "an empty group changes kind");
        assert!(native.classic.is_none());
    }

    // ---- through a broker's coordinator shard ----

    fn broker(dir: &std::path::Path) -> BrokerHandle {
        crate::start(BrokerConfig {
            data_dir: dir.to_path_buf(),
            port: 0,
            shards: 1,
            pin_cores: false,
            metrics_listen: String::new(),
            io_memory_bytes: 4 << 20,
            tail_cache_bytes: 8 << 20,
            group_offsets_partitions: 1,
            // Long enough that two joins sent back to back meet in the
            // first rebalance even on a loaded machine.
            group_initial_rebalance_delay_ms: 500,
            ..BrokerConfig::default()
        })
        .unwrap()
    }

    fn send(broker: &BrokerHandle, group_id: &str, op: GroupOp) {
        let shared = &broker.shared;
        let catalog = shared.catalog.load();
        let topic = catalog.topics.get(CONSUMER_OFFSETS_TOPIC).expect("created before start returns");
        let owner = shared.owner(CONSUMER_OFFSETS_TOPIC, group_partition(group_id, topic.partitions));
        shared.mailboxes[owner].unbounded_send(ShardOp::Group(op)).unwrap();
    }

    fn join_input(member_id: &str, require_known_member_id: bool) -> JoinIn {
        JoinIn {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), subscription(&["t"]))],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            require_known_member_id,
            reason: None,
        }
    }

    fn join_on(broker: &BrokerHandle, input: JoinIn) -> oneshot::Receiver<JoinOut> {
        let (reply, wait) = oneshot::channel();
        send(broker, "g", GroupOp::Classic(ClassicOp::Join { input, reply }));
        wait
    }

    fn sync_on(broker: &BrokerHandle, out: &JoinOut, assignments: Vec<(String, Bytes)>) -> oneshot::Receiver<SyncOut> {
        let (reply, wait) = oneshot::channel();
        let input = SyncIn {
            group_id: "g".into(),
            member_id: out.member_id.clone(),
            group_instance_id: None,
            generation_id: out.generation_id,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments,
        };
        send(broker, "g", GroupOp::Classic(ClassicOp::Sync { input, reply }));
        wait
    }

    fn commit_on(broker: &BrokerHandle, member_id: &str, generation_id: i32, offset: i64) -> i16 {
        let (reply, wait) = oneshot::channel();
        let op = GroupOp::Commit {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            member_epoch: generation_id,
            offsets: vec![(("t".into(), 0), offset)],
            reply: super::super::CommitReply::Kafka(reply),
        };
        send(broker, "g", op);
        block_on(wait).unwrap()
    }

    fn create_topic(broker: &BrokerHandle) {
        let (reply, wait) = oneshot::channel();
        let spec = CreateSpec { name: "t".into(), partitions: 2, replication_factor: 1, configs: BTreeMap::new() };
        let op = AdminOp::Create { topics: vec![Ok(spec)], validate_only: false, reply };
        broker.shared.mailboxes[crate::admin::ADMIN_SHARD].unbounded_send(ShardOp::Admin(op)).unwrap();
        let results = block_on(wait).unwrap();
        assert_eq!(results[0].1.error, ErrorCode::None, "{:?}", results[0].1.message);
    }

    /// The classic protocol end to end on a real coordinator shard: the
    /// KIP-394 join, a two-member rebalance, sync, commits checked by
    /// generation, the native describe of the group, a held join answered
    /// when the shard stops, and after a restart a generation that went
    /// on from the one written (members gone: soft state) and the offset.
    #[test]
    fn a_classic_group_on_its_coordinator_shard_survives_a_restart_with_its_generation_and_offsets() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/net-unit/classic-coordinator");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = broker(&dir);
        create_topic(&first);
        let given = block_on(join_on(&first, join_input("", true))).unwrap();
        assert_eq!(given.error, codes::MEMBER_ID_REQUIRED);
        let a = join_on(&first, join_input(&given.member_id, true));
        let b = join_on(&first, join_input("", false));
        let (a, b) = (block_on(a).unwrap(), block_on(b).unwrap());
        assert_eq!((a.error, b.error), (codes::NONE, codes::NONE));
        assert_eq!(a.generation_id, 1);
        assert_eq!((a.leader.as_str(), a.members.len(), b.members.len()), (a.member_id.as_str(), 2, 0));
        let b_sync = sync_on(&first, &b, Vec::new());
        let assignments =
            vec![(a.member_id.clone(), assignment(&[("t", &[0])])), (b.member_id.clone(), assignment(&[("t", &[1])]))];
        let a_sync = block_on(sync_on(&first, &a, assignments)).unwrap();
        let b_sync = block_on(b_sync).unwrap();
        assert_eq!(a_sync.assignment, assignment(&[("t", &[0])]));
        assert_eq!(b_sync.assignment, assignment(&[("t", &[1])]));

        assert_eq!(commit_on(&first, &a.member_id, a.generation_id, 42), codes::NONE);
        assert_eq!(commit_on(&first, &a.member_id, a.generation_id - 1, 43), codes::ILLEGAL_GENERATION);
        assert_eq!(commit_on(&first, "", -1, 44), codes::UNKNOWN_MEMBER_ID, "outside commits wait for an empty group");

        let (reply, wait) = oneshot::channel();
        send(&first, "g", GroupOp::Describe { group_id: "g".into(), reply });
        let view = block_on(wait).unwrap().unwrap();
        assert_eq!((view.state, view.epoch, view.assignor, view.members.len()), ("Stable", 1, "range", 2));
        let owner = view.members.iter().find(|m| m.assigned.contains(&("t".into(), 1))).unwrap();
        assert_eq!(owner.member_id, b.member_id);
        assert_eq!(owner.subscribed, ["t"]);
        assert_eq!(view.offsets.get(&("t".into(), 0)), Some(&42));

        // Kafka's DescribeGroups and ListGroups see the same group.
        let (reply, wait) = oneshot::channel();
        send(&first, "g", GroupOp::Classic(ClassicOp::Describe { group_id: "g".into(), reply }));
        let described = block_on(wait).unwrap();
        assert_eq!(described.error, codes::NONE);
        assert_eq!(
            (described.state.as_str(), described.protocol_type.as_str(), described.protocol_name.as_str()),
            ("Stable", "consumer", "range")
        );
        let b_described = described.members.iter().find(|m| m.member_id == b.member_id).unwrap();
        assert_eq!(b_described.assignment, assignment(&[("t", &[1])]));
        assert_eq!(b_described.metadata, subscription(&["t"]));
        assert_eq!((b_described.client_id.as_str(), b_described.client_host.as_str()), ("c", "/127.0.0.1"));
        let (reply, wait) = oneshot::channel();
        send(&first, "g", GroupOp::Classic(ClassicOp::List { reply }));
        let listed = Listed {
            group_id: "g".into(),
            protocol_type: "consumer".into(),
            state: "Stable".into(),
            group_type: "classic",
        };
        assert_eq!(block_on(wait).unwrap(), [listed]);
        // A KIP-848 member cannot join it meanwhile.
        let (reply, wait) = oneshot::channel();
        let request = super::super::HeartbeatIn {
            member_id: String::new(),
            member_epoch: 0,
            subscribed: BTreeSet::from(["t".to_string()]),
            assignor: None,
            session_timeout: std::time::Duration::from_secs(10),
            owned: BTreeSet::new(),
            client_id: "native".into(),
            client_member_id: None,
        };
        send(&first, "g", GroupOp::Heartbeat { group_id: "g".into(), request, reply });
        assert_eq!(block_on(wait).unwrap().unwrap_err().error, ErrorCode::GroupIdNotFound);

        // A new member starts a rebalance that a and b never rejoin: its
        // join is held, and answered when the shard stops.
        let held = join_on(&first, join_input("", false));
        first.shutdown();
        assert_eq!(block_on(held).unwrap().error, codes::COORDINATOR_NOT_AVAILABLE);
        first.wait().unwrap();

        let second = broker(&dir);
        let (reply, wait) = oneshot::channel();
        let op = ClassicOp::Heartbeat {
            group_id: "g".into(),
            member_id: a.member_id.clone(),
            group_instance_id: None,
            generation_id: a.generation_id,
            reply,
        };
        send(&second, "g", GroupOp::Classic(op));
        assert_eq!(block_on(wait).unwrap(), codes::UNKNOWN_MEMBER_ID, "members are soft state");
        let again = block_on(join_on(&second, join_input("", false))).unwrap();
        assert_eq!(again.error, codes::NONE);
        assert_eq!(again.generation_id, 2, "generation 1 was written; the next goes on from it");
        let (reply, wait) = oneshot::channel();
        send(&second, "g", GroupOp::Fetch { group_id: "g".into(), partitions: None, reply });
        assert_eq!(block_on(wait).unwrap().unwrap().offsets, [(("t".into(), 0), 42)]);
        second.shutdown();
        second.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
