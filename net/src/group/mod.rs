//! Consumer group coordinators (design decision 8). A group lives on the
//! shard that owns partition `group_partition(group_id)` of
//! `__consumer_offsets`; that shard's `Groups` holds its state (no locks:
//! `RefCell` on one executor), other shards reach it with
//! `ShardOp::Group`. Committed offsets and group epochs are records in
//! that partition (`record.rs`), appended before the state changes they
//! describe are answered (the topic is always `flush.ms=0`), and replayed
//! by `load` when the shard starts. Membership is soft state: after a
//! restart members get `UnknownMemberId` and join again.
//!
//! `__consumer_offsets` has `retention.ms=-1` so that no offset ages out,
//! and `cleanup.policy=compact`, so that it keeps the latest record per key.

pub(crate) mod api;
mod assign;
mod record;
mod state;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use spate_engine::ReadBound;
use spate_flatbuf::proto::ErrorCode;
use spate_flatbuf::{CONSUMER_OFFSETS_TOPIC, group_partition, is_internal_topic};

pub(crate) use self::assign::{Assignor, Tp};
use self::record::{GroupMeta, GroupRecord};
pub(crate) use self::state::{Group, HeartbeatIn, HeartbeatOut};
use crate::catalog::{Catalog, TopicMeta};
use crate::limits::{GROUPS_PER_SHARD_MAX, MEMBERS_PER_GROUP_MAX};
use crate::shard::{Outcome, Shard, log_error_code};

/// Bytes read at a time while replaying a partition at start.
const LOAD_READ_BYTES: usize = 1 << 20;

/// A shard's groups: those whose partition of `__consumer_offsets` it owns.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    groups: RefCell<HashMap<String, Group>>,
    /// Deletes so far per group id: a commit that was appended before a
    /// delete and becomes durable after it must not bring the group back.
    deletions: RefCell<HashMap<String, u64>>,
}

impl Groups {
    fn deletions(&self, group_id: &str) -> u64 {
        self.deletions.borrow().get(group_id).copied().unwrap_or(0)
    }
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub epoch: i32,
    pub subscribed: Vec<String>,
    pub assigned: BTreeSet<Tp>,
    pub target: BTreeSet<Tp>,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupView {
    pub state: &'static str,
    pub epoch: i32,
    pub assignor: &'static str,
    pub members: Vec<MemberView>,
    pub offsets: BTreeMap<Tp, i64>,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupListing {
    pub group_id: String,
    pub state: &'static str,
    pub members: usize,
}

/// Work for a group's coordinator.
#[derive(Debug)]
pub(crate) enum GroupOp {
    Heartbeat {
        group_id: String,
        request: HeartbeatIn,
        reply: oneshot::Sender<Result<HeartbeatOut, Outcome>>,
    },
    Commit {
        group_id: String,
        member_id: String,
        member_epoch: i32,
        offsets: Vec<(Tp, i64)>,
        reply: oneshot::Sender<Outcome>,
    },
    Fetch {
        group_id: String,
        partitions: Option<Vec<Tp>>,
        reply: oneshot::Sender<Vec<(Tp, i64)>>,
    },
    List {
        reply: oneshot::Sender<Vec<GroupListing>>,
    },
    Describe {
        group_id: String,
        reply: oneshot::Sender<Result<GroupView, Outcome>>,
    },
    Delete {
        group_id: String,
        reply: oneshot::Sender<Outcome>,
    },
}

/// The shard that coordinates `group_id`, if `__consumer_offsets` exists.
pub(crate) fn coordinator(shard: &Shard, group_id: &str) -> Option<usize> {
    let catalog = shard.shared.catalog.load();
    let topic = catalog.topics.get(CONSUMER_OFFSETS_TOPIC)?;
    Some(shard.shared.owner(CONSUMER_OFFSETS_TOPIC, group_partition(group_id, topic.partitions)))
}

/// Partition counts of user topics (internal ones cannot be subscribed to).
fn partition_counts(catalog: &Catalog) -> impl Fn(&str) -> Option<u32> + '_ {
    move |topic: &str| {
        if is_internal_topic(topic) {
            return None;
        }
        catalog.topics.get(topic).map(|t| t.partitions)
    }
}

/// A member id: the client id (for people reading `group describe`) and
/// 64 random bits (std's RandomState is seeded from the OS).
fn new_member_id(client_id: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let prefix: String = client_id.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    let prefix = if prefix.is_empty() { "member".to_string() } else { prefix };
    format!("{prefix}-{:016x}", hasher.finish())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Appends records to the group's partition now (so records keep the order
/// of the state changes they describe) and returns the ticket to await.
fn append(shard: &Shard, group_id: &str, records: &[GroupRecord]) -> Result<spate_engine::AppendTicket, Outcome> {
    let catalog = shard.shared.catalog.load();
    let not_ready = || Outcome::err(ErrorCode::NotReady, format!("{CONSUMER_OFFSETS_TOPIC} is not open here"));
    let topic = catalog.topics.get(CONSUMER_OFFSETS_TOPIC).ok_or_else(not_ready)?;
    let partition = group_partition(group_id, topic.partitions);
    // The coordinator is the leader of the group's partition: elsewhere the
    // client is told to look again.
    let replica = shard.replica(topic, partition).ok_or_else(|| {
        Outcome::err(ErrorCode::NotLeaderOrFollower, format!("{CONSUMER_OFFSETS_TOPIC}/{partition} is not hosted here"))
    })?;
    let leader_epoch = replica
        .check_leader(-1)
        .map_err(|refusal| Outcome::err(refusal.0, format!("not the coordinator of {group_id:?} now")))?;
    let batch = record::batch(records, now_ms());
    replica.log.append(batch, leader_epoch).map_err(|err| Outcome::err(log_error_code(&err), err.to_string()))
}

async fn durable(ticket: Result<spate_engine::AppendTicket, Outcome>) -> Outcome {
    match ticket {
        Err(outcome) => outcome,
        Ok(ticket) => match ticket.durable().await {
            Ok(_) => Outcome::ok(),
            Err(err) => Outcome::err(log_error_code(&err), err.to_string()),
        },
    }
}

fn meta_record(group_id: &str, group: &Group) -> GroupRecord {
    GroupRecord::Group {
        group: group_id.to_string(),
        meta: Some(GroupMeta { epoch: group.epoch, assignor: group.assignor.name().to_string() }),
    }
}

/// Runs a group op on its coordinator: the state change now, the wait for
/// the disk in a task.
pub(crate) fn execute(shard: &Rc<Shard>, op: GroupOp) {
    match op {
        GroupOp::Heartbeat { group_id, request, reply } => heartbeat(shard, group_id, request, reply),
        GroupOp::Commit { group_id, member_id, member_epoch, offsets, reply } => {
            commit(shard, group_id, &member_id, member_epoch, offsets, reply)
        }
        GroupOp::Fetch { group_id, partitions, reply } => {
            let groups = shard.groups.groups.borrow();
            let offsets = groups.get(&group_id).map(|g| &g.offsets);
            let found = match (offsets, partitions) {
                (None, _) => Vec::new(),
                (Some(offsets), None) => offsets.iter().map(|(tp, o)| (tp.clone(), *o)).collect(),
                (Some(offsets), Some(wanted)) => {
                    wanted.into_iter().filter_map(|tp| offsets.get(&tp).map(|o| (tp, *o))).collect()
                }
            };
            let _ = reply.send(found);
        }
        GroupOp::List { reply } => {
            let groups = shard.groups.groups.borrow();
            let listings = groups
                .iter()
                .map(|(id, g)| GroupListing { group_id: id.clone(), state: g.state(), members: g.members.len() })
                .collect();
            let _ = reply.send(listings);
        }
        GroupOp::Describe { group_id, reply } => {
            let groups = shard.groups.groups.borrow();
            let view = groups
                .get(&group_id)
                .map(view)
                .ok_or_else(|| Outcome::err(ErrorCode::GroupIdNotFound, format!("no group {group_id:?}")));
            let _ = reply.send(view);
        }
        GroupOp::Delete { group_id, reply } => delete(shard, group_id, reply),
    }
}

fn view(group: &Group) -> GroupView {
    GroupView {
        state: group.state(),
        epoch: group.epoch,
        assignor: group.assignor.name(),
        members: group
            .members
            .iter()
            .map(|(id, m)| MemberView {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                epoch: m.epoch,
                subscribed: m.subscribed.iter().cloned().collect(),
                assigned: m.assigned.clone(),
                target: group.target.get(id).cloned().unwrap_or_default(),
            })
            .collect(),
        offsets: group.offsets.clone(),
    }
}

fn heartbeat(
    shard: &Rc<Shard>,
    group_id: String,
    request: HeartbeatIn,
    reply: oneshot::Sender<Result<HeartbeatOut, Outcome>>,
) {
    let catalog = shard.shared.catalog.load_full();
    let counts = partition_counts(&catalog);
    let client_id = request.client_id.clone();
    let (result, ticket) = {
        let mut groups = shard.groups.groups.borrow_mut();
        // Only a join creates a group, and both groups per shard and members
        // per group are bounded: a peer's heartbeats cannot grow state
        // without limit.
        let joining = request.member_epoch == 0;
        if !groups.contains_key(&group_id) {
            let refusal = if !joining {
                Some((ErrorCode::UnknownMemberId, format!("group {group_id:?} has no members; join first")))
            } else if groups.len() >= GROUPS_PER_SHARD_MAX {
                Some((ErrorCode::InvalidRequest, format!("over {GROUPS_PER_SHARD_MAX} groups on this shard")))
            } else {
                None
            };
            if let Some((error, message)) = refusal {
                let _ = reply.send(Err(Outcome::err(error, message)));
                return;
            }
        }
        let group = groups.entry(group_id.clone()).or_insert_with(|| Group::new(Assignor::Sticky));
        if joining && group.members.len() >= MEMBERS_PER_GROUP_MAX {
            let message = format!("group {group_id:?} has {MEMBERS_PER_GROUP_MAX} members, the most allowed");
            let _ = reply.send(Err(Outcome::err(ErrorCode::InvalidRequest, message)));
            return;
        }
        let epoch_before = group.epoch;
        let result = group.heartbeat(request, Instant::now(), &counts, || new_member_id(&client_id));
        let ticket = (group.epoch != epoch_before).then(|| append(shard, &group_id, &[meta_record(&group_id, group)]));
        (result, ticket)
    };
    if let Ok((out, changed)) = &result
        && changed.joined
    {
        tracing::debug!(shard = shard.id, group = %group_id, member = %out.member_id, "member joined");
        watch_session(shard.clone(), group_id.clone(), out.member_id.clone());
    }
    glommio::spawn_local(async move {
        // The new epoch is on disk before anyone hears of it.
        let written = match ticket {
            Some(ticket) => durable(ticket).await,
            None => Outcome::ok(),
        };
        let answer = match result {
            Err((error, message)) => Err(Outcome::err(error, message)),
            Ok(_) if written.error != ErrorCode::None => Err(written),
            Ok((out, _)) => Ok(out),
        };
        let _ = reply.send(answer);
    })
    .detach();
}

/// Removes the member once its session ends without a heartbeat: one
/// glommio timer per member, re-armed to the latest deadline.
fn watch_session(shard: Rc<Shard>, group_id: String, member_id: String) {
    glommio::spawn_local(async move {
        loop {
            let deadline = {
                let groups = shard.groups.groups.borrow();
                match groups.get(&group_id).and_then(|g| g.members.get(&member_id)) {
                    Some(member) => member.deadline,
                    None => return, // left, fenced or the group deleted
                }
            };
            let now = Instant::now();
            if deadline > now {
                glommio::timer::Timer::new(deadline - now).await;
                continue;
            }
            let catalog = shard.shared.catalog.load_full();
            let ticket = {
                let mut groups = shard.groups.groups.borrow_mut();
                let Some(group) = groups.get_mut(&group_id) else { return };
                if !group.expire(&member_id, now, &partition_counts(&catalog)) {
                    continue;
                }
                tracing::info!(group = %group_id, member = %member_id, "member removed: session timed out");
                append(&shard, &group_id, &[meta_record(&group_id, group)])
            };
            let written = durable(Ok(ticket).and_then(|t| t)).await;
            if written.error != ErrorCode::None {
                tracing::warn!(group = %group_id, "group epoch not written: {:?}", written.message);
            }
            return;
        }
    })
    .detach();
}

fn commit(
    shard: &Rc<Shard>,
    group_id: String,
    member_id: &str,
    member_epoch: i32,
    offsets: Vec<(Tp, i64)>,
    reply: oneshot::Sender<Outcome>,
) {
    let catalog = shard.shared.catalog.load_full();
    let checked = check_offsets(&catalog, &offsets).and_then(|()| {
        let groups = shard.groups.groups.borrow();
        match groups.get(&group_id) {
            Some(group) => group.check_commit(member_id, member_epoch).map_err(|(e, m)| Outcome::err(e, m)),
            None if member_id.is_empty() => Ok(()),
            None => Err(Outcome::err(ErrorCode::UnknownMemberId, format!("group {group_id:?} has no members"))),
        }
    });
    // Checked and appended in one synchronous step: no fencing slips in
    // between.
    let ticket = checked.and_then(|()| {
        let records: Vec<GroupRecord> = offsets
            .iter()
            .map(|((topic, partition), offset)| GroupRecord::Offset {
                group: group_id.clone(),
                topic: topic.clone(),
                partition: *partition,
                offset: Some(*offset),
            })
            .collect();
        append(shard, &group_id, &records)
    });
    let shard = shard.clone();
    let deletions_at_append = shard.groups.deletions(&group_id);
    glommio::spawn_local(async move {
        let mut written = durable(ticket).await;
        if written.error == ErrorCode::None {
            if shard.groups.deletions(&group_id) == deletions_at_append {
                let mut groups = shard.groups.groups.borrow_mut();
                let group = groups.entry(group_id).or_insert_with(|| Group::new(Assignor::Sticky));
                group.offsets.extend(offsets);
            } else {
                // The group was deleted while this commit was on its way to
                // disk, after the delete's tombstones were chosen: bury these
                // offsets too, or replay (after compaction drops the group's
                // tombstone) would bring the group back.
                let tombstones: Vec<GroupRecord> = offsets
                    .iter()
                    .map(|((topic, partition), _)| GroupRecord::Offset {
                        group: group_id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        offset: None,
                    })
                    .collect();
                let buried = durable(append(&shard, &group_id, &tombstones)).await;
                written = if buried.error == ErrorCode::None {
                    Outcome::err(ErrorCode::GroupIdNotFound, format!("group {group_id:?} was deleted"))
                } else {
                    buried
                };
            }
        }
        let _ = reply.send(written);
    })
    .detach();
}

fn check_offsets(catalog: &Catalog, offsets: &[(Tp, i64)]) -> Result<(), Outcome> {
    for ((topic, partition), offset) in offsets {
        let known =
            catalog.topics.get(topic).is_some_and(|t| u32::try_from(*partition).is_ok_and(|p| p < t.partitions));
        if !known || is_internal_topic(topic) {
            return Err(Outcome::err(ErrorCode::UnknownTopicOrPartition, format!("{topic}/{partition}")));
        }
        if *offset < 0 {
            return Err(Outcome::err(ErrorCode::InvalidRequest, format!("offset {offset} for {topic}/{partition}")));
        }
    }
    Ok(())
}

fn delete(shard: &Rc<Shard>, group_id: String, reply: oneshot::Sender<Outcome>) {
    let removed = {
        let mut groups = shard.groups.groups.borrow_mut();
        match groups.get(&group_id) {
            None => Err(Outcome::err(ErrorCode::GroupIdNotFound, format!("no group {group_id:?}"))),
            Some(group) if !group.members.is_empty() => Err(Outcome::err(
                ErrorCode::NonEmptyGroup,
                format!("group {group_id:?} has {} members", group.members.len()),
            )),
            Some(_) => Ok(groups.remove(&group_id).expect("present above")),
        }
    };
    if removed.is_ok() {
        *shard.groups.deletions.borrow_mut().entry(group_id.clone()).or_insert(0) += 1;
    }
    let ticket = removed.and_then(|group| {
        // A tombstone per key, so that compaction can drop every record.
        let mut records: Vec<GroupRecord> = group
            .offsets
            .keys()
            .map(|(topic, partition)| GroupRecord::Offset {
                group: group_id.clone(),
                topic: topic.clone(),
                partition: *partition,
                offset: None,
            })
            .collect();
        records.push(GroupRecord::Group { group: group_id.clone(), meta: None });
        append(shard, &group_id, &records)
    });
    glommio::spawn_local(async move {
        let _ = reply.send(durable(ticket).await);
    })
    .detach();
}

/// Rebuilds committed offsets and group epochs from this shard's
/// partitions of `__consumer_offsets`, before the shard accepts requests.
pub(crate) async fn load(shard: &Rc<Shard>) -> Result<(), String> {
    let catalog = shard.shared.catalog.load_full();
    let Some(topic) = catalog.topics.get(CONSUMER_OFFSETS_TOPIC).cloned() else { return Ok(()) };
    let mut loaded = 0usize;
    // This shard's partitions of the offsets topic that this broker hosts.
    for partition in (0..topic.partitions).filter(|&p| shard.shared.owner(&topic.name, p) == shard.id) {
        if shard.log(&topic, partition).is_some() {
            loaded += load_partition(shard, &topic, partition).await?;
        }
    }
    if loaded > 0 {
        tracing::info!(
            shard = shard.id,
            records = loaded,
            groups = shard.groups.groups.borrow().len(),
            "groups loaded"
        );
    }
    Ok(())
}

async fn load_partition(shard: &Rc<Shard>, topic: &Arc<TopicMeta>, partition: u32) -> Result<usize, String> {
    let log = shard.log(topic, partition).ok_or_else(|| format!("{}/{partition} is not open", topic.name))?;
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    let mut applied = 0usize;
    let name = topic.name.as_str();
    let fail = |err: String| format!("loading groups from {name}/{partition}: {err}");
    while offset < end {
        let output = log.read(offset, LOAD_READ_BYTES, ReadBound::LogEnd).await.map_err(|e| fail(e.to_string()))?;
        if output.batches.is_empty() {
            break;
        }
        for batch in output.batches {
            // The engine checked the CRC on the way in; check the structure
            // again right where it is read back.
            let info = spate_format::batch::validate_stored(&batch, usize::MAX).map_err(|e| fail(e.to_string()))?;
            let records = spate_format::batch::records(&batch).map_err(|e| fail(e.to_string()))?;
            for record in records {
                let record = record.map_err(|e| fail(e.to_string()))?;
                if record.offset(info.base_offset) < offset {
                    continue;
                }
                let key = record.key.ok_or_else(|| fail("a record without a key".into()))?;
                apply(&shard.groups, GroupRecord::decode(key, record.value).map_err(&fail)?);
                applied += 1;
            }
            assert!(info.last_offset() >= offset, "reads return batches at or after the offset asked for");
            offset = info.last_offset() + 1;
        }
    }
    Ok(applied)
}

fn apply(groups: &Groups, record: GroupRecord) {
    let mut groups = groups.groups.borrow_mut();
    match record {
        GroupRecord::Offset { group, topic, partition, offset } => {
            let entry = groups.entry(group).or_insert_with(|| Group::new(Assignor::Sticky));
            match offset {
                Some(offset) => entry.offsets.insert((topic, partition), offset),
                None => entry.offsets.remove(&(topic, partition)),
            };
        }
        GroupRecord::Group { group, meta: Some(meta) } => {
            let entry = groups.entry(group).or_insert_with(|| Group::new(Assignor::Sticky));
            entry.epoch = meta.epoch;
            entry.assignor = Assignor::parse(&meta.assignor).unwrap_or(Assignor::Sticky);
        }
        GroupRecord::Group { group, meta: None } => {
            groups.remove(&group);
        }
    }
}

/// The request that creates `__consumer_offsets` (at the first start of a
/// cluster). Its partition count never changes later, since that would
/// move every group. One replica for now: the group coordinator loads a
/// partition's state only at shard start, so a replicated offsets topic
/// would not yet fail over (see the replication notes).
pub(crate) fn offsets_topic_request(partitions: u32) -> spate_replication::ControllerRequest {
    spate_replication::ControllerRequest::CreateTopic {
        name: CONSUMER_OFFSETS_TOPIC.to_string(),
        partitions,
        replication_factor: 1,
        // Offsets must never age out, and every write is synced before it
        // is acknowledged, whatever the broker's default durability.
        configs: BTreeMap::from([
            ("retention.ms".to_string(), "-1".to_string()),
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("flush.ms".to_string(), "0".to_string()),
        ]),
    }
}

/// How often a member with this session should heartbeat: three times per
/// session, at most every 5 s (Kafka's default interval).
pub(crate) fn heartbeat_interval(session: Duration) -> Duration {
    (session / 3).min(Duration::from_secs(5))
}
