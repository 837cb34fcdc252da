//! The Raft log, hard state and snapshot on disk.
//!
//! `<dir>/raft-log`: append-only records `[u32 BE len][u32 BE crc32c of the
//! payload][payload]`. A payload is a protobuf eraftpb::Entry, or a repair
//! marker (`SPRM`, see `RepairNeed`). An entry whose index is at or below the
//! last one read replaces that suffix (a Raft conflict), so a conflict never
//! rewrites the file. The first entry may have any index: a compacted log
//! starts after the snapshot.
//!
//! A bad record (short, too long, CRC-bad, undecodable or out of sequence)
//! with no valid record after it is a torn tail: it was never fsynced, so
//! never acknowledged, and `open` cuts it. A bad record with valid records
//! after it is damage to synced data: those records may hold entries this
//! node acknowledged and the cluster committed, so nothing is cut; `open`
//! reports it (`LogDamage`) and the caller decides (quorum.rs: repair from
//! the leader, or refuse to start).
//!
//! `<dir>/raft-hard-state`: `[u32 BE crc32c][protobuf HardState]`, replaced
//! atomically (write a tmp file, fsync, rename, fsync the directory).
//!
//! `<dir>/raft-snapshot`: the metadata image at one applied index (see
//! `write_snapshot`), replaced atomically like the hard state. The log is
//! rewritten (atomically) without the entries the snapshot covers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::limits::{MAX_ENTRY_BYTES, SNAPSHOT_BYTES_MAX};

pub(crate) const LOG_FILE: &str = "raft-log";
const LOG_TMP: &str = "raft-log.tmp";
/// A damaged log is kept under this prefix (plus a number) before it is
/// rewritten: its bytes after the damage may be the only copy of something.
const LOG_DAMAGED_PREFIX: &str = "raft-log.damaged-";
const HARD_STATE_FILE: &str = "raft-hard-state";
const HARD_STATE_TMP: &str = "raft-hard-state.tmp";
pub(crate) const SNAPSHOT_FILE: &str = "raft-snapshot";
const SNAPSHOT_TMP: &str = "raft-snapshot.tmp";
const RECORD_HEADER: usize = 8;

const MARKER_MAGIC: &[u8; 4] = b"SPRM";
const MARKER_VERSION: u16 = 1;
/// magic, version, index_max, term_max.
const MARKER_BYTES: usize = 4 + 2 + 8 + 8;

const SNAPSHOT_MAGIC: &[u8; 4] = b"SPMS";
const SNAPSHOT_VERSION: u16 = 1;
/// magic, version, index, term, payload length.
const SNAPSHOT_HEADER: usize = 4 + 2 + 8 + 8 + 4;
const SNAPSHOT_TRAILER: usize = 4;

/// What a node whose log was damaged must hold again before it may vote or
/// campaign: it may have acknowledged entries up to `index_max`, in terms up
/// to `term_max`, that it no longer has. Its log covers them again once it
/// reaches `index_max` or holds an entry of a later term (from a leader
/// elected after the damage, whose log has every entry committed before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RepairNeed {
    pub index_max: u64,
    pub term_max: u64,
}

impl RepairNeed {
    pub fn merge(a: Option<RepairNeed>, b: Option<RepairNeed>) -> Option<RepairNeed> {
        match (a, b) {
            (Some(a), Some(b)) => {
                Some(RepairNeed { index_max: a.index_max.max(b.index_max), term_max: a.term_max.max(b.term_max) })
            }
            (a, b) => a.or(b),
        }
    }

    /// Whether a log ending at (last_index, last_term) covers what was lost.
    pub fn met_by(&self, last_index: u64, last_term: u64) -> bool {
        last_index >= self.index_max || last_term > self.term_max
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MARKER_BYTES);
        b.extend_from_slice(MARKER_MAGIC);
        b.extend_from_slice(&MARKER_VERSION.to_be_bytes());
        b.extend_from_slice(&self.index_max.to_be_bytes());
        b.extend_from_slice(&self.term_max.to_be_bytes());
        debug_assert_eq!(b.len(), MARKER_BYTES);
        b
    }

    pub(crate) fn decode(payload: &[u8]) -> Option<RepairNeed> {
        if payload.len() != MARKER_BYTES || &payload[..4] != MARKER_MAGIC {
            return None;
        }
        if u16::from_be_bytes([payload[4], payload[5]]) != MARKER_VERSION {
            return None;
        }
        let index_max = u64::from_be_bytes(payload[6..14].try_into().ok()?);
        let term_max = u64::from_be_bytes(payload[14..22].try_into().ok()?);
        Some(RepairNeed { index_max, term_max })
    }
}

/// A bad record with valid records after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogDamage {
    pub path: PathBuf,
    /// Byte position of the first bad record in the log file.
    pub position_bytes: u64,
    /// Index of the last valid entry record in the file: the end of the log
    /// as it was before the damage (a later record replaces the suffix from
    /// its index, so the last one ends the log).
    pub index_max: u64,
    /// Highest term of any valid entry record in the file.
    pub term_max: u64,
}

/// What `open` or `load` found on disk.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The snapshot the log continues from, if any.
    pub snapshot: Option<Snapshot>,
    /// The log after the snapshot (or from index 1), without gaps, conflicts
    /// resolved; with damage, only the entries before it.
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    /// Bytes cut from the end of the log file (a torn tail).
    pub cut_bytes: u64,
    pub damage: Option<LogDamage>,
    /// From repair markers in the log: what the node must get back.
    pub repair: Option<RepairNeed>,
    /// Entries after the snapshot were dropped (they did not continue it):
    /// the caller rewrites the log.
    pub discarded: bool,
}

impl Recovered {
    pub fn snapshot_index_term(&self) -> (u64, u64) {
        self.snapshot.as_ref().map_or((0, 0), |s| (s.get_metadata().index, s.get_metadata().term))
    }

    /// The (index, term) the recovered log ends at.
    pub fn last_index_term(&self) -> (u64, u64) {
        self.entries.last().map_or_else(|| self.snapshot_index_term(), |e| (e.index, e.term))
    }
}

#[derive(Debug)]
pub(crate) struct DiskStorage {
    dir: PathBuf,
    log: File,
    /// Size of the log file.
    log_bytes: u64,
    /// Its size when it was last rewritten (0 at open: a log found long
    /// counts whole). A snapshot is due when it has grown too much since.
    log_bytes_rewritten: u64,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Create `dir` and any missing parent, syncing the parent of each created
/// directory so the new entries survive a power failure.
fn create_dir_synced(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d.to_path_buf());
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Write `content` to `dir/tmp`, fsync it, rename it over `dir/name` and
/// fsync the directory: a crash leaves the old file or the new one.
fn write_atomic(dir: &Path, tmp: &str, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp = dir.join(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

pub(crate) fn encode_record(buf: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_ENTRY_BYTES as usize {
        return Err(invalid(format!("log record of {} bytes", payload.len())));
    }
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

pub(crate) fn encode_entries(buf: &mut Vec<u8>, entries: &[Entry]) -> io::Result<()> {
    for e in entries {
        // An entry index 0 would read back as a bad record.
        assert!(e.index >= 1, "raft entry index 0");
        let payload = e.write_to_bytes().map_err(|err| invalid(format!("encode entry: {err}")))?;
        encode_record(buf, &payload)?;
    }
    Ok(())
}

impl DiskStorage {
    /// Load what is on disk, cut a torn tail of the log, and open the log
    /// for appends. A damaged middle is reported, not cut.
    pub fn open(dir: &Path) -> io::Result<(DiskStorage, Recovered)> {
        create_dir_synced(dir)?;
        for tmp in [LOG_TMP, SNAPSHOT_TMP, HARD_STATE_TMP] {
            match fs::remove_file(dir.join(tmp)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let log_path = dir.join(LOG_FILE);
        let existed = log_path.exists();
        let (recovered, good_bytes) = load_inner(dir)?;
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        if recovered.cut_bytes > 0 {
            tracing::warn!(
                path = %log_path.display(),
                cut_bytes = recovered.cut_bytes,
                kept_bytes = good_bytes,
                "metadata log: cutting a torn tail"
            );
            log.set_len(good_bytes)?;
            log.sync_all()?;
        }
        if !existed {
            sync_dir(dir)?;
        }
        let log_bytes = log.metadata()?.len();
        Ok((DiskStorage { dir: dir.to_path_buf(), log, log_bytes, log_bytes_rewritten: 0 }, recovered))
    }

    /// Bytes appended to the log since it was last rewritten (or opened).
    pub fn log_bytes_appended(&self) -> u64 {
        self.log_bytes - self.log_bytes_rewritten
    }

    /// Append entries and fsync before returning: only then may Raft tell
    /// peers they are persisted.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        encode_entries(&mut buf, entries)?;
        self.log.write_all(&buf)?;
        self.log.sync_data()?;
        self.log_bytes += buf.len() as u64;
        Ok(())
    }

    /// Replace the log with `entries`, after a repair marker if the node
    /// still has something to get back. Atomic: tmp file, fsync, rename,
    /// fsync the directory.
    pub fn rewrite_log(&mut self, entries: &[Entry], repair: Option<RepairNeed>) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(r) = repair {
            encode_record(&mut buf, &r.encode())?;
        }
        encode_entries(&mut buf, entries)?;
        write_atomic(&self.dir, LOG_TMP, LOG_FILE, &buf)?;
        self.log = OpenOptions::new().append(true).open(self.dir.join(LOG_FILE))?;
        self.log_bytes = buf.len() as u64;
        self.log_bytes_rewritten = self.log_bytes;
        Ok(())
    }

    /// Keep the damaged log under a new name (a hard link, so `raft-log`
    /// never goes missing) before it is rewritten. Returns the new name.
    pub fn preserve_damaged_log(&self) -> io::Result<PathBuf> {
        for n in 1..=u32::MAX {
            let path = self.dir.join(format!("{LOG_DAMAGED_PREFIX}{n}"));
            match fs::hard_link(self.dir.join(LOG_FILE), &path) {
                Ok(()) => {
                    sync_dir(&self.dir)?;
                    return Ok(path);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(invalid("no free name for a damaged log".into()))
    }

    /// Replace the hard state atomically.
    pub fn set_hard_state(&mut self, hs: &HardState) -> io::Result<()> {
        let payload = hs.write_to_bytes().map_err(|err| invalid(format!("encode hard state: {err}")))?;
        let mut content = crc32c::crc32c(&payload).to_be_bytes().to_vec();
        content.extend_from_slice(&payload);
        write_atomic(&self.dir, HARD_STATE_TMP, HARD_STATE_FILE, &content)
    }

    /// Replace the snapshot file atomically. The encoded bytes are decoded
    /// again (and compared) before they are written.
    pub fn write_snapshot(&mut self, snap: &Snapshot) -> io::Result<()> {
        let content = encode_snapshot(snap)?;
        let back = decode_snapshot(&content, &self.dir.join(SNAPSHOT_TMP))?;
        assert_eq!(back.get_metadata(), snap.get_metadata(), "snapshot encoding round trip");
        write_atomic(&self.dir, SNAPSHOT_TMP, SNAPSHOT_FILE, &content)
    }
}

/// What is on disk, without changing anything (for offline readers): a torn
/// tail is left in place and simply not read.
pub(crate) fn load(dir: &Path) -> io::Result<Recovered> {
    load_inner(dir).map(|(r, _)| r)
}

fn load_inner(dir: &Path) -> io::Result<(Recovered, u64)> {
    let hard_state = read_hard_state(&dir.join(HARD_STATE_FILE))?;
    let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
    let log_path = dir.join(LOG_FILE);
    let data = match fs::read(&log_path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    recover(hard_state, snapshot, &data, &log_path)
}

/// What a log file's bytes hold after `snapshot` (`load_inner`'s work once
/// the files are read): (what was recovered, the readable prefix's bytes).
pub(crate) fn recover(
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    data: &[u8],
    log_path: &Path,
) -> io::Result<(Recovered, u64)> {
    let parsed = parse_log(data);
    let damage = parsed.damage.map(|d| LogDamage {
        path: log_path.to_path_buf(),
        position_bytes: d.position_bytes,
        index_max: d.index_max,
        term_max: d.term_max,
    });
    let cut_bytes = if damage.is_some() { 0 } else { (data.len() - parsed.good_bytes) as u64 };
    let mut r = Recovered {
        snapshot,
        entries: parsed.entries,
        hard_state,
        cut_bytes,
        damage,
        repair: parsed.repair,
        discarded: false,
    };
    continue_snapshot(&mut r, log_path)?;
    Ok((r, parsed.good_bytes as u64))
}

/// Keep only the entries after the snapshot, and only if they continue it.
fn continue_snapshot(r: &mut Recovered, log_path: &Path) -> io::Result<()> {
    let (snap_index, snap_term) = r.snapshot_index_term();
    let Some(first) = r.entries.first().map(|e| e.index) else {
        return Ok(());
    };
    if first > snap_index + 1 && r.damage.is_some() {
        // What is left of a damaged log does not reach the snapshot: the
        // node starts from the snapshot and gets the rest from the leader.
        r.entries.clear();
        return Ok(());
    }
    if first > snap_index + 1 {
        // Compaction writes the snapshot before it drops entries, so an
        // undamaged log always continues its snapshot.
        return Err(invalid(format!(
            "{}: log starts at index {first}, after the snapshot at {snap_index}: entries missing",
            log_path.display()
        )));
    }
    let at_snap = r.entries.iter().find(|e| e.index == snap_index).map(|e| e.term);
    let last = r.entries.last().map_or(0, |e| e.index);
    // Entries after the snapshot are kept if the log holds the snapshot's
    // own entry (same index and term: by Log Matching the rest follows it)
    // or starts right after it (appended after the snapshot was installed).
    // Otherwise they are what a crash left between installing a leader's
    // snapshot and rewriting the log: uncommitted, since they conflict with
    // a committed prefix.
    let continues = first == snap_index + 1 || at_snap == Some(snap_term);
    if snap_index > 0 && (!continues || last < snap_index) {
        r.discarded = r.entries.iter().any(|e| e.index > snap_index);
        r.entries.clear();
        if r.discarded {
            tracing::warn!(path = %log_path.display(), snap_index, "metadata log does not continue its snapshot: entries after it dropped");
        }
        return Ok(());
    }
    r.entries.retain(|e| e.index > snap_index);
    Ok(())
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

/// `[magic SPMS][u16 version][u64 index][u64 term][u32 len][protobuf
/// eraftpb::Snapshot][u32 crc32c of everything before]`.
pub(crate) fn encode_snapshot(snap: &Snapshot) -> io::Result<Vec<u8>> {
    let meta = snap.get_metadata();
    assert!(meta.index >= 1, "a snapshot at index 0");
    let payload = snap.write_to_bytes().map_err(|e| invalid(format!("encode snapshot: {e}")))?;
    if payload.len() > SNAPSHOT_BYTES_MAX {
        return Err(invalid(format!("snapshot of {} bytes (at most {SNAPSHOT_BYTES_MAX})", payload.len())));
    }
    let mut b = Vec::with_capacity(SNAPSHOT_HEADER + payload.len() + SNAPSHOT_TRAILER);
    b.extend_from_slice(SNAPSHOT_MAGIC);
    b.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    b.extend_from_slice(&meta.index.to_be_bytes());
    b.extend_from_slice(&meta.term.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    Ok(b)
}

pub(crate) fn decode_snapshot(data: &[u8], path: &Path) -> io::Result<Snapshot> {
    let bad = |what: &str| {
        invalid(format!("{}: damaged snapshot ({what}); refusing to start from an older state", path.display()))
    };
    if data.len() < SNAPSHOT_HEADER + SNAPSHOT_TRAILER {
        return Err(bad("too short"));
    }
    let (body, trailer) = data.split_at(data.len() - SNAPSHOT_TRAILER);
    let crc = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(bad("CRC mismatch"));
    }
    if &body[..4] != SNAPSHOT_MAGIC || u16::from_be_bytes([body[4], body[5]]) != SNAPSHOT_VERSION {
        return Err(bad("magic or version"));
    }
    let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap_or([0; 8]));
    let (index, term) = (u64_at(6), u64_at(14));
    let len = u32::from_be_bytes([body[22], body[23], body[24], body[25]]) as usize;
    if len != body.len() - SNAPSHOT_HEADER {
        return Err(bad("length"));
    }
    let snap = Snapshot::parse_from_bytes(&body[SNAPSHOT_HEADER..]).map_err(|e| bad(&e.to_string()))?;
    let meta = snap.get_metadata();
    if meta.index != index || meta.term != term || index == 0 {
        return Err(bad("index or term differs from its header"));
    }
    Ok(snap)
}

fn read_snapshot(path: &Path) -> io::Result<Option<Snapshot>> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The length is checked before the file is read into memory.
    if len > (SNAPSHOT_HEADER + SNAPSHOT_BYTES_MAX + SNAPSHOT_TRAILER) as u64 {
        return Err(invalid(format!("{}: damaged snapshot ({len} bytes)", path.display())));
    }
    decode_snapshot(&fs::read(path)?, path).map(Some)
}

enum Record {
    Entry(Entry),
    Marker(RepairNeed),
}

/// The record at `pos` and its length in bytes, if it is well framed, its
/// CRC matches and its payload decodes (an entry needs an index >= 1).
fn record_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let h = data.get(pos..pos + RECORD_HEADER)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    // The length is checked against the cap and the bytes present first.
    if len > MAX_ENTRY_BYTES || (data.len() - pos - RECORD_HEADER) < len as usize {
        return None;
    }
    let payload = &data[pos + RECORD_HEADER..pos + RECORD_HEADER + len as usize];
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let size = RECORD_HEADER + len as usize;
    if payload.starts_with(MARKER_MAGIC) {
        return RepairNeed::decode(payload).map(|m| (Record::Marker(m), size));
    }
    let entry = Entry::parse_from_bytes(payload).ok()?;
    (entry.index >= 1).then_some((Record::Entry(entry), size))
}

/// The first position at or after `from` where a valid record starts.
fn resync(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(RECORD_HEADER - 1)).find(|p| record_at(data, *p).is_some())
}

struct ParsedDamage {
    position_bytes: u64,
    index_max: u64,
    term_max: u64,
}

struct ParsedLog {
    entries: Vec<Entry>,
    /// Length of the readable prefix of the file.
    good_bytes: usize,
    repair: Option<RepairNeed>,
    damage: Option<ParsedDamage>,
}

/// The entries of a log file up to its first bad record, and whether valid
/// records follow that record (damage) or not (a torn tail).
fn parse_log(data: &[u8]) -> ParsedLog {
    let mut entries: Vec<Entry> = Vec::new();
    let mut repair = None;
    let mut pos = 0;
    while pos < data.len() {
        let Some((record, size)) = record_at(data, pos) else {
            break;
        };
        match record {
            Record::Marker(m) => repair = RepairNeed::merge(repair, Some(m)),
            Record::Entry(entry) => {
                let last = entries.last().map(|e| e.index);
                // Indexes never skip one (the first may be anything).
                if last.is_some_and(|l| entry.index > l + 1) {
                    break;
                }
                // A conflict: this entry replaces the suffix from its index on.
                entries.retain(|e| e.index < entry.index);
                entries.push(entry);
            }
        }
        pos += size;
    }
    let mut parsed = ParsedLog { entries, good_bytes: pos, repair, damage: None };
    if pos == data.len() {
        return parsed;
    }
    // A bad record at `pos`. Any valid record after it makes it damage.
    let Some(mut p) = resync(data, pos + 1) else {
        return parsed;
    };
    let mut term_max = parsed.entries.iter().map(|e| e.term).max().unwrap_or(0);
    let mut index_min_after = u64::MAX;
    let mut index_last_after = None;
    loop {
        let Some((record, size)) = record_at(data, p) else {
            match resync(data, p + 1) {
                Some(q) => {
                    p = q;
                    continue;
                }
                None => break,
            }
        };
        match record {
            Record::Marker(m) => parsed.repair = RepairNeed::merge(parsed.repair, Some(m)),
            Record::Entry(e) => {
                index_min_after = index_min_after.min(e.index);
                index_last_after = Some(e.index);
                term_max = term_max.max(e.term);
            }
        }
        p += size;
        if p >= data.len() {
            break;
        }
    }
    // What the log held after the damage is unknown: a damaged record may
    // have replaced a suffix (a conflict), so the entries before it are
    // kept only below the first index a later record rewrote. They are a
    // log this node really held (a past one), which Raft tolerates.
    let known_last = parsed.entries.last().map_or(0, |e| e.index).min(index_min_after.saturating_sub(1));
    parsed.entries.retain(|e| e.index <= known_last);
    // The last valid record ends the log as it was; and at least one entry
    // must come back from a leader (so that reaching index_max proves the
    // log matches a leader's).
    let index_max = index_last_after.unwrap_or(0).max(known_last + 1);
    parsed.damage = Some(ParsedDamage { position_bytes: pos as u64, index_max, term_max });
    parsed
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
        let third_start = parse_log(&data[..data.len() - 1]).good_bytes;
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

    /// Byte positions where each record of the log file starts.
    fn record_starts(d: &Path) -> Vec<usize> {
        let data = fs::read(d.join(LOG_FILE)).expect("read");
        let mut starts = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            starts.push(pos);
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            pos += RECORD_HEADER + len;
        }
        starts
    }

    fn flip(d: &Path, at: usize) {
        let mut data = fs::read(d.join(LOG_FILE)).expect("read");
        data[at] ^= 0x40;
        fs::write(d.join(LOG_FILE), &data).expect("write");
    }

    // Before issue 13 the first bad record ended the log wherever it was:
    // this open cut the file after entry 1, dropping entries 3 and 4 that
    // the node may have acknowledged and the cluster committed.
    #[test]
    fn damage_in_the_middle_is_reported_not_cut() {
        let d = dir("middle");
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        s.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 2, "c"), entry(4, 2, "d")]).expect("append");
        drop(s);
        let starts = record_starts(&d);
        let full = log_len(&d);
        flip(&d, starts[1] + RECORD_HEADER + 1);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(log_len(&d), full, "nothing cut");
        assert_eq!(r.cut_bytes, 0);
        assert_eq!(summary(&r), vec![(1, 1, "a".into())]);
        let damage = r.damage.expect("damage reported");
        assert_eq!(damage.position_bytes, starts[1] as u64);
        assert_eq!((damage.index_max, damage.term_max), (4, 2));
        // A damaged length field is found the same way (by resyncing on
        // the next valid record), and is not an allocation.
        flip(&d, starts[1] + RECORD_HEADER + 1); // undone
        let mut data = fs::read(d.join(LOG_FILE)).expect("read");
        data[starts[2]] = 0xff;
        let d2 = dir("middle-len");
        fs::create_dir_all(&d2).expect("mkdir");
        fs::write(d2.join(LOG_FILE), &data).expect("write");
        let r = load(&d2).expect("load");
        assert_eq!(r.entries.len(), 2);
        let damage = r.damage.expect("damage reported");
        assert_eq!((damage.position_bytes, damage.index_max), (starts[2] as u64, 4));
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let d = dir("zeros");
        write_three(&d);
        let full = log_len(&d);
        let mut data = fs::read(d.join(LOG_FILE)).expect("read");
        data.extend_from_slice(&[0; 4096]);
        fs::write(d.join(LOG_FILE), &data).expect("write");
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert!(r.damage.is_none());
        assert_eq!((r.entries.len(), r.cut_bytes), (3, 4096));
        assert_eq!(log_len(&d), full);
    }

    #[test]
    fn entries_a_later_record_rewrote_are_not_trusted_after_damage() {
        let d = dir("rewrote");
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        s.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c"), entry(4, 1, "d")]).expect("append");
        // A new leader replaced index 3 on: the old 3 is no longer the log.
        s.append(&[entry(3, 2, "x")]).expect("append");
        drop(s);
        let starts = record_starts(&d);
        flip(&d, starts[3] + RECORD_HEADER + 1); // entry 4, before the conflict record
        let r = load(&d).expect("load");
        assert_eq!(summary(&r), vec![(1, 1, "a".into()), (2, 1, "b".into())]);
        let damage = r.damage.expect("damage");
        assert_eq!((damage.index_max, damage.term_max), (3, 2));
    }

    #[test]
    fn a_repair_marker_survives_a_rewrite_and_reopen() {
        let d = dir("marker");
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        let need = RepairNeed { index_max: 9, term_max: 3 };
        s.rewrite_log(&[entry(1, 1, "a"), entry(2, 1, "b")], Some(need)).expect("rewrite");
        s.append(&[entry(3, 4, "c")]).expect("append");
        drop(s);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(r.repair, Some(need));
        assert_eq!(r.entries.len(), 3);
        assert!(need.met_by(3, 4), "an entry of a later term repairs");
        assert!(!need.met_by(8, 3));
        assert!(need.met_by(9, 3));
        assert!(!d.join(LOG_TMP).exists());
    }

    fn snapshot(index: u64, term: u64, data: &str) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.data = data.as_bytes().to_vec().into();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap
    }

    #[test]
    fn snapshot_and_compacted_log_survive_reopen() {
        let d = dir("snapshot");
        write_three(&d);
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        s.write_snapshot(&snapshot(2, 1, "image")).expect("snapshot");
        s.rewrite_log(&[entry(3, 1, "c")], None).expect("rewrite");
        s.append(&[entry(4, 1, "d")]).expect("append");
        drop(s);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert_eq!(r.snapshot_index_term(), (2, 1));
        assert_eq!(&r.snapshot.as_ref().expect("snapshot").data[..], b"image");
        assert_eq!(summary(&r), vec![(3, 1, "c".into()), (4, 1, "d".into())]);
        // A log that does not reach its snapshot is an error, not a gap.
        s = DiskStorage::open(&d).expect("open").0;
        s.rewrite_log(&[entry(5, 1, "e")], None).expect("rewrite");
        drop(s);
        assert!(DiskStorage::open(&d).is_err());
    }

    #[test]
    fn a_damaged_snapshot_refuses_to_open() {
        let d = dir("badsnap");
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        s.write_snapshot(&snapshot(7, 2, "image")).expect("snapshot");
        drop(s);
        let p = d.join(SNAPSHOT_FILE);
        let mut data = fs::read(&p).expect("read");
        let n = data.len();
        data[n / 2] ^= 1;
        fs::write(&p, &data).expect("write");
        let err = DiskStorage::open(&d).expect_err("damaged snapshot");
        assert!(err.to_string().contains("raft-snapshot"), "{err}");
        // An absurd size is refused before it is read.
        let f = File::options().write(true).open(&p).expect("open");
        f.set_len((SNAPSHOT_BYTES_MAX + 64) as u64).expect("grow");
        assert!(DiskStorage::open(&d).is_err());
    }

    #[test]
    fn entries_that_do_not_continue_an_installed_snapshot_are_dropped() {
        let d = dir("installed");
        write_three(&d);
        // A leader's snapshot at 5 (term 3) was installed; the crash came
        // before the log was emptied.
        let (mut s, _) = DiskStorage::open(&d).expect("open");
        s.write_snapshot(&snapshot(5, 3, "image")).expect("snapshot");
        drop(s);
        let (_, r) = DiskStorage::open(&d).expect("open");
        assert!(r.entries.is_empty());
        assert!(!r.discarded, "entries below the snapshot are simply covered");
        assert_eq!(r.last_index_term(), (5, 3));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the bytes, reading them never panics, never allocates
        /// past what is there, and a reported damage lies inside the file.
        #[test]
        fn any_bytes_parse_without_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let parsed = parse_log(&data);
            proptest::prop_assert!(parsed.good_bytes <= data.len());
            if let Some(d) = parsed.damage {
                proptest::prop_assert!((d.position_bytes as usize) < data.len());
            }
        }

        /// One flipped byte in any record but the last is damage: nothing
        /// is cut, only entries before that record are kept, and the end
        /// of the log is known. In the last record it is a torn tail.
        #[test]
        fn a_flip_is_damage_unless_in_the_last_record(
            n in 2usize..12,
            pick in 0usize..1000,
            byte in 0usize..1000,
            bit in 0u8..8,
        ) {
            let d = dir(&format!("prop-flip-{n}-{pick}-{byte}-{bit}"));
            let (mut s, _) = DiskStorage::open(&d).expect("open");
            let entries: Vec<Entry> = (1..=n as u64).map(|i| entry(i, 1 + i / 4, &"x".repeat(i as usize))).collect();
            s.append(&entries).expect("append");
            drop(s);
            let starts = record_starts(&d);
            let k = pick % n;
            let mut data = fs::read(d.join(LOG_FILE)).expect("read");
            let end = if k + 1 < n { starts[k + 1] } else { data.len() };
            let at = starts[k] + byte % (end - starts[k]);
            data[at] ^= 1 << bit;
            let parsed = parse_log(&data);
            proptest::prop_assert!(parsed.entries.len() <= k);
            proptest::prop_assert!(parsed.entries.iter().zip(&entries).all(|(a, b)| a == b));
            match parsed.damage {
                Some(dmg) => {
                    proptest::prop_assert!(k + 1 < n);
                    proptest::prop_assert_eq!(dmg.position_bytes as usize, starts[k]);
                    proptest::prop_assert_eq!(dmg.index_max, n as u64);
                }
                None => {
                    proptest::prop_assert_eq!(k + 1, n);
                    proptest::prop_assert_eq!(parsed.good_bytes, starts[k]);
                }
            }
            let _ = fs::remove_dir_all(&d);
        }
    }
}
