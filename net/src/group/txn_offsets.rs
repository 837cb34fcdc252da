//! Offsets committed inside a transaction (Kafka's TxnOffsetCommit, the
//! "consume" half of exactly-once consume-transform-produce).
//!
//! The coordinator appends them as a transactional batch under the
//! producer's id and epoch to the group's partition of
//! `__consumer_offsets`, which the transaction coordinator has added to
//! the transaction (AddOffsetsToTxn). They are pending, invisible to
//! OffsetFetch, until the transaction's marker lands on that partition: a
//! commit marker makes them the group's committed offsets, an abort marker
//! drops them (`txn_marker_written`, and the same rule when a log is
//! replayed: `apply_batch`). The engine's producer state fences an older
//! epoch (a zombie's commit is refused), so the same rules that protect
//! a transactional producer's data protect its offsets.

use std::collections::BTreeSet;
use std::rc::Rc;

use futures::channel::oneshot;
use spate_flatbuf::CONSUMER_OFFSETS_TOPIC;
use spate_flatbuf::proto::ErrorCode;
use spate_format::batch::BatchBuilder;

use super::record::GroupRecord;
use super::{Groups, Tp, append_batch, check_offsets, classic, now_ms, written};
use crate::limits::TXN_OFFSETS_PENDING_PER_SHARD_MAX;
use crate::shard::{Outcome, Shard};

/// One offset a transaction committed for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub group: String,
    pub tp: Tp,
    pub offset: i64,
}

/// Adds `pending` to a transaction's offsets: a later commit of the same
/// group and partition in the transaction replaces the earlier one (as the
/// marker would), so repeated commits take no more room.
pub(crate) fn add_pending(offsets: &mut Vec<Pending>, pending: Pending) {
    match offsets.iter_mut().find(|p| p.group == pending.group && p.tp == pending.tp) {
        Some(existing) => existing.offset = pending.offset,
        None => offsets.push(pending),
    }
}

/// A TxnOffsetCommit for one group, as the Kafka front-end decoded it.
#[derive(Debug)]
pub(crate) struct TxnCommit {
    pub group_id: String,
    /// Kafka's v3+ member fields: checked as an OffsetCommit's are when
    /// given (a member id, or a generation at or above 0); v0-2 and
    /// producers outside the group send none.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub generation_id: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub offsets: Vec<(Tp, i64)>,
    /// Kafka's error code for every partition (0: committed, pending).
    pub reply: oneshot::Sender<i16>,
}

impl TxnCommit {
    pub(crate) fn refuse(self, outcome: Outcome) {
        let _ = self.reply.send(classic::kafka_code(outcome.error));
    }
}

/// The partitions of `group_id` (coordinated here, on `partition`) that a
/// transaction still open has committed an offset for.
pub(crate) fn unstable(groups: &Groups, partition: u32, group_id: &str) -> BTreeSet<Tp> {
    groups
        .txn_offsets
        .borrow()
        .iter()
        .filter(|((p, _), _)| *p == partition)
        .flat_map(|(_, pending)| pending.iter().filter(|p| p.group == group_id).map(|p| p.tp.clone()))
        .collect()
}

/// Appends the offsets as the producer's transactional batch, then (once
/// durable on the in-sync replicas) holds them pending until the
/// transaction's marker.
pub(crate) fn commit(shard: &Rc<Shard>, op: TxnCommit, partition: u32, term: u64) {
    let TxnCommit {
        group_id,
        member_id,
        group_instance_id,
        generation_id,
        producer_id,
        producer_epoch,
        offsets,
        reply,
    } = op;
    if producer_id < 0 || producer_epoch < 0 {
        let _ = reply.send(KAFKA_INVALID_PRODUCER_ID_MAPPING);
        return;
    }
    let catalog = shard.shared.catalog.load_full();
    let mut kafka_refusal = None;
    let pending_count: usize = shard.groups.txn_offsets.borrow().values().map(Vec::len).sum();
    let checked = check_offsets(&catalog, &offsets).and_then(|()| {
        if pending_count + offsets.len() > TXN_OFFSETS_PENDING_PER_SHARD_MAX {
            return Err(Outcome::err(
                ErrorCode::InvalidRequest,
                format!("over {TXN_OFFSETS_PENDING_PER_SHARD_MAX} offsets of open transactions on this shard"),
            ));
        }
        let in_group = !member_id.is_empty() || generation_id >= 0 || group_instance_id.is_some();
        let groups = shard.groups.groups.borrow();
        match groups.get(&group_id) {
            Some(group) if in_group => classic::check_commit(
                group,
                &member_id,
                group_instance_id.as_deref(),
                generation_id,
                std::time::Instant::now(),
            )
            .map_err(|(code, outcome)| {
                kafka_refusal = Some(code);
                outcome
            }),
            // A producer outside the group (v0-2, or no member fields):
            // Kafka does not check membership.
            _ => Ok(()),
        }
    });
    // Checked and appended in one synchronous step, as plain commits are.
    let write = checked.and_then(|()| {
        let records: Vec<GroupRecord> = offsets
            .iter()
            .map(|((topic, p), offset)| GroupRecord::Offset {
                group: group_id.clone(),
                topic: topic.clone(),
                partition: *p,
                offset: Some(*offset),
            })
            .collect();
        let topic = catalog
            .topics
            .get(CONSUMER_OFFSETS_TOPIC)
            .ok_or_else(|| Outcome::err(ErrorCode::NotReady, format!("{CONSUMER_OFFSETS_TOPIC} is not open here")))?;
        // Read and used in this synchronous step: no other append to the
        // partition comes between.
        let sequence = shard.log(topic, partition).map_or(0, |log| next_sequence(&log, producer_id, producer_epoch));
        let batch = transactional_batch(&records, producer_id, producer_epoch, sequence);
        append_batch(shard, topic, partition, batch, &group_id)
    });
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let stored = written(write).await;
        if stored.error == ErrorCode::None && shard.groups.is_current(partition, term) {
            let mut txn_offsets = shard.groups.txn_offsets.borrow_mut();
            let held = txn_offsets.entry((partition, producer_id)).or_default();
            for (tp, offset) in offsets {
                add_pending(held, Pending { group: group_id.clone(), tp, offset });
            }
        }
        let code = match stored.error {
            ErrorCode::None => 0,
            // The log fenced an older epoch: a zombie's commit.
            ErrorCode::InvalidProducerEpoch => KAFKA_INVALID_PRODUCER_EPOCH,
            _ => kafka_refusal.unwrap_or_else(|| classic::kafka_code(stored.error)),
        };
        let _ = reply.send(code);
    })
    .detach();
}

/// Kafka's INVALID_PRODUCER_ID_MAPPING: no such producer id.
const KAFKA_INVALID_PRODUCER_ID_MAPPING: i16 = 49;
/// Kafka's INVALID_PRODUCER_EPOCH: a newer epoch of the producer exists.
const KAFKA_INVALID_PRODUCER_EPOCH: i16 = 47;

/// The sequence the producer's next batch in this log must carry: the
/// coordinator writes a transaction's offset batches under the producer's
/// id, and the log checks their sequence as it checks any idempotent
/// producer's (a batch whose sequence repeated the last one would be taken
/// for a retry and dropped).
fn next_sequence(log: &crate::shard::Log, producer_id: i64, producer_epoch: i16) -> i32 {
    match log.producer_entry(producer_id) {
        Some(entry) if entry.epoch == producer_epoch => {
            entry.batches.back().map_or(0, |last| spate_engine::producer_state::increment_sequence(last.last_seq, 1))
        }
        _ => 0,
    }
}

/// Group records as one transactional batch of the producer.
fn transactional_batch(
    records: &[GroupRecord],
    producer_id: i64,
    producer_epoch: i16,
    sequence: i32,
) -> bytes::BytesMut {
    let now_ms = now_ms();
    let mut builder = BatchBuilder::new(now_ms).producer(producer_id, producer_epoch, sequence).transactional();
    for record in records {
        builder.push(now_ms, Some(&record.key()), record.value().as_deref(), &[]);
    }
    builder.build()
}

/// A transaction marker has landed (durable on the in-sync replicas) on
/// `partition` of `__consumer_offsets`, which this shard owns: the
/// producer's pending offsets there take effect (commit) or vanish.
pub(crate) fn txn_marker_written(shard: &Rc<Shard>, partition: u32, producer_id: i64, commit: bool) {
    let Some(pending) = shard.groups.txn_offsets.borrow_mut().remove(&(partition, producer_id)) else {
        return;
    };
    if !commit {
        return;
    }
    let mut groups = shard.groups.groups.borrow_mut();
    for Pending { group, tp, offset } in pending {
        groups.entry(group).or_insert_with(|| super::Group::new(super::Assignor::Sticky)).offsets.insert(tp, offset);
    }
}

/// Whether a control batch (a transaction marker) commits: its one
/// record's key is Kafka's `version i16, type i16` (0 abort, 1 commit).
pub(crate) fn control_commits(batch: &[u8]) -> Result<bool, String> {
    let control = spate_format::batch::parse_control_batch(batch).map_err(|e| e.to_string())?;
    Ok(control.commit)
}

#[cfg(test)]
mod tests {
    use super::super::{Replayed, apply_batch, record};
    use super::*;

    fn at(mut batch: bytes::BytesMut, base_offset: i64) -> Vec<u8> {
        spate_format::batch::set_base_offset(&mut batch, base_offset).expect("a batch");
        batch.to_vec()
    }

    fn offset_record(group: &str, offset: i64) -> GroupRecord {
        GroupRecord::Offset { group: group.into(), topic: "t".into(), partition: 0, offset: Some(offset) }
    }

    fn marker(producer_id: i64, commit: bool) -> bytes::BytesMut {
        let control = spate_format::batch::ControlRecord { commit, coordinator_epoch: 0 };
        spate_format::batch::build_control_batch(producer_id, 0, control, 0)
    }

    /// A replay keeps a transaction's offsets out of the group until its
    /// marker: committed ones appear, aborted ones never do, and those of
    /// a transaction still open stay pending (what a new coordinator
    /// must hold to apply at the marker it has not seen yet).
    #[test]
    fn replayed_transactional_offsets_wait_for_their_marker() {
        let mut replayed = Replayed::default();
        let plain = at(record::batch(&[offset_record("g", 5)], 0), 0);
        apply_batch(&mut replayed, &plain, 0).expect("replays");
        let committed = at(transactional_batch(&[offset_record("g", 10)], 7, 0, 0), 1);
        let aborted = at(transactional_batch(&[offset_record("g", 20)], 8, 0, 0), 2);
        let open = at(transactional_batch(&[offset_record("g", 30)], 9, 0, 0), 3);
        for (offset, batch) in [(1, &committed), (2, &aborted), (3, &open)] {
            apply_batch(&mut replayed, batch, offset).expect("replays");
        }
        let tp = ("t".to_string(), 0);
        assert_eq!(replayed.groups["g"].offsets[&tp], 5, "no transaction has ended yet");
        apply_batch(&mut replayed, &at(marker(8, false), 4), 4).expect("replays");
        assert_eq!(replayed.groups["g"].offsets[&tp], 5, "an aborted transaction's offset never shows");
        apply_batch(&mut replayed, &at(marker(7, true), 5), 5).expect("replays");
        assert_eq!(replayed.groups["g"].offsets[&tp], 10, "a committed transaction's offset shows at its marker");
        assert_eq!(replayed.pending.keys().copied().collect::<Vec<_>>(), vec![9], "the open one stays pending");
    }

    /// A transaction that commits one partition's offset again and again
    /// holds one pending offset, the last: a client looping
    /// TxnOffsetCommit in a long transaction grew the pending list by one
    /// entry a call before.
    #[test]
    fn repeated_commits_in_a_transaction_hold_one_pending_offset_the_last() {
        let mut replayed = Replayed::default();
        for (offset, value) in [(0, 3), (1, 4), (2, 5)] {
            let batch = at(transactional_batch(&[offset_record("g", value)], 7, 0, offset as i32), offset);
            apply_batch(&mut replayed, &batch, offset).expect("replays");
        }
        let tp = ("t".to_string(), 0);
        assert_eq!(replayed.pending[&7], [Pending { group: "g".into(), tp: tp.clone(), offset: 5 }]);
        apply_batch(&mut replayed, &at(marker(7, true), 3), 3).expect("replays");
        assert_eq!(replayed.groups["g"].offsets[&tp], 5);
    }
}
