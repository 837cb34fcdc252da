//! The partition side of KIP-890 part 1: a producer's first transactional
//! batch of a transaction on a partition waits while its coordinator is
//! asked (`verify.rs`). This is the owner shard's book of those waits.
//!
//! Two things make the wait safe:
//! - The producer's later produces to the partition queue behind it, so
//!   its batches still land in the order sent (their sequence numbers
//!   would refuse them otherwise) and none slips in unverified.
//! - A marker of the producer written to the partition meanwhile (its
//!   transaction ended after the coordinator said yes) marks the wait: the
//!   batch is refused then, as Kafka's VerificationGuard does, since taken
//!   after the marker it would open a transaction nobody ends. Which
//!   markers end the batch's transaction depends on the client
//!   (`Finished::ended`): under transactions v2 (KIP-890 part 2) a
//!   transaction of epoch E ends with markers of epoch E + 1, and a marker
//!   of the batch's own epoch ended the transaction before it (one the
//!   client's next transaction may start right after).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A producer on a partition: (topic id, partition), producer id.
pub(crate) type GuardKey = ((Arc<str>, u32), i64);

#[derive(Debug)]
pub(crate) struct Verifications<T> {
    waits: RefCell<HashMap<GuardKey, Wait<T>>>,
}

impl<T> Default for Verifications<T> {
    fn default() -> Self {
        Verifications { waits: RefCell::new(HashMap::new()) }
    }
}

#[derive(Debug)]
struct Wait<T> {
    /// The partition's leader epoch when asked: a change of leader since
    /// (markers may have arrived by replication, not through
    /// `marker_written`) refuses the batch.
    leader_epoch: i32,
    /// The highest epoch of the producer's markers written meanwhile.
    marker_epoch: Option<i16>,
    queued: VecDeque<T>,
}

/// How a verification ended for the partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finished<T> {
    pub leader_epoch: i32,
    /// The highest epoch of the producer's markers written while it was
    /// asked, if any was.
    pub marker_epoch: Option<i16>,
    /// The producer's produces that came meanwhile, oldest first.
    pub queued: VecDeque<T>,
}

impl<T> Verifications<T> {
    /// Queues `op` behind the producer's verification on the partition, if
    /// one is on its way; gives it back if none is.
    pub(crate) fn queue_behind(&self, key: &GuardKey, op: T) -> Option<T> {
        match self.waits.borrow_mut().get_mut(key) {
            Some(wait) => {
                wait.queued.push_back(op);
                None
            }
            None => Some(op),
        }
    }

    pub(crate) fn begin(&self, key: GuardKey, leader_epoch: i32) {
        let previous =
            self.waits.borrow_mut().insert(key, Wait { leader_epoch, marker_epoch: None, queued: VecDeque::new() });
        // A second would let two of the producer's batches race.
        assert!(previous.is_none(), "one verification per producer and partition at a time");
    }

    /// A marker of `key`'s producer, at `epoch`, was written to its
    /// partition.
    pub(crate) fn marker_written(&self, key: &GuardKey, epoch: i16) {
        if let Some(wait) = self.waits.borrow_mut().get_mut(key) {
            wait.marker_epoch = wait.marker_epoch.max(Some(epoch));
        }
    }

    /// Ends the wait: what happened meanwhile.
    pub(crate) fn finish(&self, key: &GuardKey) -> Finished<T> {
        let wait = self.waits.borrow_mut().remove(key).expect("a verification finishes once, after it began");
        Finished { leader_epoch: wait.leader_epoch, marker_epoch: wait.marker_epoch, queued: wait.queued }
    }
}

impl<T> Finished<T> {
    /// Whether a marker written during the wait ended the transaction of
    /// a batch at `batch_epoch`: one at that epoch or later, or under
    /// transactions v2 (`epoch_bumps`) one past it.
    pub(crate) fn ended(&self, batch_epoch: i16, epoch_bumps: bool) -> bool {
        match self.marker_epoch {
            None => false,
            Some(marker) if epoch_bumps => marker > batch_epoch,
            Some(marker) => marker >= batch_epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: u32, producer_id: i64) -> GuardKey {
        ((Arc::from("topic-id"), partition), producer_id)
    }

    #[test]
    fn the_producers_later_produces_wait_in_order_and_others_do_not() {
        let book: Verifications<u32> = Verifications::default();
        assert_eq!(book.queue_behind(&key(0, 7), 1), Some(1), "nothing to wait behind");
        book.begin(key(0, 7), 3);
        assert_eq!(book.queue_behind(&key(0, 7), 2), None);
        assert_eq!(book.queue_behind(&key(0, 7), 3), None);
        // Another producer, or the same one on another partition, goes on.
        assert_eq!(book.queue_behind(&key(0, 8), 4), Some(4));
        assert_eq!(book.queue_behind(&key(1, 7), 5), Some(5));
        let finished = book.finish(&key(0, 7));
        assert_eq!(finished, Finished { leader_epoch: 3, marker_epoch: None, queued: VecDeque::from([2, 3]) });
        assert_eq!(book.queue_behind(&key(0, 7), 6), Some(6), "the wait is over");
    }

    #[test]
    fn a_marker_of_the_producer_during_the_wait_marks_it() {
        let book: Verifications<u32> = Verifications::default();
        book.begin(key(0, 7), 1);
        book.marker_written(&key(0, 8), 5);
        book.marker_written(&key(1, 7), 5);
        assert_eq!(book.finish(&key(0, 7)).marker_epoch, None, "other producers' and partitions' markers do not count");
        book.begin(key(0, 7), 1);
        book.marker_written(&key(0, 7), 4);
        book.marker_written(&key(0, 7), 3);
        assert_eq!(book.finish(&key(0, 7)).marker_epoch, Some(4), "the highest");
        // Outside a wait a marker leaves nothing behind.
        book.marker_written(&key(0, 7), 4);
        book.begin(key(0, 7), 1);
        assert_eq!(book.finish(&key(0, 7)).marker_epoch, None);
    }

    #[test]
    fn under_transactions_v2_the_marker_of_the_previous_transaction_does_not_end_the_batchs() {
        let finished = |marker_epoch| Finished::<u32> { leader_epoch: 1, marker_epoch, queued: VecDeque::new() };
        // v1: a transaction of epoch 4 ends with markers of epoch 4.
        assert!(finished(Some(4)).ended(4, false));
        assert!(!finished(Some(3)).ended(4, false));
        // v2: it ends with markers of epoch 5; one of epoch 4 ended the
        // transaction before (its epoch bumped to the batch's).
        assert!(!finished(Some(4)).ended(4, true));
        assert!(finished(Some(5)).ended(4, true));
        assert!(!finished(None).ended(4, true));
    }
}
