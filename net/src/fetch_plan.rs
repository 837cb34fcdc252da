//! A fetch as the shard core serves it, for every front-end (native and
//! Kafka): the answer's byte limit within the frame cap and the byte
//! budgets, that limit shared among the partitions (so one request cannot
//! start a disk read per entry within any budget), each partition read on
//! its owner, the long poll when there is too little, and the batches kept
//! within the limit. The front-ends parse requests and write answers.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use spate_flatbuf::proto::ErrorCode;

use crate::budget::Charge;
use crate::catalog::TopicMeta;
use crate::limits::FETCH_PARTITION_BYTES_MIN;
use crate::shard::{ReadResult, Shard, ShardOp};

/// The most a fetch's answer may hold: what it asks (`asked_bytes`), within
/// the frames clients accept (room left for the envelope) and the room left
/// in the connection's and the shard's byte budgets, where it is charged
/// now: a smaller answer, not a wait, so a full budget slows a consumer
/// down instead of stopping it (at least one minimum partition slice is
/// always read). `request_bytes` is the request's own size.
pub(crate) fn answer_bytes_max(shard: &Shard, charge: &Charge, asked_bytes: usize, request_bytes: usize) -> usize {
    let frame_room = shard.shared.config.frame_bytes_max.saturating_sub(1 << 20).max(1);
    let budget_room = charge.budgets().room_bytes().max(FETCH_PARTITION_BYTES_MIN);
    let bytes_max = asked_bytes.max(1).min(frame_room).min(budget_room);
    charge.resize(request_bytes + bytes_max);
    bytes_max
}

/// One partition's read.
#[derive(Debug, Clone)]
pub(crate) struct ReadPart {
    /// None: unknown topic or partition.
    pub target: Option<(Arc<TopicMeta>, u32)>,
    pub offset: i64,
    /// 0: left out (the request's budget went to earlier partitions).
    pub bytes_max: usize,
    /// -1: unchecked.
    pub current_leader_epoch: i32,
    /// Replica fetches: what the follower has made durable (-1: unknown).
    pub replica_durable_offset: i64,
    /// Kafka consumers with isolation.level=read_committed: up to the last
    /// stable offset, with the aborted transactions.
    pub read_committed: bool,
}

/// A partition's read as submitted to its owner.
enum Submitted {
    Unknown,
    OverBudget,
    Waiting(oneshot::Receiver<ReadResult>),
}

fn submit(shard: &Rc<Shard>, part: &ReadPart, wait_until: Option<Instant>, replica_id: i32) -> Submitted {
    let Some((topic, partition)) = part.target.clone() else { return Submitted::Unknown };
    if part.bytes_max == 0 {
        return Submitted::OverBudget;
    }
    let (reply, wait) = oneshot::channel();
    let owner = shard.shared.owner(&topic.name, partition);
    shard.submit(
        owner,
        ShardOp::Fetch {
            topic,
            partition,
            offset: part.offset,
            bytes_max: part.bytes_max,
            wait_until,
            replica_id,
            current_leader_epoch: part.current_leader_epoch,
            replica_durable_offset: part.replica_durable_offset,
            read_committed: part.read_committed,
            reply,
        },
    );
    Submitted::Waiting(wait)
}

fn no_read() -> ReadResult {
    ReadResult {
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        log_end_offset: -1,
        ..Default::default()
    }
}

async fn collect(submitted: Submitted) -> ReadResult {
    match submitted {
        Submitted::Unknown => ReadResult { error: ErrorCode::UnknownTopicOrPartition, ..no_read() },
        Submitted::OverBudget => no_read(),
        Submitted::Waiting(wait) => {
            wait.await.unwrap_or(ReadResult { error: ErrorCode::BrokerShuttingDown, ..no_read() })
        }
    }
}

/// What a fetch waits for besides its first reads.
#[derive(Debug, Clone)]
pub(crate) struct Poll {
    /// A follower's node id, or -1 for a consumer.
    pub replica_id: i32,
    pub min_bytes: usize,
    pub max_wait: Duration,
    /// The request's own bytes, charged beside what it has read.
    pub request_bytes: usize,
    pub charge: Charge,
}

/// The first reads, submitted to their owners at once (in request order,
/// before anything else the connection sends).
pub(crate) struct Reads {
    first: Vec<Submitted>,
    started: Instant,
}

pub(crate) fn start(shard: &Rc<Shard>, parts: &[ReadPart], replica_id: i32) -> Reads {
    Reads { first: parts.iter().map(|part| submit(shard, part, None, replica_id)).collect(), started: Instant::now() }
}

/// Every partition's result: the first reads, and, when they hold less
/// than `min_bytes` and nothing failed, a long poll on every partition
/// that answers when the first has data or the wait ends (dropping the
/// others cancels them). While it waits the request holds only what it has
/// read, so idle consumers do not fill the budgets; the partition that
/// answers reads within its share of the request as before (new data at
/// the log's tail, mostly shared with the tail cache), charged once the
/// answer is built.
pub(crate) async fn finish(shard: &Rc<Shard>, parts: &[ReadPart], reads: Reads, poll: &Poll) -> Vec<ReadResult> {
    let mut results = Vec::with_capacity(reads.first.len());
    for wait in reads.first {
        results.push(collect(wait).await);
    }
    let bytes: usize = results.iter().map(ReadResult::bytes).sum();
    let any_error = results.iter().any(|r| r.error != ErrorCode::None);
    if bytes < poll.min_bytes.max(1) && !poll.max_wait.is_zero() && !any_error {
        poll.charge.resize(poll.request_bytes + bytes);
        let deadline = reads.started + poll.max_wait;
        let waits: Vec<_> = parts
            .iter()
            .enumerate()
            .filter_map(|(i, part)| match submit(shard, part, Some(deadline), poll.replica_id) {
                wait @ Submitted::Waiting(_) => Some(Box::pin(async move { (i, collect(wait).await) })),
                Submitted::Unknown | Submitted::OverBudget => None,
            })
            .collect();
        if !waits.is_empty() {
            let ((i, result), _, _) = futures::future::select_all(waits).await;
            results[i] = result;
        }
    }
    results
}

/// The batches of one partition's result that go in the answer: at least
/// one batch always goes (so a consumer can pass a batch larger than its
/// limits), after that only within the request's limit. `payload_bytes`
/// counts the answer's bytes so far.
pub(crate) fn within_limit(batches: Vec<Bytes>, payload_bytes: &mut usize, request_bytes_max: usize) -> Vec<Bytes> {
    let mut kept = Vec::with_capacity(batches.len());
    for batch in batches {
        if *payload_bytes > 0 && *payload_bytes + batch.len() > request_bytes_max {
            break;
        }
        *payload_bytes += batch.len();
        kept.push(batch);
    }
    kept
}

/// A fetch request's byte budget as it is handed to its partitions.
#[derive(Debug)]
pub(crate) struct FetchBudget {
    left_bytes: usize,
}

impl FetchBudget {
    pub(crate) fn new(request_bytes_max: usize) -> Self {
        FetchBudget { left_bytes: request_bytes_max }
    }

    /// The bytes the next partition may read (0: none, it is left out).
    /// It may read what it asks for, within what is left, but uses up at
    /// least `FETCH_PARTITION_BYTES_MIN` of the budget.
    pub(crate) fn take(&mut self, partition_bytes_max: i32) -> usize {
        let bytes_max = (partition_bytes_max.max(1) as usize).min(self.left_bytes);
        let used = bytes_max.max(FETCH_PARTITION_BYTES_MIN).min(self.left_bytes);
        self.left_bytes -= used;
        bytes_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 14: before the minimum slice, 10,000 entries asking for one byte
    // each all fit a 64 MiB budget, and each started a read returning at
    // least one batch.
    #[test]
    fn tiny_partition_budgets_use_up_a_minimum_slice_of_the_request() {
        let request_bytes_max = 64 << 20;
        let mut budget = FetchBudget::new(request_bytes_max);
        let reads = (0..10_000).filter(|_| budget.take(1) > 0).count();
        assert_eq!(reads, request_bytes_max / FETCH_PARTITION_BYTES_MIN);
        // A partition asking for more than the minimum gets what it asks.
        let mut budget = FetchBudget::new(request_bytes_max);
        assert_eq!(budget.take(1 << 20), 1 << 20);
        assert_eq!(budget.take(1), 1, "within what is left, a small ask is served as asked");
        // The last partition gets what is left, however little.
        let mut budget = FetchBudget::new(FETCH_PARTITION_BYTES_MIN + 10);
        assert_eq!(budget.take(i32::MAX), FETCH_PARTITION_BYTES_MIN + 10);
        assert_eq!(budget.take(1), 0);
    }
}
