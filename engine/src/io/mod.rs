//! The IO seam: every file operation the engine performs goes through
//! [`Storage`] and [`StorageFile`], so the same engine runs on the real
//! O_DIRECT backend ([`DmaStorage`]) and on a fault-injecting simulated disk
//! ([`SimStorage`]) in tests.
//!
//! Contract, mirrored by both backends: `write_at` and `read_at` take
//! positions and lengths aligned to [`crate::limits::IO_ALIGN_BYTES`];
//! written bytes survive a crash only after `fdatasync`, and so does a size
//! change (truncate, or a write past the end); creates, renames, removes
//! and new directories are durable once `sync_dir` of their parent returns.

#![allow(async_fn_in_trait)] // Executors are single threaded: futures need not be Send.

mod dma;
mod sim;

use std::io;
use std::path::Path;

use bytes::Bytes;

pub use dma::DmaStorage;
pub use sim::{CrashMode, SIM_SECTOR_BYTES, SimStorage, TornSector, TraceOp};

/// An aligned, owned buffer handed to `write_at`.
pub trait IoBuf {
    fn as_mut_bytes(&mut self) -> &mut [u8];
    fn as_bytes(&self) -> &[u8];
}

/// A file opened for positional direct I/O.
pub trait StorageFile: 'static {
    type Buf: IoBuf;

    /// A buffer of `len` bytes, aligned for `write_at`. Its content is
    /// unspecified: callers must fill every byte, padding included.
    fn alloc_buf(&self, len: usize) -> Self::Buf;

    /// Writes the whole buffer at `pos`. A short write is an error.
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;

    /// Reads up to `len` bytes at `pos`; fewer at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;

    async fn fdatasync(&self) -> io::Result<()>;

    async fn size(&self) -> io::Result<u64>;

    async fn truncate(&self, len: u64) -> io::Result<()>;

    /// Reserves disk blocks up to `len` without changing the file size.
    async fn pre_allocate(&self, len: u64) -> io::Result<()>;
}

/// A directory tree of files.
pub trait Storage: Clone + 'static {
    type File: StorageFile;

    /// Opens `path` for reading and writing, creating it when `create`.
    async fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;

    async fn remove(&self, path: &Path) -> io::Result<()>;

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// File names (not paths) in `dir`.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Makes creates, renames and removes in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Writes a small file atomically: write a temporary, fdatasync it, rename
/// it over `path`, sync the directory. A crash leaves the old or the new
/// content, never a mix.
pub async fn write_file_atomic<S: Storage>(storage: &S, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let file = storage.open(&tmp, true).await?;
    file.truncate(0).await?;
    let len_aligned = crate::limits::align_up(data.len() as u64).max(crate::limits::IO_ALIGN_BYTES);
    let mut buf = file.alloc_buf(len_aligned as usize);
    let (payload, padding) = buf.as_mut_bytes().split_at_mut(data.len());
    payload.copy_from_slice(data);
    padding.fill(0);
    file.write_at(buf, 0).await?;
    // Direct I/O writes whole pages; cut the zero padding off again.
    file.truncate(data.len() as u64).await?;
    file.fdatasync().await?;
    drop(file);
    storage.rename(&tmp, path).await?;
    storage.sync_dir(parent_dir(path)).await
}

/// Creates `dir` and its missing parents so that they survive power loss:
/// the parent of each directory created is synced, outermost first (a
/// directory's entry is durable once its parent is). An existing `dir`
/// costs one listing and no sync.
pub async fn create_dir_durable<S: Storage>(storage: &S, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    // Roots and "" (the current directory) exist.
    let mut probe = Some(dir).filter(|path| path.parent().is_some() && !path.as_os_str().is_empty());
    while let Some(path) = probe {
        match storage.list_dir(path).await {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::NotFound => missing.push(path.to_path_buf()),
            Err(err) => return Err(err),
        }
        probe = path.parent().filter(|parent| parent.parent().is_some() && !parent.as_os_str().is_empty());
    }
    if missing.is_empty() {
        return Ok(());
    }
    storage.create_dir_all(dir).await?;
    for created in missing.iter().rev() {
        storage.sync_dir(parent_dir(created)).await?;
    }
    Ok(())
}

/// The directory holding `path`'s entry ("." for a bare relative name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Reads a whole small file, or `None` if it does not exist.
pub async fn read_file<S: Storage>(storage: &S, path: &Path, len_max: usize) -> io::Result<Option<Bytes>> {
    let file = match storage.open(path, false).await {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let size = file.size().await?;
    if size > len_max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {size} bytes, more than the {len_max} allowed", path.display()),
        ));
    }
    let data = file.read_at(0, crate::limits::align_up(size) as usize).await?;
    Ok(Some(data.slice(..(size as usize).min(data.len()))))
}
