//! The real backend: glommio `DmaFile`s, opened with O_DIRECT and driven by
//! the executor's io_uring.

use std::io;
use std::path::Path;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::{IoBuf, Storage, StorageFile};

#[derive(Debug, Clone, Copy, Default)]
pub struct DmaStorage;

impl IoBuf for DmaBuffer {
    fn as_mut_bytes(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
}

fn to_io(err: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(err)
}

impl StorageFile for DmaFile {
    type Buf = DmaBuffer;

    fn alloc_buf(&self, len: usize) -> DmaBuffer {
        // Not zeroed: pool memory holds old bytes, and callers fill every
        // byte they write (see `IoBuf`).
        self.alloc_dma_buffer(len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<()> {
        let len = buf.len();
        let written = DmaFile::write_at(self, buf, pos).await.map_err(to_io)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short direct write: {written} of {len} bytes at {pos}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let read = self.read_at_aligned(pos, len).await.map_err(to_io)?;
        // ReadResult is !Send and tied to the executor; the copy lets the
        // bytes travel as `Bytes` (tail cache, other shards, sockets).
        Ok(Bytes::copy_from_slice(&read))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        DmaFile::fdatasync(self).await.map_err(to_io)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file_size().await.map_err(to_io)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        DmaFile::truncate(self, len).await.map_err(to_io)
    }

    async fn pre_allocate(&self, len: u64) -> io::Result<()> {
        DmaFile::pre_allocate(self, len, true).await.map_err(to_io)
    }
}

impl Storage for DmaStorage {
    type File = DmaFile;

    async fn open(&self, path: &Path, create: bool) -> io::Result<DmaFile> {
        OpenOptions::new().read(true).write(true).create(create).dma_open(path).await.map_err(to_io)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(to_io)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(to_io)
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // No io_uring equivalent: glommio's blocking pool, off the core.
        let dir = dir.to_path_buf();
        glommio::executor().spawn_blocking(move || std::fs::create_dir_all(dir)).await
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        // At open, and on the data path when producer snapshots are written
        // or pruned: readdir runs on glommio's blocking pool, off the core.
        let dir = dir.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(name.to_owned());
                    }
                }
                names.sort();
                Ok(names)
            })
            .await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // glommio's Directory::open hands a relative path to openat with
        // dirfd -1 (EBADF); its file opens resolve relative paths, this
        // does not, so resolve it here.
        let dir = std::path::absolute(dir)?;
        let directory = glommio::io::Directory::open(&dir).await.map_err(to_io)?;
        directory.sync().await.map_err(to_io)?;
        directory.close().await.map_err(to_io)
    }
}
