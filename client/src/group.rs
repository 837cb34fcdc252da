//! Consumer groups: [`GroupConsumer`] (subscribe, poll, commit, callbacks)
//! and [`GroupAdmin`] (list, describe, delete, reset offsets).
//!
//! A `GroupConsumer` wraps a [`Consumer`]. A tokio task heartbeats to the
//! group's coordinator (KIP-848: the coordinator computes the assignment)
//! and keeps the latest assignment it was given; `poll` applies it before
//! fetching: partitions to give up are committed (with auto-commit) and
//! passed to the revoke callback, new ones start at their committed offset
//! (or the reset policy) and are passed to the assign callback, and the
//! heartbeat task is woken so that the coordinator hears at once that the
//! revoked partitions are free. Heartbeats and the applying of an
//! assignment take the same lock, so every heartbeat reports exactly what
//! the consumer owns.
//!
//! Commit after processing: with auto-commit, each `poll` first commits
//! (synchronously, at most every `auto_commit_interval_ms`) the positions
//! after the records earlier polls returned, so a crash re-delivers what
//! was not yet processed and never skips it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use spate_flatbuf::proto::ErrorCode;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use crate::client::Client;
use crate::consumer::{AutoOffsetReset, Consumer, ConsumerConfig, ConsumerRecord, SeekTo};
use crate::error::ClientError;
use crate::group_protocol::{self as gp, GroupDescription, GroupListing, HeartbeatRequest, MemberAssignment};
use crate::metadata::TopicPartition;
use crate::protocol::Stamp;

/// How the coordinator divides partitions among members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupAssignor {
    /// Contiguous ranges per topic (Kafka's range).
    Range,
    /// Partitions in turn to each member.
    RoundRobin,
    /// Balanced, and moving as few partitions as possible (the default).
    #[default]
    Sticky,
}

impl GroupAssignor {
    pub fn name(self) -> &'static str {
        match self {
            GroupAssignor::Range => "range",
            GroupAssignor::RoundRobin => "roundrobin",
            GroupAssignor::Sticky => "sticky",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group_id: String,
    /// Used by the group's first member; later members follow the group's.
    pub assignor: GroupAssignor,
    /// The coordinator removes the member (and moves its partitions) when
    /// no heartbeat arrives for this long; the broker clamps it.
    pub session_timeout_ms: u64,
    /// Commit the positions after returned records at the next `poll`.
    pub auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    /// Where a partition with no committed offset starts: `Earliest`,
    /// `Latest`, or `None` (poll fails with `NoPosition`).
    pub auto_offset_reset: AutoOffsetReset,
    pub consumer: ConsumerConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            group_id: String::new(),
            assignor: GroupAssignor::default(),
            session_timeout_ms: 45_000,
            auto_commit: true,
            auto_commit_interval_ms: 5_000,
            auto_offset_reset: AutoOffsetReset::Latest,
            consumer: ConsumerConfig::default(),
        }
    }
}

/// Called with the partitions assigned or revoked.
pub type PartitionsCallback = Box<dyn FnMut(&[TopicPartition]) + Send>;

/// The member's side of the protocol, shared by `poll` and the heartbeat
/// task; held across a heartbeat's round trip.
#[derive(Debug, Default)]
struct Member {
    member_id: String,
    epoch: i32,
    topics: Vec<String>,
    /// What the consumer owns (applied).
    owned: BTreeSet<TopicPartition>,
    /// The coordinator's latest answer, not applied yet.
    pending: Option<BTreeSet<TopicPartition>>,
    /// The coordinator no longer knows this member: drop everything
    /// without committing, then join again.
    lost: bool,
    interval: Duration,
    /// A failure no retry will fix, for `poll` to report.
    error: Option<ClientError>,
}

struct Shared {
    member: Mutex<Member>,
    wake: Notify,
}

/// A consumer in a group: the coordinator assigns it partitions.
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    consumer: Consumer,
    shared: Arc<Shared>,
    heartbeats: Option<tokio::task::JoinHandle<()>>,
    /// Behind mutexes only so that `GroupConsumer` is `Sync` and its
    /// futures `Send`; reached through `get_mut`.
    on_assign: std::sync::Mutex<Option<PartitionsCallback>>,
    on_revoke: std::sync::Mutex<Option<PartitionsCallback>>,
    /// What was last committed, to skip commits that change nothing.
    committed: BTreeMap<TopicPartition, i64>,
    last_auto_commit: Instant,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Drop for GroupConsumer {
    /// Dropped without `close`, the member stops heartbeating and is
    /// removed when its session times out, like a crashed one.
    fn drop(&mut self) {
        if let Some(task) = self.heartbeats.take() {
            task.abort();
        }
    }
}

fn callback_slot(slot: &mut std::sync::Mutex<Option<PartitionsCallback>>) -> &mut Option<PartitionsCallback> {
    slot.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_membership_error(error: &ClientError) -> bool {
    matches!(error.code(), Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch))
}

impl GroupConsumer {
    pub fn new(client: Client, config: GroupConfig) -> Result<GroupConsumer, ClientError> {
        spate_flatbuf::validate_group_id(&config.group_id).map_err(ClientError::InvalidConfig)?;
        if config.session_timeout_ms == 0 || config.session_timeout_ms > i32::MAX as u64 {
            return Err(ClientError::InvalidConfig("session_timeout_ms must be in 1..=i32::MAX".into()));
        }
        let consumer_config = ConsumerConfig { auto_offset_reset: config.auto_offset_reset, ..config.consumer.clone() };
        let consumer = Consumer::new(client.clone(), consumer_config)?;
        let interval = Duration::from_millis(config.session_timeout_ms / 3);
        Ok(GroupConsumer {
            client,
            consumer,
            shared: Arc::new(Shared {
                member: Mutex::new(Member { interval, ..Member::default() }),
                wake: Notify::new(),
            }),
            heartbeats: None,
            on_assign: std::sync::Mutex::new(None),
            on_revoke: std::sync::Mutex::new(None),
            committed: BTreeMap::new(),
            last_auto_commit: Instant::now(),
            config,
        })
    }

    pub fn set_on_assign(&mut self, callback: PartitionsCallback) {
        *callback_slot(&mut self.on_assign) = Some(callback);
    }

    /// Also called, without a commit, with every partition when the
    /// coordinator has dropped the member (it was fenced or timed out).
    pub fn set_on_revoke(&mut self, callback: PartitionsCallback) {
        *callback_slot(&mut self.on_revoke) = Some(callback);
    }

    /// Joins the group (or changes the subscription) and starts
    /// heartbeating; partitions come with later polls.
    pub async fn subscribe(&mut self, topics: &[String]) -> Result<(), ClientError> {
        for topic in topics {
            spate_flatbuf::validate_topic_name(topic).map_err(|e| ClientError::InvalidConfig(e.to_string()))?;
        }
        self.shared.member.lock().await.topics = topics.to_vec();
        if self.heartbeats.is_none() {
            let task =
                HeartbeatTask { client: self.client.clone(), config: self.config.clone(), shared: self.shared.clone() };
            self.heartbeats = Some(tokio::spawn(task.run()));
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The partitions this consumer owns now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.consumer.assignment()
    }

    /// The member id and epoch the coordinator gave (empty before joining).
    pub async fn member(&self) -> (String, i32) {
        let member = self.shared.member.lock().await;
        (member.member_id.clone(), member.epoch)
    }

    /// Kafka's groupMetadata(): the group id and this member's id and
    /// epoch, for `Producer::send_offsets_to_transaction` (the coordinator
    /// refuses the offsets of a member fenced from the group).
    pub async fn group_metadata(&self) -> crate::ConsumerGroupMetadata {
        let (member_id, member_epoch) = self.member().await;
        crate::ConsumerGroupMetadata { group_id: self.config.group_id.clone(), member_id, member_epoch }
    }

    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.consumer.position(tp)
    }

    /// Moves an owned partition's position (the next record `poll` returns
    /// and what the next commit records), e.g. back to the first record
    /// the application did not process.
    pub async fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<(), ClientError> {
        self.consumer.seek(tp, SeekTo::Offset(offset)).await.map(|_| ())
    }

    /// Applies the latest assignment, then waits up to `timeout` for
    /// records from the owned partitions.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        if self.config.auto_commit
            && self.last_auto_commit.elapsed() >= Duration::from_millis(self.config.auto_commit_interval_ms)
        {
            self.last_auto_commit = Instant::now();
            if let Err(error) = self.commit_sync().await {
                tracing::warn!(group = %self.config.group_id, %error, "auto-commit failed");
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            self.reconcile().await?;
            // Short slices, so that a new assignment waits at most one.
            let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            let records = self.consumer.poll(slice).await?;
            if !records.is_empty() || Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// Commits the position after every record polls have returned, for
    /// every owned partition.
    pub async fn commit_sync(&mut self) -> Result<(), ClientError> {
        let member = self.shared.member.lock().await;
        let offsets = self.positions(&member.owned);
        let (id, epoch) = (member.member_id.clone(), member.epoch);
        drop(member);
        self.commit_as(&id, epoch, offsets).await
    }

    /// `commit_sync` in a task: errors are logged, not returned.
    pub async fn commit_async(&mut self) {
        let member = self.shared.member.lock().await;
        let offsets = self.positions(&member.owned);
        let (id, epoch) = (member.member_id.clone(), member.epoch);
        drop(member);
        let (client, group) = (self.client.clone(), self.config.group_id.clone());
        tokio::spawn(async move {
            if let Err(error) = commit(&client, &group, &id, epoch, &offsets).await {
                tracing::warn!(%group, %error, "asynchronous commit failed");
            }
        });
    }

    /// Commits these offsets (the next offset to consume per partition).
    pub async fn commit(&mut self, offsets: BTreeMap<TopicPartition, i64>) -> Result<(), ClientError> {
        let member = self.shared.member.lock().await;
        let (id, epoch) = (member.member_id.clone(), member.epoch);
        drop(member);
        self.commit_as(&id, epoch, offsets).await
    }

    async fn commit_as(
        &mut self,
        id: &str,
        epoch: i32,
        offsets: BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        let changed: BTreeMap<TopicPartition, i64> =
            offsets.into_iter().filter(|(tp, offset)| self.committed.get(tp) != Some(offset)).collect();
        if changed.is_empty() || id.is_empty() {
            return Ok(());
        }
        commit(&self.client, &self.config.group_id, id, epoch, &changed).await?;
        self.committed.extend(changed);
        Ok(())
    }

    fn positions(&self, partitions: &BTreeSet<TopicPartition>) -> BTreeMap<TopicPartition, i64> {
        partitions.iter().filter_map(|tp| self.consumer.position(tp).map(|p| (tp.clone(), p))).collect()
    }

    /// Applies what the heartbeat task last heard: a lost membership, or a
    /// new assignment (revoking first).
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        let shared = self.shared.clone();
        let mut member = shared.member.lock().await;
        if let Some(error) = member.error.take() {
            return Err(error);
        }
        if member.lost {
            member.lost = false;
            let dropped: Vec<TopicPartition> = std::mem::take(&mut member.owned).into_iter().collect();
            self.consumer.assign(Vec::new());
            self.committed.clear();
            tracing::warn!(group = %self.config.group_id, partitions = dropped.len(), "membership lost; partitions dropped");
            if let (Some(callback), false) = (callback_slot(&mut self.on_revoke).as_mut(), dropped.is_empty()) {
                callback(&dropped);
            }
        }
        let Some(target) = member.pending.take() else { return Ok(()) };
        if target == member.owned {
            return Ok(());
        }
        let revoked: Vec<TopicPartition> = member.owned.difference(&target).cloned().collect();
        let added: BTreeSet<TopicPartition> = target.difference(&member.owned).cloned().collect();
        if !revoked.is_empty() {
            if self.config.auto_commit {
                let offsets = self.positions(&revoked.iter().cloned().collect());
                let (id, epoch) = (member.member_id.clone(), member.epoch);
                if let Err(error) = self.commit_as(&id, epoch, offsets).await {
                    tracing::warn!(group = %self.config.group_id, %error, "commit of revoked partitions failed");
                }
            }
            for tp in &revoked {
                self.committed.remove(tp);
            }
            if let Some(callback) = callback_slot(&mut self.on_revoke).as_mut() {
                callback(&revoked);
            }
        }
        let starts = if added.is_empty() {
            BTreeMap::new()
        } else {
            let group = &self.config.group_id;
            let build = |stamp| gp::offset_fetch(stamp, group, Some(&added));
            group_request(&self.client, group, build, gp::decode_offset_fetch).await?
        };
        self.consumer.assign(target.iter().cloned().collect());
        for (tp, offset) in &starts {
            self.consumer.seek(tp, SeekTo::Offset(*offset)).await?;
            self.committed.insert(tp.clone(), *offset);
        }
        let resets: Vec<TopicPartition> = added.iter().filter(|tp| !starts.contains_key(*tp)).cloned().collect();
        match self.config.auto_offset_reset {
            _ if resets.is_empty() => {}
            AutoOffsetReset::Earliest => drop(self.consumer.seek_many(&resets, SeekTo::Earliest).await?),
            AutoOffsetReset::Latest => drop(self.consumer.seek_many(&resets, SeekTo::Latest).await?),
            // Left without a position: poll reports NoPosition.
            AutoOffsetReset::None => {}
        }
        member.owned = target;
        drop(member);
        // Tell the coordinator now that revoked partitions are free.
        shared.wake.notify_one();
        if let (Some(callback), false) = (callback_slot(&mut self.on_assign).as_mut(), added.is_empty()) {
            callback(&added.into_iter().collect::<Vec<_>>());
        }
        Ok(())
    }

    /// Commits (with auto-commit), leaves the group (its partitions go to
    /// the others at once) and stops heartbeating.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.config.auto_commit
            && let Err(error) = self.commit_sync().await
        {
            tracing::warn!(group = %self.config.group_id, %error, "final commit failed");
        }
        self.leave().await
    }

    /// Leaves the group without committing and stops heartbeating: its
    /// partitions go to the others at once, from the last commit. For an
    /// application that cannot vouch for the records it was given since
    /// (its output failed), so that they are delivered again rather than
    /// skipped, without waiting for the session to time out.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        if let Some(task) = self.heartbeats.take() {
            task.abort();
        }
        let member = self.shared.member.lock().await;
        if member.member_id.is_empty() {
            return Ok(());
        }
        let topics = member.topics.clone();
        let owned = BTreeSet::new();
        let request = HeartbeatRequest {
            group_id: &self.config.group_id,
            member_id: &member.member_id,
            member_epoch: -1,
            topics: &topics,
            assignor: self.config.assignor.name(),
            session_timeout_ms: self.config.session_timeout_ms as i32,
            owned: &owned,
            client_id: &self.client.config().client_id,
        };
        let group = &self.config.group_id;
        let build = |stamp| gp::heartbeat(stamp, &request);
        group_request(&self.client, group, build, gp::decode_heartbeat).await.map(|_| ())
    }
}

struct HeartbeatTask {
    client: Client,
    config: GroupConfig,
    shared: Arc<Shared>,
}

impl HeartbeatTask {
    async fn run(self) {
        loop {
            let interval = self.beat().await;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.shared.wake.notified() => {}
            }
        }
    }

    /// One heartbeat; returns when to send the next.
    async fn beat(&self) -> Duration {
        let mut member = self.shared.member.lock().await;
        let joining = member.member_id.is_empty();
        let empty = BTreeSet::new();
        let request = HeartbeatRequest {
            group_id: &self.config.group_id,
            member_id: &member.member_id,
            member_epoch: if joining { 0 } else { member.epoch },
            topics: &member.topics,
            assignor: self.config.assignor.name(),
            session_timeout_ms: self.config.session_timeout_ms as i32,
            owned: if joining { &empty } else { &member.owned },
            client_id: &self.client.config().client_id,
        };
        let group = &self.config.group_id;
        let build = |stamp| gp::heartbeat(stamp, &request);
        let answer = group_request(&self.client, group, build, gp::decode_heartbeat).await;
        match answer {
            Ok(MemberAssignment { member_id, member_epoch, heartbeat_interval_ms, assignment }) => {
                member.member_id = member_id;
                member.epoch = member_epoch;
                member.interval = Duration::from_millis(heartbeat_interval_ms.max(10) as u64);
                member.pending = Some(assignment);
                member.interval
            }
            Err(error) if is_membership_error(&error) => {
                tracing::info!(%group, %error, "rejoining the group");
                member.member_id.clear();
                member.epoch = 0;
                member.pending = None;
                member.lost = true;
                Duration::ZERO
            }
            Err(error) if error.is_retriable() => {
                tracing::debug!(%group, %error, "heartbeat failed; retrying");
                member.interval.min(Duration::from_millis(200))
            }
            Err(error) => {
                member.error = Some(error);
                member.interval
            }
        }
    }
}

/// The coordinator's answer says it does not (or no longer) lead the
/// group's partition.
fn coordinator_moved(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::NotLeaderOrFollower | ErrorCode::LeaderNotAvailable | ErrorCode::BrokerShuttingDown)
    )
}

/// The coordinator's answer says to try again shortly: it is loading the
/// group's partition after becoming its leader (`NotReady`, as Kafka's
/// COORDINATOR_LOAD_IN_PROGRESS), or its write did not reach every in-sync
/// replica (too few of them, or not in time).
fn coordinator_busy(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(
            ErrorCode::NotReady
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::NotEnoughReplicasAfterAppend
                | ErrorCode::RequestTimedOut
                // A transaction coordinator still writing the markers of
                // the id's previous transaction.
                | ErrorCode::ConcurrentTransactions
        )
    )
}

/// Sends a group request to the coordinator and decodes its answer,
/// retrying as `coordinator_request` does.
async fn group_request<T>(
    client: &Client,
    group_id: &str,
    build: impl Fn(Stamp) -> crate::protocol::OutFrame,
    decode: impl Fn(&spate_flatbuf::Frame) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    coordinator_request(client, gp::Coordinator::Group(group_id), build, decode).await
}

/// Sends a request to a group's or transactional id's coordinator and
/// decodes its answer, retrying until the request timeout when the
/// coordinator could not be found or reached, answered that it does not
/// lead the key's partition of its internal topic (metadata is refreshed
/// first, so the retry goes to the new leader), or answered that it is
/// busy (`coordinator_busy`). Other errors go to the caller.
pub(crate) async fn coordinator_request<T>(
    client: &Client,
    coordinator: gp::Coordinator<'_>,
    build: impl Fn(Stamp) -> crate::protocol::OutFrame,
    decode: impl Fn(&spate_flatbuf::Frame) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + client.request_timeout();
    loop {
        let error = match gp::coordinator_address_of(client, coordinator).await {
            // No coordinator known yet: metadata lags (the internal topic
            // is new), or the key's partition has no leader right now.
            Err(error) => error,
            Ok(address) => {
                let answer = client.request(&address, client.request_timeout(), &build).await;
                match answer.and_then(|frame| decode(&frame)) {
                    Ok(answer) => return Ok(answer),
                    Err(error @ ClientError::Server { .. })
                        if !coordinator_moved(&error) && !coordinator_busy(&error) =>
                    {
                        return Err(error);
                    }
                    Err(error) => error,
                }
            }
        };
        if coordinator_moved(&error) || error.invalidates_metadata() {
            client.invalidate_metadata();
        }
        if !error.is_retriable() || Instant::now() >= deadline {
            return Err(error);
        }
        tracing::debug!(?coordinator, %error, "coordinator request failed; retrying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn commit(
    client: &Client,
    group: &str,
    member_id: &str,
    epoch: i32,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), ClientError> {
    let build = |stamp| gp::offset_commit(stamp, group, member_id, epoch, offsets);
    group_request(client, group, build, gp::decode_offset_commit).await
}

/// Group administration: list, describe, delete, committed offsets.
#[derive(Debug, Clone)]
pub struct GroupAdmin {
    client: Client,
}

impl GroupAdmin {
    pub fn new(client: Client) -> Self {
        GroupAdmin { client }
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        let frame = self.client.request_any(gp::list_groups).await?;
        gp::decode_list_groups(&frame)
    }

    /// Members, assignment, and per partition the committed offset, log
    /// end offset and lag. An unknown group is `GroupIdNotFound`.
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupDescription, ClientError> {
        let groups = [group_id.to_string()];
        let build = |stamp| gp::describe_groups(stamp, &groups);
        // The group's own error goes through group_request, which follows
        // a coordinator that moved or is loading.
        let decode = |frame: &spate_flatbuf::Frame| {
            let group = gp::decode_describe_groups(frame)?
                .into_iter()
                .find(|g| g.group_id == group_id)
                .ok_or_else(|| ClientError::Protocol(format!("no answer for group {group_id:?}")))?;
            match group.error {
                None => Ok(group),
                Some(code) => Err(ClientError::Server { code, message: Some(format!("group {group_id:?}")) }),
            }
        };
        group_request(&self.client, group_id, build, decode).await
    }

    /// Deletes a group with no members, with its committed offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), ClientError> {
        let groups = [group_id.to_string()];
        let build = |stamp| gp::delete_groups(stamp, &groups);
        let decode = |frame: &spate_flatbuf::Frame| match gp::decode_delete_groups(frame)?
            .into_iter()
            .find(|(id, _, _)| id == group_id)
        {
            Some((_, None, _)) => Ok(()),
            Some((_, Some(code), message)) => Err(ClientError::Server { code, message }),
            None => Err(ClientError::Protocol(format!("no answer for group {group_id:?}"))),
        };
        group_request(&self.client, group_id, build, decode).await
    }

    /// Committed offsets (of these partitions, or all).
    pub async fn committed_offsets(
        &self,
        group_id: &str,
        partitions: Option<&BTreeSet<TopicPartition>>,
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let build = |stamp| gp::offset_fetch(stamp, group_id, partitions);
        group_request(&self.client, group_id, build, gp::decode_offset_fetch).await
    }

    /// Sets committed offsets; only while the group has no members
    /// (`NonEmptyGroup` otherwise), as Kafka's reset-offsets.
    pub async fn reset_offsets(
        &self,
        group_id: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        commit(&self.client, group_id, "", -1, offsets).await
    }

    /// A commit as a given member at a given epoch: what a member's commit
    /// sends, for tools and tests of fencing.
    pub async fn commit_as(
        &self,
        group_id: &str,
        member_id: &str,
        member_epoch: i32,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), ClientError> {
        commit(&self.client, group_id, member_id, member_epoch, offsets).await
    }
}
