//! A partition replica on its owning shard: leader or follower, as the
//! controller's metadata says (design decision 7, Kafka's ISR replication).
//!
//! As leader it stamps its leader epoch into every batch, tracks each
//! follower's durable offset from its replica fetches (what it has written,
//! or synced under durability `always`: design decision 13), moves the high
//! watermark to the minimum over the in-sync replicas (never past its own
//! ack point),
//! and asks the controller to grow or shrink the ISR (versioned by the
//! partition epoch; never changed unilaterally). As follower it runs a
//! fetcher (`fetcher.rs`) that first truncates by leader epoch
//! (OffsetForLeaderEpoch, KIP-101/KIP-279), then appends what the leader
//! sends with the leader's offsets and epochs.
//!
//! Everything here runs on the owning shard; the controller is reached
//! through `Shared::controller`, whose futures are runtime-neutral.

pub(crate) mod fetcher;
pub(crate) mod peer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use spate_flatbuf::proto::ErrorCode;

use crate::catalog::{PartitionAssignment, TopicMeta};
use crate::limits::ISR_CHANGE_RETRY_MS;
use crate::shard::{Log, Shared};

/// What this replica is for its partition, from the latest metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    Follower {
        leader: i32,
    },
    /// No leader (offline) or this node is no longer a replica.
    None,
}

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// What its latest fetch reported durable: everything below is on the
    /// follower's disk to the degree its durability policy promises. Not
    /// the fetch offset: with O_DIRECT a follower's unwritten tail lives
    /// only in its memory, and when every replica's process dies at once
    /// (OOM killer, a bad deploy, a power cut) a tail counted from memory
    /// could be acknowledged yet exist on no disk (issue 13).
    durable_offset: i64,
    /// The leader's log end when it answered the follower's previous fetch:
    /// a durable offset at or past it means the follower had caught up then.
    leader_end_at_last_fetch: i64,
    last_fetch: Instant,
    /// When the follower last had everything the leader had.
    last_caught_up: Instant,
}

#[derive(Debug)]
struct State {
    topic: Arc<TopicMeta>,
    assignment: PartitionAssignment,
    role: Role,
    followers: HashMap<i32, Progress>,
    /// An AlterPartition is on its way to the controller; one at a time.
    isr_change_in_flight: bool,
    /// After a refused ISR change, none is asked for again before this
    /// (or before new metadata for the partition arrives): a leader whose
    /// view is stale would otherwise ask on every follower fetch.
    isr_change_retry_after: Option<Instant>,
    /// Dropping it stops the follower's fetcher.
    fetcher_stop: Option<oneshot::Sender<()>>,
    /// Tasks waiting for a role or ISR change (acks=all produces).
    wakers: Vec<Waker>,
}

impl State {
    /// One ISR change at a time, and none right after a refusal.
    fn may_ask_isr_change(&self, now: Instant) -> bool {
        !self.isr_change_in_flight && self.isr_change_retry_after.is_none_or(|after| now >= after)
    }
}

/// Why a partition request cannot be served by this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal(pub ErrorCode);

#[derive(Debug)]
pub(crate) struct Replica {
    pub log: Log,
    pub partition: u32,
    node_id: i32,
    state: RefCell<State>,
}

impl Replica {
    pub fn new(log: Log, topic: Arc<TopicMeta>, partition: u32, node_id: i32) -> Rc<Self> {
        let assignment = topic.assignment(partition);
        Rc::new(Replica {
            log,
            partition,
            node_id,
            state: RefCell::new(State {
                topic,
                assignment,
                role: Role::None,
                followers: HashMap::new(),
                isr_change_in_flight: false,
                isr_change_retry_after: None,
                fetcher_stop: None,
                wakers: Vec::new(),
            }),
        })
    }

    pub fn role(&self) -> Role {
        self.state.borrow().role
    }

    pub fn assignment(&self) -> PartitionAssignment {
        self.state.borrow().assignment.clone()
    }

    pub fn topic(&self) -> Arc<TopicMeta> {
        self.state.borrow().topic.clone()
    }

    /// More than one replica: the high watermark is replication's to move.
    pub fn replicated(&self) -> bool {
        self.state.borrow().assignment.replicas.len() > 1
    }

    /// The leader epoch to stamp into produced batches, if this replica
    /// leads and `current_leader_epoch` (-1: unchecked) matches.
    pub fn check_leader(&self, current_leader_epoch: i32) -> Result<i32, Refusal> {
        let state = self.state.borrow();
        let epoch = state.assignment.leader_epoch;
        match state.role {
            Role::Leader => {}
            Role::Follower { .. } => return Err(Refusal(ErrorCode::NotLeaderOrFollower)),
            Role::None => return Err(Refusal(ErrorCode::LeaderNotAvailable)),
        }
        check_epoch(current_leader_epoch, epoch)?;
        Ok(epoch)
    }

    /// acks=all before the append: the ISR must hold min.insync.replicas.
    pub fn check_min_isr(&self, min_insync_replicas: usize) -> Result<(), Refusal> {
        let state = self.state.borrow();
        if state.assignment.isr.len() < min_insync_replicas {
            return Err(Refusal(ErrorCode::NotEnoughReplicas));
        }
        Ok(())
    }

    /// acks=all after the append: completes once the high watermark passes
    /// `offset_end` (every in-sync replica has the batch), or with the reason
    /// it never will here (leadership lost, log closed or failed).
    pub async fn wait_replicated(&self, offset_end: i64, leader_epoch: i32, min_insync_replicas: usize) -> ErrorCode {
        loop {
            {
                let state = self.state.borrow();
                if state.role != Role::Leader || state.assignment.leader_epoch != leader_epoch {
                    return ErrorCode::NotLeaderOrFollower;
                }
            }
            // Kafka's rule: a batch appended while the ISR is (or fell)
            // below the minimum is answered "appended, not safe"; the high
            // watermark does not move then (`advance_high_watermark`), so
            // waiting for it would only wait for the ISR to grow back.
            let isr = self.state.borrow().assignment.isr.len();
            if isr < min_insync_replicas {
                return ErrorCode::NotEnoughReplicasAfterAppend;
            }
            if self.log.high_watermark() >= offset_end {
                return ErrorCode::None;
            }
            if let Some(err) = self.log.failure() {
                return crate::shard::log_error_code(&err);
            }
            let changed = Changed { replica: self, seen: false };
            futures::select! {
                _ = futures::FutureExt::fuse(self.log.high_watermark_above(offset_end - 1)) => {}
                () = futures::FutureExt::fuse(changed) => {}
            }
        }
    }

    /// A leader's bookkeeping for a follower's fetch at `offset` (its log
    /// end) reporting `durable_offset` (what it has made durable; -1 for
    /// nothing known). Returns an error for a fetch the leader must refuse.
    pub fn record_follower_fetch(
        &self,
        shared: &Arc<Shared>,
        replica: &Rc<Self>,
        follower: i32,
        offset: i64,
        durable_offset: i64,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        let log_end = self.log.log_end_offset();
        {
            let mut state = self.state.borrow_mut();
            if state.role != Role::Leader {
                return Err(Refusal(ErrorCode::NotLeaderOrFollower));
            }
            if !state.assignment.replicas.contains(&follower) || follower == self.node_id {
                return Err(Refusal(ErrorCode::InvalidRequest));
            }
            if offset > log_end {
                return Err(Refusal(ErrorCode::OffsetOutOfRange));
            }
            // Nothing is durable on the follower that it does not have.
            let durable_offset = durable_offset.clamp(-1, offset);
            let progress = state.followers.entry(follower).or_insert(Progress {
                durable_offset,
                leader_end_at_last_fetch: log_end,
                last_fetch: now,
                last_caught_up: now,
            });
            // Caught up means caught up on disk: a follower whose disk
            // cannot keep up (a noisy neighbour, a throttled device) leaves
            // the ISR instead of holding acknowledgements it cannot keep.
            if durable_offset >= log_end {
                progress.last_caught_up = now;
            } else if durable_offset >= progress.leader_end_at_last_fetch {
                progress.last_caught_up = progress.last_caught_up.max(progress.last_fetch);
            }
            progress.durable_offset = durable_offset;
            progress.leader_end_at_last_fetch = log_end;
            progress.last_fetch = now;
        }
        self.advance_high_watermark();
        self.maybe_expand_isr(shared, replica, follower, durable_offset);
        Ok(())
    }

    /// The high watermark: the minimum over the in-sync replicas of what
    /// each has made durable (the leader counts what it has acknowledged
    /// under its durability policy, followers what they reported).
    /// Followers the leader has not heard from since it took over hold it
    /// where it is, and so does an ISR below min.insync.replicas (KIP-966):
    /// the members it lost then are the partition's eligible leader
    /// replicas, which the controller may elect because they hold
    /// everything up to the high watermark; were it to move on with the
    /// leader alone, consumers could read acks=1 records that such a
    /// leader never had, and then other records at the same offsets.
    pub fn advance_high_watermark(&self) {
        let state = self.state.borrow();
        if state.role != Role::Leader || state.assignment.replicas.len() <= 1 {
            return;
        }
        if state.assignment.isr.len() < crate::shard::min_insync_replicas(&state.topic) {
            return;
        }
        let mut high_watermark = self.log.ack_offset();
        for member in &state.assignment.isr {
            if *member == self.node_id {
                continue;
            }
            match state.followers.get(member) {
                Some(progress) => high_watermark = high_watermark.min(progress.durable_offset),
                None => return,
            }
        }
        drop(state);
        self.log.set_high_watermark(high_watermark);
    }

    /// A follower outside the ISR that has made durable everything up to
    /// the high watermark (and everything this leader's epoch wrote below
    /// it) asks to join.
    fn maybe_expand_isr(&self, shared: &Arc<Shared>, replica: &Rc<Self>, follower: i32, durable_offset: i64) {
        let request = {
            let state = self.state.borrow();
            if !state.may_ask_isr_change(Instant::now()) || state.assignment.isr.contains(&follower) {
                return;
            }
            // KIP-841: a fenced broker (the controller lost its heartbeats)
            // may fetch but may not join; the controller would refuse.
            if shared.catalog.load().brokers.get(&follower).is_none_or(|broker| broker.fenced) {
                return;
            }
            let epoch_start = self
                .log
                .leader_epochs()
                .entries()
                .iter()
                .find(|entry| entry.epoch == state.assignment.leader_epoch)
                .map_or(0, |entry| entry.start_offset);
            if durable_offset < self.log.high_watermark() || durable_offset < epoch_start {
                return;
            }
            let mut isr = state.assignment.isr.clone();
            isr.push(follower);
            isr.sort_unstable();
            isr
        };
        tracing::info!(topic = %self.topic().name, partition = self.partition, follower, "follower caught up: asking to add it to the ISR");
        self.alter_isr(shared, replica, request);
    }

    /// Followers that have not caught up within `lag_max` leave the ISR
    /// (through the controller). Called periodically on leaders.
    pub fn maybe_shrink_isr(&self, shared: &Arc<Shared>, replica: &Rc<Self>, lag_max: Duration) {
        let now = Instant::now();
        let request = {
            let state = self.state.borrow();
            if state.role != Role::Leader || !state.may_ask_isr_change(now) {
                return;
            }
            let log_end = self.log.log_end_offset();
            let lagging: Vec<i32> = state
                .assignment
                .isr
                .iter()
                .copied()
                .filter(|member| *member != self.node_id)
                .filter(|member| match state.followers.get(member) {
                    Some(progress) => {
                        progress.durable_offset < log_end && now.duration_since(progress.last_caught_up) > lag_max
                    }
                    // Never heard from since this leader took over.
                    None => false,
                })
                .collect();
            if lagging.is_empty() {
                return;
            }
            tracing::warn!(topic = %state.topic.name, partition = self.partition, ?lagging, "followers lag: asking to shrink the ISR");
            state.assignment.isr.iter().copied().filter(|m| !lagging.contains(m)).collect::<Vec<_>>()
        };
        self.alter_isr(shared, replica, request);
    }

    fn alter_isr(&self, shared: &Arc<Shared>, replica: &Rc<Self>, new_isr: Vec<i32>) {
        let (topic, leader_epoch, partition_epoch) = {
            let mut state = self.state.borrow_mut();
            state.isr_change_in_flight = true;
            (state.topic.name.clone(), state.assignment.leader_epoch, state.assignment.partition_epoch)
        };
        let request =
            shared.alter_partition(topic, self.partition, self.node_id, leader_epoch, partition_epoch, new_isr);
        let replica = replica.clone();
        glommio::spawn_local(async move {
            let result = request.await;
            replica.state.borrow_mut().isr_change_in_flight = false;
            match result {
                Ok(assignment) => replica.apply_isr(assignment),
                Err(err) => {
                    tracing::warn!(partition = replica.partition, "ISR change refused: {err}");
                    let retry = Instant::now() + Duration::from_millis(ISR_CHANGE_RETRY_MS);
                    replica.state.borrow_mut().isr_change_retry_after = Some(retry);
                }
            }
        })
        .detach();
    }

    /// A committed ISR change for the epoch this replica leads (from the
    /// controller's answer, or the metadata that carries the same change).
    fn apply_isr(&self, assignment: PartitionAssignment) {
        {
            let mut state = self.state.borrow_mut();
            if assignment.leader_epoch != state.assignment.leader_epoch
                || assignment.partition_epoch <= state.assignment.partition_epoch
            {
                return;
            }
            state.assignment = assignment;
        }
        self.advance_high_watermark();
        self.wake();
    }

    /// New metadata for this partition. Returns the role it now has; a new
    /// follower role (or a new leader epoch to follow) starts a fetcher.
    pub fn apply_metadata(self: &Rc<Self>, shared: &Arc<Shared>, topic: Arc<TopicMeta>) {
        let assignment = topic.assignment(self.partition);
        let node_id = self.node_id;
        let (start_fetcher, became_leader) = {
            let mut state = self.state.borrow_mut();
            state.topic = topic;
            let same_epoch = assignment.leader_epoch == state.assignment.leader_epoch;
            if same_epoch && assignment.partition_epoch < state.assignment.partition_epoch {
                // Older news than the controller's answer we applied.
                return;
            }
            let role = if assignment.leader == node_id {
                Role::Leader
            } else if assignment.leader >= 0 && assignment.replicas.contains(&node_id) {
                Role::Follower { leader: assignment.leader }
            } else {
                Role::None
            };
            let role_changed = role != state.role || !same_epoch;
            if assignment != state.assignment {
                // News from the controller: an ISR change may be due again.
                state.isr_change_retry_after = None;
            }
            state.assignment = assignment;
            if !role_changed {
                (false, false)
            } else {
                tracing::info!(topic = %state.topic.name, partition = self.partition, ?role, leader_epoch = state.assignment.leader_epoch, "replica role");
                state.role = role;
                state.fetcher_stop = None;
                state.followers.clear();
                (matches!(role, Role::Follower { .. }), role == Role::Leader)
            }
        };
        if became_leader {
            // Followers in the ISR get a full lag period from now to show
            // up; until one has fetched, what it holds is unknown (-1) and
            // holds the high watermark where it is.
            let now = Instant::now();
            let mut state = self.state.borrow_mut();
            let members: Vec<i32> = state.assignment.isr.iter().copied().filter(|m| *m != node_id).collect();
            for member in members {
                state.followers.insert(
                    member,
                    Progress {
                        durable_offset: -1,
                        leader_end_at_last_fetch: i64::MAX,
                        last_fetch: now,
                        last_caught_up: now,
                    },
                );
            }
            state.isr_change_in_flight = false;
        }
        if start_fetcher {
            let (stop_tx, stop_rx) = oneshot::channel();
            self.state.borrow_mut().fetcher_stop = Some(stop_tx);
            fetcher::spawn(shared.clone(), self.clone(), stop_rx);
        }
        self.advance_high_watermark();
        self.wake();
    }

    /// Stops the fetcher and wakes waiters (the partition is closing).
    pub fn stop(&self) {
        let mut state = self.state.borrow_mut();
        state.role = Role::None;
        state.fetcher_stop = None;
        drop(state);
        self.wake();
    }

    fn wake(&self) {
        let wakers = std::mem::take(&mut self.state.borrow_mut().wakers);
        for waker in wakers {
            waker.wake();
        }
    }
}

/// A request's leader epoch against this replica's.
pub(crate) fn check_epoch(requested: i32, current: i32) -> Result<(), Refusal> {
    if requested < 0 || requested == current {
        Ok(())
    } else if requested < current {
        Err(Refusal(ErrorCode::FencedLeaderEpoch))
    } else {
        Err(Refusal(ErrorCode::UnknownLeaderEpoch))
    }
}

/// Completes at the next role or ISR change.
struct Changed<'a> {
    replica: &'a Replica,
    seen: bool,
}

impl std::future::Future for Changed<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.seen {
            return std::task::Poll::Ready(());
        }
        self.seen = true;
        self.replica.state.borrow_mut().wakers.push(cx.waker().clone());
        std::task::Poll::Pending
    }
}
