//! The recovery point: an offset below which every batch of the log is
//! known to be synced (Kafka's `recovery-point-offset-checkpoint`, kept per
//! partition). After a crash, damage at or above it may be a torn, unsynced
//! tail and is cut; damage below it is corruption of synced data and fails
//! the open.
//!
//! The flusher writes it atomically after an fdatasync, at most every
//! `limits::RECOVERY_POINT_INTERVAL_MS` and at every seal and close, so the
//! append path pays for it at most once per interval. A stale, lower point
//! is safe (more of the tail is treated as possibly torn); a point above
//! what is synced never is, so it is asserted before every write and
//! lowered before a truncation cuts anything.

use std::path::Path;

use crate::error::{LogError, Result};
use crate::io::{Storage, read_file};

pub(crate) const RECOVERY_POINT_NAME: &str = "recovery-point-checkpoint";
const MAGIC: &[u8; 4] = b"SPRP";
const VERSION: u16 = 1;
/// magic, version, offset, CRC-32C.
pub(crate) const RECOVERY_POINT_BYTES: usize = 4 + 2 + 8 + 4;

pub(crate) fn encode(offset: i64) -> Vec<u8> {
    assert!(offset >= 0, "a recovery point is an offset");
    encode_offset_file(MAGIC, offset)
}

/// The offset the file holds, or `None` if it does not check out.
pub(crate) fn decode(bytes: &[u8]) -> Option<i64> {
    decode_offset_file(MAGIC, bytes)
}

/// The layout of a file holding one offset (the recovery point, the log
/// start offset): magic, version, offset, CRC-32C of what precedes it.
pub(crate) fn encode_offset_file(magic: &[u8; 4], offset: i64) -> Vec<u8> {
    assert!(offset >= 0, "an offset file holds an offset");
    let mut out = Vec::with_capacity(RECOVERY_POINT_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(out.len(), RECOVERY_POINT_BYTES);
    out
}

/// The offset an offset file with this magic holds, or `None` if it does
/// not check out.
pub(crate) fn decode_offset_file(magic: &[u8; 4], bytes: &[u8]) -> Option<i64> {
    if bytes.len() != RECOVERY_POINT_BYTES {
        return None;
    }
    let (body, crc) = bytes.split_at(RECOVERY_POINT_BYTES - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return None;
    }
    let (found, rest) = body.split_at(magic.len());
    let (version, offset) = rest.split_at(2);
    if found != magic || version != VERSION.to_be_bytes() {
        return None;
    }
    let offset = i64::from_be_bytes(offset.try_into().ok()?);
    (offset >= 0).then_some(offset)
}

/// The stored recovery point, or 0 (nothing known synced: every damaged
/// tail is cut, as before the file existed) when it is missing or damaged.
pub(crate) async fn read<S: Storage>(storage: &S, dir: &Path) -> Result<i64> {
    let path = dir.join(RECOVERY_POINT_NAME);
    match read_file(storage, &path, RECOVERY_POINT_BYTES).await {
        Ok(None) => Ok(0),
        Ok(Some(bytes)) => Ok(decode(&bytes).unwrap_or_else(|| {
            tracing::error!(path = %path.display(), "damaged recovery point; treating the whole active segment as unsynced");
            0
        })),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            tracing::error!(path = %path.display(), "oversized recovery point; treating the whole active segment as unsynced");
            Ok(0)
        }
        Err(err) => Err(LogError::io("read", &path, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_point_round_trips_and_any_damage_is_refused() {
        let bytes = encode(1_234_567);
        assert_eq!(decode(&bytes), Some(1_234_567));
        for byte in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x10;
            assert_eq!(decode(&damaged), None, "a flip at byte {byte} went unnoticed");
        }
        assert_eq!(decode(&bytes[..RECOVERY_POINT_BYTES - 1]), None);
    }
}
