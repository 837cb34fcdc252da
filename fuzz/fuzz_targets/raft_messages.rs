//! What the controller reads from outside: a peer's frames on the
//! controller transport (raft-rs messages in protobuf, control messages in
//! JSON), and the metadata directory's `raft-log` (entries and repair
//! markers) and `raft-snapshot` files, read at every start. The first byte
//! picks what the rest becomes; the files' records are built with their
//! lengths and CRCs fixed up, so that random payloads reach the protobuf
//! and JSON decoders and the log's recovery rules behind those gates.
//! Nothing may panic; the checks on what decodes (round trips, a
//! recovered log the node can run) live in `spate_replication::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_replication::fuzzing;

/// Chunks of the input as `raft-log` records: each starts with a kind byte
/// and a length byte, then that many payload bytes.
fn log_records(mut input: &[u8]) -> Vec<u8> {
    let mut log = Vec::new();
    let mut index = 0u64;
    while let Some((&[kind, len], rest)) = input.split_first_chunk::<2>() {
        let (payload, rest) = rest.split_at(usize::from(len).min(rest.len()));
        input = rest;
        match kind % 5 {
            // An entry after the last one, carrying the payload as its
            // data (the metadata records, JSON).
            0 => {
                index += 1;
                log.extend_from_slice(&fuzzing::entry_record(index, u64::from(kind >> 4), payload));
            }
            // An entry that conflicts with (replaces) the last few.
            1 => {
                index = index.saturating_sub(u64::from(kind >> 4)).max(1);
                log.extend_from_slice(&fuzzing::entry_record(index, u64::from(kind >> 4) + 1, payload));
            }
            // Any payload in a well-framed record (an entry's protobuf).
            2 => log.extend_from_slice(&fuzzing::log_record(payload)),
            // A repair marker.
            3 => {
                let (index_max, term_max) = (u64::from(len), u64::from(kind >> 4));
                log.extend_from_slice(&fuzzing::log_record(&fuzzing::repair_marker(index_max, term_max)));
            }
            // Raw bytes: a torn tail, or damage if records follow.
            _ => log.extend_from_slice(payload),
        }
    }
    log
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 6 {
        0 => fuzzing::transport_stream(rest),
        1 => {
            let _ = fuzzing::transport_frame(rest);
        }
        2 => fuzzing::metadata_dir(rest, None),
        3 => fuzzing::metadata_dir(&log_records(rest), None),
        // A snapshot (the first chunk) and the log after it.
        _ => {
            let Some((&[kind, len], rest)) = rest.split_first_chunk::<2>() else { return };
            let (payload, rest) = rest.split_at(usize::from(len).min(rest.len()));
            let snapshot = if selector % 6 == 4 {
                fuzzing::snapshot_file(payload)
            } else {
                fuzzing::snapshot_file_with_data(u64::from(kind % 8), u64::from(kind >> 3), payload)
            };
            fuzzing::metadata_dir(&log_records(rest), Some(&snapshot));
        }
    }
});
