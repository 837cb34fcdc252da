//! The idempotent producers' snapshot files (`<offset>.snapshot`), read at
//! every open: the input gets the file's magic and version in front and
//! its CRC at the end, so random bodies reach the decoder past both gates.
//! Nothing may panic; what decodes re-encodes to a file that decodes the
//! same (the encoder asserts its own invariants, so a decoded state that
//! breaks them is found here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_engine::producer_state::ProducerStateTable;

fuzz_target!(|data: &[u8]| {
    let _ = ProducerStateTable::decode(data);
    // The first byte picks the version: 1 (before transactions) or 2.
    let Some((&version, data)) = data.split_first() else { return };
    let mut file = b"SPPS\x00".to_vec();
    file.push(1 + version % 2);
    file.extend_from_slice(data);
    let crc = crc32c::crc32c(&file);
    file.extend_from_slice(&crc.to_be_bytes());
    if let Some((end_offset, table)) = ProducerStateTable::decode(&file) {
        let again = ProducerStateTable::decode(&table.encode(end_offset));
        assert_eq!(again, Some((end_offset, table)), "a decoded snapshot round-trips");
    }
});
