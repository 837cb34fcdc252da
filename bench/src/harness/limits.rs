//! The machine's limits, measured in the same run as the workloads so that
//! every figure can be given as a ratio to them (the machines are shared
//! and noisy; absolute figures drift).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use futures::StreamExt;
use glommio::io::OpenOptions;
use glommio::{LocalExecutorBuilder, Placement};

const CHUNK_BYTES: usize = 1 << 20;
const RAW_DEPTH: usize = 8;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limits {
    /// O_DIRECT sequential write through io_uring, 1 MiB at depth 8.
    pub disk_write_mb_s: f64,
    /// The same, with an fdatasync after every 4 MiB (the durable writer's
    /// floor: what `always` pays the device).
    pub disk_write_sync_4mib_mb_s: f64,
    /// One TCP stream over loopback between two threads, 1 MiB writes.
    pub loopback_mb_s: f64,
}

impl Limits {
    pub fn min_disk_loopback(&self) -> f64 {
        self.disk_write_mb_s.min(self.loopback_mb_s)
    }
}

/// Bounds on a paired raw write's size: at least enough to get past the
/// device's write cache, at most what a long workload's tail needs.
pub const PAIRED_BYTES_MIN: u64 = 256 << 20;
pub const PAIRED_BYTES_MAX: u64 = 4 << 30;

/// A raw write measured right after a workload, of the bytes it wrote in
/// its measured window (clamped to `PAIRED_BYTES_MIN..=PAIRED_BYTES_MAX`):
/// the disk as the workload left it, not as it was at the suite's start.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Paired {
    /// Bytes each raw write wrote (after clamping, in whole MiB).
    pub bytes: u64,
    /// O_DIRECT sequential write, 1 MiB at depth 8.
    pub disk_write_mb_s: f64,
    /// The same bytes with an fdatasync every 4 MiB, right after the plain
    /// write; only for `durability = "always"` workloads.
    pub disk_write_sync_4mib_mb_s: Option<f64>,
}

/// The paired raw write(s) for a workload that wrote `workload_bytes`.
pub fn measure_paired(dir: &Path, workload_bytes: u64, sync: bool, cpu: Option<usize>) -> anyhow::Result<Paired> {
    let bytes =
        workload_bytes.clamp(PAIRED_BYTES_MIN, PAIRED_BYTES_MAX).div_ceil(CHUNK_BYTES as u64) * CHUNK_BYTES as u64;
    let disk_write_mb_s = raw_write(dir, bytes, None, cpu)?;
    let disk_write_sync_4mib_mb_s = if sync { Some(raw_write(dir, bytes, Some(4 << 20), cpu)?) } else { None };
    Ok(Paired { bytes, disk_write_mb_s, disk_write_sync_4mib_mb_s })
}

pub fn measure(dir: &Path, bytes: u64, cpu: Option<usize>) -> anyhow::Result<Limits> {
    let disk_write_mb_s = raw_write(dir, bytes, None, cpu)?;
    let disk_write_sync_4mib_mb_s = raw_write(dir, bytes.min(1 << 30), Some(4 << 20), cpu)?;
    let loopback_mb_s = loopback(bytes)?;
    Ok(Limits { disk_write_mb_s, disk_write_sync_4mib_mb_s, loopback_mb_s })
}

fn raw_write(dir: &Path, bytes: u64, sync_every_bytes: Option<usize>, cpu: Option<usize>) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("limits-raw.bin");
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    let chunks = (bytes as usize).div_ceil(CHUNK_BYTES).max(1);
    let handle = LocalExecutorBuilder::new(placement)
        .io_memory(64 << 20)
        .spawn(move || async move {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .dma_open(&path)
                .await
                .map_err(|err| format!("open {}: {err}", path.display()))?;
            file.pre_allocate((chunks * CHUNK_BYTES) as u64, true).await.map_err(|err| err.to_string())?;
            let file = Rc::new(file);
            let group = sync_every_bytes.map_or(chunks, |b| (b / CHUNK_BYTES).max(1));
            let started = Instant::now();
            for first in (0..chunks).step_by(group) {
                let writes = futures::stream::iter(first..(first + group).min(chunks)).map(|i| {
                    let file = file.clone();
                    async move {
                        let mut buf = file.alloc_dma_buffer(CHUNK_BYTES);
                        buf.as_bytes_mut().fill(0x5a);
                        file.write_at(buf, (i * CHUNK_BYTES) as u64).await
                    }
                });
                for result in writes.buffer_unordered(RAW_DEPTH).collect::<Vec<_>>().await {
                    result.map_err(|err| format!("raw write: {err}"))?;
                }
                if sync_every_bytes.is_some() {
                    file.fdatasync().await.map_err(|err| format!("fdatasync: {err}"))?;
                }
            }
            file.fdatasync().await.map_err(|err| format!("fdatasync: {err}"))?;
            let seconds = started.elapsed().as_secs_f64();
            // Closed, not dropped: a dropped DmaFile's close is left to the
            // reactor, which this executor leaves right away, so the file
            // stayed open and its (deleted) blocks stayed in use until the
            // process exited: 4-8 GB per paired workload.
            let file = Rc::try_unwrap(file).map_err(|_| "raw write: the file is still shared".to_string())?;
            file.close().await.map_err(|err| format!("close: {err}"))?;
            let _ = std::fs::remove_file(&path);
            Ok::<f64, String>((chunks * CHUNK_BYTES) as f64 / 1e6 / seconds)
        })
        .context("starting the raw-write executor")?;
    handle.join().map_err(|err| anyhow!("raw-write executor: {err}"))?.map_err(|err| anyhow!(err))
}

fn loopback(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    let chunk = vec![0x5au8; CHUNK_BYTES];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&chunk)?;
        sent += CHUNK_BYTES as u64;
    }
    drop(stream);
    let received = reader.join().map_err(|_| anyhow!("loopback reader panicked"))??;
    Ok(received as f64 / 1e6 / started.elapsed().as_secs_f64())
}
