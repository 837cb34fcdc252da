//! The log start offset, when it lies above the first segment's base
//! offset (Kafka's `log-start-offset-checkpoint`, kept per partition):
//! DeleteRecords moves the start of a log to any offset at or below its
//! high watermark, inside a segment, and the records below become
//! unreadable at once, so the offset must outlive a restart. Whole
//! segments below it are deleted; the one holding it stays until
//! retention removes it.
//!
//! Written atomically (synced) before anything is deleted or answered;
//! without the file (older logs, or a start never moved) the start is the
//! first segment's base offset, as before. A damaged file is ignored with
//! an error logged: the records it hid become readable again, which loses
//! nothing.

use std::path::Path;

use crate::error::{LogError, Result};
use crate::io::{Storage, read_file};
use crate::recovery_point::{RECOVERY_POINT_BYTES, decode_offset_file, encode_offset_file};

pub(crate) const LOG_START_NAME: &str = "log-start-offset-checkpoint";
const MAGIC: &[u8; 4] = b"SPLS";

pub(crate) fn encode(offset: i64) -> Vec<u8> {
    encode_offset_file(MAGIC, offset)
}

pub(crate) fn decode(bytes: &[u8]) -> Option<i64> {
    decode_offset_file(MAGIC, bytes)
}

/// The stored log start offset, or 0 (the first segment decides) when the
/// file is missing or damaged.
pub(crate) async fn read<S: Storage>(storage: &S, dir: &Path) -> Result<i64> {
    let path = dir.join(LOG_START_NAME);
    match read_file(storage, &path, RECOVERY_POINT_BYTES).await {
        Ok(None) => Ok(0),
        Ok(Some(bytes)) => Ok(decode(&bytes).unwrap_or_else(|| {
            tracing::error!(path = %path.display(), "damaged log start offset; the log starts at its first segment");
            0
        })),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            tracing::error!(path = %path.display(), "oversized log start offset; the log starts at its first segment");
            Ok(0)
        }
        Err(err) => Err(LogError::io("read", &path, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_start_round_trips_and_is_never_taken_for_a_recovery_point() {
        let bytes = encode(42);
        assert_eq!(decode(&bytes), Some(42));
        assert_eq!(crate::recovery_point::decode(&bytes), None, "another magic");
        assert_eq!(decode(&crate::recovery_point::encode(42)), None);
        let mut damaged = bytes.clone();
        damaged[9] ^= 1;
        assert_eq!(decode(&damaged), None);
    }
}
