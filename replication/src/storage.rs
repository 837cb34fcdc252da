//! The Raft log and hard state on disk.
//!
//! `<dir>/raft-log`: append-only records `[u32 BE len][u32 BE crc32c of the
//! payload][payload: protobuf eraftpb::Entry]`. An entry whose index is at
//! or below the last one read replaces that suffix (a Raft conflict), so a
//! conflict never rewrites the file. At open, the first record that is
//! short, too long, CRC-bad, undecodable or out of sequence ends the log and
//! the file is cut there: such a tail was never fsynced, so never
//! acknowledged to a peer.
//!
//! `<dir>/raft-hard-state`: `[u32 BE crc32c][protobuf HardState]`, replaced
//! atomically (write a tmp file, fsync, rename, fsync the directory).
//!
//! No snapshots and no compaction yet: the log grows with the metadata
//! history (small: brokers, topics, ISR changes).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use crate::limits::MAX_ENTRY_BYTES;

const LOG_FILE: &str = "raft-log";
const HARD_STATE_FILE: &str = "raft-hard-state";
const HARD_STATE_TMP: &str = "raft-hard-state.tmp";
const RECORD_HEADER: usize = 8;

/// What `open` found on disk.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The log, indexes 1..=n without gaps, conflicts resolved.
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    /// Bytes cut from the end of the log file (a torn or corrupt tail).
    pub cut_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct DiskStorage {
    dir: PathBuf,
    log: File,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl DiskStorage {
    pub fn open(dir: &Path) -> io::Result<(DiskStorage, Recovered)> {
        fs::create_dir_all(dir)?;
        let hard_state = read_hard_state(&dir.join(HARD_STATE_FILE))?;
        let log_path = dir.join(LOG_FILE);
        let existed = log_path.exists();
        let data = if existed { fs::read(&log_path)? } else { Vec::new() };
        let (entries, good) = parse_log(&data);
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let cut_bytes = (data.len() - good) as u64;
        if cut_bytes > 0 {
            tracing::warn!(
                path = %log_path.display(),
                cut_bytes,
                kept_bytes = good,
                "metadata log: cutting a torn or corrupt tail"
            );
            log.set_len(good as u64)?;
            log.sync_all()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        Ok((DiskStorage { dir: dir.to_path_buf(), log }, Recovered { entries, hard_state, cut_bytes }))
    }

    /// Append entries and fsync before returning: only then may Raft tell
    /// peers they are persisted.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            let payload = e.write_to_bytes().map_err(|err| invalid(format!("encode entry: {err}")))?;
            if payload.len() > MAX_ENTRY_BYTES as usize {
                return Err(invalid(format!("entry of {} bytes", payload.len())));
            }
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
            buf.extend_from_slice(&payload);
        }
        self.log.write_all(&buf)?;
        self.log.sync_data()
    }

    /// Replace the hard state atomically.
    pub fn set_hard_state(&mut self, hs: &HardState) -> io::Result<()> {
        let payload = hs.write_to_bytes().map_err(|err| invalid(format!("encode hard state: {err}")))?;
        let tmp = self.dir.join(HARD_STATE_TMP);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&crc32c::crc32c(&payload).to_be_bytes())?;
            f.write_all(&payload)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(HARD_STATE_FILE))?;
        sync_dir(&self.dir)
    }
}

/// A hard-state file is written whole and renamed into place, so a bad one
/// is real corruption: refuse to start rather than forget a vote.
fn read_hard_state(path: &Path) -> io::Result<HardState> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HardState::default()),
        Err(e) => return Err(e),
    };
    if data.len() < 4 {
        return Err(invalid(format!("{}: too short", path.display())));
    }
    let crc = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    if crc32c::crc32c(&data[4..]) != crc {
        return Err(invalid(format!("{}: CRC mismatch", path.display())));
    }
    HardState::parse_from_bytes(&data[4..]).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// The entries of a log file and the length of its good prefix.
fn parse_log(data: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= RECORD_HEADER {
        let h = &data[pos..pos + RECORD_HEADER];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if len > MAX_ENTRY_BYTES || (data.len() - pos - RECORD_HEADER) < len as usize {
            break;
        }
        let payload = &data[pos + RECORD_HEADER..pos + RECORD_HEADER + len as usize];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(entry) = Entry::parse_from_bytes(payload) else {
            break;
        };
        let last = entries.last().map_or(0, |e| e.index);
        // Indexes start at 1 (no compaction) and never skip one.
        if entry.index == 0 || entry.index > last + 1 {
            break;
        }
        // A conflict: this entry replaces the suffix from its index on.
        entries.truncate(entry.index as usize - 1);
        entries.push(entry);
        pos += RECORD_HEADER + len as usize;
    }
    (entries, pos)
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // protobuf structs have private fields
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/spate-replication-storage").join(name);
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.as_bytes().to_vec().into();
        e
    }

    fn summary(r: &Recovered) -> Vec<(u64, u64, String)> {
        r.entries.iter().map(|e| (e.index, e.term, String::from_utf8_lossy(&e.data).into_owned())).collect()
    }

    fn write_three(d: &Path) {
        let (mut s, r) = DiskStorage::open(d).expect("open");
        assert!(r.entries.is_empty());
        s.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).expect("append");
        s.append(&[entry(3, 1, "c")]).expect("append");
    }

    fn log_len(d: &Path) -> u64 {
        fs::metadata(d.join(LOG_FILE)).expect("meta").len()
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let d = dir("survive");
        write_three(&d);
        let (mut s, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(r.entries.len(), 3);
        assert_eq!(r.cut_bytes, 0);
        let mut hs = HardState::default();
        hs.term = 4;
        hs.vote = 2;
        hs.commit = 3;
        s.set_hard_state(&hs).expect("hs");
        drop(s);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(r.hard_state, hs);
        assert_eq!(summary(&r)[2], (3, 1, "c".to_string()));
        assert!(!d.join(HARD_STATE_TMP).exists());
    }

    #[test]
    fn torn_tail_is_cut() {
        let d = dir("torn");
        write_three(&d);
        let full = log_len(&d);
        // Tear the last record at every byte: the first two always survive.
        let data = fs::read(d.join(LOG_FILE)).expect("read");
        let third_start = {
            let (_, good) = parse_log(&data[..data.len() - 1]);
            good
        };
        for cut in third_start as u64..full {
            fs::write(d.join(LOG_FILE), &data[..cut as usize]).expect("write");
            let (mut s, r) = DiskStorage::open(&d).expect("open");
            assert_eq!(r.entries.len(), 2, "cut at {cut}");
            assert_eq!(r.cut_bytes, cut - third_start as u64);
            assert_eq!(log_len(&d), third_start as u64);
            // Appends continue after the cut.
            s.append(&[entry(3, 2, "c2")]).expect("append");
            drop(s);
            let (_, r) = DiskStorage::open(&d).expect("open");
            assert_eq!(summary(&r)[2], (3, 2, "c2".to_string()));
        }
    }

    #[test]
    fn crc_flip_is_cut() {
        let d = dir("flip");
        write_three(&d);
        let mut data = fs::read(d.join(LOG_FILE)).expect("read");
        let n = data.len();
        data[n - 1] ^= 0x40;
        fs::write(d.join(LOG_FILE), &data).expect("write");
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(r.entries.len(), 2);
        assert!(r.cut_bytes > 0);
        // An absurd length is a bad tail too, not an allocation.
        let mut data = fs::read(d.join(LOG_FILE)).expect("read");
        data.extend_from_slice(&u32::MAX.to_be_bytes());
        data.extend_from_slice(&[0; 12]);
        fs::write(d.join(LOG_FILE), &data).expect("write");
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!((r.entries.len(), r.cut_bytes), (2, 16));
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let d = dir("conflict");
        write_three(&d);
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        // A new leader in term 2 overwrites index 2 onwards.
        s.append(&[entry(2, 2, "x")]).expect("append");
        drop(s);
        let (mut s, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(
            summary(&r),
            vec![(1, 1, "a".into()), (2, 2, "x".into())],
            "index 3 of term 1 is gone with the conflict"
        );
        s.append(&[entry(3, 2, "y")]).expect("append");
        drop(s);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(summary(&r).len(), 3);
        assert_eq!(summary(&r)[2], (3, 2, "y".to_string()));
    }

    #[test]
    fn gap_ends_the_log() {
        let d = dir("gap");
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        s.append(&[entry(1, 1, "a"), entry(3, 1, "c")]).expect("append");
        drop(s);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(r.entries.len(), 1);
    }

    #[test]
    fn corrupt_hard_state_refuses_to_open() {
        let d = dir("badhs");
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        let mut hs = HardState::default();
        hs.term = 9;
        s.set_hard_state(&hs).expect("hs");
        drop(s);
        let p = d.join(HARD_STATE_FILE);
        let mut data = fs::read(&p).expect("read");
        data[5] ^= 1;
        fs::write(&p, &data).expect("write");
        assert!(DiskStorage::open(&d).is_err());
    }
}
