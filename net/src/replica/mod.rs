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
use spate_replication::ControllerError;

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
    /// Members of ISR changes asked for that the controller may have
    /// committed while this replica's view does not show them yet: they
    /// count toward the high watermark as if in the ISR (Kafka's maximal
    /// ISR). Without this, a follower asked into the ISR at its durable
    /// offset D was ignored until the answer came, the high watermark
    /// moved past D on the old ISR alone, and once the controller had
    /// committed the follower it could be elected without records
    /// acknowledged meanwhile.
    isr_change_pending: Option<PendingIsr>,
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

/// The members an ISR change asks to add, against the partition epoch it
/// was asked at. Once this replica's view has a later partition epoch (or
/// another leader epoch), that view shows what became of the request: the
/// controller commits it only at the epoch it names.
#[derive(Debug, Clone)]
struct PendingIsr {
    leader_epoch: i32,
    partition_epoch: i32,
    added: Vec<i32>,
    /// The controller's answer was lost (a timeout, a shutdown): it may
    /// still have committed the change, so only a later view settles it.
    uncertain: bool,
}

impl State {
    /// A pending change that this replica's view does not settle yet.
    fn live_pending(&self) -> Option<&PendingIsr> {
        self.isr_change_pending.as_ref().filter(|pending| {
            pending.leader_epoch == self.assignment.leader_epoch
                && pending.partition_epoch >= self.assignment.partition_epoch
        })
    }

    /// The replicas the high watermark waits for: the ISR and every member
    /// a pending change may have added to it.
    fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.assignment.isr.clone();
        if let Some(pending) = self.live_pending() {
            isr.extend(pending.added.iter().filter(|member| !self.assignment.isr.contains(member)));
        }
        isr
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
                isr_change_pending: None,
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
        let durable_offset = self.note_follower_fetch(follower, offset, durable_offset)?;
        self.advance_high_watermark();
        // KIP-841: a fenced broker (the controller lost its heartbeats)
        // may fetch but may not join; the controller would refuse.
        if let Some(isr) = self.isr_expansion(follower, durable_offset)
            && shared.catalog.load().brokers.get(&follower).is_some_and(|broker| !broker.fenced)
        {
            tracing::info!(topic = %self.topic().name, partition = self.partition, follower, "follower caught up: asking to add it to the ISR");
            self.alter_isr(shared, replica, isr);
        }
        Ok(())
    }

    /// `record_follower_fetch`'s bookkeeping: the follower's progress.
    /// Returns its durable offset as counted.
    fn note_follower_fetch(&self, follower: i32, offset: i64, durable_offset: i64) -> Result<i64, Refusal> {
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
            Ok(durable_offset)
        }
    }

    /// The high watermark: the minimum over the in-sync replicas of what
    /// each has made durable (the leader counts what it has acknowledged
    /// under its durability policy, followers what they reported). A
    /// follower asked into the ISR counts from the moment it is asked for
    /// (`State::maximal_isr`): the controller may commit it before this
    /// leader hears back, and from then on it may be elected.
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
        for member in &state.maximal_isr() {
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
    /// it) asks to join: the ISR to ask for, if any.
    fn isr_expansion(&self, follower: i32, durable_offset: i64) -> Option<Vec<i32>> {
        let state = self.state.borrow();
        if !state.may_ask_isr_change(Instant::now()) || state.assignment.isr.contains(&follower) {
            return None;
        }
        let epoch_start = self
            .log
            .leader_epochs()
            .entries()
            .iter()
            .find(|entry| entry.epoch == state.assignment.leader_epoch)
            .map_or(0, |entry| entry.start_offset);
        if durable_offset < self.log.high_watermark() || durable_offset < epoch_start {
            return None;
        }
        let mut isr = state.assignment.isr.clone();
        isr.push(follower);
        isr.sort_unstable();
        Some(isr)
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
                // A change whose answer was lost holds the high watermark
                // on its members until a later view settles it; asking
                // for the ISR as it is brings one (committed: a new
                // partition epoch; refused as stale: one is on its way).
                if !state.live_pending().is_some_and(|pending| pending.uncertain) {
                    return;
                }
                state.assignment.isr.clone()
            } else {
                tracing::warn!(topic = %state.topic.name, partition = self.partition, ?lagging, "followers lag: asking to shrink the ISR");
                state.assignment.isr.iter().copied().filter(|m| !lagging.contains(m)).collect::<Vec<_>>()
            }
        };
        self.alter_isr(shared, replica, request);
    }

    fn alter_isr(&self, shared: &Arc<Shared>, replica: &Rc<Self>, new_isr: Vec<i32>) {
        let (topic, leader_epoch, partition_epoch) = self.begin_isr_change(&new_isr);
        let request =
            shared.alter_partition(topic, self.partition, self.node_id, leader_epoch, partition_epoch, new_isr);
        let replica = replica.clone();
        glommio::spawn_local(async move {
            let result = request.await;
            replica.finish_isr_change(leader_epoch, partition_epoch, result);
        })
        .detach();
    }

    /// An ISR change is about to be asked for: one at a time, and the
    /// members it adds count toward the high watermark from now on (the
    /// controller may commit them before the answer arrives). Returns the
    /// topic and the epochs the request names.
    fn begin_isr_change(&self, new_isr: &[i32]) -> (String, i32, i32) {
        let mut state = self.state.borrow_mut();
        state.isr_change_in_flight = true;
        let (leader_epoch, partition_epoch) = (state.assignment.leader_epoch, state.assignment.partition_epoch);
        let added: Vec<i32> = new_isr.iter().copied().filter(|member| !state.assignment.isr.contains(member)).collect();
        let pending = match state.isr_change_pending.take() {
            // An earlier change at the same epochs whose answer was lost.
            Some(mut pending) if pending.leader_epoch == leader_epoch && pending.partition_epoch == partition_epoch => {
                for member in added {
                    if !pending.added.contains(&member) {
                        pending.added.push(member);
                    }
                }
                pending
            }
            _ => PendingIsr { leader_epoch, partition_epoch, added, uncertain: false },
        };
        state.isr_change_pending = Some(pending);
        (state.topic.name.clone(), leader_epoch, partition_epoch)
    }

    /// The controller's answer to the ISR change asked at these epochs.
    fn finish_isr_change(
        &self,
        leader_epoch: i32,
        partition_epoch: i32,
        result: Result<PartitionAssignment, ControllerError>,
    ) {
        {
            let mut state = self.state.borrow_mut();
            state.isr_change_in_flight = false;
            let ours = state.isr_change_pending.as_ref().is_some_and(|pending| {
                pending.leader_epoch == leader_epoch && pending.partition_epoch == partition_epoch
            });
            if ours {
                match &result {
                    // Committed: the answer (or the metadata, whichever
                    // comes first) carries it.
                    Ok(_) => state.isr_change_pending = None,
                    // Refused: nothing was committed, unless an earlier
                    // answer at these epochs was lost.
                    Err(err) if refusal(err) => {
                        if state.isr_change_pending.as_ref().is_some_and(|pending| !pending.uncertain) {
                            state.isr_change_pending = None;
                        }
                    }
                    Err(_) => {
                        if let Some(pending) = state.isr_change_pending.as_mut() {
                            pending.uncertain = true;
                        }
                    }
                }
            }
        }
        match result {
            Ok(assignment) => self.apply_isr(assignment),
            Err(err) => {
                tracing::warn!(partition = self.partition, "ISR change refused: {err}");
                let retry = Instant::now() + Duration::from_millis(ISR_CHANGE_RETRY_MS);
                self.state.borrow_mut().isr_change_retry_after = Some(retry);
                // A refused addition no longer holds the high watermark.
                self.advance_high_watermark();
            }
        }
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
                state.isr_change_pending = None;
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
            state.isr_change_pending = None;
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

/// Whether the controller decided against the request (so committed
/// nothing), rather than the answer being lost on the way (a timeout, a
/// shutdown, a storage error), after which the request may still commit.
fn refusal(err: &ControllerError) -> bool {
    !matches!(err, ControllerError::NotController | ControllerError::Shutdown | ControllerError::Storage(_))
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use spate_engine::io::DmaStorage;
    use spate_engine::{Durability, LogConfig, PartitionLog, TailCache};
    use spate_format::batch::BatchBuilder;

    use super::*;

    const LEADER_EPOCH: i32 = 4;
    const PARTITION_EPOCH: i32 = 9;

    fn records(count: usize) -> BytesMut {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        for i in 0..count {
            builder.push(1_700_000_000_000 + i as i64, None, Some(format!("v{i}").as_bytes()), &[]);
        }
        BytesMut::from(&builder.build()[..])
    }

    fn assignment(isr: Vec<i32>, partition_epoch: i32) -> PartitionAssignment {
        PartitionAssignment {
            replicas: vec![1, 2, 3],
            isr,
            leader: 1,
            leader_epoch: LEADER_EPOCH,
            partition_epoch,
            elr: Vec::new(),
        }
    }

    /// Broker 1 leading a partition on replicas 1, 2, 3 (min.insync.replicas
    /// 2, durability `always`), whose ISR is {1, 2}: 3 restarted and is
    /// catching up.
    async fn leader(dir: &std::path::Path) -> Rc<Replica> {
        let config =
            LogConfig { durability: Durability::Always, high_watermark_follows_acks: false, ..LogConfig::default() };
        let log = PartitionLog::open(DmaStorage, dir, config, TailCache::new(1 << 20)).await.expect("open");
        let topic = Arc::new(TopicMeta {
            name: "t".into(),
            topic_id: "t-id".into(),
            partitions: 1,
            replication_factor: 3,
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
            assignments: vec![assignment(vec![1, 2], PARTITION_EPOCH)],
        });
        let replica = Replica::new(log, topic, 0, 1);
        replica.state.borrow_mut().role = Role::Leader;
        replica
    }

    /// Appends `count` records as the leader and waits until they are synced.
    async fn produce(replica: &Replica, count: usize) -> i64 {
        let ticket = replica.log.append(records(count), LEADER_EPOCH).expect("append");
        ticket.durable().await.expect("durable");
        replica.log.log_end_offset()
    }

    fn run(name: &str, test: impl AsyncFnOnce(&std::path::Path) + 'static) {
        let dir = std::env::temp_dir().join(format!("spate-replica-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let inner = dir.clone();
        glommio::LocalExecutorBuilder::default().make().expect("executor").run(async move { test(&inner).await });
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The CI failure of cluster_e2e's KIP-101 test: follower 3, restarted,
    /// caught up to the high watermark (100) and the leader asked the
    /// controller to add it to the ISR. While the request was on its way
    /// the leader went on acknowledging on the ISR it knew, {1, 2}, up to
    /// 150; the controller committed {1, 2, 3}; the leader died before 3
    /// fetched past 100, and 3, first in the replica order, was elected
    /// without 100..150 (80 acknowledged records lost, and the other two
    /// replicas truncated to its end of the epoch). Every record below the
    /// high watermark must be on every replica the controller may hold
    /// in the ISR.
    #[test]
    fn a_follower_asked_into_the_isr_holds_the_high_watermark_before_the_controller_answers() {
        run("expand", async |dir| {
            let leader = leader(dir).await;
            let end = produce(&leader, 100).await;
            leader.note_follower_fetch(2, end, end).expect("fetch 2");
            leader.advance_high_watermark();
            assert_eq!(leader.log.high_watermark(), 100);
            leader.note_follower_fetch(3, end, end).expect("fetch 3");
            let isr = leader.isr_expansion(3, end).expect("3 caught up: asks to join");
            assert_eq!(isr, vec![1, 2, 3]);
            let (_, leader_epoch, partition_epoch) = leader.begin_isr_change(&isr);
            // The request is at the controller; 2 keeps up, 3 does not fetch.
            let end = produce(&leader, 50).await;
            leader.note_follower_fetch(2, end, end).expect("fetch 2");
            leader.advance_high_watermark();
            assert_eq!(leader.log.high_watermark(), 100, "acknowledged past what 3 has while it may join the ISR");
            // The controller committed it.
            leader.finish_isr_change(leader_epoch, partition_epoch, Ok(assignment(vec![1, 2, 3], PARTITION_EPOCH + 1)));
            assert_eq!(leader.assignment().isr, vec![1, 2, 3]);
            assert_eq!(leader.log.high_watermark(), 100, "3, now electable, lacks what is below the high watermark");
            leader.note_follower_fetch(3, end, end).expect("fetch 3");
            leader.advance_high_watermark();
            assert_eq!(leader.log.high_watermark(), 150);
        });
    }

    /// A refused addition stops counting at once; one whose answer was
    /// lost (the controller may still commit it) counts until a view with
    /// a later partition epoch shows what became of it.
    #[test]
    fn a_refused_addition_releases_the_high_watermark_and_a_lost_answer_holds_it_until_new_metadata() {
        run("settle", async |dir| {
            let leader = leader(dir).await;
            let end = produce(&leader, 100).await;
            leader.note_follower_fetch(2, end, end).expect("fetch 2");
            leader.note_follower_fetch(3, end, end).expect("fetch 3");
            let isr = leader.isr_expansion(3, end).expect("asks");
            let (_, leader_epoch, partition_epoch) = leader.begin_isr_change(&isr);
            let end = produce(&leader, 50).await;
            leader.note_follower_fetch(2, end, end).expect("fetch 2");
            leader.finish_isr_change(leader_epoch, partition_epoch, Err(ControllerError::InvalidUpdateVersion));
            assert_eq!(leader.log.high_watermark(), 150, "refused: 3 is not in the ISR");

            leader.state.borrow_mut().isr_change_retry_after = None;
            leader.note_follower_fetch(3, end, end).expect("fetch 3");
            let isr = leader.isr_expansion(3, end).expect("asks again");
            let (_, leader_epoch, partition_epoch) = leader.begin_isr_change(&isr);
            let end = produce(&leader, 50).await;
            leader.note_follower_fetch(2, end, end).expect("fetch 2");
            leader.finish_isr_change(leader_epoch, partition_epoch, Err(ControllerError::NotController));
            leader.advance_high_watermark();
            assert_eq!(leader.log.high_watermark(), 150, "the answer was lost: 3 may be in the ISR");
            // A refusal of a later ask at the same epochs does not settle
            // the lost one (it may be why the epoch moved).
            leader.state.borrow_mut().isr_change_retry_after = None;
            let (_, leader_epoch, partition_epoch) = leader.begin_isr_change(&[1, 2, 3]);
            leader.finish_isr_change(leader_epoch, partition_epoch, Err(ControllerError::InvalidUpdateVersion));
            assert_eq!(leader.log.high_watermark(), 150, "still unsettled");
            // The metadata shows it was not committed.
            leader.apply_isr(assignment(vec![1, 2], PARTITION_EPOCH + 1));
            assert_eq!(leader.log.high_watermark(), 200);
        });
    }
}
