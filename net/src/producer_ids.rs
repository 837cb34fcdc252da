//! Producer ids for idempotent producers (InitProducerId), unique across
//! restarts of this broker.
//!
//! Shard 0 hands them out from blocks of `PRODUCER_ID_BLOCK_SIZE`: before
//! the first id of a block goes out, the block's end is persisted in the
//! data directory (`producer-ids`, written atomically), and a restart
//! continues from the persisted end, skipping what was left of the last
//! block. So an id is never handed out twice, at the cost of a gap per
//! restart. One broker for now: with replication (issue 6) allocation moves
//! to the controller, which hands brokers blocks as Kafka's KIP-730 does.
//!
//! File, big-endian: magic "SPPI" | version u16 = 1 | block_end i64 |
//! crc32c u32 over everything before it.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use spate_engine::io::{DmaStorage, write_file_atomic};

use crate::limits::PRODUCER_ID_BLOCK_SIZE;

pub(crate) const PRODUCER_IDS_FILE: &str = "producer-ids";
const MAGIC: &[u8; 4] = b"SPPI";
const VERSION: u16 = 1;
const FILE_BYTES: usize = MAGIC.len() + 2 + 8 + 4;

fn encode(block_end: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&block_end.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(out.len(), FILE_BYTES);
    out
}

fn decode(bytes: &[u8]) -> Option<i64> {
    if bytes.len() != FILE_BYTES {
        return None;
    }
    let (body, crc) = bytes.split_at(FILE_BYTES - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return None;
    }
    let (magic, rest) = body.split_at(MAGIC.len());
    let (version, block_end) = rest.split_at(2);
    if magic != MAGIC || version != VERSION.to_be_bytes() {
        return None;
    }
    Some(i64::from_be_bytes(block_end.try_into().ok()?)).filter(|&end| end >= 0)
}

/// The first id this run may hand out: the end of the last block persisted
/// (0 for a new data directory). Read once at start, before the shards run.
/// A damaged file stops the start: guessing could hand out an id twice.
pub(crate) fn load(data_dir: &Path) -> std::io::Result<i64> {
    let path = data_dir.join(PRODUCER_IDS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is damaged", path.display()))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err),
    }
}

/// The allocator; lives on shard 0.
#[derive(Debug)]
pub(crate) struct ProducerIdAllocator {
    path: PathBuf,
    next: Cell<i64>,
    /// Ids below this are covered by the persisted file.
    block_end: Cell<i64>,
    /// One block is persisted at a time.
    lock: glommio::sync::Semaphore,
}

impl ProducerIdAllocator {
    pub fn new(data_dir: &Path, start: i64) -> Self {
        ProducerIdAllocator {
            path: data_dir.join(PRODUCER_IDS_FILE),
            next: Cell::new(start),
            block_end: Cell::new(start),
            lock: glommio::sync::Semaphore::new(1),
        }
    }

    /// A producer id never handed out before by this data directory.
    pub async fn allocate(&self) -> Result<i64, String> {
        let _permit = self.lock.acquire_permit(1).await.map_err(|_| "allocator closed".to_string())?;
        if self.next.get() >= self.block_end.get() {
            let block_end = self
                .block_end
                .get()
                .checked_add(PRODUCER_ID_BLOCK_SIZE)
                .ok_or_else(|| "producer ids exhausted".to_string())?;
            write_file_atomic(&DmaStorage, &self.path, &encode(block_end))
                .await
                .map_err(|err| format!("writing {}: {err}", self.path.display()))?;
            self.next.set(self.block_end.get());
            self.block_end.set(block_end);
            tracing::debug!(block_end, "allocated a block of producer ids");
        }
        let id = self.next.get();
        assert!(id < self.block_end.get(), "an id is handed out only from a persisted block");
        self.next.set(id + 1);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_damage_is_refused() {
        let bytes = encode(123_000);
        assert_eq!(decode(&bytes), Some(123_000));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(decode(&bytes[1..]), None);
    }
}
