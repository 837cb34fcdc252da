//! Kafka's four codecs on arbitrary compressed bytes, reached through the
//! broker's own validation: the input becomes the records section of a
//! batch whose header is well formed and whose CRC is fixed up, so that
//! random bytes get past the CRC check (which would otherwise stop almost
//! every input) into the decompressors and the record parser behind them.
//! Nothing may panic, and decompression stays within its cap.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spate_engine::batch;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Some((count, records)) = rest.split_first_chunk::<2>() else { return };
    // attributes: the codec in bits 0-2 (1 gzip, 2 snappy, 3 lz4, 4 zstd).
    let codec = i16::from(selector % 4) + 1;
    let records_count = i32::from(u16::from_be_bytes(*count) % 1024);
    let mut bytes = vec![0u8; batch::BATCH_HEADER_BYTES];
    bytes.extend_from_slice(records);
    let Ok(batch_length) = i32::try_from(bytes.len() - batch::BATCH_OVERHEAD_BYTES) else { return };
    bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
    bytes[16] = batch::MAGIC_V2 as u8;
    bytes[21..23].copy_from_slice(&codec.to_be_bytes());
    bytes[23..27].copy_from_slice(&(records_count - 1).max(0).to_be_bytes());
    bytes[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // producer id: none
    bytes[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    bytes[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    bytes[57..61].copy_from_slice(&records_count.to_be_bytes());
    batch::write_crc(&mut bytes).expect("a whole header");
    let max = 1 << 20;
    let _ = batch::validate_produce(&bytes, max);
    let _ = batch::validate_stored(&bytes, max);
    let bytes = Bytes::from(bytes);
    if let Ok(records) = batch::decompressed_records(&bytes, max) {
        for record in records.iter() {
            if record.is_err() {
                break;
            }
        }
    }
});
