//! A simulated disk for tests: it records every operation, keeps for each
//! file what survives a crash (bytes covered by an fdatasync) apart from what
//! does not yet, injects EIO on a chosen write or fdatasync, and flips bits.
//! It enforces the O_DIRECT alignment rules, so alignment bugs show up here
//! as they would on a real disk.
//!
//! Model of the media, stated so tests can rely on it: written bytes become
//! durable only at the next `fdatasync` of their file; a crash may drop
//! unsynced writes or tear one of them at any byte. Two kinds of crash:
//!
//! - [`SimStorage::crash`] (a process crash, or a power loss after the
//!   journal committed every metadata change): torn bytes are old or new,
//!   never garbage, and metadata operations (create, rename, remove,
//!   truncate) are durable at once.
//! - [`SimStorage::power_loss`]: a directory entry (a created, renamed or
//!   removed file or a created directory) survives only if a `sync_dir` of
//!   its parent covered it, else the entry reverts (a created file
//!   vanishes, a rename reverts, a removal comes back); a file's size
//!   reverts to what its last `fdatasync` covered (truncations and
//!   extensions since then are lost); and the sector a torn write was in
//!   the middle of reads as zeros or garbage ([`TornSector`]) unless it held
//!   synced bytes: overwriting a sector of synced data is atomic (old or
//!   new), as NVMe's atomic write unit makes one logical block.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::{IoBuf, Storage, StorageFile};
use crate::limits::IO_ALIGN_BYTES;

/// One recorded operation, enough to replay a workload up to any point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceOp {
    Create {
        path: PathBuf,
    },
    Write {
        path: PathBuf,
        pos: u64,
        data: Vec<u8>,
    },
    Sync {
        path: PathBuf,
    },
    Truncate {
        path: PathBuf,
        len: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// `create_dir_all`: the directory and every missing parent.
    CreateDir {
        path: PathBuf,
    },
    SyncDir {
        path: PathBuf,
    },
}

/// What the sector a torn write was in the middle of holds after a power
/// loss (see [`SimStorage::power_loss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornSector {
    /// Old or new bytes, as [`SimStorage::crash`] leaves them.
    OldOrNew,
    /// Zeros, as ext4 reads an unwritten extent.
    Zeros,
    /// Bytes that were never written there.
    Garbage,
}

/// The device's logical sector: the unit a torn write damages.
pub const SIM_SECTOR_BYTES: usize = 512;

/// What a crash leaves of unsynced writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// Every unsynced write made it (the OS wrote back before the crash).
    KeepUnsynced,
    /// Unsynced writes made it except the newest, of which only the first
    /// `keep_bytes` bytes reached the media.
    TearNewestWrite { keep_bytes: usize },
    /// Unsynced writes made it except the oldest: writes in flight together
    /// may reach the media in any order.
    DropOldestUnsynced,
}

#[derive(Debug, Default)]
struct SimFileData {
    path: PathBuf,
    volatile: Vec<u8>,
    /// What survives a crash that keeps metadata: the last synced bytes,
    /// sized as the file is now.
    durable: Vec<u8>,
    /// The file exactly as its last `fdatasync` left it (size included):
    /// what survives a power loss.
    synced: Vec<u8>,
    /// Writes since the last fdatasync, in issue order: (sequence, pos, data).
    unsynced: Vec<(u64, u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct SimDisk {
    files: BTreeMap<PathBuf, Rc<RefCell<SimFileData>>>,
    /// The directory entries as of the last `sync_dir` of their parent.
    durable_files: BTreeMap<PathBuf, Rc<RefCell<SimFileData>>>,
    /// Directories made by `create_dir_all`; any other one is taken to
    /// exist from the start (the test's root).
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    trace: Vec<TraceOp>,
    write_sequence: u64,
    writes_done: u64,
    syncs_done: u64,
    write_fail_at: Option<u64>,
    sync_fail_at: Option<u64>,
}

/// The simulated disk. Clones share the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    disk: Rc<RefCell<SimDisk>>,
}

/// A handle to a simulated file; it keeps working after a rename or remove,
/// as a file descriptor does.
#[derive(Debug)]
pub struct SimFile {
    data: Rc<RefCell<SimFileData>>,
    disk: Rc<RefCell<SimDisk>>,
}

/// A plain heap buffer; the simulated disk checks alignment of positions
/// and lengths, not of addresses.
#[derive(Debug)]
pub struct SimBuf(Vec<u8>);

impl IoBuf for SimBuf {
    fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn check_aligned(what: &str, value: u64) -> io::Result<()> {
    if !value.is_multiple_of(IO_ALIGN_BYTES) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("direct I/O {what} {value} is not aligned to {IO_ALIGN_BYTES}"),
        ));
    }
    Ok(())
}

fn write_into(target: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let end = pos as usize + data.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[pos as usize..end].copy_from_slice(data);
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected EIO on {what}"))
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every operation so far, in order.
    pub fn trace(&self) -> Vec<TraceOp> {
        self.disk.borrow().trace.clone()
    }

    /// Number of operations recorded so far.
    pub fn trace_len(&self) -> usize {
        self.disk.borrow().trace.len()
    }

    /// A fresh disk holding the result of `ops` (nothing crashed yet).
    pub fn replay(ops: &[TraceOp]) -> Self {
        let storage = SimStorage::new();
        for op in ops {
            storage.apply(op);
        }
        storage.disk.borrow_mut().trace.clear();
        storage
    }

    fn apply(&self, op: &TraceOp) {
        let mut disk = self.disk.borrow_mut();
        match op {
            TraceOp::Create { path } => {
                disk.files
                    .entry(path.clone())
                    .or_insert_with(|| Rc::new(RefCell::new(SimFileData { path: path.clone(), ..Default::default() })));
            }
            TraceOp::Write { path, .. } | TraceOp::Sync { path } => {
                if let Some(file) = disk.files.get(path).cloned() {
                    apply_data_op(&mut disk, &file, op);
                }
            }
            TraceOp::Truncate { path, len } => {
                if let Some(file) = disk.files.get(path) {
                    truncate_data(&mut file.borrow_mut(), *len);
                }
            }
            TraceOp::Rename { from, to } => {
                if let Some(file) = disk.files.remove(from) {
                    file.borrow_mut().path = to.clone();
                    disk.files.insert(to.clone(), file);
                }
            }
            TraceOp::Remove { path } => {
                disk.files.remove(path);
            }
            TraceOp::CreateDir { path } => {
                for dir in path.ancestors().filter(|dir| dir.parent().is_some_and(|p| !p.as_os_str().is_empty())) {
                    disk.dirs.insert(dir.to_path_buf());
                }
                // A bare relative name's parent is "." (ancestors stop at "").
                if path.parent().is_some_and(|p| p.as_os_str().is_empty()) {
                    disk.dirs.insert(path.clone());
                }
            }
            TraceOp::SyncDir { path } => {
                let dir = normalize_dir(path);
                let disk = &mut *disk;
                disk.durable_files.retain(|entry, _| parent_dir(entry) != dir);
                for (entry, file) in &disk.files {
                    if parent_dir(entry) == dir {
                        disk.durable_files.insert(entry.clone(), file.clone());
                    }
                }
                disk.durable_dirs.retain(|entry| parent_dir(entry) != dir);
                for entry in &disk.dirs {
                    if parent_dir(entry) == dir {
                        disk.durable_dirs.insert(entry.clone());
                    }
                }
            }
        }
    }

    /// The disk as it would be found after a crash now, metadata kept
    /// (see the module doc); torn bytes are old or new.
    pub fn crash(&self, mode: CrashMode) -> SimStorage {
        self.crash_with(mode, TornSector::OldOrNew)
    }

    /// As [`SimStorage::crash`], with the sector a torn write was in the
    /// middle of (under [`CrashMode::TearNewestWrite`]) holding `torn`
    /// unless it held synced bytes.
    pub fn crash_with(&self, mode: CrashMode, torn: TornSector) -> SimStorage {
        let disk = self.disk.borrow();
        let unsynced = UnsyncedWrites::of(&disk.files);
        let crashed = SimStorage::new();
        {
            let mut out = crashed.disk.borrow_mut();
            for (path, file) in &disk.files {
                let file = file.borrow();
                let image = crash_image(&file, file.durable.clone(), mode, &unsynced, torn);
                out.insert_durable(path, image);
            }
            out.dirs = disk.dirs.clone();
            out.durable_dirs = disk.dirs.clone();
        }
        crashed
    }

    /// The disk as it would be found after a power loss now: directory
    /// entries not covered by a `sync_dir` revert, file sizes revert to
    /// what their last `fdatasync` covered, unsynced writes go as `mode`
    /// says and a torn sector holds `torn` unless it held synced bytes.
    pub fn power_loss(&self, mode: CrashMode, torn: TornSector) -> SimStorage {
        let disk = self.disk.borrow();
        let unsynced = UnsyncedWrites::of(&disk.durable_files);
        // A directory survives if every one of its ancestors made by
        // `create_dir_all` is in a synced parent.
        let survives = |dir: &Path| dir.ancestors().all(|a| !disk.dirs.contains(a) || disk.durable_dirs.contains(a));
        let crashed = SimStorage::new();
        {
            let mut out = crashed.disk.borrow_mut();
            for (path, file) in disk.durable_files.iter().filter(|(path, _)| survives(&parent_dir(path))) {
                let file = file.borrow();
                let mut image = crash_image(&file, file.synced.clone(), mode, &unsynced, torn);
                image.resize(file.synced.len(), 0);
                out.insert_durable(path, image);
            }
            out.dirs = disk.dirs.iter().filter(|dir| survives(dir)).cloned().collect();
            out.durable_dirs = out.dirs.clone();
        }
        crashed
    }

    /// Fails the `n`th fdatasync from now (0 = the next one) with EIO. Later
    /// ones succeed again, as a kernel that dropped the dirty pages would.
    pub fn fail_sync_at(&self, n: u64) {
        let mut disk = self.disk.borrow_mut();
        disk.sync_fail_at = Some(disk.syncs_done + n);
    }

    /// Fails the `n`th write from now (0 = the next one) with EIO.
    pub fn fail_write_at(&self, n: u64) {
        let mut disk = self.disk.borrow_mut();
        disk.write_fail_at = Some(disk.writes_done + n);
    }

    /// Flips one bit of a file, in both its durable and volatile image.
    pub fn flip_bit(&self, path: &Path, byte_pos: usize, bit: u8) -> bool {
        let disk = self.disk.borrow();
        let Some(file) = disk.files.get(path) else { return false };
        let mut file = file.borrow_mut();
        let file = &mut *file;
        let mask = 1u8 << (bit % 8);
        let mut flipped = false;
        for image in [&mut file.volatile, &mut file.durable, &mut file.synced] {
            if let Some(byte) = image.get_mut(byte_pos) {
                *byte ^= mask;
                flipped = true;
            }
        }
        flipped
    }

    /// The current (volatile) content of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.disk.borrow().files.get(path).map(|file| file.borrow().volatile.clone())
    }

    /// Every file path on the disk.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.disk.borrow().files.keys().cloned().collect()
    }

    fn record(&self, op: TraceOp) {
        self.disk.borrow_mut().trace.push(op);
    }
}

/// The sequence numbers of the newest and oldest unsynced writes.
struct UnsyncedWrites {
    newest: Option<u64>,
    oldest: Option<u64>,
}

impl UnsyncedWrites {
    fn of(files: &BTreeMap<PathBuf, Rc<RefCell<SimFileData>>>) -> Self {
        let sequences: Vec<u64> = files
            .values()
            .flat_map(|file| file.borrow().unsynced.iter().map(|write| write.0).collect::<Vec<_>>())
            .collect();
        UnsyncedWrites { newest: sequences.iter().max().copied(), oldest: sequences.iter().min().copied() }
    }
}

/// `base` (what is on the media for sure) with the unsynced writes of
/// `file` that `mode` keeps.
fn crash_image(
    file: &SimFileData,
    mut image: Vec<u8>,
    mode: CrashMode,
    unsynced: &UnsyncedWrites,
    torn: TornSector,
) -> Vec<u8> {
    if mode == CrashMode::DropUnsynced {
        return image;
    }
    let synced_bytes = file.synced.len().min(file.durable.len());
    for (sequence, pos, data) in &file.unsynced {
        match mode {
            CrashMode::TearNewestWrite { keep_bytes } if Some(*sequence) == unsynced.newest => {
                let keep = keep_bytes.min(data.len());
                write_into(&mut image, *pos, &data[..keep]);
                tear_sector(&mut image, *pos as usize, data.len(), keep, synced_bytes, torn);
            }
            CrashMode::DropOldestUnsynced if Some(*sequence) == unsynced.oldest => {}
            _ => write_into(&mut image, *pos, data),
        }
    }
    image
}

/// Fills the rest of the sector a write of `len` bytes at `pos` was torn
/// in (after its first `keep` bytes) with `torn`, unless that sector held
/// synced bytes (an overwrite of one sector is atomic).
fn tear_sector(image: &mut Vec<u8>, pos: usize, len: usize, keep: usize, synced_bytes: usize, torn: TornSector) {
    if keep >= len || torn == TornSector::OldOrNew {
        return;
    }
    let start = pos + keep;
    let sector_start = start / SIM_SECTOR_BYTES * SIM_SECTOR_BYTES;
    if sector_start < synced_bytes {
        return;
    }
    let end = (sector_start + SIM_SECTOR_BYTES).min(pos + len);
    if image.len() < end {
        image.resize(end, 0);
    }
    for (at, byte) in image[start..end].iter_mut().enumerate() {
        *byte = match torn {
            TornSector::Zeros => 0,
            // Not a byte pattern a batch header or CRC could match by luck.
            _ => (at as u8).wrapping_mul(151).wrapping_add(0x3D) ^ 0xA7,
        };
    }
}

/// The directory holding `path`'s entry: "." for a bare relative name.
fn parent_dir(path: &Path) -> PathBuf {
    normalize_dir(path.parent().unwrap_or(Path::new(".")))
}

fn normalize_dir(dir: &Path) -> PathBuf {
    if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() }
}

impl SimDisk {
    /// Adds a file that is durable as it is (on a disk just crashed).
    fn insert_durable(&mut self, path: &Path, image: Vec<u8>) {
        let data = SimFileData {
            path: path.to_path_buf(),
            volatile: image.clone(),
            durable: image.clone(),
            synced: image,
            unsynced: Vec::new(),
        };
        let data = Rc::new(RefCell::new(data));
        self.files.insert(path.to_path_buf(), data.clone());
        self.durable_files.insert(path.to_path_buf(), data);
    }

    /// Whether `dir` exists: made by `create_dir_all`, holding an entry, or
    /// a root (taken to exist from the start).
    fn dir_exists(&self, dir: &Path) -> bool {
        let dir = normalize_dir(dir);
        dir == Path::new(".")
            || dir.parent().is_none()
            || self.dirs.contains(&dir)
            || self.files.keys().chain(self.dirs.iter()).any(|path| path.starts_with(&dir) && *path != dir)
    }
}

fn truncate_data(file: &mut SimFileData, len: u64) {
    let len = len as usize;
    file.volatile.resize(len, 0);
    file.durable.resize(len, 0);
    for (_, pos, data) in &mut file.unsynced {
        let keep = len.saturating_sub(*pos as usize).min(data.len());
        data.truncate(keep);
    }
    file.unsynced.retain(|(_, _, data)| !data.is_empty());
}

impl StorageFile for SimFile {
    type Buf = SimBuf;

    fn alloc_buf(&self, len: usize) -> SimBuf {
        // Not zeroed, as pool memory is not: callers must fill every byte.
        SimBuf(vec![0xA5; len])
    }

    async fn write_at(&self, buf: SimBuf, pos: u64) -> io::Result<()> {
        check_aligned("write position", pos)?;
        check_aligned("write length", buf.0.len() as u64)?;
        let path = {
            let mut disk = self.disk.borrow_mut();
            let attempt = disk.writes_done;
            disk.writes_done += 1;
            if disk.write_fail_at == Some(attempt) {
                return Err(eio("write"));
            }
            self.data.borrow().path.clone()
        };
        let op = TraceOp::Write { path, pos, data: buf.0 };
        let mut disk = self.disk.borrow_mut();
        apply_data_op(&mut disk, &self.data, &op);
        disk.trace.push(op);
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        check_aligned("read position", pos)?;
        check_aligned("read length", len as u64)?;
        let file = self.data.borrow();
        let start = (pos as usize).min(file.volatile.len());
        let end = (start + len).min(file.volatile.len());
        Ok(Bytes::copy_from_slice(&file.volatile[start..end]))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        let path = {
            let mut disk = self.disk.borrow_mut();
            let attempt = disk.syncs_done;
            disk.syncs_done += 1;
            if disk.sync_fail_at == Some(attempt) {
                // As Linux does after a failed writeback: the dirty data is
                // gone and the pages are marked clean.
                let mut file = self.data.borrow_mut();
                file.volatile = file.durable.clone();
                file.unsynced.clear();
                return Err(eio("fdatasync"));
            }
            self.data.borrow().path.clone()
        };
        let op = TraceOp::Sync { path };
        let mut disk = self.disk.borrow_mut();
        apply_data_op(&mut disk, &self.data, &op);
        disk.trace.push(op);
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.data.borrow().volatile.len() as u64)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        let path = self.data.borrow().path.clone();
        truncate_data(&mut self.data.borrow_mut(), len);
        SimStorage { disk: self.disk.clone() }.record(TraceOp::Truncate { path, len });
        Ok(())
    }

    async fn pre_allocate(&self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Applies a data operation to a file, found by path during a replay or
/// through a handle that may have been renamed or removed since it opened.
fn apply_data_op(disk: &mut SimDisk, data: &Rc<RefCell<SimFileData>>, op: &TraceOp) {
    match op {
        TraceOp::Write { pos, data: bytes, .. } => {
            disk.write_sequence += 1;
            let sequence = disk.write_sequence;
            let mut file = data.borrow_mut();
            write_into(&mut file.volatile, *pos, bytes);
            file.unsynced.push((sequence, *pos, bytes.clone()));
        }
        TraceOp::Sync { .. } => {
            let mut file = data.borrow_mut();
            file.durable = file.volatile.clone();
            file.synced = file.volatile.clone();
            file.unsynced.clear();
        }
        _ => debug_assert!(false, "only writes and syncs touch file data"),
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let existing = self.disk.borrow().files.get(path).cloned();
        let data = match existing {
            Some(data) => data,
            None if create => {
                let op = TraceOp::Create { path: path.to_path_buf() };
                self.apply(&op);
                self.record(op);
                self.disk.borrow().files[path].clone()
            }
            None => return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))),
        };
        Ok(SimFile { data, disk: self.disk.clone() })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        if !self.disk.borrow().files.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())));
        }
        let op = TraceOp::Remove { path: path.to_path_buf() };
        self.apply(&op);
        self.record(op);
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if !self.disk.borrow().files.contains_key(from) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", from.display())));
        }
        let op = TraceOp::Rename { from: from.to_path_buf(), to: to.to_path_buf() };
        self.apply(&op);
        self.record(op);
        Ok(())
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let op = TraceOp::CreateDir { path: dir.to_path_buf() };
        self.apply(&op);
        self.record(op);
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk.borrow();
        if !disk.dir_exists(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", dir.display())));
        }
        Ok(disk
            .files
            .keys()
            .filter(|path| parent_dir(path) == normalize_dir(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let op = TraceOp::SyncDir { path: dir.to_path_buf() };
        self.apply(&op);
        self.record(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutor::default().run(future)
    }

    async fn write_page(storage: &SimStorage, path: &Path, fill: u8) -> SimFile {
        let file = storage.open(path, true).await.unwrap();
        let mut buf = file.alloc_buf(IO_ALIGN_BYTES as usize);
        buf.as_mut_bytes().fill(fill);
        file.write_at(buf, 0).await.unwrap();
        file
    }

    #[test]
    fn a_power_loss_reverts_directory_entries_no_sync_dir_covered() {
        run(async {
            let storage = SimStorage::new();
            let dir = Path::new("/d");
            storage.create_dir_all(dir).await.unwrap();
            storage.sync_dir(Path::new("/")).await.unwrap();
            let kept = write_page(&storage, &dir.join("kept"), 1).await;
            kept.fdatasync().await.unwrap();
            let gone = write_page(&storage, &dir.join("gone"), 2).await;
            gone.fdatasync().await.unwrap();
            storage.sync_dir(dir).await.unwrap();
            // Not covered by a sync_dir: a create, a rename, a removal.
            write_page(&storage, &dir.join("new"), 3).await.fdatasync().await.unwrap();
            storage.rename(&dir.join("kept"), &dir.join("renamed")).await.unwrap();
            storage.remove(&dir.join("gone")).await.unwrap();
            let lost = storage.power_loss(CrashMode::KeepUnsynced, TornSector::Zeros);
            assert_eq!(lost.paths(), vec![dir.join("gone"), dir.join("kept")]);
            assert_eq!(lost.contents(&dir.join("gone")).unwrap(), vec![2; IO_ALIGN_BYTES as usize]);
            // A crash that keeps metadata keeps all three changes.
            let crashed = storage.crash(CrashMode::KeepUnsynced);
            assert_eq!(crashed.paths(), vec![dir.join("new"), dir.join("renamed")]);
        });
    }

    #[test]
    fn a_power_loss_loses_a_directory_whose_parent_was_not_synced() {
        run(async {
            let storage = SimStorage::new();
            storage.create_dir_all(Path::new("/a/b")).await.unwrap();
            write_page(&storage, Path::new("/a/b/f"), 1).await.fdatasync().await.unwrap();
            storage.sync_dir(Path::new("/a/b")).await.unwrap();
            storage.sync_dir(Path::new("/a")).await.unwrap();
            // `/a` itself is in no synced parent.
            assert!(storage.power_loss(CrashMode::KeepUnsynced, TornSector::Zeros).paths().is_empty());
            storage.sync_dir(Path::new("/")).await.unwrap();
            let lost = storage.power_loss(CrashMode::KeepUnsynced, TornSector::Zeros);
            assert_eq!(lost.paths(), vec![PathBuf::from("/a/b/f")]);
        });
    }

    #[test]
    fn a_power_loss_reverts_size_changes_no_fdatasync_covered() {
        run(async {
            let storage = SimStorage::new();
            let path = Path::new("/f");
            let file = write_page(&storage, path, 1).await;
            file.fdatasync().await.unwrap();
            storage.sync_dir(Path::new("/")).await.unwrap();
            file.truncate(100).await.unwrap();
            let lost = storage.power_loss(CrashMode::KeepUnsynced, TornSector::Zeros);
            assert_eq!(lost.contents(path).unwrap(), vec![1; IO_ALIGN_BYTES as usize], "the truncation reverts");
            assert_eq!(storage.crash(CrashMode::KeepUnsynced).contents(path).unwrap().len(), 100);
            file.fdatasync().await.unwrap();
            // An extending write, unsynced: the size reverts with it.
            let mut buf = file.alloc_buf(IO_ALIGN_BYTES as usize);
            buf.as_mut_bytes().fill(2);
            file.write_at(buf, IO_ALIGN_BYTES).await.unwrap();
            let lost = storage.power_loss(CrashMode::KeepUnsynced, TornSector::Zeros);
            assert_eq!(lost.contents(path).unwrap().len(), 100);
        });
    }

    #[test]
    fn a_torn_sector_holds_zeros_or_garbage_unless_it_held_synced_bytes() {
        run(async {
            let storage = SimStorage::new();
            let path = Path::new("/f");
            let file = write_page(&storage, path, 1).await;
            file.fdatasync().await.unwrap();
            storage.sync_dir(Path::new("/")).await.unwrap();
            let mut buf = file.alloc_buf(2 * IO_ALIGN_BYTES as usize);
            buf.as_mut_bytes().fill(2);
            file.write_at(buf, 0).await.unwrap();
            let page = IO_ALIGN_BYTES as usize;
            let tear = |keep_bytes, torn| storage.crash_with(CrashMode::TearNewestWrite { keep_bytes }, torn);
            // Torn in the first page, which held synced bytes: old or new.
            let image = tear(100, TornSector::Garbage).contents(path).unwrap();
            assert!(image[..100].iter().all(|b| *b == 2) && image[100..page].iter().all(|b| *b == 1));
            // Torn in the second page, past the synced bytes: the rest of
            // its sector is zeros or garbage, the sectors after it old.
            let image = tear(page + 100, TornSector::Zeros).contents(path).unwrap();
            assert!(image[page + 100..page + SIM_SECTOR_BYTES].iter().all(|b| *b == 0));
            assert_eq!(image.len(), page + SIM_SECTOR_BYTES);
            let image = tear(page + 100, TornSector::Garbage).contents(path).unwrap();
            assert!(image[page + 100..page + SIM_SECTOR_BYTES].iter().any(|b| *b != 0 && *b != 2));
        });
    }
}
