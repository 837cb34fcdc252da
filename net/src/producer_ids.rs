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
//! `sequence << PRODUCER_ID_RANDOM_BITS | tag` (`limits.rs`): the sequence
//! in the high bits keeps ids unique whatever the tag (no collision to
//! check for, on any broker, after any restart), and the tag is
//! HMAC-SHA256(cluster secret, sequence, principal) cut to 32 bits: only
//! brokers (which hold the cluster's secret) can make one, nothing about
//! another id follows from one's own, and every broker can check, with no
//! state of its own, that a batch's id was given to the principal sending
//! it. A batch under another principal's id (a hijack) is refused with
//! CLUSTER_AUTHORIZATION_FAILED, as Kafka refuses idempotent writes a
//! principal may not make. Connections without authentication all share
//! the ANONYMOUS principal: among them the tag still makes ids
//! unguessable, as the random bits did before. The partition's producer
//! state (`spate_engine::producer_state`) needs no change: ids stay opaque
//! i64s.

use std::cell::Cell;

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use spate_replication::{ControllerRequest, ControllerResponse};

use crate::limits::{PRODUCER_ID_BLOCK_SIZE, PRODUCER_ID_RANDOM_BITS, PRODUCER_ID_SEQUENCE_END};
use crate::security::Principal;

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
    /// A producer id never handed out before in this cluster, for
    /// `principal` only. `secret` is the cluster's (None until the first
    /// active controller committed it: no id is handed out before).
    pub async fn allocate(
        &self,
        controller: &spate_replication::Controller,
        secret: Option<&[u8]>,
        principal: &Principal,
    ) -> Result<i64, String> {
        let secret = secret.ok_or("the cluster secret is not committed yet; retry")?;
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
        let id = producer_id(sequence, tag(secret, sequence, principal))
            .ok_or_else(|| format!("producer ids exhausted: sequence {sequence} of {PRODUCER_ID_SEQUENCE_END}"))?;
        self.next.set(sequence + 1);
        Ok(id)
    }
}

/// The tag of `sequence` given to `principal`.
fn tag(secret: &[u8], sequence: i64, principal: &Principal) -> u64 {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return 0 };
    mac.update(b"spate producer id\0");
    mac.update(&sequence.to_be_bytes());
    mac.update(principal.to_string().as_bytes());
    let digest = mac.finalize().into_bytes();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

/// Whether `id` was given to `principal` by a broker of this cluster.
pub(crate) fn belongs_to(secret: &[u8], id: i64, principal: &Principal) -> bool {
    id >= 0
        && producer_id(id >> PRODUCER_ID_RANDOM_BITS, tag(secret, id >> PRODUCER_ID_RANDOM_BITS, principal)) == Some(id)
}

/// Refuses batches whose producer id was not given to `principal` (a
/// batch without one, id -1, is not idempotent and needs none). Without
/// a committed secret no id was handed out under it, so none is checked.
/// The error is the message for the refusal (CLUSTER_AUTHORIZATION_FAILED).
pub(crate) fn check_owner(secret: Option<&[u8]>, principal: &Principal, batches: &[BytesMut]) -> Result<(), String> {
    let Some(secret) = secret else { return Ok(()) };
    for batch in batches {
        let Ok(header) = spate_format::batch::peek_header(batch) else { continue };
        let id = header.producer_id.get();
        if id >= 0 && !belongs_to(secret, id, principal) {
            tracing::warn!(target: "spate::audit", %principal, producer_id = id,
                "refused a batch under a producer id given to another principal (or never given)");
            return Err(format!("producer id {id} was not given to {principal}: get one with InitProducerId"));
        }
    }
    Ok(())
}

/// The id for a sequence number and a tag (only the low
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

    /// An id is its principal's: another principal, a flipped bit or
    /// another cluster's secret does not verify.
    #[test]
    fn an_id_belongs_to_the_principal_it_was_given_to() {
        let (alice, mallory) = (Principal::user("alice"), Principal::user("mallory"));
        let secret = [7u8; 32];
        for sequence in [0, 1, 999, PRODUCER_ID_SEQUENCE_END - 1] {
            let id = producer_id(sequence, tag(&secret, sequence, &alice)).expect("in the space");
            assert!(belongs_to(&secret, id, &alice));
            assert!(!belongs_to(&secret, id, &mallory));
            assert!(!belongs_to(&secret, id ^ 1, &alice));
            assert!(!belongs_to(&[8u8; 32], id, &alice));
        }
        assert!(!belongs_to(&secret, -1, &alice));
    }

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
