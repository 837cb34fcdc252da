//! A task's `.checkpoint` file: for each changelog partition of its
//! persistent stores, the changelog offset the store on disk has applied
//! every record before (Kafka's `OffsetCheckpoint` format and meaning:
//! the next offset to restore from).
//!
//! ```text
//! 0                                   version
//! 2                                   number of lines that follow
//! app-counts-changelog 0 1234         topic, partition, next offset
//! app-other-changelog 0 17
//! ```
//!
//! Written after each commit (the changelog records acknowledged, the
//! stores flushed), atomically: a temporary file, fsync, rename, fsync of
//! the directory. Read and deleted when the task opens, so that a crash
//! before the next commit's checkpoint never trusts a store that moved
//! past it: no checkpoint means wipe and restore from the start.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The file's name in a task's directory, as Kafka Streams names it.
pub const CHECKPOINT_FILE_NAME: &str = ".checkpoint";
const CHECKPOINT_VERSION: u32 = 0;
/// A checkpoint names one line per changelog partition of a task; more
/// than this is not a checkpoint this library wrote.
const CHECKPOINT_LINES_MAX: usize = 10_000;

/// Why a checkpoint file could not be used. The caller wipes the stores
/// it covers and restores them from the changelog's start.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// Changelog (topic, partition) -> the next offset to restore from.
pub type CheckpointOffsets = BTreeMap<(String, i32), i64>;

pub fn checkpoint_path(task_dir: &Path) -> PathBuf {
    task_dir.join(CHECKPOINT_FILE_NAME)
}

/// Reads a task's checkpoint; `Ok(None)` when there is none.
pub fn read_checkpoint(task_dir: &Path) -> Result<Option<CheckpointOffsets>, CheckpointError> {
    let path = checkpoint_path(task_dir);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    let damaged = |reason: String| CheckpointError::Damaged { path: path.clone(), reason };
    let text = String::from_utf8(text).map_err(|_| damaged("not UTF-8".into()))?;
    let mut lines = text.lines();
    let version = lines.next().ok_or_else(|| damaged("empty".into()))?;
    if version.trim().parse::<u32>().ok() != Some(CHECKPOINT_VERSION) {
        return Err(damaged(format!("version {version:?}, expected {CHECKPOINT_VERSION}")));
    }
    let count = lines
        .next()
        .and_then(|line| line.trim().parse::<usize>().ok())
        .filter(|count| *count <= CHECKPOINT_LINES_MAX)
        .ok_or_else(|| damaged("no line count".into()))?;
    let mut offsets = CheckpointOffsets::new();
    for index in 0..count {
        let line = lines.next().ok_or_else(|| damaged(format!("{count} lines announced, {index} present")))?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [topic, partition, offset] = parts.as_slice() else {
            return Err(damaged(format!("line {line:?} is not `topic partition offset`")));
        };
        let partition = partition.parse::<i32>().ok().filter(|p| *p >= 0);
        let offset = offset.parse::<i64>().ok().filter(|o| *o >= 0);
        let (Some(partition), Some(offset)) = (partition, offset) else {
            return Err(damaged(format!("line {line:?} has a bad partition or offset")));
        };
        offsets.insert((topic.to_string(), partition), offset);
    }
    if lines.any(|line| !line.trim().is_empty()) {
        return Err(damaged(format!("more than the {count} lines announced")));
    }
    Ok(Some(offsets))
}

/// Writes a task's checkpoint atomically: a reader sees the old file or
/// the new one, never a torn one.
pub fn write_checkpoint(task_dir: &Path, offsets: &CheckpointOffsets) -> Result<(), CheckpointError> {
    let path = checkpoint_path(task_dir);
    let io = |source| CheckpointError::Io { path: path.clone(), source };
    let mut text = format!("{CHECKPOINT_VERSION}\n{}\n", offsets.len());
    for ((topic, partition), offset) in offsets {
        // Topic names have no whitespace (Kafka's legal characters), so the
        // line splits back into exactly three fields.
        debug_assert!(!topic.contains(char::is_whitespace));
        debug_assert!(*offset >= 0);
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    let temporary = task_dir.join(format!("{CHECKPOINT_FILE_NAME}.tmp"));
    let mut file = File::create(&temporary).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&temporary, &path).map_err(io)?;
    // The rename is durable only once the directory is synced.
    File::open(task_dir).and_then(|dir| dir.sync_all()).map_err(io)?;
    Ok(())
}

/// Removes a task's checkpoint (when the task opens its stores).
pub fn delete_checkpoint(task_dir: &Path) -> Result<(), CheckpointError> {
    let path = checkpoint_path(task_dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CheckpointError::Io { path, source }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn test_dir(name: &str) -> PathBuf {
        // Test data stays under target/, per process.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/spate-streams-unit")
            .join(format!("{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_checkpoint_reads_back_in_kafkas_text_format() {
        let dir = test_dir("checkpoint-round-trip");
        assert!(read_checkpoint(&dir).unwrap().is_none());
        let offsets: CheckpointOffsets =
            [(("app-counts-changelog".to_string(), 3), 1234), (("app-b-changelog".to_string(), 0), 0)].into();
        write_checkpoint(&dir, &offsets).unwrap();
        let text = fs::read_to_string(checkpoint_path(&dir)).unwrap();
        assert_eq!(text, "0\n2\napp-b-changelog 0 0\napp-counts-changelog 3 1234\n");
        assert_eq!(read_checkpoint(&dir).unwrap(), Some(offsets));
        delete_checkpoint(&dir).unwrap();
        assert!(read_checkpoint(&dir).unwrap().is_none());
        delete_checkpoint(&dir).unwrap();
    }

    #[test]
    fn a_damaged_checkpoint_is_a_typed_error_never_a_panic() {
        let dir = test_dir("checkpoint-damaged");
        for text in [
            &b""[..],
            b"1\n0\n",
            b"0\n",
            b"0\n2\nt 0 5\n",
            b"0\n1\nt 0\n",
            b"0\n1\nt x 5\n",
            b"0\n1\nt 0 -5\n",
            b"0\n1\nt 0 5\nu 1 2\n",
            b"0\n99999999999\n",
            b"\xff\xfe",
        ] {
            fs::write(checkpoint_path(&dir), text).unwrap();
            let read = read_checkpoint(&dir);
            assert!(matches!(read, Err(CheckpointError::Damaged { .. })), "{text:?} gave {read:?}");
        }
    }
}
