//! Kafka's batch codecs: the records section of a RecordBatch v2 (every
//! byte after the 61-byte header) compressed as one block, framed exactly
//! as Kafka's Java producer frames it, so that a compressed batch stays a
//! Kafka batch.
//!
//! | id | codec  | framing                                                     |
//! |----|--------|-------------------------------------------------------------|
//! | 1  | gzip   | a gzip stream (RFC 1952), level 6 as Java's default         |
//! | 2  | snappy | xerial `SnappyOutputStream`: a 16-byte header, then chunks  |
//! | 3  | lz4    | the LZ4 frame format: 64 KiB independent blocks, no checksums|
//! | 4  | zstd   | one zstd frame, level 3 as Kafka's default                  |
//!
//! The xerial snappy stream is the 8 magic bytes `82 'SNAPPY' 00`, a
//! big-endian version (1) and minimum compatible version (1), then chunks
//! of a big-endian u32 length and a raw snappy block of at most 32 KiB of
//! input. Like xerial's `SnappyInputStream`, decompression also takes raw
//! snappy without the header (what some non-Java clients send) and
//! concatenated streams.
//!
//! Decompression never holds more than `decompressed_bytes_max` bytes of
//! output: it streams, and a codec that states the output size up front
//! (snappy) is checked before anything is allocated. A batch past the
//! bound, a decompression bomb, is refused with
//! `BatchError::DecompressedTooLarge`.

use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::batch::{BatchError, Compression};
use crate::limits::{
    DECOMPRESS_READ_BYTES, SNAPPY_CHUNK_BYTES, SNAPPY_EXPANSION_MAX, ZSTD_LEVEL_DEFAULT, ZSTD_WINDOW_LOG_MAX,
};

/// The xerial snappy stream's magic bytes.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
/// Magic, version and minimum compatible version.
const XERIAL_HEADER_BYTES: usize = XERIAL_MAGIC.len() + 4 + 4;
/// The version xerial writes, and the oldest it asks readers to support.
const XERIAL_VERSION: u32 = 1;

/// Compresses a batch's records section with `codec`, framed as Kafka
/// frames it. `Compression::None` returns the bytes as they are.
pub fn compress(codec: Compression, records: &[u8]) -> Bytes {
    // Every encoder writes into a Vec, which cannot fail short of running
    // out of memory (which aborts anyway).
    let written = match codec {
        Compression::None => return Bytes::copy_from_slice(records),
        Compression::Gzip => compress_gzip(records),
        Compression::Snappy => Ok(compress_snappy(records)),
        Compression::Lz4 => compress_lz4(records),
        Compression::Zstd => zstd::bulk::compress(records, ZSTD_LEVEL_DEFAULT),
    };
    Bytes::from(written.expect("compressing into memory cannot fail"))
}

fn compress_gzip(records: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(records)?;
    encoder.finish()
}

fn compress_snappy(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + snap::raw::max_compress_len(records.len()));
    out.extend_from_slice(&XERIAL_MAGIC);
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    let mut block = vec![0u8; snap::raw::max_compress_len(SNAPPY_CHUNK_BYTES)];
    for chunk in records.chunks(SNAPPY_CHUNK_BYTES) {
        // A chunk is at most SNAPPY_CHUNK_BYTES and `block` is sized for
        // that, so the encoder cannot refuse it.
        let bytes = encoder.compress(chunk, &mut block).expect("the block fits any chunk");
        let length = u32::try_from(bytes).expect("a chunk's block is far below 4 GiB");
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&block[..bytes]);
    }
    out
}

fn compress_lz4(records: &[u8]) -> io::Result<Vec<u8>> {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    // Kafka's Lz4BlockOutputStream: 64 KiB blocks, independent, no block
    // or content checksum, no content size.
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .block_checksums(false)
        .content_checksum(false);
    let mut encoder = FrameEncoder::with_frame_info(info, Vec::new());
    encoder.write_all(records)?;
    encoder.finish().map_err(io::Error::other)
}

/// Decompresses a batch's records section, holding at most
/// `decompressed_bytes_max` bytes of output at any time. Output past that is
/// refused with `DecompressedTooLarge`; bytes the codec cannot read, with
/// `BadCompressedData`. `Compression::None` returns the bytes as they are,
/// under the same bound.
pub fn decompress(codec: Compression, bytes: &[u8], decompressed_bytes_max: usize) -> Result<Bytes, BatchError> {
    let out = match codec {
        Compression::None => {
            check_room(0, bytes.len(), decompressed_bytes_max)?;
            return Ok(Bytes::copy_from_slice(bytes));
        }
        Compression::Gzip => read_bounded(codec, flate2::read::MultiGzDecoder::new(bytes), decompressed_bytes_max)?,
        Compression::Snappy => decompress_snappy(bytes, decompressed_bytes_max)?,
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(bytes), decompressed_bytes_max)?,
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(bytes).map_err(|err| bad_data(codec, &err))?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|err| bad_data(codec, &err))?;
            read_bounded(codec, decoder, decompressed_bytes_max)?
        }
    };
    debug_assert!(out.len() <= decompressed_bytes_max);
    Ok(Bytes::from(out))
}

fn bad_data(codec: Compression, err: &dyn std::fmt::Display) -> BatchError {
    BatchError::BadCompressedData { codec, reason: err.to_string() }
}

fn check_room(held: usize, more: usize, max: usize) -> Result<(), BatchError> {
    match held.checked_add(more) {
        Some(total) if total <= max => Ok(()),
        _ => Err(BatchError::DecompressedTooLarge { max }),
    }
}

/// Reads a decompressor to its end, growing the output no further than
/// `max` bytes (never to twice the need, as doubling would).
fn read_bounded(codec: Compression, mut reader: impl Read, max: usize) -> Result<Vec<u8>, BatchError> {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; DECOMPRESS_READ_BYTES];
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(bad_data(codec, &err)),
        };
        check_room(out.len(), read, max)?;
        let needed = out.len() + read;
        if needed > out.capacity() {
            let target = out.capacity().saturating_mul(2).max(needed).min(max);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..read]);
        debug_assert!(out.capacity() <= max.max(DECOMPRESS_READ_BYTES));
    }
}

/// Xerial-framed snappy (one stream or several concatenated), or raw snappy
/// when the input does not start with the xerial magic.
fn decompress_snappy(bytes: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
    if !bytes.starts_with(&XERIAL_MAGIC) {
        let mut out = Vec::new();
        append_snappy_block(bytes, &mut out, max)?;
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.starts_with(&XERIAL_MAGIC) {
            rest = rest.get(XERIAL_HEADER_BYTES..).ok_or_else(|| snappy_error("the xerial header is cut short"))?;
            continue;
        }
        let (length, after) =
            rest.split_first_chunk::<4>().ok_or_else(|| snappy_error("a chunk length is cut short"))?;
        let length = usize::try_from(u32::from_be_bytes(*length)).unwrap_or(usize::MAX);
        let (block, after) = after.split_at_checked(length).ok_or_else(|| snappy_error("a chunk runs past the end"))?;
        append_snappy_block(block, &mut out, max)?;
        rest = after;
    }
    Ok(out)
}

/// Decompresses one raw snappy block onto `out`. Snappy states the block's
/// decompressed size first, so the bound is checked before allocating.
fn append_snappy_block(block: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let length = snap::raw::decompress_len(block).map_err(|err| bad_data(codec, &err))?;
    check_room(out.len(), length, max)?;
    // The densest snappy element is a 3-byte copy of 64 bytes: a block
    // cannot honestly expand more than that, so a larger declared length is
    // refused before anything is allocated for it.
    if length > block.len().saturating_mul(SNAPPY_EXPANSION_MAX).saturating_add(64) {
        return Err(snappy_error("a block declares more bytes than snappy can expand to"));
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written =
        snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(|err| bad_data(codec, &err))?;
    if written != length {
        return Err(snappy_error("a block decompressed to another size than it declared"));
    }
    Ok(())
}

fn snappy_error(reason: &str) -> BatchError {
    BatchError::BadCompressedData { codec: Compression::Snappy, reason: reason.to_string() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::limits::DECOMPRESSED_BYTES_MAX;
    use proptest::prelude::*;

    const CODECS: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    fn compressible(bytes: usize) -> Vec<u8> {
        (0..bytes).map(|i| b"spate streams events "[i % 21]).collect()
    }

    #[test]
    fn a_snappy_block_declaring_more_than_it_can_expand_to_is_refused_unread() {
        // A varint of 50,000,000 and one byte: no honest block that short
        // decompresses to 50 MB (under the 64 MiB bound, so only the
        // expansion check can refuse it).
        let mut block = Vec::new();
        let mut length: u32 = 50_000_000;
        while length >= 0x80 {
            block.push((length as u8) | 0x80);
            length >>= 7;
        }
        block.push(length as u8);
        block.push(0);
        let err = decompress(Compression::Snappy, &block, DECOMPRESSED_BYTES_MAX).unwrap_err();
        assert!(err.to_string().contains("expand"), "{err}");
    }

    #[test]
    fn a_zstd_frame_asking_for_a_window_over_the_limit_is_refused() {
        use std::io::Write;
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX + 3).unwrap();
        encoder.write_all(&compressible(1000)).unwrap();
        let frame = encoder.finish().unwrap();
        assert!(decompress(Compression::Zstd, &frame, DECOMPRESSED_BYTES_MAX).is_err());
        // The same data with zstd's usual window decompresses.
        let normal = compress(Compression::Zstd, &compressible(1000));
        assert_eq!(
            &decompress(Compression::Zstd, &normal, DECOMPRESSED_BYTES_MAX).unwrap()[..],
            &compressible(1000)[..]
        );
    }

    #[test]
    fn each_codec_writes_kafkas_framing() {
        let records = compressible(100_000);
        let gzip = compress(Compression::Gzip, &records);
        assert_eq!(&gzip[..3], &[0x1f, 0x8b, 8], "gzip magic and deflate");
        let snappy = compress(Compression::Snappy, &records);
        assert_eq!(&snappy[..16], b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01", "xerial header");
        let lz4 = compress(Compression::Lz4, &records);
        assert_eq!(&lz4[..4], &0x184D_2204u32.to_le_bytes(), "lz4 frame magic");
        // FLG: version 1, independent blocks, no checksums, no size; BD: 64 KiB.
        assert_eq!((lz4[4], lz4[5]), (0b0110_0000, 0b0100_0000));
        let zstd = compress(Compression::Zstd, &records);
        assert_eq!(&zstd[..4], &0xFD2F_B528u32.to_le_bytes(), "zstd frame magic");
        for (codec, bytes) in [(Compression::Gzip, gzip), (Compression::Snappy, snappy), (Compression::Lz4, lz4)] {
            assert!(bytes.len() < records.len() / 4, "{codec:?} compressed to {}", bytes.len());
        }
    }

    #[test]
    fn snappy_chunks_hold_at_most_32_kib_each() {
        let records = compressible(100_000);
        let snappy = compress(Compression::Snappy, &records);
        let mut rest = &snappy[XERIAL_HEADER_BYTES..];
        let mut chunks = 0;
        while let Some((length, after)) = rest.split_first_chunk::<4>() {
            let length = u32::from_be_bytes(*length) as usize;
            assert!(snap::raw::decompress_len(&after[..length]).unwrap() <= SNAPPY_CHUNK_BYTES);
            rest = &after[length..];
            chunks += 1;
        }
        assert_eq!(chunks, 100_000usize.div_ceil(SNAPPY_CHUNK_BYTES));
    }

    #[test]
    fn raw_and_concatenated_snappy_are_read_as_xerial_readers_do() {
        let records = compressible(50_000);
        let raw = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw, DECOMPRESSED_BYTES_MAX).unwrap(), records);
        let framed = compress(Compression::Snappy, &records);
        let twice = [&framed[..], &framed[..]].concat();
        assert_eq!(decompress(Compression::Snappy, &twice, DECOMPRESSED_BYTES_MAX).unwrap(), records.repeat(2));
    }

    #[test]
    fn a_bomb_is_refused_at_the_bound_for_every_codec() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        for codec in CODECS {
            let small = compress(codec, &zeros);
            let refused = decompress(codec, &small, zeros.len() - 1);
            assert_eq!(refused, Err(BatchError::DecompressedTooLarge { max: zeros.len() - 1 }), "{codec:?}");
            assert_eq!(decompress(codec, &small, zeros.len()).unwrap().len(), zeros.len(), "{codec:?}");
        }
    }

    #[test]
    fn a_snappy_block_claiming_more_than_the_bound_allocates_nothing() {
        // A raw snappy block whose length preamble claims 4 GiB - 1.
        let claim = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        let refused = decompress(Compression::Snappy, &claim, DECOMPRESSED_BYTES_MAX);
        assert_eq!(refused, Err(BatchError::DecompressedTooLarge { max: DECOMPRESSED_BYTES_MAX }));
    }

    #[test]
    fn garbage_is_bad_compressed_data_not_a_panic() {
        for codec in &CODECS[1..] {
            let result = decompress(*codec, b"definitely not compressed", DECOMPRESSED_BYTES_MAX);
            assert!(matches!(result, Err(BatchError::BadCompressedData { .. })), "{codec:?}: {result:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_codec_round_trips(
            records in proptest::collection::vec(any::<u8>(), 0..20_000),
            repeat in 1usize..8,
        ) {
            let records = records.repeat(repeat);
            for codec in CODECS {
                let compressed = compress(codec, &records);
                let restored = decompress(codec, &compressed, records.len()).unwrap();
                prop_assert_eq!(&restored[..], &records[..], "{:?}", codec);
            }
        }

        #[test]
        fn mangled_compressed_bytes_never_panic(
            records in proptest::collection::vec(any::<u8>(), 0..4_000),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            for codec in CODECS {
                let mut bytes = compress(codec, &records).to_vec();
                for (position, byte) in &flips {
                    if !bytes.is_empty() {
                        let len = bytes.len();
                        bytes[position % len] ^= byte;
                    }
                }
                bytes.truncate(cut % (bytes.len() + 1));
                if let Ok(out) = decompress(codec, &bytes, 1 << 20) {
                    prop_assert!(out.len() <= 1 << 20);
                }
            }
        }
    }
}
