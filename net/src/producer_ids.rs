//! Producer ids for idempotent producers (InitProducerId), unique across
//! the cluster and across restarts, and unguessable.
//!
//! Shard 0 draws sequence numbers from blocks of `PRODUCER_ID_BLOCK_SIZE`
//! that the controller allocates through the metadata log (Kafka's
//! KIP-730): a block is committed to the Raft log before its first number
//! goes out, so no number is used twice by any broker, at the cost of a gap
//! per restart (what was left of this broker's last block).
//!
//! The id a client gets is not the sequence number itself: a client that
//! could predict another producer's id (Kafka's are sequential) could send
//! batches under it and make that producer's next batches look like
//! duplicates (acknowledged, never stored) or out of order. So the id is
//! `sequence << PRODUCER_ID_RANDOM_BITS | random` (`limits.rs`): the
//! sequence in the high bits keeps ids unique whatever the random bits
//! (no collision to check for, on any broker, after any restart), and the
//! random low bits, fresh from the OS's CSPRNG for every id, leave nothing
//! to infer from one's own id. The partition's producer state
//! (`spate_engine::producer_state`) needs no change: ids stay opaque i64s.
//!
//! Not checked: whether the id on a batch was handed out at all, or to the
//! connection sending it. A broker cannot know which ids other brokers
//! handed out (and must accept them after a restart or a leader move), so
//! a sound check needs the id bound to something the batch's sender proves:
//! its principal, once connections have one (issue 16), as in Kafka's
//! IdempotentWrite ACL and KIP-890's verification.

use std::cell::Cell;

use spate_replication::{ControllerRequest, ControllerResponse};

use crate::limits::{PRODUCER_ID_BLOCK_SIZE, PRODUCER_ID_RANDOM_BITS, PRODUCER_ID_SEQUENCE_END};

/// The allocator; lives on shard 0.
#[derive(Debug)]
pub(crate) struct ProducerIdAllocator {
    /// The next sequence number to use.
    next: Cell<i64>,
    /// Sequence numbers below this (from `next`) are this broker's.
    block_end: Cell<i64>,
    /// One block is asked for at a time.
    lock: glommio::sync::Semaphore,
}

impl Default for ProducerIdAllocator {
    fn default() -> Self {
        ProducerIdAllocator { next: Cell::new(0), block_end: Cell::new(0), lock: glommio::sync::Semaphore::new(1) }
    }
}

impl ProducerIdAllocator {
    /// A producer id never handed out before in this cluster.
    pub async fn allocate(&self, controller: &spate_replication::Controller) -> Result<i64, String> {
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| "allocator closed".to_string())?;
        if self.next.get() >= self.block_end.get() {
            let request = ControllerRequest::AllocateProducerIds { count: PRODUCER_ID_BLOCK_SIZE };
            match controller.request(request).await {
                Ok(ControllerResponse::ProducerIds { start, len }) if len > 0 => {
                    self.next.set(start);
                    self.block_end.set(start + len);
                    tracing::debug!(start, len, "allocated a block of producer ids");
                }
                Ok(other) => return Err(format!("unexpected controller answer {other:?}")),
                Err(err) => return Err(format!("allocating producer ids: {err}")),
            }
        }
        let sequence = self.next.get();
        assert!(sequence < self.block_end.get(), "an id is handed out only from a committed block");
        let random = getrandom::u64().map_err(|err| format!("no random bits for a producer id: {err}"))?;
        let id = producer_id(sequence, random)
            .ok_or_else(|| format!("producer ids exhausted: sequence {sequence} of {PRODUCER_ID_SEQUENCE_END}"))?;
        self.next.set(sequence + 1);
        Ok(id)
    }
}

/// The id for a sequence number and random bits (only the low
/// `PRODUCER_ID_RANDOM_BITS` are used); None past the sequence space.
fn producer_id(sequence: i64, random: u64) -> Option<i64> {
    if !(0..PRODUCER_ID_SEQUENCE_END).contains(&sequence) {
        return None;
    }
    let low = (random & ((1u64 << PRODUCER_ID_RANDOM_BITS) - 1)) as i64;
    let id = (sequence << PRODUCER_ID_RANDOM_BITS) | low;
    assert!(id >= 0, "producer ids are non-negative (-1 means none)");
    assert_eq!(id >> PRODUCER_ID_RANDOM_BITS, sequence, "the sequence is recoverable, so ids never collide");
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_by_their_sequence_whatever_the_random_bits() {
        assert_eq!(producer_id(0, 0), Some(0));
        assert_eq!(producer_id(0, u64::MAX), Some((1 << PRODUCER_ID_RANDOM_BITS) - 1));
        assert_eq!(producer_id(1, 0), Some(1 << PRODUCER_ID_RANDOM_BITS));
        let last = producer_id(PRODUCER_ID_SEQUENCE_END - 1, u64::MAX).expect("the last sequence fits");
        assert_eq!(last, i64::MAX);
        assert_eq!(producer_id(PRODUCER_ID_SEQUENCE_END, 0), None, "past the space: exhausted, not wrapped");
        assert_eq!(producer_id(-1, 0), None);
    }
}
