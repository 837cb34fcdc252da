//! Kafka RecordBatch v2, byte for byte.
//!
//! A batch is Kafka's `DefaultRecordBatch`: a 61-byte big-endian header
//! followed by the records, on the wire and on disk alike.
//!
//! ```text
//! offset  bytes  field
//!      0      8  base_offset              \ written by the broker,
//!      8      4  batch_length             | outside the CRC
//!     12      4  partition_leader_epoch   /
//!     16      1  magic (always 2)
//!     17      4  crc: CRC-32C of bytes 21..end
//!     21      2  attributes
//!     23      4  last_offset_delta
//!     27      8  base_timestamp (ms)
//!     35      8  max_timestamp (ms)
//!     43      8  producer_id
//!     51      2  producer_epoch
//!     53      4  base_sequence
//!     57      4  records_count
//!     61      …  records
//! ```
//!
//! `batch_length` counts the bytes after itself, so a batch takes
//! `BATCH_OVERHEAD_BYTES + batch_length` bytes in all.
//!
//! Each record of an uncompressed batch is Kafka's `DefaultRecord`:
//!
//! ```text
//! length            varint   bytes of the record after this field
//! attributes        i8       unused, 0
//! timestamp_delta   varlong  from the batch's base_timestamp
//! offset_delta      varint   from the batch's base_offset
//! key_length        varint   -1 for a null key
//! key               bytes
//! value_length      varint   -1 for a null value
//! value             bytes
//! headers_count     varint
//! headers           headers_count times:
//!   key_length      varint   never negative
//!   key             bytes
//!   value_length    varint   -1 for a null value
//!   value           bytes
//! ```
//!
//! In a compressed batch (codec 1..=4 in the attributes) everything after the
//! header is one compressed block holding those records, framed as Kafka
//! frames it (`crate::compression`). The broker stores such batches as sent.
//! `validate_produce` decompresses them (at most
//! `limits::DECOMPRESSED_BYTES_MAX` bytes) and walks every record, so that a
//! producer cannot store records that do not parse; `validate_stored` checks
//! their header and CRC only. `records` reads uncompressed batches only;
//! `decompressed_records` reads either kind.

use core::mem::{offset_of, size_of};
use core::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::{BigEndian, I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::compression;
use crate::limits::DECOMPRESSED_BYTES_MAX;
use crate::varint::{self, VarintError};

/// Bytes in a batch header; the records start here.
pub const BATCH_HEADER_BYTES: usize = 61;

/// Bytes before the part that `batch_length` counts: base offset and batch length.
pub const BATCH_OVERHEAD_BYTES: usize = 12;

/// The magic byte of RecordBatch v2, the only format Spate stores.
pub const MAGIC_V2: i8 = 2;

/// The fixed header of a RecordBatch v2, laid out exactly as on the wire.
#[derive(Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BatchHeader {
    pub base_offset: I64<BigEndian>,
    pub batch_length: I32<BigEndian>,
    pub partition_leader_epoch: I32<BigEndian>,
    pub magic: i8,
    pub crc: U32<BigEndian>,
    pub attributes: I16<BigEndian>,
    pub last_offset_delta: I32<BigEndian>,
    pub base_timestamp: I64<BigEndian>,
    pub max_timestamp: I64<BigEndian>,
    pub producer_id: I64<BigEndian>,
    pub producer_epoch: I16<BigEndian>,
    pub base_sequence: I32<BigEndian>,
    pub records_count: I32<BigEndian>,
}

/// Where the `batch_length` field starts.
const BATCH_LENGTH_START: usize = offset_of!(BatchHeader, batch_length);
/// Where the `magic` byte sits.
const MAGIC_START: usize = offset_of!(BatchHeader, magic);
/// Where the `crc` field starts.
const CRC_START: usize = offset_of!(BatchHeader, crc);
/// The CRC covers everything from `attributes` to the end of the batch.
pub const CRC_COVERED_START: usize = offset_of!(BatchHeader, attributes);
/// The smallest legal `batch_length`: a header with no records.
const BATCH_LENGTH_MIN: usize = BATCH_HEADER_BYTES - BATCH_OVERHEAD_BYTES;

const _: () = assert!(size_of::<BatchHeader>() == BATCH_HEADER_BYTES);
const _: () = assert!(offset_of!(BatchHeader, partition_leader_epoch) == BATCH_OVERHEAD_BYTES);
const _: () = assert!(BATCH_LENGTH_START + size_of::<I32<BigEndian>>() == BATCH_OVERHEAD_BYTES);
const _: () = assert!(MAGIC_START == 16);
const _: () = assert!(CRC_START + size_of::<U32<BigEndian>>() == CRC_COVERED_START);
const _: () = assert!(offset_of!(BatchHeader, records_count) + 4 == BATCH_HEADER_BYTES);

impl BatchHeader {
    /// The whole batch size that `batch_length` declares, if it is sane.
    pub fn batch_bytes(&self) -> Result<usize, BatchError> {
        batch_bytes_from_length(self.batch_length.get())
    }

    /// The attribute flags.
    pub fn attributes(&self) -> Attributes {
        Attributes(self.attributes.get())
    }
}

/// Turns a `batch_length` field into a whole batch size, rejecting lengths
/// too small to hold a header (which includes every negative length).
fn batch_bytes_from_length(batch_length: i32) -> Result<usize, BatchError> {
    let length = usize::try_from(batch_length).map_err(|_| BatchError::BadLength(batch_length))?;
    if length < BATCH_LENGTH_MIN {
        return Err(BatchError::BadLength(batch_length));
    }
    length.checked_add(BATCH_OVERHEAD_BYTES).ok_or(BatchError::BadLength(batch_length))
}

/// Why a batch was refused. Every variant names what was wrong with the
/// bytes, so that a caller can tell a torn tail from corruption from a
/// misbehaving producer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes end before the batch does. From `split_batches` this is the
    /// signature of a torn write at the end of a log.
    #[error("the batch is cut short: it needs {needed} bytes but only {available} are present")]
    Truncated { needed: usize, available: usize },
    #[error("the batch header declares {declared} bytes but {actual} bytes were given")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("the batch length field holds {0}, which is too small for a batch header")]
    BadLength(i32),
    #[error("the batch takes {bytes} bytes, more than the limit of {max} bytes")]
    Oversize { bytes: usize, max: usize },
    #[error("the batch has magic byte {0}, but only RecordBatch v2 (magic 2) is supported")]
    BadMagic(i8),
    #[error("the batch is corrupt: it carries CRC {stored:#010x} but its bytes hash to {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("the batch names compression codec {0}, which does not exist")]
    BadCompression(u8),
    #[error("the batch is compressed with {0:?}, so its records must be decompressed before they can be read")]
    Compressed(Compression),
    #[error(
        "the batch declares {records_count} records, which does not fit its last offset delta of {last_offset_delta}"
    )]
    InconsistentCounts { records_count: i32, last_offset_delta: i32 },
    #[error("the batch's base offset {base_offset} plus last offset delta {last_offset_delta} is not a valid offset")]
    BadBaseOffset { base_offset: i64, last_offset_delta: i32 },
    #[error("the batch declares {declared} records but holds only {found}")]
    RecordCountMismatch { declared: i32, found: i32 },
    #[error("the batch has {bytes} bytes left over after its last declared record")]
    TrailingBytes { bytes: usize },
    #[error(
        "record {index} has offset delta {offset_delta}, which is out of order or beyond the batch's last offset delta"
    )]
    BadOffsetDelta { index: i32, offset_delta: i32 },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: i32, reason: &'static str },
    #[error("a variable-length integer is malformed: {0}")]
    Varint(#[from] VarintError),
    #[error("producers may not send control batches; only the broker writes them")]
    ControlBatch,
    #[error("the batch holds no records, and a producer must send at least one")]
    EmptyBatch,
    #[error("the batch's records decompress to more than {max} bytes")]
    DecompressedTooLarge { max: usize },
    #[error("the batch's {codec:?} block cannot be decompressed: {reason}")]
    BadCompressedData { codec: Compression, reason: String },
    #[error("the batch is not a control batch (attribute bit 5 is clear)")]
    NotControl,
    #[error("the control batch is malformed: {reason}")]
    BadControlRecord { reason: &'static str },
}

/// The compression codec named by bits 0-2 of the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec's number in the attributes.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec's name in Kafka's configs (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The codec named `name` in Kafka's configs, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
            .into_iter()
            .find(|codec| codec.name() == name)
    }

    /// The codec with number `id`; 5, 6 and 7 name no codec.
    pub fn from_id(id: u8) -> Result<Self, BatchError> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            _ => Err(BatchError::BadCompression(id)),
        }
    }
}

/// Which clock the batch's timestamps come from (bit 3 of the attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The batch attributes field, with Kafka's bit assignments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    const COMPRESSION_MASK: i16 = 0b111;
    const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
    const TRANSACTIONAL_BIT: i16 = 1 << 4;
    const CONTROL_BIT: i16 = 1 << 5;
    const DELETE_HORIZON_BIT: i16 = 1 << 6;

    /// The codec, or `BadCompression` for the unassigned numbers 5-7.
    pub fn compression(self) -> Result<Compression, BatchError> {
        // The mask keeps three bits, so the cast cannot lose data.
        Compression::from_id((self.0 & Self::COMPRESSION_MASK) as u8)
    }

    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE_BIT == 0 { TimestampType::CreateTime } else { TimestampType::LogAppendTime }
    }

    pub fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL_BIT != 0
    }

    /// Control batches carry transaction markers rather than user records.
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL_BIT != 0
    }

    /// Set by compaction when `base_timestamp` holds the delete horizon.
    pub fn has_delete_horizon(self) -> bool {
        self.0 & Self::DELETE_HORIZON_BIT != 0
    }

    /// These attributes with codec bits 0-2 naming `codec`.
    #[must_use]
    pub fn with_compression(self, codec: Compression) -> Self {
        Attributes((self.0 & !Self::COMPRESSION_MASK) | i16::from(codec.id()))
    }

    /// These attributes with bit 3 naming `timestamp_type`.
    #[must_use]
    pub fn with_timestamp_type(self, timestamp_type: TimestampType) -> Self {
        match timestamp_type {
            TimestampType::CreateTime => Attributes(self.0 & !Self::TIMESTAMP_TYPE_BIT),
            TimestampType::LogAppendTime => Attributes(self.0 | Self::TIMESTAMP_TYPE_BIT),
        }
    }
}

/// The header of a batch that passed validation, in native integers.
///
/// Only validation creates a `BatchInfo` (the private codec field sees to
/// that), so its fields describe a batch whose length, magic, CRC, codec and
/// counts were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub base_offset: i64,
    /// The whole batch, header included: `BATCH_OVERHEAD_BYTES + batch_length`.
    pub batch_bytes: usize,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
    compression: Compression,
}

impl BatchInfo {
    /// The offset of the batch's last record (or of its last removed record,
    /// after compaction).
    pub fn last_offset(&self) -> i64 {
        // Stored batches were checked not to overflow here. A produced
        // batch's base offset is the producer's placeholder until the broker
        // assigns one, so saturate rather than trust it.
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    pub fn attributes(&self) -> Attributes {
        Attributes(self.attributes)
    }

    fn from_header(header: &BatchHeader, batch_bytes: usize, compression: Compression) -> Self {
        BatchInfo {
            base_offset: header.base_offset.get(),
            batch_bytes,
            partition_leader_epoch: header.partition_leader_epoch.get(),
            attributes: header.attributes.get(),
            last_offset_delta: header.last_offset_delta.get(),
            base_timestamp: header.base_timestamp.get(),
            max_timestamp: header.max_timestamp.get(),
            producer_id: header.producer_id.get(),
            producer_epoch: header.producer_epoch.get(),
            base_sequence: header.base_sequence.get(),
            records_count: header.records_count.get(),
            compression,
        }
    }
}

/// Views the first `BATCH_HEADER_BYTES` of `bytes` as a header, without
/// checking anything but the size.
pub fn peek_header(bytes: &[u8]) -> Result<&BatchHeader, BatchError> {
    BatchHeader::ref_from_prefix(bytes).map(|(header, _records)| header).map_err(|_| header_truncated(bytes.len()))
}

fn header_truncated(available: usize) -> BatchError {
    BatchError::Truncated { needed: BATCH_HEADER_BYTES, available }
}

/// The CRC-32C that the batch in `bytes` should carry: the hash of everything
/// from the attributes to the end. `bytes` must be exactly one batch; input
/// too short to reach the attributes hashes as empty.
pub fn crc_of(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes.get(CRC_COVERED_START..).unwrap_or_default())
}

/// Recomputes the CRC of the batch in `batch` and stores it in the header,
/// returning it. Needed after changing any field the CRC covers.
pub fn write_crc(batch: &mut [u8]) -> Result<u32, BatchError> {
    let crc = crc_of(batch);
    header_mut(batch)?.crc.set(crc);
    Ok(crc)
}

/// Stamps the offset the log assigns to the batch's first record.
///
/// The base offset lies outside the CRC, so the batch stays valid. Input
/// shorter than a header is refused with `Truncated` rather than ignored, so
/// that a caller's bug cannot silently leave a batch unstamped.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    header_mut(batch)?.base_offset.set(base_offset);
    Ok(())
}

/// Stamps the leader epoch under which the batch was appended. Like the base
/// offset it lies outside the CRC; short input is refused with `Truncated`.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) -> Result<(), BatchError> {
    header_mut(batch)?.partition_leader_epoch.set(epoch);
    Ok(())
}

/// Stamps a validated batch with the broker's clock, as Kafka does for a
/// topic with `message.timestamp.type=LogAppendTime`: the timestamp type
/// bit is set and `max_timestamp` becomes `now_ms` (consumers then give
/// every record that timestamp); the records are left as sent. Both fields
/// lie under the CRC, so it is recomputed: call this only on a batch whose
/// CRC was checked, or it would launder a corrupt one.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) -> Result<(), BatchError> {
    let header = header_mut(batch)?;
    let attributes = header.attributes().with_timestamp_type(TimestampType::LogAppendTime);
    header.attributes.set(attributes.0);
    header.max_timestamp.set(now_ms);
    write_crc(batch)?;
    Ok(())
}

fn header_mut(batch: &mut [u8]) -> Result<&mut BatchHeader, BatchError> {
    let available = batch.len();
    BatchHeader::mut_from_prefix(batch).map(|(header, _records)| header).map_err(|_| header_truncated(available))
}

/// Validates a batch read back from storage, or fetched from the leader by a
/// follower. `bytes` must be exactly one batch.
///
/// Checks the length, the size limit, the magic byte, the CRC, the codec, the
/// base offset range and the record counts. The records of an uncompressed
/// batch are walked: exactly `records_count` well-formed records must fill
/// the batch, with strictly increasing offset deltas no larger than
/// `last_offset_delta`. Gaps between offset deltas are allowed because
/// compaction removes records but keeps the batch's offset range. The
/// records of a compressed batch are not examined (they were when the
/// batch was produced); reading them decompresses and checks them.
pub fn validate_stored(bytes: &[u8], batch_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    let info = validate_header(bytes, batch_bytes_max)?;
    check_offset_range(&info)?;
    walk_if_uncompressed(bytes, &info, OffsetRule::Increasing)?;
    Ok(info)
}

/// Validates a batch sent by a producer: everything `validate_stored`
/// checks, except the base offset, which the broker overwrites; and in
/// addition it must not be a control batch, must hold at least one record,
/// and must number its records densely: `records_count` equals
/// `last_offset_delta + 1` and the offset deltas run `0..records_count` in
/// order. `bytes` must be exactly one batch.
///
/// A compressed batch is decompressed (refused with `DecompressedTooLarge`
/// past `limits::DECOMPRESSED_BYTES_MAX`, with `BadCompressedData` if the
/// codec cannot read it) and its records walked like an uncompressed one's.
pub fn validate_produce(bytes: &[u8], batch_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    let info = validate_header(bytes, batch_bytes_max)?;
    if info.attributes().is_control() {
        return Err(BatchError::ControlBatch);
    }
    if info.records_count == 0 {
        return Err(BatchError::EmptyBatch);
    }
    if i64::from(info.records_count) != i64::from(info.last_offset_delta) + 1 {
        return Err(inconsistent_counts(&info));
    }
    if info.compression == Compression::None {
        walk_if_uncompressed(bytes, &info, OffsetRule::Dense)?;
    } else {
        let records = decompress_records_section(bytes, info.compression, DECOMPRESSED_BYTES_MAX)?;
        walk_records(&records, &info, OffsetRule::Dense)?;
    }
    Ok(info)
}

fn decompress_records_section(
    batch: &[u8],
    codec: Compression,
    decompressed_bytes_max: usize,
) -> Result<Bytes, BatchError> {
    let compressed = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    compression::decompress(codec, compressed, decompressed_bytes_max)
}

/// The checks shared by stored and produced batches, up to the records.
fn validate_header(bytes: &[u8], batch_bytes_max: usize) -> Result<BatchInfo, BatchError> {
    let header = peek_header(bytes)?;
    // Magic comes first so that an old-format message set is reported as
    // such rather than as a length error; its magic byte sits at the same place.
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    let batch_bytes = header.batch_bytes()?;
    if batch_bytes > batch_bytes_max {
        return Err(BatchError::Oversize { bytes: batch_bytes, max: batch_bytes_max });
    }
    if batch_bytes != bytes.len() {
        return Err(BatchError::LengthMismatch { declared: batch_bytes, actual: bytes.len() });
    }
    let computed = crc_of(bytes);
    if header.crc.get() != computed {
        return Err(BatchError::BadCrc { stored: header.crc.get(), computed });
    }
    let compression = header.attributes().compression()?;
    let info = BatchInfo::from_header(header, batch_bytes, compression);
    check_counts(&info)?;
    debug_assert_eq!(info.batch_bytes, bytes.len());
    Ok(info)
}

/// A batch spans offsets `base..=base + last_offset_delta` and holds at most
/// one record per offset; compaction may leave fewer, down to none.
fn check_counts(info: &BatchInfo) -> Result<(), BatchError> {
    let offsets_spanned = i64::from(info.last_offset_delta) + 1;
    let fits =
        info.records_count >= 0 && info.last_offset_delta >= 0 && i64::from(info.records_count) <= offsets_spanned;
    if fits { Ok(()) } else { Err(inconsistent_counts(info)) }
}

fn inconsistent_counts(info: &BatchInfo) -> BatchError {
    BatchError::InconsistentCounts { records_count: info.records_count, last_offset_delta: info.last_offset_delta }
}

/// Offsets in a log are never negative, and the batch's last offset must be
/// representable.
fn check_offset_range(info: &BatchInfo) -> Result<(), BatchError> {
    debug_assert!(info.last_offset_delta >= 0);
    let last_offset = info.base_offset.checked_add(i64::from(info.last_offset_delta));
    if info.base_offset >= 0 && last_offset.is_some() {
        Ok(())
    } else {
        Err(BatchError::BadBaseOffset { base_offset: info.base_offset, last_offset_delta: info.last_offset_delta })
    }
}

/// How the offset deltas of a batch's records must be numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OffsetRule {
    /// Strictly increasing and within the batch: what compaction leaves.
    Increasing,
    /// Exactly 0, 1, 2, ...: what a producer must send.
    Dense,
}

fn walk_if_uncompressed(bytes: &[u8], info: &BatchInfo, rule: OffsetRule) -> Result<(), BatchError> {
    if info.compression != Compression::None {
        return Ok(());
    }
    walk_records(bytes.get(BATCH_HEADER_BYTES..).unwrap_or_default(), info, rule)
}

/// Walks a records section (uncompressed), checking each record and its
/// offset delta.
fn walk_records(records_bytes: &[u8], info: &BatchInfo, rule: OffsetRule) -> Result<(), BatchError> {
    let records = RecordIter::new(records_bytes, info.records_count, false);
    let mut previous_delta: Option<i32> = None;
    let mut index: i32 = 0;
    for record in records {
        let offset_delta = record?.offset_delta;
        let in_order = match rule {
            OffsetRule::Increasing => {
                previous_delta.is_none_or(|previous| offset_delta > previous)
                    && (0..=info.last_offset_delta).contains(&offset_delta)
            }
            OffsetRule::Dense => offset_delta == index,
        };
        if !in_order {
            return Err(BatchError::BadOffsetDelta { index, offset_delta });
        }
        previous_delta = Some(offset_delta);
        // The iterator stops after records_count records, so this cannot
        // overflow; saturating keeps that true even if it someday could.
        index = index.saturating_add(1);
    }
    debug_assert_eq!(index, info.records_count);
    Ok(())
}

/// One record header: a non-null key and a nullable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// One record of an uncompressed batch, borrowing from the batch bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub attributes: i8,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<Header<'a>>,
}

impl Record<'_> {
    /// The record's offset in a batch whose first offset is `base_offset`.
    pub fn offset(&self, base_offset: i64) -> i64 {
        base_offset.saturating_add(i64::from(self.offset_delta))
    }

    /// The record's timestamp in a batch whose base timestamp is
    /// `base_timestamp_ms`. Kafka computes the delta with Java's wrapping
    /// arithmetic, so it is undone the same way.
    pub fn timestamp_ms(&self, base_timestamp_ms: i64) -> i64 {
        base_timestamp_ms.wrapping_add(self.timestamp_delta)
    }
}

/// Iterates over the records of one uncompressed batch.
///
/// `records` checks the header fields it needs (size, magic, length, codec,
/// count) but not the CRC: call `validate_stored` or `validate_produce`
/// first. Whatever the bytes, iteration never panics and never reads past
/// the batch; a malformed record ends it with an error.
pub fn records(batch: &[u8]) -> Result<RecordIter<'_>, BatchError> {
    let header = peek_header(batch)?;
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    let batch_bytes = header.batch_bytes()?;
    if batch_bytes != batch.len() {
        return Err(BatchError::LengthMismatch { declared: batch_bytes, actual: batch.len() });
    }
    match header.attributes().compression()? {
        Compression::None => {}
        compressed => return Err(BatchError::Compressed(compressed)),
    }
    let records_count = header.records_count.get();
    if records_count < 0 {
        return Err(BatchError::InconsistentCounts {
            records_count,
            last_offset_delta: header.last_offset_delta.get(),
        });
    }
    let records_bytes = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
    Ok(RecordIter::new(records_bytes, records_count, true))
}

/// The records section of one batch, ready to iterate: the bytes after the
/// header of an uncompressed batch (shared, not copied), or a compressed
/// batch's block decompressed. Made by `decompressed_records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    bytes: Bytes,
    records_count: i32,
}

impl Records {
    /// The uncompressed records section; records borrow from it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The records, with the guarantees of `records`.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter::new(&self.bytes, self.records_count, true)
    }
}

/// The records of a batch, compressed or not: what a consumer reads.
///
/// Checks what `records` checks (call a `validate_*` first for the CRC);
/// a compressed batch is decompressed into at most `decompressed_bytes_max`
/// bytes (else `DecompressedTooLarge`).
pub fn decompressed_records(batch: &Bytes, decompressed_bytes_max: usize) -> Result<Records, BatchError> {
    let header = peek_header(batch)?;
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    let batch_bytes = header.batch_bytes()?;
    if batch_bytes != batch.len() {
        return Err(BatchError::LengthMismatch { declared: batch_bytes, actual: batch.len() });
    }
    let records_count = header.records_count.get();
    if records_count < 0 {
        let last_offset_delta = header.last_offset_delta.get();
        return Err(BatchError::InconsistentCounts { records_count, last_offset_delta });
    }
    let bytes = match header.attributes().compression()? {
        Compression::None => batch.slice(BATCH_HEADER_BYTES..),
        codec => decompress_records_section(batch, codec, decompressed_bytes_max)?,
    };
    Ok(Records { bytes, records_count })
}

/// The iterator `records` returns. After the first error it yields nothing.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    records_count: i32,
    index: i32,
    collect_headers: bool,
    done: bool,
}

impl<'a> RecordIter<'a> {
    /// `collect_headers` is off during validation, which needs no header
    /// values and so should not allocate for them.
    fn new(records_bytes: &'a [u8], records_count: i32, collect_headers: bool) -> Self {
        debug_assert!(records_count >= 0);
        RecordIter { rest: records_bytes, records_count, index: 0, collect_headers, done: false }
    }

    fn step(&mut self) -> Option<Result<Record<'a>, BatchError>> {
        if self.index >= self.records_count {
            if self.rest.is_empty() {
                return None;
            }
            return Some(Err(BatchError::TrailingBytes { bytes: self.rest.len() }));
        }
        if self.rest.is_empty() {
            let declared = self.records_count;
            return Some(Err(BatchError::RecordCountMismatch { declared, found: self.index }));
        }
        let parsed = parse_record(self.rest, self.index, self.collect_headers);
        // index < records_count <= i32::MAX here, so this cannot overflow.
        self.index += 1;
        Some(parsed.map(|(record, rest)| {
            self.rest = rest;
            record
        }))
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

impl core::iter::FusedIterator for RecordIter<'_> {}

/// A bounded reader over one record, whose failures name the record.
struct RecordReader<'a> {
    bytes: &'a [u8],
    index: i32,
}

impl<'a> RecordReader<'a> {
    fn fail(&self, reason: &'static str) -> BatchError {
        BatchError::BadRecord { index: self.index, reason }
    }

    fn byte(&mut self, reason: &'static str) -> Result<u8, BatchError> {
        let (&byte, rest) = self.bytes.split_first().ok_or_else(|| self.fail(reason))?;
        self.bytes = rest;
        Ok(byte)
    }

    fn take(&mut self, bytes_count: usize, reason: &'static str) -> Result<&'a [u8], BatchError> {
        let (taken, rest) = self.bytes.split_at_checked(bytes_count).ok_or_else(|| self.fail(reason))?;
        self.bytes = rest;
        Ok(taken)
    }

    fn varint(&mut self, reason: &'static str) -> Result<i32, BatchError> {
        let (value, bytes_used) = varint::read_varint(self.bytes).map_err(|_| self.fail(reason))?;
        self.take(bytes_used, reason)?;
        Ok(value)
    }

    fn varlong(&mut self, reason: &'static str) -> Result<i64, BatchError> {
        let (value, bytes_used) = varint::read_varlong(self.bytes).map_err(|_| self.fail(reason))?;
        self.take(bytes_used, reason)?;
        Ok(value)
    }

    /// A length varint that must not be negative.
    fn length(&mut self, reason: &'static str) -> Result<usize, BatchError> {
        let length = self.varint(reason)?;
        usize::try_from(length).map_err(|_| self.fail(reason))
    }

    /// A length-prefixed byte string in which length -1 means null.
    fn nullable(
        &mut self,
        length_reason: &'static str,
        content_reason: &'static str,
    ) -> Result<Option<&'a [u8]>, BatchError> {
        let length = self.varint(length_reason)?;
        if length == -1 {
            return Ok(None);
        }
        let length = usize::try_from(length).map_err(|_| self.fail(length_reason))?;
        self.take(length, content_reason).map(Some)
    }
}

/// Parses the record at the front of `records_bytes`, returning it and the
/// bytes after it.
fn parse_record(records_bytes: &[u8], index: i32, collect_headers: bool) -> Result<(Record<'_>, &[u8]), BatchError> {
    let mut outer = RecordReader { bytes: records_bytes, index };
    let body_bytes = outer.length("the record length is not a valid non-negative varint")?;
    let body = outer.take(body_bytes, "the record length runs past the end of the batch")?;
    let record = parse_record_body(RecordReader { bytes: body, index }, collect_headers)?;
    Ok((record, outer.bytes))
}

fn parse_record_body(mut reader: RecordReader<'_>, collect_headers: bool) -> Result<Record<'_>, BatchError> {
    let attributes = i8::from_be_bytes([reader.byte("the attributes byte is missing")?]);
    let timestamp_delta = reader.varlong("the timestamp delta is not a valid varlong")?;
    let offset_delta = reader.varint("the offset delta is not a valid varint")?;
    let key = reader
        .nullable("the key length is not a valid varint of at least -1", "the key runs past the end of the record")?;
    let value = reader.nullable(
        "the value length is not a valid varint of at least -1",
        "the value runs past the end of the record",
    )?;
    let headers = parse_headers(&mut reader, collect_headers)?;
    if !reader.bytes.is_empty() {
        return Err(reader.fail("the record length is larger than its contents"));
    }
    Ok(Record { offset_delta, timestamp_delta, attributes, key, value, headers })
}

/// The fewest bytes a header can take: two one-byte length varints.
const RECORD_HEADER_BYTES_MIN: usize = 2;

fn parse_headers<'a>(reader: &mut RecordReader<'a>, collect_headers: bool) -> Result<Vec<Header<'a>>, BatchError> {
    let headers_count = reader.length("the header count is not a valid non-negative varint")?;
    // The count comes from the wire, so the allocation is capped by how many
    // headers the remaining bytes could possibly hold.
    let capacity = if collect_headers { headers_count.min(reader.bytes.len() / RECORD_HEADER_BYTES_MIN) } else { 0 };
    let mut headers = Vec::with_capacity(capacity);
    // Each pass consumes at least two bytes or fails, so a huge count ends
    // as soon as the record's bytes run out.
    for _ in 0..headers_count {
        let key_bytes = reader.length("a header key length is not a valid non-negative varint")?;
        let key = reader.take(key_bytes, "a header key runs past the end of the record")?;
        let value = reader.nullable(
            "a header value length is not a valid varint of at least -1",
            "a header value runs past the end of the record",
        )?;
        if collect_headers {
            headers.push(Header { key, value });
        }
    }
    Ok(headers)
}

/// One batch found by `split_batches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpan<'a> {
    /// Where the batch lies in the buffer given to `split_batches`.
    pub range: Range<usize>,
    /// The batch's bytes, `buf[range]`.
    pub bytes: &'a [u8],
    /// The batch's header, not yet validated beyond its length.
    pub header: &'a BatchHeader,
}

/// Splits a buffer of concatenated batches using only each header's
/// `batch_length`; nothing else is checked, so every batch still needs
/// validation.
///
/// A buffer that ends inside a batch whose length field is sane yields
/// `Truncated` (a torn tail); a length field too small for a header yields
/// `BadLength`, and one above `batch_bytes_max` (if set) yields `Oversize`
/// (garbage). After any error the iterator yields nothing more, and
/// `position` tells where the offending batch starts.
pub fn split_batches(buf: &[u8]) -> SplitBatches<'_> {
    SplitBatches { buf, position: 0, batch_bytes_max: usize::MAX, failed: false }
}

/// The iterator `split_batches` returns.
#[derive(Debug, Clone)]
pub struct SplitBatches<'a> {
    buf: &'a [u8],
    position: usize,
    batch_bytes_max: usize,
    failed: bool,
}

impl<'a> SplitBatches<'a> {
    /// Treats a declared batch larger than `batch_bytes_max` as garbage
    /// (`Oversize`) rather than as a batch that may still be arriving.
    #[must_use]
    pub fn batch_bytes_max(mut self, batch_bytes_max: usize) -> Self {
        self.batch_bytes_max = batch_bytes_max;
        self
    }

    /// Where the next batch starts; after an error, where the batch that
    /// could not be split starts. Everything before it was yielded whole.
    pub fn position(&self) -> usize {
        self.position
    }

    fn span_at_position(&self) -> Result<BatchSpan<'a>, BatchError> {
        let rest = self.buf.get(self.position..).unwrap_or_default();
        let length_field =
            rest.get(BATCH_LENGTH_START..BATCH_OVERHEAD_BYTES).ok_or_else(|| header_truncated(rest.len()))?;
        let batch_length =
            I32::<BigEndian>::read_from_bytes(length_field).map_err(|_| header_truncated(rest.len()))?.get();
        let batch_bytes = batch_bytes_from_length(batch_length)?;
        if batch_bytes > self.batch_bytes_max {
            return Err(BatchError::Oversize { bytes: batch_bytes, max: self.batch_bytes_max });
        }
        let bytes =
            rest.get(..batch_bytes).ok_or(BatchError::Truncated { needed: batch_bytes, available: rest.len() })?;
        let header = peek_header(bytes)?;
        let end = self.position + batch_bytes;
        Ok(BatchSpan { range: self.position..end, bytes, header })
    }
}

impl<'a> Iterator for SplitBatches<'a> {
    type Item = Result<BatchSpan<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        debug_assert!(self.position <= self.buf.len());
        if self.failed || self.position >= self.buf.len() {
            return None;
        }
        match self.span_at_position() {
            Ok(span) => {
                debug_assert!(span.range.end <= self.buf.len());
                self.position = span.range.end;
                Some(Ok(span))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

impl core::iter::FusedIterator for SplitBatches<'_> {}

/// Assembles an uncompressed batch, for clients and tests.
///
/// The output has base offset 0, partition leader epoch -1 and attributes 0
/// (uncompressed, create time, not transactional unless `transactional`). A builder with no records
/// builds a header-only batch with `last_offset_delta` 0 and
/// `max_timestamp` equal to the base timestamp; `validate_stored` accepts it
/// and `validate_produce` refuses it as `EmptyBatch`.
///
/// The builder trusts its caller. Keys, values, header counts and batches
/// must stay below `i32::MAX` bytes or entries (checked only by debug
/// assertions); past that the length fields saturate and the batch fails
/// validation instead of panicking. Callers bound the size with
/// `encoded_bytes`, as Kafka's producer does.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// A placeholder header followed by the encoded records.
    buf: BytesMut,
    base_timestamp_ms: i64,
    max_timestamp_ms: Option<i64>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records_count: i32,
    compression: Compression,
    /// Bits 4 (transactional) and 5 (control) of the attributes.
    flags: i16,
}

impl BatchBuilder {
    /// Kafka's value for "no producer id / epoch / sequence".
    pub const NO_PRODUCER: i64 = -1;

    /// Record timestamps are stored as deltas from `base_timestamp_ms`;
    /// Kafka's producer passes the first record's timestamp.
    pub fn new(base_timestamp_ms: i64) -> Self {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES);
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            buf,
            base_timestamp_ms,
            max_timestamp_ms: None,
            producer_id: Self::NO_PRODUCER,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 0,
            compression: Compression::None,
            flags: 0,
        }
    }

    /// Marks the batch as part of a transaction (attribute bit 4): what a
    /// transactional producer sends between its begin and its commit or
    /// abort.
    #[must_use]
    pub fn transactional(mut self) -> Self {
        self.flags |= Attributes::TRANSACTIONAL_BIT;
        self
    }

    /// Builds a batch whose records are compressed with `codec` (as Kafka
    /// frames it) and whose attributes name it.
    #[must_use]
    pub fn compression(mut self, codec: Compression) -> Self {
        self.compression = codec;
        self
    }

    /// Sets the idempotent producer's identity and the sequence number of the
    /// first record.
    #[must_use]
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Appends a record; its offset delta is the number of records before it.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        let fields = RecordFields {
            timestamp_delta: timestamp_ms.wrapping_sub(self.base_timestamp_ms),
            offset_delta: self.records_count,
            key,
            value,
            headers,
        };
        let body_bytes = fields.body_bytes();
        varint::write_varint(&mut self.buf, saturating_i32(body_bytes));
        let body_start = self.buf.len();
        fields.write_body(&mut self.buf);
        debug_assert_eq!(self.buf.len() - body_start, body_bytes);
        debug_assert!(self.records_count < i32::MAX);
        self.records_count = self.records_count.saturating_add(1);
        self.max_timestamp_ms = Some(self.max_timestamp_ms.map_or(timestamp_ms, |max| max.max(timestamp_ms)));
    }

    /// The number of records pushed so far.
    pub fn len(&self) -> usize {
        // records_count only grows from zero, so it is never negative.
        usize::try_from(self.records_count).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.records_count == 0
    }

    /// The exact size the built batch will have, header included, if it is
    /// not compressed; the size of its records before compression if it is.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Fills in the header and CRC, compressing the records first if a codec
    /// was chosen, and returns the finished batch.
    pub fn build(mut self) -> BytesMut {
        if self.compression != Compression::None {
            let compressed = compression::compress(self.compression, &self.buf[BATCH_HEADER_BYTES..]);
            self.buf.truncate(BATCH_HEADER_BYTES);
            self.buf.extend_from_slice(&compressed);
        }
        let header = self.header();
        // The buffer starts with a header-sized placeholder and only grows,
        // so neither write can fail; a failure would leave a batch that
        // validation rejects, never a panic.
        let header_written = header.write_to_prefix(&mut self.buf[..]);
        debug_assert!(header_written.is_ok());
        let crc_written = write_crc(&mut self.buf);
        debug_assert!(crc_written.is_ok());
        self.buf
    }

    fn header(&self) -> BatchHeader {
        debug_assert!(self.buf.len() >= BATCH_HEADER_BYTES);
        let batch_length = saturating_i32(self.buf.len().saturating_sub(BATCH_OVERHEAD_BYTES));
        BatchHeader {
            base_offset: I64::new(0),
            batch_length: I32::new(batch_length),
            partition_leader_epoch: I32::new(-1),
            magic: MAGIC_V2,
            crc: U32::new(0),
            attributes: I16::new(Attributes(self.flags).with_compression(self.compression).0),
            last_offset_delta: I32::new(self.records_count.saturating_sub(1).max(0)),
            base_timestamp: I64::new(self.base_timestamp_ms),
            max_timestamp: I64::new(self.max_timestamp_ms.unwrap_or(self.base_timestamp_ms)),
            producer_id: I64::new(self.producer_id),
            producer_epoch: I16::new(self.producer_epoch),
            base_sequence: I32::new(self.base_sequence),
            records_count: I32::new(self.records_count),
        }
    }
}

/// What one record is made of, for sizing and encoding it.
struct RecordFields<'a> {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

impl RecordFields<'_> {
    /// The record's size after its length varint, computed before writing
    /// because the length comes first.
    fn body_bytes(&self) -> usize {
        let header_bytes: usize = self
            .headers
            .iter()
            .map(|&(key, value)| varint::varint_bytes(saturating_i32(key.len())) + key.len() + nullable_bytes(value))
            .sum();
        size_of::<i8>()
            + varint::varlong_bytes(self.timestamp_delta)
            + varint::varint_bytes(self.offset_delta)
            + nullable_bytes(self.key)
            + nullable_bytes(self.value)
            + varint::varint_bytes(saturating_i32(self.headers.len()))
            + header_bytes
    }

    fn write_body(&self, buf: &mut BytesMut) {
        // Record attributes are unused in v2 and always written as zero.
        buf.put_i8(0);
        varint::write_varlong(buf, self.timestamp_delta);
        varint::write_varint(buf, self.offset_delta);
        put_nullable(buf, self.key);
        put_nullable(buf, self.value);
        varint::write_varint(buf, saturating_i32(self.headers.len()));
        for &(key, value) in self.headers {
            varint::write_varint(buf, saturating_i32(key.len()));
            buf.put_slice(key);
            put_nullable(buf, value);
        }
    }
}

/// A transaction marker: the one record of a control batch, written by the
/// partition leader when the transaction coordinator ends a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlRecord {
    /// A commit marker (control type 1) or an abort marker (type 0).
    pub commit: bool,
    /// The coordinator's epoch when it wrote the marker (Kafka's
    /// `EndTransactionMarker.coordinatorEpoch`), so that a partition can
    /// tell markers of a deposed coordinator.
    pub coordinator_epoch: i32,
}

/// Kafka's control record key: version i16, type i16.
const CONTROL_KEY_BYTES: usize = 4;
/// Kafka's `EndTransactionMarker` value (version 0): version i16,
/// coordinator epoch i32.
const CONTROL_VALUE_BYTES: usize = 6;
/// `ControlRecordType` numbers of the two transaction markers.
const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;

/// A control batch carrying one transaction marker, as Kafka's
/// `MemoryRecords.withEndTransactionMarker` writes it: attributes
/// transactional and control (0x30), uncompressed, create time; the
/// producer's id and epoch; base sequence -1; one record at offset delta 0
/// and timestamp `timestamp_ms`, no headers, whose key is `version i16 = 0,
/// type i16 (0 abort, 1 commit)` and whose value is `version i16 = 0,
/// coordinator_epoch i32`. Base offset 0 and leader epoch -1: the log
/// stamps both, outside the CRC.
pub fn build_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: ControlRecord,
    timestamp_ms: i64,
) -> BytesMut {
    let control_type = if marker.commit { CONTROL_TYPE_COMMIT } else { CONTROL_TYPE_ABORT };
    let mut key = [0u8; CONTROL_KEY_BYTES];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    let mut value = [0u8; CONTROL_VALUE_BYTES];
    value[2..].copy_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let mut builder = BatchBuilder::new(timestamp_ms).producer(producer_id, producer_epoch, -1);
    builder.flags = Attributes::TRANSACTIONAL_BIT | Attributes::CONTROL_BIT;
    builder.push(timestamp_ms, Some(&key), Some(&value), &[]);
    let batch = builder.build();
    debug_assert!(parse_control_batch(&batch) == Ok(marker));
    batch
}

/// The marker of a control batch. Everything about the batch is checked
/// first (length, magic, CRC, counts, the record's framing), since the
/// bytes may come from the network: it must have the control bit, be
/// uncompressed and hold exactly one record whose key is a commit or abort
/// control key and whose value holds a coordinator epoch. Key and value
/// versions above 0 are read as version 0 (Kafka's readers do the same:
/// later versions may only add fields at the end).
pub fn parse_control_batch(batch: &[u8]) -> Result<ControlRecord, BatchError> {
    let info = validate_stored(batch, batch.len())?;
    let bad = |reason| BatchError::BadControlRecord { reason };
    if !info.attributes().is_control() {
        return Err(BatchError::NotControl);
    }
    if info.compression != Compression::None {
        return Err(bad("a control batch must be uncompressed"));
    }
    let mut records = records(batch)?;
    let record = records.next().ok_or(bad("a control batch must hold one record"))??;
    if records.next().is_some() {
        return Err(bad("a control batch must hold exactly one record"));
    }
    let key = record.key.ok_or(bad("the control record has no key"))?;
    if key.len() < CONTROL_KEY_BYTES {
        return Err(bad("the control record's key is shorter than 4 bytes"));
    }
    let key_version = i16::from_be_bytes([key[0], key[1]]);
    let control_type = i16::from_be_bytes([key[2], key[3]]);
    if key_version < 0 {
        return Err(bad("the control record's key has a negative version"));
    }
    let commit = match control_type {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return Err(bad("the control record is not a commit or abort marker")),
    };
    let value = record.value.ok_or(bad("the transaction marker has no value"))?;
    if value.len() < CONTROL_VALUE_BYTES {
        return Err(bad("the transaction marker's value is shorter than 6 bytes"));
    }
    if i16::from_be_bytes([value[0], value[1]]) < 0 {
        return Err(bad("the transaction marker's value has a negative version"));
    }
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Ok(ControlRecord { commit, coordinator_epoch })
}

fn nullable_bytes(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint::varint_bytes(-1),
        Some(bytes) => varint::varint_bytes(saturating_i32(bytes.len())) + bytes.len(),
    }
}

fn put_nullable(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => varint::write_varint(buf, -1),
        Some(bytes) => {
            varint::write_varint(buf, saturating_i32(bytes.len()));
            buf.put_slice(bytes);
        }
    }
}

/// Converts a builder length to its i32 wire field. Lengths that do not fit
/// are a caller bug; saturating yields a batch that fails validation.
fn saturating_i32(length: usize) -> i32 {
    debug_assert!(length <= i32::MAX as usize, "length {length} does not fit an i32 field");
    i32::try_from(length).unwrap_or(i32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compression;
    use proptest::prelude::*;

    const BATCH_BYTES_MAX: usize = 1 << 20;

    /// A bit-at-a-time CRC-32C (Castagnoli, reflected polynomial 0x82F63B78),
    /// written from the definition so that tests do not trust the crate
    /// under test to check itself.
    fn crc32c_reference(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// A batch of `records_count` records with null key and value and the
    /// base timestamp, so that record `i` is exactly the seven bytes
    /// `0c 00 00 <zigzag i> 01 01 00` at `record_start(i)`.
    fn simple_batch(records_count: i32) -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_000);
        for _ in 0..records_count {
            builder.push(1_000, None, None, &[]);
        }
        builder.build().to_vec()
    }

    const SIMPLE_RECORD_BYTES: usize = 7;
    const OFFSET_DELTA_IN_RECORD: usize = 3;

    fn record_start(index: usize) -> usize {
        BATCH_HEADER_BYTES + index * SIMPLE_RECORD_BYTES
    }

    /// Applies `change` to the header and recomputes the CRC, so that the
    /// mutation reaches the checks behind the CRC.
    fn edit_header(batch: &mut [u8], change: impl FnOnce(&mut BatchHeader)) {
        change(header_mut(batch).unwrap());
        write_crc(batch).unwrap();
    }

    /// Overwrites one byte of the records and recomputes the CRC.
    fn edit_byte(batch: &mut [u8], position: usize, byte: u8) {
        batch[position] = byte;
        write_crc(batch).unwrap();
    }

    fn zigzag(value: i32) -> u8 {
        u8::try_from((value << 1) ^ (value >> 31)).unwrap()
    }

    /// IBM/sarama's record_test.go "uncompressed record" vector: one record
    /// with key 01020304, value 050607, one header 08090a = 0b0c, timestamp
    /// delta 5 ms. Encoded by an independent Kafka client.
    const SARAMA_UNCOMPRESSED: [u8; 82] = [
        0, 0, 0, 0, 0, 0, 0, 0, // base offset
        0, 0, 0, 70, // batch length
        0, 0, 0, 0, // partition leader epoch
        2, // magic
        84, 121, 97, 253, // crc
        0, 0, // attributes
        0, 0, 0, 0, // last offset delta
        0, 0, 1, 88, 141, 205, 89, 56, // base timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // max timestamp
        0, 0, 0, 0, 0, 0, 0, 0, // producer id
        0, 0, // producer epoch
        0, 0, 0, 0, // base sequence
        0, 0, 0, 1, // records count
        40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
    ];

    /// The same record gzip-compressed, from the same file.
    const SARAMA_GZIP: [u8; 107] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 95, 0, 0, 0, 0, 2, 231, 74, 206, 165, 0, 1, 0, 0, 0, 0, 0, 0, 1, 88, 141, 205,
        89, 56, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 31, 139, 8, 0, 0, 9, 110,
        136, 0, 255, 0, 21, 0, 234, 255, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 3, 0, 173,
        201, 88, 103, 21, 0, 0, 0,
    ];

    /// The "control batch" vector from the same file: no records, attributes 0x20.
    const SARAMA_CONTROL: [u8; 61] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 49, 0, 0, 0, 0, 2, 81, 46, 67, 217, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    const SARAMA_BASE_TIMESTAMP_MS: i64 = 1_479_847_795_000;

    #[test]
    fn header_is_61_bytes_with_fields_where_kafka_puts_them() {
        assert_eq!(size_of::<BatchHeader>(), 61);
        assert_eq!(offset_of!(BatchHeader, batch_length), 8);
        assert_eq!(offset_of!(BatchHeader, partition_leader_epoch), 12);
        assert_eq!(offset_of!(BatchHeader, magic), 16);
        assert_eq!(offset_of!(BatchHeader, crc), 17);
        assert_eq!(offset_of!(BatchHeader, attributes), 21);
        assert_eq!(offset_of!(BatchHeader, last_offset_delta), 23);
        assert_eq!(offset_of!(BatchHeader, base_timestamp), 27);
        assert_eq!(offset_of!(BatchHeader, max_timestamp), 35);
        assert_eq!(offset_of!(BatchHeader, producer_id), 43);
        assert_eq!(offset_of!(BatchHeader, producer_epoch), 51);
        assert_eq!(offset_of!(BatchHeader, base_sequence), 53);
        assert_eq!(offset_of!(BatchHeader, records_count), 57);
    }

    #[test]
    fn built_batch_carries_each_field_at_its_kafka_byte_position() {
        let mut builder = BatchBuilder::new(0x0102_0304_0506_0708).producer(0x1122, 0x3344, 0x5566);
        builder.push(0x0102_0304_0506_0708, Some(b"a"), Some(b"b"), &[]);
        builder.push(0x0102_0304_0506_0709, None, Some(b"c"), &[]);
        let batch = builder.build();

        assert_eq!(batch[0..8], [0; 8]);
        assert_eq!(batch[8..12], i32::try_from(batch.len() - 12).unwrap().to_be_bytes());
        assert_eq!(batch[12..16], (-1i32).to_be_bytes());
        assert_eq!(batch[16], 2);
        assert_eq!(batch[17..21], crc32c_reference(&batch[21..]).to_be_bytes());
        assert_eq!(batch[21..23], [0, 0]);
        assert_eq!(batch[23..27], 1i32.to_be_bytes());
        assert_eq!(batch[27..35], 0x0102_0304_0506_0708i64.to_be_bytes());
        assert_eq!(batch[35..43], 0x0102_0304_0506_0709i64.to_be_bytes());
        assert_eq!(batch[43..51], 0x1122i64.to_be_bytes());
        assert_eq!(batch[51..53], 0x3344i16.to_be_bytes());
        assert_eq!(batch[53..57], 0x5566i32.to_be_bytes());
        assert_eq!(batch[57..61], 2i32.to_be_bytes());
    }

    #[test]
    fn builder_output_matches_a_hand_assembled_kafka_batch() {
        let mut expected: Vec<u8> = [
            &[0u8; 8][..],          // base offset 0
            &58i32.to_be_bytes(),   // batch length: 70 bytes in all, minus 12
            &(-1i32).to_be_bytes(), // partition leader epoch
            &[2],                   // magic
            &[0; 4],                // crc, filled in below
            &[0, 0],                // attributes
            &0i32.to_be_bytes(),    // last offset delta
            &0i64.to_be_bytes(),    // base timestamp
            &0i64.to_be_bytes(),    // max timestamp
            &(-1i64).to_be_bytes(), // producer id
            &(-1i16).to_be_bytes(), // producer epoch
            &(-1i32).to_be_bytes(), // base sequence
            &1i32.to_be_bytes(),    // records count
            // The record: length 8 (zigzag 0x10), attributes, timestamp
            // delta 0, offset delta 0, key length 1 (zigzag 2), "k", value
            // length 1, "v", no headers.
            &[0x10, 0x00, 0x00, 0x00, 0x02, b'k', 0x02, b'v', 0x00],
        ]
        .concat();
        let crc = crc32c_reference(&expected[21..]);
        expected[17..21].copy_from_slice(&crc.to_be_bytes());

        let mut builder = BatchBuilder::new(0);
        builder.push(0, Some(b"k"), Some(b"v"), &[]);
        assert_eq!(builder.encoded_bytes(), expected.len());
        assert_eq!(builder.build()[..], expected[..]);
    }

    #[test]
    fn reference_crc_matches_the_published_check_value_and_crc_of() {
        assert_eq!(crc32c_reference(b"123456789"), 0xE306_9283);
        assert_eq!(crc_of(&SARAMA_UNCOMPRESSED), crc32c_reference(&SARAMA_UNCOMPRESSED[21..]));
    }

    #[test]
    fn batch_encoded_by_another_client_validates_and_reads_back() {
        let info = validate_produce(&SARAMA_UNCOMPRESSED, BATCH_BYTES_MAX).unwrap();
        assert_eq!(info.batch_bytes, SARAMA_UNCOMPRESSED.len());
        assert_eq!(info.base_timestamp, SARAMA_BASE_TIMESTAMP_MS);
        assert_eq!(info.records_count, 1);
        assert_eq!(info.compression(), Compression::None);

        let records: Vec<Record<'_>> = records(&SARAMA_UNCOMPRESSED).unwrap().map(Result::unwrap).collect();
        let expected = Record {
            offset_delta: 0,
            timestamp_delta: 5,
            attributes: 0,
            key: Some(&[1, 2, 3, 4]),
            value: Some(&[5, 6, 7]),
            headers: vec![Header { key: &[8, 9, 10], value: Some(&[11, 12]) }],
        };
        assert_eq!(records, [expected]);
        assert_eq!(records[0].timestamp_ms(info.base_timestamp), SARAMA_BASE_TIMESTAMP_MS + 5);
    }

    #[test]
    fn builder_encodes_records_exactly_as_another_client_does() {
        let mut builder = BatchBuilder::new(SARAMA_BASE_TIMESTAMP_MS).producer(0, 0, 0);
        builder.push(
            SARAMA_BASE_TIMESTAMP_MS + 5,
            Some(&[1, 2, 3, 4]),
            Some(&[5, 6, 7]),
            &[(&[8, 9, 10], Some(&[11, 12]))],
        );
        let batch = builder.build();
        assert_eq!(batch[BATCH_HEADER_BYTES..], SARAMA_UNCOMPRESSED[BATCH_HEADER_BYTES..]);
        // The header differs only where sarama's test chose other values:
        // leader epoch 0 instead of -1, and max timestamp 0 instead of the
        // record's; everything else, up to the CRC, is Kafka's layout.
        assert_eq!(batch[..12], SARAMA_UNCOMPRESSED[..12]);
        assert_eq!(batch[16], SARAMA_UNCOMPRESSED[16]);
        assert_eq!(batch[21..35], SARAMA_UNCOMPRESSED[21..35]);
        assert_eq!(batch[43..61], SARAMA_UNCOMPRESSED[43..61]);
    }

    #[test]
    fn compressed_batch_is_stored_as_sent_but_its_records_are_not_read() {
        let info = validate_stored(&SARAMA_GZIP, BATCH_BYTES_MAX).unwrap();
        assert_eq!(info.compression(), Compression::Gzip);
        assert_eq!(validate_produce(&SARAMA_GZIP, BATCH_BYTES_MAX), Ok(info));
        assert_eq!(records(&SARAMA_GZIP).err(), Some(BatchError::Compressed(Compression::Gzip)));
    }

    /// Sarama's "snappy compressed record" vector: the same record as raw
    /// snappy without xerial framing, which Kafka's reader also takes.
    const SARAMA_SNAPPY: [u8; 84] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 72, 0, 0, 0, 0, 2, 21, 0, 159, 97, 0, 2, 0, 0, 0, 0, 0, 0, 1, 88, 141, 205,
        89, 56, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 21, 80, 40, 0, 10, 0, 8,
        1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12,
    ];

    /// Sarama's "lz4 compressed record" vector: an LZ4 frame with 4 MiB
    /// blocks and a content checksum, holding one uncompressed block.
    const SARAMA_LZ4: [u8; 101] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 89, 0, 0, 0, 0, 2, 169, 74, 119, 197, 0, 3, 0, 0, 0, 0, 0, 0, 1, 88, 141, 205,
        89, 56, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 34, 77, 24, 100, 112,
        185, 21, 0, 0, 128, 40, 0, 10, 0, 8, 1, 2, 3, 4, 6, 5, 6, 7, 2, 6, 8, 9, 10, 4, 11, 12, 0, 0, 0, 0, 12, 59,
        239, 146,
    ];

    #[test]
    fn compressed_batches_from_another_client_validate_and_decompress_to_its_record() {
        let uncompressed = decompressed_records(&Bytes::from_static(&SARAMA_UNCOMPRESSED), usize::MAX).unwrap();
        let expected: Vec<Record<'_>> = uncompressed.iter().map(Result::unwrap).collect();
        assert_eq!(expected.len(), 1);
        for (codec, batch) in [
            (Compression::Gzip, &SARAMA_GZIP[..]),
            (Compression::Snappy, &SARAMA_SNAPPY[..]),
            (Compression::Lz4, &SARAMA_LZ4[..]),
        ] {
            let info = validate_produce(batch, BATCH_BYTES_MAX).unwrap();
            assert_eq!(info.compression(), codec);
            assert_eq!(validate_stored(batch, BATCH_BYTES_MAX), Ok(info));
            let records = decompressed_records(&Bytes::copy_from_slice(batch), DECOMPRESSED_BYTES_MAX).unwrap();
            assert_eq!(records.bytes(), &SARAMA_UNCOMPRESSED[BATCH_HEADER_BYTES..], "{codec:?}");
            let read: Vec<Record<'_>> = records.iter().map(Result::unwrap).collect();
            assert_eq!(read, expected, "{codec:?}");
        }
    }

    fn three_records(builder: BatchBuilder) -> BatchBuilder {
        let mut builder = builder;
        for index in 0..3u8 {
            let value = vec![index; 500];
            builder.push(1_000 + i64::from(index), Some(&[b'k', index]), Some(&value), &[(b"h", Some(b"v"))]);
        }
        builder
    }

    #[test]
    fn each_codec_builds_a_valid_kafka_batch_that_reads_back() {
        let plain = three_records(BatchBuilder::new(1_000)).build().freeze();
        let plain_records: Vec<Record<'_>> = records(&plain).unwrap().map(Result::unwrap).collect();
        for codec in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let batch = three_records(BatchBuilder::new(1_000).compression(codec)).build().freeze();
            let header = peek_header(&batch).unwrap();
            assert_eq!(header.attributes.get(), i16::from(codec.id()), "only the codec bits are set");
            assert_eq!(header.crc.get(), crc32c::crc32c(&batch[CRC_COVERED_START..]), "CRC over the compressed bytes");
            assert_eq!(header.batch_bytes().unwrap(), batch.len());
            assert!(batch.len() < plain.len() / 2, "{codec:?}: {} bytes", batch.len());
            let info = validate_produce(&batch, BATCH_BYTES_MAX).unwrap();
            assert_eq!((info.records_count, info.last_offset_delta, info.max_timestamp), (3, 2, 1_002));
            assert_eq!(records(&batch).err(), Some(BatchError::Compressed(codec)));
            let decompressed = decompressed_records(&batch, DECOMPRESSED_BYTES_MAX).unwrap();
            assert_eq!(decompressed.bytes(), &plain[BATCH_HEADER_BYTES..], "{codec:?}");
            let read: Vec<Record<'_>> = decompressed.iter().map(Result::unwrap).collect();
            assert_eq!(read, plain_records, "{codec:?}");
        }
    }

    #[test]
    fn a_compressed_batch_whose_records_do_not_parse_is_refused_from_producers() {
        // Records with a count that does not match, compressed and sealed.
        let mut batch = three_records(BatchBuilder::new(1_000)).build().to_vec();
        edit_header(&mut batch, |header| header.records_count.set(4));
        edit_header(&mut batch, |header| header.last_offset_delta.set(3));
        let compressed = compression::compress(Compression::Zstd, &batch[BATCH_HEADER_BYTES..]);
        batch.truncate(BATCH_HEADER_BYTES);
        batch.extend_from_slice(&compressed);
        let batch_length = i32::try_from(batch.len() - BATCH_OVERHEAD_BYTES).unwrap();
        edit_header(&mut batch, |header| header.batch_length.set(batch_length));
        edit_header(&mut batch, |header| header.attributes.set(i16::from(Compression::Zstd.id())));
        assert!(validate_stored(&batch, BATCH_BYTES_MAX).is_ok(), "stored batches are not decompressed");
        let refused = validate_produce(&batch, BATCH_BYTES_MAX);
        assert_eq!(refused, Err(BatchError::RecordCountMismatch { declared: 4, found: 3 }));
        // Bytes that are not zstd at all.
        let garbage_end = batch.len();
        batch[BATCH_HEADER_BYTES..garbage_end].fill(0x5a);
        write_crc(&mut batch).unwrap();
        let refused = validate_produce(&batch, BATCH_BYTES_MAX);
        assert!(matches!(refused, Err(BatchError::BadCompressedData { codec: Compression::Zstd, .. })), "{refused:?}");
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_producers() {
        // One record whose 65 MiB value compresses to a few kilobytes.
        let mut builder = BatchBuilder::new(0).compression(Compression::Zstd);
        builder.push(0, None, Some(&vec![0u8; DECOMPRESSED_BYTES_MAX + 1024]), &[]);
        let bomb = builder.build();
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        assert_eq!(
            validate_produce(&bomb, BATCH_BYTES_MAX),
            Err(BatchError::DecompressedTooLarge { max: DECOMPRESSED_BYTES_MAX })
        );
        let bomb = bomb.freeze();
        assert_eq!(decompressed_records(&bomb, 1 << 20), Err(BatchError::DecompressedTooLarge { max: 1 << 20 }));
    }

    #[test]
    fn log_append_time_sets_the_type_bit_and_max_timestamp_and_reseals_the_crc() {
        let mut batch = three_records(BatchBuilder::new(1_000).compression(Compression::Lz4)).build();
        let before = validate_produce(&batch, BATCH_BYTES_MAX).unwrap();
        assert_eq!(before.attributes().timestamp_type(), TimestampType::CreateTime);
        set_log_append_time(&mut batch, 9_999).unwrap();
        let after = validate_produce(&batch, BATCH_BYTES_MAX).unwrap();
        assert_eq!(after.attributes().timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(after.attributes().compression().unwrap(), Compression::Lz4);
        assert_eq!((after.max_timestamp, after.base_timestamp), (9_999, 1_000));
        assert_eq!(batch[..21].len() + batch[21..].len(), before.batch_bytes);
    }

    #[test]
    fn codec_names_are_kafkas() {
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
            assert_eq!(Attributes(0x7ff8).with_compression(codec).compression(), Ok(codec));
        }
        assert_eq!(Compression::from_name("brotli"), None);
    }

    #[test]
    fn control_batch_is_stored_but_refused_from_producers() {
        let info = validate_stored(&SARAMA_CONTROL, BATCH_BYTES_MAX).unwrap();
        assert!(info.attributes().is_control());
        assert_eq!(validate_produce(&SARAMA_CONTROL, BATCH_BYTES_MAX), Err(BatchError::ControlBatch));
    }

    #[test]
    fn empty_batch_is_stored_but_refused_from_producers() {
        let batch = BatchBuilder::new(7).build();
        assert_eq!(batch.len(), BATCH_HEADER_BYTES);
        let info = validate_stored(&batch, BATCH_BYTES_MAX).unwrap();
        assert_eq!((info.records_count, info.last_offset_delta, info.max_timestamp), (0, 0, 7));
        assert_eq!(records(&batch).unwrap().count(), 0);
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX), Err(BatchError::EmptyBatch));
    }

    #[test]
    fn built_batch_round_trips_through_produce_validation_and_records() {
        let mut builder = BatchBuilder::new(100).producer(9, 2, 40);
        builder.push(100, Some(b"key"), Some(b"value"), &[(b"h1", Some(b"v1")), (b"h2", None)]);
        builder.push(90, None, None, &[]);
        builder.push(250, Some(b""), Some(b"last"), &[(b"", Some(b""))]);
        assert_eq!(builder.len(), 3);
        let batch = builder.build();

        let info = validate_produce(&batch, BATCH_BYTES_MAX).unwrap();
        assert_eq!(info, validate_stored(&batch, BATCH_BYTES_MAX).unwrap());
        assert_eq!((info.records_count, info.last_offset_delta, info.last_offset()), (3, 2, 2));
        assert_eq!((info.base_timestamp, info.max_timestamp), (100, 250));
        assert_eq!((info.producer_id, info.producer_epoch, info.base_sequence), (9, 2, 40));
        assert_eq!(info.partition_leader_epoch, -1);

        let records: Vec<Record<'_>> = records(&batch).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key, Some(&b"key"[..]));
        assert_eq!(records[0].headers, [Header { key: b"h1", value: Some(b"v1") }, Header { key: b"h2", value: None }]);
        assert_eq!((records[1].key, records[1].value, records[1].timestamp_delta), (None, None, -10));
        assert_eq!((records[2].key, records[2].value), (Some(&b""[..]), Some(&b"last"[..])));
        assert_eq!(records.iter().map(|record| record.offset_delta).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn builder_defaults_to_kafkas_no_producer_values() {
        let info = validate_stored(&simple_batch(1), BATCH_BYTES_MAX).unwrap();
        assert_eq!((info.producer_id, info.producer_epoch, info.base_sequence), (-1, -1, -1));
    }

    #[test]
    fn input_shorter_than_a_header_is_truncated() {
        let batch = simple_batch(1);
        let expected = Err(BatchError::Truncated { needed: 61, available: 60 });
        assert_eq!(validate_stored(&batch[..60], BATCH_BYTES_MAX), expected);
        assert_eq!(validate_produce(&batch[..60], BATCH_BYTES_MAX), expected);
        assert_eq!(peek_header(&batch[..60]).err(), expected.err());
    }

    #[test]
    fn old_message_format_is_rejected_by_magic() {
        let mut batch = simple_batch(1);
        batch[offset_of!(BatchHeader, magic)] = 1;
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(BatchError::BadMagic(1)));
        assert_eq!(records(&batch).err(), Some(BatchError::BadMagic(1)));
    }

    #[test]
    fn batch_length_too_small_for_a_header_is_rejected() {
        for batch_length in [-1, 0, 48, i32::MIN] {
            let mut batch = simple_batch(0);
            edit_header(&mut batch, |header| header.batch_length.set(batch_length));
            assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(BatchError::BadLength(batch_length)));
        }
    }

    #[test]
    fn input_longer_or_shorter_than_declared_is_a_length_mismatch() {
        let batch = simple_batch(2);
        let mut longer = batch.clone();
        longer.push(0);
        let declared = batch.len();
        assert_eq!(
            validate_stored(&longer, BATCH_BYTES_MAX),
            Err(BatchError::LengthMismatch { declared, actual: declared + 1 })
        );
        assert_eq!(
            validate_stored(&batch[..declared - 1], BATCH_BYTES_MAX),
            Err(BatchError::LengthMismatch { declared, actual: declared - 1 })
        );
    }

    #[test]
    fn batch_over_the_size_limit_is_oversize() {
        let batch = simple_batch(2);
        let max = batch.len() - 1;
        assert_eq!(validate_stored(&batch, max), Err(BatchError::Oversize { bytes: batch.len(), max }));
        assert!(validate_stored(&batch, batch.len()).is_ok());
    }

    #[test]
    fn crc_mismatch_is_rejected_not_served() {
        let mut batch = simple_batch(3);
        let stored = peek_header(&batch).unwrap().crc.get();
        let last = batch.len() - 1;
        batch[last] ^= 0x10;
        let computed = crc32c_reference(&batch[21..]);
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(BatchError::BadCrc { stored, computed }));
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX), Err(BatchError::BadCrc { stored, computed }));
    }

    #[test]
    fn unassigned_compression_codec_is_rejected() {
        for codec in 5..=7u8 {
            let mut batch = simple_batch(1);
            edit_header(&mut batch, |header| header.attributes.set(i16::from(codec)));
            assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(BatchError::BadCompression(codec)));
            assert_eq!(records(&batch).err(), Some(BatchError::BadCompression(codec)));
        }
    }

    #[test]
    fn attribute_bits_decode_as_kafka_assigns_them() {
        let attributes = Attributes(0b111_1100);
        assert_eq!(attributes.compression(), Ok(Compression::Zstd));
        assert_eq!(attributes.timestamp_type(), TimestampType::LogAppendTime);
        assert!(attributes.is_transactional() && attributes.is_control() && attributes.has_delete_horizon());
        let plain = Attributes(0);
        assert_eq!(plain.compression(), Ok(Compression::None));
        assert_eq!(plain.timestamp_type(), TimestampType::CreateTime);
        assert!(!plain.is_transactional() && !plain.is_control() && !plain.has_delete_horizon());
        for codec in 0..=4u8 {
            assert_eq!(Compression::from_id(codec).unwrap().id(), codec);
        }
    }

    #[test]
    fn more_records_than_offsets_is_inconsistent() {
        let mut batch = simple_batch(2);
        edit_header(&mut batch, |header| header.records_count.set(3));
        let expected = BatchError::InconsistentCounts { records_count: 3, last_offset_delta: 1 };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn negative_counts_are_inconsistent() {
        let mut batch = simple_batch(1);
        edit_header(&mut batch, |header| header.records_count.set(-1));
        let expected = BatchError::InconsistentCounts { records_count: -1, last_offset_delta: 0 };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected.clone()));
        assert_eq!(records(&batch).err(), Some(expected));

        let mut batch = simple_batch(0);
        edit_header(&mut batch, |header| header.last_offset_delta.set(-1));
        let expected = BatchError::InconsistentCounts { records_count: 0, last_offset_delta: -1 };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn fewer_records_than_declared_is_a_count_mismatch() {
        let mut batch = simple_batch(2);
        edit_header(&mut batch, |header| {
            header.records_count.set(3);
            header.last_offset_delta.set(2);
        });
        let expected = BatchError::RecordCountMismatch { declared: 3, found: 2 };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected.clone()));
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn bytes_after_the_declared_records_are_rejected() {
        let mut batch = simple_batch(2);
        edit_header(&mut batch, |header| header.records_count.set(1));
        let expected = BatchError::TrailingBytes { bytes: SIMPLE_RECORD_BYTES };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected.clone()));
        let results: Vec<_> = records(&batch).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[1], Err(expected));
    }

    #[test]
    fn repeated_offset_delta_is_rejected() {
        let mut batch = simple_batch(3);
        edit_byte(&mut batch, record_start(2) + OFFSET_DELTA_IN_RECORD, zigzag(1));
        let expected = Err(BatchError::BadOffsetDelta { index: 2, offset_delta: 1 });
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), expected);
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX), expected);
    }

    #[test]
    fn offset_delta_beyond_the_last_offset_delta_is_rejected() {
        let mut batch = simple_batch(3);
        edit_byte(&mut batch, record_start(2) + OFFSET_DELTA_IN_RECORD, zigzag(3));
        let expected = Err(BatchError::BadOffsetDelta { index: 2, offset_delta: 3 });
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), expected);
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX), expected);
    }

    #[test]
    fn negative_offset_delta_is_rejected() {
        let mut batch = simple_batch(1);
        edit_byte(&mut batch, record_start(0) + OFFSET_DELTA_IN_RECORD, zigzag(-1));
        let expected = Err(BatchError::BadOffsetDelta { index: 0, offset_delta: -1 });
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), expected);
    }

    #[test]
    fn compaction_gaps_are_stored_but_not_accepted_from_producers() {
        // Offsets 0 and 2 survive compaction of a three-record batch.
        let mut batch = simple_batch(2);
        batch[record_start(1) + OFFSET_DELTA_IN_RECORD] = zigzag(2);
        edit_header(&mut batch, |header| header.last_offset_delta.set(2));
        let info = validate_stored(&batch, BATCH_BYTES_MAX).unwrap();
        assert_eq!((info.records_count, info.last_offset_delta), (2, 2));
        let expected = BatchError::InconsistentCounts { records_count: 2, last_offset_delta: 2 };
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn record_length_running_past_the_batch_is_rejected() {
        let mut batch = simple_batch(2);
        edit_byte(&mut batch, record_start(1), zigzag(7));
        let expected = BatchError::BadRecord { index: 1, reason: "the record length runs past the end of the batch" };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected.clone()));
        assert_eq!(records(&batch).unwrap().nth(1), Some(Err(expected)));
    }

    #[test]
    fn record_length_larger_than_its_contents_is_rejected() {
        let mut batch = simple_batch(2);
        edit_byte(&mut batch, record_start(0), zigzag(7));
        // Record 0 now claims the first byte of record 1 as its own.
        let expected = BatchError::BadRecord { index: 0, reason: "the record length is larger than its contents" };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn negative_record_length_is_rejected() {
        let mut batch = simple_batch(1);
        edit_byte(&mut batch, record_start(0), zigzag(-1));
        let error = validate_stored(&batch, BATCH_BYTES_MAX).unwrap_err();
        assert!(matches!(error, BatchError::BadRecord { index: 0, .. }), "{error}");
    }

    #[test]
    fn key_running_past_its_record_is_rejected() {
        let mut batch = simple_batch(2);
        // A key of length 1 in record 0 would swallow the value length,
        // leaving the header count to run off the end of the record.
        edit_byte(&mut batch, record_start(0) + 4, zigzag(2));
        let error = validate_stored(&batch, BATCH_BYTES_MAX).unwrap_err();
        assert!(matches!(error, BatchError::BadRecord { index: 0, .. }), "{error}");
        edit_byte(&mut batch, record_start(0) + 4, zigzag(5));
        let expected = BatchError::BadRecord { index: 0, reason: "the key runs past the end of the record" };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn key_length_below_minus_one_is_rejected() {
        let mut batch = simple_batch(1);
        edit_byte(&mut batch, record_start(0) + 4, zigzag(-2));
        let expected =
            BatchError::BadRecord { index: 0, reason: "the key length is not a valid varint of at least -1" };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn null_header_key_is_rejected() {
        let mut builder = BatchBuilder::new(0);
        builder.push(0, None, None, &[(b"", None)]);
        let mut batch = builder.build().to_vec();
        // The record ends with: header count 1, key length 0, value length -1.
        let key_length_position = batch.len() - 2;
        assert_eq!(batch[key_length_position], zigzag(0));
        edit_byte(&mut batch, key_length_position, zigzag(-1));
        let expected =
            BatchError::BadRecord { index: 0, reason: "a header key length is not a valid non-negative varint" };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
    }

    #[test]
    fn huge_header_count_fails_without_allocating_for_it() {
        let mut batch = simple_batch(1);
        // Replace the header count 0 with i32::MAX (zigzag fe ff ff ff 0f),
        // growing the record by four bytes.
        let count_position = record_start(0) + 6;
        batch.splice(count_position..=count_position, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        batch[record_start(0)] = zigzag(10);
        let length = i32::try_from(batch.len() - 12).unwrap();
        edit_header(&mut batch, |header| header.batch_length.set(length));
        let error = records(&batch).unwrap().next().unwrap().unwrap_err();
        assert!(matches!(error, BatchError::BadRecord { index: 0, .. }), "{error}");
        assert!(validate_stored(&batch, BATCH_BYTES_MAX).is_err());
    }

    #[test]
    fn negative_base_offset_is_not_a_stored_batch_but_a_producer_may_send_any() {
        let mut batch = simple_batch(2);
        set_base_offset(&mut batch, -5).unwrap();
        let expected = BatchError::BadBaseOffset { base_offset: -5, last_offset_delta: 1 };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
        assert!(validate_produce(&batch, BATCH_BYTES_MAX).is_ok());

        set_base_offset(&mut batch, i64::MAX).unwrap();
        let expected = BatchError::BadBaseOffset { base_offset: i64::MAX, last_offset_delta: 1 };
        assert_eq!(validate_stored(&batch, BATCH_BYTES_MAX), Err(expected));
        assert_eq!(validate_produce(&batch, BATCH_BYTES_MAX).unwrap().last_offset(), i64::MAX);
    }

    #[test]
    fn assigning_offset_and_epoch_keeps_the_crc_valid() {
        let mut batch = simple_batch(3);
        let crc_before = peek_header(&batch).unwrap().crc.get();
        set_base_offset(&mut batch, 1_000_000).unwrap();
        set_partition_leader_epoch(&mut batch, 7).unwrap();
        assert_eq!(peek_header(&batch).unwrap().crc.get(), crc_before);
        let info = validate_stored(&batch, BATCH_BYTES_MAX).unwrap();
        assert_eq!((info.base_offset, info.partition_leader_epoch), (1_000_000, 7));
        assert_eq!(info.last_offset(), 1_000_002);
        assert_eq!(batch[0..8], 1_000_000i64.to_be_bytes());
        assert_eq!(batch[12..16], 7i32.to_be_bytes());
    }

    #[test]
    fn header_setters_refuse_input_shorter_than_a_header() {
        let mut short = vec![0u8; 60];
        let expected = Err(BatchError::Truncated { needed: 61, available: 60 });
        assert_eq!(set_base_offset(&mut short, 1), expected);
        assert_eq!(set_partition_leader_epoch(&mut short, 1), expected);
        assert_eq!(write_crc(&mut short).map(|_| ()), expected);
        assert_eq!(short, [0u8; 60]);
        assert_eq!(crc_of(&short[..3]), crc32c_reference(&[]));
    }

    #[test]
    fn split_finds_each_concatenated_batch_and_reports_a_torn_tail() {
        let batches = [simple_batch(1), simple_batch(3), BatchBuilder::new(5).build().to_vec()];
        let mut buf = batches.concat();
        let whole = buf.len();
        buf.extend_from_slice(&simple_batch(2)[..30]);

        let mut split = split_batches(&buf);
        let mut start = 0;
        for batch in &batches {
            let span = split.next().unwrap().unwrap();
            assert_eq!(span.range, start..start + batch.len());
            assert_eq!(span.bytes, &batch[..]);
            assert_eq!(span.header.batch_bytes(), Ok(batch.len()));
            assert!(validate_stored(span.bytes, BATCH_BYTES_MAX).is_ok());
            start += batch.len();
        }
        assert_eq!(split.next(), Some(Err(BatchError::Truncated { needed: 61 + 14, available: 30 })));
        assert_eq!(split.position(), whole);
        assert!(split.next().is_none());
    }

    #[test]
    fn split_distinguishes_a_tail_too_short_for_a_length_field() {
        let mut buf = simple_batch(1);
        let whole = buf.len();
        buf.extend_from_slice(&[0; 5]);
        let results: Vec<_> = split_batches(&buf).map(|result| result.map(|span| span.range)).collect();
        assert_eq!(results, [Ok(0..whole), Err(BatchError::Truncated { needed: 61, available: 5 })]);
    }

    #[test]
    fn split_reports_garbage_lengths_as_garbage_not_as_a_torn_tail() {
        let mut buf = simple_batch(1);
        let whole = buf.len();
        buf.extend_from_slice(&[0xff; 70]);
        let results: Vec<_> = split_batches(&buf).map(|result| result.map(|span| span.range)).collect();
        assert_eq!(results, [Ok(0..whole), Err(BatchError::BadLength(-1))]);

        let mut buf = simple_batch(1);
        buf.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
        let mut split = split_batches(&buf).batch_bytes_max(1 << 20);
        assert!(split.next().unwrap().is_ok());
        assert_eq!(split.next(), Some(Err(BatchError::Oversize { bytes: 12 + 0x1000_0000, max: 1 << 20 })));
        assert_eq!(split.position(), whole);
    }

    #[test]
    fn split_of_an_empty_buffer_yields_nothing() {
        assert!(split_batches(&[]).next().is_none());
    }

    type TestRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

    fn test_record() -> impl Strategy<Value = TestRecord> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        (
            any::<i64>(),
            proptest::option::of(bytes()),
            proptest::option::of(bytes()),
            proptest::collection::vec((bytes(), proptest::option::of(bytes())), 0..4),
        )
    }

    fn build_batch(base_timestamp_ms: i64, records: &[TestRecord]) -> Vec<u8> {
        let mut builder = BatchBuilder::new(base_timestamp_ms);
        for (timestamp_ms, key, value, headers) in records {
            let headers: Vec<(&[u8], Option<&[u8]>)> =
                headers.iter().map(|(key, value)| (&key[..], value.as_deref())).collect();
            builder.push(*timestamp_ms, key.as_deref(), value.as_deref(), &headers);
        }
        assert_eq!(builder.len(), records.len());
        let expected_bytes = builder.encoded_bytes();
        let batch = builder.build().to_vec();
        assert_eq!(batch.len(), expected_bytes);
        batch
    }

    /// Runs every entry point on `bytes`; the assertions are that nothing
    /// panics and that validation and the record iterator agree.
    fn exercise(bytes: &[u8]) {
        let stored = validate_stored(bytes, BATCH_BYTES_MAX);
        let produced = validate_produce(bytes, BATCH_BYTES_MAX);
        if let Ok(info) = stored
            && info.compression() == Compression::None
        {
            let records: Vec<_> = records(bytes).unwrap().collect();
            assert_eq!(records.len(), usize::try_from(info.records_count).unwrap());
            assert!(records.iter().all(Result::is_ok));
        }
        if let Ok(info) = produced {
            assert!(info.records_count >= 1);
        }
        if let Ok(iter) = records(bytes) {
            iter.take(1000).for_each(drop);
        }
        if let Ok(records) = decompressed_records(&Bytes::copy_from_slice(bytes), 1 << 20) {
            records.iter().take(1000).for_each(drop);
        }
        for span in split_batches(bytes).batch_bytes_max(BATCH_BYTES_MAX).flatten() {
            assert_eq!(&bytes[span.range.clone()], span.bytes);
        }
        if parse_control_batch(bytes).is_ok() {
            assert!(validate_stored(bytes, bytes.len()).is_ok(), "a marker is a valid batch");
        }
        let _ = peek_header(bytes);
        let _ = crc_of(bytes);
    }

    proptest! {
        #[test]
        fn random_records_round_trip(
            base_timestamp_ms in any::<i64>(),
            test_records in proptest::collection::vec(test_record(), 1..12),
        ) {
            let batch = build_batch(base_timestamp_ms, &test_records);
            let info = validate_produce(&batch, BATCH_BYTES_MAX).unwrap();
            prop_assert_eq!(info, validate_stored(&batch, BATCH_BYTES_MAX).unwrap());
            prop_assert_eq!(info.base_timestamp, base_timestamp_ms);
            let max_timestamp_ms = test_records.iter().map(|record| record.0).max().unwrap();
            prop_assert_eq!(info.max_timestamp, max_timestamp_ms);

            let decoded: Vec<Record<'_>> = records(&batch).unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(decoded.len(), test_records.len());
            for (index, (record, (timestamp_ms, key, value, headers))) in decoded.iter().zip(&test_records).enumerate() {
                prop_assert_eq!(record.offset_delta, i32::try_from(index).unwrap());
                prop_assert_eq!(record.timestamp_ms(base_timestamp_ms), *timestamp_ms);
                prop_assert_eq!(record.key, key.as_deref());
                prop_assert_eq!(record.value, value.as_deref());
                let decoded_headers: Vec<(&[u8], Option<&[u8]>)> =
                    record.headers.iter().map(|header| (header.key, header.value)).collect();
                let expected_headers: Vec<(&[u8], Option<&[u8]>)> =
                    headers.iter().map(|(key, value)| (&key[..], value.as_deref())).collect();
                prop_assert_eq!(decoded_headers, expected_headers);
            }
        }

        #[test]
        fn mutated_or_truncated_batches_never_panic(
            test_records in proptest::collection::vec(test_record(), 0..4),
            writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            reseal in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut batch = build_batch(0, &test_records);
            for (position, byte) in &writes {
                let position = position.index(batch.len());
                batch[position] = *byte;
            }
            if reseal {
                write_crc(&mut batch).unwrap();
            }
            if truncate {
                batch.truncate(cut.index(batch.len() + 1));
            }
            exercise(&batch);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            exercise(&bytes);
        }

        /// Random record bytes behind a header with a matching length and
        /// CRC reach the record walker, which random bytes alone never do.
        #[test]
        fn sealed_random_record_bytes_never_panic(
            records_bytes in proptest::collection::vec(any::<u8>(), 0..200),
            records_count in -2i32..6,
            last_offset_delta in -1i32..8,
        ) {
            let mut batch = BatchBuilder::new(0).build().to_vec();
            batch.extend_from_slice(&records_bytes);
            let batch_length = i32::try_from(batch.len() - BATCH_OVERHEAD_BYTES).unwrap();
            edit_header(&mut batch, |header| {
                header.batch_length.set(batch_length);
                header.records_count.set(records_count);
                header.last_offset_delta.set(last_offset_delta);
            });
            exercise(&batch);
        }

        #[test]
        fn any_single_bit_flip_under_the_crc_is_detected(
            test_records in proptest::collection::vec(test_record(), 0..4),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut batch = build_batch(0, &test_records);
            let covered_bits = (batch.len() - CRC_COVERED_START) * 8;
            let bit = bit.index(covered_bits);
            batch[CRC_COVERED_START + bit / 8] ^= 1 << (bit % 8);
            let error = validate_stored(&batch, BATCH_BYTES_MAX).unwrap_err();
            prop_assert!(matches!(error, BatchError::BadCrc { .. }), "{}", error);
        }

        #[test]
        fn split_yields_whole_batches_then_at_most_a_torn_tail(
            batch_records in proptest::collection::vec(proptest::collection::vec(test_record(), 0..3), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let batches: Vec<Vec<u8>> = batch_records.iter().map(|records| build_batch(0, records)).collect();
            let buf = batches.concat();
            let cut = cut.index(buf.len() + 1);
            let results: Vec<_> = split_batches(&buf[..cut]).collect();
            let mut start = 0;
            for (result, batch) in results.iter().zip(&batches) {
                if start + batch.len() <= cut {
                    prop_assert_eq!(&result.as_ref().unwrap().bytes, &&batch[..]);
                } else {
                    let is_torn = matches!(result, Err(BatchError::Truncated { .. }));
                    prop_assert!(is_torn);
                }
                start += batch.len();
            }
            let whole_batches = batches.iter().scan(0, |end, batch| { *end += batch.len(); Some(*end) }).filter(|end| *end <= cut).count();
            let torn = usize::from(!results.last().is_none_or(Result::is_ok));
            prop_assert_eq!(results.len(), whole_batches + torn);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod control_tests {
    use super::*;
    use kafka_protocol::records::{
        Compression as KafkaCompression, Record as KafkaRecord, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType as KafkaTimestampType,
    };

    const COMMIT: ControlRecord = ControlRecord { commit: true, coordinator_epoch: 79 };

    /// The same marker written by kafka-protocol's encoder, an
    /// implementation independent of ours, with the key and value laid out
    /// as Kafka's protocol guide and `EndTransactionMarker` define them.
    fn kafka_protocol_marker(producer_id: i64, producer_epoch: i16, marker: ControlRecord, ts: i64) -> Vec<u8> {
        let control_type: i16 = if marker.commit { 1 } else { 0 };
        let mut key = vec![0, 0];
        key.extend_from_slice(&control_type.to_be_bytes());
        let mut value = vec![0, 0];
        value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
        let record = KafkaRecord {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: KafkaTimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: ts,
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Default::default(),
        };
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: KafkaCompression::None };
        RecordBatchEncoder::encode(&mut out, [&record], &options).unwrap();
        out.to_vec()
    }

    #[test]
    fn control_batches_match_an_independent_kafka_encoder_byte_for_byte() {
        for marker in [COMMIT, ControlRecord { commit: false, coordinator_epoch: -1 }] {
            let ours = build_control_batch(4_000, 7, marker, 1_700_000_000_123);
            assert_eq!(ours.to_vec(), kafka_protocol_marker(4_000, 7, marker, 1_700_000_000_123), "{marker:?}");
        }
    }

    #[test]
    fn a_control_batch_has_kafkas_header_fields_and_record() {
        let batch = build_control_batch(4_000, 7, COMMIT, 1_000);
        let info = validate_stored(&batch, 1 << 20).unwrap();
        assert_eq!(info.attributes, 0x30, "transactional and control, uncompressed, create time");
        assert_eq!((info.producer_id, info.producer_epoch, info.base_sequence), (4_000, 7, -1));
        assert_eq!((info.base_offset, info.partition_leader_epoch), (0, -1));
        assert_eq!((info.records_count, info.last_offset_delta), (1, 0));
        assert_eq!(info.base_timestamp, 1_000);
        assert_eq!(info.max_timestamp, 1_000);
        let record = records(&batch).unwrap().next().unwrap().unwrap();
        assert_eq!(record.key, Some(&[0, 0, 0, 1][..]), "key: version 0, type 1 (commit)");
        assert_eq!(record.value, Some(&[0, 0, 0, 0, 0, 79][..]), "value: version 0, coordinator epoch 79");
        assert!(record.headers.is_empty());
        assert_eq!(validate_produce(&batch, 1 << 20), Err(BatchError::ControlBatch), "producers may not send them");
    }

    #[test]
    fn control_batches_parse_back_to_their_marker() {
        for commit in [true, false] {
            for coordinator_epoch in [0, 1, i32::MAX, -1] {
                let marker = ControlRecord { commit, coordinator_epoch };
                assert_eq!(parse_control_batch(&build_control_batch(1, 2, marker, 3)), Ok(marker));
            }
        }
    }

    /// A control batch with the given key and value (and `flags`),
    /// otherwise as Kafka writes one.
    fn control_batch_with(key: Option<&[u8]>, value: Option<&[u8]>, flags: i16) -> BytesMut {
        let mut builder = BatchBuilder::new(0).producer(1, 0, -1);
        builder.flags = flags;
        builder.push(0, key, value, &[]);
        builder.build()
    }

    #[test]
    fn malformed_control_batches_are_typed_errors() {
        let control = Attributes::TRANSACTIONAL_BIT | Attributes::CONTROL_BIT;
        let value: &[u8] = &[0, 0, 0, 0, 0, 5];
        let not_control = control_batch_with(Some(&[0, 0, 0, 1]), Some(value), Attributes::TRANSACTIONAL_BIT);
        assert_eq!(parse_control_batch(&not_control), Err(BatchError::NotControl));
        type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
        let cases: [KeyValue; 6] = [
            (None, Some(value)),
            (Some(&[0, 0, 0]), Some(value)),
            (Some(&[0xff, 0xff, 0, 1]), Some(value)),
            (Some(&[0, 0, 0, 2]), Some(value)),
            (Some(&[0, 0, 0, 0]), Some(&[0, 0, 0, 0, 5])),
            (Some(&[0, 0, 0, 0]), None),
        ];
        for (key, value) in cases {
            let result = parse_control_batch(&control_batch_with(key, value, control));
            assert!(matches!(result, Err(BatchError::BadControlRecord { .. })), "{key:?} {value:?}: {result:?}");
        }
        // Two records, a damaged CRC, a compressed marker, a cut batch.
        let mut two = BatchBuilder::new(0).producer(1, 0, -1);
        two.flags = control;
        two.push(0, Some(&[0, 0, 0, 1]), Some(value), &[]);
        two.push(0, Some(&[0, 0, 0, 1]), Some(value), &[]);
        assert!(matches!(parse_control_batch(&two.build()), Err(BatchError::BadControlRecord { .. })));
        let mut flipped = build_control_batch(1, 0, COMMIT, 0);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(parse_control_batch(&flipped), Err(BatchError::BadCrc { .. })));
        let mut compressed = BatchBuilder::new(0).producer(1, 0, -1).compression(Compression::Gzip);
        compressed.flags = control;
        compressed.push(0, Some(&[0, 0, 0, 1]), Some(value), &[]);
        assert!(matches!(parse_control_batch(&compressed.build()), Err(BatchError::BadControlRecord { .. })));
        let whole = build_control_batch(1, 0, COMMIT, 0);
        for cut in [0, 10, BATCH_HEADER_BYTES, whole.len() - 1] {
            assert!(parse_control_batch(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn versions_above_zero_are_read_as_version_zero() {
        let control = Attributes::TRANSACTIONAL_BIT | Attributes::CONTROL_BIT;
        let batch = control_batch_with(Some(&[0, 1, 0, 0, 9]), Some(&[0, 3, 0, 0, 1, 0, 7, 7]), control);
        assert_eq!(parse_control_batch(&batch), Ok(ControlRecord { commit: false, coordinator_epoch: 256 }));
    }

    #[test]
    fn the_transactional_builder_sets_bit_4_only() {
        let mut builder = BatchBuilder::new(0).producer(3, 0, 0).transactional();
        builder.push(0, None, Some(b"v"), &[]);
        let info = validate_produce(&builder.build(), 1 << 20).unwrap();
        assert!(info.attributes().is_transactional());
        assert!(!info.attributes().is_control());
    }
}
