//! The consumer-group records a coordinator replays from its partition of
//! `__consumer_offsets` when it takes the partition over: each record's key
//! and value (a versioned encoding of our own), and a stored batch of them
//! replayed into groups. The first byte picks one record's key and value,
//! a well-formed batch built from the input's chunks (so that its CRC is
//! right and random keys and values reach the decoders through the replay),
//! or the input as a stored batch. Nothing may panic; what decodes must
//! round-trip (`spate_net::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_net::fuzzing::{self, KeyValue};

/// A chunk of the input: a length byte, then that many bytes.
fn chunk<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&len, rest) = input.split_first()?;
    let (chunk, rest) = rest.split_at(usize::from(len).min(rest.len()));
    *input = rest;
    Some(chunk)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else { return };
    match selector % 3 {
        // One record: the key's chunk, then the value (bit 7: a tombstone).
        0 => {
            let Some(key) = chunk(&mut rest) else { return };
            let value = (selector & 0x80 == 0).then_some(rest);
            fuzzing::group_record(key, value);
        }
        // A batch of records from chunks (flags, key, value), replayed from
        // an offset inside it.
        1 => {
            let Some((base, mut input)) = rest.split_first_chunk::<8>() else { return };
            let base_offset = i64::from_be_bytes(*base);
            let mut records: Vec<KeyValue<'_>> = Vec::new();
            while let Some((&flags, after)) = input.split_first() {
                input = after;
                let key = chunk(&mut input);
                let value = chunk(&mut input);
                records.push((key.filter(|_| flags & 1 == 0), value.filter(|_| flags & 2 == 0)));
            }
            let batch = fuzzing::records_batch(&records, base_offset);
            let skip = i64::from(selector >> 2);
            fuzzing::replay_batch(&batch, base_offset.saturating_add(skip));
        }
        // Any bytes as a stored batch.
        _ => fuzzing::replay_batch(rest, 0),
    }
});
