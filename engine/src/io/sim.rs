//! A simulated disk for tests: it records every operation, keeps for each
//! file what survives a crash (bytes covered by an fdatasync) apart from what
//! does not yet, injects EIO on a chosen write or fdatasync, and flips bits.
//! It enforces the O_DIRECT alignment rules, so alignment bugs show up here
//! as they would on a real disk.
//!
//! Model of the media, stated so tests can rely on it: written bytes become
//! durable only at the next `fdatasync` of their file; a crash may drop
//! unsynced writes or tear one of them at any byte (bytes are old or new,
//! never garbage); metadata operations (create, rename, remove, truncate)
//! are durable immediately, as ext4's journal makes them after `sync_dir`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::{IoBuf, Storage, StorageFile};
use crate::limits::IO_ALIGN_BYTES;

/// One recorded operation, enough to replay a workload up to any point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceOp {
    Create { path: PathBuf },
    Write { path: PathBuf, pos: u64, data: Vec<u8> },
    Sync { path: PathBuf },
    Truncate { path: PathBuf, len: u64 },
    Rename { from: PathBuf, to: PathBuf },
    Remove { path: PathBuf },
}

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
    durable: Vec<u8>,
    /// Writes since the last fdatasync, in issue order: (sequence, pos, data).
    unsynced: Vec<(u64, u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct SimDisk {
    files: BTreeMap<PathBuf, Rc<RefCell<SimFileData>>>,
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
        }
    }

    /// The disk as it would be found after a crash now.
    pub fn crash(&self, mode: CrashMode) -> SimStorage {
        let disk = self.disk.borrow();
        let sequences: Vec<u64> = disk
            .files
            .values()
            .flat_map(|file| file.borrow().unsynced.iter().map(|write| write.0).collect::<Vec<_>>())
            .collect();
        let newest = sequences.iter().max().copied();
        let oldest = sequences.iter().min().copied();
        let crashed = SimStorage::new();
        for (path, file) in &disk.files {
            let file = file.borrow();
            let mut image = file.durable.clone();
            if mode != CrashMode::DropUnsynced {
                for (sequence, pos, data) in &file.unsynced {
                    match mode {
                        CrashMode::TearNewestWrite { keep_bytes } if Some(*sequence) == newest => {
                            let keep = keep_bytes.min(data.len());
                            write_into(&mut image, *pos, &data[..keep]);
                        }
                        CrashMode::DropOldestUnsynced if Some(*sequence) == oldest => {}
                        _ => write_into(&mut image, *pos, data),
                    }
                }
            }
            let data =
                SimFileData { path: path.clone(), volatile: image.clone(), durable: image, unsynced: Vec::new() };
            crashed.disk.borrow_mut().files.insert(path.clone(), Rc::new(RefCell::new(data)));
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
        for image in [&mut file.volatile, &mut file.durable] {
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

    async fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk.borrow();
        Ok(disk
            .files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
