//! Entry points for the fuzz target `raft_messages` (`fuzz/`), compiled only
//! with the feature `fuzzing` and hidden from the docs: not an API. Each runs
//! the crate's own decoder on bytes from outside (a peer's frames, the
//! metadata directory's files) and asserts what must hold of what decodes,
//! so that the target needs nothing crate-private. The helpers that build
//! files fix up lengths and CRCs, which would otherwise stop almost every
//! random input before the parsers behind them.
#![allow(clippy::field_reassign_with_default)] // protobuf structs have private fields

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use crate::log_store::LogStore;
use crate::quorum;
use crate::storage::{self, RepairNeed};
use crate::transport::{self, Inbound};

/// A file name for messages only: nothing here touches the disk.
const LOG_PATH: &str = "raft-log";
const SNAPSHOT_PATH: &str = "raft-snapshot";

/// A controller connection's bytes, read frame by frame as its reader
/// thread does until the first bad frame (which closes the connection).
pub fn transport_stream(mut stream: &[u8]) {
    while let Ok(Some(body)) = transport::read_frame(&mut stream) {
        if transport_frame(&body).is_err() {
            break;
        }
    }
}

/// One frame's body (kind and payload): what decodes must encode to a frame
/// that decodes the same.
pub fn transport_frame(body: &[u8]) -> Result<(), String> {
    match transport::decode(body)? {
        Inbound::Raft(message) => {
            let frame = transport::encode_raft(&message).expect("a decoded message encodes");
            match decode_frame(&frame) {
                Inbound::Raft(again) => assert_eq!(again, message, "a raft message round-trips"),
                Inbound::Control(c) => panic!("a raft message came back as {c:?}"),
            }
        }
        Inbound::Control(control) => {
            let frame = transport::encode_control(&control).expect("a decoded control message encodes");
            match decode_frame(&frame) {
                Inbound::Control(again) => assert_eq!(again, control, "a control message round-trips"),
                Inbound::Raft(m) => panic!("a control message came back as {m:?}"),
            }
        }
    }
    Ok(())
}

fn decode_frame(frame: &[u8]) -> Inbound {
    let body = transport::read_frame(&mut &frame[..]).expect("an encoded frame reads").expect("a whole frame");
    transport::decode(&body).expect("an encoded frame decodes")
}

/// A `raft-log` record around `payload`, its length and CRC right.
pub fn log_record(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::new();
    storage::encode_record(&mut record, payload).expect("a payload under the record cap");
    record
}

/// A `raft-log` record of an entry (index at least 1) carrying `data`.
pub fn entry_record(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
    let mut entry = Entry::default();
    entry.index = index.max(1);
    entry.term = term;
    entry.data = data.to_vec().into();
    let mut record = Vec::new();
    storage::encode_entries(&mut record, &[entry]).expect("an entry under the record cap");
    record
}

/// A repair marker's payload (`SPRM`).
pub fn repair_marker(index_max: u64, term_max: u64) -> Vec<u8> {
    RepairNeed { index_max, term_max }.encode()
}

/// A `raft-snapshot` file around a protobuf `eraftpb::Snapshot`: its header
/// takes the index and term the payload holds (if it parses) and its CRC
/// is right, so the checks after those gates are reached.
pub fn snapshot_file(payload: &[u8]) -> Vec<u8> {
    let (index, term) =
        Snapshot::parse_from_bytes(payload).map(|s| (s.get_metadata().index, s.get_metadata().term)).unwrap_or((1, 1));
    let mut file = b"SPMS\x00\x01".to_vec();
    file.extend_from_slice(&index.to_be_bytes());
    file.extend_from_slice(&term.to_be_bytes());
    file.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    file.extend_from_slice(payload);
    let crc = crc32c::crc32c(&file);
    file.extend_from_slice(&crc.to_be_bytes());
    file
}

/// A `raft-snapshot` file whose snapshot is at (index, term) and holds
/// `data` (the metadata image, JSON).
pub fn snapshot_file_with_data(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
    let mut snap = Snapshot::default();
    snap.data = data.to_vec().into();
    snap.mut_metadata().index = index.max(1);
    snap.mut_metadata().term = term;
    storage::encode_snapshot(&snap).expect("a snapshot under its cap")
}

/// A metadata directory's `raft-log` and `raft-snapshot` (if any) as a node
/// opens them, then as `read_image` reads them. Nothing may panic; what is
/// recovered must be a log the node can run (`LogStore` asserts that it is
/// contiguous and continues the snapshot); an undamaged log's entries and
/// markers, written again, must read back the same; a snapshot that
/// decodes must round-trip.
pub fn metadata_dir(log: &[u8], snapshot_file: Option<&[u8]>) {
    let snapshot = match snapshot_file {
        None => None,
        Some(file) => match storage::decode_snapshot(file, Path::new(SNAPSHOT_PATH)) {
            Ok(snap) => {
                let again = storage::encode_snapshot(&snap).expect("a decoded snapshot encodes");
                let back = storage::decode_snapshot(&again, Path::new(SNAPSHOT_PATH)).expect("and decodes");
                assert_eq!(back, snap, "a snapshot round-trips");
                Some(snap)
            }
            // A damaged snapshot refuses the start: nothing more to read.
            Err(_) => return,
        },
    };
    // Everything committed, so that read_image applies every entry.
    let mut hard_state = HardState::default();
    hard_state.commit = u64::MAX;
    let Ok((recovered, good_bytes)) = storage::recover(hard_state.clone(), snapshot.clone(), log, Path::new(LOG_PATH))
    else {
        return;
    };
    assert!(good_bytes as usize <= log.len(), "the readable prefix lies in the file");
    if let Some(damage) = &recovered.damage {
        assert!((damage.position_bytes as usize) < log.len(), "damage lies in the file");
    }
    // What the node would run with; LogStore::new asserts its shape.
    let _store = LogStore::new(ConfState::default(), recovered.snapshot.clone(), recovered.entries.clone());
    if recovered.damage.is_none() && !recovered.discarded {
        let mut again = Vec::new();
        if let Some(repair) = recovered.repair {
            storage::encode_record(&mut again, &repair.encode()).expect("a marker encodes");
        }
        storage::encode_entries(&mut again, &recovered.entries).expect("recovered entries encode");
        let (back, back_bytes) =
            storage::recover(hard_state, snapshot, &again, Path::new(LOG_PATH)).expect("a rewritten log recovers");
        assert_eq!(back_bytes as usize, again.len(), "a rewritten log reads whole");
        assert!(back.damage.is_none(), "a rewritten log is undamaged");
        assert_eq!(back.entries, recovered.entries, "a rewritten log holds the same entries");
        assert_eq!(back.repair, recovered.repair, "a rewritten log keeps its repair marker");
    }
    let _ = quorum::image_of(recovered);
}
