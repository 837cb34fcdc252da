//! Producer ids for idempotent producers (InitProducerId), unique across
//! the cluster and across restarts.
//!
//! Shard 0 hands them out from blocks of `PRODUCER_ID_BLOCK_SIZE` that the
//! controller allocates through the metadata log (Kafka's KIP-730): a block
//! is committed to the Raft log before its first id goes out, so no id is
//! handed out twice by any broker, at the cost of a gap per restart (what
//! was left of this broker's last block).

use std::cell::Cell;

use spate_replication::{ControllerRequest, ControllerResponse};

use crate::limits::PRODUCER_ID_BLOCK_SIZE;

/// The allocator; lives on shard 0.
#[derive(Debug)]
pub(crate) struct ProducerIdAllocator {
    next: Cell<i64>,
    /// Ids below this (from `next`) are this broker's.
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
        let id = self.next.get();
        assert!(id < self.block_end.get(), "an id is handed out only from a committed block");
        self.next.set(id + 1);
        Ok(id)
    }
}
