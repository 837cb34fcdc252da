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
//!   after the marker it would open a transaction nobody ends.

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
    marked: bool,
    queued: VecDeque<T>,
}

/// How a verification ended for the partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finished<T> {
    pub leader_epoch: i32,
    /// A marker of the producer was written while it was asked.
    pub marked: bool,
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
            self.waits.borrow_mut().insert(key, Wait { leader_epoch, marked: false, queued: VecDeque::new() });
        // A second would let two of the producer's batches race.
        assert!(previous.is_none(), "one verification per producer and partition at a time");
    }

    /// A marker of `key`'s producer was written to its partition.
    pub(crate) fn marker_written(&self, key: &GuardKey) {
        if let Some(wait) = self.waits.borrow_mut().get_mut(key) {
            wait.marked = true;
        }
    }

    /// Ends the wait: what happened meanwhile.
    pub(crate) fn finish(&self, key: &GuardKey) -> Finished<T> {
        let wait = self.waits.borrow_mut().remove(key).expect("a verification finishes once, after it began");
        Finished { leader_epoch: wait.leader_epoch, marked: wait.marked, queued: wait.queued }
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
        assert_eq!(finished, Finished { leader_epoch: 3, marked: false, queued: VecDeque::from([2, 3]) });
        assert_eq!(book.queue_behind(&key(0, 7), 6), Some(6), "the wait is over");
    }

    #[test]
    fn a_marker_of_the_producer_during_the_wait_marks_it() {
        let book: Verifications<u32> = Verifications::default();
        book.begin(key(0, 7), 1);
        book.marker_written(&key(0, 8));
        book.marker_written(&key(1, 7));
        assert!(!book.finish(&key(0, 7)).marked, "other producers' and partitions' markers do not count");
        book.begin(key(0, 7), 1);
        book.marker_written(&key(0, 7));
        assert!(book.finish(&key(0, 7)).marked);
        // Outside a wait a marker leaves nothing behind.
        book.marker_written(&key(0, 7));
        book.begin(key(0, 7), 1);
        assert!(!book.finish(&key(0, 7)).marked);
    }
}
