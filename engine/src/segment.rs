//! One segment of a partition log: a `.log` file of whole batches, its
//! sparse `.index` and `.timeindex`, and the appender state that lets a
//! group-commit cycle rewrite the partial last page.
//!
//! Positions obey, asserted on change:
//!   written_bytes <= submitted_bytes <= dispatched_bytes, and the first
//!   `written_bytes` bytes of the file are whole, valid batches.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use crate::batch::{self, BATCH_HEADER_BYTES, BATCH_OVERHEAD_BYTES, BatchInfo, MAGIC_V2};
use crate::error::{LogError, Result};
use crate::index::{IndexEntry, OffsetIndex, TimeIndex, TimeIndexEntry};
use crate::io::StorageFile;
use crate::limits::{BATCH_BYTES_MAX_LIMIT, FETCH_READ_BYTES_MAX, READ_CHUNK_BYTES, align_down, align_up};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";
/// The aborted transactions whose abort marker is in the segment (`txn.rs`).
pub(crate) const TXN_INDEX_SUFFIX: &str = "txnindex";

/// `<base offset, 20 digits>.<suffix>`, as Kafka names segment files.
pub(crate) fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// Parses a segment file name back to its base offset.
pub(crate) fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, suffix) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, suffix))
}

#[derive(Debug)]
pub(crate) struct Segment<F> {
    pub base_offset: i64,
    pub log_path: PathBuf,
    pub file: Option<Rc<F>>,
    /// Bytes given to dispatched batches, written or not.
    pub dispatched_bytes: u64,
    /// Bytes handed to writes, completed or in flight.
    pub submitted_bytes: u64,
    /// Bytes written to the file; all of them whole batches.
    pub written_bytes: u64,
    /// The bytes in [align_down(submitted_bytes), submitted_bytes): the
    /// partial last page, which the next flush rewrites with more after it.
    pub page_head: Vec<u8>,
    pub preallocated_bytes: u64,
    /// One past the last offset dispatched into this segment.
    pub next_offset: i64,
    pub max_timestamp_ms: i64,
    pub created_ms: i64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_index_entry: u64,
    /// No more batches go here; the flusher seals it once written.
    pub roll_requested: bool,
    /// Written, synced, cut to size and indexed: immutable from now on.
    pub sealed: bool,
    /// The entries of its `.txnindex` as last written (sealed segments:
    /// their aborted transactions are read from there, `txn.rs`).
    pub aborted_entries: usize,
}

impl<F: StorageFile> Segment<F> {
    pub fn new(dir: &Path, base_offset: i64, created_ms: i64) -> Self {
        Segment {
            base_offset,
            log_path: segment_path(dir, base_offset, LOG_SUFFIX),
            file: None,
            dispatched_bytes: 0,
            submitted_bytes: 0,
            written_bytes: 0,
            page_head: Vec::new(),
            preallocated_bytes: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            created_ms,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index_entry: 0,
            roll_requested: false,
            sealed: false,
            aborted_entries: 0,
        }
    }

    pub fn index_path(&self) -> PathBuf {
        self.log_path.with_extension(INDEX_SUFFIX)
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.log_path.with_extension(TIME_INDEX_SUFFIX)
    }

    pub fn txn_index_path(&self) -> PathBuf {
        self.log_path.with_extension(TXN_INDEX_SUFFIX)
    }

    pub fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!((0..=i64::from(u32::MAX)).contains(&relative), "offset {offset} outside segment {}", self.base_offset);
        relative as u32
    }

    /// Accounts for a batch placed at `position` (at dispatch or while
    /// recovery scans), adding sparse index entries every
    /// `index_interval_bytes`.
    pub fn record_batch(&mut self, position: u64, info: &BatchInfo, index_interval_bytes: u64) {
        assert_eq!(position, self.dispatched_bytes, "batches are placed back to back");
        // Callers check contiguity (or, below a compacted log's gap bound,
        // that offsets grow: see `follows`).
        assert!(info.base_offset >= self.next_offset, "offsets grow within a segment");
        if position > 0 && self.bytes_since_index_entry >= index_interval_bytes {
            let relative_offset = self.relative(info.base_offset);
            self.index.push(IndexEntry { relative_offset, position: position as u32 });
            // Every batch before this one has a timestamp <= the max so far.
            self.time_index.maybe_push(TimeIndexEntry { timestamp_ms: self.max_timestamp_ms, relative_offset });
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += info.batch_bytes as u64;
        self.dispatched_bytes += info.batch_bytes as u64;
        self.next_offset = info.last_offset() + 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(info.max_timestamp);
    }

    pub fn is_empty(&self) -> bool {
        self.dispatched_bytes == 0
    }

    /// The file position where a read for `offset` may start, and the
    /// offset of the batch there.
    pub fn start_for(&self, offset: i64) -> (u64, i64) {
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        self.index.floor(relative).map_or((0, self.base_offset), |entry| {
            (u64::from(entry.position), self.base_offset + i64::from(entry.relative_offset))
        })
    }
}

/// Whether a batch at `base_offset` may follow one that ended before
/// `next_offset`. Offsets are contiguous, except that compaction leaves gaps
/// below `gaps_below` (the log's compaction checkpoint): there a batch may
/// start anywhere after the previous one's end, up to that bound. Above it a
/// damaged base offset (outside the CRC) is still caught by contiguity.
pub(crate) fn follows(base_offset: i64, next_offset: i64, gaps_below: i64) -> bool {
    base_offset == next_offset || (base_offset > next_offset && base_offset <= gaps_below)
}

/// How a scan of a segment's bytes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Exactly at the end of the bytes scanned.
    Clean,
    /// Bytes that are not a whole valid batch and nothing valid after them:
    /// a torn or never-completed write, or the zeroed preallocated tail.
    Tail { position: u64, reason: String },
    /// A damaged batch with a valid one after it: not a torn write.
    Corrupt { position: u64, reason: String },
}

#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Position after the last valid batch.
    pub end_position: u64,
    pub end: ScanEnd,
}

/// Reads a segment file sequentially in aligned chunks.
struct ChunkReader<'a, F> {
    file: &'a F,
    file_bytes: u64,
    chunk: Bytes,
    chunk_position: u64,
    /// Bytes to read at once: at least READ_CHUNK_BYTES, more for large fetches.
    chunk_bytes: u64,
}

impl<'a, F: StorageFile> ChunkReader<'a, F> {
    /// The `len` bytes at `position`, or fewer if the file ends first.
    fn new(file: &'a F, file_bytes: u64, chunk_bytes: u64) -> Self {
        ChunkReader { file, file_bytes, chunk: Bytes::new(), chunk_position: 0, chunk_bytes }
    }

    async fn bytes_at(&mut self, position: u64, len: usize, path: &Path) -> Result<Bytes> {
        let end = (position + len as u64).min(self.file_bytes);
        let cached_end = self.chunk_position + self.chunk.len() as u64;
        if position < self.chunk_position || end > cached_end {
            let start = align_down(position);
            let want = align_up(end - start).max(self.chunk_bytes);
            self.chunk =
                self.file.read_at(start, want as usize).await.map_err(|err| LogError::io("read", path, err))?;
            self.chunk_position = start;
        }
        let from = (position - self.chunk_position) as usize;
        let to = ((end - self.chunk_position) as usize).min(self.chunk.len()).max(from);
        Ok(self.chunk.slice(from..to))
    }
}

/// What one position of a segment holds.
enum Probe {
    Batch(Bytes, BatchInfo),
    /// Not a batch at all (zeros, garbage, cut short).
    NotABatch(String),
    /// A batch header that looks right over a body that fails validation.
    Damaged(String, u64),
}

async fn probe<F: StorageFile>(reader: &mut ChunkReader<'_, F>, position: u64, path: &Path) -> Result<Probe> {
    let head = reader.bytes_at(position, BATCH_HEADER_BYTES, path).await?;
    if head.len() < BATCH_HEADER_BYTES {
        return Ok(Probe::NotABatch(format!("{} bytes left, less than a batch header", head.len())));
    }
    let header = match batch::peek_header(&head) {
        Ok(header) => header,
        Err(err) => return Ok(Probe::NotABatch(err.to_string())),
    };
    let batch_length = header.batch_length.get();
    let plausible = header.magic == MAGIC_V2
        && batch_length >= (BATCH_HEADER_BYTES - BATCH_OVERHEAD_BYTES) as i32
        && (batch_length as usize) <= BATCH_BYTES_MAX_LIMIT;
    if !plausible {
        return Ok(Probe::NotABatch(format!("no batch header (magic {}, length {batch_length})", header.magic)));
    }
    let batch_bytes = BATCH_OVERHEAD_BYTES + batch_length as usize;
    let bytes = reader.bytes_at(position, batch_bytes, path).await?;
    if bytes.len() < batch_bytes {
        return Ok(Probe::NotABatch(format!("batch of {batch_bytes} bytes cut short at {}", bytes.len())));
    }
    match batch::validate_stored(&bytes, BATCH_BYTES_MAX_LIMIT) {
        Ok(info) => Ok(Probe::Batch(bytes, info)),
        Err(err) => Ok(Probe::Damaged(err.to_string(), batch_bytes as u64)),
    }
}

/// Walks the batches of `file` from `position` up to `file_bytes`, calling
/// `on_batch` for each valid one, and classifies how the walk ended. Each
/// batch must start exactly where the previous one ended, beginning at
/// `next_offset`: base offsets sit outside the CRC, so contiguity is what
/// catches a damaged one; below `gaps_below` they need only grow (`follows`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn scan<F: StorageFile>(
    file: &F,
    path: &Path,
    file_bytes: u64,
    mut position: u64,
    mut next_offset: i64,
    gaps_below: i64,
    mut on_batch: impl FnMut(u64, &BatchInfo, &Bytes),
) -> Result<ScanOutcome> {
    let chunk_bytes = READ_CHUNK_BYTES as u64;
    let mut reader = ChunkReader::new(file, file_bytes, chunk_bytes);
    while position < file_bytes {
        match probe(&mut reader, position, path).await? {
            Probe::Batch(bytes, info) if follows(info.base_offset, next_offset, gaps_below) => {
                on_batch(position, &info, &bytes);
                position += info.batch_bytes as u64;
                next_offset = info.last_offset() + 1;
            }
            Probe::NotABatch(reason) => {
                return Ok(ScanOutcome { end_position: position, end: ScanEnd::Tail { position, reason } });
            }
            Probe::Batch(_, info) => {
                let reason = format!("batch at offset {} where {next_offset} was expected", info.base_offset);
                return classify_damage(&mut reader, path, position, info.batch_bytes as u64, next_offset, reason)
                    .await;
            }
            Probe::Damaged(reason, batch_bytes) => {
                return classify_damage(&mut reader, path, position, batch_bytes, next_offset, reason).await;
            }
        }
    }
    Ok(ScanOutcome { end_position: position, end: ScanEnd::Clean })
}

/// A damaged batch at `position`: a torn write leaves nothing valid after
/// it; a flipped bit in a durable batch leaves its successor intact.
async fn classify_damage<F: StorageFile>(
    reader: &mut ChunkReader<'_, F>,
    path: &Path,
    position: u64,
    batch_bytes: u64,
    next_offset: i64,
    reason: String,
) -> Result<ScanOutcome> {
    let after = probe(reader, position + batch_bytes, path).await?;
    let end = match after {
        Probe::Batch(_, info) if info.base_offset > next_offset => ScanEnd::Corrupt { position, reason },
        _ => ScanEnd::Tail { position, reason },
    };
    Ok(ScanOutcome { end_position: position, end })
}

/// Reads whole, validated batches of one segment starting at the batch
/// that contains `offset` (searching from `position`), stopping before
/// `limit_bytes`, before any batch reaching `offset_end`, and once
/// `bytes_max` is reached (one batch is always returned). The batch at
/// `position` must start at `position_offset`, and each next one where the
/// previous ended (or later, below `gaps_below`: see `follows`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_batches<F: StorageFile>(
    file: &F,
    path: &Path,
    limit_bytes: u64,
    mut position: u64,
    position_offset: i64,
    offset: i64,
    offset_end: i64,
    bytes_max: usize,
    gaps_below: i64,
) -> Result<Vec<Bytes>> {
    // One read for the whole fetch where it can: the bytes asked for plus
    // the way from the index entry to the offset (at most one index
    // interval), so a sequential consumer costs one large DMA read a fetch.
    let chunk_bytes = align_up(bytes_max as u64 + READ_CHUNK_BYTES as u64)
        .clamp(READ_CHUNK_BYTES as u64, FETCH_READ_BYTES_MAX as u64);
    let mut reader = ChunkReader::new(file, limit_bytes, chunk_bytes);
    let mut batches = Vec::new();
    let mut bytes_total = 0usize;
    let mut next_offset = position_offset;
    while position < limit_bytes {
        // A batch that will not fit is not read at all: its header says so.
        if !batches.is_empty() {
            let head = reader.bytes_at(position, BATCH_HEADER_BYTES, path).await?;
            if let Ok(header) = batch::peek_header(&head) {
                let batch_bytes = BATCH_OVERHEAD_BYTES.saturating_add(header.batch_length.get().max(0) as usize);
                if bytes_total + batch_bytes > bytes_max {
                    break;
                }
            }
        }
        let (bytes, info) = match probe(&mut reader, position, path).await? {
            Probe::Batch(bytes, info) => (bytes, info),
            Probe::NotABatch(reason) | Probe::Damaged(reason, _) => {
                return Err(LogError::corruption(path, position, reason));
            }
        };
        if !follows(info.base_offset, next_offset, gaps_below) {
            let reason = format!("batch at offset {} where {next_offset} was expected", info.base_offset);
            return Err(LogError::corruption(path, position, reason));
        }
        next_offset = info.last_offset() + 1;
        position += info.batch_bytes as u64;
        if info.last_offset() < offset {
            continue;
        }
        let fits = batches.is_empty() || bytes_total + bytes.len() <= bytes_max;
        if info.last_offset() >= offset_end || !fits {
            break;
        }
        bytes_total += bytes.len();
        batches.push(bytes);
        if bytes_total >= bytes_max {
            break;
        }
    }
    Ok(batches)
}

/// The valid batch at `position`, if there is one.
pub(crate) async fn batch_at<F: StorageFile>(
    file: &F,
    path: &Path,
    file_bytes: u64,
    position: u64,
) -> Result<Option<BatchInfo>> {
    let mut reader = ChunkReader::new(file, file_bytes, READ_CHUNK_BYTES as u64);
    match probe(&mut reader, position, path).await? {
        Probe::Batch(_, info) => Ok(Some(info)),
        Probe::NotABatch(_) | Probe::Damaged(..) => Ok(None),
    }
}

/// Walks a segment's batches one at a time, validating each (CRC included)
/// and its offset against the previous one's (`follows`): the cleaner's
/// reader, which awaits between batches (its rate limit).
pub(crate) struct BatchCursor<'a, F> {
    reader: ChunkReader<'a, F>,
    path: &'a Path,
    position: u64,
    end: u64,
    next_offset: i64,
    gaps_below: i64,
}

impl<'a, F: StorageFile> BatchCursor<'a, F> {
    /// From the batch at `position`, which starts at `position_offset`
    /// (the segment's base offset, or an index entry's), to `end`.
    pub fn new(file: &'a F, path: &'a Path, end: u64, start: (u64, i64), gaps_below: i64) -> Self {
        let reader = ChunkReader::new(file, end, READ_CHUNK_BYTES as u64);
        BatchCursor { reader, path, position: start.0, end, next_offset: start.1, gaps_below }
    }

    /// The next batch and its position, or `None` at the end. Anything but
    /// whole valid batches up to the end is corruption.
    pub async fn next(&mut self) -> Result<Option<(u64, BatchInfo, Bytes)>> {
        if self.position >= self.end {
            return Ok(None);
        }
        let position = self.position;
        let (bytes, info) = match probe(&mut self.reader, position, self.path).await? {
            Probe::Batch(bytes, info) => (bytes, info),
            Probe::NotABatch(reason) | Probe::Damaged(reason, _) => {
                return Err(LogError::corruption(self.path, position, reason));
            }
        };
        if !follows(info.base_offset, self.next_offset, self.gaps_below) {
            let reason = format!("batch at offset {} where {} was expected", info.base_offset, self.next_offset);
            return Err(LogError::corruption(self.path, position, reason));
        }
        self.next_offset = info.last_offset() + 1;
        self.position += info.batch_bytes as u64;
        Ok(Some((position, info, bytes)))
    }
}
